//! Magnet URIs: `magnet:?xt=urn:btih:<hash>&dn=<name>&tr=<tracker>&x.pe=<host:port>`.
//!
//! Pure parsing into a `Magnet`. The info hash may be 40 hex digits or 32 base32
//! characters (BEP 9); every `tr` becomes its own tracker tier, as clients do.

use std::net::SocketAddr;

use crate::types::InfoHash;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    pub info_hash: InfoHash,
    pub display_name: Option<String>,
    pub trackers: Vec<String>,
    pub peers: Vec<SocketAddr>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MagnetError {
    #[error("not a magnet link (it must start with `magnet:?`)")]
    NotAMagnet,
    #[error("magnet link has no BitTorrent info hash (`xt=urn:btih:...`)")]
    NoInfoHash,
    #[error("magnet info hash {0:?} is neither 40 hex digits nor 32 base32 characters")]
    BadInfoHash(String),
}

impl Magnet {
    pub fn parse(uri: &str) -> Result<Magnet, MagnetError> {
        let query = uri
            .strip_prefix("magnet:?")
            .ok_or(MagnetError::NotAMagnet)?;
        let mut info_hash = None;
        let mut display_name = None;
        let mut trackers = Vec::new();
        let mut peers = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value);
            match key {
                "xt" => {
                    if let Some(hash) = value.strip_prefix("urn:btih:") {
                        info_hash = Some(parse_hash(hash)?);
                    }
                }
                "dn" => display_name = Some(value),
                "tr" if !value.is_empty() && !trackers.contains(&value) => trackers.push(value),
                "x.pe" => {
                    if let Ok(addr) = value.parse() {
                        peers.push(addr);
                    } else if let Ok(mut resolved) =
                        std::net::ToSocketAddrs::to_socket_addrs(&value)
                    {
                        peers.extend(resolved.next());
                    }
                }
                _ => {}
            }
        }
        Ok(Magnet {
            info_hash: info_hash.ok_or(MagnetError::NoInfoHash)?,
            display_name,
            trackers,
            peers,
        })
    }

    /// Tracker tiers: one tracker per tier, in the order given.
    pub fn tracker_tiers(&self) -> Vec<Vec<String>> {
        self.trackers.iter().map(|t| vec![t.clone()]).collect()
    }
}

fn parse_hash(text: &str) -> Result<InfoHash, MagnetError> {
    let bad = || MagnetError::BadInfoHash(text.to_string());
    let mut out = [0u8; 20];
    match text.len() {
        40 => {
            for (i, byte) in out.iter_mut().enumerate() {
                let pair = text.get(2 * i..2 * i + 2).ok_or_else(bad)?;
                *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
            }
        }
        32 => {
            // RFC 4648 base32: 32 characters × 5 bits = 160 bits.
            let mut acc: u64 = 0;
            let mut bits = 0;
            let mut pos = 0;
            for c in text.bytes() {
                let v = match c.to_ascii_uppercase() {
                    c @ b'A'..=b'Z' => c - b'A',
                    c @ b'2'..=b'7' => c - b'2' + 26,
                    _ => return Err(bad()),
                };
                acc = (acc << 5) | u64::from(v);
                bits += 5;
                if bits >= 8 {
                    bits -= 8;
                    *out.get_mut(pos).ok_or_else(bad)? = (acc >> bits) as u8;
                    pos += 1;
                }
            }
        }
        _ => return Err(bad()),
    }
    Ok(InfoHash(out))
}

/// `%XX` and `+` decoding; invalid escapes are kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(byte) = hex {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_hash_name_trackers_and_peers() {
        let m = Magnet::parse(
            "magnet:?xt=urn:btih:fb33AB00000000000000000000000000000000b0&dn=My+File%20%C3%BC\
             &tr=http%3A%2F%2F127.0.0.1%3A6969%2Fannounce&tr=udp://127.0.0.1:6969&x.pe=127.0.0.2:51000",
        )
        .unwrap();
        assert_eq!(
            m.info_hash.to_hex(),
            "fb33ab00000000000000000000000000000000b0"
        );
        assert_eq!(m.display_name.as_deref(), Some("My File ü"));
        assert_eq!(
            m.trackers,
            vec!["http://127.0.0.1:6969/announce", "udp://127.0.0.1:6969"]
        );
        assert_eq!(m.tracker_tiers().len(), 2);
        assert_eq!(m.peers, vec!["127.0.0.2:51000".parse().unwrap()]);
    }

    #[test]
    fn base32_hash_equals_its_hex_form() {
        // 20 bytes of 0x00..0x13 in base32 and hex.
        let hex =
            Magnet::parse("magnet:?xt=urn:btih:000102030405060708090a0b0c0d0e0f10111213").unwrap();
        let b32 = Magnet::parse("magnet:?xt=urn:btih:AAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQT").unwrap();
        assert_eq!(hex.info_hash, b32.info_hash);
    }

    #[test]
    fn bad_magnets_are_refused_clearly() {
        assert_eq!(Magnet::parse("http://x"), Err(MagnetError::NotAMagnet));
        assert_eq!(Magnet::parse("magnet:?dn=x"), Err(MagnetError::NoInfoHash));
        assert!(matches!(
            Magnet::parse("magnet:?xt=urn:btih:xyz"),
            Err(MagnetError::BadInfoHash(_))
        ));
        assert!(matches!(
            Magnet::parse("magnet:?xt=urn:btih:zz33ab00000000000000000000000000000000b0"),
            Err(MagnetError::BadInfoHash(_))
        ));
    }
}
