//! DHT (BEP 5) as a peer source, against python-libtorrent nodes: a private DHT on
//! 127.0.0.x made of a router (`tests/peers/dht-router.py`, the hub every node bootstraps
//! from) and a seeder (`lt-client.py --no-trackers --dht-bootstrap ROUTER`) whose torrent
//! has no trackers. swarmfs gets only `magnet:?xt=urn:btih:HASH` and `--dht-bootstrap
//! ROUTER`: no tracker, no `--peer`, so the DHT is its only way to the seeder.
//!
//! The lab saw libtorrent nodes need about 20 s until a router knows a whole 6-node DHT;
//! here the seeder announces to the router as soon as it has bootstrapped from it, which
//! the test waits for (bounded) before mounting.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::fixture::{DEAD_TRACKER, Payload, sha1_file};
use common::harness::{fuse_test, peers_dir};
use common::mount::MountGuard;
use common::net::{free_port, next_ip};
use common::process::{POLL, Registered, Resource, register, run, tail, terminate};

/// Overall deadline of one test: node start and the seeder's DHT announce (seconds, up to
/// `ANNOUNCE_DEADLINE`), the mount (metadata over the DHT, under the harness's 20 s mount
/// deadline), reading 16 MiB, and stopping. Only a hang bound.
const TEST_LIMIT: Duration = Duration::from_secs(240);

/// The seeder announces once it has bootstrapped from the router, within seconds here;
/// the lab's 20 s (a whole DHT converging) times three for a loaded 2-core machine.
const ANNOUNCE_DEADLINE: Duration = Duration::from_secs(60);

/// How long a libtorrent node gets after SIGTERM.
const NODE_STOP_GRACE: Duration = Duration::from_secs(10);

/// A python-libtorrent process of the private DHT, stopped (SIGTERM, then SIGKILL) on drop.
struct LtNode {
    child: Child,
    addr: String,
    log_path: PathBuf,
    what: String,
    _dir: tempfile::TempDir,
    _registered: Registered,
}

impl LtNode {
    /// Runs `script ARGS...` from tests/peers with its output in a log file.
    fn spawn(what: &str, script: &str, args: &[&str], addr: String) -> LtNode {
        let dir = tempfile::Builder::new()
            .prefix("swarmfs-dht-node-")
            .tempdir()
            .expect("tempdir");
        let log_path = dir.path().join("node.log");
        let log = File::create(&log_path).expect("create node log");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(peers_dir().join(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        LtNode {
            child,
            addr,
            log_path,
            what: what.to_string(),
            _dir: dir,
            _registered: register(Resource::Process {
                pid,
                what: what.to_string(),
            }),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log has a line containing every one of `needles`.
    fn wait_for_line(&self, needles: &[&str], limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self
                .log()
                .lines()
                .any(|line| needles.iter().all(|n| line.contains(n)))
            {
                return true;
            }
            sleep(POLL);
        }
        false
    }
}

impl Drop for LtNode {
    fn drop(&mut self) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        terminate(pid, NODE_STOP_GRACE, &self.what);
        let _ = self.child.wait();
    }
}

/// A fresh loopback address for one node, e.g. `127.0.0.7:12346`.
fn node_addr() -> (Ipv4Addr, u16) {
    let ip = next_ip();
    (ip, free_port(ip))
}

/// The router, and a seeder of `payload` (trackers dropped) that has announced to it.
fn private_dht(payload: &Payload) -> (LtNode, LtNode) {
    let (ip, port) = node_addr();
    let router_addr = format!("{ip}:{port}");
    let router = LtNode::spawn(
        "libtorrent DHT router",
        "dht-router.py",
        &[&router_addr],
        router_addr.clone(),
    );
    let (ip, port) = node_addr();
    let seeder_addr = format!("{ip}:{port}");
    let torrent = payload.torrent.to_str().expect("utf-8 torrent path");
    let data = payload.data_dir.to_str().expect("utf-8 data path");
    let seeder = LtNode::spawn(
        "libtorrent DHT seeder",
        "lt-client.py",
        &[
            "seed",
            torrent,
            data,
            &seeder_addr,
            "--seed-mode",
            "--no-trackers",
            "--dht-bootstrap",
            &router_addr,
        ],
        seeder_addr.clone(),
    );
    assert!(
        router.wait_for_line(
            &["incoming dht announce", &seeder_addr, &payload.info_hash],
            ANNOUNCE_DEADLINE
        ),
        "the seeder never announced to the router within {ANNOUNCE_DEADLINE:?}\n\
         --- router ---\n{}\n--- seeder ---\n{}",
        router.log(),
        seeder.log()
    );
    (router, seeder)
}

/// A magnet with no tracker mounts through the private DHT, reads right, announces us to
/// the DHT, and leaves the routing table in the state file.
#[test]
fn trackerless_magnet_mounts_through_private_libtorrent_dht() {
    fuse_test(
        "trackerless_magnet_mounts_through_private_libtorrent_dht",
        TEST_LIMIT,
        || {
            // The .torrent's tracker is dead and the seeder drops it anyway (--no-trackers).
            let payload = Payload::make(16, 64, true, DEAD_TRACKER);
            let (router, _seeder) = private_dht(&payload);

            let state_dir = tempfile::tempdir().expect("tempdir");
            let state = state_dir.path().join("cache").join("dht-state");
            let (ip, port) = node_addr();
            let listen = format!("{ip}:{port}");
            let magnet = format!("magnet:?xt=urn:btih:{}", payload.info_hash);
            let mount = MountGuard::mount(
                Path::new(&magnet),
                &[
                    "--listen",
                    &listen,
                    "--dht-bootstrap",
                    &router.addr,
                    "--dht-state",
                    state.to_str().expect("utf-8 state path"),
                ],
            );
            for file in &payload.files {
                assert_eq!(
                    sha1_file(&mount.path().join(&file.rel)),
                    file.sha1,
                    "SHA-1 of {} read through the mount\n--- swarmfs log ---\n{}",
                    file.rel.display(),
                    tail(mount.log_path(), 60)
                );
            }
            // We announce ourselves too: from our listen IP, with our listen port.
            assert!(
                router.wait_for_line(
                    &["incoming dht announce", &listen, &payload.info_hash],
                    ANNOUNCE_DEADLINE
                ),
                "swarmfs never announced {listen} to the router\n--- router ---\n{}",
                router.log()
            );
            let log_path = mount.log_path().to_path_buf();
            let status = mount.stop();
            assert!(
                status.success(),
                "swarmfs stopped with {status}\n{}",
                tail(&log_path, 60)
            );
            let saved = std::fs::read_to_string(&state).unwrap_or_else(|e| {
                panic!(
                    "no DHT state file at {}: {e}\n{}",
                    state.display(),
                    tail(&log_path, 60)
                )
            });
            assert!(
                saved.lines().any(|line| line == router.addr),
                "the state file should list the router {}:\n{saved}",
                router.addr
            );
        },
    );
}

/// With `--no-dht` the same magnet has no peer source at all: no metadata, no mount, and
/// swarmfs gives up at its metadata timeout instead of hanging.
#[test]
fn no_dht_leaves_a_trackerless_magnet_without_peers() {
    fuse_test(
        "no_dht_leaves_a_trackerless_magnet_without_peers",
        TEST_LIMIT,
        || {
            let payload = Payload::make(16, 64, true, DEAD_TRACKER);
            let (router, _seeder) = private_dht(&payload);
            let dir = tempfile::tempdir().expect("tempdir");
            let mnt = dir.path().join("mnt");
            std::fs::create_dir(&mnt).expect("mountpoint");
            let (ip, port) = node_addr();
            let out = run(
                Command::new(env!("CARGO_BIN_EXE_swarmfs"))
                    .arg("mount")
                    .arg(format!("magnet:?xt=urn:btih:{}", payload.info_hash))
                    .arg(&mnt)
                    .args(["--listen", &format!("{ip}:{port}")])
                    .args(["--dht-bootstrap", &router.addr, "--no-dht"])
                    .args(["--metadata-timeout", "5s"])
                    .arg("--dht-state")
                    .arg(dir.path().join("dht-state")),
                Duration::from_secs(60),
                "swarmfs mount --no-dht",
            );
            assert!(
                !out.status.success(),
                "a magnet with no peer source must fail: {out}"
            );
            assert!(
                !dir.path().join("dht-state").exists(),
                "--no-dht must not write a DHT state file"
            );
        },
    );
}
