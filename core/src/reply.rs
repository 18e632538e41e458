//! Response envelopes (SPEC §3.3) and the outbound size guard (§3.1).
//!
//! Responses carry no `v`: `{"id","ok":true,"data":{…}}` or
//! `{"id","ok":false,"code","error"}` plus `retryAfter` with `RATE_LIMITED`.
//! `data` is always an object.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::Limits;
use crate::error::ErrorCode;
use crate::frame::HEADER_LEN;

/// An error answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Wire code.
    pub code: ErrorCode,
    /// Wire message; never contains a secret or upstream text.
    pub message: String,
    /// Seconds to wait, for `RATE_LIMITED`.
    pub retry_after: Option<u64>,
}

impl Failure {
    /// A failure without `retryAfter`.
    #[must_use]
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `RATE_LIMITED` with `retryAfter` (at least 1 s).
    #[must_use]
    pub fn rate_limited(message: impl Into<String>, seconds: u64) -> Failure {
        Failure {
            code: ErrorCode::RateLimited,
            message: message.into(),
            retry_after: Some(seconds.max(1)),
        }
    }

    /// The generic host failure.
    #[must_use]
    pub fn internal() -> Failure {
        Failure::new(ErrorCode::InternalError, "Internal error")
    }
}

/// The answer to a request.
pub type Answer = Result<Map<String, Value>, Failure>;

#[derive(Serialize)]
struct OkReply<'a> {
    id: &'a str,
    ok: bool,
    data: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct ErrReply<'a> {
    id: &'a str,
    ok: bool,
    code: &'static str,
    error: &'a str,
    #[serde(rename = "retryAfter", skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

/// The reply frame: a 4-byte length placeholder followed by the JSON,
/// serialized in place (no second copy to prepend the header).
fn frame_of(id: &str, answer: &Answer) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0; HEADER_LEN]);
    let written = match answer {
        Ok(data) => serde_json::to_writer(&mut out, &OkReply { id, ok: true, data }),
        Err(f) => serde_json::to_writer(
            &mut out,
            &ErrReply {
                id,
                ok: false,
                code: f.code.into(),
                error: &f.message,
                retry_after: f.retry_after,
            },
        ),
    };
    if written.is_err() {
        out.truncate(HEADER_LEN);
    }
    let len = u32::try_from(out.len() - HEADER_LEN).unwrap_or(u32::MAX);
    out[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    out
}

/// Whether a payload of `len` bytes fits the negotiated version's bound.
fn fits(version: u8, len: usize, limits: &Limits) -> bool {
    if version <= 1 {
        HEADER_LEN + len <= limits.v1_max_frame
    } else {
        len <= limits.v2_max_payload
    }
}

/// Encodes the reply frame for `id`, replacing it by `RESPONSE_TOO_LARGE`
/// when it does not fit the negotiated version. The flag says whether the
/// replacement happened.
#[must_use]
pub fn encode_reply(id: &str, answer: &Answer, version: u8, limits: &Limits) -> (Vec<u8>, bool) {
    let frame = frame_of(id, answer);
    if fits(version, frame.len() - HEADER_LEN, limits) {
        return (frame, false);
    }
    let too_large = Failure::new(
        ErrorCode::ResponseTooLarge,
        format!("Response exceeds maximum frame size for protocol version {version}"),
    );
    (frame_of(id, &Err(too_large)), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn exact_envelopes() {
        let l = Limits::default();
        let (ok, _) = encode_reply("a", &Ok(map(json!({"x":1}))), 2, &l);
        assert_eq!(&ok[4..], br#"{"id":"a","ok":true,"data":{"x":1}}"#);
        let (err, _) = encode_reply("a", &Err(Failure::new(ErrorCode::NotFound, "nope")), 2, &l);
        assert_eq!(
            &err[4..],
            br#"{"id":"a","ok":false,"code":"NOT_FOUND","error":"nope"}"#
        );
        let (rl, _) = encode_reply(
            "a",
            &Err(Failure::rate_limited("Too many requests", 0)),
            2,
            &l,
        );
        assert_eq!(
            &rl[4..],
            br#"{"id":"a","ok":false,"code":"RATE_LIMITED","error":"Too many requests","retryAfter":1}"#
        );
    }

    #[test]
    fn v1_bound_counts_the_header() {
        let l = Limits::default();
        let overhead = frame_of("i", &Ok(map(json!({"k":""})))).len() - HEADER_LEN;
        let exact = "x".repeat(65_536 - 4 - overhead);
        let (bytes, replaced) = encode_reply("i", &Ok(map(json!({ "k": exact }))), 1, &l);
        assert!(!replaced);
        assert_eq!(bytes.len(), 65_536);
        let over = "x".repeat(65_536 - 4 - overhead + 1);
        let (bytes, replaced) = encode_reply("i", &Ok(map(json!({ "k": over.clone() }))), 1, &l);
        assert!(replaced);
        assert_eq!(
            &bytes[4..],
            br#"{"id":"i","ok":false,"code":"RESPONSE_TOO_LARGE","error":"Response exceeds maximum frame size for protocol version 1"}"#
        );
        let (_, replaced) = encode_reply("i", &Ok(map(json!({ "k": over }))), 2, &l);
        assert!(!replaced);
    }
}
