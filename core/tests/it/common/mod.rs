//! Helpers shared by the scenario tests.

use credproxy_core::testkit::Harness;
use credproxy_core::{Config, ConnId, Limits, Policy, Secret};
use serde_json::{Value, json};

/// The capability token of the sandbox configurations.
pub fn cap_token() -> String {
    "t".repeat(64)
}

/// A configuration with a capability token (every connection is a sandbox).
pub fn sandbox_config() -> Config {
    Config {
        capability_token: Some(Secret::new(cap_token())),
        ..Config::default()
    }
}

/// A sandbox configuration with the given policy.
pub fn sandbox_with_policy(policy: Policy) -> Config {
    Config {
        policy,
        ..sandbox_config()
    }
}

/// A host configuration with the given limits.
pub fn with_limits(limits: Limits) -> Config {
    Config {
        limits,
        ..Config::default()
    }
}

/// A harness (seed 0) with a host configuration with the given limits.
pub fn harness_with(limits: Limits) -> Harness {
    Harness::with_config(with_limits(limits), 0)
}

/// A valid token as JSON.
pub fn token(access: &str) -> Value {
    json!({"access_token": access, "expiry": 1_767_229_200, "token_type": "Bearer"})
}

/// A success envelope.
pub fn ok(id: &str, data: Value) -> Value {
    json!({"id": id, "ok": true, "data": data})
}

/// An error envelope.
pub fn err(id: &str, code: &str, message: &str) -> Value {
    json!({"id": id, "ok": false, "code": code, "error": message})
}

/// Sends one request and returns every frame sent in response (after
/// draining).
pub fn send_req(h: &mut Harness, conn: ConnId, id: &str, op: &str, payload: Value) -> Vec<Value> {
    h.request(conn, id, op, payload);
    h.take_replies(conn)
}

/// Sends one request and returns its single reply, asserting that exactly
/// one frame came back.
#[track_caller]
pub fn one(h: &mut Harness, conn: ConnId, id: &str, op: &str, payload: Value) -> Value {
    let replies = send_req(h, conn, id, op, payload);
    assert_eq!(replies.len(), 1, "expected one reply to {op}: {replies:?}");
    replies.into_iter().next().unwrap_or(Value::Null)
}

/// Connects and turns automatic effects off, so the test completes the
/// store effects itself (in any order, or never).
pub fn connect_held(h: &mut Harness) -> ConnId {
    let conn = h.connect();
    h.auto_effects = false;
    conn
}

/// Stores an expired token of `p/default` that has a refresh token (`rt`),
/// the stored state the write-path tests merge into.
pub fn store_old_with_refresh(h: &mut Harness) {
    h.store.put_token(
        "p",
        "default",
        json!({"access_token":"old","expiry":1,"token_type":"Bearer","refresh_token":"rt"}),
    );
}

/// Sends a raw frame (any JSON value) and returns the replies.
pub fn send_frame(h: &mut Harness, conn: ConnId, frame: &Value) -> Vec<Value> {
    h.send_json(conn, frame);
    h.take_replies(conn)
}

/// The raw bytes of one frame holding `json` exactly as given.
pub fn raw_frame(json: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(json.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(json);
    out
}

/// Pauses reading `conn` at the harness clock.
pub fn pause(h: &mut Harness, conn: ConnId) {
    let now = h.now;
    h.engine.handle_pause_reading(conn, now);
    h.drain();
}

/// Resumes reading `conn` at the harness clock.
pub fn resume(h: &mut Harness, conn: ConnId) {
    let now = h.now;
    h.engine.handle_resume_reading(conn, now);
    h.drain();
}

/// Reports the read side of `conn` closed at the harness clock.
pub fn read_closed(h: &mut Harness, conn: ConnId) {
    let now = h.now;
    h.engine.handle_read_closed(conn, now);
    h.drain();
}

/// Reports `conn` gone at the harness clock.
pub fn gone(h: &mut Harness, conn: ConnId) {
    let now = h.now;
    h.engine.handle_connection_gone(conn, now);
    h.drain();
}

/// Scenario steps as harness methods, so that a request-and-answer step
/// fits on one line.
pub trait Scenario {
    /// Sends one request under the id of `want` (the expected reply) and
    /// asserts that its single reply is `want`: the step most scenario
    /// tests are made of.
    fn expect(&mut self, conn: ConnId, op: &str, payload: Value, want: Value);

    /// Sends one request and asserts that nothing is sent back yet (its
    /// effects are held).
    fn no_reply_yet(&mut self, conn: ConnId, id: &str, op: &str, payload: Value);
}

impl Scenario for Harness {
    #[track_caller]
    fn expect(&mut self, conn: ConnId, op: &str, payload: Value, want: Value) {
        let id = want["id"].as_str().expect("the expected reply has an id");
        let got = one(self, conn, id, op, payload);
        assert_eq!(got, want, "the reply to {op} (id {id})");
    }

    #[track_caller]
    fn no_reply_yet(&mut self, conn: ConnId, id: &str, op: &str, payload: Value) {
        let replies = send_req(self, conn, id, op, payload);
        assert!(
            replies.is_empty(),
            "{op} (id {id}) answered early: {replies:?}"
        );
    }
}

/// A harness whose `anthropic` token expires `expires_in_s` from now
/// (access `AT-0`, refresh token `RT-0`), and a connection.
pub fn seeded_refreshable(expires_in_s: i64) -> (Harness, ConnId) {
    let mut h = Harness::new();
    let expiry = h.now.unix_secs() as i64 + expires_in_s;
    h.store.put_token(
        "anthropic",
        "default",
        serde_json::json!({"access_token":"AT-0","refresh_token":"RT-0","expiry":expiry,"token_type":"Bearer"}),
    );
    let conn = h.connect();
    (h, conn)
}
