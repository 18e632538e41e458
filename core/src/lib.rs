//! # credproxy-core
//!
//! The pure, deterministic engine of credproxy, a host-side credential proxy
//! for sandboxed processes. It speaks the llxprt-code credential proxy wire
//! protocol (length-prefixed JSON frames, versions 1 and 2) and decides every
//! reply, but performs no I/O: no sockets, files, clocks, threads or OS
//! randomness. Time and randomness are inputs; store access is an effect
//! the embedder executes. Same inputs and RNG seed give the same outputs,
//! byte for byte, which is what the property tests and fuzzers rely on.
//!
//! ## Driving the engine
//!
//! The engine follows the `handle_*` / `poll_*` style of quinn-proto and
//! str0m:
//!
//! - inputs: [`Engine::handle_open`], [`Engine::handle_bytes`],
//!   [`Engine::handle_read_closed`], [`Engine::handle_connection_gone`],
//!   [`Engine::handle_pause_reading`], [`Engine::handle_resume_reading`],
//!   [`Engine::handle_effect_result`] and [`Engine::handle_timeout`], each
//!   carrying the current [`Now`];
//! - outputs: [`Engine::poll_output`] yields [`Output`]s from one FIFO —
//!   bytes to send, connections to close, [`Effect`]s to execute, and
//!   [`AuditEvent`]s;
//! - deadlines: [`Engine::poll_timeout`] gives the earliest deadline.
//!
//! **The drain contract.** After every input, call `poll_output` until it
//! returns `None`, executing each output in order. An effect's result may be
//! fed back at any time — even between two `poll_output` calls, which is how
//! a cache hit is answered inline without a thread hop — and results of
//! different effects may come back in any order. After draining, wait until
//! the next input or the deadline from `poll_timeout`, whichever is first.
//! `Output::Close` means: flush what was sent on that connection, then close
//! it; the engine has already forgotten it.
//!
//! A complete driver loop, with an in-memory store:
//!
//! ```
//! use std::collections::BTreeMap;
//! use credproxy_core::{Config, Effect, EffectResult, Engine, Now, Output, Peer, Token, Transport, frame};
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//! use serde_json::json;
//!
//! type Store = BTreeMap<(String, String), Token>;
//!
//! /// Drains the engine, executing effects against `store` inline.
//! fn drain(engine: &mut Engine<ChaCha20Rng>, store: &mut Store, sent: &mut Vec<u8>, now: Now) {
//!     while let Some(output) = engine.poll_output() {
//!         match output {
//!             Output::Send { bytes, .. } => sent.extend(bytes),
//!             Output::Close { .. } | Output::Audit(_) => {}
//!             Output::Effect { id, effect } => {
//!                 let result = match effect {
//!                     Effect::TokenGet { provider, bucket, .. } => {
//!                         EffectResult::Token(store.get(&(provider, bucket)).cloned())
//!                     }
//!                     Effect::TokenPut { provider, bucket, token } => {
//!                         store.insert((provider, bucket), token);
//!                         EffectResult::Done
//!                     }
//!                     // One process: the cross-process lock is always free.
//!                     Effect::LockAcquire { .. } => EffectResult::Locked(true),
//!                     Effect::LockRelease { .. } => EffectResult::Done,
//!                     _ => EffectResult::Failed,
//!                 };
//!                 // Delivered between two polls: the engine continues at once.
//!                 engine.handle_effect_result(id, result, now);
//!             }
//!             _ => {}
//!         }
//!     }
//! }
//!
//! let mut engine = Engine::new(Config::default(), ChaCha20Rng::seed_from_u64(7)).unwrap();
//! let (mut store, mut sent) = (Store::new(), Vec::new());
//! let now = Now::new(0, 1_700_000_000_000);
//! let conn = engine.handle_open(Peer::anonymous(Transport::Embedded), now).unwrap();
//!
//! let mut wire = frame::encode(&json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}}));
//! wire.extend(frame::encode(&json!({"v":2,"id":"1","op":"save_token","payload":{
//!     "provider":"anthropic","token":{"access_token":"at","expiry":1,"token_type":"Bearer"}}})));
//! engine.handle_bytes(conn, &wire, now);
//! drain(&mut engine, &mut store, &mut sent, now);
//! // Requests run concurrently; this one is sent after the save was answered.
//! let get = frame::encode(&json!({"v":2,"id":"2","op":"get_token","payload":{"provider":"anthropic"}}));
//! engine.handle_bytes(conn, &get, now);
//! drain(&mut engine, &mut store, &mut sent, now);
//!
//! let mut dec = frame::FrameDecoder::new(1 << 20);
//! let mut rest = &sent[..];
//! let mut replies = Vec::new();
//! while let Some(f) = dec.decode(&mut rest).unwrap() { replies.push(serde_json::Value::Object(f)); }
//! assert_eq!(replies[0]["ok"], true); // handshake
//! assert_eq!(replies[1], json!({"id":"1","ok":true,"data":{}}));
//! assert_eq!(replies[2]["data"]["access_token"], "at");
//! assert!(engine.poll_timeout().is_none());
//! ```
//!
//! ## Layout
//!
//! Folders follow the SPEC's contents; each module holds one concern.
//!
//! - `engine/` (§2.1): the `Engine`, its inputs and outputs ([`config`],
//!   [`time`], [`effect`], [`audit`], [`secret`]) and the deadlines
//!   ([`timer`]);
//! - `wire/` (§3.1–3.4): [`frame`] (framing), [`frame_peek`] and `oversize`
//!   (oversize frames), [`handshake`], [`request`] (borrowed decoding of
//!   request frames), [`payload`] (schemas), [`reply`] (envelopes and the
//!   size guard), [`error`] (codes);
//! - `conn/` (§3.1, §3.5): [`peer`], the connection table, admission under
//!   pressure, [`rate`] limits;
//! - `operations/` (§3.3–3.6): `dispatch` (envelope checks and `cancel`),
//!   [`op`], `ops` (per-operation policy and validation), the tasks
//!   waiting on effects and `work` (carrying them to their answer);
//! - `oauth/` (§4): [`provider`] specs, discovery, endpoints, [`http`],
//!   [`oauth_reply`];
//! - `sessions/` (§4): [`session`], the session table, `login/` (the
//!   flows), [`pkce`], [`loopback`], storing a login's token;
//! - `tokens/` (§5): [`token`] (sanitize and merge), refresh, cooldown,
//!   [`renewal`];
//! - `writes/` (§5.3): [`keylock`] (write serialization per key), the
//!   per-key state and `locked_write` (the one state machine of writes
//!   under a key's locks).
//!
//! ## Features
//!
//! - `testkit`: the `testkit` module, a `Harness` pairing the engine with
//!   a virtual clock and an in-memory store, for tests of this crate and of
//!   the transports.
//! - `fuzzing` (implies `testkit`): the `fuzzing` module with the bodies of
//!   the cargo-fuzz targets in `fuzz/` — `fuzz_frame_decoder`,
//!   `fuzz_handshake_and_request` and `fuzz_engine`, the last driven by
//!   `arbitrary`-derived `EngineOp` sequences with the engine's invariants
//!   checked after every step. The targets are one-line wrappers, so the
//!   same bodies run under `cargo test`: this crate's own tests enable the
//!   feature and `tests/it/fuzz_corpus.rs` replays every file of
//!   `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` on stable,
//!   without libFuzzer. See `fuzz/README.md` for running the fuzzers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Folders in the order of the SPEC's contents. Every public module keeps
// its path at the crate root (`credproxy_core::frame`, `::provider`, ...).
mod engine;
pub use engine::{audit, config, effect, secret, time, timer};
mod wire;
pub use wire::{error, frame, frame_peek, handshake, payload, reply, request};
mod conn;
pub use conn::{peer, rate};
mod operations;
pub use operations::op;
mod oauth;
pub use oauth::{http, oauth_reply, provider};
mod sessions;
pub use sessions::{loopback, pkce, session};
mod tokens;
pub use tokens::{renewal, token};
mod writes;
pub use writes::keylock;

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

pub use conn::peer::{Peer, Transport};
pub use engine::audit::{AuditEvent, ConnId, Level};
pub use engine::config::{Config, Limits, Policy};
pub use engine::effect::{Effect, EffectId, EffectResult};
pub use engine::engine::{ConnectionRefused, Engine, Output};
pub use engine::secret::Secret;
pub use engine::time::{Mono, Now};
pub use oauth::provider::{FlowType, ProviderSpec};
pub use operations::op::Op;
pub use tokens::token::Token;
pub use wire::error::ErrorCode;
pub use wire::handshake::ConnClass;
