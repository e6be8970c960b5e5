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
    let actual: Sha1Digest = Sha1::digest(&bytes).into();
    if &actual == expected {
        Ok(VerifiedPiece { index, bytes })
    } else {
        Err(HashMismatch {
            index,
            expected: hex(expected),
            actual: hex(&actual),
        })
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
}
