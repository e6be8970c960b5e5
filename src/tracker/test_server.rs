//! A tiny HTTP tracker for tests: listens on 127.0.0.1, records each request's target, user
//! agent and source address, and answers every request with one canned [`Reply`].
//! Test-only; it stops (with every connection) when the [`TestTracker`] is dropped.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// How long a test waits for the tracker to see a request before failing: generous for a
/// loaded CI machine, short enough that a broken test fails rather than hangs.
const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// Largest request head we read; ours are a few hundred bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// What the tracker answers to every request.
#[derive(Clone, Debug)]
pub(super) enum Reply {
    /// `200 OK` with this body.
    Ok(Vec<u8>),
    /// This status with an empty body.
    Status(u16),
    /// Read the request, then close the connection without a word.
    Close,
    /// Read the request, then never answer.
    Silent,
}

/// One request as the tracker saw it.
#[derive(Debug)]
pub(super) struct SeenRequest {
    /// Path and query, exactly as sent.
    pub target: String,
    pub user_agent: String,
    pub from: SocketAddr,
}

pub(super) struct TestTracker {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<SeenRequest>,
    server: JoinHandle<()>,
}

impl SeenRequest {
    /// The raw (still percent-encoded) value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        let (_, query) = self.target.split_once('?')?;
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }
}

impl TestTracker {
    pub async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|err| panic!("bind test tracker: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("test tracker address: {err}"));
        let (seen_tx, requests) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            // Dropped with this task on abort, which aborts every connection task too.
            let mut connections = JoinSet::new();
            while let Ok((stream, from)) = listener.accept().await {
                connections.spawn(serve(stream, from, reply.clone(), seen_tx.clone()));
            }
        });
        TestTracker {
            addr,
            requests,
            server,
        }
    }

    /// The announce URL, without a query.
    pub fn url(&self) -> String {
        format!("http://{}/announce", self.addr)
    }

    /// The next request the tracker saw; panics if none arrives within [`REQUEST_WAIT`].
    pub async fn next_request(&mut self) -> SeenRequest {
        match tokio::time::timeout(REQUEST_WAIT, self.requests.recv()).await {
            Ok(Some(seen)) => seen,
            Ok(None) => panic!("test tracker stopped"),
            Err(_) => panic!("no request reached the test tracker within {REQUEST_WAIT:?}"),
        }
    }

    /// A request already seen and not yet taken, without waiting.
    pub fn try_next_request(&mut self) -> Option<SeenRequest> {
        self.requests.try_recv().ok()
    }
}

impl Drop for TestTracker {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    from: SocketAddr,
    reply: Reply,
    seen_tx: mpsc::UnboundedSender<SeenRequest>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD_BYTES {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.lines();
    let target = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_owned();
    let user_agent = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("user-agent"))
        .map(|(_, value)| value.trim().to_owned())
        .unwrap_or_default();
    let _ = seen_tx.send(SeenRequest {
        target,
        user_agent,
        from,
    });

    let response = match reply {
        Reply::Ok(body) => {
            let mut response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            response.extend_from_slice(&body);
            response
        }
        Reply::Status(code) => {
            format!("HTTP/1.1 {code} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .into_bytes()
        }
        Reply::Close => return,
        Reply::Silent => {
            std::future::pending::<()>().await;
            return;
        }
    };
    // The client may hang up early (an oversized reply); that is its business.
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}
