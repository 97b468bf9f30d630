//! The peer wire format: length-prefixed frames with a request id, so one connection
//! carries many requests at once and the replica's group commit can batch them.
//!
//! Frame: `[len u32][id u64][kind u8][payload]`, big-endian, `len` counting everything
//! after itself. A request's payload is JSON, except `Prepare`, whose JSON header is
//! followed by the message body as raw bytes (`[json len u32][json][body]`) so bodies
//! are never re-encoded. A response's payload is a status byte and, for a refusal, the
//! reason as UTF-8.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::view::{Copy, Holder};
use crate::spool::{MessageId, MessageMeta, RecipientUpdate};

/// The read and write buffers of a peer connection.
pub const IO_BUFFER: usize = 64 * 1024;

/// Largest frame accepted: a message body up to the largest configurable size plus
/// its metadata.
pub const MAX_FRAME: usize = 160 * 1024 * 1024;

const KIND_HELLO: u8 = 1;
const KIND_PREPARE: u8 = 2;
const KIND_COMMIT: u8 = 3;
const KIND_ABORT: u8 = 4;
const KIND_UPDATE: u8 = 5;
const KIND_REMOVE: u8 = 6;
const KIND_HOLDS: u8 = 7;
const KIND_RESPONSE: u8 = 128;

const STATUS_OK: u8 = 0;
const STATUS_REFUSED: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("peer connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer sent a frame of {0} bytes, more than the limit")]
    TooLarge(usize),
    #[error("peer sent a malformed frame: {0}")]
    Malformed(String),
}

/// What an owner asks of a holder.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// First frame on a connection: who is calling.
    Hello { from: Holder },
    /// Store this message (its ownership record pending) durably.
    Prepare { meta: Box<MessageMeta>, body: Bytes },
    /// Mark these copies committed: their owner has answered 250. Owners send commits in
    /// batches, a few milliseconds after the fact.
    Commit { copies: Vec<(MessageId, Copy)> },
    /// Drop a pending copy: the owner is refusing the message.
    Abort { id: MessageId },
    /// Apply recipient outcomes and/or a new ownership record.
    Update {
        id: MessageId,
        updates: Vec<RecipientUpdate>,
        copy: Option<Copy>,
    },
    /// Every recipient of these messages is final: drop them. Owners send removals in
    /// batches, a few milliseconds after the fact.
    Remove { ids: Vec<MessageId> },
    /// Does this node, as the incarnation `of`, still hold the message? Asked by a node
    /// with a copy it cannot act on alone; refused with [`NOT_HELD`] only by that very
    /// incarnation: a node that came back with an empty disk never held it, and its
    /// "not here" would say nothing about the message.
    Holds { id: MessageId, of: Holder },
}

/// The refusal of [`Request::Holds`] that means "not here": the only refusal the asker
/// acts on.
pub const NOT_HELD: &str = "not held here";

/// How a refusal of [`Request::Prepare`] begins when the holder's spool failed while
/// writing the copy: unlike a refusal by a check, it does not say that nothing was
/// written, so the owner cannot answer 451 on it.
pub const WRITE_FAILED: &str = "writing the copy failed (it may remain): ";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Control {
    Hello {
        from: Holder,
    },
    Commit {
        copies: Vec<(MessageId, Copy)>,
    },
    Abort {
        id: MessageId,
    },
    Update {
        id: MessageId,
        updates: Vec<RecipientUpdate>,
        copy: Option<Copy>,
    },
    Remove {
        ids: Vec<MessageId>,
    },
    Holds {
        id: MessageId,
        of: Holder,
    },
}

/// A holder's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Ok,
    Refused(String),
}

/// A decoded frame.
#[derive(Debug)]
pub enum Frame {
    Request(u64, Request),
    Response(u64, Response),
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, ProtocolError> {
    serde_json::to_vec(value).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Encodes a request frame.
pub fn encode_request(id: u64, request: &Request) -> Result<Bytes, ProtocolError> {
    let (kind, payload): (u8, Vec<u8>) = match request {
        Request::Prepare { meta, body } => {
            let header = json(meta)?;
            let mut p = Vec::with_capacity(4 + header.len() + body.len());
            p.put_u32(header.len() as u32);
            p.extend_from_slice(&header);
            p.extend_from_slice(body);
            (KIND_PREPARE, p)
        }
        Request::Hello { from } => (KIND_HELLO, json(&Control::Hello { from: from.clone() })?),
        Request::Commit { copies } => (
            KIND_COMMIT,
            json(&Control::Commit {
                copies: copies.clone(),
            })?,
        ),
        Request::Abort { id } => (KIND_ABORT, json(&Control::Abort { id: *id })?),
        Request::Update { id, updates, copy } => (
            KIND_UPDATE,
            json(&Control::Update {
                id: *id,
                updates: updates.clone(),
                copy: copy.clone(),
            })?,
        ),
        Request::Remove { ids } => (KIND_REMOVE, json(&Control::Remove { ids: ids.clone() })?),
        Request::Holds { id, of } => (
            KIND_HOLDS,
            json(&Control::Holds {
                id: *id,
                of: of.clone(),
            })?,
        ),
    };
    Ok(frame(id, kind, &payload))
}

/// Encodes a response frame.
pub fn encode_response(id: u64, response: &Response) -> Bytes {
    let mut payload = Vec::new();
    match response {
        Response::Ok => payload.push(STATUS_OK),
        Response::Refused(reason) => {
            payload.push(STATUS_REFUSED);
            payload.extend_from_slice(reason.as_bytes());
        }
    }
    frame(id, KIND_RESPONSE, &payload)
}

fn frame(id: u64, kind: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + 8 + 1 + payload.len());
    out.put_u32((8 + 1 + payload.len()) as u32);
    out.put_u64(id);
    out.put_u8(kind);
    out.put_slice(payload);
    out.freeze()
}

fn control(payload: &[u8]) -> Result<Control, ProtocolError> {
    serde_json::from_slice(payload).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

/// Decodes one frame's content (everything after the length).
pub fn decode(mut content: Bytes) -> Result<Frame, ProtocolError> {
    if content.len() < 9 {
        return Err(ProtocolError::Malformed(
            "frame shorter than its header".into(),
        ));
    }
    let id = content.get_u64();
    let kind = content.get_u8();
    let request = match kind {
        KIND_RESPONSE => {
            let response = match content.first() {
                Some(&STATUS_OK) => Response::Ok,
                Some(&STATUS_REFUSED) => {
                    Response::Refused(String::from_utf8_lossy(&content[1..]).into_owned())
                }
                _ => return Err(ProtocolError::Malformed("unknown response status".into())),
            };
            return Ok(Frame::Response(id, response));
        }
        KIND_PREPARE => {
            if content.len() < 4 {
                return Err(ProtocolError::Malformed("prepare without header".into()));
            }
            let header_len = content.get_u32() as usize;
            if header_len > content.len() {
                return Err(ProtocolError::Malformed(
                    "prepare header past the frame".into(),
                ));
            }
            let header = content.split_to(header_len);
            let meta: MessageMeta = serde_json::from_slice(&header)
                .map_err(|e| ProtocolError::Malformed(e.to_string()))?;
            Request::Prepare {
                meta: Box::new(meta),
                body: content,
            }
        }
        KIND_HELLO | KIND_COMMIT | KIND_ABORT | KIND_UPDATE | KIND_REMOVE | KIND_HOLDS => {
            match control(&content)? {
                Control::Hello { from } => Request::Hello { from },
                Control::Commit { copies } => Request::Commit { copies },
                Control::Abort { id } => Request::Abort { id },
                Control::Update { id, updates, copy } => Request::Update { id, updates, copy },
                Control::Remove { ids } => Request::Remove { ids },
                Control::Holds { id, of } => Request::Holds { id, of },
            }
        }
        other => {
            return Err(ProtocolError::Malformed(format!(
                "unknown frame kind {other}"
            )));
        }
    };
    Ok(Frame::Request(id, request))
}

/// Reads one frame; `None` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<Frame>, ProtocolError> {
    let len = match reader.read_u32().await {
        Ok(len) => len as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    let mut content = vec![0u8; len];
    reader.read_exact(&mut content).await?;
    decode(Bytes::from(content)).map(Some)
}

/// Writes frames already encoded.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> Result<(), ProtocolError> {
    writer.write_all(frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::test_support::test_meta;
    use crate::replication::view::Incarnation;
    use crate::spool::{NodeId, Recipient, RecipientState};

    fn roundtrip(request: Request) -> Request {
        let bytes = encode_request(7, &request).expect("encodes");
        let content = bytes.slice(4..);
        match decode(content).expect("decodes") {
            Frame::Request(7, r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_request_survives_the_wire() {
        let meta = test_meta("s@example.com", vec![Recipient::new("a@example.net")]);
        let holder = Holder {
            node: NodeId("n1".into()),
            incarnation: Incarnation::new(),
        };
        let copy = Copy {
            holders: vec![holder.clone()],
            epoch: 4,
            committed: false,
        };
        let body = Bytes::from_static(b"Subject: x\r\n\r\n\x00\xff binary\r\n");
        for request in [
            Request::Hello {
                from: holder.clone(),
            },
            Request::Prepare {
                meta: Box::new(meta.clone()),
                body,
            },
            Request::Commit {
                copies: vec![(meta.id, copy.clone())],
            },
            Request::Abort { id: meta.id },
            Request::Update {
                id: meta.id,
                updates: vec![RecipientUpdate {
                    index: 0,
                    state: RecipientState::Pending,
                    attempt: None,
                }],
                copy: Some(copy),
            },
            Request::Remove { ids: vec![meta.id] },
            Request::Holds {
                id: meta.id,
                of: holder,
            },
        ] {
            assert_eq!(roundtrip(request.clone()), request);
        }
    }

    #[test]
    fn responses_carry_the_reason() {
        for response in [Response::Ok, Response::Refused("stale epoch 3 < 4".into())] {
            let bytes = encode_response(9, &response);
            match decode(bytes.slice(4..)).expect("decodes") {
                Frame::Response(9, r) => assert_eq!(r, response),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [
            &b""[..],
            &b"\0\0\0\0\0\0\0\x01\x02\0\0\xff\xff"[..],
            &b"\0\0\0\0\0\0\0\x01\x63{}"[..],
            &b"\0\0\0\0\0\0\0\x01\x03not json"[..],
        ] {
            assert!(decode(Bytes::copy_from_slice(junk)).is_err(), "{junk:?}");
        }
    }
}
