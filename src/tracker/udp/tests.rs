//! Tests of the UDP tracker client against the scripted tracker of `udp_test_server.rs`,
//! and of the datagram parsers on hostile input.

use std::net::{Ipv4Addr, SocketAddr};

use super::*;
use crate::tracker::tests::request;
use crate::tracker::udp_test_server::{AnnounceAnswer, Script, SeenDatagram, UdpTestTracker};
use crate::tracker::{AnnounceEvent, announce as dispatch_announce};

const CONNECTION_ID: u64 = 0x1122_3344_5566_7788;

/// Two peers, 10.0.0.1:6881 and 10.0.0.2:51413, plus one with port 0 (dropped).
const TWO_PEERS: [u8; 18] = [
    10, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0, 2, 0xc8, 0xd5, 10, 0, 0, 3, 0, 0,
];

/// Waits short enough to keep tests fast, long enough that a loopback reply on a loaded
/// machine is never taken for a loss (tests count datagrams exactly).
fn test_config() -> UdpConfig {
    UdpConfig {
        first_attempt_timeout: Duration::from_millis(200),
        attempts: 4,
        connection_id_lifetime: CONNECTION_ID_LIFETIME,
    }
}

fn client(config: UdpConfig) -> Result<TrackerClient, TrackerError> {
    Ok(TrackerClient::new(None)?.with_udp_config(config))
}

/// A `Started` announce to `tracker` from a fresh client with `config`.
async fn announce_started(
    tracker: &UdpTestTracker,
    config: UdpConfig,
) -> Result<AnnounceResponse, TrackerError> {
    announce(
        &client(config)?,
        &tracker.url(),
        &request(AnnounceEvent::Started),
    )
    .await
}

/// [`test_config`] with a shorter first wait, for tests that wait out lost datagrams.
fn quick_retries(first_attempt_timeout: Duration) -> UdpConfig {
    UdpConfig {
        first_attempt_timeout,
        ..test_config()
    }
}

fn peers_answer() -> AnnounceAnswer {
    AnnounceAnswer::Peers {
        interval: 1800,
        leechers: 7,
        seeders: 3,
        compact: TWO_PEERS.to_vec(),
    }
}

fn honest() -> Script {
    Script::new(CONNECTION_ID, peers_answer())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|err| panic!("{s}: {err}"))
}

/// Two full exchanges: the first connection id was not used again.
const CONNECT_TWICE: [u32; 4] = [
    ACTION_CONNECT,
    ACTION_ANNOUNCE,
    ACTION_CONNECT,
    ACTION_ANNOUNCE,
];

/// The action of each datagram, in order (`u32::MAX` for one too short to have one).
fn actions(seen: &[SeenDatagram]) -> Vec<u32> {
    seen.iter()
        .map(|datagram| datagram.action().unwrap_or(u32::MAX))
        .collect()
}

/// The bytes a connect request must have, given the transaction id it chose.
fn expected_connect(seen: &SeenDatagram) -> Vec<u8> {
    let tid = seen.bytes.get(12..16).unwrap_or_default();
    let mut want = vec![0x00, 0x00, 0x04, 0x17, 0x27, 0x10, 0x19, 0x80, 0, 0, 0, 0];
    want.extend_from_slice(tid);
    want
}

#[tokio::test]
async fn connect_and_announce_send_exact_bytes_and_parse_peers() -> Result<(), TrackerError> {
    let mut tracker = UdpTestTracker::start(honest()).await;
    let client = client(test_config())?;
    let req = request(AnnounceEvent::Started);
    let response = dispatch_announce(&client, &tracker.url(), &req).await?;

    assert_eq!(
        response,
        AnnounceResponse {
            interval: Duration::from_secs(1800),
            min_interval: None,
            peers: vec![addr("10.0.0.1:6881"), addr("10.0.0.2:51413")],
            warning: None,
            complete: Some(3),
            incomplete: Some(7),
            tracker_id: None,
        }
    );

    let connect = tracker.next_datagram().await;
    assert_eq!(connect.bytes.len(), 16);
    assert_eq!(connect.bytes, expected_connect(&connect));

    let announce = tracker.next_datagram().await;
    let tid = announce.bytes.get(12..16).unwrap_or_default().to_vec();
    let mut want = Vec::new();
    want.extend_from_slice(&CONNECTION_ID.to_be_bytes());
    want.extend_from_slice(&[0, 0, 0, 1]);
    want.extend_from_slice(&tid);
    want.extend_from_slice(&[0xab; 20]);
    want.extend_from_slice(b"-SF0100-abcdefghijkl");
    want.extend_from_slice(&2u64.to_be_bytes()); // downloaded
    want.extend_from_slice(&3u64.to_be_bytes()); // left
    want.extend_from_slice(&1u64.to_be_bytes()); // uploaded
    want.extend_from_slice(&[0, 0, 0, 2]); // started
    want.extend_from_slice(&[0, 0, 0, 0]); // IP: the source address
    want.extend_from_slice(&client.key.to_be_bytes());
    want.extend_from_slice(&50u32.to_be_bytes());
    want.extend_from_slice(&6881u16.to_be_bytes());
    assert_eq!(announce.bytes.len(), 98);
    assert_eq!(announce.bytes, want);
    assert_eq!(announce.from, connect.from, "one socket for both steps");
    assert!(tracker.received_so_far().is_empty());
    Ok(())
}

#[test]
fn events_have_their_bep15_numbers() {
    let codes = [
        (AnnounceEvent::Periodic, 0u32),
        (AnnounceEvent::Completed, 1),
        (AnnounceEvent::Started, 2),
        (AnnounceEvent::Stopped, 3),
    ];
    for (event, code) in codes {
        let datagram = announce_request(1, 2, &request(event), 3);
        assert_eq!(
            datagram.get(80..84),
            Some(&code.to_be_bytes()[..]),
            "{event:?}"
        );
    }
}

#[test]
fn oversized_counts_are_clamped_to_the_signed_wire_types() {
    let req = AnnounceRequest {
        left: u64::MAX,
        num_want: u32::MAX,
        ..request(AnnounceEvent::Periodic)
    };
    let datagram = announce_request(1, 2, &req, 3);
    assert_eq!(datagram.get(64..72), Some(&i64::MAX.to_be_bytes()[..]));
    assert_eq!(datagram.get(92..96), Some(&i32::MAX.to_be_bytes()[..]));
}

#[tokio::test]
async fn error_action_is_a_failure_with_the_message() -> Result<(), TrackerError> {
    let script = Script::new(
        CONNECTION_ID,
        AnnounceAnswer::Error(
            "Requested download is not authorized for use with this tracker.".into(),
        ),
    );
    let tracker = UdpTestTracker::start(script).await;
    let result = announce_started(&tracker, test_config()).await;
    assert!(
        matches!(
            &result,
            Err(TrackerError::Failure { url, reason })
                if *url == tracker.url()
                    && reason == "Requested download is not authorized for use with this tracker."
        ),
        "{result:?}"
    );
    Ok(())
}

#[tokio::test]
async fn lost_datagrams_are_resent_with_the_same_bytes() -> Result<(), TrackerError> {
    let mut tracker = UdpTestTracker::start(Script {
        dropped: 0..2,
        ..honest()
    })
    .await;
    let config = quick_retries(Duration::from_millis(50));
    let response = announce_started(&tracker, config).await?;
    assert_eq!(response.peers.len(), 2);

    let connects: Vec<SeenDatagram> = vec![
        tracker.next_datagram().await,
        tracker.next_datagram().await,
        tracker.next_datagram().await,
    ];
    for connect in &connects {
        assert_eq!(connect.action(), Some(ACTION_CONNECT));
        assert_eq!(
            connect.bytes, connects[0].bytes,
            "a resend repeats the request"
        );
    }
    assert_eq!(
        tracker.next_datagram().await.action(),
        Some(ACTION_ANNOUNCE)
    );
    Ok(())
}

#[tokio::test]
async fn a_silent_tracker_times_out_after_the_configured_attempts() -> Result<(), TrackerError> {
    let mut tracker = UdpTestTracker::start(Script {
        dropped: 0..usize::MAX,
        ..honest()
    })
    .await;
    let config = UdpConfig {
        first_attempt_timeout: Duration::from_millis(10),
        attempts: 3,
        ..test_config()
    };
    let result = announce_started(&tracker, config).await;
    assert!(
        matches!(result, Err(TrackerError::Timeout { .. })),
        "{result:?}"
    );
    let seen = tracker.received_so_far();
    assert_eq!(seen.len(), 3, "one datagram per attempt: {seen:?}");
    Ok(())
}

#[tokio::test]
async fn a_lost_announce_goes_back_to_connect() -> Result<(), TrackerError> {
    // Datagram 1, the first announce, is lost: the id might be stale, so connect again.
    let mut tracker = UdpTestTracker::start(Script {
        dropped: 1..2,
        ..honest()
    })
    .await;
    let config = quick_retries(Duration::from_millis(50));
    announce_started(&tracker, config).await?;
    assert_eq!(actions(&tracker.received_so_far()), CONNECT_TWICE);
    Ok(())
}

#[tokio::test]
async fn stray_datagrams_and_wrong_transaction_ids_are_ignored() -> Result<(), TrackerError> {
    let mut tracker = UdpTestTracker::start(Script {
        stray_first: true,
        ..honest()
    })
    .await;
    let response = announce_started(&tracker, test_config()).await?;
    assert_eq!(
        response.peers,
        vec![addr("10.0.0.1:6881"), addr("10.0.0.2:51413")]
    );
    // Nothing was resent: the strays neither failed nor restarted the exchange.
    assert_eq!(tracker.received_so_far().len(), 2);
    Ok(())
}

#[tokio::test]
async fn truncated_replies_are_malformed() -> Result<(), TrackerError> {
    let short_connect = Script {
        connect_body: vec![0; 4],
        ..honest()
    };
    let short_announce = Script::new(CONNECTION_ID, AnnounceAnswer::Raw(vec![0; 11]));
    let partial_peer = Script::new(
        CONNECTION_ID,
        AnnounceAnswer::Peers {
            interval: 60,
            leechers: 0,
            seeders: 1,
            compact: vec![10, 0, 0, 1, 0x1a],
        },
    );
    for script in [short_connect, short_announce, partial_peer] {
        let tracker = UdpTestTracker::start(script.clone()).await;
        let result = announce_started(&tracker, test_config()).await;
        assert!(
            matches!(result, Err(TrackerError::Malformed { .. })),
            "{script:?}: {result:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn connection_id_is_reused_within_its_lifetime() -> Result<(), TrackerError> {
    let mut tracker = UdpTestTracker::start(honest()).await;
    let client = client(test_config())?;
    for event in [AnnounceEvent::Started, AnnounceEvent::Periodic] {
        announce(&client, &tracker.url(), &request(event)).await?;
    }
    let seen = tracker.received_so_far();
    let kinds: Vec<Option<u32>> = seen.iter().map(SeenDatagram::action).collect();
    assert_eq!(
        kinds,
        vec![
            Some(ACTION_CONNECT),
            Some(ACTION_ANNOUNCE),
            Some(ACTION_ANNOUNCE)
        ]
    );
    for announce in seen.iter().skip(1) {
        assert_eq!(
            announce.bytes.get(..8),
            Some(&CONNECTION_ID.to_be_bytes()[..])
        );
        assert_eq!(
            announce.from, seen[0].from,
            "the id is used on the socket it came on"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_expired_connection_id_is_renewed() -> Result<(), TrackerError> {
    let mut tracker = UdpTestTracker::start(honest()).await;
    let client = client(UdpConfig {
        connection_id_lifetime: Duration::ZERO,
        ..test_config()
    })?;
    for event in [AnnounceEvent::Started, AnnounceEvent::Periodic] {
        announce(&client, &tracker.url(), &request(event)).await?;
    }
    assert_eq!(actions(&tracker.received_so_far()), CONNECT_TWICE);
    Ok(())
}

#[tokio::test]
async fn the_socket_binds_the_local_address() -> Result<(), TrackerError> {
    let mut tracker = UdpTestTracker::start(honest()).await;
    let local = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let client = TrackerClient::new(Some(local))?.with_udp_config(test_config());
    announce(&client, &tracker.url(), &request(AnnounceEvent::Started)).await?;
    assert_eq!(tracker.next_datagram().await.from.ip(), local);
    Ok(())
}

#[tokio::test]
async fn an_ipv6_tracker_sends_18_byte_peers() -> Result<(), TrackerError> {
    let mut compact = vec![0u8; 15];
    compact.extend_from_slice(&[1, 0x1a, 0xe1]); // [::1]:6881
    let script = Script::new(
        CONNECTION_ID,
        AnnounceAnswer::Peers {
            interval: 60,
            leechers: 0,
            seeders: 1,
            compact,
        },
    );
    let Ok(tracker) = UdpTestTracker::start_on("[::1]:0", script).await else {
        eprintln!("no IPv6 loopback here: skipping");
        return Ok(());
    };
    let response = announce_started(&tracker, test_config()).await?;
    assert_eq!(response.peers, vec![addr("[::1]:6881")]);
    Ok(())
}

#[tokio::test]
async fn a_closed_port_fails_without_waiting_out_the_retries() -> Result<(), TrackerError> {
    // Bind and drop a socket to find a port nothing listens on; loopback answers ICMP
    // port-unreachable, which a connected UDP socket reports as ECONNREFUSED.
    let closed = UdpSocket::bind("127.0.0.1:0")
        .await
        .and_then(|socket| socket.local_addr())
        .map_err(|source| udp_error("bind", source))?;
    let config = UdpConfig {
        first_attempt_timeout: Duration::from_secs(30),
        ..test_config()
    };
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        announce(
            &client(config)?,
            &format!("udp://{closed}"),
            &request(AnnounceEvent::Started),
        ),
    )
    .await;
    assert!(
        matches!(result, Ok(Err(TrackerError::Udp { .. }))),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn urls_give_host_and_port_or_bad_url() {
    let good = [
        ("udp://tracker.example:6969", ("tracker.example", 6969)),
        ("udp://tracker.example:80/announce", ("tracker.example", 80)),
        ("UDP://1.2.3.4:1337/announce?x#y", ("1.2.3.4", 1337)),
        ("udp://[2001:db8::1]:6969/announce", ("2001:db8::1", 6969)),
    ];
    for (url, want) in good {
        assert_eq!(host_and_port(url).ok(), Some(want), "{url}");
    }
    for url in [
        "udp://tracker.example",
        "udp://tracker.example/announce",
        "udp://:6969",
        "udp://tracker.example:0",
        "udp://tracker.example:65536",
        "udp://tracker.example:x",
        "udp://[2001:db8::1/announce",
        "udp://[2001:db8::1]",
        "udp://user@tracker.example:6969",
    ] {
        let result = host_and_port(url);
        assert!(
            matches!(result, Err(TrackerError::BadUrl { .. })),
            "{url}: {result:?}"
        );
    }
}

#[test]
fn retry_schedule_doubles_from_the_first_timeout() {
    let config = UdpConfig::default();
    let waits: Vec<Duration> = (0..4).map(|n| config.attempt_timeout(n)).collect();
    assert_eq!(
        waits,
        [1, 2, 4, 8].map(Duration::from_secs).to_vec(),
        "BEP 15's doubling, from 1 s"
    );
    assert_eq!(config.total_timeout(), super::super::ANNOUNCE_TIMEOUT);
    // The exponent stops at 8, as in BEP 15, and nothing overflows.
    let long = UdpConfig {
        first_attempt_timeout: Duration::from_secs(15),
        attempts: 40,
        ..config
    };
    assert_eq!(long.attempt_timeout(8), Duration::from_secs(3840));
    assert_eq!(long.attempt_timeout(39), Duration::from_secs(3840));
    let huge = UdpConfig {
        first_attempt_timeout: Duration::MAX,
        attempts: u32::MAX,
        ..UdpConfig::default()
    };
    assert_eq!(huge.attempt_timeout(u32::MAX), Duration::MAX);
}

#[test]
fn no_datagram_panics_the_parsers() {
    let mut reply = vec![0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
    reply.extend_from_slice(&[0, 0, 7, 8, 0, 0, 0, 1, 0, 0, 0, 2]);
    reply.extend_from_slice(&TWO_PEERS);
    for len in 0..=reply.len() {
        let datagram = reply.get(..len).unwrap_or_default();
        match check_reply(datagram, 0xdead_beef) {
            None => assert!(len < REPLY_HEADER_LEN, "{len} bytes ignored"),
            Some((action, body)) => {
                assert_eq!(action, ACTION_ANNOUNCE);
                for ipv4 in [true, false] {
                    let parsed = parse_announce_reply("udp://t:1", body, ipv4);
                    let peer_len = if ipv4 { 6 } else { 18 };
                    let whole_peers = len >= 20 && (len - 20) % peer_len == 0;
                    assert_eq!(parsed.is_ok(), whole_peers, "{len} bytes, ipv4 {ipv4}");
                }
            }
        }
        assert_eq!(
            check_reply(datagram, 0x0bad_cafe),
            None,
            "wrong tid, {len} bytes"
        );
    }
}
