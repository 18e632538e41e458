//! Typed payload schemas and field validation (SPEC §3.4).
//!
//! Rules shared by every operation:
//! - a required field that is absent, `null`, `""`, `0` or `false` is
//!   missing (`Missing <field>`), as in the existing server;
//! - a field of another type, or a name outside its character set, is
//!   invalid (`Invalid <field>`);
//! - an absent or empty `bucket` is `"default"`;
//! - unknown fields are ignored.
//!
//! The rules read a request's [`Payload`], decoded borrowed from the frame
//! (see [`crate::wire::request`]).

use serde_json::Value;

use crate::tokens::token::Token;
use crate::wire::request::{Field, Payload, PayloadField};

/// The bucket used when a request names none.
pub const DEFAULT_BUCKET: &str = "default";

/// A payload field that failed validation; `Display` is the wire message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldError {
    /// Required and missing (`Missing provider`).
    Missing(&'static str),
    /// Present but of the wrong type or shape (`Invalid provider`).
    Invalid(&'static str),
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldError::Missing(field) => write!(f, "Missing {field}"),
            FieldError::Invalid(field) => write!(f, "Invalid {field}"),
        }
    }
}

/// JavaScript falsiness, which the existing server uses for "missing".
#[must_use]
pub fn is_falsy(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(_) | Value::Object(_) => false,
    }
}

/// [`is_falsy`] for a decoded field.
#[must_use]
pub fn is_falsy_field(f: &Field<'_>) -> bool {
    match f {
        Field::Str(s) => s.is_empty(),
        Field::Other(v) => is_falsy(v),
    }
}

/// The payload as an object: absent or `null` is `{}`, any other non-object
/// is `Invalid payload`.
pub fn as_object<'p, 'a>(
    payload: Option<&'p PayloadField<'a>>,
) -> Result<Option<&'p Payload<'a>>, FieldError> {
    match payload {
        None | Some(PayloadField::Other(Value::Null)) => Ok(None),
        Some(PayloadField::Object(p)) => Ok(Some(p)),
        Some(PayloadField::Other(_)) => Err(FieldError::Invalid("payload")),
    }
}

fn field<'p, 'a>(payload: Option<&'p Payload<'a>>, name: &str) -> Option<&'p Field<'a>> {
    payload
        .and_then(|p| p.get(name))
        .filter(|f| !is_falsy_field(f))
}

/// A required string field.
pub fn required_str<'p>(
    payload: Option<&'p Payload<'_>>,
    name: &'static str,
) -> Result<&'p str, FieldError> {
    match field(payload, name) {
        None => Err(FieldError::Missing(name)),
        Some(Field::Str(s)) => Ok(s),
        Some(Field::Other(_)) => Err(FieldError::Invalid(name)),
    }
}

/// Provider and bucket names: `^[A-Za-z0-9._@-]{1,64}$`, not `.` or `..`.
#[must_use]
pub fn is_store_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

/// API key names: `^[A-Za-z0-9._-]{1,64}$`.
#[must_use]
pub fn is_key_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The required `provider` field, validated as a store name.
pub fn provider(payload: Option<&Payload<'_>>) -> Result<String, FieldError> {
    let p = required_str(payload, "provider")?;
    if is_store_name(p) {
        Ok(p.to_owned())
    } else {
        Err(FieldError::Invalid("provider"))
    }
}

/// The optional `bucket` field; absent or empty means [`DEFAULT_BUCKET`].
pub fn bucket(payload: Option<&Payload<'_>>) -> Result<String, FieldError> {
    match field(payload, "bucket") {
        None => Ok(DEFAULT_BUCKET.to_owned()),
        Some(Field::Str(b)) if is_store_name(b) => Ok(b.to_string()),
        Some(_) => Err(FieldError::Invalid("bucket")),
    }
}

/// The required API key `name` field.
pub fn key_name(payload: Option<&Payload<'_>>) -> Result<String, FieldError> {
    let n = required_str(payload, "name")?;
    if is_key_name(n) {
        Ok(n.to_owned())
    } else {
        Err(FieldError::Invalid("name"))
    }
}

/// Up to this magnitude every integral `f64` prints the same in every
/// shortest-digits formatter (2^53: all integers below are exact).
const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

/// A request id or cancel target: a non-empty string, or a non-zero number
/// rendered as the existing server (JavaScript's `String`) renders it:
/// `7`, not `7.0`; `1e15` as `1000000000000000`.
#[must_use]
pub fn id_string(v: &Value) -> Option<String> {
    if is_falsy(v) {
        return None;
    }
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() <= EXACT_INTEGERS => {
                format!("{f:.0}")
            }
            _ => n.to_string(),
        }),
        _ => None,
    }
}

/// [`id_string`] for a decoded field.
#[must_use]
pub fn field_id(f: &Field<'_>) -> Option<String> {
    match f {
        Field::Str(s) if s.is_empty() => None,
        Field::Str(s) => Some(s.to_string()),
        Field::Other(v) => id_string(v),
    }
}

/// The required `targetId` of `cancel`.
pub fn target_id(payload: Option<&Payload<'_>>) -> Result<String, FieldError> {
    match field(payload, "targetId") {
        None => Err(FieldError::Missing("targetId")),
        Some(f) => field_id(f).ok_or(FieldError::Invalid("targetId")),
    }
}

/// The token of `save_token`: an object with a string `access_token`, a
/// finite non-negative number `expiry` (kept as given) and a string
/// `token_type` equal to `bearer` in any case.
pub fn token(value: &Value) -> Result<Token, FieldError> {
    let invalid = FieldError::Invalid("token");
    let Value::Object(map) = value else {
        return Err(invalid);
    };
    let access_ok = map.get("access_token").is_some_and(Value::is_string);
    let expiry_ok = map
        .get("expiry")
        .and_then(Value::as_f64)
        .is_some_and(|e| e.is_finite() && e >= 0.0);
    let type_ok = map
        .get("token_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer"));
    if access_ok && expiry_ok && type_ok {
        Ok(Token::from_map(map.clone()))
    } else {
        Err(invalid)
    }
}

/// `save_token {provider, token, bucket?}`.
pub fn save_token(payload: Option<&Payload<'_>>) -> Result<(String, String, Token), FieldError> {
    let missing = FieldError::Missing("provider or token");
    let (Some(p), Some(t)) = (field(payload, "provider"), field(payload, "token")) else {
        return Err(missing);
    };
    let provider = match p {
        Field::Str(s) if is_store_name(s) => s.to_string(),
        _ => return Err(FieldError::Invalid("provider")),
    };
    let token = match t {
        Field::Other(v) => token(v)?,
        Field::Str(_) => return Err(FieldError::Invalid("token")),
    };
    Ok((provider, bucket(payload)?, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    fn p(v: Value) -> Payload<'static> {
        Payload::deserialize(v).unwrap()
    }

    fn raw(v: Value) -> PayloadField<'static> {
        PayloadField::deserialize(v).unwrap()
    }

    #[test]
    fn falsy_values_are_missing() {
        for v in [json!(null), json!(""), json!(0), json!(0.0), json!(false)] {
            let m = p(json!({ "provider": v }));
            assert_eq!(provider(Some(&m)), Err(FieldError::Missing("provider")));
        }
        assert_eq!(provider(None).unwrap_err().to_string(), "Missing provider");
    }

    #[test]
    fn wrong_types_and_names_are_invalid() {
        for v in [
            json!(7),
            json!(true),
            json!([1]),
            json!({}),
            json!("a/b"),
            json!(".."),
            json!("."),
            json!("x".repeat(65)),
        ] {
            let m = p(json!({ "provider": v }));
            assert_eq!(
                provider(Some(&m)).unwrap_err().to_string(),
                "Invalid provider"
            );
        }
        assert!(provider(Some(&p(json!({"provider":"a.b_c@d-1"})))).is_ok());
        assert!(is_key_name("OPENAI_API_KEY") && !is_key_name("a@b") && !is_key_name(""));
    }

    #[test]
    fn bucket_defaults() {
        assert_eq!(bucket(None).unwrap(), "default");
        assert_eq!(bucket(Some(&p(json!({"bucket":""})))).unwrap(), "default");
        assert_eq!(bucket(Some(&p(json!({"bucket":null})))).unwrap(), "default");
        assert_eq!(bucket(Some(&p(json!({"bucket":"work"})))).unwrap(), "work");
        assert_eq!(
            bucket(Some(&p(json!({"bucket":3})))),
            Err(FieldError::Invalid("bucket"))
        );
    }

    #[test]
    fn payload_shapes() {
        assert_eq!(as_object(None), Ok(None));
        assert_eq!(as_object(Some(&raw(json!(null)))), Ok(None));
        assert_eq!(
            as_object(Some(&raw(json!([1])))),
            Err(FieldError::Invalid("payload"))
        );
        assert_eq!(
            as_object(Some(&raw(json!("x")))).unwrap_err().to_string(),
            "Invalid payload"
        );
        assert_eq!(
            as_object(Some(&raw(json!({"provider":"a"})))),
            Ok(Some(&p(json!({"provider":"a"}))))
        );
    }

    #[test]
    fn ids() {
        assert_eq!(id_string(&json!("a")), Some("a".into()));
        assert_eq!(id_string(&json!(7)), Some("7".into()));
        assert_eq!(id_string(&json!(7.0)), Some("7".into()));
        assert_eq!(id_string(&json!(-1)), Some("-1".into()));
        // Floats with an integral value, as JavaScript prints them, up to
        // 2^53 inclusive (JSON `1e15` is a float).
        let float = |text: &str| serde_json::from_str::<Value>(text).expect("number");
        assert_eq!(id_string(&float("1e15")), Some("1000000000000000".into()));
        assert_eq!(
            id_string(&float("-9007199254740992.0")),
            Some("-9007199254740992".into())
        );
        assert_eq!(id_string(&float("1e16")), Some("1e+16".into()));
        assert_eq!(id_string(&float("2.5")), Some("2.5".into()));
        assert_eq!(id_string(&json!(0)), None);
        assert_eq!(id_string(&json!("")), None);
        assert_eq!(id_string(&json!(true)), None);
        assert_eq!(id_string(&json!({})), None);
        for v in [
            json!("a"),
            json!(""),
            json!(7.0),
            json!(0),
            json!(null),
            json!([]),
        ] {
            let f = Field::deserialize(v.clone()).unwrap();
            assert_eq!(field_id(&f), id_string(&v), "{v}");
            assert_eq!(is_falsy_field(&f), is_falsy(&v), "{v}");
        }
    }

    #[test]
    fn save_token_schema() {
        let ok = p(
            json!({"provider":"a","token":{"access_token":"x","expiry":1.5,"token_type":"BeArEr"}}),
        );
        let (pv, b, t) = save_token(Some(&ok)).unwrap();
        assert_eq!((pv.as_str(), b.as_str()), ("a", "default"));
        assert_eq!(t.expiry_secs(), Some(1.5));
        assert_eq!(
            save_token(Some(&p(json!({"provider":"a"}))))
                .unwrap_err()
                .to_string(),
            "Missing provider or token"
        );
        assert_eq!(
            save_token(Some(&p(json!({"token":{}}))))
                .unwrap_err()
                .to_string(),
            "Missing provider or token"
        );
        for bad in [
            json!("str"),
            json!([1]),
            json!({"access_token":1,"expiry":1,"token_type":"bearer"}),
            json!({"access_token":"x","expiry":-1,"token_type":"bearer"}),
            json!({"access_token":"x","expiry":"1","token_type":"bearer"}),
            json!({"access_token":"x","expiry":1,"token_type":"mac"}),
            json!({"access_token":"x","token_type":"bearer"}),
        ] {
            let m = p(json!({"provider":"a","token":bad}));
            assert_eq!(
                save_token(Some(&m)).unwrap_err().to_string(),
                "Invalid token"
            );
        }
    }
}
