//! The engine's own notion of time.
//!
//! The core never reads a clock: every input carries a [`Now`], which pairs a
//! monotonic millisecond count (deadlines, cooldowns, rate limits) with a
//! wall-clock unix millisecond count (token expiry). Keeping both as plain
//! integers makes time trivially constructible in tests, property tests and
//! fuzzers, and lets a virtual clock jump forward instantly.

/// A point on the monotonic clock, in milliseconds since an arbitrary origin
/// chosen by the embedder (process start, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mono(pub u64);

impl Mono {
    /// This instant plus `ms` milliseconds, saturating instead of overflowing.
    #[must_use]
    pub fn plus(self, ms: u64) -> Mono {
        Mono(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    #[must_use]
    pub fn since(self, earlier: Mono) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// The time carried by every input: monotonic and wall-clock milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Now {
    /// Monotonic milliseconds, for deadlines. The engine clamps it so that it
    /// never goes backwards even if an embedder passes a smaller value.
    pub mono: Mono,
    /// Milliseconds since the unix epoch, for token expiry and `lastUsed`.
    pub unix_ms: u64,
}

impl Now {
    /// A time with both clocks given in milliseconds.
    #[must_use]
    pub fn new(mono_ms: u64, unix_ms: u64) -> Now {
        Now {
            mono: Mono(mono_ms),
            unix_ms,
        }
    }

    /// Wall-clock seconds since the unix epoch (token `expiry` is in seconds).
    #[must_use]
    pub fn unix_secs(&self) -> u64 {
        self.unix_ms / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mono_arithmetic_saturates() {
        assert_eq!(Mono(u64::MAX - 1).plus(10), Mono(u64::MAX));
        assert_eq!(Mono(5).since(Mono(9)), 0);
        assert_eq!(Mono(9).since(Mono(5)), 4);
    }

    #[test]
    fn unix_secs_truncates() {
        assert_eq!(Now::new(0, 1_999).unix_secs(), 1);
    }
}
