//! What the user typed: the clap structures of every subcommand, unvalidated.
//! `config.rs` turns them into a checked `Config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "swarmfs",
    version,
    about = "Mount BitTorrent torrents as read-only directories"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a .torrent as a read-only directory (foreground; Ctrl-C unmounts).
    Mount(MountArgs),
    /// Make a .torrent from a file or directory.
    Create(CreateArgs),
    /// Serve a torrent's data from disk to other peers.
    Seed(SeedArgs),
}

#[derive(Debug, Args)]
pub struct PeerArgs {
    /// Connect to this peer (IP:PORT); repeatable. Adds to the trackers' peers.
    #[arg(long = "peer", value_name = "IP:PORT")]
    pub peers: Vec<SocketAddr>,
    /// Address to accept peer connections on; if its port is taken, the next free one
    /// of the following 10 is used.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:6881")]
    pub listen: SocketAddr,
    /// Most peers connected at once.
    #[arg(long, default_value_t = 50)]
    pub max_peers: usize,
    /// Upload limit for all peers together, per second (e.g. 5MiB); 0 = unlimited.
    #[arg(long, default_value = "0")]
    pub upload_rate: String,
    /// Peers we upload to at once (plus one optimistic unchoke).
    #[arg(long, default_value_t = 4)]
    pub upload_slots: usize,
    /// Join the DHT through this node (HOST:PORT); repeatable. Default: the public routers
    /// router.bittorrent.com:6881, dht.transmissionbt.com:6881, dht.libtorrent.org:25401
    /// and router.utorrent.com:6881.
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub dht_bootstrap: Vec<String>,
    /// Do not use the DHT (BEP 5) to find peers. Private torrents never use it.
    #[arg(long)]
    pub no_dht: bool,
    /// UDP port of our DHT node (on the --listen IP); default: the --listen port.
    #[arg(long, value_name = "PORT")]
    pub dht_port: Option<u16>,
    /// Where the DHT routing table is kept between runs [default:
    /// $XDG_CACHE_HOME/swarmfs/dht-state, else ~/.cache/swarmfs/dht-state].
    #[arg(long, value_name = "PATH")]
    pub dht_state: Option<PathBuf>,
}

/// `HOST:PORT` with a non-zero port; the host is resolved when the DHT starts.
fn parse_host_port(input: &str) -> Result<String, String> {
    let bad = || format!("{input:?} is not HOST:PORT");
    let (host, port) = input.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(port) if port > 0 && !host.is_empty() => Ok(input.to_string()),
        _ => Err(bad()),
    }
}

#[derive(Debug, Args)]
pub struct MountArgs {
    /// A .torrent file, or a magnet link (`magnet:?xt=urn:btih:...`).
    pub torrent: String,
    /// An existing empty directory to mount on.
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub peer: PeerArgs,
    /// Memory for verified pieces (e.g. 512MiB, 2GiB).
    #[arg(long, default_value = "512MiB")]
    pub cache_size: String,
    /// A read whose data cannot be had this long gets EIO (e.g. 60s, 500ms, 2m).
    #[arg(long, default_value = "60s")]
    pub read_timeout: String,
    /// With a magnet link: give up if no peer has sent the torrent's metadata by then.
    #[arg(long, default_value = "120s")]
    pub metadata_timeout: String,
    /// Never upload (peers still see us, but all requests are refused).
    #[arg(long)]
    pub no_upload: bool,
    /// Let other users read the mount (needs user_allow_other in /etc/fuse.conf for non-root).
    #[arg(long)]
    pub allow_other: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// File or directory to make a torrent of.
    pub path: PathBuf,
    /// Where to write the .torrent.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Piece size (power of two, 16KiB..16MiB); automatic when absent.
    #[arg(long)]
    pub piece_size: Option<String>,
    /// Announce URL; repeatable (each becomes its own tier).
    #[arg(long = "tracker")]
    pub trackers: Vec<String>,
    #[arg(long)]
    pub comment: Option<String>,
    /// Mark the torrent private (no DHT or PEX).
    #[arg(long)]
    pub private: bool,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// Directory that contains the torrent's file or top directory.
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub peer: PeerArgs,
}
