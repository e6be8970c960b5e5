//! Where a file keeps its container index, found from a few of its bytes: the MP4 `moov`
//! box, the Matroska `Cues`, the ZIP central directory, the ISO 9660 path tables and root
//! directory. Players and archive tools read these before any data (the lab's
//! `clients/README.md`: ffprobe, mpv and VLC read a `moov` at the end of the file first,
//! `unzip -l` and `7z l` the central directory, VLC always and mpv/ffmpeg on their first seek
//! the Cues at the end of a Matroska file), so the mount fetches them at open
//! (`fs/prefetch.rs`).
//!
//! Pure: no tokio, no I/O. [`locate`] looks at the bytes of one file known so far
//! ([`KnownBytes`]) and returns the next [`Step`]: read a few more bytes and ask again, the
//! file ranges holding the index, or nothing (a format not parsed here, or a malformed one).
//! It keeps no state between calls: each parses again from the start over the bytes known
//! now, so the caller only has to add what it read and bound the rounds.
//!
//! A `Need` is the least that will do (16 bytes to tell the format, a box or element header,
//! the end-of-central-directory record), so that no byte is asked for from a piece the
//! tools would not fetch themselves. The caller reads more around it, as [`widened`] says:
//! the rest of the pieces it touches come with the fetch anyway, and usually hold the next
//! few headers, so a file takes two or three reads.
//!
//! Every byte of the file is untrusted: offsets use checked arithmetic, integers are read
//! through bounds-checked helpers, every walk has a named bound, every read asked for is at
//! most [`MAX_NEED_BYTES`], and the index found is cut to [`MAX_INDEX_BYTES`]. One module per
//! format: `mp4`, `matroska`, `zip`, `iso9660`.

mod iso9660;
mod matroska;
mod mp4;
mod zip;

use std::ops::Range;

use bytes::Bytes;

/// The first read of every file: the magic numbers of the formats (Matroska's EBML ID
/// and a zip's local header signature are 4 bytes, an MP4's first box type ends at byte 8,
/// an ISO's system area is zeros). Few, so that a file starting just before the end of a
/// piece costs no fetch of the next one only to be told apart.
const SNIFF_BYTES: u64 = 16;

/// An isohybrid ISO starts with an MBR: x86 boot code, and 55 AA at bytes 510–511.
const BOOT_SECTOR_BYTES: u64 = 512;

/// The largest read a step asks for: the ZIP end-of-central-directory search (22 bytes
/// plus a comment of up to 65,535) is the largest, at 64 KiB + 22.
pub const MAX_NEED_BYTES: u64 = 128 * 1024;

/// The most index bytes a file may name. A 2-hour film's `moov` is 5–8 MiB and the central
/// directory of a 100,000-member zip ~6 MiB; ten times that still lets no hostile header
/// make an open fetch a whole large file. Ranges beyond it are cut (in file order: tools
/// read an index from its start).
pub const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;

/// The container formats whose index is located.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// MP4 / QuickTime: the `moov` box, wherever it is.
    Mp4,
    /// Matroska / WebM: the `Cues` element the SeekHead points at.
    Matroska,
    /// ZIP (and jar, docx, epub, apk…): the central directory up to the end of the file.
    Zip,
    /// ISO 9660: the path tables and root directory of each volume descriptor.
    Iso9660,
}

/// What to do next for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read these bytes of the file (non-empty, within the file, at most
    /// [`MAX_NEED_BYTES`]), add them to the [`KnownBytes`], and call [`locate`] again.
    Need(Range<u64>),
    /// The file ranges holding the index: sorted, disjoint, non-empty, within the file,
    /// [`MAX_INDEX_BYTES`] at most in total.
    Index {
        container: Container,
        file_ranges: Vec<Range<u64>>,
    },
    /// Not a format parsed here, or malformed: prefetch nothing more.
    Unknown,
}

/// The bytes of one file read so far, as spans at file offsets.
#[derive(Debug, Clone)]
pub struct KnownBytes {
    file_len: u64,
    spans: Vec<(u64, Bytes)>,
}

impl KnownBytes {
    pub fn new(file_len: u64) -> Self {
        KnownBytes {
            file_len,
            spans: Vec::new(),
        }
    }

    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Adds `bytes` read at `file_offset` (whatever lies past the file's end is dropped).
    pub fn insert(&mut self, file_offset: u64, bytes: Bytes) {
        let room = self.file_len.saturating_sub(file_offset);
        let keep = usize::try_from(room).map_or(bytes.len(), |room| room.min(bytes.len()));
        if keep > 0 {
            self.spans.push((file_offset, bytes.slice(..keep)));
        }
    }

    /// True if one span holds all of `file_range`.
    pub fn covers(&self, file_range: &Range<u64>) -> bool {
        self.span_with(file_range.start, file_range.end).is_some()
    }

    /// `len_bytes` (at most [`MAX_NEED_BYTES`]) at `file_offset`, fewer only where the file
    /// ends; `Stop::Need` if they are not known yet, `Stop::Unknown` if `file_offset` is at
    /// or past the end (a structure pointing there is malformed).
    fn get(&self, file_offset: u64, len_bytes: u64) -> Result<&[u8], Stop> {
        if file_offset >= self.file_len {
            return Err(Stop::Unknown);
        }
        let end = file_offset
            .saturating_add(len_bytes.min(MAX_NEED_BYTES))
            .min(self.file_len);
        self.span_with(file_offset, end)
            .ok_or(Stop::Need(file_offset..end))
    }

    fn span_with(&self, start: u64, end: u64) -> Option<&[u8]> {
        self.spans.iter().find_map(|(span_start, bytes)| {
            let from = usize::try_from(start.checked_sub(*span_start)?).ok()?;
            let to = usize::try_from(end.checked_sub(*span_start)?).ok()?;
            bytes.get(from..to)
        })
    }
}

/// Why a format's parser stopped short of an index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    /// These bytes are needed first.
    Need(Range<u64>),
    /// Not this format, or malformed.
    Unknown,
}

/// The next step towards `known`'s container index.
pub fn locate(known: &KnownBytes) -> Step {
    let found = sniff(known).and_then(|container| {
        let ranges = match container {
            Container::Mp4 => vec![mp4::moov(known)?],
            Container::Matroska => vec![matroska::cues(known)?],
            Container::Zip => vec![zip::central_directory(known)?],
            Container::Iso9660 => iso9660::directory_tables(known)?,
        };
        Ok((container, ranges))
    });
    match found {
        Ok((container, ranges)) => {
            let file_ranges = capped(ranges, known.file_len());
            if file_ranges.is_empty() {
                Step::Unknown
            } else {
                Step::Index {
                    container,
                    file_ranges,
                }
            }
        }
        Err(Stop::Need(range)) => Step::Need(range),
        Err(Stop::Unknown) => Step::Unknown,
    }
}

/// Which format the file's first bytes say it is.
fn sniff(known: &KnownBytes) -> Result<Container, Stop> {
    let magic = known.get(0, SNIFF_BYTES)?;
    if matroska::is_matroska(magic) {
        Ok(Container::Matroska)
    } else if zip::is_zip(magic) {
        Ok(Container::Zip)
    } else if mp4::is_mp4(magic) {
        Ok(Container::Mp4)
    } else if iso9660::has_system_area(known.file_len(), magic, || known.get(0, BOOT_SECTOR_BYTES))?
    {
        Ok(Container::Iso9660)
    } else {
        Err(Stop::Unknown)
    }
}

/// The file range worth reading when `need` is needed from a file that starts at
/// `file_torrent_offset` in a torrent of `piece_len`-byte pieces: `need` widened to the
/// pieces it touches (they are fetched whole anyway), by at most [`MAX_NEED_BYTES`] each
/// way, and never past the file.
pub fn widened(
    need: &Range<u64>,
    file_len: u64,
    file_torrent_offset: u64,
    piece_len: u64,
) -> Range<u64> {
    let (Some(start_t), Some(end_t)) = (
        file_torrent_offset.checked_add(need.start),
        file_torrent_offset.checked_add(need.end),
    ) else {
        return need.clone();
    };
    if piece_len == 0 || need.start >= need.end {
        return need.clone();
    }
    let piece_start_t = start_t - start_t % piece_len;
    let start_t = piece_start_t.max(start_t.saturating_sub(MAX_NEED_BYTES));
    let last_t = end_t - 1;
    let piece_end_t = (last_t - last_t % piece_len).saturating_add(piece_len);
    let end_t = piece_end_t.min(end_t.saturating_add(MAX_NEED_BYTES));
    let start = start_t.saturating_sub(file_torrent_offset);
    let end = end_t.saturating_sub(file_torrent_offset).min(file_len);
    start.min(need.start)..end.max(need.end)
}

/// `ranges` clamped to the file, sorted, merged, and cut to [`MAX_INDEX_BYTES`] in all.
fn capped(mut ranges: Vec<Range<u64>>, file_len: u64) -> Vec<Range<u64>> {
    for range in &mut ranges {
        range.end = range.end.min(file_len);
    }
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    let mut budget = MAX_INDEX_BYTES;
    let mut out = Vec::with_capacity(merged.len());
    for range in merged {
        if budget == 0 {
            break;
        }
        let len = (range.end - range.start).min(budget);
        budget -= len;
        out.push(range.start..range.start + len);
    }
    out
}

/// Big-endian and little-endian integers at `at` of untrusted bytes (`None` past the end).
fn be_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(array(bytes, at)?))
}

fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(array(bytes, at)?))
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(array(bytes, at)?))
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(array(bytes, at)?))
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(array(bytes, at)?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(array(bytes, at)?))
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[cfg(test)]
mod tests;
