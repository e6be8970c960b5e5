//! The read benchmark of issue 6: `cargo run --release --example bench_read`.
//!
//! One 1 GiB single-file torrent in 1 MiB pieces (`tests/peers/make-torrent.sh`, kept
//! under `target/bench-data`), one opentracker and four real seeders on loopback
//! (aria2 on 127.0.0.2 and .4, python-libtorrent on .3 and .5), and in the same run:
//!
//! 1. cold sequential read: SHA-1 of the file through a fresh swarmfs mount (with
//!    `--cache-size` 256MiB and 64MiB); then, in 5 rounds side by side, `cat` through a
//!    fresh mount and full downloads by aria2 and python-libtorrent
//!    (`tests/peers/leech.sh`) and rqbit, each reported as its median; and btfs's cold
//!    read through its own mount (each tool only if installed);
//! 2. time to first byte of 64 KiB at 20 random offsets on a fresh mount (swarmfs, btfs),
//!    next to the time one seeder takes to send one whole piece over the wire, to the
//!    piece's SHA-1 check (as a read must wait for it) and to its last block;
//! 3. cached re-read MiB/s, next to reading the same bytes from /dev/shm;
//! 4. peak RSS (VmHWM) of the mount next to its `--cache-size`;
//! 5. `ffmpeg -ss T` seeks at 5 positions and mpv's start-up to the first frame in the
//!    moov-at-end MP4 of the media corpus (`tests/media/gen-media.sh`), each on a fresh
//!    mount of one `swarmfs seed`, next to the same commands on the original file.
//!
//! Arguments name parts to run alone (`cold`, `cat`, `downloads`, `btfs`, `ttfb`, `seek`);
//! none runs everything. Prints a markdown table and writes it with the machine's description to
//! `target/bench-results/<date>.md`, and section 1 as a bar chart to `<date>.svg`.
//! Everything runs on loopback; everything it starts it stops by PID, errors and Ctrl-C
//! included. A tool that is missing is listed as "not installed"; one that fails is
//! listed with its error, and the run goes on.

#[path = "../common/mod.rs"]
mod common;
mod media;
mod report;
mod swarm;
mod wire;

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use swarmfs::metainfo::Metainfo;

use common::net::free_port;
use common::process::{self, run};
use common::{
    KIB, MIB, Mount, SplitMix64, Spread, bail_if_interrupted, mib_per_s, ms, read_whole,
    swarmfs_binary, target_dir, time_read, timed_read_at,
};
use report::{Report, Section, machine_description};
use swarm::{Payload, Seeder, Tracker, peers_dir};
use wire::{WIRE_PIECES, fetch_pieces};

/// The torrent: 1 GiB in 1 MiB pieces (1024 pieces), a typical large-file torrent.
const SIZE_MB: u64 = 1024;
const PIECE_KB: u64 = 1024;

/// The seeders, in start order; they get 127.0.0.2, .3, .4, .5.
const SEEDERS: [&str; 4] = ["aria2", "libtorrent", "aria2", "libtorrent"];
const FIRST_SEEDER_HOST: u8 = 2;
/// Leechers, mounts and rqbit each get their own address from 127.0.0.10 on, so that the
/// tracker never lists two programs under one IP.
const FIRST_CLIENT_HOST: u8 = 10;

/// The two cache sizes of the mount: 256 MiB (a quarter of the torrent) and 64 MiB.
const CACHE_SIZES: [&str; 2] = ["256MiB", "64MiB"];

/// Random-offset reads: how many, how long each (what a player or `file` asks first).
const TTFB_READS: usize = 20;
const READ_LEN: usize = 64 * KIB as usize;
/// The random reads start this long after mounting.
const TTFB_SETTLE: Duration = Duration::from_secs(2);

/// Cached re-read: the last 128 MiB, half the 256 MiB cache, so it is surely still held.
const REREAD_TAIL_BYTES: u64 = 128 * MIB;

/// Section 1's contenders each run this many times, in rounds side by side. Single runs
/// of one tool here range over ±20 % (python-libtorrent 238–329 MiB/s within one run), so
/// the median of 5 is what is compared.
const COLD_ROUNDS: usize = 5;

/// Hang bounds, not expectations: the slowest full download measured so far (aria2,
/// ~100 MiB/s) takes ~10 s; btfs reads at ~10-20 MiB/s (~60-100 s).
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(300);
const WIRE_DEADLINE: Duration = Duration::from_secs(60);

fn main() -> Result<()> {
    common::run_interruptible(run_bench)
}

fn run_bench() -> Result<()> {
    // seed.sh and tracker.sh leave their client running in the background: as subreaper
    // we inherit those processes and can wait for them after killing them by PID.
    process::become_subreaper();
    let swarmfs = swarmfs_binary()?;
    let target = target_dir()?;
    let payload = Payload::prepare(&target.join("bench-data"))?;
    let work = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(target.join("bench-data"))?;
    let tracker = Tracker::start(&work.path().join("tracker"))?;
    let torrent = payload.torrent_announcing(&tracker.announce_url(), work.path())?;
    tracker.allow(&torrent)?;
    let mut seeders = Vec::new();
    for (i, client) in SEEDERS.iter().enumerate() {
        let host = FIRST_SEEDER_HOST + u8::try_from(i)?;
        seeders.push(Seeder::start(
            client,
            Ipv4Addr::new(127, 0, 0, host),
            &torrent,
            &payload.data_dir,
            &work.path().join(format!("seed-{i}-{client}")),
        )?);
        println!("seeder: {client} on {}", seeders[i].addr);
    }

    // The seeders read the payload from disk: have it in the page cache before the first
    // measurement, so that whichever tool runs first does not also pay their disk reads.
    read_whole(&payload.file, 1024 * KIB as usize).context("warming the payload")?;

    let mut report = Report::default();
    let mut failures = Vec::new();
    let bench = Bench {
        swarmfs: &swarmfs,
        torrent: &torrent,
        payload: &payload,
        work: work.path(),
    };
    let parts = Parts::from_args()?;
    bench.warm_up_seeders()?;
    if parts.wants("cold") {
        bench.cold_and_cached_swarmfs(&mut report, &mut failures)?;
    }
    bench.cold_rounds(&parts, &mut report)?;
    if parts.wants("btfs") {
        bench.btfs(&mut report)?;
    }
    if parts.wants("ttfb") {
        bench.ttfb_swarmfs(&mut report, &mut failures)?;
        bench.one_piece(&seeders[..2], &mut report)?;
    }
    if parts.wants("cold") {
        bench.dev_shm(&mut report)?;
    }
    drop(seeders);
    drop(tracker);
    let seek = if parts.wants("seek") {
        media::seek_section(&swarmfs, &target, work.path(), &mut report)
    } else {
        Ok(())
    };
    if let Err(err) = seek {
        bail_if_interrupted()?;
        report.failed(
            Section::Seek,
            "media corpus and seeder",
            &format!("{err:#}"),
        );
    }

    let results = target.join("bench-results");
    fs::create_dir_all(&results)?;
    let file = results.join(format!("{}.md", command_line("date", &["-u", "+%Y-%m-%d"])));
    let svg = file.with_extension("svg");
    fs::write(&svg, report.cold_svg())?;
    let mut markdown = report.to_markdown(&machine_description(&payload));
    markdown.push_str(&format!(
        "\nSection 1 as a bar chart: `{}`\n",
        svg.display()
    ));
    println!("\n{markdown}");
    fs::write(&file, &markdown)?;
    println!("written to {}", file.display());
    if !failures.is_empty() {
        bail!(
            "{} check(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// Which parts of the benchmark to run: all by default, or those named on the command
/// line (`cargo run --release --example bench_read -- ttfb cat`), for quicker iterations.
struct Parts(Vec<String>);

impl Parts {
    const ALL: [&str; 6] = ["cold", "cat", "downloads", "btfs", "ttfb", "seek"];

    fn from_args() -> Result<Self> {
        let named: Vec<String> = std::env::args().skip(1).collect();
        if let Some(bad) = named.iter().find(|n| !Self::ALL.contains(&n.as_str())) {
            bail!(
                "unknown part {bad:?}; the parts are {}",
                Self::ALL.join(", ")
            );
        }
        Ok(Parts(named))
    }

    fn wants(&self, part: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n == part)
    }
}

/// A program in section 1's rounds.
enum Contender {
    /// A fresh swarmfs mount read by `cat`.
    Cat,
    /// The same with another build of swarmfs (`other_build`), for comparing two builds in
    /// one run's rounds.
    CatOther(PathBuf),
    /// A full download by this client through leech.sh.
    Leech(&'static str),
    /// A full download by rqbit (the path of its binary).
    Rqbit(PathBuf),
}

impl Contender {
    fn tool(&self) -> String {
        match self {
            Contender::Cat => format!(
                "swarmfs mount, --cache-size {}, `cat FILE >/dev/null`",
                CACHE_SIZES[0]
            ),
            Contender::CatOther(bin) => format!(
                "swarmfs build {}, --cache-size {}, `cat FILE >/dev/null`",
                bin.display(),
                CACHE_SIZES[0]
            ),
            Contender::Leech(client) => format!("{} full download", tool_version(client)),
            Contender::Rqbit(_) => format!("{} download", tool_version("rqbit")),
        }
    }

    /// Whose CPU time a round's `children_cpu_seconds` delta holds: the processes the run
    /// started and waited for (never the seeders').
    fn cpu_of(&self) -> &'static str {
        match self {
            Contender::Cat | Contender::CatOther(_) => "the mount and cat",
            Contender::Leech(_) => "the client",
            Contender::Rqbit(_) => "rqbit",
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Contender::Cat | Contender::CatOther(_) => {
                "cat's start to its exit; cat fadvises SEQUENTIAL and reads 128 KiB (the bytes are checked in the runs above)"
            }
            Contender::Leech(_) => "leech.sh: client start to last byte on disk, SHA-1 checked",
            Contender::Rqbit(_) => "process start to last byte on disk, SHA-1 checked",
        }
    }
}

/// Another build of the `swarmfs` binary to measure beside this one
/// (`SWARMFS_BENCH_COMPARE=PATH`): in the `cat` rounds and the random reads.
fn other_build() -> Option<PathBuf> {
    std::env::var_os("SWARMFS_BENCH_COMPARE").map(PathBuf::from)
}

/// User plus system CPU seconds of every child process this benchmark has waited for
/// (getrusage RUSAGE_CHILDREN): the delta around one run is what that run's programs
/// cost, whichever core they ran on.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// What every measurement needs.
struct Bench<'a> {
    swarmfs: &'a Path,
    torrent: &'a Path,
    payload: &'a Payload,
    work: &'a Path,
}

impl Bench<'_> {
    /// One untimed read of the whole file through a mount: the first program served pays
    /// for the seeders' own warm-up (python-libtorrent maps the file and faults it in on
    /// first use), which would count against whatever ran first.
    fn warm_up_seeders(&self) -> Result<()> {
        let mount = self.mount_swarmfs(CACHE_SIZES[1])?;
        let read = read_whole(&mount.path().join(&self.payload.name), READ_LEN);
        mount.stop()?;
        let read = read.context("warm-up read")?;
        println!(
            "warm-up: the seeders served the file once ({:.1} s, not counted)",
            read.total.as_secs_f64()
        );
        Ok(())
    }

    /// Section 1's comparison, in `COLD_ROUNDS` rounds of one run of each contender in
    /// turn (the mount read by `cat`, then the downloaders), each reported as the median
    /// of its rounds with every round in the note: the machine's load drifts over a run,
    /// and rounds side by side share the drift.
    fn cold_rounds(&self, parts: &Parts, report: &mut Report) -> Result<()> {
        let mut contenders = Vec::new();
        if parts.wants("cat") {
            contenders.push(Contender::Cat);
            if let Some(other) = other_build() {
                contenders.push(Contender::CatOther(other));
            }
        }
        if parts.wants("downloads") {
            contenders.push(Contender::Leech("aria2"));
            contenders.push(Contender::Leech("libtorrent"));
            match find_tool("rqbit") {
                Some(rqbit) => contenders.push(Contender::Rqbit(rqbit)),
                None => report.add(
                    Section::Cold,
                    "rqbit download",
                    "not installed".into(),
                    "cargo install rqbit".into(),
                ),
            }
        }
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
        let mut failed: Vec<Option<String>> = vec![None; contenders.len()];
        for round in 1..=COLD_ROUNDS {
            for (i, contender) in contenders.iter().enumerate() {
                if failed[i].is_some() {
                    continue;
                }
                report.settle()?;
                let cpu_before = children_cpu_seconds();
                match self.run_contender(contender) {
                    Ok(rate) => {
                        let gib = self.payload.size_bytes as f64 / (1024.0 * MIB as f64);
                        let cpu_per_gib = (children_cpu_seconds() - cpu_before) / gib;
                        println!(
                            "round {round}: {}: {rate:.0} MiB/s, {cpu_per_gib:.2} CPU-s/GiB",
                            contender.tool()
                        );
                        runs[i].push(rate);
                        cpu[i].push(cpu_per_gib);
                    }
                    Err(err) => failed[i] = Some(format!("round {round}: {err:#}")),
                }
                bail_if_interrupted()?;
            }
        }
        for (i, contender) in contenders.iter().enumerate() {
            let tool = contender.tool();
            if let Some(why) = &failed[i] {
                report.failed(Section::Cold, &tool, why);
                continue;
            }
            let mut sorted = runs[i].clone();
            sorted.sort_by(f64::total_cmp);
            let Some(median) = sorted.get(sorted.len() / 2) else {
                continue;
            };
            let each: Vec<String> = runs[i].iter().map(|r| format!("{r:.0}")).collect();
            let each_cpu: Vec<String> = cpu[i].iter().map(|c| format!("{c:.2}")).collect();
            report.add(
                Section::Cold,
                &tool,
                format!("{median:.0} MiB/s"),
                format!(
                    "median of {} rounds ({} MiB/s); CPU-s per GiB of {} ({}); {}",
                    runs[i].len(),
                    each.join(", "),
                    contender.cpu_of(),
                    each_cpu.join(", "),
                    contender.what()
                ),
            );
        }
        Ok(())
    }

    /// One cold run of `contender`: MiB/s of the 1 GiB, checked where the tool can be.
    fn run_contender(&self, contender: &Contender) -> Result<f64> {
        match contender {
            Contender::Cat => self.cat_once(self.swarmfs),
            Contender::CatOther(bin) => self.cat_once(bin),
            Contender::Leech(client) => self.leech_once(client),
            Contender::Rqbit(rqbit) => self.rqbit_once(rqbit),
        }
    }

    /// `cat FILE >/dev/null` on a fresh mount, from cat's start to its exit.
    fn cat_once(&self, swarmfs: &Path) -> Result<f64> {
        let mount = self.mount_with(swarmfs, CACHE_SIZES[0])?;
        let started = Instant::now();
        let mut cat = Command::new("cat")
            .arg(mount.path().join(&self.payload.name))
            .stdout(Stdio::null())
            .spawn()?;
        let status = process::wait_child(&mut cat, DOWNLOAD_DEADLINE);
        let took = started.elapsed();
        if status.is_none() {
            let _ = cat.kill();
            let _ = cat.wait();
        }
        mount.stop()?;
        match status {
            Some(s) if s.success() => Ok(mib_per_s(self.payload.size_bytes, took)),
            other => bail!("cat: {other:?}"),
        }
    }

    /// Sections 1, 3 and 4 for swarmfs: a cold SHA-1 of the whole file through a fresh
    /// mount per cache size; with the larger cache, then the cached re-reads; VmHWM just
    /// before each unmount.
    fn cold_and_cached_swarmfs(
        &self,
        report: &mut Report,
        failures: &mut Vec<String>,
    ) -> Result<()> {
        for cache in CACHE_SIZES {
            report.settle()?;
            let tool = format!("swarmfs mount, --cache-size {cache}");
            let mount = self.mount_swarmfs(cache)?;
            let file = mount.path().join(&self.payload.name);
            let read = match read_whole(&file, READ_LEN) {
                Ok(read) => read,
                Err(err) => {
                    failures.push(format!("{tool}: {err:#}"));
                    report.failed(Section::Cold, &tool, &format!("{err:#}"));
                    eprintln!("{}", mount.log_tail());
                    mount.stop()?;
                    continue;
                }
            };
            let ok = read.sha1 == self.payload.sha1;
            if !ok {
                failures.push(format!(
                    "{tool}: SHA-1 {} instead of {}",
                    read.sha1, self.payload.sha1
                ));
            }
            report.add(
                Section::Cold,
                &tool,
                format!("{:.0} MiB/s", mib_per_s(read.len_bytes, read.total)),
                format!(
                    "SHA-1 {}, {:.1} s, first 64 KiB after {:.0} ms",
                    if ok { "OK" } else { "MISMATCH" },
                    read.total.as_secs_f64(),
                    ms(read.first_bytes)
                ),
            );
            if cache == CACHE_SIZES[0] {
                let size = self.payload.size_bytes;
                let tail = time_read(&file, size - REREAD_TAIL_BYTES, REREAD_TAIL_BYTES)?;
                report.add(
                    Section::Cached,
                    &format!("{tool}: last 128 MiB again (in its cache)"),
                    format!("{:.0} MiB/s", mib_per_s(REREAD_TAIL_BYTES, tail)),
                    "right after the cold read".into(),
                );
                let whole = time_read(&file, 0, size)?;
                report.add(
                    Section::Cached,
                    &format!("{tool}: whole 1 GiB again"),
                    format!("{:.0} MiB/s", mib_per_s(size, whole)),
                    "more than the cache: what the kernel's page cache and the swarm give back"
                        .into(),
                );
            }
            let rss = mount.peak_rss_bytes();
            report.add(
                Section::Memory,
                &tool,
                rss.map_or("?".into(), |b| format!("{:.0} MiB", b as f64 / MIB as f64)),
                format!("VmHWM after reading 1 GiB; cache {cache}"),
            );
            mount.stop()?;
        }
        Ok(())
    }

    /// A full download by aria2 or python-libtorrent through leech.sh, whose MiB/s counts
    /// from client start to the last byte on disk; fails unless its SHA-1 check passed.
    fn leech_once(&self, client: &str) -> Result<f64> {
        let out_dir = self.work.join(format!("leech-{client}"));
        let mut cmd = Command::new(peers_dir().join("leech.sh"));
        cmd.arg(client)
            .arg(self.torrent)
            .arg(&out_dir)
            .env("LEECH_IP", client_ip().to_string())
            .env("TIMEOUT", DOWNLOAD_DEADLINE.as_secs().to_string())
            .env("SHA1SUMS", &self.payload.sums);
        let out = run(
            &mut cmd,
            DOWNLOAD_DEADLINE + Duration::from_secs(60),
            "leech.sh",
        );
        let _ = fs::remove_dir_all(&out_dir);
        let _ = fs::remove_dir_all(out_dir.with_extension("state"));
        if !out.status.success() {
            bail!("{}", last_line(&out.stderr));
        }
        let result = out
            .stdout
            .lines()
            .find(|l| l.starts_with("RESULT"))
            .unwrap_or("");
        let field = |key: &str| {
            result
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .unwrap_or("?")
                .to_string()
        };
        let verify = field("verify=");
        if verify != "OK" {
            bail!("verify={verify}");
        }
        field("MBps=")
            .parse()
            .with_context(|| format!("leech.sh printed {result:?}"))
    }

    /// A full download by rqbit, from process start to its exit, then a SHA-1 check.
    fn rqbit_once(&self, rqbit: &Path) -> Result<f64> {
        let out_dir = self.work.join("leech-rqbit");
        let started = Instant::now();
        let out = run(
            Command::new(rqbit)
                .args([
                    "--disable-dht",
                    "--disable-upnp-port-forward",
                    "--disable-lsd",
                ])
                .args(["--listen-ip", &client_ip().to_string()])
                .args(["--http-api-listen-addr", "127.0.0.1:0"])
                .args(["download", "-e", "--disable-http-api", "-o"])
                .arg(&out_dir)
                .arg(self.torrent),
            DOWNLOAD_DEADLINE,
            "rqbit download",
        );
        let took = started.elapsed();
        let got = read_whole(&out_dir.join(&self.payload.name), READ_LEN).map(|r| r.sha1);
        let _ = fs::remove_dir_all(&out_dir);
        if !out.status.success() {
            bail!("{}", last_line(&out.stderr));
        }
        if got.as_deref().ok() != Some(self.payload.sha1.as_str()) {
            bail!("the downloaded file's SHA-1 is not the payload's");
        }
        Ok(mib_per_s(self.payload.size_bytes, took))
    }

    /// btfs (FUSE over libtorrent), if installed: cold SHA-1 through its mount with peak
    /// RSS, then random-offset reads on a fresh mount.
    fn btfs(&self, report: &mut Report) -> Result<()> {
        let Some(btfs) = find_tool("btfs") else {
            for section in [Section::Cold, Section::Ttfb, Section::Memory] {
                report.add(
                    section,
                    "btfs",
                    "not installed".into(),
                    "apt-get install -y btfs".into(),
                );
            }
            return Ok(());
        };
        let tool = tool_version("btfs");
        report.settle()?;
        let mount = self.mount_btfs(&btfs)?;
        let read = read_whole(&mount.path().join(&self.payload.name), READ_LEN);
        let rss = mount.peak_rss_bytes();
        let _ = mount.stop();
        match read {
            Ok(read) => {
                let verify = if read.sha1 == self.payload.sha1 {
                    "OK"
                } else {
                    "MISMATCH"
                };
                report.add(
                    Section::Cold,
                    &format!("{tool} cold read through its mount"),
                    format!("{:.0} MiB/s", mib_per_s(read.len_bytes, read.total)),
                    format!(
                        "SHA-1 {verify}, first 64 KiB after {:.0} ms",
                        ms(read.first_bytes)
                    ),
                );
                report.add(
                    Section::Memory,
                    &tool,
                    rss.map_or("?".into(), |b| format!("{:.0} MiB", b as f64 / MIB as f64)),
                    "VmHWM after reading 1 GiB; no cache limit".into(),
                );
            }
            Err(err) => report.failed(Section::Cold, &tool, &format!("{err:#}")),
        }
        bail_if_interrupted()?;
        report.settle()?;
        let mount = self.mount_btfs(&btfs)?;
        let ttfb = self.random_reads(&mount, &mut Vec::new());
        let _ = mount.stop();
        self.report_ttfb(report, &tool, ttfb);
        Ok(())
    }

    /// Section 2 for swarmfs: random-offset reads on a fresh mount, compared with the
    /// payload; with `SWARMFS_BENCH_COMPARE`, the same offsets again on a fresh mount of the
    /// other build.
    fn ttfb_swarmfs(&self, report: &mut Report, failures: &mut Vec<String>) -> Result<()> {
        let mut builds = vec![("swarmfs mount".to_string(), self.swarmfs.to_path_buf())];
        if let Some(other) = other_build() {
            builds.push((format!("swarmfs build {}", other.display()), other));
        }
        for (tool, binary) in builds {
            report.settle()?;
            let mount = self.mount_with(&binary, CACHE_SIZES[0])?;
            let ttfb = self.random_reads(&mount, failures);
            mount.stop()?;
            self.report_ttfb(report, &tool, ttfb);
        }
        Ok(())
    }

    /// `TTFB_READS` reads of 64 KiB at seeded random offsets, each on a fresh open;
    /// returns the latencies. Bytes that differ from the payload become failures.
    fn random_reads(&self, mount: &Mount, failures: &mut Vec<String>) -> Result<Vec<Duration>> {
        // As a user who mounts, then opens a file: the swarm has had a moment to connect
        // (aria2 seeders unchoke a newcomer only after ~0.5 s).
        std::thread::sleep(TTFB_SETTLE);
        let file = mount.path().join(&self.payload.name);
        let original = fs::File::open(&self.payload.file)?;
        let mut rng = SplitMix64(0x77fb);
        let mut latencies = Vec::new();
        for _ in 0..TTFB_READS {
            let offset = rng.below(self.payload.size_bytes - READ_LEN as u64);
            let (got, took) = timed_read_at(&file, offset, READ_LEN)?;
            let mut want = vec![0u8; READ_LEN];
            original.read_exact_at(&mut want, offset)?;
            if got != want {
                failures.push(format!(
                    "{}: 64 KiB at {offset} differ from the payload",
                    file.display()
                ));
            }
            latencies.push(took);
            bail_if_interrupted()?;
        }
        Ok(latencies)
    }

    fn report_ttfb(&self, report: &mut Report, tool: &str, latencies: Result<Vec<Duration>>) {
        match latencies {
            Ok(l) => match Spread::of(&l) {
                Some(spread) => report.add(
                    Section::Ttfb,
                    tool,
                    spread.to_string(),
                    format!(
                        "fresh mount, reads from {} s after mounting; the first ({:.0} ms) also reads the file's head and tail",
                        TTFB_SETTLE.as_secs(),
                        ms(l[0])
                    ),
                ),
                None => report.add(Section::Ttfb, tool, "no reads".into(), String::new()),
            },
            Err(err) => report.failed(Section::Ttfb, tool, &format!("{err:#}")),
        }
    }

    /// Section 2's yardstick: one whole piece requested straight from a seeder over the
    /// peer wire (all 64 blocks at once, on a connection that is already unchoked), timed
    /// to its SHA-1 check as the mount's reads are; the time to its last block is noted.
    fn one_piece(&self, seeders: &[Seeder], report: &mut Report) -> Result<()> {
        let bytes = fs::read(self.torrent)?;
        let meta = Metainfo::from_bytes(&bytes).context("our own .torrent does not parse")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        for seeder in seeders {
            report.settle()?;
            let tool = format!("one 1 MiB piece straight from the {} seeder", seeder.client);
            let fetched = runtime.block_on(async {
                tokio::time::timeout(WIRE_DEADLINE, fetch_pieces(seeder.addr, &meta))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {WIRE_DEADLINE:?}")))
            });
            match fetched {
                Ok(times) => report.add(
                    Section::Ttfb,
                    &tool,
                    Spread::of(&times.to_verified).map_or(String::new(), |s| s.to_string()),
                    format!(
                        "{WIRE_PIECES} pieces, request to verified (hashed as blocks come); {WIRE_PIECES} more to the last block, unhashed: {}; connect to unchoke {:.1} ms",
                        Spread::of(&times.to_last_block).map_or(String::new(), |s| s.to_string()),
                        ms(times.ready)
                    ),
                ),
                Err(err) => report.failed(Section::Ttfb, &tool, &format!("{err:#}")),
            }
            bail_if_interrupted()?;
        }
        Ok(())
    }

    /// Section 3's yardstick: the same bytes from tmpfs (page-cache speed).
    fn dev_shm(&self, report: &mut Report) -> Result<()> {
        let shm = tempfile::Builder::new()
            .prefix("swarmfs-bench-")
            .tempfile_in("/dev/shm")?;
        fs::copy(&self.payload.file, shm.path())?;
        report.settle()?;
        let size = self.payload.size_bytes;
        // One untimed pass first, as the mount's re-read follows a full read too.
        time_read(shm.path(), 0, size)?;
        let tail = time_read(shm.path(), size - REREAD_TAIL_BYTES, REREAD_TAIL_BYTES)?;
        report.add(
            Section::Cached,
            "/dev/shm: the same last 128 MiB",
            format!("{:.0} MiB/s", mib_per_s(REREAD_TAIL_BYTES, tail)),
            "tmpfs".into(),
        );
        let whole = time_read(shm.path(), 0, size)?;
        report.add(
            Section::Cached,
            "/dev/shm: the same whole 1 GiB",
            format!("{:.0} MiB/s", mib_per_s(size, whole)),
            "tmpfs".into(),
        );
        Ok(())
    }

    fn mount_swarmfs(&self, cache: &str) -> Result<Mount> {
        self.mount_with(self.swarmfs, cache)
    }

    fn mount_with(&self, swarmfs: &Path, cache: &str) -> Result<Mount> {
        let ip = client_ip();
        Mount::start(
            swarmfs,
            self.torrent,
            &[
                "--cache-size".into(),
                cache.into(),
                "--listen".into(),
                format!("{ip}:{}", free_port(ip)),
            ],
        )
    }

    /// btfs in the foreground with a fresh data directory (it keeps what it downloads
    /// there, so a reused one would not be cold).
    fn mount_btfs(&self, btfs: &Path) -> Result<Mount> {
        let data = tempfile::Builder::new()
            .prefix("btfs-data-")
            .tempdir_in(self.work)?
            .keep();
        let port = free_port(Ipv4Addr::LOCALHOST).to_string();
        let mut mount = Mount::spawn("btfs", |mnt| {
            let mut cmd = Command::new(btfs);
            cmd.arg("-f")
                .arg(format!("--data-directory={}", data.display()))
                .arg(format!("--min-port={port}"))
                .arg(format!("--max-port={port}"))
                .arg(self.torrent)
                .arg(mnt);
            cmd
        })?;
        mount.wait_for_entry(&self.payload.name)?;
        Ok(mount)
    }
}

// ---- small helpers ----

static NEXT_CLIENT_HOST: std::sync::atomic::AtomicU8 =
    std::sync::atomic::AtomicU8::new(FIRST_CLIENT_HOST);

/// A loopback address of its own for the next leecher or mount (127.0.0.10, .11, ...).
fn client_ip() -> Ipv4Addr {
    let host = NEXT_CLIENT_HOST.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ipv4Addr::new(127, 0, 0, host)
}

/// `name` on PATH (or in ~/.cargo/bin, where `cargo install` puts it).
fn find_tool(name: &str) -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").join("bin"));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// "aria2 1.36.0", "python-libtorrent 2.0.8.0", ...: the name and version of a tool.
fn tool_version(client: &str) -> String {
    let version = match client {
        "aria2" => command_line("aria2c", &["--version"])
            .split_whitespace()
            .nth(2)
            .map(str::to_string),
        "libtorrent" => Some(command_line(
            "/usr/bin/python3",
            &["-c", "import libtorrent; print(libtorrent.version)"],
        )),
        "rqbit" => find_tool("rqbit").map(|r| command_line(&r.to_string_lossy(), &["--version"])),
        "btfs" => Some(command_line(
            "dpkg-query",
            &["-W", "-f", "${Version}", "btfs"],
        )),
        _ => None,
    };
    let name = if client == "libtorrent" {
        "python-libtorrent"
    } else {
        client
    };
    match version {
        Some(v) if !v.is_empty() => format!("{name} {}", v.trim_start_matches(name).trim()),
        _ => name.to_string(),
    }
}

/// The first line a command prints, or "?".
fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into())
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}
