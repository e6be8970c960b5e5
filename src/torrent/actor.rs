//! The torrent actor: sole owner of piece state (partial, held), demand, read-ahead, the
//! peer set and choking.
//!
//! Every transition happens in this one task, one event at a time: a command from a
//! reader, an event from a peer task, a hasher back from a blocking thread, or the
//! periodic tick. After each event (or burst of peer events) the actor tops up the
//! request queues of the peers it touched.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span, warn};

use super::choke::{ChokeCandidate, choose_unchoked};
use super::pace::{self, Pace};
use super::partial::{BlockState, PartialPiece};
use super::{Command, StatusSnapshot, TorrentConfig, TorrentHandle, TorrentStats};
use crate::cache::SharedCache;
use crate::layout::Layout;
use crate::metainfo::Metainfo;
use crate::peer::{
    PeerCommand, PeerContext, PeerCounters, PeerEvent, PeerKey, accept_incoming, connect_outgoing,
};
use crate::ratelimit::RateLimiter;
use crate::store::PieceStore;
use crate::swarm::{AddressBook, PeerSource};
use crate::task;
use crate::types::{BLOCK_SIZE, PeerId, PieceIndex};
use crate::verify::{HashMismatch, PieceHasher, VerifiedPiece};
use crate::wire::metadata::{METADATA_PIECE_LEN, MetadataMessage, OUR_UT_METADATA_ID};
use crate::wire::pex::{MAX_PEX_PEERS, OUR_UT_PEX_ID, PexMessage};
use crate::wire::{BlockRequest, ExtendedHandshake, Message};

/// How often the actor dials peers, expires abandoned demands and re-checks timeouts.
const TICK: Duration = Duration::from_millis(200);
/// Rates are measured over this period.
const RATE_PERIOD: Duration = Duration::from_secs(1);
/// BEP 3: the choking decision is remade every 10 s.
const RECHOKE_EVERY: Duration = Duration::from_secs(10);
/// BEP 3: the optimistic unchoke rotates every 30 s.
const OPTIMISTIC_EVERY: Duration = Duration::from_secs(30);
/// A peer that sent no block for this long while we had requests out is snubbed.
const SNUB_AFTER: Duration = Duration::from_secs(60);
/// A request unanswered this long is given to someone else (the peer may be slow, or may
/// have silently dropped it, as non-Fast peers do on choke).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Endgame: a block of a demanded piece outstanding this long may be asked of a second peer.
const ENDGAME_MIN_AGE: Duration = Duration::from_millis(100);
/// Requests in flight per peer: enough for `QUEUE_HORIZON` of its measured rate, within
/// these bounds. 512 × 16 KiB = 8 MiB, which keeps 1 GiB/s flowing at 8 ms of latency.
const MIN_QUEUE_DEPTH: usize = 32;
const MAX_QUEUE_DEPTH: usize = 512;
const QUEUE_HORIZON: Duration = Duration::from_secs(1);
/// Demanded blocks may exceed a peer's queue depth by a whole piece (at least this many
/// blocks), so a read never waits behind a full read-ahead queue for lack of a slot, and
/// a peer asked for a whole piece is asked for all of it at once.
const DEMAND_EXTRA_DEPTH: usize = 16;
/// A peer with at least this many read-ahead blocks queued has them withdrawn and asked
/// again behind a new demand, so that the demanded blocks are served first.
const BUMP_MIN_BLOCKS: usize = 8;
/// At most one such withdrawal per peer in this time: a read of many pieces makes many
/// demands at once, and each withdrawal may cost blocks that cross the Cancel.
const BUMP_INTERVAL: Duration = Duration::from_millis(100);
/// Connections being opened at once (half-open), so a burst of dead addresses cannot
/// delay good ones for long.
const MAX_HALF_OPEN: usize = 16;
/// Blocks a peer may send unasked (late duplicates after a cancel are normal) before we
/// call it hostile.
const MAX_UNSOLICITED_BLOCKS: u32 = 256;
/// Hinted pieces kept at once: a few per recently opened file.
const MAX_HINTS: usize = 256;
/// Cancelled requests remembered per peer (to excuse blocks that crossed the cancel).
const MAX_REMEMBERED_CANCELS: usize = 4096;
/// Accepted connections beyond `max_peers`, so peers that dial us are not all refused
/// when we are full of our own dials.
const INCOMING_EXTRA: usize = 10;
/// BEP 11: PEX messages go out at most once a minute.
const PEX_EVERY: Duration = Duration::from_secs(60);
/// Hash failures a peer may share in before it is banned.
const MAX_STRIKES: u32 = 3;
/// What is left to hash of a complete piece, up to this many bytes (a block or two, about
/// 9 µs per block here), is hashed in the actor rather than handed to a blocking thread.
const INLINE_HASH_BYTES: usize = 32 * 1024;
/// While at most this many pieces are demanded (a lone read waits, as after a seek), a
/// demanded piece's blocks are hashed in the actor as they come: a hand-off to a blocking
/// thread waits 0.2–0.35 ms for that thread to be scheduled on a busy machine, longer than
/// the whole piece takes to hash at 9 µs per block.
const INLINE_HASH_DEMANDS: usize = 2;
/// A demanded piece's blocks are handed to its peers in turn, this many at a time.
const DEMAND_STRIPE_BLOCKS: u32 = 4;
/// At most this many waiting peer events are handled between two fills (about 16 blocks:
/// a fraction of a millisecond, well inside any peer's queue).
const EVENT_BURST: usize = 16;
/// Spare piece buffers kept for reuse, in bytes (at least one buffer is kept).
const SPARE_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Urgency of a wanted piece: a read waits on it, or it is read-ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Urgency {
    Demand,
    Readahead,
}

struct PeerSlot {
    addr: SocketAddr,
    peer_id: PeerId,
    commands: mpsc::UnboundedSender<PeerCommand>,
    counters: Arc<PeerCounters>,
    has: Vec<bool>,
    has_count: u32,
    peer_choking: bool,
    peer_interested: bool,
    am_interested: bool,
    am_choking: bool,
    inflight: HashSet<(PieceIndex, u32)>,
    /// Requests made during the current fill, sent together when it ends.
    unsent_requests: Vec<BlockRequest>,
    queue_depth: usize,
    /// The most requests it will queue from us (its `reqq`, or our own ceiling).
    max_queue_depth: usize,
    download_rate: u64,
    upload_rate: u64,
    last_downloaded: u64,
    last_uploaded: u64,
    last_block_at: Instant,
    /// How fast it answers: a demanded piece is split among peers by it.
    pace: Pace,
    unsolicited: u32,
    /// Requests we cancelled: a block for one of them may still come (it crossed our
    /// cancel on the wire) and is not held against the peer.
    /// Counted per block: a block cancelled twice (asked again in between) may come twice.
    cancelled: HashMap<(PieceIndex, u32), u32>,
    /// When read-ahead queued here was last withdrawn behind a demand (see
    /// `Actor::bump_behind_demand`), so a burst of demands withdraws it once.
    last_bump: Option<Instant>,
    strikes: u32,
    /// Their message ids for the extensions we use (from their extended handshake).
    ut_metadata: Option<u8>,
    ut_pex: Option<u8>,
    /// Where this peer accepts connections (PEX tells others of it).
    listen_addr: Option<SocketAddr>,
    /// The peers we last told it of by PEX.
    pex_sent: HashSet<SocketAddr>,
}

impl PeerSlot {
    fn send(&self, message: Message) {
        let _ = self.commands.send(PeerCommand::Send(message));
    }

    /// Withdraws our request for `block` of `piece` (if it is outstanding) with a Cancel.
    fn cancel_request(&mut self, layout: &Layout, piece: PieceIndex, block: u32) {
        if !self.inflight.remove(&(piece, block)) {
            return;
        }
        if self.cancelled.len() >= MAX_REMEMBERED_CANCELS {
            self.cancelled.clear();
        }
        *self.cancelled.entry((piece, block)).or_default() += 1;
        let span = layout.block(piece, block);
        self.send(Message::Cancel(BlockRequest {
            piece: piece.get(),
            offset: span.piece_offset,
            length: span.len_bytes,
        }));
    }

    /// Accounts for one answer (a block or a Reject) to a request we cancelled; false if
    /// no cancelled request for that block is left.
    fn take_cancelled(&mut self, piece: PieceIndex, block: u32) -> bool {
        let Some(count) = self.cancelled.get_mut(&(piece, block)) else {
            return false;
        };
        *count -= 1;
        if *count == 0 {
            self.cancelled.remove(&(piece, block));
        }
        true
    }

    fn has(&self, piece: PieceIndex) -> bool {
        self.has.get(piece.as_usize()).copied().unwrap_or(false)
    }

    /// Requests that may be outstanding here when demanded blocks are among them: the
    /// extra depth, but never beyond what the peer said it queues (its `reqq`), as the
    /// excess would be rejected.
    fn demand_limit(&self, layout: &Layout) -> usize {
        let piece_blocks = layout.max_block_count() as usize;
        (self.queue_depth + piece_blocks.max(DEMAND_EXTRA_DEPTH)).min(self.max_queue_depth)
    }

    fn snubbed(&self, now: Instant) -> bool {
        !self.inflight.is_empty() && now.duration_since(self.last_block_at) > SNUB_AFTER
    }
}

struct Actor {
    meta: Arc<Metainfo>,
    layout: Arc<Layout>,
    cache: Arc<SharedCache>,
    config: TorrentConfig,
    stats: Arc<TorrentStats>,
    peer_ctx: PeerContext,
    tasks: TaskTracker,
    shutdown: CancellationToken,

    book: AddressBook,
    peers: HashMap<PeerKey, PeerSlot>,
    next_key: PeerKey,

    /// Pieces the cache holds (mirrors it: only this actor inserts, and evictions happen
    /// only on insert).
    held: Vec<bool>,
    /// Pieces being fetched, and those fully received whose hash is still running.
    partial: HashMap<PieceIndex, PartialPiece>,
    /// Buffers of evicted pieces no reader shares any more, reused for new pieces
    /// (saves zeroing and faulting in fresh memory). At most `SPARE_BUFFER_BYTES`.
    spare_buffers: Vec<BytesMut>,
    waiters: HashMap<PieceIndex, Vec<oneshot::Sender<Bytes>>>,
    demand_order: HashMap<PieceIndex, u64>,
    next_demand: u64,
    readahead: HashMap<u64, Vec<PieceIndex>>,
    /// Pieces worth fetching when nothing more urgent is (oldest first, bounded).
    hints: Vec<PieceIndex>,
    wanted: Vec<(PieceIndex, Urgency)>,
    wanted_dirty: bool,

    fill_all: bool,
    fill_peers: HashSet<PeerKey>,
    /// A new demand came in: peers' queued read-ahead is withdrawn and asked again
    /// behind it, at the next fill.
    bump_readahead: bool,
    optimistic: Option<PeerKey>,
    last_rates: Instant,
    last_rechoke: Instant,
    last_optimistic: Instant,
    last_pex: Instant,
    /// Bytes uploaded over connections that have closed (the live ones add theirs).
    uploaded_by_closed: u64,

    /// Hashers coming back from a blocking thread with a batch of blocks hashed.
    hashed_tx: mpsc::UnboundedSender<(PieceIndex, PieceHasher)>,
}

/// Starts the actor of one torrent and returns its handle.
#[allow(clippy::too_many_arguments)]
pub fn spawn_torrent(
    meta: Arc<Metainfo>,
    cache: Arc<SharedCache>,
    store: Arc<PieceStore>,
    config: TorrentConfig,
    our_id: PeerId,
    own_addrs: Vec<SocketAddr>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) -> TorrentHandle {
    let layout = Arc::new(Layout::new(&meta));
    let stats = Arc::new(TorrentStats::default());
    // Bounded: a reader that floods commands waits rather than growing memory.
    let (command_tx, command_rx) = mpsc::channel(1024);
    let (event_tx, event_rx) = mpsc::channel(4096);
    let (hashed_tx, hashed_rx) = mpsc::unbounded_channel();
    let peer_ctx = PeerContext {
        info_hash: meta.info_hash,
        our_id,
        layout: Arc::clone(&layout),
        store: Arc::clone(&store),
        events: event_tx,
        shutdown: shutdown.child_token(),
        upload_enabled: config.upload_enabled,
        upload_limit: config
            .upload_rate
            .map(|rate| Arc::new(RateLimiter::new(rate))),
        ext_handshake: our_extended_handshake(&meta, own_addrs.first().map_or(0, SocketAddr::port)),
        bind_ip: own_addrs
            .first()
            .map(SocketAddr::ip)
            .filter(|ip| !ip.is_unspecified()),
    };
    let now = Instant::now();
    let held = vec![false; layout.piece_count() as usize];
    let actor = Actor {
        meta: Arc::clone(&meta),
        layout: Arc::clone(&layout),
        cache: Arc::clone(&cache),
        config,
        stats: Arc::clone(&stats),
        peer_ctx,
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
        book: AddressBook::new(own_addrs),
        peers: HashMap::new(),
        next_key: 1,
        held,
        partial: HashMap::new(),
        spare_buffers: Vec::new(),
        waiters: HashMap::new(),
        demand_order: HashMap::new(),
        next_demand: 0,
        readahead: HashMap::new(),
        hints: Vec::new(),
        wanted: Vec::new(),
        wanted_dirty: false,
        fill_all: false,
        bump_readahead: false,
        fill_peers: HashSet::new(),
        optimistic: None,
        last_rates: now,
        last_rechoke: now,
        last_optimistic: now,
        last_pex: now,
        uploaded_by_closed: 0,
        hashed_tx,
    };
    let span = info_span!("torrent", name = %meta.name);
    task::spawn(
        &tasks,
        "torrent",
        span,
        actor.run(command_rx, event_rx, hashed_rx),
    );
    TorrentHandle {
        info_hash: meta.info_hash,
        meta,
        layout,
        cache,
        stats,
        our_id,
        commands: command_tx,
        shutdown,
    }
}

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut events: mpsc::Receiver<PeerEvent>,
        mut hashed: mpsc::UnboundedReceiver<(PieceIndex, PieceHasher)>,
    ) -> Result<(), std::convert::Infallible> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => break,
                Some((piece, hasher)) = hashed.recv() => self.on_hashed(piece, hasher),
                Some(event) = events.recv() => {
                    self.on_peer_event(event);
                    // Events that came in a burst (mostly blocks) are all taken before
                    // the next fill, which then runs once for the lot.
                    for _ in 1..EVENT_BURST {
                        let Ok(event) = events.try_recv() else { break };
                        self.on_peer_event(event);
                    }
                }
                Some(command) = commands.recv() => self.on_command(command),
                _ = tick.tick() => self.on_tick(),
            }
            self.fill_requests();
        }
        // Waiting reads see their senders dropped and answer with an error.
        self.waiters.clear();
        for slot in self.peers.values() {
            let _ = slot.commands.send(PeerCommand::Close);
        }
        self.peer_ctx.shutdown.cancel();
        Ok(())
    }

    // ----- commands from readers, listeners and peer sources -----

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Want { piece, reply } => self.want(piece, reply),
            Command::SetReadahead { reader, pieces } => {
                let old = self.readahead.insert(reader, pieces).unwrap_or_default();
                self.cancel_unwanted(old);
                self.wanted_dirty = true;
                self.fill_all = true;
            }
            Command::Hint { pieces } => {
                for piece in pieces {
                    if !self.held(piece) && !self.hints.contains(&piece) {
                        if self.hints.len() >= MAX_HINTS {
                            self.hints.remove(0);
                        }
                        self.hints.push(piece);
                    }
                }
                self.wanted_dirty = true;
                self.fill_all = true;
            }
            Command::CloseReader { reader } => {
                let old = self.readahead.remove(&reader).unwrap_or_default();
                self.cancel_unwanted(old);
                self.wanted_dirty = true;
            }
            Command::AddPeers { addrs, source } => {
                debug!(count = addrs.len(), ?source, "peer addresses");
                self.book.add(addrs, source, std::time::Instant::now());
                self.dial();
            }
            Command::Incoming {
                stream,
                addr,
                handshake,
            } => {
                if self.peers.len() >= self.config.max_peers + INCOMING_EXTRA
                    || self.book.is_banned(&addr)
                {
                    debug!(%addr, "refusing incoming connection");
                    return;
                }
                let key = self.new_key();
                let ctx = self.peer_ctx.clone();
                let span = info_span!("peer", %addr, dir = "in");
                task::spawn(
                    &self.tasks,
                    "peer",
                    span,
                    accept_incoming(ctx, key, addr, stream, handshake),
                );
            }
            Command::Explain { pieces, reply } => {
                let _ = reply.send(self.explain(&pieces));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn want(&mut self, piece: PieceIndex, reply: oneshot::Sender<Bytes>) {
        if self.held(piece)
            && let Some(bytes) = self.cache.lock().get(piece)
        {
            let _ = reply.send(bytes);
            return;
        }
        self.waiters.entry(piece).or_default().push(reply);
        if !self.demand_order.contains_key(&piece) {
            self.demand_order.insert(piece, self.next_demand);
            self.next_demand += 1;
            self.bump_readahead = true;
            debug!(%piece, "demanded");
        }
        self.wanted_dirty = true;
        self.fill_all = true;
    }

    // ----- peer events -----

    fn on_peer_event(&mut self, event: PeerEvent) {
        match event {
            PeerEvent::Connected {
                key,
                addr,
                peer_id,
                fast: _,
                outgoing,
                commands,
                counters,
            } => {
                if outgoing {
                    self.book.on_connected(addr);
                }
                debug!(%addr, client = %peer_id.client_tag(), "peer connected");
                let now = Instant::now();
                self.peers.insert(
                    key,
                    PeerSlot {
                        addr,
                        peer_id,
                        commands,
                        counters,
                        has: vec![false; self.layout.piece_count() as usize],
                        has_count: 0,
                        peer_choking: true,
                        peer_interested: false,
                        am_interested: false,
                        am_choking: true,
                        inflight: HashSet::new(),
                        unsent_requests: Vec::new(),
                        queue_depth: MIN_QUEUE_DEPTH,
                        max_queue_depth: MAX_QUEUE_DEPTH,
                        download_rate: 0,
                        upload_rate: 0,
                        last_downloaded: 0,
                        last_uploaded: 0,
                        last_block_at: now,
                        pace: Pace::default(),
                        unsolicited: 0,
                        cancelled: HashMap::new(),
                        last_bump: None,
                        strikes: 0,
                        ut_metadata: None,
                        ut_pex: None,
                        listen_addr: outgoing.then_some(addr),
                        pex_sent: HashSet::new(),
                    },
                );
                self.stats
                    .connected_peers
                    .store(self.peers.len() as u64, Ordering::Relaxed);
            }
            PeerEvent::Message { key, message } => self.on_message(key, message),
            PeerEvent::Closed {
                key,
                addr,
                connected,
                reason,
                misbehaved,
            } => {
                if misbehaved {
                    debug!(%addr, %reason, "banning peer");
                    self.book.ban(addr);
                }
                if connected {
                    debug!(%addr, %reason, "peer disconnected");
                    self.drop_peer(key);
                }
                self.book.on_closed(addr, std::time::Instant::now());
            }
        }
    }

    fn on_message(&mut self, key: PeerKey, message: Message) {
        let now = Instant::now();
        let piece_count = self.layout.piece_count() as usize;
        let Some(slot) = self.peers.get_mut(&key) else {
            return;
        };
        match message {
            Message::Choke => {
                slot.peer_choking = true;
                // Without the Fast extension a choke silently drops our requests; with
                // it, rejects follow, and forgetting them now is harmless.
                let lost: Vec<(PieceIndex, u32)> = slot.inflight.drain().collect();
                for (piece, block) in lost {
                    if let Some(p) = self.partial.get_mut(&piece) {
                        p.forget_request(block, key);
                    }
                }
                self.fill_all = true;
            }
            Message::Unchoke => {
                slot.peer_choking = false;
                slot.last_block_at = now;
                self.fill_peers.insert(key);
            }
            Message::Interested => {
                slot.peer_interested = true;
                self.maybe_unchoke(key);
            }
            Message::NotInterested => {
                slot.peer_interested = false;
                if !slot.am_choking {
                    slot.am_choking = true;
                    slot.send(Message::Choke);
                }
            }
            Message::Have { piece } => {
                let Some(p) = self.layout.piece(piece) else {
                    return self.close_peer(key, "HAVE for a piece that does not exist");
                };
                if !slot.has(p) {
                    if let Some(bit) = slot.has.get_mut(p.as_usize()) {
                        *bit = true;
                    }
                    slot.has_count += 1;
                }
                self.update_interest(key);
                self.fill_peers.insert(key);
            }
            Message::Bitfield(bits) => {
                // Accepted at any time, not only first: aria2 sends a fresh one mid-stream.
                if bits.len() != piece_count.div_ceil(8) {
                    return self.close_peer(key, "bitfield of the wrong length");
                }
                for i in 0..piece_count {
                    let set = bits.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0);
                    if set && let Some(bit) = slot.has.get_mut(i) {
                        *bit = true;
                    }
                }
                slot.has_count = slot.has.iter().filter(|b| **b).count() as u32;
                self.update_interest(key);
                self.fill_peers.insert(key);
            }
            Message::HaveAll => {
                slot.has.iter_mut().for_each(|b| *b = true);
                slot.has_count = piece_count as u32;
                self.update_interest(key);
                self.fill_peers.insert(key);
            }
            Message::HaveNone => {}
            Message::Piece {
                piece,
                offset,
                data,
            } => self.on_block(key, piece, offset, data, now),
            Message::Reject(request) => {
                let Some(p) = self.layout.piece(request.piece) else {
                    return;
                };
                let Some(block) = self.layout.block_index(p, request.offset, request.length) else {
                    return;
                };
                // A Fast peer answers our Cancel with a Reject: that one concerns the
                // cancelled request, not a newer request for the same block.
                if slot.take_cancelled(p, block) {
                    return;
                }
                if slot.inflight.remove(&(p, block))
                    && let Some(partial) = self.partial.get_mut(&p)
                {
                    partial.forget_request(block, key);
                    self.fill_all = true;
                }
            }
            // Served by the peer task, or not used yet (DHT port, suggestions, extensions).
            Message::Request(_)
            | Message::Cancel(_)
            | Message::KeepAlive
            | Message::Port(_)
            | Message::Suggest { .. }
            | Message::AllowedFast { .. }
            | Message::Unknown { .. } => {}
            Message::Extended { id, payload } => self.on_extended(key, id, payload),
        }
    }

    /// Cancels the outstanding requests of pieces in `dropped` that no read waits for and no
    /// reader reads ahead any more (a seek moved the window), so peers' queues are free
    /// for what is wanted now. Blocks already received stay in their partial piece.
    fn cancel_unwanted(&mut self, dropped: Vec<PieceIndex>) {
        for piece in dropped {
            if self.waiters.contains_key(&piece)
                || self.readahead.values().any(|list| list.contains(&piece))
            {
                continue;
            }
            let Some(partial) = self.partial.get_mut(&piece) else {
                continue;
            };
            for (block, peers) in partial.take_requests() {
                for key in peers {
                    if let Some(slot) = self.peers.get_mut(&key) {
                        slot.cancel_request(&self.layout, piece, block);
                    }
                }
            }
        }
    }

    /// BEP 10 messages: their extended handshake, metadata requests (BEP 9), PEX (BEP 11).
    fn on_extended(&mut self, key: PeerKey, id: u8, payload: Bytes) {
        let private = self.meta.private;
        let Some(slot) = self.peers.get_mut(&key) else {
            return;
        };
        match id {
            0 => {
                let Ok(hs) = ExtendedHandshake::parse(&payload) else {
                    return self.close_peer(key, "malformed extended handshake");
                };
                slot.ut_metadata = hs.extension_id("ut_metadata");
                slot.ut_pex = hs.extension_id("ut_pex");
                if let Some(port) = hs.p.filter(|p| *p != 0) {
                    slot.listen_addr = Some(SocketAddr::new(slot.addr.ip(), port));
                }
                if let Some(reqq) = hs.reqq {
                    slot.max_queue_depth = (reqq as usize).clamp(1, MAX_QUEUE_DEPTH);
                    slot.queue_depth = slot.queue_depth.min(slot.max_queue_depth);
                }
            }
            OUR_UT_METADATA_ID => {
                let Ok(MetadataMessage::Request { piece }) = MetadataMessage::parse(&payload)
                else {
                    return;
                };
                let Some(their_id) = slot.ut_metadata else {
                    return;
                };
                let info = &self.meta.info_bytes;
                let start = (piece as usize).saturating_mul(METADATA_PIECE_LEN);
                let reply = if start < info.len() {
                    let end = (start + METADATA_PIECE_LEN).min(info.len());
                    MetadataMessage::Data {
                        piece,
                        total_size: info.len() as u64,
                        data: info.slice(start..end),
                    }
                } else {
                    MetadataMessage::Reject { piece }
                };
                slot.send(Message::Extended {
                    id: their_id,
                    payload: reply.to_bytes(),
                });
            }
            OUR_UT_PEX_ID if !private => {
                if let Ok(pex) = PexMessage::parse(&payload) {
                    debug!(added = pex.added.len(), "pex");
                    self.book
                        .add(pex.added, PeerSource::Pex, std::time::Instant::now());
                    self.dial();
                }
            }
            _ => {}
        }
    }

    /// Every `PEX_EVERY`, tell each PEX-capable peer which peers joined and left since.
    fn send_pex(&mut self) {
        if self.meta.private {
            return;
        }
        let listening: Vec<(PeerKey, SocketAddr)> = self
            .peers
            .iter()
            .filter_map(|(k, s)| s.listen_addr.map(|a| (*k, a)))
            .collect();
        for (key, slot) in &mut self.peers {
            let Some(their_id) = slot.ut_pex else {
                continue;
            };
            let current: HashSet<SocketAddr> = listening
                .iter()
                .filter(|(k, _)| k != key)
                .map(|(_, a)| *a)
                .take(MAX_PEX_PEERS)
                .collect();
            let message = PexMessage {
                added: current.difference(&slot.pex_sent).copied().collect(),
                dropped: slot.pex_sent.difference(&current).copied().collect(),
            };
            if message.added.is_empty() && message.dropped.is_empty() {
                continue;
            }
            slot.send(Message::Extended {
                id: their_id,
                payload: message.to_bytes().into(),
            });
            slot.pex_sent = current;
        }
    }

    fn on_block(&mut self, key: PeerKey, piece: u32, offset: u32, data: Bytes, now: Instant) {
        let Some(p) = self.layout.piece(piece) else {
            return self.close_peer(key, "block of a piece that does not exist");
        };
        let Some(len) = u32::try_from(data.len()).ok() else {
            return self.close_peer(key, "oversized block");
        };
        let Some(block) = self.layout.block_index(p, offset, len) else {
            return self.close_peer(key, "block with bad offset or length");
        };
        let Some(slot) = self.peers.get_mut(&key) else {
            return;
        };
        // Only blocks we asked this peer for (or cancelled, crossing on the wire) may
        // enter a piece: an unasked block could be anything, and would get the honest
        // senders of the same piece blamed when the hash fails.
        let asked = slot.inflight.remove(&(p, block)) || slot.take_cancelled(p, block);
        if !asked {
            slot.unsolicited += 1;
            if slot.unsolicited > MAX_UNSOLICITED_BLOCKS {
                return self.close_peer(key, "too many blocks we did not ask for");
            }
            return;
        }
        let previous_block_at = std::mem::replace(&mut slot.last_block_at, now);
        self.fill_peers.insert(key);
        let Some(partial) = self.partial.get_mut(&p) else {
            return;
        };
        if let Some(BlockState::Requested { since, .. }) = partial.blocks().get(block as usize) {
            slot.pace.on_block(*since, previous_block_at, now);
        }
        // A read waits for a demanded piece: keep its blocks to hash as they come.
        let keep = self.demand_order.contains_key(&p);
        let Some(others) = partial.receive(block, offset, data, key, keep) else {
            return;
        };
        self.stats
            .downloaded
            .fetch_add(u64::from(len), Ordering::Relaxed);
        for other in others {
            if let Some(o) = self.peers.get_mut(&other) {
                o.cancel_request(&self.layout, p, block);
                self.fill_peers.insert(other);
            }
        }
        self.advance_hash(p);
    }

    /// Hands the piece's next received blocks to a blocking thread to hash, or checks the
    /// piece once every block is in and hashed. A demanded piece hashes each block as it
    /// comes, so its check waits for little more than its last block; other pieces are
    /// hashed once complete, from where their hash stopped.
    fn advance_hash(&mut self, piece: PieceIndex) {
        let Some(partial) = self.partial.get_mut(&piece) else {
            return;
        };
        if partial.is_hashed() {
            if let Some(done) = self.partial.remove(&piece) {
                self.check_piece(piece, done);
            }
            return;
        }
        let batch = if partial.is_complete() {
            partial.take_rest_batch()
        } else {
            partial.take_hash_batch()
        };
        let Some(batch) = batch else {
            return;
        };
        let lone_demand = self.demand_order.len() <= INLINE_HASH_DEMANDS
            && self.demand_order.contains_key(&piece);
        if lone_demand || (partial.is_complete() && batch.len_bytes() <= INLINE_HASH_BYTES) {
            // A lone read's blocks, or the last block or two: quicker here than handed off.
            partial.return_hasher(batch.run());
            return self.advance_hash(piece);
        }
        let tx = self.hashed_tx.clone();
        self.tasks.spawn_blocking(move || {
            let _ = tx.send((piece, batch.run()));
        });
    }

    fn on_hashed(&mut self, piece: PieceIndex, hasher: PieceHasher) {
        // A piece is only checked once its hasher is back, so the partial is still here.
        if let Some(partial) = self.partial.get_mut(&piece) {
            partial.return_hasher(hasher);
            self.advance_hash(piece);
        }
    }

    /// Keeps the buffers of evicted pieces that nobody else holds, for the next pieces.
    fn keep_spare_buffers(&mut self, released: Vec<Bytes>) {
        let piece_len = self.layout.piece_length() as usize;
        for bytes in released {
            let room = (self.spare_buffers.len() + 1) * piece_len <= SPARE_BUFFER_BYTES
                || self.spare_buffers.is_empty();
            if !room || bytes.len() != piece_len {
                continue;
            }
            if let Ok(buf) = bytes.try_into_mut() {
                self.spare_buffers.push(buf);
            }
        }
    }

    /// Compares the digest of a fully received and hashed piece with the metainfo's.
    fn check_piece(&mut self, piece: PieceIndex, done: PartialPiece) {
        let Some(expected) = self.meta.piece_hashes.get(piece.as_usize()).copied() else {
            return;
        };
        let contributors = done.contributors.clone();
        let result = done.verify(piece, &expected);
        self.on_verified(piece, result, contributors);
    }

    fn on_verified(
        &mut self,
        piece: PieceIndex,
        result: Result<VerifiedPiece, HashMismatch>,
        contributors: Vec<PeerKey>,
    ) {
        self.wanted_dirty = true;
        self.fill_all = true;
        match result {
            Ok(verified) => {
                self.stats.pieces_fetched.fetch_add(1, Ordering::Relaxed);
                debug!(%piece, "verified");
                let bytes = verified.bytes().clone();
                let outcome = self.cache.lock().insert(verified);
                for evicted in &outcome.evicted {
                    if let Some(h) = self.held.get_mut(evicted.as_usize()) {
                        *h = false;
                    }
                }
                self.keep_spare_buffers(outcome.released);
                if outcome.cached {
                    if let Some(h) = self.held.get_mut(piece.as_usize()) {
                        *h = true;
                    }
                    for slot in self.peers.values() {
                        if !slot.has(piece) {
                            slot.send(Message::Have { piece: piece.get() });
                        }
                    }
                }
                self.demand_order.remove(&piece);
                self.hints.retain(|p| *p != piece);
                for waiter in self.waiters.remove(&piece).unwrap_or_default() {
                    let _ = waiter.send(bytes.clone());
                }
            }
            Err(mismatch) => {
                self.stats.hash_failures.fetch_add(1, Ordering::Relaxed);
                let addrs: Vec<String> = contributors
                    .iter()
                    .filter_map(|k| self.peers.get(k).map(|s| s.addr.to_string()))
                    .collect();
                warn!(%piece, peers = ?addrs, "{mismatch}; fetching it again");
                let sole = contributors.len() == 1;
                for key in contributors {
                    let Some(slot) = self.peers.get_mut(&key) else {
                        continue;
                    };
                    slot.strikes += 1;
                    if sole || slot.strikes >= MAX_STRIKES {
                        let addr = slot.addr;
                        self.book.ban(addr);
                        self.close_peer(key, "sent data that failed its hash check");
                    }
                }
            }
        }
    }

    fn drop_peer(&mut self, key: PeerKey) {
        let Some(slot) = self.peers.remove(&key) else {
            return;
        };
        self.uploaded_by_closed += slot.counters.uploaded();
        for (piece, block) in slot.inflight {
            if let Some(p) = self.partial.get_mut(&piece) {
                p.forget_request(block, key);
            }
        }
        if self.optimistic == Some(key) {
            self.optimistic = None;
        }
        if !slot.am_choking {
            // A slot came free.
            self.last_rechoke = Instant::now() - RECHOKE_EVERY;
        }
        self.stats
            .connected_peers
            .store(self.peers.len() as u64, Ordering::Relaxed);
        self.fill_all = true;
    }

    /// Drops a peer that broke the protocol and never dials it again this run.
    fn close_peer(&mut self, key: PeerKey, why: &str) {
        if let Some(slot) = self.peers.get(&key) {
            warn!(addr = %slot.addr, client = %slot.peer_id.client_tag(), "dropping peer: {why}");
            let _ = slot.commands.send(PeerCommand::Close);
            self.book.ban(slot.addr);
        }
        self.drop_peer(key);
    }

    /// We are interested in a peer that has any piece the cache lacks (so it unchokes us
    /// before a read needs it). A seeder is interested in no one.
    fn update_interest(&mut self, key: PeerKey) {
        if self.config.seeding {
            return;
        }
        let Some(slot) = self.peers.get_mut(&key) else {
            return;
        };
        if slot.am_interested {
            return;
        }
        let useful = slot
            .has
            .iter()
            .zip(&self.held)
            .any(|(has, held)| *has && !*held);
        if useful {
            slot.am_interested = true;
            slot.send(Message::Interested);
        }
    }

    /// A peer became interested: give it a slot now if one is free (rather than making
    /// it wait for the next rechoke round).
    fn maybe_unchoke(&mut self, key: PeerKey) {
        if !self.config.upload_enabled {
            return;
        }
        let unchoked = self.peers.values().filter(|s| !s.am_choking).count();
        if unchoked > self.config.upload_slots {
            return;
        }
        if let Some(slot) = self.peers.get_mut(&key)
            && slot.am_choking
        {
            slot.am_choking = false;
            slot.send(Message::Unchoke);
        }
    }

    // ----- periodic work -----

    fn on_tick(&mut self) {
        let now = Instant::now();
        self.dial();
        self.expire_abandoned_demands();
        self.expire_requests(now);
        if now.duration_since(self.last_rates) >= RATE_PERIOD {
            self.update_rates(now);
        }
        if now.duration_since(self.last_rechoke) >= RECHOKE_EVERY {
            self.rechoke(now);
        }
        if now.duration_since(self.last_pex) >= PEX_EVERY {
            self.last_pex = now;
            self.send_pex();
        }
        self.fill_all = true;
    }

    fn dial(&mut self) {
        if self.config.seeding && self.peers.len() >= self.config.max_peers {
            return;
        }
        let room = self
            .config
            .max_peers
            .saturating_sub(self.peers.len() + self.book.dialing_count());
        let room = room.min(MAX_HALF_OPEN.saturating_sub(self.book.dialing_count()));
        if room == 0 {
            return;
        }
        for addr in self
            .book
            .take_dial_candidates(room, std::time::Instant::now())
        {
            let key = self.new_key();
            let ctx = self.peer_ctx.clone();
            let span = info_span!("peer", %addr, dir = "out");
            task::spawn(&self.tasks, "peer", span, connect_outgoing(ctx, key, addr));
        }
    }

    /// Reads that gave up (deadline, unmount) dropped their receivers: stop wanting
    /// pieces nobody waits for.
    fn expire_abandoned_demands(&mut self) {
        let before = self.waiters.len();
        self.waiters.retain(|_, list| {
            list.retain(|tx| !tx.is_closed());
            !list.is_empty()
        });
        if self.waiters.len() != before {
            let waiters = &self.waiters;
            self.demand_order.retain(|p, _| waiters.contains_key(p));
            self.wanted_dirty = true;
        }
    }

    fn expire_requests(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (piece, partial) in &self.partial {
            for (index, state) in partial.blocks().iter().enumerate() {
                if let BlockState::Requested { peers, since } = state
                    && now.duration_since(*since) > REQUEST_TIMEOUT
                {
                    for peer in peers {
                        expired.push((*piece, index as u32, *peer));
                    }
                }
            }
        }
        for (piece, block, peer) in expired {
            if let Some(partial) = self.partial.get_mut(&piece) {
                partial.forget_request(block, peer);
            }
            if let Some(slot) = self.peers.get_mut(&peer) {
                slot.inflight.remove(&(piece, block));
            }
        }
    }

    fn update_rates(&mut self, now: Instant) {
        let secs = now.duration_since(self.last_rates).as_secs_f64().max(0.001);
        self.last_rates = now;
        let mut uploaded = 0;
        for slot in self.peers.values_mut() {
            let down = slot.counters.downloaded();
            let up = slot.counters.uploaded();
            uploaded += up;
            let down_rate = ((down - slot.last_downloaded.min(down)) as f64 / secs) as u64;
            let up_rate = ((up - slot.last_uploaded.min(up)) as f64 / secs) as u64;
            // Smooth over a few periods so one quiet second does not halve a queue.
            slot.download_rate = (slot.download_rate + down_rate * 3) / 4;
            slot.upload_rate = (slot.upload_rate + up_rate * 3) / 4;
            slot.last_downloaded = down;
            slot.last_uploaded = up;
            let bytes_in_horizon = slot.download_rate as f64 * QUEUE_HORIZON.as_secs_f64();
            let depth = (bytes_in_horizon / f64::from(BLOCK_SIZE)) as usize;
            slot.queue_depth = depth
                .clamp(MIN_QUEUE_DEPTH, MAX_QUEUE_DEPTH)
                .min(slot.max_queue_depth);
        }
        self.stats
            .uploaded
            .store(self.uploaded_by_closed + uploaded, Ordering::Relaxed);
    }

    fn rechoke(&mut self, now: Instant) {
        self.last_rechoke = now;
        if !self.config.upload_enabled {
            return;
        }
        let candidates: Vec<ChokeCandidate> = self
            .peers
            .iter()
            .map(|(key, s)| ChokeCandidate {
                key: *key,
                interested: s.peer_interested,
                snubbed: s.snubbed(now),
                download_rate: s.download_rate,
                upload_rate: s.upload_rate,
                balance: s.counters.downloaded() as i64 - s.counters.uploaded() as i64,
            })
            .collect();
        let rotate = now.duration_since(self.last_optimistic) >= OPTIMISTIC_EVERY;
        if rotate {
            self.last_optimistic = now;
        }
        let current = if rotate { None } else { self.optimistic };
        let decision = choose_unchoked(
            &candidates,
            self.config.upload_slots,
            self.config.seeding,
            current,
            |rest| (!rest.is_empty()).then(|| rest[rand::random_range(0..rest.len())]),
        );
        self.optimistic = decision.optimistic;
        for (key, slot) in &mut self.peers {
            let unchoke = decision.unchoked.contains(key) || decision.optimistic == Some(*key);
            if unchoke && slot.am_choking {
                slot.am_choking = false;
                slot.send(Message::Unchoke);
            } else if !unchoke && !slot.am_choking {
                slot.am_choking = true;
                slot.send(Message::Choke);
            }
        }
    }

    // ----- request scheduling -----

    fn rebuild_wanted(&mut self) {
        self.wanted_dirty = false;
        let mut seen = HashSet::new();
        let mut wanted = Vec::new();
        let mut demanded: Vec<(u64, PieceIndex)> = self
            .demand_order
            .iter()
            .map(|(p, seq)| (*seq, *p))
            .collect();
        demanded.sort();
        for (_, piece) in demanded {
            if !self.held(piece) && seen.insert(piece) {
                wanted.push((piece, Urgency::Demand));
            }
        }
        // Interleave readers' read-ahead so several streams progress together.
        let longest = self.readahead.values().map(Vec::len).max().unwrap_or(0);
        let mut readers: Vec<&Vec<PieceIndex>> = self.readahead.values().collect();
        readers.sort_by_key(|list| list.first().copied());
        for i in 0..longest {
            for list in &readers {
                if let Some(piece) = list.get(i)
                    && !self.held(*piece)
                    && seen.insert(*piece)
                {
                    wanted.push((*piece, Urgency::Readahead));
                }
            }
        }
        // Hints (what a reader will likely want, e.g. a file's tail at open) come last,
        // sharing read-ahead's budget.
        for piece in &self.hints {
            if !self.held(*piece) && seen.insert(*piece) {
                wanted.push((*piece, Urgency::Readahead));
            }
        }
        self.wanted = wanted;
    }

    fn fill_requests(&mut self) {
        if self.config.seeding {
            return;
        }
        if self.wanted_dirty {
            self.rebuild_wanted();
        }
        let keys: Vec<PeerKey> = if self.fill_all {
            self.peers.keys().copied().collect()
        } else {
            self.fill_peers.iter().copied().collect()
        };
        self.fill_all = false;
        self.fill_peers.clear();
        if self.wanted.is_empty() {
            return;
        }
        if std::mem::take(&mut self.bump_readahead) {
            for key in self.peers.keys().copied().collect::<Vec<_>>() {
                self.bump_behind_demand(key);
            }
        }
        // Peers that give most go first, so the most urgent blocks go to the fastest.
        let mut keys = keys;
        keys.sort_by_key(|k| std::cmp::Reverse(self.peers.get(k).map_or(0, |s| s.download_rate)));
        // A demanded piece is handed out a stripe per peer per pass, so its blocks arrive
        // from all its peers from the start onwards and the hash keeps up with them.
        let filled = keys.clone();
        while !keys.is_empty() {
            keys.retain(|key| self.fill_peer(*key));
        }
        for key in filled {
            if let Some(slot) = self.peers.get_mut(&key)
                && !slot.unsent_requests.is_empty()
            {
                let requests = std::mem::take(&mut slot.unsent_requests);
                let _ = slot.commands.send(PeerCommand::SendRequests(requests));
            }
        }
    }

    /// Withdraws the read-ahead requests queued at `key` when a demanded piece it can
    /// send still has blocks to ask for: the fill that follows asks for the demanded
    /// blocks first and the read-ahead again behind them. A peer serves requests in
    /// order, so this is how a demand overtakes read-ahead already sent. Blocks that
    /// cross the Cancel on the wire are still taken (see `PeerSlot::cancelled`).
    fn bump_behind_demand(&mut self, key: PeerKey) {
        let now = Instant::now();
        let Some(slot) = self.peers.get_mut(&key) else {
            return;
        };
        if slot.peer_choking
            || slot
                .last_bump
                .is_some_and(|at| now.duration_since(at) < BUMP_INTERVAL)
        {
            return;
        }
        let demand_waits = self.demand_order.keys().any(|piece| {
            slot.has(*piece)
                && self
                    .partial
                    .get(piece)
                    .is_none_or(|partial| partial.open_blocks() > 0)
        });
        if !demand_waits {
            return;
        }
        let readahead: Vec<(PieceIndex, u32)> = slot
            .inflight
            .iter()
            .filter(|(piece, _)| !self.demand_order.contains_key(piece))
            .copied()
            .collect();
        if readahead.len() < BUMP_MIN_BLOCKS {
            return;
        }
        slot.last_bump = Some(now);
        debug!(peer = %slot.addr, blocks = readahead.len(), "read-ahead asked again behind a demand");
        for (piece, block) in readahead {
            slot.cancel_request(&self.layout, piece, block);
            if let Some(partial) = self.partial.get_mut(&piece) {
                partial.forget_request(block, key);
            }
        }
    }

    /// How many blocks of the demanded `piece` peer `key` should be asked for: its share
    /// by pace (`pace::demand_share`) among the unchoked peers that have the piece and
    /// room in their queue, so that a read waits for the fastest split of its piece rather
    /// than one peer.
    fn demand_share(&self, key: PeerKey, piece: PieceIndex) -> u32 {
        let Some(ours) = self.peers.get(&key).map(|slot| slot.pace) else {
            return 0;
        };
        let candidates: Vec<Pace> = self
            .peers
            .iter()
            .filter(|(k, slot)| {
                let room = slot.inflight.len() < slot.demand_limit(&self.layout);
                !slot.peer_choking && slot.has(piece) && (room || **k == key)
            })
            .map(|(_, slot)| slot.pace)
            .collect();
        pace::demand_share(self.layout.block_count(piece), ours, &candidates)
    }

    /// Asks `key` for blocks: demanded pieces first, at most a stripe of each per call,
    /// then read-ahead. Returns true when it took a stripe and its share of a demanded
    /// piece is not used up: call it again after the other peers took theirs (its
    /// read-ahead waits until then, behind all of its demanded blocks).
    fn fill_peer(&mut self, key: PeerKey) -> bool {
        let now = Instant::now();
        if self
            .peers
            .get(&key)
            .is_none_or(|slot| slot.peer_choking || slot.has_count == 0)
        {
            return false;
        }
        let shares: HashMap<PieceIndex, u32> = self
            .wanted
            .iter()
            .filter(|(_, urgency)| *urgency == Urgency::Demand)
            .map(|(piece, _)| (*piece, self.demand_share(key, *piece)))
            .collect();
        let Some(slot) = self.peers.get_mut(&key) else {
            return false;
        };
        // Demanded blocks may use the extra depth; read-ahead only the base depth.
        let mut queued = slot.inflight.len();
        let mut again = false;
        let demand_limit = slot.demand_limit(&self.layout);
        let readahead_limit = slot.queue_depth;
        for &(piece, urgency) in &self.wanted {
            if again && urgency == Urgency::Readahead {
                break;
            }
            let limit = match urgency {
                Urgency::Demand => demand_limit,
                Urgency::Readahead => readahead_limit,
            };
            if queued >= limit {
                if urgency == Urgency::Readahead {
                    break;
                }
                continue;
            }
            if !slot.has(piece) || self.held.get(piece.as_usize()).copied().unwrap_or(true) {
                continue;
            }
            let partial = self.partial.entry(piece).or_insert_with(|| {
                let spare = self.spare_buffers.pop();
                PartialPiece::new(&self.layout, piece, spare)
            });
            // A demanded piece is split among the peers that can send it; read-ahead
            // takes what the queue allows.
            let (share_left, stripe) = match urgency {
                Urgency::Demand => (
                    shares
                        .get(&piece)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(partial.requested_from(key)),
                    DEMAND_STRIPE_BLOCKS,
                ),
                Urgency::Readahead => (u32::MAX, u32::MAX),
            };
            let mut allowed = share_left.min(stripe);
            let mut took = 0;
            while queued < limit && allowed > 0 {
                let Some(block) = partial.request_open(key, now) else {
                    break;
                };
                send_request(slot, &self.layout, piece, block);
                queued += 1;
                allowed -= 1;
                took += 1;
            }
            if urgency == Urgency::Demand
                && took == DEMAND_STRIPE_BLOCKS
                && share_left > took
                && partial.open_blocks() > 0
            {
                again = true;
            }
            if urgency == Urgency::Demand && partial.open_blocks() == 0 && !again {
                while queued < limit {
                    let Some(block) = partial.request_duplicate(key, now, ENDGAME_MIN_AGE) else {
                        break;
                    };
                    send_request(slot, &self.layout, piece, block);
                    queued += 1;
                }
            }
        }
        again
    }

    // ----- reporting -----

    fn explain(&self, pieces: &[PieceIndex]) -> String {
        let mut parts = Vec::new();
        for piece in pieces {
            let having: Vec<&PeerSlot> = self.peers.values().filter(|s| s.has(*piece)).collect();
            let why = if self.partial.get(piece).is_some_and(|p| p.is_complete()) {
                "every block received, being verified".to_string()
            } else if having.is_empty() {
                format!(
                    "no connected peer has it ({} connected, {} addresses known)",
                    self.peers.len(),
                    self.book.known_count()
                )
            } else if having.iter().all(|s| s.peer_choking) {
                format!("{} peer(s) have it but all are choking us", having.len())
            } else {
                let received = self.partial.get(piece).map_or(0, |p| p.received_blocks());
                format!(
                    "requested from {} peer(s), {}/{} blocks received",
                    having.iter().filter(|s| !s.peer_choking).count(),
                    received,
                    self.layout.block_count(*piece)
                )
            };
            parts.push(format!("piece {piece}: {why}"));
        }
        parts.join("; ")
    }

    fn status(&self) -> StatusSnapshot {
        StatusSnapshot {
            connected_peers: self.peers.len(),
            known_peers: self.book.known_count(),
            unchoked_by: self.peers.values().filter(|s| !s.peer_choking).count(),
            waiting_pieces: self.waiters.len(),
            ledger: self
                .peers
                .values()
                .map(|s| {
                    (
                        s.addr,
                        s.peer_id.client_tag(),
                        s.counters.downloaded(),
                        s.counters.uploaded(),
                    )
                })
                .collect(),
        }
    }

    fn held(&self, piece: PieceIndex) -> bool {
        self.held.get(piece.as_usize()).copied().unwrap_or(false)
    }

    fn new_key(&mut self) -> PeerKey {
        let key = self.next_key;
        self.next_key += 1;
        key
    }
}

fn send_request(slot: &mut PeerSlot, layout: &Layout, piece: PieceIndex, block: u32) {
    let span = layout.block(piece, block);
    slot.inflight.insert((piece, block));
    slot.unsent_requests.push(BlockRequest {
        piece: piece.get(),
        offset: span.piece_offset,
        length: span.len_bytes,
    });
}

/// What we tell peers in our BEP 10 handshake: we serve metadata (BEP 9), speak PEX
/// (BEP 11) unless the torrent is private, and queue as many of their requests as the
/// upload queue holds.
fn our_extended_handshake(meta: &Metainfo, listen_port: u16) -> Bytes {
    let mut hs = ExtendedHandshake::default();
    hs.m.insert("ut_metadata".into(), i64::from(OUR_UT_METADATA_ID));
    if !meta.private {
        hs.m.insert("ut_pex".into(), i64::from(OUR_UT_PEX_ID));
    }
    hs.metadata_size = Some(meta.info_bytes.len() as u64);
    hs.p = (listen_port != 0).then_some(listen_port);
    hs.reqq = u32::try_from(crate::peer::MAX_QUEUED_UPLOADS).ok();
    hs.v = Some(concat!("swarmfs/", env!("CARGO_PKG_VERSION")).into());
    hs.to_bytes().into()
}
