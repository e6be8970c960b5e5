//! MP4 / QuickTime: the `moov` box, found by walking the top-level boxes by their sizes
//! from the start of the file (32-bit sizes, 64-bit `largesize`, size 0 = to the end).
//!
//! A moov-at-end file (ffmpeg's default) is `ftyp`, `free`, `mdat` (the whole media),
//! `moov`: the three headers sit in the first read, and `mdat`'s size says where `moov`
//! starts, so two reads find it. A fragmented file has its `moov` before its first `moof`;
//! a `moof` first, a box type that is not printable ASCII, or a size that overruns the file
//! ends the walk with nothing (be conservative: better no prefetch than a wrong one).

use std::ops::Range;

use super::{KnownBytes, Stop, be_u32, be_u64};

/// Top-level boxes walked before giving up: real files have fewer than ten (`ftyp`,
/// `free`/`wide`, `mdat`, `moov`, `udta`, `uuid`…) before their `moov`.
const MAX_TOP_LEVEL_BOXES: usize = 64;

/// A box header: 32-bit size and type, then a 64-bit `largesize` when size is 1.
const MAX_BOX_HEADER_BYTES: u64 = 16;

/// Types a file may start with: `ftyp` (ISO base media), and the QuickTime files that
/// begin with their media or a placeholder.
const FIRST_BOX_TYPES: [&[u8; 4]; 7] = [
    b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot",
];

/// True if `head` starts with an MP4/QuickTime box of a type files begin with.
pub(super) fn is_mp4(head: &[u8]) -> bool {
    head.get(4..8)
        .is_some_and(|t| FIRST_BOX_TYPES.iter().any(|first| first.as_slice() == t))
}

/// The `moov` box's file range.
pub(super) fn moov(known: &KnownBytes) -> Result<Range<u64>, Stop> {
    let file_len = known.file_len();
    let mut box_offset = 0u64;
    for _ in 0..MAX_TOP_LEVEL_BOXES {
        let header = known.get(box_offset, MAX_BOX_HEADER_BYTES)?;
        let remaining = file_len - box_offset; // get() has checked box_offset < file_len
        let (box_type, box_len) = box_header(header, remaining)?;
        match &box_type {
            b"moov" => return Ok(box_offset..box_offset + box_len),
            b"moof" => return Err(Stop::Unknown),
            _ => {}
        }
        box_offset += box_len; // ≤ file_len: box_header checked box_len ≤ remaining
        if box_offset == file_len {
            return Err(Stop::Unknown);
        }
    }
    Err(Stop::Unknown)
}

/// Type and whole length of the box whose header starts `header`, with `remaining` bytes
/// of the file from its start; `Unknown` unless it is well formed and fits the file.
fn box_header(header: &[u8], remaining: u64) -> Result<([u8; 4], u64), Stop> {
    let size = be_u32(header, 0).ok_or(Stop::Unknown)?;
    let box_type: [u8; 4] = super::array(header, 4).ok_or(Stop::Unknown)?;
    if !box_type.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(Stop::Unknown);
    }
    let box_len = match size {
        0 => remaining,
        1 => be_u64(header, 8)
            .filter(|len| *len >= MAX_BOX_HEADER_BYTES)
            .ok_or(Stop::Unknown)?,
        2..=7 => return Err(Stop::Unknown),
        size => u64::from(size),
    };
    if box_len > remaining {
        return Err(Stop::Unknown);
    }
    Ok((box_type, box_len))
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // file ranges, not a range to collect
mod tests {
    use super::super::tests::{drive, index_of};
    use super::super::{Container, MAX_INDEX_BYTES, Step};

    /// A box of `len` bytes in all (32-bit size), filled with `fill`.
    fn mp4_box(box_type: &[u8; 4], len: u32, fill: u8) -> Vec<u8> {
        let mut b = len.to_be_bytes().to_vec();
        b.extend_from_slice(box_type);
        b.resize(len as usize, fill);
        b
    }

    fn ftyp() -> Vec<u8> {
        let mut b = 24u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"ftypisom\0\0\x02\0isomiso2");
        b
    }

    #[test]
    fn moov_at_the_end_is_found_in_two_reads() {
        let mut file = ftyp();
        file.extend(mp4_box(b"free", 8, 0));
        file.extend(mp4_box(b"mdat", 300_000, 0x55));
        let moov_start = file.len() as u64;
        file.extend(mp4_box(b"moov", 50_000, 0x66));
        let (step, rounds) = drive(&file);
        assert_eq!(
            index_of(&step),
            Some((Container::Mp4, vec![moov_start..file.len() as u64]))
        );
        assert_eq!(rounds, 2, "the head, then the moov header");
    }

    #[test]
    fn moov_at_the_front_is_found_in_the_head() {
        let mut file = ftyp();
        file.extend(mp4_box(b"moov", 1000, 0x66));
        file.extend(mp4_box(b"mdat", 100_000, 0x55));
        let (step, rounds) = drive(&file);
        assert_eq!(index_of(&step), Some((Container::Mp4, vec![24..1024])));
        assert_eq!(rounds, 1);
    }

    #[test]
    fn a_largesize_mdat_is_walked_over() {
        let mut file = ftyp();
        let mdat_len = 200_000u64;
        file.extend(1u32.to_be_bytes());
        file.extend(b"mdat");
        file.extend(mdat_len.to_be_bytes());
        file.resize(24 + mdat_len as usize, 0x55);
        file.extend(mp4_box(b"moov", 4000, 0x66));
        let (step, _) = drive(&file);
        assert_eq!(
            index_of(&step),
            Some((Container::Mp4, vec![24 + mdat_len..24 + mdat_len + 4000]))
        );
    }

    #[test]
    fn a_size_zero_moov_runs_to_the_end_and_a_size_zero_mdat_means_no_moov() {
        let mut file = ftyp();
        file.extend(mp4_box(b"mdat", 10_000, 0x55));
        file.extend(0u32.to_be_bytes());
        file.extend(b"moov");
        file.resize(file.len() + 3000, 0x66);
        let (step, _) = drive(&file);
        assert_eq!(
            index_of(&step),
            Some((Container::Mp4, vec![10_024..file.len() as u64]))
        );

        let mut file = ftyp();
        file.extend(0u32.to_be_bytes());
        file.extend(b"mdat");
        file.resize(50_000, 0x55);
        assert_eq!(drive(&file).0, Step::Unknown);
    }

    #[test]
    fn a_quicktime_file_starting_with_wide_and_mdat_is_walked() {
        let mut file = mp4_box(b"wide", 8, 0);
        file.extend(mp4_box(b"mdat", 70_000, 0x55));
        file.extend(mp4_box(b"moov", 900, 0x66));
        let (step, _) = drive(&file);
        assert_eq!(
            index_of(&step),
            Some((Container::Mp4, vec![70_008..70_908]))
        );
    }

    #[test]
    fn a_huge_moov_is_cut_to_the_index_budget() {
        // Only the header is real: the walk never reads the box body.
        let mut file = ftyp();
        let moov_len = MAX_INDEX_BYTES + 1_000_000;
        file.extend(1u32.to_be_bytes());
        file.extend(b"moov");
        file.extend(moov_len.to_be_bytes());
        let known_len = 24 + moov_len;
        let (step, _) = super::super::tests::drive_sparse(&file, known_len);
        assert_eq!(
            index_of(&step),
            Some((Container::Mp4, vec![24..24 + MAX_INDEX_BYTES]))
        );
    }

    #[test]
    fn fragmented_and_malformed_files_give_nothing() {
        // moof before any moov.
        let mut file = ftyp();
        file.extend(mp4_box(b"moof", 100, 0));
        file.extend(mp4_box(b"mdat", 100, 0));
        file.extend(mp4_box(b"moov", 100, 0));
        assert_eq!(drive(&file).0, Step::Unknown, "moof first");

        // A box overrunning the file.
        let mut file = ftyp();
        file.extend(mp4_box(b"mdat", 100, 0));
        file[24..28].copy_from_slice(&1_000_000u32.to_be_bytes());
        assert_eq!(drive(&file).0, Step::Unknown, "overrun");

        // Sizes 2..7 and a largesize below 16.
        for bad in [2u32, 7] {
            let mut file = ftyp();
            file.extend(mp4_box(b"mdat", 100, 0));
            file[24..28].copy_from_slice(&bad.to_be_bytes());
            assert_eq!(drive(&file).0, Step::Unknown, "size {bad}");
        }
        let mut file = ftyp();
        file.extend(1u32.to_be_bytes());
        file.extend(b"mdat");
        file.extend(8u64.to_be_bytes());
        file.resize(200, 0);
        assert_eq!(drive(&file).0, Step::Unknown, "largesize 8");

        // Binary garbage where the next box should be.
        let mut file = ftyp();
        file.extend([0xff, 0x00, 0x00, 0x10, 0x01, 0x02, 0x03, 0x04]);
        file.resize(100, 0);
        assert_eq!(drive(&file).0, Step::Unknown, "non-ASCII type");

        // Ends right after the last box, or inside a header, with no moov.
        let mut file = ftyp();
        file.extend(mp4_box(b"mdat", 100, 0));
        assert_eq!(drive(&file).0, Step::Unknown, "no moov");
        file.extend([0, 0, 0]);
        assert_eq!(drive(&file).0, Step::Unknown, "truncated header");
    }

    #[test]
    fn many_tiny_boxes_stop_the_walk() {
        let mut file = ftyp();
        for _ in 0..super::MAX_TOP_LEVEL_BOXES {
            file.extend(mp4_box(b"free", 8, 0));
        }
        file.extend(mp4_box(b"moov", 100, 0));
        let (step, rounds) = drive(&file);
        assert_eq!(step, Step::Unknown);
        assert_eq!(rounds, 1);
    }
}
