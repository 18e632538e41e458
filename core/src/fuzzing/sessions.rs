//! The pieces of the engine world model that the proptest state machine in
//! `core/tests/it/model.rs` reuses, so that the fuzz target and the model
//! test check sessions and secrets the same way: session bookkeeping (a
//! session never moves backwards, its attempts never decrease, an ended one
//! never returns, a polling interval is never lowered), reading a session
//! out of an `oauth_initiate` reply, and reading a field out of a provider
//! call's form or JSON body (PKCE verifiers, refresh tokens, grant types).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::sessions::session::{SessionState, Step};
use crate::testkit::Harness;

/// What was seen of the engine's OAuth sessions so far; [`check`]
/// compares the live sessions against it and then records them.
///
/// [`check`]: SessionWatch::check
#[derive(Debug, Default)]
pub struct SessionWatch {
    /// Highest (rank, attempts) seen per live session.
    seen: BTreeMap<String, (u8, u8)>,
    /// Last polling interval seen per session.
    intervals: BTreeMap<String, u64>,
    /// Sessions seen once and gone since.
    ended: BTreeSet<String>,
}

/// A session state's place in the only order sessions may move in
/// (initiated, complete, used), with the attempts of an initiated one.
fn rank_attempts(s: &SessionState) -> (u8, u8) {
    match s {
        SessionState::Initiated(step) => (0, step.attempts()),
        SessionState::Complete(_) => (1, u8::MAX),
        SessionState::Used => (2, u8::MAX),
    }
}

impl SessionWatch {
    /// Checks the engine's live sessions against what was seen, then
    /// records them.
    ///
    /// # Panics
    /// When a session moved backwards, its attempts decreased, its polling
    /// interval was lowered, or an ended session came back.
    pub fn check(&mut self, h: &Harness) {
        let live: BTreeMap<String, (u8, u8)> = h
            .engine
            .session_states()
            .map(|(id, s)| (id.to_owned(), rank_attempts(s)))
            .collect();
        for (id, state) in h.engine.session_states() {
            if let SessionState::Initiated(Step::Polling { interval_ms, .. }) = state {
                let prev = self.intervals.insert(id.to_owned(), *interval_ms);
                assert!(
                    prev.is_none_or(|p| *interval_ms >= p),
                    "session {id}: polling interval lowered from {prev:?} to {interval_ms}"
                );
            }
        }
        for (id, (rank, attempts)) in &live {
            assert!(!self.ended.contains(id), "ended session {id} came back");
            if let Some((r0, a0)) = self.seen.get(id) {
                assert!(rank >= r0, "session {id} moved backwards");
                if *rank == 0 && *r0 == 0 {
                    assert!(attempts >= a0, "session {id}: attempts decreased");
                }
            }
        }
        let gone: Vec<String> = self
            .seen
            .keys()
            .filter(|id| !live.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.seen.remove(&id);
            self.ended.insert(id);
        }
        for (id, v) in live {
            let e = self.seen.entry(id).or_insert(v);
            *e = (*e).max(v);
        }
    }
}

/// The (session id, `state` parameter of the auth URL) a reply announces;
/// the state is empty for a flow without an auth URL.
#[must_use]
pub fn session_of_reply(r: &Value) -> Option<(String, String)> {
    let sid = r["data"]["session_id"].as_str()?;
    let state = r["data"]["auth_url"]
        .as_str()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "state")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default();
    Some((sid.to_owned(), state))
}

/// Every value of `key` in a provider call's body, read both as a form and
/// as a JSON object (providers use either), form values first.
#[must_use]
pub fn body_values(body: &str, key: &str) -> Vec<String> {
    let mut out: Vec<String> = url::form_urlencoded::parse(body.as_bytes())
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .collect();
    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(body)
        && let Some(v) = m.get(key).and_then(Value::as_str)
    {
        out.push(v.to_owned());
    }
    out
}
