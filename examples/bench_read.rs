//! The read benchmark of issue 6: `cargo run --release --example bench_read`.
//!
//! One 1 GiB single-file torrent in 1 MiB pieces (`tests/peers/make-torrent.sh`, kept
//! under `target/bench-data`), one opentracker and four real seeders on loopback
//! (aria2 on 127.0.0.2 and .4, python-libtorrent on .3 and .5), and in the same run:
//!
//! 1. cold sequential read: SHA-1 of the file through a fresh swarmfs mount (with
//!    `--cache-size` 256MiB and 64MiB), next to full downloads by aria2 and
//!    python-libtorrent (`tests/peers/leech.sh`), rqbit, and btfs's cold read through its
//!    own mount (each only if installed);
//! 2. time to first byte of 64 KiB at 20 random offsets on a fresh mount (swarmfs, btfs),
//!    next to the time one seeder takes to send one whole piece over the wire;
//! 3. cached re-read MiB/s, next to reading the same bytes from /dev/shm;
//! 4. peak RSS (VmHWM) of the mount next to its `--cache-size`.
//!
//! Prints a markdown table and writes it with the machine's description to
//! `target/bench-results/<date>.md`. Everything runs on loopback; everything it starts it
//! stops by PID, errors and Ctrl-C included. A tool that is missing is listed as
//! "not installed"; one that fails is listed with its error, and the run goes on.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde_bencode::value::Value;
use sha1::{Digest, Sha1};
use tokio_util::codec::Framed;

use swarmfs::metainfo::Metainfo;
use swarmfs::types::PeerId;
use swarmfs::wire::{
    BlockRequest, Handshake, Message, MessageCodec, read_handshake, write_handshake,
};

use common::net::free_port;
use common::process::{self, run};
use common::{
    KIB, MIB, Mount, OrphanGuard, SplitMix64, Spread, bail_if_interrupted, catch_interrupts, hex,
    interrupted, mib_per_s, ms, read_whole, swarmfs_binary, target_dir, time_read, timed_read_at,
};

/// The torrent: 1 GiB in 1 MiB pieces (1024 pieces), a typical large-file torrent.
const SIZE_MB: u64 = 1024;
const PIECE_KB: u64 = 1024;

/// The seeders, in start order; they get 127.0.0.2, .3, .4, .5.
const SEEDERS: [&str; 4] = ["aria2", "libtorrent", "aria2", "libtorrent"];
const FIRST_SEEDER_HOST: u8 = 2;
/// Leechers, mounts and rqbit each get their own address from 127.0.0.10 on, so that the
/// tracker never lists two programs under one IP.
const FIRST_CLIENT_HOST: u8 = 10;

/// The two cache sizes of the mount: 256 MiB (a quarter of the torrent) and 64 MiB
/// (the read-ahead ceiling's quarter-of-cache cap then limits read-ahead to 16 MiB).
const CACHE_SIZES: [&str; 2] = ["256MiB", "64MiB"];

/// Random-offset reads: how many, how long each (what a player or `file` asks first).
const TTFB_READS: usize = 20;
const READ_LEN: usize = 64 * KIB as usize;

/// Cached re-read: the last 128 MiB, half the 256 MiB cache, so it is surely still held.
const REREAD_TAIL_BYTES: u64 = 128 * MIB;

/// Pieces fetched straight from one seeder over the wire, for the one-piece time.
const WIRE_PIECES: usize = 5;
/// 16 KiB: the block size every client serves.
const BLOCK_LEN: u32 = 16 * 1024;

/// Hang bounds, not expectations: make-torrent.sh writes and hashes 1 GiB in ~15 s here;
/// a seeder starts (and is listed by the tracker) in seconds; the slowest full download
/// measured so far (aria2, ~100 MiB/s) takes ~10 s; btfs reads at ~18 MiB/s (~60 s).
const GENERATE_DEADLINE: Duration = Duration::from_secs(600);
const SEED_START_DEADLINE: Duration = Duration::from_secs(120);
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(300);
const WIRE_DEADLINE: Duration = Duration::from_secs(60);

/// Before each measurement: wait until other work uses at most 6% of the CPUs over half
/// a second (the lab's `wait_idle` threshold: 6 of 100 jiffies), for at most 2 minutes;
/// a run that had to start anyway says how busy the machine was.
const IDLE_SAMPLE: Duration = Duration::from_millis(500);
const IDLE_BUSY_SHARE: f64 = 0.06;
const IDLE_WAIT: Duration = Duration::from_secs(120);

/// Announce URL baked into the cached .torrent; each run writes its own copy with its
/// tracker's URL (the info dictionary, and so the info hash, stay the same).
const PLACEHOLDER_TRACKER: &str = "http://127.0.0.1:1/placeholder";

fn main() -> Result<()> {
    catch_interrupts();
    let result = run_bench();
    if result.is_err() && interrupted() {
        bail!("interrupted");
    }
    result
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

    let mut report = Report::default();
    let mut failures = Vec::new();
    let bench = Bench {
        swarmfs: &swarmfs,
        torrent: &torrent,
        payload: &payload,
        work: work.path(),
    };
    bench.cold_and_cached_swarmfs(&mut report, &mut failures)?;
    bench.downloads(&mut report)?;
    bench.btfs(&mut report)?;
    bench.ttfb_swarmfs(&mut report, &mut failures)?;
    bench.one_piece(&seeders[..2], &mut report)?;
    bench.dev_shm(&mut report)?;
    drop(seeders);
    drop(tracker);

    let markdown = report.to_markdown(&machine_description(&payload));
    println!("\n{markdown}");
    let results = target.join("bench-results");
    fs::create_dir_all(&results)?;
    let file = results.join(format!("{}.md", command_line("date", &["-u", "+%Y-%m-%d"])));
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

/// What every measurement needs.
struct Bench<'a> {
    swarmfs: &'a Path,
    torrent: &'a Path,
    payload: &'a Payload,
    work: &'a Path,
}

impl Bench<'_> {
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
                    report.add(Section::Cold, &tool, "failed".into(), format!("{err:#}"));
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

    /// Section 1 for the download clients: aria2 and python-libtorrent through leech.sh
    /// (whose MiB/s counts from client start to the last byte on disk), rqbit if installed.
    fn downloads(&self, report: &mut Report) -> Result<()> {
        for client in ["aria2", "libtorrent"] {
            report.settle()?;
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
            let tool = format!("{} full download", tool_version(client));
            if out.status.success() {
                report.add(
                    Section::Cold,
                    &tool,
                    format!("{} MiB/s", field("MBps=")),
                    format!(
                        "verify={}; leech.sh, client start to last byte on disk",
                        field("verify=")
                    ),
                );
            } else {
                report.add(
                    Section::Cold,
                    &tool,
                    "failed".into(),
                    last_line(&out.stderr),
                );
            }
            let _ = fs::remove_dir_all(&out_dir);
            let _ = fs::remove_dir_all(out_dir.with_extension("state"));
            bail_if_interrupted()?;
        }

        let Some(rqbit) = find_tool("rqbit") else {
            report.add(
                Section::Cold,
                "rqbit download",
                "not installed".into(),
                "cargo install rqbit".into(),
            );
            return Ok(());
        };
        let out_dir = self.work.join("leech-rqbit");
        report.settle()?;
        let started = Instant::now();
        let out = run(
            Command::new(&rqbit)
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
        let tool = format!("{} download", tool_version("rqbit"));
        if out.status.success() {
            let got = read_whole(&out_dir.join(&self.payload.name), READ_LEN).map(|r| r.sha1);
            let verify = if got.as_deref().ok() == Some(self.payload.sha1.as_str()) {
                "OK"
            } else {
                "FAIL"
            };
            report.add(
                Section::Cold,
                &tool,
                format!("{:.0} MiB/s", mib_per_s(self.payload.size_bytes, took)),
                format!("verify={verify}; process start to last byte on disk"),
            );
        } else {
            report.add(
                Section::Cold,
                &tool,
                "failed".into(),
                last_line(&out.stderr),
            );
        }
        let _ = fs::remove_dir_all(&out_dir);
        Ok(())
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
            Err(err) => report.add(Section::Cold, &tool, "failed".into(), format!("{err:#}")),
        }
        bail_if_interrupted()?;
        report.settle()?;
        let mount = self.mount_btfs(&btfs)?;
        let ttfb = self.random_reads(&mount, &mut Vec::new());
        let _ = mount.stop();
        self.report_ttfb(report, &tool, ttfb);
        Ok(())
    }

    /// Section 2 for swarmfs: random-offset reads on a fresh mount, compared with the payload.
    fn ttfb_swarmfs(&self, report: &mut Report, failures: &mut Vec<String>) -> Result<()> {
        report.settle()?;
        let mount = self.mount_swarmfs(CACHE_SIZES[0])?;
        let ttfb = self.random_reads(&mount, failures);
        mount.stop()?;
        self.report_ttfb(report, "swarmfs mount", ttfb);
        Ok(())
    }

    /// `TTFB_READS` reads of 64 KiB at seeded random offsets, each on a fresh open;
    /// returns the latencies. Bytes that differ from the payload become failures.
    fn random_reads(&self, mount: &Mount, failures: &mut Vec<String>) -> Result<Vec<Duration>> {
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
                        "fresh mount; the first read ({:.0} ms) also waits for the peers",
                        ms(l[0])
                    ),
                ),
                None => report.add(Section::Ttfb, tool, "no reads".into(), String::new()),
            },
            Err(err) => report.add(Section::Ttfb, tool, "failed".into(), format!("{err:#}")),
        }
    }

    /// Section 2's yardstick: one whole piece requested straight from a seeder over the
    /// peer wire (all 64 blocks at once, on a connection that is already unchoked).
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
                tokio::time::timeout(
                    WIRE_DEADLINE,
                    fetch_pieces(seeder.addr, &meta, &self.payload.file),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {WIRE_DEADLINE:?}")))
            });
            match fetched {
                Ok((ready, pieces)) => report.add(
                    Section::Ttfb,
                    &tool,
                    Spread::of(&pieces).map_or(String::new(), |s| s.to_string()),
                    format!(
                        "{WIRE_PIECES} pieces, request to verified; connect to unchoke {:.1} ms",
                        ms(ready)
                    ),
                ),
                Err(err) => report.add(Section::Ttfb, &tool, "failed".into(), format!("{err:#}")),
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
        let ip = client_ip();
        Mount::start(
            self.swarmfs,
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

/// Connects to `addr`, waits for the unchoke, then fetches `WIRE_PIECES` seeded-random
/// pieces one after the other, each as all its blocks requested at once, and checks each
/// against the payload. Returns the time to unchoke and each piece's request-to-last-block time.
async fn fetch_pieces(
    addr: SocketAddr,
    meta: &Metainfo,
    payload: &Path,
) -> Result<(Duration, Vec<Duration>)> {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    write_handshake(
        &mut stream,
        &Handshake::new(meta.info_hash, PeerId::generate()),
    )
    .await?;
    let theirs = read_handshake(&mut stream).await?;
    let mut wire = Framed::new(stream, MessageCodec::default());
    if theirs.supports_fast() {
        // BEP 6: with Fast on both sides, one of HaveAll/HaveNone/Bitfield must come first.
        wire.send(&Message::HaveNone).await?;
    }
    wire.send(&Message::Interested).await?;
    loop {
        match wire.next().await {
            Some(Ok(Message::Unchoke)) => break,
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
            None => bail!("{addr} closed the connection before unchoking us"),
        }
    }
    let ready = started.elapsed();

    let original = fs::File::open(payload)?;
    let mut rng = SplitMix64(0x91ece);
    let mut times = Vec::new();
    for _ in 0..WIRE_PIECES {
        let piece = u32::try_from(rng.below(u64::from(meta.piece_count())))?;
        let piece_len = meta.piece_length;
        let asked = Instant::now();
        for offset in (0..piece_len).step_by(BLOCK_LEN as usize) {
            let length = BLOCK_LEN.min(piece_len - offset);
            wire.feed(&Message::Request(BlockRequest {
                piece,
                offset,
                length,
            }))
            .await?;
        }
        SinkExt::<&Message>::flush(&mut wire).await?;
        let mut data = vec![0u8; piece_len as usize];
        let mut received = 0u32;
        while received < piece_len {
            match wire.next().await {
                Some(Ok(Message::Piece {
                    piece: p,
                    offset,
                    data: block,
                })) if p == piece => {
                    let start = offset as usize;
                    let end = start + block.len();
                    if end > data.len() {
                        bail!("{addr} sent a block past the end of piece {piece}");
                    }
                    data[start..end].copy_from_slice(&block);
                    received += u32::try_from(block.len())?;
                }
                Some(Ok(Message::Choke)) => bail!("{addr} choked us mid-piece"),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
                None => bail!("{addr} closed the connection mid-piece"),
            }
        }
        times.push(asked.elapsed());
        let mut want = vec![0u8; data.len()];
        original.read_exact_at(&mut want, u64::from(piece) * u64::from(piece_len))?;
        if hex(&Sha1::digest(&data)) != hex(&Sha1::digest(&want)) {
            bail!("piece {piece} from {addr} differs from the payload");
        }
    }
    Ok((ready, times))
}

// ---- the payload, the tracker, the seeders ----

/// make-torrent.sh's output, made once under `target/bench-data` and reused.
struct Payload {
    name: String,
    /// make-torrent's OUTDIR/data: contains `name`.
    data_dir: PathBuf,
    file: PathBuf,
    size_bytes: u64,
    /// Lower-case hex SHA-1 of the whole file.
    sha1: String,
    /// NAME.sha1sums, for leech.sh.
    sums: PathBuf,
    /// The cached .torrent (announcing to a placeholder) and its info hash.
    torrent: PathBuf,
    info_hash: String,
}

impl Payload {
    fn prepare(bench_data: &Path) -> Result<Payload> {
        let name = format!("payload-{SIZE_MB}M-{PIECE_KB}k");
        let out_dir = bench_data.join(&name);
        let complete = out_dir.join("complete");
        if !complete.exists() {
            println!("generating {name} under {} (once)", out_dir.display());
            let out = run(
                Command::new(peers_dir().join("make-torrent.sh"))
                    .arg(SIZE_MB.to_string())
                    .arg(PIECE_KB.to_string())
                    .arg(&out_dir)
                    .arg(PLACEHOLDER_TRACKER)
                    .env_remove("SEED"),
                GENERATE_DEADLINE,
                "make-torrent.sh",
            );
            if !out.status.success() {
                bail!("make-torrent.sh failed: {out}");
            }
            fs::write(&complete, b"")?;
        }
        let sums = out_dir.join(format!("{name}.sha1sums"));
        let sha1 = fs::read_to_string(&sums)?
            .split_whitespace()
            .next()
            .context("empty sha1sums")?
            .to_string();
        let data_dir = out_dir.join("data");
        let file = data_dir.join(&name);
        Ok(Payload {
            size_bytes: fs::metadata(&file)?.len(),
            info_hash: fs::read_to_string(out_dir.join(format!("{name}.infohash")))?
                .trim()
                .to_string(),
            torrent: out_dir.join(format!("{name}.torrent")),
            name,
            data_dir,
            file,
            sha1,
            sums,
        })
    }

    /// A copy of the .torrent in `dir` that announces to `url` (only the keys outside the
    /// info dictionary change; the info hash is checked to be the same).
    fn torrent_announcing(&self, url: &str, dir: &Path) -> Result<PathBuf> {
        let Value::Dict(mut top) = serde_bencode::from_bytes::<Value>(&fs::read(&self.torrent)?)?
        else {
            bail!("{} is not a bencoded dictionary", self.torrent.display());
        };
        top.remove(b"announce-list".as_slice());
        top.insert(b"announce".to_vec(), Value::Bytes(url.as_bytes().to_vec()));
        let bytes = serde_bencode::to_bytes(&Value::Dict(top))?;
        let info_hash = Metainfo::from_bytes(&bytes)?.info_hash.to_hex();
        if info_hash != self.info_hash {
            bail!(
                "rewriting the announce URL changed the info hash ({info_hash} != {})",
                self.info_hash
            );
        }
        let path = dir.join(format!("{}.torrent", self.name));
        fs::write(&path, bytes)?;
        Ok(path)
    }
}

/// opentracker on 127.0.0.1 through tracker.sh; killed by PID on drop.
struct Tracker {
    dir: PathBuf,
    port: u16,
    _process: OrphanGuard,
}

impl Tracker {
    fn start(dir: &Path) -> Result<Tracker> {
        let port = free_port(Ipv4Addr::LOCALHOST);
        let out = run(
            Command::new(peers_dir().join("tracker.sh"))
                .arg("start")
                .arg(dir)
                .arg(port.to_string())
                .arg("opentracker"),
            Duration::from_secs(30),
            "tracker.sh start",
        );
        if !out.status.success() {
            bail!("tracker.sh start failed: {out}");
        }
        let pid = fs::read_to_string(dir.join("tracker.pid"))?
            .trim()
            .parse()?;
        Ok(Tracker {
            dir: dir.to_path_buf(),
            port,
            _process: OrphanGuard {
                pid,
                what: "opentracker".into(),
            },
        })
    }

    fn announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// Debian's opentracker serves whitelisted info hashes only.
    fn allow(&self, torrent: &Path) -> Result<()> {
        let out = run(
            Command::new(peers_dir().join("tracker.sh"))
                .arg("allow")
                .arg(&self.dir)
                .arg(torrent),
            Duration::from_secs(30),
            "tracker.sh allow",
        );
        if !out.status.success() {
            bail!("tracker.sh allow failed: {out}");
        }
        Ok(())
    }
}

/// One real seeding client through seed.sh, on its own loopback IP; killed by PID on drop.
struct Seeder {
    client: &'static str,
    addr: SocketAddr,
    _process: OrphanGuard,
}

impl Seeder {
    fn start(
        client: &'static str,
        ip: Ipv4Addr,
        torrent: &Path,
        data_dir: &Path,
        state: &Path,
    ) -> Result<Seeder> {
        let port = free_port(ip);
        let out = run(
            Command::new(peers_dir().join("seed.sh"))
                .arg(client)
                .arg(torrent)
                .arg(data_dir)
                .arg(ip.to_string())
                .arg(port.to_string())
                .arg(state)
                .env_remove("LT_ARGS")
                .env_remove("SEED_CHECK")
                .env_remove("SEED_NOWAIT"),
            SEED_START_DEADLINE,
            "seed.sh",
        );
        let pid = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("PID ")?.trim().parse().ok());
        let Some(pid) = pid.filter(|_| out.status.success()) else {
            bail!("seed.sh {client} failed: {out}");
        };
        Ok(Seeder {
            client,
            addr: SocketAddr::from((ip, port)),
            _process: OrphanGuard {
                pid,
                what: format!("{client} seeder"),
            },
        })
    }
}

// ---- the report ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Cold,
    Ttfb,
    Cached,
    Memory,
}

impl Section {
    const ALL: [Section; 4] = [
        Section::Cold,
        Section::Ttfb,
        Section::Cached,
        Section::Memory,
    ];

    fn title(self) -> &'static str {
        match self {
            Section::Cold => "1. Cold sequential read of the 1 GiB file (MiB/s)",
            Section::Ttfb => "2. Time to first byte: 64 KiB at 20 random offsets (ms)",
            Section::Cached => "3. Cached re-read (MiB/s)",
            Section::Memory => "4. Peak RSS of the mount",
        }
    }
}

#[derive(Default)]
struct Report {
    rows: Vec<(Section, String, String, String)>,
    /// CPU share that other work used just before the current measurement.
    background_load: f64,
}

impl Report {
    /// Waits (up to `IDLE_WAIT`) until other work leaves both CPUs idle, as the lab's
    /// `wait_idle` does, and remembers the load it last saw for the rows that follow.
    fn settle(&mut self) -> Result<()> {
        let end = Instant::now() + IDLE_WAIT;
        loop {
            self.background_load = cpu_busy_share(IDLE_SAMPLE)?;
            if self.background_load <= IDLE_BUSY_SHARE || Instant::now() >= end {
                return Ok(());
            }
            bail_if_interrupted()?;
        }
    }

    fn add(&mut self, section: Section, tool: &str, result: String, mut note: String) {
        if self.background_load > IDLE_BUSY_SHARE {
            let _ = write!(
                note,
                "; other work used {:.0}% of the CPUs before this run",
                self.background_load * 100.0
            );
        }
        println!("{}: {tool}: {result} ({note})", section.title());
        self.rows.push((section, tool.to_string(), result, note));
    }

    fn to_markdown(&self, machine: &str) -> String {
        let mut md = format!("# bench_read\n\n{machine}\n");
        for section in Section::ALL {
            let _ = write!(
                md,
                "\n## {}\n\n| tool | result | note |\n|---|---|---|\n",
                section.title()
            );
            for (_, tool, result, note) in self.rows.iter().filter(|r| r.0 == section) {
                let _ = writeln!(md, "| {tool} | {result} | {} |", note.replace('|', "\\|"));
            }
        }
        md
    }
}

/// The header of the results: what was measured, where, with what.
fn machine_description(payload: &Payload) -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let commit = command_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    format!(
        "- date: {}\n- machine: {nproc} CPUs ({cpu}), kernel {}, all processes on this machine, loopback only\n\
         - swarmfs: commit {commit}\n\
         - torrent: {} ({} MiB, {} KiB pieces, info hash {}); opentracker; seeders: {}\n\
         - command: `cargo run --release --example bench_read`",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        kernel.trim(),
        payload.name,
        SIZE_MB,
        PIECE_KB,
        payload.info_hash,
        SEEDERS
            .iter()
            .map(|c| tool_version(c))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

// ---- small helpers ----

/// The share of all CPUs' time spent busy (not idle or iowait) over `sample`, from /proc/stat.
fn cpu_busy_share(sample: Duration) -> Result<f64> {
    fn jiffies() -> Result<(u64, u64)> {
        let stat = fs::read_to_string("/proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        let total: u64 = fields.iter().sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Ok((total - idle, total))
    }
    let (busy0, total0) = jiffies()?;
    std::thread::sleep(sample);
    let (busy1, total1) = jiffies()?;
    Ok((busy1 - busy0) as f64 / (total1 - total0).max(1) as f64)
}

static NEXT_CLIENT_HOST: std::sync::atomic::AtomicU8 =
    std::sync::atomic::AtomicU8::new(FIRST_CLIENT_HOST);

/// A loopback address of its own for the next leecher or mount (127.0.0.10, .11, ...).
fn client_ip() -> Ipv4Addr {
    let host = NEXT_CLIENT_HOST.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ipv4Addr::new(127, 0, 0, host)
}

/// The lab scripts the tests use too.
fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("peers")
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

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}
