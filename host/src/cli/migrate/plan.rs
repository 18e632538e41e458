//! The entries of a source store and how they are moved: the same for
//! every pair of backends, through [`Store`]'s methods.

use credproxy_core::Secret;

use crate::store::{BackendName, KeyMeta, Store};

use super::super::{Failure, emit_line, failed};

/// Every entry of the source store, by name.
pub(super) struct Plan {
    pub(super) tokens: Vec<(String, String)>,
    pub(super) keys: Vec<String>,
}

impl Plan {
    pub(super) fn of(store: &Store) -> Result<Plan, Failure> {
        let mut tokens = Vec::new();
        for p in store.list_providers().map_err(failed)? {
            for b in store.list_buckets(&p).map_err(failed)? {
                tokens.push((p.clone(), b));
            }
        }
        let keys = store.list_api_keys().map_err(failed)?;
        Ok(Plan { tokens, keys })
    }

    /// `--dry-run`: the names, never a value.
    pub(super) fn list(&self, from: BackendName, to: BackendName) {
        for (p, b) in &self.tokens {
            emit_line(format_args!("token {p}/{b}"));
        }
        for k in &self.keys {
            emit_line(format_args!("API key {k}"));
        }
        emit_line(format_args!(
            "would move {} tokens and {} API keys from {from} to {to} (dry run: nothing written)",
            self.tokens.len(),
            self.keys.len(),
        ));
    }

    /// `moved N tokens and M API keys from A to B`.
    pub(super) fn summary(&self, from: BackendName, to: BackendName) -> String {
        format!(
            "moved {} tokens and {} API keys from {from} to {to}",
            self.tokens.len(),
            self.keys.len()
        )
    }

    /// Copies every entry, reading each back from `dest` (a fresh read, so
    /// from the database itself for `postgres`) and comparing. The first
    /// entry that cannot be read, written or verified stops the migration
    /// (the source untouched).
    pub(super) fn copy(&self, source: &Store, dest: &Store) -> Result<(), Failure> {
        let mismatch = |what: String| failed(format!("{what} read back differently; stopped"));
        for (p, b) in &self.tokens {
            let Some(token) = source.get_token(p, b, true).map_err(failed)? else {
                continue;
            };
            let meta = source.get_meta(p, b).map_err(failed)?;
            dest.put_token(p, b, &token).map_err(failed)?;
            dest.put_meta(p, b, &meta).map_err(failed)?;
            if dest.get_token(p, b, true).map_err(failed)?.as_ref() != Some(&token)
                || dest.get_meta(p, b).map_err(failed)? != meta
            {
                return Err(mismatch(format!("token {p}/{b}")));
            }
        }
        for k in &self.keys {
            let Some(value) = source.get_api_key(k).map_err(failed)? else {
                continue;
            };
            dest.set_api_key(k, &value).map_err(failed)?;
            let back = dest.get_api_key(k).map_err(failed)?;
            if back.as_ref().map(Secret::expose) != Some(value.expose()) {
                return Err(mismatch(format!("API key {k}")));
            }
        }
        Ok(())
    }

    /// Removes every entry from `store` once it was copied: tokens deleted
    /// (a tombstone row in the database), a metadata mark cleared so that
    /// it does not outlive its token, API keys removed.
    pub(super) fn remove_from(&self, store: &Store) -> Result<(), Failure> {
        for (p, b) in &self.tokens {
            if store.get_meta(p, b).map_err(failed)? != KeyMeta::default() {
                store.put_meta(p, b, &KeyMeta::default()).map_err(failed)?;
            }
            store.delete_token(p, b).map_err(failed)?;
        }
        for k in &self.keys {
            store.remove_api_key(k).map_err(failed)?;
        }
        Ok(())
    }
}
