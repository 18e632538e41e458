//! Request frames after the handshake, decoded without building a
//! `serde_json::Value` (SPEC §3.3, §3.4).
//!
//! Every request used to be parsed into a `Map<String, Value>` — a node and
//! a `String` per field — only to read `id`, `op` and a few payload fields.
//! Here serde deserializes the frame straight into [`Request`]: the fields
//! the engine reads keep their strings borrowed from the frame (owned only
//! when they contain escapes), and no map is built.
//!
//! Acceptance is exactly that of parsing into `Value`, so no frame changes
//! verdict: the same `serde_json` deserializer runs over every byte; every
//! field the engine does not read is still fully parsed (strings unescaped
//! and checked, numbers converted), only not kept, rather than skipped
//! with `IgnoredAny` (which checks less: lone surrogate escapes, for one);
//! a repeated key keeps its last value as a `Map` does; and a top level
//! that is valid JSON but not an object is [`DecodeError::NotObject`],
//! invalid JSON [`DecodeError::InvalidJson`]. The tests compare verdicts
//! with `Value` parsing on generated inputs.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::frame::DecodeError;

/// A field value as the validation rules see it: a string (borrowed from
/// the frame when it has no escapes) or any other JSON value.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    /// A JSON string.
    Str(Cow<'a, str>),
    /// Any other JSON value (`null`, a boolean, a number, an array, an
    /// object).
    Other(Value),
}

/// The payload of a request: the fields any operation reads. Every other
/// field is ignored, as the schemas say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload<'a> {
    /// Indexed by [`Slot`]: a fixed array, no map to build or search.
    fields: [Option<Field<'a>>; Slot::COUNT],
}

/// The payload fields some operation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Provider,
    Bucket,
    Name,
    TargetId,
    Token,
    SessionId,
    Code,
}

impl Slot {
    const COUNT: usize = 7;

    fn of(wire: &str) -> Option<Slot> {
        Some(match wire {
            "provider" => Slot::Provider,
            "bucket" => Slot::Bucket,
            "name" => Slot::Name,
            "targetId" => Slot::TargetId,
            "token" => Slot::Token,
            "session_id" => Slot::SessionId,
            "code" => Slot::Code,
            _ => return None,
        })
    }
}

impl<'a> Payload<'a> {
    /// The field called `name` on the wire, if present (any value, `null`
    /// included). Names no operation reads are never kept: `None`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Field<'a>> {
        Slot::of(name).and_then(|n| self.fields[n as usize].as_ref())
    }
}

/// The `payload` member of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum PayloadField<'a> {
    /// An object.
    Object(Payload<'a>),
    /// Anything else (`null` included).
    Other(Value),
}

/// A request envelope: the members dispatch reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request<'a> {
    /// `id`, any JSON value.
    pub id: Option<Field<'a>>,
    /// `op`, any JSON value.
    pub op: Option<Field<'a>>,
    /// `payload`, any JSON value.
    pub payload: Option<PayloadField<'a>>,
}

/// Decodes one request frame's JSON.
pub fn parse(json: &[u8]) -> Result<Request<'_>, DecodeError> {
    // One UTF-8 check of the whole frame, then the `str` reader, which does
    // not check each string again. Invalid UTF-8 is invalid JSON either way.
    let text = std::str::from_utf8(json).map_err(|_| DecodeError::InvalidJson)?;
    // Filled in place: the request is a few hundred bytes, and each layer
    // of `Result` it would otherwise be returned through is a copy.
    let mut request = Request::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let is_object = RequestSeed(&mut request)
        .deserialize(&mut de)
        .and_then(|is_object| de.end().map(|()| is_object));
    match is_object {
        Ok(true) => Ok(request),
        Ok(false) => Err(DecodeError::NotObject),
        Err(_) => Err(DecodeError::InvalidJson),
    }
}

/// An object key, sorted into the members and payload fields read here.
#[derive(Clone, Copy)]
enum Key {
    Id,
    Op,
    Payload,
    Field(Slot),
    Ignored,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
        Ok(match key {
            "id" => Key::Id,
            "op" => Key::Op,
            "payload" => Key::Payload,
            _ => Slot::of(key).map_or(Key::Ignored, Key::Field),
        })
    }
}

/// Fills a [`Request`] from the top level of a frame; says whether that
/// was an object.
struct RequestSeed<'r, 'a>(&'r mut Request<'a>);

impl<'de> DeserializeSeed<'de> for RequestSeed<'_, 'de> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed<'_, 'de> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Id => self.0.id = Some(map.next_value()?),
                Key::Op => self.0.op = Some(map.next_value()?),
                Key::Payload => map.next_value_seed(PayloadSeed(&mut self.0.payload))?,
                Key::Field(_) | Key::Ignored => {
                    map.next_value::<Ignored>()?;
                }
            }
        }
        Ok(true)
    }

    // Any other value: read to its end (so it is checked as `Value` would
    // check it), then reported as not an object.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        IgnoredVisitor.visit_seq(seq).map(|_| false)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// Fills the `payload` member in place (a repeated member replaces it).
struct PayloadSeed<'r, 'a>(&'r mut Option<PayloadField<'a>>);

impl<'de> DeserializeSeed<'de> for PayloadSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> PayloadSeed<'_, 'de> {
    fn other(self, value: Value) {
        *self.0 = Some(PayloadField::Other(value));
    }
}

impl<'de> Visitor<'de> for PayloadSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        *self.0 = Some(PayloadField::Object(Payload::default()));
        let Some(PayloadField::Object(payload)) = self.0 else {
            return Ok(());
        };
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Field(name) => payload.fields[name as usize] = Some(map.next_value()?),
                _ => {
                    map.next_value::<Ignored>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let value = OtherVisitor.visit_seq(seq)?;
        self.other(value);
        Ok(())
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.other(Value::from(s));
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.other(Value::Bool(b));
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.other(Value::from(n));
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        self.other(Value::from(n));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        let value = OtherVisitor.visit_f64::<E>(n)?;
        self.other(value);
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.other(Value::Null);
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FieldVisitor)
    }
}

impl<'de> Deserialize<'de> for PayloadField<'de> {
    /// For tests and tools (`PayloadField::deserialize(json)`).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut payload = None;
        PayloadSeed(&mut payload).deserialize(deserializer)?;
        payload.ok_or_else(|| de::Error::custom("expected a JSON value"))
    }
}

impl<'de> Deserialize<'de> for Payload<'de> {
    /// An object's fields; for tests and tools (`Payload::deserialize(json)`).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match PayloadField::deserialize(deserializer)? {
            PayloadField::Object(payload) => Ok(payload),
            PayloadField::Other(_) => Err(de::Error::custom("expected an object")),
        }
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(s)))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        OtherVisitor.visit_bool(b).map(Field::Other)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        OtherVisitor.visit_i64(n).map(Field::Other)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        OtherVisitor.visit_u64(n).map(Field::Other)
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        OtherVisitor.visit_f64(n).map(Field::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Other(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        OtherVisitor.visit_seq(seq).map(Field::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        OtherVisitor.visit_map(map).map(Field::Other)
    }
}

/// A member no operation reads: parsed and checked as parsing it into a
/// `Value` would (strings, escapes, numbers, nesting depth), but not kept,
/// so it costs no allocation.
struct Ignored;

impl<'de> Deserialize<'de> for Ignored {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(IgnoredVisitor)
    }
}

struct IgnoredVisitor;

impl<'de> Visitor<'de> for IgnoredVisitor {
    type Value = Ignored;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Ignored, E> {
        Ok(Ignored)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Ignored, E> {
        Ok(Ignored)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Ignored, E> {
        Ok(Ignored)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Ignored, E> {
        Ok(Ignored)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Ignored, E> {
        Ok(Ignored)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Ignored, E> {
        Ok(Ignored)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ignored, A::Error> {
        while seq.next_element::<Ignored>()?.is_some() {}
        Ok(Ignored)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ignored, A::Error> {
        while map.next_entry::<Ignored, Ignored>()?.is_some() {}
        Ok(Ignored)
    }
}

/// Builds the `Value` of a member read as any JSON, as `Value`'s own
/// deserializer does (a repeated key keeps its last value).
struct OtherVisitor;

impl<'de> Visitor<'de> for OtherVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The differential check of [`parse`] against `serde_json::Value`, for the
/// tests and the `request` fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
mod differential {
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
}

#[cfg(any(test, feature = "fuzzing"))]
pub use differential::check_against_value;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn reads_the_envelope_borrowed() {
        let json = br#"{"v":2,"id":"a1","op":"get_token","payload":{"provider":"p","bucket":"b","x":[1]}}"#;
        let r = parse(json).unwrap();
        assert!(matches!(r.id, Some(Field::Str(Cow::Borrowed("a1")))));
        assert!(matches!(r.op, Some(Field::Str(Cow::Borrowed("get_token")))));
        let Some(PayloadField::Object(p)) = r.payload else {
            panic!("payload is an object");
        };
        assert!(matches!(
            p.get("provider"),
            Some(Field::Str(Cow::Borrowed("p")))
        ));
        assert!(matches!(
            p.get("bucket"),
            Some(Field::Str(Cow::Borrowed("b")))
        ));
        assert_eq!(p.get("x"), None);
        check_against_value(json);
    }

    #[test]
    fn same_verdicts_as_parsing_into_value() {
        for json in [
            &br#"{}"#[..],
            br#"{"id":"1","id":2,"op":"a","op":"get_token"}"#,
            br#"{"payload":{"provider":"a","provider":5}}"#,
            br#"{"payload":{"provider":"x"},"payload":null}"#,
            br#"{"payload":[1,{"a":2}],"id":7.0,"op":null}"#,
            br#"{"payload":"str","id":-1,"op":true}"#,
            br#"{"payload":{"prov\u0069der":"\u0061\"b","token":{"a":[1,2.5,"c"]}}}"#,
            br#"{"id":"\ud800"}"#,
            br#"{"x":"\ud800"}"#,
            br#"{"payload":{"y":"\udc00"}}"#,
            br#"{"x":"\ud83d\ude00","id":"\ud83d\ude00"}"#,
            br#"{"x":1e400}"#,
            br#"{"x":18446744073709551616,"id":-9223372036854775809}"#,
            b"{\"a\":\"\xff\xfe\"}",
            b"{\"a\xff\":1}",
            br#"{"a":"ctl	"}"#,
            b"{nope",
            b"",
            b"   ",
            b"[1,2]",
            b"[1,2",
            b"[1,2] x",
            b"null",
            b"\"s\"",
            b"\"s",
            b"12",
            b"1 2",
            b"{} {}",
            b"{}   ",
            b" {\"id\" : \"1\" } ",
            br#"{"id":"1",}"#,
            br#"{"id"}"#,
        ] {
            check_against_value(json);
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        check_against_value(deep.as_bytes());
        let deep = format!(r#"{{"x":{}1{}}}"#, "[".repeat(126), "]".repeat(126));
        check_against_value(deep.as_bytes());
        let deep = format!(r#"{{"x":{}1{}}}"#, "[".repeat(127), "]".repeat(127));
        check_against_value(deep.as_bytes());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z\u{e9}\"\\\\]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            let key = prop_oneof![
                Just("id".to_owned()),
                Just("op".to_owned()),
                Just("payload".to_owned()),
                Just("provider".to_owned()),
                Just("targetId".to_owned()),
                "[a-z]{1,3}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key, inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn agrees_with_value_on_any_json(v in json_value()) {
            check_against_value(&serde_json::to_vec(&v).unwrap());
        }

        #[test]
        fn agrees_with_value_on_any_bytes(
            bytes in prop::collection::vec(
                prop::sample::select(b"{}[]\":,\\ u0123456789abdfnrtxe.-+\xc3\xa9\xff".to_vec()),
                0..40,
            )
        ) {
            check_against_value(&bytes);
        }

        #[test]
        fn agrees_with_value_on_mutated_requests(cut in 0usize..90, byte in any::<u8>()) {
            let mut json = br#"{"v":2,"id":"6f1c","op":"get_token","payload":{"provider":"anthropic","bucket":"d"}}"#.to_vec();
            let at = cut.min(json.len() - 1);
            json[at] = byte;
            check_against_value(&json);
        }
    }

    #[test]
    fn payload_from_a_value_for_tests_and_tools() {
        let p = Payload::deserialize(json!({"provider":"a","bucket":3,"other":"x"})).unwrap();
        assert_eq!(p.get("provider"), Some(&Field::Str(Cow::Borrowed("a"))));
        assert_eq!(p.get("bucket"), Some(&Field::Other(json!(3))));
        assert_eq!(p.get("other"), None);
        assert!(Payload::deserialize(json!([1])).is_err());
    }
}
