//! Tokens and keeping them fresh (SPEC §5).
//!
//! - `token`: the token as stored and served, sanitize and merge (§5.1, §5.2);
//! - `refresh`: the `refresh_token` operation and the one refresh job per
//!   key (§5.3);
//! - `cooldown`: a refresh within the key's cooldown (§5.3);
//! - `reconcile`: a refreshed token whose write the store refused because
//!   another process wrote the key meanwhile (§5.2–5.3);
//! - `renewal`: proactive renewal before expiry (§5.4).

pub(crate) mod cooldown;
pub(crate) mod reconcile;
pub(crate) mod refresh;
pub mod renewal;
pub mod token;
