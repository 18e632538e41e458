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
//!
//! `envelope.rs` reads the top level and the `payload` member, sorting
//! keys into what is kept; `fields.rs` reads one member's value (kept as a
//! [`Field`], checked and dropped, or rebuilt as a `Value`).

use std::borrow::Cow;

use serde::de::DeserializeSeed;
use serde_json::Value;

use crate::wire::frame::DecodeError;

use envelope::RequestSeed;

#[cfg(any(test, feature = "fuzzing"))]
mod differential;
mod envelope;
mod fields;
#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "fuzzing"))]
pub use differential::check_against_value;

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
