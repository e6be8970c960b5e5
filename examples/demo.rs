//! The README demo: `cargo run --release --example demo [-- --hold]`.
//!
//! Builds a deterministic multi-file payload (a 200 MiB movie, a 30 MiB archive, small,
//! odd-sized, empty and non-ASCII-named files) in a temporary directory, makes its torrent
//! with `swarmfs create`, seeds it with `swarmfs seed` on 127.0.0.1, mounts it with
//! `swarmfs mount --peer`, lists the mount, reads 64 KiB at 8 random offsets while the
//! data is still cold, then every file from start to end, and checks every byte against
//! the originals by SHA-1. Prints time to first byte and MiB/s; exits non-zero if any check
//! fails. `--hold` keeps the mount until Ctrl-C so that a person can open the files.
//!
//! Everything it starts is stopped on the way out, errors and Ctrl-C included.

mod common;

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha1::{Digest, Sha1};

use common::{
    KIB, MIB, Mount, OwnedChild, SplitMix64, Spread, bail_if_interrupted, hex, interrupted,
    mib_per_s, ms, read_whole, swarmfs_binary, timed_read_at,
};

/// The torrent's name: the top directory in the mount.
const NAME: &str = "swarmfs-demo";

/// The payload: (path inside the torrent, length). Sizes straddle the 1 MiB pieces on
/// purpose (piece + 1, odd sizes), and one name is not ASCII.
const FILES: &[(&str, u64)] = &[
    ("movie.bin", 200 * MIB),
    ("archive.bin", 30 * MIB),
    ("docs/readme.txt", 1_234),
    ("docs/odd-size-100003.bin", 100_003),
    ("docs/piece-plus-one.bin", MIB + 1),
    ("empty.dat", 0),
    ("one-byte.bin", 1),
    ("música/canción-ünïcødé-名前.txt", 4_321),
];

/// 1 MiB pieces: the usual size for a torrent of a few hundred MiB.
const PIECE_SIZE: &str = "1MiB";

/// Reads at random offsets: how many, and how much each.
const RANDOM_READS: usize = 8;
const READ_LEN: usize = 64 * KIB as usize;

/// The seeder checks 230 MiB against the piece hashes before it listens: ~1 s here.
const SEED_READY_DEADLINE: Duration = Duration::from_secs(60);

/// One file of the payload as written to disk.
struct PayloadFile {
    rel: &'static str,
    len: u64,
    sha1: String,
    /// The original, to compare random reads with.
    source: PathBuf,
}

fn main() -> Result<()> {
    common::run_interruptible(run)
}

fn run() -> Result<()> {
    let hold = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--hold") => true,
        Some(other) => bail!("unknown argument {other:?}; usage: demo [--hold]"),
    };
    let swarmfs = swarmfs_binary()?;
    let work = tempfile::Builder::new().prefix("swarmfs-demo-").tempdir()?;
    let data_dir = work.path().join("data");

    let started = Instant::now();
    let files = write_payload(&data_dir.join(NAME))?;
    let total: u64 = files.iter().map(|f| f.len).sum();
    println!(
        "payload: {} files, {:.1} MiB, written in {:.1} s to {}",
        files.len(),
        total as f64 / MIB as f64,
        started.elapsed().as_secs_f64(),
        data_dir.display()
    );

    let torrent = work.path().join(format!("{NAME}.torrent"));
    let created = Command::new(&swarmfs)
        .arg("create")
        .arg(data_dir.join(NAME))
        .arg("-o")
        .arg(&torrent)
        .args(["--piece-size", PIECE_SIZE])
        .output()
        .context("cannot run swarmfs create")?;
    if !created.status.success() {
        bail!(
            "swarmfs create failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
    }
    print!("{}", String::from_utf8_lossy(&created.stderr));

    let port = common::net::free_port(Ipv4Addr::LOCALHOST);
    let mut seeder = OwnedChild::spawn(
        Command::new(&swarmfs)
            .arg("seed")
            // A loopback demo: no DHT, so nothing but 127.0.0.1 is ever contacted.
            .arg("--no-dht")
            .arg(&torrent)
            .arg(&data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn"),
        "swarmfs seed",
        &work.path().join("seed.log"),
    )?;
    // "swarmfs: seeding NAME (HASH) on IP:PORT": the port may have moved if it was taken.
    let seed_addr = seeder.wait_for_log(SEED_READY_DEADLINE, |log| {
        log.lines()
            .find(|l| l.starts_with("swarmfs: seeding"))
            .and_then(|l| l.rsplit(" on ").next())
            .map(str::to_string)
    })?;
    println!("seeder: swarmfs seed on {seed_addr} (pid {})", seeder.pid());

    let mount_started = Instant::now();
    let mount = Mount::start(
        &swarmfs,
        &torrent,
        &[
            "--peer".into(),
            seed_addr,
            "--listen".into(),
            common::net::fresh_addr(),
        ],
    )?;
    let root = mount.path().join(NAME);
    println!(
        "mounted: {} in {:.0} ms (pid {})\n",
        mount.path().display(),
        ms(mount_started.elapsed()),
        mount.pid()
    );

    let mut failures = Vec::new();
    print_tree(&root, &root, &mut failures)?;
    check_listing(&root, &files, &mut failures);
    random_reads(&root, &files, &mut failures)?;
    sequential_reads(&root, &files, &mut failures)?;

    if hold && failures.is_empty() {
        println!(
            "\nholding: the torrent is mounted at {}\nopen its files, then press Ctrl-C to unmount",
            root.display()
        );
        while !interrupted() {
            sleep(Duration::from_millis(100));
        }
        println!();
    }
    mount.stop().context("unmounting")?;
    seeder.stop(libc::SIGINT, Duration::from_secs(10));
    println!("unmounted and stopped the seeder");
    if !failures.is_empty() {
        bail!(
            "{} check(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    println!("all checks passed");
    Ok(())
}

/// Writes every file of `FILES` under `top`, returning their lengths and SHA-1.
/// Text files get readable lines, the rest seeded pseudo-random bytes.
fn write_payload(top: &Path) -> Result<Vec<PayloadFile>> {
    let mut out = Vec::new();
    for (index, &(rel, len)) in FILES.iter().enumerate() {
        let path = top.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
        let mut hasher = Sha1::new();
        let mut rng = SplitMix64(0x5eed_0000 + index as u64);
        let mut buf = vec![0u8; common::READ_CHUNK_BYTES];
        let mut written = 0u64;
        let text = rel.ends_with(".txt");
        while written < len {
            let n = (len - written).min(buf.len() as u64) as usize;
            if text {
                fill_text(&mut buf[..n], rel, written);
            } else {
                rng.fill(&mut buf[..n]);
            }
            file.write_all(&buf[..n])?;
            hasher.update(&buf[..n]);
            written += n as u64;
            bail_if_interrupted()?;
        }
        out.push(PayloadFile {
            rel,
            len,
            sha1: hex(&hasher.finalize()),
            source: path,
        });
    }
    Ok(out)
}

/// Readable lines for the text files, so that `cat` through the mount shows something.
fn fill_text(buf: &mut [u8], rel: &str, file_offset: u64) {
    let line = format!("{rel}: these bytes came from a peer and passed their SHA-1 check\n");
    let line = line.as_bytes();
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte = line[((file_offset + i as u64) % line.len() as u64) as usize];
    }
}

/// Prints the mount's tree with sizes, depth first, names sorted.
fn print_tree(root: &Path, dir: &Path, failures: &mut Vec<String>) -> Result<()> {
    if dir == root {
        println!("{}/", root.display());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = entry.metadata()?;
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if meta.is_dir() {
            println!("  {:>12}  {rel}/", "");
            print_tree(root, &path, failures)?;
        } else if meta.is_file() {
            println!("  {:>12}  {rel}", size_text(meta.len()));
        } else {
            failures.push(format!("{rel}: neither a file nor a directory"));
        }
    }
    Ok(())
}

/// Every payload file is in the mount with its size.
fn check_listing(root: &Path, files: &[PayloadFile], failures: &mut Vec<String>) {
    for f in files {
        match std::fs::metadata(root.join(f.rel)) {
            Ok(meta) if meta.is_file() && meta.len() == f.len => {}
            Ok(meta) => failures.push(format!(
                "{}: size {} in the mount, {} on disk",
                f.rel,
                meta.len(),
                f.len
            )),
            Err(err) => failures.push(format!("{}: not in the mount ({err})", f.rel)),
        }
    }
}

/// 64 KiB at random offsets of the large files, while nothing is cached: each read has to
/// wait for its piece. Compared byte for byte with the originals.
fn random_reads(root: &Path, files: &[PayloadFile], failures: &mut Vec<String>) -> Result<()> {
    let large: Vec<&PayloadFile> = files.iter().filter(|f| f.len >= 16 * MIB).collect();
    let mut rng = SplitMix64(0xd1ce);
    let mut latencies = Vec::new();
    println!("\nrandom reads ({RANDOM_READS} × 64 KiB, cold):");
    for i in 0..RANDOM_READS {
        let Some(f) = large.get(i % large.len().max(1)) else {
            break;
        };
        let offset = rng.below(f.len - READ_LEN as u64);
        let (got, took) = timed_read_at(&root.join(f.rel), offset, READ_LEN)?;
        let mut want = vec![0u8; READ_LEN];
        File::open(&f.source)?.read_exact_at(&mut want, offset)?;
        let ok = got == want;
        if !ok {
            failures.push(format!(
                "{} at {offset}: bytes differ from the original",
                f.rel
            ));
        }
        println!(
            "  {:<12} @ {:>10}  {:>8.1} ms  {}",
            f.rel,
            offset,
            ms(took),
            if ok { "ok" } else { "MISMATCH" }
        );
        latencies.push(took);
        bail_if_interrupted()?;
    }
    if let Some(spread) = Spread::of(&latencies) {
        println!("  time to first byte at a random offset: {spread}");
    }
    Ok(())
}

/// Every file from start to end: time to its first 64 KiB, MiB/s, SHA-1.
fn sequential_reads(root: &Path, files: &[PayloadFile], failures: &mut Vec<String>) -> Result<()> {
    println!("\nsequential reads (whole files, SHA-1 checked):");
    println!(
        "  {:<34} {:>10} {:>14} {:>9}  sha1",
        "file", "size", "first 64 KiB", "MiB/s"
    );
    let (mut bytes, mut time) = (0u64, Duration::ZERO);
    for f in files {
        let read = read_whole(&root.join(f.rel), READ_LEN)?;
        let ok = read.sha1 == f.sha1 && read.len_bytes == f.len;
        if !ok {
            failures.push(format!(
                "{}: read {} bytes with SHA-1 {}, expected {} bytes with {}",
                f.rel, read.len_bytes, read.sha1, f.len, f.sha1
            ));
        }
        println!(
            "  {:<34} {:>10} {:>11.1} ms {:>9.1}  {}",
            f.rel,
            size_text(f.len),
            ms(read.first_bytes),
            mib_per_s(read.len_bytes, read.total),
            if ok { "ok" } else { "MISMATCH" }
        );
        bytes += read.len_bytes;
        time += read.total;
    }
    println!(
        "  overall: {:.1} MiB in {:.2} s = {:.1} MiB/s",
        bytes as f64 / MIB as f64,
        time.as_secs_f64(),
        mib_per_s(bytes, time)
    );
    Ok(())
}

fn size_text(len: u64) -> String {
    match len {
        l if l >= MIB => format!("{:.1} MiB", l as f64 / MIB as f64),
        l if l >= KIB => format!("{:.1} KiB", l as f64 / KIB as f64),
        l => format!("{l} B"),
    }
}
