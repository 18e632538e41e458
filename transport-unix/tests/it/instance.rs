//! Instance directories, token files, path length, fixed paths, cleanup.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener as StdListener;
use std::path::Path;

use credproxy_core::Secret;
use credproxy_unix::{
    Instance, Listener, PeerPolicy, SUN_PATH_MAX, TokenMode, UnixError, is_instance_dir_name,
};

use crate::common::{self, chmod, is_token_file, listening, mode_of, short_tempdir};

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn instance_directory_has_the_documented_name_and_modes() {
    let tmp = short_tempdir();
    let base = tmp.path().join("b");
    let instance = Instance::create(&base, TokenMode::Generate).expect("instance");

    assert_eq!(mode_of(&base), 0o700);
    let dir = instance.dir();
    assert_eq!(dir.parent(), Some(base.as_path()));
    let name = dir.file_name().and_then(|n| n.to_str()).expect("name");
    // ^<pid>-[A-Za-z0-9_-]{22}$
    let (pid, nonce) = name.split_once('-').expect("dash");
    assert_eq!(pid, std::process::id().to_string());
    assert_eq!(nonce.len(), 22);
    assert!(
        nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert!(is_instance_dir_name(name));
    assert_eq!(mode_of(dir), 0o700);
    assert_eq!(instance.socket_path(), dir.join("proxy.sock"));

    let token_path = instance.token_path().expect("token path");
    assert_eq!(token_path, dir.join("token"));
    assert_eq!(mode_of(token_path), 0o600);
    let contents = std::fs::read(token_path).expect("read token");
    assert!(is_token_file(&contents), "bad token file format");
    let token = instance.token().expect("token");
    assert_eq!(contents, format!("{}\n", token.expose()).into_bytes());
    assert_eq!(format!("{token:?}"), "[redacted]");
    assert!(!format!("{instance:?}").contains(token.expose()));

    let listener = Listener::bind(&instance, PeerPolicy::default()).expect("bind");
    assert!(is_socket(instance.socket_path()));
    assert_eq!(mode_of(instance.socket_path()), 0o600);
    assert_eq!(listener.socket_path(), Some(instance.socket_path()));
}

#[test]
fn instance_without_token_has_no_token_file() {
    let tmp = short_tempdir();
    let instance = Instance::create(tmp.path(), TokenMode::Disabled).expect("instance");
    assert!(instance.token().is_none());
    assert!(instance.token_path().is_none());
    assert!(!instance.dir().join("token").exists());
}

#[test]
fn two_instances_get_different_directories() {
    let tmp = short_tempdir();
    let a = Instance::create(tmp.path(), TokenMode::Generate).expect("a");
    let b = Instance::create(tmp.path(), TokenMode::Generate).expect("b");
    assert_ne!(a.dir(), b.dir());
    assert_ne!(a.token().map(Secret::expose), b.token().map(Secret::expose));
}

#[test]
fn too_long_path_is_refused_before_anything_is_created() {
    let tmp = short_tempdir();
    let base = tmp.path().join("x".repeat(SUN_PATH_MAX - 30));
    let err = Instance::create(&base, TokenMode::Generate).expect_err("too long");
    match &err {
        UnixError::SocketPathTooLong { path, len, max } => {
            assert_eq!(*max, SUN_PATH_MAX);
            assert_eq!(*len, path.as_os_str().len() + 1);
            assert!(path.starts_with(&base));
            assert!(path.ends_with("proxy.sock"));
        }
        other => panic!("expected SocketPathTooLong, got {other:?}"),
    }
    assert!(err.to_string().contains("set XDG_RUNTIME_DIR"), "{err}");
    assert!(!base.exists(), "nothing may be created");
    assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0);

    let fixed_dir = tmp.path().join("d");
    let fixed = fixed_dir.join("s".repeat(SUN_PATH_MAX));
    let err = Instance::fixed(&fixed, TokenMode::Generate).expect_err("too long");
    assert!(
        matches!(err, UnixError::SocketPathTooLong { .. }),
        "{err:?}"
    );
    assert!(!fixed_dir.exists(), "nothing may be created");
}

#[test]
fn base_directory_with_wrong_mode_is_refused() {
    let tmp = short_tempdir();
    chmod(tmp.path(), 0o750);
    let err = Instance::create(tmp.path(), TokenMode::Generate).expect_err("0750 base");
    assert!(matches!(err, UnixError::TooOpen { .. }), "{err:?}");
    assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0);
}

#[test]
fn cleanup_removes_everything_and_is_idempotent() {
    let (tmp, instance, listener) = listening(TokenMode::Generate);
    let dir = instance.dir().to_path_buf();
    assert!(is_socket(instance.socket_path()));
    instance.cleanup().expect("cleanup");
    assert!(!dir.exists());
    instance.cleanup().expect("second cleanup");
    drop(listener);
    drop(instance);
    assert!(tmp.path().exists(), "the base directory is kept");
}

#[test]
fn drop_cleans_up() {
    let (_tmp, instance, _listener) = listening(TokenMode::Generate);
    let dir = instance.dir().to_path_buf();
    drop(instance);
    assert!(!dir.exists());
}

#[test]
fn fixed_path_binds_with_token_beside_the_socket() {
    let tmp = short_tempdir();
    let path = tmp.path().join("s.sock");
    let instance = Instance::fixed(&path, TokenMode::Generate).expect("fixed");
    assert_eq!(instance.socket_path(), path);
    assert_eq!(instance.dir(), tmp.path());
    let token_path = instance.token_path().expect("token path").to_path_buf();
    assert_eq!(token_path, tmp.path().join("s.sock.token"));
    assert_eq!(mode_of(&token_path), 0o600);
    assert!(is_token_file(&std::fs::read(&token_path).expect("read")));

    let listener = Listener::bind(&instance, PeerPolicy::default()).expect("bind");
    assert_eq!(mode_of(&path), 0o600);
    instance.cleanup().expect("cleanup");
    assert!(!path.exists());
    assert!(!token_path.exists());
    assert!(tmp.path().is_dir(), "the user's directory is kept");
    instance.cleanup().expect("idempotent");
    drop(listener);
}

#[test]
fn fixed_path_creates_its_private_directory() {
    let tmp = short_tempdir();
    let dir = tmp.path().join("d");
    let instance = Instance::fixed(&dir.join("s"), TokenMode::Disabled).expect("fixed");
    assert_eq!(mode_of(&dir), 0o700);
    assert!(instance.token_path().is_none());
}

#[test]
fn fixed_path_checks_its_directory() {
    let tmp = short_tempdir();
    chmod(tmp.path(), 0o770);
    let err = Instance::fixed(&tmp.path().join("s"), TokenMode::Generate).expect_err("0770");
    assert!(
        err.to_string()
            .contains("is group-writable; fix with chmod 700"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 0);
}

#[test]
fn fixed_path_replaces_a_stale_socket_and_leftover_token() {
    let tmp = short_tempdir();
    let path = tmp.path().join("s");
    let old = Instance::fixed(&path, TokenMode::Generate).expect("old instance");
    let old_token = old.token().expect("token").expose().to_owned();
    drop(Listener::bind(&old, PeerPolicy::default()).expect("bind"));
    std::mem::forget(old); // a crash: socket and token left behind
    assert!(is_socket(&path));

    let instance = Instance::fixed(&path, TokenMode::Generate).expect("stale replaced");
    assert!(!path.exists(), "stale socket removed");
    let new_token = instance.token().expect("token").expose();
    assert_ne!(new_token, old_token);
    let _listener = Listener::bind(&instance, PeerPolicy::default()).expect("bind");
    assert!(is_socket(&path));
}

#[test]
fn fixed_path_refuses_a_live_socket() {
    let tmp = short_tempdir();
    let path = tmp.path().join("s");
    let live = StdListener::bind(&path).expect("bind");
    let err = Instance::fixed(&path, TokenMode::Generate).expect_err("live");
    assert_eq!(
        err.to_string(),
        format!("socket {} is in use by a running instance", path.display())
    );
    assert!(is_socket(&path), "a live socket is kept");
    assert!(!tmp.path().join("s.token").exists());
    drop(live);
}

#[test]
fn fixed_path_refuses_and_keeps_a_regular_file() {
    let tmp = short_tempdir();
    let path = tmp.path().join("s");
    std::fs::write(&path, b"precious").expect("write");
    let err = Instance::fixed(&path, TokenMode::Generate).expect_err("regular file");
    assert!(matches!(err, UnixError::NotASocket { .. }), "{err:?}");
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).expect("kept"), b"precious");
}

#[test]
fn fixed_path_refuses_and_keeps_a_foreign_token_file() {
    let tmp = short_tempdir();
    let path = tmp.path().join("s");
    let token_path = tmp.path().join("s.token");
    std::fs::write(&token_path, b"not a token\n").expect("write");
    let err = Instance::fixed(&path, TokenMode::Generate).expect_err("foreign token file");
    assert!(matches!(err, UnixError::TokenFileExists { .. }), "{err:?}");
    assert_eq!(std::fs::read(&token_path).expect("kept"), b"not a token\n");
}

#[test]
fn instance_files_belong_to_us() {
    let tmp = short_tempdir();
    let instance = Instance::create(tmp.path(), TokenMode::Generate).expect("instance");
    let me = common::euid();
    for p in [instance.dir(), instance.token_path().expect("token")] {
        assert_eq!(std::fs::symlink_metadata(p).expect("lstat").uid(), me);
    }
}
