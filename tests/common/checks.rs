//! Assertions on a mounted torrent shared by the mounting test binaries: every file
//! matches its payload, the root holds the torrent, a read fails with EIO in bounded
//! time, and a mount stops cleanly.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::fixture::{Payload, PayloadFile, sha1_file};
use super::mount::MountGuard;

/// `--read-timeout` for tests that expect EIO, and the bound within which the EIO must
/// arrive (a hang bound, not a speed test: the read timeout plus a loaded machine).
pub const SHORT_READ_TIMEOUT: &str = "3s";
pub const EIO_HANG_BOUND: Duration = Duration::from_secs(45);

/// Every file: present, right size, and the same SHA-1 as the payload.
pub fn assert_all_files_match(mount: &MountGuard, payload: &Payload) {
    for f in &payload.files {
        let path = mount.path().join(&f.rel);
        let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", f.rel.display()));
        assert!(
            meta.is_file(),
            "{} is not a file in the mount",
            f.rel.display()
        );
        assert_eq!(meta.len(), f.len, "size of {}", f.rel.display());
        assert_eq!(
            sha1_file(&path),
            f.sha1,
            "SHA-1 of {} read through the mount",
            f.rel.display()
        );
    }
}

/// The mount's root holds exactly the torrent's name.
pub fn assert_root_is(mount: &MountGuard, payload: &Payload) {
    let names: Vec<String> = fs::read_dir(mount.path())
        .expect("read mount root")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        vec![payload.name.clone()],
        "entries at the mount root"
    );
}

/// Stops the mount with SIGINT and asserts a clean exit (0, mount gone).
pub fn stop_cleanly(mount: MountGuard) {
    let status = mount.stop();
    assert!(
        status.success(),
        "swarmfs exited with {status} after SIGINT"
    );
}

/// Reads `len` bytes at `offset` of `file` (opened through the mount) and asserts they are
/// the bytes of the payload's `f` there.
pub fn assert_bytes_at(file: &File, payload: &Payload, f: &PayloadFile, offset: u64, len: usize) {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .unwrap_or_else(|e| panic!("read {len} bytes at {offset}: {e}"));
    assert!(
        buf == payload.read_range(f, offset, len),
        "{len} bytes at offset {offset} differ from the payload"
    );
}

/// Reads `len` bytes at `offset` of `path` and expects EIO within `EIO_HANG_BOUND`.
pub fn assert_read_gives_eio(path: &Path, offset: u64, len: usize) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    let started = Instant::now();
    let result = file.read_at(&mut buf, offset);
    let took = started.elapsed();
    match result {
        Err(err) if err.raw_os_error() == Some(libc::EIO) => {}
        other => panic!(
            "read of {} at {offset}: expected EIO, got {other:?} after {took:?}",
            path.display()
        ),
    }
    assert!(
        took < EIO_HANG_BOUND,
        "EIO for {} only after {took:?}",
        path.display()
    );
}

/// `pieces_fetched=N` from the `session totals` line swarmfs logs at shutdown (ANSI colour
/// codes, if any, removed first). Panics, showing the log's end, if there is no such line.
pub fn session_pieces_fetched(log: &str) -> u64 {
    let line = log
        .lines()
        .map(strip_ansi)
        .find(|l| l.contains("session totals"))
        .unwrap_or_else(|| {
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            panic!("no `session totals` line in the swarmfs log; its end:\n{tail}")
        });
    log_field(&line, "pieces_fetched")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pieces_fetched=N in {line:?}"))
}

/// MiB `peer` gave us by the last `ledger` line for it in a swarmfs log (the ledger is
/// logged every 30 s and at stop); None if there is no such line.
pub fn ledger_gave_us_mib(log: &str, peer: SocketAddr) -> Option<f64> {
    let addr = format!("addr={peer}");
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains(" ledger ") && l.contains(&addr))
        .filter_map(|l| log_field(&l, "gave_us_mib")?.parse().ok())
        .next_back()
}

/// The value of `key=value` in one log line, without the quotes tracing puts around
/// formatted values.
fn log_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix(key)?.strip_prefix('='))
        .map(|value| value.trim_matches('"'))
}

/// `text` without ANSI escape sequences (ESC [ ... final byte).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip '[' and parameters up to the final byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
