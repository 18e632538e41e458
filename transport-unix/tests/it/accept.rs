//! The accept loop: admitted peers, refused peers, and a peer of another uid.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::Path;
use std::process::{Command, Stdio};

use credproxy_core::Transport;
use credproxy_unix::{Accepted, Instance, Listener, PeerPolicy, RefusalReason, TokenMode};
use smol::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{LIMIT, block_on_bounded, chmod, euid, is_root, listening, short_tempdir};

/// Connects a blocking client whose reads give up after [`LIMIT`].
fn connect(path: &Path) -> StdStream {
    let client = StdStream::connect(path).expect("connect");
    client.set_read_timeout(Some(LIMIT)).expect("timeout");
    client
}

#[test]
fn our_own_uid_is_allowed_with_uid_gid_and_pid() {
    let (_tmp, instance, listener) = listening(TokenMode::Generate);
    // The kernel queues the connection; accept picks it up below.
    let mut client = connect(instance.socket_path());

    let accepted = block_on_bounded(listener.accept()).expect("accept");
    let Accepted::Allowed(mut stream, peer) = accepted else {
        panic!("expected Allowed, got {accepted:?}");
    };
    assert_eq!(peer.uid, Some(euid()));
    assert_eq!(peer.gid, Some(nix::unistd::getegid().as_raw()));
    assert_eq!(peer.pid, Some(std::process::id()));
    assert_eq!(peer.transport, Transport::Unix);

    // The stream is usable both ways.
    client.write_all(b"ping").expect("client write");
    let mut buf = [0u8; 4];
    block_on_bounded(stream.read_exact(&mut buf)).expect("server read");
    assert_eq!(&buf, b"ping");
    block_on_bounded(stream.write_all(b"pong")).expect("server write");
    client.read_exact(&mut buf).expect("client read");
    assert_eq!(&buf, b"pong");
}

#[test]
fn a_listed_uid_is_allowed_by_an_explicit_policy() {
    let tmp = short_tempdir();
    let instance = Instance::create(tmp.path(), TokenMode::Disabled).expect("instance");
    let listener = Listener::bind(&instance, PeerPolicy::explicit(vec![euid()])).expect("bind");
    let _client = connect(instance.socket_path());
    let accepted = block_on_bounded(listener.accept()).expect("accept");
    assert!(matches!(accepted, Accepted::Allowed(..)), "{accepted:?}");
}

#[test]
fn an_excluded_uid_is_refused_and_sees_eof() {
    let tmp = short_tempdir();
    let instance = Instance::create(tmp.path(), TokenMode::Generate).expect("instance");
    let listener = Listener::bind(&instance, PeerPolicy::explicit(vec![])).expect("bind");
    let mut client = connect(instance.socket_path());

    let accepted = block_on_bounded(listener.accept()).expect("accept");
    let Accepted::Refused { peer, reason } = accepted else {
        panic!("expected Refused, got {accepted:?}");
    };
    let peer = peer.expect("peer identity known");
    assert_eq!(peer.uid, Some(euid()));
    assert_eq!(peer.pid, Some(std::process::id()));
    assert!(matches!(reason, RefusalReason::UidNotAllowed { uid } if uid == euid()));
    assert_eq!(reason.code(), "uid_not_allowed");

    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).expect("read EOF, not a timeout"), 0);

    // The listener keeps serving after a refusal.
    let _second = connect(instance.socket_path());
    let again = block_on_bounded(listener.accept()).expect("accept");
    assert!(matches!(again, Accepted::Refused { .. }), "{again:?}");
}

#[test]
fn accept_works_from_an_executor_task() {
    let (_tmp, instance, listener) = listening(TokenMode::Disabled);
    let path = instance.socket_path().to_path_buf();
    block_on_bounded(async move {
        let server = smol::spawn(async move { listener.accept().await });
        let mut client = async_net::unix::UnixStream::connect(&path)
            .await
            .expect("connect");
        let Accepted::Allowed(mut stream, _) = server.await.expect("accept") else {
            panic!("expected Allowed");
        };
        stream.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hi");
    });
}

/// The flags that make `setpriv` run its program as uid and gid 65534
/// without supplementary groups.
const AS_NOBODY: [&str; 3] = ["--reuid=65534", "--regid=65534", "--clear-groups"];

/// A python3 that uid 65534 can run, if any.
fn python_for_nobody() -> Option<&'static str> {
    let candidates = ["/usr/bin/python3", "/usr/local/bin/python3", "python3"];
    candidates.into_iter().find(|python| {
        let mut probe = Command::new("setpriv");
        probe.args(AS_NOBODY).args([python, "-c", "pass"]);
        probe
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        probe.status().is_ok_and(|s| s.success())
    })
}

#[test]
fn a_peer_of_another_uid_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to run a client as uid 65534");
        return;
    }
    let Some(python) = python_for_nobody() else {
        eprintln!("skipped: setpriv or a python3 runnable by uid 65534 is missing");
        return;
    };
    // Reachable by uid 65534 for this test only: directory 0711, socket 0666.
    let tmp = short_tempdir();
    chmod(tmp.path(), 0o711);
    let path = tmp.path().join("s");
    let std_listener = StdListener::bind(&path).expect("bind");
    chmod(&path, 0o666);
    let listener =
        Listener::from_std(std_listener, PeerPolicy::explicit(vec![euid()])).expect("listener");

    const CLIENT: &str = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
        s.settimeout(5)\n\
        s.connect(sys.argv[1])\n\
        print(len(s.recv(1)))\n";
    let child = Command::new("setpriv")
        .args(AS_NOBODY)
        .args([python, "-c", CLIENT])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");

    let accepted = block_on_bounded(listener.accept()).expect("accept");
    let output = child.wait_with_output().expect("client exit");
    let Accepted::Refused { peer, reason } = accepted else {
        panic!("expected Refused, got {accepted:?}");
    };
    let peer = peer.expect("peer identity known");
    assert_eq!(peer.uid, Some(65534));
    assert_eq!(peer.gid, Some(65534));
    assert!(peer.pid.is_some());
    assert!(matches!(
        reason,
        RefusalReason::UidNotAllowed { uid: 65534 }
    ));
    assert!(
        output.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "0",
        "client saw EOF"
    );
}
