//! The envelopes on the wire: what a client sends (the handshake, a
//! request, `cancel`) and the checks on what it receives.
//!
//! Reply envelopes are checked the way the existing TypeScript client
//! checks them: `ok` is a boolean; `code` and `error` are strings and
//! `retryAfter` a number when present; `data` is an object when present. A
//! reply that fails a check breaks the connection.

use serde_json::{Map, Number, Value, json};

/// Lowest protocol version a client offers.
pub const MIN_VERSION: u8 = 1;
/// Highest protocol version a client offers; also the `v` of the
/// handshake frame itself.
pub const MAX_VERSION: u8 = 2;

/// The handshake request: `{"v":2,"op":"handshake","payload":{"minVersion":1,
/// "maxVersion":2}}`, with `capabilityToken` in the payload when given.
#[must_use]
pub fn handshake_request(token: Option<&str>) -> Value {
    let mut payload = json!({"minVersion": MIN_VERSION, "maxVersion": MAX_VERSION});
    if let Some(token) = token {
        payload["capabilityToken"] = Value::String(token.to_owned());
    }
    json!({"v": MAX_VERSION, "op": "handshake", "payload": payload})
}

/// A request: `{"v":version,"id":id,"op":op,"payload":payload}`.
#[must_use]
pub fn request(version: u8, id: &str, op: &str, payload: &Value) -> Value {
    json!({"v": version, "id": id, "op": op, "payload": payload})
}

/// `cancel` of the request `target`, sent under its own `id`.
#[must_use]
pub fn cancel_request(version: u8, id: &str, target: &str) -> Value {
    request(version, id, "cancel", &json!({"targetId": target}))
}

/// A reply that passed the envelope checks. It keeps the whole frame, for
/// callers that look at more than the outcome (conformance tests compare
/// frames exactly).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    frame: Map<String, Value>,
}

/// The error outcome of a reply, as sent: a client picks its own words for
/// a missing code or message and its own rounding of `retryAfter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// `code`, when present.
    pub code: Option<String>,
    /// `error`, when present.
    pub message: Option<String>,
    /// `retryAfter`, when present.
    pub retry_after: Option<Number>,
}

impl Reply {
    /// Checks an envelope; the error says which check failed.
    ///
    /// # Errors
    ///
    /// The first check the frame fails, worded for a protocol error.
    pub fn parse(frame: Map<String, Value>) -> Result<Reply, &'static str> {
        if !matches!(frame.get("ok"), Some(Value::Bool(_))) {
            return Err("a reply's `ok` is not a boolean");
        }
        check(
            &frame,
            "code",
            Value::is_string,
            "a reply's `code` is not a string",
        )?;
        check(
            &frame,
            "error",
            Value::is_string,
            "a reply's `error` is not a string",
        )?;
        check(
            &frame,
            "retryAfter",
            Value::is_number,
            "a reply's `retryAfter` is not a number",
        )?;
        check(
            &frame,
            "data",
            Value::is_object,
            "a reply's `data` is not an object",
        )?;
        Ok(Reply { frame })
    }

    /// `ok` is `true`.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.frame.get("ok") == Some(&Value::Bool(true))
    }

    /// The whole frame.
    #[must_use]
    pub fn frame(&self) -> &Map<String, Value> {
        &self.frame
    }

    /// The whole frame, by value.
    #[must_use]
    pub fn into_frame(self) -> Map<String, Value> {
        self.frame
    }

    /// `data` (an empty object when absent) for `ok`, else the error.
    ///
    /// # Errors
    ///
    /// The reply's [`ServerError`] when `ok` is `false`.
    pub fn into_result(mut self) -> Result<Map<String, Value>, ServerError> {
        if self.is_ok() {
            return match self.frame.remove("data") {
                Some(Value::Object(data)) => Ok(data),
                _ => Ok(Map::new()),
            };
        }
        let mut text = |k: &str| match self.frame.remove(k) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let (code, message) = (text("code"), text("error"));
        let retry_after = match self.frame.remove("retryAfter") {
            Some(Value::Number(n)) => Some(n),
            _ => None,
        };
        Err(ServerError {
            code,
            message,
            retry_after,
        })
    }
}

fn check(
    frame: &Map<String, Value>,
    key: &str,
    is: fn(&Value) -> bool,
    problem: &'static str,
) -> Result<(), &'static str> {
    match frame.get(key) {
        Some(v) if !is(v) => Err(problem),
        _ => Ok(()),
    }
}

/// Code reported when an error reply carries none.
pub const UNKNOWN_CODE: &str = "UNKNOWN_ERROR";
/// Message reported when an error reply carries none.
pub const UNKNOWN_MESSAGE: &str = "Unknown error";

/// The outcome of a handshake reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// Accepted with this protocol version.
    Accepted {
        /// The negotiated version (1 or 2).
        version: u8,
    },
    /// Refused.
    Refused {
        /// The wire code ([`UNKNOWN_CODE`] when absent).
        code: String,
        /// The wire message ([`UNKNOWN_MESSAGE`] when absent).
        message: String,
    },
}

/// Checks the first frame the server sends. A missing `data.version` means
/// version 1; a version outside 1..=2 is a protocol error.
///
/// # Errors
///
/// What is wrong with the reply, worded for a protocol error.
pub fn handshake_reply(frame: &Map<String, Value>) -> Result<Handshake, &'static str> {
    let reply = Reply::parse(frame.clone())?;
    let data = match reply.into_result() {
        Ok(data) => data,
        Err(e) => {
            return Ok(Handshake::Refused {
                code: e.code.unwrap_or_else(|| UNKNOWN_CODE.to_owned()),
                message: e.message.unwrap_or_else(|| UNKNOWN_MESSAGE.to_owned()),
            });
        }
    };
    match data.get("version") {
        None => Ok(Handshake::Accepted { version: 1 }),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.fract() == 0.0 && (1.0..=2.0).contains(&v) => {
                Ok(Handshake::Accepted { version: v as u8 })
            }
            _ => Err("the handshake reply names a protocol version other than 1 or 2"),
        },
        Some(_) => Err("the handshake reply's `data.version` is not a number"),
    }
}
