//! The top level of a request frame and its `payload` member, filled in
//! place: keys are sorted into the members and payload fields the engine
//! reads, every other value is read to its end and dropped.

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::fields::{Ignored, IgnoredVisitor, OtherVisitor};
use super::{Payload, PayloadField, Request, Slot};

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
pub(super) struct RequestSeed<'r, 'a>(pub(super) &'r mut Request<'a>);

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
