//! A piece being downloaded: its buffer and the state of each block.

use tokio::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::layout::Layout;
use crate::peer::PeerKey;
use crate::types::PieceIndex;

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
    blocks: Vec<BlockState>,
    open: u32,
    missing: u32,
    /// Peers that sent at least one block (blamed together if the hash fails).
    pub contributors: Vec<PeerKey>,
}

impl PartialPiece {
    pub fn new(layout: &Layout, piece: PieceIndex) -> Self {
        let count = layout.block_count(piece);
        PartialPiece {
            buf: BytesMut::zeroed(layout.piece_len(piece) as usize),
            blocks: vec![BlockState::Open; count as usize],
            open: count,
            missing: count,
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
        let index = self
            .blocks
            .iter()
            .position(|b| matches!(b, BlockState::Open))?;
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
        taken
    }

    /// Stores a received block; returns the other peers that were also asked for it (to
    /// cancel), or `None` when the block was already done (a late duplicate).
    pub fn receive(
        &mut self,
        block: u32,
        piece_offset: u32,
        data: &[u8],
        from: PeerKey,
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
        target.copy_from_slice(data);
        *state = BlockState::Done;
        self.missing -= 1;
        if !self.contributors.contains(&from) {
            self.contributors.push(from);
        }
        Some(others)
    }

    /// The assembled bytes, once every block is in.
    pub fn into_bytes(self) -> Bytes {
        self.buf.freeze()
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn blocks_move_open_requested_done_and_duplicates_are_reported() {
        let layout = Layout::from_parts(40_000, 40_000, vec![0..40_000]);
        let piece = layout.piece(0).unwrap();
        let mut p = PartialPiece::new(&layout, piece);
        let now = Instant::now();
        assert_eq!(p.open_blocks(), 3);
        assert_eq!(p.request_open(1, now), Some(0));
        assert_eq!(p.request_duplicate(2, now, Duration::ZERO), Some(0));
        assert_eq!(
            p.request_duplicate(3, now, Duration::ZERO),
            None,
            "two peers per block at most"
        );
        let data = vec![7u8; 16384];
        assert_eq!(p.receive(0, 0, &data, 2), Some(vec![1]));
        assert_eq!(p.receive(0, 0, &data, 1), None);
        p.request_open(1, now);
        p.forget_request(1, 1);
        assert_eq!(p.open_blocks(), 2);
        assert!(!p.is_complete());
        let last = layout.block(piece, 2);
        p.receive(1, 16384, &data, 1).unwrap();
        p.receive(2, last.piece_offset, &vec![9u8; last.len_bytes as usize], 1)
            .unwrap();
        assert!(p.is_complete());
        let bytes = p.into_bytes();
        assert_eq!(bytes[0], 7);
        assert_eq!(bytes[39_999], 9);
    }
}
