//! What each operation does with a request before any effect (SPEC §3.4–3.6).
//!
//! The order of checks is fixed: sandbox policy for the operations that
//! answer before validation, then the payload schema, then the allow-lists,
//! then the handler. The result is either an immediate answer or the
//! [`Work`] that the engine continues with effects.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::engine::config::Policy;
use crate::operations::op::Op;
use crate::operations::task::Work;
use crate::wire::error::ErrorCode;
use crate::wire::payload::{self, DEFAULT_BUCKET, FieldError};
use crate::wire::reply::{Answer, Data, Failure};
use crate::wire::request::{Field, Payload, PayloadField};
use crate::writes::keylock::Key;
use crate::writes::write_lock::LockedWrite;

/// How a request proceeds.
#[derive(Debug)]
pub(crate) enum Start {
    /// Answered at once.
    Answer(Answer),
    /// Continues with effects.
    Work(Work),
    /// `oauth_initiate` for this key.
    Initiate(Key),
    /// `oauth_exchange` of a pasted value.
    Exchange {
        /// Session id.
        sid: String,
        /// The pasted code, `CODE#STATE` or redirect URL.
        code: String,
    },
    /// `oauth_poll`.
    Poll(String),
    /// `oauth_cancel`.
    CancelSession(String),
    /// `refresh_token` for this key.
    Refresh(Key),
}

impl From<FieldError> for Failure {
    fn from(e: FieldError) -> Failure {
        Failure::new(ErrorCode::InvalidRequest, e.to_string())
    }
}

fn object(pairs: Value) -> Map<String, Value> {
    match pairs {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// An `{"<field>": [names…]}` answer.
pub(crate) fn names(field: &str, list: Vec<String>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(field.to_owned(), Value::from(list));
    m
}

/// Allow-list check of one name.
fn allow(list: Option<&BTreeSet<String>>, kind: &str, name: &str) -> Result<(), Failure> {
    match list {
        Some(list) if !list.contains(name) => Err(Failure::new(
            ErrorCode::Unauthorized,
            format!("{kind} not allowed: {name}"),
        )),
        _ => Ok(()),
    }
}

/// Allow-list check for a provider and bucket.
fn allowed(policy: &Policy, key: &Key) -> Result<(), Failure> {
    allow(policy.allowed_providers.as_ref(), "Provider", &key.provider)?;
    allow(policy.allowed_buckets.as_ref(), "Bucket", &key.bucket)
}

/// Keeps the names an allow-list permits.
pub(crate) fn filter_allowed(
    list: Option<&BTreeSet<String>>,
    mut names: Vec<String>,
) -> Vec<String> {
    names.sort();
    names.dedup();
    if let Some(allowed) = list {
        names.retain(|n| allowed.contains(n));
    }
    names
}

/// Validated `provider` + `bucket`, allow-listed.
fn key_of(policy: &Policy, p: Option<&Payload<'_>>) -> Result<Key, Failure> {
    let key = Key::new(payload::provider(p)?, payload::bucket(p)?);
    allowed(policy, &key)?;
    Ok(key)
}

/// The refusal a sandbox gets for an operation it may never use.
fn sandbox_refusal(op: Op) -> Option<&'static str> {
    Some(match op {
        Op::SaveToken => "Sandbox connections cannot modify tokens",
        Op::RemoveToken => "Sandbox connections cannot remove tokens",
        Op::HasApiKey => "Sandbox connections cannot check key existence",
        _ => return None,
    })
}

/// The refusal a sandbox gets under `strict_sandbox` for login and refresh.
fn strict_refusal(op: Op) -> Option<&'static str> {
    Some(match op {
        Op::OauthInitiate => "Sandbox connections cannot initiate OAuth",
        Op::OauthExchange => "Sandbox connections cannot exchange OAuth tokens",
        Op::OauthPoll => "Sandbox connections cannot poll OAuth tokens",
        Op::OauthCancel => "Sandbox connections cannot cancel OAuth sessions",
        Op::RefreshToken => "Sandbox connections cannot refresh tokens",
        _ => return None,
    })
}

/// The answers a sandbox gets before validation (SPEC §3.5).
fn sandbox_answer(op: Op, policy: &Policy, raw: Option<&PayloadField<'_>>) -> Option<Answer> {
    if let Some(msg) = sandbox_refusal(op) {
        return Some(Err(Failure::new(ErrorCode::Forbidden, msg)));
    }
    if policy.strict_sandbox
        && let Some(msg) = strict_refusal(op)
    {
        return Some(Err(Failure::new(ErrorCode::Forbidden, msg)));
    }
    Some(Ok(Data::Object(match op {
        Op::ListProviders => names("providers", Vec::new()),
        Op::ListBuckets => names("buckets", Vec::new()),
        Op::ListApiKeys => names("keys", Vec::new()),
        Op::GetBucketStats => {
            let bucket = match raw {
                Some(PayloadField::Object(p)) => match p.get("bucket") {
                    Some(Field::Str(b)) if !b.is_empty() => b,
                    _ => DEFAULT_BUCKET,
                },
                _ => DEFAULT_BUCKET,
            };
            object(json!({"bucket": bucket, "requestCount": 0, "percentage": 0}))
        }
        _ => return None,
    })))
}

/// Decides how a request for `op` (never `cancel`) proceeds.
pub(crate) fn start(
    op: Op,
    sandbox: bool,
    policy: &Policy,
    raw_payload: Option<&PayloadField<'_>>,
) -> Start {
    if sandbox && let Some(answer) = sandbox_answer(op, policy, raw_payload) {
        return Start::Answer(answer);
    }
    match validate(op, sandbox, policy, raw_payload) {
        Ok(start) => start,
        Err(failure) => Start::Answer(Err(failure)),
    }
}

fn validate(
    op: Op,
    sandbox: bool,
    policy: &Policy,
    raw: Option<&PayloadField<'_>>,
) -> Result<Start, Failure> {
    let p = payload::as_object(raw)?;
    let work = match op {
        Op::GetToken => Work::GetToken {
            key: key_of(policy, p)?,
            sandbox,
        },
        Op::GetBucketStats => Work::BucketStats {
            key: key_of(policy, p)?,
        },
        Op::SaveToken => {
            let (provider, bucket, token) = payload::save_token(p)?;
            let key = Key::new(provider, bucket);
            allowed(policy, &key)?;
            Work::SaveToken {
                write: LockedWrite::new(key),
                incoming: token.without_refresh_token(),
            }
        }
        Op::RemoveToken => Work::RemoveToken {
            write: LockedWrite::new(key_of(policy, p)?),
        },
        Op::ListProviders => Work::ListProviders,
        Op::ListBuckets => {
            let provider = payload::provider(p)?;
            allow(policy.allowed_providers.as_ref(), "Provider", &provider)?;
            Work::ListBuckets { provider }
        }
        Op::GetApiKey => {
            let name = payload::key_name(p)?;
            allow(policy.allowed_keys.as_ref(), "Key", &name)?;
            Work::GetApiKey { name, sandbox }
        }
        Op::ListApiKeys => Work::ListApiKeys,
        Op::HasApiKey => {
            let name = payload::key_name(p)?;
            allow(policy.allowed_keys.as_ref(), "Key", &name)?;
            Work::HasApiKey { name }
        }
        Op::OauthInitiate => return Ok(Start::Initiate(key_of(policy, p)?)),
        Op::RefreshToken => return Ok(Start::Refresh(key_of(policy, p)?)),
        Op::OauthExchange => {
            let sid = payload::required_str(p, "session_id")?.to_owned();
            let code = payload::required_str(p, "code")?.to_owned();
            return Ok(Start::Exchange { sid, code });
        }
        Op::OauthPoll => {
            return Ok(Start::Poll(
                payload::required_str(p, "session_id")?.to_owned(),
            ));
        }
        Op::OauthCancel => {
            return Ok(Start::CancelSession(
                payload::required_str(p, "session_id")?.to_owned(),
            ));
        }
        Op::Cancel => return Err(Failure::internal()),
    };
    Ok(Start::Work(work))
}
