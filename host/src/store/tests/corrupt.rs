//! A corrupt token file: replaced by the next write, its bytes kept as a
//! `.corrupt-…` file that is never served, listed, or removed as a temp.

use std::fs;
use std::os::unix::fs::MetadataExt;

use credproxy_core::Token;
use serde_json::{Value, json};

use crate::store::names::json_file_name;

use super::*;

fn tok(v: Value) -> Token {
    match v {
        Value::Object(m) => Token::from_map(m),
        _ => unreachable!("test tokens are objects"),
    }
}

/// Files in `dir` whose names start with `.corrupt-`.
fn kept_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(".corrupt-"))
        })
        .collect()
}

#[test]
fn a_write_replaces_a_corrupt_token_and_keeps_the_old_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("credproxy");
    let store = FileStore::open(&root).expect("open");
    store
        .put_token("p", "b", &tok(json!({"access_token": "old"})))
        .expect("put");
    let path = root.join("tokens").join(json_file_name("p", "b"));
    let garbage = b"{\"access_token\": \"torn-SENTINEL";
    fs::write(&path, garbage).expect("corrupt it");
    let err = store.get_token("p", "b", true).expect_err("corrupt");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

    let new = tok(json!({"access_token": "new"}));
    let replaced = store.put_token_replacing("p", "b", &new).expect("put");
    let Replaced::Corrupt { path: was, kept } = replaced else {
        panic!("the corrupt file is reported: {replaced:?}");
    };
    assert_eq!(was, path);
    assert_eq!(kept.parent(), path.parent(), "kept next to it");
    let name = kept.file_name().and_then(|n| n.to_str()).expect("utf-8");
    assert!(name.starts_with(".corrupt-"), "{name}");
    assert!(!name.starts_with(".tmp-"), "not a temp file");
    assert_eq!(fs::read(&kept).expect("kept"), garbage);
    assert_eq!(fs::metadata(&kept).expect("stat").mode() & 0o777, 0o600);
    assert_eq!(
        store.get_token("p", "b", true).expect("get"),
        Some(new.clone())
    );

    // A second write replaces a valid file: nothing to report, no copy.
    let newer = tok(json!({"access_token": "newer"}));
    assert_eq!(
        store.put_token_replacing("p", "b", &newer).expect("put"),
        Replaced::Nothing
    );
    assert_eq!(
        kept_files(&root.join("tokens")),
        std::slice::from_ref(&kept)
    );

    // Reopening keeps it (not a temp file) and never lists or serves it.
    let reopened = FileStore::open(&root).expect("reopen");
    assert!(kept.exists(), "not removed at open");
    assert_eq!(reopened.list_providers().expect("list"), ["p"]);
    assert_eq!(reopened.list_buckets("p").expect("list"), ["b"]);
    assert_eq!(
        reopened.get_token("p", "b", false).expect("get"),
        Some(newer)
    );
}

#[test]
fn an_oversized_token_file_counts_as_corrupt_too() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("credproxy");
    let store = FileStore::open(&root).expect("open");
    let path = root.join("tokens").join(json_file_name("p", "b"));
    let huge = vec![b' '; usize::try_from(MAX_JSON_BYTES).expect("fits") + 1];
    fs::write(&path, &huge).expect("write");
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
    let replaced = store
        .put_token_replacing("p", "b", &tok(json!({"access_token": "x"})))
        .expect("put");
    assert!(matches!(replaced, Replaced::Corrupt { .. }), "{replaced:?}");
}
