//! Executes the engine's effects against the embedded store.
//!
//! [`try_inline`] answers what can be answered without blocking — a cached,
//! non-fresh token read validated by one `stat` — so the `get_token` hot
//! path needs no thread hop. Everything else runs through [`execute`] on
//! smol's blocking pool.

use credproxy_core::{Effect, EffectResult};

use crate::audit_log::log_store_error;
use crate::store::FileStore;

/// The result of `effect` if it can be produced without blocking I/O.
#[must_use]
pub fn try_inline(store: &FileStore, effect: &Effect) -> Option<EffectResult> {
    match effect {
        Effect::TokenGet {
            provider,
            bucket,
            fresh: false,
        } => store
            .get_token_cached(provider, bucket)
            .map(EffectResult::Token),
        _ => None,
    }
}

/// Performs `effect` (may block on the file system).
#[must_use]
pub fn execute(store: &FileStore, effect: Effect) -> EffectResult {
    let result = match effect {
        Effect::TokenGet {
            provider,
            bucket,
            fresh,
        } => store
            .get_token(&provider, &bucket, fresh)
            .map(EffectResult::Token),
        Effect::TokenPut {
            provider,
            bucket,
            token,
        } => store
            .put_token(&provider, &bucket, &token)
            .map(|()| EffectResult::Done),
        Effect::TokenDelete { provider, bucket } => store
            .delete_token(&provider, &bucket)
            .map(|()| EffectResult::Done),
        Effect::ListProviders => store.list_providers().map(EffectResult::Names),
        Effect::ListBuckets { provider } => store.list_buckets(&provider).map(EffectResult::Names),
        Effect::ApiKeyGet { name } => store.get_api_key(&name).map(EffectResult::ApiKey),
        Effect::ApiKeyList => store.list_api_keys().map(EffectResult::Names),
        Effect::ApiKeyHas { name } => store.has_api_key(&name).map(EffectResult::Exists),
        _ => return EffectResult::Failed,
    };
    result.unwrap_or_else(|e| {
        log_store_error(&e);
        EffectResult::Failed
    })
}
