//! HTTP(S) trackers: the announce GET (BEP 3) and its bencoded reply, with peers in compact
//! form (BEP 23), dictionary form (BEP 3) and `peers6` (BEP 7).
//!
//! Owns the query string and the reply parser; uses the parent's types and reqwest.
//! Invariant: the reply is untrusted. It is read up to [`MAX_REPLY_BYTES`], checked for
//! nesting depth before decoding, then walked as an untyped bencode value, so a wrong type or
//! a bad length becomes [`TrackerError::Malformed`], never a panic.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_encode};
use serde_bencode::value::Value;
use tracing::debug;

use super::{
    AnnounceRequest, AnnounceResponse, TrackerClient, TrackerError, compact_v4_peers,
    compact_v6_peers, nonzero_port,
};

/// Bytes left as they are in query values: RFC 3986 unreserved characters. Everything else,
/// including every byte of a binary info hash outside that set, becomes `%XX`.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Largest reply we read. A compact reply with the 200 peers trackers send at most is about
/// 1.2 KiB and a dictionary-form one about 15 KiB; 1 MiB leaves room for odd trackers while
/// keeping a hostile one from filling memory.
const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// Deepest list/dictionary nesting we decode. A real reply nests three deep (reply → peer
/// list → peer); serde_bencode recurses once per level with no limit of its own, so a body of
/// a million `l`s would overflow the stack.
const MAX_NESTING: usize = 16;

/// Announces `req` to the HTTP(S) tracker at `url`.
pub(super) async fn announce(
    client: &TrackerClient,
    url: &str,
    req: &AnnounceRequest,
) -> Result<AnnounceResponse, TrackerError> {
    let request_url = announce_url(url, req, client.key);
    let mut response = client
        .http
        .get(&request_url)
        .send()
        .await
        .map_err(|source| request_error(url, source))?;
    let status = response.status();
    if !status.is_success() {
        return Err(TrackerError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| request_error(url, source))?
    {
        if body.len().saturating_add(chunk.len()) > MAX_REPLY_BYTES {
            return Err(malformed(
                url,
                format!("reply longer than {MAX_REPLY_BYTES} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    parse_reply(url, &body)
}

/// `url` with the announce parameters appended, after `?` or, when `url` already has a
/// query (private trackers put a passkey there), after `&`. A fragment is dropped: it is
/// never sent, and the query must not land inside it.
fn announce_url(url: &str, req: &AnnounceRequest, key: u32) -> String {
    let base = url.split_once('#').map_or(url, |(before, _)| before);
    let separator = match base.split_once('?') {
        None => "?",
        Some((_, "")) => "",
        Some((_, query)) if query.ends_with('&') => "",
        Some(_) => "&",
    };
    let mut out = format!(
        "{base}{separator}info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}\
         &compact=1&numwant={}&key={key:08x}",
        percent_encode(&req.info_hash.0, QUERY_VALUE),
        percent_encode(&req.peer_id.0, QUERY_VALUE),
        req.port,
        req.uploaded,
        req.downloaded,
        req.left,
        req.num_want,
    );
    if let Some(event) = req.event.as_param() {
        out.push_str("&event=");
        out.push_str(event);
    }
    if let Some(tracker_id) = &req.tracker_id {
        out.push_str("&trackerid=");
        out.extend(percent_encode(tracker_id.as_bytes(), QUERY_VALUE));
    }
    out
}

fn request_error(url: &str, source: reqwest::Error) -> TrackerError {
    if source.is_timeout() {
        TrackerError::Timeout {
            url: url.to_owned(),
        }
    } else {
        TrackerError::Http {
            url: url.to_owned(),
            source,
        }
    }
}

fn malformed(url: &str, what: impl Into<String>) -> TrackerError {
    TrackerError::Malformed {
        url: url.to_owned(),
        what: what.into(),
    }
}

/// Decodes a tracker's reply body. `failure reason` wins over everything else; `interval` is
/// required; optional counters of the wrong type are ignored (logged), but a `peers` or
/// `peers6` of the wrong shape fails the reply, since we cannot tell what else is wrong.
fn parse_reply(url: &str, body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    if !nesting_within(body, MAX_NESTING) {
        return Err(malformed(url, format!("nested deeper than {MAX_NESTING}")));
    }
    let value: Value = serde_bencode::from_bytes(body)
        .map_err(|err| malformed(url, format!("not bencode: {err}")))?;
    let Value::Dict(dict) = value else {
        return Err(malformed(url, "reply is not a dictionary"));
    };

    if let Some(reason) = dict.get(b"failure reason".as_slice()) {
        return Err(match reason {
            Value::Bytes(reason) => TrackerError::Failure {
                url: url.to_owned(),
                reason: String::from_utf8_lossy(reason).into_owned(),
            },
            _ => malformed(url, "`failure reason` is not a string"),
        });
    }

    let interval = match dict.get(b"interval".as_slice()) {
        Some(Value::Int(secs)) => u64::try_from(*secs)
            .map(Duration::from_secs)
            .map_err(|_| malformed(url, format!("negative interval {secs}")))?,
        Some(_) => return Err(malformed(url, "`interval` is not an integer")),
        None => return Err(malformed(url, "no `interval`")),
    };

    let mut peers = match dict.get(b"peers".as_slice()) {
        Some(Value::Bytes(compact)) => compact_v4_peers(compact)
            .ok_or_else(|| malformed(url, format!("`peers` of {} bytes", compact.len())))?,
        Some(Value::List(entries)) => dict_peers(url, entries),
        Some(_) => return Err(malformed(url, "`peers` is neither a string nor a list")),
        None => Vec::new(),
    };
    match dict.get(b"peers6".as_slice()) {
        Some(Value::Bytes(compact)) => peers.extend(
            compact_v6_peers(compact)
                .ok_or_else(|| malformed(url, format!("`peers6` of {} bytes", compact.len())))?,
        ),
        Some(_) => return Err(malformed(url, "`peers6` is not a string")),
        None => {}
    }

    Ok(AnnounceResponse {
        interval,
        min_interval: optional_u64(url, &dict, "min interval").map(Duration::from_secs),
        peers,
        warning: optional_string(url, &dict, "warning message"),
        complete: optional_u64(url, &dict, "complete"),
        incomplete: optional_u64(url, &dict, "incomplete"),
        tracker_id: optional_string(url, &dict, "tracker id"),
    })
}

/// A non-negative integer field, or `None` if absent or not one.
fn optional_u64(url: &str, dict: &HashMap<Vec<u8>, Value>, key: &str) -> Option<u64> {
    match dict.get(key.as_bytes())? {
        Value::Int(n) if *n >= 0 => u64::try_from(*n).ok(),
        other => {
            debug!(tracker = url, key, value = ?other, "ignoring bad field");
            None
        }
    }
}

/// A string field, or `None` if absent or not one. Invalid UTF-8 is replaced, not rejected.
fn optional_string(url: &str, dict: &HashMap<Vec<u8>, Value>, key: &str) -> Option<String> {
    match dict.get(key.as_bytes())? {
        Value::Bytes(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        other => {
            debug!(tracker = url, key, value = ?other, "ignoring bad field");
            None
        }
    }
}

/// Dictionary-form peers (`ip` string, `port` integer). A bad entry is skipped, not fatal:
/// one odd peer should not cost us the rest. Host names are skipped too; we do not resolve.
fn dict_peers(url: &str, entries: &[Value]) -> Vec<SocketAddr> {
    entries
        .iter()
        .filter_map(|entry| {
            let peer = dict_peer(entry);
            if peer.is_none() {
                debug!(tracker = url, entry = ?entry, "skipping bad peer entry");
            }
            peer
        })
        .collect()
}

fn dict_peer(entry: &Value) -> Option<SocketAddr> {
    let Value::Dict(fields) = entry else {
        return None;
    };
    let Some(Value::Bytes(ip)) = fields.get(b"ip".as_slice()) else {
        return None;
    };
    let Some(Value::Int(port)) = fields.get(b"port".as_slice()) else {
        return None;
    };
    let ip: IpAddr = std::str::from_utf8(ip).ok()?.parse().ok()?;
    nonzero_port(ip, u16::try_from(*port).ok()?)
}

/// Whether `body` nests lists and dictionaries at most `max` deep. Scans tokens without
/// decoding; on anything it cannot scan it answers `true` and leaves the error to the
/// decoder, which reads in the same order and so fails there before nesting any deeper.
fn nesting_within(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut pos = 0usize;
    while let Some(&byte) = body.get(pos) {
        match byte {
            b'l' | b'd' => {
                depth += 1;
                if depth > max {
                    return false;
                }
                pos += 1;
            }
            b'e' => {
                depth = depth.saturating_sub(1);
                pos += 1;
            }
            b'i' => {
                let Some(rest) = body.get(pos..) else {
                    return true;
                };
                let Some(end) = rest.iter().position(|&b| b == b'e') else {
                    return true;
                };
                pos = pos.saturating_add(end).saturating_add(1);
            }
            b'0'..=b'9' => {
                let Some(rest) = body.get(pos..) else {
                    return true;
                };
                let Some(colon) = rest.iter().position(|&b| b == b':') else {
                    return true;
                };
                let len = rest
                    .get(..colon)
                    .and_then(|digits| std::str::from_utf8(digits).ok())
                    .and_then(|digits| digits.parse::<usize>().ok());
                let Some(len) = len else {
                    return true;
                };
                pos = pos
                    .saturating_add(colon)
                    .saturating_add(1)
                    .saturating_add(len);
            }
            _ => return true,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::test_server::{Reply, TestTracker};
    use crate::tracker::tests::request;
    use crate::tracker::{AnnounceEvent, announce as dispatch_announce};
    use crate::types::{InfoHash, PeerId};

    const URL: &str = "http://tracker.test/announce";

    fn parse(body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
        parse_reply(URL, body)
    }

    fn assert_malformed(body: &[u8]) {
        let result = parse(body);
        assert!(
            matches!(result, Err(TrackerError::Malformed { .. })),
            "{:?} → {result:?}",
            String::from_utf8_lossy(body)
        );
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|err| panic!("{s}: {err}"))
    }

    /// A request whose hash and id hold bytes that must be escaped and bytes that must not.
    fn awkward_request() -> AnnounceRequest {
        let mut hash = [b'a'; 20];
        hash[..8].copy_from_slice(&[0x00, 0xff, b' ', b'&', b'=', b'%', b'-', b'~']);
        AnnounceRequest {
            info_hash: InfoHash(hash),
            peer_id: PeerId(*b"-SF0100-ab.d_f+h/j?l"),
            ..request(AnnounceEvent::Started)
        }
    }

    #[test]
    fn url_escapes_every_byte_outside_unreserved() {
        let url = announce_url(URL, &awkward_request(), 0x0102_abcd);
        assert_eq!(
            url,
            "http://tracker.test/announce?info_hash=%00%FF%20%26%3D%25-~aaaaaaaaaaaa\
             &peer_id=-SF0100-ab.d_f%2Bh%2Fj%3Fl&port=6881&uploaded=1&downloaded=2&left=3\
             &compact=1&numwant=50&key=0102abcd&event=started"
        );
    }

    #[test]
    fn url_appends_to_an_existing_query() {
        let req = request(AnnounceEvent::Periodic);
        let with_query = announce_url("http://t/announce?passkey=s3cret", &req, 1);
        assert!(
            with_query.starts_with("http://t/announce?passkey=s3cret&info_hash="),
            "{with_query}"
        );
        let trailing_amp = announce_url("http://t/a?x=1&", &req, 1);
        assert!(
            trailing_amp.starts_with("http://t/a?x=1&info_hash="),
            "{trailing_amp}"
        );
        let bare_question = announce_url("http://t/a?", &req, 1);
        assert!(
            bare_question.starts_with("http://t/a?info_hash="),
            "{bare_question}"
        );
        let fragment = announce_url("http://t/a#frag", &req, 1);
        assert!(fragment.starts_with("http://t/a?info_hash="), "{fragment}");
        assert!(!fragment.contains('#'), "{fragment}");
    }

    #[test]
    fn url_omits_event_when_periodic_and_sends_tracker_id() {
        let mut req = request(AnnounceEvent::Periodic);
        req.tracker_id = Some("id 7&x".into());
        let url = announce_url(URL, &req, 1);
        assert!(!url.contains("event="), "{url}");
        assert!(url.ends_with("&trackerid=id%207%26x"), "{url}");
        req.event = AnnounceEvent::Stopped;
        assert!(announce_url(URL, &req, 1).contains("&event=stopped&"));
    }

    #[test]
    fn parses_compact_peers_and_optional_fields() -> Result<(), TrackerError> {
        let mut body = b"d8:completei5e10:incompletei7e8:intervali1800e12:min intervali60e\
            5:peers12:"
            .to_vec();
        body.extend_from_slice(&[10, 0, 0, 1, 0x1a, 0xe1, 192, 168, 1, 2, 0, 80]);
        body.extend_from_slice(b"10:tracker id3:abc15:warning message4:betae");
        let reply = parse(&body)?;
        assert_eq!(
            reply,
            AnnounceResponse {
                interval: Duration::from_secs(1800),
                min_interval: Some(Duration::from_secs(60)),
                peers: vec![addr("10.0.0.1:6881"), addr("192.168.1.2:80")],
                warning: Some("beta".into()),
                complete: Some(5),
                incomplete: Some(7),
                tracker_id: Some("abc".into()),
            }
        );
        Ok(())
    }

    #[test]
    fn parses_dictionary_peers_skipping_bad_entries() -> Result<(), TrackerError> {
        let body = b"d8:intervali900e5:peersl\
            d2:ip8:10.0.0.17:peer id20:aaaaaaaaaaaaaaaaaaaa4:porti6881ee\
            d2:ip3:::14:porti51413ee\
            d2:ip11:example.org4:porti1ee\
            d2:ip8:10.0.0.24:porti70000ee\
            d2:ip8:10.0.0.34:porti0ee\
            d2:ipi5e4:porti1ee\
            d4:porti1ee\
            i42e\
            d2:ip8:10.0.0.44:porti-1ee\
            d2:ip8:10.0.0.54:porti2ee\
            ee";
        let reply = parse(body)?;
        assert_eq!(
            reply.peers,
            vec![
                addr("10.0.0.1:6881"),
                addr("[::1]:51413"),
                addr("10.0.0.5:2")
            ]
        );
        assert_eq!(reply.interval, Duration::from_secs(900));
        assert_eq!(reply.min_interval, None);
        Ok(())
    }

    #[test]
    fn parses_peers6_after_peers_and_drops_port_zero() -> Result<(), TrackerError> {
        let mut body = b"d8:intervali60e5:peers12:".to_vec();
        body.extend_from_slice(&[127, 0, 0, 1, 0, 0, 127, 0, 0, 2, 0, 9]);
        body.extend_from_slice(b"6:peers636:");
        let mut v6 = [0u8; 36];
        v6[15] = 1; // ::1
        v6[16..18].copy_from_slice(&8080u16.to_be_bytes());
        v6[18] = 0xfe;
        v6[19] = 0x80; // fe80::, port 0: dropped
        body.extend_from_slice(&v6);
        body.push(b'e');
        let reply = parse(&body)?;
        assert_eq!(reply.peers, vec![addr("127.0.0.2:9"), addr("[::1]:8080")]);
        Ok(())
    }

    #[test]
    fn no_peers_key_is_an_empty_list() -> Result<(), TrackerError> {
        assert_eq!(parse(b"d8:intervali60ee")?.peers, Vec::<SocketAddr>::new());
        Ok(())
    }

    #[test]
    fn failure_reason_is_a_failure_even_without_interval() {
        let result = parse(b"d14:failure reason17:torrent not founde");
        assert!(
            matches!(&result, Err(TrackerError::Failure { reason, .. }) if reason == "torrent not found"),
            "{result:?}"
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert_malformed(b"");
        assert_malformed(b"d8:intervali60e5:peers12:abc"); // truncated
        assert_malformed(b"d8:intervali60"); // truncated int
        assert_malformed(b"<html>Not a tracker</html>");
        assert_malformed(b"li60ee"); // not a dictionary
        assert_malformed(b"d5:peers0:e"); // no interval
        assert_malformed(b"d8:interval2:60e"); // interval of the wrong type
        assert_malformed(b"d8:intervali-5ee"); // negative interval
        assert_malformed(b"d8:intervali60e5:peers5:abcdee"); // 5 is not a multiple of 6
        assert_malformed(b"d8:intervali60e5:peersi3ee"); // peers of the wrong type
        assert_malformed(b"d8:intervali60e6:peers67:abcdefge"); // 7 is not a multiple of 18
        assert_malformed(b"d8:intervali60e6:peers6le"); // peers6 of the wrong type
        assert_malformed(b"d14:failure reasoni1ee"); // failure reason of the wrong type
        assert_malformed(b"d8:intervali99999999999999999999999ee"); // beyond i64
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflowing_the_stack() {
        let mut body = b"d8:intervali60e1:x".to_vec();
        body.extend(std::iter::repeat_n(b'l', 1_000_000));
        let result = parse(&body);
        assert!(
            matches!(&result, Err(TrackerError::Malformed { what, .. }) if what.contains("nested")),
            "{result:?}"
        );
        // Letters inside strings and integers are not counted as nesting.
        assert!(nesting_within(b"d5:lllll3:dddi1ee", 2));
        assert!(!nesting_within(b"llle", 2));
    }

    #[test]
    fn wrong_types_in_optional_fields_are_ignored() -> Result<(), TrackerError> {
        let reply = parse(b"d8:completei-1e10:incomplete1:x8:intervali60e12:min interval1:y10:tracker idi5e15:warning messagelee")?;
        assert_eq!(reply.complete, None);
        assert_eq!(reply.incomplete, None);
        assert_eq!(reply.min_interval, None);
        assert_eq!(reply.tracker_id, None);
        assert_eq!(reply.warning, None);
        Ok(())
    }

    fn compact_reply(peers: &[[u8; 6]]) -> Vec<u8> {
        let mut body = format!("d8:intervali30e5:peers{}:", peers.len() * 6).into_bytes();
        for peer in peers {
            body.extend_from_slice(peer);
        }
        body.push(b'e');
        body
    }

    #[tokio::test]
    async fn announce_sends_the_query_and_parses_the_reply() -> Result<(), TrackerError> {
        let mut tracker =
            TestTracker::start(Reply::Ok(compact_reply(&[[127, 0, 0, 9, 0x1a, 0xe1]]))).await;
        let client = TrackerClient::new(None)?;
        let url = format!("{}?passkey=k", tracker.url());
        let reply = dispatch_announce(&client, &url, &awkward_request()).await?;
        assert_eq!(reply.peers, vec![addr("127.0.0.9:6881")]);
        assert_eq!(reply.interval, Duration::from_secs(30));

        let seen = tracker.next_request().await;
        let expected = format!(
            "/announce?passkey=k&info_hash=%00%FF%20%26%3D%25-~aaaaaaaaaaaa\
             &peer_id=-SF0100-ab.d_f%2Bh%2Fj%3Fl&port=6881&uploaded=1&downloaded=2&left=3\
             &compact=1&numwant=50&key={:08x}&event=started",
            client.key
        );
        assert_eq!(seen.target, expected);
        assert!(
            seen.user_agent.starts_with("swarmfs/"),
            "{}",
            seen.user_agent
        );
        Ok(())
    }

    #[tokio::test]
    async fn announce_binds_the_local_address() -> Result<(), TrackerError> {
        let mut tracker = TestTracker::start(Reply::Ok(compact_reply(&[]))).await;
        let local: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
        let client = TrackerClient::new(Some(local))?;
        dispatch_announce(&client, &tracker.url(), &request(AnnounceEvent::Started)).await?;
        assert_eq!(tracker.next_request().await.from.ip(), local);
        Ok(())
    }

    /// Announces once to a test tracker answering `reply`, after checking that the request
    /// reached it: an error is then the reply's doing, not a refused connection.
    async fn announce_to(
        reply: Reply,
        client: &TrackerClient,
    ) -> Result<AnnounceResponse, TrackerError> {
        let mut tracker = TestTracker::start(reply).await;
        let result =
            dispatch_announce(client, &tracker.url(), &request(AnnounceEvent::Started)).await;
        let seen = tracker.next_request().await;
        assert!(seen.target.starts_with("/announce?"), "{}", seen.target);
        result
    }

    #[tokio::test]
    async fn http_500_is_a_status_error() -> Result<(), TrackerError> {
        let result = announce_to(Reply::Status(500), &TrackerClient::new(None)?).await;
        assert!(
            matches!(result, Err(TrackerError::Status { status: 500, .. })),
            "{result:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn closed_connection_is_an_http_error() -> Result<(), TrackerError> {
        let result = announce_to(Reply::Close, &TrackerClient::new(None)?).await;
        assert!(
            matches!(result, Err(TrackerError::Http { .. })),
            "{result:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn silent_tracker_is_a_timeout() -> Result<(), TrackerError> {
        let client = TrackerClient::with_timeout(None, Duration::from_millis(200))?;
        let result = announce_to(Reply::Silent, &client).await;
        assert!(
            matches!(result, Err(TrackerError::Timeout { .. })),
            "{result:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn oversized_reply_is_malformed() -> Result<(), TrackerError> {
        let oversized = Reply::Ok(vec![b'x'; MAX_REPLY_BYTES + 1]);
        let result = announce_to(oversized, &TrackerClient::new(None)?).await;
        assert!(
            matches!(&result, Err(TrackerError::Malformed { what, .. }) if what.contains("longer")),
            "{result:?}"
        );
        Ok(())
    }
}
