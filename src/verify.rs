//! SHA-1 verification: the only maker of `VerifiedPiece`.
//!
//! Bytes that have not passed their piece's SHA-1 check cannot reach a reader or a peer:
//! the cache accepts only `VerifiedPiece`, and only `verify_piece` makes one.

use bytes::Bytes;
use sha1::{Digest, Sha1};

use crate::types::{PieceIndex, Sha1Digest, hex};

/// A piece whose bytes match the SHA-1 in the metainfo.
#[must_use]
#[derive(Clone, Debug)]
pub struct VerifiedPiece {
    index: PieceIndex,
    bytes: Bytes,
}

impl VerifiedPiece {
    pub fn index(&self) -> PieceIndex {
        self.index
    }

    /// The piece's bytes (a cheap, shared handle).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Gives up the piece, keeping its bytes (e.g. to reuse the buffer once unshared).
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// A piece whose bytes did not match its hash.
#[derive(Debug, thiserror::Error)]
#[error("piece {index} failed its SHA-1 check: expected {expected}, got {actual}")]
pub struct HashMismatch {
    pub index: PieceIndex,
    pub expected: String,
    pub actual: String,
}

/// Checks `bytes` against `expected`; CPU-bound (about 0.7 ms per MiB here), so call it
/// from a blocking thread when the caller is an async task that others wait on.
pub fn verify_piece(
    index: PieceIndex,
    bytes: Bytes,
    expected: &Sha1Digest,
) -> Result<VerifiedPiece, HashMismatch> {
    PieceHasher::new().finish(index, bytes, expected)
}

/// A piece's SHA-1 computed while its blocks arrive: each contiguous prefix is hashed as
/// soon as it is complete, so the check after the last block only hashes what is left.
///
/// The caller feeds `update` the piece's bytes in order, from its start, and must not
/// change them afterwards; `finish` hashes the rest of `bytes` from where `update` stopped.
#[derive(Clone, Debug, Default)]
pub struct PieceHasher {
    sha: Sha1,
    hashed: usize,
}

impl PieceHasher {
    pub fn new() -> Self {
        PieceHasher::default()
    }

    /// How many bytes from the piece's start are hashed.
    pub fn hashed_len(&self) -> usize {
        self.hashed
    }

    /// Hashes the next bytes of the piece (those right after `hashed_len`).
    pub fn update(&mut self, next: &[u8]) {
        self.sha.update(next);
        self.hashed += next.len();
    }

    /// Hashes the rest of `bytes` and compares the digest with `expected`.
    pub fn finish(
        mut self,
        index: PieceIndex,
        bytes: Bytes,
        expected: &Sha1Digest,
    ) -> Result<VerifiedPiece, HashMismatch> {
        if let Some(rest) = bytes.get(self.hashed..) {
            self.sha.update(rest);
        }
        let actual: Sha1Digest = self.sha.finalize().into();
        if &actual == expected && self.hashed <= bytes.len() {
            Ok(VerifiedPiece { index, bytes })
        } else {
            Err(HashMismatch {
                index,
                expected: hex(expected),
                actual: hex(&actual),
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::layout::Layout;

    #[test]
    fn good_bytes_verify_and_bad_bytes_do_not() {
        let layout = Layout::from_parts(4, 4, vec![0..4]);
        let piece = layout.piece(0).unwrap();
        let expected: Sha1Digest = Sha1::digest(b"abcd").into();
        let ok = verify_piece(piece, Bytes::from_static(b"abcd"), &expected).unwrap();
        assert_eq!(ok.bytes().as_ref(), b"abcd");
        let err = verify_piece(piece, Bytes::from_static(b"abce"), &expected).unwrap_err();
        assert_eq!(err.expected, hex(&expected));
        assert_ne!(err.actual, err.expected);
    }

    #[test]
    fn a_hash_fed_in_parts_verifies_like_one_over_the_whole() {
        let layout = Layout::from_parts(10, 10, vec![0..10]);
        let piece = layout.piece(0).unwrap();
        let bytes = Bytes::from_static(b"0123456789");
        let expected: Sha1Digest = Sha1::digest(&bytes).into();
        let mut hasher = PieceHasher::new();
        hasher.update(&bytes[..3]);
        hasher.update(&bytes[3..7]);
        assert_eq!(hasher.hashed_len(), 7);
        let ok = hasher
            .clone()
            .finish(piece, bytes.clone(), &expected)
            .unwrap();
        assert_eq!(ok.bytes(), &bytes);
        // The rest is hashed from where `update` stopped: a changed tail fails.
        let changed = Bytes::from_static(b"0123456780");
        assert!(hasher.finish(piece, changed, &expected).is_err());
        // Fed more than the piece holds: never verified.
        let mut over = PieceHasher::new();
        over.update(&bytes);
        assert!(over.finish(piece, bytes.slice(..5), &expected).is_err());
    }
}
