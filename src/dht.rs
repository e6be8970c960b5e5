//! The DHT (BEP 5) as a peer source: one node per run, a lookup loop per torrent, and the
//! routing table kept between runs in a state file.
//!
//! The node itself is the `mainline` crate: a maintained BEP 5 implementation (KRPC,
//! routing table, tokens, iterative lookups) that runs on its own thread. This module owns
//! what is ours: the address and bootstrap list the node starts with, the state file
//! (format, load, save, what a corrupt one does), and when each torrent looks up peers and
//! announces itself. Found peers go into an `mpsc::Sender<Vec<SocketAddr>>`, the shape the
//! tracker loop uses, so the engine and the magnet metadata fetch consume both alike.
//!
//! Private torrents (BEP 27) never reach this module: the engine starts no lookup loop for
//! them. `mainline` speaks IPv4 only, so an IPv6 listen address leaves the DHT off.
//!
//! Every wait here (start, lookup, announce, peer delivery, sleep) has a bound or races the
//! shutdown token.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use mainline::async_dht::AsyncDht;
use mainline::{Dht, Id};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::types::InfoHash;

/// Where a node with no `--dht-bootstrap` and no state file joins: the long-running
/// public routers of BitTorrent, Transmission, libtorrent and uTorrent. Names, not
/// addresses, because their operators move them.
pub const DEFAULT_BOOTSTRAP: [&str; 4] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "dht.libtorrent.org:25401",
    "router.utorrent.com:6881",
];

/// Most routing-table nodes kept in the state file. A few dozen live nodes are plenty to
/// rejoin even when most have gone, and `mainline` queries every bootstrap node while its
/// table is smaller than that list, so a short list keeps the first lookups cheap.
pub const MAX_SAVED_NODES: usize = 32;

/// The first line of a state file; a file without it is not ours (or from a later format).
const STATE_HEADER: &str = "# swarmfs DHT routing table v1";

/// Binding and resolving the bootstrap names (blocking DNS) run on a blocking thread; a
/// resolver that hangs must not hold up the mount, so the DHT is given up after this.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// How many UDP ports after the wanted one to try when it is taken (as the TCP listener does).
const BIND_PORT_ATTEMPTS: u16 = 10;

/// One lookup ends here even if the crate's query has not: a lookup on the public DHT
/// takes a few seconds, and a stuck one must not delay the next round for long.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(60);

/// An announce (a lookup for the closest nodes, then `announce_peer` to them) gets as long.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(60);

/// Below this many connected peers a torrent looks up peers often: the DHT may be its only
/// source, and new seeders should be found within a minute.
pub const FEW_PEERS: u64 = 8;

/// Lookup interval while the torrent has fewer than [`FEW_PEERS`] peers. A lookup is a few
/// dozen small UDP packets, so twice a minute costs the DHT little.
const LOOKUP_EVERY_FEW_PEERS: Duration = Duration::from_secs(30);

/// Lookup interval once the torrent has peers enough: PEX and the peers keep it supplied.
const LOOKUP_EVERY: Duration = Duration::from_secs(5 * 60);

/// Re-announce interval. Nodes drop stored peers after about 30 minutes (libtorrent) and
/// tokens last about 10, so half the storage time keeps us listed.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    #[error("the DHT is IPv4-only and cannot bind to {ip}")]
    Ipv6Only { ip: IpAddr },
    #[error(
        "cannot bind the DHT's UDP socket to {addr} or the {BIND_PORT_ATTEMPTS} ports after it: {source}"
    )]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("the DHT did not start within {START_TIMEOUT:?} (resolving bootstrap names?)")]
    StartTimedOut,
    #[error("the DHT start thread failed: {0}")]
    StartThread(#[from] tokio::task::JoinError),
    #[error("cannot read the DHT state file {path}: {source}")]
    ReadState { path: PathBuf, source: io::Error },
    #[error("the DHT state file {path} is corrupt at line {line}: {text:?}")]
    CorruptState {
        path: PathBuf,
        line: usize,
        text: String,
    },
    #[error("cannot write the DHT state file {path}: {source}")]
    WriteState { path: PathBuf, source: io::Error },
}

/// How the run's node starts.
#[derive(Clone, Debug)]
pub struct DhtConfig {
    /// UDP address: the peer listen IP, and `--dht-port` or the listen port.
    pub bind: SocketAddr,
    /// `HOST:PORT` entry points; [`DEFAULT_BOOTSTRAP`] unless the user gave some.
    pub bootstrap: Vec<String>,
    /// The routing table of the last run is read from here and this run's written back.
    pub state_path: Option<PathBuf>,
    /// Answer other nodes' queries from the start. Off, `mainline` starts read-only (BEP 43)
    /// and answers once it has seen that others can reach it, which keeps a node behind NAT
    /// out of others' routing tables; on is for a node that others bootstrap from.
    pub server_mode: bool,
}

/// The run's DHT node. Cloning shares the node; it stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct DhtNode {
    dht: AsyncDht,
    local_addr: SocketAddr,
    state_path: Option<PathBuf>,
}

impl DhtNode {
    /// Binds the UDP socket and joins through `config.bootstrap` plus the nodes saved in
    /// the state file (a missing file is a first run; an unreadable or corrupt one is
    /// logged and ignored).
    pub async fn start(config: DhtConfig) -> Result<DhtNode, DhtError> {
        let ip = match config.bind.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) if ip.is_unspecified() => Ipv4Addr::UNSPECIFIED,
            ip @ IpAddr::V6(_) => return Err(DhtError::Ipv6Only { ip }),
        };
        let saved = match config.state_path.as_deref().map(load_state) {
            Some(Ok(nodes)) => nodes,
            Some(Err(err)) => {
                warn!("{err}; starting without it");
                Vec::new()
            }
            None => Vec::new(),
        };
        let saved_count = saved.len();
        let bootstrap = config.bootstrap.clone();
        let port = config.bind.port();
        let server_mode = config.server_mode;
        let build = tokio::task::spawn_blocking(move || {
            build_node(ip, port, server_mode, &bootstrap, &saved)
        });
        let dht = tokio::time::timeout(START_TIMEOUT, build)
            .await
            .map_err(|_| DhtError::StartTimedOut)???
            .as_async();
        let local_addr = SocketAddr::V4(dht.info().await.local_addr());
        info!(
            %local_addr,
            bootstrap = ?config.bootstrap,
            saved_nodes = saved_count,
            "DHT node started"
        );
        Ok(DhtNode {
            dht,
            local_addr,
            state_path: config.state_path,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Writes up to [`MAX_SAVED_NODES`] of the routing table to the state file. An empty
    /// table (we never reached the DHT) leaves the last run's file as it was.
    pub async fn save_state(&self) -> Result<(), DhtError> {
        let Some(path) = &self.state_path else {
            return Ok(());
        };
        let nodes: Vec<SocketAddr> = self
            .dht
            .to_bootstrap()
            .await
            .iter()
            .filter_map(|node| node.parse().ok())
            .take(MAX_SAVED_NODES)
            .collect();
        if nodes.is_empty() {
            debug!(path = %path.display(), "DHT routing table empty; state file left as it was");
            return Ok(());
        }
        save_state(path, &nodes)?;
        info!(path = %path.display(), nodes = nodes.len(), "DHT routing table saved");
        Ok(())
    }

    /// One `get_peers` lookup: sends each batch of addresses not seen before in this lookup
    /// as it arrives. Returns how many it sent, or `None` when the receiver is gone or
    /// shutdown came first.
    async fn lookup_into(
        &self,
        info_hash: InfoHash,
        peers_tx: &mpsc::Sender<Vec<SocketAddr>>,
        shutdown: &CancellationToken,
    ) -> Option<usize> {
        let mut replies = self.dht.get_peers(dht_id(info_hash));
        let deadline = tokio::time::sleep(LOOKUP_TIMEOUT);
        tokio::pin!(deadline);
        let mut seen = HashSet::new();
        loop {
            let batch = tokio::select! {
                () = shutdown.cancelled() => return None,
                () = &mut deadline => {
                    debug!("DHT lookup cut off after {LOOKUP_TIMEOUT:?}");
                    break;
                }
                batch = replies.next() => match batch {
                    Some(batch) => batch,
                    None => break,
                },
            };
            let fresh: Vec<SocketAddr> = batch
                .into_iter()
                .map(SocketAddr::V4)
                .filter(|addr| seen.insert(*addr))
                .collect();
            if fresh.is_empty() {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                sent = peers_tx.send(fresh) => sent.ok()?,
            }
        }
        Some(seen.len())
    }

    /// `announce_peer` for `port` on the nodes closest to the info hash; true if any
    /// stored it.
    async fn announce(&self, info_hash: InfoHash, port: u16) -> bool {
        match tokio::time::timeout(
            ANNOUNCE_TIMEOUT,
            self.dht.announce_peer(dht_id(info_hash), Some(port)),
        )
        .await
        {
            Ok(Ok(_)) => {
                debug!(port, "announced on the DHT");
                true
            }
            Ok(Err(err)) => {
                debug!("DHT announce failed: {err}");
                false
            }
            Err(_) => {
                debug!("DHT announce timed out after {ANNOUNCE_TIMEOUT:?}");
                false
            }
        }
    }
}

/// The peer source of one torrent: a lookup at once and then every
/// [`LOOKUP_EVERY_FEW_PEERS`] while `few_peers()` says so, else every [`LOOKUP_EVERY`];
/// with `announce_port`, an announce after the first lookup and every [`ANNOUNCE_EVERY`]
/// (a failed one is retried next round). Ends on shutdown or when `peers_tx` closes.
pub async fn run_peer_source(
    node: DhtNode,
    info_hash: InfoHash,
    announce_port: Option<u16>,
    peers_tx: mpsc::Sender<Vec<SocketAddr>>,
    few_peers: impl Fn() -> bool + Send,
    shutdown: CancellationToken,
) -> Result<(), DhtError> {
    let mut next_announce = Instant::now();
    loop {
        let Some(found) = node.lookup_into(info_hash, &peers_tx, &shutdown).await else {
            return Ok(());
        };
        debug!(found, "DHT lookup done");
        if let Some(port) = announce_port
            && Instant::now() >= next_announce
            && node.announce(info_hash, port).await
        {
            next_announce = Instant::now() + ANNOUNCE_EVERY;
        }
        let wait = lookup_interval(few_peers());
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn lookup_interval(few_peers: bool) -> Duration {
    if few_peers {
        LOOKUP_EVERY_FEW_PEERS
    } else {
        LOOKUP_EVERY
    }
}

fn dht_id(info_hash: InfoHash) -> Id {
    Id::from(info_hash.0)
}

/// Builds the node on the calling (blocking) thread: resolves the bootstrap names and binds
/// `ip:port`, or one of the next [`BIND_PORT_ATTEMPTS`] ports when it is taken.
fn build_node(
    ip: Ipv4Addr,
    port: u16,
    server_mode: bool,
    bootstrap: &[String],
    saved: &[SocketAddr],
) -> Result<Dht, DhtError> {
    let mut builder = Dht::builder();
    builder
        .bind_address(ip)
        .bootstrap(bootstrap)
        .extra_bootstrap(saved);
    if server_mode {
        builder.server_mode();
    }
    let attempts = if port == 0 { 0 } else { BIND_PORT_ATTEMPTS };
    let mut last_err = None;
    for i in 0..=attempts {
        let Some(candidate) = port.checked_add(i) else {
            break;
        };
        match builder.port(candidate).build() {
            Ok(dht) => return Ok(dht),
            Err(err) => last_err = Some(err),
        }
    }
    Err(DhtError::Bind {
        addr: SocketAddr::V4(SocketAddrV4::new(ip, port)),
        source: last_err.unwrap_or_else(|| io::Error::other("no port tried")),
    })
}

/// The default state file: `$XDG_CACHE_HOME/swarmfs/dht-state`, else
/// `~/.cache/swarmfs/dht-state`; `None` when neither variable is set.
pub fn default_state_path() -> Option<PathBuf> {
    state_path_under(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
}

/// [`default_state_path`] from the two variables; a relative one is ignored, as the XDG
/// spec says.
fn state_path_under(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let absolute = |var: Option<OsString>| var.map(PathBuf::from).filter(|p| p.is_absolute());
    let cache = absolute(xdg_cache_home).or_else(|| absolute(home).map(|h| h.join(".cache")))?;
    Some(cache.join("swarmfs").join("dht-state"))
}

/// Nodes saved by the last run; a missing file is an empty list.
pub fn load_state(path: &Path) -> Result<Vec<SocketAddr>, DhtError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(DhtError::ReadState {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    parse_state(&text).map_err(|(line, text)| DhtError::CorruptState {
        path: path.to_path_buf(),
        line,
        text,
    })
}

/// Writes `nodes` to `path` (creating its directory) through a temporary file and a
/// rename, so a crash mid-write leaves the old file whole.
pub fn save_state(path: &Path, nodes: &[SocketAddr]) -> Result<(), DhtError> {
    let write_err = |source| DhtError::WriteState {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    std::fs::write(&tmp, encode_state(nodes)).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)
}

/// The header line, then one `IP:PORT` per line.
fn encode_state(nodes: &[SocketAddr]) -> String {
    let mut text = format!("{STATE_HEADER}\n");
    for node in nodes {
        text.push_str(&node.to_string());
        text.push('\n');
    }
    text
}

/// Parses [`encode_state`]'s format, capped at [`MAX_SAVED_NODES`]; a bad line is reported
/// as (1-based line number, its text).
fn parse_state(text: &str) -> Result<Vec<SocketAddr>, (usize, String)> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, STATE_HEADER)) => {}
        Some((_, other)) => return Err((1, other.to_string())),
        None => return Err((1, String::new())),
    }
    let mut nodes = Vec::new();
    for (index, line) in lines {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let node: SocketAddr = line.parse().map_err(|_| (index + 1, line.to_string()))?;
        if node.port() == 0 {
            return Err((index + 1, line.to_string()));
        }
        nodes.push(node);
    }
    nodes.truncate(MAX_SAVED_NODES);
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(last: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], port))
    }

    #[test]
    fn state_file_round_trips_and_creates_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deeper").join("dht-state");
        let nodes = vec![node(2, 6881), node(3, 52002)];
        save_state(&path, &nodes).unwrap();
        assert_eq!(load_state(&path).unwrap(), nodes);
        // Overwriting replaces, and leaves no temporary file behind.
        save_state(&path, &nodes[..1]).unwrap();
        assert_eq!(load_state(&path).unwrap(), nodes[..1]);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("dht-state")]);
    }

    #[test]
    fn missing_state_file_is_an_empty_table() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_state(&dir.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn corrupt_state_file_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dht-state");
        std::fs::write(
            &path,
            format!("{STATE_HEADER}\n127.0.0.2:6881\nnot a node\n"),
        )
        .unwrap();
        match load_state(&path) {
            Err(DhtError::CorruptState { line, text, .. }) => {
                assert_eq!((line, text.as_str()), (3, "not a node"));
            }
            other => panic!("expected CorruptState, got {other:?}"),
        }
        std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(load_state(&path), Err(DhtError::ReadState { .. })));
        std::fs::write(&path, "127.0.0.2:6881\n").unwrap();
        assert!(
            matches!(
                load_state(&path),
                Err(DhtError::CorruptState { line: 1, .. })
            ),
            "a file without the header is not ours"
        );
        std::fs::write(&path, format!("{STATE_HEADER}\n127.0.0.2:0\n")).unwrap();
        assert!(matches!(
            load_state(&path),
            Err(DhtError::CorruptState { line: 2, .. })
        ));
    }

    #[test]
    fn state_file_keeps_at_most_the_cap() {
        let nodes: Vec<SocketAddr> = (1..=100).map(|p| node(2, p)).collect();
        let parsed = parse_state(&encode_state(&nodes)).unwrap();
        assert_eq!(parsed, nodes[..MAX_SAVED_NODES]);
    }

    #[test]
    fn default_state_path_prefers_xdg_cache_home_then_home() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            state_path_under(os("/x/cache"), os("/home/u")),
            Some(PathBuf::from("/x/cache/swarmfs/dht-state"))
        );
        assert_eq!(
            state_path_under(os("relative"), os("/home/u")),
            Some(PathBuf::from("/home/u/.cache/swarmfs/dht-state"))
        );
        assert_eq!(state_path_under(None, None), None);
    }

    #[test]
    fn lookups_are_frequent_only_while_peers_are_few() {
        assert!(lookup_interval(true) < lookup_interval(false));
    }

    async fn loopback_node(bootstrap: Vec<String>, server_mode: bool) -> DhtNode {
        DhtNode::start(DhtConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            bootstrap,
            state_path: None,
            server_mode,
        })
        .await
        .unwrap()
    }

    /// Our nodes interoperate on loopback: the second announces through the first (a
    /// server-mode hub), and the third, bootstrapped from the hub too, finds the announce.
    #[tokio::test]
    async fn a_node_finds_what_another_announced() {
        let first = loopback_node(Vec::new(), true).await;
        let second = loopback_node(vec![first.local_addr().to_string()], false).await;
        let info_hash = InfoHash([7; 20]);
        let shutdown = CancellationToken::new();
        let (tx, _rx) = mpsc::channel(4);
        let source = tokio::spawn(run_peer_source(
            second.clone(),
            info_hash,
            Some(40_000),
            tx,
            || true,
            shutdown.clone(),
        ));
        let third = loopback_node(vec![first.local_addr().to_string()], false).await;
        // The announce follows the first lookup; poll the third node until it sees it.
        let wanted = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 40_000);
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let (tx3, mut rx3) = mpsc::channel(4);
                let token = CancellationToken::new();
                third.lookup_into(info_hash, &tx3, &token).await;
                drop(tx3);
                while let Some(batch) = rx3.recv().await {
                    if batch.contains(&wanted) {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(found.is_ok(), "the third node never found {wanted}");
        shutdown.cancel();
        source.await.unwrap().unwrap();
    }
}
