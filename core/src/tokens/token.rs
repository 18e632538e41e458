//! OAuth tokens as stored and served, with the sanitize and merge rules.
//!
//! A token is a JSON object (`access_token`, `expiry` in unix seconds,
//! `token_type`, optional `refresh_token`, `scope`, `resource_url` and any
//! provider extras such as Codex `account_id`). Extras pass through untouched,
//! so the type wraps the object instead of fixing a struct. `Debug` is
//! redacted because every token carries at least one secret.
//!
//! Serving a token is the hot path of the proxy: the host answers most
//! `get_token` reads from its cache by cloning the cached token, and the
//! engine then encodes it without `refresh_token`. So the object is shared
//! (`Arc`, copied on write by the few methods that change it), and the
//! sanitized JSON is built once per stored version and kept beside the
//! object: every later serve of the same version, through any clone, copies
//! those bytes into the reply instead of cloning, sanitizing and
//! re-serializing the map. The cached bytes are a pure function of the map,
//! so the output stays the same for the same inputs.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The field that must never leave the host.
pub const REFRESH_TOKEN: &str = "refresh_token";

/// A stored OAuth token: a JSON object whose `Debug` prints `[redacted]`.
///
/// Cloning is cheap (a reference count); serializing it (`Serialize`)
/// writes the whole object, `refresh_token` included, as the store needs.
/// What may leave the host is [`Token::sanitized_view`] or its cached
/// serialization [`Token::sanitized_json`].
#[derive(Clone, Default)]
pub struct Token(Arc<Inner>);

/// The shared part of a token.
#[derive(Default)]
struct Inner {
    map: Map<String, Value>,
    /// The sanitized JSON of `map`, built on the first serve. Never kept
    /// across a change of `map` (see [`Token::map_mut`]).
    sanitized_json: OnceLock<Box<str>>,
}

impl Clone for Inner {
    /// A private copy for a write: the cache is not copied, it would be
    /// stale after the write anyway.
    fn clone(&self) -> Inner {
        Inner {
            map: self.map.clone(),
            sanitized_json: OnceLock::new(),
        }
    }
}

impl Token {
    /// Wraps a JSON object as a token.
    #[must_use]
    pub fn from_map(map: Map<String, Value>) -> Token {
        Token(Arc::new(Inner {
            map,
            sanitized_json: OnceLock::new(),
        }))
    }

    /// The fields of the token.
    #[must_use]
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0.map
    }

    /// Consumes the token and returns its fields (copied only when another
    /// clone of the token is alive).
    #[must_use]
    pub fn into_map(self) -> Map<String, Value> {
        Arc::unwrap_or_clone(self.0).map
    }

    /// The fields, for a change: unshared first (copy on write), and the
    /// cached sanitized JSON dropped since it no longer matches.
    fn map_mut(&mut self) -> &mut Map<String, Value> {
        let inner = Arc::make_mut(&mut self.0);
        inner.sanitized_json.take();
        &mut inner.map
    }

    /// The refresh token, if one is stored and non-empty.
    #[must_use]
    pub fn refresh_token(&self) -> Option<&str> {
        self.0
            .map
            .get(REFRESH_TOKEN)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `expiry` in unix seconds, if it is a number.
    #[must_use]
    pub fn expiry_secs(&self) -> Option<f64> {
        self.0.map.get("expiry").and_then(Value::as_f64)
    }

    /// The token as it may leave the host: every field but `refresh_token`.
    #[must_use]
    pub fn sanitized(&self) -> Map<String, Value> {
        let mut map = self.0.map.clone();
        map.remove(REFRESH_TOKEN);
        map
    }

    /// The token as it may leave the host, consuming it (no copy when this
    /// is the only clone).
    #[must_use]
    pub fn into_sanitized(self) -> Map<String, Value> {
        let mut map = self.into_map();
        map.remove(REFRESH_TOKEN);
        map
    }

    /// Serializes as [`Token::sanitized`] would, straight from the stored
    /// map: every field but `refresh_token`, without building a copy.
    #[must_use]
    pub fn sanitized_view(&self) -> Sanitized<'_> {
        Sanitized(&self.0.map)
    }

    /// The compact JSON of [`Token::sanitized_view`], serialized once per
    /// token version and shared by every clone: what replies carry.
    #[must_use]
    pub fn sanitized_json(&self) -> &str {
        self.0.sanitized_json.get_or_init(|| {
            // A map with string keys and JSON values always serializes; the
            // empty object is only a formal fallback that leaks nothing.
            serde_json::to_string(&self.sanitized_view())
                .unwrap_or_else(|_| "{}".to_owned())
                .into_boxed_str()
        })
    }

    /// This token with `refresh_token` removed (what `save_token` does to the
    /// incoming token before merging it).
    #[must_use]
    pub fn without_refresh_token(mut self) -> Token {
        if self.0.map.contains_key(REFRESH_TOKEN) {
            self.map_mut().remove(REFRESH_TOKEN);
        }
        self
    }

    /// Merges `newer` over `self` (SPEC §5.2): a field present and non-null in
    /// `newer` wins, otherwise the stored value stays; `refresh_token` stays
    /// unless `newer` carries a non-empty one.
    #[must_use]
    pub fn merged_with(&self, newer: &Token) -> Token {
        let mut merged = self.clone();
        for (key, value) in &newer.0.map {
            if value.is_null() {
                continue;
            }
            if key == REFRESH_TOKEN && value.as_str().is_none_or(str::is_empty) {
                continue;
            }
            merged.map_mut().insert(key.clone(), value.clone());
        }
        merged
    }
}

/// A token's fields without `refresh_token`, serialized straight from the
/// stored map (see [`Token::sanitized_view`]).
#[derive(Clone, Copy)]
pub struct Sanitized<'a>(&'a Map<String, Value>);

impl fmt::Debug for Sanitized<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sanitized([redacted])")
    }
}

impl Serialize for Sanitized<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let shown = self.0.iter().filter(|(k, _)| k.as_str() != REFRESH_TOKEN);
        let mut map = serializer.serialize_map(Some(shown.clone().count()))?;
        for (key, value) in shown {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.map == other.0.map
    }
}

impl Serialize for Token {
    /// The whole object, as stored.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.map.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Token, D::Error> {
        Map::deserialize(deserializer).map(Token::from_map)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(v: Value) -> Token {
        match v {
            Value::Object(m) => Token::from_map(m),
            _ => unreachable!("test tokens are objects"),
        }
    }

    #[test]
    fn sanitize_removes_only_refresh_token() {
        let t = token(json!({"access_token":"a","refresh_token":"r","id_token":"j","expiry":1}));
        let s = t.sanitized();
        assert!(!s.contains_key("refresh_token"));
        assert_eq!(s.get("id_token"), Some(&json!("j")));
        assert_eq!(s.len(), 3);
        assert_eq!(t.clone().into_sanitized(), s);
        assert_eq!(t.refresh_token(), Some("r"), "the original keeps it");
    }

    #[test]
    fn sanitized_json_is_the_sanitized_map_without_the_refresh_token() {
        let t = token(json!({
            "access_token":"a\"\\\u{1}é","refresh_token":"SECRET-r","expiry":1.5,
            "scope":"s","nested":{"refresh_token":"kept: not the top-level field"},
            "z":[1,null,true]
        }));
        let json = t.sanitized_json();
        assert!(!json.contains("SECRET-r"), "{json}");
        assert!(!json.contains("\"refresh_token\":\"SECRET"), "{json}");
        let back: Map<String, Value> = serde_json::from_str(json).unwrap();
        assert_eq!(back, t.sanitized());
        // Byte for byte what serializing the sanitized copy gives.
        assert_eq!(json, serde_json::to_string(&t.sanitized()).unwrap());
        // No refresh token at all, or only one: `{}`.
        assert_eq!(
            serde_json::to_value(t.sanitized_view()).unwrap(),
            Value::Object(t.sanitized())
        );
        assert_eq!(token(json!({})).sanitized_json(), "{}");
        assert_eq!(
            token(json!({"refresh_token":"SECRET"})).sanitized_json(),
            "{}"
        );
    }

    #[test]
    fn clones_share_the_serialized_json_and_writes_do_not() {
        let t = token(json!({"access_token":"a","refresh_token":"r"}));
        let c = t.clone();
        assert!(std::ptr::eq(t.sanitized_json(), c.sanitized_json()));
        let merged = t.merged_with(&token(json!({"access_token":"b"})));
        assert_eq!(merged.sanitized_json(), r#"{"access_token":"b"}"#);
        assert_eq!(t.sanitized_json(), r#"{"access_token":"a"}"#);
        let bare = c.without_refresh_token();
        assert_eq!(bare.refresh_token(), None);
        assert_eq!(t.refresh_token(), Some("r"), "copy on write");
    }

    #[test]
    fn serializes_and_deserializes_the_whole_object() {
        let v = json!({"access_token":"a","refresh_token":"r","expiry":1});
        let t = token(v.clone());
        assert_eq!(serde_json::to_value(&t).unwrap(), v);
        let back: Token = serde_json::from_value(v).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn merge_keeps_stored_on_absent_null_and_empty_refresh() {
        let stored =
            token(json!({"access_token":"old","refresh_token":"r1","scope":"s","account_id":"x"}));
        let newer = token(json!({"access_token":"new","refresh_token":"","scope":null}));
        let m = stored.merged_with(&newer);
        assert_eq!(m.as_map().get("access_token"), Some(&json!("new")));
        assert_eq!(m.refresh_token(), Some("r1"));
        assert_eq!(m.as_map().get("scope"), Some(&json!("s")));
        assert_eq!(m.as_map().get("account_id"), Some(&json!("x")));
        assert_eq!(stored.as_map().get("access_token"), Some(&json!("old")));
    }

    #[test]
    fn merge_takes_new_refresh_token() {
        let stored = token(json!({"access_token":"old","refresh_token":"r1"}));
        let newer = token(json!({"access_token":"new","refresh_token":"r2"}));
        assert_eq!(stored.merged_with(&newer).refresh_token(), Some("r2"));
    }

    #[test]
    fn debug_is_redacted() {
        let t = token(json!({"access_token":"sekrit","refresh_token":"sekrit2"}));
        let d = format!("{t:?}");
        assert!(!d.contains("sekrit"));
    }
}
