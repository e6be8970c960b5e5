//! Section 5: a real player seeking in a moov-at-end MP4 through a cold mount. The movie
//! is the media corpus of `tests/media/gen-media.sh` (the tests' cached copy under
//! `target/tmp/media-corpus-*/` if there is one, else made once under
//! `target/bench-data/media`), served by one `swarmfs seed --no-dht` on loopback.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::common::net::free_port;
use crate::common::process::run;
use crate::common::{Mount, OwnedChild, Spread, bail_if_interrupted, ms};
use crate::report::{Report, Section};
use crate::{client_ip, find_tool};

/// The movie: 36 s (gen-media.sh's DUR), moov atom at the end.
const MOVIE: &str = "movie-moovend.mp4";
const MOVIE_SECONDS: f64 = 36.0;
/// Seek targets: the middles of five equal slices of the movie.
const SEEKS: usize = 5;
/// The torrent's name (the directory gen-media.sh fills) and its pieces, as in the tests.
const NAME: &str = "media";
const PIECE_SIZE: &str = "256KiB";

/// Hang bounds: gen-media.sh takes ~15 s here; the seeder hashes ~390 MiB in seconds;
/// one seek or start-up takes well under a second.
const GENERATE_DEADLINE: Duration = Duration::from_secs(600);
const SEED_READY_DEADLINE: Duration = Duration::from_secs(120);
const TOOL_DEADLINE: Duration = Duration::from_secs(120);

/// Section 5 for ffmpeg and mpv, each skipped as "not installed" if missing.
pub fn seek_section(swarmfs: &Path, target: &Path, work: &Path, report: &mut Report) -> Result<()> {
    let tools = ["ffmpeg", "mpv"].map(find_tool);
    if tools.iter().all(Option::is_none) {
        for name in ["ffmpeg", "mpv"] {
            report.add(Section::Seek, name, "not installed".into(), String::new());
        }
        return Ok(());
    }
    let (root, torrent) = corpus(swarmfs, target)?;
    let ip = client_ip();
    let mut seeder = OwnedChild::spawn(
        Command::new(swarmfs)
            .args([
                "seed",
                "--no-dht",
                "--listen",
                &format!("{ip}:{}", free_port(ip)),
            ])
            .arg(&torrent)
            .arg(&root)
            .env("RUST_LOG", "warn"),
        "swarmfs seed",
        &work.join("media-seed.log"),
    )?;
    // "swarmfs: seeding NAME (HASH) on IP:PORT": the port may have moved if it was taken.
    let peer = seeder.wait_for_log(SEED_READY_DEADLINE, |log| {
        log.lines()
            .find(|l| l.starts_with("swarmfs: seeding"))
            .and_then(|l| l.rsplit(" on ").next())
            .map(str::to_string)
    })?;
    let original = root.join(NAME).join(MOVIE);
    let bench = Player {
        swarmfs,
        torrent: &torrent,
        peer: &peer,
        original: &original,
    };
    let [ffmpeg, mpv] = tools;
    match ffmpeg {
        Some(ffmpeg) => {
            if let Err(err) = bench.ffmpeg_seeks(&ffmpeg, report) {
                report.failed(Section::Seek, "ffmpeg", &format!("{err:#}"));
            }
        }
        None => report.add(
            Section::Seek,
            "ffmpeg",
            "not installed".into(),
            String::new(),
        ),
    }
    bail_if_interrupted()?;
    match mpv {
        Some(mpv) => {
            if let Err(err) = bench.mpv_start(&mpv, report) {
                report.failed(Section::Seek, "mpv", &format!("{err:#}"));
            }
        }
        None => report.add(Section::Seek, "mpv", "not installed".into(), String::new()),
    }
    seeder.stop(libc::SIGINT, Duration::from_secs(10));
    Ok(())
}

/// The corpus root (holding `media/`) and its .torrent: the tests' cached copy if one is
/// complete, else generated once under `target/bench-data/media`.
fn corpus(swarmfs: &Path, target: &Path) -> Result<(PathBuf, PathBuf)> {
    let cached = fs::read_dir(target.join("tmp"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("media-corpus-"))
                && p.join("complete").exists()
        });
    let root = cached.unwrap_or_else(|| target.join("bench-data").join("media"));
    let torrent = root.join(format!("{NAME}.torrent"));
    if !root.join("complete").exists() {
        println!(
            "generating the media corpus under {} (once)",
            root.display()
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/media/gen-media.sh");
        let out = run(
            Command::new(script).arg(&root),
            GENERATE_DEADLINE,
            "gen-media.sh",
        );
        if !out.status.success() {
            bail!("gen-media.sh failed: {out}");
        }
        let out = run(
            Command::new(swarmfs)
                .arg("create")
                .arg(root.join(NAME))
                .arg("-o")
                .arg(&torrent)
                .args(["--piece-size", PIECE_SIZE]),
            GENERATE_DEADLINE,
            "swarmfs create",
        );
        if !out.status.success() {
            bail!("swarmfs create failed: {out}");
        }
        fs::write(root.join("complete"), b"")?;
    }
    Ok((root, torrent))
}

struct Player<'a> {
    swarmfs: &'a Path,
    torrent: &'a Path,
    peer: &'a str,
    original: &'a Path,
}

impl Player<'_> {
    /// `ffmpeg -ss T -i FILE -frames:v 1 -f null -` at `SEEKS` positions, each on a fresh
    /// mount (cold: the time includes fetching the moov atom and the frames), then on disk.
    fn ffmpeg_seeks(&self, ffmpeg: &Path, report: &mut Report) -> Result<()> {
        let command = |file: &Path, at: f64| {
            let mut cmd = Command::new(ffmpeg);
            cmd.args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-ss",
                &format!("{at:.1}"),
            ])
            .arg("-i")
            .arg(file)
            .args(["-frames:v", "1", "-f", "null", "-"]);
            cmd
        };
        let positions: Vec<f64> = (0..SEEKS)
            .map(|i| (i as f64 + 0.5) * MOVIE_SECONDS / SEEKS as f64)
            .collect();
        let list = positions
            .iter()
            .map(|p| format!("{p:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        let tool = "ffmpeg -ss T -i FILE -frames:v 1 -f null -";
        report.settle()?;
        let mut cold = Vec::new();
        for &at in &positions {
            let mount = self.mount()?;
            let took = timed(&mut command(&mount.path().join(NAME).join(MOVIE), at));
            mount.stop()?;
            cold.push(took?);
            bail_if_interrupted()?;
        }
        self.add(
            report,
            &format!("{tool}, fresh swarmfs mount per T"),
            &cold,
            &list,
        );
        let disk: Result<Vec<Duration>> = positions
            .iter()
            .map(|&at| timed(&mut command(self.original, at)))
            .collect();
        self.add(
            report,
            &format!("{tool}, original file on disk"),
            &disk?,
            &list,
        );
        Ok(())
    }

    /// mpv's start-up to the first frame (wall time of the whole process): fresh mount,
    /// then the original file.
    fn mpv_start(&self, mpv: &Path, report: &mut Report) -> Result<()> {
        let command = |file: &Path| {
            let mut cmd = Command::new(mpv);
            cmd.args(["--no-config", "--vo=null", "--ao=null", "--frames=1"])
                .arg(file);
            cmd
        };
        let tool = "mpv --no-config --vo=null --ao=null --frames=1 FILE";
        report.settle()?;
        let mount = self.mount()?;
        let took = timed(&mut command(&mount.path().join(NAME).join(MOVIE)));
        mount.stop()?;
        report.add(
            Section::Seek,
            &format!("{tool}, fresh swarmfs mount"),
            format!("{:.0} ms", ms(took?)),
            "wall time, process start to exit after the first frame".into(),
        );
        let took = timed(&mut command(self.original))?;
        report.add(
            Section::Seek,
            &format!("{tool}, original file on disk"),
            format!("{:.0} ms", ms(took)),
            "wall time".into(),
        );
        Ok(())
    }

    fn mount(&self) -> Result<Mount> {
        let ip = client_ip();
        Mount::start(
            self.swarmfs,
            self.torrent,
            &[
                "--peer".into(),
                self.peer.into(),
                "--listen".into(),
                format!("{ip}:{}", free_port(ip)),
            ],
        )
    }

    fn add(&self, report: &mut Report, tool: &str, times: &[Duration], positions: &str) {
        let Some(spread) = Spread::of(times) else {
            return;
        };
        report.add(
            Section::Seek,
            tool,
            format!(
                "median {:.0} ms, max {:.0} ms",
                ms(spread.median),
                ms(spread.max)
            ),
            format!("T = {positions} s of {MOVIE_SECONDS:.0} s; moov atom at the end"),
        );
    }
}

/// Runs `cmd` to completion; its wall time, or an error if it fails. Polls every
/// millisecond (not `process::run`'s 50 ms), since these take a few hundred ms.
fn timed(cmd: &mut Command) -> Result<Duration> {
    let stderr = tempfile::tempfile()?;
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr.try_clone()?)
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > TOOL_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?}: no exit within {TOOL_DEADLINE:?}");
        }
        sleep(Duration::from_millis(1));
    };
    let took = started.elapsed();
    if !status.success() {
        let mut text = String::new();
        let _ = (&stderr).seek(SeekFrom::Start(0));
        let _ = (&stderr).read_to_string(&mut text);
        bail!("{cmd:?} failed ({status}): {}", text.trim());
    }
    Ok(took)
}
