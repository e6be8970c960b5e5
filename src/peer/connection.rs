//! Connection setup and the read and write loops of one peer.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::quickack::QuickAckRead;
use super::{PeerCommand, PeerCounters, PeerError, PeerEvent, PeerKey};
use crate::layout::Layout;
use crate::ratelimit::RateLimiter;
use crate::store::PieceStore;
use crate::types::{BLOCK_SIZE, InfoHash, PeerId};
use crate::wire::{
    BlockRequest, DEFAULT_MAX_MESSAGE_LEN, Handshake, Message, MessageCodec, read_handshake,
    write_handshake,
};

/// A TCP connect that takes longer than this is to a peer we would not enjoy anyway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes are 68 bytes each way; a peer slower than this is not worth waiting for.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// BEP 3 peers send a keep-alive every 2 minutes; past 3 minutes of silence a peer is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// We send a keep-alive after this much silence of ours (well under everyone's 2 min).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(90);
/// Requests from a peer we queue before refusing more: libtorrent asks 500 by default
/// (`reqq`), so this lets a fast leecher keep its pipeline full while a flood cannot grow
/// memory (each queued entry is 12 bytes; data is read only when sent).
pub const MAX_QUEUED_UPLOADS: usize = 512;
/// Buffered output is flushed at this size even while more is ready (bounds the buffer).
const FLUSH_AT_BYTES: usize = 256 * 1024;
/// The largest block we serve (BEP 3's 16 KiB; clients that ask more get refused).
const MAX_UPLOAD_BLOCK: u32 = BLOCK_SIZE;

/// Everything a peer task needs from its torrent.
#[derive(Clone)]
pub struct PeerContext {
    pub info_hash: InfoHash,
    pub our_id: PeerId,
    pub layout: Arc<Layout>,
    pub store: Arc<PieceStore>,
    pub events: mpsc::Sender<PeerEvent>,
    pub shutdown: CancellationToken,
    /// Whether uploads are allowed at all (`--no-upload` turns them off).
    pub upload_enabled: bool,
    /// The torrent's upload limit (`--upload-rate`), if any.
    pub upload_limit: Option<Arc<RateLimiter>>,
    /// Our BEP 10 extended handshake, sent to peers that support extensions.
    pub ext_handshake: Bytes,
    /// The IP we listen on, when it is a specific one: our dials leave from it too, so
    /// peers (and their PEX) see the address that accepts connections.
    pub bind_ip: Option<IpAddr>,
}

/// Dials `addr`, shakes hands and runs the connection until it ends.
pub async fn connect_outgoing(
    ctx: PeerContext,
    key: PeerKey,
    addr: SocketAddr,
) -> Result<(), PeerError> {
    let result = async {
        let stream = match timeout(CONNECT_TIMEOUT, dial(addr, ctx.bind_ip)).await {
            Err(_) => return Err(PeerError::ConnectTimeout { addr }),
            Ok(Err(source)) => return Err(PeerError::Connect { addr, source }),
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let mut stream = stream;
        let ours = Handshake::new(ctx.info_hash, ctx.our_id);
        let theirs = timeout(HANDSHAKE_TIMEOUT, async {
            write_handshake(&mut stream, &ours).await?;
            read_handshake(&mut stream).await
        })
        .await
        .map_err(|_| PeerError::HandshakeTimeout { addr })?
        .map_err(|source| PeerError::Wire { addr, source })?;
        if theirs.info_hash != ctx.info_hash {
            return Err(PeerError::WrongInfoHash { addr });
        }
        if theirs.peer_id == ctx.our_id {
            return Err(PeerError::SelfConnection { addr });
        }
        Ok((stream, theirs))
    }
    .await;
    match result {
        Ok((stream, theirs)) => run_session(ctx, key, addr, stream, theirs, true).await,
        Err(err) => {
            let _ = ctx
                .events
                .send(PeerEvent::Closed {
                    key,
                    addr,
                    connected: false,
                    reason: err.to_string(),
                    misbehaved: err.is_misbehaviour(),
                })
                .await;
            Err(err)
        }
    }
}

/// Connects to `addr`, from `bind_ip` when it is given and of the same family.
async fn dial(addr: SocketAddr, bind_ip: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = bind_ip.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// Runs a connection a peer opened to us, whose handshake the listener already read.
pub async fn accept_incoming(
    ctx: PeerContext,
    key: PeerKey,
    addr: SocketAddr,
    mut stream: TcpStream,
    theirs: Handshake,
) -> Result<(), PeerError> {
    let ours = Handshake::new(ctx.info_hash, ctx.our_id);
    if theirs.peer_id == ctx.our_id {
        return Err(PeerError::SelfConnection { addr });
    }
    timeout(HANDSHAKE_TIMEOUT, write_handshake(&mut stream, &ours))
        .await
        .map_err(|_| PeerError::HandshakeTimeout { addr })?
        .map_err(|source| PeerError::Wire { addr, source })?;
    run_session(ctx, key, addr, stream, theirs, false).await
}

/// An item on the way from the read loop to the write loop.
enum UploadItem {
    Request(BlockRequest),
    Cancel(BlockRequest),
    /// A request that did not fit the queue: reject it (Fast extension peers only).
    Refuse(BlockRequest),
}

async fn run_session(
    ctx: PeerContext,
    key: PeerKey,
    addr: SocketAddr,
    stream: TcpStream,
    theirs: Handshake,
    outgoing: bool,
) -> Result<(), PeerError> {
    let fast = theirs.supports_fast();
    let (command_tx, command_rx) = mpsc::unbounded_channel();
    let counters = Arc::new(PeerCounters::default());
    let connected = PeerEvent::Connected {
        key,
        addr,
        peer_id: theirs.peer_id,
        fast,
        outgoing,
        commands: command_tx,
        counters: Arc::clone(&counters),
    };
    if ctx.events.send(connected).await.is_err() {
        return Err(PeerError::ShuttingDown);
    }
    let (read_half, write_half) = stream.into_split();
    let (upload_tx, upload_rx) = mpsc::channel(MAX_QUEUED_UPLOADS);
    let reader = read_loop(&ctx, key, addr, read_half, upload_tx, fast, &counters);
    let extensions = theirs.supports_extensions();
    let writer = write_loop(
        &ctx, addr, write_half, command_rx, upload_rx, fast, extensions, &counters,
    );
    let result = tokio::select! {
        r = reader => r,
        r = writer => r,
        () = ctx.shutdown.cancelled() => Err(PeerError::ShuttingDown),
    };
    let (reason, misbehaved) = match &result {
        Ok(()) => ("closed".to_string(), false),
        Err(err) => (err.to_string(), err.is_misbehaviour()),
    };
    let _ = ctx
        .events
        .send(PeerEvent::Closed {
            key,
            addr,
            connected: true,
            reason,
            misbehaved,
        })
        .await;
    result
}

async fn read_loop(
    ctx: &PeerContext,
    key: PeerKey,
    addr: SocketAddr,
    read_half: OwnedReadHalf,
    uploads: mpsc::Sender<UploadItem>,
    fast: bool,
    counters: &PeerCounters,
) -> Result<(), PeerError> {
    let mut frames = FramedRead::with_capacity(
        QuickAckRead::new(read_half),
        MessageCodec::new(DEFAULT_MAX_MESSAGE_LEN),
        256 * 1024,
    );
    loop {
        let message = match timeout(IDLE_TIMEOUT, frames.next()).await {
            Err(_) => {
                return Err(PeerError::Idle {
                    addr,
                    secs: IDLE_TIMEOUT.as_secs(),
                });
            }
            Ok(None) => return Err(PeerError::Eof { addr }),
            Ok(Some(Err(source))) => return Err(PeerError::Wire { addr, source }),
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::KeepAlive => {}
            Message::Request(request) => {
                // A full queue means the peer asks faster than it reads. With the Fast
                // extension it is told at once (Reject); without, reading from it waits
                // until the queue drains, which slows a flood to what we serve.
                match uploads.try_send(UploadItem::Request(request)) {
                    Ok(()) => {}
                    Err(_) if fast => {
                        let _ = uploads.send(UploadItem::Refuse(request)).await;
                    }
                    Err(_) => {
                        let _ = uploads.send(UploadItem::Request(request)).await;
                    }
                }
            }
            Message::Cancel(request) => {
                let _ = uploads.send(UploadItem::Cancel(request)).await;
            }
            other => {
                if let Message::Piece { data, .. } = &other {
                    counters
                        .downloaded
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                ctx.events
                    .send(PeerEvent::Message {
                        key,
                        message: other,
                    })
                    .await
                    .map_err(|_| PeerError::ShuttingDown)?;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    ctx: &PeerContext,
    addr: SocketAddr,
    write_half: OwnedWriteHalf,
    mut commands: mpsc::UnboundedReceiver<PeerCommand>,
    mut uploads: mpsc::Receiver<UploadItem>,
    fast: bool,
    extensions: bool,
    counters: &PeerCounters,
) -> Result<(), PeerError> {
    let mut frames = FramedWrite::new(write_half, MessageCodec::new(DEFAULT_MAX_MESSAGE_LEN));
    let wire = |source| PeerError::Wire { addr, source };

    // Our pieces first, as BEP 3 requires the bitfield to be the first message.
    let have = ctx.store.have_list(&ctx.layout);
    if fast && ctx.store.is_complete(&ctx.layout) {
        frames.feed(Message::HaveAll).await.map_err(wire)?;
    } else if fast && have.is_empty() {
        frames.feed(Message::HaveNone).await.map_err(wire)?;
    } else if !have.is_empty() {
        let mut bits = vec![0u8; (ctx.layout.piece_count() as usize).div_ceil(8)];
        for piece in have {
            let i = piece.as_usize();
            if let Some(byte) = bits.get_mut(i / 8) {
                *byte |= 0x80 >> (i % 8);
            }
        }
        frames
            .feed(Message::Bitfield(bits.into()))
            .await
            .map_err(wire)?;
    }
    if extensions {
        frames
            .feed(Message::Extended {
                id: 0,
                payload: ctx.ext_handshake.clone(),
            })
            .await
            .map_err(wire)?;
    }
    SinkExt::<Message>::flush(&mut frames).await.map_err(wire)?;

    let mut queue: VecDeque<BlockRequest> = VecDeque::new();
    let mut am_choking = true;
    let mut last_write = Instant::now();
    // Tokens already taken for the block at the front of the queue.
    let mut prepaid = false;
    loop {
        // Serve one queued request per turn, so commands (our own requests, which keep
        // our downloads going) interleave with uploads.
        let mut can_upload = !am_choking && !queue.is_empty();
        let mut upload_retry = None;
        if can_upload
            && !prepaid
            && let Some(limit) = &ctx.upload_limit
            && let Some(next) = queue.front()
        {
            match limit.try_take(next.length as usize, std::time::Instant::now()) {
                Ok(()) => prepaid = true,
                Err(wait) => {
                    can_upload = false;
                    upload_retry = Some(Instant::now() + wait);
                }
            }
        }
        tokio::select! {
            biased;
            command = commands.recv() => {
                match command {
                    None | Some(PeerCommand::Close) => return Err(PeerError::ClosedByUs),
                    Some(PeerCommand::Send(message)) => {
                        match &message {
                            Message::Choke => {
                                am_choking = true;
                                if fast {
                                    for request in queue.drain(..) {
                                        frames.feed(Message::Reject(request)).await.map_err(wire)?;
                                    }
                                } else {
                                    queue.clear();
                                }
                            }
                            Message::Unchoke => am_choking = false,
                            _ => {}
                        }
                        frames.feed(message).await.map_err(wire)?;
                    }
                    Some(PeerCommand::SendRequests(requests)) => {
                        for request in requests {
                            frames.feed(Message::Request(request)).await.map_err(wire)?;
                        }
                    }
                }
            }
            item = uploads.recv() => {
                match item {
                    None => return Err(PeerError::Eof { addr }),
                    Some(UploadItem::Cancel(request)) => queue.retain(|r| *r != request),
                    Some(UploadItem::Refuse(request)) => {
                        frames.feed(Message::Reject(request)).await.map_err(wire)?;
                    }
                    Some(UploadItem::Request(request)) => {
                        match validate_request(ctx, &request, am_choking) {
                            Ok(()) if queue.len() < MAX_QUEUED_UPLOADS => queue.push_back(request),
                            _ if fast => frames.feed(Message::Reject(request)).await.map_err(wire)?,
                            _ => {}
                        }
                    }
                }
            }
            () = std::future::ready(()), if can_upload => {
                prepaid = false;
                if let Some(request) = queue.pop_front() {
                    let block = ctx.layout.piece(request.piece).and_then(|piece| {
                        ctx.store.read_block(&ctx.layout, piece, request.offset, request.length)
                    });
                    match block {
                        Some(data) => {
                            counters.uploaded.fetch_add(data.len() as u64, Ordering::Relaxed);
                            frames
                                .feed(Message::Piece { piece: request.piece, offset: request.offset, data })
                                .await
                                .map_err(wire)?;
                        }
                        None if fast => frames.feed(Message::Reject(request)).await.map_err(wire)?,
                        None => {}
                    }
                }
            }
            () = tokio::time::sleep_until(upload_retry.unwrap_or(last_write)), if upload_retry.is_some() => {}
            () = tokio::time::sleep_until(last_write + KEEPALIVE_EVERY) => {
                frames.feed(Message::KeepAlive).await.map_err(wire)?;
            }
        }
        // Flush once nothing else is ready, so bursts go out in few syscalls.
        let idle = commands.is_empty() && (am_choking || queue.is_empty());
        if idle || frames.write_buffer().len() >= FLUSH_AT_BYTES {
            SinkExt::<Message>::flush(&mut frames).await.map_err(wire)?;
            last_write = Instant::now();
        }
    }
}

/// Whether a peer's request is one we serve: uploads on, peer unchoked, a block of at most
/// 16 KiB inside a piece we hold.
fn validate_request(
    ctx: &PeerContext,
    request: &BlockRequest,
    am_choking: bool,
) -> Result<(), &'static str> {
    if !ctx.upload_enabled {
        return Err("uploads are off");
    }
    if am_choking {
        return Err("peer is choked");
    }
    let piece = ctx.layout.piece(request.piece).ok_or("no such piece")?;
    if !ctx
        .layout
        .request_fits(piece, request.offset, request.length, MAX_UPLOAD_BLOCK)
    {
        return Err("bad block bounds");
    }
    if !ctx.store.has(piece) {
        return Err("piece not held");
    }
    Ok(())
}
