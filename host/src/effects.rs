//! Executes the engine's effects: the embedded store, the store locks and
//! HTTP.
//!
//! [`Executor::try_inline`] answers what can be answered without blocking —
//! a cached, non-fresh token read validated by one `stat`, and a lock
//! release (which only drops a guard) — so the `get_token` hot path needs no
//! thread hop and a release is performed in the order the engine emitted
//! it. Everything else runs through [`Executor::execute`] on smol's blocking
//! pool. The loopback listener effects (`StartListener`, `StopListener`)
//! need the event loop and are the driver's (see [`crate::driver`]).

use std::sync::Arc;
use std::time::Duration;

use credproxy_core::{Effect, EffectResult};

use crate::audit_log::{AuditLog, log_corrupt_replaced, log_store_error};
use crate::http_client::HttpClient;
use crate::locks::Locks;
use crate::store::{KeyMeta, Replaced, Store, StoreError};

/// Everything effects run against. Cheap to clone (shared parts).
#[derive(Debug, Clone)]
pub struct Executor {
    store: Arc<Store>,
    locks: Locks,
    http: HttpClient,
    /// Where the store's own events go (a corrupt file replaced): the
    /// proxy's audit log.
    audit: Arc<AuditLog>,
}

impl Executor {
    /// An executor over `store` with a fresh lock table and HTTP client.
    #[must_use]
    pub fn new(store: Arc<Store>) -> Executor {
        Executor::with_parts(store, Locks::new(), HttpClient::new())
    }

    /// An executor from its parts.
    #[must_use]
    pub fn with_parts(store: Arc<Store>, locks: Locks, http: HttpClient) -> Executor {
        Executor {
            store,
            locks,
            http,
            audit: Arc::new(AuditLog::Stderr),
        }
    }

    /// The same executor reporting its store events to `audit` (stderr
    /// until then).
    #[must_use]
    pub fn with_audit(mut self, audit: Arc<AuditLog>) -> Executor {
        self.audit = audit;
        self
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The store locks held for the engine.
    #[must_use]
    pub fn locks(&self) -> &Locks {
        &self.locks
    }

    /// The result of `effect` if it can be produced without blocking I/O.
    #[must_use]
    pub fn try_inline(&self, effect: &Effect) -> Option<EffectResult> {
        match effect {
            Effect::TokenGet {
                provider,
                bucket,
                fresh: false,
            } => self
                .store
                .get_token_cached(provider, bucket)
                .map(EffectResult::Token),
            Effect::LockRelease { provider, bucket } => {
                self.locks.release(provider, bucket);
                Some(EffectResult::Done)
            }
            _ => None,
        }
    }

    /// Performs `effect` (may block on the file system, a lock or the
    /// network: run it on the blocking pool). Listener effects are not
    /// executed here and answer `Failed`.
    #[must_use]
    pub fn execute(&self, effect: Effect) -> EffectResult {
        let store = &*self.store;
        let result = match effect {
            Effect::TokenGet {
                provider,
                bucket,
                fresh,
            } => match store.get_token(&provider, &bucket, fresh) {
                // A fresh read is the one under the key's lock before a
                // write (merge, login, refresh): a corrupt stored token
                // counts as absent there, so the write can replace it
                // (the store keeps the damaged file; see TokenPut).
                Err(StoreError::Corrupt { .. }) if fresh => Ok(None),
                other => other,
            }
            .map(EffectResult::Token),
            Effect::TokenPut {
                provider,
                bucket,
                token,
            } => store
                .put_token_replacing(&provider, &bucket, &token)
                .map(|replaced| {
                    if let Replaced::Corrupt { path, kept } = replaced {
                        log_corrupt_replaced(&self.audit, &path, &kept);
                    }
                    EffectResult::Done
                }),
            Effect::TokenDelete { provider, bucket } => store
                .delete_token(&provider, &bucket)
                .map(|()| EffectResult::Done),
            Effect::ListProviders => store.list_providers().map(EffectResult::Names),
            Effect::ListBuckets { provider } => {
                store.list_buckets(&provider).map(EffectResult::Names)
            }
            Effect::ApiKeyGet { name } => store.get_api_key(&name).map(EffectResult::ApiKey),
            Effect::ApiKeyList => store.list_api_keys().map(EffectResult::Names),
            Effect::ApiKeyHas { name } => store.has_api_key(&name).map(EffectResult::Exists),
            Effect::MetaGet { provider, bucket } => {
                store
                    .get_meta(&provider, &bucket)
                    .map(|meta| EffectResult::Meta {
                        refresh_unusable: meta.refresh_unusable,
                    })
            }
            Effect::MetaPut {
                provider,
                bucket,
                refresh_unusable,
            } => store
                .put_meta(&provider, &bucket, &KeyMeta { refresh_unusable })
                .map(|()| EffectResult::Done),
            Effect::LockAcquire {
                provider,
                bucket,
                wait_ms,
            } => {
                return self.locks.acquire(
                    store,
                    &provider,
                    &bucket,
                    Duration::from_millis(wait_ms),
                );
            }
            Effect::LockRelease { provider, bucket } => {
                self.locks.release(&provider, &bucket);
                return EffectResult::Done;
            }
            Effect::Http(request) => return EffectResult::Http(self.http.execute(&request)),
            // The listeners belong to the driver, which never sends them here.
            Effect::StartListener { .. } | Effect::StopListener { .. } => {
                return EffectResult::Failed;
            }
        };
        result.unwrap_or_else(|e| store_error_result(&e))
    }
}

/// The engine's result for a store error, logged first (the error's text
/// holds no secret). A compare-and-set write refused because the row
/// changed since the fresh read is a `Conflict` (the engine re-reads and
/// merges); a store that cannot be reached is `Unavailable`, with when it
/// is due back; anything else is `Failed`.
pub(crate) fn store_error_result(error: &StoreError) -> EffectResult {
    log_store_error(error);
    match error {
        StoreError::Stale { .. } => EffectResult::Conflict,
        StoreError::Unavailable { retry_after, .. }
        | StoreError::KeyringUnavailable { retry_after, .. } => EffectResult::Unavailable {
            retry_after_ms: retry_after_ms(*retry_after),
        },
        _ => EffectResult::Failed,
    }
}

/// `retry_after` in whole milliseconds, rounded up (a due time is never
/// reported early) and saturating.
fn retry_after_ms(retry_after: Duration) -> u64 {
    let ms = retry_after.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_their_results() {
        let stale = StoreError::Stale {
            provider: "p".into(),
            bucket: "default".into(),
        };
        assert_eq!(store_error_result(&stale), EffectResult::Conflict);
        let down = |retry_after| StoreError::Unavailable {
            op: "connect",
            detail: "connection refused".into(),
            retry_after,
        };
        for (after, ms) in [
            (Duration::from_millis(2_500), 2_500),
            (Duration::from_micros(1), 1),
            (Duration::ZERO, 0),
            (Duration::MAX, u64::MAX),
        ] {
            assert_eq!(
                store_error_result(&down(after)),
                EffectResult::Unavailable { retry_after_ms: ms },
                "{after:?}"
            );
        }
        let keyring_away = StoreError::KeyringUnavailable {
            op: "read",
            account: "key/OPENAI".into(),
            cause: crate::keyring::KeyringError::Unavailable("no Secret Service".into()),
            retry_after: Duration::from_millis(1_500),
        };
        assert_eq!(
            store_error_result(&keyring_away),
            EffectResult::Unavailable {
                retry_after_ms: 1_500
            }
        );
        let other = StoreError::Key {
            detail: "no key".into(),
        };
        assert_eq!(store_error_result(&other), EffectResult::Failed);
    }
}
