//! Mounting: FUSE options, the kernel read-ahead of the mount, and unmounting.

use std::path::{Path, PathBuf};

use fuser::{BackgroundSession, Config, MountOption, Session, SessionACL};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::fuse::FuseAdapter;

/// The kernel read-ahead of the mount: 1 MiB READs measured twice the throughput of the
/// default 128 KiB here (`../shared/lab/limits`), and sequential readers dominate.
const READ_AHEAD_KB: u32 = 1024;

/// How long a busy mount point is retried before it is detached.
const BUSY_RETRY: Duration = Duration::from_secs(1);
/// How long to wait for the FUSE session thread after the unmount.
const SESSION_END_WAIT: Duration = Duration::from_secs(3);

pub struct MountedFs {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

/// Mounts `adapter` read-only on `mountpoint` and serves it from a background thread.
pub fn mount(
    adapter: FuseAdapter,
    mountpoint: &Path,
    fs_name: &str,
    allow_other: bool,
) -> std::io::Result<MountedFs> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("swarmfs:{fs_name}")),
        MountOption::Subtype("swarmfs".into()),
        MountOption::RO,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if allow_other {
        config.acl = SessionACL::All;
    }
    // Two event-loop threads: metadata calls from one reader do not queue behind another's.
    config.n_threads = Some(2);
    let session = Session::new(adapter, mountpoint, &config)?.spawn()?;
    raise_read_ahead(mountpoint);
    info!(mountpoint = %mountpoint.display(), "mounted");
    Ok(MountedFs {
        session: Some(session),
        mountpoint: mountpoint.to_path_buf(),
    })
}

impl MountedFs {
    /// Whether the session ended by itself (someone ran `umount`).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Unmounts (if still mounted) and waits for the session thread.
    pub fn unmount(mut self) -> std::io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        if !session.guard.is_finished() {
            unmount_path(&self.mountpoint)?;
        }
        // The kernel ends the session once the mount is gone; a lazy unmount waits for
        // the last open file, so do not wait for that forever.
        let deadline = Instant::now() + SESSION_END_WAIT;
        while !session.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if session.guard.is_finished() {
            session.join()?;
        } else {
            warn!(
                "files are still open on the lazily unmounted {}; exiting anyway",
                self.mountpoint.display()
            );
            std::mem::forget(session);
        }
        info!(mountpoint = %self.mountpoint.display(), "unmounted");
        Ok(())
    }
}

/// Unmounts `mountpoint`: a plain unmount, retried briefly while readers that just got
/// their error close their files, then a lazy (detach) unmount so the mount point is free
/// at once even if some process keeps a file open.
fn unmount_path(mountpoint: &Path) -> std::io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "mount point has a NUL byte",
        )
    })?;
    let deadline = Instant::now() + BUSY_RETRY;
    loop {
        // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Some(libc::EBUSY) => break,
            // Already gone (someone else unmounted it).
            Some(libc::EINVAL) | Some(libc::ENOENT) => return Ok(()),
            _ => return Err(err),
        }
    }
    warn!(
        "{} is busy; detaching it (lazy unmount)",
        mountpoint.display()
    );
    // SAFETY: as above.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raises the bdi read-ahead of the mount (root only; best effort).
fn raise_read_ahead(mountpoint: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let Some(target) = mountpoint.canonicalize().ok() else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let Some(dev) = info.lines().rev().find_map(|line| {
        let mut fields = line.split(' ');
        let dev = fields.nth(2)?;
        let point = fields.nth(1)?;
        (point == target).then(|| dev.to_string())
    }) else {
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    match std::fs::write(&path, READ_AHEAD_KB.to_string()) {
        Ok(()) => debug!(%path, kb = READ_AHEAD_KB, "raised read-ahead"),
        Err(err) => debug!(%path, "could not raise read-ahead: {err}"),
    }
}
