//! The failures a login answers with, and how a provider's answer turns
//! into one: the fixed messages of SPEC §4 live here so every step words
//! them the same way.

use crate::engine::effect::EffectResult;
use crate::oauth::http::{self, Verdict};
use crate::oauth::provider::FlowType;
use crate::operations::op::Op;
use crate::wire::error::ErrorCode;
use crate::wire::reply::Failure;

pub(super) fn failure(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure::new(code, message)
}

pub(super) fn not_found() -> Failure {
    failure(ErrorCode::SessionNotFound, "OAuth session not found")
}

pub(super) fn mismatch() -> Failure {
    failure(
        ErrorCode::ExchangeFailed,
        "Authorization response does not match this session",
    )
}

/// `Provider unreachable (…)` / `Provider rejected the request (…)`.
pub(crate) fn provider_failure(code: ErrorCode, verdict: &Verdict) -> Failure {
    match verdict {
        Verdict::Transient(word) => failure(code, format!("Provider unreachable ({word})")),
        Verdict::Rejected { status, error } => {
            let what = error.clone().unwrap_or_else(|| format!("http {status}"));
            failure(code, format!("Provider rejected the request ({what})"))
        }
        Verdict::Ok(_) => failure(code, "Provider rejected the request (invalid_response)"),
    }
}

pub(super) fn verdict_of(result: &EffectResult) -> Verdict {
    match result {
        EffectResult::Http(outcome) => http::classify(outcome),
        _ => Verdict::Transient("other".into()),
    }
}

/// `Operation <op> not valid for flow type <flow>`.
pub(super) fn flow_mismatch(op: Op, flow: FlowType) -> Failure {
    failure(
        ErrorCode::InvalidRequest,
        format!("Operation {op} not valid for flow type {flow}"),
    )
}
