//! OAuth tokens as stored and served, with the sanitize and merge rules.
//!
//! A token is a JSON object (`access_token`, `expiry` in unix seconds,
//! `token_type`, optional `refresh_token`, `scope`, `resource_url` and any
//! provider extras such as Codex `account_id`). Extras pass through untouched,
//! so the type wraps the object instead of fixing a struct. `Debug` is
//! redacted because every token carries at least one secret.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The field that must never leave the host.
pub const REFRESH_TOKEN: &str = "refresh_token";

/// A stored OAuth token: a JSON object whose `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(Map<String, Value>);

impl Token {
    /// Wraps a JSON object as a token.
    #[must_use]
    pub fn from_map(map: Map<String, Value>) -> Token {
        Token(map)
    }

    /// The fields of the token.
    #[must_use]
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Consumes the token and returns its fields.
    #[must_use]
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }

    /// The refresh token, if one is stored and non-empty.
    #[must_use]
    pub fn refresh_token(&self) -> Option<&str> {
        self.0
            .get(REFRESH_TOKEN)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// `expiry` in unix seconds, if it is a number.
    #[must_use]
    pub fn expiry_secs(&self) -> Option<f64> {
        self.0.get("expiry").and_then(Value::as_f64)
    }

    /// The token as it may leave the host: every field but `refresh_token`.
    #[must_use]
    pub fn sanitized(&self) -> Map<String, Value> {
        let mut map = self.0.clone();
        map.remove(REFRESH_TOKEN);
        map
    }

    /// The token as it may leave the host, consuming it (no copy).
    #[must_use]
    pub fn into_sanitized(mut self) -> Map<String, Value> {
        self.0.remove(REFRESH_TOKEN);
        self.0
    }

    /// This token with `refresh_token` removed (what `save_token` does to the
    /// incoming token before merging it).
    #[must_use]
    pub fn without_refresh_token(mut self) -> Token {
        self.0.remove(REFRESH_TOKEN);
        self
    }

    /// Merges `newer` over `self` (SPEC §5.2): a field present and non-null in
    /// `newer` wins, otherwise the stored value stays; `refresh_token` stays
    /// unless `newer` carries a non-empty one.
    #[must_use]
    pub fn merged_with(&self, newer: &Token) -> Token {
        let mut merged = self.0.clone();
        for (key, value) in &newer.0 {
            if value.is_null() {
                continue;
            }
            if key == REFRESH_TOKEN && value.as_str().is_none_or(str::is_empty) {
                continue;
            }
            merged.insert(key.clone(), value.clone());
        }
        Token(merged)
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
