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
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::support::{self, PY_FRAMES, Proxy, Scratch, chmod, euid, skip};

const NOBODY: &str = "65534";

/// A python interpreter that uid 65534 can run through `setpriv`.
fn nobody_python() -> Option<String> {
    ["/usr/bin/python3", "/usr/local/bin/python3", "python3"]
        .into_iter()
        .find(|py| {
            Command::new("setpriv")
                .args([
                    &format!("--reuid={NOBODY}"),
                    &format!("--regid={NOBODY}"),
                    "--clear-groups",
                    py,
                    "-c",
                    "import os, sys; sys.exit(0 if os.getuid() == 65534 else 1)",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_owned)
}

fn setup(test: &str) -> Option<String> {
    if euid() != 0 {
        skip(test, "needs root to connect as another uid");
        return None;
    }
    let py = nobody_python();
    if py.is_none() {
        skip(test, "setpriv or a python3 usable by uid 65534 is missing");
    }
    py
}

/// Makes the socket reachable for other uids: every directory from the
/// scratch root down to the socket 0711, the socket 0666.
fn open_up(s: &Scratch, p: &Proxy) {
    let mut dir = p.instance_dir();
    loop {
        chmod(&dir, 0o711);
        if dir == s.root() {
            break;
        }
        dir = dir.parent().expect("under the scratch root").to_path_buf();
    }
    chmod(&p.socket, 0o666);
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
    let script = format!("{PY_FRAMES}\n{body}");
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        py,
        "-c",
        &script,
    ])
    .arg(socket);
    if let Some(t) = token {
        cmd.arg(t);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let ran = support::run_bounded(cmd, b"");
    ran.assert_code(0);
    serde_json::from_str(ran.stdout.trim())
        .unwrap_or_else(|e| panic!("client output {:?}: {e}", ran.stdout))
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
