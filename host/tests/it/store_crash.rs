//! Crash safety of the store: a writer killed with SIGKILL at a random point
//! leaves every token file whole (one of the versions it wrote), and the
//! next open removes its leftover temp files (partial secrets) at once,
//! while a temp file a live writer holds locked stays.
//!
//! The writer is this test binary itself, re-run with `CRASH_ROOT_ENV` set so
//! that only [`crash_writer_helper`] does anything. The torn-write test runs
//! on every backend (`CRASH_BACKEND_ENV` makes the writer use
//! `encrypted-file` with a fixed test key, or `keyring`; the keyring run is
//! itself a child test on a private gnome-keyring, whose writers inherit
//! its session bus).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use credproxy::store::FileStore;
use credproxy_core::Token;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Map, Value, json};

const CRASH_ROOT_ENV: &str = "CREDPROXY_STORE_CRASH_ROOT";
const CRASH_BASE_ENV: &str = "CREDPROXY_STORE_CRASH_BASE";
const CRASH_BACKEND_ENV: &str = "CREDPROXY_STORE_CRASH_BACKEND";

/// The backend a crash test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Plain,
    Encrypted,
    Keyring,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Plain => "file",
            Backend::Encrypted => "encrypted-file",
            Backend::Keyring => "keyring",
        }
    }

    /// The backend `CRASH_BACKEND_ENV` names (plaintext when unset).
    fn from_env() -> Backend {
        match std::env::var(CRASH_BACKEND_ENV).as_deref() {
            Ok("encrypted-file") => Backend::Encrypted,
            Ok("keyring") => Backend::Keyring,
            _ => Backend::Plain,
        }
    }
}

/// Opens the store at `root` with `backend` (a fixed test key when
/// encrypted; the session bus of the environment for the keyring).
fn open(root: &Path, backend: Backend) -> FileStore {
    match backend {
        Backend::Plain => FileStore::open(root).expect("open"),
        Backend::Encrypted => {
            let key = credproxy::store::key::DataKey::from_bytes([0x3c; 32]);
            FileStore::open_encrypted(root, key).expect("open encrypted")
        }
        Backend::Keyring => {
            let keyring = credproxy::keyring::Keyring::open(Duration::from_secs(5))
                .expect("open the keyring");
            FileStore::open_keyring(root, keyring).expect("open keyring store")
        }
    }
}
/// Versions of round `r` start at `r * ROUND_STRIDE`.
const ROUND_STRIDE: u64 = 1_000_000;
const BUCKETS: [&str; 3] = ["b0", "b1", "b2"];
/// Large enough that a write spans many syscalls and the kill often lands
/// inside one.
const PAD_LEN: usize = 256 * 1024;

/// Version `n` of a token: its padding is derived from `n`, so any mix of two
/// versions is detected.
fn version(n: u64) -> Token {
    let unit = format!("{n:016x}");
    let pad = unit.repeat(PAD_LEN / unit.len());
    let Value::Object(map) = json!({"access_token": format!("at-{n}"), "n": n, "pad": pad}) else {
        unreachable!("literal object");
    };
    Token::from_map(map)
}

fn check_version(token: &Token) -> u64 {
    let map: &Map<String, Value> = token.as_map();
    let n = map.get("n").and_then(Value::as_u64).expect("n field");
    assert_eq!(token, &version(n), "token is exactly version {n}");
    n
}

/// The child: writes versions round-robin over the buckets until killed.
#[test]
#[ignore = "helper process for crash_leaves_old_or_new_token_never_torn"]
fn crash_writer_helper() {
    let Some(root) = std::env::var_os(CRASH_ROOT_ENV) else {
        return;
    };
    let base: u64 = std::env::var(CRASH_BASE_ENV)
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(0);
    let store = open(Path::new(&root), Backend::from_env());
    for n in base.. {
        let bucket = BUCKETS[(n % 3) as usize];
        store
            .put_token("crash", bucket, &version(n))
            .expect("child put");
    }
}

fn random_below(bound: u64) -> u64 {
    RandomState::new().hash_one(Instant::now()) % bound
}

#[test]
fn crash_leaves_old_or_new_token_never_torn() {
    crash_leaves_old_or_new_token_never_torn_on(Backend::Plain);
}

#[test]
fn crash_leaves_old_or_new_token_never_torn_encrypted() {
    crash_leaves_old_or_new_token_never_torn_on(Backend::Encrypted);
}

#[test]
fn crash_leaves_old_or_new_token_never_torn_keyring() {
    let keyring = crate::support::keyring::TestKeyring::fresh();
    crate::support::keyring::run_child_test("store_crash::crash_keyring_child", &[], |cmd| {
        keyring.apply(cmd).env(CRASH_BACKEND_ENV, "keyring")
    });
}

/// The keyring run, in a child on a private session bus (the test
/// process has none, and its environment is not changed at run time).
#[test]
#[ignore = "helper process for crash_leaves_old_or_new_token_never_torn_keyring"]
fn crash_keyring_child() {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
        || Backend::from_env() != Backend::Keyring
    {
        return;
    }
    crash_leaves_old_or_new_token_never_torn_on(Backend::Keyring);
}

fn crash_leaves_old_or_new_token_never_torn_on(backend: Backend) {
    let exe = std::env::current_exe().expect("test binary");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("credproxy");
    drop(open(&root, backend));
    let observer = open(&root, backend);
    for round in 0..5 {
        let base = round * ROUND_STRIDE;
        let log = tmp.path().join(format!("writer-{round}.log"));
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "store_crash::crash_writer_helper",
                "--test-threads=1",
            ])
            .env(CRASH_ROOT_ENV, &root)
            .env(CRASH_BASE_ENV, base.to_string())
            .env(CRASH_BACKEND_ENV, backend.name())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("writer log"))
            .spawn()
            .expect("spawn writer");
        // Wait (bounded) until the child's loop has written every bucket in
        // this round (b2 is the last of each turn), then kill it at a random
        // point of it.
        let started = Instant::now();
        loop {
            let first = observer
                .get_token("crash", "b2", true)
                .expect("read while writing");
            if first.is_some_and(|t| check_version(&t) >= base) {
                break;
            }
            // Bounded, with room for a loaded machine (the property under
            // test is "never torn", not speed); a writer that stopped on
            // its own says why.
            let exited = child.try_wait().expect("try_wait");
            if exited.is_some() || started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "round {round}: the writer never wrote (exit: {exited:?}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(1));
        }
        thread::sleep(Duration::from_millis(random_below(60)));
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert!(!status.success(), "writer was killed, not finished");

        // A write in progress elsewhere: a temp file whose lock is held.
        let tokens = root.join("tokens");
        let live = tokens.join(format!(".tmp-live-writer.{round}"));
        let held = live_writer(&live);
        let store = open(&root, backend);
        assert_eq!(
            temp_files(&tokens),
            std::slice::from_ref(&live),
            "round {round}: every abandoned temp file removed, the live writer's kept"
        );
        drop(held);
        std::fs::remove_file(&live).expect("remove");
        let buckets = store.list_buckets("crash").expect("list");
        assert_eq!(buckets, BUCKETS, "round {round}: all buckets written");
        for bucket in &buckets {
            assert!(
                BUCKETS.contains(&bucket.as_str()),
                "unexpected bucket {bucket}"
            );
            let token = store
                .get_token("crash", bucket, true)
                .expect("every token file parses")
                .expect("listed token exists");
            let n = check_version(&token);
            assert!(n < base + ROUND_STRIDE, "no version from the future");
        }
        assert_eq!(store.list_providers().expect("list"), ["crash"]);
    }
}

/// Whether process `pid` is stopped (state `T` in /proc/PID/stat).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('T'))
        })
        .unwrap_or(false)
}

#[test]
fn kill_mid_write_leaves_temp_files_the_next_open_removes() {
    // On tmpfs a temp file lives only a moment of each write, so a blind
    // kill rarely lands in one: freeze the writer (SIGSTOP) until a temp
    // file is on disk, then SIGKILL it there.
    let exe = std::env::current_exe().expect("test binary");
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("credproxy");
    let tokens = root.join("tokens");
    FileStore::open(&root).expect("open");
    let mut left = 0;
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args(["--ignored", "--exact", "store_crash::crash_writer_helper"])
            .args(["--test-threads=1"])
            .env(CRASH_ROOT_ENV, &root)
            .env(CRASH_BASE_ENV, (round * ROUND_STRIDE).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                Instant::now() < deadline,
                "never caught a write in progress"
            );
            kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
            while !is_stopped(child.id()) {
                assert!(Instant::now() < deadline, "writer did not stop");
                thread::yield_now();
            }
            let before = left;
            left += temp_files(&tokens).len();
            if left > before {
                break;
            }
            kill(pid, Signal::SIGCONT).expect("SIGCONT");
            thread::sleep(Duration::from_micros(200 + random_below(2_000)));
        }
        kill(pid, Signal::SIGKILL).expect("SIGKILL");
        child.wait().expect("wait");
    }
    // Each writer's own open removed the leftovers of the kill before it;
    // the last kill's are still there.
    assert!(left >= 3, "every kill left a partial write");
    let on_disk = temp_files(&tokens);
    assert!(!on_disk.is_empty(), "the last kill left a partial write");
    let live = tokens.join(".tmp-live-writer");
    let held = live_writer(&live);
    let store = FileStore::open(&root).expect("opens after the kills");
    assert_eq!(
        temp_files(&tokens),
        std::slice::from_ref(&live),
        "all {} abandoned temp files removed at open, the live one kept",
        on_disk.len()
    );
    drop(held);
    for bucket in store.list_buckets("crash").expect("list") {
        let token = store.get_token("crash", &bucket, true).expect("whole");
        check_version(&token.expect("listed"));
    }
}

/// Temp files in `dir` (names starting with `.tmp-`).
fn temp_files(dir: &Path) -> Vec<std::path::PathBuf> {
    crate::support::files_where(dir, |n| n.starts_with(".tmp-"))
}

/// A write in progress elsewhere: a partial temp file at `path` whose lock
/// is held (until the returned lock is dropped).
fn live_writer(path: &Path) -> Flock<std::fs::File> {
    std::fs::write(path, b"{\"partial").expect("write");
    let file = std::fs::File::open(path).expect("open");
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("lock")
}
