//! The engine target's world: a [`Harness`] running the whole engine, the
//! clients connected to it with a model of what each is owed, and what was
//! seen so far. [`fuzz_engine`] applies one [`EngineOp`] at a time and
//! checks every invariant after each.
//!
//! By what the world simulates: `client.rs` (one client's model),
//! `connections.rs` (clients writing and delivering frames), `requests.rs`
//! (the request frames), `effects.rs` (store effects, a foreign process,
//! the browser, the clock), `http.rs` (provider answers) and `checks.rs`
//! (the invariants and the final settling).

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::audit::ConnId;
use crate::engine::config::Limits;
use crate::testkit::Harness;

use super::fixtures::{SEED, engine_config, seed_store};
use super::ops::{EngineOp, Setup, decode_engine_ops};
use super::sessions::SessionWatch;
use client::Client;

mod checks;
mod client;
mod connections;
mod effects;
mod http;
mod requests;

/// Longest op sequence [`fuzz_engine`] runs (longer inputs are truncated).
pub const MAX_OPS: usize = 256;

/// The fuzzed world: the harness, the clients and what was seen.
struct World {
    h: Harness,
    clients: Vec<Client>,
    /// (session id, state) from replies, oldest first.
    sessions: Vec<(String, String)>,
    /// What was seen of the engine's sessions (shared with the model test).
    watch: SessionWatch,
    /// Upper bound of tasks that may outlive their request (detached
    /// writes, logins, callbacks).
    detach_budget: usize,
    /// Verifiers seen in provider calls.
    verifiers: BTreeSet<String>,
    http_seen: usize,
    audit_seen: usize,
    sent_seen: BTreeMap<ConnId, usize>,
    counter: u64,
}

impl World {
    fn new(setup: Setup) -> World {
        let mut h = Harness::with_config(engine_config(setup), SEED);
        h.auto_effects = false;
        seed_store(&mut h);
        World {
            h,
            clients: Vec::new(),
            sessions: Vec::new(),
            watch: SessionWatch::default(),
            detach_budget: 0,
            verifiers: BTreeSet::new(),
            http_seen: 0,
            audit_seen: 0,
            sent_seen: BTreeMap::new(),
            counter: 0,
        }
    }

    fn limits(&self) -> &Limits {
        &self.h.engine.config().limits
    }

    fn sandbox(&self) -> bool {
        self.h.engine.config().capability_token.is_some()
    }

    fn client(&self, conn: u8) -> Option<usize> {
        (!self.clients.is_empty()).then(|| usize::from(conn) % self.clients.len())
    }

    fn session(&self, i: u8) -> (String, String) {
        let i = usize::from(i) % (self.sessions.len() + 1);
        self.sessions
            .get(i)
            .cloned()
            .unwrap_or_else(|| ("no-such-session".into(), "no-state".into()))
    }

    fn next(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    fn apply(&mut self, op: &EngineOp) {
        match *op {
            EngineOp::Configure(_) => {}
            EngineOp::Open { peer, hello } => self.open(peer, hello),
            EngineOp::Request { conn, id, req, cut } => {
                if let Some(ci) = self.client(conn) {
                    let value = self.request_value(id, req);
                    self.write_json(ci, &value);
                    self.deliver(ci, cut);
                }
            }
            EngineOp::Flush { conn, cut } => {
                if let Some(ci) = self.client(conn) {
                    self.deliver(ci, cut);
                }
            }
            EngineOp::Raw { conn, raw, cut } => {
                if let Some(ci) = self.client(conn) {
                    self.write_raw(ci, raw);
                    self.deliver(ci, cut);
                }
            }
            EngineOp::Gone { conn } => {
                if let Some(ci) = self.client(conn) {
                    let c = self.clients[ci].conn;
                    self.h.engine.handle_connection_gone(c, self.h.now);
                    self.h.drain();
                    self.mark_closed(ci);
                }
            }
            EngineOp::HalfClose { conn } => {
                if let Some(ci) = self.client(conn) {
                    let c = self.clients[ci].conn;
                    self.clients[ci].read_closed = true;
                    self.h.engine.handle_read_closed(c, self.h.now);
                    self.h.drain();
                }
            }
            EngineOp::Pause { conn } => {
                if let Some(ci) = self.client(conn) {
                    let c = self.clients[ci].conn;
                    self.h.engine.handle_pause_reading(c, self.h.now);
                    self.h.drain();
                }
            }
            EngineOp::Resume { conn } => {
                if let Some(ci) = self.client(conn) {
                    let c = self.clients[ci].conn;
                    self.h.engine.handle_resume_reading(c, self.h.now);
                    self.h.drain();
                }
            }
            EngineOp::Complete { index, how } => self.complete(index, how),
            EngineOp::CompleteAll => self.h.complete_all(),
            EngineOp::Respond { index, answer } => self.respond(index, answer),
            EngineOp::Store(m) => {
                self.h.store.fail_writes = m.fail_writes;
                self.h.store.fail_all = m.fail_all;
                self.h.store.unavailable = m.unavailable.then_some(1_500);
                let key = ("anthropic".to_owned(), "default".to_owned());
                if m.foreign_lock {
                    self.h.store.foreign_locks.insert(key.clone());
                } else {
                    self.h.store.foreign_locks.remove(&key);
                }
                if m.unusable {
                    self.h.store.unusable.insert(key);
                } else {
                    self.h.store.unusable.remove(&key);
                }
            }
            EngineOp::AutoEffects(on) => self.h.auto_effects = on,
            EngineOp::FailListen(on) => self.h.fail_listen = on,
            EngineOp::Loopback { session, kind } => self.loopback(session, kind),
            EngineOp::Tick(t) => self.tick(t),
            EngineOp::Plant {
                key,
                expiry,
                refresh,
            } => self.plant(key, expiry, refresh),
        }
    }
}

/// [`decode_engine_ops`] then [`fuzz_engine`]: the engine target on raw bytes.
pub fn fuzz_engine_bytes(data: &[u8]) {
    if let Some(ops) = decode_engine_ops(data) {
        fuzz_engine(&ops);
    }
}

/// Drives the whole engine with `ops` (at most [`MAX_OPS`]), checking after
/// every step:
///
/// - no panic, and every byte sent to a client decodes as frames;
/// - exactly one reply per accepted request: each reply answers an id the
///   client has in flight (a client-side multiset, as in the property
///   tests' `Model`), the first reply of a connection is its handshake
///   reply, nothing is sent after a close, a frame that cannot decode and a
///   refused handshake close the connection, and a half-closed connection
///   closes only once everything was answered;
/// - no refresh token, device code, server verifier, capability token
///   (`SECRET-…` sentinels) or PKCE verifier (collected from the provider
///   calls) in any byte sent to a client or any audit event;
/// - bounded buffers: connections and sessions within their limits, pending
///   tasks within open connections × in-flight cap plus detached work,
///   sessions and per-key background jobs;
/// - sessions never move backwards and an ended session never returns.
///
/// At the end every held effect is completed, every provider call refused
/// and the clock run until no deadline is left: then nothing is owed to an
/// open connection, every connection that never handshook is closed, and no
/// task is left.
pub fn fuzz_engine(ops: &[EngineOp]) {
    let ops = &ops[..ops.len().min(MAX_OPS)];
    let setup = match ops.first() {
        Some(EngineOp::Configure(s)) => *s,
        _ => Setup::default(),
    };
    let mut world = World::new(setup);
    for op in ops {
        world.apply(op);
        world.check();
    }
    world.settle();
}
