//! Reply envelopes, checked the way the existing TypeScript client checks
//! them: `ok` is a boolean; `code` and `error` are strings and `retryAfter`
//! a number when present; `data` is an object when present. A reply that
//! fails a check breaks the connection.

use serde_json::{Map, Value};

use super::error::ClientError;

/// A reply that passed the envelope checks.
#[derive(Debug)]
pub(crate) struct Reply {
    ok: bool,
    code: Option<String>,
    error: Option<String>,
    retry_after: Option<f64>,
    data: Option<Map<String, Value>>,
}

/// Code reported when an error reply carries none.
const UNKNOWN_CODE: &str = "UNKNOWN_ERROR";
/// Message reported when an error reply carries none.
const UNKNOWN_MESSAGE: &str = "Unknown error";

impl Reply {
    /// Checks an envelope; the error says which check failed.
    pub(crate) fn parse(mut frame: Map<String, Value>) -> Result<Reply, &'static str> {
        let ok = match frame.get("ok") {
            Some(Value::Bool(ok)) => *ok,
            _ => return Err("a reply's `ok` is not a boolean"),
        };
        let code = take_string(&mut frame, "code", "a reply's `code` is not a string")?;
        let error = take_string(&mut frame, "error", "a reply's `error` is not a string")?;
        let retry_after = match frame.remove("retryAfter") {
            None => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(_) => return Err("a reply's `retryAfter` is not a number"),
        };
        let data = match frame.remove("data") {
            None => None,
            Some(Value::Object(data)) => Some(data),
            Some(_) => return Err("a reply's `data` is not an object"),
        };
        Ok(Reply {
            ok,
            code,
            error,
            retry_after,
            data,
        })
    }

    /// `data` (an empty object when absent) for `ok`, else the server error.
    pub(crate) fn into_result(self) -> Result<Map<String, Value>, ClientError> {
        if self.ok {
            return Ok(self.data.unwrap_or_default());
        }
        Err(ClientError::Server {
            code: self.code.unwrap_or_else(|| UNKNOWN_CODE.to_owned()),
            message: self.error.unwrap_or_else(|| UNKNOWN_MESSAGE.to_owned()),
            // Whole seconds, rounded up; the server sends integers >= 1.
            retry_after: self.retry_after.map(|s| s.max(0.0).ceil() as u64),
        })
    }
}

fn take_string(
    frame: &mut Map<String, Value>,
    key: &str,
    problem: &'static str,
) -> Result<Option<String>, &'static str> {
    match frame.remove(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(problem),
    }
}

/// The outcome of a handshake reply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HandshakeReply {
    /// Accepted with this protocol version.
    Accepted(u8),
    /// Refused.
    Refused {
        /// The wire code.
        code: String,
        /// The wire message.
        message: String,
    },
}

/// Checks the first frame the server sends. A missing `data.version` means
/// version 1; a version outside 1..=2 is a protocol error.
pub(crate) fn handshake(frame: Map<String, Value>) -> Result<HandshakeReply, &'static str> {
    let reply = Reply::parse(frame)?;
    if !reply.ok {
        return Ok(HandshakeReply::Refused {
            code: reply.code.unwrap_or_else(|| UNKNOWN_CODE.to_owned()),
            message: reply.error.unwrap_or_else(|| UNKNOWN_MESSAGE.to_owned()),
        });
    }
    let version = reply.data.as_ref().and_then(|d| d.get("version"));
    match version {
        None => Ok(HandshakeReply::Accepted(1)),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.fract() == 0.0 && (1.0..=2.0).contains(&v) => {
                Ok(HandshakeReply::Accepted(v as u8))
            }
            _ => Err("the handshake reply names a protocol version other than 1 or 2"),
        },
        Some(_) => Err("the handshake reply's `data.version` is not a number"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn envelope_checks() {
        for bad in [
            json!({"id":"1"}),
            json!({"id":"1","ok":"true"}),
            json!({"id":"1","ok":false,"code":7}),
            json!({"id":"1","ok":false,"error":null}),
            json!({"id":"1","ok":false,"retryAfter":"3"}),
            json!({"id":"1","ok":true,"data":[1]}),
            json!({"id":"1","ok":true,"data":null}),
        ] {
            assert!(Reply::parse(obj(bad.clone())).is_err(), "{bad}");
        }
        let ok = Reply::parse(obj(json!({"id":"1","ok":true}))).unwrap();
        assert_eq!(ok.into_result().unwrap(), Map::new());
        let err = Reply::parse(obj(
            json!({"id":"1","ok":false,"code":"RATE_LIMITED","error":"Too many requests","retryAfter":2.2}),
        ))
        .unwrap();
        match err.into_result() {
            Err(ClientError::Server {
                code,
                message,
                retry_after,
            }) => {
                assert_eq!(
                    (code.as_str(), message.as_str()),
                    ("RATE_LIMITED", "Too many requests")
                );
                assert_eq!(retry_after, Some(3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn handshake_versions() {
        let accept =
            |data: Value| handshake(obj(json!({"v":2,"op":"handshake","ok":true,"data":data})));
        assert_eq!(
            accept(json!({"version":2})),
            Ok(HandshakeReply::Accepted(2))
        );
        assert_eq!(
            accept(json!({"version":1})),
            Ok(HandshakeReply::Accepted(1))
        );
        assert_eq!(accept(json!({})), Ok(HandshakeReply::Accepted(1)));
        assert_eq!(
            handshake(obj(json!({"ok":true}))),
            Ok(HandshakeReply::Accepted(1))
        );
        assert!(accept(json!({"version":3})).is_err());
        assert!(accept(json!({"version":"2"})).is_err());
        assert_eq!(
            handshake(obj(json!({"ok":false,"code":"UNAUTHORIZED","error":"x"}))),
            Ok(HandshakeReply::Refused {
                code: "UNAUTHORIZED".into(),
                message: "x".into()
            })
        );
        assert!(handshake(obj(json!({"ok":1}))).is_err());
    }
}
