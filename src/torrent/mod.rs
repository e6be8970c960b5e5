//! One torrent: the actor that owns its piece state and peer set, and the handle readers
//! use to ask it for pieces.
//!
//! Data flow: a read asks `TorrentHandle::read` for a torrent range; cached pieces are
//! pinned and sliced at once; missing ones become demands sent to the actor, which asks
//! peers for their blocks, verifies the assembled piece, caches it and wakes the read.
//! Only the actor task changes piece, peer and demand state (`actor.rs`); readers and peers
//! reach it over channels.

mod actor;
mod choke;
mod pace;
mod partial;

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use actor::spawn_torrent;
pub use choke::{ChokeCandidate, ChokeDecision, choose_unchoked};

use crate::cache::{PinnedPiece, SharedCache};
use crate::layout::Layout;
use crate::metainfo::Metainfo;
use crate::swarm::PeerSource;
use crate::types::{InfoHash, PeerId, PieceIndex};
use crate::wire::Handshake;

/// Why a read could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("pieces {pieces:?} not available after {waited:?}: {reason}")]
    DeadlinePassed {
        pieces: Vec<u32>,
        waited: Duration,
        reason: String,
    },
    #[error("the torrent is shutting down")]
    ShuttingDown,
    /// A broken invariant of ours, reported instead of panicking.
    #[error("bug: piece {piece} is {len} bytes, the read wanted {start}..{end} of it")]
    BugPieceTooShort {
        piece: u32,
        len: usize,
        start: usize,
        end: usize,
    },
}

/// The bytes of a read: slices of the verified pieces it spans, in order. They share the
/// pieces' buffers, so nothing is copied until the bytes leave the process (a read that
/// spans pieces is gathered once, into the FUSE reply's buffer).
#[derive(Debug, Default, Clone)]
pub struct ReadBytes {
    parts: Vec<Bytes>,
}

impl ReadBytes {
    /// The slices, one per piece the read spans.
    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Bytes::is_empty)
    }

    /// Appends the read's bytes, in order, to `out`.
    pub fn gather_into(&self, out: &mut Vec<u8>) {
        for part in &self.parts {
            out.extend_from_slice(part);
        }
    }

    /// One contiguous buffer: the slice itself for a read within one piece, else a copy.
    pub fn into_contiguous(mut self) -> Bytes {
        if self.parts.len() == 1 {
            return self.parts.pop().unwrap_or_default();
        }
        let mut out = Vec::with_capacity(self.len());
        self.gather_into(&mut out);
        Bytes::from(out)
    }
}

/// How a torrent runs.
#[derive(Clone, Debug)]
pub struct TorrentConfig {
    /// Most peers connected at once (dialled and accepted together).
    pub max_peers: usize,
    /// Upload slots: peers unchoked by rate, plus one optimistic.
    pub upload_slots: usize,
    /// Whether to upload at all.
    pub upload_enabled: bool,
    /// Upload limit in bytes per second for all peers together (`None`: unlimited).
    pub upload_rate: Option<u64>,
    /// Whether this is a seeder with complete data (never downloads).
    pub seeding: bool,
}

/// Counters shown in status lines and the tracker's announce.
#[derive(Debug, Default)]
pub struct TorrentStats {
    pub downloaded: AtomicU64,
    pub uploaded: AtomicU64,
    pub pieces_fetched: AtomicU64,
    pub hash_failures: AtomicU64,
    pub connected_peers: AtomicU64,
}

impl TorrentStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What readers, listeners and peer sources send to the actor.
pub(crate) enum Command {
    /// Deliver `piece` on `reply` once verified (at once if cached meanwhile).
    Want {
        piece: PieceIndex,
        reply: oneshot::Sender<Bytes>,
    },
    /// Replace reader `reader`'s read-ahead with `pieces` (most urgent first).
    SetReadahead {
        reader: u64,
        pieces: Vec<PieceIndex>,
    },
    /// Fetch these when nothing more urgent is wanted (never cancelled by a seek).
    Hint { pieces: Vec<PieceIndex> },
    /// Reader `reader` is gone.
    CloseReader { reader: u64 },
    /// New addresses from a peer source.
    AddPeers {
        addrs: Vec<SocketAddr>,
        source: PeerSource,
    },
    /// A peer dialled us and sent a handshake for this torrent.
    Incoming {
        stream: TcpStream,
        addr: SocketAddr,
        handshake: Handshake,
    },
    /// Why are these pieces not here yet? (for the error a timed-out read logs)
    Explain {
        pieces: Vec<PieceIndex>,
        reply: oneshot::Sender<String>,
    },
    /// A snapshot for the status line.
    Status {
        reply: oneshot::Sender<StatusSnapshot>,
    },
}

/// One line of status: what the user sees on the terminal and in logs.
#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    pub connected_peers: usize,
    pub known_peers: usize,
    pub unchoked_by: usize,
    pub waiting_pieces: usize,
    /// Per peer: address, client, bytes they gave us, bytes we gave them.
    pub ledger: Vec<(SocketAddr, String, u64, u64)>,
}

/// The torrent as seen from outside the actor.
pub struct TorrentHandle {
    pub meta: Arc<Metainfo>,
    pub layout: Arc<Layout>,
    pub cache: Arc<SharedCache>,
    pub stats: Arc<TorrentStats>,
    pub info_hash: InfoHash,
    pub our_id: PeerId,
    commands: mpsc::Sender<Command>,
    shutdown: CancellationToken,
}

impl TorrentHandle {
    /// Reads `torrent_range` (already clamped to a file), waiting at most until `deadline`
    /// for missing pieces. The bytes come back as slices of the pieces (no copy).
    pub async fn read(
        &self,
        torrent_range: Range<u64>,
        deadline: Instant,
    ) -> Result<ReadBytes, ReadError> {
        let started = Instant::now();
        let pieces: Vec<PieceIndex> = self
            .layout
            .pieces_for_range(torrent_range.clone())
            .collect();
        let mut held: Vec<(PieceIndex, Held)> = Vec::with_capacity(pieces.len());
        for piece in pieces {
            match self.cache.get_pinned(piece) {
                Some(pinned) => held.push((piece, Held::Pinned(pinned))),
                None => {
                    let (reply, rx) = oneshot::channel();
                    self.send(Command::Want { piece, reply }).await?;
                    held.push((piece, Held::Waiting(rx)));
                }
            }
        }
        let mut pending: Vec<PieceIndex> = held
            .iter()
            .filter(|(_, h)| matches!(h, Held::Waiting(_)))
            .map(|(p, _)| *p)
            .collect();
        let mut parts = Vec::with_capacity(held.len());
        for (piece, state) in held {
            let bytes = match state {
                Held::Pinned(pinned) => pinned.bytes().clone(),
                Held::Waiting(rx) => {
                    let bytes = tokio::select! {
                        r = rx => r.map_err(|_| ReadError::ShuttingDown)?,
                        () = tokio::time::sleep_until(deadline) => {
                            let reason = self.explain(pending.clone()).await;
                            return Err(ReadError::DeadlinePassed {
                                pieces: pending.iter().map(|p| p.get()).collect(),
                                waited: started.elapsed(),
                                reason,
                            });
                        }
                        () = self.shutdown.cancelled() => return Err(ReadError::ShuttingDown),
                    };
                    pending.retain(|p| *p != piece);
                    bytes
                }
            };
            let overlap = self.layout.piece_overlap(piece, &torrent_range);
            let (start, end) = (overlap.start as usize, overlap.end as usize);
            if end > bytes.len() || start > end {
                return Err(ReadError::BugPieceTooShort {
                    piece: piece.get(),
                    len: bytes.len(),
                    start,
                    end,
                });
            }
            parts.push(bytes.slice(start..end));
        }
        Ok(ReadBytes { parts })
    }

    /// Hints pieces a reader will likely want soon, without waiting (callable from a FUSE
    /// thread): dropped if the actor's queue is full, as a hint may be.
    pub fn hint_nowait(&self, pieces: Vec<PieceIndex>) {
        let _ = self.commands.try_send(Command::Hint { pieces });
    }

    /// Hints pieces a reader will likely want soon, waiting for room in the actor's
    /// queue (for tasks, where a hint found with effort should not be dropped).
    pub async fn hint(&self, pieces: Vec<PieceIndex>) {
        let _ = self.commands.send(Command::Hint { pieces }).await;
    }

    /// Sets the read-ahead of one reader (an open file handle).
    pub async fn set_readahead(&self, reader: u64, pieces: Vec<PieceIndex>) {
        let _ = self
            .commands
            .send(Command::SetReadahead { reader, pieces })
            .await;
    }

    pub async fn close_reader(&self, reader: u64) {
        let _ = self.commands.send(Command::CloseReader { reader }).await;
    }

    /// Adds peer addresses from a source.
    pub async fn add_peers(&self, addrs: Vec<SocketAddr>, source: PeerSource) {
        let _ = self
            .commands
            .send(Command::AddPeers { addrs, source })
            .await;
    }

    /// Hands over a connection a peer opened to us.
    pub async fn incoming(&self, stream: TcpStream, addr: SocketAddr, handshake: Handshake) {
        let _ = self
            .commands
            .send(Command::Incoming {
                stream,
                addr,
                handshake,
            })
            .await;
    }

    pub async fn status(&self) -> Option<StatusSnapshot> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::Status { reply }).await.ok()?;
        rx.await.ok()
    }

    /// Bytes still missing from the whole torrent, as trackers want it. A mount never
    /// holds everything, so it reports what the cache does not hold.
    pub fn left_bytes(&self) -> u64 {
        self.layout
            .total_length()
            .saturating_sub(self.cache.lock().used_bytes())
    }

    async fn explain(&self, pieces: Vec<PieceIndex>) -> String {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Explain { pieces, reply })
            .await
            .is_err()
        {
            return "the torrent is shutting down".into();
        }
        match tokio::time::timeout(Duration::from_secs(1), rx).await {
            Ok(Ok(reason)) => reason,
            _ => "the torrent did not answer".into(),
        }
    }

    async fn send(&self, command: Command) -> Result<(), ReadError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| ReadError::ShuttingDown)
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }
}

enum Held {
    Pinned(PinnedPiece),
    Waiting(oneshot::Receiver<Bytes>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_bytes_gather_in_order_and_a_lone_slice_is_not_copied() {
        let piece = Bytes::from(vec![1u8, 2, 3, 4]);
        let lone = ReadBytes {
            parts: vec![piece.slice(1..3)],
        };
        assert_eq!(lone.len(), 2);
        let whole = lone.into_contiguous();
        assert_eq!(&whole[..], &[2, 3]);
        // The same memory as the piece: a slice, not a copy.
        assert_eq!(whole.as_ptr(), piece[1..].as_ptr());

        let spanning = ReadBytes {
            parts: vec![piece.slice(2..), Bytes::from_static(&[5, 6])],
        };
        assert_eq!(spanning.len(), 4);
        assert_eq!(&spanning.into_contiguous()[..], &[3, 4, 5, 6]);
        assert!(ReadBytes::default().is_empty());
    }
}
