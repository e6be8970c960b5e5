//! BEP 11 `ut_pex` messages: the peers a peer is connected to (`added`, compact IPv4 and
//! `added6` IPv6) and the ones it dropped since its last message.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Deserialize;

use super::WireError;

/// Our id for `ut_pex` messages (sent in our extended handshake's `m`).
pub const OUR_UT_PEX_ID: u8 = 2;
/// BEP 11: at most 50 added and 50 dropped peers per message.
pub const MAX_PEX_PEERS: usize = 50;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PexMessage {
    pub added: Vec<SocketAddr>,
    pub dropped: Vec<SocketAddr>,
}

#[derive(Deserialize)]
struct RawPex {
    #[serde(default, with = "serde_bytes")]
    added: Vec<u8>,
    #[serde(default, with = "serde_bytes")]
    added6: Vec<u8>,
    #[serde(default, with = "serde_bytes")]
    dropped: Vec<u8>,
    #[serde(default, with = "serde_bytes")]
    dropped6: Vec<u8>,
}

impl PexMessage {
    /// Parses a `ut_pex` payload; entries with port 0 are skipped.
    pub fn parse(payload: &[u8]) -> Result<Self, WireError> {
        super::ext::first_value_end(payload)?;
        let raw: RawPex =
            serde_bencode::from_bytes(payload).map_err(|_| WireError::BadPexMessage)?;
        let mut added = compact_v4(&raw.added);
        added.extend(compact_v6(&raw.added6));
        let mut dropped = compact_v4(&raw.dropped);
        dropped.extend(compact_v6(&raw.dropped6));
        Ok(PexMessage { added, dropped })
    }

    /// Encodes at most `MAX_PEX_PEERS` of each list.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (mut a4, mut a6, mut d4, mut d6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for addr in self.added.iter().take(MAX_PEX_PEERS) {
            push_compact(addr, &mut a4, &mut a6);
        }
        for addr in self.dropped.iter().take(MAX_PEX_PEERS) {
            push_compact(addr, &mut d4, &mut d6);
        }
        let mut out = b"d".to_vec();
        for (key, value) in [
            ("added", &a4),
            ("added6", &a6),
            ("dropped", &d4),
            ("dropped6", &d6),
        ] {
            out.extend_from_slice(format!("{}:{}{}:", key.len(), key, value.len()).as_bytes());
            out.extend_from_slice(value);
        }
        out.push(b'e');
        out
    }
}

fn push_compact(addr: &SocketAddr, v4: &mut Vec<u8>, v6: &mut Vec<u8>) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            v4.extend_from_slice(&ip.octets());
            v4.extend_from_slice(&addr.port().to_be_bytes());
        }
        IpAddr::V6(ip) => {
            v6.extend_from_slice(&ip.octets());
            v6.extend_from_slice(&addr.port().to_be_bytes());
        }
    }
}

fn compact_v4(bytes: &[u8]) -> Vec<SocketAddr> {
    bytes
        .chunks_exact(6)
        .filter_map(|c| {
            let ip = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
            let port = u16::from_be_bytes([c[4], c[5]]);
            (port != 0).then(|| SocketAddr::new(IpAddr::V4(ip), port))
        })
        .collect()
}

fn compact_v6(bytes: &[u8]) -> Vec<SocketAddr> {
    bytes
        .chunks_exact(18)
        .filter_map(|c| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&c[..16]);
            let port = u16::from_be_bytes([c[16], c[17]]);
            (port != 0).then(|| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let msg = PexMessage {
            added: vec![
                "127.0.0.2:6881".parse().unwrap(),
                "[::1]:7000".parse().unwrap(),
            ],
            dropped: vec!["127.0.0.3:1".parse().unwrap()],
        };
        assert_eq!(PexMessage::parse(&msg.to_bytes()).unwrap(), msg);
        let many = PexMessage {
            added: (1..=80)
                .map(|p| SocketAddr::from(([127, 0, 0, 9], p)))
                .collect(),
            dropped: vec![],
        };
        assert_eq!(
            PexMessage::parse(&many.to_bytes()).unwrap().added.len(),
            MAX_PEX_PEERS
        );
    }

    #[test]
    fn garbage_is_refused_and_partial_entries_skipped() {
        assert!(PexMessage::parse(b"not bencode").is_err());
        let odd = PexMessage::parse(b"d5:added7:\x7f\x00\x00\x02\x1a\xe1\x00e").unwrap();
        assert_eq!(odd.added, vec!["127.0.0.2:6881".parse().unwrap()]);
    }
}
