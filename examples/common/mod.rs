//! What the examples (`demo`, `bench_read`) share: the swarmfs binary, processes they own
//! (stopped by PID on drop, errors and Ctrl-C included), one `swarmfs mount` from
//! "mounted" to "gone", and timed reads with SHA-1.
//!
//! Process and port helpers are the integration tests' own (`tests/common/process.rs`,
//! `tests/common/net.rs`), included by path so that one implementation serves both.
//! Every wait here has a deadline.

// Each example uses a different part of this module.
#![allow(dead_code)]

#[allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is their failure
#[path = "../../tests/common/net.rs"]
pub mod net;
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "../../tests/common/process.rs"]
pub mod process;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha1::{Digest, Sha1};
use tempfile::TempDir;

use process::{POLL, is_mounted, lazy_unmount, signal, tail, wait_child};

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// The mount must appear this soon: the tree comes from the metainfo alone, so this only
/// bounds process start and mount(2) on a loaded 2-core machine.
const MOUNT_DEADLINE: Duration = Duration::from_secs(20);

/// After SIGINT swarmfs fails pending reads, closes peers and unmounts: seconds at most.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// Log lines shown when a process we started fails.
const LOG_TAIL_LINES: usize = 40;

/// Sequential reads use 1 MiB: one or more FUSE READs each (the mount's read-ahead is 1 MiB).
pub const READ_CHUNK_BYTES: usize = 1 << 20;

// ---- Ctrl-C ----

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set a flag instead of killing us, so that the guards below get to
/// stop what we started. The children share our process group, so a Ctrl-C in the
/// terminal reaches a `swarmfs mount` too: it fails its pending reads and unmounts.
pub fn catch_interrupts() {
    let handler: extern "C" fn(libc::c_int) = on_interrupt;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

/// Runs an example's body with Ctrl-C caught (see `catch_interrupts`). After Ctrl-C a
/// read may fail before the body sees the flag (the mount got the signal too): the error
/// then says "interrupted".
pub fn run_interruptible(body: fn() -> Result<()>) -> Result<()> {
    catch_interrupts();
    let result = body();
    if result.is_err() && interrupted() {
        bail!("interrupted");
    }
    result
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error once Ctrl-C was pressed; called between steps and between reads.
pub fn bail_if_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

// ---- the swarmfs binary ----

/// The swarmfs binary of this build profile (`target/<profile>/swarmfs`, next to
/// `target/<profile>/examples/`), built first: `cargo run --example` does not build it,
/// and a stale one would measure old code. It is built together with this example, so
/// that both see the same dependency features (with dev-dependencies) and neither build
/// recompiles the library for the other. Falls back to an existing binary if cargo fails.
pub fn swarmfs_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the example's own path")?;
    let example = exe
        .file_stem()
        .context("the example has no file name")?
        .to_string_lossy()
        .into_owned();
    let profile_dir = profile_dir()?;
    let bin = profile_dir.join("swarmfs");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args([
            "build",
            "--quiet",
            "--bin",
            "swarmfs",
            "--example",
            &example,
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    let built = cargo.status().map(|s| s.success()).unwrap_or(false);
    match (built, bin.exists()) {
        (_, false) => bail!("no swarmfs binary at {} ({cargo:?} failed)", bin.display()),
        (false, true) => eprintln!("warning: {cargo:?} failed; using {}", bin.display()),
        (true, true) => {}
    }
    Ok(bin)
}

/// `target/<profile>`: the example runs as `target/<profile>/examples/NAME`.
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the example's own path")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("the example does not run from target/<profile>/examples")
}

/// `target/`, for what the examples keep between runs (data, results).
pub fn target_dir() -> Result<PathBuf> {
    let profile_dir = profile_dir()?;
    profile_dir
        .parent()
        .map(Path::to_path_buf)
        .context("the example does not run from target/<profile>/examples")
}

// ---- processes we own ----

/// A child process with its output in a log file. Drop: `stop(SIGTERM)`.
/// The child gets SIGTERM from the kernel if we die without running Drop (PDEATHSIG).
pub struct OwnedChild {
    child: Child,
    what: String,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl OwnedChild {
    /// Spawns `cmd` with stdin from /dev/null and stdout+stderr appended to `log`.
    pub fn spawn(cmd: &mut Command, what: &str, log: &Path) -> Result<OwnedChild> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}: {cmd:?}"))?;
        Ok(OwnedChild {
            child,
            what: what.to_string(),
            log: log.to_path_buf(),
            exited: None,
        })
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(0)
    }

    /// The exit status, if it has exited.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Sends `sig` and waits up to `grace`; then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, sig: libc::c_int, grace: Duration) -> Option<ExitStatus> {
        if self.try_exited().is_some() {
            return self.exited;
        }
        signal(self.pid(), sig);
        self.exited = wait_child(&mut self.child, grace);
        if self.exited.is_none() {
            eprintln!(
                "{} (pid {}) still running after {grace:?}: SIGKILL",
                self.what,
                self.pid()
            );
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
        self.exited
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        format!(
            "--- {} log ({}) ---\n{}",
            self.what,
            self.log.display(),
            tail(&self.log, LOG_TAIL_LINES)
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until `find` returns something, the process exits, or `limit` passes.
    pub fn wait_for_log<T>(
        &mut self,
        limit: Duration,
        find: impl Fn(&str) -> Option<T>,
    ) -> Result<T> {
        let end = Instant::now() + limit;
        loop {
            if let Some(found) = find(&self.log()) {
                return Ok(found);
            }
            if let Some(status) = self.try_exited() {
                bail!("{} exited ({status})\n{}", self.what, self.log_tail());
            }
            if Instant::now() >= end {
                bail!(
                    "{}: not ready within {limit:?}\n{}",
                    self.what,
                    self.log_tail()
                );
            }
            bail_if_interrupted()?;
            sleep(POLL);
        }
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        self.stop(libc::SIGTERM, Duration::from_secs(10));
    }
}

/// A process that a script started in the background and left to us (seed.sh,
/// tracker.sh): terminated by PID on drop. `process::become_subreaper` first, so that it
/// becomes our child when its script exits and can really be waited for.
pub struct OrphanGuard {
    pub pid: i32,
    pub what: String,
}

impl Drop for OrphanGuard {
    fn drop(&mut self) {
        process::terminate(self.pid, Duration::from_secs(10), &self.what);
    }
}

// ---- one mount ----

/// A FUSE daemon (`swarmfs mount`, or btfs for comparison) in the foreground on a fresh
/// temporary directory. Drop: SIGINT, wait, `umount -l` if still mounted, SIGKILL; the
/// directory is kept if something is still mounted on it.
pub struct Mount {
    child: OwnedChild,
    mnt: PathBuf,
    dir: Option<TempDir>,
}

impl Mount {
    /// Runs `swarmfs mount ARGS... TORRENT MNT` and waits until MNT is in the mount table.
    pub fn start(swarmfs: &Path, torrent: &Path, args: &[String]) -> Result<Mount> {
        Mount::spawn("swarmfs mount", |mnt| {
            let mut cmd = Command::new(swarmfs);
            // Loopback only: the examples never let swarmfs contact the public DHT.
            cmd.arg("mount")
                .arg("--no-dht")
                .args(args)
                .arg(torrent)
                .arg(mnt);
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "warn");
            }
            cmd
        })
    }

    /// Runs the command that `command(MNT)` builds and waits until MNT is mounted.
    pub fn spawn(what: &str, command: impl FnOnce(&Path) -> Command) -> Result<Mount> {
        let dir = tempfile::Builder::new().prefix("swarmfs-mnt-").tempdir()?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt)?;
        let mnt = mnt.canonicalize()?;
        let log = dir.path().join("mount.log");
        let child = OwnedChild::spawn(&mut command(&mnt), what, &log)?;
        let mut mount = Mount {
            child,
            mnt,
            dir: Some(dir),
        };
        mount.wait_mounted()?;
        Ok(mount)
    }

    fn wait_mounted(&mut self) -> Result<()> {
        let end = Instant::now() + MOUNT_DEADLINE;
        while !is_mounted(&self.mnt) {
            if let Some(status) = self.child.try_exited() {
                bail!(
                    "swarmfs mount exited ({status}) before mounting\n{}",
                    self.child.log_tail()
                );
            }
            if Instant::now() >= end {
                bail!(
                    "{} not mounted within {MOUNT_DEADLINE:?}\n{}",
                    self.mnt.display(),
                    self.child.log_tail()
                );
            }
            bail_if_interrupted()?;
            sleep(POLL);
        }
        Ok(())
    }

    /// The mount point; the torrent is `path()/NAME`.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Peak resident memory of the swarmfs process so far (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * KIB)
    }

    /// Waits until `path()/rel` exists (btfs shows its files a moment after mounting).
    pub fn wait_for_entry(&mut self, rel: &str) -> Result<()> {
        let end = Instant::now() + MOUNT_DEADLINE;
        while !self.mnt.join(rel).exists() {
            if Instant::now() >= end {
                bail!(
                    "{rel} not in the mount within {MOUNT_DEADLINE:?}\n{}",
                    self.log_tail()
                );
            }
            bail_if_interrupted()?;
            sleep(POLL);
        }
        Ok(())
    }

    /// SIGINT (what Ctrl-C sends), then waits for the daemon to exit 0 and the mount to go.
    /// With `SWARMFS_BENCH_LOGS=DIR` set, the daemon's log is kept there (set `RUST_LOG`
    /// too, e.g. `swarmfs=debug`, for more than warnings).
    pub fn stop(mut self) -> Result<()> {
        let status = self.child.stop(libc::SIGINT, STOP_DEADLINE);
        self.keep_log();
        let end = Instant::now() + Duration::from_secs(2);
        while is_mounted(&self.mnt) && Instant::now() < end {
            sleep(POLL);
        }
        if is_mounted(&self.mnt) {
            bail!(
                "swarmfs exited ({status:?}) but {} is still mounted",
                self.mnt.display()
            );
        }
        match status {
            Some(s) if s.success() => Ok(()),
            _ => bail!(
                "swarmfs mount did not exit cleanly ({status:?})\n{}",
                self.child.log_tail()
            ),
        }
    }

    pub fn log_tail(&self) -> String {
        self.child.log_tail()
    }

    fn keep_log(&self) {
        let (Some(keep), Some(dir)) = (std::env::var_os("SWARMFS_BENCH_LOGS"), &self.dir) else {
            return;
        };
        let keep = PathBuf::from(keep);
        let name = format!("mount-{}.log", self.pid());
        let copied = std::fs::create_dir_all(&keep)
            .and_then(|()| std::fs::copy(dir.path().join("mount.log"), keep.join(&name)));
        match copied {
            Ok(_) => eprintln!("log kept: {}", keep.join(name).display()),
            Err(err) => eprintln!("could not keep the log in {}: {err}", keep.display()),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.child.stop(libc::SIGINT, Duration::from_secs(10));
        if is_mounted(&self.mnt) {
            eprintln!("{} still mounted: umount -l", self.mnt.display());
            lazy_unmount(&self.mnt);
        }
        if is_mounted(&self.mnt) {
            // Never let TempDir's cleanup walk into a live mount.
            eprintln!(
                "{} is STILL mounted: leaving it in place",
                self.mnt.display()
            );
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

// ---- timed reads ----

/// One whole-file read: SHA-1, size, time to the first `first_len` bytes, total time.
pub struct FileRead {
    pub sha1: String,
    pub len_bytes: u64,
    pub first_bytes: Duration,
    pub total: Duration,
}

/// Reads `path` from start to end (first `first_len` bytes, then 1 MiB chunks), hashing
/// as it goes; stops early on Ctrl-C.
pub fn read_whole(path: &Path, first_len: usize) -> Result<FileRead> {
    let start = Instant::now();
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; READ_CHUNK_BYTES.max(first_len)];
    let mut len_bytes = 0u64;
    let mut first_bytes = None;
    loop {
        let want = if first_bytes.is_none() {
            first_len
        } else {
            buf.len()
        };
        let n = read_full(&mut file, &mut buf[..want])
            .with_context(|| format!("read {} at {len_bytes}", path.display()))?;
        first_bytes.get_or_insert_with(|| start.elapsed());
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len_bytes += n as u64;
        bail_if_interrupted()?;
    }
    Ok(FileRead {
        sha1: hex(&hasher.finalize()),
        len_bytes,
        first_bytes: first_bytes.unwrap_or_default(),
        total: start.elapsed(),
    })
}

/// Reads `len_bytes` of `path` from `offset` in 1 MiB chunks without hashing (a pure read
/// rate, for data already verified); returns the time taken.
pub fn time_read(path: &Path, offset: u64, len_bytes: u64) -> Result<Duration> {
    let start = Instant::now();
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut done = 0u64;
    while done < len_bytes {
        let want = (len_bytes - done).min(buf.len() as u64) as usize;
        let n = file
            .read_at(&mut buf[..want], offset + done)
            .with_context(|| format!("read {} at {}", path.display(), offset + done))?;
        if n == 0 {
            bail!(
                "{}: EOF at {} of {len_bytes} bytes",
                path.display(),
                offset + done
            );
        }
        done += n as u64;
        bail_if_interrupted()?;
    }
    Ok(start.elapsed())
}

/// Fills `buf` unless EOF comes first; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Opens `path` and reads `len` bytes at `offset`; returns them and the time taken
/// (open included: what a program that seeks into a file waits for).
pub fn timed_read_at(path: &Path, offset: u64, len: usize) -> Result<(Vec<u8>, Duration)> {
    let start = Instant::now();
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = file
            .read_at(&mut buf[done..], offset + done as u64)
            .with_context(|| format!("read {} at {}", path.display(), offset + done as u64))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok((buf, start.elapsed()))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// MiB/s of `bytes` in `elapsed` (0 for an instant).
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        bytes as f64 / MIB as f64 / secs
    } else {
        0.0
    }
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median, 95th percentile and maximum of some latencies (nearest-rank).
pub struct Spread {
    pub median: Duration,
    pub p95: Duration,
    pub max: Duration,
}

impl Spread {
    pub fn of(samples: &[Duration]) -> Option<Spread> {
        let mut sorted = samples.to_vec();
        sorted.sort();
        let rank = |p: f64| {
            let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[i - 1]
        };
        let max = *sorted.last()?;
        Some(Spread {
            median: rank(0.5),
            p95: rank(0.95),
            max,
        })
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
            ms(self.median),
            ms(self.p95),
            ms(self.max)
        )
    }
}

/// A small deterministic PRNG (SplitMix64): the same seed gives the same bytes and
/// offsets on every run and every machine, whatever version of `rand` is in use.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
