//! Fetching a torrent's info dictionary from peers (BEP 9 over BEP 10) when all we have
//! is a magnet's info hash.
//!
//! Peers arrive from any source (trackers, `x.pe`, `--peer`, DHT). Several peers are asked
//! at once; each contributes 16 KiB metadata pieces to the assembly of the size it
//! announced, so a peer lying about the size cannot spoil an honest peer's assembly. An
//! assembly that completes is checked against the info hash before use; one that fails
//! bans its contributors and starts over.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::types::{InfoHash, PeerId};
use crate::wire::metadata::{METADATA_PIECE_LEN, MetadataMessage, OUR_UT_METADATA_ID};
use crate::wire::{
    DEFAULT_MAX_MESSAGE_LEN, ExtendedHandshake, Handshake, Message, MessageCodec, read_handshake,
    write_handshake,
};

/// Largest info dictionary accepted: 16 MiB holds the piece hashes of a torrent of about
/// 800,000 pieces; anything bigger is a lie or not worth mounting.
pub const MAX_METADATA_SIZE: u64 = 16 * 1024 * 1024;
/// Peers asked at once.
const MAX_PARALLEL_PEERS: usize = 8;
/// Metadata pieces requested at once from one peer.
const PIECES_PER_PEER: usize = 4;
/// Connect, handshake, or silence between useful messages longer than this drops a peer.
const PEER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("no peer gave the metadata of {info_hash} within {waited:?} ({tried} peers tried)")]
    TimedOut {
        info_hash: InfoHash,
        waited: Duration,
        tried: usize,
    },
    #[error("shutting down")]
    ShuttingDown,
}

/// What one peer connection ended with (for logs).
#[derive(Debug, thiserror::Error)]
enum PeerFetchError {
    #[error("connect or handshake failed or timed out")]
    Unreachable,
    #[error("serves another torrent")]
    WrongTorrent,
    #[error("does not support ut_metadata")]
    NoMetadataSupport,
    #[error("announced a metadata size of {0} bytes")]
    BadSize(u64),
    #[error("sent a malformed message: {0}")]
    Protocol(String),
    #[error("went silent")]
    Silent,
    #[error("rejected our requests")]
    Rejected,
}

#[derive(Default)]
struct Assembly {
    pieces: Vec<Option<Bytes>>,
    claimed: Vec<bool>,
    contributors: HashSet<SocketAddr>,
}

#[derive(Default)]
struct Shared {
    /// Assemblies by announced size; for a size whose shared assembly failed its hash,
    /// one per peer (solo), so the peer whose own copy fails is the one banned.
    by_size: HashMap<(u64, Option<SocketAddr>), Assembly>,
    solo_sizes: HashSet<u64>,
    banned: HashSet<SocketAddr>,
    result: Option<Bytes>,
}

struct Fetch {
    info_hash: InfoHash,
    our_id: PeerId,
    shared: Mutex<Shared>,
    done: Notify,
}

impl Shared {
    fn key(&self, size: u64, addr: SocketAddr) -> (u64, Option<SocketAddr>) {
        (size, self.solo_sizes.contains(&size).then_some(addr))
    }
}

impl Fetch {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The verified info dictionary, and the peers caught lying on the way (the engine must
/// not use them either).
#[derive(Debug)]
pub struct FetchedMetadata {
    pub info: Bytes,
    pub banned: Vec<SocketAddr>,
}

/// Fetches the info dictionary of `info_hash` from the peers `peers` delivers, verifying
/// it against the hash. Gives up after `limit`.
pub async fn fetch_metadata(
    info_hash: InfoHash,
    our_id: PeerId,
    mut peers: mpsc::Receiver<Vec<SocketAddr>>,
    limit: Duration,
    shutdown: CancellationToken,
) -> Result<FetchedMetadata, MetadataError> {
    let fetch = Arc::new(Fetch {
        info_hash,
        our_id,
        shared: Mutex::new(Shared::default()),
        done: Notify::new(),
    });
    let started = Instant::now();
    let deadline = started + limit;
    let mut seen: HashSet<SocketAddr> = HashSet::new();
    let mut waiting: Vec<SocketAddr> = Vec::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut peers_open = true;
    loop {
        while tasks.len() < MAX_PARALLEL_PEERS
            && let Some(addr) = waiting.pop()
        {
            let fetch = Arc::clone(&fetch);
            tasks.spawn(async move {
                match fetch_from_peer(&fetch, addr).await {
                    Ok(()) => debug!(%addr, "metadata peer done"),
                    Err(err) => {
                        debug!(%addr, "metadata peer: {err}");
                        if matches!(
                            err,
                            PeerFetchError::BadSize(_) | PeerFetchError::WrongTorrent
                        ) {
                            fetch.lock().banned.insert(addr);
                        }
                    }
                }
            });
        }
        let finished = {
            let shared = fetch.lock();
            shared
                .result
                .clone()
                .map(|info| (info, shared.banned.iter().copied().collect::<Vec<_>>()))
        };
        if let Some((info, banned)) = finished {
            tasks.abort_all();
            info!(
                bytes = info.len(),
                secs = format!("{:.2}", started.elapsed().as_secs_f64()),
                "metadata received"
            );
            return Ok(FetchedMetadata { info, banned });
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(MetadataError::ShuttingDown),
            () = tokio::time::sleep_until(deadline) => {
                return Err(MetadataError::TimedOut { info_hash, waited: started.elapsed(), tried: seen.len() });
            }
            () = fetch.done.notified() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            batch = peers.recv(), if peers_open => match batch {
                Some(addrs) => {
                    for addr in addrs {
                        if seen.insert(addr) {
                            waiting.push(addr);
                        }
                    }
                }
                None => peers_open = false,
            },
        }
    }
}

async fn fetch_from_peer(fetch: &Fetch, addr: SocketAddr) -> Result<(), PeerFetchError> {
    let mut stream = timeout(PEER_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| PeerFetchError::Unreachable)?
        .map_err(|_| PeerFetchError::Unreachable)?;
    let ours = Handshake::new(fetch.info_hash, fetch.our_id);
    let theirs = timeout(PEER_TIMEOUT, async {
        write_handshake(&mut stream, &ours).await?;
        read_handshake(&mut stream).await
    })
    .await
    .map_err(|_| PeerFetchError::Unreachable)?
    .map_err(|_| PeerFetchError::Unreachable)?;
    if theirs.info_hash != fetch.info_hash {
        return Err(PeerFetchError::WrongTorrent);
    }
    if !theirs.supports_extensions() {
        return Err(PeerFetchError::NoMetadataSupport);
    }
    let mut frames = Framed::new(stream, MessageCodec::new(DEFAULT_MAX_MESSAGE_LEN));
    let send_err = |e: crate::wire::WireError| PeerFetchError::Protocol(e.to_string());
    // BEP 6: with the Fast extension on, a have message must come first.
    if theirs.supports_fast() {
        frames.send(Message::HaveNone).await.map_err(send_err)?;
    }
    let mut handshake = ExtendedHandshake::default();
    handshake
        .m
        .insert("ut_metadata".into(), i64::from(OUR_UT_METADATA_ID));
    handshake.v = Some(concat!("swarmfs/", env!("CARGO_PKG_VERSION")).into());
    frames
        .send(Message::Extended {
            id: 0,
            payload: handshake.to_bytes().into(),
        })
        .await
        .map_err(send_err)?;

    // Their extended handshake tells us their message id and the size.
    let (their_id, size) = loop {
        let message = next_message(&mut frames).await?;
        if let Message::Extended { id: 0, payload } = message {
            let hs = ExtendedHandshake::parse(&payload)
                .map_err(|e| PeerFetchError::Protocol(e.to_string()))?;
            let id = hs
                .extension_id("ut_metadata")
                .ok_or(PeerFetchError::NoMetadataSupport)?;
            let size = hs.metadata_size.ok_or(PeerFetchError::NoMetadataSupport)?;
            if size == 0 || size > MAX_METADATA_SIZE {
                return Err(PeerFetchError::BadSize(size));
            }
            break (id, size);
        }
    };
    let piece_count = usize::try_from(size.div_ceil(METADATA_PIECE_LEN as u64))
        .map_err(|_| PeerFetchError::BadSize(size))?;
    let mut mine: Vec<u32> = Vec::new();
    let result = exchange(
        fetch,
        addr,
        &mut frames,
        their_id,
        size,
        piece_count,
        &mut mine,
    )
    .await;
    // Whatever happened, give back what we claimed so other peers can ask for it.
    let mut shared = fetch.lock();
    let key = shared.key(size, addr);
    if let Some(assembly) = shared.by_size.get_mut(&key) {
        for piece in mine {
            if let Some(c) = assembly.claimed.get_mut(piece as usize) {
                *c = false;
            }
        }
    }
    drop(shared);
    fetch.done.notify_one();
    result
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    fetch: &Fetch,
    addr: SocketAddr,
    frames: &mut Framed<TcpStream, MessageCodec>,
    their_id: u8,
    size: u64,
    piece_count: usize,
    mine: &mut Vec<u32>,
) -> Result<(), PeerFetchError> {
    let send_err = |e: crate::wire::WireError| PeerFetchError::Protocol(e.to_string());
    loop {
        // Claim pieces nobody is asking for, up to our share.
        let to_request: Vec<u32> = {
            let mut shared = fetch.lock();
            if shared.result.is_some() || shared.banned.contains(&addr) {
                return Ok(());
            }
            let key = shared.key(size, addr);
            let assembly = shared.by_size.entry(key).or_insert_with(|| Assembly {
                pieces: vec![None; piece_count],
                claimed: vec![false; piece_count],
                contributors: HashSet::new(),
            });
            let mut picked = Vec::new();
            for i in 0..piece_count {
                if mine.len() + picked.len() >= PIECES_PER_PEER {
                    break;
                }
                if assembly.pieces[i].is_none() && !assembly.claimed[i] {
                    assembly.claimed[i] = true;
                    picked.push(i as u32);
                }
            }
            picked
        };
        for piece in &to_request {
            frames
                .feed(Message::Extended {
                    id: their_id,
                    payload: MetadataMessage::Request { piece: *piece }.to_bytes(),
                })
                .await
                .map_err(send_err)?;
        }
        SinkExt::<Message>::flush(frames).await.map_err(send_err)?;
        mine.extend(to_request);
        if mine.is_empty() {
            // Everything is claimed by others: wait for them (or for them to fail).
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let message = next_message(frames).await?;
        let Message::Extended { id, payload } = message else {
            continue;
        };
        if id != OUR_UT_METADATA_ID {
            continue;
        }
        let parsed = MetadataMessage::parse(&payload)
            .map_err(|e| PeerFetchError::Protocol(e.to_string()))?;
        match parsed {
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => {
                let expected_len = expected_piece_len(size, piece, piece_count);
                if total_size != size || !mine.contains(&piece) || Some(data.len()) != expected_len
                {
                    return Err(PeerFetchError::Protocol(format!(
                        "metadata piece {piece} of {} bytes (total {total_size}) does not fit {size}",
                        data.len()
                    )));
                }
                mine.retain(|p| *p != piece);
                store_piece(fetch, addr, size, piece, data);
            }
            MetadataMessage::Reject { .. } => return Err(PeerFetchError::Rejected),
            MetadataMessage::Request { .. } => {
                // We have nothing to give yet.
                frames
                    .send(Message::Extended {
                        id: their_id,
                        payload: MetadataMessage::Reject { piece: 0 }.to_bytes(),
                    })
                    .await
                    .map_err(send_err)?;
            }
        }
    }
}

fn expected_piece_len(size: u64, piece: u32, piece_count: usize) -> Option<usize> {
    let piece = piece as usize;
    if piece >= piece_count {
        return None;
    }
    let start = piece * METADATA_PIECE_LEN;
    usize::try_from(size)
        .ok()
        .map(|size| (size - start).min(METADATA_PIECE_LEN))
}

fn store_piece(fetch: &Fetch, addr: SocketAddr, size: u64, piece: u32, data: Bytes) {
    let mut shared = fetch.lock();
    let key = shared.key(size, addr);
    let Some(assembly) = shared.by_size.get_mut(&key) else {
        return;
    };
    if let Some(slot) = assembly.pieces.get_mut(piece as usize) {
        *slot = Some(data);
    }
    if let Some(c) = assembly.claimed.get_mut(piece as usize) {
        *c = false;
    }
    assembly.contributors.insert(addr);
    if assembly.pieces.iter().any(Option::is_none) {
        return;
    }
    let mut info = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    for bytes in assembly.pieces.iter().flatten() {
        info.extend_from_slice(bytes);
    }
    let hash: [u8; 20] = Sha1::digest(&info).into();
    if hash == fetch.info_hash.0 {
        shared.result = Some(info.into());
    } else {
        let senders = std::mem::take(&mut assembly.contributors);
        shared.by_size.remove(&key);
        if senders.len() == 1 {
            tracing::warn!(peers = ?senders, size, "metadata failed its info-hash check; banning its sender");
            shared.banned.extend(senders);
        } else {
            // Several peers shared in it: each now fetches a copy of its own, and only a
            // peer whose own copy fails is banned.
            tracing::warn!(peers = ?senders, size, "metadata failed its info-hash check; asking each sender for a whole copy");
            shared.solo_sizes.insert(size);
        }
    }
    drop(shared);
    fetch.done.notify_one();
}

async fn next_message(
    frames: &mut Framed<TcpStream, MessageCodec>,
) -> Result<Message, PeerFetchError> {
    match timeout(PEER_TIMEOUT, frames.next()).await {
        Err(_) => Err(PeerFetchError::Silent),
        Ok(None) => Err(PeerFetchError::Silent),
        Ok(Some(Err(e))) => Err(PeerFetchError::Protocol(e.to_string())),
        Ok(Some(Ok(message))) => Ok(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_lengths_follow_the_size() {
        assert_eq!(expected_piece_len(40_000, 0, 3), Some(16384));
        assert_eq!(expected_piece_len(40_000, 2, 3), Some(40_000 - 32768));
        assert_eq!(expected_piece_len(40_000, 3, 3), None);
    }
}
