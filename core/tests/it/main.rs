//! The engine's integration tests, one binary.
//!
//! Each module is a former test binary (`cargo test -p credproxy-core
//! --test it MODULE::` runs one of them); [`common`] holds the shared
//! scenario helpers, compiled once. One binary instead of two dozen links
//! once and lets the harness schedule every test together.
//!
//! The proptest regression files are in `../proptest-regressions/`
//! (`MODULE.txt`): with a `main.rs` here, that is where proptest's default
//! persistence looks for them.

mod common;

mod admission;
mod allow_lists;
mod api_keys;
mod audit;
mod cancel;
mod determinism;
mod dispatch;
mod framing;
mod fuzz_corpus;
mod half_close;
mod handshake;
mod limits;
mod login_browser;
mod login_device;
mod login_pkce;
mod model;
mod oauth;
mod oauth_edges;
mod oversize;
mod properties;
mod rate_limit;
mod refresh;
mod sandbox;
mod store_conflicts;
mod store_unavailable;
mod tokens;
