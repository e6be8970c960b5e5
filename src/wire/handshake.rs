//! The BEP 3 handshake: the fixed 68 bytes each side sends before any message, and the
//! reserved bits that announce the BEP 6 Fast and BEP 10 extension protocols. Owns their
//! layout and the two async helpers that write ours and read theirs; the caller applies
//! its own timeout and compares the info hash.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::WireError;
use crate::types::{InfoHash, PeerId};

/// The protocol string every BitTorrent handshake starts with, after its length byte.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Handshake size: 1 length byte + 19 protocol + 8 reserved + 20 info hash + 20 peer id.
pub const HANDSHAKE_LEN: usize = 68;

/// The length byte and protocol string: enough to tell a BitTorrent peer from anything
/// else before waiting for the remaining 48 bytes.
const HEADER_LEN: usize = 20;

/// BEP 10: bit 20 from the right, `reserved[5] & 0x10`, announces extended messages.
const EXTENSION_BYTE: usize = 5;
const EXTENSION_BIT: u8 = 0x10;

/// BEP 6: the third-lowest bit, `reserved[7] & 0x04`, announces the Fast extension.
const FAST_BYTE: usize = 7;
const FAST_BIT: u8 = 0x04;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
}

impl Handshake {
    /// Our handshake: announces the extension protocol (we need it for ut_metadata) and
    /// the Fast extension (HaveAll, Reject, AllowedFast). No other reserved bits.
    pub fn new(info_hash: InfoHash, peer_id: PeerId) -> Self {
        let mut reserved = [0u8; 8];
        reserved[EXTENSION_BYTE] |= EXTENSION_BIT;
        reserved[FAST_BYTE] |= FAST_BIT;
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
    }

    /// Whether this side may receive BEP 10 extended messages.
    pub fn supports_extensions(&self) -> bool {
        self.reserved[EXTENSION_BYTE] & EXTENSION_BIT != 0
    }

    /// Whether this side speaks BEP 6; both sides must, before Fast messages are sent.
    pub fn supports_fast(&self) -> bool {
        self.reserved[FAST_BYTE] & FAST_BIT != 0
    }

    pub fn to_bytes(&self) -> [u8; HANDSHAKE_LEN] {
        let mut buf = [0u8; HANDSHAKE_LEN];
        buf[..HEADER_LEN].copy_from_slice(&header());
        buf[20..28].copy_from_slice(&self.reserved);
        buf[28..48].copy_from_slice(&self.info_hash.0);
        buf[48..68].copy_from_slice(&self.peer_id.0);
        buf
    }

    /// Parses a peer's handshake. Every range below is a constant inside the 68-byte array.
    pub fn parse(buf: &[u8; HANDSHAKE_LEN]) -> Result<Handshake, WireError> {
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&buf[..HEADER_LEN]);
        check_header(&head)?;
        let mut reserved = [0u8; 8];
        reserved.copy_from_slice(&buf[20..28]);
        let mut info_hash = [0u8; 20];
        info_hash.copy_from_slice(&buf[28..48]);
        let mut peer_id = [0u8; 20];
        peer_id.copy_from_slice(&buf[48..68]);
        Ok(Handshake {
            reserved,
            info_hash: InfoHash(info_hash),
            peer_id: PeerId(peer_id),
        })
    }
}

/// The length byte followed by the protocol string.
fn header() -> [u8; HEADER_LEN] {
    let mut head = [0u8; HEADER_LEN];
    head[0] = 19;
    head[1..].copy_from_slice(PROTOCOL);
    head
}

fn check_header(head: &[u8; HEADER_LEN]) -> Result<(), WireError> {
    if *head == header() {
        Ok(())
    } else {
        Err(WireError::BadProtocol { header: *head })
    }
}

/// Writes our handshake and flushes it. The caller bounds the wait with its own timeout.
pub async fn write_handshake<S>(stream: &mut S, hs: &Handshake) -> Result<(), WireError>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(&hs.to_bytes()).await?;
    stream.flush().await?;
    Ok(())
}

/// Reads a peer's handshake. The protocol header is checked as soon as its 20 bytes
/// arrive, so a peer speaking something else is refused without waiting for 48 more.
/// The caller bounds the wait with its own timeout.
pub async fn read_handshake<S>(stream: &mut S) -> Result<Handshake, WireError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = [0u8; HANDSHAKE_LEN];
    let (head, rest) = buf.split_at_mut(HEADER_LEN);
    stream.read_exact(head).await?;
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(head);
    check_header(&header)?;
    stream.read_exact(rest).await?;
    Handshake::parse(&buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failed unwrap is a failed test.
mod tests {
    use std::time::Duration;

    use super::*;

    fn sample() -> Handshake {
        Handshake::new(InfoHash([0xab; 20]), PeerId(*b"-SF0100-abcdefghijkl"))
    }

    #[test]
    fn new_sets_extension_and_fast_bits_only() {
        let hs = sample();
        assert!(hs.supports_extensions());
        assert!(hs.supports_fast());
        assert_eq!(hs.reserved, [0, 0, 0, 0, 0, 0x10, 0, 0x04]);
    }

    #[test]
    fn peer_without_reserved_bits_supports_nothing() {
        let hs = Handshake {
            reserved: [0; 8],
            ..sample()
        };
        assert!(!hs.supports_extensions());
        assert!(!hs.supports_fast());
    }

    #[test]
    fn bytes_follow_bep3_layout_and_round_trip() {
        let hs = sample();
        let bytes = hs.to_bytes();
        assert_eq!(bytes[0], 19);
        assert_eq!(&bytes[1..20], PROTOCOL);
        assert_eq!(&bytes[20..28], &hs.reserved);
        assert_eq!(&bytes[28..48], &[0xab; 20]);
        assert_eq!(&bytes[48..68], b"-SF0100-abcdefghijkl");
        assert_eq!(Handshake::parse(&bytes).unwrap(), hs);
    }

    #[test]
    fn bad_protocol_string_is_rejected() {
        let mut bytes = sample().to_bytes();
        bytes[5] = b'X';
        assert!(matches!(
            Handshake::parse(&bytes),
            Err(WireError::BadProtocol { header }) if header[5] == b'X'
        ));
        let mut bytes = sample().to_bytes();
        bytes[0] = 18;
        assert!(matches!(
            Handshake::parse(&bytes),
            Err(WireError::BadProtocol { .. })
        ));
    }

    #[tokio::test]
    async fn async_helpers_round_trip_over_a_stream() {
        let (mut ours, mut theirs) = tokio::io::duplex(256);
        let hs = sample();
        write_handshake(&mut ours, &hs).await.unwrap();
        assert_eq!(read_handshake(&mut theirs).await.unwrap(), hs);
    }

    #[tokio::test]
    async fn read_refuses_a_non_bittorrent_peer_after_20_bytes() {
        let (mut ours, mut theirs) = tokio::io::duplex(256);
        // Only 20 bytes, stream left open: a reader that waited for 68 would hang.
        ours.write_all(b"GET /announce HTTP/1").await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), read_handshake(&mut theirs))
            .await
            .unwrap();
        assert!(matches!(read, Err(WireError::BadProtocol { .. })));
    }

    #[tokio::test]
    async fn truncated_handshake_is_an_io_error() {
        let (mut ours, mut theirs) = tokio::io::duplex(256);
        ours.write_all(&sample().to_bytes()[..40]).await.unwrap();
        drop(ours);
        assert!(matches!(
            read_handshake(&mut theirs).await,
            Err(WireError::Io(err)) if err.kind() == std::io::ErrorKind::UnexpectedEof
        ));
    }
}
