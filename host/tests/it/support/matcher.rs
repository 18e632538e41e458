//! The reply matching the test clients share ([`super::Client`],
//! [`super::StdioProc`], the conformance suite's `Conn`): the client
//! library's sans-IO [`ClientProto`], so the handshake and request frames
//! and the pairing of a reply with its request are the library's, not
//! re-implemented per client.
//!
//! Only a well-formed version-2 handshake starts the protocol. Before one,
//! or after a handshake the test wrote itself (a v1 negotiation, a wrong
//! token), a request is built raw as version 2 and its reply's id compared
//! by hand: some tests send exactly those bytes on purpose.

use credproxy_core::Secret;
use credproxy_unix::client::proto::{ClientProto, Event, Handshake, IdGen};
use serde_json::{Map, Value};

use super::{MAX_FRAME, encode, read_frame, request};

/// A connection a [`Matcher`] drives: it writes bytes and reads the next
/// frame (panicking on EOF or an error, as every test client does).
pub trait Wire {
    /// Writes `bytes` (whole frames).
    fn put(&mut self, bytes: &[u8]);
    /// The next frame.
    fn next_frame(&mut self) -> Value;
}

/// The socket of [`super::Client`].
impl Wire for std::os::unix::net::UnixStream {
    fn put(&mut self, bytes: &[u8]) {
        std::io::Write::write_all(self, bytes).expect("write to the proxy");
    }

    fn next_frame(&mut self) -> Value {
        match read_frame(self) {
            Ok(Some(v)) => v,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// One connection's protocol, once its handshake was accepted.
#[derive(Debug, Default)]
pub struct Matcher(Option<ClientProto>);

impl Matcher {
    /// The handshake frame (with `token` when given), starting a new
    /// protocol that [`Matcher::handshake_reply`] completes.
    pub fn handshake(&mut self, token: Option<&str>) -> Vec<u8> {
        let proto = ClientProto::new(IdGen::new(""), MAX_FRAME);
        let bytes = proto.handshake(token.map(Secret::new).as_ref());
        self.0 = Some(proto);
        bytes
    }

    /// Takes the handshake reply: the protocol stays only when it
    /// accepted version 2 (a refusal or anything else ends it).
    pub fn handshake_reply(&mut self, reply: &Value) {
        let Some(proto) = &mut self.0 else { return };
        proto.handle_frame(object(reply));
        let accepted = Handshake::Accepted { version: 2 };
        if !matches!(proto.poll_event(), Some(Event::Handshake { outcome, .. }) if outcome == accepted)
        {
            self.0 = None;
        }
    }

    /// The frame of request `id`: the protocol's (now pending) when there
    /// is one, else a raw version-2 request.
    pub fn request(&mut self, id: &str, op: &str, payload: &Value) -> Vec<u8> {
        match &mut self.0 {
            Some(proto) => proto
                .request_with_id(id, op, payload, ())
                .expect("the protocol is ready"),
            None => encode(&request(id, op, payload.clone())),
        }
    }

    /// Handshakes on `wire` (with `token` when given) and returns the
    /// reply, which readies the protocol when it accepts version 2.
    pub fn handshake_on(&mut self, wire: &mut impl Wire, token: Option<&str>) -> Value {
        wire.put(&self.handshake(token));
        let reply = wire.next_frame();
        self.handshake_reply(&reply);
        reply
    }

    /// Sends request `id` on `wire` and returns its reply (the only one
    /// outstanding), which must answer it.
    pub fn call_on(&mut self, wire: &mut impl Wire, id: &str, op: &str, payload: &Value) -> Value {
        wire.put(&self.request(id, op, payload));
        let reply = wire.next_frame();
        self.reply(id, &reply);
        reply
    }

    /// Asserts that `reply` answers request `id` (the only one
    /// outstanding): the protocol pairs it with the pending request and
    /// checks its envelope; without one, its id is compared.
    pub fn reply(&mut self, id: &str, reply: &Value) {
        let Some(proto) = &mut self.0 else {
            assert_eq!(reply["id"], id, "reply to another request: {reply}");
            return;
        };
        proto.handle_frame(object(reply));
        match proto.poll_event() {
            Some(Event::Reply { id: answered, .. }) if answered == id => {}
            other => panic!("reply to another request than {id}: {reply} ({other:?})"),
        }
    }
}

/// A frame as the object the protocol takes (frames are objects: the
/// readers refuse anything else).
fn object(frame: &Value) -> Map<String, Value> {
    frame
        .as_object()
        .cloned()
        .expect("a frame is a JSON object")
}
