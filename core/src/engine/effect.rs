//! Effects: the I/O the engine asks its host to perform.
//!
//! The engine never touches a store itself. It emits an [`Effect`] with an
//! [`EffectId`] as an output; the host executes it (inline for a cache hit,
//! on a thread pool otherwise) and feeds the [`EffectResult`] back with
//! `Engine::handle_effect_result`. A result may arrive between any two
//! `poll_output` calls, and results of different effects may arrive in any
//! order.

use crate::engine::secret::Secret;
use crate::oauth::http::{HttpOutcome, HttpRequest};
use crate::tokens::token::Token;
use crate::wire::reply::Failure;
use crate::writes::keylock::Key;

/// Identifies one effect until its result is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EffectId(pub u64);

/// A piece of I/O for the host.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Read a token. `fresh` bypasses any cache (used under write
    /// serialization, where a stale read could lose another process's write).
    /// Result: [`EffectResult::Token`].
    TokenGet {
        /// Provider name (validated).
        provider: String,
        /// Bucket name (validated, `default` when omitted).
        bucket: String,
        /// Bypass any cache.
        fresh: bool,
    },
    /// Replace a stored token atomically. Result: [`EffectResult::Done`].
    TokenPut {
        /// Provider name.
        provider: String,
        /// Bucket name.
        bucket: String,
        /// The complete token to store.
        token: Token,
    },
    /// Delete a stored token (absent is success). Result: [`EffectResult::Done`].
    TokenDelete {
        /// Provider name.
        provider: String,
        /// Bucket name.
        bucket: String,
    },
    /// Providers with at least one stored token. Result: [`EffectResult::Names`].
    ListProviders,
    /// Buckets of a provider. Result: [`EffectResult::Names`].
    ListBuckets {
        /// Provider name.
        provider: String,
    },
    /// Read an API key. Result: [`EffectResult::ApiKey`].
    ApiKeyGet {
        /// Key name (validated).
        name: String,
    },
    /// Names of stored API keys. Result: [`EffectResult::Names`].
    ApiKeyList,
    /// Whether an API key exists. Result: [`EffectResult::Exists`].
    ApiKeyHas {
        /// Key name (validated).
        name: String,
    },
    /// Read the key's metadata (kept outside the token). Result:
    /// [`EffectResult::Meta`].
    MetaGet {
        /// Provider name.
        provider: String,
        /// Bucket name.
        bucket: String,
    },
    /// Write the key's metadata. Result: [`EffectResult::Done`].
    MetaPut {
        /// Provider name.
        provider: String,
        /// Bucket name.
        bucket: String,
        /// The stored refresh token was rejected by the provider.
        refresh_unusable: bool,
    },
    /// Take the key's cross-process lock, waiting at most `wait_ms`.
    /// Result: [`EffectResult::Locked`].
    LockAcquire {
        /// Provider name.
        provider: String,
        /// Bucket name.
        bucket: String,
        /// Longest wait.
        wait_ms: u64,
    },
    /// Release the key's cross-process lock. The result is ignored.
    LockRelease {
        /// Provider name.
        provider: String,
        /// Bucket name.
        bucket: String,
    },
    /// Perform an HTTP request (no redirects followed, body capped at
    /// 1 MiB). Result: [`EffectResult::Http`].
    Http(HttpRequest),
    /// Listen for loopback HTTP requests on 127.0.0.1 and ::1 at `port`,
    /// passing each to `Engine::handle_loopback_request`. Result:
    /// [`EffectResult::Listening`].
    StartListener {
        /// TCP port.
        port: u16,
        /// The redirect path served.
        path: String,
    },
    /// Stop the loopback listener on `port`. The result is ignored.
    StopListener {
        /// TCP port.
        port: u16,
    },
}

impl Effect {
    /// Read the token of `key`.
    #[must_use]
    pub fn token_get(key: &Key, fresh: bool) -> Effect {
        Effect::TokenGet {
            provider: key.provider.clone(),
            bucket: key.bucket.clone(),
            fresh,
        }
    }

    /// Replace the token of `key`.
    #[must_use]
    pub fn token_put(key: &Key, token: Token) -> Effect {
        Effect::TokenPut {
            provider: key.provider.clone(),
            bucket: key.bucket.clone(),
            token,
        }
    }

    /// Delete the token of `key`.
    #[must_use]
    pub fn token_delete(key: &Key) -> Effect {
        Effect::TokenDelete {
            provider: key.provider.clone(),
            bucket: key.bucket.clone(),
        }
    }

    /// Read the metadata of `key`.
    #[must_use]
    pub fn meta_get(key: &Key) -> Effect {
        Effect::MetaGet {
            provider: key.provider.clone(),
            bucket: key.bucket.clone(),
        }
    }

    /// Write the unusable-refresh mark of `key`.
    #[must_use]
    pub fn meta_put(key: &Key, refresh_unusable: bool) -> Effect {
        Effect::MetaPut {
            provider: key.provider.clone(),
            bucket: key.bucket.clone(),
            refresh_unusable,
        }
    }

    /// Take the cross-process lock of `key`.
    #[must_use]
    pub fn lock_acquire(key: &Key, wait_ms: u64) -> Effect {
        Effect::LockAcquire {
            provider: key.provider.clone(),
            bucket: key.bucket.clone(),
            wait_ms,
        }
    }

    /// Release the cross-process lock of `key`.
    #[must_use]
    pub fn lock_release(key: &Key) -> Effect {
        Effect::LockRelease {
            provider: key.provider.clone(),
            bucket: key.bucket.clone(),
        }
    }
}

/// The kind of result an effect is answered with; recorded with its
/// [`EffectId`] when the effect is emitted, so a result of another kind is
/// known for a host fault before any step looks at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResultKind {
    /// [`EffectResult::Token`].
    Token,
    /// [`EffectResult::Done`].
    Done,
    /// [`EffectResult::Names`].
    Names,
    /// [`EffectResult::ApiKey`].
    ApiKey,
    /// [`EffectResult::Exists`].
    Exists,
    /// [`EffectResult::Meta`].
    Meta,
    /// [`EffectResult::Locked`].
    Locked,
    /// [`EffectResult::Http`].
    Http,
    /// [`EffectResult::Listening`].
    Listening,
    /// The result is ignored (lock release, listener stop): any is fine.
    Ignored,
}

impl ResultKind {
    /// The kind of result `effect` is answered with (its doc says which).
    pub(crate) fn of(effect: &Effect) -> ResultKind {
        match effect {
            Effect::TokenGet { .. } => ResultKind::Token,
            Effect::TokenPut { .. } | Effect::TokenDelete { .. } | Effect::MetaPut { .. } => {
                ResultKind::Done
            }
            Effect::ListProviders | Effect::ListBuckets { .. } | Effect::ApiKeyList => {
                ResultKind::Names
            }
            Effect::ApiKeyGet { .. } => ResultKind::ApiKey,
            Effect::ApiKeyHas { .. } => ResultKind::Exists,
            Effect::MetaGet { .. } => ResultKind::Meta,
            Effect::LockAcquire { .. } => ResultKind::Locked,
            Effect::Http(_) => ResultKind::Http,
            Effect::StartListener { .. } => ResultKind::Listening,
            Effect::LockRelease { .. } | Effect::StopListener { .. } => ResultKind::Ignored,
        }
    }

    /// Whether the effect is one of the store's (token, key, metadata or
    /// lock): those are the effects `Unavailable` may answer.
    fn is_store(self) -> bool {
        !matches!(
            self,
            ResultKind::Http | ResultKind::Listening | ResultKind::Ignored
        )
    }

    /// Whether `result` answers an effect of this kind. `Failed` answers
    /// every kind; `Unavailable` every store effect; `Conflict` a store
    /// write (a `Done` effect).
    pub(crate) fn accepts(self, result: &EffectResult) -> bool {
        matches!(
            (self, result),
            (_, EffectResult::Failed)
                | (ResultKind::Ignored, _)
                | (ResultKind::Token, EffectResult::Token(_))
                | (
                    ResultKind::Done,
                    EffectResult::Done | EffectResult::Conflict
                )
                | (ResultKind::Names, EffectResult::Names(_))
                | (ResultKind::ApiKey, EffectResult::ApiKey(_))
                | (ResultKind::Exists, EffectResult::Exists(_))
                | (ResultKind::Meta, EffectResult::Meta { .. })
                | (ResultKind::Locked, EffectResult::Locked(_))
                | (ResultKind::Http, EffectResult::Http(_))
                | (ResultKind::Listening, EffectResult::Listening(_))
        ) || (self.is_store() && matches!(result, EffectResult::Unavailable { .. }))
    }
}

/// The outcome of an effect.
#[derive(Debug, Clone, PartialEq)]
pub enum EffectResult {
    /// The token read, or `None` when nothing is stored.
    Token(Option<Token>),
    /// A write or delete completed.
    Done,
    /// A list of names (any order; the engine sorts).
    Names(Vec<String>),
    /// The API key read, or `None`.
    ApiKey(Option<Secret>),
    /// Whether the thing exists.
    Exists(bool),
    /// Key metadata.
    Meta {
        /// The stored refresh token was rejected by the provider.
        refresh_unusable: bool,
    },
    /// Whether the cross-process lock was acquired (false: timed out).
    Locked(bool),
    /// The outcome of an HTTP request.
    Http(HttpOutcome),
    /// Whether the loopback listener is running.
    Listening(bool),
    /// The store refused a write (`TokenPut`, `TokenDelete`, `MetaPut`)
    /// because the stored value changed since the fresh read under the
    /// key's locks: another process wrote it meanwhile, or this process's
    /// cross-process lock (a lease) was taken over. Nothing was written.
    /// The engine re-reads fresh under the same locks and decides again
    /// (SPEC §5.2–5.3 fresh-read rule): a newer token is never written over,
    /// and no in-memory authoritative copy is kept, since the store holds
    /// something newer. After three conflicts in a row the request fails
    /// with the code a failed write gives and "Credential store changed
    /// during the write".
    Conflict,
    /// The store is temporarily unreachable (any store effect): nothing was
    /// done. A request that cannot be answered without the store gets
    /// `STORE_UNAVAILABLE` with `retryAfter` (`retry_after_ms` rounded up to
    /// whole seconds, at least 1). A refresh whose provider call succeeded
    /// but whose write got this still answers the new token, kept in memory
    /// as authoritative and written again later, as for `Failed` (a rotated
    /// refresh token must not be lost).
    Unavailable {
        /// When the host expects the store to be reachable again.
        retry_after_ms: u64,
    },
    /// The host could not perform the effect. The engine answers the request
    /// with `INTERNAL_ERROR` and a generic message; the host logs details.
    /// A result of another kind than the effect's (see each [`Effect`]) is a
    /// host fault and is treated exactly like `Failed`.
    Failed,
}

impl EffectResult {
    /// The answer of a request whose store effect came back with this
    /// instead of a usable result: `STORE_UNAVAILABLE` with `retryAfter`
    /// when the store is temporarily unreachable (the client may retry),
    /// the generic `INTERNAL_ERROR` for anything else (a failure, or a
    /// result of the wrong kind).
    pub(crate) fn store_failure(&self) -> Failure {
        match self {
            EffectResult::Unavailable { retry_after_ms } => {
                Failure::store_unavailable(*retry_after_ms)
            }
            _ => Failure::internal(),
        }
    }
}
