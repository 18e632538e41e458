//! Connections (SPEC §3.1 "Connection policy under pressure", §3.5): who is on
//! the other end, the connection table, who may open one, and how fast it may
//! write.
//!
//! - `peer`: the peer identity a transport reports;
//! - `connection`: per-connection state and the `Connections` table;
//! - `admission`: the connection policy under pressure (budgets, eviction,
//!   the per-process cap);
//! - `rate`: the per-connection token bucket.

pub(crate) mod admission;
pub(crate) mod connection;
pub mod peer;
pub mod rate;
