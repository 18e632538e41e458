//! The importer's only write path into credproxy's store.
//!
//! Everything the importer stores goes through [`store_entry`], and it uses
//! only the store's public methods (`lock_key`, `get_token`, `put_token`,
//! `get_meta`, `put_meta`, `has_api_key`, `set_api_key`), so the import
//! works unchanged on any store backend behind those names.

use std::time::Duration;

use credproxy_core::{Secret, Token};

use crate::store::{KeyMeta, Store, StoreError};

/// How long to wait for a key's refresh lock held by a running proxy.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Where an entry goes in credproxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An OAuth token of `provider`/`bucket`.
    Token {
        /// Provider name.
        provider: String,
        /// Bucket name.
        bucket: String,
    },
    /// An API key.
    ApiKey {
        /// Key name.
        name: String,
    },
}

/// The decrypted value to store (its `Debug` is redacted by its types).
#[derive(Debug)]
pub enum Value {
    /// A token for [`Target::Token`].
    Token(Token),
    /// A key for [`Target::ApiKey`].
    ApiKey(Secret),
}

/// What [`store_entry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Stored; nothing was there.
    Imported,
    /// Stored over an existing entry (`--overwrite`).
    Replaced,
    /// An entry exists and `overwrite` is off: left as it was.
    Kept,
}

/// Whether credproxy already holds `target`. A stored token that does not
/// parse counts as present (it is replaced only with `--overwrite`).
/// Invalid names fail here, before the disk is touched. Without a store
/// (a dry run before the store exists) nothing is present, but names are
/// still checked by the store's own rules.
pub fn exists(store: Option<&Store>, target: &Target) -> Result<bool, String> {
    let Some(store) = store else {
        return check_names(target).map(|()| false);
    };
    match target {
        Target::Token { provider, bucket } => match store.get_token(provider, bucket, true) {
            Ok(found) => Ok(found.is_some()),
            Err(StoreError::Corrupt { .. }) => Ok(true),
            Err(e) => Err(e.to_string()),
        },
        Target::ApiKey { name } => store.has_api_key(name).map_err(|e| e.to_string()),
    }
}

/// Stores `value` at `target` unless an entry is there and `overwrite` is
/// off. A token is written under its key's lock (as every token write is),
/// after a fresh look at what is stored, and a refresh-unusable mark of
/// the old token is cleared: the imported token is a new login.
pub fn store_entry(
    store: &Store,
    target: &Target,
    value: &Value,
    overwrite: bool,
) -> Result<Written, String> {
    let present = match (target, value) {
        (Target::Token { provider, bucket }, Value::Token(token)) => {
            let _lock = store
                .lock_key(provider, bucket, LOCK_WAIT)
                .map_err(|e| e.to_string())?
                .ok_or("the credential store is busy (a refresh is running); try again")?;
            let present = exists(Some(store), target)?;
            if present && !overwrite {
                return Ok(Written::Kept);
            }
            store
                .put_token(provider, bucket, token)
                .map_err(|e| e.to_string())?;
            let meta = store.get_meta(provider, bucket).unwrap_or_default();
            if meta.refresh_unusable {
                store
                    .put_meta(provider, bucket, &KeyMeta::default())
                    .map_err(|e| e.to_string())?;
            }
            present
        }
        (Target::ApiKey { name }, Value::ApiKey(key)) => {
            let present = store.has_api_key(name).map_err(|e| e.to_string())?;
            if present && !overwrite {
                return Ok(Written::Kept);
            }
            store.set_api_key(name, key).map_err(|e| e.to_string())?;
            present
        }
        _ => return Err("internal error: the value does not fit its target".to_owned()),
    };
    Ok(if present {
        Written::Replaced
    } else {
        Written::Imported
    })
}

/// The name rules without a store: the protocol's, which are the store's
/// (`[A-Za-z0-9._@-]{1,64}` for providers and buckets, no `@` in key names).
fn check_names(target: &Target) -> Result<(), String> {
    use credproxy_core::payload::{is_key_name, is_store_name};
    let bad = match target {
        Target::Token { provider, .. } if !is_store_name(provider) => Some(("provider", provider)),
        Target::Token { bucket, .. } if !is_store_name(bucket) => Some(("bucket", bucket)),
        Target::ApiKey { name } if !is_key_name(name) || name == "." || name == ".." => {
            Some(("API key", name))
        }
        _ => None,
    };
    match bad {
        Some((kind, name)) => Err(format!(
            "invalid {kind} name {name:?}: credproxy names are A-Z a-z 0-9 . _ - (and @ for \
             providers and buckets), at most 64 characters"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(access: &str) -> Token {
        let v = json!({"access_token": access, "expiry": 1, "token_type": "Bearer"});
        Token::from_map(v.as_object().cloned().unwrap())
    }

    fn target() -> Target {
        Target::Token {
            provider: "anthropic".into(),
            bucket: "work".into(),
        }
    }

    #[test]
    fn kept_unless_overwrite_and_overwrite_clears_the_unusable_mark() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::from(crate::store::FileStore::open(&dir.path().join("s")).unwrap());
        let t = target();
        assert!(!exists(Some(&store), &t).unwrap());
        let first = Value::Token(token("SECRET-1"));
        assert_eq!(
            store_entry(&store, &t, &first, false),
            Ok(Written::Imported)
        );
        store
            .put_meta(
                "anthropic",
                "work",
                &KeyMeta {
                    refresh_unusable: true,
                },
            )
            .unwrap();
        let second = Value::Token(token("SECRET-2"));
        assert_eq!(store_entry(&store, &t, &second, false), Ok(Written::Kept));
        let got = store.get_token("anthropic", "work", true).unwrap().unwrap();
        assert_eq!(got.as_map()["access_token"], "SECRET-1");
        assert!(
            store
                .get_meta("anthropic", "work")
                .unwrap()
                .refresh_unusable
        );
        assert_eq!(
            store_entry(&store, &t, &second, true),
            Ok(Written::Replaced)
        );
        let got = store.get_token("anthropic", "work", true).unwrap().unwrap();
        assert_eq!(got.as_map()["access_token"], "SECRET-2");
        assert!(
            !store
                .get_meta("anthropic", "work")
                .unwrap()
                .refresh_unusable
        );
    }

    #[test]
    fn api_keys_kept_unless_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::from(crate::store::FileStore::open(&dir.path().join("s")).unwrap());
        let t = Target::ApiKey {
            name: "openai".into(),
        };
        let v1 = Value::ApiKey(Secret::new("SECRET-1"));
        let v2 = Value::ApiKey(Secret::new("SECRET-2"));
        assert_eq!(store_entry(&store, &t, &v1, false), Ok(Written::Imported));
        assert_eq!(store_entry(&store, &t, &v2, false), Ok(Written::Kept));
        assert_eq!(
            store.get_api_key("openai").unwrap().unwrap().expose(),
            "SECRET-1"
        );
        assert_eq!(store_entry(&store, &t, &v2, true), Ok(Written::Replaced));
        assert_eq!(
            store.get_api_key("openai").unwrap().unwrap().expose(),
            "SECRET-2"
        );
        // A value that does not fit its target is refused, not stored.
        assert!(store_entry(&store, &target(), &v1, true).is_err());
    }

    #[test]
    fn names_are_checked_without_a_store_and_values_never_shown() {
        let bad = Target::Token {
            provider: "bad name".into(),
            bucket: "default".into(),
        };
        assert!(
            exists(None, &bad)
                .unwrap_err()
                .contains("invalid provider name")
        );
        let bad = Target::ApiKey { name: "..".into() };
        assert!(
            exists(None, &bad)
                .unwrap_err()
                .contains("invalid API key name")
        );
        assert_eq!(exists(None, &target()), Ok(false));
        let shown = format!(
            "{:?} {:?}",
            Value::Token(token("SECRET-T")),
            Value::ApiKey(Secret::new("SECRET-K"))
        );
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}
