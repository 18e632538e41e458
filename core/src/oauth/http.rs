//! HTTP requests as data, and the reading of provider responses.
//!
//! The engine describes each provider call as an [`HttpRequest`] effect; the
//! host performs it (no redirects, bounded body, timeouts) and returns an
//! [`HttpOutcome`]. Bodies carry codes, verifiers and refresh tokens, so
//! both types print them as `[redacted]`.
//!
//! Responses are read leniently (SPEC §5.1): `expires_in` as a number or a
//! numeric string (3600 s when absent), `token_type` in any case. Upstream
//! error text is never forwarded: only an OAuth `error` code matching
//! `^[a-z0-9_.-]{1,64}$` is echoed.

use serde_json::{Map, Value};

use crate::engine::secret::Secret;
use crate::oauth::provider::BodyEncoding;
use crate::tokens::token::Token;

/// Largest response body the host should return (1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// HTTP method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
}

/// A request for the host to perform.
#[derive(Clone, PartialEq)]
pub struct HttpRequest {
    /// Method.
    pub method: Method,
    /// Absolute URL (HTTPS, or HTTP to loopback).
    pub url: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// Body, if any (may hold secrets).
    pub body: Option<Secret>,
    /// Whole-request timeout.
    pub timeout_ms: u64,
}

impl std::fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &self.headers)
            .field("body", &self.body.as_ref().map(|_| "[redacted]"))
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// Why a request produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    /// No response in time.
    Timeout,
    /// Could not connect (DNS, refused, unreachable).
    Connect,
    /// TLS failure.
    Tls,
    /// Anything else (including an oversize body).
    Other,
}

impl TransportError {
    /// The word used in `Provider unreachable (<word>)`.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            TransportError::Timeout => "timeout",
            TransportError::Connect => "connect",
            TransportError::Tls => "tls",
            TransportError::Other => "other",
        }
    }
}

/// The result of an [`HttpRequest`].
#[derive(Clone, PartialEq)]
pub enum HttpOutcome {
    /// A response (any status).
    Response {
        /// Status code.
        status: u16,
        /// Body, at most [`MAX_BODY`] bytes (may hold secrets).
        body: Vec<u8>,
    },
    /// No response.
    Failed(TransportError),
}

impl std::fmt::Debug for HttpOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpOutcome::Response { status, body } => {
                write!(
                    f,
                    "Response {{ status: {status}, body: [{} bytes redacted] }}",
                    body.len()
                )
            }
            HttpOutcome::Failed(e) => write!(f, "Failed({e:?})"),
        }
    }
}

/// How a provider call went, for retry and error decisions.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// 2xx with a JSON object body.
    Ok(Map<String, Value>),
    /// Network, timeout, 5xx or 429: worth retrying.
    Transient(String),
    /// The provider refused (4xx); the OAuth error code when it gave a
    /// well-formed one.
    Rejected {
        /// HTTP status.
        status: u16,
        /// Sanitized OAuth `error` value.
        error: Option<String>,
    },
}

/// Classifies an outcome. `Transient` carries the `<word>` of
/// `Provider unreachable (<word>)`.
#[must_use]
pub fn classify(outcome: &HttpOutcome) -> Verdict {
    match outcome {
        HttpOutcome::Failed(e) => Verdict::Transient(e.word().to_owned()),
        HttpOutcome::Response { status, body } => {
            let json = serde_json::from_slice::<Value>(body).ok();
            match *status {
                200..=299 => match json {
                    Some(Value::Object(m)) => Verdict::Ok(m),
                    _ => Verdict::Rejected {
                        status: *status,
                        error: Some("invalid_response".into()),
                    },
                },
                429 => Verdict::Transient("http 429".into()),
                500..=599 => Verdict::Transient(format!("http {status}")),
                _ => Verdict::Rejected {
                    status: *status,
                    error: json.as_ref().and_then(oauth_error),
                },
            }
        }
    }
}

/// The OAuth `error` code of an error body, if well formed.
#[must_use]
pub fn oauth_error(body: &Value) -> Option<String> {
    let e = body.get("error")?.as_str()?;
    safe_code(e).then(|| e.to_owned())
}

/// Whether an upstream code may be echoed: `^[a-z0-9_.-]{1,64}$`.
#[must_use]
pub fn safe_code(e: &str) -> bool {
    (1..=64).contains(&e.len())
        && e.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// A POST with the given fields, encoded as the provider wants.
#[must_use]
pub fn post(
    url: &str,
    encoding: BodyEncoding,
    fields: &[(&str, &str)],
    timeout_ms: u64,
) -> HttpRequest {
    let (content_type, body) = match encoding {
        BodyEncoding::Form => {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in fields {
                ser.append_pair(k, v);
            }
            ("application/x-www-form-urlencoded", ser.finish())
        }
        BodyEncoding::Json => {
            let map: Map<String, Value> = fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect();
            ("application/json", Value::Object(map).to_string())
        }
    };
    HttpRequest {
        method: Method::Post,
        url: url.to_owned(),
        headers: vec![
            ("Content-Type".into(), content_type.into()),
            ("Accept".into(), "application/json".into()),
        ],
        body: Some(Secret::new(body)),
        timeout_ms,
    }
}

/// A GET for a JSON document.
#[must_use]
pub fn get(url: &str, timeout_ms: u64) -> HttpRequest {
    HttpRequest {
        method: Method::Get,
        url: url.to_owned(),
        headers: vec![("Accept".into(), "application/json".into())],
        body: None,
        timeout_ms,
    }
}

/// A number or numeric string.
#[must_use]
pub fn lenient_number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n: &f64| n.is_finite())
}

/// A token endpoint response as a stored token: `access_token` required;
/// `expiry = now + expires_in` (3600 s when absent or not positive);
/// `token_type` normalized to `Bearer` when it is bearer in any case;
/// every other field passes through (`refresh_token`, `scope`,
/// `id_token`, …).
#[must_use]
pub fn token_from_response(mut body: Map<String, Value>, now_unix_s: u64) -> Option<Token> {
    let access = body.get("access_token")?.as_str()?;
    if access.is_empty() {
        return None;
    }
    let expires_in = lenient_number(body.get("expires_in"))
        .filter(|e| *e > 0.0)
        .unwrap_or(3600.0);
    body.remove("expires_in");
    let expiry = now_unix_s.saturating_add(expires_in as u64);
    body.insert("expiry".into(), Value::from(expiry));
    let bearer = body
        .get("token_type")
        .and_then(Value::as_str)
        .is_none_or(|t| t.eq_ignore_ascii_case("bearer"));
    if !bearer {
        return None;
    }
    body.insert("token_type".into(), Value::from("Bearer"));
    if body.get("refresh_token").is_some_and(|r| !r.is_string()) {
        body.remove("refresh_token");
    }
    Some(Token::from_map(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resp(status: u16, body: Value) -> HttpOutcome {
        HttpOutcome::Response {
            status,
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn classification() {
        assert!(matches!(
            classify(&resp(200, json!({"a":1}))),
            Verdict::Ok(_)
        ));
        assert_eq!(
            classify(&resp(503, json!({}))),
            Verdict::Transient("http 503".into())
        );
        assert_eq!(
            classify(&resp(429, json!({}))),
            Verdict::Transient("http 429".into())
        );
        assert_eq!(
            classify(&HttpOutcome::Failed(TransportError::Timeout)),
            Verdict::Transient("timeout".into())
        );
        assert_eq!(
            classify(&resp(
                400,
                json!({"error":"invalid_grant","error_description":"secret stuff"})
            )),
            Verdict::Rejected {
                status: 400,
                error: Some("invalid_grant".into())
            }
        );
        assert_eq!(
            classify(&resp(400, json!({"error":"Bad <script>"}))),
            Verdict::Rejected {
                status: 400,
                error: None
            }
        );
        assert_eq!(
            classify(&HttpOutcome::Response {
                status: 200,
                body: b"not json".to_vec()
            }),
            Verdict::Rejected {
                status: 200,
                error: Some("invalid_response".into())
            }
        );
    }

    #[test]
    fn lenient_token_reading() {
        let t = token_from_response(
            json!({"access_token":"a","expires_in":"120","token_type":"bearer","refresh_token":"r","account_id":"x"})
                .as_object()
                .cloned()
                .unwrap(),
            1000,
        )
        .unwrap();
        assert_eq!(t.as_map()["expiry"], json!(1120));
        assert_eq!(t.as_map()["token_type"], json!("Bearer"));
        assert_eq!(t.refresh_token(), Some("r"));
        assert_eq!(t.as_map()["account_id"], json!("x"));
        assert!(!t.as_map().contains_key("expires_in"));
        let t = token_from_response(json!({"access_token":"a"}).as_object().cloned().unwrap(), 0)
            .unwrap();
        assert_eq!(t.as_map()["expiry"], json!(3600));
        assert!(
            token_from_response(json!({"access_token":""}).as_object().cloned().unwrap(), 0)
                .is_none()
        );
        assert!(
            token_from_response(
                json!({"access_token":"a","token_type":"mac"})
                    .as_object()
                    .cloned()
                    .unwrap(),
                0
            )
            .is_none()
        );
    }

    #[test]
    fn bodies_and_debug() {
        let r = post(
            "https://x/t",
            BodyEncoding::Form,
            &[("code", "c d"), ("code_verifier", "V")],
            8000,
        );
        assert_eq!(
            r.body.as_ref().unwrap().expose(),
            "code=c+d&code_verifier=V"
        );
        assert!(!format!("{r:?}").contains("code_verifier"));
        let j = post(
            "https://x/t",
            BodyEncoding::Json,
            &[("grant_type", "authorization_code")],
            8000,
        );
        assert_eq!(
            j.body.as_ref().unwrap().expose(),
            r#"{"grant_type":"authorization_code"}"#
        );
        let o = resp(200, json!({"refresh_token":"SECRET"}));
        assert!(!format!("{o:?}").contains("SECRET"));
    }
}
