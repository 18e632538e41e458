//! What the engine does with an oversize frame (SPEC §3.1).
//!
//! The decoder refuses the frame from its header alone. On a handshaken
//! connection the engine then tries to answer it like any bad request, so a
//! client learns why instead of seeing a bare close: the id is looked for in
//! the body bytes already in the current input chunk (at most
//! [`PEEK_LIMIT`], see [`crate::wire::frame_peek`]). Found: the reply
//! `INVALID_REQUEST "Frame exceeds maximum size (<limit> bytes)"` is sent,
//! then the connection closes (the rest of the body is never read, so the
//! stream cannot be resynchronized). Not found, or before the handshake: the
//! connection closes with an audit event carrying the announced size and the
//! limit as numbers. Both cases audit `frame_decode_error` with the size
//! and limit; the outcome is `oversize_answered` or `oversize`.

use rand_core::CryptoRng;

use crate::conn::connection::Phase;
use crate::engine::audit::{AuditEvent, ConnId, Level};
use crate::engine::engine::{Engine, Output};
use crate::wire::error::ErrorCode;
use crate::wire::frame_peek::{PEEK_LIMIT, peek_id};
use crate::wire::reply::{Failure, encode_reply};

impl<R: CryptoRng> Engine<R> {
    /// The header of the current frame announced `len` > `max` bytes;
    /// `body` is the rest of the input chunk.
    pub(crate) fn on_oversize(&mut self, conn: ConnId, len: u32, max: usize, body: &[u8]) {
        let version = match self.conns.get(conn).map(|c| c.phase()) {
            Some(Phase::Open(accepted)) => Some(accepted.version),
            Some(Phase::AwaitingHandshake) => None,
            None => return,
        };
        let id = version.and_then(|_| peek_id(&body[..body.len().min(PEEK_LIMIT)]));
        let mut event = AuditEvent::new(Level::Warn, Some(conn), "frame_decode_error", "oversize");
        event.size = Some(u64::from(len));
        event.limit = Some(max as u64);
        if let (Some(version), Some(id)) = (version, id) {
            let f = Failure::new(
                ErrorCode::InvalidRequest,
                format!("Frame exceeds maximum size ({max} bytes)"),
            );
            let (bytes, _) = encode_reply(&id, &Err(f), version, &self.config.limits);
            self.push(Output::Send { conn, bytes });
            event.outcome = "oversize_answered";
        }
        self.audit(event);
        self.close(conn);
    }
}
