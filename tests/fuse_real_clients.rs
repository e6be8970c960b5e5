//! Issue 3: mount real torrents and read them from real seeders (aria2, qBittorrent,
//! python-libtorrent) over loopback, comparing every byte read through the mount with the
//! payload that make-torrent.sh wrote.
//!
//! Every test runs inside `harness::fuse_test`: it is skipped (explicitly) only when
//! /dev/fuse is missing and SWARMFS_SKIP_FUSE=1, runs one at a time (heavy-test lock),
//! has an overall deadline, and fails if it leaves a process or a mount behind. Tests
//! assert on correctness only; durations appear only as hang bounds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::checks::{
    SHORT_READ_TIMEOUT, assert_all_files_match, assert_bytes_at, assert_read_gives_eio,
    assert_root_is, stop_cleanly,
};
use common::clients::{Client, SeedOptions, Seeder, Tracker};
use common::fixture::{DEAD_TRACKER, Payload, PayloadFile, sha1_file};
use common::harness::fuse_test;
use common::mount::{MountGuard, is_mounted};
use common::process::run_ok;

/// Overall deadline of one test. When swarmfs works, each test takes seconds (seeder
/// start up to ~10 s, then 24–48 MiB at tens of MiB/s); this only stops hangs.
const TEST_LIMIT: Duration = Duration::from_secs(240);

/// The multi-file layout used throughout: 24 MiB in 64 KiB pieces (20 files: empty,
/// 1-byte, piece±1, odd sizes, spaces, umlauts, CJK).
const MULTI_MB: u32 = 24;
const MULTI_PIECE_KB: u32 = 64;

/// A large single file: 48 MiB in 256 KiB pieces (192 pieces).
const LARGE_MB: u32 = 48;
const LARGE_PIECE_KB: u32 = 256;

/// A tracker plus a payload announcing to it, whitelisted there.
fn tracked_payload(size_mb: u32, piece_kb: u32, multi: bool) -> (Tracker, Payload) {
    let tracker = Tracker::start();
    let payload = Payload::make(size_mb, piece_kb, multi, &tracker.announce_url());
    tracker.allow(&payload.torrent);
    (tracker, payload)
}

/// `ls -la DIR` → name → size, for regular files.
fn ls_la_sizes(dir: &Path) -> BTreeMap<String, u64> {
    let out = run_ok(
        Command::new("ls")
            .args(["-la", "-N", "--time-style=+%s"])
            .arg(dir)
            .env("LC_ALL", "C.UTF-8"),
        Duration::from_secs(30),
        "ls -la",
    );
    let mut sizes = BTreeMap::new();
    for line in out.stdout.lines().filter(|l| !l.starts_with("total")) {
        // perms links owner group size epoch name (the name may contain spaces)
        let mut rest = line;
        let mut fields = Vec::new();
        for _ in 0..6 {
            rest = rest.trim_start();
            let end = rest.find(' ').unwrap_or(rest.len());
            fields.push(&rest[..end]);
            rest = &rest[end..];
        }
        let name = rest.strip_prefix(' ').unwrap_or(rest);
        if fields[0].starts_with('-') {
            sizes.insert(
                name.to_string(),
                fields[4]
                    .parse()
                    .unwrap_or_else(|_| panic!("ls size in {line:?}")),
            );
        }
    }
    sizes
}

// ---- one seeder each, multi-file torrent ----

/// `client` alone seeds the multi-file payload; swarmfs finds it through the HTTP tracker
/// (or, with `by_peer_flag`, only through `--peer`: the torrent's tracker is dead).
fn single_seeder_multi_file(client: Client, by_peer_flag: bool) {
    if by_peer_flag {
        let payload = Payload::make(MULTI_MB, MULTI_PIECE_KB, true, DEAD_TRACKER);
        let opts = SeedOptions {
            no_wait: true,
            ..SeedOptions::default()
        };
        let seeder = Seeder::spawn_with(client, &payload, &payload.data_dir, opts);
        let peer = seeder.peer_arg();
        let mount = MountGuard::mount(&payload.torrent, &["--peer", &peer]);
        assert_root_is(&mount, &payload);
        assert_all_files_match(&mount, &payload);
        stop_cleanly(mount);
    } else {
        let (tracker, payload) = tracked_payload(MULTI_MB, MULTI_PIECE_KB, true);
        let seeder = Seeder::spawn(client, &payload);
        let listed = tracker.peers(&payload.torrent);
        assert!(
            listed.contains(&seeder.peer_arg()),
            "tracker lists {listed:?}, not {}",
            seeder.peer_arg()
        );
        let mount = MountGuard::mount(&payload.torrent, &[]);
        assert_root_is(&mount, &payload);
        assert_all_files_match(&mount, &payload);
        stop_cleanly(mount);
    }
}

#[test]
fn aria2_seeds_multi_file_torrent_found_via_tracker() {
    fuse_test(
        "aria2_seeds_multi_file_torrent_found_via_tracker",
        TEST_LIMIT,
        || single_seeder_multi_file(Client::Aria2, false),
    );
}

#[test]
fn qbittorrent_seeds_multi_file_torrent_found_via_tracker() {
    fuse_test(
        "qbittorrent_seeds_multi_file_torrent_found_via_tracker",
        TEST_LIMIT,
        || single_seeder_multi_file(Client::QBittorrent, false),
    );
}

#[test]
fn libtorrent_seeds_multi_file_torrent_given_by_peer_flag() {
    fuse_test(
        "libtorrent_seeds_multi_file_torrent_given_by_peer_flag",
        TEST_LIMIT,
        || single_seeder_multi_file(Client::Libtorrent, true),
    );
}

// ---- a swarm ----

#[test]
fn three_seeders_serve_single_file_torrent() {
    fuse_test(
        "three_seeders_serve_single_file_torrent",
        TEST_LIMIT,
        || {
            let (_tracker, payload) = tracked_payload(32, 128, false);
            let _seeders: Vec<Seeder> = [Client::Aria2, Client::QBittorrent, Client::Libtorrent]
                .into_iter()
                .map(|c| Seeder::spawn(c, &payload))
                .collect();
            let mount = MountGuard::mount(&payload.torrent, &[]);
            assert_root_is(&mount, &payload);
            assert_all_files_match(&mount, &payload);
            stop_cleanly(mount);
        },
    );
}

// ---- reading patterns ----

#[test]
fn concurrent_readers_of_different_files() {
    fuse_test("concurrent_readers_of_different_files", TEST_LIMIT, || {
        let (_tracker, payload) = tracked_payload(MULTI_MB, MULTI_PIECE_KB, true);
        let _seeder = Seeder::spawn(Client::Aria2, &payload);
        let mount = MountGuard::mount(&payload.torrent, &[]);
        let names = [
            "big/part1.bin",
            "big/part2.bin",
            "big/part3-odd.bin",
            "media/video.mkv",
            "z/rest.bin",
            "dir with spaces/file with spaces & ümlaut.bin",
        ];
        std::thread::scope(|s| {
            let readers: Vec<_> = names
                .iter()
                .map(|name| {
                    let f = payload.file(name);
                    let path = mount.path().join(&f.rel);
                    s.spawn(move || (name, sha1_file(&path), f.sha1.clone()))
                })
                .collect();
            for reader in readers {
                let (name, got, want) = reader.join().expect("reader thread panicked");
                assert_eq!(got, want, "SHA-1 of {name} read concurrently");
            }
        });
        stop_cleanly(mount);
    });
}

/// Reads `start..end` of the file at `path` through its own handle, 128 KiB at a time, and
/// checks every chunk against the payload.
fn stream_and_check(path: &Path, payload: &Payload, f: &PayloadFile, start: u64, end: u64) {
    const CHUNK: u64 = 128 * 1024;
    let file = File::open(path).expect("open through the mount");
    let mut offset = start;
    while offset < end {
        let len = CHUNK.min(end - offset) as usize;
        assert_bytes_at(&file, payload, f, offset, len);
        offset += len as u64;
    }
}

#[test]
fn concurrent_readers_of_one_file() {
    fuse_test("concurrent_readers_of_one_file", TEST_LIMIT, || {
        let (_tracker, payload) = tracked_payload(LARGE_MB, LARGE_PIECE_KB, false);
        let _seeder = Seeder::spawn(Client::Aria2, &payload);
        let mount = MountGuard::mount(&payload.torrent, &[]);
        let f = payload.file("");
        let path = mount.path().join(&f.rel);
        // As players do: one handle streams from the start, another from a seek into the
        // middle, and a third keeps probing the head and the tail, all on the same file at
        // once. Each handle keeps its own read-ahead; a seek on one must not cancel what
        // another waits for.
        let middle = f.len / 2 + 12_345;
        std::thread::scope(|s| {
            let (path, payload) = (&path, &payload);
            let streams = [(0, middle), (middle, f.len)].map(|(start, end)| {
                s.spawn(move || stream_and_check(path, payload, f, start, end))
            });
            let prober = s.spawn(move || {
                for _ in 0..10 {
                    stream_and_check(path, payload, f, 0, 64 * 1024);
                    stream_and_check(path, payload, f, f.len - 64 * 1024, f.len);
                }
            });
            for reader in streams.into_iter().chain([prober]) {
                reader.join().expect("reader thread panicked");
            }
        });
        stop_cleanly(mount);
    });
}

#[test]
fn seek_to_middle_of_large_file_reads_payload_bytes() {
    fuse_test(
        "seek_to_middle_of_large_file_reads_payload_bytes",
        TEST_LIMIT,
        || {
            let (_tracker, payload) = tracked_payload(LARGE_MB, LARGE_PIECE_KB, false);
            let _seeder = Seeder::spawn(Client::QBittorrent, &payload);
            let mount = MountGuard::mount(&payload.torrent, &[]);
            let f = payload.file("");
            let file = File::open(mount.path().join(&f.rel)).expect("open through the mount");
            const MIB: usize = 1 << 20;
            // Cold seek into the middle, unaligned so the range straddles pieces; then back
            // to the start; then the last MiB, which ends exactly at EOF.
            let middle = f.len / 2 + 4097;
            for (offset, len) in [(middle, MIB), (1, 100), (f.len - MIB as u64, MIB)] {
                assert_bytes_at(&file, &payload, f, offset, len);
            }
            drop(file);
            stop_cleanly(mount);
        },
    );
}

#[test]
fn listing_sizes_eof_and_read_only() {
    fuse_test("listing_sizes_eof_and_read_only", TEST_LIMIT, || {
        let (_tracker, payload) = tracked_payload(MULTI_MB, MULTI_PIECE_KB, true);
        let _seeder = Seeder::spawn(Client::Libtorrent, &payload);
        let mount = MountGuard::mount(&payload.torrent, &[]);
        assert_root_is(&mount, &payload);

        // `ls -la` of every directory shows each file with the payload's size.
        let mut by_dir: BTreeMap<std::path::PathBuf, Vec<_>> = BTreeMap::new();
        for f in &payload.files {
            let path = mount.path().join(&f.rel);
            by_dir
                .entry(path.parent().expect("parent").to_path_buf())
                .or_default()
                .push(f);
        }
        for (dir, files) in &by_dir {
            let listed = ls_la_sizes(dir);
            for f in files {
                let name = f
                    .rel
                    .file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned();
                assert_eq!(
                    listed.get(&name),
                    Some(&f.len),
                    "`ls -la {}` for {name:?}: {listed:?}",
                    dir.display()
                );
            }
            assert_eq!(
                listed.len(),
                files.len(),
                "regular files listed in {}: {listed:?}",
                dir.display()
            );
        }

        // Reads at and past EOF return 0 bytes; a read across EOF returns only the tail.
        for inner in ["a/piece-plus-1.bin", "z/rest.bin", "a/one-byte.bin"] {
            let f = payload.file(inner);
            let file = File::open(mount.path().join(&f.rel)).expect("open");
            let mut buf = vec![0u8; 4096];
            for past in [f.len, f.len + 1, f.len + 10 * 1024 * 1024] {
                assert_eq!(
                    file.read_at(&mut buf, past).expect("read past EOF"),
                    0,
                    "{inner}: read at {past}"
                );
            }
            let n = file.read_at(&mut buf, f.len - 1).expect("read across EOF");
            assert_eq!(n, 1, "{inner}: read of 4096 at len-1");
            assert_eq!(
                buf[..1],
                payload.read_range(f, f.len - 1, 1)[..],
                "{inner}: last byte"
            );
        }
        for inner in ["empty-at-root.dat", "a/b/c/d/e/deeper-empty.txt"] {
            let mut bytes = Vec::new();
            File::open(mount.path().join(&payload.file(inner).rel))
                .expect("open empty file")
                .read_to_end(&mut bytes)
                .expect("read empty file");
            assert!(bytes.is_empty(), "{inner} should read as empty");
        }

        // Read-only: opening for write, creating, and making a directory give EROFS.
        let existing = mount.path().join(&payload.file("README.txt").rel);
        let root = mount.path().join(&payload.name);
        let attempts = [
            (
                "open for write",
                OpenOptions::new().write(true).open(&existing).map(drop),
            ),
            ("create", File::create(root.join("new-file")).map(drop)),
            ("mkdir", fs::create_dir(root.join("new-dir"))),
        ];
        for (what, result) in attempts {
            let err = result.expect_err(what);
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{what}: {err}");
        }
        stop_cleanly(mount);
    });
}

#[test]
fn cache_smaller_than_file_still_reads_correctly() {
    fuse_test(
        "cache_smaller_than_file_still_reads_correctly",
        TEST_LIMIT,
        || {
            let (_tracker, payload) = tracked_payload(LARGE_MB, LARGE_PIECE_KB, false);
            let _seeder = Seeder::spawn(Client::Libtorrent, &payload);
            let mount = MountGuard::mount(&payload.torrent, &["--cache-size", "8MiB"]);
            let f = payload.file("");
            let path = mount.path().join(&f.rel);
            // Twice: the second pass needs pieces the 8 MiB cache must have evicted.
            for pass in 1..=2 {
                assert_eq!(
                    sha1_file(&path),
                    f.sha1,
                    "SHA-1 of the 48 MiB file, pass {pass}"
                );
            }
            let mut start = vec![0u8; 1 << 20];
            File::open(&path)
                .expect("open")
                .read_exact_at(&mut start, 0)
                .expect("re-read the start");
            assert!(
                start == payload.read_range(f, 0, 1 << 20),
                "first MiB after eviction differs"
            );
            stop_cleanly(mount);
        },
    );
}

// ---- failures ----

/// "No peer has the pieces" is set up with a partial seeder: python-libtorrent seeds a
/// copy of the data without `big/part1.bin` and hash-checks it first, so it advertises
/// every piece except those touching that file. swarmfs gets it via `--peer` (the
/// torrent's tracker is dead). A read inside part1.bin must fail with EIO after
/// `--read-timeout 3s`; files far from it (z/rest.bin, media/video.mkv share no piece
/// with it: big/part2.bin and more lie between) must still read correctly afterwards,
/// and the unavailable range must fail again rather than hang.
#[test]
fn unavailable_pieces_give_eio_and_other_files_still_read() {
    fuse_test(
        "unavailable_pieces_give_eio_and_other_files_still_read",
        TEST_LIMIT,
        || {
            let payload = Payload::make(MULTI_MB, MULTI_PIECE_KB, true, DEAD_TRACKER);
            let partial = payload.partial_copy(&["big/part1.bin"]);
            let opts = SeedOptions {
                check: true,
                no_wait: true,
                lt_status_every_second: true,
            };
            let seeder = Seeder::spawn_with(Client::Libtorrent, &payload, partial.path(), opts);
            // Serve only once the check is over: libtorrent then knows what it lacks.
            assert!(
                seeder.wait_for_log("state=downloading", Duration::from_secs(60)),
                "partial libtorrent seeder never finished checking:\n{}",
                seeder.logs()
            );
            let peer = seeder.peer_arg();
            let mount = MountGuard::mount(
                &payload.torrent,
                &["--peer", &peer, "--read-timeout", SHORT_READ_TIMEOUT],
            );

            let missing = payload.file("big/part1.bin");
            let missing_path = mount.path().join(&missing.rel);
            assert_read_gives_eio(&missing_path, missing.len / 2, 64 * 1024);
            for inner in ["z/rest.bin", "media/video.mkv"] {
                let f = payload.file(inner);
                assert_eq!(
                    sha1_file(&mount.path().join(&f.rel)),
                    f.sha1,
                    "{inner} after an EIO elsewhere"
                );
            }
            assert_read_gives_eio(&missing_path, missing.len / 3, 4096);
            stop_cleanly(mount);
        },
    );
}

/// No seeder at all (a tracker that knows no peer): the tree still appears with the
/// metainfo's sizes, a read fails with EIO after the read timeout, the tree still
/// answers afterwards, and SIGINT still exits cleanly.
#[test]
fn no_peers_read_times_out_with_eio() {
    fuse_test("no_peers_read_times_out_with_eio", TEST_LIMIT, || {
        let (_tracker, payload) = tracked_payload(MULTI_MB, MULTI_PIECE_KB, true);
        let mount = MountGuard::mount(&payload.torrent, &["--read-timeout", SHORT_READ_TIMEOUT]);
        assert_root_is(&mount, &payload);
        let f = payload.file("media/video.mkv");
        let path = mount.path().join(&f.rel);
        assert_eq!(
            fs::metadata(&path).expect("stat").len(),
            f.len,
            "size without peers"
        );
        assert_read_gives_eio(&path, f.len / 2, 64 * 1024);
        for g in &payload.files {
            assert_eq!(
                fs::metadata(mount.path().join(&g.rel)).expect("stat").len(),
                g.len,
                "{}",
                g.rel.display()
            );
        }
        stop_cleanly(mount);
    });
}

/// A read blocked for want of peers (read timeout 10 minutes) when SIGINT arrives: the
/// reader gets an error promptly, swarmfs exits 0 and the mount is gone.
#[test]
fn sigint_while_read_is_blocked_unmounts_and_exits_zero() {
    fuse_test(
        "sigint_while_read_is_blocked_unmounts_and_exits_zero",
        TEST_LIMIT,
        || {
            let (_tracker, payload) = tracked_payload(MULTI_MB, MULTI_PIECE_KB, true);
            let mount = MountGuard::mount(&payload.torrent, &["--read-timeout", "600s"]);
            let f = payload.file("big/part2.bin");
            let file = File::open(mount.path().join(&f.rel)).expect("open without peers");
            let (tx, rx) = mpsc::channel();
            let offset = f.len / 2;
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let result = file.read_at(&mut buf, offset);
                drop(file);
                let _ = tx.send(result);
            });
            // Give the read time to reach swarmfs and block there.
            let early = rx.recv_timeout(Duration::from_secs(2));
            assert!(
                early.is_err(),
                "the read should block without peers, but returned {early:?}"
            );

            let mnt = mount.path().to_path_buf();
            let status = mount.stop();
            assert!(
                status.success(),
                "swarmfs exited with {status} after SIGINT during a read"
            );
            assert!(!is_mounted(&mnt), "mount still present after exit");
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(Err(_)) => {}
                Ok(Ok(n)) => {
                    panic!("blocked read returned {n} bytes after SIGINT; expected an error")
                }
                Err(_) => panic!("blocked reader still blocked 20 s after swarmfs exited"),
            }
        },
    );
}

/// `umount MNT` from outside makes swarmfs exit 0.
#[test]
fn external_umount_exits_zero() {
    fuse_test("external_umount_exits_zero", TEST_LIMIT, || {
        let (_tracker, payload) = tracked_payload(MULTI_MB, MULTI_PIECE_KB, true);
        let mount = MountGuard::mount(&payload.torrent, &[]);
        run_ok(
            Command::new("umount").arg(mount.path()),
            Duration::from_secs(20),
            "umount",
        );
        let status = mount.wait_exit();
        assert!(
            status.success(),
            "swarmfs exited with {status} after an external umount"
        );
    });
}
