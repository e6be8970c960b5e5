//! ISO 9660: the path tables and root directory named by the volume descriptors.
//!
//! Descriptors are 2048-byte sectors from byte 32,768 (after the 32 KiB system area) up to
//! the terminator (type 255): the primary one (type 1), and supplementary ones (type 2:
//! Joliet) with the same layout. Each names its path tables (little-endian "L" and
//! big-endian "M", each maybe with an optional copy) and its root directory's extent; the
//! lab saw `isoinfo -l` and `7z l` read these right after the descriptors. Only a file whose
//! first bytes look like a system area (zeros, or a boot sector ending in 55 AA) is probed,
//! so an unknown file costs no read at 32 KiB. Numbers stored twice (both-endian) must
//! agree, which also tells a real descriptor from chance bytes.

use std::ops::Range;

use super::{KnownBytes, Stop, be_u16, be_u32, le_u16, le_u32};

const DESCRIPTORS_OFFSET: u64 = 32 * 1024;
const SECTOR_BYTES: usize = 2048;
/// Descriptors read at most: xorriso writes a primary, a Joliet, maybe a boot record, and
/// the terminator; CD authoring tools a few more at most.
const MAX_DESCRIPTORS: usize = 16;
const STANDARD_ID: &[u8; 5] = b"CD001";
const PRIMARY: u8 = 1;
const SUPPLEMENTARY: u8 = 2;
const TERMINATOR: u8 = 255;
/// Where the root directory record (34 bytes) sits in a primary or supplementary
/// descriptor.
const ROOT_RECORD_AT: usize = 156;

/// True if the file is large enough for descriptors and starts like a system area: 16
/// zero bytes, or, after what looks like x86 boot code, a boot sector ending in 55 AA
/// (isohybrid images start with an MBR). `boot_sector` reads the first 512 bytes: only
/// asked for in that case, so other files cost no read beyond their first 16 bytes.
pub(super) fn has_system_area<'a>(
    file_len: u64,
    magic: &[u8],
    boot_sector: impl FnOnce() -> Result<&'a [u8], Stop>,
) -> Result<bool, Stop> {
    if file_len < DESCRIPTORS_OFFSET + SECTOR_BYTES as u64 {
        return Ok(false);
    }
    if magic.len() >= 16 && magic.iter().all(|b| *b == 0) {
        return Ok(true);
    }
    // xor, jmp short, cli, jmp near: how MBR boot code starts (isolinux, GRUB, others).
    if !matches!(magic.first(), Some(0x33 | 0xEB | 0xFA | 0xE9)) {
        return Ok(false);
    }
    Ok(boot_sector()?.get(510..512) == Some(&[0x55, 0xAA][..]))
}

/// The path tables and root directories of the primary and supplementary descriptors.
pub(super) fn directory_tables(known: &KnownBytes) -> Result<Vec<Range<u64>>, Stop> {
    let mut ranges = Vec::new();
    let mut primary_seen = false;
    let mut offset = DESCRIPTORS_OFFSET;
    for _ in 0..MAX_DESCRIPTORS {
        // One sector at a time: the read around the first brings the next few along.
        let sector = match known.get(offset, SECTOR_BYTES as u64) {
            Err(Stop::Unknown) => break, // the file ends after the last one
            sector => sector?,
        };
        if sector.len() < SECTOR_BYTES || sector.get(1..6) != Some(STANDARD_ID.as_slice()) {
            break;
        }
        match sector.first().copied() {
            Some(TERMINATOR) => break,
            Some(PRIMARY) if !primary_seen => {
                ranges.extend(descriptor_ranges(sector).ok_or(Stop::Unknown)?);
                primary_seen = true;
            }
            Some(SUPPLEMENTARY) => ranges.extend(descriptor_ranges(sector).unwrap_or_default()),
            _ => {}
        }
        offset += SECTOR_BYTES as u64;
    }
    if primary_seen {
        Ok(ranges)
    } else {
        Err(Stop::Unknown)
    }
}

/// The path tables and root directory of one descriptor (`None` if its numbers disagree).
fn descriptor_ranges(sector: &[u8]) -> Option<Vec<Range<u64>>> {
    let block_len = u64::from(both_u16(sector, 128)?);
    if !block_len.is_power_of_two() || !(512..=2048).contains(&block_len) {
        return None;
    }
    let table_len = u64::from(both_u32(sector, 132)?);
    let extent = |block: u32, len: u64| {
        let start = u64::from(block).checked_mul(block_len)?;
        Some(start..start.checked_add(len)?)
    };
    let tables = [
        le_u32(sector, 140)?,
        le_u32(sector, 144)?,
        be_u32(sector, 148)?,
        be_u32(sector, 152)?,
    ];
    let mut ranges: Vec<Range<u64>> = tables
        .into_iter()
        .filter(|block| *block != 0) // an optional table that is absent
        .filter_map(|block| extent(block, table_len))
        .collect();
    let root = sector.get(ROOT_RECORD_AT..ROOT_RECORD_AT + 34)?;
    ranges.push(extent(both_u32(root, 2)?, u64::from(both_u32(root, 10)?))?);
    Some(ranges)
}

/// A both-endian 16-bit number: little-endian, then the same big-endian.
fn both_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let le = le_u16(bytes, at)?;
    (be_u16(bytes, at + 2)? == le).then_some(le)
}

/// A both-endian 32-bit number.
fn both_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let le = le_u32(bytes, at)?;
    (be_u32(bytes, at + 4)? == le).then_some(le)
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // file ranges, not a range to collect
mod tests {
    use super::super::tests::{drive, index_of};
    use super::super::{Container, Step};
    use super::*;

    /// A descriptor sector of `kind` with the given path table and root directory.
    fn descriptor(kind: u8, table: (u32, u32, u32), root: (u32, u32)) -> Vec<u8> {
        let mut s = vec![0u8; SECTOR_BYTES];
        s[0] = kind;
        s[1..6].copy_from_slice(STANDARD_ID);
        s[6] = 1;
        if kind == TERMINATOR {
            return s;
        }
        let both16 = |s: &mut Vec<u8>, at: usize, v: u16| {
            s[at..at + 2].copy_from_slice(&v.to_le_bytes());
            s[at + 2..at + 4].copy_from_slice(&v.to_be_bytes());
        };
        let both32 = |s: &mut Vec<u8>, at: usize, v: u32| {
            s[at..at + 4].copy_from_slice(&v.to_le_bytes());
            s[at + 4..at + 8].copy_from_slice(&v.to_be_bytes());
        };
        both16(&mut s, 128, 2048);
        let (table_len, l_block, m_block) = table;
        both32(&mut s, 132, table_len);
        s[140..144].copy_from_slice(&l_block.to_le_bytes());
        s[148..152].copy_from_slice(&m_block.to_be_bytes());
        s[ROOT_RECORD_AT] = 34;
        both32(&mut s, ROOT_RECORD_AT + 2, root.0);
        both32(&mut s, ROOT_RECORD_AT + 10, root.1);
        s
    }

    fn iso(descriptors: &[Vec<u8>], blocks: usize) -> Vec<u8> {
        let mut file = vec![0u8; DESCRIPTORS_OFFSET as usize];
        for d in descriptors {
            file.extend(d);
        }
        file.resize(blocks * SECTOR_BYTES, 0x33);
        file
    }

    const B: u64 = SECTOR_BYTES as u64;

    #[test]
    fn primary_and_joliet_tables_and_roots_are_found() {
        let file = iso(
            &[
                descriptor(PRIMARY, (100, 19, 21), (23, 4096)),
                descriptor(SUPPLEMENTARY, (120, 25, 27), (29, 2048)),
                descriptor(TERMINATOR, (0, 0, 0), (0, 0)),
            ],
            400,
        );
        let (step, rounds) = drive(&file);
        assert_eq!(
            index_of(&step),
            Some((
                Container::Iso9660,
                vec![
                    19 * B..19 * B + 100,
                    21 * B..21 * B + 100,
                    23 * B..25 * B + 120, // root (2 blocks) and Joliet L table merge
                    27 * B..27 * B + 120,
                    29 * B..30 * B,
                ]
            ))
        );
        assert_eq!(rounds, 2, "the head, then the descriptors");
    }

    #[test]
    fn an_isohybrid_boot_sector_is_probed_too() {
        let mut file = iso(
            &[
                descriptor(PRIMARY, (10, 20, 21), (22, 2048)),
                descriptor(TERMINATOR, (0, 0, 0), (0, 0)),
            ],
            100,
        );
        file[0] = 0x33;
        file[1] = 0xED;
        file[510] = 0x55;
        file[511] = 0xAA;
        assert!(index_of(&drive(&file).0).is_some());
    }

    #[test]
    fn other_files_are_not_probed_at_32_kib() {
        let mut file = vec![b'a'; 100_000];
        file[0] = b'#';
        let (step, rounds) = drive(&file);
        assert_eq!(step, Step::Unknown);
        assert_eq!(rounds, 1, "only the head was read");
    }

    #[test]
    fn disagreeing_or_missing_descriptors_give_nothing() {
        let mut primary = descriptor(PRIMARY, (100, 19, 21), (23, 2048));
        primary[ROOT_RECORD_AT + 2] ^= 1; // LE root extent ≠ BE
        let file = iso(&[primary], 100);
        assert_eq!(drive(&file).0, Step::Unknown, "both-endian mismatch");

        let mut primary = descriptor(PRIMARY, (100, 19, 21), (23, 2048));
        primary[128..132].copy_from_slice(&[0x00, 0x03, 0x03, 0x00]); // 768-byte blocks
        let file = iso(&[primary], 100);
        assert_eq!(drive(&file).0, Step::Unknown, "odd block size");

        let file = iso(&[descriptor(TERMINATOR, (0, 0, 0), (0, 0))], 100);
        assert_eq!(drive(&file).0, Step::Unknown, "no primary descriptor");

        let file = vec![0u8; 200_000];
        assert_eq!(drive(&file).0, Step::Unknown, "all zeros");

        // A root extent far past the end of the file: nothing of it is in the file.
        let file = iso(&[descriptor(PRIMARY, (0, 0, 0), (u32::MAX, u32::MAX))], 100);
        assert_eq!(drive(&file).0, Step::Unknown, "extent past the end");
    }

    #[test]
    fn a_file_ending_inside_the_descriptors_is_read_to_its_end() {
        let mut file = iso(&[descriptor(PRIMARY, (100, 17, 0), (16, 2048))], 18);
        file.truncate(DESCRIPTORS_OFFSET as usize + SECTOR_BYTES + 100);
        let (step, _) = drive(&file);
        assert_eq!(
            index_of(&step),
            Some((Container::Iso9660, vec![16 * B..file.len() as u64]))
        );
    }
}
