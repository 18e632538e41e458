//! The first frame of every connection (SPEC §3.2).
//!
//! Checks run in a fixed order, each with an exact reply frame: version
//! negotiation, then the capability token, then that the frame really is a
//! handshake. The token is compared as SHA-256 digests in constant time, so
//! neither its length nor a matching prefix shows in timing.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::engine::secret::Secret;
use crate::wire::error::ErrorCode;

/// Highest protocol version this server speaks.
pub const MAX_VERSION: u8 = 2;

/// SHA-256 of the server's capability token; the token itself is not kept.
#[derive(Clone)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Digest of a token.
    #[must_use]
    pub fn of(token: &Secret) -> TokenDigest {
        TokenDigest(Sha256::digest(token.expose().as_bytes()).into())
    }

    /// Constant-time check of a presented token.
    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(self.0.ct_eq(&digest))
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest([redacted])")
    }
}

/// Class of a connection, fixed by its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnClass {
    /// Presented the server's capability token: sandbox restrictions apply.
    Sandbox,
    /// The server has no capability token: full access.
    Host,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No common version.
    UnknownVersion,
    /// Missing or wrong capability token.
    Unauthorized,
    /// The first frame was not a handshake.
    HandshakeRequired,
    /// The handshake was valid but the table of handshaken connections is
    /// full and none of them is idle enough to make room (`admission`).
    /// A reply rather than a bare close, so a client can say why.
    TooManyConnections,
}

impl Rejection {
    /// The wire code of the refusal.
    #[must_use]
    pub fn code(self) -> ErrorCode {
        match self {
            Rejection::UnknownVersion => ErrorCode::UnknownVersion,
            Rejection::Unauthorized => ErrorCode::Unauthorized,
            Rejection::HandshakeRequired => ErrorCode::InvalidRequest,
            Rejection::TooManyConnections => ErrorCode::ResourceExhausted,
        }
    }

    /// The wire message of the refusal.
    #[must_use]
    pub fn message(self) -> &'static str {
        match self {
            Rejection::UnknownVersion => "Unsupported protocol version",
            Rejection::Unauthorized => "Invalid or missing capability token",
            Rejection::HandshakeRequired => "Handshake required",
            Rejection::TooManyConnections => "Too many connections",
        }
    }

    /// Short stable name used in audit events.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::UnknownVersion => "version_mismatch",
            Rejection::Unauthorized => "invalid_capability_token",
            Rejection::HandshakeRequired => "handshake_required",
            Rejection::TooManyConnections => "connection_limit",
        }
    }
}

/// A successful handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Negotiated protocol version (1 or 2).
    pub version: u8,
    /// Connection class.
    pub class: ConnClass,
}

/// Runs the handshake checks on the first frame of a connection.
pub fn evaluate(
    frame: &Map<String, Value>,
    token: Option<&TokenDigest>,
) -> Result<Accepted, Rejection> {
    let payload = frame.get("payload").and_then(Value::as_object);
    let version = negotiate(frame, payload).ok_or(Rejection::UnknownVersion)?;
    let class = match token {
        None => ConnClass::Host,
        Some(digest) => {
            let presented = payload
                .and_then(|p| p.get("capabilityToken"))
                .and_then(Value::as_str);
            match presented {
                Some(t) if digest.matches(t) => ConnClass::Sandbox,
                _ => return Err(Rejection::Unauthorized),
            }
        }
    };
    if frame.get("op").and_then(Value::as_str) != Some("handshake") {
        return Err(Rejection::HandshakeRequired);
    }
    Ok(Accepted { version, class })
}

/// Version negotiation against the server range 1..=2.
fn negotiate(frame: &Map<String, Value>, payload: Option<&Map<String, Value>>) -> Option<u8> {
    let bound = |name: &str| payload.and_then(|p| p.get(name)).filter(|v| v.is_number());
    if let (Some(min), Some(max)) = (bound("minVersion"), bound("maxVersion")) {
        let (min, max) = (as_integer(min)?, as_integer(max)?);
        if min <= max && max >= 1 && min <= i64::from(MAX_VERSION) {
            return u8::try_from(max.min(i64::from(MAX_VERSION))).ok();
        }
        return None;
    }
    let v = as_integer(frame.get("v")?)?;
    (1..=i64::from(MAX_VERSION)).contains(&v).then_some(v as u8)
}

/// A JSON number that is an integer (`2` or `2.0`), clamped into `i64`.
fn as_integer(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    if v.as_u64().is_some() {
        return Some(i64::MAX);
    }
    let f = v.as_f64()?;
    (f.fract() == 0.0 && f.is_finite()).then(|| f.clamp(i64::MIN as f64, i64::MAX as f64) as i64)
}

#[derive(Serialize)]
struct OkReply {
    v: u8,
    op: &'static str,
    ok: bool,
    data: VersionData,
}

#[derive(Serialize)]
struct VersionData {
    version: u8,
}

#[derive(Serialize)]
struct ErrReply {
    v: u8,
    op: &'static str,
    ok: bool,
    code: &'static str,
    error: &'static str,
}

/// The JSON of the success reply (unframed).
#[must_use]
pub fn accept_json(version: u8) -> Vec<u8> {
    let reply = OkReply {
        v: version,
        op: "handshake",
        ok: true,
        data: VersionData { version },
    };
    serde_json::to_vec(&reply).unwrap_or_default()
}

/// The JSON of a refusal (unframed). Refusals carry the server maximum as `v`.
#[must_use]
pub fn reject_json(rejection: Rejection) -> Vec<u8> {
    let reply = ErrReply {
        v: MAX_VERSION,
        op: "handshake",
        ok: false,
        code: rejection.code().into(),
        error: rejection.message(),
    };
    serde_json::to_vec(&reply).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn run(v: Value) -> Result<Accepted, Rejection> {
        evaluate(&obj(v), None)
    }

    #[test]
    fn exact_reply_bytes() {
        assert_eq!(
            accept_json(2),
            br#"{"v":2,"op":"handshake","ok":true,"data":{"version":2}}"#
        );
        assert_eq!(
            accept_json(1),
            br#"{"v":1,"op":"handshake","ok":true,"data":{"version":1}}"#
        );
        assert_eq!(
            reject_json(Rejection::UnknownVersion),
            br#"{"v":2,"op":"handshake","ok":false,"code":"UNKNOWN_VERSION","error":"Unsupported protocol version"}"#
        );
        assert_eq!(
            reject_json(Rejection::Unauthorized),
            br#"{"v":2,"op":"handshake","ok":false,"code":"UNAUTHORIZED","error":"Invalid or missing capability token"}"#
        );
        assert_eq!(
            reject_json(Rejection::HandshakeRequired),
            br#"{"v":2,"op":"handshake","ok":false,"code":"INVALID_REQUEST","error":"Handshake required"}"#
        );
    }

    #[test]
    fn negotiation_by_range() {
        let hs = |min: Value, max: Value| {
            run(json!({"v":2,"op":"handshake","payload":{"minVersion":min,"maxVersion":max}}))
        };
        assert_eq!(hs(json!(1), json!(2)).unwrap().version, 2);
        assert_eq!(hs(json!(1), json!(1)).unwrap().version, 1);
        assert_eq!(hs(json!(1), json!(7)).unwrap().version, 2);
        assert_eq!(hs(json!(2.0), json!(3)).unwrap().version, 2);
        assert_eq!(hs(json!(-4), json!(1)).unwrap().version, 1);
        assert_eq!(hs(json!(3), json!(4)), Err(Rejection::UnknownVersion));
        assert_eq!(hs(json!(2), json!(1)), Err(Rejection::UnknownVersion));
        assert_eq!(hs(json!(0), json!(0)), Err(Rejection::UnknownVersion));
        assert_eq!(hs(json!(1.5), json!(2)), Err(Rejection::UnknownVersion));
        assert_eq!(hs(json!(999), json!(999)), Err(Rejection::UnknownVersion));
    }

    #[test]
    fn negotiation_by_frame_version() {
        assert_eq!(run(json!({"v":1,"op":"handshake"})).unwrap().version, 1);
        assert_eq!(run(json!({"v":2,"op":"handshake"})).unwrap().version, 2);
        assert_eq!(
            run(json!({"v":1,"op":"handshake","payload":{"minVersion":"1","maxVersion":2}}))
                .unwrap()
                .version,
            1
        );
        for v in [json!(3), json!(0), json!("2"), json!(null), json!(1.5)] {
            assert_eq!(
                run(json!({"v":v,"op":"handshake"})),
                Err(Rejection::UnknownVersion)
            );
        }
        assert_eq!(
            run(json!({"op":"handshake"})),
            Err(Rejection::UnknownVersion)
        );
    }

    #[test]
    fn token_checked_after_version_and_before_op() {
        let digest = TokenDigest::of(&Secret::new("t0k"));
        let d = Some(&digest);
        let bad_version = obj(json!({"v":999,"op":"get_token"}));
        assert_eq!(evaluate(&bad_version, d), Err(Rejection::UnknownVersion));
        let no_token = obj(json!({"v":2,"op":"handshake"}));
        assert_eq!(evaluate(&no_token, d), Err(Rejection::Unauthorized));
        let wrong = obj(json!({"v":2,"op":"handshake","payload":{"capabilityToken":"t0K"}}));
        assert_eq!(evaluate(&wrong, d), Err(Rejection::Unauthorized));
        let not_string = obj(json!({"v":2,"op":"handshake","payload":{"capabilityToken":7}}));
        assert_eq!(evaluate(&not_string, d), Err(Rejection::Unauthorized));
        let not_handshake =
            obj(json!({"v":2,"id":"x","op":"get_api_key","payload":{"capabilityToken":"t0k"}}));
        assert_eq!(
            evaluate(&not_handshake, d),
            Err(Rejection::HandshakeRequired)
        );
        let good = obj(json!({"v":2,"op":"handshake","payload":{"capabilityToken":"t0k"}}));
        assert_eq!(
            evaluate(&good, d),
            Ok(Accepted {
                version: 2,
                class: ConnClass::Sandbox
            })
        );
    }

    #[test]
    fn token_ignored_without_server_token() {
        let f = obj(json!({"v":2,"op":"handshake","payload":{"capabilityToken":"whatever"}}));
        assert_eq!(evaluate(&f, None).unwrap().class, ConnClass::Host);
        let not_hs = obj(json!({"v":1,"id":"x","op":"get_api_key"}));
        assert_eq!(evaluate(&not_hs, None), Err(Rejection::HandshakeRequired));
    }

    #[test]
    fn digest_debug_is_redacted() {
        assert_eq!(
            format!("{:?}", TokenDigest::of(&Secret::new("abc"))),
            "TokenDigest([redacted])"
        );
    }
}
