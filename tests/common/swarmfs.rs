//! The `swarmfs` binary under test: the one way tests start it (stderr to a log file,
//! debug logging on), and `SwarmfsSeed`, one `swarmfs seed` from "listening" to reaped.
//! `MountGuard` (mount.rs) starts `swarmfs mount` through the same `command`.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::net::{free_port, next_ip};
use super::process::{POLL, Registered, Resource, register, signal, status_kib, tail, wait_child};

/// `swarmfs seed` hash-checks the payload before it listens: 24–48 MiB take well under
/// a second here; this bounds a hang, with room for a loaded 2-core machine.
const SEED_START_DEADLINE: Duration = Duration::from_secs(60);

/// After SIGTERM: stop accepting, close peers, send the tracker `stopped`.
const SEED_STOP_GRACE: Duration = Duration::from_secs(10);

/// Log lines shown when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// `swarmfs SUBCOMMAND` with stdin from /dev/null, stdout and stderr to `log`, backtraces
/// on, and `RUST_LOG=info,swarmfs=debug` unless the caller's environment sets RUST_LOG.
pub fn command(subcommand: &str, log: &File) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swarmfs"));
    cmd.arg(subcommand)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log.try_clone().expect("dup log"))
        .env("RUST_BACKTRACE", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,swarmfs=debug");
    }
    cmd
}

/// Tests talk to loopback only: unless a test brings its own DHT (`--dht-bootstrap` on
/// loopback), swarmfs runs with `--no-dht`, so it never contacts the public DHT routers
/// that are its default bootstrap, and never writes a DHT state file.
pub fn loopback_only_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut out = args.to_vec();
    if !args.contains(&"--dht-bootstrap") && !args.contains(&"--no-dht") {
        out.push("--no-dht");
    }
    out
}

/// A running `swarmfs seed TORRENT DATADIR --listen IP:PORT`. Drop: SIGTERM, wait up to
/// 10 s, SIGKILL; the log is printed if the test is panicking.
pub struct SwarmfsSeed {
    child: Child,
    addr: SocketAddrV4,
    log_path: PathBuf,
    _dir: TempDir,
    _registered: Registered,
}

impl SwarmfsSeed {
    /// Seeds `torrent` from `data_dir` (which contains the torrent's NAME) on a fresh
    /// loopback IP and port, with `extra` arguments (e.g. `--peer IP:PORT`); returns once
    /// it says it is seeding.
    pub fn start(torrent: &Path, data_dir: &Path, extra: &[&str]) -> SwarmfsSeed {
        let ip: Ipv4Addr = next_ip();
        let addr = SocketAddrV4::new(ip, free_port(ip));
        let dir = tempfile::Builder::new()
            .prefix("swarmfs-seed-")
            .tempdir()
            .expect("tempdir");
        let log_path = dir.path().join("swarmfs.log");
        let log = File::create(&log_path).expect("create swarmfs.log");
        let mut cmd = command("seed", &log);
        cmd.arg(torrent)
            .arg(data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .args(loopback_only_args(extra));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        let mut seed = SwarmfsSeed {
            child,
            addr,
            log_path,
            _dir: dir,
            _registered: register(Resource::Process {
                pid,
                what: format!("swarmfs seed on {addr}"),
            }),
        };
        // "on IP:PORT": swarmfs takes the next port if ours was taken meanwhile, and a
        // seeder elsewhere than we think would make every test after this one confusing.
        let ready = "swarmfs: seeding ";
        let end = Instant::now() + SEED_START_DEADLINE;
        loop {
            let log = seed.log();
            if let Some(line) = log.lines().find(|l| l.starts_with(ready)) {
                assert!(
                    line.ends_with(&format!(" on {addr}")),
                    "swarmfs seed listens elsewhere than {addr}: {line}"
                );
                return seed;
            }
            if let Ok(Some(status)) = seed.child.try_wait() {
                panic!(
                    "swarmfs seed exited with {status} before seeding:\n{}",
                    seed.log()
                );
            }
            assert!(
                Instant::now() < end,
                "swarmfs seed not seeding within {SEED_START_DEADLINE:?}:\n{}",
                seed.log()
            );
            sleep(POLL);
        }
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// `IP:PORT`, as `--peer` and leech.sh's PEER take it.
    pub fn peer_arg(&self) -> String {
        self.addr.to_string()
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// True while the process runs (it has not exited, crashed or been killed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM")
            .unwrap_or_else(|| panic!("no VmHWM for swarmfs seed (pid {})", self.pid()))
    }

    /// Everything swarmfs wrote so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
}

impl Drop for SwarmfsSeed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- swarmfs seed log ({}), last {LOG_TAIL_LINES} lines ---\n{}",
                self.log_path.display(),
                tail(&self.log_path, LOG_TAIL_LINES)
            );
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.pid(), libc::SIGTERM);
            if wait_child(&mut self.child, SEED_STOP_GRACE).is_none() {
                eprintln!("swarmfs seed (pid {}) ignored SIGTERM: SIGKILL", self.pid());
                let _ = self.child.kill();
                let _ = wait_child(&mut self.child, Duration::from_secs(10));
            }
        }
    }
}
