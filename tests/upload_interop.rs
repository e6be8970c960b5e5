//! Issue 4, "Give back to the swarm": real clients download from swarmfs.
//!
//! - `swarmfs seed` alone serves a complete multi-file torrent to aria2, python-libtorrent,
//!   qBittorrent, transmission and rtorrent; every file's SHA-1 must match.
//! - A mount that reads a file from a seeder passes the verified pieces on to a
//!   python-libtorrent leecher that knows only the mount.
//! - A hostile peer (our own wire codec) sends malformed requests and a request flood to
//!   `swarmfs seed` while an honest leecher downloads from it: the honest download completes
//!   intact, and swarmfs stays up with bounded memory.
//!
//! Every test runs inside `harness::fuse_test` (heavy-test lock, overall deadline, nothing
//! left behind). Transfer rates are printed for the record, never asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{FramedRead, FramedWrite};

use common::clients::{
    Client, LeechClient, LeechOptions, LeechResult, LtLeecher, SeedOptions, Seeder, Tracker, leech,
};
use common::fixture::{DEAD_TRACKER, Payload, PayloadFile, sha1_file};
use common::harness::fuse_test;
use common::mount::MountGuard;
use common::net::{fresh_addr, is_listening};
use common::process::tail;
use common::swarmfs::SwarmfsSeed;
use swarmfs::types::{InfoHash, PeerId};
use swarmfs::wire::{
    BlockRequest, Handshake, Message, MessageCodec, read_handshake, write_handshake,
};

/// Overall deadline of one test. A working run takes seconds to tens of seconds (client
/// start, 24 MiB, client exit; qBittorrent and rtorrent go through seed.sh's polling);
/// this only stops hangs.
const TEST_LIMIT: Duration = Duration::from_secs(300);

/// leech.sh's TIMEOUT: 24 MiB even at transmission's ~17 MB/s takes seconds.
const LEECH_TIMEOUT: Duration = Duration::from_secs(120);

/// The multi-file layout (20 files: empty, 1-byte, piece±1, odd sizes, spaces, umlauts,
/// CJK): 24 MiB in 64 KiB pieces, 384 pieces.
const MULTI_MB: u32 = 24;
const MULTI_PIECE_KB: u32 = 64;

/// How long a freshly announced seeder may take to appear in the tracker's list.
const LISTED_DEADLINE: Duration = Duration::from_secs(30);

/// A tracker plus a payload announcing to it, whitelisted there.
fn tracked_payload(size_mb: u32, piece_kb: u32, multi: bool) -> (Tracker, Payload) {
    let tracker = Tracker::start();
    let payload = Payload::make(size_mb, piece_kb, multi, &tracker.announce_url());
    tracker.allow(&payload.torrent);
    (tracker, payload)
}

/// Waits until the tracker lists `seed`: a leecher that announces earlier would not hear
/// of it for ~30 minutes (opentracker's interval).
fn wait_listed(tracker: &Tracker, payload: &Payload, seed: &SwarmfsSeed) {
    tracker.wait_lists(&payload.torrent, &seed.peer_arg(), LISTED_DEADLINE, || {
        format!("--- swarmfs log ---\n{}", seed.log())
    });
}

/// Prints the rate line and asserts that every file verified.
fn assert_leech_verified(what: &str, result: &LeechResult, seed: &mut SwarmfsSeed) {
    println!(
        "RATE {what}: {:.1} MiB/s ({:.2} s wall incl. client start and exit, verify={})",
        result.mib_per_s, result.seconds, result.verify
    );
    assert!(
        result.verified(),
        "{what}: download did not verify (verify={})\n{}\n--- swarmfs seed log (tail) ---\n{}",
        result.verify,
        result.report,
        tail(seed.log_path(), 60)
    );
    assert!(
        seed.is_running(),
        "{what}: swarmfs seed exited during the download\n{}",
        seed.log()
    );
}

// ---- 1. aria2, python-libtorrent and qBittorrent download from `swarmfs seed` ----

/// `swarmfs seed` alone serves the multi-file payload; it announces to the tracker, and
/// `client` finds it there (libtorrent and qBittorrent are also given it directly).
fn client_leeches_from_swarmfs_seed(client: LeechClient) {
    let (tracker, payload) = tracked_payload(MULTI_MB, MULTI_PIECE_KB, true);
    let mut seed = SwarmfsSeed::start(&payload.torrent, &payload.data_dir, &[]);
    wait_listed(&tracker, &payload, &seed);
    let dl = tempfile::Builder::new()
        .prefix("swarmfs-leech-")
        .tempdir()
        .expect("tempdir");
    let mut opts = LeechOptions::fresh(LEECH_TIMEOUT);
    if matches!(client, LeechClient::Libtorrent | LeechClient::QBittorrent) {
        opts.peer = Some(seed.peer_arg());
    }
    let result = leech(
        client,
        &payload.torrent,
        &payload.sha1sums_path(),
        &dl.path().join("dl"),
        &opts,
    );
    let what = format!("{} <- swarmfs seed, {}", client.script_name(), payload.name);
    assert_leech_verified(&what, &result, &mut seed);
}

#[test]
fn aria2_leeches_multi_file_torrent_from_swarmfs_seed() {
    fuse_test(
        "aria2_leeches_multi_file_torrent_from_swarmfs_seed",
        TEST_LIMIT,
        || client_leeches_from_swarmfs_seed(LeechClient::Aria2),
    );
}

#[test]
fn libtorrent_leeches_multi_file_torrent_from_swarmfs_seed() {
    fuse_test(
        "libtorrent_leeches_multi_file_torrent_from_swarmfs_seed",
        TEST_LIMIT,
        || client_leeches_from_swarmfs_seed(LeechClient::Libtorrent),
    );
}

#[test]
fn qbittorrent_leeches_multi_file_torrent_from_swarmfs_seed() {
    fuse_test(
        "qbittorrent_leeches_multi_file_torrent_from_swarmfs_seed",
        TEST_LIMIT,
        || client_leeches_from_swarmfs_seed(LeechClient::QBittorrent),
    );
}

// ---- 2. transmission and rtorrent ----

/// transmission 3.00 never dials 127.x peers (they are "martian" to it), so swarmfs must
/// dial it: transmission-cli starts first, and once it listens, `swarmfs seed --peer`
/// points at it. The torrent's tracker is dead, so nothing else connects.
#[test]
fn transmission_leeches_multi_file_torrent_from_swarmfs_seed() {
    fuse_test(
        "transmission_leeches_multi_file_torrent_from_swarmfs_seed",
        TEST_LIMIT,
        || {
            let payload = Payload::make(MULTI_MB, MULTI_PIECE_KB, true, DEAD_TRACKER);
            let dl = tempfile::Builder::new()
                .prefix("swarmfs-leech-")
                .tempdir()
                .expect("tempdir");
            let opts = LeechOptions::fresh(LEECH_TIMEOUT);
            let (ip, port) = (opts.ip, opts.port);
            let (torrent, sums, out) = (
                payload.torrent.clone(),
                payload.sha1sums_path(),
                dl.path().join("dl"),
            );
            let leecher = std::thread::spawn(move || {
                leech(LeechClient::Transmission, &torrent, &sums, &out, &opts)
            });
            let end = Instant::now() + Duration::from_secs(30);
            while !is_listening(ip, port) {
                assert!(
                    Instant::now() < end && !leecher.is_finished(),
                    "transmission-cli never listened on {ip}:{port}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let peer = format!("{ip}:{port}");
            let mut seed =
                SwarmfsSeed::start(&payload.torrent, &payload.data_dir, &["--peer", &peer]);
            let result = leecher.join().expect("leech thread panicked");
            let what = format!("transmission <- swarmfs seed (dialed), {}", payload.name);
            assert_leech_verified(&what, &result, &mut seed);
        },
    );
}

/// rtorrent finds `swarmfs seed` through the tracker (it dials loopback peers).
#[test]
fn rtorrent_leeches_multi_file_torrent_from_swarmfs_seed() {
    fuse_test(
        "rtorrent_leeches_multi_file_torrent_from_swarmfs_seed",
        TEST_LIMIT,
        || client_leeches_from_swarmfs_seed(LeechClient::Rtorrent),
    );
}

// ---- 3. a mount passes on what it read ----

/// Reads `file` through the mount, checks its SHA-1, and returns MiB/s.
fn read_through_mount(mount: &MountGuard, file: &PayloadFile) -> f64 {
    let started = Instant::now();
    let got = sha1_file(&mount.path().join(&file.rel));
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    assert_eq!(
        got,
        file.sha1,
        "SHA-1 of {} read through the mount",
        file.rel.display()
    );
    file.len as f64 / 1048576.0 / secs
}

/// SHA-1 of the leecher's copy of `file`, or None while it does not exist yet.
fn leecher_sha1(leecher: &LtLeecher, file: &PayloadFile) -> Option<String> {
    let path = leecher.data_dir().join(&file.rel);
    path.exists().then(|| sha1_file(&path))
}

/// The mount leeches from one python-libtorrent seeder (`--peer`; the torrent's tracker is
/// dead). It first reads big/part2.bin alone; then a python-libtorrent leecher that knows
/// only the mount's `--listen` address connects, and the mount reads big/part1.bin. The
/// leecher must end up with both files intact: every piece covering them was verified in
/// the mount's cache (512 MiB, so nothing was evicted), and the mount must have offered
/// them (bitfield at connect, HAVE for newer ones) and served them.
#[test]
fn mount_serves_pieces_it_read_to_a_leecher() {
    fuse_test(
        "mount_serves_pieces_it_read_to_a_leecher",
        TEST_LIMIT,
        || {
            let payload = Payload::make(MULTI_MB, MULTI_PIECE_KB, true, DEAD_TRACKER);
            let opts = SeedOptions {
                no_wait: true,
                ..SeedOptions::default()
            };
            let seeder = Seeder::spawn_with(Client::Libtorrent, &payload, &payload.data_dir, opts);
            let mount_listen = fresh_addr();
            let seeder_peer = seeder.peer_arg();
            let mount = MountGuard::mount(
                &payload.torrent,
                &["--peer", &seeder_peer, "--listen", &mount_listen],
            );
            let before = payload.file("big/part2.bin");
            let during = payload.file("big/part1.bin");

            let alone = read_through_mount(&mount, before);

            let mut leech_opts = LeechOptions::fresh(LEECH_TIMEOUT);
            leech_opts.peer = Some(mount_listen.clone());
            let mut leecher = LtLeecher::start(&payload.torrent, &leech_opts);
            assert!(
                leecher.wait_connected(Duration::from_secs(30)),
                "the leecher never connected to the mount at {mount_listen}"
            );
            let shared = read_through_mount(&mount, during);
            println!(
                "RATE mount read, {}: {alone:.1} MiB/s alone ({}), {shared:.1} MiB/s while uploading to a libtorrent leecher ({})",
                payload.name,
                before.rel.display(),
                during.rel.display()
            );

            // Wait for the leecher to have both files; read its copies only while it runs
            // (its files are sparse, so a missing piece reads as zeros and fails the check).
            let end = Instant::now() + Duration::from_secs(60);
            loop {
                let done = [before, during]
                    .iter()
                    .all(|f| leecher_sha1(&leecher, f).as_deref() == Some(f.sha1.as_str()));
                if done || Instant::now() >= end {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            let status = leecher.last_status().unwrap_or_default();
            leecher.stop();
            println!("leecher after the reads (it knows only the mount): {status}");
            for f in [before, during] {
                assert_eq!(
                    leecher_sha1(&leecher, f).as_deref(),
                    Some(f.sha1.as_str()),
                    "the leecher's copy of {}, which the mount read, is incomplete or wrong\n\
                 leecher status: {status}\n--- leecher log ---\n{}\n--- mount log (tail) ---\n{}",
                    f.rel.display(),
                    leecher.log(),
                    tail(mount.log_path(), 60)
                );
            }
            let status = mount.stop();
            assert!(status.success(), "swarmfs mount exited with {status}");
            drop(seeder);
        },
    );
}

// ---- 4. a hostile peer cannot hurt an honest one ----

/// The seeder's memory bound for a 24 MiB torrent: generous on purpose. It is a check that
/// the flood is not buffered (100k requests × 16 KiB would be 1.6 GB), not a size target.
const MAX_SEED_RSS_KIB: u64 = 200 * 1024;

/// Requests in the flood, sent without reading a byte of the answers.
const FLOOD_REQUESTS: u32 = 100_000;

/// Any single wait of the hostile peer (connect, handshake, unchoke, answers).
const HOSTILE_STEP: Duration = Duration::from_secs(20);

/// The flood is written until the seeder stops reading (TCP windows full) or this passes.
const FLOOD_WRITE_LIMIT: Duration = Duration::from_secs(30);

struct Session {
    reader: FramedRead<OwnedReadHalf, MessageCodec>,
    writer: FramedWrite<OwnedWriteHalf, MessageCodec>,
}

/// Connects, shakes hands (announcing the Fast extension, as `Handshake::new` does), says
/// Interested and waits for Unchoke.
async fn hostile_session(addr: SocketAddr, info_hash: InfoHash) -> Session {
    let mut stream = tokio::time::timeout(HOSTILE_STEP, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect to swarmfs seed");
    let ours = Handshake::new(info_hash, PeerId(*b"-XX0001-hostile-peer"));
    write_handshake(&mut stream, &ours)
        .await
        .expect("send handshake");
    let theirs = tokio::time::timeout(HOSTILE_STEP, read_handshake(&mut stream))
        .await
        .expect("handshake timed out")
        .expect("read handshake");
    assert_eq!(
        theirs.info_hash, info_hash,
        "seeder answered for another torrent"
    );
    assert!(
        theirs.supports_fast(),
        "swarmfs announces the Fast extension"
    );
    let (read_half, write_half) = stream.into_split();
    let mut session = Session {
        reader: FramedRead::new(read_half, MessageCodec::default()),
        writer: FramedWrite::new(write_half, MessageCodec::default()),
    };
    session
        .writer
        .send(&Message::Interested)
        .await
        .expect("send Interested");
    loop {
        let next = tokio::time::timeout(HOSTILE_STEP, session.reader.next())
            .await
            .expect("no Unchoke within the step deadline");
        match next {
            Some(Ok(Message::Unchoke)) => return session,
            Some(Ok(_)) => {}
            other => panic!("connection ended before Unchoke: {other:?}"),
        }
    }
}

/// What the hostile peer saw.
#[derive(Debug)]
struct HostileReport {
    /// The malformed requests the seeder answered with Reject (Fast extension).
    rejected: Vec<BlockRequest>,
    /// Pieces the seeder sent for requests that were not the valid sentinel.
    wrong_pieces: Vec<(u32, u32, usize)>,
    /// Whether the seeder dropped the connection over the malformed requests (allowed).
    dropped_on_malformed: bool,
    /// Flood requests handed to the socket before it stopped taking them.
    flood_written: u32,
}

/// The hostile peer: malformed requests, then a flood of valid requests it never reads the
/// answers to. Tells `flooding` once the flood is under way, then holds the connection
/// open (unread) until `stop` says so.
async fn hostile_peer(
    addr: SocketAddr,
    info_hash: InfoHash,
    piece_count: u32,
    piece_len: u32,
    sentinel: (BlockRequest, Vec<u8>),
    flooding: mpsc::Sender<()>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> HostileReport {
    const BLOCK: u32 = 16 * 1024;
    let mut session = hostile_session(addr, info_hash).await;
    let malformed = [
        // a piece index past the end
        BlockRequest {
            piece: piece_count + 7,
            offset: 0,
            length: BLOCK,
        },
        // a 1 MiB block
        BlockRequest {
            piece: 0,
            offset: 0,
            length: 1 << 20,
        },
        // a zero-length block
        BlockRequest {
            piece: 1,
            offset: 0,
            length: 0,
        },
        // a block running past the end of its piece
        BlockRequest {
            piece: 2,
            offset: piece_len - BLOCK / 2,
            length: BLOCK,
        },
    ];
    for request in malformed.iter().chain([&sentinel.0]) {
        session
            .writer
            .feed(&Message::Request(*request))
            .await
            .expect("send request");
    }
    SinkExt::<Message>::flush(&mut session.writer)
        .await
        .expect("flush requests");
    let mut report = HostileReport {
        rejected: Vec::new(),
        wrong_pieces: Vec::new(),
        dropped_on_malformed: false,
        flood_written: 0,
    };
    // Answers come in request order: Rejects (or nothing) for the malformed ones, then
    // the sentinel's Piece.
    loop {
        let next = tokio::time::timeout(HOSTILE_STEP, session.reader.next())
            .await
            .expect("no answer to the sentinel request within the step deadline");
        match next {
            Some(Ok(Message::Reject(r))) => report.rejected.push(r),
            Some(Ok(Message::Piece {
                piece,
                offset,
                data,
            })) => {
                let (want, bytes) = &sentinel;
                if piece == want.piece && offset == want.offset {
                    assert!(
                        data[..] == bytes[..],
                        "the sentinel block differs from the payload"
                    );
                    break;
                }
                report.wrong_pieces.push((piece, offset, data.len()));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                report.dropped_on_malformed = true;
                session = hostile_session(addr, info_hash).await;
                break;
            }
        }
    }

    // The flood: valid requests over every block of every piece, never reading answers.
    let Session { reader, mut writer } = session;
    let blocks_per_piece = piece_len / BLOCK;
    let _ = flooding.send(());
    let flood = async {
        for i in 0..FLOOD_REQUESTS {
            let request = BlockRequest {
                piece: i % piece_count,
                offset: (i / piece_count % blocks_per_piece) * BLOCK,
                length: BLOCK,
            };
            if writer.feed(&Message::Request(request)).await.is_err() {
                break;
            }
            report.flood_written = i + 1;
        }
        let _ = SinkExt::<Message>::flush(&mut writer).await;
    };
    let _ = tokio::time::timeout(FLOOD_WRITE_LIMIT, flood).await;
    // Hold the connection (and the seeder's unread answers) until the honest peer is done.
    let _ = stop.await;
    drop((reader, writer));
    report
}

/// `swarmfs seed` serves a single-file 24 MiB torrent (64 KiB pieces). A hostile peer
/// requests a piece past the end, a 1 MiB block, a zero-length block and a block past its
/// piece's end, then floods 100k requests without reading. Meanwhile python-libtorrent
/// downloads the whole torrent from the same seeder and must verify; swarmfs must still
/// run, must never have sent data for a malformed request, and its peak RSS must stay
/// under 200 MiB.
#[test]
fn hostile_peer_does_not_hurt_honest_leecher_or_seeder() {
    fuse_test(
        "hostile_peer_does_not_hurt_honest_leecher_or_seeder",
        TEST_LIMIT,
        || {
            let payload = Payload::make(MULTI_MB, MULTI_PIECE_KB, false, DEAD_TRACKER);
            let file = payload.file("").clone();
            let mut seed = SwarmfsSeed::start(&payload.torrent, &payload.data_dir, &[]);
            let info_hash = InfoHash(
                (0..20)
                    .map(|i| u8::from_str_radix(&payload.info_hash[2 * i..2 * i + 2], 16).unwrap())
                    .collect::<Vec<u8>>()
                    .try_into()
                    .unwrap(),
            );
            let piece_len = u32::try_from(payload.piece_len).unwrap();
            let piece_count = u32::try_from(file.len.div_ceil(payload.piece_len)).unwrap();
            // piece 3, second block: a valid request whose answer ends the malformed phase
            let sentinel_req = BlockRequest {
                piece: 3,
                offset: 16 * 1024,
                length: 16 * 1024,
            };
            let sentinel_bytes =
                payload.read_range(&file, 3 * payload.piece_len + 16 * 1024, 16 * 1024);

            let addr = SocketAddr::V4(seed.addr());
            let (flooding_tx, flooding_rx) = mpsc::channel();
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
            let hostile = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(hostile_peer(
                    addr,
                    info_hash,
                    piece_count,
                    piece_len,
                    (sentinel_req, sentinel_bytes),
                    flooding_tx,
                    stop_rx,
                ))
            });
            if flooding_rx.recv_timeout(Duration::from_secs(90)).is_err() {
                let outcome = hostile.join();
                panic!("the hostile peer never started its flood: {outcome:?}");
            }

            let dl = tempfile::Builder::new()
                .prefix("swarmfs-leech-")
                .tempdir()
                .expect("tempdir");
            let mut opts = LeechOptions::fresh(LEECH_TIMEOUT);
            opts.peer = Some(seed.peer_arg());
            let result = leech(
                LeechClient::Libtorrent,
                &payload.torrent,
                &payload.sha1sums_path(),
                &dl.path().join("dl"),
                &opts,
            );
            let peak_kib = seed.peak_rss_kib();
            let alive = seed.is_running();
            let _ = stop_tx.send(());
            let report = hostile.join().expect("hostile peer panicked");
            println!(
                "hostile peer: {report:?}; swarmfs seed peak RSS {:.1} MiB",
                peak_kib as f64 / 1024.0
            );
            assert!(
                alive,
                "swarmfs seed died under the hostile peer\n{}",
                seed.log()
            );
            assert_leech_verified(
                &format!(
                    "libtorrent <- swarmfs seed under a request flood, {}",
                    payload.name
                ),
                &result,
                &mut seed,
            );
            assert!(
                report.wrong_pieces.is_empty(),
                "swarmfs sent data for malformed requests: {:?}",
                report.wrong_pieces
            );
            if !report.dropped_on_malformed {
                assert_eq!(
                    report.rejected.len(),
                    4,
                    "each malformed request should be rejected (Fast extension): {report:?}"
                );
            }
            assert!(
                peak_kib < MAX_SEED_RSS_KIB,
                "swarmfs seed peak RSS {peak_kib} KiB exceeds {MAX_SEED_RSS_KIB} KiB"
            );
            assert!(
                seed.is_running(),
                "swarmfs seed died at the end\n{}",
                seed.log()
            );
        },
    );
}
