//! What the world's clients do to their connections: open one with a
//! first frame, write request and malformed frames, deliver them in cuts
//! (registering each frame with the model as the engine gets it), close.

use serde_json::{Value, json};

use crate::conn::peer::{Peer, Transport};
use crate::wire::frame::{self, HEADER_LEN};
use crate::wire::payload;

use super::super::ops::{Cut, Hello, RawFrame};
use super::super::sentinel::CAP_TOKEN;
use super::World;
use super::client::{Client, Hs, Written};

impl World {
    pub(super) fn open(&mut self, peer: u8, hello: Hello) {
        let p = Peer {
            uid: match peer % 4 {
                0 => None,
                n => Some(1000 + u32::from(n)),
            },
            gid: None,
            pid: None,
            transport: [Transport::Unix, Transport::Stdio, Transport::Embedded]
                [usize::from(peer / 4) % 3],
        };
        let Some(conn) = self.h.open_peer(p) else {
            return;
        };
        self.clients.push(Client::new(conn));
        let ci = self.clients.len() - 1;
        let token = |v: &mut Value| {
            if self.sandbox() {
                v["payload"]["capabilityToken"] = json!(CAP_TOKEN);
            }
        };
        let mut value = match hello {
            Hello::Good | Hello::Late => {
                json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}})
            }
            Hello::V1 => json!({"v":1,"op":"handshake","payload":{}}),
            Hello::Range { min, max } => {
                json!({"v":2,"op":"handshake","payload":{"minVersion":min,"maxVersion":max}})
            }
            Hello::NoToken => json!({"v":2,"op":"handshake","payload":{}}),
            Hello::WrongToken => {
                json!({"v":2,"op":"handshake","payload":{"capabilityToken":"not-the-token"}})
            }
            Hello::NotHandshake => {
                json!({"v":2,"id":"0","op":"get_token","payload":{"provider":"anthropic"}})
            }
        };
        if !matches!(hello, Hello::NoToken | Hello::WrongToken) {
            token(&mut value);
        }
        self.write_json(ci, &value);
        let cut = if hello == Hello::Late {
            Cut::Hold
        } else {
            Cut::All
        };
        self.deliver(ci, cut);
    }

    pub(super) fn write_json(&mut self, ci: usize, value: &Value) {
        let bytes = frame::encode(value);
        let what = if bytes.len() - HEADER_LEN > self.limits().max_frame_bytes {
            // Whether the id is seen depends on how the bytes are cut into
            // reads, so the model allows (not demands) the one answer.
            Written::Oversize {
                key: value.get("id").and_then(payload::id_string),
            }
        } else {
            let key = value
                .get("id")
                .and_then(payload::id_string)
                .unwrap_or_else(|| "unknown".into());
            let op = value
                .get("op")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            Written::Json { key, op }
        };
        self.clients[ci].write(&bytes, what);
    }

    pub(super) fn write_raw(&mut self, ci: usize, raw: RawFrame) {
        let limit = self.limits().max_frame_bytes;
        let (bytes, what) = match raw {
            RawFrame::Junk { len, bytes } => (junk(len, bytes), Written::Opaque),
            RawFrame::Oversize(n) => {
                let len = match n % 4 {
                    0 => limit as u64 + 1,
                    1 => u64::from(u32::MAX),
                    2 => 0x8000_0000,
                    _ => limit as u64 * 2 + u64::from(n),
                };
                let len = u32::try_from(len).unwrap_or(u32::MAX);
                let mut b = len.to_be_bytes().to_vec();
                b.extend_from_slice(b"{\"v\":2}");
                (b, Written::Bad)
            }
            RawFrame::Empty => (frame::encode_payload(b""), Written::Bad),
            RawFrame::InvalidJson => (frame::encode_payload(b"{nope"), Written::Bad),
            RawFrame::NotObject(n) => {
                let p: &[u8] = [&b"[1,2]"[..], b"null", b"\"s\"", b"7"][usize::from(n) % 4];
                (frame::encode_payload(p), Written::Bad)
            }
            RawFrame::BadUtf8 => (frame::encode_payload(b"{\"a\":\"\xff\xfe\"}"), Written::Bad),
            RawFrame::Trailing => (frame::encode_payload(b"{} {}"), Written::Bad),
        };
        self.clients[ci].write(&bytes, what);
    }

    /// Delivers unsent bytes of client `ci`, registering each frame that
    /// completes with the model before the engine sees it.
    pub(super) fn deliver(&mut self, ci: usize, cut: Cut) {
        let pending = self.clients[ci].outbox.len();
        let (n, per_read) = match cut {
            Cut::All => (pending, pending.max(1)),
            Cut::Part(n) => (usize::from(n).min(pending), usize::from(n).max(1)),
            Cut::Hold => return,
            Cut::Trickle(n) => ((usize::from(n) + 1).min(pending), 1),
        };
        let mut budget = 0;
        let c = &mut self.clients[ci];
        let conn = c.conn;
        let bytes: Vec<u8> = c.outbox.drain(..n).collect();
        // A frame is delivered once its last byte is; an oversize one as
        // soon as its header is, since the engine answers and closes then
        // without waiting for (or reading) the body.
        let mut done = 0;
        let mut start = 0;
        for (end, what) in &c.frames {
            let seen =
                *end <= n || (matches!(what, Written::Oversize { .. }) && start + HEADER_LEN <= n);
            if !seen {
                break;
            }
            done += 1;
            start = *end;
        }
        let delivered: Vec<Written> = c.frames.drain(..done).map(|(_, w)| w).collect();
        for (end, _) in &mut c.frames {
            *end -= n;
        }
        let live = !c.closed && !c.read_closed;
        if live && !c.tainted {
            for w in delivered {
                match w {
                    Written::Opaque => c.tainted = true,
                    Written::Bad => c.expect_close = true,
                    Written::Oversize { key } => {
                        c.expect_close = true;
                        c.oversize_key = key.filter(|_| matches!(c.hs, Hs::Sent | Hs::Open));
                    }
                    Written::Json { key, op } => match c.hs {
                        Hs::NotSent => c.hs = Hs::Sent,
                        Hs::Sent | Hs::Open => {
                            *c.owed.entry(key).or_default() += 1;
                            if matches!(
                                op.as_str(),
                                "cancel" | "oauth_cancel" | "oauth_initiate" | "oauth_exchange"
                            ) {
                                budget += 1;
                            }
                        }
                        Hs::Rejected => {}
                    },
                }
                if c.tainted || c.expect_close {
                    break;
                }
            }
        }
        self.detach_budget += budget;
        if bytes.is_empty() {
            self.h.send(conn, &[]);
        }
        for chunk in bytes.chunks(per_read) {
            self.h.send(conn, chunk);
        }
    }

    pub(super) fn mark_closed(&mut self, ci: usize) {
        let c = &mut self.clients[ci];
        if c.closed {
            return;
        }
        c.closed = true;
        c.closed_len = self.h.sent.get(&c.conn).map_or(0, Vec::len);
        self.detach_budget += self.h.engine.config().limits.max_in_flight;
    }
}

/// Junk bytes, with `S` lowered so junk can never spell a secret marker.
pub(super) fn junk(len: u8, bytes: [u8; 8]) -> Vec<u8> {
    bytes[..usize::from(len) % 9]
        .iter()
        .map(|&b| if b == b'S' { b's' } else { b })
        .collect()
}
