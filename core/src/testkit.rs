//! Test support shared by this crate's tests, the other crates' tests and
//! the fuzz targets (feature `testkit`).
//!
//! [`Harness`] pairs an [`Engine`] with a virtual clock and an in-memory
//! effect executor ([`MemStore`]), in the manner of quinn's test `Pair`:
//! inputs go in, outputs are drained at once, effects are executed inline
//! (or held, so a test can complete them later and in any order), and every
//! byte sent to a client is kept for inspection. Nothing sleeps: time moves
//! only when a test calls [`Harness::advance`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde_json::{Value, json};

use crate::conn::peer::{Peer, Transport};
use crate::engine::audit::{AuditEvent, ConnId};
use crate::engine::config::Config;
use crate::engine::effect::{Effect, EffectId, EffectResult};
use crate::engine::engine::{Engine, Output};
use crate::engine::secret::Secret;
use crate::engine::time::Now;
use crate::oauth::http::{HttpOutcome, HttpRequest, TransportError};
use crate::tokens::token::Token;
use crate::wire::frame::{self, FrameDecoder};

/// Wall-clock start of every harness: 2026-01-01T00:00:00Z.
pub const START_UNIX_MS: u64 = 1_767_225_600_000;

/// An in-memory store that executes effects.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    /// Tokens by (provider, bucket).
    pub tokens: BTreeMap<(String, String), Token>,
    /// API keys by name.
    pub keys: BTreeMap<String, Secret>,
    /// When set, every effect fails.
    pub fail_all: bool,
    /// Keys whose refresh token is marked unusable.
    pub unusable: BTreeSet<(String, String)>,
    /// Cross-process locks held (by this engine).
    pub locks: BTreeSet<(String, String)>,
    /// Locks held by "another process": acquiring them times out.
    pub foreign_locks: BTreeSet<(String, String)>,
    /// When set, token writes fail (reads still work).
    pub fail_writes: bool,
    /// When set, every store effect answers `Unavailable` with this
    /// `retry_after_ms` (a database store that is down).
    pub unavailable: Option<u64>,
    /// Writes of "another process" that land just before this engine's
    /// next store writes (`TokenPut`, `TokenDelete`, `MetaPut`), one each:
    /// the token it stored (`None`: it removed the token), after which
    /// the compare-and-set write is refused with `Conflict`.
    pub sibling_writes: VecDeque<Option<Value>>,
}

impl MemStore {
    /// Stores a token given as JSON (must be an object).
    pub fn put_token(&mut self, provider: &str, bucket: &str, token: Value) {
        let map = token.as_object().cloned().unwrap_or_default();
        self.tokens
            .insert((provider.into(), bucket.into()), Token::from_map(map));
    }

    /// The stored token as JSON.
    #[must_use]
    pub fn token(&self, provider: &str, bucket: &str) -> Option<Value> {
        self.tokens
            .get(&(provider.to_owned(), bucket.to_owned()))
            .map(|t| Value::Object(t.as_map().clone()))
    }

    /// Executes one effect.
    pub fn execute(&mut self, effect: &Effect) -> EffectResult {
        if self.fail_all {
            return EffectResult::Failed;
        }
        let store_effect = !matches!(
            effect,
            Effect::Http(_) | Effect::StartListener { .. } | Effect::StopListener { .. }
        );
        if let Some(retry_after_ms) = self.unavailable.filter(|_| store_effect) {
            return EffectResult::Unavailable { retry_after_ms };
        }
        if let Effect::TokenPut {
            provider, bucket, ..
        }
        | Effect::TokenDelete { provider, bucket }
        | Effect::MetaPut {
            provider, bucket, ..
        } = effect
            && let Some(sibling) = self.sibling_writes.pop_front()
        {
            match sibling {
                Some(token) => self.put_token(provider, bucket, token),
                None => {
                    self.tokens.remove(&(provider.clone(), bucket.clone()));
                }
            }
            return EffectResult::Conflict;
        }
        match effect {
            Effect::TokenPut { .. } if self.fail_writes => EffectResult::Failed,
            Effect::TokenGet {
                provider, bucket, ..
            } => EffectResult::Token(
                self.tokens
                    .get(&(provider.clone(), bucket.clone()))
                    .cloned(),
            ),
            Effect::TokenPut {
                provider,
                bucket,
                token,
            } => {
                self.tokens
                    .insert((provider.clone(), bucket.clone()), token.clone());
                EffectResult::Done
            }
            Effect::TokenDelete { provider, bucket } => {
                self.tokens.remove(&(provider.clone(), bucket.clone()));
                EffectResult::Done
            }
            Effect::ListProviders => {
                EffectResult::Names(self.tokens.keys().map(|(p, _)| p.clone()).collect())
            }
            Effect::ListBuckets { provider } => EffectResult::Names(
                self.tokens
                    .keys()
                    .filter(|(p, _)| p == provider)
                    .map(|(_, b)| b.clone())
                    .collect(),
            ),
            Effect::ApiKeyGet { name } => EffectResult::ApiKey(self.keys.get(name).cloned()),
            Effect::ApiKeyList => EffectResult::Names(self.keys.keys().cloned().collect()),
            Effect::ApiKeyHas { name } => EffectResult::Exists(self.keys.contains_key(name)),
            Effect::MetaGet { provider, bucket } => EffectResult::Meta {
                refresh_unusable: self.unusable.contains(&(provider.clone(), bucket.clone())),
            },
            Effect::MetaPut {
                provider,
                bucket,
                refresh_unusable,
            } => {
                let k = (provider.clone(), bucket.clone());
                if *refresh_unusable {
                    self.unusable.insert(k);
                } else {
                    self.unusable.remove(&k);
                }
                EffectResult::Done
            }
            Effect::LockAcquire {
                provider, bucket, ..
            } => {
                let k = (provider.clone(), bucket.clone());
                if self.foreign_locks.contains(&k) || self.locks.contains(&k) {
                    EffectResult::Locked(false)
                } else {
                    self.locks.insert(k);
                    EffectResult::Locked(true)
                }
            }
            Effect::LockRelease { provider, bucket } => {
                self.locks.remove(&(provider.clone(), bucket.clone()));
                EffectResult::Done
            }
            _ => EffectResult::Failed,
        }
    }
}

/// An engine, a virtual clock and an in-memory host.
pub struct Harness {
    /// The engine under test.
    pub engine: Engine<ChaCha20Rng>,
    /// The in-memory store effects run against.
    pub store: MemStore,
    /// The virtual clock.
    pub now: Now,
    /// Execute effects as soon as they are emitted (default). When false,
    /// effects are queued in `held`.
    pub auto_effects: bool,
    /// Effects waiting for [`Harness::complete`].
    pub held: VecDeque<(EffectId, Effect)>,
    /// Every effect emitted, in order.
    pub effects: Vec<Effect>,
    /// Hold cross-process lock effects too (by default they are executed
    /// at once even when `auto_effects` is off, so tests that order store
    /// effects need not step through locking).
    pub hold_locks: bool,
    /// Every audit event, in order.
    pub audit: Vec<AuditEvent>,
    /// Every byte sent to each connection, in order.
    pub sent: BTreeMap<ConnId, Vec<u8>>,
    /// Connections the engine closed.
    pub closed: BTreeSet<ConnId>,
    /// Every HTTP request the engine asked for, in order.
    pub http_log: Vec<HttpRequest>,
    /// HTTP requests waiting for [`Harness::respond`].
    pub http_pending: VecDeque<(EffectId, HttpRequest)>,
    /// Canned responses by URL, used before holding a request.
    pub http_script: BTreeMap<String, VecDeque<HttpOutcome>>,
    /// Ports with a running loopback listener.
    pub listening: BTreeSet<u16>,
    /// When set, starting a listener fails.
    pub fail_listen: bool,
    /// Loopback replies: (request id, status, body).
    pub loopback_replies: Vec<(u64, u16, &'static str)>,
    decoders: BTreeMap<ConnId, (FrameDecoder, usize)>,
    next_id: u64,
}

impl Harness {
    /// A harness with default configuration and seed 0.
    #[must_use]
    pub fn new() -> Harness {
        Harness::with_config(Config::default(), 0)
    }

    /// A harness with the given configuration and RNG seed.
    ///
    /// # Panics
    /// If the configuration is invalid.
    #[must_use]
    pub fn with_config(config: Config, seed: u64) -> Harness {
        let engine = Engine::new(config, ChaCha20Rng::seed_from_u64(seed)).expect("valid config");
        Harness {
            engine,
            store: MemStore::default(),
            now: Now::new(0, START_UNIX_MS),
            auto_effects: true,
            held: VecDeque::new(),
            effects: Vec::new(),
            hold_locks: false,
            audit: Vec::new(),
            sent: BTreeMap::new(),
            closed: BTreeSet::new(),
            http_log: Vec::new(),
            http_pending: VecDeque::new(),
            http_script: BTreeMap::new(),
            listening: BTreeSet::new(),
            fail_listen: false,
            loopback_replies: Vec::new(),
            decoders: BTreeMap::new(),
            next_id: 0,
        }
    }

    /// Drains every output, executing effects inline when `auto_effects`.
    pub fn drain(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Send { conn, bytes } => self.sent.entry(conn).or_default().extend(bytes),
                Output::Close { conn } => {
                    self.closed.insert(conn);
                }
                Output::Audit(ev) => self.audit.push(ev),
                Output::LoopbackReply {
                    request,
                    status,
                    body,
                } => {
                    self.loopback_replies.push((request, status, body));
                }
                Output::Effect {
                    id,
                    effect: Effect::Http(request),
                } => {
                    self.effects.push(Effect::Http(request.clone()));
                    self.http_log.push(request.clone());
                    let canned = self
                        .http_script
                        .get_mut(&request.url)
                        .and_then(VecDeque::pop_front);
                    match canned {
                        Some(outcome) => self.engine.handle_effect_result(
                            id,
                            EffectResult::Http(outcome),
                            self.now,
                        ),
                        None => self.http_pending.push_back((id, request)),
                    }
                }
                Output::Effect {
                    id,
                    effect: effect @ (Effect::LockAcquire { .. } | Effect::LockRelease { .. }),
                } if !self.hold_locks => {
                    self.effects.push(effect.clone());
                    let result = self.store.execute(&effect);
                    self.engine.handle_effect_result(id, result, self.now);
                }
                Output::Effect {
                    id,
                    effect: Effect::StartListener { port, path },
                } => {
                    self.effects.push(Effect::StartListener { port, path });
                    let ok = !self.fail_listen;
                    if ok {
                        self.listening.insert(port);
                    }
                    self.engine
                        .handle_effect_result(id, EffectResult::Listening(ok), self.now);
                }
                Output::Effect {
                    id,
                    effect: Effect::StopListener { port },
                } => {
                    self.effects.push(Effect::StopListener { port });
                    self.listening.remove(&port);
                    self.engine
                        .handle_effect_result(id, EffectResult::Done, self.now);
                }
                Output::Effect { id, effect } => {
                    self.effects.push(effect.clone());
                    if self.auto_effects {
                        let result = self.store.execute(&effect);
                        self.engine.handle_effect_result(id, result, self.now);
                    } else {
                        self.held.push_back((id, effect));
                    }
                }
            }
        }
    }

    /// Opens a connection from an anonymous embedded peer.
    ///
    /// # Panics
    /// If the engine refuses it.
    pub fn open(&mut self) -> ConnId {
        self.open_peer(Peer::anonymous(Transport::Embedded))
            .expect("connection accepted")
    }

    /// Opens a connection from `peer`; `None` if refused.
    pub fn open_peer(&mut self, peer: Peer) -> Option<ConnId> {
        let conn = self.engine.handle_open(peer, self.now).ok();
        self.drain();
        conn
    }

    /// Opens a connection and completes a v2 handshake (presenting the
    /// configured capability token, if any).
    ///
    /// # Panics
    /// If the handshake fails.
    pub fn connect(&mut self) -> ConnId {
        let conn = self.open();
        let mut payload = json!({"minVersion":1,"maxVersion":2});
        if let Some(t) = &self.engine.config().capability_token {
            payload["capabilityToken"] = json!(t.expose());
        }
        self.send_json(conn, &json!({"v":2,"op":"handshake","payload":payload}));
        let reply = self.take_replies(conn);
        assert_eq!(reply.len(), 1);
        assert_eq!(reply[0]["ok"], json!(true), "handshake failed: {reply:?}");
        conn
    }

    /// Delivers raw bytes.
    pub fn send(&mut self, conn: ConnId, bytes: &[u8]) {
        self.engine.handle_bytes(conn, bytes, self.now);
        self.drain();
    }

    /// Delivers one frame holding `value`.
    pub fn send_json(&mut self, conn: ConnId, value: &Value) {
        self.send(conn, &frame::encode(value));
    }

    /// Sends a request with the given id.
    pub fn request(&mut self, conn: ConnId, id: &str, op: &str, payload: Value) {
        self.send_json(conn, &json!({"v":2,"id":id,"op":op,"payload":payload}));
    }

    /// Sends a request with a fresh id and returns its reply (after
    /// draining); `Value::Null` when no reply came.
    pub fn call(&mut self, conn: ConnId, op: &str, payload: Value) -> Value {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        self.request(conn, &id, op, payload);
        self.take_replies(conn)
            .into_iter()
            .find(|r| r["id"] == json!(id))
            .unwrap_or(Value::Null)
    }

    /// The frames sent to `conn` since the last call, decoded.
    ///
    /// # Panics
    /// If the engine sent something that is not a valid frame.
    pub fn take_replies(&mut self, conn: ConnId) -> Vec<Value> {
        let sent = self.sent.get(&conn).map(Vec::as_slice).unwrap_or_default();
        let (dec, offset) = self.decoders.entry(conn).or_insert_with(|| {
            (
                FrameDecoder::new(crate::engine::config::MAX_FRAME_CEILING + 1024),
                0,
            )
        });
        let mut rest = &sent[*offset..];
        let mut out = Vec::new();
        while let Some(f) = dec.decode(&mut rest).expect("engine sent a valid frame") {
            out.push(Value::Object(f));
        }
        *offset = sent.len();
        out
    }

    /// Advances the virtual clock by `ms` and fires due deadlines.
    pub fn advance(&mut self, ms: u64) {
        self.now = Now::new(self.now.mono.0 + ms, self.now.unix_ms + ms);
        self.engine.handle_timeout(self.now);
        self.drain();
    }

    /// Completes the held effect at `index` against the store.
    ///
    /// # Panics
    /// If there is no such held effect.
    pub fn complete(&mut self, index: usize) {
        let (id, effect) = self.held.remove(index).expect("held effect");
        let result = self.store.execute(&effect);
        self.engine.handle_effect_result(id, result, self.now);
        self.drain();
    }

    /// Completes the held effect at `index` with a given result.
    ///
    /// # Panics
    /// If there is no such held effect.
    pub fn complete_with(&mut self, index: usize, result: EffectResult) {
        let (id, _) = self.held.remove(index).expect("held effect");
        self.engine.handle_effect_result(id, result, self.now);
        self.drain();
    }

    /// Completes held effects, oldest first, until none is left (including
    /// ones emitted meanwhile).
    pub fn complete_all(&mut self) {
        while !self.held.is_empty() {
            self.complete(0);
        }
    }

    /// Queues a canned HTTP response for `url`.
    pub fn script(&mut self, url: &str, status: u16, body: Value) {
        self.http_script
            .entry(url.to_owned())
            .or_default()
            .push_back(HttpOutcome::Response {
                status,
                body: body.to_string().into_bytes(),
            });
    }

    /// Queues a transport failure for `url`.
    pub fn script_failure(&mut self, url: &str, error: TransportError) {
        self.http_script
            .entry(url.to_owned())
            .or_default()
            .push_back(HttpOutcome::Failed(error));
    }

    /// Answers the oldest held HTTP request.
    ///
    /// # Panics
    /// If no HTTP request is held.
    pub fn respond(&mut self, status: u16, body: Value) {
        let (id, _) = self.http_pending.pop_front().expect("a held HTTP request");
        let outcome = HttpOutcome::Response {
            status,
            body: body.to_string().into_bytes(),
        };
        self.engine
            .handle_effect_result(id, EffectResult::Http(outcome), self.now);
        self.drain();
    }

    /// Fails the oldest held HTTP request with a transport error.
    ///
    /// # Panics
    /// If no HTTP request is held.
    pub fn respond_failure(&mut self, error: TransportError) {
        let (id, _) = self.http_pending.pop_front().expect("a held HTTP request");
        self.engine.handle_effect_result(
            id,
            EffectResult::Http(HttpOutcome::Failed(error)),
            self.now,
        );
        self.drain();
    }

    /// Delivers a loopback HTTP request and returns (status, body).
    pub fn loopback(&mut self, port: u16, target: &str) -> (u16, &'static str) {
        let request = self.loopback_replies.len() as u64 + 1;
        self.engine
            .handle_loopback_request(request, port, target, self.now);
        self.drain();
        self.loopback_replies
            .iter()
            .rev()
            .find(|(r, _, _)| *r == request)
            .map(|(_, s, b)| (*s, *b))
            .unwrap_or((0, ""))
    }

    /// Advances the clock to the engine's next deadline (if any, and at
    /// most `max_ms` ahead) and fires it; returns the milliseconds moved.
    pub fn advance_to_next(&mut self, max_ms: u64) -> u64 {
        let Some(at) = self.engine.poll_timeout() else {
            return 0;
        };
        let ms = at.0.saturating_sub(self.now.mono.0).min(max_ms);
        self.advance(ms);
        ms
    }

    /// Whether the engine closed `conn`.
    #[must_use]
    pub fn is_closed(&self, conn: ConnId) -> bool {
        self.closed.contains(&conn)
    }

    /// Everything sent to any client plus every audit event, as text: what
    /// the no-secret-leaves-the-host assertions search.
    #[must_use]
    pub fn observable_text(&self) -> String {
        let mut text = String::new();
        for bytes in self.sent.values() {
            text.push_str(&String::from_utf8_lossy(bytes));
        }
        for ev in &self.audit {
            text.push_str(&serde_json::to_string(ev).unwrap_or_default());
            text.push_str(&format!("{ev:?}"));
        }
        text
    }
}

impl Default for Harness {
    fn default() -> Harness {
        Harness::new()
    }
}
