//! Model-based test of OAuth sessions and refresh (the Firezone pattern):
//! `proptest-state-machine` generates sequences of client requests,
//! provider answers and `Tick`s of the virtual clock, and after every step
//! the engine's invariants are checked (SPEC §9):
//!
//! - a session's top-level state never moves backwards and its attempt
//!   count never decreases; an ended session never comes back;
//! - a `Used` session never yields a token again (each session completes
//!   at most once towards the client);
//! - at most one refresh HTTP request per key is in flight;
//! - `slow_down` never lowers the polling interval a client sees;
//! - no refresh token, PKCE verifier or device code in any byte sent to a
//!   client or in any audit event.

use std::collections::{BTreeMap, BTreeSet};

use credproxy_core::ConnId;
use credproxy_core::fuzzing::sessions::{SessionWatch, body_values, session_of_reply};
use credproxy_core::http::{HttpRequest, TransportError};
use credproxy_core::session::{SessionState, Step};
use credproxy_core::testkit::Harness;
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy)]
enum Answer {
    Token,
    Pending,
    SlowDown,
    Denied,
    InvalidGrant,
    ServerError,
    Network,
}

#[derive(Debug, Clone)]
enum Transition {
    Initiate(&'static str),
    Exchange {
        session: usize,
        good_state: bool,
    },
    Poll(usize),
    CancelSession(usize),
    Refresh,
    GetToken,
    /// Answer the held HTTP request at this index.
    Respond {
        index: usize,
        answer: Answer,
    },
    Tick {
        ms: u64,
    },
}

struct Model;

impl ReferenceStateMachine for Model {
    type State = usize;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<usize> {
        Just(0).boxed()
    }

    fn transitions(_: &usize) -> BoxedStrategy<Transition> {
        let answer = prop_oneof![
            Just(Answer::Token),
            Just(Answer::Pending),
            Just(Answer::SlowDown),
            Just(Answer::Denied),
            Just(Answer::InvalidGrant),
            Just(Answer::ServerError),
            Just(Answer::Network),
        ];
        prop_oneof![
            prop_oneof![Just("anthropic"), Just("qwen"), Just("codex")]
                .prop_map(Transition::Initiate),
            (0usize..6, any::<bool>()).prop_map(|(session, good_state)| Transition::Exchange {
                session,
                good_state
            }),
            (0usize..6).prop_map(Transition::Poll),
            (0usize..6).prop_map(Transition::CancelSession),
            Just(Transition::Refresh),
            Just(Transition::GetToken),
            (0usize..4, answer.clone())
                .prop_map(|(index, answer)| Transition::Respond { index, answer }),
            (0usize..4, answer).prop_map(|(index, answer)| Transition::Respond { index, answer }),
            (0u64..=10_000).prop_map(|ms| Transition::Tick { ms }),
        ]
        .boxed()
    }

    fn apply(state: usize, _: &Transition) -> usize {
        state + 1
    }
}

struct Sut {
    h: Harness,
    conn: ConnId,
    /// Session ids in creation order with the state (the `state` param).
    sessions: Vec<(String, String)>,
    /// What was seen of the engine's sessions: the fuzz target's
    /// bookkeeping, checked after every step.
    watch: SessionWatch,
    completed: BTreeSet<String>,
    intervals: BTreeMap<String, u64>,
    counter: u64,
}

/// Whether a provider call is a refresh (form or JSON body).
fn is_refresh(request: &HttpRequest) -> bool {
    request.body.as_ref().is_some_and(|b| {
        body_values(b.expose(), "grant_type")
            .iter()
            .any(|g| g == "refresh_token")
    })
}

impl Sut {
    fn next_id(&mut self) -> String {
        self.counter += 1;
        format!("m{}", self.counter)
    }

    fn handle_replies(&mut self) {
        for r in self.h.take_replies(self.conn) {
            self.sessions.extend(session_of_reply(&r));
        }
    }

    fn provider_body(&mut self, answer: Answer, refresh: bool) -> (u16, Value) {
        self.counter += 1;
        let n = self.counter;
        match answer {
            Answer::Token => (
                200,
                json!({"access_token":format!("AT-{n}"),"refresh_token":format!("SECRET-RT-{n}"),"expires_in":if refresh {3600} else {120}}),
            ),
            Answer::Pending => (400, json!({"error":"authorization_pending"})),
            Answer::SlowDown => (400, json!({"error":"slow_down"})),
            Answer::Denied => (400, json!({"error":"access_denied"})),
            Answer::InvalidGrant => (400, json!({"error":"invalid_grant"})),
            Answer::ServerError => (503, json!({})),
            Answer::Network => (0, Value::Null),
        }
    }
}

impl StateMachineTest for Sut {
    type SystemUnderTest = Sut;
    type Reference = Model;

    fn init_test(_: &usize) -> Sut {
        let mut h = Harness::new();
        for _ in 0..21 {
            h.script(
                "https://chat.qwen.ai/api/v1/oauth2/device/code",
                200,
                json!({"device_code":"SECRET-DEV","user_code":"U-1","verification_uri":"https://chat.qwen.ai/a","interval":1}),
            );
        }
        h.store.put_token(
            "anthropic",
            "default",
            json!({"access_token":"AT-0","refresh_token":"SECRET-RT-0","expiry":1,"token_type":"Bearer"}),
        );
        let conn = h.connect();
        Sut {
            h,
            conn,
            sessions: Vec::new(),
            watch: SessionWatch::default(),
            completed: BTreeSet::new(),
            intervals: BTreeMap::new(),
            counter: 0,
        }
    }

    fn apply(mut sut: Sut, _: &usize, t: Transition) -> Sut {
        let conn = sut.conn;
        match t {
            Transition::Initiate(p) => {
                let id = sut.next_id();
                sut.h
                    .request(conn, &id, "oauth_initiate", json!({ "provider": p }));
            }
            Transition::Exchange {
                session,
                good_state,
            } => {
                if let Some((sid, state)) = sut.sessions.get(session).cloned() {
                    let id = sut.next_id();
                    let code = if good_state {
                        format!("code#{state}")
                    } else {
                        "code#forged".into()
                    };
                    sut.h.request(
                        conn,
                        &id,
                        "oauth_exchange",
                        json!({"session_id": sid, "code": code}),
                    );
                }
            }
            Transition::Poll(session) => {
                if let Some((sid, _)) = sut.sessions.get(session).cloned() {
                    let r = sut.h.call(conn, "oauth_poll", json!({ "session_id": sid }));
                    if r["data"]["status"] == json!("complete") {
                        assert!(
                            sut.completed.insert(sid.clone()),
                            "session {sid} yielded a token twice"
                        );
                    }
                    if let Some(i) = r["data"]["pollIntervalMs"].as_u64()
                        && r["data"].get("interval").is_some()
                    {
                        let prev = sut.intervals.insert(sid.clone(), i).unwrap_or(0);
                        assert!(i >= prev, "slow_down interval decreased: {prev} -> {i}");
                    }
                }
            }
            Transition::CancelSession(session) => {
                if let Some((sid, _)) = sut.sessions.get(session).cloned() {
                    sut.h
                        .call(conn, "oauth_cancel", json!({ "session_id": sid }));
                }
            }
            Transition::Refresh => {
                let id = sut.next_id();
                sut.h
                    .request(conn, &id, "refresh_token", json!({"provider":"anthropic"}));
            }
            Transition::GetToken => {
                let id = sut.next_id();
                sut.h
                    .request(conn, &id, "get_token", json!({"provider":"anthropic"}));
            }
            Transition::Respond { index, answer } => {
                if !sut.h.http_pending.is_empty() {
                    let index = index % sut.h.http_pending.len();
                    let request = sut.h.http_pending.remove(index).unwrap();
                    sut.h.http_pending.push_front(request.clone());
                    match sut.provider_body(answer, is_refresh(&request.1)) {
                        (0, _) => sut.h.respond_failure(TransportError::Connect),
                        (status, body) => sut.h.respond(status, body),
                    }
                }
            }
            Transition::Tick { ms } => sut.h.advance(ms),
        }
        sut.handle_replies();
        sut
    }

    fn check_invariants(sut: &Sut, _: &usize) {
        // Polling steps never lower the interval.
        for (_, state) in sut.h.engine.session_states() {
            if let SessionState::Initiated(Step::Polling { interval_ms, .. }) = state {
                assert!(*interval_ms >= 1_000);
            }
        }
        // Single flight is per key. Several keys can refresh at once: a
        // login stores a token with a refresh token, whose proactive renewal
        // may fire while a `refresh_token` of another provider is held. The
        // model uses the default bucket only and each provider has its own
        // token endpoint, so a refresh request's key is its URL.
        let mut refreshes: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, r) in &sut.h.http_pending {
            if is_refresh(r) {
                *refreshes.entry(r.url.as_str()).or_default() += 1;
            }
        }
        for (url, n) in refreshes {
            assert!(n <= 1, "{n} refresh requests in flight for one key ({url})");
        }
        let text = sut.h.observable_text();
        assert!(!text.contains("SECRET-RT"), "a refresh token left the host");
        assert!(!text.contains("SECRET-DEV"), "a device code left the host");
        for request in &sut.h.http_log {
            let Some(body) = &request.body else { continue };
            for v in body_values(body.expose(), "code_verifier") {
                assert!(!text.contains(&v), "a verifier left the host");
            }
        }
    }
}

/// Wraps [`Sut`] so the bookkeeping runs after every transition.
struct Tracked;

impl StateMachineTest for Tracked {
    type SystemUnderTest = Sut;
    type Reference = Model;

    fn init_test(s: &usize) -> Sut {
        <Sut as StateMachineTest>::init_test(s)
    }

    fn apply(sut: Sut, s: &usize, t: Transition) -> Sut {
        let mut sut = <Sut as StateMachineTest>::apply(sut, s, t);
        <Sut as StateMachineTest>::check_invariants(&sut, s);
        // The session bookkeeping checks and records in one step, so it
        // runs here rather than in `check_invariants` (which is `&self`).
        sut.watch.check(&sut.h);
        sut
    }
}

/// 128 cases, or `PROPTEST_CASES` when set (for longer hunts).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    #[test]
    fn sessions_and_refresh_keep_their_invariants(sequential 1..60 => Tracked);
}
