//! Peer wire messages as values: the BEP 3 set, the BEP 6 Fast extension and the BEP 10
//! extended frame, with the one parser and the one writer of a frame's body (the id byte
//! and payload that follow the length prefix). `codec` owns the length prefix itself.
//!
//! An id we do not know becomes `Message::Unknown` rather than an error: BEP 3 and BEP 10
//! both ask clients to ignore messages they do not understand, and real peers send ids
//! from other extensions (BEP 52 hash messages, vendor protocols). The peer task logs and
//! ignores them; the frame's length limit still applies.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::WireError;

/// Message ids (the first body byte), from BEP 3, BEP 6 and BEP 10.
mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    pub const PORT: u8 = 9;
    pub const SUGGEST: u8 = 0x0d;
    pub const HAVE_ALL: u8 = 0x0e;
    pub const HAVE_NONE: u8 = 0x0f;
    pub const REJECT: u8 = 0x10;
    pub const ALLOWED_FAST: u8 = 0x11;
    pub const EXTENDED: u8 = 20;
}

/// Bytes of a Piece payload before its block: piece index and block offset.
const PIECE_HEADER_LEN: usize = 8;

/// Bytes of a Request, Cancel or Reject payload: piece index, offset, length.
const BLOCK_REQUEST_LEN: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A frame of length 0; it has no id.
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have {
        piece: u32,
    },
    /// One bit per piece, high bit first. Its length against the piece count is checked by
    /// the peer layer, which knows the torrent.
    Bitfield(Bytes),
    Request(BlockRequest),
    Cancel(BlockRequest),
    /// `data` is a zero-copy slice of the codec's read buffer.
    Piece {
        piece: u32,
        offset: u32,
        data: Bytes,
    },
    /// The sender's DHT port (BEP 5).
    Port(u16),
    // BEP 6 Fast extension.
    Suggest {
        piece: u32,
    },
    HaveAll,
    HaveNone,
    Reject(BlockRequest),
    AllowedFast {
        piece: u32,
    },
    /// BEP 10: `id` 0 is the extended handshake, any other is an id the receiver assigned
    /// in its handshake's `m` dictionary.
    Extended {
        id: u8,
        payload: Bytes,
    },
    /// A message id this module does not know; to be ignored (see the module doc).
    Unknown {
        id: u8,
        payload: Bytes,
    },
}

/// One block named on the wire by Request, Cancel and Reject. The numbers are as the peer
/// sent them: the peer layer checks them against the torrent's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRequest {
    pub piece: u32,
    pub offset: u32,
    pub length: u32,
}

impl Message {
    /// Length of the frame body (id byte and payload), the number the length prefix carries.
    /// Saturates rather than overflow so that an absurd size fails the codec's limit check.
    pub(crate) fn body_len(&self) -> usize {
        let payload_len = match self {
            Message::KeepAlive => return 0,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 0,
            Message::Have { .. } | Message::Suggest { .. } | Message::AllowedFast { .. } => 4,
            Message::Port(_) => 2,
            Message::Request(_) | Message::Cancel(_) | Message::Reject(_) => BLOCK_REQUEST_LEN,
            Message::Bitfield(bits) => bits.len(),
            Message::Piece { data, .. } => PIECE_HEADER_LEN.saturating_add(data.len()),
            Message::Extended { payload, .. } => payload.len().saturating_add(1),
            Message::Unknown { payload, .. } => payload.len(),
        };
        payload_len.saturating_add(1)
    }

    /// Appends the frame body (everything after the length prefix). A Piece's block is
    /// copied once, straight from `data` into `dst`.
    pub(crate) fn write_body(&self, dst: &mut BytesMut) {
        match self {
            Message::KeepAlive => {}
            Message::Choke => dst.put_u8(id::CHOKE),
            Message::Unchoke => dst.put_u8(id::UNCHOKE),
            Message::Interested => dst.put_u8(id::INTERESTED),
            Message::NotInterested => dst.put_u8(id::NOT_INTERESTED),
            Message::HaveAll => dst.put_u8(id::HAVE_ALL),
            Message::HaveNone => dst.put_u8(id::HAVE_NONE),
            Message::Have { piece } => put_piece(dst, id::HAVE, *piece),
            Message::Suggest { piece } => put_piece(dst, id::SUGGEST, *piece),
            Message::AllowedFast { piece } => put_piece(dst, id::ALLOWED_FAST, *piece),
            Message::Request(block) => put_block_request(dst, id::REQUEST, block),
            Message::Cancel(block) => put_block_request(dst, id::CANCEL, block),
            Message::Reject(block) => put_block_request(dst, id::REJECT, block),
            Message::Port(port) => {
                dst.put_u8(id::PORT);
                dst.put_u16(*port);
            }
            Message::Bitfield(bits) => {
                dst.put_u8(id::BITFIELD);
                dst.extend_from_slice(bits);
            }
            Message::Piece {
                piece,
                offset,
                data,
            } => {
                dst.put_u8(id::PIECE);
                dst.put_u32(*piece);
                dst.put_u32(*offset);
                dst.extend_from_slice(data);
            }
            Message::Extended {
                id: ext_id,
                payload,
            } => {
                dst.put_u8(id::EXTENDED);
                dst.put_u8(*ext_id);
                dst.extend_from_slice(payload);
            }
            Message::Unknown { id, payload } => {
                dst.put_u8(*id);
                dst.extend_from_slice(payload);
            }
        }
    }

    /// Parses one frame body: exactly the bytes the length prefix counted. An empty body
    /// is a KeepAlive. Byte-carrying variants keep slices of `body` without copying.
    pub(crate) fn parse_body(mut body: BytesMut) -> Result<Message, WireError> {
        let body_len = body.len();
        if body.is_empty() {
            return Ok(Message::KeepAlive);
        }
        let msg_id = body.get_u8();
        let payload_len = body.len();
        let bad_length = || WireError::BadLength {
            id: msg_id,
            len: body_len,
        };
        // `exact` and `at_least` check the length before any `get_*` reads behind it.
        let exact = |len: usize| {
            if payload_len == len {
                Ok(())
            } else {
                Err(bad_length())
            }
        };
        let at_least = |len: usize| {
            if payload_len >= len {
                Ok(())
            } else {
                Err(bad_length())
            }
        };
        let msg = match msg_id {
            id::CHOKE => exact(0).map(|()| Message::Choke)?,
            id::UNCHOKE => exact(0).map(|()| Message::Unchoke)?,
            id::INTERESTED => exact(0).map(|()| Message::Interested)?,
            id::NOT_INTERESTED => exact(0).map(|()| Message::NotInterested)?,
            id::HAVE_ALL => exact(0).map(|()| Message::HaveAll)?,
            id::HAVE_NONE => exact(0).map(|()| Message::HaveNone)?,
            id::HAVE => {
                exact(4)?;
                Message::Have {
                    piece: body.get_u32(),
                }
            }
            id::SUGGEST => {
                exact(4)?;
                Message::Suggest {
                    piece: body.get_u32(),
                }
            }
            id::ALLOWED_FAST => {
                exact(4)?;
                Message::AllowedFast {
                    piece: body.get_u32(),
                }
            }
            id::REQUEST => {
                exact(BLOCK_REQUEST_LEN)?;
                Message::Request(get_block_request(&mut body))
            }
            id::CANCEL => {
                exact(BLOCK_REQUEST_LEN)?;
                Message::Cancel(get_block_request(&mut body))
            }
            id::REJECT => {
                exact(BLOCK_REQUEST_LEN)?;
                Message::Reject(get_block_request(&mut body))
            }
            id::PORT => {
                exact(2)?;
                Message::Port(body.get_u16())
            }
            id::BITFIELD => Message::Bitfield(body.freeze()),
            id::PIECE => {
                at_least(PIECE_HEADER_LEN)?;
                let piece = body.get_u32();
                let offset = body.get_u32();
                Message::Piece {
                    piece,
                    offset,
                    data: body.freeze(),
                }
            }
            id::EXTENDED => {
                at_least(1)?;
                let ext_id = body.get_u8();
                Message::Extended {
                    id: ext_id,
                    payload: body.freeze(),
                }
            }
            other => Message::Unknown {
                id: other,
                payload: body.freeze(),
            },
        };
        Ok(msg)
    }
}

fn put_piece(dst: &mut BytesMut, msg_id: u8, piece: u32) {
    dst.put_u8(msg_id);
    dst.put_u32(piece);
}

fn put_block_request(dst: &mut BytesMut, msg_id: u8, block: &BlockRequest) {
    dst.put_u8(msg_id);
    dst.put_u32(block.piece);
    dst.put_u32(block.offset);
    dst.put_u32(block.length);
}

/// Reads the 12 bytes of a block request; the caller has checked they are there.
fn get_block_request(body: &mut BytesMut) -> BlockRequest {
    BlockRequest {
        piece: body.get_u32(),
        offset: body.get_u32(),
        length: body.get_u32(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failed unwrap is a failed test.
mod tests {
    use super::*;

    fn body(bytes: &[u8]) -> BytesMut {
        BytesMut::from(bytes)
    }

    #[test]
    fn fixed_size_messages_with_wrong_lengths_are_refused() {
        let cases: &[&[u8]] = &[
            &[id::CHOKE, 0],
            &[id::UNCHOKE, 0, 0],
            &[id::INTERESTED, 1],
            &[id::NOT_INTERESTED, 1, 2, 3, 4],
            &[id::HAVE_ALL, 0],
            &[id::HAVE_NONE, 0],
            &[id::HAVE, 0, 0, 1],
            &[id::HAVE, 0, 0, 0, 1, 0],
            &[id::SUGGEST, 0, 0, 1],
            &[id::ALLOWED_FAST],
            &[id::REQUEST, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[id::CANCEL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            &[id::REJECT],
            &[id::PORT, 0x1a],
            &[id::PORT, 0x1a, 0xe1, 0],
            &[id::PIECE, 0, 0, 0, 1, 0, 0, 0],
            &[id::EXTENDED],
        ];
        for bytes in cases {
            match Message::parse_body(body(bytes)) {
                Err(WireError::BadLength { id, len }) => {
                    assert_eq!(id, bytes[0]);
                    assert_eq!(len, bytes.len());
                }
                other => panic!("{bytes:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn smallest_variable_length_messages_are_accepted() {
        assert_eq!(
            Message::parse_body(body(&[id::PIECE, 0, 0, 0, 1, 0, 0, 0, 2])).unwrap(),
            Message::Piece {
                piece: 1,
                offset: 2,
                data: Bytes::new()
            }
        );
        assert_eq!(
            Message::parse_body(body(&[id::EXTENDED, 3])).unwrap(),
            Message::Extended {
                id: 3,
                payload: Bytes::new()
            }
        );
        assert_eq!(
            Message::parse_body(body(&[id::BITFIELD])).unwrap(),
            Message::Bitfield(Bytes::new())
        );
    }

    #[test]
    fn unknown_ids_are_kept_for_the_caller_to_ignore() {
        for unknown in [10u8, 11, 12, 19, 21, 255] {
            assert_eq!(
                Message::parse_body(body(&[unknown, 9, 8])).unwrap(),
                Message::Unknown {
                    id: unknown,
                    payload: Bytes::from_static(&[9, 8])
                }
            );
        }
    }

    #[test]
    fn piece_data_shares_the_read_buffer() {
        let mut frame = BytesMut::from(&[id::PIECE, 0, 0, 0, 4, 0, 0, 0x40, 0, 0xaa, 0xbb][..]);
        let start = frame.as_ptr() as usize;
        let Message::Piece {
            piece,
            offset,
            data,
        } = Message::parse_body(frame.split()).unwrap()
        else {
            panic!("not a piece");
        };
        assert_eq!((piece, offset), (4, 0x4000));
        assert_eq!(&data[..], &[0xaa, 0xbb]);
        assert_eq!(data.as_ptr() as usize, start + 1 + PIECE_HEADER_LEN);
    }

    #[test]
    fn body_len_matches_what_write_body_writes() {
        let msgs = [
            Message::KeepAlive,
            Message::HaveNone,
            Message::Have { piece: 1 },
            Message::Port(1),
            Message::Cancel(BlockRequest {
                piece: 1,
                offset: 2,
                length: 3,
            }),
            Message::Bitfield(Bytes::from_static(&[1, 2, 3])),
            Message::Piece {
                piece: 0,
                offset: 0,
                data: Bytes::from_static(&[0; 5]),
            },
            Message::Extended {
                id: 0,
                payload: Bytes::from_static(b"de"),
            },
            Message::Unknown {
                id: 99,
                payload: Bytes::from_static(&[7]),
            },
        ];
        for msg in msgs {
            let mut dst = BytesMut::new();
            msg.write_body(&mut dst);
            assert_eq!(dst.len(), msg.body_len(), "{msg:?}");
        }
    }
}
