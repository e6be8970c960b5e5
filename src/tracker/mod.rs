//! Announcing to trackers and reading their answers: who else is in a torrent's swarm.
//!
//! Owns the announce request and response, the one `TrackerError`, the shared
//! [`TrackerClient`], the scheme dispatch in [`announce`], and the per-torrent announce loop
//! over BEP 12 tiers ([`AnnounceLoop`]). Knows nothing of pieces: the torrent hands in byte
//! counts and takes peer addresses out. Uses `types`, reqwest, serde_bencode and tokio's UDP.
//!
//! # Layout
//!
//! - `mod.rs`: the request, response and error types, [`TrackerClient`] and [`announce`].
//! - `http.rs`: HTTP(S) trackers (BEP 3, BEP 23 compact peers, BEP 7 `peers6`).
//! - `udp.rs`: UDP trackers (BEP 15): connect, announce, retransmission, connection ids.
//! - `announce_loop.rs`: tiers, fail-over, intervals and backoff for one torrent.
//!
//! Invariant: nothing a tracker sends can panic. HTTP replies are size-capped, depth-checked
//! and walked as untyped bencode with every field checked for type and range; UDP datagrams
//! are read with checked slicing only, and ones that are not ours are ignored.

mod announce_loop;
mod http;
#[cfg(test)]
mod test_server;
mod udp;
#[cfg(test)]
mod udp_test_server;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub use announce_loop::{AnnounceConfig, AnnounceLoop, TransferStats, run_announce_loop};
pub use udp::UdpConfig;

use crate::types::{InfoHash, PeerId};

/// How long one announce may take, connect to last byte. A healthy tracker answers in well under
/// a second; 15 s tolerates a loaded one without holding up fail-over to the next tracker of the
/// tier for long.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(15);

/// What an announce tells the tracker about our state change (BEP 3 `event`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnounceEvent {
    /// The first announce of a session.
    Started,
    /// The download finished during this session (sent once, never at start).
    Completed,
    /// We are leaving the swarm.
    Stopped,
    /// A regular re-announce: no `event` parameter.
    Periodic,
}

impl AnnounceEvent {
    /// The `event` value on the wire, or `None` for a regular re-announce.
    pub fn as_param(self) -> Option<&'static str> {
        match self {
            AnnounceEvent::Started => Some("started"),
            AnnounceEvent::Completed => Some("completed"),
            AnnounceEvent::Stopped => Some("stopped"),
            AnnounceEvent::Periodic => None,
        }
    }
}

/// One announce, as sent. Byte counts are totals for this session.
#[derive(Clone, Debug)]
pub struct AnnounceRequest {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    /// The port our peer listener accepts on.
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    /// Bytes we still lack of the whole torrent.
    pub left: u64,
    pub event: AnnounceEvent,
    /// How many peers we would like back; trackers cap it themselves (often at 50 to 200).
    pub num_want: u32,
    /// The `tracker id` this tracker gave in an earlier reply, sent back as `trackerid`.
    pub tracker_id: Option<String>,
}

/// A tracker's answer, checked: every address has a non-zero port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// How long the tracker asks us to wait before the next regular announce (unclamped).
    pub interval: Duration,
    /// The shortest re-announce interval the tracker tolerates, if it said.
    pub min_interval: Option<Duration>,
    /// Peers from `peers` (compact or dictionary form) and `peers6`, in the order received.
    pub peers: Vec<SocketAddr>,
    /// `warning message`: the announce worked, but the tracker has something to say.
    pub warning: Option<String>,
    /// Seeders, if the tracker said.
    pub complete: Option<u64>,
    /// Leechers, if the tracker said.
    pub incomplete: Option<u64>,
    /// To be sent back as `trackerid` on later announces to this tracker.
    pub tracker_id: Option<String>,
}

/// Everything that can go wrong talking to one tracker. Each variant names the announce URL
/// (as configured, without our query parameters).
#[derive(thiserror::Error, Debug)]
pub enum TrackerError {
    #[error("could not build the tracker HTTP client")]
    ClientBuild {
        #[source]
        source: reqwest::Error,
    },
    #[error("HTTP announce to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("tracker {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("tracker {url} refused the announce: {reason}")]
    Failure { url: String, reason: String },
    #[error("tracker {url} sent a malformed reply: {what}")]
    Malformed { url: String, what: String },
    #[error("tracker {url} uses a scheme we do not speak")]
    UnsupportedScheme { url: String },
    #[error("tracker {url} did not answer within the announce timeout")]
    Timeout { url: String },
    #[error("tracker URL {url} is not usable: {what}")]
    BadUrl { url: String, what: String },
    #[error("could not resolve the host of tracker {url}")]
    Resolve {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("UDP announce to {url} failed")]
    Udp {
        url: String,
        #[source]
        source: std::io::Error,
    },
}

/// What every announce of this process shares: the HTTP connection pool, the address we
/// announce from, the `key` that lets a tracker recognise us if our IP changes, and the UDP
/// trackers' connection ids. Cheap to clone; clones share the pool and the connection ids.
#[derive(Clone, Debug)]
pub struct TrackerClient {
    http: reqwest::Client,
    /// Random per client (BEP 7 `key`); fixed for the session so the tracker can match us up.
    key: u32,
    /// The address UDP sockets bind to (reqwest binds the HTTP ones itself).
    local_addr: Option<IpAddr>,
    udp: UdpConfig,
    udp_sessions: udp::SessionCache,
}

impl TrackerClient {
    /// A client announcing from `local_addr` if given (trackers record the source IP, so a
    /// peer listening on 127.0.0.2 must announce from 127.0.0.2), with [`ANNOUNCE_TIMEOUT`].
    pub fn new(local_addr: Option<IpAddr>) -> Result<Self, TrackerError> {
        Self::with_timeout(local_addr, ANNOUNCE_TIMEOUT)
    }

    /// As [`TrackerClient::new`], with `timeout` for each HTTP announce instead of the
    /// default. UDP announces follow [`UdpConfig`] (see [`TrackerClient::with_udp_config`]).
    pub fn with_timeout(
        local_addr: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Self, TrackerError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("swarmfs/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .local_address(local_addr)
            .build()
            .map_err(|source| TrackerError::ClientBuild { source })?;
        Ok(TrackerClient {
            http,
            key: rand::random(),
            local_addr,
            udp: UdpConfig::default(),
            udp_sessions: udp::SessionCache::default(),
        })
    }

    /// This client with `config` for UDP trackers instead of [`UdpConfig::default`].
    #[must_use]
    pub fn with_udp_config(mut self, config: UdpConfig) -> Self {
        self.udp = config;
        self
    }
}

/// One announce to one tracker URL, dispatched on its scheme: `http`, `https` and `udp` are
/// spoken; anything else is [`TrackerError::UnsupportedScheme`].
pub async fn announce(
    client: &TrackerClient,
    url: &str,
    req: &AnnounceRequest,
) -> Result<AnnounceResponse, TrackerError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
            http::announce(client, url, req).await
        }
        Some(s) if s.eq_ignore_ascii_case("udp") => udp::announce(client, url, req).await,
        _ => Err(TrackerError::UnsupportedScheme {
            url: url.to_owned(),
        }),
    }
}

/// Bytes per compact IPv4 peer: address then port, both big-endian (BEP 23, BEP 15).
const COMPACT_V4_LEN: usize = 6;

/// Bytes per compact IPv6 peer: address then port, both big-endian (BEP 7, BEP 15).
const COMPACT_V6_LEN: usize = 18;

/// Compact IPv4 peers, or `None` if the length is not a multiple of 6. Port 0 is dropped.
fn compact_v4_peers(compact: &[u8]) -> Option<Vec<SocketAddr>> {
    if !compact.len().is_multiple_of(COMPACT_V4_LEN) {
        return None;
    }
    let peers = compact
        .chunks_exact(COMPACT_V4_LEN)
        .filter_map(|chunk| match *chunk {
            [a, b, c, d, port_hi, port_lo] => {
                let ip = IpAddr::V4(Ipv4Addr::new(a, b, c, d));
                nonzero_port(ip, u16::from_be_bytes([port_hi, port_lo]))
            }
            _ => None,
        })
        .collect();
    Some(peers)
}

/// Compact IPv6 peers, or `None` if the length is not a multiple of 18. Port 0 is dropped.
fn compact_v6_peers(compact: &[u8]) -> Option<Vec<SocketAddr>> {
    if !compact.len().is_multiple_of(COMPACT_V6_LEN) {
        return None;
    }
    let peers = compact
        .chunks_exact(COMPACT_V6_LEN)
        .filter_map(|chunk| match chunk.split_first_chunk::<16>()? {
            (ip, &[port_hi, port_lo]) => {
                let ip = IpAddr::V6(Ipv6Addr::from(*ip));
                nonzero_port(ip, u16::from_be_bytes([port_hi, port_lo]))
            }
            _ => None,
        })
        .collect();
    Some(peers)
}

fn nonzero_port(ip: IpAddr, port: u16) -> Option<SocketAddr> {
    (port != 0).then_some(SocketAddr::new(ip, port))
}

/// An error and all its sources, `: `-separated, for one log line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn request(event: AnnounceEvent) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: InfoHash([0xab; 20]),
            peer_id: PeerId(*b"-SF0100-abcdefghijkl"),
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event,
            num_want: 50,
            tracker_id: None,
        }
    }

    #[tokio::test]
    async fn unknown_schemes_are_unsupported() -> Result<(), TrackerError> {
        let client = TrackerClient::new(None)?;
        for url in ["ftp://x/", "udpx://tracker.example:6969", "no-scheme"] {
            let result = announce(&client, url, &request(AnnounceEvent::Started)).await;
            assert!(
                matches!(result, Err(TrackerError::UnsupportedScheme { url: ref u }) if u == url),
                "{url}: {result:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn error_chain_includes_sources() {
        let io = std::io::Error::other("inner cause");
        let outer = TrackerError::Malformed {
            url: "http://t/".into(),
            what: "x".into(),
        };
        assert_eq!(
            error_chain(&outer),
            "tracker http://t/ sent a malformed reply: x"
        );
        #[derive(thiserror::Error, Debug)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(error_chain(&Outer(io)), "outer: inner cause");
    }
}
