//! `MountGuard`: one `swarmfs mount` of a torrent on a temporary directory, from
//! "mounted" (seen in /proc/self/mountinfo) to "gone" (process reaped, mount removed),
//! panics included.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::harness::{SKIP_FUSE_ENV, fuse_available};
use super::net::fresh_addr;
pub use super::process::is_mounted;
use super::process::{
    POLL, Registered, Resource, lazy_unmount, register, signal, tail, wait_child,
};
use super::swarmfs;

/// The mount must appear this soon: the tree comes from the metainfo alone, so this only
/// bounds process start and mount(2), with room for a loaded 2-core machine.
const MOUNT_DEADLINE: Duration = Duration::from_secs(20);

/// After SIGINT: unmounting, failing pending reads and closing peers; generous on purpose.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// Drop: how long swarmfs gets after SIGTERM before `umount -l` and SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(10);

/// Log lines shown when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// A running `swarmfs mount`. Drop: SIGTERM, wait up to 10 s, `umount -l` if still
/// mounted, SIGKILL; the temporary directory is only deleted once nothing is mounted on it.
pub struct MountGuard {
    child: Option<Child>,
    dir: Option<TempDir>,
    mnt: PathBuf,
    log_path: PathBuf,
    _registered_process: Registered,
    _registered_mount: Registered,
}

impl MountGuard {
    /// Runs `swarmfs mount ARGS... TORRENT MNT` (stdout and stderr to `log()`) and waits
    /// until MNT is mounted. TORRENT is a .torrent path or a magnet link. Unless `args`
    /// has a `--listen`, one on a fresh loopback address is added, so that parallel mounts
    /// never share a port.
    pub fn mount(torrent: impl AsRef<OsStr>, args: &[&str]) -> MountGuard {
        Self::mount_with_env(torrent, args, &[])
    }

    /// `mount` with extra environment variables for swarmfs, e.g. `("RUST_LOG", ...)`
    /// when a test reads debug lines whatever the caller's own RUST_LOG says.
    pub fn mount_with_env(
        torrent: impl AsRef<OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> MountGuard {
        let (guard, what) = Self::spawn(torrent.as_ref(), args, env);
        guard.wait_mounted(&what)
    }

    /// Runs `swarmfs mount` expecting it to give up before mounting: waits up to `limit`
    /// for it to exit, and panics if it mounts or is still running then. Returns its
    /// exit status and everything it wrote.
    pub fn mount_fails(
        torrent: impl AsRef<OsStr>,
        args: &[&str],
        limit: Duration,
    ) -> (ExitStatus, String) {
        let (mut guard, what) = Self::spawn(torrent.as_ref(), args, &[]);
        let end = Instant::now() + limit;
        loop {
            assert!(
                !guard.is_mounted(),
                "swarmfs mounted, but it should have failed\ncommand: {what}\n--- swarmfs log ---\n{}",
                tail(&guard.log_path, LOG_TAIL_LINES)
            );
            let exited = guard
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                guard.child = None;
                assert!(
                    !guard.is_mounted(),
                    "swarmfs exited ({status}) and left {} mounted",
                    guard.mnt.display()
                );
                return (status, guard.log());
            }
            assert!(
                Instant::now() < end,
                "swarmfs still running after {limit:?}, but it should have failed\n\
                 command: {what}\n--- swarmfs log ---\n{}",
                tail(&guard.log_path, LOG_TAIL_LINES)
            );
            sleep(POLL);
        }
    }

    /// Starts `swarmfs mount` on a fresh temporary mount point, without waiting; returns
    /// the guard and the command line (for messages).
    fn spawn(torrent: &OsStr, args: &[&str], env: &[(&str, &str)]) -> (MountGuard, String) {
        assert!(
            fuse_available("MountGuard::mount"),
            "/dev/fuse is missing and {SKIP_FUSE_ENV}=1: wrap the test in harness::fuse_test, which skips it"
        );
        let dir = tempfile::Builder::new()
            .prefix("swarmfs-mnt-")
            .tempdir()
            .expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("create mountpoint");
        let mnt = mnt.canonicalize().expect("canonical mountpoint");
        let log_path = dir.path().join("swarmfs.log");
        let log = std::fs::File::create(&log_path).expect("create swarmfs.log");

        let mut cmd = swarmfs::command("mount", &log);
        cmd.args(swarmfs::loopback_only_args(args));
        if !args.contains(&"--listen") {
            cmd.arg("--listen").arg(fresh_addr());
        }
        cmd.arg(torrent).arg(&mnt);
        cmd.envs(env.iter().copied());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let pid = i32::try_from(child.id()).expect("pid fits i32");
        let guard = MountGuard {
            child: Some(child),
            dir: Some(dir),
            _registered_process: register(Resource::Process {
                pid,
                what: "swarmfs mount".into(),
            }),
            _registered_mount: register(Resource::Mount { path: mnt.clone() }),
            mnt,
            log_path,
        };
        (guard, format!("{cmd:?}"))
    }

    fn wait_mounted(mut self, what: &str) -> MountGuard {
        let end = Instant::now() + MOUNT_DEADLINE;
        loop {
            if is_mounted(&self.mnt) {
                return self;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let problem = match exited {
                Some(status) => format!("swarmfs exited with {status} before mounting"),
                None if Instant::now() >= end => format!("no mount within {MOUNT_DEADLINE:?}"),
                None => {
                    sleep(POLL);
                    continue;
                }
            };
            panic!(
                "{problem}\ncommand: {what}\n--- swarmfs log ---\n{}\n--- mount table (fuse) ---\n{}",
                tail(&self.log_path, LOG_TAIL_LINES),
                fuse_mount_table()
            );
        }
    }

    /// The mount point; the torrent is at `path()/NAME`.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// swarmfs's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything swarmfs wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log_path).unwrap_or_default()).into_owned()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mnt)
    }

    /// SIGINT, then waits (20 s) for swarmfs to exit; asserts the mount is gone.
    pub fn stop(mut self) -> ExitStatus {
        signal(self.pid_i32(), libc::SIGINT);
        self.wait_exit_inner("after SIGINT")
    }

    /// Like `stop`, plus the whole log, which `stop` cannot give once the guard (and its
    /// directory) is gone: what swarmfs logs at shutdown (`session totals`) is in it.
    pub fn stop_with_log(self) -> (ExitStatus, String) {
        let log_path = self.log_path.clone();
        // An open file outlives the unlink of the directory when the guard drops.
        let mut log = std::fs::File::open(&log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let status = self.stop();
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut log, &mut text).expect("read swarmfs.log");
        (status, String::from_utf8_lossy(&text).into_owned())
    }

    /// Waits (20 s) for swarmfs to exit by itself (e.g. after an external `umount`);
    /// asserts the mount is gone.
    pub fn wait_exit(mut self) -> ExitStatus {
        self.wait_exit_inner("by itself")
    }

    fn wait_exit_inner(&mut self, how: &str) -> ExitStatus {
        let child = self.child.as_mut().expect("swarmfs not yet waited for");
        let Some(status) = wait_child(child, STOP_DEADLINE) else {
            panic!(
                "swarmfs did not exit {how} within {STOP_DEADLINE:?}\n--- swarmfs log ---\n{}",
                tail(&self.log_path, LOG_TAIL_LINES)
            );
        };
        self.child = None;
        // The kernel removes the mount before umount(2) returns to swarmfs; a short
        // grace covers a lazy detach still in progress.
        let end = Instant::now() + Duration::from_secs(2);
        while self.is_mounted() && Instant::now() < end {
            sleep(POLL);
        }
        assert!(
            !self.is_mounted(),
            "swarmfs exited ({status}) {how} but {} is still mounted\n--- swarmfs log ---\n{}",
            self.mnt.display(),
            tail(&self.log_path, LOG_TAIL_LINES)
        );
        status
    }

    fn pid_i32(&self) -> i32 {
        i32::try_from(self.pid()).unwrap_or(0)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- swarmfs log ({}), last {LOG_TAIL_LINES} lines ---\n{}",
                self.log_path.display(),
                tail(&self.log_path, LOG_TAIL_LINES)
            );
        }
        let pid = self.pid_i32();
        if let Some(child) = self.child.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            signal(pid, libc::SIGTERM);
            let _ = wait_child(child, DROP_GRACE);
        }
        if is_mounted(&self.mnt) {
            eprintln!("{} still mounted: umount -l", self.mnt.display());
            lazy_unmount(&self.mnt);
        }
        if let Some(child) = self.child.as_mut()
            && matches!(child.try_wait(), Ok(None))
        {
            eprintln!("swarmfs (pid {pid}) still running: SIGKILL");
            let _ = child.kill();
            if wait_child(child, Duration::from_secs(10)).is_none() {
                eprintln!("swarmfs (pid {pid}) survived SIGKILL for 10 s");
            }
        }
        if is_mounted(&self.mnt) {
            // Never let TempDir's cleanup walk into a live mount.
            eprintln!(
                "{} is STILL mounted: leaving the directory in place",
                self.mnt.display()
            );
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

/// The FUSE lines of /proc/self/mountinfo (the whole table if there are none).
pub fn fuse_mount_table() -> String {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let fuse: Vec<&str> = table.lines().filter(|l| l.contains("fuse")).collect();
    if fuse.is_empty() {
        table
    } else {
        fuse.join("\n")
    }
}
