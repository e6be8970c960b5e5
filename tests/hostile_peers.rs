//! Real mounts against in-process hostile seeders (`common::swarm`): whatever a peer sends
//! (corrupted blocks, garbage, a 100 MiB frame, blocks nobody asked for, nothing at all,
//! slowly, or half a conversation), a reader gets the torrent's exact bytes or EIO after
//! `--read-timeout`, never wrong bytes, and the mount keeps working.
//!
//! Peers come only from `--peer` (the torrent announces to `DEAD_TRACKER`). Every test
//! runs inside `harness::fuse_test` (heavy-test lock, overall deadline, nothing left
//! behind) and asserts on correctness only; durations appear only as hang bounds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::checks::{
    SHORT_READ_TIMEOUT, assert_all_files_match, assert_bytes_at, assert_read_gives_eio,
    ledger_gave_us_mib, stop_cleanly,
};
use common::fixture::{DEAD_TRACKER, Payload};
use common::harness::fuse_test;
use common::mount::MountGuard;
use common::swarm::{Behaviour, Pieces, TestSeeder, WireEvent};

/// Overall deadline of one test: seconds when swarmfs works (in-process seeders start at
/// once); reads that wait out a slow peer's 15 s request timeout more than once fit too.
const TEST_LIMIT: Duration = Duration::from_secs(240);

/// The multi-file payload (20 files, empty, tiny and piece±1 sizes) in 64 KiB pieces:
/// the same as `fuse_real_clients`, so the cached copy is shared.
const MULTI_MB: u32 = 24;
const MULTI_PIECE_KB: u32 = 64;

/// A single file of 8 MiB in 64 KiB pieces (128 pieces), for reads at piece offsets.
const SINGLE_MB: u32 = 8;
const SINGLE_PIECE_KB: u32 = 64;
const PIECE_BYTES: u64 = SINGLE_PIECE_KB as u64 * 1024;

/// Pieces a partly corrupting seeder damages: 8 in the middle of 128, well past the
/// 1 MiB (16-piece) read-ahead of a fresh open anywhere below piece 88, and clear of the
/// first and last piece, which an open fetches at once as hints.
const CORRUPT: std::ops::Range<u32> = 104..112;
/// Good pieces read through fresh opens; none comes within read-ahead of `CORRUPT`.
const GOOD_PIECES: [u32; 4] = [0, 20, 50, 80];

fn multi_payload() -> Payload {
    Payload::make(MULTI_MB, MULTI_PIECE_KB, true, DEAD_TRACKER)
}

fn single_payload() -> Payload {
    Payload::make(SINGLE_MB, SINGLE_PIECE_KB, false, DEAD_TRACKER)
}

/// Mounts `payload` with one `--peer` per seeder, plus `extra` arguments.
fn mount_with(payload: &Payload, seeders: &[&TestSeeder], extra: &[&str]) -> MountGuard {
    let peers: Vec<String> = seeders.iter().map(|s| s.peer_arg()).collect();
    let mut args: Vec<&str> = Vec::new();
    for peer in &peers {
        args.extend(["--peer", peer.as_str()]);
    }
    args.extend(extra);
    MountGuard::mount(&payload.torrent, &args)
}

/// Lines of the mount's log that contain every one of `needles`.
fn log_lines_with(mount: &MountGuard, needles: &[&str]) -> Vec<String> {
    mount
        .log()
        .lines()
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .map(str::to_string)
        .collect()
}

/// The log says the mount dropped the peer at `seeder`'s address (for any reason).
fn assert_peer_dropped(mount: &MountGuard, seeder: &TestSeeder, what: &str) {
    let addr = seeder.addr().to_string();
    let dropped = !log_lines_with(mount, &["peer disconnected", &addr]).is_empty()
        || !log_lines_with(mount, &["dropping peer", &addr]).is_empty();
    assert!(
        dropped,
        "the log never says the {what} peer at {addr} was dropped"
    );
}

/// The log never says the mount dropped the honest peer on purpose.
fn assert_honest_kept(mount: &MountGuard, honest: &TestSeeder) {
    let dropped = log_lines_with(mount, &["dropping peer", &honest.addr().to_string()]);
    assert!(
        dropped.is_empty(),
        "the honest peer was dropped: {dropped:?}"
    );
}

/// Reads `len` bytes at `offset` of the single-file payload through a fresh open (so
/// read-ahead starts from its floor) and compares them with the payload.
fn assert_range_matches(mount: &MountGuard, payload: &Payload, offset: u64, len: usize) {
    let file = payload.file("");
    let f = File::open(mount.path().join(&file.rel)).expect("open through the mount");
    assert_bytes_at(&f, payload, file, offset, len);
}

/// 1. A peer that corrupts every piece it serves, beside an honest one: every file reads
///    back exactly, and the log shows the hash failures that caught the corruption.
#[test]
fn corrupting_and_honest_seeders_read_correctly() {
    fuse_test(
        "corrupting_and_honest_seeders_read_correctly",
        TEST_LIMIT,
        || {
            let payload = multi_payload();
            let corrupt = TestSeeder::start(Behaviour::Corrupting(Pieces::All), &payload);
            let honest = TestSeeder::start(Behaviour::Honest, &payload);
            let mount = mount_with(&payload, &[&corrupt, &honest], &[]);
            assert_all_files_match(&mount, &payload);
            assert!(
                corrupt.blocks_served() > 0,
                "the corrupting seeder was never asked for a block, so nothing was tested"
            );
            let failures = log_lines_with(&mount, &["failed its SHA-1 check"]);
            assert!(
                !failures.is_empty(),
                "{} corrupted blocks served but the log shows no hash failure",
                corrupt.blocks_served()
            );
            assert_peer_dropped(&mount, &corrupt, "corrupting");
            assert_honest_kept(&mount, &honest);
            stop_cleanly(mount);
        },
    );
}

/// 2. Only a peer that corrupts some pieces: the good pieces read correctly, a read of a
///    corrupted piece gets EIO after the read timeout (never wrong bytes), and the mount
///    still answers afterwards.
#[test]
fn corrupted_pieces_give_eio_and_good_ones_read() {
    fuse_test(
        "corrupted_pieces_give_eio_and_good_ones_read",
        TEST_LIMIT,
        || {
            let payload = single_payload();
            let corrupted = CORRUPT.collect();
            let seeder =
                TestSeeder::start(Behaviour::Corrupting(Pieces::Only(corrupted)), &payload);
            let mount = mount_with(
                &payload,
                &[&seeder],
                &["--read-timeout", SHORT_READ_TIMEOUT],
            );
            for piece in GOOD_PIECES {
                assert_range_matches(&mount, &payload, u64::from(piece) * PIECE_BYTES, 4096);
            }

            let path = mount.path().join(&payload.file("").rel);
            let bad_offset = u64::from(CORRUPT.start) * PIECE_BYTES + 100;
            assert_read_gives_eio(&path, bad_offset, 4096);
            assert!(
                !log_lines_with(&mount, &["failed its SHA-1 check"]).is_empty(),
                "EIO for a corrupted piece, but the log shows no hash failure"
            );

            // Still mounted and answering: stat, and the good pieces again (from cache).
            assert!(mount.is_mounted(), "the mount went away after the EIO");
            assert_eq!(
                fs::metadata(&path).expect("stat").len(),
                payload.file("").len
            );
            for piece in GOOD_PIECES {
                assert_range_matches(&mount, &payload, u64::from(piece) * PIECE_BYTES, 4096);
            }
            stop_cleanly(mount);
        },
    );
}

/// 3a. Peers that send garbage or announce a 100 MiB frame are dropped, and the honest
///     peer beside them serves every file exactly.
#[test]
fn garbage_and_oversized_peers_do_not_harm_the_honest_one() {
    fuse_test(
        "garbage_and_oversized_peers_do_not_harm_the_honest_one",
        TEST_LIMIT,
        || {
            let payload = multi_payload();
            let garbage = TestSeeder::start(Behaviour::Garbage, &payload);
            let oversized = TestSeeder::start(Behaviour::Oversized, &payload);
            let honest = TestSeeder::start(Behaviour::Honest, &payload);
            let mount = mount_with(&payload, &[&garbage, &oversized, &honest], &[]);
            assert_all_files_match(&mount, &payload);
            assert_peer_dropped(&mount, &garbage, "garbage");
            assert_peer_dropped(&mount, &oversized, "oversized");
            assert_honest_kept(&mount, &honest);
            stop_cleanly(mount);
        },
    );
}

/// 3b. A peer that sends corrupted blocks nobody asked it for, aimed at the pieces being
///     fetched, must not spoil them nor get the honest peer beside it banned.
#[test]
fn unsolicited_blocks_do_not_harm_the_honest_peer() {
    fuse_test(
        "unsolicited_blocks_do_not_harm_the_honest_peer",
        TEST_LIMIT,
        || {
            let payload = multi_payload();
            let unsolicited = TestSeeder::start(Behaviour::Unsolicited, &payload);
            let honest = TestSeeder::start(Behaviour::Honest, &payload);
            // Short enough that a failure (three FUSE reads timing out) fits the deadline.
            let mount = mount_with(
                &payload,
                &[&unsolicited, &honest],
                &["--read-timeout", "20s"],
            );
            assert_all_files_match(&mount, &payload);
            assert!(
                unsolicited.blocks_served() > 0,
                "the unsolicited seeder never sent a block, so nothing was tested"
            );
            assert_honest_kept(&mount, &honest);
            stop_cleanly(mount);
        },
    );
}

/// 4a. A peer that has everything but never unchokes: EIO after the read timeout, with a
///     log line that says why.
#[test]
fn silent_seeder_alone_gives_eio_saying_choked() {
    fuse_test(
        "silent_seeder_alone_gives_eio_saying_choked",
        TEST_LIMIT,
        || {
            let payload = single_payload();
            let silent = TestSeeder::start(Behaviour::Silent, &payload);
            let mount = mount_with(
                &payload,
                &[&silent],
                &["--read-timeout", SHORT_READ_TIMEOUT],
            );
            let path = mount.path().join(&payload.file("").rel);
            assert_read_gives_eio(&path, 0, 4096);
            let explained = log_lines_with(&mount, &["read failed", "all are choking us"]);
            assert!(
                !explained.is_empty(),
                "no read failure in the log says the peers are choking us"
            );
            assert_eq!(silent.blocks_served(), 0, "a silent seeder served blocks");
            stop_cleanly(mount);
        },
    );
}

/// 4b. A silent peer beside an honest one costs nothing: every byte reads back.
#[test]
fn silent_and_honest_seeders_read_correctly() {
    fuse_test(
        "silent_and_honest_seeders_read_correctly",
        TEST_LIMIT,
        || {
            let payload = multi_payload();
            let silent = TestSeeder::start(Behaviour::Silent, &payload);
            let honest = TestSeeder::start(Behaviour::Honest, &payload);
            let mount = mount_with(&payload, &[&silent, &honest], &[]);
            assert_all_files_match(&mount, &payload);
            assert!(
                honest.blocks_served() > 0,
                "the honest seeder served nothing"
            );
            stop_cleanly(mount);
        },
    );
}

/// 5a. A peer that sleeps a second before each block, beside an honest one: requests
///     stuck at the slow peer go to the honest one (timeout, endgame), every byte reads.
#[test]
fn slow_and_honest_seeders_read_correctly() {
    fuse_test("slow_and_honest_seeders_read_correctly", TEST_LIMIT, || {
        let payload = multi_payload();
        let slow = TestSeeder::start(Behaviour::Slow(Duration::from_secs(1)), &payload);
        let honest = TestSeeder::start(Behaviour::Honest, &payload);
        let mount = mount_with(&payload, &[&slow, &honest], &[]);
        assert_all_files_match(&mount, &payload);
        stop_cleanly(mount);
    });
}

/// 5a'. A demand overtakes read-ahead already queued at a peer: with one slow seeder
///      (20 ms per block, requests served in order, Cancel honoured), a sequential reader
///      leaves ~32 read-ahead blocks in its queue; a second reader then asks for a far
///      piece. Between the seeder receiving that request and sending the piece's last
///      block, it may send the block in progress and little else, not the queue.
#[test]
fn a_demand_overtakes_readahead_queued_at_a_peer() {
    fuse_test(
        "a_demand_overtakes_readahead_queued_at_a_peer",
        TEST_LIMIT,
        || {
            let payload = single_payload();
            let slow = TestSeeder::start(Behaviour::Slow(Duration::from_millis(20)), &payload);
            let mount = mount_with(&payload, &[&slow], &[]);
            let file = &payload.files[0];
            let path = mount.path().join(&file.rel);
            let streaming = File::open(&path).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            streaming.read_exact_at(&mut buf, 0).unwrap();
            assert_eq!(buf, payload.read_range(file, 0, buf.len()));
            // The stream's read-ahead (1 MiB: 16 pieces) is now queued at the seeder.
            let far: u32 = 80;
            let seeking = File::open(&path).unwrap();
            let offset = u64::from(far) * PIECE_BYTES;
            seeking.read_exact_at(&mut buf, offset).unwrap();
            assert_eq!(buf, payload.read_range(file, offset, buf.len()));

            let log = slow.wire_log();
            let asked = log
                .iter()
                .position(|e| matches!(e, WireEvent::Asked(p, _) if *p == far))
                .expect("the far piece was never requested");
            let done = log
                .iter()
                .rposition(|e| *e == WireEvent::Served(far))
                .expect("the far piece was never served");
            let queued_before = log[..asked]
                .iter()
                .filter(|e| matches!(e, WireEvent::Asked(p, _) if *p != far))
                .count()
                - log[..asked]
                    .iter()
                    .filter(|e| matches!(e, WireEvent::Served(p) if *p != far))
                    .count();
            let others_in_between = log[asked..done]
                .iter()
                .filter(|e| matches!(e, WireEvent::Served(p) if *p != far && *p != far + 1))
                .count();
            assert!(
                queued_before >= 8,
                "only {queued_before} read-ahead blocks were queued at the seeder before the \
                 demand: nothing to overtake, the test proves nothing ({log:?})"
            );
            assert!(
                others_in_between <= 2,
                "the seeder sent {others_in_between} other blocks between the demand's request \
                 and its last block ({queued_before} were queued before it): the demand \
                 waited behind read-ahead"
            );
            drop(seeking);
            drop(streaming);
            stop_cleanly(mount);
        },
    );
}

/// A demanded piece is asked of its peers a stripe of blocks each in turn, so blocks from
/// its start arrive from every peer at once and its hash keeps up with them.
#[test]
fn a_demanded_piece_is_asked_of_its_peers_in_stripes() {
    fuse_test(
        "a_demanded_piece_is_asked_of_its_peers_in_stripes",
        TEST_LIMIT,
        || {
            // 16 MiB in 1 MiB pieces: 64 blocks a piece.
            let payload = Payload::make(16, 1024, false, DEAD_TRACKER);
            let first = TestSeeder::start(Behaviour::Honest, &payload);
            let second = TestSeeder::start(Behaviour::Honest, &payload);
            let mount = mount_with(&payload, &[&first, &second], &[]);
            let file = &payload.files[0];
            let path = mount.path().join(&file.rel);
            // Both seeders connect and unchoke within milliseconds; give them a second.
            std::thread::sleep(Duration::from_secs(1));
            let blocks_asked = |seeder: &TestSeeder, piece: u32| -> Vec<u32> {
                let log = seeder.wire_log();
                log.iter()
                    .filter_map(|e| match e {
                        WireEvent::Asked(p, offset) if *p == piece => Some(offset / 16384),
                        _ => None,
                    })
                    .collect()
            };
            let mut checked = None;
            for piece in [3u32, 7, 11] {
                let reader = File::open(&path).unwrap();
                let offset = u64::from(piece) << 20;
                let mut buf = vec![0u8; 64 * 1024];
                reader.read_exact_at(&mut buf, offset).unwrap();
                assert_eq!(buf, payload.read_range(file, offset, buf.len()));
                let (a, b) = (blocks_asked(&first, piece), blocks_asked(&second, piece));
                if a.is_empty() || b.is_empty() {
                    continue;
                }
                // In stripes, both seeders are asked for blocks near the start and near
                // the end; as two halves, one of them has none of the first eight.
                for (name, blocks) in [("first", &a), ("second", &b)] {
                    let low = blocks.iter().min().copied().unwrap_or(u32::MAX);
                    let high = blocks.iter().max().copied().unwrap_or(0);
                    assert!(
                        low < 8 && high >= 48,
                        "piece {piece}: the {name} seeder was asked for blocks {blocks:?}, \
                         not stripes across the piece (the other: {a:?} / {b:?})"
                    );
                }
                checked = Some(piece);
                break;
            }
            assert!(
                checked.is_some(),
                "no demanded piece was asked of both seeders, so nothing was tested: first \
                 seeder served {}, second {}",
                first.blocks_served(),
                second.blocks_served()
            );
            stop_cleanly(mount);
        },
    );
}

/// A read that waits on one peer asks it for the whole piece at once, beyond its
/// read-ahead queue depth: a second round trip for the last blocks would add a peer's
/// whole answer time to the read.
#[test]
fn a_lone_peer_is_asked_for_a_whole_demanded_piece_at_once() {
    fuse_test(
        "a_lone_peer_is_asked_for_a_whole_demanded_piece_at_once",
        TEST_LIMIT,
        || {
            // 16 MiB in 1 MiB pieces: 64 blocks a piece, more than the 32 + 16 requests a
            // peer was allowed before.
            let payload = Payload::make(16, 1024, false, DEAD_TRACKER);
            // 10 ms before each block: every request of one fill is in before the first
            // block goes out.
            let seeder = TestSeeder::start(Behaviour::Slow(Duration::from_millis(10)), &payload);
            let mount = mount_with(&payload, &[&seeder], &[]);
            let file = &payload.files[0];
            std::thread::sleep(Duration::from_secs(1));
            let piece = 9u32;
            let offset = u64::from(piece) << 20;
            let reader = File::open(mount.path().join(&file.rel)).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            reader.read_exact_at(&mut buf, offset).unwrap();
            assert_eq!(buf, payload.read_range(file, offset, buf.len()));
            let log = seeder.wire_log();
            let asked_first: Vec<u32> = log
                .iter()
                .take_while(|e| !matches!(e, WireEvent::Served(p) if *p == piece))
                .filter_map(|e| match e {
                    WireEvent::Asked(p, offset) if *p == piece => Some(offset / 16384),
                    _ => None,
                })
                .collect();
            assert_eq!(
                asked_first.len(),
                64,
                "before its first block of piece {piece}, the seeder was asked for blocks \
                 {asked_first:?}, not all 64"
            );
            // At stop, the log's ledger says what the seeder gave: at least that piece.
            let (status, log) = mount.stop_with_log();
            assert!(
                status.success(),
                "swarmfs exited with {status} after SIGINT"
            );
            let gave_mib = ledger_gave_us_mib(&log, seeder.addr());
            assert!(
                gave_mib.is_some_and(|mib| mib >= 1.0),
                "the ledger logged at stop should credit {} with at least 1 MiB, got \
                 {gave_mib:?}",
                seeder.addr()
            );
        },
    );
}

/// 5b. A peer that hangs up after every 5 blocks, beside an honest one: every byte reads.
#[test]
fn disconnecting_and_honest_seeders_read_correctly() {
    fuse_test(
        "disconnecting_and_honest_seeders_read_correctly",
        TEST_LIMIT,
        || {
            let payload = multi_payload();
            let flaky = TestSeeder::start(Behaviour::Disconnecting { after_blocks: 5 }, &payload);
            let honest = TestSeeder::start(Behaviour::Honest, &payload);
            let mount = mount_with(&payload, &[&flaky, &honest], &[]);
            assert_all_files_match(&mount, &payload);
            assert!(
                flaky.blocks_served() > 0,
                "the disconnecting seeder served nothing, so nothing was tested"
            );
            stop_cleanly(mount);
        },
    );
}
