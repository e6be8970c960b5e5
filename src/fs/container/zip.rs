//! ZIP: the central directory, from the end-of-central-directory record (EOCD) and, for
//! ZIP64 archives, the ZIP64 locator and ZIP64 EOCD record before it.
//!
//! The EOCD is the last 22 bytes unless the archive has a comment (at most 65,535 bytes):
//! the first read takes the last 98 bytes (EOCD, ZIP64 locator and ZIP64 record without
//! extensible data), and only if the EOCD is not at the very end does a second one scan the
//! last 64 KiB + 22. The central directory ends where the record after it starts, so it is
//! `[that record - its size, …)`, which is also where unzip looks when data was prepended
//! to the archive (self-extracting files). The index is that range to the end of the
//! file: `unzip -l` reads the EOCD and then the directory. Multi-disk archives give nothing.

use std::ops::Range;

use super::{KnownBytes, Stop, le_u16, le_u32, le_u64};

const LOCAL_HEADER_SIGNATURE: &[u8; 4] = b"PK\x03\x04";
const EOCD_SIGNATURE: &[u8; 4] = b"PK\x05\x06";
const EOCD_BYTES: u64 = 22;
const MAX_COMMENT_BYTES: u64 = 65_535;
const ZIP64_LOCATOR_SIGNATURE: &[u8; 4] = b"PK\x06\x07";
const ZIP64_LOCATOR_BYTES: u64 = 20;
const ZIP64_EOCD_SIGNATURE: &[u8; 4] = b"PK\x06\x06";
/// The fixed part of the ZIP64 EOCD record (extensible data may follow; it is not read).
const ZIP64_EOCD_BYTES: u64 = 56;
/// The first read at the end: EOCD, ZIP64 locator and ZIP64 record, which is all an
/// archive without a comment needs.
const TAIL_PROBE_BYTES: u64 = EOCD_BYTES + ZIP64_LOCATOR_BYTES + ZIP64_EOCD_BYTES;

/// True if `head` starts with a local file header, or the EOCD of an empty archive.
pub(super) fn is_zip(head: &[u8]) -> bool {
    head.starts_with(LOCAL_HEADER_SIGNATURE) || head.starts_with(EOCD_SIGNATURE)
}

/// The central directory's file range, with the records after it to the end of the file.
pub(super) fn central_directory(known: &KnownBytes) -> Result<Range<u64>, Stop> {
    let file_len = known.file_len();
    let eocd_offset = eocd_offset(known)?;
    let eocd = known.get(eocd_offset, EOCD_BYTES)?;
    let field16 = |at| le_u16(eocd, at).ok_or(Stop::Unknown);
    let field32 = |at| le_u32(eocd, at).ok_or(Stop::Unknown);
    let (disk, cd_disk) = (field16(4)?, field16(6)?);
    let (entries_here, entries) = (field16(8)?, field16(10)?);
    let (cd_size, cd_offset) = (field32(12)?, field32(16)?);
    let zip64 = [disk, cd_disk, entries_here, entries].contains(&u16::MAX)
        || cd_size == u32::MAX
        || cd_offset == u32::MAX;
    let (cd_end, cd_size) = if zip64 {
        zip64_directory_end(known, eocd_offset)?
    } else {
        let fits = u64::from(cd_offset) + u64::from(cd_size) <= eocd_offset;
        if disk != 0 || cd_disk != 0 || !fits {
            return Err(Stop::Unknown);
        }
        (eocd_offset, u64::from(cd_size))
    };
    let cd_start = cd_end.checked_sub(cd_size).ok_or(Stop::Unknown)?;
    Ok(cd_start..file_len)
}

/// Where the EOCD starts: the last 22 bytes, else the last signature in the last 64 KiB
/// whose comment ends the file (or, failing that, fits in it: trailing junk).
fn eocd_offset(known: &KnownBytes) -> Result<u64, Stop> {
    let file_len = known.file_len();
    let last = file_len.checked_sub(EOCD_BYTES).ok_or(Stop::Unknown)?;
    let probe_start = file_len.saturating_sub(TAIL_PROBE_BYTES);
    let probe = known.get(probe_start, file_len - probe_start)?;
    let at_end = usize::try_from(last - probe_start).ok().and_then(|i| {
        let record = probe.get(i..)?;
        (record.starts_with(EOCD_SIGNATURE) && le_u16(record, 20) == Some(0)).then_some(())
    });
    if at_end.is_some() {
        return Ok(last);
    }
    let scan_start = file_len.saturating_sub(EOCD_BYTES + MAX_COMMENT_BYTES);
    let scan = known.get(scan_start, file_len - scan_start)?;
    let mut fitting = None;
    let last_start = scan.len().saturating_sub(EOCD_BYTES as usize);
    for i in (0..=last_start).rev() {
        let Some(record) = scan.get(i..).filter(|r| r.starts_with(EOCD_SIGNATURE)) else {
            continue;
        };
        let Some(comment_len) = le_u16(record, 20) else {
            continue;
        };
        let end = i + EOCD_BYTES as usize + usize::from(comment_len);
        if end == scan.len() {
            return Ok(scan_start + i as u64);
        }
        if end < scan.len() && fitting.is_none() {
            fitting = Some(scan_start + i as u64);
        }
    }
    fitting.ok_or(Stop::Unknown)
}

/// (where the central directory ends, its size) from the ZIP64 records before the EOCD.
fn zip64_directory_end(known: &KnownBytes, eocd_offset: u64) -> Result<(u64, u64), Stop> {
    let locator_offset = eocd_offset
        .checked_sub(ZIP64_LOCATOR_BYTES)
        .ok_or(Stop::Unknown)?;
    let locator = known.get(locator_offset, ZIP64_LOCATOR_BYTES)?;
    let record_disk = le_u32(locator, 4).ok_or(Stop::Unknown)?;
    let record_offset = le_u64(locator, 8).ok_or(Stop::Unknown)?;
    let disks = le_u32(locator, 16).ok_or(Stop::Unknown)?;
    let record_fits = record_offset
        .checked_add(ZIP64_EOCD_BYTES)
        .is_some_and(|end| end <= locator_offset);
    if !locator.starts_with(ZIP64_LOCATOR_SIGNATURE)
        || record_disk != 0
        || disks > 1
        || !record_fits
    {
        return Err(Stop::Unknown);
    }
    let record = known.get(record_offset, ZIP64_EOCD_BYTES)?;
    let disk = le_u32(record, 16).ok_or(Stop::Unknown)?;
    let cd_disk = le_u32(record, 20).ok_or(Stop::Unknown)?;
    let cd_size = le_u64(record, 40).ok_or(Stop::Unknown)?;
    let cd_offset = le_u64(record, 48).ok_or(Stop::Unknown)?;
    let fits = cd_offset
        .checked_add(cd_size)
        .is_some_and(|end| end <= record_offset);
    if !record.starts_with(ZIP64_EOCD_SIGNATURE) || disk != 0 || cd_disk != 0 || !fits {
        return Err(Stop::Unknown);
    }
    Ok((record_offset, cd_size))
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // file ranges, not a range to collect
mod tests {
    use super::super::tests::{drive, index_of};
    use super::super::{Container, Step};
    use super::*;

    /// A zip-shaped file: a local header, `data_len` bytes of member data, a central
    /// directory of `cd_len` bytes, then the EOCD with `comment` (`cd_size` and
    /// `cd_offset` as given, so tests can lie).
    fn zip_file(data_len: usize, cd_len: usize, comment: &[u8]) -> (Vec<u8>, u64) {
        let mut file = LOCAL_HEADER_SIGNATURE.to_vec();
        file.resize(data_len, 0x77);
        let cd_start = file.len() as u64;
        file.extend(b"PK\x01\x02");
        file.resize(data_len + cd_len, 0x88);
        file.extend(eocd(cd_len as u32, cd_start as u32, comment));
        (file, cd_start)
    }

    fn eocd(cd_size: u32, cd_offset: u32, comment: &[u8]) -> Vec<u8> {
        let mut r = EOCD_SIGNATURE.to_vec();
        r.extend([0, 0, 0, 0]); // disks
        r.extend(7u16.to_le_bytes());
        r.extend(7u16.to_le_bytes());
        r.extend(cd_size.to_le_bytes());
        r.extend(cd_offset.to_le_bytes());
        r.extend((comment.len() as u16).to_le_bytes());
        r.extend_from_slice(comment);
        r
    }

    #[test]
    fn the_central_directory_is_found_from_the_last_bytes() {
        let (file, cd_start) = zip_file(500_000, 150_000, b"");
        let (step, rounds) = drive(&file);
        assert_eq!(
            index_of(&step),
            Some((Container::Zip, vec![cd_start..file.len() as u64]))
        );
        assert_eq!(rounds, 2, "the head, then the last 98 bytes");
    }

    #[test]
    fn a_comment_makes_it_scan_the_last_64_kib() {
        for comment in [
            &b"x"[..],
            &[b'c'; 65_535][..],
            b"PK\x05\x06 inside the comment",
        ] {
            let (file, cd_start) = zip_file(300_000, 5_000, comment);
            let (step, rounds) = drive(&file);
            assert_eq!(
                index_of(&step),
                Some((Container::Zip, vec![cd_start..file.len() as u64])),
                "comment of {} bytes",
                comment.len()
            );
            assert_eq!(rounds, 3);
        }
    }

    #[test]
    fn prepended_data_moves_the_directory_with_the_eocd() {
        // A self-extracting stub before the archive: offsets in the EOCD are relative to
        // the archive, so the directory is found right before the EOCD.
        let (archive, _) = zip_file(10_000, 3_000, b"");
        let mut file = LOCAL_HEADER_SIGNATURE.to_vec(); // the sniff wants a zip start
        file.resize(40_000, 0x90);
        file.extend(&archive);
        let (step, _) = drive(&file);
        let end = file.len() as u64;
        assert_eq!(
            index_of(&step),
            Some((Container::Zip, vec![end - 22 - 3_000..end]))
        );
    }

    #[test]
    fn zip64_records_give_the_directory() {
        let cd_len = 70_000u64;
        let mut file = LOCAL_HEADER_SIGNATURE.to_vec();
        file.resize(200_000, 0x77);
        let cd_start = file.len() as u64;
        file.resize((cd_start + cd_len) as usize, 0x88);
        let record_offset = file.len() as u64;
        file.extend(ZIP64_EOCD_SIGNATURE);
        file.extend(44u64.to_le_bytes()); // size of the rest of the record
        file.extend([45, 0, 45, 0]); // versions
        file.extend([0u8; 8]); // disks
        file.extend(7u64.to_le_bytes());
        file.extend(7u64.to_le_bytes());
        file.extend(cd_len.to_le_bytes());
        file.extend(cd_start.to_le_bytes());
        file.extend(ZIP64_LOCATOR_SIGNATURE);
        file.extend(0u32.to_le_bytes());
        file.extend(record_offset.to_le_bytes());
        file.extend(1u32.to_le_bytes());
        file.extend(eocd(u32::MAX, u32::MAX, b""));
        let (step, rounds) = drive(&file);
        assert_eq!(
            index_of(&step),
            Some((Container::Zip, vec![cd_start..file.len() as u64]))
        );
        assert_eq!(rounds, 2, "the ZIP64 records come with the tail probe");

        // A locator pointing past itself, or at a record without its signature.
        let locator_at = file.len() - 22 - 20;
        let mut bad = file.clone();
        bad[locator_at + 8..locator_at + 16].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        assert_eq!(drive(&bad).0, Step::Unknown, "record offset overflows");
        let mut bad = file.clone();
        bad[record_offset as usize] = b'X';
        assert_eq!(drive(&bad).0, Step::Unknown, "no ZIP64 record signature");
        let mut bad = file.clone();
        let size_at = record_offset as usize + 40;
        bad[size_at..size_at + 8].copy_from_slice(&(record_offset + 1).to_le_bytes());
        assert_eq!(
            drive(&bad).0,
            Step::Unknown,
            "directory larger than what precedes it"
        );
    }

    #[test]
    fn hostile_and_odd_archives_give_nothing() {
        // No EOCD at all.
        let mut file = LOCAL_HEADER_SIGNATURE.to_vec();
        file.resize(100_000, 0x11);
        assert_eq!(drive(&file).0, Step::Unknown, "no EOCD");

        // A directory said to be larger than the file before it.
        let (mut file, _) = zip_file(1_000, 500, b"");
        let at = file.len() - 22 + 12;
        file[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes().map(|b| b & 0x7f));
        assert_eq!(drive(&file).0, Step::Unknown, "directory overruns");

        // Multi-disk.
        let (mut file, _) = zip_file(1_000, 500, b"");
        let at = file.len() - 22 + 4;
        file[at] = 1;
        assert_eq!(drive(&file).0, Step::Unknown, "multi-disk");

        // ZIP64 markers without a locator.
        let (mut file, _) = zip_file(1_000, 500, b"");
        let at = file.len() - 22 + 16;
        file[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(drive(&file).0, Step::Unknown, "ZIP64 without locator");

        // Shorter than an EOCD.
        assert_eq!(drive(b"PK\x03\x04 tiny").0, Step::Unknown);
    }

    #[test]
    fn an_empty_archive_is_its_eocd() {
        let file = eocd(0, 0, b"");
        let (step, _) = drive(&file);
        assert_eq!(index_of(&step), Some((Container::Zip, vec![0..22])));
    }
}
