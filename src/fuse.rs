//! The thin `fuser::Filesystem` adapter: copy the arguments, call `TorrentFs`, reply once.
//!
//! Metadata calls are answered inline (the inode tree never waits). Reads are spawned on
//! the tokio runtime and replied from there, so a FUSE thread never waits on the network.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use tracing::{debug, warn};

use crate::fs::{Attr, FsError, TorrentFs};
use crate::torrent::ReadBytes;

/// Torrent metadata never changes while mounted, so the kernel may cache it for long.
const ATTR_TTL: Duration = Duration::from_secs(3600);

/// A gather buffer larger than this (a read of more than 4 MiB) is freed after its reply
/// rather than kept for the thread's next one.
const GATHER_KEEP_BYTES: usize = 4 * 1024 * 1024;

thread_local! {
    /// Per runtime thread: where a read that spans pieces is gathered for its reply. Kept
    /// between replies, so its memory is faulted in once, not once per read.
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Replies with a read's bytes: a slice within one piece as it is; slices of several
/// pieces gathered into this thread's buffer (fuser writes a reply from one slice).
fn reply_gathered(reply: ReplyData, bytes: &ReadBytes) {
    if let [part] = bytes.parts() {
        return reply.data(part);
    }
    GATHER.with_borrow_mut(|gather| {
        gather.clear();
        bytes.gather_into(gather);
        reply.data(gather);
        if gather.capacity() > GATHER_KEEP_BYTES {
            *gather = Vec::new();
        }
    });
}

pub struct FuseAdapter {
    fs: Arc<TorrentFs>,
    runtime: tokio::runtime::Handle,
    uid: u32,
    gid: u32,
}

impl FuseAdapter {
    pub fn new(fs: Arc<TorrentFs>, runtime: tokio::runtime::Handle) -> Self {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        FuseAdapter {
            fs,
            runtime,
            uid,
            gid,
        }
    }

    fn file_attr(&self, attr: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(attr.ino),
            size: attr.size,
            blocks: attr.size.div_ceil(512),
            atime: attr.mtime,
            mtime: attr.mtime,
            ctime: attr.mtime,
            crtime: attr.mtime,
            kind: if attr.is_dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if attr.is_dir { 0o555 } else { 0o444 },
            nlink: if attr.is_dir { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 128 * 1024,
            flags: 0,
        }
    }
}

fn errno(err: &FsError) -> Errno {
    Errno::from_i32(err.errno())
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Ask for the largest read-ahead the kernel offers (it refuses more than that).
        if let Err(offered) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(offered);
        }
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.fs.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&ATTR_TTL, &self.file_attr(&attr), Generation(0)),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&ATTR_TTL, &self.file_attr(&attr)),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.fs.open(ino.0, write) {
            // The data never changes: keep the page cache across opens.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = Arc::clone(&self.fs);
        self.runtime.spawn(async move {
            match fs.read(fh.0, offset, size).await {
                Ok(bytes) => reply_gathered(reply, &bytes),
                Err(err) => {
                    warn!(fh = fh.0, offset, size, "read failed: {err}");
                    reply.error(errno(&err));
                }
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let fs = Arc::clone(&self.fs);
        self.runtime.spawn(async move {
            fs.release(fh.0).await;
            reply.ok();
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.getattr(ino.0) {
            Ok(attr) if attr.is_dir => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(ino.0, offset) {
            Ok(entries) => {
                for (i, entry) in entries.iter().enumerate() {
                    let kind = if entry.is_dir {
                        FileType::Directory
                    } else {
                        FileType::RegularFile
                    };
                    // Each entry's offset is the index of the next one.
                    if reply.add(INodeNo(entry.ino), offset + i as u64 + 1, kind, &entry.name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(err) => reply.error(errno(&err)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (bytes, files) = self.fs.statfs();
        let block = 4096u64;
        reply.statfs(
            bytes.div_ceil(block),
            0,
            0,
            files,
            0,
            block as u32,
            255,
            block as u32,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        debug!(ino = ino.0, ?mask, "access");
        if mask.bits() & libc::W_OK != 0 {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
    }
}
