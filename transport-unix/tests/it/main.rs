//! The Unix transport's integration tests, one binary (the signal test is
//! the other: `../signal.rs`).
//!
//! Each module is a former test binary (`cargo test -p credproxy-unix
//! --test it MODULE::` runs one of them); [`common`] holds the shared
//! helpers, compiled once.

mod common;

mod accept;
mod client;
mod dirs;
mod instance;
mod stale;
