//! The peer-credential check at accept (SPEC §6.1): a peer whose uid is
//! not ours, root or listed with `--allow-uid` is closed at once, without a
//! handshake reply, and audited as `connection_refused`; the owner is served
//! by the same process.
//!
//! The other uid is `nobody` (65534), reached with `setpriv`, so these tests
//! need root; elsewhere they print "skipped" and pass. The socket sits in
//! 0700 directories (the binary insists), so the test opens them up (0711,
//! socket 0666) after the start, as only a deliberate operator would.

use std::path::Path;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{self, NOBODY, Scratch, euid, nobody_python, open_up, py_as_nobody, skip};

fn setup(test: &str) -> Option<String> {
    if euid() != 0 {
        skip(test, "needs root to connect as another uid");
        return None;
    }
    let py = nobody_python(&["/usr/bin/python3", "/usr/local/bin/python3", "python3"]);
    if py.is_none() {
        skip(test, "setpriv or a python3 usable by uid 65534 is missing");
    }
    py
}

/// As uid 65534: connects, sends a handshake (with `token` when given) and
/// prints what came back as JSON: `{"result":"eof"}`, `{"result":"reply",
/// "frame":…}` or `{"result":"connect_failed",…}`.
fn client_as_nobody(py: &str, socket: &Path, token: Option<&str>) -> Value {
    let body = r#"
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"result": "connect_failed", "error": str(e)}))
    sys.exit(0)
payload = {"minVersion": 1, "maxVersion": 2}
if len(sys.argv) > 2:
    payload["capabilityToken"] = sys.argv[2]
try:
    send(s, {"v": 2, "op": "handshake", "payload": payload})
except OSError:
    pass
try:
    frame = recv(s)
except (ConnectionResetError, BrokenPipeError):
    frame = None
except socket.timeout:
    print(json.dumps({"result": "timeout"}))
    sys.exit(0)
print(json.dumps({"result": "eof"} if frame is None else {"result": "reply", "frame": frame}))
"#;
    let socket = socket.display().to_string();
    let args: Vec<&str> = [socket.as_str()].into_iter().chain(token).collect();
    py_as_nobody(py, body, &args)
}

#[test]
fn other_uid_is_refused_at_accept_while_owner_is_served() {
    let Some(py) = setup("other_uid_is_refused_at_accept_while_owner_is_served") else {
        return;
    };
    let s = Scratch::new();
    let mut p = s.serve(&[]);
    open_up(&s, &p);
    let token = p.token();

    // Even with the right token, uid 65534 gets no handshake reply.
    let seen = client_as_nobody(&py, &p.socket, Some(&token));
    assert_eq!(seen, json!({"result":"eof"}), "uid 65534 must be refused");
    let seen = client_as_nobody(&py, &p.socket, None);
    assert_eq!(seen, json!({"result":"eof"}), "uid 65534 must be refused");

    // The owner is served by the same process.
    let mut c = p.sandbox_client();
    assert_eq!(
        c.call("1", "list_providers", json!({})),
        json!({"id":"1","ok":true,"data":{"providers":[]}})
    );
    drop(c);

    // Stopping joins the stderr reader, so every event is in.
    assert_eq!(p.stop(Signal::SIGTERM).code(), Some(0));
    let refused: Vec<Value> = p
        .audit_events()
        .into_iter()
        .filter(|e| e["op"] == "connection_refused")
        .collect();
    assert_eq!(refused.len(), 2, "one event per refusal: {refused:?}");
    for e in &refused {
        assert_eq!(e["outcome"], "uid_not_allowed", "{e}");
        assert_eq!(e["level"], "WARN", "{e}");
    }
    // The refused peers never reached the engine: only the owner's
    // connection was opened and handshaken.
    let handshakes = p
        .audit_events()
        .into_iter()
        .filter(|e| e["op"] == "handshake_ok")
        .count();
    assert_eq!(handshakes, 1, "{}", p.stderr());
}

#[test]
fn allow_uid_admits_the_listed_uid() {
    let Some(py) = setup("allow_uid_admits_the_listed_uid") else {
        return;
    };
    let s = Scratch::new();
    let mut p = s.serve(&["--allow-uid", NOBODY]);
    open_up(&s, &p);
    let token = p.token();

    let seen = client_as_nobody(&py, &p.socket, Some(&token));
    assert_eq!(
        seen,
        json!({"result":"reply","frame":{"v":2,"op":"handshake","ok":true,"data":{"version":2}}})
    );
    // Admitted by uid, still held to the capability token.
    let seen = client_as_nobody(&py, &p.socket, None);
    assert_eq!(
        seen,
        json!({"result":"reply","frame":support::unauthorized_reply()})
    );
    assert_eq!(p.stop(Signal::SIGTERM).code(), Some(0));
    assert!(!p.stderr().contains("connection_refused"), "{}", p.stderr());
}
