//! The running BitTorrent side of one torrent: its actor, the peer listener, the tracker
//! announce loop, the DHT lookup loop and the user's `--peer` list, under one shutdown token.
//!
//! Shutdown order: cancel the root token (readers get errors, peers close, trackers get
//! `stopped`), then wait for every task to finish.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn};

use crate::cache::SharedCache;
use crate::dht::{self, DhtNode};
use crate::metainfo::Metainfo;
use crate::store::PieceStore;
use crate::swarm::PeerSource;
use crate::task;
use crate::torrent::{TorrentConfig, TorrentHandle, TorrentStats, spawn_torrent};
use crate::tracker::{
    AnnounceEvent, AnnounceRequest, TrackerClient, TransferStats, run_announce_loop,
};
use crate::types::PeerId;
use crate::wire::read_handshake;

/// How many ports after `--listen`'s to try when it is taken.
const LISTEN_PORT_ATTEMPTS: u16 = 10;
/// A peer that dials us must finish its handshake this fast.
const INCOMING_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Shutdown waits this long for tasks (trackers' `stopped`) before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(6);
/// Peers we ask trackers for.
const NUM_WANT: u32 = 80;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot listen on {addr} or the {LISTEN_PORT_ATTEMPTS} ports after it: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tracker client: {0}")]
    Tracker(#[from] crate::tracker::TrackerError),
}

/// Options shared by `mount` and `seed`.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub listen: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub torrent: TorrentConfig,
    /// The run's DHT node; `None` with `--no-dht`. Private torrents ignore it.
    pub dht: Option<DhtNode>,
}

pub struct Engine {
    pub torrent: Arc<TorrentHandle>,
    pub listen_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Engine {
    /// Starts the torrent: binds the listener, starts the actor, tracker and peers.
    pub async fn start(
        meta: Arc<Metainfo>,
        cache: Arc<SharedCache>,
        store: Arc<PieceStore>,
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let listener = bind_listener(options.listen).await?;
        let listen_addr = listener
            .local_addr()
            .map_err(|source| EngineError::Listen {
                addr: options.listen,
                source,
            })?;
        info!(%listen_addr, "accepting peers");
        let own_addrs = own_addresses(listen_addr);
        let our_id = PeerId::generate();
        let torrent = Arc::new(spawn_torrent(
            Arc::clone(&meta),
            cache,
            store,
            options.torrent.clone(),
            our_id,
            own_addrs,
            shutdown.clone(),
            tasks.clone(),
        ));

        if !options.peers.is_empty() {
            torrent
                .add_peers(options.peers.clone(), PeerSource::User)
                .await;
        }

        let accept = accept_loop(
            listener,
            Arc::clone(&torrent),
            shutdown.clone(),
            tasks.clone(),
        );
        task::spawn(
            &tasks,
            "listener",
            info_span!("listener", %listen_addr),
            accept,
        );

        let tiers: Vec<Vec<String>> = meta.trackers.clone();
        if !tiers.is_empty() {
            let (peers_tx, peers_rx) = mpsc::channel(16);
            let for_stats = Arc::clone(&torrent);
            let seeding = options.torrent.seeding;
            let stats = move || TransferStats {
                uploaded: crate::torrent::TorrentStats::get(&for_stats.stats.uploaded),
                downloaded: crate::torrent::TorrentStats::get(&for_stats.stats.downloaded),
                left: if seeding { 0 } else { for_stats.left_bytes() },
            };
            let announce = tracker_announcer(
                listen_addr,
                meta.info_hash,
                our_id,
                meta.total_length,
                tiers,
                stats,
                peers_tx,
                shutdown.clone(),
            )?;
            tasks.spawn(announce);
            forward_peers(&tasks, peers_rx, Arc::clone(&torrent), PeerSource::Tracker);
        }

        match options.dht.clone() {
            Some(_) if meta.private => debug!("private torrent: the DHT is not used"),
            Some(node) => {
                let (peers_tx, peers_rx) = mpsc::channel(16);
                let counters = Arc::clone(&torrent.stats);
                let few_peers =
                    move || TorrentStats::get(&counters.connected_peers) < dht::FEW_PEERS;
                let lookups = dht::run_peer_source(
                    node,
                    meta.info_hash,
                    Some(listen_addr.port()),
                    peers_tx,
                    few_peers,
                    shutdown.clone(),
                );
                task::spawn(&tasks, "dht", info_span!("dht"), lookups);
                forward_peers(&tasks, peers_rx, Arc::clone(&torrent), PeerSource::Dht);
            }
            None => {}
        }

        Ok(Engine {
            torrent,
            listen_addr,
            shutdown,
            tasks,
        })
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Cancels everything and waits (bounded) for the tasks to finish.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("some tasks did not stop within {SHUTDOWN_GRACE:?}");
        }
        let stats = &self.torrent.stats;
        let get = crate::torrent::TorrentStats::get;
        info!(
            pieces_fetched = get(&stats.pieces_fetched),
            downloaded_bytes = get(&stats.downloaded),
            uploaded_bytes = get(&stats.uploaded),
            hash_failures = get(&stats.hash_failures),
            "session totals"
        );
    }
}

/// Hands every batch a peer source finds to the torrent's address book, until the source
/// closes its channel.
fn forward_peers(
    tasks: &TaskTracker,
    mut peers_rx: mpsc::Receiver<Vec<SocketAddr>>,
    torrent: Arc<TorrentHandle>,
    source: PeerSource,
) {
    tasks.spawn(async move {
        while let Some(addrs) = peers_rx.recv().await {
            debug!(count = addrs.len(), ?source, "peers found");
            torrent.add_peers(addrs, source).await;
        }
    });
}

async fn bind_listener(addr: SocketAddr) -> Result<TcpListener, EngineError> {
    let mut last_err = None;
    for i in 0..=LISTEN_PORT_ATTEMPTS {
        let mut candidate = addr;
        if addr.port() == 0 && i > 0 {
            break;
        }
        candidate.set_port(addr.port().saturating_add(i));
        match TcpListener::bind(candidate).await {
            Ok(listener) => return Ok(listener),
            Err(err) => last_err = Some(err),
        }
    }
    Err(EngineError::Listen {
        addr,
        source: last_err.unwrap_or_else(|| std::io::Error::other("no port tried")),
    })
}

/// Addresses that reach our own listener, so we never dial ourselves from a tracker list.
/// The listen address itself comes first (the actor binds its dials to its IP).
fn own_addresses(listen: SocketAddr) -> Vec<SocketAddr> {
    if listen.ip().is_unspecified() {
        vec![
            listen,
            SocketAddr::new(IpAddr::from([127, 0, 0, 1]), listen.port()),
        ]
    } else {
        vec![listen]
    }
}

async fn accept_loop(
    listener: TcpListener,
    torrent: Arc<TorrentHandle>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) -> Result<(), std::io::Error> {
    loop {
        let (mut stream, addr) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let torrent = Arc::clone(&torrent);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _ = stream.set_nodelay(true);
            let handshake = tokio::select! {
                () = shutdown.cancelled() => return,
                r = tokio::time::timeout(INCOMING_HANDSHAKE_TIMEOUT, read_handshake(&mut stream)) => r,
            };
            match handshake {
                Ok(Ok(hs)) if hs.info_hash == torrent.info_hash => torrent.incoming(stream, addr, hs).await,
                Ok(Ok(_)) => debug!(%addr, "incoming peer asked for another torrent"),
                Ok(Err(err)) => debug!(%addr, "incoming handshake failed: {err}"),
                Err(_) => debug!(%addr, "incoming handshake timed out"),
            }
        });
    }
}

/// The announce loop of one torrent over its tracker tiers, announcing from the listen
/// address's IP (trackers record the source IP) and its port; peers go to `peers_out`.
/// `left` is the first announce's; `stats` gives the later ones'.
#[allow(clippy::too_many_arguments)]
pub fn tracker_announcer(
    listen: SocketAddr,
    info_hash: crate::types::InfoHash,
    peer_id: PeerId,
    left: u64,
    tiers: Vec<Vec<String>>,
    stats: impl Fn() -> TransferStats + Send + 'static,
    peers_out: mpsc::Sender<Vec<SocketAddr>>,
    shutdown: CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, EngineError> {
    let local_ip = (!listen.ip().is_unspecified()).then_some(listen.ip());
    let client = TrackerClient::new(local_ip)?;
    let base = AnnounceRequest {
        info_hash,
        peer_id,
        port: listen.port(),
        uploaded: 0,
        downloaded: 0,
        left,
        event: AnnounceEvent::Started,
        num_want: NUM_WANT,
        tracker_id: None,
    };
    Ok(run_announce_loop(
        client, tiers, base, stats, peers_out, shutdown,
    ))
}
