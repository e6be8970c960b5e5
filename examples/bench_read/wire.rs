//! The yardstick for time to first byte: whole pieces fetched straight from one seeder
//! over the peer wire with the crate's own codec, no engine in between.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::{SinkExt, StreamExt};
use sha1::{Digest, Sha1};
use socket2::SockRef;
use tokio_util::codec::Framed;

use swarmfs::metainfo::Metainfo;
use swarmfs::types::PeerId;
use swarmfs::wire::{
    BlockRequest, Handshake, Message, MessageCodec, read_handshake, write_handshake,
};

use crate::common::{SplitMix64, hex};

/// Pieces fetched from one seeder: as many as the mount's random reads, so that the
/// medians compared are of as many samples.
pub const WIRE_PIECES: usize = 20;
/// 16 KiB: the block size every client serves.
const BLOCK_LEN: u32 = 16 * 1024;

/// Connects to `addr`, waits for the unchoke, then fetches `WIRE_PIECES` seeded-random
/// pieces one after the other, each as all its blocks requested at once, and checks each
/// against the payload. Returns the time to unchoke and each piece's request-to-last-block time.
pub async fn fetch_pieces(
    addr: SocketAddr,
    meta: &Metainfo,
    payload: &Path,
) -> Result<(Duration, Vec<Duration>)> {
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

    let original = fs::File::open(payload)?;
    let mut rng = SplitMix64(0x91ece);
    let mut times = Vec::new();
    for _ in 0..WIRE_PIECES {
        let piece = u32::try_from(rng.below(u64::from(meta.piece_count())))?;
        let piece_len = meta.piece_length;
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
        SinkExt::<&Message>::flush(&mut wire).await?;
        let mut data = vec![0u8; piece_len as usize];
        let mut received = 0u32;
        while received < piece_len {
            let next = wire.next().await;
            // As swarmfs's peer sockets do (src/peer/quickack.rs): acknowledge at once,
            // or a sender with Nagle on holds a piece's last bytes up to 40 ms.
            let _ = SockRef::from(wire.get_ref()).set_tcp_quickack(true);
            match next {
                Some(Ok(Message::Piece {
                    piece: p,
                    offset,
                    data: block,
                })) if p == piece => {
                    let start = offset as usize;
                    let end = start + block.len();
                    if end > data.len() {
                        bail!("{addr} sent a block past the end of piece {piece}");
                    }
                    data[start..end].copy_from_slice(&block);
                    received += u32::try_from(block.len())?;
                }
                Some(Ok(Message::Choke)) => bail!("{addr} choked us mid-piece"),
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
                None => bail!("{addr} closed the connection mid-piece"),
            }
        }
        times.push(asked.elapsed());
        let mut want = vec![0u8; data.len()];
        original.read_exact_at(&mut want, u64::from(piece) * u64::from(piece_len))?;
        if hex(&Sha1::digest(&data)) != hex(&Sha1::digest(&want)) {
            bail!("piece {piece} from {addr} differs from the payload");
        }
    }
    Ok((ready, times))
}
