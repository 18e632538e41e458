//! Decrypted llxprt plaintext → what credproxy stores.
//!
//! A token is llxprt's `OAuthTokenSchema.passthrough()` JSON: `access_token`,
//! optional `refresh_token`, `expiry` (Unix seconds), `scope` (string, null
//! or absent), `token_type` (`Bearer`/`bearer`), optional `resource_url`,
//! and extras such as codex's `account_id` and `id_token`. credproxy's
//! [`Token`] is the same JSON object with the same field names and keeps
//! unknown fields, so the object is taken as it is, after the check
//! `save_token` applies to every token ([`credproxy_core::payload::token`]).
//! An API key is the raw string, stored trimmed by llxprt.

use credproxy_core::{Secret, Token};
use serde_json::Value;
use zeroize::Zeroizing;

/// Why a decrypted entry cannot be stored. Never holds its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The plaintext is not UTF-8.
    #[error("the decrypted content is not UTF-8")]
    NotUtf8,
    /// The token plaintext is not a JSON object.
    #[error("the decrypted token is not a JSON object")]
    NotJsonObject,
    /// A JSON object, but not a token credproxy accepts.
    #[error(
        "the decrypted token lacks a string access_token, a non-negative numeric expiry or \
         token_type bearer"
    )]
    NotAToken,
    /// An empty API key.
    #[error("the decrypted API key is empty")]
    EmptyKey,
}

/// The token in `plaintext`.
pub fn token(plaintext: &[u8]) -> Result<Token, ConvertError> {
    // serde_json's errors may quote the input: map them to a fixed reason.
    let value: Value = serde_json::from_slice(plaintext).map_err(|_| {
        if std::str::from_utf8(plaintext).is_err() {
            ConvertError::NotUtf8
        } else {
            ConvertError::NotJsonObject
        }
    })?;
    if !value.is_object() {
        return Err(ConvertError::NotJsonObject);
    }
    credproxy_core::payload::token(&value).map_err(|_| ConvertError::NotAToken)
}

/// The API key in `plaintext`.
pub fn api_key(plaintext: &[u8]) -> Result<Secret, ConvertError> {
    let text = Zeroizing::new(
        std::str::from_utf8(plaintext)
            .map_err(|_| ConvertError::NotUtf8)?
            .to_owned(),
    );
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(ConvertError::EmptyKey);
    }
    Ok(Secret::new(trimmed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_fields_and_extras_are_kept() {
        let text = br#"{"access_token":"A","refresh_token":"R","expiry":1798765200,"token_type":"bearer","account_id":"X","id_token":"J"}"#;
        let t = token(text).unwrap();
        let want: Value = serde_json::from_slice(text).unwrap();
        assert_eq!(Value::Object(t.as_map().clone()), want);
        assert_eq!(t.refresh_token(), Some("R"));
        assert_eq!(t.expiry_secs(), Some(1_798_765_200.0));
    }

    #[test]
    fn null_scope_and_missing_refresh_token_are_fine() {
        let t = token(br#"{"access_token":"A","expiry":1,"scope":null,"token_type":"Bearer"}"#)
            .unwrap();
        assert_eq!(t.refresh_token(), None);
        assert_eq!(t.as_map().get("scope"), Some(&Value::Null));
    }

    #[test]
    fn bad_tokens_are_refused_without_content() {
        assert_eq!(
            token(b"SECRET-not-json").unwrap_err(),
            ConvertError::NotJsonObject
        );
        assert_eq!(
            token(b"[\"SECRET\"]").unwrap_err(),
            ConvertError::NotJsonObject
        );
        assert_eq!(token(&[0xff, 0xfe]).unwrap_err(), ConvertError::NotUtf8);
        for bad in [
            json!({"access_token":"SECRET","expiry":1,"token_type":"mac"}),
            json!({"access_token":"SECRET","token_type":"Bearer"}),
            json!({"expiry":1,"token_type":"Bearer"}),
        ] {
            let e = token(bad.to_string().as_bytes()).unwrap_err();
            assert_eq!(e, ConvertError::NotAToken);
            assert!(!e.to_string().contains("SECRET"));
        }
    }

    #[test]
    fn api_keys_are_trimmed_raw_strings() {
        assert_eq!(api_key(b"sk-abc").unwrap().expose(), "sk-abc");
        assert_eq!(api_key(b" sk-abc\r\n").unwrap().expose(), "sk-abc");
        assert_eq!(api_key(b" \n").unwrap_err(), ConvertError::EmptyKey);
        assert_eq!(api_key(&[0xff]).unwrap_err(), ConvertError::NotUtf8);
    }
}
