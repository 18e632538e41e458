//! Reading what users paste and what providers answer during a login.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use url::Url;

use crate::oauth::http::lenient_number;
use crate::tokens::token::Token;

/// What the user pasted into `oauth_exchange`: `CODE`, `CODE#STATE`, or the
/// whole redirect URL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pasted {
    /// The authorization code.
    pub code: Option<String>,
    /// The `state`, when the paste carried one.
    pub state: Option<String>,
    /// RFC 9207 `iss`, when the redirect carried one.
    pub iss: Option<String>,
    /// An OAuth `error` from the redirect.
    pub error: Option<String>,
}

impl Pasted {
    /// Parses a pasted value.
    #[must_use]
    pub fn parse(raw: &str) -> Pasted {
        let raw = raw.trim();
        if raw.contains("://") {
            return Url::parse(raw)
                .map(|u| Pasted::from_query(&u))
                .unwrap_or_default();
        }
        match raw.split_once('#') {
            Some((code, state)) => Pasted {
                code: non_empty(code),
                state: non_empty(state),
                ..Pasted::default()
            },
            None => Pasted {
                code: non_empty(raw),
                ..Pasted::default()
            },
        }
    }

    /// The parameters of a redirect URL's query.
    #[must_use]
    pub fn from_query(u: &Url) -> Pasted {
        let mut p = Pasted::default();
        for (k, v) in u.query_pairs() {
            let v = non_empty(&v);
            match k.as_ref() {
                "code" => p.code = v,
                "state" => p.state = v,
                "iss" => p.iss = v,
                "error" => p.error = v,
                _ => {}
            }
        }
        p
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// A device authorization response (RFC 8628 §3.2, or the Codex dialect).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceGrant {
    /// The device code (Codex: `device_auth_id`).
    pub device_code: String,
    /// The code the user types.
    pub user_code: String,
    /// Where the user goes.
    pub verification_uri: String,
    /// The same with the code filled in.
    pub verification_uri_complete: Option<String>,
    /// Lifetime in seconds, when given.
    pub expires_in_s: Option<u64>,
    /// Polling interval in seconds, when given.
    pub interval_s: Option<u64>,
}

impl DeviceGrant {
    /// Reads an RFC 8628 response (Google spells the URI
    /// `verification_url`).
    #[must_use]
    pub fn standard(body: &Map<String, Value>) -> Option<DeviceGrant> {
        let s = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Some(DeviceGrant {
            device_code: s("device_code")?,
            user_code: s("user_code")?,
            verification_uri: s("verification_uri").or_else(|| s("verification_url"))?,
            verification_uri_complete: s("verification_uri_complete"),
            expires_in_s: lenient_number(body.get("expires_in")).map(|n| n.max(0.0) as u64),
            interval_s: lenient_number(body.get("interval")).map(|n| n.max(0.0) as u64),
        })
    }

    /// Reads the Codex `deviceauth/usercode` response.
    #[must_use]
    pub fn codex(body: &Map<String, Value>, verification_url: &str) -> Option<DeviceGrant> {
        let id = body.get("device_auth_id")?.as_str()?.to_owned();
        let user_code = body
            .get("user_code")
            .or_else(|| body.get("usercode"))?
            .as_str()?
            .to_owned();
        let complete =
            Url::parse_with_params(verification_url, [("user_code", user_code.as_str())])
                .ok()
                .map(String::from);
        Some(DeviceGrant {
            device_code: id,
            user_code,
            verification_uri: verification_url.to_owned(),
            verification_uri_complete: complete,
            expires_in_s: lenient_number(body.get("expires_in")).map(|n| n.max(0.0) as u64),
            interval_s: lenient_number(body.get("interval")).map(|n| n.max(0.0) as u64),
        })
    }
}

/// Adds Codex's `account_id`, read from the id_token's claims
/// (`https://api.openai.com/auth`.`chatgpt_account_id`, else its
/// `account_id`, else a root `account_id`), when the token lacks one.
#[must_use]
pub fn with_codex_account(token: Token) -> Token {
    if token.as_map().contains_key("account_id") {
        return token;
    }
    let Some(claims) = token
        .as_map()
        .get("id_token")
        .and_then(Value::as_str)
        .and_then(jwt_claims)
    else {
        return token;
    };
    let auth = claims.get("https://api.openai.com/auth");
    let account = auth
        .and_then(|a| a.get("chatgpt_account_id"))
        .or_else(|| auth.and_then(|a| a.get("account_id")))
        .or_else(|| claims.get("account_id"))
        .and_then(Value::as_str);
    let Some(account) = account else { return token };
    let mut map = token.into_map();
    map.insert("account_id".into(), Value::from(account));
    Token::from_map(map)
}

/// The (unverified) claims of a JWT: only used to label the token with its
/// account; nothing is trusted from it.
fn jwt_claims(jwt: &str) -> Option<Map<String, Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pasted_forms() {
        assert_eq!(Pasted::parse(" abc ").code.as_deref(), Some("abc"));
        let p = Pasted::parse("abc#st");
        assert_eq!(
            (p.code.as_deref(), p.state.as_deref()),
            (Some("abc"), Some("st"))
        );
        let p = Pasted::parse(
            "http://localhost:1455/auth/callback?code=c1&state=s1&iss=https%3A%2F%2Fauth.example",
        );
        assert_eq!(p.code.as_deref(), Some("c1"));
        assert_eq!(p.state.as_deref(), Some("s1"));
        assert_eq!(p.iss.as_deref(), Some("https://auth.example"));
        let p = Pasted::parse("https://x/cb?error=access_denied&state=s");
        assert_eq!(p.error.as_deref(), Some("access_denied"));
        assert_eq!(p.code, None);
        assert_eq!(Pasted::parse("#"), Pasted::default());
    }

    #[test]
    fn device_grants() {
        let g = DeviceGrant::standard(
            json!({"device_code":"d","user_code":"U","verification_uri":"https://v","expires_in":"600","interval":5})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!((g.expires_in_s, g.interval_s), (Some(600), Some(5)));
        assert!(DeviceGrant::standard(json!({"device_code":"d"}).as_object().unwrap()).is_none());
        let c = DeviceGrant::codex(
            json!({"device_auth_id":"id","user_code":"AB-CD","interval":"5"})
                .as_object()
                .unwrap(),
            "https://auth.openai.com/codex/device",
        )
        .unwrap();
        assert_eq!(
            c.verification_uri_complete.as_deref(),
            Some("https://auth.openai.com/codex/device?user_code=AB-CD")
        );
    }

    #[test]
    fn codex_account_from_id_token() {
        let claims = json!({"https://api.openai.com/auth":{"chatgpt_account_id":"acc-1"}});
        let jwt = format!("x.{}.y", URL_SAFE_NO_PAD.encode(claims.to_string()));
        let t = Token::from_map(
            json!({"access_token":"a","id_token":jwt})
                .as_object()
                .cloned()
                .unwrap(),
        );
        assert_eq!(with_codex_account(t).as_map()["account_id"], json!("acc-1"));
        let t = Token::from_map(
            json!({"access_token":"a","id_token":"garbage"})
                .as_object()
                .cloned()
                .unwrap(),
        );
        assert!(!with_codex_account(t).as_map().contains_key("account_id"));
    }
}
