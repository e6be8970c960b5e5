//! A tiny UDP tracker (BEP 15) for tests: listens on a loopback address, records every
//! datagram with its source, and answers connects and announces from a [`Script`]: canned
//! replies, lost datagrams, stray replies first. Test-only; it stops when the
//! [`UdpTestTracker`] is dropped.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How long a test waits for the tracker to see a datagram before failing: generous for a
/// loaded CI machine, short enough that a broken test fails rather than hangs.
const DATAGRAM_WAIT: Duration = Duration::from_secs(10);

/// What the tracker answers to an announce (action 1).
#[derive(Clone, Debug)]
pub(super) enum AnnounceAnswer {
    /// Action 1 with these counts and compact peers (6 or 18 bytes each, as given).
    Peers {
        interval: u32,
        leechers: u32,
        seeders: u32,
        compact: Vec<u8>,
    },
    /// Action 3 with this message.
    Error(String),
    /// Action 1 with exactly these bytes after the header (to send short replies).
    Raw(Vec<u8>),
}

/// How the tracker behaves.
#[derive(Clone, Debug)]
pub(super) struct Script {
    /// Bytes after the header of a connect reply: normally the 8-byte connection id.
    pub connect_body: Vec<u8>,
    pub announce: AnnounceAnswer,
    /// The datagrams (counted from 0 in order of arrival) recorded but never answered, as
    /// if lost.
    pub dropped: std::ops::Range<usize>,
    /// Before every reply, send a datagram too short to carry a transaction id and a
    /// copy of the reply with a wrong transaction id.
    pub stray_first: bool,
}

impl Script {
    /// Connect replies with `connection_id`; announces answered with `announce`.
    pub fn new(connection_id: u64, announce: AnnounceAnswer) -> Self {
        Script {
            connect_body: connection_id.to_be_bytes().to_vec(),
            announce,
            dropped: 0..0,
            stray_first: false,
        }
    }
}

/// One datagram as the tracker received it.
#[derive(Debug)]
pub(super) struct SeenDatagram {
    pub bytes: Vec<u8>,
    pub from: SocketAddr,
}

impl SeenDatagram {
    /// The action field (bytes 8..12 of connect and announce requests alike).
    pub fn action(&self) -> Option<u32> {
        let bytes = self.bytes.get(8..12)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }
}

pub(super) struct UdpTestTracker {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<SeenDatagram>,
    server: JoinHandle<()>,
}

impl UdpTestTracker {
    /// A tracker on `127.0.0.1`, port chosen by the system.
    pub async fn start(script: Script) -> Self {
        Self::start_on("127.0.0.1:0", script)
            .await
            .unwrap_or_else(|err| panic!("bind UDP test tracker: {err}"))
    }

    /// A tracker bound to `bind` (e.g. `[::1]:0`); an error if that cannot be bound.
    pub async fn start_on(bind: &str, script: Script) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(bind).await?;
        let addr = socket.local_addr()?;
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let server = tokio::spawn(serve(socket, script, seen_tx));
        Ok(UdpTestTracker { addr, seen, server })
    }

    /// The announce URL, with a path (which BEP 15 clients must accept and may ignore).
    pub fn url(&self) -> String {
        format!("udp://{}/announce", self.addr)
    }

    /// The next datagram the tracker received; panics if none arrives within
    /// [`DATAGRAM_WAIT`].
    pub async fn next_datagram(&mut self) -> SeenDatagram {
        match tokio::time::timeout(DATAGRAM_WAIT, self.seen.recv()).await {
            Ok(Some(seen)) => seen,
            Ok(None) => panic!("UDP test tracker stopped"),
            Err(_) => panic!("no datagram reached the UDP test tracker within {DATAGRAM_WAIT:?}"),
        }
    }

    /// Every datagram received and not yet taken, without waiting.
    pub fn received_so_far(&mut self) -> Vec<SeenDatagram> {
        std::iter::from_fn(|| self.seen.try_recv().ok()).collect()
    }
}

impl Drop for UdpTestTracker {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(socket: UdpSocket, script: Script, seen_tx: mpsc::UnboundedSender<SeenDatagram>) {
    let mut buf = vec![0u8; 65_536];
    let mut received = 0usize;
    while let Ok((len, from)) = socket.recv_from(&mut buf).await {
        let bytes = buf.get(..len).unwrap_or_default().to_vec();
        let seen = SeenDatagram { bytes, from };
        let action = seen.action();
        let tid = seen.bytes.get(12..16).map(<[u8]>::to_vec);
        let _ = seen_tx.send(seen);
        let index = received;
        received += 1;
        if script.dropped.contains(&index) {
            continue;
        }
        let (Some(action), Some(tid)) = (action, tid) else {
            continue;
        };
        let (reply_action, body) = match action {
            0 => (0u32, script.connect_body.clone()),
            1 => match &script.announce {
                AnnounceAnswer::Peers {
                    interval,
                    leechers,
                    seeders,
                    compact,
                } => {
                    let mut body = Vec::new();
                    body.extend_from_slice(&interval.to_be_bytes());
                    body.extend_from_slice(&leechers.to_be_bytes());
                    body.extend_from_slice(&seeders.to_be_bytes());
                    body.extend_from_slice(compact);
                    (1, body)
                }
                AnnounceAnswer::Error(message) => (3, message.as_bytes().to_vec()),
                AnnounceAnswer::Raw(body) => (1, body.clone()),
            },
            _ => continue,
        };
        let reply = |tid: &[u8]| {
            let mut out = reply_action.to_be_bytes().to_vec();
            out.extend_from_slice(tid);
            out.extend_from_slice(&body);
            out
        };
        if script.stray_first {
            let wrong_tid: Vec<u8> = tid.iter().map(|byte| byte ^ 0xff).collect();
            let _ = socket.send_to(&[0, 0, 0], from).await;
            let _ = socket.send_to(&reply(&wrong_tid), from).await;
        }
        let _ = socket.send_to(&reply(&tid), from).await;
    }
}
