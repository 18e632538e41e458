//! The differential check of [`parse`] against `serde_json::Value`, for the
//! tests and the `request` fuzz target.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::*;

/// What parsing into `Value` said about the same bytes.
fn reference(json: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    match serde_json::from_slice::<Value>(json) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(DecodeError::NotObject),
        Err(_) => Err(DecodeError::InvalidJson),
    }
}

fn field_of(v: Option<&Value>) -> Option<Field<'static>> {
    v.map(|v| match v {
        Value::String(s) => Field::Str(Cow::Owned(s.clone())),
        other => Field::Other(other.clone()),
    })
}

/// The `Request` the `Value` of a frame stands for.
fn expected(map: &Map<String, Value>) -> Request<'static> {
    let payload = map.get("payload").map(|p| match p {
        Value::Object(fields) => {
            let mut payload = Payload::default();
            for (k, v) in fields {
                if let Some(name) = Slot::of(k) {
                    payload.fields[name as usize] = field_of(Some(v));
                }
            }
            PayloadField::Object(payload)
        }
        other => PayloadField::Other(other.clone()),
    });
    Request {
        id: field_of(map.get("id")),
        op: field_of(map.get("op")),
        payload,
    }
}

/// Checks [`parse`] against parsing the same bytes into a `Value`: the
/// same verdict, and on success the same fields. Panics on a difference
/// (the property the tests and the `request` fuzz target check).
pub fn check_against_value(json: &[u8]) {
    let got = parse(json);
    match reference(json) {
        Ok(map) => assert_eq!(
            got,
            Ok(expected(&map)),
            "{:?}",
            String::from_utf8_lossy(json)
        ),
        Err(e) => assert_eq!(got, Err(e), "{:?}", String::from_utf8_lossy(json)),
    }
}
