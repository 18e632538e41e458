//! [`Store`]: one type for the driver, the effects and the CLI, whatever
//! the backend; each method dispatches to [`FileStore`] (the `file`,
//! `encrypted-file` and `keyring` backends) or [`PgStore`] (`postgres`).

use std::time::Duration;

use credproxy_core::{Secret, Token};

use super::postgres::PgStore;
use super::{BackendName, FileStore, KeyLock, KeyMeta, Replaced, StoreError};

/// The credential store, whatever its backend. The methods are those of
/// [`FileStore`] and [`PgStore`] (see there for their errors).
#[derive(Debug)]
pub enum Store {
    /// The `file`, `encrypted-file` or `keyring` backend (the last keeps
    /// the files, with stamps in place of the secrets).
    Files(FileStore),
    /// The `postgres` backend: rows in a database shared by a fleet
    /// (boxed: it is much larger than a file store, and a `Store` lives
    /// once per process behind an `Arc`).
    Postgres(Box<PgStore>),
}

impl From<FileStore> for Store {
    fn from(s: FileStore) -> Store {
        Store::Files(s)
    }
}

impl Store {
    /// Gives back what the store still holds for this process before it
    /// exits: the postgres backend's queued lease releases (waiting at
    /// most `wait`); nothing for the files (the kernel drops an `flock`).
    pub fn flush(&self, wait: Duration) {
        match self {
            Store::Files(_) => {}
            Store::Postgres(s) => s.flush_releases(wait),
        }
    }

    /// The backend in use (never `auto`).
    #[must_use]
    pub fn backend_name(&self) -> BackendName {
        match self {
            Store::Files(s) => s.backend_name(),
            Store::Postgres(_) => BackendName::Postgres,
        }
    }

    /// See [`FileStore::get_token`].
    pub fn get_token(
        &self,
        provider: &str,
        bucket: &str,
        fresh: bool,
    ) -> Result<Option<Token>, StoreError> {
        match self {
            Store::Files(s) => s.get_token(provider, bucket, fresh),
            Store::Postgres(s) => s.get_token(provider, bucket, fresh),
        }
    }

    /// See [`FileStore::get_token_cached`].
    pub fn get_token_cached(&self, provider: &str, bucket: &str) -> Option<Option<Token>> {
        match self {
            Store::Files(s) => s.get_token_cached(provider, bucket),
            Store::Postgres(s) => s.cached_token(provider, bucket),
        }
    }

    /// See [`FileStore::put_token`].
    pub fn put_token(&self, provider: &str, bucket: &str, token: &Token) -> Result<(), StoreError> {
        match self {
            Store::Files(s) => s.put_token(provider, bucket, token),
            Store::Postgres(s) => s.put_token(provider, bucket, token),
        }
    }

    /// See [`FileStore::put_token_replacing`].
    pub fn put_token_replacing(
        &self,
        provider: &str,
        bucket: &str,
        token: &Token,
    ) -> Result<Replaced, StoreError> {
        match self {
            Store::Files(s) => s.put_token_replacing(provider, bucket, token),
            Store::Postgres(s) => s
                .put_token(provider, bucket, token)
                .map(|()| Replaced::Nothing),
        }
    }

    /// See [`FileStore::delete_token`].
    pub fn delete_token(&self, provider: &str, bucket: &str) -> Result<(), StoreError> {
        match self {
            Store::Files(s) => s.delete_token(provider, bucket),
            Store::Postgres(s) => s.delete_token(provider, bucket),
        }
    }

    /// See [`FileStore::list_providers`].
    pub fn list_providers(&self) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Files(s) => s.list_providers(),
            Store::Postgres(s) => s.list_providers(),
        }
    }

    /// See [`FileStore::list_buckets`].
    pub fn list_buckets(&self, provider: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Files(s) => s.list_buckets(provider),
            Store::Postgres(s) => s.list_buckets(provider),
        }
    }

    /// See [`FileStore::get_api_key`].
    pub fn get_api_key(&self, name: &str) -> Result<Option<Secret>, StoreError> {
        match self {
            Store::Files(s) => s.get_api_key(name),
            Store::Postgres(s) => s.get_api_key(name),
        }
    }

    /// See [`FileStore::list_api_keys`].
    pub fn list_api_keys(&self) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Files(s) => s.list_api_keys(),
            Store::Postgres(s) => s.api_key_names(),
        }
    }

    /// See [`FileStore::has_api_key`].
    pub fn has_api_key(&self, name: &str) -> Result<bool, StoreError> {
        match self {
            Store::Files(s) => s.has_api_key(name),
            Store::Postgres(s) => s.has_api_key(name),
        }
    }

    /// See [`FileStore::set_api_key`].
    pub fn set_api_key(&self, name: &str, value: &Secret) -> Result<(), StoreError> {
        match self {
            Store::Files(s) => s.set_api_key(name, value),
            Store::Postgres(s) => s.store_api_key(name, value),
        }
    }

    /// See [`FileStore::remove_api_key`].
    pub fn remove_api_key(&self, name: &str) -> Result<bool, StoreError> {
        match self {
            Store::Files(s) => s.remove_api_key(name),
            Store::Postgres(s) => s.delete_api_key(name),
        }
    }

    /// See [`FileStore::lock_key`].
    pub fn lock_key(
        &self,
        provider: &str,
        bucket: &str,
        wait: Duration,
    ) -> Result<Option<KeyLock>, StoreError> {
        match self {
            Store::Files(s) => s.lock_key(provider, bucket, wait),
            Store::Postgres(s) => s.lock_key(provider, bucket, wait),
        }
    }

    /// See [`FileStore::get_meta`].
    pub fn get_meta(&self, provider: &str, bucket: &str) -> Result<KeyMeta, StoreError> {
        match self {
            Store::Files(s) => s.get_meta(provider, bucket),
            Store::Postgres(s) => s.get_meta(provider, bucket),
        }
    }

    /// See [`FileStore::put_meta`].
    pub fn put_meta(&self, provider: &str, bucket: &str, meta: &KeyMeta) -> Result<(), StoreError> {
        match self {
            Store::Files(s) => s.put_meta(provider, bucket, meta),
            Store::Postgres(s) => s.put_meta(provider, bucket, meta),
        }
    }
}
