//! The engine (SPEC §2.1): the `Engine` that owns every part, what goes in and
//! comes out of it, and the bookkeeping every step reads.
//!
//! - `engine`: `Engine`, its `handle_*` inputs, `poll_output` /
//!   `poll_timeout` and the output queue;
//! - `config`: limits, timings and access policy;
//! - `time`: `Now` (monotonic and wall-clock), the only time the core sees;
//! - `timer`: the deadline structure behind `poll_timeout`;
//! - `effect`: the I/O the engine asks its host to perform, and the results;
//! - `audit`: audit events, never carrying a secret;
//! - `secret`: a string whose `Debug` is redacted.
//!
//! The parts live with what they serve: `Connections` in `conn/`, `Tasks`
//! in `operations/`, `Sessions` in `sessions/`, `Keys` in `writes/`,
//! `OauthEndpoints` in `oauth/`.

pub mod audit;
pub mod config;
pub mod effect;
// The file keeps the name every document gives it: `engine.rs`.
#[allow(clippy::module_inception)]
pub(crate) mod engine;
#[cfg(test)]
mod result_kind_tests;
pub mod secret;
pub mod time;
pub mod timer;
