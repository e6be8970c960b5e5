//! Issue 6, the container index at open: "fetch what players and archive tools read
//! first: the head and the tail of the file, and where cheap to parse, the container index
//! ahead of the data. `unzip -l` of a large zip must fetch only the pieces holding the
//! central directory."
//!
//! A small corpus (`tests/media/gen-index-media.sh`) in 16 KiB pieces spreads each index
//! over 8–10 pieces at the end of its file: an MP4 `moov`, Matroska `Cues` and a ZIP
//! central directory. Opening the files, without reading a byte, must make the mount fetch
//! every piece of each index and none of the data; `unzip -l` then needs nothing more.
//! The pieces fetched are the mount's `verified piece=N` debug lines; where each index
//! lies the test finds by itself, with the simplest walk that fits these files.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::ops::Range;
use std::thread::sleep;
use std::time::{Duration, Instant};

use swarmfs::metainfo::Metainfo;

use common::checks::{stop_cleanly, strip_ansi};
use common::corpus::Corpus;
use common::harness::fuse_test;
use common::mount::MountGuard;
use common::process::POLL;
use common::swarmfs::SwarmfsSeed;

/// Working, the test takes a few seconds (the corpus is made once in ~3 s); this only
/// stops hangs.
const TEST_LIMIT: Duration = Duration::from_secs(180);

/// The torrent's name: the directory gen-index-media.sh fills, and the mount's top entry.
const NAME: &str = "index-media";

/// The smallest piece size `swarmfs create` makes, so that each index spans many pieces.
const PIECE_SIZE: &str = "16KiB";

/// One seeder on loopback serves the ~30 index pieces in milliseconds; this bounds a hang
/// on a loaded machine.
const PREFETCH_DEADLINE: Duration = Duration::from_secs(30);

/// Once the indexes are there, time for a stray fetch of data to land and be logged.
const SETTLE: Duration = Duration::from_secs(1);

const FILES: [&str; 3] = ["movie-moovend.mp4", "movie.mkv", "big.zip"];

#[test]
fn opening_files_fetches_their_container_index_and_no_data() {
    fuse_test(
        "opening_files_fetches_their_container_index_and_no_data",
        TEST_LIMIT,
        || {
            let corpus = Corpus::generate("gen-index-media.sh", NAME, PIECE_SIZE);
            let meta = Metainfo::from_bytes(&fs::read(&corpus.torrent).expect("read torrent"))
                .expect("parse torrent");
            let piece_len = u64::from(meta.piece_length);
            let pieces_of = |torrent_range: Range<u64>| -> BTreeSet<u32> {
                let first = torrent_range.start / piece_len;
                let last = (torrent_range.end - 1) / piece_len;
                (first..=last).map(|p| u32::try_from(p).unwrap()).collect()
            };

            // Per file: the index's pieces (expected), and every piece an open may fetch:
            // those, the file's first piece (the open hint, and the locator's head read)
            // and its last (the open hint, the ZIP tail read).
            let mut index_pieces = Vec::new();
            let mut allowed = BTreeSet::new();
            for file in FILES {
                let entry = meta
                    .files
                    .iter()
                    .find(|f| f.path.last().map(String::as_str) == Some(file))
                    .unwrap_or_else(|| panic!("{file} is not in the torrent"));
                let bytes = fs::read(corpus.payload().join(file)).expect("read corpus file");
                let index = index_range(file, &bytes);
                let at = entry.torrent_offset;
                let pieces = pieces_of(at + index.start..at + index.end);
                let head_and_tail: BTreeSet<u32> = pieces_of(at..at + 1)
                    .into_iter()
                    .chain(pieces_of(at + entry.length - 1..at + entry.length))
                    .collect();
                let beyond_tail = pieces.difference(&head_and_tail).count();
                assert!(
                    beyond_tail >= 4,
                    "{file}: its index {index:?} is in pieces {pieces:?}, mostly the head or \
                     tail piece: the test would not tell the index prefetch from those"
                );
                allowed.extend(&pieces);
                allowed.extend(head_and_tail);
                index_pieces.push((file, pieces));
            }
            let data_pieces = meta.piece_count() as usize - allowed.len();
            assert!(
                data_pieces >= 500,
                "only {data_pieces} data pieces: too few to show they are left alone"
            );

            let seed = SwarmfsSeed::start(&corpus.torrent, &corpus.root, &["--no-dht"]);
            let mount =
                MountGuard::mount(&corpus.torrent, &["--no-dht", "--peer", &seed.peer_arg()]);
            // Players open a file several times: each file twice, held open, never read.
            let opened: Vec<File> = FILES
                .iter()
                .flat_map(|file| [file, file])
                .map(|file| {
                    let path = mount.path().join(NAME).join(file);
                    File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
                })
                .collect();

            let end = Instant::now() + PREFETCH_DEADLINE;
            loop {
                let fetched = verified_pieces(&mount.log());
                let missing: Vec<(&str, Vec<u32>)> = index_pieces
                    .iter()
                    .map(|(file, pieces)| (*file, pieces.difference(&fetched).copied().collect()))
                    .filter(|(_, missing): &(&str, Vec<u32>)| !missing.is_empty())
                    .collect();
                if missing.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < end,
                    "{PREFETCH_DEADLINE:?} after opening, index pieces still not fetched: \
                     {missing:?} (of {index_pieces:?})"
                );
                sleep(POLL);
            }
            sleep(SETTLE);
            let log = mount.log();
            assert_no_data_fetched(&log, &allowed, "opening the files");
            let searches = log
                .lines()
                .filter(|l| l.contains("container index found"))
                .count();
            assert_eq!(
                searches,
                FILES.len(),
                "one index search per file, however often it is opened"
            );
            drop(opened);

            let listing = corpus.assert_same_output(&mount, &["unzip", "-l", "big.zip"]);
            assert!(listing.contains("1500 files"), "{listing}");
            assert_no_data_fetched(&mount.log(), &allowed, "unzip -l big.zip");
            stop_cleanly(mount);
        },
    );
}

fn assert_no_data_fetched(log: &str, allowed: &BTreeSet<u32>, after: &str) {
    let data: Vec<u32> = verified_pieces(log).difference(allowed).copied().collect();
    assert!(
        data.is_empty(),
        "{after} fetched {} pieces that hold none of a file's head, tail or index: {data:?}",
        data.len()
    );
}

/// The pieces the mount verified so far, from its `verified piece=N` debug lines.
fn verified_pieces(log: &str) -> BTreeSet<u32> {
    log.lines()
        .map(strip_ansi)
        .filter_map(|line| {
            let rest = &line[line.find(" verified piece=")? + " verified piece=".len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// Where the index of `file` lies, found as simply as these generated files allow.
fn index_range(file: &str, bytes: &[u8]) -> Range<u64> {
    let len = bytes.len() as u64;
    let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    let le32 = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    match file {
        // Top-level boxes with 32-bit sizes (ffmpeg writes no largesize below 4 GiB).
        "movie-moovend.mp4" => {
            let mut at = 0usize;
            loop {
                let size = be32(at) as usize;
                assert!(size >= 8, "box size {size} at {at}");
                if &bytes[at + 4..at + 8] == b"moov" {
                    return at as u64..(at + size) as u64;
                }
                at += size;
            }
        }
        // The Cues element is the last of its ID in the file, followed by at most a Void.
        "movie.mkv" => {
            let at = bytes
                .windows(4)
                .rposition(|w| w == [0x1C, 0x53, 0xBB, 0x6B])
                .expect("no Cues ID");
            let first = bytes[at + 4];
            let size_len = first.leading_zeros() as usize + 1;
            let mut size = u64::from(first) & ((1 << (8 - size_len)) - 1);
            for b in &bytes[at + 5..at + 4 + size_len] {
                size = (size << 8) | u64::from(*b);
            }
            let end = (at + 4 + size_len) as u64 + size;
            assert!(end + 100 > len, "Cues {at}..{end} not at the end of {len}");
            at as u64..end
        }
        // No archive comment: the EOCD is the last 22 bytes.
        "big.zip" => {
            let eocd = bytes.len() - 22;
            assert_eq!(&bytes[eocd..eocd + 4], b"PK\x05\x06", "EOCD");
            let (size, offset) = (u64::from(le32(eocd + 12)), u64::from(le32(eocd + 16)));
            assert_eq!(
                offset + size,
                eocd as u64,
                "central directory before the EOCD"
            );
            offset..len
        }
        other => panic!("no index walk for {other}"),
    }
}
