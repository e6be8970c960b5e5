//! Where bytes live: file ranges ↔ torrent ranges ↔ pieces ↔ blocks.
//!
//! The only offset arithmetic in the crate. Every `PieceIndex` is made here, so holding one
//! means it was checked against the piece count. Offsets are named by their frame of
//! reference: `torrent_offset` (into the concatenation of all files), `file_offset`,
//! `piece_offset` (into one piece).

use std::ops::Range;

use crate::metainfo::Metainfo;
use crate::types::{BLOCK_SIZE, PieceIndex};

/// The geometry of one torrent, derived once from its metainfo.
#[derive(Clone, Debug)]
pub struct Layout {
    piece_length: u32,
    total_length: u64,
    piece_count: u32,
    /// Per file, in torrent order: the torrent range it occupies.
    file_ranges: Vec<Range<u64>>,
}

/// One contiguous part of a piece that lies in one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileSegment {
    pub file_index: usize,
    pub file_offset: u64,
    pub piece_offset: u32,
    pub len_bytes: u32,
}

/// One block of a piece, as requested on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockSpan {
    pub piece_offset: u32,
    pub len_bytes: u32,
}

impl Layout {
    /// Builds the layout of a validated metainfo (which guarantees piece length > 0 and a
    /// piece count that matches the total length).
    pub fn new(meta: &Metainfo) -> Self {
        let file_ranges = meta
            .files
            .iter()
            .map(|f| f.torrent_offset..f.torrent_offset + f.length)
            .collect();
        Layout::from_parts(meta.piece_length, meta.total_length, file_ranges)
    }

    /// Builds a layout from raw parts (tests, and `Layout::new`).
    pub fn from_parts(piece_length: u32, total_length: u64, file_ranges: Vec<Range<u64>>) -> Self {
        let piece_length = piece_length.max(1);
        let piece_count =
            u32::try_from(total_length.div_ceil(u64::from(piece_length))).unwrap_or(u32::MAX);
        Layout {
            piece_length,
            total_length,
            piece_count,
            file_ranges,
        }
    }

    pub fn piece_length(&self) -> u32 {
        self.piece_length
    }

    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    pub fn piece_count(&self) -> u32 {
        self.piece_count
    }

    pub fn file_count(&self) -> usize {
        self.file_ranges.len()
    }

    /// The checked index for a number that came from outside (a peer, a cache key).
    pub fn piece(&self, index: u32) -> Option<PieceIndex> {
        (index < self.piece_count).then_some(PieceIndex::new_unchecked(index))
    }

    /// Every piece of the torrent, in order.
    pub fn pieces(&self) -> impl Iterator<Item = PieceIndex> + use<> {
        (0..self.piece_count).map(PieceIndex::new_unchecked)
    }

    /// Torrent offset of the first byte of `piece`.
    pub fn piece_torrent_offset(&self, piece: PieceIndex) -> u64 {
        u64::from(piece.get()) * u64::from(self.piece_length)
    }

    /// Length of `piece`: the piece length, except for a shorter last piece.
    pub fn piece_len(&self, piece: PieceIndex) -> u32 {
        let start = self.piece_torrent_offset(piece);
        let rest = self.total_length.saturating_sub(start);
        u32::try_from(rest.min(u64::from(self.piece_length))).unwrap_or(self.piece_length)
    }

    /// Number of blocks in `piece` (the last one may be short).
    pub fn block_count(&self, piece: PieceIndex) -> u32 {
        self.piece_len(piece).div_ceil(BLOCK_SIZE)
    }

    /// Number of blocks in a full-length piece.
    pub fn max_block_count(&self) -> u32 {
        self.piece_length.div_ceil(BLOCK_SIZE)
    }

    /// The `block_index`-th block of `piece`.
    pub fn block(&self, piece: PieceIndex, block_index: u32) -> BlockSpan {
        let piece_offset = block_index.saturating_mul(BLOCK_SIZE);
        let len_bytes = self
            .piece_len(piece)
            .saturating_sub(piece_offset)
            .min(BLOCK_SIZE);
        BlockSpan {
            piece_offset,
            len_bytes,
        }
    }

    /// The block index of a (piece offset, length) pair that came off the wire, if it is
    /// exactly one of our blocks.
    pub fn block_index(&self, piece: PieceIndex, piece_offset: u32, len_bytes: u32) -> Option<u32> {
        if !piece_offset.is_multiple_of(BLOCK_SIZE) {
            return None;
        }
        let index = piece_offset / BLOCK_SIZE;
        (index < self.block_count(piece) && self.block(piece, index).len_bytes == len_bytes)
            .then_some(index)
    }

    /// Whether a (piece offset, length) request fits inside `piece` and is at most `max_len`.
    pub fn request_fits(
        &self,
        piece: PieceIndex,
        piece_offset: u32,
        len_bytes: u32,
        max_len: u32,
    ) -> bool {
        len_bytes > 0
            && len_bytes <= max_len
            && u64::from(piece_offset) + u64::from(len_bytes) <= u64::from(self.piece_len(piece))
    }

    /// The torrent range of file `file_index`, or `None` for a bad index.
    pub fn file_range(&self, file_index: usize) -> Option<Range<u64>> {
        self.file_ranges.get(file_index).cloned()
    }

    /// Clamps a read of `len_bytes` at `file_offset` in a file to the file's end and
    /// returns the torrent range it covers (empty at or past EOF).
    pub fn file_read_range(
        &self,
        file_index: usize,
        file_offset: u64,
        len_bytes: u64,
    ) -> Range<u64> {
        let Some(file) = self.file_ranges.get(file_index) else {
            return 0..0;
        };
        let file_len = file.end - file.start;
        let start = file_offset.min(file_len);
        let end = file_offset.saturating_add(len_bytes).min(file_len);
        file.start + start..file.start + end
    }

    /// Pieces that hold any byte of the torrent range (none for an empty range).
    pub fn pieces_for_range(
        &self,
        torrent_range: Range<u64>,
    ) -> impl Iterator<Item = PieceIndex> + use<> {
        let piece_length = u64::from(self.piece_length);
        let (first, end) = if torrent_range.start >= torrent_range.end {
            (0, 0)
        } else {
            let first = torrent_range.start / piece_length;
            let last = (torrent_range.end - 1) / piece_length;
            (first, (last + 1).min(u64::from(self.piece_count)))
        };
        let first = u32::try_from(first).unwrap_or(u32::MAX);
        let end = u32::try_from(end).unwrap_or(0);
        (first..end).map(PieceIndex::new_unchecked)
    }

    /// The part of `piece` that overlaps `torrent_range`, as a piece-relative range.
    pub fn piece_overlap(&self, piece: PieceIndex, torrent_range: &Range<u64>) -> Range<u32> {
        let piece_start = self.piece_torrent_offset(piece);
        let piece_end = piece_start + u64::from(self.piece_len(piece));
        let start = torrent_range.start.clamp(piece_start, piece_end) - piece_start;
        let end = torrent_range.end.clamp(piece_start, piece_end) - piece_start;
        // Both are ≤ piece_len, which is a u32.
        let start = u32::try_from(start).unwrap_or(0);
        let end = u32::try_from(end).unwrap_or(0);
        start..end.max(start)
    }

    /// The file parts that make up `piece`, in order (zero-length files are skipped).
    pub fn file_segments(&self, piece: PieceIndex) -> Vec<FileSegment> {
        let piece_start = self.piece_torrent_offset(piece);
        let piece_end = piece_start + u64::from(self.piece_len(piece));
        let first = self.file_ranges.partition_point(|r| r.end <= piece_start);
        let mut segments = Vec::new();
        for (file_index, range) in self.file_ranges.iter().enumerate().skip(first) {
            if range.start >= piece_end {
                break;
            }
            let start = range.start.max(piece_start);
            let end = range.end.min(piece_end);
            if start >= end {
                continue;
            }
            segments.push(FileSegment {
                file_index,
                file_offset: start - range.start,
                piece_offset: u32::try_from(start - piece_start).unwrap_or(0),
                len_bytes: u32::try_from(end - start).unwrap_or(0),
            });
        }
        segments
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        // piece 100; files: 0..0 (empty), 0..250, 250..250 (empty), 250..301
        Layout::from_parts(100, 301, vec![0..0, 0..250, 250..250, 250..301])
    }

    #[test]
    fn piece_lengths_and_last_piece() {
        let l = layout();
        assert_eq!(l.piece_count(), 4);
        assert_eq!(l.piece_len(l.piece(0).unwrap()), 100);
        assert_eq!(l.piece_len(l.piece(3).unwrap()), 1);
        assert!(l.piece(4).is_none());
    }

    #[test]
    fn read_ranges_clamp_at_eof() {
        let l = layout();
        assert_eq!(l.file_read_range(1, 240, 100), 240..250);
        assert_eq!(l.file_read_range(1, 250, 10), 250..250);
        assert_eq!(l.file_read_range(1, u64::MAX, 10), 250..250);
        assert_eq!(l.file_read_range(3, 0, 1000), 250..301);
        assert_eq!(l.file_read_range(9, 0, 1), 0..0);
        assert_eq!(l.pieces_for_range(250..250).count(), 0);
    }

    #[test]
    fn pieces_for_range_cover_edges() {
        let l = layout();
        let got: Vec<u32> = l.pieces_for_range(99..101).map(|p| p.get()).collect();
        assert_eq!(got, vec![0, 1]);
        let got: Vec<u32> = l.pieces_for_range(300..301).map(|p| p.get()).collect();
        assert_eq!(got, vec![3]);
    }

    #[test]
    fn every_byte_maps_to_exactly_one_segment() {
        let l = layout();
        let mut seen = vec![0u32; 301];
        for piece in l.pieces() {
            let mut expect_offset = 0;
            for seg in l.file_segments(piece) {
                assert_eq!(seg.piece_offset, expect_offset);
                expect_offset += seg.len_bytes;
                let file = l.file_range(seg.file_index).unwrap();
                for i in 0..u64::from(seg.len_bytes) {
                    seen[(file.start + seg.file_offset + i) as usize] += 1;
                }
            }
            assert_eq!(expect_offset, l.piece_len(piece));
        }
        assert!(seen.iter().all(|&n| n == 1));
    }

    #[test]
    fn blocks_and_block_index() {
        let l = Layout::from_parts(40_000, 90_000, vec![0..90_000]);
        let p2 = l.piece(2).unwrap();
        assert_eq!(l.piece_len(p2), 10_000);
        assert_eq!(l.block_count(p2), 1);
        assert_eq!(l.block(p2, 0).len_bytes, 10_000);
        let p0 = l.piece(0).unwrap();
        assert_eq!(l.block_count(p0), 3);
        assert_eq!(l.block(p0, 2).len_bytes, 40_000 - 2 * BLOCK_SIZE);
        assert_eq!(l.block_index(p0, BLOCK_SIZE, BLOCK_SIZE), Some(1));
        assert_eq!(l.block_index(p0, 1, BLOCK_SIZE), None);
        assert_eq!(l.block_index(p0, 2 * BLOCK_SIZE, BLOCK_SIZE), None);
        assert!(l.request_fits(p2, 0, 10_000, BLOCK_SIZE));
        assert!(!l.request_fits(p2, 1, 10_000, BLOCK_SIZE));
        assert!(!l.request_fits(p2, 0, 0, BLOCK_SIZE));
    }

    #[test]
    fn piece_overlap_is_piece_relative() {
        let l = layout();
        assert_eq!(l.piece_overlap(l.piece(1).unwrap(), &(150..260)), 50..100);
        assert_eq!(l.piece_overlap(l.piece(2).unwrap(), &(150..260)), 0..60);
        assert_eq!(l.piece_overlap(l.piece(3).unwrap(), &(150..260)), 0..0);
    }
}
