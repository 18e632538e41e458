//! `credproxy serve` on a Unix socket (SPEC §6.1, §8): what it prints, the
//! modes of what it creates, refusals at start, stale instances, and
//! cleanup on signals.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::support::{
    self, Client, Scratch, chmod, euid, exists, is_instance_name, is_token, mkdir, mode_of,
    wait_until,
};

#[test]
fn start_lines_and_modes_of_instance_dir_socket_and_token() {
    let s = Scratch::new();
    let mut p = s.serve(&[]);

    // Line 1 is the socket path; then exactly the three variables.
    let keys: Vec<&str> = p.lines.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "CREDPROXY_SOCKET",
            "LLXPRT_CREDENTIAL_SOCKET",
            "CREDPROXY_CAPABILITY_FILE"
        ]
    );
    let env = p.exports();
    let sock = p.socket.display().to_string();
    assert_eq!(env["CREDPROXY_SOCKET"], sock);
    assert_eq!(env["LLXPRT_CREDENTIAL_SOCKET"], sock);

    // <base>/<pid>-<nonce>/proxy.sock, and the token beside it.
    let dir = p.instance_dir();
    assert_eq!(dir.parent(), Some(s.base().as_path()));
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("utf-8 name");
    assert!(is_instance_name(name), "instance dir name {name:?}");
    assert!(
        name.starts_with(&format!("{}-", p.pid())),
        "{name:?} starts with the pid {}",
        p.pid()
    );
    assert_eq!(
        p.socket.file_name().and_then(|n| n.to_str()),
        Some("proxy.sock")
    );
    let token_file = p.token_file().expect("token file exported");
    assert_eq!(token_file, dir.join("token"));

    assert_eq!(mode_of(&s.base()), 0o700, "base directory");
    assert_eq!(mode_of(&dir), 0o700, "instance directory");
    let sock_meta = fs::symlink_metadata(&p.socket).expect("lstat socket");
    assert!(sock_meta.file_type().is_socket());
    assert_eq!(mode_of(&p.socket), 0o600, "socket");
    assert_eq!(mode_of(&token_file), 0o600, "token file");
    for path in [&s.base(), &dir, &p.socket, &token_file] {
        let meta = fs::symlink_metadata(path).expect("lstat");
        assert_eq!(meta.uid(), euid(), "owner of {}", path.display());
    }
    let text = fs::read_to_string(&token_file).expect("read token");
    let hex = text.strip_suffix('\n').expect("token ends with a newline");
    assert!(is_token(hex), "token file content {text:?}");

    // The instance dir holds exactly the socket and the token.
    let mut entries: Vec<String> = fs::read_dir(&dir)
        .expect("list instance dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["proxy.sock", "token"]);

    // And it serves.
    let mut c = p.connect();
    assert_eq!(
        c.handshake(Some(hex)),
        json!({"v":2,"op":"handshake","ok":true,"data":{"version":2}})
    );
    drop(c);

    assert_eq!(p.stop(Signal::SIGTERM).code(), Some(0));
    assert!(!exists(&dir), "instance dir removed on exit");
    assert!(exists(&s.base()), "the base directory stays");
}

#[test]
fn fixed_socket_path() {
    let s = Scratch::new();
    let dir = s.root().join("fixed");
    mkdir(&dir, 0o700);
    let path = dir.join("cp.sock");
    let path_arg = path.display().to_string();
    let mut p = s.serve(&["--socket", &path_arg]);

    assert_eq!(p.socket, path);
    let env = p.exports();
    assert_eq!(env["CREDPROXY_SOCKET"], path_arg);
    assert_eq!(env["LLXPRT_CREDENTIAL_SOCKET"], path_arg);
    let token_file = dir.join("cp.sock.token");
    assert_eq!(p.token_file(), Some(token_file.clone()));
    assert_eq!(mode_of(&path), 0o600, "socket");
    assert_eq!(mode_of(&token_file), 0o600, "token");
    assert!(is_token(&p.token()));
    assert!(
        s.base().metadata().is_err(),
        "no base directory in fixed mode"
    );

    let mut c = p.sandbox_client();
    assert_eq!(
        c.call("1", "list_providers", json!({})),
        json!({"id":"1","ok":true,"data":{"providers":[]}})
    );
    drop(c);

    // A second instance on the same live path is refused.
    let second = s
        .try_serve(&["--socket", &path_arg])
        .err()
        .expect("second serve on a live socket fails");
    second.assert_stderr(3, &["in use"]);
    assert!(exists(&path), "the live socket is kept");

    assert_eq!(p.stop(Signal::SIGTERM).code(), Some(0));
    assert!(!exists(&path), "socket removed");
    assert!(!exists(&token_file), "token removed");
    assert!(exists(&dir), "the user's directory is kept");
}

#[test]
fn fixed_socket_in_an_open_directory_is_refused() {
    let s = Scratch::new();
    let dir = s.root().join("open");
    mkdir(&dir, 0o755);
    let path = dir.join("cp.sock");
    let ran = s
        .try_serve(&["--socket", &path.display().to_string()])
        .err()
        .expect("refused");
    ran.assert_stderr(3, &["chmod 700"]);
    assert!(!exists(&path));
    assert_eq!(mode_of(&dir), 0o755, "never chmod-ed");
}

#[test]
fn stale_fixed_socket_is_replaced() {
    let s = Scratch::new();
    let dir = s.root().join("fixed");
    mkdir(&dir, 0o700);
    let path = dir.join("cp.sock");
    drop(UnixListener::bind(&path).expect("bind a soon-dead socket"));
    assert!(exists(&path));
    let mut p = s.serve(&["--socket", &path.display().to_string()]);
    let mut c = p.sandbox_client();
    assert_eq!(c.call("1", "list_api_keys", json!({}))["ok"], true);
    drop(c);
    assert_eq!(p.stop(Signal::SIGTERM).code(), Some(0));
}

/// `serve` over a socket base directory of `mode`, which it must refuse
/// (exit 3) with stderr containing `says`.
fn refused_over_base(mode: u32, says: &str) -> (Scratch, support::Ran) {
    let s = Scratch::new();
    mkdir(&s.base(), 0o700);
    chmod(&s.base(), mode);
    let ran = s.try_serve(&[]).err().expect("refused");
    ran.assert_stderr(3, &[says]);
    (s, ran)
}

#[test]
fn unsafe_base_directory_is_refused() {
    let (s, ran) = refused_over_base(0o770, "group-writable");
    ran.assert_stderr_has(&["chmod 700"]);
    assert!(
        ran.stderr.contains(&s.base().display().to_string()),
        "names the directory: {}",
        ran.stderr
    );
    assert!(ran.stdout.is_empty(), "nothing printed: {:?}", ran.stdout);
    assert_eq!(mode_of(&s.base()), 0o770, "never chmod-ed");
    assert_eq!(
        fs::read_dir(s.base()).expect("list").count(),
        0,
        "nothing created inside"
    );
}

#[test]
fn world_writable_base_directory_is_refused() {
    let (_s, ran) = refused_over_base(0o707, "world-writable");
    // Was "chmod 700": a world-writable directory is shared; the hint is a
    // private directory instead.
    assert!(!ran.stderr.contains("chmod"), "{}", ran.stderr);
    ran.assert_stderr_has(&["mkdir -m 700"]);
}

#[test]
fn fixed_socket_in_tmp_suggests_a_private_directory_never_chmod() {
    let s = Scratch::new();
    // A /tmp-like directory of ours (sticky, world-writable), and /tmp.
    let shared = s.root().join("shared");
    mkdir(&shared, 0o700);
    chmod(&shared, 0o1777);
    let tmp_sock = format!("/tmp/credproxy-test-{}.sock", std::process::id());
    for path in [
        shared.join("x.sock").display().to_string(),
        tmp_sock.clone(),
    ] {
        let ran = s.try_serve(&["--socket", &path]).err().expect("refused");
        assert_eq!(ran.code(), Some(3), "{}", ran.stderr);
        assert!(!ran.stderr.contains("chmod"), "{path}: {}", ran.stderr);
        assert!(!ran.stderr.contains("chown"), "{path}: {}", ran.stderr);
        assert!(
            ran.stderr.contains("mkdir -m 700 ~/.credproxy"),
            "{path}: {}",
            ran.stderr
        );
    }
    assert!(!exists(std::path::Path::new(&tmp_sock)));
    assert_eq!(mode_of(&shared), 0o1777, "never chmod-ed");
}

#[test]
fn stale_instance_is_removed_and_live_one_kept() {
    let s = Scratch::new();
    // A live instance of another proxy.
    let live = s.serve(&[]);
    // A dead one: its socket was bound, then its process went away.
    let dead = s.base().join("4000001-AAAAAAAAAAAAAAAAAAAAAA");
    mkdir(&dead, 0o700);
    drop(UnixListener::bind(dead.join("proxy.sock")).expect("bind"));
    fs::write(dead.join("token"), format!("{}\n", "ab".repeat(32))).expect("token");
    // Not an instance name: never touched.
    let other = s.base().join("notes");
    mkdir(&other, 0o700);
    drop(UnixListener::bind(other.join("proxy.sock")).expect("bind"));

    let p = s.serve(&[]);
    assert!(!exists(&dead), "the dead instance was removed");
    assert!(exists(&live.instance_dir()), "the live instance stays");
    assert!(
        exists(&other.join("proxy.sock")),
        "other names are left alone"
    );
    assert_ne!(p.instance_dir(), live.instance_dir());

    // Both still serve.
    for proxy in [&live, &p] {
        let mut c = proxy.sandbox_client();
        assert_eq!(
            c.call("1", "list_buckets", json!({"provider":"x"}))["ok"],
            true
        );
    }
}

fn cleanup_on(sig: Signal) {
    let s = Scratch::new();
    let mut p = s.serve(&[]);
    let dir = p.instance_dir();
    // An open connection does not hold up the shutdown.
    let mut c = p.sandbox_client();
    let status = p.stop(sig);
    assert_eq!(
        status.code(),
        Some(0),
        "{sig} → exit 0; stderr:\n{}",
        p.stderr()
    );
    wait_until("the instance dir to disappear", || !exists(&dir));
    c.assert_closed();
    assert_eq!(fs::read_dir(s.base()).expect("list base").count(), 0);
}

#[test]
fn sigterm_removes_the_instance_and_exits_0() {
    cleanup_on(Signal::SIGTERM);
}

#[test]
fn sigint_removes_the_instance_and_exits_0() {
    cleanup_on(Signal::SIGINT);
}

#[test]
fn sighup_removes_the_instance_and_exits_0() {
    cleanup_on(Signal::SIGHUP);
}

#[test]
fn too_long_socket_path_is_refused_before_creating_anything() {
    let s = Scratch::new();
    // <root>/run/<long>/credproxy/<pid>-<nonce>/proxy.sock cannot fit 108.
    let long = s.runtime().join("d".repeat(100));
    mkdir(&long, 0o700);
    let mut cmd = s.command(&["serve", "--store", &s.store_arg()]);
    cmd.env("XDG_RUNTIME_DIR", &long);
    let ran = support::run_bounded(cmd, b"");
    ran.assert_stderr(3, &["too long"]);
    let prefix = format!("socket path {}/credproxy/", long.display());
    assert!(
        ran.stderr.contains(&prefix),
        "names the socket path: {}",
        ran.stderr
    );
    ran.assert_stderr_has(&["proxy.sock"]);
    assert!(ran.stdout.is_empty(), "{:?}", ran.stdout);
    assert_eq!(
        fs::read_dir(&long).expect("list").count(),
        0,
        "nothing created under XDG_RUNTIME_DIR"
    );
}

#[test]
fn too_long_fixed_socket_path_is_refused() {
    let s = Scratch::new();
    let path = s.root().join(format!("{}.sock", "s".repeat(110)));
    let ran = s
        .try_serve(&["--socket", &path.display().to_string()])
        .err()
        .expect("refused");
    ran.assert_stderr(3, &["too long"]);
    assert!(!exists(&path));
}

#[test]
fn connections_are_independent() {
    let s = Scratch::new();
    let p = s.serve(&[]);
    let token = p.token();
    let mut a = p.connect();
    let mut b = Client::connect(&p.socket).expect("connect");
    // b handshakes while a has sent nothing yet.
    assert_eq!(b.handshake(Some(&token))["ok"], true);
    assert_eq!(a.handshake(Some(&token))["ok"], true);
    assert_eq!(
        b.call("x", "list_api_keys", json!({}))["data"],
        json!({"keys":[]})
    );
    assert_eq!(
        a.call("x", "list_api_keys", json!({}))["data"],
        json!({"keys":[]})
    );
}

#[test]
fn usage_errors_exit_2() {
    let s = Scratch::new();
    assert_eq!(s.run(&["no-such-command"], b"").code(), Some(2));
    assert_eq!(s.run(&["serve", "--no-such-flag"], b"").code(), Some(2));
    assert_eq!(
        s.run(&["exec"], b"").code(),
        Some(2),
        "exec needs a command"
    );
    assert_eq!(s.run(&["--help"], b"").code(), Some(0));
}
