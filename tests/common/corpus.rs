//! Generated media/archive corpora (`tests/media/*.sh`) and the torrents made of them,
//! plus running a tool on a corpus file both on disk and through a mount, comparing what
//! it prints.
//!
//! A corpus is made once per version of its script (the directory name carries the
//! script's SHA-1), under `temp_root()` and a file lock, and shared by every test and test
//! binary (seeders only read it). Its torrent is made once per piece size beside it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::fixture::sha1_bytes;
use super::harness::{flock_file, temp_root};
use super::mount::MountGuard;
use super::process::{RunOutput, run_ok};

/// The slowest generator (tests/media/gen-media.sh) takes ~15 s here, x264 most of it;
/// this bounds a hang on a slow disk. `swarmfs create` of ~390 MiB takes a few seconds.
const GENERATE_DEADLINE: Duration = Duration::from_secs(240);

/// One tool on one file: the slowest in the tests (bsdtar -tf of a 70 MiB zip reads it
/// all, mpv plays 1 s in real time) take seconds; a hang bound, not a speed test.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(120);

/// A generated corpus and its torrent.
pub struct Corpus {
    /// The torrent's name: the directory the script fills, and the mount's top entry.
    pub name: String,
    /// Holds `name/` (the payload: what `swarmfs seed` is given) and whatever else the
    /// script made beside it.
    pub root: PathBuf,
    pub torrent: PathBuf,
}

impl Corpus {
    /// Runs `tests/media/SCRIPT ROOT` unless its output for this version of the script is
    /// there, then `swarmfs create ROOT/NAME --piece-size PIECE_SIZE` unless that torrent
    /// is there. ROOT is `temp_root()/NAME-corpus-HASH`.
    pub fn generate(script: &str, name: &str, piece_size: &str) -> Corpus {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/media")
            .join(script);
        let version = sha1_bytes(&fs::read(&script).expect("read the corpus script"));
        let root = temp_root().join(format!("{name}-corpus-{}", &version[..12]));
        let torrent = root.join(format!("{name}-{piece_size}.torrent"));
        let _lock = flock_file(
            &temp_root().join(format!("{name}-corpus.lock")),
            GENERATE_DEADLINE * 2,
        );
        let complete = root.join("complete");
        if !complete.exists() {
            let _ = fs::remove_dir_all(&root);
            run_ok(
                Command::new(&script).arg(&root),
                GENERATE_DEADLINE,
                &script.display().to_string(),
            );
            fs::write(&complete, b"").expect("mark corpus complete");
        }
        if !torrent.exists() {
            let part = torrent.with_extension("torrent.part");
            run_ok(
                Command::new(env!("CARGO_BIN_EXE_swarmfs"))
                    .arg("create")
                    .arg(root.join(name))
                    .arg("-o")
                    .arg(&part)
                    .args(["--piece-size", piece_size]),
                GENERATE_DEADLINE,
                "swarmfs create",
            );
            fs::rename(&part, &torrent).expect("rename the new torrent");
        }
        Corpus {
            name: name.to_owned(),
            root,
            torrent,
        }
    }

    /// The original files.
    pub fn payload(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    pub fn file_len(&self, file: &str) -> u64 {
        fs::metadata(self.payload().join(file))
            .unwrap_or_else(|e| panic!("stat {file}: {e}"))
            .len()
    }

    /// Runs `argv` on the original files and through the mount; asserts the same stdout
    /// (normalized) and returns it. On a difference, shows the first line that differs.
    ///
    /// Every command runs with the file's directory as its working directory and the
    /// file's bare name, so that the paths tools print (ffprobe's `filename`, unzip's
    /// `Archive:`, 7z's `Path =`) are the same on both sides; what still names a directory
    /// is replaced by `<DIR>`.
    pub fn assert_same_output(&self, mount: &MountGuard, argv: &[&str]) -> String {
        let original = self.payload();
        let mounted = mount.path().join(&self.name);
        let want = normalize(&tool(&original, argv).stdout, &original);
        let started = Instant::now();
        let got = normalize(&tool(&mounted, argv).stdout, &mounted);
        eprintln!(
            "{}: {:.2?} through the mount",
            argv.join(" "),
            started.elapsed()
        );
        if want != got {
            let (want_lines, got_lines): (Vec<&str>, Vec<&str>) =
                (want.lines().collect(), got.lines().collect());
            let first = want_lines
                .iter()
                .zip(&got_lines)
                .position(|(w, g)| w != g)
                .unwrap_or(want_lines.len().min(got_lines.len()));
            panic!(
                "`{}` prints something else through the mount: {} lines on the original, {} \
                 through the mount; first difference at line {}:\n  original: {:?}\n  mount:    {:?}",
                argv.join(" "),
                want_lines.len(),
                got_lines.len(),
                first + 1,
                want_lines.get(first),
                got_lines.get(first)
            );
        }
        assert!(
            !want.trim().is_empty(),
            "`{}` printed nothing: the comparison would prove nothing",
            argv.join(" ")
        );
        want
    }
}

/// Runs `argv` in `dir` (C locale, UTC) under `TOOL_DEADLINE`; panics unless it exits 0.
pub fn tool(dir: &Path, argv: &[&str]) -> RunOutput {
    let (program, args) = argv.split_first().expect("a command");
    run_ok(
        Command::new(program)
            .args(args)
            .current_dir(dir)
            .env("LC_ALL", "C.UTF-8")
            .env("TZ", "UTC"),
        TOOL_DEADLINE,
        &format!("{} in {}", argv.join(" "), dir.display()),
    )
}

/// `text` with `dir` (and its parent, the mount point or the corpus root) replaced by
/// `<DIR>`: all that may legitimately differ between the two runs of a command.
fn normalize(text: &str, dir: &Path) -> String {
    let parent = dir.parent().unwrap_or(dir);
    text.replace(&*dir.to_string_lossy(), "<DIR>")
        .replace(&*parent.to_string_lossy(), "<DIR>")
}
