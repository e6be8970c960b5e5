//! One run of a subcommand: build the engine, mount, wait for a signal or an external
//! unmount, and stop in order (engine first, so waiting reads are answered, then unmount).

use std::io::IsTerminal;
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
use crate::engine::{Engine, EngineOptions};
use crate::fs::{ReadPolicy, TorrentFs};
use crate::fuse::FuseAdapter;
use crate::layout::Layout;
use crate::metainfo::{CreateOptions, Metainfo, create_torrent};
use crate::store::{DiskStore, PieceStore};
use crate::torrent::{TorrentConfig, TorrentHandle, TorrentStats};

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
    })
}

/// `swarmfs mount`.
pub async fn run_mount(args: MountArgs) -> anyhow::Result<()> {
    let meta = load_metainfo(&args.torrent)?;
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
    let cache = SharedCache::new(cache_bytes);
    let store = Arc::new(PieceStore::Cache(Arc::clone(&cache)));
    let engine = Engine::start(
        Arc::clone(&meta),
        cache,
        store,
        engine_options(&args.peer, !args.no_upload, false)?,
    )
    .await?;
    let policy = ReadPolicy {
        read_timeout,
        readahead_floor_bytes: READAHEAD_FLOOR_BYTES,
        readahead_ceiling_bytes: READAHEAD_CEILING_BYTES
            .min(cache_bytes / 4)
            .max(READAHEAD_FLOOR_BYTES),
    };
    let fs = Arc::new(TorrentFs::new(Arc::clone(&engine.torrent), policy));
    let adapter = FuseAdapter::new(fs, tokio::runtime::Handle::current());
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
    // Answer waiting reads first, then unmount: an unmount waits for replies.
    engine.shutdown().await;
    status.abort();
    tokio::task::spawn_blocking(move || mounted.unmount())
        .await?
        .context("unmount failed")?;
    Ok(())
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
    let engine = Engine::start(
        Arc::clone(&meta),
        cache,
        store,
        engine_options(&args.peer, true, true)?,
    )
    .await?;
    eprintln!(
        "swarmfs: seeding {} ({}) on {}",
        meta.name, meta.info_hash, engine.listen_addr
    );
    let status = spawn_status_line(Arc::clone(&engine.torrent), engine.shutdown_token());
    let reason = wait_for_stop(|| false).await;
    info!("{reason}; stopping");
    engine.shutdown().await;
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
            let up = status
                .ledger
                .iter()
                .map(|l| l.3)
                .sum::<u64>()
                .max(TorrentStats::get(&torrent.stats.uploaded));
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
                for (addr, client, given, taken) in &status.ledger {
                    info!(%addr, %client, gave_us_mib = format!("{:.1}", mib(*given)), we_gave_mib = format!("{:.1}", mib(*taken)), "ledger");
                }
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
