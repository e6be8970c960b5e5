//! The frame around every mounting test: the FUSE check (skip only when asked),
//! the global lock that keeps heavy tests one at a time on this 2-core machine, and the
//! overall deadline whose watchdog kills what the test started if it overruns.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::process;

/// Set to 1 to let mounting tests pass as skipped where /dev/fuse is missing.
pub const SKIP_FUSE_ENV: &str = "SWARMFS_SKIP_FUSE";

/// Longest wait for the heavy-test lock: the whole suite run one test at a time
/// (about a dozen tests, each at most a few minutes when they fail by deadline).
const HEAVY_LOCK_WAIT: Duration = Duration::from_secs(30 * 60);

/// After the watchdog killed a test's processes, how long its thread gets to unwind.
const UNWIND_GRACE: Duration = Duration::from_secs(30);

/// Where tests keep state that outlives one test (payload cache, lock files):
/// cargo's per-target scratch directory for integration tests.
pub fn temp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// The copied lab scripts (`tests/peers/`).
pub fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("peers")
}

/// True if mounting tests can run. Without /dev/fuse: prints SKIPPED and returns false
/// when SWARMFS_SKIP_FUSE=1, else panics with what to do.
pub fn fuse_available(test: &str) -> bool {
    if Path::new("/dev/fuse").exists() {
        return true;
    }
    if std::env::var(SKIP_FUSE_ENV).as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: /dev/fuse is missing and {SKIP_FUSE_ENV}=1");
        return false;
    }
    panic!(
        "{test}: /dev/fuse is missing, so nothing can be mounted. Run where FUSE is available \
         (docker: --device /dev/fuse --cap-add SYS_ADMIN), or set {SKIP_FUSE_ENV}=1 to skip \
         the mounting tests."
    );
}

/// Holds the heavy-test lock (an flock on a file under `temp_root()`, so it also
/// serialises tests of other test binaries and of concurrent `cargo test` runs).
pub struct HeavyLock {
    _file: File,
}

/// Takes the heavy-test lock, waiting at most `HEAVY_LOCK_WAIT`.
pub fn heavy_lock() -> HeavyLock {
    let path = temp_root().join("swarmfs-heavy-tests.lock");
    HeavyLock {
        _file: flock_file(&path, HEAVY_LOCK_WAIT),
    }
}

/// Opens (creating) `path` and takes an exclusive flock on it, polling until `limit`.
/// Each call opens its own file description, so threads of one process exclude each
/// other too. Closing the file releases the lock.
pub fn flock_file(path: &Path, limit: Duration) -> File {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("create lock dir");
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open lock {}: {e}", path.display()));
    let end = Instant::now() + limit;
    loop {
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return file;
        }
        assert!(
            Instant::now() < end,
            "lock {} still held after {limit:?}",
            path.display()
        );
        sleep(Duration::from_millis(100));
    }
}

/// Runs one mounting test: skips or fails clearly without FUSE, takes the heavy lock,
/// then runs `body` on its own thread under `limit`. When the limit passes, every
/// process and mount the body registered is killed / lazily unmounted (which also
/// breaks reads blocked on the mount), and the test fails. In every case the test
/// fails if it left a process or a mount behind.
pub fn fuse_test(name: &str, limit: Duration, body: impl FnOnce() + Send + 'static) {
    if !fuse_available(name) {
        return;
    }
    let _lock = heavy_lock();
    let owner = process::new_owner();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("{name}-body"))
        .spawn(move || {
            // The sender drops when the body returns or unwinds: that is the signal.
            let _done = done_tx;
            process::set_owner(owner);
            body();
        })
        .expect("spawn test body thread");

    let overran = matches!(
        done_rx.recv_timeout(limit),
        Err(mpsc::RecvTimeoutError::Timeout)
    );
    if overran {
        eprintln!("{name}: overall deadline of {limit:?} passed: killing what it started");
        process::kill_owned(owner);
        let _ = done_rx.recv_timeout(UNWIND_GRACE);
    }
    let leftovers = process::owned(owner);
    if !leftovers.is_empty() {
        process::kill_owned(owner);
    }
    if overran {
        panic!("{name}: exceeded its overall deadline of {limit:?}; left behind: {leftovers:?}");
    }
    if let Err(payload) = thread.join() {
        std::panic::resume_unwind(payload);
    }
    assert!(
        leftovers.is_empty(),
        "{name}: left processes or mounts behind: {leftovers:?}"
    );
}
