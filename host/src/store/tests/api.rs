//! What the store keeps and gives back through its API: tokens, API keys,
//! metadata and listings, and which names it accepts.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use credproxy_core::Secret;
use serde_json::json;

use crate::store::names::{api_key_file_name, json_file_name};

use super::*;

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

fn token_round_trip(b: Flavor) {
    let (_tmp, root, store) = b.new_store();
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
    let other = b.open(&root).expect("reopen");
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

fn cached_fast_path_needs_a_read_first(b: Flavor) {
    let (_tmp, _root, store) = b.new_store();
    assert_eq!(store.get_token_cached("p", "b"), None, "nothing cached yet");
    store.get_token("p", "b", true).expect("get");
    assert_eq!(store.get_token_cached("p", "b"), Some(None));
}

fn listing_providers_and_buckets(b: Flavor) {
    let (_tmp, root, store) = b.new_store();
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

fn api_key_round_trip(b: Flavor) {
    let (_tmp, root, store) = b.new_store();
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
    match b {
        Flavor::Plain => assert_eq!(raw, SECRET_KEY.as_bytes()),
        Flavor::Encrypted => {
            assert_eq!(&raw[..4], envelope::MAGIC);
            assert_eq!(raw.len(), SECRET_KEY.len() + envelope::OVERHEAD);
            assert!(!raw.windows(8).any(|w| w == &SECRET_KEY.as_bytes()[..8]));
        }
    }

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

fn names_that_could_traverse_are_refused_everywhere(b: Flavor) {
    let (_tmp, root, store) = b.new_store();
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
    match b {
        Flavor::Plain => assert_eq!(top, ["keys", "locks", "meta", "tokens"]),
        Flavor::Encrypted => {
            assert_eq!(top, ["encrypted.check", "keys", "locks", "meta", "tokens"])
        }
    }
}

fn case_distinct_names_are_distinct_files(b: Flavor) {
    let (_tmp, root, store) = b.new_store();
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

fn meta_round_trip_and_kept_out_of_tokens(b: Flavor) {
    let (_tmp, root, store) = b.new_store();
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
    let newer = br#"{"refresh_unusable":true,"future":1}"#;
    let bytes = match b {
        Flavor::Plain => newer.to_vec(),
        Flavor::Encrypted => {
            envelope::seal(&test_key(), envelope::Kind::Meta, &["p", "b"], newer).expect("seal")
        }
    };
    fs::write(&path, bytes).expect("write");
    chmod(&path, 0o600);
    assert_eq!(store.get_meta("p", "b").expect("get"), unusable);
}

on_each_backend!(
    token_round_trip,
    cached_fast_path_needs_a_read_first,
    listing_providers_and_buckets,
    api_key_round_trip,
    names_that_could_traverse_are_refused_everywhere,
    case_distinct_names_are_distinct_files,
    meta_round_trip_and_kept_out_of_tokens
);
