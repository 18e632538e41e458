//! Per-key state of token writes: the engine write locks, refresh jobs in
//! flight, cooldowns, authoritative tokens, proactive renewals, and the
//! serials that key their timers.
//!
//! Timer keys carry a small serial instead of a `provider:bucket` pair;
//! [`Keys`] hands the serial out and maps it back, and it is the only place
//! that arms a key's renewal, retry and write-back timers, so a serial and
//! its key always agree in both directions and a renewal timer never runs
//! without its renewal record.

use std::collections::BTreeMap;

use crate::engine::time::Mono;
use crate::engine::timer::{TimerKey, Timers};
use crate::operations::task::TaskId;
use crate::tokens::token::Token;
use crate::writes::keylock::{Key, KeyLocks};

/// The renewal state of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Renewal {
    /// The expiry (unix ms) the schedule was made for.
    pub(crate) expiry_ms: u64,
    /// Consecutive failed tries.
    pub(crate) tries: u8,
    /// Digest of the access token at scheduling time.
    pub(crate) seen: [u8; 32],
}

/// A refresh job in flight and the requests waiting for it.
#[derive(Debug)]
struct Refreshing {
    job: TaskId,
    waiters: Vec<TaskId>,
}

/// Per-key write state.
///
/// Invariants: `serials[k] = s` exactly when `by_serial[s] = k`, and
/// serials are never reused; a `Renewal(s)` timer is armed only while the
/// key of `s` has a renewal record (removing the record cancels it); at most
/// one refresh job runs per key.
#[derive(Debug, Default)]
pub(crate) struct Keys {
    /// Engine write locks (FIFO per key).
    locks: KeyLocks<TaskId>,
    /// Refresh jobs in flight by key.
    refreshing: BTreeMap<Key, Refreshing>,
    /// Time of the last provider refresh attempt per key.
    cooldowns: BTreeMap<Key, Mono>,
    /// Tokens that are authoritative because their write failed.
    overrides: BTreeMap<Key, Token>,
    /// Proactive renewal per key.
    renewals: BTreeMap<Key, Renewal>,
    serials: BTreeMap<Key, u64>,
    by_serial: BTreeMap<u64, Key>,
    next_serial: u64,
}

impl Keys {
    /// Queues `task` on `key`'s write lock; true when it holds it at once.
    pub(crate) fn lock(&mut self, key: &Key, task: TaskId) -> bool {
        self.locks.acquire(key, task)
    }

    /// Releases `key`'s write lock held by `task`; the next holder, if any.
    pub(crate) fn unlock(&mut self, key: &Key, task: TaskId) -> Option<TaskId> {
        self.locks.release(key, task)
    }

    /// A stable small number for a key (timer keys), allocated on first use.
    fn serial(&mut self, key: &Key) -> u64 {
        if let Some(s) = self.serials.get(key) {
            return *s;
        }
        self.next_serial += 1;
        let s = self.next_serial;
        self.serials.insert(key.clone(), s);
        self.by_serial.insert(s, key.clone());
        s
    }

    /// The key a timer serial stands for.
    pub(crate) fn key_of(&self, serial: u64) -> Option<Key> {
        self.by_serial.get(&serial).cloned()
    }

    /// The authoritative token of `key`, if its write failed.
    pub(crate) fn override_of(&self, key: &Key) -> Option<&Token> {
        self.overrides.get(key)
    }

    /// Makes `token` authoritative for `key` (its write failed) and arms the
    /// write-back retry at `retry_at`.
    pub(crate) fn set_override(
        &mut self,
        key: &Key,
        token: Token,
        retry_at: Mono,
        timers: &mut Timers,
    ) {
        self.overrides.insert(key.clone(), token);
        self.arm_write_back(key, retry_at, timers);
    }

    /// The store holds `key`'s token again: no authoritative copy.
    pub(crate) fn clear_override(&mut self, key: &Key) {
        self.overrides.remove(key);
    }

    /// Re-arms the write-back of `key` while its token is authoritative.
    pub(crate) fn retry_write_back(&mut self, key: &Key, at: Mono, timers: &mut Timers) {
        if self.overrides.contains_key(key) {
            self.arm_write_back(key, at, timers);
        }
    }

    fn arm_write_back(&mut self, key: &Key, at: Mono, timers: &mut Timers) {
        let serial = self.serial(key);
        timers.set(TimerKey::WriteBack(serial), at);
    }

    /// When `key`'s last provider refresh attempt was.
    pub(crate) fn last_attempt(&self, key: &Key) -> Option<Mono> {
        self.cooldowns.get(key).copied()
    }

    /// A provider refresh of `key` was attempted at `now`.
    pub(crate) fn record_attempt(&mut self, key: &Key, now: Mono) {
        self.cooldowns.insert(key.clone(), now);
    }

    /// The refresh job of `key`, while one runs.
    pub(crate) fn refresh_job(&self, key: &Key) -> Option<TaskId> {
        self.refreshing.get(key).map(|r| r.job)
    }

    /// Records `job` as `key`'s refresh (the caller checked none runs).
    pub(crate) fn start_refresh(&mut self, key: &Key, job: TaskId) {
        debug_assert!(!self.refreshing.contains_key(key), "second refresh job");
        self.refreshing.insert(
            key.clone(),
            Refreshing {
                job,
                waiters: Vec::new(),
            },
        );
    }

    /// Makes `task` wait for `key`'s refresh; false when none runs.
    pub(crate) fn wait_refresh(&mut self, key: &Key, task: TaskId) -> bool {
        match self.refreshing.get_mut(key) {
            Some(r) => {
                r.waiters.push(task);
                true
            }
            None => false,
        }
    }

    /// `key`'s refresh ended: its waiters, in arrival order.
    pub(crate) fn end_refresh(&mut self, key: &Key) -> Vec<TaskId> {
        self.refreshing
            .remove(key)
            .map(|r| r.waiters)
            .unwrap_or_default()
    }

    /// The renewal record of `key`.
    pub(crate) fn renewal(&self, key: &Key) -> Option<&Renewal> {
        self.renewals.get(key)
    }

    /// The renewal record of `key`, to update.
    pub(crate) fn renewal_mut(&mut self, key: &Key) -> Option<&mut Renewal> {
        self.renewals.get_mut(key)
    }

    /// Records `key`'s renewal and arms its timer at `at`.
    pub(crate) fn schedule_renewal(
        &mut self,
        key: &Key,
        renewal: Renewal,
        at: Mono,
        timers: &mut Timers,
    ) {
        self.renewals.insert(key.clone(), renewal);
        let serial = self.serial(key);
        timers.set(TimerKey::Renewal(serial), at);
    }

    /// Moves the timer of `key`'s recorded renewal to `at` (nothing when no
    /// renewal is recorded).
    pub(crate) fn rearm_renewal(&mut self, key: &Key, at: Mono, timers: &mut Timers) {
        if self.renewals.contains_key(key) {
            let serial = self.serial(key);
            timers.set(TimerKey::Renewal(serial), at);
        }
    }

    /// Allocates `key`'s serial now (timer tie order follows allocation
    /// order, so callers keep the order in which serials were always taken).
    pub(crate) fn reserve_serial(&mut self, key: &Key) {
        self.serial(key);
    }

    /// Forgets `key`'s renewal and cancels its timer.
    pub(crate) fn forget_renewal(&mut self, key: &Key, timers: &mut Timers) {
        self.renewals.remove(key);
        if let Some(serial) = self.serials.get(key).copied() {
            timers.cancel(TimerKey::Renewal(serial));
        }
    }

    /// When `key`'s recorded renewal fires.
    pub(crate) fn renewal_deadline(&self, key: &Key, timers: &Timers) -> Option<Mono> {
        let serial = self.serials.get(key)?;
        self.renewals.get(key)?;
        timers.get(TimerKey::Renewal(*serial))
    }

    /// Arms the retry of `key`'s refresh at `at`.
    pub(crate) fn arm_refresh_retry(&mut self, key: &Key, at: Mono, timers: &mut Timers) {
        let serial = self.serial(key);
        timers.set(TimerKey::RefreshRetry(serial), at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_map_both_ways_and_renewal_timers_follow_their_record() {
        let (mut k, mut timers) = (Keys::default(), Timers::default());
        let a = Key::new("p", "a");
        let b = Key::new("p", "b");
        k.arm_refresh_retry(&a, Mono(5), &mut timers);
        let renewal = Renewal {
            expiry_ms: 1,
            tries: 0,
            seen: [0; 32],
        };
        k.schedule_renewal(&b, renewal, Mono(7), &mut timers);
        assert_eq!(k.key_of(1), Some(a.clone()));
        assert_eq!(k.key_of(2), Some(b.clone()));
        assert_eq!(k.renewal_deadline(&b, &timers), Some(Mono(7)));
        // No record, no timer.
        k.rearm_renewal(&a, Mono(9), &mut timers);
        assert_eq!(k.renewal_deadline(&a, &timers), None);
        k.forget_renewal(&b, &mut timers);
        assert_eq!(k.renewal_deadline(&b, &timers), None);
        assert_eq!(timers.len(), 1, "only the retry timer is left");
        // A write-back is re-armed only while the token is authoritative.
        k.set_override(&b, Token::default(), Mono(3), &mut timers);
        k.clear_override(&b);
        timers.cancel(TimerKey::WriteBack(2));
        k.retry_write_back(&b, Mono(4), &mut timers);
        assert_eq!(timers.get(TimerKey::WriteBack(2)), None);
    }
}
