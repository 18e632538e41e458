//! Response envelopes (SPEC §3.3) and the outbound size guard (§3.1).
//!
//! Responses carry no `v`: `{"id","ok":true,"data":{…}}` or
//! `{"id","ok":false,"code","error"}` plus `retryAfter` with `RATE_LIMITED`
//! and `STORE_UNAVAILABLE`.
//! `data` is always an object.

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::engine::config::Limits;
use crate::tokens::token::Token;
use crate::wire::error::ErrorCode;
use crate::wire::frame::HEADER_LEN;

/// An error answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Wire code.
    pub code: ErrorCode,
    /// Wire message; never contains a secret or upstream text.
    pub message: String,
    /// Seconds to wait, for `RATE_LIMITED` and `STORE_UNAVAILABLE`.
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

    /// A failure with `retryAfter`: whole seconds, at least 1 (SPEC §3.3),
    /// for every code that carries one.
    fn retry_after(code: ErrorCode, message: impl Into<String>, seconds: u64) -> Failure {
        Failure {
            code,
            message: message.into(),
            retry_after: Some(seconds.max(1)),
        }
    }

    /// `RATE_LIMITED` with `retryAfter` (at least 1 s).
    #[must_use]
    pub fn rate_limited(message: impl Into<String>, seconds: u64) -> Failure {
        Failure::retry_after(ErrorCode::RateLimited, message, seconds)
    }

    /// `STORE_UNAVAILABLE "Credential store unavailable"`, with `retryAfter`
    /// the host's `retry_after_ms` rounded up to whole seconds (at least 1),
    /// so a client never retries before the store is due back.
    #[must_use]
    pub fn store_unavailable(retry_after_ms: u64) -> Failure {
        Failure::retry_after(
            ErrorCode::StoreUnavailable,
            "Credential store unavailable",
            retry_after_ms.div_ceil(1000),
        )
    }

    /// The generic host failure.
    #[must_use]
    pub fn internal() -> Failure {
        Failure::new(ErrorCode::InternalError, "Internal error")
    }
}

/// The `data` object of a successful answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// An object built for this answer.
    Object(Map<String, Value>),
    /// A token, sent sanitized: reply frames copy its cached
    /// [`Token::sanitized_json`], so serving a token builds no sanitized
    /// copy and, after the first serve of a stored version, does not
    /// serialize it again.
    Token(Token),
}

impl From<Map<String, Value>> for Data {
    fn from(map: Map<String, Value>) -> Data {
        Data::Object(map)
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Data::Object(map) => map.serialize(serializer),
            Data::Token(token) => token.sanitized_view().serialize(serializer),
        }
    }
}

/// The answer to a request.
pub type Answer = Result<Data, Failure>;

#[derive(Serialize)]
struct OkReply<'a> {
    id: &'a str,
    ok: bool,
    data: &'a Data,
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
    // Room for the envelope and an id needing no escapes, so the common
    // reply is written without growing the buffer.
    const ENVELOPE: usize = 64;
    let data = match answer {
        Ok(Data::Token(token)) => Some(token.sanitized_json()),
        _ => None,
    };
    let hint = data.map_or(128, str::len);
    let mut out = Vec::with_capacity(HEADER_LEN + ENVELOPE + id.len() + hint);
    out.extend_from_slice(&[0; HEADER_LEN]);
    let written = match (answer, data) {
        (_, Some(json)) => write_ok_raw(&mut out, id, json),
        (Ok(data), None) => serde_json::to_writer(&mut out, &OkReply { id, ok: true, data }),
        (Err(f), None) => serde_json::to_writer(
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

/// Writes `{"id":…,"ok":true,"data":…}` around `data`, JSON already
/// serialized: the bytes `OkReply` gives for the same data.
fn write_ok_raw(out: &mut Vec<u8>, id: &str, data: &str) -> serde_json::Result<()> {
    out.extend_from_slice(br#"{"id":"#);
    write_json_str(out, id)?;
    out.extend_from_slice(br#","ok":true,"data":"#);
    out.extend_from_slice(data.as_bytes());
    out.push(b'}');
    Ok(())
}

/// Writes `s` as a JSON string, as serde_json does. Request ids almost
/// never need an escape, and serde_json escapes byte by byte; so a string
/// without the bytes it escapes (`"`, `\`, controls) is copied between
/// quotes at once, and any other goes through serde_json.
fn write_json_str(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    // No short-circuit: a fold over every byte is vectorized.
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if !plain {
        return serde_json::to_writer(out, s);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
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

    fn map(v: Value) -> Data {
        Data::Object(v.as_object().cloned().unwrap())
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
        for (ms, secs) in [(0, 1), (1, 1), (1_000, 1), (1_001, 2), (29_999, 30)] {
            let (su, _) = encode_reply("a", &Err(Failure::store_unavailable(ms)), 2, &l);
            let want = format!(
                r#"{{"id":"a","ok":false,"code":"STORE_UNAVAILABLE","error":"Credential store unavailable","retryAfter":{secs}}}"#
            );
            assert_eq!(&su[4..], want.as_bytes(), "retry_after_ms {ms}");
        }
    }

    #[test]
    fn token_data_is_sent_sanitized() {
        let l = Limits::default();
        let full = json!({"access_token":"a","refresh_token":"SECRET","expiry":1});
        let token = Token::from_map(full.as_object().cloned().unwrap());
        let (bytes, _) = encode_reply("t", &Ok(Data::Token(token.clone())), 2, &l);
        assert_eq!(
            &bytes[4..],
            br#"{"id":"t","ok":true,"data":{"access_token":"a","expiry":1}}"#
        );
        assert_eq!(&bytes[..4], &(bytes.len() as u32 - 4).to_be_bytes());
        let (copy, _) = encode_reply("t", &Ok(Data::Object(token.sanitized())), 2, &l);
        assert_eq!(bytes, copy, "same bytes as the sanitized copy");
        let id = "quote\"\\ \u{7}é";
        let (raw, _) = encode_reply(id, &Ok(Data::Token(token.clone())), 2, &l);
        let via_serde = serde_json::to_vec(&OkReply {
            id,
            ok: true,
            data: &Data::Token(token),
        })
        .unwrap();
        assert_eq!(&raw[4..], &via_serde[..], "ids are escaped as serde does");
    }

    proptest::proptest! {
        #[test]
        fn strings_are_written_as_serde_json_writes_them(
            s in proptest::prop_oneof![r"(?s:.){0,40}", r#"[a-f0-9"\\\x00-\x1f\x7f-]{0,20}"#]
        ) {
            let mut out = Vec::new();
            write_json_str(&mut out, &s).unwrap();
            proptest::prop_assert_eq!(out, serde_json::to_vec(&s).unwrap());
        }
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
