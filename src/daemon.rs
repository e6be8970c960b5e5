//! One run of a subcommand: build the engine, mount, wait for a signal or an external
//! unmount, and stop in order (engine first, so waiting reads are answered, then unmount).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::cache::SharedCache;
use crate::cli::{CreateArgs, MountArgs, PeerArgs, SeedArgs};
use crate::config::{
    ConfigError, READAHEAD_CEILING_BYTES, READAHEAD_FLOOR_BYTES, parse_duration, parse_size,
};
use crate::dht::{self, DhtConfig, DhtNode};
use crate::engine::{Engine, EngineOptions, tracker_announcer};
use crate::fs::{ReadPolicy, TorrentFs};
use crate::fuse::FuseAdapter;
use crate::layout::Layout;
use crate::magnet::Magnet;
use crate::metadata::fetch_metadata;
use crate::metainfo::{CreateOptions, Metainfo, create_torrent};
use crate::store::{DiskStore, PieceStore};
use crate::torrent::{StatusSnapshot, TorrentConfig, TorrentHandle, TorrentStats};
use crate::tracker::TransferStats;
use crate::types::PeerId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How often the engine checks whether someone unmounted us from outside.
const UNMOUNT_POLL: Duration = Duration::from_millis(200);

fn load_metainfo(path: &Path) -> anyhow::Result<Arc<Metainfo>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let meta = Metainfo::from_bytes(&bytes)
        .with_context(|| format!("{} is not a valid torrent", path.display()))?;
    Ok(Arc::new(meta))
}

fn engine_options(
    peer: &PeerArgs,
    upload_enabled: bool,
    seeding: bool,
    dht: Option<DhtNode>,
) -> anyhow::Result<EngineOptions> {
    let upload_rate = parse_size(&peer.upload_rate)?;
    Ok(EngineOptions {
        listen: peer.listen,
        peers: peer.peers.clone(),
        torrent: TorrentConfig {
            max_peers: peer.max_peers.max(1),
            upload_slots: peer.upload_slots,
            upload_enabled,
            upload_rate: (upload_rate > 0).then_some(upload_rate),
            seeding,
        },
        dht,
    })
}

/// Starts the run's DHT node unless `--no-dht`; a node that cannot start is logged and the
/// run goes on without it (trackers and `--peer` may suffice).
async fn start_dht(peer: &PeerArgs) -> Option<DhtNode> {
    if peer.no_dht {
        info!("DHT off (--no-dht)");
        return None;
    }
    let bootstrap = if peer.dht_bootstrap.is_empty() {
        dht::DEFAULT_BOOTSTRAP.map(String::from).to_vec()
    } else {
        peer.dht_bootstrap.clone()
    };
    let config = DhtConfig {
        bind: SocketAddr::new(
            peer.listen.ip(),
            peer.dht_port.unwrap_or(peer.listen.port()),
        ),
        bootstrap,
        state_path: peer.dht_state.clone().or_else(dht::default_state_path),
        server_mode: false,
    };
    match DhtNode::start(config).await {
        Ok(node) => Some(node),
        Err(err) => {
            warn!("DHT off: {err}");
            None
        }
    }
}

/// Saves the DHT routing table for the next run (after the engine has stopped with it).
async fn stop_dht(node: Option<DhtNode>) {
    if let Some(node) = node
        && let Err(err) = node.save_state().await
    {
        warn!("{err}");
    }
}

/// `swarmfs mount`.
pub async fn run_mount(args: MountArgs) -> anyhow::Result<()> {
    let file_meta = if args.torrent.starts_with("magnet:") {
        None
    } else {
        Some(load_metainfo(Path::new(&args.torrent))?)
    };
    // A magnet's torrent may turn out private, but its metadata can only come from peers.
    let dht = if file_meta.as_ref().is_some_and(|meta| meta.private) {
        None
    } else {
        start_dht(&args.peer).await
    };
    let mut options = engine_options(&args.peer, !args.no_upload, false, dht.clone())?;
    let meta = match file_meta {
        Some(meta) => meta,
        None => {
            let Some((meta, magnet_peers, banned)) =
                metainfo_from_magnet(&args, dht.as_ref()).await?
            else {
                stop_dht(dht).await;
                return Ok(());
            };
            options.peers.extend(magnet_peers);
            // Peers that lied about the metadata are not trusted with the data either.
            options.peers.retain(|addr| !banned.contains(addr));
            meta
        }
    };
    let cache_bytes = parse_size(&args.cache_size)?;
    if cache_bytes < 1 << 20 {
        bail!(ConfigError::CacheTooSmall { bytes: cache_bytes });
    }
    let read_timeout = parse_duration(&args.read_timeout)?;
    if !args.mountpoint.is_dir() {
        bail!(
            "mount point {} is not a directory",
            args.mountpoint.display()
        );
    }
    info!(
        name = %meta.name,
        info_hash = %meta.info_hash,
        files = meta.files.len(),
        bytes = meta.total_length,
        pieces = meta.piece_count(),
        piece_length = meta.piece_length,
        "torrent"
    );
    // `--cache-size` bounds all piece data: the verified pieces in the cache plus the
    // pieces being assembled, which the read-ahead window bounds.
    let readahead_ceiling = READAHEAD_CEILING_BYTES
        .min(cache_bytes / 4)
        .max(READAHEAD_FLOOR_BYTES);
    let cache = SharedCache::new(cache_bytes.saturating_sub(readahead_ceiling));
    let store = Arc::new(PieceStore::Cache(Arc::clone(&cache)));
    let engine = Engine::start(Arc::clone(&meta), cache, store, options).await?;
    let policy = ReadPolicy {
        read_timeout,
        readahead_floor_bytes: READAHEAD_FLOOR_BYTES,
        readahead_ceiling_bytes: readahead_ceiling,
    };
    let runtime = tokio::runtime::Handle::current();
    let fs = Arc::new(TorrentFs::new(
        Arc::clone(&engine.torrent),
        policy,
        runtime.clone(),
    ));
    let adapter = FuseAdapter::new(Arc::clone(&fs), runtime);
    let mountpoint = args.mountpoint.clone();
    let name = meta.name.clone();
    let allow_other = args.allow_other;
    let mounted = tokio::task::spawn_blocking(move || {
        crate::mount::mount(adapter, &mountpoint, &name, allow_other)
    })
    .await?
    .with_context(|| format!("cannot mount on {}", args.mountpoint.display()))?;
    eprintln!(
        "swarmfs: {} mounted on {}",
        meta.name,
        args.mountpoint.display()
    );

    let status = spawn_status_line(Arc::clone(&engine.torrent), engine.shutdown_token());
    let reason = wait_for_stop(|| mounted.is_finished()).await;
    info!("{reason}; stopping");
    log_final_ledger(&engine.torrent).await;
    // Answer waiting reads first, then unmount: an unmount waits for replies.
    engine.shutdown().await;
    fs.stop_background().await;
    stop_dht(dht).await;
    status.abort();
    tokio::task::spawn_blocking(move || mounted.unmount())
        .await?
        .context("unmount failed")?;
    Ok(())
}

/// Fetches the metadata a magnet link names from its peers (BEP 9), saying on stderr what
/// it waits for. Peers come from the magnet (`x.pe`), `--peer`, its trackers and the DHT.
/// Returns the metainfo, the magnet's own peers, and the peers caught lying about the
/// metadata; `None` when interrupted first.
async fn metainfo_from_magnet(
    args: &MountArgs,
    dht: Option<&DhtNode>,
) -> anyhow::Result<Option<(Arc<Metainfo>, Vec<SocketAddr>, Vec<SocketAddr>)>> {
    let magnet = Magnet::parse(&args.torrent)?;
    let limit = parse_duration(&args.metadata_timeout)?;
    let magnet_peers = magnet.peers.clone();
    let mut peers = magnet.peers.clone();
    peers.extend(&args.peer.peers);
    eprintln!(
        "swarmfs: waiting for the metadata of {}{} from {} tracker(s), {} peer(s){} (up to {:?})",
        magnet.info_hash,
        magnet
            .display_name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        magnet.trackers.len(),
        peers.len(),
        if dht.is_some() { " and the DHT" } else { "" },
        limit
    );
    let our_id = PeerId::generate();
    let shutdown = CancellationToken::new();
    let (peers_tx, peers_rx) = mpsc::channel(16);
    if !peers.is_empty() {
        let _ = peers_tx.send(peers).await;
    }
    let tiers = magnet.tracker_tiers();
    let announcer = if tiers.is_empty() {
        None
    } else {
        let stats = || TransferStats {
            uploaded: 0,
            downloaded: 0,
            left: 1,
        };
        // The size is not known yet; any non-zero `left` says we are a leecher.
        Some(tokio::spawn(tracker_announcer(
            args.peer.listen,
            magnet.info_hash,
            our_id,
            1,
            tiers.clone(),
            stats,
            peers_tx.clone(),
            shutdown.clone(),
        )?))
    };
    // Lookups only: we do not announce before the engine listens for peers.
    let dht_lookups = dht.map(|node| {
        tokio::spawn(dht::run_peer_source(
            node.clone(),
            magnet.info_hash,
            None,
            peers_tx.clone(),
            || true,
            shutdown.clone(),
        ))
    });
    drop(peers_tx);
    let fetch = fetch_metadata(magnet.info_hash, our_id, peers_rx, limit, shutdown.clone());
    let outcome = tokio::select! {
        r = fetch => Some(r),
        reason = wait_for_stop(|| false) => {
            info!("{reason} while waiting for metadata");
            None
        }
    };
    shutdown.cancel();
    if let Some(task) = announcer {
        let _ = tokio::time::timeout(Duration::from_secs(6), task).await;
    }
    if let Some(task) = dht_lookups {
        // It stops at the token; a lookup in flight is abandoned, not awaited.
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    let Some(fetched) = outcome.transpose()? else {
        return Ok(None);
    };
    let meta = Metainfo::from_info_bytes(&fetched.info, tiers)
        .context("the metadata peers sent is not a valid info dictionary")?;
    Ok(Some((Arc::new(meta), magnet_peers, fetched.banned)))
}

/// `swarmfs seed`.
pub async fn run_seed(args: SeedArgs) -> anyhow::Result<()> {
    let meta = load_metainfo(&args.torrent)?;
    let layout = Layout::new(&meta);
    let data_dir = args.data_dir.clone();
    let meta_for_check = Arc::clone(&meta);
    info!(name = %meta.name, info_hash = %meta.info_hash, "checking data");
    let (disk, bad) =
        tokio::task::spawn_blocking(move || DiskStore::open(&meta_for_check, &layout, &data_dir))
            .await?
            .with_context(|| {
                format!(
                    "cannot open the data of {} under {}",
                    meta.name,
                    args.data_dir.display()
                )
            })?;
    if bad > 0 {
        warn!(
            bad,
            total = meta.piece_count(),
            "pieces failed their hash check and will not be served"
        );
    }
    let cache = SharedCache::new(0);
    let store = Arc::new(PieceStore::Disk(disk));
    let dht = if meta.private {
        None
    } else {
        start_dht(&args.peer).await
    };
    let engine = Engine::start(
        Arc::clone(&meta),
        cache,
        store,
        engine_options(&args.peer, true, true, dht.clone())?,
    )
    .await?;
    eprintln!(
        "swarmfs: seeding {} ({}) on {}",
        meta.name, meta.info_hash, engine.listen_addr
    );
    let status = spawn_status_line(Arc::clone(&engine.torrent), engine.shutdown_token());
    let reason = wait_for_stop(|| false).await;
    info!("{reason}; stopping");
    log_final_ledger(&engine.torrent).await;
    engine.shutdown().await;
    stop_dht(dht).await;
    status.abort();
    Ok(())
}

/// `swarmfs create`.
pub fn run_create(args: CreateArgs) -> anyhow::Result<()> {
    let piece_length = match &args.piece_size {
        Some(size) => Some(u32::try_from(parse_size(size)?).context("piece size too large")?),
        None => None,
    };
    let options = CreateOptions {
        piece_length,
        trackers: args.trackers.clone(),
        comment: args.comment.clone(),
        private: args.private,
    };
    let bytes = create_torrent(&args.path, &options)?;
    let meta = Metainfo::from_bytes(&bytes).context("the torrent we made does not parse")?;
    std::fs::write(&args.output, &bytes)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "swarmfs: wrote {} ({} files, {} bytes, {} pieces of {}; info hash {})",
        args.output.display(),
        meta.files.len(),
        meta.total_length,
        meta.piece_count(),
        meta.piece_length,
        meta.info_hash
    );
    Ok(())
}

/// Waits for SIGINT, SIGTERM, or `finished()` turning true; says which.
async fn wait_for_stop(finished: impl Fn() -> bool) -> &'static str {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return "cannot install signal handlers";
    };
    let mut poll = tokio::time::interval(UNMOUNT_POLL);
    loop {
        tokio::select! {
            _ = int.recv() => return "interrupted",
            _ = term.recv() => return "terminated",
            _ = poll.tick() => if finished() { return "unmounted from outside" },
        }
    }
}

/// Every 30 s, the log gets the totals and the credit ledger (bytes each peer gave us
/// and we gave it), whether or not a terminal is attached.
const STATUS_LOG_EVERY: Duration = Duration::from_secs(30);

/// The credit ledger, one line per peer: bytes it gave us and we gave it.
fn log_ledger(status: &StatusSnapshot) {
    let mib = |b: u64| format!("{:.1}", b as f64 / 1048576.0);
    for (addr, client, given, taken) in &status.ledger {
        info!(%addr, %client, gave_us_mib = mib(*given), we_gave_mib = mib(*taken), "ledger");
    }
}

/// At stop, before the peers are dropped: the ledger of the whole session (the engine
/// logs the totals once stopped), so what each peer gave and took is in the log however
/// short the mount was.
async fn log_final_ledger(torrent: &TorrentHandle) {
    if let Ok(Some(status)) = tokio::time::timeout(Duration::from_secs(1), torrent.status()).await {
        log_ledger(&status);
    }
}

/// A one-line status on stderr, refreshed every second when stderr is a terminal, and a
/// status and ledger entry in the log every `STATUS_LOG_EVERY`.
fn spawn_status_line(
    torrent: Arc<TorrentHandle>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let terminal = std::io::stderr().is_terminal();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let (mut last_down, mut last_up) = (0u64, 0u64);
        let mut last_log = tokio::time::Instant::now();
        let (mut log_down, mut log_up) = (0u64, 0u64);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Some(status) = torrent.status().await else {
                break;
            };
            let down = TorrentStats::get(&torrent.stats.downloaded);
            let up = TorrentStats::get(&torrent.stats.uploaded);
            let cache = torrent.cache.lock().used_bytes();
            let ratio = if down > 0 {
                up as f64 / down as f64
            } else {
                0.0
            };
            let mib = |b: u64| b as f64 / 1048576.0;
            if terminal {
                eprint!(
                    "\r\x1b[2Kpeers {}/{} (unchoked by {}) | down {:.1} MiB/s {:.0} MiB | up {:.1} MiB/s {:.0} MiB | ratio {:.2} | cache {:.0} MiB | waiting {}",
                    status.connected_peers,
                    status.known_peers,
                    status.unchoked_by,
                    mib(down - last_down.min(down)),
                    mib(down),
                    mib(up - last_up.min(up)),
                    mib(up),
                    ratio,
                    mib(cache),
                    status.waiting_pieces,
                );
            }
            last_down = down;
            last_up = up;
            let since = last_log.elapsed();
            if since >= STATUS_LOG_EVERY {
                let secs = since.as_secs_f64();
                info!(
                    peers = status.connected_peers,
                    down_mib_s = format!("{:.1}", mib(down - log_down.min(down)) / secs),
                    up_mib_s = format!("{:.1}", mib(up - log_up.min(up)) / secs),
                    down_mib = format!("{:.0}", mib(down)),
                    up_mib = format!("{:.0}", mib(up)),
                    ratio = format!("{ratio:.2}"),
                    cache_mib = format!("{:.0}", mib(cache)),
                    "status"
                );
                log_ledger(&status);
                last_log = tokio::time::Instant::now();
                log_down = down;
                log_up = up;
            }
        }
        if terminal {
            eprintln!();
        }
    })
}
