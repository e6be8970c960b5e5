//! In-process test seeders on loopback, written with swarmfs's own wire types: each serves
//! a `Payload`'s bytes with a `Behaviour` (honest, or one of the ways a peer can be
//! broken or hostile), on its own 127.0.0.x address and its own tokio runtime thread, so
//! that synchronous tests can start several and point a mount at them with `--peer`.
//!
//! A seeder speaks BEP 3 (no Fast): bitfield, unchoke on interest, one Piece per Request
//! in order, Cancel honoured; and the extension protocol (BEP 10) far enough to serve the
//! torrent's metadata (BEP 9), so that it can answer a magnet link. The metadata
//! behaviours lie there and only there: their blocks are honest. Dropping a `TestSeeder`
//! stops it: its runtime, listener and connections go with its thread.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use swarmfs::metainfo::Metainfo;
use swarmfs::types::{InfoHash, PeerId};
use swarmfs::wire::metadata::{METADATA_PIECE_LEN, MetadataMessage};
use swarmfs::wire::{
    BlockRequest, ExtendedHandshake, Handshake, Message, MessageCodec, read_handshake,
    write_handshake,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::fixture::Payload;
use super::net::{free_port, next_ip};

/// What a hostile peer claims as a frame length: 100 MiB, far past any codec's limit.
pub const OVERSIZED_PREFIX: u32 = 100 * 1024 * 1024;

/// A connection whose handshake never comes must not hold a seeder task forever.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);

/// Unsolicited: pieces poisoned after each HAVE (the next ones, likely in flight), and the
/// pause between its blocks (so they arrive while the reader's pieces are being fetched).
const UNSOLICITED_AHEAD: u32 = 2;
const UNSOLICITED_PAUSE: Duration = Duration::from_millis(2);

/// Largest block a seeder serves (BEP 3's 16 KiB, as swarmfs requests).
const MAX_BLOCK: u32 = 16 * 1024;

/// The id our extended handshake gives ut_metadata: not swarmfs's own (1), so that a mix-up
/// of our id and theirs shows.
const SEEDER_UT_METADATA_ID: u8 = 3;

/// `LiesAboutMetadataSize` announces this many bytes more than the real info dictionary:
/// one 16 KiB metadata piece more, so its assembly differs from the honest one in size
/// and in piece count.
const METADATA_SIZE_LIE: usize = METADATA_PIECE_LEN + 100;

/// What `OversizedMetadata` announces: 1 GiB, far past any sane info dictionary.
pub const OVERSIZED_METADATA: u64 = 1 << 30;

/// Which pieces a `Corrupting` seeder damages.
#[derive(Clone, Debug)]
pub enum Pieces {
    All,
    Only(Vec<u32>),
}

impl Pieces {
    fn contains(&self, piece: u32) -> bool {
        match self {
            Pieces::All => true,
            Pieces::Only(list) => list.contains(&piece),
        }
    }
}

/// How a seeder treats the peers that connect to it.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Serves every requested block with the right bytes.
    Honest,
    /// Serves requested blocks, but flips a byte in every block of these pieces.
    Corrupting(Pieces),
    /// Handshakes and sends its bitfield, then never unchokes.
    Silent,
    /// Sends random bytes after the handshake instead of messages.
    Garbage,
    /// Sends a length prefix of `OVERSIZED_PREFIX` after the handshake.
    Oversized,
    /// Claims no pieces; after each HAVE it receives, sends corrupted blocks of the next
    /// `UNSOLICITED_AHEAD` pieces, which nobody asked it for.
    Unsolicited,
    /// Honest, but sleeps this long before each block.
    Slow(Duration),
    /// Honest for this many blocks per connection, then drops the connection.
    Disconnecting { after_blocks: u64 },
    /// Metadata: announces a size `METADATA_SIZE_LIE` bytes too big and serves that many
    /// bytes of garbage.
    LiesAboutMetadataSize,
    /// Metadata: announces the right size and serves it with one byte flipped in every
    /// 16 KiB metadata piece.
    BadMetadata,
    /// `BadMetadata`, holding back its answers until this long after the first request:
    /// the pieces it was asked for stay its own while an honest peer sends the rest.
    SlowBadMetadata(Duration),
    /// Metadata: announces `OVERSIZED_METADATA` bytes and rejects every request.
    OversizedMetadata,
    /// Honest, but sends its extended handshake (which carries the metadata size) only
    /// after this long: a liar beside it is asked first, deterministically.
    SlowMetadata(Duration),
}

/// One seeder: its address, its counter, and the thread that runs it until drop.
pub struct TestSeeder {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    wire_log: Arc<Mutex<Vec<WireEvent>>>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

/// What every connection of one seeder shares.
struct Shared {
    behaviour: Behaviour,
    info_hash: InfoHash,
    peer_id: PeerId,
    piece_len: u32,
    /// The whole torrent, files concatenated in torrent order.
    data: Bytes,
    /// The metadata (BEP 9) this seeder serves: the info dictionary, or the behaviour's
    /// version of it.
    metadata: Bytes,
    piece_count: u32,
    served: Arc<AtomicU64>,
    wire_log: Arc<Mutex<Vec<WireEvent>>>,
}

/// What one seeder saw and did, in order, over all its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireEvent {
    /// A Request for the block of this piece at this offset arrived.
    Asked(u32, u32),
    /// A block of this piece was sent.
    Served(u32),
}

impl TestSeeder {
    /// Starts a seeder of `payload` on a fresh 127.0.0.x:port; it accepts at once.
    pub fn start(behaviour: Behaviour, payload: &Payload) -> TestSeeder {
        let meta = Metainfo::from_bytes(&std::fs::read(&payload.torrent).expect("read .torrent"))
            .expect("parse .torrent");
        let mut data = Vec::with_capacity(usize::try_from(meta.total_length).unwrap());
        for file in &meta.files {
            let path = file
                .path
                .iter()
                .fold(payload.data_dir.clone(), |p, c| p.join(c));
            data.extend(std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")));
        }
        assert_eq!(data.len() as u64, meta.total_length, "payload size");

        let ip = next_ip();
        let listener = StdListener::bind((ip, free_port(ip))).expect("bind test seeder");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let served = Arc::new(AtomicU64::new(0));
        let wire_log = Arc::new(Mutex::new(Vec::new()));
        let mut peer_id = *b"-TS0001-000000000000";
        peer_id[8..].copy_from_slice(format!("{:012}", addr.port()).as_bytes());
        let metadata = metadata_for(&behaviour, &meta.info_bytes);
        let shared = Arc::new(Shared {
            behaviour,
            info_hash: meta.info_hash,
            peer_id: PeerId(peer_id),
            piece_len: meta.piece_length,
            piece_count: meta.piece_count(),
            data: Bytes::from(data),
            metadata,
            served: Arc::clone(&served),
            wire_log: Arc::clone(&wire_log),
        });
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("seeder-{addr}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("seeder runtime");
                // Leaving block_on and dropping the runtime drops every connection task.
                runtime.block_on(accept_loop(listener, shared, token));
            })
            .expect("spawn seeder thread");
        TestSeeder {
            addr,
            served,
            wire_log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `--peer IP:PORT` arguments for this seeder.
    pub fn peer_arg(&self) -> String {
        self.addr.to_string()
    }

    /// Requests received and blocks sent so far, in order (all connections).
    pub fn wire_log(&self) -> Vec<WireEvent> {
        self.wire_log.lock().unwrap().clone()
    }

    /// Piece messages sent so far, over all connections (unsolicited ones included).
    pub fn blocks_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for TestSeeder {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: StdListener, shared: Arc<Shared>, stop: CancellationToken) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
                }
            }
        }
    }
}

/// One connection: handshake, then whatever the behaviour says. Errors end it quietly:
/// a mount dropping a hostile peer is the expected outcome.
async fn serve_connection(mut stream: TcpStream, shared: Arc<Shared>) {
    let Ok(Ok(theirs)) = timeout(HANDSHAKE_WAIT, read_handshake(&mut stream)).await else {
        return;
    };
    if theirs.info_hash != shared.info_hash {
        return;
    }
    // Only the extension-protocol bit (BEP 10): no Fast, so no Reject or HaveAll.
    let mut reserved = [0u8; 8];
    reserved[5] |= 0x10;
    let ours = Handshake {
        reserved,
        info_hash: shared.info_hash,
        peer_id: shared.peer_id,
    };
    if write_handshake(&mut stream, &ours).await.is_err() {
        return;
    }
    match shared.behaviour {
        Behaviour::Garbage => {
            let noise: Vec<u8> = (0..64 * 1024).map(|_| rand::random::<u8>()).collect();
            let _ = stream.write_all(&noise).await;
            drain(stream).await;
        }
        Behaviour::Oversized => {
            let mut frame = OVERSIZED_PREFIX.to_be_bytes().to_vec();
            frame.extend_from_slice(&[7; 1024]); // a Piece id and the start of its "body"
            let _ = stream.write_all(&frame).await;
            drain(stream).await;
        }
        _ => {
            let _ = serve_messages(stream, &shared).await;
        }
    }
}

/// Reads until the peer closes, so the connection ends when the mount drops it.
async fn drain(stream: TcpStream) {
    let mut frames = FramedRead::new(stream, MessageCodec::default());
    while let Some(Ok(_)) = frames.next().await {}
}

/// The message loop of every behaviour that speaks the protocol.
async fn serve_messages(stream: TcpStream, shared: &Shared) -> anyhow::Result<()> {
    let (read_half, write_half) = stream.into_split();
    let mut incoming = FramedRead::new(read_half, MessageCodec::default());
    let mut outgoing = FramedWrite::new(write_half, MessageCodec::default());
    let claims_all = !matches!(shared.behaviour, Behaviour::Unsolicited);
    outgoing.send(&shared.bitfield(claims_all)).await?;

    let delay = match shared.behaviour {
        Behaviour::Slow(delay) => delay,
        _ => Duration::ZERO,
    };
    let mut queue: VecDeque<BlockRequest> = VecDeque::new();
    let mut next_block_at = Instant::now();
    let mut unchoked = false;
    let mut served_here = 0u64;
    let extended_handshake_at = Instant::now()
        + match shared.behaviour {
            Behaviour::SlowMetadata(delay) => delay,
            _ => Duration::ZERO,
        };
    let mut extended_handshake_sent = false;
    // Their ut_metadata id, from their extended handshake.
    let mut their_metadata_id: Option<u8> = None;
    // SlowBadMetadata: no metadata answer before this (set at the first request).
    let mut metadata_answers_from: Option<Instant> = None;
    loop {
        let ready = !queue.is_empty();
        tokio::select! {
            () = sleep_until(extended_handshake_at), if !extended_handshake_sent => {
                extended_handshake_sent = true;
                outgoing.send(&shared.extended_handshake()).await?;
            }
            message = incoming.next() => {
                let Some(message) = message else { return Ok(()) };
                match message? {
                    Message::Interested if !matches!(shared.behaviour, Behaviour::Silent) => {
                        unchoked = true;
                        outgoing.send(&Message::Unchoke).await?;
                    }
                    Message::Request(request) if unchoked => {
                        shared.wire_log.lock().unwrap().push(WireEvent::Asked(request.piece, request.offset));
                        if queue.is_empty() {
                            next_block_at = Instant::now() + delay;
                        }
                        queue.push_back(request);
                    }
                    Message::Cancel(request) => queue.retain(|r| *r != request),
                    Message::Extended { id: 0, payload } => {
                        their_metadata_id = ExtendedHandshake::parse(&payload)?
                            .extension_id("ut_metadata");
                    }
                    Message::Extended { id: SEEDER_UT_METADATA_ID, payload } => {
                        if let (Some(id), MetadataMessage::Request { piece }) =
                            (their_metadata_id, MetadataMessage::parse(&payload)?)
                        {
                            if let Behaviour::SlowBadMetadata(delay) = shared.behaviour {
                                sleep_until(
                                    *metadata_answers_from.get_or_insert_with(|| Instant::now() + delay),
                                )
                                .await;
                            }
                            let reply = shared.metadata_reply(piece);
                            outgoing
                                .send(&Message::Extended { id, payload: reply.to_bytes() })
                                .await?;
                        }
                    }
                    Message::Have { piece } if matches!(shared.behaviour, Behaviour::Unsolicited) => {
                        for ahead in 1..=UNSOLICITED_AHEAD {
                            for block in shared.poisoned_blocks(piece.saturating_add(ahead)) {
                                outgoing.send(&block).await?;
                                shared.served.fetch_add(1, Ordering::Relaxed);
                                sleep(UNSOLICITED_PAUSE).await;
                            }
                        }
                    }
                    _ => {}
                }
            }
            () = sleep_until(next_block_at), if ready => {
                let Some(request) = queue.pop_front() else { continue };
                let Some(block) = shared.block(request) else { return Ok(()) };
                outgoing.send(&block).await?;
                shared.served.fetch_add(1, Ordering::Relaxed);
                shared.wire_log.lock().unwrap().push(WireEvent::Served(request.piece));
                served_here += 1;
                if let Behaviour::Disconnecting { after_blocks } = shared.behaviour
                    && served_here >= after_blocks
                {
                    return Ok(());
                }
                next_block_at = Instant::now() + delay;
            }
        }
    }
}

impl Shared {
    /// Our BEP 10 handshake: ut_metadata, and the metadata size the behaviour announces.
    fn extended_handshake(&self) -> Message {
        let mut hs = ExtendedHandshake::default();
        hs.m.insert("ut_metadata".into(), i64::from(SEEDER_UT_METADATA_ID));
        hs.metadata_size = Some(match self.behaviour {
            Behaviour::OversizedMetadata => OVERSIZED_METADATA,
            _ => self.metadata.len() as u64,
        });
        hs.v = Some("swarmfs-test-seeder".into());
        Message::Extended {
            id: 0,
            payload: hs.to_bytes().into(),
        }
    }

    /// The answer to a request for metadata piece `piece`: its bytes, or a reject past the
    /// end (and always for `OversizedMetadata`, which has nothing behind its claim).
    fn metadata_reply(&self, piece: u32) -> MetadataMessage {
        let start = (piece as usize).saturating_mul(METADATA_PIECE_LEN);
        if matches!(self.behaviour, Behaviour::OversizedMetadata) || start >= self.metadata.len() {
            return MetadataMessage::Reject { piece };
        }
        let end = (start + METADATA_PIECE_LEN).min(self.metadata.len());
        MetadataMessage::Data {
            piece,
            total_size: self.metadata.len() as u64,
            data: self.metadata.slice(start..end),
        }
    }

    fn bitfield(&self, all: bool) -> Message {
        let mut bits = vec![0u8; (self.piece_count as usize).div_ceil(8)];
        if all {
            for i in 0..self.piece_count as usize {
                bits[i / 8] |= 0x80 >> (i % 8);
            }
        }
        Message::Bitfield(bits.into())
    }

    /// The Piece message answering `request` (damaged if the behaviour says so), or
    /// `None` for a request outside the torrent or over 16 KiB.
    fn block(&self, request: BlockRequest) -> Option<Message> {
        let start =
            u64::from(request.piece) * u64::from(self.piece_len) + u64::from(request.offset);
        let end = start + u64::from(request.length);
        let in_piece = request.offset.checked_add(request.length)? <= self.piece_len;
        if request.piece >= self.piece_count || !in_piece || request.length > MAX_BLOCK {
            return None;
        }
        let bytes = self
            .data
            .get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)?;
        let corrupt =
            matches!(&self.behaviour, Behaviour::Corrupting(p) if p.contains(request.piece));
        Some(piece_message(request, bytes, corrupt))
    }

    /// Every block of `piece`, damaged, for the Unsolicited behaviour (none past the end).
    fn poisoned_blocks(&self, piece: u32) -> Vec<Message> {
        if piece >= self.piece_count {
            return Vec::new();
        }
        let piece_start = u64::from(piece) * u64::from(self.piece_len);
        let piece_len = (self.data.len() as u64 - piece_start).min(u64::from(self.piece_len));
        (0..piece_len)
            .step_by(MAX_BLOCK as usize)
            .map(|offset| {
                let length = (piece_len - offset).min(u64::from(MAX_BLOCK));
                let start = (piece_start + offset) as usize;
                let request = BlockRequest {
                    piece,
                    offset: offset as u32,
                    length: length as u32,
                };
                piece_message(request, &self.data[start..start + length as usize], true)
            })
            .collect()
    }
}

/// The metadata a seeder with `behaviour` serves in place of the real `info` bytes.
fn metadata_for(behaviour: &Behaviour, info: &Bytes) -> Bytes {
    match behaviour {
        Behaviour::LiesAboutMetadataSize => {
            // Garbage that still starts like a dictionary: deterministic, never the info.
            let mut lie = b"d4:name".to_vec();
            lie.resize(info.len() + METADATA_SIZE_LIE, b'x');
            lie.into()
        }
        Behaviour::BadMetadata | Behaviour::SlowBadMetadata(_) => {
            let mut bad = info.to_vec();
            for piece_start in (0..bad.len()).step_by(METADATA_PIECE_LEN) {
                // The middle of each piece: a flipped byte of a hash, most likely.
                let at = piece_start + (bad.len() - piece_start).min(METADATA_PIECE_LEN) / 2;
                bad[at] ^= 0xff;
            }
            bad.into()
        }
        _ => info.clone(),
    }
}

fn piece_message(request: BlockRequest, bytes: &[u8], corrupt: bool) -> Message {
    let mut data = bytes.to_vec();
    if corrupt && let Some(first) = data.first_mut() {
        *first ^= 0xff;
    }
    Message::Piece {
        piece: request.piece,
        offset: request.offset,
        data: data.into(),
    }
}
