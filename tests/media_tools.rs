//! Issue 6: real media players and archive tools through a real mount. ffprobe, ffmpeg,
//! mpv, unzip, 7z, bsdtar and isoinfo read files of a media/archive corpus
//! (`tests/media/gen-media.sh`, a small copy of the lab's) served by `swarmfs seed` over
//! loopback, and must print exactly what they print for the original files. Two more
//! tests count the pieces one command makes the mount fetch (`pieces_fetched` of the
//! `session totals` line logged at shutdown): listing a zip or probing a moov-at-end MP4
//! must fetch a handful of pieces, not the file.
//!
//! Every command runs in the file's directory on its bare name (`Corpus::assert_same_output`).
//! Every test runs inside `harness::fuse_test` (heavy-test lock, overall deadline, nothing
//! left behind) and asserts correctness only.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::fs;
use std::time::Duration;

use common::checks::{session_pieces_fetched, stop_cleanly};
use common::corpus::Corpus;
use common::fixture::sha1_bytes;
use common::harness::fuse_test;
use common::mount::MountGuard;
use common::swarmfs::SwarmfsSeed;

/// Overall deadline of one test. Working, each takes 5–30 s (corpus cached, a seeder's
/// hash check of ~390 MiB, tools that read a few MiB; the first test also generates the
/// corpus, ~15 s here); this only stops hangs.
const TEST_LIMIT: Duration = Duration::from_secs(300);

/// 256 KiB pieces: ~1,560 for the ~390 MiB corpus, ~280 for each 70 MiB file.
const PIECE_SIZE: &str = "256KiB";
const PIECE_BYTES: u64 = 256 * 1024;

/// The torrent's name: the directory gen-media.sh fills, and the mount's top entry.
const NAME: &str = "media";

/// Members of the archives compared byte for byte (paths inside the archive and in tree/):
/// a text member (deflated in big.zip) and a random one (stored).
const TEXT_MEMBER: &str = "d01/f0150.txt";
const BIN_MEMBER: &str = "d01/f0137.bin";

/// gen-media.sh's corpus and its torrent; `tree/` beside the payload holds the archives'
/// source files.
fn corpus() -> Corpus {
    Corpus::generate("gen-media.sh", NAME, PIECE_SIZE)
}

/// `seeders` × `swarmfs seed` of the corpus, and a fresh mount that knows them by
/// `--peer` only (the torrent has no tracker; the DHT is off on both sides, so nothing
/// leaves loopback).
fn serve(corpus: &Corpus, seeders: usize) -> (Vec<SwarmfsSeed>, MountGuard) {
    let seeds: Vec<SwarmfsSeed> = (0..seeders)
        .map(|_| SwarmfsSeed::start(&corpus.torrent, &corpus.root, &["--no-dht"]))
        .collect();
    let mount = mount_fresh(corpus, &seeds);
    (seeds, mount)
}

fn mount_fresh(corpus: &Corpus, seeds: &[SwarmfsSeed]) -> MountGuard {
    let peers: Vec<String> = seeds.iter().map(SwarmfsSeed::peer_arg).collect();
    let mut args = vec!["--no-dht"];
    for peer in &peers {
        args.extend(["--peer", peer.as_str()]);
    }
    MountGuard::mount(&corpus.torrent, &args)
}

// ---- the tools print the same through the mount ----

/// ffprobe's view of a container and its streams, as JSON on stdout (errors only on stderr).
fn ffprobe(file: &str) -> [&str; 8] {
    [
        "ffprobe",
        "-v",
        "error",
        "-show_format",
        "-show_streams",
        "-of",
        "json",
        file,
    ]
}

/// ffprobe of both containers, ffmpeg decoding 5 s after a seek (frame by frame MD5s: the
/// same decode as `-f null`, with output that proves every frame is right), mpv playing
/// 30 frames from the start of the MKV and after a seek into the MP4. Two seeders.
#[test]
fn players_print_the_same_through_the_mount() {
    fuse_test(
        "players_print_the_same_through_the_mount",
        TEST_LIMIT,
        || {
            let corpus = corpus();
            let (_seeds, mount) = serve(&corpus, 2);
            for file in ["movie-moovend.mp4", "movie.mkv"] {
                let json = corpus.assert_same_output(&mount, &ffprobe(file));
                assert!(json.contains("\"codec_name\": \"h264\""), "{file}: {json}");
            }
            for (file, seek) in [("movie-moovend.mp4", "20"), ("movie.mkv", "2")] {
                let md5s = corpus.assert_same_output(
                    &mount,
                    &[
                        "ffmpeg",
                        "-nostdin",
                        "-hide_banner",
                        "-v",
                        "error",
                        "-ss",
                        seek,
                        "-i",
                        file,
                        "-t",
                        "5",
                        "-f",
                        "framemd5",
                        "-",
                    ],
                );
                // 5 s at 30 fps: the decode really covered the range (149 in the MKV, whose
                // millisecond timestamps round the cut).
                let video_frames = md5s.lines().filter(|l| l.starts_with("0,")).count();
                assert!(
                    (149..=150).contains(&video_frames),
                    "{file}: {video_frames} video frames decoded after -ss {seek}"
                );
            }
            for (file, start) in [("movie.mkv", "0"), ("movie-moovend.mp4", "20")] {
                let out = corpus.assert_same_output(
                    &mount,
                    &[
                        "mpv",
                        "--no-config",
                        "--vo=null",
                        "--ao=null",
                        "--frames=30",
                        "--term-status-msg=",
                        &format!("--start={start}"),
                        file,
                    ],
                );
                assert!(
                    out.contains("VO: [null] 640x360") && out.contains("Exiting... (End of file)"),
                    "mpv on {file}: {out}"
                );
            }
            stop_cleanly(mount);
        },
    );
}

/// unzip -l and unzip -p (a deflated and a stored member), 7z l, bsdtar -tf of the tar
/// and the zip, isoinfo -l. One seeder.
#[test]
fn archive_tools_print_the_same_through_the_mount() {
    fuse_test(
        "archive_tools_print_the_same_through_the_mount",
        TEST_LIMIT,
        || {
            let corpus = corpus();
            let (_seeds, mount) = serve(&corpus, 1);
            let listing = corpus.assert_same_output(&mount, &["unzip", "-l", "big.zip"]);
            assert!(listing.contains("320 files"), "{listing}");

            let text = corpus.assert_same_output(&mount, &["unzip", "-p", "big.zip", TEXT_MEMBER]);
            let original =
                fs::read(corpus.root.join("tree").join(TEXT_MEMBER)).expect("read tree member");
            assert!(
                text.as_bytes() == original.as_slice(),
                "unzip -p {TEXT_MEMBER} differs from the file it was zipped from"
            );
            // A random member is not UTF-8: compare its SHA-1 (pipefail: unzip must succeed).
            let piped = format!("set -o pipefail; unzip -p big.zip {BIN_MEMBER} | sha1sum");
            let sha1 = corpus.assert_same_output(&mount, &["bash", "-c", &piped]);
            let original =
                fs::read(corpus.root.join("tree").join(BIN_MEMBER)).expect("read tree member");
            assert_eq!(
                sha1.split_whitespace().next(),
                Some(sha1_bytes(&original).as_str()),
                "unzip -p {BIN_MEMBER}"
            );

            for argv in [
                &["7z", "l", "big.7z"][..],
                &["7z", "l", "big.zip"],
                &["bsdtar", "-tf", "big.tar"],
                &["bsdtar", "-tf", "big.zip"],
                &["isoinfo", "-l", "-i", "big.iso"],
            ] {
                let out = corpus.assert_same_output(&mount, argv);
                assert!(
                    out.to_ascii_lowercase().contains("f0319"),
                    "`{}` does not list the last member:\n{out}",
                    argv.join(" ")
                );
            }
            stop_cleanly(mount);
        },
    );
}

// ---- a listing or a probe fetches a handful of pieces ----

/// Runs `argv` on `file` in a fresh mount (so the count covers this command alone),
/// stops the mount and returns its `pieces_fetched`; asserts the output matches the
/// original's. Also asserts `file` spans at least `min_file_pieces` pieces, so that a
/// bound far below that means something.
fn pieces_fetched_by(argv: &[&str], file: &str, min_file_pieces: u64) -> u64 {
    let corpus = corpus();
    let file_pieces = corpus.file_len(file).div_ceil(PIECE_BYTES);
    assert!(
        file_pieces >= min_file_pieces,
        "{file} spans only {file_pieces} pieces of {PIECE_BYTES} B; the bound would mean little"
    );
    let seed = SwarmfsSeed::start(&corpus.torrent, &corpus.root, &["--no-dht"]);
    let mount = mount_fresh(&corpus, std::slice::from_ref(&seed));
    corpus.assert_same_output(&mount, argv);
    let (status, log) = mount.stop_with_log();
    assert!(
        status.success(),
        "swarmfs exited with {status} after SIGINT"
    );
    let fetched = session_pieces_fetched(&log);
    eprintln!(
        "{}: {fetched} pieces fetched; {file} spans {file_pieces}",
        argv.join(" ")
    );
    fetched
}

/// `unzip -l` reads only the end of the archive: the end-of-central-directory record and
/// the central directory (~25 KiB for 320 members). Measured in the lab (results.md,
/// FUSE view) it touches one 256 KiB piece. The mount adds its open hint (the file's
/// first and last piece, and the directory's pieces, which unzip reads anyway) and at
/// most one read-ahead window (1 MiB floor = 4 pieces, if a read is not already at EOF);
/// the directory may straddle a piece boundary and the zip share its first or last piece
/// with a neighbour file. 1 + 1 + 2 + 4 = 8, against the
/// zip's ~280 pieces (2 measured: the open hint's first piece, and the last one).
const UNZIP_L_MAX_PIECES: u64 = 8;

#[test]
fn unzip_list_of_big_zip_fetches_a_handful_of_pieces() {
    fuse_test(
        "unzip_list_of_big_zip_fetches_a_handful_of_pieces",
        TEST_LIMIT,
        || {
            let fetched = pieces_fetched_by(&["unzip", "-l", "big.zip"], "big.zip", 256);
            assert!(
                (1..=UNZIP_L_MAX_PIECES).contains(&fetched),
                "unzip -l big.zip made the mount fetch {fetched} pieces (expected 1..={UNZIP_L_MAX_PIECES})"
            );
        },
    );
}

/// ffprobe of a moov-at-end MP4 reads ~245 KiB of the head (ftyp, the start of mdat) and
/// the moov at the tail (~32 KiB here); in the lab (results.md, FUSE view) 448 KiB + 188
/// KiB, 3 pieces of 256 KiB. Through swarmfs more is read, by design:
/// - the kernel's read-ahead, which the mount raises to 1 MiB, turns the head reads into
///   READs of 128 + 256 + 512 KiB: 896 KiB, at most 5 pieces;
/// - each open file's read-ahead window: 1 MiB after a seek, doubling per sequential READ
///   until a rate is known, so after those 3 READs at most 4 MiB = 16 pieces past them;
/// - the moov: 1 piece, 2 if it straddles a boundary. The open hint (first and last
///   piece, and the moov's pieces) is among these.
///
/// 5 + 16 + 2 = 23 → 24, against the MP4's ~280 pieces (14 measured: the tail READ comes
/// between the head READs and resets the window).
const FFPROBE_MOOV_END_MAX_PIECES: u64 = 24;

#[test]
fn ffprobe_of_moov_at_end_mp4_fetches_a_handful_of_pieces() {
    fuse_test(
        "ffprobe_of_moov_at_end_mp4_fetches_a_handful_of_pieces",
        TEST_LIMIT,
        || {
            let fetched =
                pieces_fetched_by(&ffprobe("movie-moovend.mp4"), "movie-moovend.mp4", 256);
            assert!(
                (2..=FFPROBE_MOOV_END_MAX_PIECES).contains(&fetched),
                "ffprobe of the moov-at-end MP4 made the mount fetch {fetched} pieces \
                 (expected 2..={FFPROBE_MOOV_END_MAX_PIECES})"
            );
        },
    );
}
