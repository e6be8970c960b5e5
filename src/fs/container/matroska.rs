//! Matroska / WebM: the `Cues` element (the seek index), found through the SeekHead.
//!
//! A file is an EBML header, then one Segment. The Segment's first level-1 element is
//! usually a SeekHead listing where the others are, as positions relative to the start of
//! the Segment's data; ffmpeg and mkvmerge write the Cues after the clusters, at the end,
//! and list them there (mkvmerge may list a second SeekHead at the end instead, which is
//! followed once). Without a SeekHead entry, level-1 elements are walked by their sizes
//! until the Cues (cues at the front) or the first Cluster (no index known: nothing).
//! An element of unknown size (live streams) can only be the Segment itself; anywhere else
//! it ends the walk.

use std::ops::Range;

use super::{KnownBytes, Stop};

const EBML_ID: u32 = 0x1A45_DFA3;
const SEGMENT_ID: u32 = 0x1853_8067;
const SEEK_HEAD_ID: u32 = 0x114D_9B74;
const SEEK_ID: u32 = 0x4DBB;
const SEEK_ID_ID: u32 = 0x53AB;
const SEEK_POSITION_ID: u32 = 0x53AC;
const CUES_ID: u32 = 0x1C53_BB6B;
const CLUSTER_ID: u32 = 0x1F43_B675;

/// An element header: an ID of at most 4 bytes and a size of at most 8.
const MAX_ELEMENT_HEADER_BYTES: u64 = 12;

/// Level-1 elements walked before giving up: before the first Cluster a file has a
/// SeekHead, Void, Info, Tracks, and maybe Chapters, Tags, Attachments, CRC-32s.
const MAX_LEVEL1_ELEMENTS: usize = 32;

/// SeekHeads read: the one at the front, and the one at the end it may point to.
const MAX_SEEK_HEADS: usize = 2;

/// A SeekHead lists a handful of elements in ~50–200 bytes; more is not a SeekHead to trust.
const MAX_SEEK_HEAD_BYTES: u64 = 64 * 1024;

/// True if `head` starts with an EBML header (Matroska, WebM).
pub(super) fn is_matroska(head: &[u8]) -> bool {
    head.starts_with(&EBML_ID.to_be_bytes())
}

/// The Cues element's file range.
pub(super) fn cues(known: &KnownBytes) -> Result<Range<u64>, Stop> {
    let ebml = element_at(known, 0)?;
    if ebml.id != EBML_ID {
        return Err(Stop::Unknown);
    }
    let segment_offset = ebml.end(0).ok_or(Stop::Unknown)?;
    let segment = element_at(known, segment_offset)?;
    if segment.id != SEGMENT_ID {
        return Err(Stop::Unknown);
    }
    let segment_data = segment_offset
        .checked_add(segment.header_len)
        .ok_or(Stop::Unknown)?;
    let segment_end = segment
        .data_len
        .and_then(|len| segment_data.checked_add(len))
        .map_or(known.file_len(), |end| end.min(known.file_len()));

    let mut seek_heads_read = 0;
    let mut offset = segment_data;
    for _ in 0..MAX_LEVEL1_ELEMENTS {
        if offset >= segment_end {
            return Err(Stop::Unknown);
        }
        let element = element_at(known, offset)?;
        match element.id {
            CUES_ID => return cues_range(known, offset, element),
            CLUSTER_ID => return Err(Stop::Unknown),
            SEEK_HEAD_ID if seek_heads_read < MAX_SEEK_HEADS => {
                seek_heads_read += 1;
                let body = element_body(known, offset, &element)?;
                let targets = seek_targets(body);
                let at = |position: u64| segment_data.checked_add(position).ok_or(Stop::Unknown);
                if let Some(position) = targets.cues {
                    let cues_offset = at(position)?;
                    let cues = element_at(known, cues_offset)?;
                    if cues.id != CUES_ID {
                        return Err(Stop::Unknown);
                    }
                    return cues_range(known, cues_offset, cues);
                }
                if let Some(position) = targets.seek_head {
                    // Only forward, so two SeekHeads naming each other cannot loop.
                    let next = at(position)?;
                    if next > offset {
                        offset = next;
                        continue;
                    }
                }
            }
            _ => {}
        }
        offset = element.end(offset).ok_or(Stop::Unknown)?;
    }
    Err(Stop::Unknown)
}

/// The range of the Cues element whose header is `element` at `offset`.
fn cues_range(known: &KnownBytes, offset: u64, element: ElementHeader) -> Result<Range<u64>, Stop> {
    let end = element.end(offset).ok_or(Stop::Unknown)?;
    Ok(offset..end.min(known.file_len()))
}

/// The data of a small element of known size, read whole.
fn element_body<'a>(
    known: &'a KnownBytes,
    offset: u64,
    element: &ElementHeader,
) -> Result<&'a [u8], Stop> {
    let len = element
        .data_len
        .filter(|len| *len <= MAX_SEEK_HEAD_BYTES)
        .ok_or(Stop::Unknown)?;
    let start = offset
        .checked_add(element.header_len)
        .ok_or(Stop::Unknown)?;
    if len == 0 {
        return Ok(&[]);
    }
    let body = known.get(start, len)?;
    if body.len() as u64 != len {
        return Err(Stop::Unknown); // the file ends inside it
    }
    Ok(body)
}

/// Where a SeekHead says the Cues and another SeekHead are (Segment-relative positions).
#[derive(Debug, Default, PartialEq, Eq)]
struct SeekTargets {
    cues: Option<u64>,
    seek_head: Option<u64>,
}

/// The Seek entries of a SeekHead's data; malformed entries end the list.
fn seek_targets(seek_head: &[u8]) -> SeekTargets {
    let mut targets = SeekTargets::default();
    for (id, seek) in children(seek_head) {
        if id != SEEK_ID {
            continue;
        }
        let (mut seek_id, mut position) = (None, None);
        for (id, data) in children(seek) {
            match id {
                SEEK_ID_ID => seek_id = unsigned(data, 4).and_then(|v| u32::try_from(v).ok()),
                SEEK_POSITION_ID => position = unsigned(data, 8),
                _ => {}
            }
        }
        match (seek_id, position) {
            (Some(CUES_ID), Some(p)) => targets.cues = targets.cues.or(Some(p)),
            (Some(SEEK_HEAD_ID), Some(p)) => targets.seek_head = targets.seek_head.or(Some(p)),
            _ => {}
        }
    }
    targets
}

/// The (ID, data) children of an element's data, up to the first one that is malformed,
/// of unknown size, or overruns it. Each step consumes at least 2 bytes, so this ends.
fn children(data: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let header = element_header(rest)?;
        let header_len = usize::try_from(header.header_len).ok()?;
        let data_len = usize::try_from(header.data_len?).ok()?;
        let end = header_len.checked_add(data_len)?;
        let child = rest.get(header_len..end)?;
        rest = rest.get(end..)?;
        Some((header.id, child))
    })
}

/// A big-endian unsigned integer of 1..=`max_len` bytes (EBML `uint` and `binary` IDs).
fn unsigned(data: &[u8], max_len: usize) -> Option<u64> {
    if data.is_empty() || data.len() > max_len {
        return None;
    }
    Some(data.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)))
}

/// An element's ID (marker bit kept, as IDs are written), the length of ID plus size,
/// and its data size (`None`: unknown, all value bits set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ElementHeader {
    id: u32,
    header_len: u64,
    data_len: Option<u64>,
}

impl ElementHeader {
    /// Where the element ends, if it starts at `offset` and its size is known.
    fn end(&self, offset: u64) -> Option<u64> {
        offset
            .checked_add(self.header_len)?
            .checked_add(self.data_len?)
    }
}

/// The header of the element at `offset`.
fn element_at(known: &KnownBytes, offset: u64) -> Result<ElementHeader, Stop> {
    let bytes = known.get(offset, MAX_ELEMENT_HEADER_BYTES)?;
    element_header(bytes).ok_or(Stop::Unknown)
}

/// Parses an element header at the start of `bytes` (`None`: malformed or cut short).
fn element_header(bytes: &[u8]) -> Option<ElementHeader> {
    let id_len = vint_len(*bytes.first()?).filter(|len| *len <= 4)?;
    let id = unsigned(bytes.get(..id_len)?, 4).and_then(|v| u32::try_from(v).ok())?;
    let size_bytes = bytes.get(id_len..)?;
    let size_len = vint_len(*size_bytes.first()?)?;
    let raw = unsigned(size_bytes.get(..size_len)?, 8)?;
    // Value bits: 7 per byte; the marker bit is the highest of them plus one.
    let value_bits = 7 * size_len as u32;
    let max = (1u64 << value_bits) - 1;
    let value = raw & max;
    Some(ElementHeader {
        id,
        header_len: (id_len + size_len) as u64,
        data_len: (value != max).then_some(value),
    })
}

/// Length of an EBML variable-length integer from its first byte (1..=8; `None` for 0).
fn vint_len(first: u8) -> Option<usize> {
    (first != 0).then(|| first.leading_zeros() as usize + 1)
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // file ranges, not a range to collect
mod tests {
    use super::super::tests::{drive, index_of};
    use super::super::{Container, Step};
    use super::*;

    /// An element with an 8-byte size (as ffmpeg writes for big ones) or the shortest.
    fn element(id: u32, data: &[u8]) -> Vec<u8> {
        let mut out = id_bytes(id);
        out.extend(size_bytes(data.len() as u64));
        out.extend_from_slice(data);
        out
    }

    fn id_bytes(id: u32) -> Vec<u8> {
        let bytes = id.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        bytes[skip..].to_vec()
    }

    /// The shortest EBML size encoding of `len`.
    fn size_bytes(len: u64) -> Vec<u8> {
        for n in 1..=8u32 {
            if len < (1u64 << (7 * n)) - 1 {
                let marked = len | (1u64 << (7 * n));
                return marked.to_be_bytes()[8 - n as usize..].to_vec();
            }
        }
        panic!("too big");
    }

    fn uint(v: u64) -> Vec<u8> {
        let bytes = v.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
        bytes[skip..].to_vec()
    }

    fn seek(target: u32, position: u64) -> Vec<u8> {
        let mut body = element(SEEK_ID_ID, &target.to_be_bytes());
        body.extend(element(SEEK_POSITION_ID, &uint(position)));
        element(SEEK_ID, &body)
    }

    fn ebml_header() -> Vec<u8> {
        // DocType "matroska" (0x4282) is all a reader needs here.
        element(EBML_ID, &element(0x4282, b"matroska"))
    }

    /// A file: EBML header, then a Segment whose data is `level1` (elements placed at the
    /// given Segment-relative positions, gaps filled with zeros: a Void's worth of bytes).
    fn file_with(level1: &[(u64, Vec<u8>)], segment_size: Option<u64>) -> (Vec<u8>, u64) {
        let mut data = Vec::new();
        for (position, bytes) in level1 {
            data.resize(*position as usize, 0);
            data.extend_from_slice(bytes);
        }
        let mut file = ebml_header();
        file.extend(id_bytes(SEGMENT_ID));
        match segment_size {
            Some(_) => file.extend([0x01, 0, 0, 0, 0, 0, 0, 0]),
            None => file.extend([0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        }
        let size_at = file.len() - 7;
        let segment_data = file.len() as u64;
        if segment_size.is_some() {
            let len = (data.len() as u64).to_be_bytes();
            file[size_at..size_at + 7].copy_from_slice(&len[1..]);
        }
        file.extend(data);
        (file, segment_data)
    }

    fn cluster(len: usize) -> Vec<u8> {
        element(CLUSTER_ID, &vec![0xAA; len])
    }

    #[test]
    fn cues_at_the_end_are_found_through_the_seek_head() {
        let cues = element(CUES_ID, &vec![0xBB; 40_000]);
        let clusters_at = 200u64;
        let cues_at = clusters_at + 500_000 + 20;
        let head = element(SEEK_HEAD_ID, &seek(CUES_ID, cues_at));
        for segment_size in [Some(0), None] {
            let (file, segment_data) = file_with(
                &[
                    (0, head.clone()),
                    (clusters_at, cluster(500_000)),
                    (cues_at, cues.clone()),
                ],
                segment_size,
            );
            let (step, rounds) = drive(&file);
            let start = segment_data + cues_at;
            assert_eq!(
                index_of(&step),
                Some((Container::Matroska, vec![start..start + cues.len() as u64])),
                "segment size {segment_size:?}"
            );
            assert_eq!(rounds, 2, "the head, then the Cues header");
        }
    }

    #[test]
    fn a_second_seek_head_at_the_end_is_followed() {
        let cues = element(CUES_ID, &[0xBB; 300]);
        let second_at = 100_000u64;
        let cues_at = 100_100u64;
        let first = element(SEEK_HEAD_ID, &seek(SEEK_HEAD_ID, second_at));
        let second = element(SEEK_HEAD_ID, &seek(CUES_ID, cues_at));
        let (file, segment_data) = file_with(
            &[
                (0, first),
                (100, cluster(90_000)),
                (second_at, second),
                (cues_at, cues.clone()),
            ],
            Some(0),
        );
        let (step, _) = drive(&file);
        let start = segment_data + cues_at;
        assert_eq!(
            index_of(&step),
            Some((Container::Matroska, vec![start..start + cues.len() as u64]))
        );
    }

    #[test]
    fn cues_at_the_front_are_found_by_walking() {
        let info = element(0x1549_A966, &[0x11; 60]);
        let cues = element(CUES_ID, &[0xBB; 900]);
        let mut level1 = info.clone();
        let cues_at = level1.len() as u64;
        level1.extend(&cues);
        level1.extend(cluster(20_000));
        let (file, segment_data) = file_with(&[(0, level1)], Some(0));
        let (step, rounds) = drive(&file);
        let start = segment_data + cues_at;
        assert_eq!(
            index_of(&step),
            Some((Container::Matroska, vec![start..start + cues.len() as u64]))
        );
        assert_eq!(rounds, 1);
    }

    #[test]
    fn no_cues_before_the_first_cluster_gives_nothing() {
        let head = element(SEEK_HEAD_ID, &seek(0x1654_AE6B, 300)); // Tracks only
        let clusters_at = head.len() as u64;
        let (file, _) = file_with(&[(0, head), (clusters_at, cluster(5000))], Some(0));
        assert_eq!(drive(&file).0, Step::Unknown);
    }

    #[test]
    fn hostile_seek_heads_give_nothing() {
        // Cues position past the end of the file.
        let head = element(SEEK_HEAD_ID, &seek(CUES_ID, u64::MAX - 10));
        let (file, _) = file_with(&[(0, head), (100, cluster(5000))], Some(0));
        assert_eq!(drive(&file).0, Step::Unknown, "position overflows");

        let head = element(SEEK_HEAD_ID, &seek(CUES_ID, 1 << 40));
        let (file, _) = file_with(&[(0, head), (100, cluster(5000))], Some(0));
        assert_eq!(drive(&file).0, Step::Unknown, "position past the end");

        // Pointing at a Cluster rather than Cues.
        let head = element(SEEK_HEAD_ID, &seek(CUES_ID, 100));
        let (file, _) = file_with(&[(0, head), (100, cluster(5000))], Some(0));
        assert_eq!(drive(&file).0, Step::Unknown, "not a Cues element");

        // Two SeekHeads naming each other: followed forward once, then the walk stops.
        let a = element(SEEK_HEAD_ID, &seek(SEEK_HEAD_ID, 1000));
        let b = element(SEEK_HEAD_ID, &seek(SEEK_HEAD_ID, 0));
        let (file, _) = file_with(&[(0, a), (1000, b), (2000, cluster(100))], Some(0));
        let (step, rounds) = drive(&file);
        assert_eq!(step, Step::Unknown, "SeekHead loop");
        assert!(rounds <= 2);

        // A SeekHead claiming a huge body.
        let mut file = ebml_header();
        file.extend(id_bytes(SEGMENT_ID));
        file.extend(size_bytes(1 << 30));
        file.extend(id_bytes(SEEK_HEAD_ID));
        file.extend(size_bytes(1 << 20));
        file.resize(10_000, 0x42);
        assert_eq!(drive(&file).0, Step::Unknown, "oversized SeekHead");
    }

    #[test]
    fn malformed_headers_give_nothing() {
        // Unknown-size EBML header; a zero byte where a size should start; a cut file.
        let mut file = id_bytes(EBML_ID);
        file.push(0xff);
        file.resize(100, 0);
        assert_eq!(drive(&file).0, Step::Unknown, "unknown-size EBML header");
        let mut file = id_bytes(EBML_ID);
        file.push(0x00);
        file.resize(100, 0);
        assert_eq!(drive(&file).0, Step::Unknown, "zero vint");
        assert_eq!(drive(&id_bytes(EBML_ID)).0, Step::Unknown, "cut short");
        // Something else than a Segment after the EBML header.
        let mut file = ebml_header();
        file.extend(element(0x1549_A966, &[0; 10]));
        assert_eq!(drive(&file).0, Step::Unknown, "no Segment");
        // A level-1 element of unknown size.
        let mut level1 = id_bytes(0x1549_A966);
        level1.push(0xff);
        level1.resize(200, 0);
        let (file, _) = file_with(&[(0, level1)], Some(0));
        assert_eq!(
            drive(&file).0,
            Step::Unknown,
            "unknown-size level-1 element"
        );
    }

    #[test]
    fn element_headers_parse_every_length() {
        assert_eq!(
            element_header(&[0xEC, 0x81]),
            Some(ElementHeader {
                id: 0xEC,
                header_len: 2,
                data_len: Some(1)
            })
        );
        assert_eq!(
            element_header(&[
                0x1F, 0x43, 0xB6, 0x75, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ])
            .map(|h| (h.id, h.header_len, h.data_len)),
            Some((CLUSTER_ID, 12, None))
        );
        assert_eq!(
            element_header(&[0x42, 0x82, 0x40, 0x02]).map(|h| h.data_len),
            Some(Some(2))
        );
        assert_eq!(element_header(&[0x08, 1, 2, 3, 4, 0x81]), None, "5-byte ID");
        assert_eq!(element_header(&[0x42, 0x82, 0x40]), None, "cut size");
        assert_eq!(element_header(&[]), None);
    }

    #[test]
    fn seek_targets_skip_foreign_children_and_stop_at_garbage() {
        let mut body = element(0xEC, &[0; 5]); // Void
        body.extend(seek(0x1549_A966, 77));
        body.extend(seek(CUES_ID, 12345));
        body.extend([0x00, 0x00]); // garbage ends the list
        body.extend(seek(SEEK_HEAD_ID, 999));
        assert_eq!(
            seek_targets(&body),
            SeekTargets {
                cues: Some(12345),
                seek_head: None
            }
        );
    }
}
