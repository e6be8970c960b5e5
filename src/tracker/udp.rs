//! UDP trackers (BEP 15): the connect and announce exchanges, their retransmission
//! schedule, and the connection ids that let later announces skip the connect.
//!
//! Owns the datagram formats, [`UdpConfig`] and the per-client [`SessionCache`]; uses the
//! parent's types and tokio's `UdpSocket` and `lookup_host`. Scrape (action 2) and BEP 41's
//! URL data (the `/path` of `udp://host:port/path`, which opentracker ignores) are not sent.
//!
//! An announce is: resolve the host, take a cached session (socket and connection id, valid
//! for [`CONNECTION_ID_LIFETIME`]) or open one and connect (action 0), then announce
//! (action 1). Every datagram waits [`UdpConfig::attempt_timeout`] for its reply and is
//! resent on a timeout, with the doubling of BEP 15 shared across both steps, so one
//! announce never takes longer than [`UdpConfig::total_timeout`]. A timed-out announce goes
//! back to connect: the id may be one the tracker has forgotten (it restarted, or the id
//! aged while we waited), and a fresh one costs a single round trip.
//!
//! Invariants: received bytes are read with checked slicing only, so no datagram can panic;
//! a datagram that is not the reply to our outstanding request (wrong transaction id, or too
//! short to carry one) is ignored and the wait goes on to the same deadline, so stray or
//! spoofed datagrams can neither fail nor prolong an announce. The socket is connected to
//! the tracker's address, so the kernel drops datagrams from any other source.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tracing::debug;

use super::{
    AnnounceEvent, AnnounceRequest, AnnounceResponse, TrackerClient, TrackerError,
    compact_v4_peers, compact_v6_peers,
};

/// BEP 15's magic constant opening a connect request.
const PROTOCOL_ID: u64 = 0x0417_2710_1980;

const ACTION_CONNECT: u32 = 0;
const ACTION_ANNOUNCE: u32 = 1;
const ACTION_ERROR: u32 = 3;

/// Every reply opens with action and transaction id, 4 bytes each.
const REPLY_HEADER_LEN: usize = 8;

/// A connect reply carries the 8-byte connection id after its header.
const CONNECTION_ID_LEN: usize = 8;

/// An announce reply carries interval, leechers and seeders (4 bytes each) before its peers.
const ANNOUNCE_COUNTS_LEN: usize = 12;

/// Receive buffer: the largest UDP payload there is, so no reply is ever cut short and a
/// long peer list is either whole or rejected by its length, never silently truncated.
const MAX_DATAGRAM_BYTES: usize = 65_536;

/// How long a connection id may be used, from the moment we asked for it: BEP 15 has the
/// tracker accept an id for a minute after it sent it, so counting from our send is safe.
pub const CONNECTION_ID_LIFETIME: Duration = Duration::from_secs(60);

/// The first wait for a reply. BEP 15 starts at 15 s and doubles up to 3840 s (over an
/// hour of retrying), which would leave a mount with no peers for minutes on one lost
/// datagram. A tracker anywhere answers within a few hundred milliseconds, so after 1 s the
/// datagram is lost, and resending a 16- or 98-byte datagram costs the tracker nothing.
pub const FIRST_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// Datagrams sent per announce before giving up: waits of 1 + 2 + 4 + 8 s, 15 s in all, the
/// same bound as an HTTP announce ([`super::ANNOUNCE_TIMEOUT`]), after which the announce
/// loop fails over to the next tracker of the tier. Four tries survive three lost datagrams.
pub const ATTEMPTS: u32 = 4;

/// BEP 15 stops doubling at 15 × 2^8 s; a longer schedule keeps waiting that long.
const MAX_DOUBLINGS: u32 = 8;

/// How a UDP announce waits and retries. The defaults are the constants above; tests use
/// milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpConfig {
    /// The wait for the first reply; each timeout doubles the next wait (BEP 15).
    pub first_attempt_timeout: Duration,
    /// Datagrams sent per announce, connects and announces together, before
    /// [`TrackerError::Timeout`].
    pub attempts: u32,
    /// How long a connection id is reused for later announces to the same tracker.
    pub connection_id_lifetime: Duration,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            first_attempt_timeout: FIRST_ATTEMPT_TIMEOUT,
            attempts: ATTEMPTS,
            connection_id_lifetime: CONNECTION_ID_LIFETIME,
        }
    }
}

impl UdpConfig {
    /// The wait for a reply after `timeouts` earlier timeouts in the same announce:
    /// `first_attempt_timeout × 2^timeouts`, the exponent capped at 8 as in BEP 15.
    pub fn attempt_timeout(&self, timeouts: u32) -> Duration {
        self.first_attempt_timeout
            .saturating_mul(1 << timeouts.min(MAX_DOUBLINGS))
    }

    /// The longest one announce can wait for replies: the sum of every attempt's wait.
    pub fn total_timeout(&self) -> Duration {
        (0..self.attempts)
            .map(|n| self.attempt_timeout(n))
            .fold(Duration::ZERO, Duration::saturating_add)
    }
}

/// A connected socket to one tracker and the connection id it gave us on it. Trackers may
/// tie the id to our source address, so the id travels with the socket it was obtained on.
#[derive(Debug)]
struct Session {
    socket: UdpSocket,
    connection_id: u64,
    /// After this the id is not used any more.
    valid_until: Instant,
}

/// The connection ids of one [`TrackerClient`], keyed by tracker address. An announce takes
/// its tracker's session out and puts it back when done, so two concurrent announces to one
/// tracker never read each other's replies (the second simply connects afresh). Expired
/// sessions are dropped on every access, so the map holds at most the trackers announced to
/// within the last [`UdpConfig::connection_id_lifetime`]. The lock is never held across an
/// `.await`.
#[derive(Clone, Debug, Default)]
pub(super) struct SessionCache(Arc<Mutex<HashMap<SocketAddr, Session>>>);

impl SessionCache {
    /// The live session for `tracker`, removed from the cache.
    fn take(&self, tracker: SocketAddr) -> Option<Session> {
        let mut sessions = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        sessions.retain(|_, session| session.valid_until > now);
        sessions.remove(&tracker)
    }

    fn put(&self, tracker: SocketAddr, session: Session) {
        let mut sessions = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.insert(tracker, session);
    }
}

/// Announces `req` to the UDP tracker at `url` (`udp://host:port`, any path ignored).
pub(super) async fn announce(
    client: &TrackerClient,
    url: &str,
    req: &AnnounceRequest,
) -> Result<AnnounceResponse, TrackerError> {
    let config = &client.udp;
    let (host, port) = host_and_port(url)?;
    let tracker = resolve(url, host, port, client.local_addr, config.total_timeout()).await?;
    let (socket, mut connection) = match client.udp_sessions.take(tracker) {
        Some(session) => (
            session.socket,
            Some((session.connection_id, session.valid_until)),
        ),
        None => (open_socket(url, tracker, client.local_addr).await?, None),
    };
    let mut exchange = Exchange {
        url,
        socket: &socket,
        config,
        timeouts: 0,
        buf: vec![0; MAX_DATAGRAM_BYTES],
    };
    loop {
        let (connection_id, valid_until) = match connection {
            Some((id, valid_until)) if Instant::now() < valid_until => (id, valid_until),
            _ => exchange.connect().await?,
        };
        let tid: u32 = rand::random();
        let datagram = announce_request(connection_id, tid, req, client.key);
        let Some(body) = exchange.attempt(&datagram, tid, ACTION_ANNOUNCE).await? else {
            connection = None;
            continue;
        };
        let response = parse_announce_reply(url, &body, tracker.is_ipv4())?;
        client.udp_sessions.put(
            tracker,
            Session {
                socket,
                connection_id,
                valid_until,
            },
        );
        return Ok(response);
    }
}

/// One announce's socket, retransmission count and receive buffer.
struct Exchange<'a> {
    url: &'a str,
    socket: &'a UdpSocket,
    config: &'a UdpConfig,
    /// Timeouts so far in this announce: the exponent of the next wait.
    timeouts: u32,
    buf: Vec<u8>,
}

impl Exchange<'_> {
    /// Connects (action 0) until the tracker answers: the connection id and when it expires.
    async fn connect(&mut self) -> Result<(u64, Instant), TrackerError> {
        let tid: u32 = rand::random();
        let datagram = connect_request(tid);
        // From the first send: a late reply to it may arrive during a later attempt.
        let asked_at = Instant::now();
        loop {
            if let Some(body) = self.attempt(&datagram, tid, ACTION_CONNECT).await? {
                let id = body
                    .first_chunk::<CONNECTION_ID_LEN>()
                    .map(|id| u64::from_be_bytes(*id))
                    .ok_or_else(|| {
                        malformed(
                            self.url,
                            format!("connect reply of {} bytes", REPLY_HEADER_LEN + body.len()),
                        )
                    })?;
                let valid_until = asked_at + self.config.connection_id_lifetime;
                return Ok((id, valid_until));
            }
        }
    }

    /// Sends `datagram` once and waits for the reply carrying `tid`: its bytes after the
    /// header if its action is `expected`. `Ok(None)` when this attempt's wait passed with
    /// attempts left; [`TrackerError::Timeout`] when that was the last one. An error reply
    /// (action 3) is [`TrackerError::Failure`]; any other action is malformed.
    async fn attempt(
        &mut self,
        datagram: &[u8],
        tid: u32,
        expected: u32,
    ) -> Result<Option<Vec<u8>>, TrackerError> {
        if self.timeouts >= self.config.attempts {
            return Err(timeout(self.url));
        }
        let deadline = Instant::now() + self.config.attempt_timeout(self.timeouts);
        self.socket
            .send(datagram)
            .await
            .map_err(|source| udp_error(self.url, source))?;
        loop {
            let received = tokio::time::timeout_at(deadline, self.socket.recv(&mut self.buf)).await;
            let len = match received {
                Ok(Ok(len)) => len,
                Ok(Err(source)) => return Err(udp_error(self.url, source)),
                Err(_elapsed) => {
                    self.timeouts = self.timeouts.saturating_add(1);
                    debug!(tracker = self.url, timeouts = self.timeouts, "no UDP reply");
                    if self.timeouts >= self.config.attempts {
                        return Err(timeout(self.url));
                    }
                    return Ok(None);
                }
            };
            let reply = self.buf.get(..len).unwrap_or_default();
            match check_reply(reply, tid) {
                None => {
                    debug!(
                        tracker = self.url,
                        len, "ignoring a datagram that is not our reply"
                    );
                }
                Some((action, body)) if action == expected => return Ok(Some(body.to_vec())),
                Some((ACTION_ERROR, message)) => {
                    return Err(TrackerError::Failure {
                        url: self.url.to_owned(),
                        reason: String::from_utf8_lossy(message)
                            .trim_end_matches('\0')
                            .to_owned(),
                    });
                }
                Some((action, _)) => {
                    return Err(malformed(
                        self.url,
                        format!("action {action} in reply to action {expected}"),
                    ));
                }
            }
        }
    }
}

/// `(action, body)` of a reply to the request with `tid`, or `None` for a datagram that is
/// not one: too short to carry a transaction id, or carrying another.
fn check_reply(datagram: &[u8], tid: u32) -> Option<(u32, &[u8])> {
    let (header, body) = datagram.split_first_chunk::<REPLY_HEADER_LEN>()?;
    let (action, reply_tid) = header.split_first_chunk::<4>()?;
    let reply_tid: [u8; 4] = reply_tid.try_into().ok()?;
    (u32::from_be_bytes(reply_tid) == tid).then_some((u32::from_be_bytes(*action), body))
}

/// The announce reply's body (after action and tid): interval, leechers, seeders, then
/// compact peers of 6 bytes, or of 18 when the tracker was reached over IPv6.
fn parse_announce_reply(
    url: &str,
    body: &[u8],
    ipv4: bool,
) -> Result<AnnounceResponse, TrackerError> {
    let too_short = || {
        malformed(
            url,
            format!("announce reply of {} bytes", REPLY_HEADER_LEN + body.len()),
        )
    };
    let (counts, compact) = body
        .split_first_chunk::<ANNOUNCE_COUNTS_LEN>()
        .ok_or_else(too_short)?;
    let field = |at: usize| -> Result<u32, TrackerError> {
        counts
            .get(at..at + 4)
            .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(too_short)
    };
    let (interval, leechers, seeders) = (field(0)?, field(4)?, field(8)?);
    let peers = if ipv4 {
        compact_v4_peers(compact)
    } else {
        compact_v6_peers(compact)
    }
    .ok_or_else(|| malformed(url, format!("{} bytes of peers", compact.len())))?;
    Ok(AnnounceResponse {
        interval: Duration::from_secs(u64::from(interval)),
        min_interval: None,
        peers,
        warning: None,
        complete: Some(u64::from(seeders)),
        incomplete: Some(u64::from(leechers)),
        tracker_id: None,
    })
}

/// Connect request: protocol id, action 0, transaction id.
fn connect_request(tid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&PROTOCOL_ID.to_be_bytes());
    out.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
    out.extend_from_slice(&tid.to_be_bytes());
    out
}

/// Announce request (98 bytes). Byte counts above `i64::MAX` (the wire type) are clamped;
/// the IP field is 0 (trackers take our source address); `num_want` above `i32::MAX` is
/// clamped, since the field is signed and -1 means "the tracker's default".
fn announce_request(connection_id: u64, tid: u32, req: &AnnounceRequest, key: u32) -> Vec<u8> {
    let count = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX).to_be_bytes();
    let mut out = Vec::with_capacity(98);
    out.extend_from_slice(&connection_id.to_be_bytes());
    out.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    out.extend_from_slice(&tid.to_be_bytes());
    out.extend_from_slice(&req.info_hash.0);
    out.extend_from_slice(&req.peer_id.0);
    out.extend_from_slice(&count(req.downloaded));
    out.extend_from_slice(&count(req.left));
    out.extend_from_slice(&count(req.uploaded));
    out.extend_from_slice(&event_code(req.event).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&key.to_be_bytes());
    out.extend_from_slice(
        &i32::try_from(req.num_want)
            .unwrap_or(i32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&req.port.to_be_bytes());
    out
}

/// BEP 15's event numbers: 0 none, 1 completed, 2 started, 3 stopped.
fn event_code(event: AnnounceEvent) -> u32 {
    match event {
        AnnounceEvent::Periodic => 0,
        AnnounceEvent::Completed => 1,
        AnnounceEvent::Started => 2,
        AnnounceEvent::Stopped => 3,
    }
}

/// Host and port of `udp://host:port[/path]`; the host may be a bracketed IPv6 literal.
/// A UDP tracker has no default port, so the port is required (and not 0).
fn host_and_port(url: &str) -> Result<(&str, u16), TrackerError> {
    let bad = |what: &str| TrackerError::BadUrl {
        url: url.to_owned(),
        what: what.to_owned(),
    };
    let (_, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(bad("user info in a UDP tracker URL"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("unclosed `[`"))?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = port.ok_or_else(|| bad("no port"))?;
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok((host, port)),
        _ => Err(bad("port is not a number from 1 to 65535")),
    }
}

/// The tracker's address: the first `lookup_host` gives, or with a local address set, the
/// first of that address's family (a socket bound to an IPv4 address cannot reach an IPv6
/// one). Bounded by `limit`, since a resolver can stall for long.
async fn resolve(
    url: &str,
    host: &str,
    port: u16,
    local_addr: Option<IpAddr>,
    limit: Duration,
) -> Result<SocketAddr, TrackerError> {
    let resolve_error = |source| TrackerError::Resolve {
        url: url.to_owned(),
        source,
    };
    let mut addrs = tokio::time::timeout(limit, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| timeout(url))?
        .map_err(resolve_error)?;
    addrs
        .find(|addr| local_addr.is_none_or(|local| local.is_ipv4() == addr.is_ipv4()))
        .ok_or_else(|| {
            resolve_error(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                match local_addr {
                    Some(local) => format!("{host} has no address of the family of {local}"),
                    None => format!("{host} has no address"),
                },
            ))
        })
}

/// A socket bound to `local_addr` (trackers record the source address as our peer address)
/// or to any address of the tracker's family, connected to `tracker`.
async fn open_socket(
    url: &str,
    tracker: SocketAddr,
    local_addr: Option<IpAddr>,
) -> Result<UdpSocket, TrackerError> {
    let local_ip = local_addr.unwrap_or(if tracker.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0))
        .await
        .map_err(|source| udp_error(url, source))?;
    socket
        .connect(tracker)
        .await
        .map_err(|source| udp_error(url, source))?;
    Ok(socket)
}

fn udp_error(url: &str, source: std::io::Error) -> TrackerError {
    TrackerError::Udp {
        url: url.to_owned(),
        source,
    }
}

fn timeout(url: &str) -> TrackerError {
    TrackerError::Timeout {
        url: url.to_owned(),
    }
}

fn malformed(url: &str, what: impl Into<String>) -> TrackerError {
    TrackerError::Malformed {
        url: url.to_owned(),
        what: what.into(),
    }
}

#[cfg(test)]
mod tests;
