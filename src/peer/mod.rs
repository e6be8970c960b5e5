//! One task per peer connection: the handshake, then frames in both directions.
//!
//! A peer task owns its socket and nothing else. It forwards what the peer says about
//! pieces (`PeerEvent`) to the torrent actor, sends what the actor tells it
//! (`PeerCommand`), and serves the peer's block requests itself from the `PieceStore`,
//! so uploads never pass through the actor. Hostile input (garbage, oversized frames,
//! request floods) ends this connection only.

mod connection;
mod quickack;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

pub use connection::{MAX_QUEUED_UPLOADS, PeerContext, accept_incoming, connect_outgoing};

use crate::types::PeerId;
use crate::wire::{BlockRequest, Message, WireError};

/// The actor's name for one connection (never reused within a run).
pub type PeerKey = u64;

/// Byte counters of one connection, shared between its task and the actor (the credit
/// ledger of reciprocity reads them).
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub downloaded: AtomicU64,
    pub uploaded: AtomicU64,
}

impl PeerCounters {
    pub fn downloaded(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }

    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }
}

/// What a peer task tells the torrent actor.
#[derive(Debug)]
pub enum PeerEvent {
    /// The handshake passed; `commands` reaches the connection from now on.
    Connected {
        key: PeerKey,
        addr: SocketAddr,
        peer_id: PeerId,
        fast: bool,
        outgoing: bool,
        commands: mpsc::UnboundedSender<PeerCommand>,
        counters: Arc<PeerCounters>,
    },
    /// A message about pieces or choking (requests are served by the task itself).
    Message { key: PeerKey, message: Message },
    /// The connection ended (after `Connected`) or never got there (`key` unused then).
    Closed {
        key: PeerKey,
        addr: SocketAddr,
        connected: bool,
        reason: String,
        /// The peer broke the protocol (or is us, or serves another torrent): never
        /// dial it again.
        misbehaved: bool,
    },
}

/// What the torrent actor tells a peer task.
#[derive(Debug)]
pub enum PeerCommand {
    Send(Message),
    /// The requests of one fill, written together: they go out in one segment rather
    /// than as the writer happens to wake. Requests only, so none of them changes the
    /// connection's state as a Choke sent through `Send` does.
    SendRequests(Vec<BlockRequest>),
    /// Drop the connection (banned, or no longer wanted).
    Close,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("connect to {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("handshake with {addr} timed out")]
    HandshakeTimeout { addr: SocketAddr },
    #[error("peer {addr} is serving another torrent")]
    WrongInfoHash { addr: SocketAddr },
    #[error("connected to ourselves at {addr}")]
    SelfConnection { addr: SocketAddr },
    #[error("peer {addr} sent nothing for {secs} s")]
    Idle { addr: SocketAddr, secs: u64 },
    #[error("peer {addr}: {source}")]
    Wire { addr: SocketAddr, source: WireError },
    #[error("peer {addr} closed the connection")]
    Eof { addr: SocketAddr },
    #[error("the torrent is shutting down")]
    ShuttingDown,
    #[error("closed by us")]
    ClosedByUs,
}

impl PeerError {
    /// Whether the connection ended because of what the peer sent (as opposed to the
    /// network, a timeout, or us).
    pub fn is_misbehaviour(&self) -> bool {
        match self {
            PeerError::Wire { source, .. } => !matches!(source, WireError::Io(_)),
            PeerError::WrongInfoHash { .. } | PeerError::SelfConnection { .. } => true,
            _ => false,
        }
    }
}
