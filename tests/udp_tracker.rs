//! UDP trackers (BEP 15) end to end: a torrent whose only tracker is
//! `udp://127.0.0.1:PORT` (the lab's opentracker, which serves HTTP and UDP on one port),
//! a real seeder announcing there, and swarmfs mounting the torrent with no `--peer`: every
//! peer it knows came from its UDP announce. Files read through the mount must have the
//! payload's SHA-1.
//!
//! Seeders are python-libtorrent and qBittorrent, which speak UDP trackers natively (aria2
//! only does through its DHT socket). Runs inside `harness::fuse_test`: overall deadline,
//! heavy-test lock, and a failure if a process or mount is left behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::time::Duration;

use common::clients::{Client, Seeder, Tracker};
use common::fixture::{Payload, sha1_file};
use common::harness::fuse_test;
use common::mount::MountGuard;

/// Overall deadline of one test: seeder start (up to ~10 s), the wait for its first
/// announce, then 24 MiB over loopback. Only stops hangs.
const TEST_LIMIT: Duration = Duration::from_secs(240);

/// How long the seeder gets to announce itself over UDP (libtorrent announces within a
/// second of adding the torrent; qBittorrent within a few).
const SEEDER_LISTED_WITHIN: Duration = Duration::from_secs(60);

/// The multi-file payload of the other mounting tests (cached, shared): 20 files with
/// empty ones, piece±1 sizes and odd names.
const MULTI_MB: u32 = 24;
const MULTI_PIECE_KB: u32 = 64;

/// `client` seeds a torrent whose only tracker is UDP; swarmfs mounts it without `--peer`
/// and reads every file.
fn seeder_found_only_through_udp_tracker(client: Client) {
    let tracker = Tracker::start();
    let udp_url = tracker.udp_url();
    assert!(udp_url.starts_with("udp://"), "{udp_url}");
    let payload = Payload::make(MULTI_MB, MULTI_PIECE_KB, true, &udp_url);
    tracker.allow(&payload.torrent);
    let seeder = Seeder::spawn(client, &payload);

    // seed.sh only waits for HTTP trackers. The seeder knows only the UDP URL, so once the
    // tracker lists it (asked over HTTP on the same port: one swarm), it announced over UDP.
    tracker.wait_lists(
        &payload.torrent,
        &seeder.peer_arg(),
        SEEDER_LISTED_WITHIN,
        || seeder.logs(),
    );

    let mount = MountGuard::mount(&payload.torrent, &[]);
    for f in &payload.files {
        let path = mount.path().join(&f.rel);
        assert_eq!(
            std::fs::metadata(&path)
                .unwrap_or_else(|e| panic!("stat {}: {e}", f.rel.display()))
                .len(),
            f.len,
            "size of {}",
            f.rel.display()
        );
        assert_eq!(
            sha1_file(&path),
            f.sha1,
            "SHA-1 of {} read through the mount",
            f.rel.display()
        );
    }

    // The announce that brought the peers was the UDP one, and it was the only source.
    let log = without_ansi_colours(&mount.log());
    let announced: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("announced") && line.contains("tracker="))
        .collect();
    assert!(
        announced
            .iter()
            .any(|line| line.contains(&format!("tracker={udp_url}")) && !line.contains("peers=0")),
        "no UDP announce with peers in the swarmfs log:\n{log}"
    );
    assert!(
        announced.iter().all(|line| line.contains(&udp_url)),
        "announces to something other than {udp_url}: {announced:#?}"
    );

    let status = mount.stop();
    assert!(
        status.success(),
        "swarmfs exited with {status} after SIGINT"
    );
}

/// `text` without ANSI SGR sequences (`ESC [ ... m`): the log's fields are coloured.
fn without_ansi_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for skipped in chars.by_ref() {
                if skipped == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn libtorrent_seeder_found_only_through_udp_tracker() {
    fuse_test(
        "libtorrent_seeder_found_only_through_udp_tracker",
        TEST_LIMIT,
        || seeder_found_only_through_udp_tracker(Client::Libtorrent),
    );
}

#[test]
fn qbittorrent_seeder_found_only_through_udp_tracker() {
    fuse_test(
        "qbittorrent_seeder_found_only_through_udp_tracker",
        TEST_LIMIT,
        || seeder_found_only_through_udp_tracker(Client::QBittorrent),
    );
}
