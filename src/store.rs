//! Where the bytes we can give to peers come from: the piece cache of a mount, or the
//! files on disk of a seeder. Both hold only verified pieces.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::cache::SharedCache;
use crate::layout::Layout;
use crate::metainfo::Metainfo;
use crate::types::PieceIndex;
use crate::verify::verify_piece;

/// The pieces a torrent can serve.
pub enum PieceStore {
    /// A mount: whatever verified pieces the cache holds right now.
    Cache(Arc<SharedCache>),
    /// A seeder: the payload on disk, checked piece by piece at start.
    Disk(DiskStore),
}

impl PieceStore {
    /// Whether we can serve `piece` now.
    pub fn has(&self, piece: PieceIndex) -> bool {
        match self {
            PieceStore::Cache(cache) => cache.lock().contains(piece),
            PieceStore::Disk(disk) => disk.has(piece),
        }
    }

    /// Every piece we can serve now, in order.
    pub fn have_list(&self, layout: &Layout) -> Vec<PieceIndex> {
        match self {
            PieceStore::Cache(cache) => {
                let mut list = cache.lock().indices();
                list.sort();
                list
            }
            PieceStore::Disk(disk) => layout.pieces().filter(|p| disk.has(*p)).collect(),
        }
    }

    /// Whether every piece is present (a seeder with complete data).
    pub fn is_complete(&self, layout: &Layout) -> bool {
        match self {
            PieceStore::Cache(_) => false,
            PieceStore::Disk(disk) => disk.valid.iter().all(|v| *v) && layout.piece_count() > 0,
        }
    }

    /// The bytes of one block to upload, or `None` when the piece is not held.
    pub fn read_block(
        &self,
        layout: &Layout,
        piece: PieceIndex,
        piece_offset: u32,
        len_bytes: u32,
    ) -> Option<Bytes> {
        let start = usize::try_from(piece_offset).ok()?;
        let end = start.checked_add(usize::try_from(len_bytes).ok()?)?;
        match self {
            PieceStore::Cache(cache) => {
                let bytes = cache.lock().get(piece)?;
                (end <= bytes.len()).then(|| bytes.slice(start..end))
            }
            PieceStore::Disk(disk) => {
                if !disk.has(piece) {
                    return None;
                }
                let bytes = disk
                    .read_piece_range(layout, piece, piece_offset, len_bytes)
                    .ok()?;
                Some(bytes)
            }
        }
    }
}

/// A seeder's payload on disk.
pub struct DiskStore {
    files: Vec<Option<File>>,
    valid: Vec<bool>,
}

impl DiskStore {
    /// Opens the torrent's files under `data_dir` (which contains the torrent's name, as a
    /// file or directory) and checks every piece's SHA-1; pieces that fail are not served.
    pub fn open(
        meta: &Metainfo,
        layout: &Layout,
        data_dir: &Path,
    ) -> std::io::Result<(DiskStore, u32)> {
        let mut files = Vec::with_capacity(meta.files.len());
        for entry in &meta.files {
            let path: PathBuf = entry
                .path
                .iter()
                .fold(data_dir.to_path_buf(), |p, c| p.join(c));
            if entry.length == 0 {
                files.push(None);
                continue;
            }
            let file = File::open(&path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            let actual = file.metadata()?.len();
            if actual < entry.length {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: {} bytes on disk, torrent says {}",
                        path.display(),
                        actual,
                        entry.length
                    ),
                ));
            }
            files.push(Some(file));
        }
        let mut store = DiskStore {
            files,
            valid: vec![false; layout.piece_count() as usize],
        };
        let mut bad = 0;
        for piece in layout.pieces() {
            let ok = store
                .read_piece(layout, piece)
                .ok()
                .and_then(|bytes| {
                    let hash = meta.piece_hashes.get(piece.as_usize())?;
                    verify_piece(piece, bytes, hash).ok()
                })
                .is_some();
            if let Some(slot) = store.valid.get_mut(piece.as_usize()) {
                *slot = ok;
            }
            if !ok {
                bad += 1;
            }
        }
        Ok((store, bad))
    }

    fn has(&self, piece: PieceIndex) -> bool {
        self.valid.get(piece.as_usize()).copied().unwrap_or(false)
    }

    fn read_piece(&self, layout: &Layout, piece: PieceIndex) -> std::io::Result<Bytes> {
        self.read_piece_range(layout, piece, 0, layout.piece_len(piece))
    }

    fn read_piece_range(
        &self,
        layout: &Layout,
        piece: PieceIndex,
        piece_offset: u32,
        len_bytes: u32,
    ) -> std::io::Result<Bytes> {
        let mut buf = BytesMut::zeroed(len_bytes as usize);
        let want = piece_offset..piece_offset.saturating_add(len_bytes);
        for seg in layout.file_segments(piece) {
            let seg_range = seg.piece_offset..seg.piece_offset + seg.len_bytes;
            let start = want.start.max(seg_range.start);
            let end = want.end.min(seg_range.end);
            if start >= end {
                continue;
            }
            let Some(Some(file)) = self.files.get(seg.file_index) else {
                return Err(std::io::Error::other("file missing for a piece segment"));
            };
            let out_start = (start - want.start) as usize;
            let out_end = (end - want.start) as usize;
            let file_offset = seg.file_offset + u64::from(start - seg.piece_offset);
            let out = buf
                .get_mut(out_start..out_end)
                .ok_or_else(|| std::io::Error::other("segment out of range"))?;
            file.read_exact_at(out, file_offset)?;
        }
        Ok(buf.freeze())
    }
}
