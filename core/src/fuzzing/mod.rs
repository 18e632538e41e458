//! Fuzz target bodies (feature `fuzzing`).
//!
//! The cargo-fuzz targets in `fuzz/fuzz_targets/` are one-line wrappers
//! around the functions here, and `core/tests/it/fuzz_corpus.rs` replays every
//! checked-in corpus and regression file through the same functions under
//! plain `cargo test`, on stable. Every body is deterministic: the engine
//! runs in a [`Harness`](crate::testkit::Harness) with a fixed RNG seed and
//! a virtual clock, so a crashing input reproduces byte for byte.
//!
//! - [`fuzz_frame_decoder`]: arbitrary bytes in arbitrary chunkings against
//!   a reference decoder; bounded reservations, oversize refused from the
//!   header alone, `decode(encode(x)) == x`.
//! - [`fuzz_handshake_and_request`]: the input as a JSON payload, through
//!   [`handshake::evaluate`](crate::wire::handshake::evaluate), as the first frame
//!   of a connection and as a request frame on an open one: exactly one
//!   reply, or a close.
//! - [`fuzz_engine`]: the whole engine driven by a sequence of
//!   [`EngineOp`]s, with a client-side model checked after every step.
//!
//! Invariant violations are panics, which libFuzzer reports as crashes.
//!
//! One file per concern: `frames.rs` and `request.rs` (the frame decoder,
//! handshake and request targets), `ops.rs` (the engine target's typed
//! input and its decoding), `encode.rs` (its inverse, for seed corpora),
//! `world/` (the engine world model and its invariants), `fixtures.rs`
//! (configurations and store contents), `sentinel.rs` (the secret markers
//! and the leak check), `sessions.rs` (the session and provider-call
//! bookkeeping the model test in `core/tests/it/model.rs` shares) and `oversize_model.rs` (the oversize-frame rule).

mod encode;
mod fixtures;
mod frames;
mod ops;
mod oversize_model;
mod request;
mod sentinel;
pub mod sessions;
mod world;

pub use encode::encode_engine_ops;
pub use frames::fuzz_frame_decoder;
pub use ops::{
    Callback, Code, Completion, Cut, EngineOp, Hello, HttpAnswer, KeySel, RawFrame, Req, Setup,
    StoreMode, Tick, TokenSel, decode_engine_ops,
};
pub use request::{fuzz_handshake_and_request, fuzz_request};
pub use world::{MAX_OPS, fuzz_engine, fuzz_engine_bytes};
