//! The driver the format tests share (it plays the part of `fs/prefetch.rs` over a byte
//! vector, checking every promise a `Step::Need` makes), and tests of what all formats
//! share: the known-bytes spans, the sniff, and the index budget.
#![allow(clippy::single_range_in_vec_init)] // file ranges, not ranges to collect

use std::ops::Range;

use bytes::Bytes;

use super::*;

/// More rounds than any format needs (ZIP64 with a comment: 4); a test failing on this
/// means a parser did not make progress.
const MAX_TEST_ROUNDS: usize = 8;

/// The piece grid the driver widens reads to: the smallest piece size there is.
const TEST_PIECE_LEN: u64 = 16 * 1024;

/// Runs `locate` over `file` to its end, reading what it needs widened as the mount does
/// (16 KiB pieces, the file at the start of the torrent); returns the last step and how
/// many reads it took.
pub(super) fn drive(file: &[u8]) -> (Step, usize) {
    drive_sparse(file, file.len() as u64)
}

/// Like `drive`, for a file of `file_len` bytes of which only `prefix` is real (the rest
/// reads as zeros), so a test can place a header far away without allocating it all.
pub(super) fn drive_sparse(prefix: &[u8], file_len: u64) -> (Step, usize) {
    let (step, reads) = run(prefix, file_len, true);
    (step, reads.len())
}

/// Runs `locate` over `file`, reading exactly what each step needs; returns the last step
/// and the needs.
pub(super) fn drive_exact(file: &[u8]) -> (Step, Vec<Range<u64>>) {
    run(file, file.len() as u64, false)
}

fn run(prefix: &[u8], file_len: u64, widen: bool) -> (Step, Vec<Range<u64>>) {
    let mut known = KnownBytes::new(file_len);
    let mut needs = Vec::new();
    for _ in 0..MAX_TEST_ROUNDS {
        let step = locate(&known);
        let Step::Need(range) = step else {
            if let Step::Index { file_ranges, .. } = &step {
                check_index(file_ranges, file_len);
            }
            return (step, needs);
        };
        assert!(range.start < range.end, "empty need {range:?}");
        assert!(
            range.end <= file_len,
            "need {range:?} past the end {file_len}"
        );
        assert!(
            range.end - range.start <= MAX_NEED_BYTES,
            "need {range:?} larger than {MAX_NEED_BYTES}"
        );
        assert!(!known.covers(&range), "need {range:?} is already known");
        let read = if widen {
            widened(&range, file_len, 0, TEST_PIECE_LEN)
        } else {
            range.clone()
        };
        let bytes: Vec<u8> = (read.start..read.end)
            .map(|i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| prefix.get(i))
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        known.insert(read.start, Bytes::from(bytes));
        needs.push(range);
    }
    panic!("no answer after {MAX_TEST_ROUNDS} reads: {needs:?}");
}

/// What `Step::Index` promises.
fn check_index(file_ranges: &[Range<u64>], file_len: u64) {
    let mut total = 0;
    let mut previous_end = None;
    for range in file_ranges {
        assert!(
            range.start < range.end && range.end <= file_len,
            "{range:?}"
        );
        if let Some(end) = previous_end {
            assert!(
                range.start > end,
                "not sorted and disjoint: {file_ranges:?}"
            );
        }
        previous_end = Some(range.end);
        total += range.end - range.start;
    }
    assert!(total <= MAX_INDEX_BYTES);
}

/// The container and ranges of an `Index` step.
pub(super) fn index_of(step: &Step) -> Option<(Container, Vec<Range<u64>>)> {
    match step {
        Step::Index {
            container,
            file_ranges,
        } => Some((*container, file_ranges.clone())),
        _ => None,
    }
}

#[test]
fn known_bytes_answer_from_one_span_and_ask_for_the_rest() {
    let mut known = KnownBytes::new(100);
    known.insert(10, Bytes::from_static(&[1, 2, 3, 4, 5]));
    assert_eq!(known.get(11, 3), Ok(&[2u8, 3, 4][..]));
    assert_eq!(known.get(12, 10), Err(Stop::Need(12..22)));
    assert_eq!(
        known.get(95, 10),
        Err(Stop::Need(95..100)),
        "clamped to the end"
    );
    assert_eq!(known.get(100, 1), Err(Stop::Unknown), "at the end");
    assert_eq!(known.get(u64::MAX, 10), Err(Stop::Unknown));
    assert_eq!(
        known.get(0, u64::MAX),
        Err(Stop::Need(0..100)),
        "no overflow, clamped"
    );
    let mut big = KnownBytes::new(u64::MAX);
    assert_eq!(
        big.get(0, u64::MAX),
        Err(Stop::Need(0..MAX_NEED_BYTES)),
        "never more than MAX_NEED_BYTES"
    );
    // Bytes past the end of the file are dropped.
    big = KnownBytes::new(12);
    big.insert(10, Bytes::from_static(&[7, 8, 9, 10]));
    assert_eq!(big.get(10, 5), Ok(&[7u8, 8][..]));
    assert!(big.covers(&(10..12)));
    assert!(!big.covers(&(9..12)));
}

#[test]
fn unknown_and_empty_files_cost_16_bytes() {
    assert_eq!(drive(&[]), (Step::Unknown, 0));
    assert_eq!(drive(b"hello, world\n"), (Step::Unknown, 1));
    let text = vec![b'x'; 1 << 20];
    assert_eq!(drive_exact(&text), (Step::Unknown, vec![0..16]));
    // A tar header: not parsed (no index to find).
    let mut tar = vec![b'a'; 100];
    tar.resize(257, 0);
    tar.extend(b"ustar\x0000");
    tar.resize(10_240, 0);
    assert_eq!(drive(&tar), (Step::Unknown, 1));
}

#[test]
fn reads_are_widened_to_the_pieces_they_touch_within_the_file() {
    const P: u64 = 16 * 1024;
    // A file starting at torrent offset 10,000 (so its first piece holds 6,384 of its bytes).
    assert_eq!(widened(&(0..16), 1 << 20, 10_000, P), 0..P - 10_000);
    assert_eq!(
        widened(&(7_000..7_016), 1 << 20, 10_000, P),
        P - 10_000..2 * P - 10_000
    );
    // Across a piece boundary: both pieces.
    assert_eq!(
        widened(&(6_380..6_390), 1 << 20, 10_000, P),
        0..2 * P - 10_000
    );
    // Never past the file's end.
    assert_eq!(widened(&(990..1_000), 1_000, 10_000, P), 0..1_000);
    // Big pieces: at most MAX_NEED_BYTES more each way.
    let big = 16 << 20;
    assert_eq!(
        widened(&(5 << 20..(5 << 20) + 16), 1 << 30, 0, big),
        (5 << 20) - MAX_NEED_BYTES..(5 << 20) + 16 + MAX_NEED_BYTES
    );
    // Nonsense in, the need out.
    assert_eq!(widened(&(5..9), 100, u64::MAX, P), 5..9);
    assert_eq!(widened(&(5..9), 100, 0, 0), 5..9);
}

#[test]
fn index_ranges_are_clamped_merged_and_cut_to_the_budget() {
    assert_eq!(
        capped(vec![50..60, 0..10, 5..20, 95..200, 300..400, 20..20], 100),
        vec![0..20, 50..60, 95..100]
    );
    let huge = capped(
        vec![0..MAX_INDEX_BYTES - 10, MAX_INDEX_BYTES..u64::MAX],
        u64::MAX,
    );
    assert_eq!(
        huge,
        vec![
            0..MAX_INDEX_BYTES - 10,
            MAX_INDEX_BYTES..MAX_INDEX_BYTES + 10
        ]
    );
}

#[test]
fn random_bytes_behind_every_signature_end_in_a_few_reads() {
    // A cheap fuzz: each format's magic, then pseudo-random bytes. Whatever the answer,
    // the driver's checks hold (bounded needs, progress, a valid index) within its rounds.
    let magics: [&[u8]; 5] = [
        b"\x1a\x45\xdf\xa3",
        b"PK\x03\x04",
        b"\0\0\0\x18ftyp",
        b"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        b"\0\0\0\x08wide",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for magic in magics {
        for len in [30usize, 600, 5_000, 70_000, 200_000] {
            for _ in 0..8 {
                let mut file = magic.to_vec();
                while file.len() < len {
                    file.extend(next().to_le_bytes());
                }
                file.truncate(len);
                // Sprinkle the signatures the parsers look for, so they get past them.
                for sig in [
                    &b"PK\x05\x06"[..],
                    b"moov",
                    b"\x1c\x53\xbb\x6b",
                    b"\x01CD001",
                ] {
                    let at = (next() as usize) % len;
                    let end = (at + sig.len()).min(len);
                    file[at..end].copy_from_slice(&sig[..end - at]);
                }
                let _ = drive(&file);
                let _ = drive_exact(&file);
            }
        }
    }
}
