//! Test payloads from the lab's `make-torrent.sh`: deterministic bytes (AES-CTR keystream),
//! a .torrent and the SHA-1 of every file.
//!
//! Generating is cached: the data for one (size, piece size, layout) is made once under
//! `temp_root()/payloads/NAME/`, guarded by a file lock, and shared by every test and
//! every test binary (seeders only read it). The announce URL is not part of the cache
//! key: each `Payload::make` call writes its own copy of the .torrent with the tracker
//! URL it asked for. Only the announce keys outside the info dictionary change, and the
//! copy's info-hash is checked against the one make-torrent.sh printed.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_bencode::value::Value;
use sha1::{Digest, Sha1};
use tempfile::TempDir;

use super::harness::{flock_file, peers_dir, temp_root};
use super::process::run_ok;

/// An announce URL where nothing listens (port 1 on loopback refuses at once): for
/// torrents whose peers must come only from `--peer`.
pub const DEAD_TRACKER: &str = "http://127.0.0.1:1/announce";

/// Announce URL baked into the cached .torrent; every `Payload` rewrites it.
const PLACEHOLDER_TRACKER: &str = "http://127.0.0.1:1/placeholder";

/// make-torrent.sh writes 48 MiB in well under 2 s here; a minute covers a slow disk.
const GENERATE_DEADLINE: Duration = Duration::from_secs(120);

/// One file of a payload.
#[derive(Debug, Clone)]
pub struct PayloadFile {
    /// Path relative to the data dir, which is also the path relative to the mount
    /// point: `NAME` for a single-file torrent, `NAME/dir/file` for a multi-file one.
    pub rel: PathBuf,
    pub len: u64,
    /// Lower-case hex SHA-1 of the whole file.
    pub sha1: String,
}

/// A payload and a .torrent for it that announces to the requested tracker.
pub struct Payload {
    /// The torrent's name: the file (single) or top directory (multi) in the mount.
    pub name: String,
    /// v1 info-hash, lower-case hex.
    pub info_hash: String,
    pub piece_len: u64,
    /// This payload's own .torrent (announcing to the `tracker_url` given to `make`).
    pub torrent: PathBuf,
    /// The directory that contains `name` (make-torrent's OUTDIR/data); shared, read only.
    pub data_dir: PathBuf,
    /// Every file, sorted by path, zero-length ones included.
    pub files: Vec<PayloadFile>,
    _torrent_dir: TempDir,
}

impl Payload {
    /// `size_mb` MiB in pieces of `piece_kb` KiB (a power of two ≥ 16); `multi` gives
    /// make-torrent's 20-file tree (empty files, piece±1 sizes, odd sizes, names with
    /// spaces, umlauts and CJK). `tracker_url` may list several URLs separated by commas
    /// (one tier), like make-torrent.sh's argument.
    pub fn make(size_mb: u32, piece_kb: u32, multi: bool, tracker_url: &str) -> Payload {
        let name = format!(
            "payload-{size_mb}M-{piece_kb}k{}",
            if multi { "-multi" } else { "" }
        );
        let cache = temp_root().join("payloads");
        let outdir = cache.join(&name);
        {
            let _lock = flock_file(&cache.join(format!("{name}.lock")), GENERATE_DEADLINE * 2);
            let complete = outdir.join("complete");
            if !complete.exists() {
                let _ = fs::remove_dir_all(&outdir);
                let mut cmd = Command::new(peers_dir().join("make-torrent.sh"));
                cmd.arg(size_mb.to_string())
                    .arg(piece_kb.to_string())
                    .arg(&outdir)
                    .arg(PLACEHOLDER_TRACKER)
                    .env_remove("SEED");
                if multi {
                    cmd.arg("multi");
                }
                run_ok(&mut cmd, GENERATE_DEADLINE, "make-torrent.sh");
                fs::write(&complete, b"").expect("mark payload complete");
            }
        }
        let info_hash = read_trimmed(&outdir.join(format!("{name}.infohash")));
        let files = parse_sha1sums(
            &outdir.join(format!("{name}.sha1sums")),
            &outdir.join("data"),
        );

        let torrent_dir = tempfile::Builder::new()
            .prefix("swarmfs-torrent-")
            .tempdir()
            .expect("tempdir");
        let torrent = torrent_dir.path().join(format!("{name}.torrent"));
        let cached =
            fs::read(outdir.join(format!("{name}.torrent"))).expect("read cached .torrent");
        let (bytes, piece_len) = with_trackers(&cached, tracker_url, &info_hash);
        fs::write(&torrent, bytes).expect("write .torrent");

        Payload {
            name,
            info_hash,
            piece_len,
            torrent,
            data_dir: outdir.join("data"),
            files,
            _torrent_dir: torrent_dir,
        }
    }

    /// The file whose path inside the torrent (after `NAME/`) is `inner`, e.g.
    /// `"big/part1.bin"`; for a single-file torrent, `""` or the name.
    pub fn file(&self, inner: &str) -> &PayloadFile {
        let want = if inner.is_empty() {
            PathBuf::from(&self.name)
        } else {
            Path::new(&self.name).join(inner)
        };
        self.files
            .iter()
            .find(|f| f.rel == want || f.rel == Path::new(inner))
            .unwrap_or_else(|| panic!("{} has no file {inner:?}", self.name))
    }

    /// The payload's own copy of a file.
    pub fn data_path(&self, file: &PayloadFile) -> PathBuf {
        self.data_dir.join(&file.rel)
    }

    /// `len` payload bytes of `file` from `offset` (fewer at the end of the file).
    pub fn read_range(&self, file: &PayloadFile, offset: u64, len: usize) -> Vec<u8> {
        let mut f = fs::File::open(self.data_path(file)).expect("open payload file");
        f.seek(SeekFrom::Start(offset)).expect("seek payload file");
        let mut buf = Vec::with_capacity(len);
        f.take(len as u64)
            .read_to_end(&mut buf)
            .expect("read payload file");
        buf
    }

    /// make-torrent's `NAME.sha1sums` (paths relative to `data_dir`), as leech.sh's
    /// SHA1SUMS wants it.
    pub fn sha1sums_path(&self) -> PathBuf {
        let cache_dir = self.data_dir.parent().expect("data dir has a parent");
        cache_dir.join(format!("{}.sha1sums", self.name))
    }

    /// Total bytes of all files.
    pub fn total_len(&self) -> u64 {
        self.files.iter().map(|f| f.len).sum()
    }

    /// A private copy of the data dir without the files `inner_paths` (paths after
    /// `NAME/`): for a seeder that has only part of the torrent (seed it with
    /// `SeedOptions { check: true, .. }` so that it finds out what it lacks).
    pub fn partial_copy(&self, inner_paths: &[&str]) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix("swarmfs-partial-")
            .tempdir()
            .expect("tempdir");
        for f in &self.files {
            let inner = f.rel.strip_prefix(&self.name).unwrap_or(&f.rel);
            if inner_paths.iter().any(|p| Path::new(p) == inner) {
                continue;
            }
            let dst = dir.path().join(&f.rel);
            fs::create_dir_all(dst.parent().expect("file has a parent")).expect("mkdir");
            fs::copy(self.data_path(f), &dst).expect("copy payload file");
        }
        dir
    }
}

/// The cached .torrent with its announce keys replaced by `tracker_url` (comma-separated:
/// one tier). Returns the new bytes and the piece length. Panics if the info-hash changed.
fn with_trackers(torrent: &[u8], tracker_url: &str, info_hash: &str) -> (Vec<u8>, u64) {
    let Ok(Value::Dict(mut top)) = serde_bencode::from_bytes::<Value>(torrent) else {
        panic!("make-torrent.sh wrote a .torrent that is not a bencoded dict");
    };
    let urls: Vec<&str> = tracker_url.split(',').filter(|u| !u.is_empty()).collect();
    top.remove(b"announce".as_slice());
    top.remove(b"announce-list".as_slice());
    if let Some(first) = urls.first() {
        top.insert(
            b"announce".to_vec(),
            Value::Bytes(first.as_bytes().to_vec()),
        );
    }
    if urls.len() > 1 {
        let tier = urls
            .iter()
            .map(|u| Value::Bytes(u.as_bytes().to_vec()))
            .collect();
        top.insert(
            b"announce-list".to_vec(),
            Value::List(vec![Value::List(tier)]),
        );
    }
    let (info_bytes, piece_len) = {
        let info = top
            .get(b"info".as_slice())
            .expect(".torrent has an info dict");
        let Value::Dict(info_dict) = info else {
            panic!("info is not a dict")
        };
        let Some(Value::Int(piece_len)) = info_dict.get(b"piece length".as_slice()) else {
            panic!("info has no piece length")
        };
        (
            serde_bencode::to_bytes(info).expect("encode info"),
            *piece_len,
        )
    };
    // serde_bencode writes dict keys sorted, as mktorrent does, so the info dict
    // re-encodes to the same bytes; the assert proves it.
    assert_eq!(
        sha1_bytes(&info_bytes),
        info_hash,
        "rewriting the announce URL changed the info-hash"
    );
    let bytes = serde_bencode::to_bytes(&Value::Dict(top)).expect("encode .torrent");
    (
        bytes,
        u64::try_from(piece_len).expect("piece length is positive"),
    )
}

/// make-torrent's NAME.sha1sums ("HASH  NAME/path" per line, relative to the data dir).
fn parse_sha1sums(path: &Path, data_dir: &Path) -> Vec<PayloadFile> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut files: Vec<PayloadFile> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            assert!(!line.starts_with('\\'), "escaped name in sha1sums: {line}");
            let (sha1, rel) = line
                .split_once("  ")
                .unwrap_or_else(|| panic!("bad sha1sums line {line:?}"));
            let rel = PathBuf::from(rel);
            let len = fs::metadata(data_dir.join(&rel))
                .expect("payload file exists")
                .len();
            PayloadFile {
                rel,
                len,
                sha1: sha1.to_string(),
            }
        })
        .collect();
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    files
}

fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// Lower-case hex SHA-1 of a whole file, read in 1 MiB chunks (through the mount: each
/// chunk is one or more FUSE reads).
pub fn sha1_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex(&hasher.finalize())
}

/// Lower-case hex SHA-1 of `bytes`.
pub fn sha1_bytes(bytes: &[u8]) -> String {
    hex(&Sha1::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
