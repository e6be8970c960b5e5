//! Issue 5: magnet links and PEX through real mounts.
//!
//! - A magnet with only `tr=` mounts from a real seeder (python-libtorrent, qBittorrent)
//!   that serves the metadata (BEP 9), and every file reads back with its SHA-1.
//! - Peers that lie about the metadata (`common::swarm`'s metadata behaviours) cannot stop
//!   a mount that also knows an honest peer, are named in the log, and with no honest peer
//!   the mount gives up after `--metadata-timeout` with an error, non-zero and unmounted.
//! - PEX (BEP 11): a mount told of one python-libtorrent seeder that lacks a file learns
//!   of two full seeders from it over ut_pex, connects to them and reads that file.
//!
//! Every test runs inside `harness::fuse_test` (heavy-test lock, overall deadline, nothing
//! left behind) and asserts on correctness only; durations appear only as hang bounds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::checks::{assert_all_files_match, assert_root_is, stop_cleanly, strip_ansi};
use common::clients::{Client, SeedOptions, Seeder, Tracker};
use common::fixture::{DEAD_TRACKER, Payload};
use common::harness::fuse_test;
use common::mount::MountGuard;
use common::swarm::{Behaviour, OVERSIZED_METADATA, TestSeeder};

/// Overall deadline of one test: real seeders start within ~10 s, metadata and 24 MiB
/// over loopback take seconds; the failing mounts wait out a 5 s metadata timeout each.
/// Only stops hangs.
const TEST_LIMIT: Duration = Duration::from_secs(240);

/// The multi-file payload of the other mounting tests (cached, shared): 20 files with
/// empty ones, piece±1 sizes and odd names; its info dictionary is one metadata piece.
const MULTI_MB: u32 = 24;
const MULTI_PIECE_KB: u32 = 64;

/// 128 MiB in 32 KiB pieces (mktorrent's smallest): 4096 piece hashes make an info
/// dictionary of six 16 KiB metadata pieces, more than swarmfs asks one peer for at once
/// (4), so two peers contribute to one assembly.
const MANY_PIECES_MB: u32 = 128;
const MANY_PIECES_KB: u32 = 32;

/// What the metadata liars' honest neighbour waits before its extended handshake: the
/// liar is asked (and found out) first. Far above loopback round trips, far below
/// swarmfs's 10 s per-peer silence limit.
const HONEST_METADATA_DELAY: Duration = Duration::from_secs(2);

/// `--metadata-timeout` when no honest peer exists, and how long swarmfs may take to exit
/// after it (a hang bound).
const SHORT_METADATA_TIMEOUT: &str = "5s";
const METADATA_FAILURE_BOUND: Duration = Duration::from_secs(60);

/// Debug lines ("pex", "peer connected", "metadata peer") whatever RUST_LOG the test
/// runner has; no colour codes inside the fields the tests look for.
const DEBUG_LOG_ENV: [(&str, &str); 2] = [("RUST_LOG", "info,swarmfs=debug"), ("NO_COLOR", "1")];

/// The line swarmfs logs when an assembled info dictionary fails the info hash.
const METADATA_BAN: &str = "metadata failed its info-hash check; banning its sender";

/// `magnet:?xt=urn:btih:HASH&dn=NAME`, plus a `tr=` per tracker and an `x.pe=` per peer.
fn magnet(payload: &Payload, trackers: &[String], peers: &[SocketAddr]) -> String {
    let mut uri = format!(
        "magnet:?xt=urn:btih:{}&dn={}",
        payload.info_hash,
        percent_encode(&payload.name)
    );
    for tracker in trackers {
        uri.push_str(&format!("&tr={}", percent_encode(tracker)));
    }
    for peer in peers {
        uri.push_str(&format!("&x.pe={peer}"));
    }
    uri
}

/// Every byte outside `A-Za-z0-9-._~` as `%XX` (RFC 3986 unreserved characters kept).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The log's lines (colour codes removed) that contain every one of `needles`.
fn lines_with(log: &str, needles: &[&str]) -> Vec<String> {
    log.lines()
        .map(strip_ansi)
        .filter(|line| needles.iter().all(|n| line.contains(n)))
        .collect()
}

/// swarmfs said on stderr that it waits for this torrent's metadata, then got it.
fn assert_waited_for_metadata(log: &str, payload: &Payload) {
    assert!(
        !lines_with(
            log,
            &["waiting for the metadata of", payload.info_hash.as_str()]
        )
        .is_empty(),
        "swarmfs never said it was waiting for the metadata of {}:\n{log}",
        payload.info_hash
    );
    assert!(
        !lines_with(log, &["metadata received"]).is_empty(),
        "no `metadata received` in the log:\n{log}"
    );
}

// ---- 1. magnets from real seeders, peers from the tracker ----

/// `client` seeds the payload and announces to an opentracker; swarmfs gets a magnet
/// whose only peer source is that tracker (`tr=`), fetches the metadata from the seeder,
/// mounts, and every file has its SHA-1.
fn magnet_from_real_seeder(client: Client) {
    let tracker = Tracker::start();
    let payload = Payload::make(MULTI_MB, MULTI_PIECE_KB, true, &tracker.announce_url());
    tracker.allow(&payload.torrent);
    // Returns once the tracker lists the seeder.
    let _seeder = Seeder::spawn(client, &payload);

    let uri = magnet(&payload, &[tracker.announce_url()], &[]);
    let mount = MountGuard::mount_with_env(&uri, &[], &DEBUG_LOG_ENV);
    assert_waited_for_metadata(&mount.log(), &payload);
    assert_root_is(&mount, &payload);
    assert_all_files_match(&mount, &payload);
    stop_cleanly(mount);
}

#[test]
fn magnet_with_tracker_from_libtorrent_seeder() {
    fuse_test(
        "magnet_with_tracker_from_libtorrent_seeder",
        TEST_LIMIT,
        || magnet_from_real_seeder(Client::Libtorrent),
    );
}

#[test]
fn magnet_with_tracker_from_qbittorrent_seeder() {
    fuse_test(
        "magnet_with_tracker_from_qbittorrent_seeder",
        TEST_LIMIT,
        || magnet_from_real_seeder(Client::QBittorrent),
    );
}

// ---- 2. peers that lie about the metadata ----

/// What the log must show about a liar at `liar`: a ban for metadata that failed the
/// hash, or the refusal of an absurd size.
fn assert_liar_named(log: &str, liar_behaviour: &Behaviour, liar: SocketAddr) {
    let addr = liar.to_string();
    let evidence = match liar_behaviour {
        Behaviour::OversizedMetadata => lines_with(
            log,
            &[
                "metadata peer",
                &format!("announced a metadata size of {OVERSIZED_METADATA} bytes"),
                &addr,
            ],
        ),
        _ => lines_with(log, &[METADATA_BAN, &addr]),
    };
    assert!(
        !evidence.is_empty(),
        "the log never says the {liar_behaviour:?} peer at {addr} was banned or refused:\n{log}"
    );
}

/// A magnet whose `x.pe` lists a metadata liar and an honest seeder (whose extended
/// handshake comes late, so the liar's metadata is always tried first): the mount comes
/// up with the real tree, every file reads back exactly, and the log names the liar.
fn liar_beside_honest_peer(liar_behaviour: Behaviour) {
    let payload = Payload::make(MULTI_MB, MULTI_PIECE_KB, true, DEAD_TRACKER);
    let liar = TestSeeder::start(liar_behaviour.clone(), &payload);
    let honest = TestSeeder::start(Behaviour::SlowMetadata(HONEST_METADATA_DELAY), &payload);
    let uri = magnet(&payload, &[], &[liar.addr(), honest.addr()]);
    let mount = MountGuard::mount_with_env(&uri, &[], &DEBUG_LOG_ENV);
    let log = mount.log();
    assert_waited_for_metadata(&log, &payload);
    assert_liar_named(&log, &liar_behaviour, liar.addr());
    let honest_banned = lines_with(&log, &[METADATA_BAN, &honest.addr().to_string()]);
    assert!(
        honest_banned.is_empty(),
        "the honest peer was banned: {honest_banned:?}"
    );
    assert_root_is(&mount, &payload);
    assert_all_files_match(&mount, &payload);
    stop_cleanly(mount);
}

#[test]
fn magnet_survives_peer_lying_about_metadata_size() {
    fuse_test(
        "magnet_survives_peer_lying_about_metadata_size",
        TEST_LIMIT,
        || liar_beside_honest_peer(Behaviour::LiesAboutMetadataSize),
    );
}

#[test]
fn magnet_survives_peer_sending_bad_metadata() {
    fuse_test(
        "magnet_survives_peer_sending_bad_metadata",
        TEST_LIMIT,
        || liar_beside_honest_peer(Behaviour::BadMetadata),
    );
}

#[test]
fn magnet_survives_peer_announcing_oversized_metadata() {
    fuse_test(
        "magnet_survives_peer_announcing_oversized_metadata",
        TEST_LIMIT,
        || liar_beside_honest_peer(Behaviour::OversizedMetadata),
    );
}

/// With only a liar in `x.pe`, for each kind of liar: swarmfs gives up after
/// `--metadata-timeout 5s` with the timeout error, exits non-zero, never mounts, and its
/// log names the liar.
#[test]
fn magnet_with_only_a_liar_fails_after_metadata_timeout() {
    fuse_test(
        "magnet_with_only_a_liar_fails_after_metadata_timeout",
        TEST_LIMIT,
        || {
            let payload = Payload::make(MULTI_MB, MULTI_PIECE_KB, true, DEAD_TRACKER);
            for behaviour in [
                Behaviour::LiesAboutMetadataSize,
                Behaviour::BadMetadata,
                Behaviour::OversizedMetadata,
            ] {
                let liar = TestSeeder::start(behaviour.clone(), &payload);
                let uri = magnet(&payload, &[], &[liar.addr()]);
                let (status, log) = MountGuard::mount_fails(
                    &uri,
                    &["--metadata-timeout", SHORT_METADATA_TIMEOUT],
                    METADATA_FAILURE_BOUND,
                );
                assert!(
                    !status.success(),
                    "{behaviour:?}: swarmfs exited with {status} without metadata:\n{log}"
                );
                let error = format!("no peer gave the metadata of {}", payload.info_hash);
                assert!(
                    !lines_with(&log, &["error", &error]).is_empty(),
                    "{behaviour:?}: no metadata-timeout error in the log:\n{log}"
                );
                assert_liar_named(&log, &behaviour, liar.addr());
            }
        },
    );
}

/// What the liar in the mixed assembly holds its answers back: past the honest peer's
/// `HONEST_METADATA_DELAY`, so that the honest peer has sent its pieces by then.
const LIAR_ANSWER_DELAY: Duration = Duration::from_secs(4);

/// The info dictionary has more metadata pieces than swarmfs asks one peer for (six, four
/// at a time): the liar is asked for the first four and holds its (corrupted) answers back,
/// the honest peer (a little later) for the other two, which it sends at once. The
/// assembly mixes both, fails the hash, and then the honest peer must not pay for the
/// liar's bytes: the mount must still come up and read correctly.
#[test]
fn magnet_survives_bad_metadata_mixed_with_honest_pieces() {
    fuse_test(
        "magnet_survives_bad_metadata_mixed_with_honest_pieces",
        TEST_LIMIT,
        || {
            let payload = Payload::make(MANY_PIECES_MB, MANY_PIECES_KB, false, DEAD_TRACKER);
            let liar = TestSeeder::start(Behaviour::SlowBadMetadata(LIAR_ANSWER_DELAY), &payload);
            let honest =
                TestSeeder::start(Behaviour::SlowMetadata(HONEST_METADATA_DELAY), &payload);
            let uri = magnet(&payload, &[], &[liar.addr(), honest.addr()]);
            let mount = MountGuard::mount_with_env(&uri, &[], &DEBUG_LOG_ENV);
            let log = mount.log();
            assert_waited_for_metadata(&log, &payload);
            let honest_banned = lines_with(&log, &[METADATA_BAN, &honest.addr().to_string()]);
            assert!(
                honest_banned.is_empty(),
                "the honest peer was banned: {honest_banned:?}"
            );
            assert_all_files_match(&mount, &payload);
            stop_cleanly(mount);
        },
    );
}

// ---- 3. PEX ----

/// The torrent's file that only the PEX-learned seeders have: 8.6 MiB, about 130 pieces
/// that lie wholly inside it.
const MISSING_FILE: &str = "big/part1.bin";

/// How long the partial seeder gets to hash-check its copy and connect to both full
/// seeders (a second or two here; a hang bound).
const PEX_SOURCE_READY: Duration = Duration::from_secs(60);

/// Two python-libtorrent seeders (S1, S2) have everything; a third (K) has every file but
/// `MISSING_FILE` and never downloads it (`--only-present`), is connected to S1 and S2,
/// and speaks ut_pex (`--pex`; `--keep-redundant` everywhere so that the seeds keep their
/// connections to each other). swarmfs knows only K (`--peer`; the tracker is dead, the
/// DHT off): it must learn S1 and S2 from K's PEX, connect to them, and read every file,
/// `MISSING_FILE` included, which nobody else could have given it.
#[test]
fn pex_learns_the_seeders_that_have_the_rest() {
    fuse_test(
        "pex_learns_the_seeders_that_have_the_rest",
        TEST_LIMIT,
        || {
            let payload = Payload::make(MULTI_MB, MULTI_PIECE_KB, true, DEAD_TRACKER);
            let full = SeedOptions {
                no_wait: true,
                ..SeedOptions::default()
            };
            let s1 =
                Seeder::spawn_libtorrent(&payload, &payload.data_dir, full, &["--keep-redundant"]);
            let s2 =
                Seeder::spawn_libtorrent(&payload, &payload.data_dir, full, &["--keep-redundant"]);
            let partial = payload.partial_copy(&[MISSING_FILE]);
            let (s1_addr, s2_addr) = (s1.peer_arg(), s2.peer_arg());
            let known = Seeder::spawn_libtorrent(
                &payload,
                partial.path(),
                SeedOptions {
                    check: true,
                    no_wait: true,
                    lt_status_every_second: true,
                },
                &[
                    "--pex",
                    "--keep-redundant",
                    "--only-present",
                    "--peer",
                    &s1_addr,
                    "--peer",
                    &s2_addr,
                ],
            );
            // Checked, wanting nothing more, and connected to both seeds: its PEX lists them.
            assert!(
                known.wait_for_log("state=finished", PEX_SOURCE_READY)
                    && known.wait_for_log("peers=2 seeds=2", PEX_SOURCE_READY),
                "the partial seeder never got connected to both full seeders:\n{}",
                known.logs()
            );

            let known_addr = known.peer_arg();
            let mount = MountGuard::mount_with_env(
                &payload.torrent,
                &["--peer", &known_addr],
                &DEBUG_LOG_ENV,
            );
            assert_all_files_match(&mount, &payload);

            let log = mount.log();
            let pex: Vec<String> = lines_with(&log, &["pex added="])
                .into_iter()
                .filter(|l| !l.contains("pex added=0"))
                .collect();
            assert!(
                !pex.is_empty(),
                "no PEX message with peers in the log:\n{log}"
            );
            for addr in [&known_addr, &s1_addr, &s2_addr] {
                assert!(
                    !lines_with(&log, &["peer connected", &format!("addr={addr} ")]).is_empty(),
                    "swarmfs never connected to {addr}:\n{log}"
                );
            }
            // No other source could have named S1 and S2.
            for line in lines_with(&log, &["peer addresses", "source="]) {
                assert!(
                    line.contains("source=User") || line.contains("source=Pex"),
                    "peers from a source other than --peer and PEX: {line}"
                );
            }
            stop_cleanly(mount);
        },
    );
}
