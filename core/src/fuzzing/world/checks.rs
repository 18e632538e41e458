//! The invariants checked after every op (replies against what each client
//! is owed, sessions, bounds, refresh calls, secrets), and the final
//! settling run after which nothing may be owed or pending.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::engine::effect::EffectResult;

use super::super::fixtures::KEY_SPACE;
use super::super::sentinel::assert_no_marker;
use super::super::sessions::{body_values, session_of_reply};
use super::World;
use super::client::Hs;
use super::http::response;

impl World {
    /// Reads every reply, updates the model and checks every invariant.
    pub(super) fn check(&mut self) {
        let mut replies_seen = Vec::new();
        for ci in 0..self.clients.len() {
            let conn = self.clients[ci].conn;
            let replies = self.h.take_replies(conn);
            let len = self.h.sent.get(&conn).map_or(0, Vec::len);
            let engine_closed = self.h.is_closed(conn);
            let c = &mut self.clients[ci];
            if c.closed {
                assert_eq!(len, c.closed_len, "bytes sent to a closed connection");
                continue;
            }
            if !c.tainted {
                for r in &replies {
                    c.on_reply(r);
                }
            }
            replies_seen.extend(replies);
            if !engine_closed {
                assert!(
                    !c.expect_close || c.tainted,
                    "a frame that cannot decode left the connection open"
                );
                assert!(
                    c.hs != Hs::Rejected,
                    "a refused handshake left the connection open"
                );
                continue;
            }
            if c.read_closed && !c.tainted && c.hs == Hs::Open {
                assert_eq!(
                    c.owed_total(),
                    0,
                    "a half-closed connection closed with requests unanswered: {:?}",
                    c.owed
                );
            }
            self.mark_closed(ci);
        }
        for r in &replies_seen {
            self.remember_session(r);
        }
        self.check_sessions();
        self.check_bounds();
        self.check_refresh_calls();
        self.check_secrets();
    }

    pub(super) fn remember_session(&mut self, r: &Value) {
        let Some((sid, state)) = session_of_reply(r) else {
            return;
        };
        if self.sessions.iter().any(|(s, _)| *s == sid) {
            return;
        }
        if self.sessions.len() < 16 {
            self.sessions.push((sid, state));
        }
    }

    pub(super) fn check_sessions(&mut self) {
        self.watch.check(&self.h);
    }

    pub(super) fn check_bounds(&self) {
        let e = &self.h.engine;
        let l = self.limits();
        assert!(
            e.connection_count() <= l.max_sockets()
                && e.connection_count() - e.pending_handshakes() <= l.max_connections
                && e.pending_handshakes() <= l.max_pending_handshakes,
            "connection limits"
        );
        assert!(e.session_count() <= l.sessions_total, "session limit");
        let bound = e.connection_count() * l.max_in_flight
            + self.detach_budget
            + 2 * e.session_count()
            + 2 * KEY_SPACE
            + 4;
        assert!(
            e.pending_tasks() <= bound,
            "{} tasks pending, bound {bound}",
            e.pending_tasks()
        );
    }

    /// One refresh job per key: no two provider calls in flight carry the
    /// same refresh token (every seeded and issued refresh token is unique).
    pub(super) fn check_refresh_calls(&self) {
        let mut seen = BTreeSet::new();
        for (_, request) in &self.h.http_pending {
            let Some(body) = &request.body else { continue };
            // The JSON value if the body is JSON, else the form's.
            if let Some(rt) = body_values(body.expose(), "refresh_token").pop() {
                assert!(seen.insert(rt), "two refresh calls for one key in flight");
            }
        }
    }

    /// Scans what was sent and audited since the last step for a secret
    /// marker or a verifier used in a provider call.
    pub(super) fn check_secrets(&mut self) {
        let mut fresh = Vec::new();
        for request in &self.h.http_log[self.http_seen..] {
            let Some(body) = &request.body else { continue };
            fresh.extend(body_values(body.expose(), "code_verifier"));
        }
        self.http_seen = self.h.http_log.len();
        let mut new_verifier = false;
        for v in fresh {
            if v.len() >= 8 && self.verifiers.insert(v) {
                new_verifier = true;
            }
        }
        if new_verifier {
            let all = self.h.observable_text();
            for v in &self.verifiers {
                assert!(!all.contains(v.as_str()), "a PKCE verifier left the host");
            }
        }
        let mut text = String::new();
        for (conn, bytes) in &self.h.sent {
            let from = self.sent_seen.get(conn).copied().unwrap_or(0);
            text.push_str(&String::from_utf8_lossy(&bytes[from..]));
            self.sent_seen.insert(*conn, bytes.len());
        }
        for ev in &self.h.audit[self.audit_seen..] {
            text.push_str(&serde_json::to_string(ev).unwrap_or_default());
            text.push_str(&format!("{ev:?}"));
        }
        self.audit_seen = self.h.audit.len();
        assert_no_marker(&text);
        for v in &self.verifiers {
            assert!(!text.contains(v.as_str()), "a PKCE verifier left the host");
        }
    }

    /// Completes everything, refusing provider calls, and runs the clock
    /// until nothing is left; then nothing may be owed to an open client.
    pub(super) fn settle(&mut self) {
        self.h.store.fail_all = false;
        self.h.store.fail_writes = false;
        self.h.store.unavailable = None;
        self.h.store.foreign_locks.clear();
        self.h.auto_effects = true;
        let mut quiet = false;
        for _ in 0..512 {
            while let Some((id, effect)) = self.h.held.pop_front() {
                let result = self.h.store.execute(&effect);
                self.h.engine.handle_effect_result(id, result, self.h.now);
                self.h.drain();
            }
            while let Some((id, _)) = self.h.http_pending.pop_front() {
                let outcome = response(400, &json!({"error": "access_denied"}));
                self.h
                    .engine
                    .handle_effect_result(id, EffectResult::Http(outcome), self.h.now);
                self.h.drain();
            }
            self.check();
            if !self.h.held.is_empty() || !self.h.http_pending.is_empty() {
                continue;
            }
            if self.h.engine.poll_timeout().is_none() {
                quiet = true;
                break;
            }
            self.h.advance_to_next(u64::MAX);
            self.check();
        }
        for c in &self.clients {
            if c.closed || c.tainted {
                continue;
            }
            if c.hs == Hs::Open {
                assert_eq!(
                    c.owed_total(),
                    0,
                    "requests never answered on {:?}: {:?}",
                    c.conn,
                    c.owed
                );
            }
            if quiet && c.hs == Hs::NotSent {
                panic!("{:?} never handshook and was never closed", c.conn);
            }
        }
        if quiet {
            assert_eq!(
                self.h.engine.pending_tasks(),
                0,
                "tasks left with no effect, timer or input to wake them"
            );
        }
    }
}
