//! `FsError`, and the crate's only mapping from an error to an errno.

use crate::torrent::ReadError;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NoSuchEntry,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("read-only filesystem")]
    ReadOnly,
    #[error("bad file handle {fh}")]
    BadHandle { fh: u64 },
    #[error(transparent)]
    Read(#[from] ReadError),
}

impl FsError {
    /// The only place an error becomes an errno (plain libc: fs/ never imports fuser).
    pub fn errno(&self) -> libc::c_int {
        match self {
            FsError::NoSuchEntry => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle { .. } => libc::EBADF,
            // A read that cannot be had in time, or that shutdown cut short, is an I/O
            // error to the reader: the bytes exist, we could not get them.
            FsError::Read(_) => libc::EIO,
        }
    }
}
