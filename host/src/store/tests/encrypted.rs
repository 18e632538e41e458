//! What only the `encrypted-file` backend does: nothing readable on disk,
//! the key checked at open, and entries that were swapped, renamed or
//! truncated refused (never served, never overwritten silently).

use std::fs;

use credproxy_core::Secret;
use serde_json::json;

use crate::store::names::api_key_file_name;

use super::*;

/// Every byte under `root`, file by file.
fn all_bytes(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("ls") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push((path.clone(), fs::read(&path).expect("read")));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn nothing_secret_is_readable_on_disk() {
    let (_tmp, root, store) = Flavor::Encrypted.new_store();
    store.put_token("p", "b", &secret_token()).expect("put");
    store
        .set_api_key("k", &Secret::new(SECRET_KEY))
        .expect("set key");
    store
        .put_meta(
            "p",
            "b",
            &KeyMeta {
                refresh_unusable: true,
            },
        )
        .expect("meta");
    let files = all_bytes(&root);
    assert!(files.len() >= 4, "{files:?}");
    for (path, bytes) in &files {
        for needle in [
            SECRET_TOKEN,
            SECRET_REFRESH,
            SECRET_KEY,
            "access_token",
            "refresh_unusable",
        ] {
            assert!(!contains(bytes, needle), "{needle} in {}", path.display());
        }
    }
    assert!(!format!("{store:?}").contains("5a5a"), "{store:?}");
    assert_eq!(store.backend_name(), BackendName::EncryptedFile);
}

#[test]
fn the_key_is_checked_when_the_store_opens() {
    let (_tmp, root, store) = Flavor::Encrypted.new_store();
    store.put_token("p", "b", &secret_token()).expect("put");
    drop(store);
    let before = all_bytes(&root);
    let wrong = FileStore::open_encrypted(&root, key::DataKey::from_bytes([1; 32]))
        .expect_err("a wrong key");
    assert!(matches!(wrong, StoreError::Key { .. }), "{wrong:?}");
    assert!(
        wrong.to_string().contains("does not open the store"),
        "{wrong}"
    );
    let plain = FileStore::open(&root).expect_err("opened as plaintext");
    assert!(
        plain.to_string().contains("--store-backend encrypted-file"),
        "{plain}"
    );
    assert_eq!(
        all_bytes(&root),
        before,
        "nothing written by the refused opens"
    );
    let again = Flavor::Encrypted.open(&root).expect("the right key");
    assert_eq!(
        again.get_token("p", "b", true).expect("get"),
        Some(secret_token())
    );
}

#[test]
fn a_plaintext_store_is_not_opened_as_encrypted() {
    let (_tmp, root, store) = Flavor::Plain.new_store();
    // Empty: it may become encrypted.
    drop(Flavor::Encrypted.open(&root).expect("an empty store"));
    let (_tmp2, root2, plain) = Flavor::Plain.new_store();
    plain.put_token("p", "b", &secret_token()).expect("put");
    let e = Flavor::Encrypted
        .open(&root2)
        .expect_err("plaintext entries");
    assert!(e.to_string().contains("plaintext entries"), "{e}");
    assert!(e.to_string().contains("credproxy store migrate"), "{e}");
    drop(store);
}

#[test]
fn swapped_renamed_and_truncated_entries_are_refused() {
    let (_tmp, root, store) = Flavor::Encrypted.new_store();
    let other = tok(json!({"access_token": "other"}));
    store.put_token("p", "b", &secret_token()).expect("put");
    store.put_token("p", "c", &other).expect("put");
    // c's file copied over b's: it would serve c's token for b.
    let b = token_path(&root, "p", "b");
    fs::copy(token_path(&root, "p", "c"), &b).expect("swap");
    let fresh = Flavor::Encrypted.open(&root).expect("open");
    for s in [&store, &fresh] {
        let e = s.get_token("p", "b", false).expect_err("swapped");
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
        assert!(e.to_string().contains("failed authentication"), "{e}");
    }
    assert_eq!(
        store.get_token("p", "c", true).expect("c"),
        Some(other.clone())
    );

    // Truncated.
    let bytes = fs::read(token_path(&root, "p", "c")).expect("read");
    fs::write(token_path(&root, "p", "c"), &bytes[..bytes.len() - 1]).expect("truncate");
    assert!(matches!(
        store.get_token("p", "c", true),
        Err(StoreError::Corrupt { .. })
    ));
    fs::write(token_path(&root, "p", "c"), &bytes[..3]).expect("truncate");
    let e = store.get_token("p", "c", true).expect_err("short");
    assert!(e.to_string().contains("truncated"), "{e}");

    // An API key renamed onto another name.
    store
        .set_api_key("one", &Secret::new(SECRET_KEY))
        .expect("set");
    let keys = root.join("keys");
    fs::rename(
        keys.join(api_key_file_name("one")),
        keys.join(api_key_file_name("two")),
    )
    .expect("rename");
    assert!(matches!(
        store.get_api_key("two"),
        Err(StoreError::Corrupt { .. })
    ));

    // A write over the swapped entry keeps its bytes aside and says so.
    let kept = store
        .put_token_replacing("p", "b", &secret_token())
        .expect("put");
    assert!(matches!(kept, Replaced::Corrupt { .. }), "{kept:?}");
    assert_eq!(
        store.get_token("p", "b", true).expect("get"),
        Some(secret_token())
    );
}

#[test]
fn a_plaintext_file_planted_in_an_encrypted_store_is_not_served() {
    let (_tmp, root, store) = Flavor::Encrypted.new_store();
    plant_token_file(&root, br#"{"access_token":"planted"}"#);
    let e = store.get_token("p", "b", false).expect_err("planted");
    assert!(e.to_string().contains("not an encrypted entry"), "{e}");
    assert!(!e.to_string().contains("planted"), "{e}");
}
