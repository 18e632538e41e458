//! Wall-clock expiries against the engine's clock, shared by login, refresh
//! and renewal: whether a token is still valid, and the monotonic instant
//! of a wall-clock deadline.

use crate::engine::time::Mono;
use crate::tokens::token::Token;

/// Whether `expiry` (unix seconds) leaves more than `margin_ms`.
pub(crate) fn still_valid(token: &Token, now_unix_ms: u64, margin_ms: u64) -> bool {
    token
        .expiry_secs()
        .is_some_and(|e| e * 1000.0 - now_unix_ms as f64 > margin_ms as f64)
}

/// The engine's monotonic deadline for a wall-clock instant.
pub(crate) fn mono_at(now_mono: Mono, now_unix_ms: u64, at_unix_ms: u64) -> Mono {
    now_mono.plus(at_unix_ms.saturating_sub(now_unix_ms))
}
