//! The client side of the protocol without I/O: the one place that frames
//! what a client sends, decodes what it receives (with core's
//! [`FrameDecoder`]), runs the handshake and matches replies to requests
//! by id. No sockets, no clock, no threads: the caller moves the bytes
//! ([`ClientProto::handshake`], [`ClientProto::request`] return them;
//! [`ClientProto::handle_bytes`] takes what arrived) and drains
//! [`ClientProto::poll_event`] until it returns `None`.
//!
//! The async [`Client`](super::Client), the CLI, `credproxy bench` and the
//! host's test clients all sit on top of it, so the handshake and request
//! JSON is written once.
//!
//! A connection goes `Handshaking → Ready → Closed`. The first frame is
//! the handshake reply; after it, a frame whose `id` names a pending
//! request is that request's [`Event::Reply`] (its envelope checked, see
//! [`Reply::parse`]), and any other frame is [`Event::Unsolicited`] (the
//! reply to a `cancel`, or to a request already given up). A stream that
//! cannot be decoded, a malformed handshake reply or a malformed reply is
//! an [`Event::Error`] and closes the protocol: later bytes are ignored.

mod envelope;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use credproxy_core::Secret;
use credproxy_core::frame::{self, DecodeError, FrameDecoder};
use serde_json::{Map, Value};

pub use envelope::{
    Handshake, MAX_VERSION, MIN_VERSION, Reply, ServerError, UNKNOWN_CODE, UNKNOWN_MESSAGE,
    cancel_request, handshake_reply, handshake_request, request,
};

/// A request id as sent on the wire.
pub type RequestId = String;

/// Request ids: `prefix-n` (or just `n` without a prefix) with a counter.
///
/// Clones share the counter, so a client that reconnects keeps handing out
/// fresh ids: the prefix (random, chosen by the caller — this module does
/// no I/O) keeps them apart from other clients' in logs, the counter
/// among our own.
#[derive(Debug, Clone)]
pub struct IdGen {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl IdGen {
    /// Ids `prefix-1`, `prefix-2`, …; with an empty prefix `1`, `2`, ….
    #[must_use]
    pub fn new(prefix: impl Into<String>) -> IdGen {
        IdGen {
            prefix: prefix.into().into(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The next id.
    #[must_use]
    pub fn next_id(&self) -> RequestId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if self.prefix.is_empty() {
            n.to_string()
        } else {
            format!("{}-{n}", self.prefix)
        }
    }
}

/// Why the protocol stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// The byte stream is not a sequence of frames.
    Framing(DecodeError),
    /// The handshake reply is malformed (what is wrong).
    Handshake(&'static str),
    /// A reply to a pending request is malformed (what is wrong).
    Reply(&'static str),
}

/// Something the server said.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<T = ()> {
    /// The handshake reply: accepted (now `Ready`) or refused (now
    /// `Closed`), with the frame as received.
    Handshake {
        /// What it says.
        outcome: Handshake,
        /// The frame.
        frame: Map<String, Value>,
    },
    /// The reply to a pending request, which is no longer pending.
    Reply {
        /// The request's id.
        id: RequestId,
        /// The checked reply.
        reply: Reply,
        /// What the caller attached to the request.
        tag: T,
    },
    /// A frame that answers no pending request.
    Unsolicited(Map<String, Value>),
    /// The protocol stopped (now `Closed`); every pending request is
    /// dropped.
    Error(ProtocolError),
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the handshake reply.
    Handshaking,
    /// Handshaken with this protocol version.
    Ready {
        /// The negotiated version.
        version: u8,
    },
    /// Refused, broken or closed by the caller.
    Closed,
}

/// A request cannot be sent: the connection is not `Ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotReady(pub State);

/// One connection's protocol state. `T` is what the caller attaches to
/// each request and gets back with its reply (a waiter, a send instant).
#[derive(Debug)]
pub struct ClientProto<T = ()> {
    state: State,
    decoder: FrameDecoder,
    ids: IdGen,
    pending: HashMap<RequestId, T>,
    events: VecDeque<Event<T>>,
}

impl<T> ClientProto<T> {
    /// A connection about to handshake, taking ids from `ids` and refusing
    /// reply frames longer than `max_frame` bytes.
    #[must_use]
    pub fn new(ids: IdGen, max_frame: usize) -> ClientProto<T> {
        ClientProto {
            state: State::Handshaking,
            decoder: FrameDecoder::new(max_frame),
            ids,
            pending: HashMap::new(),
            events: VecDeque::new(),
        }
    }

    /// Where the connection is.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// The negotiated version once `Ready`.
    #[must_use]
    pub fn version(&self) -> Option<u8> {
        match self.state {
            State::Ready { version } => Some(version),
            _ => None,
        }
    }

    /// How many requests await their reply.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The handshake frame, with the capability token when given. The
    /// caller should zero the bytes once written (they hold the token).
    #[must_use]
    pub fn handshake(&self, token: Option<&Secret>) -> Vec<u8> {
        frame::encode(&handshake_request(token.map(Secret::expose)))
    }

    /// A request under a fresh id, now pending with `tag`.
    ///
    /// # Errors
    ///
    /// [`NotReady`] before the handshake completes or once closed.
    pub fn request(
        &mut self,
        op: &str,
        payload: &Value,
        tag: T,
    ) -> Result<(RequestId, Vec<u8>), NotReady> {
        let version = self.ready()?;
        let id = self.ids.next_id();
        let bytes = frame::encode(&request(version, &id, op, payload));
        self.pending.insert(id.clone(), tag);
        Ok((id, bytes))
    }

    /// A request under the caller's `id` (which must not be pending), now
    /// pending with `tag`.
    ///
    /// # Errors
    ///
    /// [`NotReady`] before the handshake completes or once closed.
    pub fn request_with_id(
        &mut self,
        id: &str,
        op: &str,
        payload: &Value,
        tag: T,
    ) -> Result<Vec<u8>, NotReady> {
        let version = self.ready()?;
        let bytes = frame::encode(&request(version, id, op, payload));
        self.pending.insert(id.to_owned(), tag);
        Ok(bytes)
    }

    /// Gives up on a pending request: forgets it (its reply will be
    /// [`Event::Unsolicited`]) and returns its tag and the `cancel` frame,
    /// sent under a fresh id whose reply is unsolicited too. `None` when
    /// `id` is not pending.
    pub fn cancel(&mut self, id: &str) -> Option<(T, Vec<u8>)> {
        let version = self.version()?;
        let tag = self.pending.remove(id)?;
        let cancel_id = self.ids.next_id();
        Some((tag, frame::encode(&cancel_request(version, &cancel_id, id))))
    }

    /// Closes the protocol: drops every pending request, ignores later
    /// bytes.
    pub fn close(&mut self) {
        self.state = State::Closed;
        self.pending.clear();
    }

    /// Takes bytes the server sent: decodes every frame they complete.
    pub fn handle_bytes(&mut self, mut bytes: &[u8]) {
        while self.state != State::Closed && !bytes.is_empty() {
            match self.decoder.decode(&mut bytes) {
                Ok(Some(frame)) => self.handle_frame(frame),
                Ok(None) => return,
                Err(e) => self.fail(ProtocolError::Framing(e)),
            }
        }
    }

    /// Takes one frame the caller decoded itself (a client that reads
    /// frames for its own checks too).
    pub fn handle_frame(&mut self, frame: Map<String, Value>) {
        match self.state {
            State::Closed => {}
            State::Handshaking => match handshake_reply(&frame) {
                Ok(outcome) => {
                    self.state = match outcome {
                        Handshake::Accepted { version } => State::Ready { version },
                        Handshake::Refused { .. } => State::Closed,
                    };
                    self.events.push_back(Event::Handshake { outcome, frame });
                }
                Err(reason) => self.fail(ProtocolError::Handshake(reason)),
            },
            State::Ready { .. } => {
                let tag = match frame.get("id") {
                    Some(Value::String(id)) => self.pending.remove_entry(id.as_str()),
                    _ => None,
                };
                let Some((id, tag)) = tag else {
                    self.events.push_back(Event::Unsolicited(frame));
                    return;
                };
                match Reply::parse(frame) {
                    Ok(reply) => self.events.push_back(Event::Reply { id, reply, tag }),
                    Err(reason) => self.fail(ProtocolError::Reply(reason)),
                }
            }
        }
    }

    /// The next event, oldest first; `None` once drained.
    pub fn poll_event(&mut self) -> Option<Event<T>> {
        self.events.pop_front()
    }

    fn ready(&self) -> Result<u8, NotReady> {
        self.version().ok_or(NotReady(self.state))
    }

    fn fail(&mut self, error: ProtocolError) {
        self.close();
        self.events.push_back(Event::Error(error));
    }
}
