//! The reconnect back-off of a backend whose service may be away for a
//! while (the OS keyring of the `keyring` backend, the database of the
//! `postgres` backend): after a failed
//! connect, no new attempt before 100 ms, doubling up to 5 s; callers
//! meanwhile fail at once and are told when to come back. Success clears
//! it. Time is passed in, so the state is tested without waiting.

use std::time::{Duration, Instant};

/// First pause after a failed connect.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between connect attempts.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The least `retryAfter` a client is told (the wire counts whole seconds).
pub(crate) const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// How many connects failed in a row, and when the next one is due.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    /// The pause after `failures` failed connects in a row (at least one).
    pub(crate) fn delay(failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(16);
        (FIRST_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
    }

    /// A connect failed at `now`: the pause until the next attempt.
    pub(crate) fn fail(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = Backoff::delay(self.failures);
        self.retry_at = Some(now + delay);
        delay
    }

    /// How long a caller at `now` must still wait; `None` if it may try.
    pub(crate) fn wait(&self, now: Instant) -> Option<Duration> {
        self.retry_at
            .filter(|at| *at > now)
            .map(|at| at.duration_since(now))
    }

    /// A connect succeeded: the next failure starts again at the first pause.
    pub(crate) fn reset(&mut self) {
        *self = Backoff::default();
    }

    /// What a client is told to wait for a pause of `delay` (at least
    /// [`MIN_RETRY_AFTER`]).
    pub(crate) fn retry_after(delay: Duration) -> Duration {
        delay.max(MIN_RETRY_AFTER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_100_ms_to_at_most_5_s() {
        let delays: Vec<u128> = (1..=9).map(|n| Backoff::delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(Backoff::delay(u32::MAX), MAX_BACKOFF);
        assert_eq!(Backoff::delay(0), FIRST_BACKOFF);
    }

    #[test]
    fn a_failure_holds_callers_off_until_due_and_success_clears_it() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert_eq!(b.wait(t0), None, "a new state may try at once");
        assert_eq!(b.fail(t0), Duration::from_millis(100));
        assert_eq!(b.wait(t0), Some(Duration::from_millis(100)));
        let later = t0 + Duration::from_millis(40);
        assert_eq!(b.wait(later), Some(Duration::from_millis(60)));
        assert_eq!(b.wait(t0 + Duration::from_millis(100)), None, "due");
        let t1 = t0 + Duration::from_millis(150);
        assert_eq!(b.fail(t1), Duration::from_millis(200), "doubled");
        assert_eq!(
            b.wait(t1 + Duration::from_millis(199)),
            Some(Duration::from_millis(1))
        );
        b.reset();
        assert_eq!(b, Backoff::default());
        assert_eq!(b.fail(t1), Duration::from_millis(100), "starts over");
    }

    #[test]
    fn clients_are_told_at_least_a_second() {
        assert_eq!(
            Backoff::retry_after(Duration::from_millis(100)),
            MIN_RETRY_AFTER
        );
        assert_eq!(Backoff::retry_after(MAX_BACKOFF), MAX_BACKOFF);
    }
}
