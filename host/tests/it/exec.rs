//! `credproxy exec [--] CMD…` (SPEC §8): the child gets the socket
//! variables, the token file and the same token on fd 3
//! (`LLXPRT_CAPABILITY_FD=3`, the only fd llxprt's sandbox client reads);
//! the proxy serves it while it runs, forwards shutdown signals to it,
//! exits with its status and cleans up when it ends.

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;

use crate::support::{self, BIN, Scratch, exists, is_token, python3, skip, write_py};

/// `credproxy exec --store <store> ARGS…`, run to completion.
fn exec(s: &Scratch, args: &[&str]) -> support::Ran {
    let store = s.store_arg();
    let mut all = vec!["exec", "--store", store.as_str(), "--audit-log", "off"];
    all.extend_from_slice(args);
    s.run(&all, b"")
}

/// `KEY=VALUE` lines of `text` as pairs.
fn vars(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn child_gets_the_same_token_in_the_file_and_on_the_fd() {
    let s = Scratch::new();
    let script = r#"
printf 'SOCK=%s\n' "$CREDPROXY_SOCKET"
printf 'LSOCK=%s\n' "$LLXPRT_CREDENTIAL_SOCKET"
printf 'FILE=%s\n' "$CREDPROXY_CAPABILITY_FILE"
printf 'FD=%s\n' "$LLXPRT_CAPABILITY_FD"
printf 'FROMFILE=%s\n' "$(cat "$CREDPROXY_CAPABILITY_FILE")"
printf 'FROMFD=%s\n' "$(cat "/proc/self/fd/$LLXPRT_CAPABILITY_FD")"
printf 'FDBYTES=%s\n' "$(wc -c < "$CREDPROXY_CAPABILITY_FILE")"
test -S "$CREDPROXY_SOCKET" && echo SOCKET_LIVE=yes
"#;
    let ran = exec(&s, &["--", "sh", "-c", script]);
    ran.assert_code(0);
    let v = vars(&ran.stdout);
    assert_eq!(v["SOCK"], v["LSOCK"]);
    let sock = PathBuf::from(&v["SOCK"]);
    let instance = sock.parent().expect("parent").to_path_buf();
    assert_eq!(instance.parent(), Some(s.base().as_path()));
    assert_eq!(PathBuf::from(&v["FILE"]), instance.join("token"));
    assert_eq!(v["FD"], "3", "llxprt accepts exactly \"3\"");
    assert!(is_token(&v["FROMFILE"]), "{:?}", v["FROMFILE"]);
    assert_eq!(
        v["FROMFILE"], v["FROMFD"],
        "file and fd hold the same token"
    );
    assert_eq!(v["FDBYTES"].trim(), "65", "64 hex and a newline");
    assert_eq!(v["SOCKET_LIVE"], "yes");
    // The token never appears on our side except through the child.
    assert!(!ran.stderr.contains(&v["FROMFILE"]), "{}", ran.stderr);
    assert!(
        !exists(&instance),
        "instance dir removed after the child exited"
    );
}

#[test]
fn the_fd_holds_exactly_the_token_and_a_newline() {
    let s = Scratch::new();
    let od = r#"od -An -c "/proc/self/fd/$LLXPRT_CAPABILITY_FD" | tr -d ' \n'"#;
    let ran = exec(&s, &["--", "sh", "-c", od]);
    ran.assert_code(0);
    let shown = ran.stdout.trim();
    let hex = shown.strip_suffix("\\n").expect("ends with a newline");
    assert!(is_token(hex), "{shown:?}");
}

#[test]
fn child_inherits_no_descriptor_of_the_proxy_but_the_token_pipe() {
    let s = Scratch::new();
    // The listing is of the shell the proxy started, taken by its child
    // `ls` (a simple command: the shell holds no extra descriptor for it),
    // so the directory ls opens itself is not in it.
    let list = r#"echo "FD=$LLXPRT_CAPABILITY_FD"; echo "MOVED=$CREDPROXY_INHERITED_FD3"; ls -1 /proc/$$/fd"#;
    // What a child of ours inherits anyway (from the test harness).
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", list])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let base = support::run_bounded(cmd, b"");
    let fds = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
            .collect()
    };
    let baseline = fds(&base.stdout);
    let ran = exec(&s, &["--", "sh", "-c", list]);
    ran.assert_code(0);
    let mut seen = fds(&ran.stdout);
    let mut baseline = baseline;
    let v = vars(&ran.stdout);
    let token_fd = v["FD"].clone();
    assert_eq!(token_fd, "3", "the token is on fd 3");
    assert!(seen.remove(&token_fd), "token fd {token_fd} is open");
    // A harness that passes its own fd 3 gets it moved, not lost.
    if let Some(moved) = v.get("MOVED").filter(|m| !m.is_empty()) {
        assert!(seen.remove(moved), "moved fd {moved} is open");
        assert!(baseline.remove("3"), "only an inherited fd 3 is moved");
    }
    baseline.remove("3");
    assert_eq!(
        seen, baseline,
        "no listener, signal pipe or store descriptor leaks into the child"
    );
}

#[test]
fn exit_status_is_propagated() {
    let s = Scratch::new();
    exec(&s, &["--", "sh", "-c", "exit 7"]).assert_code(7);
    exec(&s, &["--", "sh", "-c", "exit 0"]).assert_code(0);
    exec(&s, &["--", "false"]).assert_code(1);
    // Killed by a signal: 128 + the signal number.
    exec(&s, &["--", "sh", "-c", "kill -9 $$"]).assert_code(137);
    assert_eq!(
        fs::read_dir(s.base()).expect("base").count(),
        0,
        "all cleaned"
    );
}

#[test]
fn unknown_command_fails_and_cleans_up() {
    let s = Scratch::new();
    let ran = exec(&s, &["--", "/nonexistent/credproxy-test-cmd"]);
    ran.assert_stderr(1, &["/nonexistent/credproxy-test-cmd"]);
    assert_eq!(fs::read_dir(s.base()).expect("base").count(), 0);
}

#[test]
fn insecure_no_token_exports_no_token() {
    let s = Scratch::new();
    let show = r#"echo "FILE=${CREDPROXY_CAPABILITY_FILE-unset}"; echo "FD=${LLXPRT_CAPABILITY_FD-unset}"; echo "SOCK=$CREDPROXY_SOCKET""#;
    let ran = exec(&s, &["--insecure-no-token", "--", "sh", "-c", show]);
    ran.assert_code(0);
    let v = vars(&ran.stdout);
    assert_eq!(v["FILE"], "unset");
    assert_eq!(v["FD"], "unset");
    assert!(v["SOCK"].ends_with("/proxy.sock"), "{:?}", v["SOCK"]);
}

#[test]
fn child_reads_a_token_through_the_socket() {
    let Some(py) = python3() else {
        skip("child_reads_a_token_through_the_socket", "python3 missing");
        return;
    };
    let s = Scratch::seeded("at-for-child", "rt-never-leaves", "OPENAI", "sk-for-child");
    let script = write_py(
        s.root(),
        "child.py",
        r#"
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(os.environ["CREDPROXY_SOCKET"])
with open(os.environ["CREDPROXY_CAPABILITY_FILE"]) as f:
    token = f.read().strip()
send(s, {"v": 2, "op": "handshake", "payload": {"minVersion": 1, "maxVersion": 2, "capabilityToken": token}})
r = recv(s)
assert r == {"v": 2, "op": "handshake", "ok": True, "data": {"version": 2}}, r
send(s, {"v": 2, "id": "1", "op": "get_token", "payload": {"provider": "anthropic"}})
r = recv(s)
assert r["id"] == "1" and r["ok"], r
assert "refresh_token" not in r["data"], r
print(r["data"]["access_token"])
send(s, {"v": 2, "id": "2", "op": "get_api_key", "payload": {"name": "OPENAI"}})
r = recv(s)
assert r["ok"], r
print(r["data"]["key"])
send(s, {"v": 2, "id": "3", "op": "list_providers"})
print(json.dumps(recv(s)))
sys.exit(int(sys.argv[1]))
"#,
    );
    let script = script.display().to_string();
    let ran = exec(&s, &["--", &py, &script, "5"]);
    ran.assert_code(5);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "at-for-child",
            "sk-for-child",
            r#"{"id": "3", "ok": true, "data": {"providers": []}}"#
        ],
        "stderr: {}",
        ran.stderr
    );
    assert_eq!(fs::read_dir(s.base()).expect("base").count(), 0, "cleaned");
    // The same child succeeding exits 0.
    exec(&s, &["--", &py, &script, "0"]).assert_code(0);
}

/// Runs `reader` (a command line whose stdout is what it read from fd 3)
/// under `credproxy exec`, followed by `cat "$CREDPROXY_CAPABILITY_FILE"`;
/// asserts the fd gave exactly the file's 65 bytes.
fn assert_fd3_reads_the_token(reader: &[&str]) {
    let s = Scratch::new();
    let mut args = vec![
        "sh",
        "-c",
        r#""$@" && cat "$CREDPROXY_CAPABILITY_FILE""#,
        "sh",
    ];
    args.extend_from_slice(reader);
    let ran = exec(&s, &args);
    ran.assert_code(0);
    let out = ran.stdout.as_bytes();
    assert_eq!(out.len(), 130, "65 bytes from fd 3, then the file: {out:?}");
    let (from_fd, from_file) = out.split_at(65);
    assert_eq!(
        from_fd, from_file,
        "fd 3 holds exactly the token file's bytes"
    );
    let text = std::str::from_utf8(from_file).expect("ascii");
    assert!(
        is_token(text.strip_suffix('\n').expect("newline")),
        "{text:?}"
    );
}

#[test]
fn fd3_is_readable_by_cat() {
    assert_fd3_reads_the_token(&["sh", "-c", "cat <&3"]);
}

#[test]
fn fd3_is_readable_by_sh_and_dash_read() {
    // dash is /bin/sh on Debian; test it by name too when installed.
    let script = r#"read -r t <&3 && printf '%s\n' "$t""#;
    assert_fd3_reads_the_token(&["sh", "-c", script]);
    if Command::new("dash")
        .args(["-c", "exit 0"])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert_fd3_reads_the_token(&["dash", "-c", script]);
    }
}

#[test]
fn fd3_is_readable_by_node() {
    // No skip: .ci/run installs nodejs, and llxprt is a Node program.
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    assert!(
        node.is_ok_and(|s| s.success()),
        "node is required for this test (llxprt's client is Node)"
    );
    assert_fd3_reads_the_token(&[
        "node",
        "-e",
        r#"process.stdout.write(require("fs").readFileSync(3))"#,
    ]);
}

#[test]
fn fd3_is_readable_by_bun() {
    // No skip: .ci/run installs bun (from the npm registry), the runtime
    // llxprt-code ships on.
    let bun = Command::new("bun")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    assert!(
        bun.is_ok_and(|s| s.success()),
        "bun is required for this test (llxprt runs under Bun): npm install -g bun"
    );
    assert_fd3_reads_the_token(&[
        "bun",
        "-e",
        r#"process.stdout.write(require("fs").readFileSync(3))"#,
    ]);
}

#[test]
fn fd3_is_inherited_by_a_grandchild() {
    assert_fd3_reads_the_token(&["sh", "-c", r#"sh -c "cat <&3""#]);
}

#[test]
fn command_without_double_dash_keeps_its_own_flags() {
    let s = Scratch::new();
    let ran = exec(&s, &["sh", "-c", "echo hi"]);
    ran.assert_code(0);
    assert_eq!(ran.stdout, "hi\n");
    // `ls -la DIR`: -la reaches ls, not our parser.
    let dir = s.root().join("listed");
    fs::create_dir(&dir).expect("mkdir");
    fs::write(dir.join(".hidden"), b"").expect("write");
    let dir_arg = dir.display().to_string();
    let ran = exec(&s, &["ls", "-la", &dir_arg]);
    ran.assert_code(0);
    ran.assert_stdout_has(&[".hidden"]);
    assert!(ran.stdout.starts_with("total"), "{}", ran.stdout);
    // Our own options stay ours when they come before CMD; after it they
    // are CMD's.
    let ran = exec(&s, &["sh", "-c", r#"echo "$1""#, "sh", "--store"]);
    ran.assert_code(0);
    assert_eq!(ran.stdout, "--store\n");
    // `--` is still accepted.
    exec(&s, &["--", "sh", "-c", "echo hi"]).assert_code(0);
}

#[test]
fn command_starting_with_a_dash_needs_double_dash() {
    let s = Scratch::new();
    let ran = exec(&s, &["-la"]);
    ran.assert_code(2);
    assert!(
        ran.stderr.contains("'--"),
        "the error says to use --: {}",
        ran.stderr
    );
    // With `--` it is taken as the command (which does not exist here).
    let ran = exec(&s, &["--", "-la"]);
    ran.assert_stderr(1, &["cannot run -la"]);
}

#[test]
fn our_own_fd3_is_moved_not_lost() {
    let s = Scratch::new();
    let passed = s.root().join("passed");
    fs::write(&passed, b"what the caller gave on fd 3\n").expect("write");
    let store = s.store_arg();
    let child = r#"printf 'MOVED=%s\n' "$CREDPROXY_INHERITED_FD3"; cat <&"$CREDPROXY_INHERITED_FD3"; wc -c <&3"#;
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"exec 3<"$1"; shift; exec "$@""#, "sh"])
        .arg(&passed)
        .args([BIN, "exec", "--store", &store, "--audit-log", "off"])
        .args(["sh", "-c", child]);
    s.isolate(&mut cmd);
    let ran = support::run_bounded(cmd, b"");
    ran.assert_code(0);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", ran.stdout);
    let moved: u32 = lines[0]
        .strip_prefix("MOVED=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{:?}", lines[0]));
    assert!(moved > 3, "moved to another fd: {moved}");
    assert_eq!(lines[1], "what the caller gave on fd 3");
    assert_eq!(lines[2].trim(), "65", "fd 3 holds the token");
}

#[test]
fn shutdown_signals_are_forwarded_to_the_command() {
    for (sig, name) in [
        (Signal::SIGTERM, "TERM"),
        (Signal::SIGINT, "INT"),
        (Signal::SIGHUP, "HUP"),
    ] {
        let s = Scratch::new();
        let store = s.store_arg();
        let script = format!(
            "trap 'echo got-{name}; exit 42' {name}; echo ready; while :; do sleep 0.05; done"
        );
        let mut child = s
            .command(&[
                "exec",
                "--store",
                &store,
                "--audit-log",
                "off",
                "sh",
                "-c",
                &script,
            ])
            .spawn()
            .expect("spawn");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("read");
        assert_eq!(line, "ready\n");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        nix::sys::signal::kill(pid, sig).expect("kill");
        let status = support::wait_bounded(&mut child, support::TIMEOUT, "exec");
        line.clear();
        out.read_line(&mut line).expect("read");
        assert_eq!(line, format!("got-{name}\n"), "the command got {name}");
        assert_eq!(status.code(), Some(42), "the command's own status");
        assert_eq!(fs::read_dir(s.base()).expect("base").count(), 0, "cleaned");
    }
}

/// The README's container entrypoint: the ```sh block that starts with
/// `#!/bin/sh` and the `# entrypoint.sh:` marker line.
fn readme_entrypoint() -> String {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let start = readme
        .find("```sh\n#!/bin/sh\n# entrypoint.sh:")
        .expect("README has the entrypoint.sh block")
        + "```sh\n".len();
    let len = readme[start..].find("```").expect("block ends");
    readme[start..start + len].to_owned()
}

#[test]
fn readme_container_entrypoint_gives_llxprt_the_token_on_fd3() {
    let snippet = readme_entrypoint();
    assert!(
        snippet.contains(
            r#"exec 3<"$CREDPROXY_CAPABILITY_FILE"; export LLXPRT_CAPABILITY_FD=3; exec "$@""#
        ),
        "{snippet}"
    );
    let s = Scratch::new();
    s.seed_api_key("CONTAINER_KEY", "sk-through-fd3");
    let proxy = s.serve(&["--audit-log", "off"]);
    let entrypoint = s.root().join("entrypoint.sh");
    fs::write(&entrypoint, &snippet).expect("write entrypoint");
    // What `docker run -e …` gives the container, and nothing else of ours.
    let container = |cmd: &[&str]| {
        let mut c = Command::new("sh");
        c.arg(&entrypoint).args(cmd);
        s.isolate(&mut c);
        for (k, v) in proxy.exports() {
            c.env(k, v);
        }
        support::run_bounded(c, b"")
    };
    let token_file = proxy.token_file().expect("token file");
    let on_file = fs::read(&token_file).expect("token");
    let ran = container(&[
        "sh",
        "-c",
        r#"printf 'FD=%s\n' "$LLXPRT_CAPABILITY_FD"; cat <&3"#,
    ]);
    ran.assert_code(0);
    let (first, rest) = ran.stdout.split_once('\n').expect("two parts");
    assert_eq!(first, "FD=3");
    assert_eq!(
        rest.as_bytes(),
        on_file.as_slice(),
        "fd 3 is the token file"
    );
    // A real client through the entrypoint, with the fd only.
    let call =
        r#"unset CREDPROXY_CAPABILITY_FILE; exec "$0" call get_api_key '{"name":"CONTAINER_KEY"}'"#;
    let ran = container(&["sh", "-c", call, BIN]);
    ran.assert_code(0);
    ran.assert_stdout_has(&["sk-through-fd3"]);
    // Without the entrypoint (no file, no fd) the same call is refused.
    let mut bare = Command::new("sh");
    bare.args(["-c", call, BIN]);
    s.isolate(&mut bare);
    for (k, v) in proxy.exports() {
        if k != "CREDPROXY_CAPABILITY_FILE" {
            bare.env(k, v);
        }
    }
    let ran = support::run_bounded(bare, b"");
    ran.assert_stderr(1, &["UNAUTHORIZED"]);
}
