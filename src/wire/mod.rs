//! The peer wire protocol as bytes ↔ values: the 68-byte handshake (`handshake`), the
//! length-prefixed messages of BEP 3 with the BEP 6 Fast and BEP 10 extended frames
//! (`message`), their framing over a byte stream (`codec`) and the BEP 10 extended
//! handshake dictionary (`ext`).
//!
//! Owns framing only: no piece state, no peer state, no sockets beyond the two async
//! handshake helpers. Uses `types` and serde_bencode. Whether a piece index or a bitfield
//! length fits the torrent is the peer layer's question; here a frame is only checked for
//! being well formed.
//!
//! Invariant: nothing a peer sends can panic this module. Every length is checked before
//! the bytes behind it are read, and a frame longer than the codec's limit is refused
//! before it is buffered.

pub mod codec;
pub mod ext;
pub mod handshake;
pub mod message;
pub mod metadata;
pub mod pex;

pub use codec::{DEFAULT_MAX_MESSAGE_LEN, MessageCodec};
pub use ext::ExtendedHandshake;
pub use handshake::{Handshake, PROTOCOL, read_handshake, write_handshake};
pub use message::{BlockRequest, Message};

/// Everything that can go wrong turning bytes from a peer into protocol values. Every
/// variant except `Io` means the peer sent something malformed; the peer layer drops it.
#[derive(thiserror::Error, Debug)]
pub enum WireError {
    #[error("peer connection I/O failed")]
    Io(#[from] std::io::Error),

    #[error("peer does not speak BitTorrent: handshake began {:?}", header.escape_ascii().to_string())]
    BadProtocol { header: [u8; 20] },

    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLong { len: usize, max: u32 },

    #[error("message id {id} has invalid length {len}")]
    BadLength { id: u8, len: usize },

    #[error("malformed extended handshake")]
    BadExtendedHandshake(#[source] serde_bencode::Error),

    #[error("extended handshake nests deeper than {max} levels")]
    ExtendedHandshakeTooDeep { max: usize },

    #[error("malformed ut_metadata message: {0}")]
    BadMetadataMessage(&'static str),

    #[error("malformed ut_pex message")]
    BadPexMessage,
}

// Frame lengths arrive as u32 and are used as buffer sizes; swarmfs only builds for
// targets where that widening is lossless, so `widen` never truncates.
const _: () = assert!(usize::BITS >= u32::BITS);

/// A length from the wire as a buffer size (lossless: see the assertion above).
const fn widen(len: u32) -> usize {
    len as usize
}
