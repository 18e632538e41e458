//! Removing dead instances, keeping live ones and everything else.

use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener as StdListener;
use std::path::{Path, PathBuf};

use credproxy_unix::{Instance, Listener, PeerPolicy, TokenMode, remove_stale_instances};

use crate::common::{self, root_or_skip, short_tempdir};

/// An instance whose process "crashed": socket file and token left behind.
fn dead_instance(base: &Path) -> PathBuf {
    let instance = Instance::create(base, TokenMode::Generate).expect("instance");
    drop(Listener::bind(&instance, PeerPolicy::default()).expect("bind"));
    let dir = instance.dir().to_path_buf();
    std::mem::forget(instance);
    assert!(dir.join("proxy.sock").exists() && dir.join("token").exists());
    dir
}

#[test]
fn removes_dead_keeps_live_and_unrelated() {
    let tmp = short_tempdir();
    let base = tmp.path();

    let dead = dead_instance(base);

    let live = Instance::create(base, TokenMode::Generate).expect("live");
    let _live_listener = Listener::bind(&live, PeerPolicy::default()).expect("bind");

    // Unrelated name with a dead socket inside.
    let unrelated = base.join("other");
    std::fs::create_dir(&unrelated).expect("mkdir");
    drop(StdListener::bind(unrelated.join("proxy.sock")).expect("bind"));

    // Instance-shaped name without a socket (e.g. an instance starting up).
    let starting = base.join("1-AAAAAAAAAAAAAAAAAAAAAA");
    std::fs::create_dir(&starting).expect("mkdir");
    std::fs::write(starting.join("token"), b"x").expect("write");

    // Instance-shaped name holding a regular file called proxy.sock.
    let fake = base.join("2-AAAAAAAAAAAAAAAAAAAAAA");
    std::fs::create_dir(&fake).expect("mkdir");
    std::fs::write(fake.join("proxy.sock"), b"x").expect("write");

    // Instance-shaped symlink to a dead instance elsewhere: not followed.
    let elsewhere = short_tempdir();
    let target = dead_instance(elsewhere.path());
    let link = base.join("3-AAAAAAAAAAAAAAAAAAAAAA");
    symlink(&target, &link).expect("symlink");

    // A dead instance with an extra file: socket and token go, the rest stays.
    let cluttered = dead_instance(base);
    std::fs::write(cluttered.join("notes"), b"keep").expect("write");

    let removed = remove_stale_instances(base).expect("cleanup");
    assert_eq!(removed, 1);

    assert!(!dead.exists(), "dead instance removed");
    assert!(live.socket_path().exists(), "live socket kept");
    assert!(
        live.token_path().expect("token").exists(),
        "live token kept"
    );
    assert!(unrelated.join("proxy.sock").exists(), "unrelated kept");
    assert!(starting.join("token").exists(), "socketless instance kept");
    assert!(fake.join("proxy.sock").exists(), "non-socket kept");
    assert!(link.symlink_metadata().is_ok(), "symlink kept");
    assert!(
        target.join("proxy.sock").exists(),
        "symlink target untouched"
    );
    assert_eq!(
        std::fs::read(cluttered.join("notes")).expect("kept"),
        b"keep"
    );
    assert!(!cluttered.join("proxy.sock").exists());
    assert!(!cluttered.join("token").exists());

    // Nothing left to do the second time.
    assert_eq!(remove_stale_instances(base).expect("again"), 0);
}

#[test]
fn missing_base_is_nothing_to_do() {
    let tmp = short_tempdir();
    assert_eq!(
        remove_stale_instances(&tmp.path().join("none")).expect("ok"),
        0
    );
}

#[test]
fn refuses_a_base_that_is_not_private() {
    let tmp = short_tempdir();
    let dead = dead_instance(tmp.path());
    common::chmod(tmp.path(), 0o777);
    assert!(remove_stale_instances(tmp.path()).is_err());
    assert!(dead.exists());
}

#[test]
fn skips_instances_owned_by_someone_else() {
    if !root_or_skip("chown a directory to another uid") {
        return;
    }
    let tmp = short_tempdir();
    let dead = dead_instance(tmp.path());
    nix::unistd::chown(&dead, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
    assert_eq!(remove_stale_instances(tmp.path()).expect("cleanup"), 0);
    assert!(dead.join("proxy.sock").exists());
}
