//! swarmfs: mount BitTorrent torrents as read-only directories, fetching pieces on demand.
//!
//! # Layout
//!
//! Data flows one way, down from a FUSE read to the peers; the answer comes back by
//! waking the waiting read:
//!
//! ```text
//! FUSE read (fuse.rs)
//!   → TorrentFs::read (fs/): file range, read-ahead window of the handle
//!   → TorrentHandle::read (torrent/): pieces of the range (layout.rs)
//!   → in cache? pin and slice (cache.rs)
//!   → no: the torrent actor records the demand and asks peers for blocks, a demanded
//!     piece split among them by pace (torrent/actor.rs, torrent/pace.rs)
//!   → a peer task sends Request, receives Piece (peer/, wire/)
//!   → blocks assembled, SHA-1 checked → VerifiedPiece (torrent/partial.rs, verify.rs)
//!   → inserted into the cache, HAVE sent to peers, waiting reads woken
//!   → slices of the pieces (ReadBytes) → reply.data, gathered once if several
//! ```
//!
//! Entry and configuration: `main.rs`, [`cli`], [`config`], [`daemon`], [`logging`].
//! Pure domain (no tokio): [`types`], [`metainfo`], [`magnet`], [`layout`], [`wire`],
//! [`verify`], [`cache`], [`swarm`], [`ratelimit`]. Network engine: [`tracker`] (HTTP and
//! UDP announces), [`metadata`] (BEP 9 fetch for magnets), [`peer`] (one task per
//! connection), [`torrent`] (the actor that owns piece state, plus choking), [`store`]
//! (what we upload from: cache or disk), [`engine`] (listener, trackers, actor, one
//! shutdown token). Filesystem: [`fs`] (FUSE-agnostic operations), [`fuse`] (the thin
//! adapter), [`mount`]. Cross-cutting: [`task`].

pub mod cache;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dht;
pub mod engine;
pub mod fs;
pub mod fuse;
pub mod layout;
pub mod logging;
pub mod magnet;
pub mod metadata;
pub mod metainfo;
pub mod mount;
pub mod peer;
pub mod ratelimit;
pub mod store;
pub mod swarm;
pub mod task;
pub mod torrent;
pub mod tracker;
pub mod types;
pub mod verify;
pub mod wire;
