//! Processes and mounts that a test owns: start a script under a deadline, signal and
//! wait for a process by PID, tell whether a path is mounted and `umount -l` it, and the
//! per-test registry that the watchdog in `harness.rs` empties when a test overruns its
//! deadline.
//!
//! seed.sh and tracker.sh start their client in the background and exit, so the client
//! outlives its parent. PID 1 in our containers never reaps, so those orphans would stay
//! zombies and "is it gone?" could not be answered. The test process therefore makes
//! itself a child subreaper: the orphans become our children, and we kill and really wait
//! for them by PID. Nothing here kills by name.

use std::cell::Cell;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How often the polling waits below look again: short enough not to slow the tests,
/// long enough not to burn one of the machine's two cores.
pub const POLL: Duration = Duration::from_millis(50);

/// Makes this test process a child subreaper (once), so that clients started in the
/// background by the lab scripts become our children when their script exits.
pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag on this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        if rc != 0 {
            eprintln!(
                "warning: PR_SET_CHILD_SUBREAPER failed ({}); orphaned clients are waited via /proc",
                std::io::Error::last_os_error()
            );
        }
    });
}

/// Sends `sig` to one process (never to a group or by name). Errors (already gone) are ignored.
pub fn signal(pid: i32, sig: libc::c_int) {
    if pid > 0 {
        // SAFETY: kill(2) with a positive PID signals exactly that process.
        unsafe { libc::kill(pid, sig) };
    }
}

/// True while `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the last ')' (the command name may contain anything).
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Waits until `pid` (not a `std::process::Child` of ours) is gone: reaped by us if it
/// is our child (see `become_subreaper`), else absent or a zombie in /proc.
/// Returns false if it is still alive at the deadline.
pub fn wait_pid(pid: i32, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on one PID with WNOHANG; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid || (r < 0 && !is_alive(pid)) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        sleep(POLL);
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL and wait up to 5 s more.
/// Returns false (and says so on stderr) if the process survived all of it.
pub fn terminate(pid: i32, grace: Duration, what: &str) -> bool {
    signal(pid, libc::SIGTERM);
    if wait_pid(pid, grace) {
        return true;
    }
    eprintln!("{what} (pid {pid}) ignored SIGTERM for {grace:?}: SIGKILL");
    signal(pid, libc::SIGKILL);
    let gone = wait_pid(pid, Duration::from_secs(5));
    if !gone {
        eprintln!("{what} (pid {pid}) survived SIGKILL for 5 s");
    }
    gone
}

/// Polls `child` until it exits or `limit` passes.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < end => sleep(POLL),
            Ok(None) => return None,
            Err(err) => panic!("waiting for pid {}: {err}", child.id()),
        }
    }
}

/// A `KEY:  N kB` field of /proc/PID/status (VmHWM, VmRSS, ...) in KiB, if present.
pub fn status_kib(pid: i32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// What a script printed and how it ended.
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for RunOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion under `limit`, stdin from /dev/null, output to anonymous
/// files (not pipes: a background client that inherited a pipe would keep it open).
/// The command gets its own process group; on timeout that whole group, which only
/// holds what this command started, is killed and the call panics with the output.
pub fn run(cmd: &mut Command, limit: Duration, what: &str) -> RunOutput {
    let out = tempfile::tempfile().expect("tempfile for stdout");
    let err = tempfile::tempfile().expect("tempfile for stderr");
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup stdout file"))
        .stderr(err.try_clone().expect("dup stderr file"))
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let status = wait_child(&mut child, limit);
    let (stdout, stderr) = (read_all(out), read_all(err));
    match status {
        Some(status) => RunOutput {
            status,
            stdout,
            stderr,
        },
        None => {
            let pgid = i32::try_from(child.id()).expect("pid fits i32");
            // SAFETY: a negative PID signals the process group this command leads.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "{what}: no exit within {limit:?} (group killed)\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            );
        }
    }
}

/// Like `run`, but panics unless the command exits 0.
pub fn run_ok(cmd: &mut Command, limit: Duration, what: &str) -> RunOutput {
    let out = run(cmd, limit, what);
    assert!(out.status.success(), "{what} failed: {out}");
    out
}

fn read_all(mut f: File) -> String {
    let mut buf = Vec::new();
    let _ = f.seek(SeekFrom::Start(0));
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last `n` lines of a log file, or a note that it cannot be read.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

// ---- the registry of what each test owns ----

/// Something a test must not leave behind.
#[derive(Debug, Clone)]
pub enum Resource {
    Process { pid: i32, what: String },
    Mount { path: PathBuf },
}

struct Entry {
    owner: u64,
    id: u64,
    resource: Resource,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The test (see `harness::fuse_test`) that resources created on this thread belong to;
    /// 0 means none.
    static OWNER: Cell<u64> = const { Cell::new(0) };
}

/// A fresh owner id for one test.
pub fn new_owner() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Makes resources registered from this thread belong to `owner`.
pub fn set_owner(owner: u64) {
    OWNER.with(|o| o.set(owner));
}

/// Removes its entry from the registry when dropped; guards drop it once the resource is
/// really gone.
#[must_use]
pub struct Registered(u64);

pub fn register(resource: Resource) -> Registered {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let owner = OWNER.with(Cell::get);
    lock_registry().push(Entry {
        owner,
        id,
        resource,
    });
    Registered(id)
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock_registry().retain(|e| e.id != self.0);
    }
}

fn lock_registry() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    // A test that panicked while holding the lock leaves valid data behind.
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What `owner` still holds.
pub fn owned(owner: u64) -> Vec<Resource> {
    lock_registry()
        .iter()
        .filter(|e| e.owner == owner)
        .map(|e| e.resource.clone())
        .collect()
}

/// The watchdog's hammer: SIGKILL every process and lazily unmount every mount of
/// `owner`. Blocked FUSE reads then fail, so the test thread can unwind and drop its
/// guards, which reap what was killed.
pub fn kill_owned(owner: u64) {
    for resource in owned(owner) {
        match resource {
            Resource::Process { pid, what } => {
                eprintln!("watchdog: SIGKILL {what} (pid {pid})");
                signal(pid, libc::SIGKILL);
            }
            Resource::Mount { path } => {
                eprintln!("watchdog: umount -l {}", path.display());
                lazy_unmount(&path);
            }
        }
    }
}

/// True if `path` is a mount point in /proc/self/mountinfo.
pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// mountinfo escapes space, tab, newline and backslash as \040, \011, \012, \134.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// `umount -l PATH` under a deadline; errors are reported, not raised (used in Drop).
pub fn lazy_unmount(path: &Path) {
    let spawned = Command::new("umount")
        .arg("-l")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn();
    match spawned {
        Ok(mut child) => {
            if wait_child(&mut child, Duration::from_secs(10)).is_none() {
                eprintln!("umount -l {} hung for 10 s", path.display());
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        Err(err) => eprintln!("cannot run umount -l {}: {err}", path.display()),
    }
}
