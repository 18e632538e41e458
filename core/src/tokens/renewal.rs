//! Proactive renewal (SPEC §5.4).
//!
//! When a token with a refresh token is served, stored or refreshed, its
//! renewal is scheduled once per (key, expiry) at
//! `expiry − lead − jitter`, with
//! `lead = min(max(300 s, 10 % of the remaining lifetime), remaining / 2)`
//! and jitter uniform in `[0, min(30 s, lead / 2))` from the RNG, never
//! earlier than the key's last attempt + the cooldown. When it fires, the
//! refresh job re-reads the token fresh (another process may have renewed
//! it) and refreshes through the same coordinator as `refresh_token`.
//! Success reschedules; a transient failure backs off (30 s, doubling,
//! capped at 30 min, at most 10 tries); an auth failure stops it.

use rand_core::CryptoRng;

use crate::engine::engine::Engine;
use crate::sessions::login::mono_at;
use crate::tokens::refresh::access_digest;
use crate::tokens::token::Token;
use crate::wire::error::ErrorCode;
use crate::wire::reply::Failure;
use crate::writes::keylock::Key;
use crate::writes::keys::Renewal;

/// When to renew a token expiring at `expiry_ms` (unix ms), seen at
/// `now_ms`: `None` when it cannot be renewed before it expires.
/// `random` is a uniform random number for the jitter; `earliest` is the
/// first allowed instant (last attempt + cooldown).
#[must_use]
pub fn fire_at(
    now_ms: u64,
    expiry_ms: u64,
    lead_min_ms: u64,
    jitter_max_ms: u64,
    random: u64,
    earliest_ms: u64,
) -> Option<u64> {
    if expiry_ms <= now_ms {
        return None;
    }
    let remaining = expiry_ms - now_ms;
    let lead = lead_min_ms.max(remaining / 10).min(remaining / 2);
    let jitter_bound = jitter_max_ms.min(lead / 2);
    let jitter = if jitter_bound == 0 {
        0
    } else {
        random % jitter_bound
    };
    let fire = (expiry_ms - lead - jitter).max(earliest_ms).max(now_ms);
    (fire < expiry_ms).then_some(fire)
}

impl<R: CryptoRng> Engine<R> {
    /// Whether `token` calls for a (new) renewal schedule: it can be
    /// refreshed and its expiry is not the one already scheduled. Cheap, so
    /// the `get_token` hot path can ask it on every served token.
    pub(crate) fn renewal_wanted(&self, key: &Key, token: &Token) -> bool {
        let scheduled = self.keys.renewal(key).map(|r| r.expiry_ms);
        let expiry = token.expiry_secs().filter(|e| e.is_finite() && *e > 0.0);
        match (expiry, token.refresh_token()) {
            (Some(e), Some(_)) => scheduled != Some((e * 1000.0) as u64),
            _ => scheduled.is_some(),
        }
    }

    /// Schedules the renewal of `key` for this token's expiry, once.
    /// A token without a refresh token or a usable expiry cancels the
    /// schedule made for an earlier token of the key.
    pub(crate) fn schedule_renewal(&mut self, key: &Key, token: &Token) {
        let expiry = token.expiry_secs().filter(|e| e.is_finite() && *e > 0.0);
        let (Some(expiry), Some(_)) = (expiry, token.refresh_token()) else {
            return self.renewal_forget(key);
        };
        let expiry_ms = (expiry * 1000.0) as u64;
        if self
            .keys
            .renewal(key)
            .is_some_and(|r| r.expiry_ms == expiry_ms)
        {
            return;
        }
        let tries = self.keys.renewal(key).map_or(0, |r| r.tries);
        let limits = &self.config.limits;
        let earliest_ms = self.keys.last_attempt(key).map_or(0, |last| {
            let until = last.plus(limits.refresh_cooldown_ms);
            self.now.unix_ms + until.since(self.now.mono)
        });
        let random = self.rng.next_u64();
        self.keys.reserve_serial(key);
        let limits = &self.config.limits;
        let Some(at) = fire_at(
            self.now.unix_ms,
            expiry_ms,
            limits.renewal_lead_ms,
            limits.renewal_jitter_ms,
            random,
            earliest_ms,
        ) else {
            return self.renewal_forget(key);
        };
        let renewal = Renewal {
            expiry_ms,
            tries,
            seen: access_digest(token),
        };
        let when = mono_at(self.now.mono, self.now.unix_ms, at);
        self.keys
            .schedule_renewal(key, renewal, when, &mut self.timers);
    }

    /// A renewal is due: refresh through the coordinator (joining the
    /// key's running refresh, if any), unless an attempt since it was
    /// scheduled put the key in its cooldown; then wait for the cooldown's
    /// end, or give up if that is past the expiry.
    pub(crate) fn renewal_due(&mut self, serial: u64) {
        let Some(key) = self.keys.key_of(serial) else {
            return;
        };
        let Some((seen, expiry_ms)) = self.keys.renewal(&key).map(|r| (r.seen, r.expiry_ms)) else {
            return;
        };
        // A refresh of the key is running (a `refresh_token` request's):
        // single flight, so the renewal rides on it instead of starting a
        // second one, and its outcome reschedules, backs off or stops the
        // renewal as a renewal's own would. Without this the fired timer
        // was simply spent, and a failure of that refresh left the key
        // with no renewal at all.
        if self.refresh_carries_renewal(&key) {
            return;
        }
        if let Some(last) = self.keys.last_attempt(&key) {
            let until = last.plus(self.config.limits.refresh_cooldown_ms);
            if until > self.now.mono {
                let until_unix = self.now.unix_ms + until.since(self.now.mono);
                if until_unix >= expiry_ms {
                    return self.renewal_forget(&key);
                }
                self.keys.rearm_renewal(&key, until, &mut self.timers);
                return;
            }
        }
        self.start_refresh_job(&key, Some(seen), true);
    }

    /// A renewal's refresh failed: back off on transient failures, stop on
    /// the others.
    pub(crate) fn renewal_failed(&mut self, key: &Key, f: &Failure) {
        let transient =
            f.code == ErrorCode::RefreshFailed && f.message.starts_with("Provider unreachable");
        let limits = &self.config.limits;
        let (base, cap, max) = (
            limits.renewal_backoff_ms,
            limits.renewal_backoff_cap_ms,
            limits.renewal_max_tries,
        );
        let Some(r) = self.keys.renewal_mut(key) else {
            return;
        };
        r.tries = r.tries.saturating_add(1);
        if !transient || r.tries >= max {
            return self.renewal_forget(key);
        }
        let wait = base.saturating_mul(1u64 << (r.tries - 1).min(20)).min(cap);
        let at = self.now.mono.plus(wait);
        self.keys.rearm_renewal(key, at, &mut self.timers);
    }

    /// Cancels the renewal of `key`.
    pub(crate) fn renewal_forget(&mut self, key: &Key) {
        self.keys.forget_renewal(key, &mut self.timers);
    }

    /// Whether a renewal is scheduled for `key`, and when (monotonic ms).
    #[must_use]
    pub fn renewal_scheduled(&self, provider: &str, bucket: &str) -> Option<u64> {
        let key = Key::new(provider, bucket);
        self.keys.renewal_deadline(&key, &self.timers).map(|m| m.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fires_before_expiry_and_not_in_the_past(
            now in 0u64..1u64 << 50,
            life in 1u64..1u64 << 36,
            random in any::<u64>(),
            earliest_off in 0u64..1u64 << 36,
        ) {
            let expiry = now + life;
            let earliest = now + earliest_off;
            if let Some(t) = fire_at(now, expiry, 300_000, 30_000, random, earliest) {
                prop_assert!(now <= t && t < expiry);
                // Strictly later: a renewal rescheduled when it ends (same
                // expiry included) never fires again at the same instant.
                prop_assert!(now < t);
                prop_assert!(t >= earliest);
            } else {
                prop_assert!(earliest >= expiry || life <= 1);
            }
        }
    }

    #[test]
    fn lead_rules() {
        // One hour left: lead 360 s (10 %), jitter < 30 s.
        let t = fire_at(0, 3_600_000, 300_000, 30_000, 0, 0).unwrap();
        assert_eq!(t, 3_600_000 - 360_000);
        // Ten minutes left: lead 300 s.
        assert_eq!(fire_at(0, 600_000, 300_000, 30_000, 0, 0), Some(300_000));
        // Two minutes left: lead capped at half.
        assert_eq!(fire_at(0, 120_000, 300_000, 30_000, 0, 0), Some(60_000));
        // Expired: nothing.
        assert_eq!(fire_at(10, 10, 300_000, 30_000, 0, 0), None);
        // Cooldown pushes past expiry: nothing.
        assert_eq!(fire_at(0, 120_000, 300_000, 30_000, 0, 130_000), None);
        // Jitter stays below the bound.
        for r in [1u64, 29_999, 30_000, u64::MAX] {
            let t = fire_at(0, 3_600_000, 300_000, 30_000, r, 0).unwrap();
            assert!(t > 3_600_000 - 360_000 - 30_000 && t <= 3_600_000 - 360_000);
        }
    }
}
