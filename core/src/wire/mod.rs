//! The wire protocol (SPEC §3.1–3.4): bytes to frames, the handshake, request
//! frames to typed payloads, and replies back to bytes.
//!
//! - `frame`: the length-prefixed JSON codec (§3.1);
//! - `frame_peek`, `oversize`: an oversize frame answered from its header
//!   and first bytes (§3.1);
//! - `handshake`: the first frame, version and capability token (§3.2);
//! - `request/`: request frames decoded without building a `Value` (§3.3);
//! - `payload`: the schema of each operation's payload (§3.4);
//! - `reply`: response envelopes and the outbound size guard (§3.1, §3.3);
//! - `error`: the error codes every failure reply carries.

pub mod error;
pub mod frame;
pub mod frame_peek;
pub mod handshake;
pub(crate) mod oversize;
pub mod payload;
pub mod reply;
pub mod request;
