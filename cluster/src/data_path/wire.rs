//! The data path's encodings: a request, and the status bytes and error
//! of a reply (see the module above for the whole wire).

use std::io;
use std::time::Duration;

use crate::tls::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use troupe_objects::{ObjectError, ObjectId};

use super::within;

/// The first bytes of every request.
pub(super) const MAGIC: [u8; 4] = *b"TRDP";
/// The protocol's version, after the magic.
pub(super) const VERSION: u8 = 3;
/// The most refs a reply may list (a value holding more is refused).
pub(super) const MAX_REFS: u32 = 1 << 20;
/// Magic, version, body length.
pub(super) const REQUEST_HEAD: usize = 4 + 1 + 4;
/// Reply status: the object follows.
pub(super) const STATUS_OK: u8 = 0;
/// Reply status: the holder's error follows.
pub(super) const STATUS_ERR: u8 = 1;
/// Reply status: still waiting for the object (it is pending); more follows.
pub(super) const STATUS_WAIT: u8 = 2;
/// The largest encoded error a client reads.
pub(super) const MAX_ERROR_BYTES: u32 = 1 << 20;

/// What a client asks for. The puller is the node the connection's
/// handshake proved (it becomes a borrower of the refs inside).
#[derive(Serialize, Deserialize)]
pub(super) struct Request {
    pub(super) id: ObjectId,
}

pub(super) fn encode_request(id: ObjectId) -> Vec<u8> {
    let body = postcard::to_allocvec(&Request { id }).unwrap_or_default();
    let mut frame = Vec::with_capacity(REQUEST_HEAD + body.len());
    frame.extend_from_slice(&MAGIC);
    frame.push(VERSION);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

pub(super) async fn read_u8(stream: &mut Stream, after: Duration) -> io::Result<u8> {
    let mut byte = [0u8; 1];
    within(after, "reading a reply", stream.read_exact(&mut byte)).await?;
    Ok(byte[0])
}

/// The error's encoding, within the size a client reads; an error that does
/// not encode (or is too large) becomes a `Fetch` error with its message.
pub(super) fn encode_error(id: ObjectId, err: &ObjectError) -> Vec<u8> {
    let fallback = |why: String| {
        let mut reason = format!("{err} ({why})");
        // Room for the rest of the encoding; on a char boundary.
        let mut cut = (MAX_ERROR_BYTES as usize / 2).min(reason.len());
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        postcard::to_allocvec(&ObjectError::Fetch { id, reason }).unwrap_or_default()
    };
    match postcard::to_allocvec(err) {
        Ok(bytes) if bytes.len() <= MAX_ERROR_BYTES as usize => bytes,
        Ok(bytes) => fallback(format!(
            "its encoding of {} bytes was too large",
            bytes.len()
        )),
        Err(e) => fallback(format!("it did not encode: {e}")),
    }
}
