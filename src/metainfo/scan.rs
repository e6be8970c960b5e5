//! The bencode scanner: checks syntax and finds byte spans, builds nothing. It exists because
//! the info hash must be taken over the `info` value exactly as written, and serde_bencode
//! gives no spans. Iterative, so hostile nesting costs a `Vec` and an error, never the stack.
//! Uses only the parent's error type.

use super::{MAX_BENCODE_DEPTH, MetainfoError};

/// One key of a dictionary and the raw bytes of its value.
pub(super) struct Entry<'a> {
    pub(super) key: &'a [u8],
    pub(super) value: &'a [u8],
}

/// The entries of the top-level dictionary, after checking that the whole input is one
/// well-formed bencoded dictionary.
pub(super) fn top_level_entries(bytes: &[u8]) -> Result<Vec<Entry<'_>>, MetainfoError> {
    if bytes.first() != Some(&b'd') {
        if bytes.is_empty() {
            return Err(not_bencode(0, "truncated"));
        }
        return Err(MetainfoError::NotADictionary);
    }
    let end = value_end(bytes, 0, MAX_BENCODE_DEPTH)?;
    if end != bytes.len() {
        return Err(MetainfoError::TrailingBytes(
            bytes.len().saturating_sub(end),
        ));
    }
    // The whole dictionary is well-formed, so walking it again cannot fail past `end`.
    let mut entries = Vec::new();
    let mut pos = 1;
    while byte_at(bytes, pos)? != b'e' {
        let (key, value_start) = string_span(bytes, pos)?;
        let next = value_end(bytes, value_start, MAX_BENCODE_DEPTH)?;
        entries.push(Entry {
            key,
            value: span(bytes, value_start, next)?,
        });
        pos = next;
    }
    Ok(entries)
}

/// One open container while scanning.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    List,
    /// A dictionary whose next item is a key.
    DictKey,
    /// A dictionary whose next item is the value of the key just read.
    DictValue,
}

/// Offset just past the bencode value starting at `start`, nesting at most `max_depth` deep.
/// Iterative, so hostile nesting costs a `Vec`, never the stack.
pub(super) fn value_end(
    bytes: &[u8],
    start: usize,
    max_depth: usize,
) -> Result<usize, MetainfoError> {
    let mut open: Vec<Open> = Vec::new();
    let mut pos = start;
    loop {
        let byte = byte_at(bytes, pos)?;
        let top = open.last().copied();
        if byte == b'e' && top.is_some() {
            if top == Some(Open::DictValue) {
                return Err(not_bencode(pos, "dictionary key without a value"));
            }
            open.pop();
            pos += 1;
        } else if top == Some(Open::DictKey) && !byte.is_ascii_digit() {
            return Err(not_bencode(pos, "dictionary key is not a string"));
        } else {
            match byte {
                b'i' => pos = integer_end(bytes, pos)?,
                b'0'..=b'9' => pos = string_span(bytes, pos)?.1,
                b'l' | b'd' if open.len() >= max_depth => {
                    return Err(not_bencode(pos, "nesting too deep"));
                }
                b'l' | b'd' => {
                    open.push(if byte == b'l' {
                        Open::List
                    } else {
                        Open::DictKey
                    });
                    pos += 1;
                    continue;
                }
                _ => return Err(not_bencode(pos, "unexpected byte")),
            }
        }
        // A value (scalar or just-closed container) is complete.
        match open.last_mut() {
            None => return Ok(pos),
            Some(state @ Open::DictKey) => *state = Open::DictValue,
            Some(state @ Open::DictValue) => *state = Open::DictKey,
            Some(Open::List) => {}
        }
    }
}

/// Offset just past the integer `i<digits>e` at `start`; refuses `-0` and leading zeros.
fn integer_end(bytes: &[u8], start: usize) -> Result<usize, MetainfoError> {
    let mut pos = start + 1;
    let negative = byte_at(bytes, pos)? == b'-';
    if negative {
        pos += 1;
    }
    let digits_start = pos;
    let digits_end = digits_end(bytes, pos)?;
    match digits_end - digits_start {
        0 => return Err(not_bencode(digits_start, "integer without digits")),
        1 if negative && byte_at(bytes, digits_start)? == b'0' => {
            return Err(not_bencode(start, "negative zero"));
        }
        1 => {}
        _ if byte_at(bytes, digits_start)? == b'0' => {
            return Err(not_bencode(digits_start, "leading zero in integer"));
        }
        _ => {}
    }
    if byte_at(bytes, digits_end)? != b'e' {
        return Err(not_bencode(digits_end, "integer not ended by `e`"));
    }
    Ok(digits_end + 1)
}

/// The contents of the string `<length>:<bytes>` at `start`, and the offset just past it.
fn string_span(bytes: &[u8], start: usize) -> Result<(&[u8], usize), MetainfoError> {
    let colon = digits_end(bytes, start)?;
    if colon == start {
        return Err(not_bencode(start, "string without a length"));
    }
    if colon - start > 1 && byte_at(bytes, start)? == b'0' {
        return Err(not_bencode(start, "leading zero in string length"));
    }
    if byte_at(bytes, colon)? != b':' {
        return Err(not_bencode(colon, "string length not followed by `:`"));
    }
    let mut length: usize = 0;
    for &digit in span(bytes, start, colon)? {
        length = length
            .checked_mul(10)
            .and_then(|length| length.checked_add(usize::from(digit - b'0')))
            .ok_or_else(|| not_bencode(start, "string length overflows"))?;
    }
    let contents_start = colon + 1;
    let end = contents_start
        .checked_add(length)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| not_bencode(bytes.len(), "truncated"))?;
    Ok((span(bytes, contents_start, end)?, end))
}

/// Offset of the first non-digit at or after `pos`; truncation is an error.
fn digits_end(bytes: &[u8], mut pos: usize) -> Result<usize, MetainfoError> {
    while byte_at(bytes, pos)?.is_ascii_digit() {
        pos += 1;
    }
    Ok(pos)
}

fn byte_at(bytes: &[u8], pos: usize) -> Result<u8, MetainfoError> {
    bytes
        .get(pos)
        .copied()
        .ok_or_else(|| not_bencode(bytes.len(), "truncated"))
}

fn span(bytes: &[u8], start: usize, end: usize) -> Result<&[u8], MetainfoError> {
    bytes
        .get(start..end)
        .ok_or_else(|| not_bencode(bytes.len(), "truncated"))
}

fn not_bencode(offset: usize, problem: &'static str) -> MetainfoError {
    MetainfoError::NotBencode { offset, problem }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message(bytes: &[u8]) -> String {
        top_level_entries(bytes).err().unwrap().to_string()
    }

    #[test]
    fn entries_are_the_raw_spans() {
        let bytes = b"d1:bi1e4:infod1:zi0e1:ai-2ee1:cl0:ee";
        let entries = top_level_entries(bytes).unwrap();
        let keys: Vec<&[u8]> = entries.iter().map(|entry| entry.key).collect();
        assert_eq!(keys, [b"b".as_slice(), b"info", b"c"]);
        assert_eq!(entries[1].value, b"d1:zi0e1:ai-2ee");
        assert_eq!(entries[2].value, b"l0:e");
    }

    #[test]
    fn every_truncation_is_reported_at_its_end() {
        let bytes: &[u8] = b"d8:announce3:url4:infod5:filesld6:lengthi3e4:pathl1:a1:beee\
            4:name1:x12:piece lengthi-16384e6:pieces0:ee";
        assert!(top_level_entries(bytes).is_ok());
        for cut in 0..bytes.len() {
            assert_eq!(
                message(&bytes[..cut]),
                format!("not bencode: truncated at byte {cut}")
            );
        }
    }

    #[test]
    fn bad_bencode_is_refused_with_its_offset() {
        let cases: &[(&[u8], &str)] = &[
            (b"d4:infoi03ee", "leading zero in integer at byte 8"),
            (b"d04:infoe", "leading zero in string length at byte 1"),
            (b"di1e1:ae", "dictionary key is not a string at byte 1"),
            (b"d1:ae", "dictionary key without a value at byte 4"),
            (b"d1:ai-0ee", "negative zero at byte 4"),
            (b"d1:aiee", "integer without digits at byte 5"),
            (b"d1:ai1xe", "integer not ended by `e` at byte 6"),
            (
                b"d1:a99999999999999999999999:xe",
                "string length overflows at byte 4",
            ),
            (b"d1:a999999:xe", "truncated at byte 13"),
            (b"d1:a3xabce", "string length not followed by `:` at byte 5"),
            (b"d1:axe", "unexpected byte at byte 4"),
        ];
        for (input, expected) in cases {
            assert_eq!(
                message(input),
                format!("not bencode: {expected}"),
                "input {input:?}"
            );
        }
        assert!(matches!(
            top_level_entries(b"i1e"),
            Err(MetainfoError::NotADictionary)
        ));
        assert!(matches!(
            top_level_entries(b"de\n"),
            Err(MetainfoError::TrailingBytes(1))
        ));
    }

    #[test]
    fn nesting_is_capped_without_recursion() {
        let bomb = [b"d1:a".as_slice(), &[b'l'; 100_000]].concat();
        assert_eq!(message(&bomb), "not bencode: nesting too deep at byte 67");
        let allowed = [b"d1:a".as_slice(), &[b'l'; 63], &[b'e'; 64]].concat();
        assert!(top_level_entries(&allowed).is_ok());
        let one_more = [b"d1:a".as_slice(), &[b'l'; 64], &[b'e'; 65]].concat();
        assert!(top_level_entries(&one_more).is_err());
    }
}
