//! Small domain types shared by every layer: info hashes, peer ids, piece indices and the
//! block size. Owns no logic beyond formatting and construction; uses nothing in the crate.

use std::fmt;

/// Size of one request/piece block on the wire. 16 KiB is what every client sends and
/// accepts (BEP 3 says clients may close connections that request more).
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// A 20-byte SHA-1 digest (v1 info hash or piece hash).
pub type Sha1Digest = [u8; 20];

/// The v1 info hash: SHA-1 over the exact bencoded bytes of a torrent's `info` dictionary.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub Sha1Digest);

impl InfoHash {
    /// Lowercase hex, as trackers, magnets and logs spell it.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({})", self.to_hex())
    }
}

/// A peer's 20-byte id from the handshake.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(pub [u8; 20]);

impl PeerId {
    /// Our own id: Azureus-style `-SF0100-` followed by 12 random bytes.
    pub fn generate() -> Self {
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(b"-SF0100-");
        for byte in &mut id[8..] {
            // Printable characters, as many clients show ids in their UI.
            *byte = b"0123456789abcdefghijklmnopqrstuvwxyz"[rand::random_range(0..36)];
        }
        PeerId(id)
    }

    /// The client name part of an Azureus-style id, for logs (`-qB4520-` → `qB4520`).
    pub fn client_tag(&self) -> String {
        if self.0[0] == b'-' && self.0[7] == b'-' {
            String::from_utf8_lossy(&self.0[1..7]).into_owned()
        } else {
            String::from_utf8_lossy(&self.0[..8])
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .collect()
        }
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.client_tag())
    }
}

/// Index of a piece that is known to exist in its torrent. Only `Layout::piece` makes one
/// from a number that came from outside, so holding one means the bounds were checked.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PieceIndex(u32);

impl PieceIndex {
    /// Only for `layout.rs`, which checks the bound first.
    pub(crate) const fn new_unchecked(index: u32) -> Self {
        PieceIndex(index)
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    pub const fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Lowercase hex of any byte string.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}
