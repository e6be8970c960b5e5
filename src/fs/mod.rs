//! `TorrentFs`: the filesystem operations of a mounted torrent, independent of FUSE.
//!
//! Returns plain structs and `FsError`, so it is tested without a mount; `fuse.rs` is the
//! thin adapter. Lookups, attributes and listings come from the immutable inode tree and
//! never wait; reads go to the torrent and wait at most `read_timeout`. An open hints what
//! tools read first, the file's head, tail and container index (`prefetch.rs`,
//! `container/`).

mod container;
mod error;
mod handle;
mod inode;
mod prefetch;

use std::collections::HashMap;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use error::FsError;
pub use handle::ReadWindow;
pub use inode::{InodeKind, InodeTree, ROOT_INODE};

use handle::Handle;
use prefetch::OpenPrefetch;

use crate::torrent::{ReadBytes, TorrentHandle};

/// Attributes of one inode, as `stat` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub is_dir: bool,
    pub mtime: SystemTime,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub is_dir: bool,
}

/// How reads behave.
#[derive(Debug, Clone)]
pub struct ReadPolicy {
    pub read_timeout: Duration,
    /// Read-ahead right after open or a seek.
    pub readahead_floor_bytes: u64,
    /// Read-ahead after long sequential reading.
    pub readahead_ceiling_bytes: u64,
}

pub struct TorrentFs {
    torrent: Arc<TorrentHandle>,
    tree: InodeTree,
    policy: ReadPolicy,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    prefetch: OpenPrefetch,
}

impl TorrentFs {
    /// `runtime` runs the background work an open starts (FUSE threads are outside tokio).
    pub fn new(
        torrent: Arc<TorrentHandle>,
        policy: ReadPolicy,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let tree = InodeTree::new(&torrent.meta);
        let prefetch = OpenPrefetch::new(Arc::clone(&torrent), runtime, policy.read_timeout);
        TorrentFs {
            torrent,
            tree,
            policy,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            prefetch,
        }
    }

    pub fn torrent(&self) -> &Arc<TorrentHandle> {
        &self.torrent
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        let parent_inode = self.tree.get(parent).ok_or(FsError::NoSuchEntry)?;
        if !matches!(parent_inode.kind, InodeKind::Directory { .. }) {
            return Err(FsError::NotADirectory);
        }
        let ino = self.tree.child(parent, name).ok_or(FsError::NoSuchEntry)?;
        self.getattr(ino)
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let inode = self.tree.get(ino).ok_or(FsError::NoSuchEntry)?;
        let (size, is_dir) = match inode.kind {
            InodeKind::Directory { .. } => (0, true),
            InodeKind::File { len_bytes, .. } => (len_bytes, false),
        };
        Ok(Attr {
            ino,
            size,
            is_dir,
            mtime: self.tree.mtime,
        })
    }

    /// Entries of a directory, `.` and `..` first, from index `offset` on.
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        let inode = self.tree.get(ino).ok_or(FsError::NoSuchEntry)?;
        let InodeKind::Directory { children } = &inode.kind else {
            return Err(FsError::NotADirectory);
        };
        let mut entries = vec![
            DirEntry {
                ino,
                name: ".".into(),
                is_dir: true,
            },
            DirEntry {
                ino: inode.parent,
                name: "..".into(),
                is_dir: true,
            },
        ];
        for (name, child) in children {
            let is_dir = matches!(
                self.tree.get(*child).map(|i| &i.kind),
                Some(InodeKind::Directory { .. })
            );
            entries.push(DirEntry {
                ino: *child,
                name: name.clone(),
                is_dir,
            });
        }
        Ok(entries
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .collect())
    }

    /// Opens a file for reading; `write` requests are refused.
    pub fn open(&self, ino: u64, write: bool) -> Result<u64, FsError> {
        let inode = self.tree.get(ino).ok_or(FsError::NoSuchEntry)?;
        let InodeKind::File { file_index, .. } = inode.kind else {
            return Err(FsError::IsADirectory);
        };
        if write {
            return Err(FsError::ReadOnly);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.prefetch.on_open(file_index);
        let window = ReadWindow::new(
            self.policy.readahead_floor_bytes,
            self.policy.readahead_ceiling_bytes,
        );
        self.lock_handles().insert(
            fh,
            Handle {
                file_index,
                window,
                last_readahead: None,
            },
        );
        Ok(fh)
    }

    /// Reads up to `size` bytes at `offset`; fewer at EOF, none past it.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<ReadBytes, FsError> {
        let layout = &self.torrent.layout;
        let (range, readahead) = {
            let mut handles = self.lock_handles();
            let handle = handles.get_mut(&fh).ok_or(FsError::BadHandle { fh })?;
            let file_range = layout
                .file_range(handle.file_index)
                .ok_or(FsError::BadHandle { fh })?;
            let file_len = file_range.end - file_range.start;
            let range = layout.file_read_range(handle.file_index, offset, u64::from(size));
            if range.is_empty() {
                return Ok(ReadBytes::default());
            }
            let ahead =
                handle
                    .window
                    .on_read(offset, u64::from(size), file_len, std::time::Instant::now());
            let ahead_torrent =
                layout.file_read_range(handle.file_index, ahead.start, ahead.end - ahead.start);
            let pieces: Vec<_> = layout.pieces_for_range(ahead_torrent).collect();
            let span = pieces
                .first()
                .zip(pieces.last())
                .map(|(a, b)| (a.get(), b.get()));
            let readahead = (span != handle.last_readahead).then(|| {
                handle.last_readahead = span;
                pieces
            });
            (range, readahead)
        };
        if let Some(pieces) = readahead {
            self.torrent.set_readahead(fh, pieces).await;
        }
        let deadline = tokio::time::Instant::now() + self.policy.read_timeout;
        Ok(self.torrent.read(range, deadline).await?)
    }

    pub async fn release(&self, fh: u64) {
        let removed = self.lock_handles().remove(&fh);
        if removed.is_some() {
            self.torrent.close_reader(fh).await;
        }
    }

    /// Waits (bounded) for the background work opens started; call once the torrent is
    /// shutting down, which ends that work.
    pub async fn stop_background(&self) {
        self.prefetch.stop().await;
    }

    /// (total bytes, file count) for statfs.
    pub fn statfs(&self) -> (u64, u64) {
        (self.tree.total_file_bytes(), self.tree.len() as u64)
    }

    fn lock_handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }
}
