//! The deadline structure behind `poll_timeout`.
//!
//! Deadlines live in an ordered set keyed by time, plus an index by timer,
//! so setting, cancelling and finding the earliest deadline are O(log n)
//! instead of a scan of every connection.

use std::collections::{BTreeMap, BTreeSet};

use crate::engine::audit::ConnId;
use crate::engine::time::Mono;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerKey {
    /// The connection has not completed its handshake.
    Handshake(ConnId),
    /// A frame started and has not completed.
    PartialFrame(ConnId),
    /// Sweep expired OAuth sessions.
    SessionSweep,
    /// Poll the device endpoint for the session with this serial.
    DevicePoll(u64),
    /// Retry the refresh of the key with this serial.
    RefreshRetry(u64),
    /// Proactively renew the key with this serial.
    Renewal(u64),
    /// Retry writing the authoritative token of the key with this serial.
    WriteBack(u64),
}

/// All pending deadlines.
#[derive(Debug, Default)]
pub struct Timers {
    by_key: BTreeMap<TimerKey, Mono>,
    queue: BTreeSet<(Mono, TimerKey)>,
}

impl Timers {
    /// Sets (or moves) the deadline of `key`.
    pub fn set(&mut self, key: TimerKey, at: Mono) {
        if let Some(old) = self.by_key.insert(key, at) {
            self.queue.remove(&(old, key));
        }
        self.queue.insert((at, key));
    }

    /// Removes the deadline of `key`, if any.
    pub fn cancel(&mut self, key: TimerKey) {
        if let Some(at) = self.by_key.remove(&key) {
            self.queue.remove(&(at, key));
        }
    }

    /// The deadline of `key`, if set.
    #[must_use]
    pub fn get(&self, key: TimerKey) -> Option<Mono> {
        self.by_key.get(&key).copied()
    }

    /// The earliest deadline.
    #[must_use]
    pub fn next(&self) -> Option<Mono> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Removes and returns one timer whose deadline is at or before `now`.
    pub fn pop_expired(&mut self, now: Mono) -> Option<TimerKey> {
        let &(at, key) = self.queue.first()?;
        if at > now {
            return None;
        }
        self.queue.remove(&(at, key));
        self.by_key.remove(&key);
        Some(key)
    }

    /// Number of pending deadlines.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when no deadline is pending.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_and_moves() {
        let mut t = Timers::default();
        t.set(TimerKey::Handshake(ConnId(1)), Mono(50));
        t.set(TimerKey::PartialFrame(ConnId(2)), Mono(20));
        assert_eq!(t.next(), Some(Mono(20)));
        t.set(TimerKey::PartialFrame(ConnId(2)), Mono(90));
        assert_eq!(t.next(), Some(Mono(50)));
        assert_eq!(t.pop_expired(Mono(49)), None);
        assert_eq!(
            t.pop_expired(Mono(50)),
            Some(TimerKey::Handshake(ConnId(1)))
        );
        t.cancel(TimerKey::PartialFrame(ConnId(2)));
        assert!(t.is_empty());
        assert_eq!(t.next(), None);
    }
}
