//! The BEP 10 extended handshake: the bencoded dictionary carried by `Message::Extended`
//! with id 0, in which each side names the extensions it supports and the message ids it
//! wants them sent under. Owns that dictionary's fields, its encoding and a parse that
//! refuses anything malformed cleanly. Extension messages themselves (BEP 9 metadata) are
//! not here.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::WireError;

/// Deepest list or dictionary nesting `parse` accepts. A real extended handshake nests
/// two levels (the dictionary and `m`); serde_bencode recurses once per level, even into
/// keys it ignores, so a frame of a million `l` bytes would otherwise overflow our stack.
const MAX_DEPTH: usize = 16;

/// The fields of an extended handshake that swarmfs uses; other keys are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ExtendedHandshake {
    /// Extension name → the id the sender wants that extension's messages sent with.
    /// Id 0 means the extension is disabled.
    #[serde(default)]
    pub m: BTreeMap<String, i64>,
    /// Size in bytes of the info dictionary (BEP 9), if the sender has it.
    #[serde(default)]
    pub metadata_size: Option<u64>,
    /// Client name and version, for logs; invalid UTF-8 is replaced, not refused.
    #[serde(default, deserialize_with = "lossy_string")]
    pub v: Option<String>,
    /// The sender's listening port.
    #[serde(default)]
    pub p: Option<u16>,
    /// How many outstanding requests the sender will queue from us.
    #[serde(default)]
    pub reqq: Option<u32>,
}

impl ExtendedHandshake {
    /// The id under which to send messages of extension `name`, if the peer enabled it:
    /// absent, 0 (disabled) and values outside a message id's range all give `None`.
    pub fn extension_id(&self, name: &str) -> Option<u8> {
        let id = self.m.get(name)?;
        u8::try_from(*id).ok().filter(|id| *id != 0)
    }

    /// Bencodes the handshake. Keys are written in the sorted order bencode requires:
    /// `m` (itself sorted, being a `BTreeMap`), `metadata_size`, `p`, `reqq`, `v`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(b'd');
        put_str(&mut out, b"m");
        out.push(b'd');
        for (name, id) in &self.m {
            put_str(&mut out, name.as_bytes());
            put_int(&mut out, id);
        }
        out.push(b'e');
        if let Some(size) = self.metadata_size {
            put_str(&mut out, b"metadata_size");
            put_int(&mut out, size);
        }
        if let Some(port) = self.p {
            put_str(&mut out, b"p");
            put_int(&mut out, port);
        }
        if let Some(reqq) = self.reqq {
            put_str(&mut out, b"reqq");
            put_int(&mut out, reqq);
        }
        if let Some(v) = &self.v {
            put_str(&mut out, b"v");
            put_str(&mut out, v.as_bytes());
        }
        out.push(b'e');
        out
    }

    /// Parses a peer's extended handshake. Unknown keys are ignored; a known key of the
    /// wrong type or out of its range (a `p` above 65535) is an error, as is nesting
    /// deeper than `MAX_DEPTH`. Bytes after the dictionary are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        check_depth(bytes)?;
        serde_bencode::from_bytes(bytes).map_err(WireError::BadExtendedHandshake)
    }
}

fn lossy_string<'de, D: Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    let bytes = Option::<serde_bytes::ByteBuf>::deserialize(de)?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(s);
}

fn put_int(out: &mut Vec<u8>, n: impl std::fmt::Display) {
    out.extend_from_slice(format!("i{n}e").as_bytes());
}

/// Refuses `bytes` if lists and dictionaries in its first bencoded value nest deeper
/// than `MAX_DEPTH`; anything else malformed is left to serde_bencode to report.
fn check_depth(bytes: &[u8]) -> Result<(), WireError> {
    first_value_end(bytes).map(|_| ())
}

/// Walks the first bencoded value in `bytes` without recursing and returns the offset just
/// past it (`None` if it is malformed or truncated), refusing nesting deeper than
/// `MAX_DEPTH`. Extension messages such as BEP 9's data message put raw bytes after a
/// dictionary; this is how their start is found.
pub(crate) fn first_value_end(bytes: &[u8]) -> Result<Option<usize>, WireError> {
    let mut depth = 0usize;
    let mut pos = 0usize;
    while let Some(&byte) = bytes.get(pos) {
        let next = match byte {
            b'l' | b'd' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(WireError::ExtendedHandshakeTooDeep { max: MAX_DEPTH });
                }
                Some(pos + 1)
            }
            b'e' => {
                depth = depth.saturating_sub(1);
                Some(pos + 1)
            }
            b'i' => find_after(bytes, pos, b'e'),
            b'0'..=b'9' => string_end(bytes, pos),
            _ => None,
        };
        match next {
            Some(next) if depth > 0 => pos = next,
            Some(next) => return Ok(Some(next)),
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// Index just past the first `needle` at or after `pos`.
fn find_after(bytes: &[u8], pos: usize, needle: u8) -> Option<usize> {
    let offset = bytes.get(pos..)?.iter().position(|&b| b == needle)?;
    pos.checked_add(offset)?.checked_add(1)
}

/// Index just past the byte string `<len>:<bytes>` starting at `pos`.
fn string_end(bytes: &[u8], pos: usize) -> Option<usize> {
    let colon = find_after(bytes, pos, b':')?;
    let digits = bytes.get(pos..colon.checked_sub(1)?)?;
    let len: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    colon.checked_add(len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failed unwrap is a failed test.
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// As libtorrent 2.0.8 sends it (keys in its order, which is bencode's sorted order).
    const LIBTORRENT: &[u8] = b"d1:md11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei31235e1:pi6881e4:reqqi500e1:v16:libtorrent 2.0.8e";

    #[test]
    fn parses_a_libtorrent_handshake() {
        let hs = ExtendedHandshake::parse(LIBTORRENT).unwrap();
        assert_eq!(hs.m.get("ut_metadata"), Some(&2));
        assert_eq!(hs.m.get("ut_pex"), Some(&1));
        assert_eq!(hs.m.len(), 2);
        assert_eq!(hs.metadata_size, Some(31235));
        assert_eq!(hs.p, Some(6881));
        assert_eq!(hs.reqq, Some(500));
        assert_eq!(hs.v.as_deref(), Some("libtorrent 2.0.8"));
        assert_eq!(hs.extension_id("ut_metadata"), Some(2));
    }

    #[test]
    fn string_length_running_past_the_end_is_refused() {
        // The same handshake with `v` claiming 17 bytes for "libtorrent 2.0.8" (16): the
        // string swallows the closing `e` and the dictionary never ends.
        let overlong = b"d1:md11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei31235e1:pi6881e4:reqqi500e1:v17:libtorrent 2.0.8e";
        assert!(matches!(
            ExtendedHandshake::parse(overlong),
            Err(WireError::BadExtendedHandshake(_))
        ));
    }

    #[test]
    fn encoding_reproduces_the_libtorrent_bytes() {
        let hs = ExtendedHandshake::parse(LIBTORRENT).unwrap();
        assert_eq!(hs.to_bytes(), LIBTORRENT);
    }

    #[test]
    fn round_trips_with_and_without_optional_fields() {
        let full = ExtendedHandshake {
            m: BTreeMap::from([("ut_metadata".to_owned(), 3), ("lt_donthave".to_owned(), 7)]),
            metadata_size: Some(1 << 20),
            v: Some("swarmfs 0.1.0".to_owned()),
            p: Some(51413),
            reqq: Some(250),
        };
        assert_eq!(ExtendedHandshake::parse(&full.to_bytes()).unwrap(), full);
        let empty = ExtendedHandshake::default();
        assert_eq!(empty.to_bytes(), b"d1:mdee");
        assert_eq!(ExtendedHandshake::parse(&empty.to_bytes()).unwrap(), empty);
    }

    #[test]
    fn unknown_keys_and_trailing_bytes_are_ignored() {
        let bytes = b"d1:md6:ut_pexi1ee6:yourip4:\x7f\x00\x00\x0111:upload_onlyi1e1:xld1:ali1eeeee<raw data>";
        let hs = ExtendedHandshake::parse(bytes).unwrap();
        assert_eq!(hs.extension_id("ut_pex"), Some(1));
        assert_eq!(hs.p, None);
    }

    #[test]
    fn extension_id_hides_disabled_and_out_of_range_ids() {
        let hs = ExtendedHandshake::parse(b"d1:md1:ai0e1:bi256e1:ci-1e1:di255eee").unwrap();
        assert_eq!(hs.extension_id("a"), None);
        assert_eq!(hs.extension_id("b"), None);
        assert_eq!(hs.extension_id("c"), None);
        assert_eq!(hs.extension_id("d"), Some(255));
        assert_eq!(hs.extension_id("missing"), None);
    }

    #[test]
    fn non_utf8_client_name_is_replaced_not_refused() {
        let hs = ExtendedHandshake::parse(b"d1:v3:a\xffbe").unwrap();
        assert_eq!(hs.v.as_deref(), Some("a\u{fffd}b"));
    }

    #[test]
    fn wrong_typed_or_out_of_range_fields_are_refused() {
        let bad: &[&[u8]] = &[
            b"d1:p4:6881e",              // port as a string
            b"d1:pi70000ee",             // port above u16
            b"d1:pi-1ee",                // negative port
            b"d13:metadata_sizei-5ee",   // negative size
            b"d1:mi1ee",                 // m not a dictionary
            b"d1:md1:a3:abcee",          // id not an integer
            b"d4:reqqi99999999999999ee", // reqq above u32
            b"d1:vi1ee",                 // v not a string
            b"li1ee",                    // not a dictionary
            b"d1:md",                    // truncated
            b"",
        ];
        for bytes in bad {
            assert!(
                matches!(
                    ExtendedHandshake::parse(bytes),
                    Err(WireError::BadExtendedHandshake(_))
                ),
                "accepted {:?}",
                bytes.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn deep_nesting_is_refused_before_serde_recurses() {
        // Inside an ignored key, where serde_bencode would recurse once per level.
        let mut bytes = b"d1:x".to_vec();
        bytes.extend(std::iter::repeat_n(b'l', 1 << 20));
        assert!(matches!(
            ExtendedHandshake::parse(&bytes),
            Err(WireError::ExtendedHandshakeTooDeep { max: MAX_DEPTH })
        ));
        // Nesting within the limit still parses.
        let ok = b"d1:xlllleeee1:pi1ee";
        assert_eq!(ExtendedHandshake::parse(ok).unwrap().p, Some(1));
    }

    #[test]
    fn depth_check_skips_string_contents() {
        // `l` and `d` bytes inside strings are not nesting.
        let bytes = b"d1:v20:llllllllllllllllllll1:pi2ee";
        assert_eq!(ExtendedHandshake::parse(bytes).unwrap().p, Some(2));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = StdRng::seed_from_u64(0x05ee_de10);
        let alphabet = b"dlie0123456789:-xmp";
        let mut accepted = 0;
        for _ in 0..20_000 {
            let len = rng.random_range(0..48);
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            if rng.random_bool(0.5) {
                bytes.splice(0..0, b"d1:md".iter().copied());
            }
            if let Ok(hs) = ExtendedHandshake::parse(&bytes) {
                accepted += 1;
                // Whatever parses must survive its own encoding.
                assert_eq!(ExtendedHandshake::parse(&hs.to_bytes()).unwrap(), hs);
            }
        }
        assert!(accepted < 20_000, "garbage should mostly be refused");
    }
}
