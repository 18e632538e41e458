//! Helpers shared by the integration tests.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use credproxy_unix::{Instance, Listener, PeerPolicy, TokenMode};

/// Upper bound for every wait in these tests; a failure cannot hang.
pub const LIMIT: Duration = Duration::from_secs(5);

/// A fresh private (0700) temp dir with a short path (`sun_path` is small).
pub fn short_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("cpu")
        .tempdir_in("/tmp")
        .expect("temp dir under /tmp");
    chmod(dir.path(), 0o700);
    dir
}

/// Runs `fut` to completion on the smol reactor, or panics after [`LIMIT`].
pub fn block_on_bounded<T>(fut: impl Future<Output = T>) -> T {
    smol::block_on(smol::future::or(async { Some(fut.await) }, async {
        smol::Timer::after(LIMIT).await;
        None
    }))
    .expect("timed out")
}

/// Permission bits of `path` (without following a symlink).
pub fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .expect("lstat")
        .permissions()
        .mode()
        & 0o7777
}

/// Sets the permission bits of `path`.
pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Whether we run as root (some tests need it, and skip otherwise).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether we run as root; when not, says the test is skipped because it
/// needs root `to` do something.
pub fn root_or_skip(to: &str) -> bool {
    let root = is_root();
    if !root {
        eprintln!("skipped: needs root to {to}");
    }
    root
}

/// A fresh base directory with an instance (token `mode`) and its
/// listener under the default peer policy.
pub fn listening(mode: TokenMode) -> (tempfile::TempDir, Instance, Listener) {
    let tmp = short_tempdir();
    let instance = Instance::create(tmp.path(), mode).expect("instance");
    let listener = Listener::bind(&instance, PeerPolicy::default()).expect("bind");
    (tmp, instance, listener)
}

/// Our effective uid.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether `s` is a capability token file: 64 lowercase hex and "\n".
pub fn is_token_file(s: &[u8]) -> bool {
    s.len() == 65
        && s[64] == b'\n'
        && s[..64]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
