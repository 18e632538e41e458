//! The model of one client connection: what it wrote and has not delivered
//! yet, where its handshake is, and which replies it is owed.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::engine::audit::ConnId;

use super::super::oversize_model;

/// Where a connection's handshake is, as its client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hs {
    NotSent,
    Sent,
    Open,
    Rejected,
}

/// A frame the client wrote, by what it should cause.
#[derive(Debug, Clone)]
pub(super) enum Written {
    /// A JSON object frame within the limit: the reply key (`id` as the
    /// server renders it, or `unknown`) and the op name.
    Json { key: String, op: String },
    /// Must close the connection (decode error).
    Bad,
    /// Oversize: must close; may first answer `key` with the oversize
    /// `INVALID_REQUEST` (when the id was in the chunk with the header).
    Oversize { key: Option<String> },
    /// Arbitrary bytes: the model stops checking this connection.
    Opaque,
}

pub(super) struct Client {
    pub(super) conn: ConnId,
    /// Written but not delivered.
    pub(super) outbox: Vec<u8>,
    /// Frames in `outbox`, by end offset.
    pub(super) frames: Vec<(usize, Written)>,
    pub(super) hs: Hs,
    /// Replies owed, by key (a multiset: duplicates owe a refusal each).
    pub(super) owed: BTreeMap<String, u32>,
    /// Gone, or closed by the engine.
    pub(super) closed: bool,
    pub(super) closed_len: usize,
    pub(super) read_closed: bool,
    pub(super) tainted: bool,
    pub(super) expect_close: bool,
    /// The id an oversize frame may be answered under, once.
    pub(super) oversize_key: Option<String>,
}

impl Client {
    pub(super) fn new(conn: ConnId) -> Client {
        Client {
            conn,
            outbox: Vec::new(),
            frames: Vec::new(),
            hs: Hs::NotSent,
            owed: BTreeMap::new(),
            closed: false,
            closed_len: 0,
            read_closed: false,
            tainted: false,
            expect_close: false,
            oversize_key: None,
        }
    }

    pub(super) fn write(&mut self, bytes: &[u8], what: Written) {
        self.outbox.extend_from_slice(bytes);
        self.frames.push((self.outbox.len(), what));
    }

    pub(super) fn owed_total(&self) -> u32 {
        self.owed.values().sum()
    }

    pub(super) fn on_reply(&mut self, r: &Value) {
        match self.hs {
            Hs::Sent => {
                assert_eq!(r["op"], json!("handshake"), "first reply: {r}");
                assert!(r.get("id").is_none(), "handshake reply with an id: {r}");
                self.hs = if r["ok"] == json!(true) {
                    Hs::Open
                } else {
                    Hs::Rejected
                };
            }
            Hs::Open => {
                let id = r["id"]
                    .as_str()
                    .unwrap_or_else(|| panic!("reply without a string id: {r}"));
                assert!(r["ok"].is_boolean(), "reply without ok: {r}");
                if oversize_model::take_answer(&mut self.oversize_key, id, r) {
                    return;
                }
                match self.owed.get_mut(id) {
                    Some(n) => {
                        *n -= 1;
                        if *n == 0 {
                            self.owed.remove(id);
                        }
                    }
                    None => panic!("reply for {id}, which is not in flight: {r}"),
                }
            }
            Hs::NotSent | Hs::Rejected => panic!("unexpected frame: {r}"),
        }
    }
}
