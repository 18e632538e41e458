//! Connection policy under pressure (SPEC §3.1, §3.5): the pending budget
//! drops the oldest, a full handshaken table evicts the connection idle
//! longest (never one with work in flight or a login session of its own),
//! the newcomer is closed when nothing is evictable, and a per-process cap.

use credproxy_core::testkit::Harness;
use credproxy_core::{ConnId, Limits, Peer, Transport};
use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::common::{self, Scenario, connect_held, ok, one, with_limits};

fn limits(max_connections: usize, max_pending: usize, per_pid: usize) -> Limits {
    Limits {
        max_connections,
        max_pending_handshakes: max_pending,
        max_connections_per_pid: per_pid,
        ..Limits::default()
    }
}

fn peer(pid: Option<u32>) -> Peer {
    Peer {
        pid,
        ..Peer::anonymous(Transport::Unix)
    }
}

/// Sends a v2 handshake on an opened connection; returns the replies.
fn handshake(h: &mut Harness, conn: ConnId) -> Vec<Value> {
    h.send_json(
        conn,
        &json!({"v":2,"op":"handshake","payload":{"minVersion":1,"maxVersion":2}}),
    );
    h.take_replies(conn)
}

fn events(h: &Harness, op: &str, outcome: &str) -> Vec<Option<ConnId>> {
    h.audit
        .iter()
        .filter(|e| e.op == op && e.outcome == outcome)
        .map(|e| e.conn)
        .collect()
}

#[test]
fn pending_budget_drops_the_oldest() {
    let mut h = Harness::with_config(with_limits(limits(8, 3, 32)), 0);
    let served = h.connect();
    let a = h.open();
    let b = h.open();
    let c = h.open();
    assert_eq!(h.engine.pending_handshakes(), 3);
    let d = h.open();
    assert!(h.is_closed(a));
    assert!(!h.is_closed(b) && !h.is_closed(c) && !h.is_closed(d));
    assert_eq!(
        events(&h, "connection_evicted", "pending_oldest"),
        vec![Some(a)]
    );
    assert_eq!(h.engine.pending_handshakes(), 3);
    assert_eq!(h.engine.connection_count(), 4);
    // The handshaken connection is untouched and still served.
    h.expect(
        served,
        "list_api_keys",
        json!({}),
        ok("1", json!({"keys":[]})),
    );
    // A pending connection that completes its handshake leaves the budget.
    assert_eq!(handshake(&mut h, b)[0]["ok"], json!(true));
    assert_eq!(h.engine.pending_handshakes(), 2);
    let e = h.open();
    assert!(!h.is_closed(c) && !h.is_closed(e));
    // The evicted connection's later bytes are ignored.
    assert!(handshake(&mut h, a).is_empty());
}

#[test]
fn full_table_evicts_the_idle_longest() {
    let mut h = Harness::with_config(with_limits(limits(3, 8, 32)), 0);
    let a = h.connect();
    h.advance(10);
    let b = h.connect();
    h.advance(10);
    let c = h.connect();
    h.advance(10);
    // `a` was active last: `b` is now idle longest.
    h.expect(a, "list_api_keys", json!({}), ok("1", json!({"keys":[]})));
    h.advance(10);
    let d = h.connect();
    assert!(h.is_closed(b));
    assert!(!h.is_closed(a) && !h.is_closed(c) && !h.is_closed(d));
    assert_eq!(events(&h, "connection_evicted", "idle"), vec![Some(b)]);
    assert_eq!(h.engine.connection_count(), 3);
    // Later bytes of the evicted connection are ignored.
    h.request(b, "x", "list_api_keys", json!({}));
    assert!(h.take_replies(b).is_empty());
}

#[test]
fn ties_go_to_the_lowest_connection_id() {
    let mut h = Harness::with_config(with_limits(limits(2, 8, 32)), 0);
    let a = h.connect();
    let b = h.connect();
    let c = h.connect();
    assert!(h.is_closed(a));
    assert!(!h.is_closed(b) && !h.is_closed(c));
}

#[test]
fn in_flight_work_and_own_sessions_are_never_evicted() {
    let mut h = Harness::with_config(with_limits(limits(3, 8, 32)), 0);
    let busy = h.connect();
    let login = h.connect();
    h.advance(10);
    let recent = h.connect();
    // `busy` has a request in flight (its effect is held).
    h.auto_effects = false;
    h.request(busy, "k", "get_api_key", json!({"name":"K"}));
    assert!(h.take_replies(busy).is_empty());
    // `login` started a session (pkce_redirect answers at once).
    let r = one(
        &mut h,
        login,
        "i",
        "oauth_initiate",
        json!({"provider":"anthropic"}),
    );
    assert_eq!(r["ok"], json!(true), "{r}");
    h.advance(10_000);
    // Both are idle longer than `recent`, but only `recent` is evictable.
    let newcomer = h.connect();
    assert!(h.is_closed(recent));
    assert!(!h.is_closed(busy) && !h.is_closed(login) && !h.is_closed(newcomer));
    assert_eq!(events(&h, "connection_evicted", "idle"), vec![Some(recent)]);
    // The in-flight request still gets its reply.
    h.complete_all();
    let replies = h.take_replies(busy);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0]["id"], json!("k"));
}

#[test]
fn no_evictable_connection_refuses_the_newcomer() {
    let mut h = Harness::with_config(with_limits(limits(1, 8, 32)), 0);
    let busy = connect_held(&mut h);
    h.request(busy, "k", "get_api_key", json!({"name":"K"}));
    let newcomer = h.open();
    // The handshake is refused with a reason, then the newcomer is closed.
    assert_eq!(
        handshake(&mut h, newcomer),
        vec![
            json!({"v":2,"op":"handshake","ok":false,"code":"RESOURCE_EXHAUSTED",
                    "error":"Too many connections"})
        ]
    );
    assert!(h.is_closed(newcomer));
    assert!(!h.is_closed(busy));
    assert_eq!(
        events(&h, "connection_refused", "connection_limit"),
        vec![Some(newcomer)]
    );
    assert_eq!(h.engine.connection_count(), 1);
    // Once the work is done the connection is idle and can be displaced.
    h.complete_all();
    assert_eq!(h.take_replies(busy).len(), 1);
    let next = h.connect();
    assert!(h.is_closed(busy));
    assert!(!h.is_closed(next));
}

#[test]
fn per_pid_cap_refuses_at_accept() {
    let mut h = Harness::with_config(with_limits(limits(8, 8, 2)), 0);
    let a = h.open_peer(peer(Some(7))).expect("first");
    let _b = h.open_peer(peer(Some(7))).expect("second");
    assert_eq!(handshake(&mut h, a)[0]["ok"], json!(true));
    // Pending and handshaken both count.
    assert_eq!(h.open_peer(peer(Some(7))), None);
    let refused = events(&h, "connection_refused", "per_pid_limit");
    assert_eq!(refused, vec![None]);
    assert!(
        h.audit
            .iter()
            .any(|e| e.op == "connection_refused" && e.limit == Some(2))
    );
    // Another pid, and an unknown pid, are not capped by pid 7.
    assert!(h.open_peer(peer(Some(8))).is_some());
    for _ in 0..5 {
        assert!(h.open_peer(peer(None)).is_some());
    }
    // When one of pid 7's connections closes, it may connect again.
    common::read_closed(&mut h, a);
    assert!(h.is_closed(a));
    assert!(h.open_peer(peer(Some(7))).is_some());
}

#[derive(Debug, Clone)]
enum Step {
    Open(Option<u32>),
    Handshake(usize),
    Hold(usize),
    Login(usize),
    Complete,
    Close(usize),
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => prop_oneof![Just(None), Just(Some(1u32)), Just(Some(2))].prop_map(Step::Open),
        3 => (0usize..32).prop_map(Step::Handshake),
        2 => (0usize..32).prop_map(Step::Hold),
        1 => (0usize..32).prop_map(Step::Login),
        1 => Just(Step::Complete),
        1 => (0usize..32).prop_map(Step::Close),
        1 => (0u64..3_000).prop_map(Step::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Model property: the connection counts never exceed their bounds, and
    /// no connection with a request in flight or a live session of its own
    /// is ever evicted.
    #[test]
    fn bounds_hold_and_busy_connections_survive(steps in prop::collection::vec(step(), 1..80)) {
        let l = limits(3, 2, 3);
        let mut h = Harness::with_config(with_limits(l.clone()), 0);
        h.auto_effects = false;
        let mut conns: Vec<ConnId> = Vec::new();
        let mut reading: BTreeSet<ConnId> = BTreeSet::new();
        let mut sessions: BTreeSet<ConnId> = BTreeSet::new();
        let mut n = 0;
        for s in steps {
            let busy: BTreeSet<ConnId> = reading.union(&sessions).copied().collect();
            let seen = h.audit.len();
            match s {
                Step::Open(pid) => {
                    if let Some(c) = h.open_peer(peer(pid)) {
                        conns.push(c);
                    }
                }
                Step::Handshake(i) if !conns.is_empty() => {
                    let c = conns[i % conns.len()];
                    handshake(&mut h, c);
                }
                Step::Hold(i) | Step::Login(i) if !conns.is_empty() => {
                    let c = conns[i % conns.len()];
                    n += 1;
                    let hold = matches!(s, Step::Hold(_));
                    let (op, payload) = if hold {
                        ("get_api_key", json!({"name":"K"}))
                    } else {
                        ("oauth_initiate", json!({"provider":"anthropic"}))
                    };
                    h.request(c, &format!("q{n}"), op, payload);
                    let replies = h.take_replies(c);
                    if hold && replies.is_empty() && !h.is_closed(c) {
                        reading.insert(c);
                    }
                    if !hold && replies.iter().any(|r| r["ok"] == json!(true)) {
                        sessions.insert(c);
                    }
                }
                Step::Close(i) if !conns.is_empty() => {
                    let c = conns[i % conns.len()];
                    let now = h.now;
                    h.engine.handle_connection_gone(c, now);
                    h.drain();
                    reading.remove(&c);
                    sessions.remove(&c);
                }
                Step::Complete => {
                    // Every held read is answered: those connections are
                    // idle again (sessions stay: they last 10 minutes).
                    h.complete_all();
                    reading.clear();
                }
                Step::Advance(ms) => h.advance(ms),
                _ => {}
            }
            let e = &h.engine;
            prop_assert!(e.connection_count() <= l.max_sockets());
            prop_assert!(e.pending_handshakes() <= l.max_pending_handshakes);
            prop_assert!(e.connection_count() - e.pending_handshakes() <= l.max_connections);
            for ev in &h.audit[seen..] {
                if ev.op == "connection_evicted" {
                    let victim = ev.conn.expect("evictions name the connection");
                    prop_assert!(!busy.contains(&victim), "busy connection {victim} evicted");
                    reading.remove(&victim);
                    sessions.remove(&victim);
                }
            }
        }
    }
}

/// `Engine::peer` reports the identity the transport gave at open (the
/// host's per-peer policy and audit read it) and nothing once it is gone.
#[test]
fn peer_is_reported_while_the_connection_is_open() {
    let mut h = Harness::new();
    let p = Peer {
        uid: Some(1000),
        gid: Some(100),
        pid: Some(42),
        transport: Transport::Unix,
    };
    let conn = h.open_peer(p).expect("accepted");
    assert_eq!(h.engine.peer(conn), Some(p));
    common::gone(&mut h, conn);
    assert_eq!(h.engine.peer(conn), None);
}
