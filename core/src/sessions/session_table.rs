//! The table of live OAuth sessions, their serials, their device-poll
//! deadlines and the tombstones of expired ones.
//!
//! A session is found by id; its device-poll timer is keyed by its serial.
//! Both maps and the timer go through [`Sessions`], so a session cannot be
//! removed leaving its serial or its timer behind, and a poll cannot be
//! armed for a session that is not live.

use std::collections::BTreeMap;

use crate::engine::time::Mono;
use crate::engine::timer::{TimerKey, Timers};
use crate::sessions::session::{Owner, Session};

/// Live sessions by id, with their serials and tombstones.
///
/// Invariants: `by_serial[s] = id` exactly when `live[id].serial = s`; a
/// `DevicePoll(s)` timer is armed only while `by_serial` holds `s` (it is
/// cancelled when the session goes); serials are never reused.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    live: BTreeMap<String, Session>,
    by_serial: BTreeMap<u64, String>,
    /// Sessions that expired, reported once as `SESSION_EXPIRED`.
    expired: BTreeMap<String, (Owner, Mono)>,
    next_serial: u64,
}

impl Sessions {
    /// Number of live sessions.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// A live session.
    pub(crate) fn get(&self, sid: &str) -> Option<&Session> {
        self.live.get(sid)
    }

    /// A live session, to update.
    pub(crate) fn get_mut(&mut self, sid: &str) -> Option<&mut Session> {
        self.live.get_mut(sid)
    }

    /// The live sessions by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Session)> {
        self.live.iter()
    }

    /// The live sessions.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Session> {
        self.live.values()
    }

    /// The id of the live session with this serial.
    pub(crate) fn by_serial(&self, serial: u64) -> Option<&str> {
        self.by_serial.get(&serial).map(String::as_str)
    }

    /// Adds a session under `sid`; `build` gets the session's new serial.
    pub(crate) fn insert(&mut self, sid: String, build: impl FnOnce(u64) -> Session) {
        self.next_serial += 1;
        let serial = self.next_serial;
        let session = build(serial);
        debug_assert_eq!(session.serial, serial, "session built with another serial");
        self.by_serial.insert(serial, sid.clone());
        self.live.insert(sid, session);
    }

    /// Removes a live session with its serial and its poll timer; it is
    /// returned ended.
    pub(crate) fn remove(&mut self, sid: &str, timers: &mut Timers) -> Option<Session> {
        let mut s = self.live.remove(sid)?;
        s.end();
        self.by_serial.remove(&s.serial);
        timers.cancel(TimerKey::DevicePoll(s.serial));
        Some(s)
    }

    /// Removes an expired session like [`Sessions::remove`], leaving a
    /// tombstone so its owner is told `SESSION_EXPIRED` once.
    pub(crate) fn expire(&mut self, sid: &str, now: Mono, timers: &mut Timers) -> Option<Session> {
        let owner = self.live.get(sid)?.owner;
        self.expired.insert(sid.to_owned(), (owner, now));
        self.remove(sid, timers)
    }

    /// Arms (or moves) the device poll of a live session.
    pub(crate) fn arm_poll(&self, sid: &str, at: Mono, timers: &mut Timers) {
        if let Some(s) = self.live.get(sid) {
            timers.set(TimerKey::DevicePoll(s.serial), at);
        }
    }

    /// Cancels the device poll of a live session.
    pub(crate) fn disarm_poll(&self, sid: &str, timers: &mut Timers) {
        if let Some(s) = self.live.get(sid) {
            timers.cancel(TimerKey::DevicePoll(s.serial));
        }
    }

    /// The ids of the live sessions expired at `now`.
    pub(crate) fn expired_at(&self, now: Mono) -> Vec<String> {
        self.live
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Removes the tombstone of `sid` if `owner` owned it; true when it did.
    pub(crate) fn take_tombstone(&mut self, sid: &str, owner: Owner) -> bool {
        if self.expired.get(sid).is_some_and(|(o, _)| *o == owner) {
            self.expired.remove(sid);
            return true;
        }
        false
    }

    /// Drops tombstones older than `ttl_ms`.
    pub(crate) fn drop_old_tombstones(&mut self, now: Mono, ttl_ms: u64) {
        self.expired.retain(|_, (_, at)| now.since(*at) < ttl_ms);
    }

    /// Drops the oldest tombstones beyond `max`.
    pub(crate) fn cap_tombstones(&mut self, max: usize) {
        while self.expired.len() > max {
            let oldest = self
                .expired
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.expired.remove(&k);
            }
        }
    }

    /// Whether anything is left for the sweep: live sessions or tombstones.
    pub(crate) fn needs_sweep(&self) -> bool {
        !self.live.is_empty() || !self.expired.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::audit::ConnId;
    use crate::engine::secret::Secret;
    use crate::oauth::provider::FlowType;
    use crate::sessions::session::Step;
    use crate::wire::handshake::ConnClass;

    fn owner() -> Owner {
        Owner {
            uid: Some(1),
            class: ConnClass::Host,
        }
    }

    fn add(s: &mut Sessions, sid: &str) {
        s.insert(sid.into(), |serial| {
            Session::new(
                serial,
                "p".into(),
                "default".into(),
                FlowType::DeviceCode,
                (owner(), ConnId(1)),
                Mono(100),
                Secret::new("v"),
                Secret::new("s"),
                Step::Authorizing,
            )
        });
    }

    #[test]
    fn a_session_goes_with_its_serial_and_poll_timer() {
        let (mut s, mut timers) = (Sessions::default(), Timers::default());
        add(&mut s, "a");
        add(&mut s, "b");
        let serial = s.get("a").unwrap().serial;
        assert_eq!(s.by_serial(serial), Some("a"));
        s.arm_poll("a", Mono(50), &mut timers);
        s.arm_poll("gone", Mono(10), &mut timers);
        assert_eq!(timers.len(), 1, "no poll for a session that is not live");
        assert!(s.remove("a", &mut timers).is_some());
        assert!(timers.is_empty());
        assert_eq!(s.by_serial(serial), None);
        s.arm_poll("b", Mono(60), &mut timers);
        assert!(s.expire("b", Mono(100), &mut timers).is_some());
        assert!(timers.is_empty());
        assert!(!s.take_tombstone(
            "b",
            Owner {
                uid: Some(2),
                ..owner()
            }
        ));
        assert!(s.take_tombstone("b", owner()));
        assert!(!s.needs_sweep());
    }

    #[test]
    fn disarming_cancels_only_that_sessions_poll() {
        let (mut s, mut timers) = (Sessions::default(), Timers::default());
        add(&mut s, "a");
        add(&mut s, "b");
        s.arm_poll("a", Mono(50), &mut timers);
        s.arm_poll("b", Mono(60), &mut timers);
        s.disarm_poll("a", &mut timers);
        s.disarm_poll("gone", &mut timers);
        assert_eq!(timers.len(), 1);
        let b = s.get("b").unwrap().serial;
        assert_eq!(timers.get(TimerKey::DevicePoll(b)), Some(Mono(60)));
    }

    /// Tombstones of sessions expired at `ats`, named `t<at>`.
    fn tombstones(ats: &[u64]) -> Sessions {
        let (mut s, mut timers) = (Sessions::default(), Timers::default());
        for at in ats {
            let sid = format!("t{at}");
            add(&mut s, &sid);
            assert!(s.expire(&sid, Mono(*at), &mut timers).is_some());
        }
        s
    }

    fn names(s: &Sessions) -> Vec<&str> {
        s.expired.keys().map(String::as_str).collect()
    }

    #[test]
    fn tombstones_are_kept_for_less_than_their_ttl() {
        let mut s = tombstones(&[100, 150, 199]);
        s.drop_old_tombstones(Mono(200), 50);
        // Ages 100, 50, 1: only the one younger than 50 ms stays.
        assert_eq!(names(&s), ["t199"]);
        s.drop_old_tombstones(Mono(248), 50);
        assert_eq!(names(&s), ["t199"], "49 ms old");
        s.drop_old_tombstones(Mono(249), 50);
        assert!(names(&s).is_empty(), "50 ms old");
    }

    #[test]
    fn beyond_the_cap_the_oldest_tombstones_go() {
        let mut s = tombstones(&[30, 10, 50, 20, 40]);
        s.cap_tombstones(5);
        assert_eq!(s.expired.len(), 5, "at the cap nothing goes");
        s.cap_tombstones(3);
        assert_eq!(names(&s), ["t30", "t40", "t50"]);
        s.cap_tombstones(0);
        assert!(names(&s).is_empty());
    }
}
