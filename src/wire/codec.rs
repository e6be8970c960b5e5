//! Framing of peer messages on a byte stream: the 4-byte big-endian length prefix, the
//! limit on how long a frame may be, and buffering until a whole frame is there. Plugs
//! into `tokio_util::codec::Framed`; the body of each frame is `message`'s business.
//!
//! "Need more bytes" is `Ok(None)`, never an error. A frame whose prefix exceeds the
//! limit is refused as soon as the prefix is read, so a peer cannot make us buffer it.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::message::Message;
use super::{WireError, widen};

/// Largest length prefix accepted by default (id byte and payload). The biggest legitimate
/// frames are a Bitfield, at 1 bit per piece (a torrent of 2^20 pieces sends 128 KiB),
/// and a Piece, 16 KiB plus a 9-byte header (some clients serve blocks up to 128 KiB).
/// 1 MiB covers a bitfield of 8 Mi pieces, with room to spare, while capping what one peer
/// can make us hold per connection.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 1024 * 1024;

/// Bytes of the length prefix in front of every frame.
const PREFIX_LEN: usize = 4;
/// The least a receive buffer grows by when a frame does not fit (see `reserve_for`).
const RECEIVE_BUFFER_BYTES: usize = 256 * 1024;

/// Decodes and encodes peer messages, refusing frames longer than `max_message_len` both
/// ways: a peer would drop us for the same frames we drop it for.
#[derive(Clone, Debug)]
pub struct MessageCodec {
    max_message_len: u32,
}

impl MessageCodec {
    pub fn new(max_message_len: u32) -> Self {
        MessageCodec { max_message_len }
    }

    fn too_long(&self, len: usize) -> WireError {
        WireError::MessageTooLong {
            len,
            max: self.max_message_len,
        }
    }
}

impl Default for MessageCodec {
    fn default() -> Self {
        MessageCodec::new(DEFAULT_MAX_MESSAGE_LEN)
    }
}

impl Decoder for MessageCodec {
    type Item = Message;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, WireError> {
        let Some(prefix) = src.first_chunk::<PREFIX_LEN>() else {
            reserve_for(src, PREFIX_LEN - src.len());
            return Ok(None);
        };
        let body_len = u32::from_be_bytes(*prefix);
        if body_len > self.max_message_len {
            return Err(self.too_long(widen(body_len)));
        }
        let frame_len = widen(body_len)
            .checked_add(PREFIX_LEN)
            .ok_or_else(|| self.too_long(widen(body_len)))?;
        if src.len() < frame_len {
            // Bounded by the limit check above.
            reserve_for(src, frame_len - src.len());
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        let body = src.split_to(widen(body_len));
        Message::parse_body(body).map(Some)
    }
}

/// Makes room for `missing` more bytes of the frame being read. A new buffer (the old one
/// is full, or shared with blocks split from it) gets at least `RECEIVE_BUFFER_BYTES`, so
/// that many frames are read into each allocation and the partial frame copied over to a
/// new one is a small share of what is received (about 3 % of blocks, rather than the
/// 12 % a 64 KiB buffer costs).
fn reserve_for(src: &mut BytesMut, missing: usize) {
    if src.capacity() - src.len() < missing.max(1) {
        src.reserve(missing.max(RECEIVE_BUFFER_BYTES));
    }
}

impl Encoder<&Message> for MessageCodec {
    type Error = WireError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), WireError> {
        let body_len = msg.body_len();
        let prefix = u32::try_from(body_len)
            .ok()
            .filter(|len| *len <= self.max_message_len)
            .ok_or_else(|| self.too_long(body_len))?;
        dst.reserve(body_len.saturating_add(PREFIX_LEN));
        dst.put_u32(prefix);
        msg.write_body(dst);
        Ok(())
    }
}

impl Encoder<Message> for MessageCodec {
    type Error = WireError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode(&msg, dst)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failed unwrap is a failed test.
mod tests {
    use bytes::Bytes;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::wire::message::BlockRequest;

    const BLOCK: BlockRequest = BlockRequest {
        piece: 0x0102_0304,
        offset: 0x4000,
        length: 0x4000,
    };

    /// Every variant beside its exact frame, written out from the BEPs by hand.
    fn every_variant() -> Vec<(Message, Vec<u8>)> {
        let block = [1, 2, 3, 4, 0, 0, 0x40, 0, 0, 0, 0x40, 0];
        let frame = |body: &[u8]| {
            let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
            out.extend_from_slice(body);
            out
        };
        let with_id = |msg_id: u8, rest: &[u8]| frame(&[&[msg_id], rest].concat());
        vec![
            (Message::KeepAlive, vec![0, 0, 0, 0]),
            (Message::Choke, frame(&[0])),
            (Message::Unchoke, frame(&[1])),
            (Message::Interested, frame(&[2])),
            (Message::NotInterested, frame(&[3])),
            (Message::Have { piece: 258 }, frame(&[4, 0, 0, 1, 2])),
            (
                Message::Bitfield(Bytes::from_static(&[0xff, 0x80])),
                frame(&[5, 0xff, 0x80]),
            ),
            (Message::Request(BLOCK), with_id(6, &block)),
            (
                Message::Piece {
                    piece: 7,
                    offset: 0x8000,
                    data: Bytes::from_static(b"block bytes"),
                },
                with_id(
                    7,
                    &[&[0, 0, 0, 7, 0, 0, 0x80, 0][..], b"block bytes"].concat(),
                ),
            ),
            (Message::Cancel(BLOCK), with_id(8, &block)),
            (Message::Port(6881), frame(&[9, 0x1a, 0xe1])),
            (Message::Suggest { piece: 3 }, frame(&[0x0d, 0, 0, 0, 3])),
            (Message::HaveAll, frame(&[0x0e])),
            (Message::HaveNone, frame(&[0x0f])),
            (Message::Reject(BLOCK), with_id(0x10, &block)),
            (
                Message::AllowedFast { piece: 65536 },
                frame(&[0x11, 0, 1, 0, 0]),
            ),
            (
                Message::Extended {
                    id: 0,
                    payload: Bytes::from_static(b"d1:mdee"),
                },
                with_id(20, b"\0d1:mdee"),
            ),
            (
                Message::Unknown {
                    id: 21,
                    payload: Bytes::from_static(&[1, 2]),
                },
                frame(&[21, 1, 2]),
            ),
        ]
    }

    fn encode_all(msgs: &[Message]) -> BytesMut {
        let mut codec = MessageCodec::default();
        let mut out = BytesMut::new();
        for msg in msgs {
            codec.encode(msg, &mut out).unwrap();
        }
        out
    }

    /// Decodes until the codec asks for more bytes.
    fn decode_available(codec: &mut MessageCodec, buf: &mut BytesMut, out: &mut Vec<Message>) {
        while let Some(msg) = codec.decode(buf).unwrap() {
            out.push(msg);
        }
    }

    #[test]
    fn every_variant_encodes_to_its_bep_bytes_and_back() {
        for (msg, frame) in every_variant() {
            let mut codec = MessageCodec::default();
            let mut out = BytesMut::new();
            codec.encode(msg.clone(), &mut out).unwrap();
            assert_eq!(&out[..], &frame[..], "{msg:?}");
            let mut buf = BytesMut::from(&frame[..]);
            assert_eq!(codec.decode(&mut buf).unwrap(), Some(msg));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn a_stream_split_at_every_offset_decodes_the_same() {
        let msgs: Vec<Message> = every_variant().into_iter().map(|(msg, _)| msg).collect();
        let stream = encode_all(&msgs);
        for split in 0..=stream.len() {
            let mut codec = MessageCodec::default();
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            buf.extend_from_slice(&stream[..split]);
            decode_available(&mut codec, &mut buf, &mut decoded);
            buf.extend_from_slice(&stream[split..]);
            decode_available(&mut codec, &mut buf, &mut decoded);
            assert_eq!(decoded, msgs, "split at {split}");
            assert!(buf.is_empty(), "split at {split}");
        }
    }

    #[test]
    fn a_partial_frame_in_a_shared_buffer_gets_a_large_new_one() {
        let block = Message::Piece {
            piece: 1,
            offset: 0,
            data: Bytes::from(vec![3u8; 16384]),
        };
        let frame = encode_all(std::slice::from_ref(&block));
        let mut buf = BytesMut::with_capacity(frame.len() + 100);
        buf.extend_from_slice(&frame);
        buf.extend_from_slice(&frame[..100]);
        let mut codec = MessageCodec::default();
        let first = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(first, block, "the first block is split off and still alive");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() >= RECEIVE_BUFFER_BYTES, "{}", buf.capacity());
        assert_eq!(&buf[..], &frame[..100], "the partial frame moved along");
    }

    #[test]
    fn partial_frame_is_not_an_error_and_reserves_its_rest() {
        let mut codec = MessageCodec::default();
        let mut buf = BytesMut::from(&[0, 0, 0x40, 9, 7][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(buf.len(), 5, "nothing consumed before the frame is whole");
        assert!(buf.capacity() >= 4 + 0x4009);
    }

    #[test]
    fn oversized_frame_is_refused_without_buffering_it() {
        let mut codec = MessageCodec::new(1000);
        let mut buf = BytesMut::with_capacity(8);
        buf.extend_from_slice(&1001u32.to_be_bytes());
        buf.extend_from_slice(&[5]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(WireError::MessageTooLong {
                len: 1001,
                max: 1000
            })
        ));
        assert!(buf.capacity() < 1001, "capacity grew to {}", buf.capacity());
        // The default limit refuses a frame that claims 4 GiB.
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            MessageCodec::default().decode(&mut buf),
            Err(WireError::MessageTooLong { .. })
        ));
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn frame_exactly_at_the_limit_is_accepted() {
        let mut codec = MessageCodec::new(4);
        let msg = Message::Bitfield(Bytes::from_static(&[1, 2, 3]));
        let mut buf = BytesMut::new();
        codec.encode(&msg, &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(msg));
    }

    #[test]
    fn encoding_refuses_what_a_peer_would_refuse() {
        let mut codec = MessageCodec::new(16);
        let mut buf = BytesMut::new();
        let big = Message::Bitfield(Bytes::from(vec![0; 16]));
        assert!(matches!(
            codec.encode(big, &mut buf),
            Err(WireError::MessageTooLong { len: 17, max: 16 })
        ));
        assert!(buf.is_empty(), "nothing written for a refused message");
    }

    #[test]
    fn wrong_fixed_length_in_a_frame_is_refused() {
        let mut codec = MessageCodec::default();
        // Have with a 3-byte index (length 4 instead of 5).
        let mut buf = BytesMut::from(&[0, 0, 0, 4, 4, 0, 0, 1][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(WireError::BadLength { id: 4, len: 4 })
        ));
    }

    #[test]
    fn random_bytes_never_panic_and_what_decodes_reencodes_exactly() {
        let mut rng = StdRng::seed_from_u64(0x0b17_7023);
        let mut decoded_count = 0;
        for _ in 0..20_000 {
            // Mostly plausible frames (small length, any id) so the body parser is reached,
            // sometimes pure noise so the limit check is too.
            let mut bytes = Vec::new();
            if rng.random_bool(0.8) {
                let len: u32 = rng.random_range(0..24);
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.push(rng.random_range(0..24));
            }
            let noise_len = rng.random_range(0..32);
            bytes.extend((0..noise_len).map(|_| rng.random::<u8>()));

            let mut codec = MessageCodec::new(rng.random_range(0..64));
            let mut buf = BytesMut::from(&bytes[..]);
            loop {
                let before = buf.clone();
                match codec.decode(&mut buf) {
                    Ok(Some(msg)) => {
                        decoded_count += 1;
                        let consumed = before.len() - buf.len();
                        let mut again = BytesMut::new();
                        codec.encode(&msg, &mut again).unwrap();
                        assert_eq!(&again[..], &before[..consumed], "{msg:?}");
                    }
                    Ok(None) => {
                        assert_eq!(buf, before, "Ok(None) must not consume bytes");
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        assert!(
            decoded_count > 1000,
            "fuzz reached the parser {decoded_count} times"
        );
    }
}
