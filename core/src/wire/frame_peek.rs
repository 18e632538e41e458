//! Recovering the request `id` from the start of an oversize frame
//! (SPEC §3.1).
//!
//! An oversize frame is refused from its header, before any memory is
//! reserved for its body. To answer it with `INVALID_REQUEST` instead of a
//! bare close, the engine looks at the bytes of the body that happen to be
//! in the same input chunk — at most [`PEEK_LIMIT`] of them, never buffered
//! across reads — and asks this scanner for the id.
//!
//! The scanner is deliberately tiny: it walks the top-level object's members
//! in order, accepting only scalar values (strings, numbers, `true`,
//! `false`, `null`), and stops at the first `id` member, at the first
//! non-scalar value (an object or array it would have to skip), at anything
//! malformed, or at the end of the slice. Every index is checked, so it
//! cannot panic or read past the slice; it allocates only the id itself
//! (and a key that contains escapes).

use std::borrow::Cow;

use crate::wire::payload;
use crate::wire::request::Field;

/// How many body bytes the engine hands to [`peek_id`] at most.
pub const PEEK_LIMIT: usize = 512;

/// The request id at the start of `body`, echoed as normal requests echo
/// it (a number becomes its string), or `None` when it is not found among
/// the leading scalar members of the slice.
#[must_use]
pub fn peek_id(body: &[u8]) -> Option<String> {
    let mut s = Scanner {
        bytes: body,
        pos: 0,
    };
    s.ws();
    s.eat(b'{')?;
    loop {
        s.ws();
        let key = s.string()?;
        s.ws();
        s.eat(b':')?;
        s.ws();
        let value = s.scalar()?;
        s.ws();
        // The value must be followed by its terminator: a number cut by the
        // end of the chunk (`12` of `123`) is not the id.
        let more = match s.peek()? {
            b',' => true,
            b'}' => false,
            _ => return None,
        };
        s.pos += 1;
        if key_is_id(key) {
            return match value {
                Scalar::Str(raw) => {
                    let text: String = serde_json::from_slice(raw).ok()?;
                    payload::field_id(&Field::Str(Cow::Owned(text)))
                }
                Scalar::Other(raw) => {
                    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
                    payload::field_id(&Field::Other(v))
                }
            };
        }
        if !more {
            return None;
        }
    }
}

/// Whether a raw JSON string literal (quotes included) spells `id`.
fn key_is_id(raw: &[u8]) -> bool {
    if raw == b"\"id\"" {
        return true;
    }
    raw.contains(&b'\\') && serde_json::from_slice::<String>(raw).is_ok_and(|k| k == "id")
}

/// A scalar value as raw JSON text.
enum Scalar<'a> {
    /// A string literal, quotes included.
    Str(&'a [u8]),
    /// A number, `true`, `false` or `null`.
    Other(&'a [u8]),
}

struct Scanner<'a> {
    bytes: &'a [u8],
    /// Invariant: `pos <= bytes.len()`.
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.pos += 1)
    }

    /// A complete string literal; escapes are skipped, not decoded.
    fn string(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        self.eat(b'"')?;
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return self.bytes.get(start..self.pos);
                }
                b'\\' => self.pos = (self.pos + 2).min(self.bytes.len()),
                _ => self.pos += 1,
            }
        }
    }

    fn scalar(&mut self) -> Option<Scalar<'a>> {
        match self.peek()? {
            b'"' => self.string().map(Scalar::Str),
            b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
                {
                    self.pos += 1;
                }
                self.bytes.get(start..self.pos).map(Scalar::Other)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    #[test]
    fn finds_string_and_number_ids() {
        assert_eq!(
            peek_id(br#"{"v":2,"id":"abc","op":"save_token","payload":{"#).as_deref(),
            Some("abc")
        );
        assert_eq!(peek_id(br#" { "id" : 42 , "#).as_deref(), Some("42"));
        assert_eq!(peek_id(br#"{"id":"a\"b\u00e9"}"#).as_deref(), Some("a\"bé"));
        assert_eq!(peek_id(br#"{"\u0069d":"x",}"#).as_deref(), Some("x"));
        assert_eq!(
            peek_id(br#"{"v":null,"ok":true,"id":7}"#).as_deref(),
            Some("7")
        );
    }

    #[test]
    fn gives_up_where_it_must() {
        for body in [
            &b""[..],
            b"{",
            br#"{"id":"ab"#,                       // cut inside the id
            br#"{"id":12"#,                        // a number cut by the chunk end
            br#"{"id":"abc""#,                     // no terminator yet
            br#"{"payload":{"id":"x"},"id":"y","#, // non-scalar first
            br#"{"v":[1],"id":"y","#,
            br#"["id","x"]"#,
            br#"{"id":"","#, // empty id is no id
            br#"{"id":false,"#,
            br#"{"id":null,"#,
            br#"{"op":"x"}"#,
            br#"{"id"::"x","#,
        ] {
            assert_eq!(peek_id(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<String>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
            Just(Value::Null),
            (-1e9f64..1e9).prop_map(Value::from),
        ]
    }

    fn id() -> impl Strategy<Value = Value> {
        prop_oneof![
            ".{1,40}".prop_map(Value::from),
            any::<i64>()
                .prop_filter("0 is no id", |n| *n != 0)
                .prop_map(Value::from),
            any::<u64>()
                .prop_filter("0 is no id", |n| *n != 0)
                .prop_map(Value::from),
        ]
    }

    proptest! {
        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = peek_id(&bytes);
        }

        #[test]
        fn never_reads_past_the_slice(
            text in r#"[{}":,\\ a-z0-9\-.]{0,80}"#,
            cut in 0usize..80,
        ) {
            // Whatever the scanner answers for a prefix must not depend on
            // bytes after it: it equals the answer for the prefix copied out.
            let bytes = text.as_bytes();
            let cut = cut.min(bytes.len());
            let owned = bytes[..cut].to_vec();
            prop_assert_eq!(peek_id(&bytes[..cut]), peek_id(&owned));
        }

        #[test]
        fn finds_the_id_of_any_request_prefix(
            before in prop::collection::vec(("[a-z]{1,8}", scalar()), 0..4),
            id in id(),
            after in prop::collection::vec(("[a-z]{1,8}", any::<String>()), 0..3),
            extra in 0usize..200,
        ) {
            let mut text = String::from("{");
            for (k, v) in &before {
                if k == "id" {
                    continue;
                }
                text.push_str(&format!("{}:{},", json!(k), v));
            }
            text.push_str(&format!("\"id\":{}", id));
            let need = text.len() + 1;
            text.push_str(",\"payload\":{");
            for (k, v) in &after {
                text.push_str(&format!("{}:{},", json!(k), json!(v)));
            }
            text.push_str("\"x\":1}}");
            let want = payload::id_string(&id);
            let cut = (need + extra).min(text.len());
            prop_assert_eq!(peek_id(&text.as_bytes()[..cut]), want);
        }
    }
}
