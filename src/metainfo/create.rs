//! Making torrents for `swarmfs create`: walk a file or directory, hash its pieces across file
//! boundaries while streaming through a small buffer, and write the .torrent bytes. The output
//! depends only on the tree's names and contents and the options: files are sorted, and no
//! creation date is written, so equal input gives an equal info hash.
//! Uses types, serde_bencode, sha1; reads the filesystem, nothing else.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha1::{Digest, Sha1};

use crate::types::BLOCK_SIZE;

/// Smallest piece length `create_torrent` accepts when given one: one wire block, since peers
/// request pieces in [`BLOCK_SIZE`] blocks.
pub const MIN_PIECE_LENGTH: u32 = BLOCK_SIZE;

/// Smallest piece length chosen automatically: below 256 KiB the per-piece overhead (20-byte hash,
/// have messages, bitfield bits) outweighs the finer granularity for any file worth sharing.
pub const AUTO_MIN_PIECE_LENGTH: u32 = 256 * 1024;

/// Largest piece length `create_torrent` makes: the piece cache holds whole pieces, so a seek
/// should never cost more than 16 MiB of download before the first byte.
pub const MAX_PIECE_LENGTH: u32 = 16 * 1024 * 1024;

/// The automatic piece length is the smallest power of two giving at most this many pieces:
/// between 1000 and 2000 pieces keeps `pieces` under 40 KiB while pieces stay small.
const AUTO_MAX_PIECES: u64 = 2000;

/// Read size while hashing for `create_torrent`: large enough to amortize syscalls, small enough
/// that memory stays flat whatever the payload size.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Written as `created by`. No creation date is written, so equal input gives an equal file.
const CREATED_BY: &str = concat!("swarmfs/", env!("CARGO_PKG_VERSION"));

/// Why `create_torrent` could not make a torrent.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not valid UTF-8, which torrent paths must be")]
    NonUtf8Path { path: PathBuf },
    #[error("{path} has no name to give the torrent")]
    NoName { path: PathBuf },
    #[error("{path} holds no files")]
    EmptyDirectory { path: PathBuf },
    #[error("{path} is neither a regular file nor a directory")]
    Unsupported { path: PathBuf },
    #[error("piece length {0} is not a power of two from 16 KiB to 16 MiB")]
    BadPieceLength(u32),
    #[error("{path} changed while hashing: expected {expected} bytes, read {read}")]
    FileChanged {
        path: PathBuf,
        expected: u64,
        read: u64,
    },
    #[error("total length overflows u64")]
    TotalLengthOverflow,
    #[error("encoding the torrent: {0}")]
    Encode(serde_bencode::Error),
}

/// How `create_torrent` should build the torrent.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// `None` picks the smallest power of two from 256 KiB to 16 MiB giving at most 2000 pieces.
    pub piece_length: Option<u32>,
    /// The first becomes `announce`; all go in `announce-list`, one tier each.
    pub trackers: Vec<String>,
    pub comment: Option<String>,
    pub private: bool,
}

#[derive(Serialize)]
struct TorrentOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    announce: Option<&'a str>,
    #[serde(rename = "announce-list", skip_serializing_if = "Vec::is_empty")]
    announce_list: Vec<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<&'a str>,
    #[serde(rename = "created by")]
    created_by: &'static str,
    info: InfoOut,
}

#[derive(Serialize)]
struct InfoOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<FileOut>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    name: String,
    #[serde(rename = "piece length")]
    piece_length: u32,
    #[serde(with = "serde_bytes")]
    pieces: Vec<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    private: Option<u8>,
}

#[derive(Serialize)]
struct FileOut {
    length: u64,
    path: Vec<String>,
}

/// One file to put in a new torrent.
struct SourceFile {
    /// Components below the torrent root; empty for a single-file torrent.
    path: Vec<String>,
    disk_path: PathBuf,
    length: u64,
}

/// Walks `path` and returns the bencoded .torrent bytes. A file makes a single-file torrent; a
/// directory a multi-file one whose files are sorted by path components, byte-wise, so equal
/// trees give equal info hashes. Hidden files are included; symlinks, sockets, FIFOs and devices
/// inside the directory are skipped (a symlink given as `path` itself is followed). Files are
/// streamed through a small buffer, so payload size does not change memory use. No creation
/// date is written, for the same determinism.
pub fn create_torrent(path: &Path, opts: &CreateOptions) -> Result<Vec<u8>, CreateError> {
    let io_error = |source| CreateError::Io {
        path: path.to_owned(),
        source,
    };
    let root = path.canonicalize().map_err(io_error)?;
    let name = match root.file_name() {
        None => {
            return Err(CreateError::NoName {
                path: path.to_owned(),
            });
        }
        Some(name) => name
            .to_str()
            .ok_or_else(|| CreateError::NonUtf8Path { path: root.clone() })?,
    };
    let metadata = std::fs::metadata(&root).map_err(io_error)?;
    let single_file = metadata.is_file();
    let files = if single_file {
        vec![SourceFile {
            path: Vec::new(),
            disk_path: root.clone(),
            length: metadata.len(),
        }]
    } else if metadata.is_dir() {
        collect_files(&root)?
    } else {
        return Err(CreateError::Unsupported {
            path: path.to_owned(),
        });
    };

    let mut total_length: u64 = 0;
    for file in &files {
        total_length = total_length
            .checked_add(file.length)
            .ok_or(CreateError::TotalLengthOverflow)?;
    }
    let piece_length = match opts.piece_length {
        None => auto_piece_length(total_length),
        Some(len)
            if len.is_power_of_two() && (MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&len) =>
        {
            len
        }
        Some(len) => return Err(CreateError::BadPieceLength(len)),
    };

    let mut hasher = PieceHasher::new(piece_length);
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    for file in &files {
        hash_file(file, &mut hasher, &mut buffer)?;
    }

    let info = InfoOut {
        length: single_file.then_some(total_length),
        files: (!single_file).then(|| {
            let file_out = |file: &SourceFile| FileOut {
                length: file.length,
                path: file.path.clone(),
            };
            files.iter().map(file_out).collect()
        }),
        name: name.to_owned(),
        piece_length,
        pieces: hasher.finish(),
        private: opts.private.then_some(1),
    };
    let torrent = TorrentOut {
        announce: opts.trackers.first().map(String::as_str),
        announce_list: opts.trackers.iter().map(|url| vec![url.as_str()]).collect(),
        comment: opts.comment.as_deref(),
        created_by: CREATED_BY,
        info,
    };
    serde_bencode::to_bytes(&torrent).map_err(CreateError::Encode)
}

/// The smallest power of two from [`AUTO_MIN_PIECE_LENGTH`] to [`MAX_PIECE_LENGTH`] that gives
/// at most [`AUTO_MAX_PIECES`] pieces.
fn auto_piece_length(total_length: u64) -> u32 {
    let mut piece_length = AUTO_MIN_PIECE_LENGTH;
    while piece_length < MAX_PIECE_LENGTH
        && total_length.div_ceil(u64::from(piece_length)) > AUTO_MAX_PIECES
    {
        piece_length *= 2;
    }
    piece_length
}

/// Every regular file under `root`, sorted by path components; refuses a tree with none.
fn collect_files(root: &Path) -> Result<Vec<SourceFile>, CreateError> {
    let mut files = Vec::new();
    let mut dirs = vec![(root.to_owned(), Vec::<String>::new())];
    while let Some((dir, components)) = dirs.pop() {
        let io_error = |source| CreateError::Io {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let disk_path = entry.path();
            let io_error = |source| CreateError::Io {
                path: disk_path.clone(),
                source,
            };
            let file_type = entry.file_type().map_err(io_error)?;
            if !file_type.is_dir() && !file_type.is_file() {
                continue;
            }
            let Ok(name) = entry.file_name().into_string() else {
                return Err(CreateError::NonUtf8Path { path: disk_path });
            };
            let mut path = components.clone();
            path.push(name);
            if file_type.is_dir() {
                dirs.push((disk_path, path));
            } else {
                let length = entry.metadata().map_err(io_error)?.len();
                files.push(SourceFile {
                    path,
                    disk_path,
                    length,
                });
            }
        }
    }
    if files.is_empty() {
        return Err(CreateError::EmptyDirectory {
            path: root.to_owned(),
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Streams `file` into `hasher`, refusing a file that shrank since it was listed.
fn hash_file(
    file: &SourceFile,
    hasher: &mut PieceHasher,
    buffer: &mut [u8],
) -> Result<(), CreateError> {
    let io_error = |source| CreateError::Io {
        path: file.disk_path.clone(),
        source,
    };
    let mut reader = File::open(&file.disk_path)
        .map_err(io_error)?
        .take(file.length);
    let mut read: u64 = 0;
    loop {
        let count = match reader.read(buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(io_error(err)),
        };
        hasher.update(buffer.get(..count).unwrap_or_default());
        read = read.saturating_add(u64::try_from(count).unwrap_or(u64::MAX));
    }
    if read != file.length {
        let path = file.disk_path.clone();
        return Err(CreateError::FileChanged {
            path,
            expected: file.length,
            read,
        });
    }
    Ok(())
}

/// SHA-1 per `piece_length` bytes of a stream that crosses file boundaries.
struct PieceHasher {
    piece_length: u64,
    piece_offset: u64,
    current: Sha1,
    pieces: Vec<u8>,
}

impl PieceHasher {
    fn new(piece_length: u32) -> Self {
        let piece_length = u64::from(piece_length);
        PieceHasher {
            piece_length,
            piece_offset: 0,
            current: Sha1::new(),
            pieces: Vec::new(),
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = self.piece_length - self.piece_offset;
            let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
            let (head, tail) = data.split_at(take);
            self.current.update(head);
            self.piece_offset += u64::try_from(take).unwrap_or(u64::MAX);
            data = tail;
            if self.piece_offset == self.piece_length {
                self.pieces
                    .extend_from_slice(&self.current.finalize_reset());
                self.piece_offset = 0;
            }
        }
    }

    /// The concatenated hashes, including the short last piece if any.
    fn finish(mut self) -> Vec<u8> {
        if self.piece_offset > 0 {
            self.pieces.extend_from_slice(&self.current.finalize());
        }
        self.pieces
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::metainfo::Metainfo;
    use crate::metainfo::tests::paths;
    use crate::types::Sha1Digest;

    /// Deterministic bytes with NULs in them, different per `seed`.
    fn content(seed: u32, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 16) as u8
            })
            .collect()
    }

    /// Writes the round-trip tree under `parent/payload` and returns its files in torrent order.
    fn write_tree(parent: &Path) -> Vec<(&'static str, Vec<u8>)> {
        let tree = vec![
            (".hidden", content(1, 16_385)),
            ("a/empty", Vec::new()),
            ("a/one.bin", content(2, 1)),
            ("b.bin", content(3, 40_000)),
            ("c.bin", content(4, 2 * 16_384 + 7)),
            ("z/zero", Vec::new()),
        ];
        let root = parent.join("payload");
        for (path, data) in &tree {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
        tree
    }

    #[test]
    fn created_torrent_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let tree = write_tree(dir.path());
        let root = dir.path().join("payload");
        std::os::unix::fs::symlink(root.join("b.bin"), root.join("link")).unwrap();
        let opts = CreateOptions {
            piece_length: Some(16_384),
            trackers: vec!["udp://one.example:80".into(), "http://two.example/a".into()],
            comment: Some("made in a test".into()),
            private: true,
        };
        let bytes = create_torrent(&root, &opts).unwrap();
        let metainfo = Metainfo::from_bytes(&bytes).unwrap();

        assert_eq!(metainfo.name, "payload");
        let expected: Vec<String> = tree
            .iter()
            .map(|(path, _)| format!("payload/{path}"))
            .collect();
        assert_eq!(
            paths(&metainfo),
            expected,
            "sorted, hidden included, symlink skipped"
        );
        let mut torrent_offset = 0;
        for (entry, (_, data)) in metainfo.files.iter().zip(&tree) {
            assert_eq!(entry.length, data.len() as u64);
            assert_eq!(entry.torrent_offset, torrent_offset);
            torrent_offset += entry.length;
        }
        let payload: Vec<u8> = tree.iter().flat_map(|(_, data)| data.clone()).collect();
        assert_eq!(metainfo.total_length, payload.len() as u64);
        let recomputed: Vec<Sha1Digest> = payload
            .chunks(16_384)
            .map(|piece| Sha1::digest(piece).into())
            .collect();
        assert_eq!(metainfo.piece_hashes, recomputed);
        assert_eq!(
            metainfo.trackers,
            vec![
                vec!["udp://one.example:80".to_string()],
                vec!["http://two.example/a".to_string()]
            ]
        );
        assert_eq!(metainfo.comment.as_deref(), Some("made in a test"));
        assert!(metainfo.private);
        assert_eq!(metainfo.creation_date, None);
        assert!(!bytes.windows(13).any(|w| w == b"creation date"));
    }

    #[test]
    fn created_single_file_torrent_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("movie.bin");
        let data = content(9, 100);
        std::fs::write(&path, &data).unwrap();
        let metainfo =
            Metainfo::from_bytes(&create_torrent(&path, &CreateOptions::default()).unwrap())
                .unwrap();
        assert_eq!(paths(&metainfo), ["movie.bin"]);
        assert_eq!(metainfo.piece_length, AUTO_MIN_PIECE_LENGTH);
        assert_eq!(
            metainfo.piece_hashes,
            vec![<[u8; 20]>::from(Sha1::digest(&data))]
        );
        assert!(metainfo.trackers.is_empty());
        assert!(!metainfo.private);
    }

    #[test]
    fn equal_trees_give_equal_info_hashes() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        write_tree(first.path());
        write_tree(second.path());
        let opts = CreateOptions {
            piece_length: Some(16_384),
            ..CreateOptions::default()
        };
        let make = |dir: &Path| create_torrent(&dir.join("payload"), &opts).unwrap();
        let once = make(first.path());
        assert_eq!(once, make(first.path()));
        let hash = |bytes: &[u8]| Metainfo::from_bytes(bytes).unwrap().info_hash;
        assert_eq!(hash(&once), hash(&make(second.path())));

        std::fs::write(second.path().join("payload/a/one.bin"), b"X").unwrap();
        assert_ne!(hash(&once), hash(&make(second.path())), "content is hashed");
    }

    #[test]
    fn create_refuses_what_it_cannot_share() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("empty/sub")).unwrap();
        let err = create_torrent(&dir.path().join("empty"), &CreateOptions::default());
        assert!(matches!(err, Err(CreateError::EmptyDirectory { .. })));

        let missing = dir.path().join("missing");
        let err = create_torrent(&missing, &CreateOptions::default()).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");

        std::fs::write(dir.path().join("f"), b"x").unwrap();
        for piece_length in [0, 8_192, 20_000, 32 * 1024 * 1024] {
            let opts = CreateOptions {
                piece_length: Some(piece_length),
                ..CreateOptions::default()
            };
            let err = create_torrent(&dir.path().join("f"), &opts);
            assert!(matches!(err, Err(CreateError::BadPieceLength(len)) if len == piece_length));
        }

        use std::os::unix::ffi::OsStrExt;
        let bad = dir.path().join("bad");
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join(std::ffi::OsStr::from_bytes(b"f\xff")), b"x").unwrap();
        let err = create_torrent(&bad, &CreateOptions::default());
        assert!(matches!(err, Err(CreateError::NonUtf8Path { .. })));
    }

    #[test]
    fn auto_piece_length_targets_at_most_2000_pieces() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(auto_piece_length(0), 256 * 1024);
        assert_eq!(auto_piece_length(500 * MIB), 256 * 1024);
        assert_eq!(auto_piece_length(512 * MIB), 512 * 1024);
        assert_eq!(auto_piece_length(1024 * MIB), 1024 * 1024);
        assert_eq!(auto_piece_length(1024 * 1024 * MIB), MAX_PIECE_LENGTH);
    }

    #[test]
    fn piece_hasher_splits_pieces_wherever_writes_fall() {
        let data = content(5, 100_000);
        let expected: Vec<u8> = data
            .chunks(16_384)
            .flat_map(|piece| <[u8; 20]>::from(Sha1::digest(piece)))
            .collect();
        for write_len in [1, 7, 16_383, 16_384, 50_000] {
            let mut hasher = PieceHasher::new(16_384);
            for chunk in data.chunks(write_len) {
                hasher.update(chunk);
            }
            assert_eq!(hasher.finish(), expected, "writes of {write_len}");
        }
    }
}
