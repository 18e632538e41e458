//! Behaviour of `FileStore` through its public API, plus the on-disk facts
//! (modes, names, symlinks) that API cannot show.

use std::fs::{self, File, Permissions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use credproxy_core::{Secret, Token};
use serde_json::{Value, json};
use tempfile::TempDir;

use super::names::{api_key_file_name, json_file_name, lock_file_name};
use super::*;

const SECRET_TOKEN: &str = "at-SENTINEL-7f3a9c";
const SECRET_REFRESH: &str = "rt-SENTINEL-51be02";
const SECRET_KEY: &str = "sk-SENTINEL-c0ffee";

fn tok(v: Value) -> Token {
    match v {
        Value::Object(m) => Token::from_map(m),
        _ => unreachable!("test tokens are objects"),
    }
}

fn secret_token() -> Token {
    tok(json!({
        "access_token": SECRET_TOKEN,
        "refresh_token": SECRET_REFRESH,
        "token_type": "Bearer",
        "expiry": 1_900_000_000,
        "account_id": "acct-1",
    }))
}

/// A fresh store at `<tmp>/credproxy` (created by `open`).
fn new_store() -> (TempDir, PathBuf, FileStore) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("credproxy");
    let store = FileStore::open(&root).expect("open");
    (tmp, root, store)
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("lstat").mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, Permissions::from_mode(mode)).expect("chmod");
}

fn token_path(root: &Path, p: &str, b: &str) -> PathBuf {
    root.join("tokens").join(json_file_name(p, b))
}

fn assert_invalid_name<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    assert!(
        matches!(r, Err(StoreError::InvalidName { .. })),
        "{what}: {r:?}"
    );
}

fn is_send_sync<T: Send + Sync>() {}

#[test]
fn store_types_are_send_and_sync() {
    is_send_sync::<FileStore>();
    is_send_sync::<Arc<FileStore>>();
    is_send_sync::<KeyLock>();
    is_send_sync::<StoreError>();
}

#[test]
fn default_root_ends_in_credproxy() {
    // Depends on the environment; only the shape is checked when it resolves.
    if let Ok(root) = FileStore::default_root() {
        assert!(root.is_absolute());
        assert!(root.ends_with("credproxy"));
    }
}

#[test]
fn token_round_trip() {
    let (_tmp, root, store) = new_store();
    assert_eq!(store.root(), root);
    assert_eq!(
        store.get_token("gemini", "default", false).expect("get"),
        None
    );
    assert_eq!(store.get_token_cached("gemini", "default"), Some(None));

    let t1 = secret_token();
    store.put_token("gemini", "default", &t1).expect("put");
    assert_eq!(
        store.get_token("gemini", "default", false).expect("get"),
        Some(t1.clone())
    );
    assert_eq!(
        store.get_token("gemini", "default", true).expect("get"),
        Some(t1.clone())
    );
    assert_eq!(
        store.get_token_cached("gemini", "default"),
        Some(Some(t1.clone()))
    );

    let t2 = tok(json!({"access_token": "a2", "expiry": 5, "extra": {"nested": [1, 2]}}));
    store
        .put_token("gemini", "default", &t2)
        .expect("overwrite");
    assert_eq!(
        store.get_token("gemini", "default", false).expect("get"),
        Some(t2.clone())
    );

    // A fresh instance reads what was written (not only the cache).
    let other = FileStore::open(&root).expect("reopen");
    assert_eq!(
        other.get_token("gemini", "default", false).expect("get"),
        Some(t2)
    );
    assert_eq!(other.get_token("gemini", "work", false).expect("get"), None);

    store.delete_token("gemini", "default").expect("delete");
    assert_eq!(
        store.get_token("gemini", "default", false).expect("get"),
        None
    );
    assert_eq!(store.get_token_cached("gemini", "default"), Some(None));
    store
        .delete_token("gemini", "default")
        .expect("delete absent is ok");
    assert!(!token_path(&root, "gemini", "default").exists());
}

#[test]
fn cached_fast_path_needs_a_read_first() {
    let (_tmp, _root, store) = new_store();
    assert_eq!(store.get_token_cached("p", "b"), None, "nothing cached yet");
    store.get_token("p", "b", true).expect("get");
    assert_eq!(store.get_token_cached("p", "b"), Some(None));
}

#[test]
fn listing_providers_and_buckets() {
    let (_tmp, root, store) = new_store();
    assert!(store.list_providers().expect("list").is_empty());
    assert!(store.list_buckets("zeta").expect("list").is_empty());
    let t = tok(json!({"access_token": "x"}));
    for (p, b) in [
        ("zeta", "default"),
        ("alpha", "work"),
        ("alpha", "default"),
        ("Alpha", "x@y.z"),
    ] {
        store.put_token(p, b, &t).expect("put");
    }
    // Stray and crash-leftover files are not names.
    let tokens = root.join("tokens");
    for stray in [
        ".tmp-61.62.json.1.2.3",
        "README",
        "ZZ.61.json",
        "2e2e.61.json",
        "61.json",
    ] {
        fs::write(tokens.join(stray), b"{}").expect("stray");
        chmod(&tokens.join(stray), 0o600);
    }
    assert_eq!(
        store.list_providers().expect("list"),
        ["Alpha", "alpha", "zeta"]
    );
    assert_eq!(
        store.list_buckets("alpha").expect("list"),
        ["default", "work"]
    );
    assert_eq!(store.list_buckets("Alpha").expect("list"), ["x@y.z"]);
    store.delete_token("zeta", "default").expect("delete");
    assert_eq!(store.list_providers().expect("list"), ["Alpha", "alpha"]);
}

#[test]
fn api_key_round_trip() {
    let (_tmp, root, store) = new_store();
    assert_eq!(store.get_api_key("OPENAI_API_KEY").expect("get"), None);
    assert!(!store.has_api_key("OPENAI_API_KEY").expect("has"));
    assert!(store.list_api_keys().expect("list").is_empty());

    store
        .set_api_key("openai", &Secret::new(SECRET_KEY))
        .expect("set");
    store
        .set_api_key("OPENAI_API_KEY", &Secret::new("v1\n"))
        .expect("set");
    store
        .set_api_key("b.key-2", &Secret::new(""))
        .expect("set empty");
    assert_eq!(
        store.list_api_keys().expect("list"),
        ["OPENAI_API_KEY", "b.key-2", "openai"]
    );
    assert!(store.has_api_key("openai").expect("has"));
    assert_eq!(
        store
            .get_api_key("openai")
            .expect("get")
            .map(Secret::into_inner)
            .as_deref(),
        Some(SECRET_KEY)
    );
    assert_eq!(
        store
            .get_api_key("OPENAI_API_KEY")
            .expect("get")
            .map(Secret::into_inner)
            .as_deref(),
        Some("v1\n"),
        "stored byte for byte"
    );
    let raw = fs::read(root.join("keys").join(api_key_file_name("openai"))).expect("raw");
    assert_eq!(raw, SECRET_KEY.as_bytes());

    store
        .set_api_key("openai", &Secret::new("replaced"))
        .expect("replace");
    assert_eq!(
        store
            .get_api_key("openai")
            .expect("get")
            .map(Secret::into_inner)
            .as_deref(),
        Some("replaced")
    );
    assert!(store.remove_api_key("openai").expect("remove"));
    assert!(!store.remove_api_key("openai").expect("remove again"));
    assert_eq!(store.get_api_key("openai").expect("get"), None);
    assert!(!store.has_api_key("openai").expect("has"));
    assert_eq!(
        store.list_api_keys().expect("list"),
        ["OPENAI_API_KEY", "b.key-2"]
    );
}

#[test]
fn names_that_could_traverse_are_refused_everywhere() {
    let (_tmp, root, store) = new_store();
    let t = tok(json!({"access_token": "x"}));
    let k = Secret::new("v");
    let m = KeyMeta::default();
    let long = "a".repeat(65);
    let w = Duration::from_millis(1);
    for bad in [
        "../x",
        ".",
        "..",
        "a/b",
        "",
        long.as_str(),
        "a\\b",
        "a\0b",
        "ü",
    ] {
        assert_invalid_name(store.get_token(bad, "b", false), "get provider");
        assert_invalid_name(store.get_token("p", bad, true), "get bucket");
        assert_eq!(store.get_token_cached(bad, "b"), None);
        assert_invalid_name(store.put_token(bad, "b", &t), "put provider");
        assert_invalid_name(store.put_token("p", bad, &t), "put bucket");
        assert_invalid_name(store.delete_token(bad, "b"), "delete");
        assert_invalid_name(store.list_buckets(bad), "list_buckets");
        assert_invalid_name(store.get_api_key(bad), "get key");
        assert_invalid_name(store.has_api_key(bad), "has key");
        assert_invalid_name(store.set_api_key(bad, &k), "set key");
        assert_invalid_name(store.remove_api_key(bad), "remove key");
        assert_invalid_name(store.lock_key(bad, "b", w), "lock provider");
        assert_invalid_name(store.lock_key("p", bad, w), "lock bucket");
        assert_invalid_name(store.get_meta("p", bad), "get meta");
        assert_invalid_name(store.put_meta(bad, "b", &m), "put meta");
    }
    assert_invalid_name(store.set_api_key("a@b", &k), "@ only in provider/bucket");
    store
        .put_token(&"a".repeat(64), "user@example.com", &t)
        .expect("64 chars and @ are fine");
    // Nothing escaped the store's directories.
    let mut top: Vec<String> = fs::read_dir(&root)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
        .collect();
    top.sort();
    assert_eq!(top, ["keys", "locks", "meta", "tokens"]);
}

#[test]
fn case_distinct_names_are_distinct_files() {
    let (_tmp, root, store) = new_store();
    store
        .put_token("Gemini", "Default", &tok(json!({"v": 1})))
        .expect("put");
    store
        .put_token("gemini", "default", &tok(json!({"v": 2})))
        .expect("put");
    store
        .set_api_key("Key", &Secret::new("upper"))
        .expect("set");
    store
        .set_api_key("key", &Secret::new("lower"))
        .expect("set");
    assert_eq!(
        store.get_token("Gemini", "Default", true).expect("get"),
        Some(tok(json!({"v": 1})))
    );
    assert_eq!(
        store.get_token("gemini", "default", true).expect("get"),
        Some(tok(json!({"v": 2})))
    );
    assert_eq!(
        store.get_token("GEMINI", "default", true).expect("get"),
        None
    );
    assert_eq!(
        store
            .get_api_key("Key")
            .expect("get")
            .map(Secret::into_inner)
            .as_deref(),
        Some("upper")
    );
    assert_eq!(fs::read_dir(root.join("tokens")).expect("ls").count(), 2);
    assert_eq!(fs::read_dir(root.join("keys")).expect("ls").count(), 2);
    assert!(token_path(&root, "Gemini", "Default").ends_with("47656d696e69.44656661756c74.json"));
}

#[test]
fn files_are_0600_and_directories_0700() {
    let (tmp, root, store) = new_store();
    store.put_token("p", "b", &secret_token()).expect("put");
    store
        .put_meta(
            "p",
            "b",
            &KeyMeta {
                refresh_unusable: true,
            },
        )
        .expect("meta");
    store.set_api_key("k", &Secret::new("v")).expect("key");
    let guard = store
        .lock_key("p", "b", Duration::ZERO)
        .expect("lock")
        .expect("free");
    drop(guard);
    assert_eq!(mode(&root), 0o700);
    for sub in ["tokens", "meta", "locks", "keys"] {
        assert_eq!(mode(&root.join(sub)), 0o700, "{sub}");
    }
    for file in [
        token_path(&root, "p", "b"),
        root.join("meta").join(json_file_name("p", "b")),
        root.join("locks").join(lock_file_name("p", "b")),
        root.join("keys").join(api_key_file_name("k")),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    // Also when the root's parents do not exist yet.
    let deep = tmp.path().join("a").join("b").join("credproxy");
    FileStore::open(&deep).expect("open deep");
    assert_eq!(mode(&deep), 0o700);
    assert_eq!(mode(&deep.join("tokens")), 0o700);
}

#[test]
fn group_writable_root_is_refused_with_the_fix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("credproxy");
    fs::create_dir(&root).expect("mkdir");
    chmod(&root, 0o770);
    let err = FileStore::open(&root).expect_err("group-writable");
    assert!(matches!(err, StoreError::Insecure { .. }), "{err:?}");
    let r = root.display();
    assert_eq!(
        err.to_string(),
        format!("store directory {r} is group-writable (mode 0770); fix with chmod 700 {r}")
    );
    chmod(&root, 0o700);
    FileStore::open(&root).expect("fixed");
}

#[test]
fn wide_subdirectory_and_file_are_refused_with_the_fix() {
    let (_tmp, root, store) = new_store();
    store.put_token("p", "b", &secret_token()).expect("put");
    let tokens = root.join("tokens");
    chmod(&tokens, 0o755);
    let err = FileStore::open(&root).expect_err("world-readable subdir");
    let t = tokens.display();
    assert_eq!(
        err.to_string(),
        format!("store directory {t} is world-readable (mode 0755); fix with chmod 700 {t}")
    );
    chmod(&tokens, 0o700);

    let file = token_path(&root, "p", "b");
    chmod(&file, 0o640);
    let f = file.display();
    let want = format!("store file {f} is group-readable (mode 0640); fix with chmod 600 {f}");
    let err = FileStore::open(&root).expect_err("group-readable file");
    assert_eq!(err.to_string(), want);
    // An already open store refuses it on read as well.
    let err = store.get_token("p", "b", true).expect_err("read");
    assert_eq!(err.to_string(), want);
    chmod(&file, 0o600);
    FileStore::open(&root).expect("fixed");
}

#[test]
fn symlinked_root_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let real = tmp.path().join("real");
    fs::create_dir(&real).expect("mkdir");
    chmod(&real, 0o700);
    let root = tmp.path().join("credproxy");
    std::os::unix::fs::symlink(&real, &root).expect("symlink");
    let err = FileStore::open(&root).expect_err("symlink root");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("store directory {} is a symlink", root.display())),
        "{msg}"
    );
    assert!(msg.contains("fix with rm "), "{msg}");
    // A dangling symlink is refused too, not followed by mkdir.
    let dangling = tmp.path().join("dangling");
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).expect("symlink");
    assert!(matches!(
        FileStore::open(&dangling),
        Err(StoreError::Insecure { .. })
    ));
    assert!(!tmp.path().join("nowhere").exists());
}

#[test]
fn root_that_is_a_file_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("credproxy");
    fs::write(&root, b"").expect("file");
    let err = FileStore::open(&root).expect_err("file root");
    assert!(err.to_string().contains("is not a directory"), "{err}");
}

#[test]
fn foreign_owner_is_refused_with_the_fix() {
    if dirs::euid() != 0 {
        eprintln!("skipped: simulating another owner needs root (chown)");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("credproxy");
    fs::create_dir(&root).expect("mkdir");
    chmod(&root, 0o700);
    std::os::unix::fs::chown(&root, Some(65534), None).expect("chown");
    let err = FileStore::open(&root).expect_err("foreign owner");
    let r = root.display();
    assert_eq!(
        err.to_string(),
        format!(
            "store directory {r} is owned by uid 65534, not 0; fix with chown 0 {r} (as root), or remove it"
        )
    );
    std::os::unix::fs::chown(&root, Some(0), None).expect("chown back");
    let store = FileStore::open(&root).expect("fixed");

    // A foreign-owned file inside is refused too.
    store
        .set_api_key("k", &Secret::new(SECRET_KEY))
        .expect("set");
    let key = root.join("keys").join(api_key_file_name("k"));
    std::os::unix::fs::chown(&key, Some(65534), None).expect("chown file");
    let err = store.get_api_key("k").expect_err("foreign key file");
    assert!(
        err.to_string().contains("is owned by uid 65534, not 0"),
        "{err}"
    );
    assert!(!err.to_string().contains(SECRET_KEY));
    assert!(store.has_api_key("k").is_err());
    assert!(FileStore::open(&root).is_err());
}

#[test]
fn another_instance_sees_writes_at_once() {
    let (_tmp, root, a) = new_store();
    let b = FileStore::open(&root).expect("open b");
    assert_eq!(a.get_token("p", "b", false).expect("get"), None);
    for v in 0..20 {
        // Same size every time: only the inode tells the versions apart
        // when they land within one mtime tick.
        let t = tok(json!({"access_token": format!("v{v:02}")}));
        b.put_token("p", "b", &t).expect("put");
        assert_eq!(a.get_token_cached("p", "b"), None, "stale entry not served");
        assert_eq!(a.get_token("p", "b", false).expect("get"), Some(t.clone()));
        assert_eq!(a.get_token_cached("p", "b"), Some(Some(t)));
    }
    b.delete_token("p", "b").expect("delete");
    assert_eq!(a.get_token_cached("p", "b"), None);
    assert_eq!(a.get_token("p", "b", false).expect("get"), None);
}

#[test]
fn fresh_read_bypasses_the_cache() {
    let (_tmp, root, store) = new_store();
    store
        .put_token("p", "b", &tok(json!({"access_token": "aaaa"})))
        .expect("put");
    let path = token_path(&root, "p", "b");
    let before = fs::metadata(&path).expect("stat");
    // Rewrite in place with the same size and restore the mtime: invisible
    // to the identity check, visible to a fresh read.
    let text = fs::read_to_string(&path)
        .expect("read")
        .replace("aaaa", "bbbb");
    fs::write(&path, text).expect("rewrite");
    File::options()
        .write(true)
        .open(&path)
        .expect("open")
        .set_modified(before.modified().expect("mtime"))
        .expect("set mtime");
    let cached = store.get_token("p", "b", false).expect("get");
    assert_eq!(cached, Some(tok(json!({"access_token": "aaaa"}))));
    let fresh = store.get_token("p", "b", true).expect("get");
    assert_eq!(fresh, Some(tok(json!({"access_token": "bbbb"}))));
}

#[test]
fn symlinked_token_file_is_refused() {
    let (tmp, root, store) = new_store();
    let target = tmp.path().join("elsewhere.json");
    fs::write(&target, br#"{"access_token":"planted"}"#).expect("write");
    chmod(&target, 0o600);
    let link = token_path(&root, "p", "b");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    for fresh in [false, true] {
        let err = store.get_token("p", "b", fresh).expect_err("symlink read");
        assert!(err.to_string().contains("is a symlink"), "{err}");
    }
    assert_eq!(store.get_token_cached("p", "b"), None);
    assert!(FileStore::open(&root).is_err(), "refused at open too");
    // A write replaces the link itself and never touches its target.
    store
        .put_token("p", "b", &tok(json!({"access_token": "mine"})))
        .expect("put");
    assert!(
        !fs::symlink_metadata(&link)
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read(&target).expect("read"),
        br#"{"access_token":"planted"}"#
    );
}

#[test]
fn symlinked_lock_and_key_files_are_refused() {
    let (tmp, root, store) = new_store();
    let target = tmp.path().join("t");
    fs::write(&target, b"x").expect("write");
    chmod(&target, 0o600);
    let lock = root.join("locks").join(lock_file_name("p", "b"));
    std::os::unix::fs::symlink(&target, &lock).expect("symlink");
    let err = store.lock_key("p", "b", Duration::ZERO).expect_err("lock");
    assert!(err.to_string().contains("is a symlink"), "{err}");
    let key = root.join("keys").join(api_key_file_name("k"));
    std::os::unix::fs::symlink(&target, &key).expect("symlink");
    assert!(store.get_api_key("k").is_err());
    assert!(store.has_api_key("k").is_err());
}

#[test]
fn fifo_in_the_store_is_refused_without_hanging() {
    let (_tmp, root, store) = new_store();
    let path = token_path(&root, "p", "b");
    let status = std::process::Command::new("mkfifo")
        .arg("-m")
        .arg("600")
        .arg(&path)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo unavailable");
        return;
    }
    let err = store.get_token("p", "b", true).expect_err("fifo");
    assert!(err.to_string().contains("is not a regular file"), "{err}");
}

#[test]
fn lock_excludes_other_instances_until_dropped() {
    let (_tmp, root, a) = new_store();
    let b = FileStore::open(&root).expect("open b");
    let wait = Duration::from_millis(50);
    let held = a.lock_key("p", "b", wait).expect("lock").expect("free");

    let start = Instant::now();
    assert!(
        b.lock_key("p", "b", wait).expect("lock").is_none(),
        "must time out"
    );
    assert!(start.elapsed() >= wait, "waited the full bound");
    assert!(
        a.lock_key("p", "b", Duration::ZERO)
            .expect("lock")
            .is_none(),
        "also in-instance"
    );

    let other = b.lock_key("p", "other", wait).expect("lock");
    assert!(other.is_some(), "another key is independent");
    let other_provider = b.lock_key("q", "b", Duration::ZERO).expect("lock");
    assert!(other_provider.is_some());

    drop(held);
    let again = b.lock_key("p", "b", wait).expect("lock");
    assert!(again.is_some(), "free after the guard is dropped");
    drop(again);
    assert!(
        root.join("locks").join(lock_file_name("p", "b")).exists(),
        "never deleted"
    );
}

#[test]
fn lock_waiter_gets_the_lock_when_released() {
    let (_tmp, root, a) = new_store();
    let b = FileStore::open(&root).expect("open b");
    let held = a
        .lock_key("p", "b", Duration::ZERO)
        .expect("lock")
        .expect("free");
    let waiter = thread::spawn(move || {
        b.lock_key("p", "b", Duration::from_secs(10))
            .expect("lock")
            .is_some()
    });
    thread::sleep(Duration::from_millis(30));
    drop(held);
    assert!(
        waiter.join().expect("join"),
        "waiter acquired after release"
    );
}

#[test]
fn meta_round_trip_and_kept_out_of_tokens() {
    let (_tmp, root, store) = new_store();
    assert_eq!(store.get_meta("p", "b").expect("get"), KeyMeta::default());
    let t = secret_token();
    store.put_token("p", "b", &t).expect("put");
    let unusable = KeyMeta {
        refresh_unusable: true,
    };
    store.put_meta("p", "b", &unusable).expect("put meta");
    assert_eq!(store.get_meta("p", "b").expect("get"), unusable);
    assert_eq!(
        store.get_meta("p", "other").expect("get"),
        KeyMeta::default()
    );
    for fresh in [false, true] {
        let got = store
            .get_token("p", "b", fresh)
            .expect("get")
            .expect("some");
        assert_eq!(got, t, "token unchanged by meta");
        assert!(!got.as_map().contains_key("refresh_unusable"));
    }
    // A token rewrite keeps the meta; a token delete does not touch it.
    store
        .put_token("p", "b", &tok(json!({"access_token": "n"})))
        .expect("put");
    assert_eq!(store.get_meta("p", "b").expect("get"), unusable);
    assert_eq!(store.list_providers().expect("list"), ["p"]);
    store.delete_token("p", "b").expect("delete");
    assert_eq!(
        store.list_providers().expect("list"),
        Vec::<String>::new(),
        "meta is not a token"
    );

    store
        .put_meta("p", "b", &KeyMeta::default())
        .expect("clear");
    assert_eq!(store.get_meta("p", "b").expect("get"), KeyMeta::default());
    assert!(!root.join("meta").join(json_file_name("p", "b")).exists());
    store
        .put_meta("p", "b", &KeyMeta::default())
        .expect("clear absent");

    // Unknown fields from a newer version are tolerated.
    let path = root.join("meta").join(json_file_name("p", "b"));
    fs::write(&path, br#"{"refresh_unusable":true,"future":1}"#).expect("write");
    chmod(&path, 0o600);
    assert_eq!(store.get_meta("p", "b").expect("get"), unusable);
}

/// Writes `bytes` as the token file of p/b with the right mode.
fn plant_token_file(root: &Path, bytes: &[u8]) -> PathBuf {
    let path = token_path(root, "p", "b");
    fs::write(&path, bytes).expect("write");
    chmod(&path, 0o600);
    path
}

#[test]
fn garbage_token_file_is_corrupt_without_its_content() {
    let (_tmp, root, store) = new_store();
    let garbage: [&[u8]; 6] = [
        b"GARBAGE-7e1 not json",
        b"{\"access_token\": \"GARBAGE-7e1",
        b"\"GARBAGE-7e1\"",
        b"[\"GARBAGE-7e1\"]",
        b"",
        b"\xffGARBAGE-7e1",
    ];
    for bytes in garbage {
        let path = plant_token_file(&root, bytes);
        for fresh in [false, true] {
            let err = store.get_token("p", "b", fresh).expect_err("corrupt");
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
            let shown = format!("{err} {err:?}");
            assert!(shown.contains(&path.display().to_string()), "{shown}");
            assert!(!shown.contains("GARBAGE"), "{shown}");
        }
        assert_eq!(store.get_token_cached("p", "b"), None);
    }
    let meta = root.join("meta").join(json_file_name("p", "b"));
    fs::write(&meta, b"{\"refresh_unusable\": \"GARBAGE-7e1\"}").expect("write");
    chmod(&meta, 0o600);
    let err = store.get_meta("p", "b").expect_err("corrupt meta");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("GARBAGE"));
}

#[test]
fn error_messages_never_contain_secrets() {
    let (_tmp, root, store) = new_store();
    store.put_token("p", "b", &secret_token()).expect("put");
    store
        .set_api_key("k", &Secret::new(SECRET_KEY))
        .expect("set");
    let key_path = root.join("keys").join(api_key_file_name("k"));
    let tok_path = token_path(&root, "p", "b");
    let mut errors: Vec<StoreError> = Vec::new();

    // Files made too wide.
    chmod(&tok_path, 0o644);
    chmod(&key_path, 0o604);
    errors.push(store.get_token("p", "b", true).expect_err("wide token"));
    errors.push(store.get_api_key("k").expect_err("wide key"));
    errors.push(store.has_api_key("k").expect_err("wide key"));
    errors.push(FileStore::open(&root).expect_err("wide at open"));
    chmod(&tok_path, 0o600);
    chmod(&key_path, 0o600);

    // Content that does not parse but carries the secrets.
    let quoted = format!("\"{SECRET_TOKEN} {SECRET_REFRESH}\"");
    plant_token_file(&root, quoted.as_bytes());
    errors.push(store.get_token("p", "b", false).expect_err("string token"));
    let mut bad_key = SECRET_KEY.as_bytes().to_vec();
    bad_key.push(0xff);
    fs::write(&key_path, bad_key).expect("write");
    errors.push(store.get_api_key("k").expect_err("non-utf8 key"));
    let huge = format!("{{\"access_token\":\"{}\"}}", SECRET_TOKEN.repeat(70_000));
    plant_token_file(&root, huge.as_bytes());
    errors.push(store.get_token("p", "b", true).expect_err("too large"));

    // Names that look like secrets are only echoed, never values.
    errors.push(
        store
            .set_api_key("bad/name", &Secret::new(SECRET_KEY))
            .expect_err("name"),
    );
    errors.push(
        store
            .put_token("p", "../b", &secret_token())
            .expect_err("name"),
    );

    // The store directory made unwritable: an I/O error on write.
    if dirs::euid() != 0 {
        chmod(&root.join("tokens"), 0o500);
        errors.push(
            store
                .put_token("p", "c", &secret_token())
                .expect_err("read-only dir"),
        );
        chmod(&root.join("tokens"), 0o700);
    }

    assert!(errors.len() >= 9);
    for err in &errors {
        let shown = format!("{err} | {err:?}");
        for secret in [SECRET_TOKEN, SECRET_REFRESH, SECRET_KEY] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
    }
}

#[test]
fn abandoned_temp_files_are_removed_and_locked_ones_kept() {
    // Was: only temp files older than 10 minutes were removed. Now any temp
    // file whose writer's lock is gone is removed at open, at once.
    let (_tmp, root, store) = new_store();
    store
        .put_token("p", "b", &tok(json!({"access_token": "x"})))
        .expect("put");
    let tokens = root.join("tokens");
    let live = tokens.join(format!(".tmp-{}.9.9.9", json_file_name("p", "b")));
    let dead = tokens.join(format!(".tmp-{}.8.8.8", json_file_name("p", "b")));
    for path in [&live, &dead] {
        // Torn write leftovers, possibly with a wrong mode.
        fs::write(path, b"{\"access_tok").expect("write");
        chmod(path, 0o644);
    }
    // A writer in progress holds its temp file's lock.
    let held = nix::fcntl::Flock::lock(
        File::open(&live).expect("open"),
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .map_err(|(_, e)| e)
    .expect("lock");
    let reopened = FileStore::open(&root).expect("leftovers do not block open");
    assert!(!dead.exists(), "a young but abandoned leftover is removed");
    assert!(live.exists(), "a locked one is a write in progress");
    drop(held);
    FileStore::open(&root).expect("open");
    assert!(!live.exists(), "removed once its writer is gone");
    assert_eq!(reopened.list_providers().expect("list"), ["p"]);
    assert_eq!(reopened.list_buckets("p").expect("list"), ["b"]);
    assert!(store.get_token("p", "b", true).expect("get").is_some());
}

#[test]
fn concurrent_writers_and_readers_in_one_instance() {
    let (_tmp, _root, store) = new_store();
    let store = Arc::new(store);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for n in 0..25 {
                    let t = tok(json!({"access_token": format!("{i}-{n}")}));
                    store.put_token("p", "shared", &t).expect("put");
                    let got = store.get_token("p", "shared", n % 2 == 0).expect("get");
                    assert!(got.is_some());
                    store
                        .put_token("p", &format!("own{i}"), &t)
                        .expect("put own");
                    assert_eq!(
                        store
                            .get_token("p", &format!("own{i}"), false)
                            .expect("get"),
                        Some(t)
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    assert_eq!(
        store.list_buckets("p").expect("list"),
        ["own0", "own1", "own2", "own3", "shared"]
    );
    let last = store.get_token("p", "shared", true).expect("get");
    assert_eq!(store.get_token("p", "shared", false).expect("get"), last);
}
