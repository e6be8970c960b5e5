//! Real BitTorrent software from Debian packages, on loopback, through the lab scripts
//! in `tests/peers/`: an opentracker (`tracker.sh`), seeders (`seed.sh`) and leechers
//! (`leech.sh` to completion, or `LtLeecher` in the background), each with a fresh state
//! directory, killed by PID and waited for.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::fixture::Payload;
use super::harness::peers_dir;
use super::net::{free_port, next_ip};
use super::process::{self, Registered, Resource, register, run, run_ok, tail, terminate};

/// tracker.sh start waits up to 5 s for the listener itself.
const TRACKER_START_DEADLINE: Duration = Duration::from_secs(20);

/// seed.sh: qBittorrent's WebUI takes a few seconds to come up, transmission and rtorrent
/// hash-check the data first, and then it waits up to 30 s for the tracker to list the
/// seeder. 48 MiB on this machine takes well under 20 s in all; 120 s is the hang bound.
const SEED_START_DEADLINE: Duration = Duration::from_secs(120);

/// transmission sends its `stopped` announces on SIGTERM and needs 1–3 s to exit.
const SEEDER_STOP_GRACE: Duration = Duration::from_secs(10);

/// The seeding clients seed.sh knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Aria2,
    QBittorrent,
    Libtorrent,
    Transmission,
    Rtorrent,
}

impl Client {
    pub const ALL: [Client; 5] = [
        Client::Aria2,
        Client::QBittorrent,
        Client::Libtorrent,
        Client::Transmission,
        Client::Rtorrent,
    ];

    /// seed.sh's CLIENT argument.
    pub fn script_name(self) -> &'static str {
        match self {
            Client::Aria2 => "aria2",
            Client::QBittorrent => "qbittorrent",
            Client::Libtorrent => "libtorrent",
            Client::Transmission => "transmission",
            Client::Rtorrent => "rtorrent",
        }
    }
}

/// An opentracker on 127.0.0.1 (HTTP `/announce` and UDP on one port), with its own
/// directory (whitelist, log). Debian's opentracker only serves whitelisted info-hashes:
/// call `allow` for every torrent.
pub struct Tracker {
    dir: TempDir,
    port: u16,
    pid: i32,
    _registered: Registered,
}

impl Tracker {
    pub fn start() -> Tracker {
        process::become_subreaper();
        let dir = tempfile::Builder::new()
            .prefix("swarmfs-tracker-")
            .tempdir()
            .expect("tempdir");
        let port = free_port(Ipv4Addr::LOCALHOST);
        run_ok(
            Command::new(peers_dir().join("tracker.sh"))
                .arg("start")
                .arg(dir.path())
                .arg(port.to_string())
                .arg("opentracker"),
            TRACKER_START_DEADLINE,
            "tracker.sh start",
        );
        let pid_file = dir.path().join("tracker.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("read {}: {e}", pid_file.display()))
            .trim()
            .parse()
            .expect("tracker.pid holds a PID");
        let _registered = register(Resource::Process {
            pid,
            what: format!("opentracker :{port}"),
        });
        Tracker {
            dir,
            port,
            pid,
            _registered,
        }
    }

    /// `http://127.0.0.1:PORT/announce`
    pub fn announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// `udp://127.0.0.1:PORT`
    pub fn udp_url(&self) -> String {
        format!("udp://127.0.0.1:{}", self.port)
    }

    /// Whitelists a torrent (tracker.sh allow: append + SIGHUP).
    pub fn allow(&self, torrent: &Path) {
        run_ok(
            Command::new(peers_dir().join("tracker.sh"))
                .arg("allow")
                .arg(self.dir.path())
                .arg(torrent),
            Duration::from_secs(10),
            "tracker.sh allow",
        );
    }

    /// The peers the tracker lists for `torrent`, as `IP:PORT`.
    pub fn peers(&self, torrent: &Path) -> Vec<String> {
        let out = run_ok(
            Command::new(peers_dir().join("tracker.sh"))
                .arg("peers")
                .arg(self.dir.path())
                .arg(torrent),
            Duration::from_secs(15),
            "tracker.sh peers",
        );
        out.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Waits until the tracker lists `peer` (`IP:PORT`) for `torrent`: a leecher that
    /// announces earlier would not hear of it for ~30 minutes (opentracker's interval).
    /// Panics after `limit`, with what it lists and `context` (the peer's log).
    pub fn wait_lists(
        &self,
        torrent: &Path,
        peer: &str,
        limit: Duration,
        context: impl Fn() -> String,
    ) {
        let end = Instant::now() + limit;
        loop {
            let listed = self.peers(torrent);
            if listed.iter().any(|p| p == peer) {
                return;
            }
            assert!(
                Instant::now() < end,
                "tracker does not list {peer} after {limit:?} (lists {listed:?})\n{}",
                context()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("tracker.log")
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        terminate(self.pid, Duration::from_secs(5), "opentracker");
    }
}

/// seed.sh switches; the default trusts the data and waits until the tracker lists the seeder.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeedOptions {
    /// SEED_CHECK=1: hash-check the data first (needed for a partial data dir).
    pub check: bool,
    /// SEED_NOWAIT=1: do not wait for the tracker to list us (torrents with a dead tracker).
    pub no_wait: bool,
    /// libtorrent only: print a status line every second (lt-client's `--status-every 1`),
    /// so `wait_for_log` can see its state soon.
    pub lt_status_every_second: bool,
}

/// One seeding client, listening on (and announcing from) its own IP:PORT.
pub struct Seeder {
    client: Client,
    addr: SocketAddrV4,
    pid: i32,
    state: TempDir,
    _registered: Registered,
}

impl Seeder {
    /// Starts `client` seeding `torrent` from `datadir` (which contains the torrent's NAME)
    /// on `ip:port`; returns once seed.sh says it is seeding (and, for torrents with an
    /// HTTP tracker, once the tracker lists it).
    pub fn start(
        client: Client,
        torrent: &Path,
        datadir: &Path,
        ip: Ipv4Addr,
        port: u16,
    ) -> Seeder {
        Self::start_with(client, torrent, datadir, ip, port, SeedOptions::default())
    }

    /// `start` with seed.sh switches.
    pub fn start_with(
        client: Client,
        torrent: &Path,
        datadir: &Path,
        ip: Ipv4Addr,
        port: u16,
        opts: SeedOptions,
    ) -> Seeder {
        Self::start_inner(client, torrent, datadir, ip, port, opts, &[])
    }

    /// A python-libtorrent seeder of `payload` from `datadir` on a fresh loopback IP and
    /// port, with extra `lt-client.py` options (e.g. `--pex`, `--peer IP:PORT`).
    pub fn spawn_libtorrent(
        payload: &Payload,
        datadir: &Path,
        opts: SeedOptions,
        lt_args: &[&str],
    ) -> Seeder {
        let ip = next_ip();
        let port = free_port(ip);
        Self::start_inner(
            Client::Libtorrent,
            &payload.torrent,
            datadir,
            ip,
            port,
            opts,
            lt_args,
        )
    }

    /// `start_with`, plus `lt_args` for lt-client.py (libtorrent only; seed.sh's LT_ARGS).
    fn start_inner(
        client: Client,
        torrent: &Path,
        datadir: &Path,
        ip: Ipv4Addr,
        port: u16,
        opts: SeedOptions,
        lt_args: &[&str],
    ) -> Seeder {
        assert!(
            lt_args.is_empty() || client == Client::Libtorrent,
            "lt-client.py options given to {client:?}"
        );
        process::become_subreaper();
        let state = tempfile::Builder::new()
            .prefix(&format!("swarmfs-seed-{}-", client.script_name()))
            .tempdir()
            .expect("tempdir");
        let mut cmd = Command::new(peers_dir().join("seed.sh"));
        cmd.arg(client.script_name())
            .arg(torrent)
            .arg(datadir)
            .arg(ip.to_string())
            .arg(port.to_string())
            .arg(state.path())
            .env_remove("LT_ARGS")
            .env_remove("QB_MULTI_PER_IP")
            .env_remove("TR_DEBUG")
            .env("SEED_CHECK", if opts.check { "1" } else { "0" })
            .env("SEED_NOWAIT", if opts.no_wait { "1" } else { "0" });
        let mut lt_all: Vec<&str> = lt_args.to_vec();
        if opts.lt_status_every_second {
            lt_all.extend(["--status-every", "1"]);
        }
        if !lt_all.is_empty() {
            // seed.sh splits LT_ARGS on whitespace: no argument may contain any.
            assert!(
                lt_all.iter().all(|a| !a.contains(char::is_whitespace)),
                "{lt_all:?}"
            );
            cmd.env("LT_ARGS", lt_all.join(" "));
        }
        let what = format!("seed.sh {} on {ip}:{port}", client.script_name());
        let out = run(&mut cmd, SEED_START_DEADLINE, &what);
        let pid = out.stdout.lines().rev().find_map(|l| {
            l.strip_prefix("PID ")
                .and_then(|p| p.trim().parse::<i32>().ok())
        });
        let Some(pid) = pid.filter(|_| out.status.success()) else {
            panic!(
                "{what} failed: {out}\n--- state dir logs ---\n{}",
                state_logs(state.path())
            );
        };
        if !out.stderr.trim().is_empty() {
            eprintln!("{what}: {}", out.stderr.trim());
        }
        let _registered = register(Resource::Process {
            pid,
            what: what.clone(),
        });
        Seeder {
            client,
            addr: SocketAddrV4::new(ip, port),
            pid,
            state,
            _registered,
        }
    }

    /// Seeds `payload` with `client` on a fresh loopback IP and port.
    pub fn spawn(client: Client, payload: &Payload) -> Seeder {
        Self::spawn_with(client, payload, &payload.data_dir, SeedOptions::default())
    }

    /// `spawn` with a different data dir (e.g. `Payload::partial_copy`) and switches.
    pub fn spawn_with(
        client: Client,
        payload: &Payload,
        datadir: &Path,
        opts: SeedOptions,
    ) -> Seeder {
        let ip = next_ip();
        let port = free_port(ip);
        Self::start_with(client, &payload.torrent, datadir, ip, port, opts)
    }

    pub fn client(&self) -> Client {
        self.client
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// `IP:PORT`, as `swarmfs mount --peer` takes it.
    pub fn peer_arg(&self) -> String {
        self.addr.to_string()
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Polls the client's logs in its state dir until one contains `needle`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let end = std::time::Instant::now() + limit;
        loop {
            if state_logs(self.state.path()).contains(needle) {
                return true;
            }
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Everything the client logged, for failure messages.
    pub fn logs(&self) -> String {
        state_logs(self.state.path())
    }
}

impl Drop for Seeder {
    fn drop(&mut self) {
        let what = format!("{} seeder on {}", self.client.script_name(), self.addr);
        terminate(self.pid, SEEDER_STOP_GRACE, &what);
    }
}

/// The tails of the *.log files seed.sh's clients write in their state dir.
fn state_logs(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "log") {
                out.push_str(&format!("== {} ==\n{}\n", p.display(), tail(&p, 40)));
            }
        }
    }
    out
}

// ---- leechers ----

/// leech.sh ends with the client's own exit, the sha1 check and its RESULT line; about
/// 2–3 s per client for 24 MiB here. seed.sh (qbittorrent, rtorrent) polls for up to
/// ~150 s itself; this bound only stops a hang and leaves room for it.
const LEECH_SCRIPT_SLACK: Duration = Duration::from_secs(60);

/// The downloading clients leech.sh knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeechClient {
    Aria2,
    Libtorrent,
    /// qbittorrent-nox through seed.sh's Web API set-up (see leech.sh).
    QBittorrent,
    /// transmission-cli: never dials 127.x peers, so the seeder must dial it.
    Transmission,
    /// rtorrent through seed.sh (see leech.sh).
    Rtorrent,
}

impl LeechClient {
    /// leech.sh's CLIENT argument.
    pub fn script_name(self) -> &'static str {
        match self {
            LeechClient::Aria2 => "aria2",
            LeechClient::Libtorrent => "libtorrent",
            LeechClient::QBittorrent => "qbittorrent",
            LeechClient::Transmission => "transmission",
            LeechClient::Rtorrent => "rtorrent",
        }
    }
}

/// Where a leecher listens and whom it dials besides the torrent's trackers.
#[derive(Debug, Clone)]
pub struct LeechOptions {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// PEER=IP:PORT (libtorrent; qbittorrent via addPeers).
    pub peer: Option<String>,
    /// leech.sh's TIMEOUT (aria2, libtorrent, transmission; seed.sh bounds the others).
    pub timeout: Duration,
}

impl LeechOptions {
    /// A fresh loopback IP and port, no extra peer.
    pub fn fresh(timeout: Duration) -> LeechOptions {
        let ip = next_ip();
        LeechOptions {
            ip,
            port: free_port(ip),
            peer: None,
            timeout,
        }
    }
}

/// What leech.sh reported.
#[derive(Debug)]
pub struct LeechResult {
    /// `OK`, `OK-missing-empty:N`, `FAIL` or `SKIPPED` (or `NONE` without a RESULT line).
    pub verify: String,
    pub seconds: f64,
    /// Payload bytes / wall seconds of the whole run (start, transfer, exit).
    pub mib_per_s: f64,
    /// The script's output and the tails of the client's logs, for failure messages.
    pub report: String,
}

impl LeechResult {
    /// Every file verified; zero-length files may be missing (transmission never creates
    /// them; leech.sh counts them apart).
    pub fn verified(&self) -> bool {
        self.verify == "OK" || self.verify.starts_with("OK-missing-empty:")
    }
}

/// Runs leech.sh CLIENT TORRENT OUTDIR to completion (client stopped, files checked
/// against `sha1sums`). OUTDIR is emptied first; the client's state goes to OUTDIR.state.
pub fn leech(
    client: LeechClient,
    torrent: &Path,
    sha1sums: &Path,
    out_dir: &Path,
    opts: &LeechOptions,
) -> LeechResult {
    process::become_subreaper();
    let mut cmd = Command::new(peers_dir().join("leech.sh"));
    cmd.arg(client.script_name())
        .arg(torrent)
        .arg(out_dir)
        .env("LEECH_IP", opts.ip.to_string())
        .env("LEECH_PORT", opts.port.to_string())
        .env("TIMEOUT", opts.timeout.as_secs().max(1).to_string())
        .env("SHA1SUMS", sha1sums)
        .env_remove("POKE")
        .env_remove("PEER")
        .env_remove("LT_VERBOSE");
    if let Some(peer) = &opts.peer {
        cmd.env("PEER", peer);
    }
    let what = format!("leech.sh {}", client.script_name());
    let out = run(&mut cmd, opts.timeout + LEECH_SCRIPT_SLACK, &what);
    // seed.sh's clients (qbittorrent, rtorrent) were orphaned to us: reap them.
    let mut state = out_dir.as_os_str().to_owned();
    state.push(".state");
    let state = PathBuf::from(state);
    if let Some(pid) = std::fs::read_to_string(state.join("client").join("pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        terminate(pid, SEEDER_STOP_GRACE, &what);
    }
    let field = |key: &str| -> Option<String> {
        let line = out
            .stdout
            .lines()
            .rev()
            .find(|l| l.starts_with("RESULT "))?;
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    let number = |key: &str| field(key).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    LeechResult {
        verify: field("verify").unwrap_or_else(|| "NONE".into()),
        seconds: number("seconds"),
        // leech.sh's "MBps" is bytes / 1048576 / seconds, i.e. MiB/s.
        mib_per_s: number("MBps"),
        report: format!("{out}\n--- client logs ---\n{}", state_logs(&state)),
    }
}

/// python-libtorrent (`lt-client.py leech`) downloading in the background, for tests that
/// watch what it receives while something else happens (it may never complete: its only
/// peer may have part of the torrent). Drop: SIGTERM, wait, SIGKILL.
pub struct LtLeecher {
    child: std::process::Child,
    dir: TempDir,
    _registered: Registered,
}

impl LtLeecher {
    /// Starts leeching `torrent` on `opts.ip:opts.port`, dialing `opts.peer` (and the
    /// torrent's trackers), printing its status every second; gives up after `opts.timeout`.
    pub fn start(torrent: &Path, opts: &LeechOptions) -> LtLeecher {
        process::become_subreaper();
        let dir = tempfile::Builder::new()
            .prefix("swarmfs-ltleech-")
            .tempdir()
            .expect("tempdir");
        let log = std::fs::File::create(dir.path().join("libtorrent.log")).expect("create log");
        let out = dir.path().join("data");
        std::fs::create_dir(&out).expect("create data dir");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg("-u")
            .arg(peers_dir().join("lt-client.py"))
            .arg("leech")
            .arg(torrent)
            .arg(&out)
            .arg(format!("{}:{}", opts.ip, opts.port))
            .arg("--status-every")
            .arg("1")
            .arg("--timeout")
            .arg(opts.timeout.as_secs().max(1).to_string())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        if let Some(peer) = &opts.peer {
            cmd.arg("--peer").arg(peer);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        LtLeecher {
            child,
            dir,
            _registered: register(Resource::Process {
                pid,
                what: format!("lt-client.py leech on {}:{}", opts.ip, opts.port),
            }),
        }
    }

    /// The directory that receives the torrent's NAME (files at `data_dir()/rel`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(
            &std::fs::read(self.dir.path().join("libtorrent.log")).unwrap_or_default(),
        )
        .into_owned()
    }

    /// The last status line (`state=… progress=…% … peers=N …`), if one was printed.
    pub fn last_status(&self) -> Option<String> {
        self.log()
            .lines()
            .rev()
            .find(|l| l.contains(" progress="))
            .map(str::to_string)
    }

    /// Polls the status lines until one says `peers=N` with N ≥ 1.
    pub fn wait_connected(&self, limit: Duration) -> bool {
        let end = std::time::Instant::now() + limit;
        loop {
            let connected = self.log().lines().any(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix("peers="))
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n > 0)
            });
            if connected {
                return true;
            }
            if std::time::Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM (lt-client pauses its session and exits) and waits.
    pub fn stop(&mut self) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        if matches!(self.child.try_wait(), Ok(None)) {
            process::signal(pid, libc::SIGTERM);
            if process::wait_child(&mut self.child, SEEDER_STOP_GRACE).is_none() {
                let _ = self.child.kill();
                let _ = process::wait_child(&mut self.child, Duration::from_secs(5));
            }
        }
    }
}

impl Drop for LtLeecher {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- lt-client leecher log ---\n{}", self.log());
        }
        self.stop();
    }
}
