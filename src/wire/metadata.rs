//! BEP 9 `ut_metadata` messages: request, data and reject of 16 KiB pieces of a torrent's
//! info dictionary, carried in `Message::Extended` under the id each side chose.
//!
//! A data message is a bencoded dictionary followed by the raw piece bytes; the parse
//! finds where the dictionary ends and refuses anything malformed.

use bytes::Bytes;
use serde::Deserialize;

use super::WireError;
use super::ext::first_value_end;

/// Metadata is exchanged in pieces of this size (BEP 9); only the last may be shorter.
pub const METADATA_PIECE_LEN: usize = 16 * 1024;

/// Our id for `ut_metadata` messages (sent in our extended handshake's `m`).
pub const OUR_UT_METADATA_ID: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataMessage {
    Request {
        piece: u32,
    },
    Data {
        piece: u32,
        total_size: u64,
        data: Bytes,
    },
    Reject {
        piece: u32,
    },
}

#[derive(Deserialize)]
struct RawHeader {
    msg_type: i64,
    piece: i64,
    #[serde(default)]
    total_size: Option<i64>,
}

impl MetadataMessage {
    /// Parses the payload of a `ut_metadata` extended message.
    pub fn parse(payload: &Bytes) -> Result<Self, WireError> {
        let end = first_value_end(payload)?
            .ok_or(WireError::BadMetadataMessage("not a bencoded dictionary"))?;
        let header: RawHeader = serde_bencode::from_bytes(payload.get(..end).unwrap_or_default())
            .map_err(|_| WireError::BadMetadataMessage("bad dictionary"))?;
        let piece =
            u32::try_from(header.piece).map_err(|_| WireError::BadMetadataMessage("bad piece"))?;
        match header.msg_type {
            0 => Ok(MetadataMessage::Request { piece }),
            1 => {
                let total_size = header
                    .total_size
                    .and_then(|t| u64::try_from(t).ok())
                    .ok_or(WireError::BadMetadataMessage("data without total_size"))?;
                Ok(MetadataMessage::Data {
                    piece,
                    total_size,
                    data: payload.slice(end..),
                })
            }
            2 => Ok(MetadataMessage::Reject { piece }),
            _ => Err(WireError::BadMetadataMessage("unknown msg_type")),
        }
    }

    /// The payload to send inside `Message::Extended`.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            MetadataMessage::Request { piece } => format!("d8:msg_typei0e5:piecei{piece}ee")
                .into_bytes()
                .into(),
            MetadataMessage::Reject { piece } => format!("d8:msg_typei2e5:piecei{piece}ee")
                .into_bytes()
                .into(),
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => {
                let mut out = format!("d8:msg_typei1e5:piecei{piece}e10:total_sizei{total_size}ee")
                    .into_bytes();
                out.extend_from_slice(data);
                out.into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        for msg in [
            MetadataMessage::Request { piece: 3 },
            MetadataMessage::Reject { piece: 0 },
            MetadataMessage::Data {
                piece: 1,
                total_size: 20000,
                data: Bytes::from_static(b"d4:infoe-raw-bytes-after"),
            },
        ] {
            assert_eq!(MetadataMessage::parse(&msg.to_bytes()).unwrap(), msg);
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [
            &b""[..],
            b"garbage",
            b"d8:msg_typei9e5:piecei0ee",
            b"d8:msg_typei1e5:piecei0ee",
            b"d8:msg_typei0e5:piecei-1ee",
            b"d8:msg_typei0e",
        ] {
            assert!(
                MetadataMessage::parse(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
