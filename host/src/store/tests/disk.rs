//! The on-disk facts the API cannot show: modes and owners checked at
//! open, symlinks and special files refused, corrupt and abandoned files,
//! and errors that name paths but never carry a secret.

use std::fs::{self, File};
use std::time::Duration;

use credproxy_core::Secret;
use serde_json::json;

use crate::store::names::{api_key_file_name, json_file_name, lock_file_name};

use super::*;

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
