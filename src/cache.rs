//! The byte-budgeted LRU of verified pieces, with pins.
//!
//! Owns the only copy of piece data that outlives a read. Accepts nothing but
//! `VerifiedPiece`. Invariant: the bytes of all cached pieces never exceed the budget. A
//! pinned piece (one under an in-flight read reply or upload) is never evicted; when every
//! candidate is pinned, a new piece is not cached (its readers still get it directly), so
//! memory stays within budget plus what in-flight replies hold.
//! Shared behind a std `Mutex` that is never held across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use lru::LruCache;

use crate::types::PieceIndex;
use crate::verify::VerifiedPiece;

struct Entry {
    piece: VerifiedPiece,
    pins: u32,
}

/// What happened when a piece was offered to the cache.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InsertOutcome {
    /// Whether the piece is now cached.
    pub cached: bool,
    /// Pieces dropped to make room (no longer available to readers or peers).
    pub evicted: Vec<PieceIndex>,
    /// The evicted pieces' bytes: a buffer no reader still shares can be reused.
    pub released: Vec<Bytes>,
}

/// Byte-bounded LRU of verified pieces.
pub struct PieceCache {
    entries: LruCache<PieceIndex, Entry>,
    used_bytes: u64,
    budget_bytes: u64,
}

impl PieceCache {
    pub fn new(budget_bytes: u64) -> Self {
        PieceCache {
            entries: LruCache::unbounded(),
            used_bytes: 0,
            budget_bytes,
        }
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, index: PieceIndex) -> bool {
        self.entries.contains(&index)
    }

    /// The cached pieces, in no particular order.
    pub fn indices(&self) -> Vec<PieceIndex> {
        self.entries.iter().map(|(k, _)| *k).collect()
    }

    /// The piece's bytes, marking it most recently used.
    pub fn get(&mut self, index: PieceIndex) -> Option<Bytes> {
        self.entries.get(&index).map(|e| e.piece.bytes().clone())
    }

    /// Inserts a verified piece, evicting least recently used unpinned pieces until it fits.
    pub fn insert(&mut self, piece: VerifiedPiece) -> InsertOutcome {
        let index = piece.index();
        if self.entries.contains(&index) {
            self.entries.promote(&index);
            return InsertOutcome {
                cached: true,
                ..InsertOutcome::default()
            };
        }
        let len = piece.len_bytes() as u64;
        let mut outcome = InsertOutcome::default();
        if len > self.budget_bytes {
            return outcome;
        }
        while self.used_bytes + len > self.budget_bytes {
            let victim = self
                .entries
                .iter()
                .rev()
                .find(|(_, e)| e.pins == 0)
                .map(|(k, _)| *k);
            let Some(victim) = victim else {
                // Everything left is pinned: do not exceed the budget.
                return outcome;
            };
            if let Some(entry) = self.entries.pop(&victim) {
                self.used_bytes -= entry.piece.len_bytes() as u64;
                outcome.evicted.push(victim);
                outcome.released.push(entry.piece.into_bytes());
            }
        }
        self.used_bytes += len;
        self.entries.put(index, Entry { piece, pins: 0 });
        outcome.cached = true;
        outcome
    }

    fn pin(&mut self, index: PieceIndex) -> Option<Bytes> {
        let entry = self.entries.get_mut(&index)?;
        entry.pins += 1;
        Some(entry.piece.bytes().clone())
    }

    fn unpin(&mut self, index: PieceIndex) {
        if let Some(entry) = self.entries.peek_mut(&index) {
            entry.pins = entry.pins.saturating_sub(1);
        }
    }
}

/// The cache as shared between the torrent actor, readers and uploading peers.
pub struct SharedCache {
    inner: Mutex<PieceCache>,
}

impl SharedCache {
    pub fn new(budget_bytes: u64) -> Arc<Self> {
        Arc::new(SharedCache {
            inner: Mutex::new(PieceCache::new(budget_bytes)),
        })
    }

    /// Locks the cache. A poisoned lock still holds consistent data (no method panics
    /// half-way), so it is used as is.
    pub fn lock(&self) -> MutexGuard<'_, PieceCache> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pins a cached piece until the returned guard is dropped.
    pub fn get_pinned(self: &Arc<Self>, index: PieceIndex) -> Option<PinnedPiece> {
        let bytes = self.lock().pin(index)?;
        Some(PinnedPiece {
            cache: Arc::clone(self),
            index,
            bytes,
        })
    }
}

/// A cached piece that cannot be evicted while this guard lives.
pub struct PinnedPiece {
    cache: Arc<SharedCache>,
    index: PieceIndex,
    bytes: Bytes,
}

impl PinnedPiece {
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl Drop for PinnedPiece {
    fn drop(&mut self) {
        self.cache.lock().unpin(self.index);
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::verify::verify_piece;
    use sha1::{Digest, Sha1};

    fn piece(layout: &Layout, i: u32, len: usize) -> VerifiedPiece {
        let bytes = Bytes::from(vec![i as u8; len]);
        let hash: [u8; 20] = Sha1::digest(&bytes).into();
        verify_piece(layout.piece(i).unwrap(), bytes, &hash).unwrap()
    }

    #[test]
    fn never_exceeds_budget_and_evicts_lru() {
        let layout = Layout::from_parts(10, 100, vec![0..100]);
        let mut cache = PieceCache::new(30);
        for i in 0..3 {
            assert!(cache.insert(piece(&layout, i, 10)).cached);
        }
        cache.get(layout.piece(0).unwrap());
        let out = cache.insert(piece(&layout, 3, 10));
        assert_eq!(out.evicted, vec![layout.piece(1).unwrap()]);
        assert_eq!(cache.used_bytes(), 30);
        assert!(cache.contains(layout.piece(0).unwrap()));
    }

    #[test]
    fn pinned_pieces_survive_and_full_pins_refuse_insert() {
        let layout = Layout::from_parts(10, 100, vec![0..100]);
        let cache = SharedCache::new(20);
        cache.lock().insert(piece(&layout, 0, 10));
        cache.lock().insert(piece(&layout, 1, 10));
        let p0 = cache.get_pinned(layout.piece(0).unwrap()).unwrap();
        let p1 = cache.get_pinned(layout.piece(1).unwrap()).unwrap();
        let out = cache.lock().insert(piece(&layout, 2, 10));
        assert!(!out.cached);
        assert!(out.evicted.is_empty());
        assert_eq!(cache.lock().used_bytes(), 20);
        drop(p1);
        let out = cache.lock().insert(piece(&layout, 2, 10));
        assert!(out.cached);
        assert_eq!(out.evicted, vec![layout.piece(1).unwrap()]);
        assert_eq!(p0.bytes().len(), 10);
    }

    #[test]
    fn piece_larger_than_budget_is_not_cached() {
        let layout = Layout::from_parts(10, 100, vec![0..100]);
        let mut cache = PieceCache::new(5);
        assert!(!cache.insert(piece(&layout, 0, 10)).cached);
        assert_eq!(cache.used_bytes(), 0);
    }
}
