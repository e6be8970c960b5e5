//! The swarm the benchmark reads from: the payload made once by make-torrent.sh, an
//! opentracker, and real seeding clients, all through the lab scripts in `tests/peers/`
//! and killed by PID when dropped.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_bencode::value::Value;

use swarmfs::metainfo::Metainfo;

use crate::common::OrphanGuard;
use crate::common::net::free_port;
use crate::common::process::run;
use crate::{PIECE_KB, SIZE_MB};

/// Hang bounds: make-torrent.sh writes and hashes 1 GiB in ~15 s here; a seeder starts
/// (and is listed by the tracker) in seconds.
const GENERATE_DEADLINE: Duration = Duration::from_secs(600);
const SEED_START_DEADLINE: Duration = Duration::from_secs(120);

/// Announce URL baked into the cached .torrent; each run writes its own copy with its
/// tracker's URL (the info dictionary, and so the info hash, stay the same).
const PLACEHOLDER_TRACKER: &str = "http://127.0.0.1:1/placeholder";

/// make-torrent.sh's output, made once under `target/bench-data` and reused.
pub struct Payload {
    pub name: String,
    /// make-torrent's OUTDIR/data: contains `name`.
    pub data_dir: PathBuf,
    pub file: PathBuf,
    pub size_bytes: u64,
    /// Lower-case hex SHA-1 of the whole file.
    pub sha1: String,
    /// NAME.sha1sums, for leech.sh.
    pub sums: PathBuf,
    /// The cached .torrent (announcing to a placeholder) and its info hash.
    pub torrent: PathBuf,
    pub info_hash: String,
}

impl Payload {
    pub fn prepare(bench_data: &Path) -> Result<Payload> {
        let name = format!("payload-{SIZE_MB}M-{PIECE_KB}k");
        let out_dir = bench_data.join(&name);
        let complete = out_dir.join("complete");
        if !complete.exists() {
            println!("generating {name} under {} (once)", out_dir.display());
            let out = run(
                Command::new(peers_dir().join("make-torrent.sh"))
                    .arg(SIZE_MB.to_string())
                    .arg(PIECE_KB.to_string())
                    .arg(&out_dir)
                    .arg(PLACEHOLDER_TRACKER)
                    .env_remove("SEED"),
                GENERATE_DEADLINE,
                "make-torrent.sh",
            );
            if !out.status.success() {
                bail!("make-torrent.sh failed: {out}");
            }
            fs::write(&complete, b"")?;
        }
        let sums = out_dir.join(format!("{name}.sha1sums"));
        let sha1 = fs::read_to_string(&sums)?
            .split_whitespace()
            .next()
            .context("empty sha1sums")?
            .to_string();
        let data_dir = out_dir.join("data");
        let file = data_dir.join(&name);
        Ok(Payload {
            size_bytes: fs::metadata(&file)?.len(),
            info_hash: fs::read_to_string(out_dir.join(format!("{name}.infohash")))?
                .trim()
                .to_string(),
            torrent: out_dir.join(format!("{name}.torrent")),
            name,
            data_dir,
            file,
            sha1,
            sums,
        })
    }

    /// A copy of the .torrent in `dir` that announces to `url` (only the keys outside the
    /// info dictionary change; the info hash is checked to be the same).
    pub fn torrent_announcing(&self, url: &str, dir: &Path) -> Result<PathBuf> {
        let Value::Dict(mut top) = serde_bencode::from_bytes::<Value>(&fs::read(&self.torrent)?)?
        else {
            bail!("{} is not a bencoded dictionary", self.torrent.display());
        };
        top.remove(b"announce-list".as_slice());
        top.insert(b"announce".to_vec(), Value::Bytes(url.as_bytes().to_vec()));
        let bytes = serde_bencode::to_bytes(&Value::Dict(top))?;
        let info_hash = Metainfo::from_bytes(&bytes)?.info_hash.to_hex();
        if info_hash != self.info_hash {
            bail!(
                "rewriting the announce URL changed the info hash ({info_hash} != {})",
                self.info_hash
            );
        }
        let path = dir.join(format!("{}.torrent", self.name));
        fs::write(&path, bytes)?;
        Ok(path)
    }
}

/// opentracker on 127.0.0.1 through tracker.sh; killed by PID on drop.
pub struct Tracker {
    pub dir: PathBuf,
    pub port: u16,
    _process: OrphanGuard,
}

impl Tracker {
    pub fn start(dir: &Path) -> Result<Tracker> {
        let port = free_port(Ipv4Addr::LOCALHOST);
        let out = run(
            Command::new(peers_dir().join("tracker.sh"))
                .arg("start")
                .arg(dir)
                .arg(port.to_string())
                .arg("opentracker"),
            Duration::from_secs(30),
            "tracker.sh start",
        );
        if !out.status.success() {
            bail!("tracker.sh start failed: {out}");
        }
        let pid = fs::read_to_string(dir.join("tracker.pid"))?
            .trim()
            .parse()?;
        Ok(Tracker {
            dir: dir.to_path_buf(),
            port,
            _process: OrphanGuard {
                pid,
                what: "opentracker".into(),
            },
        })
    }

    pub fn announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// Debian's opentracker serves whitelisted info hashes only.
    pub fn allow(&self, torrent: &Path) -> Result<()> {
        let out = run(
            Command::new(peers_dir().join("tracker.sh"))
                .arg("allow")
                .arg(&self.dir)
                .arg(torrent),
            Duration::from_secs(30),
            "tracker.sh allow",
        );
        if !out.status.success() {
            bail!("tracker.sh allow failed: {out}");
        }
        Ok(())
    }
}

/// One real seeding client through seed.sh, on its own loopback IP; killed by PID on drop.
pub struct Seeder {
    pub client: &'static str,
    pub addr: SocketAddr,
    _process: OrphanGuard,
}

impl Seeder {
    pub fn start(
        client: &'static str,
        ip: Ipv4Addr,
        torrent: &Path,
        data_dir: &Path,
        state: &Path,
    ) -> Result<Seeder> {
        let port = free_port(ip);
        let out = run(
            Command::new(peers_dir().join("seed.sh"))
                .arg(client)
                .arg(torrent)
                .arg(data_dir)
                .arg(ip.to_string())
                .arg(port.to_string())
                .arg(state)
                .env_remove("LT_ARGS")
                .env_remove("SEED_CHECK")
                .env_remove("SEED_NOWAIT"),
            SEED_START_DEADLINE,
            "seed.sh",
        );
        let pid = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("PID ")?.trim().parse().ok());
        let Some(pid) = pid.filter(|_| out.status.success()) else {
            bail!("seed.sh {client} failed: {out}");
        };
        Ok(Seeder {
            client,
            addr: SocketAddr::from((ip, port)),
            _process: OrphanGuard {
                pid,
                what: format!("{client} seeder"),
            },
        })
    }
}

/// The lab scripts the tests use too.
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("peers")
}
