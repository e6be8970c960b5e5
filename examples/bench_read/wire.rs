//! The yardstick for time to first byte: whole pieces fetched straight from one seeder
//! over the peer wire with the crate's own codec, no engine in between.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use sha1::{Digest, Sha1};
use socket2::SockRef;
use tokio_util::codec::Framed;

use swarmfs::metainfo::Metainfo;
use swarmfs::types::PeerId;
use swarmfs::wire::{
    BlockRequest, Handshake, Message, MessageCodec, read_handshake, write_handshake,
};

use crate::common::SplitMix64;

/// Pieces fetched from one seeder: as many as the mount's random reads, so that the
/// medians compared are of as many samples.
pub const WIRE_PIECES: usize = 20;
/// 16 KiB: the block size every client serves.
const BLOCK_LEN: u32 = 16 * 1024;

/// Pieces fetched over the wire from one seeder, two ways taken in turn.
pub struct WireTimes {
    /// Connect to unchoke.
    pub ready: Duration,
    /// Request to verified: the piece hashed in order as its blocks come, as a client
    /// must before it may use (or serve) a byte of it.
    pub to_verified: Vec<Duration>,
    /// Request to the last block, hashing only afterwards: the seeder's delivery alone.
    pub to_last_block: Vec<Duration>,
}

/// Connects to `addr`, waits for the unchoke, then fetches `WIRE_PIECES` seeded-random
/// pieces each way in turn, each as all its blocks requested at once. A piece whose hash
/// does not match is an error.
pub async fn fetch_pieces(addr: SocketAddr, meta: &Metainfo) -> Result<WireTimes> {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    write_handshake(
        &mut stream,
        &Handshake::new(meta.info_hash, PeerId::generate()),
    )
    .await?;
    let theirs = read_handshake(&mut stream).await?;
    let mut wire = Framed::new(stream, MessageCodec::default());
    if theirs.supports_fast() {
        // BEP 6: with Fast on both sides, one of HaveAll/HaveNone/Bitfield must come first.
        wire.send(&Message::HaveNone).await?;
    }
    wire.send(&Message::Interested).await?;
    loop {
        match wire.next().await {
            Some(Ok(Message::Unchoke)) => break,
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
            None => bail!("{addr} closed the connection before unchoking us"),
        }
    }
    let ready = started.elapsed();

    let mut rng = SplitMix64(0x91ece);
    let mut times = WireTimes {
        ready,
        to_verified: Vec::new(),
        to_last_block: Vec::new(),
    };
    for round in 0..2 * WIRE_PIECES {
        let piece = u32::try_from(rng.below(u64::from(meta.piece_count())))?;
        let hash_along = round % 2 == 0;
        let took = fetch_piece(&mut wire, meta, piece, hash_along)
            .await
            .with_context(|| format!("piece {piece} from {addr}"))?;
        if hash_along {
            times.to_verified.push(took);
        } else {
            times.to_last_block.push(took);
        }
    }
    Ok(times)
}

/// Requests every block of `piece` at once and checks the piece's SHA-1. With
/// `hash_along`, returns the time to the check passed, having hashed blocks in order as
/// they came; without, the time to the last block (the hash follows, untimed).
async fn fetch_piece(
    wire: &mut Framed<tokio::net::TcpStream, MessageCodec>,
    meta: &Metainfo,
    piece: u32,
    hash_along: bool,
) -> Result<Duration> {
    let Some(expected) = meta.piece_hashes.get(piece as usize) else {
        bail!("no hash in the torrent");
    };
    let piece_len = meta.piece_length;
    let block_count = piece_len.div_ceil(BLOCK_LEN) as usize;
    let asked = Instant::now();
    for offset in (0..piece_len).step_by(BLOCK_LEN as usize) {
        let length = BLOCK_LEN.min(piece_len - offset);
        wire.feed(&Message::Request(BlockRequest {
            piece,
            offset,
            length,
        }))
        .await?;
    }
    SinkExt::<&Message>::flush(wire).await?;
    // Blocks are hashed in order; one that overtakes a missing one waits.
    let mut blocks: Vec<Option<Bytes>> = vec![None; block_count];
    let mut hasher = Sha1::new();
    let mut hashed = 0;
    let mut received = 0;
    while received < block_count {
        let next = wire.next().await;
        // As swarmfs's peer sockets do (src/peer/quickack.rs): acknowledge at once, or a
        // sender with Nagle on holds a piece's last bytes up to 40 ms.
        let _ = SockRef::from(wire.get_ref()).set_tcp_quickack(true);
        match next {
            Some(Ok(Message::Piece {
                piece: p,
                offset,
                data,
            })) if p == piece => {
                let index = (offset / BLOCK_LEN) as usize;
                let wanted_len = BLOCK_LEN.min(piece_len.saturating_sub(offset));
                if offset % BLOCK_LEN != 0
                    || index >= block_count
                    || data.len() != wanted_len as usize
                {
                    bail!("a block we did not ask for");
                }
                if blocks[index].replace(data).is_none() {
                    received += 1;
                }
                while hash_along && let Some(Some(block)) = blocks.get(hashed) {
                    hasher.update(block);
                    hashed += 1;
                }
            }
            Some(Ok(Message::Choke)) => bail!("choked us mid-piece"),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err.into()),
            None => bail!("closed the connection mid-piece"),
        }
    }
    let delivered = asked.elapsed();
    for block in blocks.iter().skip(hashed).flatten() {
        hasher.update(block);
    }
    let digest: [u8; 20] = hasher.finalize().into();
    let verified = asked.elapsed();
    if &digest != expected {
        bail!("fails its SHA-1 check");
    }
    Ok(if hash_along { verified } else { delivered })
}
