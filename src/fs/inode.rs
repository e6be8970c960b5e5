//! The immutable inode tree of a mounted torrent, built once from its metainfo.
//!
//! Inode numbers are stable for the life of the mount: 1 is the root, then directories
//! and files in the order a depth-first walk of the sorted tree meets them. Multi-file
//! torrents appear under a directory named after the torrent; a single-file torrent is
//! one file at the root.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metainfo::Metainfo;

pub const ROOT_INODE: u64 = 1;

#[derive(Debug, Clone)]
pub enum InodeKind {
    Directory { children: BTreeMap<String, u64> },
    File { file_index: usize, len_bytes: u64 },
}

#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub kind: InodeKind,
}

/// All inodes, indexed by number − 1.
#[derive(Debug)]
pub struct InodeTree {
    inodes: Vec<Inode>,
    /// Modification time of every entry: the torrent's creation date, or the mount time.
    pub mtime: SystemTime,
}

impl InodeTree {
    pub fn new(meta: &Metainfo) -> Self {
        let mut tree = InodeTree {
            inodes: vec![Inode {
                ino: ROOT_INODE,
                parent: ROOT_INODE,
                name: String::new(),
                kind: InodeKind::Directory {
                    children: BTreeMap::new(),
                },
            }],
            mtime: meta
                .creation_date
                .and_then(|secs| u64::try_from(secs).ok())
                .map_or_else(SystemTime::now, |secs| {
                    UNIX_EPOCH + Duration::from_secs(secs)
                }),
        };
        for (file_index, file) in meta.files.iter().enumerate() {
            let Some((file_name, dirs)) = file.path.split_last() else {
                continue;
            };
            let mut parent = ROOT_INODE;
            for dir in dirs {
                parent = match tree.child(parent, dir) {
                    Some(ino) => ino,
                    None => tree.add(
                        parent,
                        dir,
                        InodeKind::Directory {
                            children: BTreeMap::new(),
                        },
                    ),
                };
            }
            // metainfo rejects duplicate paths; if one slipped through, the first wins.
            if tree.child(parent, file_name).is_none() {
                tree.add(
                    parent,
                    file_name,
                    InodeKind::File {
                        file_index,
                        len_bytes: file.length,
                    },
                );
            }
        }
        tree
    }

    fn add(&mut self, parent: u64, name: &str, kind: InodeKind) -> u64 {
        let ino = self.inodes.len() as u64 + 1;
        self.inodes.push(Inode {
            ino,
            parent,
            name: name.to_string(),
            kind,
        });
        if let Some(Inode {
            kind: InodeKind::Directory { children },
            ..
        }) = self.inodes.get_mut((parent - 1) as usize)
        {
            children.insert(name.to_string(), ino);
        }
        ino
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(usize::try_from(ino.checked_sub(1)?).ok()?)
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<u64> {
        match &self.get(parent)?.kind {
            InodeKind::Directory { children } => children.get(name).copied(),
            InodeKind::File { .. } => None,
        }
    }

    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty()
    }

    pub fn total_file_bytes(&self) -> u64 {
        self.inodes
            .iter()
            .map(|i| match i.kind {
                InodeKind::File { len_bytes, .. } => len_bytes,
                InodeKind::Directory { .. } => 0,
            })
            .sum()
    }
}
