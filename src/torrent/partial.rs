//! A piece being downloaded: its buffer, the state of each block, and its running SHA-1.
//!
//! A piece a reader waits for keeps its blocks as they came off the wire and hashes them in
//! order as they arrive (`take_hash_batch`, on a blocking thread), so by the time its last
//! block is in, the hash is nearly done. Other pieces drop the wire bytes once copied (a
//! wire buffer holds many blocks, so keeping one keeps them all) and are hashed whole, or
//! from where the hash stopped, once complete (`take_rest_batch`).

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::layout::Layout;
use crate::peer::PeerKey;
use crate::types::{PieceIndex, Sha1Digest};
use crate::verify::{HashMismatch, PieceHasher, VerifiedPiece};

/// At most this many peers are asked for one block at once (endgame duplicates).
pub const MAX_REQUESTS_PER_BLOCK: usize = 2;

#[derive(Debug, Clone)]
pub enum BlockState {
    Open,
    Requested { peers: Vec<PeerKey>, since: Instant },
    Done,
}

/// Blocks of one piece, assembled into one buffer.
#[derive(Debug)]
pub struct PartialPiece {
    buf: BytesMut,
    len: usize,
    /// The buffer, frozen once complete and handed to the hasher for what is left.
    frozen: Option<Bytes>,
    blocks: Vec<BlockState>,
    open: u32,
    missing: u32,
    /// No block before this one is open (where the search for one starts).
    first_open: usize,
    /// Blocks kept as they came off the wire (`receive` with `keep`), until handed to the
    /// hasher. The buffer holds a copy of the same bytes, so what is hashed is what is kept.
    unhashed: Vec<Option<Bytes>>,
    /// The first block not yet handed to the hasher.
    next_to_hash: usize,
    /// The running SHA-1 of the blocks before `next_to_hash`; `None` while a batch is
    /// being hashed elsewhere.
    hasher: Option<PieceHasher>,
    /// Peers that sent at least one block (blamed together if the hash fails).
    pub contributors: Vec<PeerKey>,
}

impl PartialPiece {
    /// A piece with no block yet. `spare` is a buffer to reuse when it has the piece's
    /// length (every byte of it is overwritten by the blocks before the piece is used).
    pub fn new(layout: &Layout, piece: PieceIndex, spare: Option<BytesMut>) -> Self {
        let count = layout.block_count(piece);
        let len = layout.piece_len(piece) as usize;
        let buf = match spare {
            Some(buf) if buf.len() == len => buf,
            _ => BytesMut::zeroed(len),
        };
        PartialPiece {
            buf,
            len,
            frozen: None,
            blocks: vec![BlockState::Open; count as usize],
            open: count,
            missing: count,
            first_open: 0,
            unhashed: vec![None; count as usize],
            next_to_hash: 0,
            hasher: Some(PieceHasher::new()),
            contributors: Vec::new(),
        }
    }

    pub fn open_blocks(&self) -> u32 {
        self.open
    }

    pub fn is_complete(&self) -> bool {
        self.missing == 0
    }

    pub fn blocks(&self) -> &[BlockState] {
        &self.blocks
    }

    pub fn received_blocks(&self) -> u32 {
        self.blocks.len() as u32 - self.missing
    }

    /// How many blocks are requested from `peer` and not yet received.
    pub fn requested_from(&self, peer: PeerKey) -> u32 {
        let count = self
            .blocks
            .iter()
            .filter(|b| matches!(b, BlockState::Requested { peers, .. } if peers.contains(&peer)))
            .count();
        u32::try_from(count).unwrap_or(u32::MAX)
    }

    /// Marks the first open block as requested from `peer`; returns its index.
    pub fn request_open(&mut self, peer: PeerKey, now: Instant) -> Option<u32> {
        if self.open == 0 {
            return None;
        }
        let index = self.first_open
            + self
                .blocks
                .get(self.first_open..)?
                .iter()
                .position(|b| matches!(b, BlockState::Open))?;
        self.first_open = index + 1;
        self.blocks[index] = BlockState::Requested {
            peers: vec![peer],
            since: now,
        };
        self.open -= 1;
        u32::try_from(index).ok()
    }

    /// An endgame duplicate: a block requested from someone else at least `min_age` ago.
    pub fn request_duplicate(
        &mut self,
        peer: PeerKey,
        now: Instant,
        min_age: std::time::Duration,
    ) -> Option<u32> {
        let index = self.blocks.iter().position(|b| match b {
            BlockState::Requested { peers, since } => {
                peers.len() < MAX_REQUESTS_PER_BLOCK
                    && !peers.contains(&peer)
                    && now.duration_since(*since) >= min_age
            }
            _ => false,
        })?;
        if let BlockState::Requested { peers, .. } = &mut self.blocks[index] {
            peers.push(peer);
        }
        u32::try_from(index).ok()
    }

    /// A request to `peer` for `block` is gone (choked, rejected, disconnected).
    pub fn forget_request(&mut self, block: u32, peer: PeerKey) {
        let Some(state) = self.blocks.get_mut(block as usize) else {
            return;
        };
        if let BlockState::Requested { peers, .. } = state {
            peers.retain(|p| *p != peer);
            if peers.is_empty() {
                *state = BlockState::Open;
                self.open += 1;
                self.first_open = self.first_open.min(block as usize);
            }
        }
    }

    /// Withdraws every outstanding request (the piece is no longer wanted): returns each
    /// requested block with the peers it was asked of, and marks those blocks open.
    pub fn take_requests(&mut self) -> Vec<(u32, Vec<PeerKey>)> {
        let mut taken = Vec::new();
        for (index, state) in self.blocks.iter_mut().enumerate() {
            if let BlockState::Requested { peers, .. } = state {
                taken.push((index as u32, std::mem::take(peers)));
                *state = BlockState::Open;
                self.open += 1;
            }
        }
        self.first_open = 0;
        taken
    }

    /// Stores a received block (and keeps `data` for the hasher if `keep`); returns the
    /// other peers that were also asked for it (to cancel), or `None` when the block was
    /// already done (a late duplicate).
    pub fn receive(
        &mut self,
        block: u32,
        piece_offset: u32,
        data: Bytes,
        from: PeerKey,
        keep: bool,
    ) -> Option<Vec<PeerKey>> {
        let state = self.blocks.get_mut(block as usize)?;
        let others = match state {
            BlockState::Done => return None,
            BlockState::Open => {
                self.open -= 1;
                Vec::new()
            }
            BlockState::Requested { peers, .. } => {
                peers.iter().copied().filter(|p| *p != from).collect()
            }
        };
        let start = piece_offset as usize;
        let target = self.buf.get_mut(start..start + data.len())?;
        target.copy_from_slice(&data);
        if keep && let Some(unhashed) = self.unhashed.get_mut(block as usize) {
            *unhashed = Some(data);
        }
        *state = BlockState::Done;
        self.missing -= 1;
        if !self.contributors.contains(&from) {
            self.contributors.push(from);
        }
        Some(others)
    }

    /// The kept blocks the hasher takes next (those in a row from where it stopped), with
    /// the hasher itself, unless it is busy or none is ready. Hash them with
    /// `HashBatch::run` and give the hasher back with `return_hasher`.
    pub fn take_hash_batch(&mut self) -> Option<HashBatch> {
        if self.frozen.is_some() {
            return None;
        }
        self.hasher.as_ref()?;
        let ready = self.unhashed[self.next_to_hash..]
            .iter()
            .take_while(|b| b.is_some())
            .count();
        if ready == 0 {
            return None;
        }
        let hasher = self.hasher.take()?;
        let blocks = self.unhashed[self.next_to_hash..self.next_to_hash + ready]
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        self.next_to_hash += ready;
        Some(HashBatch { hasher, blocks })
    }

    /// Once every block is in: the rest of the piece from where the hash stopped, with the
    /// hasher (the buffer is frozen, so nothing changes under it).
    pub fn take_rest_batch(&mut self) -> Option<HashBatch> {
        let hashed = self.hasher.as_ref()?.hashed_len();
        if !self.is_complete() || hashed >= self.len {
            return None;
        }
        let bytes = match &self.frozen {
            Some(bytes) => bytes.clone(),
            None => {
                let bytes = std::mem::take(&mut self.buf).freeze();
                self.frozen = Some(bytes.clone());
                bytes
            }
        };
        let hasher = self.hasher.take()?;
        self.unhashed.iter_mut().for_each(|b| *b = None);
        self.next_to_hash = self.unhashed.len();
        Some(HashBatch {
            hasher,
            blocks: vec![bytes.slice(hashed..)],
        })
    }

    /// The hasher is back from hashing a batch.
    pub fn return_hasher(&mut self, hasher: PieceHasher) {
        self.hasher = Some(hasher);
    }

    /// Every block is in and hashed: `verify` only compares digests.
    pub fn is_hashed(&self) -> bool {
        self.is_complete()
            && self
                .hasher
                .as_ref()
                .is_some_and(|h| h.hashed_len() == self.len)
    }

    /// Checks the assembled piece against `expected`, once every block is in. Whatever
    /// the hasher has not seen is hashed here.
    pub fn verify(
        self,
        index: PieceIndex,
        expected: &Sha1Digest,
    ) -> Result<VerifiedPiece, HashMismatch> {
        // A hasher still out has seen only part of the bytes: start over from the buffer.
        let hasher = self.hasher.unwrap_or_default();
        let bytes = self.frozen.unwrap_or_else(|| self.buf.freeze());
        hasher.finish(index, bytes, expected)
    }
}

/// Blocks of one piece, in order from where its hash stopped, with the hasher.
#[derive(Debug)]
pub struct HashBatch {
    hasher: PieceHasher,
    blocks: Vec<Bytes>,
}

impl HashBatch {
    #[cfg(test)]
    pub fn len_blocks(&self) -> usize {
        self.blocks.len()
    }

    pub fn len_bytes(&self) -> usize {
        self.blocks.iter().map(Bytes::len).sum()
    }

    /// Hashes the blocks (CPU-bound: about 0.7 ms per MiB here) and returns the hasher.
    pub fn run(mut self) -> PieceHasher {
        for block in &self.blocks {
            self.hasher.update(block);
        }
        self.hasher
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use sha1::{Digest, Sha1};
    use std::time::Duration;

    #[test]
    fn blocks_move_open_requested_done_and_duplicates_are_reported() {
        let layout = Layout::from_parts(40_000, 40_000, vec![0..40_000]);
        let piece = layout.piece(0).unwrap();
        let mut p = PartialPiece::new(&layout, piece, None);
        let now = Instant::now();
        assert_eq!(p.open_blocks(), 3);
        assert_eq!(p.request_open(1, now), Some(0));
        assert_eq!(p.request_duplicate(2, now, Duration::ZERO), Some(0));
        assert_eq!(
            p.request_duplicate(3, now, Duration::ZERO),
            None,
            "two peers per block at most"
        );
        let data = Bytes::from(vec![7u8; 16384]);
        assert_eq!(p.receive(0, 0, data.clone(), 2, true), Some(vec![1]));
        assert_eq!(p.receive(0, 0, data.clone(), 1, true), None);
        p.request_open(1, now);
        p.forget_request(1, 1);
        assert_eq!(p.open_blocks(), 2);
        assert!(!p.is_complete());
        let first = p.take_hash_batch().expect("block 0 is ready");
        assert_eq!(first.len_blocks(), 1);
        assert!(p.take_hash_batch().is_none(), "the hasher is out");
        p.return_hasher(first.run());
        let last = layout.block(piece, 2);
        let tail = Bytes::from(vec![9u8; last.len_bytes as usize]);
        p.receive(2, last.piece_offset, tail.clone(), 1, true)
            .unwrap();
        assert!(p.take_hash_batch().is_none(), "block 2 waits for block 1");
        p.receive(1, 16384, data.clone(), 1, true).unwrap();
        assert!(p.is_complete());
        assert!(!p.is_hashed());
        let rest = p.take_hash_batch().expect("the two blocks left, in a row");
        assert_eq!(rest.len_blocks(), 2);
        p.return_hasher(rest.run());
        assert!(p.is_hashed());
        let whole = [&data[..], &data[..], &tail[..]].concat();
        let expected: Sha1Digest = Sha1::digest(&whole).into();
        let bytes = p.verify(piece, &expected).unwrap().bytes().clone();
        assert_eq!(bytes[0], 7);
        assert_eq!(bytes[39_999], 9);
    }

    #[test]
    fn open_blocks_are_handed_out_in_order_and_a_forgotten_one_comes_back_first() {
        let layout = Layout::from_parts(65_536, 65_536, vec![0..65_536]);
        let piece = layout.piece(0).unwrap();
        let spare = BytesMut::from(&[5u8; 65_536][..]);
        let mut p = PartialPiece::new(&layout, piece, Some(spare));
        let now = Instant::now();
        assert_eq!(p.request_open(1, now), Some(0));
        assert_eq!(p.request_open(1, now), Some(1));
        assert_eq!(p.request_open(2, now), Some(2));
        p.forget_request(1, 1);
        assert_eq!(p.request_open(2, now), Some(1), "the forgotten block first");
        assert_eq!(p.request_open(2, now), Some(3));
        assert_eq!(p.request_open(2, now), None);
        assert_eq!(p.take_requests().len(), 4);
        assert_eq!(p.request_open(3, now), Some(0), "all open again");
    }

    #[test]
    fn blocks_not_kept_are_hashed_from_the_frozen_buffer_once_complete() {
        let layout = Layout::from_parts(40_000, 40_000, vec![0..40_000]);
        let piece = layout.piece(0).unwrap();
        let mut p = PartialPiece::new(&layout, piece, None);
        let a = Bytes::from(vec![1u8; 16384]);
        let b = Bytes::from(vec![2u8; 16384]);
        let c = Bytes::from(vec![3u8; 40_000 - 32768]);
        p.receive(0, 0, a.clone(), 1, false).unwrap();
        p.receive(1, 16384, b.clone(), 1, false).unwrap();
        assert!(p.take_hash_batch().is_none(), "nothing kept to hash");
        assert!(p.take_rest_batch().is_none(), "not complete yet");
        p.receive(2, 32768, c.clone(), 1, false).unwrap();
        let rest = p.take_rest_batch().expect("complete");
        assert_eq!(rest.len_bytes(), 40_000);
        p.return_hasher(rest.run());
        assert!(p.is_hashed());
        assert!(p.take_rest_batch().is_none(), "nothing left");
        let expected: Sha1Digest = Sha1::digest([&a[..], &b[..], &c[..]].concat()).into();
        assert!(p.verify(piece, &expected).is_ok());
    }

    #[test]
    fn a_piece_verified_with_its_hasher_out_is_hashed_whole() {
        let layout = Layout::from_parts(20_000, 20_000, vec![0..20_000]);
        let piece = layout.piece(0).unwrap();
        let mut p = PartialPiece::new(&layout, piece, None);
        let head = Bytes::from(vec![1u8; 16384]);
        let tail = Bytes::from(vec![2u8; 20_000 - 16384]);
        p.receive(0, 0, head.clone(), 1, true).unwrap();
        let _out = p.take_hash_batch().unwrap();
        p.receive(1, 16384, tail.clone(), 1, true).unwrap();
        let expected: Sha1Digest = Sha1::digest([&head[..], &tail[..]].concat()).into();
        assert!(p.verify(piece, &expected).is_ok());
    }
}
