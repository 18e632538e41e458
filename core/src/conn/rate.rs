//! Per-connection token bucket for writes and provider calls (SPEC §3.5).
//!
//! Kept in milli-tokens on the monotonic clock so it is exact and needs no
//! floating point: a refill rate of `r` tokens per second is `r` milli-tokens
//! per millisecond.

use crate::engine::time::Mono;

const MILLI: u64 = 1000;

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    level: u64,
    capacity: u64,
    rate_per_sec: u64,
    last: Mono,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilling at `rate_per_sec`.
    #[must_use]
    pub fn new(rate_per_sec: u32, burst: u32, now: Mono) -> TokenBucket {
        let capacity = u64::from(burst.max(1)) * MILLI;
        TokenBucket {
            level: capacity,
            capacity,
            rate_per_sec: u64::from(rate_per_sec.max(1)),
            last: now,
        }
    }

    /// Takes one token, or says after how many whole seconds (at least 1)
    /// one will be available.
    pub fn try_take(&mut self, now: Mono) -> Result<(), u64> {
        let elapsed = now.since(self.last);
        self.last = self.last.max(now);
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.rate_per_sec))
            .min(self.capacity);
        if self.level >= MILLI {
            self.level -= MILLI;
            return Ok(());
        }
        let wait_ms = (MILLI - self.level).div_ceil(self.rate_per_sec);
        Err(wait_ms.div_ceil(1000).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut b = TokenBucket::new(60, 120, Mono(0));
        for _ in 0..120 {
            assert!(b.try_take(Mono(0)).is_ok());
        }
        assert_eq!(b.try_take(Mono(0)), Err(1));
        // 60 per second: one token every 16.67 ms.
        assert!(b.try_take(Mono(16)).is_err());
        assert!(b.try_take(Mono(17)).is_ok());
        assert!(b.try_take(Mono(1_017)).is_ok());
    }

    #[test]
    fn slow_rate_reports_whole_seconds() {
        let mut b = TokenBucket::new(1, 1, Mono(0));
        assert!(b.try_take(Mono(0)).is_ok());
        assert_eq!(b.try_take(Mono(0)), Err(1));
        let mut b = TokenBucket::new(1, 1, Mono(0));
        b.capacity = MILLI;
        b.rate_per_sec = 1;
        b.level = 0;
        // 1 token/s = 1 milli-token per ms: 1000 ms → 1 s.
        assert_eq!(b.try_take(Mono(0)), Err(1));
    }
}
