//! .torrent files, both ways: bytes → validated [`Metainfo`] ([`Metainfo::from_bytes`]), and a
//! file or directory on disk → .torrent bytes for `swarmfs create` ([`create_torrent`]).
//! Pure and synchronous · uses types, serde_bencode, sha1.
//!
//! Layout: this file validates and sanitizes; `scan` checks bencode syntax and finds the raw
//! span of `info`; `create` walks a directory and writes a torrent.
//!
//! Invariants of every `Metainfo` this module returns:
//! - `info_hash` is SHA-1 over `info_bytes`, the exact byte span of the `info` value in the
//!   original file. The scanner finds that span; nothing is re-serialized, so keys in an unusual
//!   order or unknown keys cannot change the hash.
//! - The whole input was checked as bencode before serde sees it: nothing truncated, no leading
//!   zeros in lengths or integers, nesting at most [`MAX_BENCODE_DEPTH`] deep, nothing after the
//!   top-level dictionary. So serde_bencode, which recurses, only ever runs on bounded input.
//! - `piece_length > 0`, and there is exactly one hash per `piece_length` bytes of
//!   `total_length` (the last piece may be short), and the count fits a u32.
//! - Every path component passed `sanitize_component`: no component can leave the mount, and
//!   no two files share a path or sit inside another file's path.
//! - `files[i].torrent_offset` is the sum of the lengths before it, BEP 47 padding files included;
//!   padding files themselves are omitted from `files` (they hold zeros no one should read, and
//!   hybrid torrents repeat their names), so `files` may have gaps but never overlaps.

mod create;
mod scan;

pub use create::{
    AUTO_MIN_PIECE_LENGTH, CreateError, CreateOptions, MAX_PIECE_LENGTH, MIN_PIECE_LENGTH,
    create_torrent,
};

use std::collections::HashMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_bencode::value::Value;
use serde_bytes::ByteBuf;
use sha1::{Digest, Sha1};

use crate::types::{InfoHash, Sha1Digest};
use scan::{top_level_entries, value_end};

/// Bencode nested deeper than this is refused. Real torrents nest five levels (top dict → info →
/// files → file dict → path), so 64 leaves room for any extension while bounding both our scanner
/// and serde_bencode's recursion.
pub const MAX_BENCODE_DEPTH: usize = 64;

/// Why a .torrent (or a bare info dictionary) was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    #[error("not bencode: {problem} at byte {offset}")]
    NotBencode {
        offset: usize,
        problem: &'static str,
    },
    #[error("the torrent is not a bencoded dictionary")]
    NotADictionary,
    #[error("{0} trailing bytes after the torrent dictionary")]
    TrailingBytes(usize),
    #[error("no `info` dictionary")]
    MissingInfo,
    #[error("`info` appears twice")]
    DuplicateInfo,
    #[error("`info` is not a dictionary")]
    InfoNotADictionary,
    #[error("bad info dictionary: {0}")]
    BadInfo(serde_bencode::Error),
    #[error("piece length is 0")]
    ZeroPieceLength,
    #[error("piece length {0} is negative or above 4 GiB")]
    PieceLengthOutOfRange(i64),
    #[error("`pieces` is {0} bytes, not a multiple of 20")]
    PiecesNotMultipleOf20(usize),
    #[error(
        "expected {expected} piece hashes for {total_length} bytes at {piece_length} per piece, \
         found {found}"
    )]
    WrongPieceCount {
        expected: u64,
        found: usize,
        total_length: u64,
        piece_length: u32,
    },
    #[error("{0} pieces do not fit a 32-bit piece index")]
    TooManyPieces(u64),
    #[error("both `length` and `files` are present")]
    BothLengthAndFiles,
    #[error("neither `length` nor `files` is present")]
    NeitherLengthNorFiles,
    #[error("`files` is empty")]
    EmptyFileList,
    #[error("file {file} has negative length {length}")]
    NegativeLength { file: usize, length: i64 },
    #[error("total length overflows u64")]
    TotalLengthOverflow,
    #[error("torrent name is empty")]
    EmptyName,
    #[error("torrent name {0:?} escapes the mount")]
    NameEscapes(String),
    #[error("file {file} path component {component:?} escapes the torrent")]
    PathEscapes { file: usize, component: String },
    #[error("file {file} path is empty")]
    EmptyPath { file: usize },
    #[error("files {first} and {second} have the same path {path:?}")]
    DuplicatePath {
        first: usize,
        second: usize,
        path: String,
    },
    #[error("file {file} at {path:?} is also a directory holding file {inside}")]
    FileIsDirectory {
        file: usize,
        inside: usize,
        path: String,
    },
}

/// A .torrent that passed every check in this module (see the module doc for what holds).
#[derive(Debug, Clone)]
pub struct Metainfo {
    pub info_hash: InfoHash,
    /// Sanitized torrent name: the directory for multi-file torrents, the file for single-file.
    pub name: String,
    pub piece_length: u32,
    pub piece_hashes: Vec<Sha1Digest>,
    /// In torrent order; a single-file torrent has one entry whose path is `[name]`.
    pub files: Vec<FileEntry>,
    pub total_length: u64,
    /// Announce tiers: `announce-list` if it has a usable URL, else `[[announce]]`, else empty.
    pub trackers: Vec<Vec<String>>,
    /// The raw info dictionary, kept for hashing and for serving metadata (BEP 9).
    pub info_bytes: Bytes,
    pub private: bool,
    /// Unix seconds; the filesystem uses it as mtime.
    pub creation_date: Option<i64>,
    pub comment: Option<String>,
}

/// One file of a torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Sanitized components relative to the mount root; multi-file paths start with the name.
    pub path: Vec<String>,
    pub length: u64,
    /// Offset of this file's first byte in the torrent's concatenated data.
    pub torrent_offset: u64,
}

impl Metainfo {
    /// Parses and validates a whole .torrent file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        let entries = top_level_entries(bytes)?;
        let mut info = None;
        for entry in &entries {
            if entry.key == b"info" && info.replace(entry.value).is_some() {
                return Err(MetainfoError::DuplicateInfo);
            }
        }
        let info = info.ok_or(MetainfoError::MissingInfo)?;
        let top = |name: &str| {
            let found = entries.iter().find(|entry| entry.key == name.as_bytes());
            // Already checked as bencode, so this only fails on types serde_bencode cannot hold
            // (integers beyond i64); optional metadata like that is ignored, not fatal.
            found.and_then(|entry| serde_bencode::from_bytes::<Value>(entry.value).ok())
        };
        let trackers = trackers(top("announce-list"), top("announce"));
        let mut metainfo = Metainfo::from_info_bytes(info, trackers)?;
        metainfo.creation_date = match top("creation date") {
            Some(Value::Int(seconds)) => Some(seconds),
            _ => None,
        };
        metainfo.comment = text(top("comment.utf-8"), top("comment"));
        Ok(metainfo)
    }

    /// Parses and validates a bare info dictionary, as fetched from peers for a magnet link.
    pub fn from_info_bytes(
        info: &[u8],
        trackers: Vec<Vec<String>>,
    ) -> Result<Metainfo, MetainfoError> {
        let end = value_end(info, 0, MAX_BENCODE_DEPTH)?;
        if end != info.len() {
            return Err(MetainfoError::TrailingBytes(info.len() - end));
        }
        if info.first() != Some(&b'd') {
            return Err(MetainfoError::InfoNotADictionary);
        }
        let raw: RawInfo = serde_bencode::from_bytes(info).map_err(MetainfoError::BadInfo)?;

        let piece_length = match u32::try_from(raw.piece_length) {
            Ok(0) => return Err(MetainfoError::ZeroPieceLength),
            Ok(len) => len,
            Err(_) => return Err(MetainfoError::PieceLengthOutOfRange(raw.piece_length)),
        };
        let name = text_or_lossy(raw.name_utf8.as_deref().map(Vec::as_slice), &raw.name);
        let name = match sanitize_component(&name) {
            Component::Name(name) => name,
            Component::Empty => return Err(MetainfoError::EmptyName),
            Component::Escapes(name) => return Err(MetainfoError::NameEscapes(name)),
        };
        let (files, total_length) = match (raw.length, raw.files) {
            (Some(_), Some(_)) => return Err(MetainfoError::BothLengthAndFiles),
            (None, None) => return Err(MetainfoError::NeitherLengthNorFiles),
            (Some(length), None) => {
                let length = u64::try_from(length)
                    .map_err(|_| MetainfoError::NegativeLength { file: 0, length })?;
                let file = FileEntry {
                    path: vec![name.clone()],
                    length,
                    torrent_offset: 0,
                };
                (vec![file], length)
            }
            (None, Some(raw_files)) => multi_file_entries(&name, &raw_files)?,
        };

        let (hashes, rest) = raw.pieces.as_chunks::<20>();
        if !rest.is_empty() {
            return Err(MetainfoError::PiecesNotMultipleOf20(raw.pieces.len()));
        }
        let expected = total_length.div_ceil(u64::from(piece_length));
        if u64::try_from(hashes.len()).ok() != Some(expected) {
            return Err(MetainfoError::WrongPieceCount {
                expected,
                found: hashes.len(),
                total_length,
                piece_length,
            });
        }
        if u32::try_from(expected).is_err() {
            return Err(MetainfoError::TooManyPieces(expected));
        }

        Ok(Metainfo {
            info_hash: InfoHash(Sha1::digest(info).into()),
            name,
            piece_length,
            piece_hashes: hashes.to_vec(),
            files,
            total_length,
            trackers,
            info_bytes: Bytes::copy_from_slice(info),
            private: raw.private == Some(1),
            creation_date: None,
            comment: None,
        })
    }

    /// Number of pieces; fits in u32 for every `Metainfo` this module built.
    pub fn piece_count(&self) -> u32 {
        u32::try_from(self.piece_hashes.len()).unwrap_or(u32::MAX)
    }
}

/// The info dictionary as serde sees it; unknown keys (`x-foo`, `meta version`, ...) are ignored.
#[derive(Deserialize)]
struct RawInfo {
    name: ByteBuf,
    #[serde(rename = "name.utf-8", default)]
    name_utf8: Option<ByteBuf>,
    #[serde(rename = "piece length")]
    piece_length: i64,
    pieces: ByteBuf,
    #[serde(default)]
    length: Option<i64>,
    #[serde(default)]
    files: Option<Vec<RawFile>>,
    #[serde(default)]
    private: Option<i64>,
}

#[derive(Deserialize)]
struct RawFile {
    length: i64,
    path: Vec<ByteBuf>,
    #[serde(rename = "path.utf-8", default)]
    path_utf8: Option<Vec<ByteBuf>>,
    /// BEP 47 attributes; `p` marks a padding file.
    #[serde(default)]
    attr: Option<ByteBuf>,
}

/// Turns the `files` list into entries with offsets, sanitized paths and a checked total.
fn multi_file_entries(
    name: &str,
    raw_files: &[RawFile],
) -> Result<(Vec<FileEntry>, u64), MetainfoError> {
    if raw_files.is_empty() {
        return Err(MetainfoError::EmptyFileList);
    }
    let mut files = Vec::with_capacity(raw_files.len());
    let mut torrent_offset: u64 = 0;
    for (index, raw) in raw_files.iter().enumerate() {
        let length = u64::try_from(raw.length).map_err(|_| MetainfoError::NegativeLength {
            file: index,
            length: raw.length,
        })?;
        let is_padding = raw.attr.as_ref().is_some_and(|attr| attr.contains(&b'p'));
        if !is_padding {
            let path = sanitize_path(index, name, raw)?;
            files.push(FileEntry {
                path,
                length,
                torrent_offset,
            });
        }
        torrent_offset = torrent_offset
            .checked_add(length)
            .ok_or(MetainfoError::TotalLengthOverflow)?;
    }
    check_unique_paths(&files)?;
    Ok((files, torrent_offset))
}

/// `[name, components...]` for file `index`, preferring `path.utf-8` when all of it is UTF-8.
fn sanitize_path(index: usize, name: &str, raw: &RawFile) -> Result<Vec<String>, MetainfoError> {
    let utf8: Option<Vec<&str>> = raw.path_utf8.as_ref().and_then(|parts| {
        parts
            .iter()
            .map(|part| std::str::from_utf8(part).ok())
            .collect()
    });
    let components: Vec<String> = match utf8 {
        Some(parts) => parts.into_iter().map(str::to_owned).collect(),
        None => raw
            .path
            .iter()
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect(),
    };
    let mut path = vec![name.to_owned()];
    for component in components {
        match sanitize_component(&component) {
            Component::Name(part) => path.push(part),
            Component::Empty => {}
            Component::Escapes(component) => {
                return Err(MetainfoError::PathEscapes {
                    file: index,
                    component,
                });
            }
        }
    }
    if path.len() == 1 {
        return Err(MetainfoError::EmptyPath { file: index });
    }
    Ok(path)
}

/// What [`sanitize_component`] made of one name.
#[derive(Debug, PartialEq, Eq)]
enum Component {
    Name(String),
    /// Nothing left: the caller drops it from a path, or refuses it as a torrent name.
    Empty,
    /// `.` or `..`: refused, since dropping or renaming it would silently change the layout.
    Escapes(String),
}

/// The one rule that makes a name from a .torrent safe as a single path component under the
/// mount: `/` and NUL, which a Linux name cannot hold, become `_` (so `/etc/passwd` as one
/// component is the harmless name `_etc_passwd`); an empty name is [`Component::Empty`]; `.` and
/// `..` are [`Component::Escapes`]. Invalid UTF-8 was already decoded lossily (U+FFFD) by the
/// caller unless a `.utf-8` twin key was valid. Duplicate paths are refused, not suffixed, by
/// [`check_unique_paths`].
fn sanitize_component(raw: &str) -> Component {
    match raw {
        "" => Component::Empty,
        "." | ".." => Component::Escapes(raw.to_owned()),
        _ => Component::Name(raw.replace(['/', '\0'], "_")),
    }
}

/// Refuses two files with the same path, and a file whose path is another file's directory:
/// the filesystem could show only one of them.
fn check_unique_paths(files: &[FileEntry]) -> Result<(), MetainfoError> {
    let mut seen: HashMap<&[String], usize> = HashMap::with_capacity(files.len());
    for (index, file) in files.iter().enumerate() {
        if let Some(first) = seen.insert(&file.path, index) {
            let path = file.path.join("/");
            return Err(MetainfoError::DuplicatePath {
                first,
                second: index,
                path,
            });
        }
    }
    for (inside, file) in files.iter().enumerate() {
        let prefixes = (1..file.path.len()).filter_map(|len| file.path.get(..len));
        for prefix in prefixes {
            if let Some(&index) = seen.get(prefix) {
                let path = prefix.join("/");
                return Err(MetainfoError::FileIsDirectory {
                    file: index,
                    inside,
                    path,
                });
            }
        }
    }
    Ok(())
}

/// Announce tiers: non-empty tiers of `announce-list` (URLs that are UTF-8 and not blank), else
/// `[[announce]]`, else none. Malformed tracker metadata is ignored rather than fatal.
fn trackers(announce_list: Option<Value>, announce: Option<Value>) -> Vec<Vec<String>> {
    let url = |value: &Value| match value {
        Value::Bytes(bytes) => std::str::from_utf8(bytes)
            .ok()
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned),
        _ => None,
    };
    let mut tiers = Vec::new();
    if let Some(Value::List(raw_tiers)) = announce_list {
        for tier in raw_tiers {
            if let Value::List(urls) = tier {
                let urls: Vec<String> = urls.iter().filter_map(url).collect();
                if !urls.is_empty() {
                    tiers.push(urls);
                }
            }
        }
    }
    if tiers.is_empty()
        && let Some(url) = announce.as_ref().and_then(url)
    {
        tiers.push(vec![url]);
    }
    tiers
}

/// A text field, preferring its `.utf-8` twin when that is valid UTF-8.
fn text(utf8: Option<Value>, plain: Option<Value>) -> Option<String> {
    let bytes = |value: Option<Value>| match value {
        Some(Value::Bytes(bytes)) => Some(bytes),
        _ => None,
    };
    let utf8 = bytes(utf8).and_then(|bytes| String::from_utf8(bytes).ok());
    utf8.or_else(|| bytes(plain).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// `utf8` if present and valid, else `plain` decoded lossily.
fn text_or_lossy(utf8: Option<&[u8]>, plain: &[u8]) -> String {
    match utf8.and_then(|bytes| std::str::from_utf8(bytes).ok()) {
        Some(text) => text.to_owned(),
        None => String::from_utf8_lossy(plain).into_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // Bencode builders, so each test shows its input. `dict` keeps the order given, so tests
    // can build dictionaries that serde would re-serialize differently.
    fn s(bytes: impl AsRef<[u8]>) -> Vec<u8> {
        let bytes = bytes.as_ref();
        [format!("{}:", bytes.len()).into_bytes(), bytes.to_vec()].concat()
    }
    fn int(n: i64) -> Vec<u8> {
        format!("i{n}e").into_bytes()
    }
    fn list(items: &[Vec<u8>]) -> Vec<u8> {
        [b"l".to_vec(), items.concat(), b"e".to_vec()].concat()
    }
    fn dict(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = b"d".to_vec();
        for (key, value) in entries {
            out.extend(s(key));
            out.extend(value);
        }
        out.push(b'e');
        out
    }

    /// `count` distinct fake piece hashes.
    fn hashes(count: usize) -> Vec<u8> {
        (0..count * 20).map(|i| (i % 251) as u8).collect()
    }
    fn single_info(length: i64, piece_length: i64, pieces: Vec<u8>) -> Vec<u8> {
        dict(&[
            ("length", int(length)),
            ("name", s("movie.mkv")),
            ("piece length", int(piece_length)),
            ("pieces", s(pieces)),
        ])
    }
    fn file(length: i64, path: &[&str]) -> Vec<u8> {
        let path: Vec<Vec<u8>> = path.iter().map(s).collect();
        dict(&[("length", int(length)), ("path", list(&path))])
    }
    fn multi_info(files: &[Vec<u8>], piece_length: i64, piece_count: usize) -> Vec<u8> {
        dict(&[
            ("files", list(files)),
            ("name", s("album")),
            ("piece length", int(piece_length)),
            ("pieces", s(hashes(piece_count))),
        ])
    }
    fn torrent(info: &[u8]) -> Vec<u8> {
        dict(&[
            ("announce", s("http://t.example/a")),
            ("info", info.to_vec()),
        ])
    }
    fn parse_info(info: &[u8]) -> Result<Metainfo, MetainfoError> {
        Metainfo::from_bytes(&torrent(info))
    }
    fn error(info: &[u8]) -> String {
        parse_info(info).unwrap_err().to_string()
    }
    /// Each file's path joined with `/`; shared with the `create` tests.
    pub(super) fn paths(metainfo: &Metainfo) -> Vec<String> {
        metainfo
            .files
            .iter()
            .map(|file| file.path.join("/"))
            .collect()
    }

    #[test]
    fn single_file_torrent_parses() {
        let info = single_info(100_000, 32_768, hashes(4));
        let bytes = dict(&[
            ("announce", s("http://t.example/a")),
            ("comment", s("a film")),
            ("creation date", int(1_700_000_000)),
            ("info", info.clone()),
        ]);
        let metainfo = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(metainfo.name, "movie.mkv");
        let expected = FileEntry {
            path: vec!["movie.mkv".into()],
            length: 100_000,
            torrent_offset: 0,
        };
        assert_eq!(metainfo.files, vec![expected]);
        assert_eq!(metainfo.total_length, 100_000);
        assert_eq!(metainfo.piece_length, 32_768);
        assert_eq!(metainfo.piece_count(), 4);
        assert_eq!(metainfo.piece_hashes[1].as_slice(), &hashes(4)[20..40]);
        assert_eq!(
            metainfo.trackers,
            vec![vec!["http://t.example/a".to_string()]]
        );
        assert_eq!(metainfo.creation_date, Some(1_700_000_000));
        assert_eq!(metainfo.comment.as_deref(), Some("a film"));
        assert!(!metainfo.private);
        assert_eq!(metainfo.info_hash.0, <[u8; 20]>::from(Sha1::digest(&info)));
        assert_eq!(metainfo.info_bytes.as_ref(), info.as_slice());
    }

    #[test]
    fn multi_file_torrent_has_offsets_zero_length_files_and_tiers() {
        let info = dict(&[
            (
                "files",
                list(&[
                    file(0, &["cd1", "empty-first"]),
                    file(10, &["cd1", "01.flac"]),
                    file(0, &["cd1", "empty"]),
                    file(70_000, &["cd2", "02.flac"]),
                    file(0, &["zero-at-end"]),
                ]),
            ),
            ("name", s("album")),
            ("piece length", int(32_768)),
            ("pieces", s(hashes(3))),
            ("private", int(1)),
        ]);
        let tiers = list(&[
            list(&[]),
            list(&[
                s("udp://one.example:80"),
                s("  "),
                s("http://two.example/a"),
            ]),
            list(&[s("udp://three.example:80")]),
        ]);
        let bytes = dict(&[
            ("announce", s("http://ignored.example/a")),
            ("announce-list", tiers),
            ("info", info),
        ]);
        let metainfo = Metainfo::from_bytes(&bytes).unwrap();
        assert_eq!(
            paths(&metainfo),
            [
                "album/cd1/empty-first",
                "album/cd1/01.flac",
                "album/cd1/empty",
                "album/cd2/02.flac",
                "album/zero-at-end"
            ]
        );
        let offsets: Vec<u64> = metainfo.files.iter().map(|f| f.torrent_offset).collect();
        assert_eq!(offsets, [0, 0, 10, 10, 70_010]);
        assert_eq!(metainfo.total_length, 70_010);
        assert_eq!(metainfo.piece_count(), 3);
        assert!(metainfo.private);
        assert_eq!(
            metainfo.trackers,
            vec![
                vec![
                    "udp://one.example:80".to_string(),
                    "http://two.example/a".to_string()
                ],
                vec!["udp://three.example:80".to_string()],
            ]
        );
    }

    #[test]
    fn info_hash_is_over_the_raw_span_not_a_reserialization() {
        // Unsorted keys and an unknown nested key: serde would write this dictionary differently.
        let info = dict(&[
            ("pieces", s(hashes(1))),
            ("name", s("movie.mkv")),
            ("x-foo", dict(&[("z", list(&[int(1), s("deep")]))])),
            ("piece length", int(16_384)),
            ("length", int(5)),
        ]);
        let reserialized =
            serde_bencode::to_bytes(&serde_bencode::from_bytes::<Value>(&info).unwrap()).unwrap();
        assert_ne!(reserialized, info, "the test input must not be canonical");

        let metainfo = parse_info(&info).unwrap();
        assert_eq!(metainfo.info_hash.0, <[u8; 20]>::from(Sha1::digest(&info)));
        assert_ne!(
            metainfo.info_hash.0,
            <[u8; 20]>::from(Sha1::digest(&reserialized))
        );
        assert_eq!(metainfo.info_bytes.as_ref(), info.as_slice());

        let bare = Metainfo::from_info_bytes(&info, vec![vec!["udp://x.example:1".into()]]);
        let bare = bare.unwrap();
        assert_eq!(bare.info_hash, metainfo.info_hash);
        assert_eq!(bare.trackers, vec![vec!["udp://x.example:1".to_string()]]);
    }

    #[test]
    fn empty_torrent_has_no_pieces() {
        let metainfo = parse_info(&single_info(0, 16_384, Vec::new())).unwrap();
        assert_eq!(metainfo.total_length, 0);
        assert_eq!(metainfo.piece_count(), 0);
        assert_eq!(metainfo.files.len(), 1);
    }

    #[test]
    fn bad_piece_fields_are_refused() {
        assert_eq!(error(&single_info(10, 0, hashes(1))), "piece length is 0");
        assert_eq!(
            error(&single_info(10, -16_384, hashes(1))),
            "piece length -16384 is negative or above 4 GiB"
        );
        assert_eq!(
            error(&single_info(10, 16_384, vec![0; 21])),
            "`pieces` is 21 bytes, not a multiple of 20"
        );
        assert_eq!(
            error(&single_info(157_286_400, 65_536, hashes(2399))),
            "expected 2400 piece hashes for 157286400 bytes at 65536 per piece, found 2399"
        );
        assert!(error(&single_info(10, 16_384, hashes(2))).contains("found 2"));
    }

    #[test]
    fn bad_lengths_are_refused() {
        assert_eq!(
            error(&single_info(-5, 16_384, hashes(1))),
            "file 0 has negative length -5"
        );
        let negative = multi_info(&[file(1, &["a"]), file(-1, &["b"])], 16_384, 1);
        assert_eq!(error(&negative), "file 1 has negative length -1");
        let huge = [
            file(i64::MAX, &["a"]),
            file(i64::MAX, &["b"]),
            file(2, &["c"]),
        ];
        assert_eq!(
            error(&multi_info(&huge, 16_384, 1)),
            "total length overflows u64"
        );

        let both = dict(&[
            ("files", list(&[file(1, &["a"])])),
            ("length", int(1)),
            ("name", s("x")),
            ("piece length", int(16_384)),
            ("pieces", s(hashes(1))),
        ]);
        assert_eq!(error(&both), "both `length` and `files` are present");
        let neither = dict(&[
            ("name", s("x")),
            ("piece length", int(16_384)),
            ("pieces", s(hashes(1))),
        ]);
        assert_eq!(error(&neither), "neither `length` nor `files` is present");
        assert_eq!(error(&multi_info(&[], 16_384, 0)), "`files` is empty");
    }

    #[test]
    fn wrong_types_and_structure_are_refused() {
        let name_is_int = dict(&[
            ("length", int(1)),
            ("name", int(3)),
            ("piece length", int(1)),
            ("pieces", s(hashes(1))),
        ]);
        assert!(error(&name_is_int).starts_with("bad info dictionary:"));
        let no_name = dict(&[
            ("length", int(1)),
            ("piece length", int(1)),
            ("pieces", s(hashes(1))),
        ]);
        assert!(error(&no_name).contains("name"));

        let no_info = dict(&[("announce", s("x"))]);
        assert!(matches!(
            Metainfo::from_bytes(&no_info),
            Err(MetainfoError::MissingInfo)
        ));
        let info = single_info(1, 16_384, hashes(1));
        let twice = dict(&[("info", info.clone()), ("info", info.clone())]);
        assert!(matches!(
            Metainfo::from_bytes(&twice),
            Err(MetainfoError::DuplicateInfo)
        ));
        let info_list = dict(&[("info", list(&[]))]);
        assert!(matches!(
            Metainfo::from_bytes(&info_list),
            Err(MetainfoError::InfoNotADictionary)
        ));
        assert!(matches!(
            Metainfo::from_bytes(b"i1e"),
            Err(MetainfoError::NotADictionary)
        ));
        let trailing = [torrent(&info), b"\n".to_vec()].concat();
        assert!(matches!(
            Metainfo::from_bytes(&trailing),
            Err(MetainfoError::TrailingBytes(1))
        ));
        let trailing_info = [info, b"x".to_vec()].concat();
        assert!(matches!(
            Metainfo::from_info_bytes(&trailing_info, Vec::new()),
            Err(MetainfoError::TrailingBytes(1))
        ));
    }

    #[test]
    fn traversal_components_are_refused() {
        let dotdot = multi_info(&[file(1, &["ok", ".."])], 16_384, 1);
        assert_eq!(
            error(&dotdot),
            "file 0 path component \"..\" escapes the torrent"
        );
        let dot = multi_info(&[file(1, &["a"]), file(1, &["a", ".", "b"])], 16_384, 1);
        assert_eq!(
            error(&dot),
            "file 1 path component \".\" escapes the torrent"
        );
        let empty = multi_info(&[file(1, &["", ""])], 16_384, 1);
        assert_eq!(error(&empty), "file 0 path is empty");
        let no_components = multi_info(&[file(1, &[])], 16_384, 1);
        assert_eq!(error(&no_components), "file 0 path is empty");

        let named = |name: &str| {
            dict(&[
                ("length", int(1)),
                ("name", s(name)),
                ("piece length", int(16_384)),
                ("pieces", s(hashes(1))),
            ])
        };
        assert_eq!(error(&named("..")), "torrent name \"..\" escapes the mount");
        assert_eq!(error(&named("")), "torrent name is empty");
        assert_eq!(
            paths(&parse_info(&named("/etc/passwd")).unwrap()),
            ["_etc_passwd"]
        );
    }

    #[test]
    fn separators_and_nul_are_neutralized() {
        let files = [
            file(1, &["/etc/passwd"]),
            file(1, &["", "etc", "", "passwd"]),
            file(1, &["nul\0byte"]),
        ];
        let metainfo = parse_info(&multi_info(&files, 16_384, 1)).unwrap();
        assert_eq!(
            paths(&metainfo),
            ["album/_etc_passwd", "album/etc/passwd", "album/nul_byte"]
        );
        assert_eq!(metainfo.files[1].path.len(), 3);
    }

    #[test]
    fn colliding_paths_are_refused() {
        let twice = multi_info(
            &[file(1, &["x"]), file(1, &["y"]), file(1, &["x"])],
            16_384,
            1,
        );
        assert_eq!(
            error(&twice),
            "files 0 and 2 have the same path \"album/x\""
        );
        let after_sanitizing = multi_info(&[file(1, &["a/b"]), file(1, &["a_b"])], 16_384, 1);
        assert!(error(&after_sanitizing).contains("same path"));
        let file_and_dir = multi_info(&[file(1, &["x"]), file(1, &["x", "y"])], 16_384, 1);
        assert_eq!(
            error(&file_and_dir),
            "file 0 at \"album/x\" is also a directory holding file 1"
        );
    }

    #[test]
    fn utf8_twins_are_preferred_and_bad_utf8_is_lossy() {
        let files = list(&[
            dict(&[
                ("length", int(1)),
                ("path", list(&[s(b"caf\xe9")])),
                ("path.utf-8", list(&[s("café")])),
            ]),
            dict(&[("length", int(1)), ("path", list(&[s(b"bad\xff")]))]),
        ]);
        let info = dict(&[
            ("files", files),
            ("name", s(b"\xff")),
            ("name.utf-8", s("naïve")),
            ("piece length", int(16_384)),
            ("pieces", s(hashes(1))),
        ]);
        let metainfo = parse_info(&info).unwrap();
        assert_eq!(metainfo.name, "naïve");
        assert_eq!(paths(&metainfo), ["naïve/café", "naïve/bad\u{fffd}"]);
    }

    #[test]
    fn padding_files_are_hidden_but_keep_offsets() {
        let pad = |length: i64| {
            let path = list(&[s(".pad"), s("16374")]);
            dict(&[("attr", s("p")), ("length", int(length)), ("path", path)])
        };
        let files = [
            file(10, &["a"]),
            pad(16_374),
            file(5, &["b"]),
            pad(16_379),
            file(1, &["c"]),
        ];
        let metainfo = parse_info(&multi_info(&files, 16_384, 3)).unwrap();
        assert_eq!(paths(&metainfo), ["album/a", "album/b", "album/c"]);
        let offsets: Vec<u64> = metainfo.files.iter().map(|f| f.torrent_offset).collect();
        assert_eq!(offsets, [0, 16_384, 32_768]);
        assert_eq!(metainfo.total_length, 32_769);
    }
}
