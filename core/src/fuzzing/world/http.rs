//! How the host answers the engine's provider calls: success bodies by
//! endpoint, OAuth errors, odd statuses, transport errors, and bodies with
//! odd numbers where lifetimes and intervals belong.

use serde_json::{Value, json};

use crate::engine::effect::EffectResult;
use crate::oauth::http::{HttpOutcome, TransportError};

use super::super::fixtures::CORP_ISSUER;
use super::super::ops::HttpAnswer;
use super::World;

impl World {
    pub(super) fn respond(&mut self, index: u8, answer: HttpAnswer) {
        if self.h.http_pending.is_empty() {
            return;
        }
        let i = usize::from(index) % self.h.http_pending.len();
        let Some((id, request)) = self.h.http_pending.remove(i) else {
            return;
        };
        let n = self.next();
        let outcome = match answer {
            HttpAnswer::Success(ttl) => HttpOutcome::Response {
                status: 200,
                body: success_body(&request.url, n, ttl).to_string().into_bytes(),
            },
            HttpAnswer::NoRefresh => response(
                200,
                &json!({"access_token": format!("AT-p{n}"), "expires_in": 3600}),
            ),
            HttpAnswer::OauthError(e) => {
                let errors = [
                    "authorization_pending",
                    "slow_down",
                    "access_denied",
                    "expired_token",
                    "invalid_grant",
                    "invalid_client",
                    "Not A Safe Code!",
                    "pending",
                ];
                response(
                    400,
                    &json!({"error": errors[usize::from(e) % errors.len()], "error_description": "SECRET-upstream-detail"}),
                )
            }
            HttpAnswer::Status(s) => {
                let statuses = [401, 403, 404, 429, 500, 503];
                response(statuses[usize::from(s) % statuses.len()], &json!({}))
            }
            HttpAnswer::Transport(e) => HttpOutcome::Failed(
                [
                    TransportError::Timeout,
                    TransportError::Connect,
                    TransportError::Tls,
                    TransportError::Other,
                ][usize::from(e) % 4],
            ),
            HttpAnswer::NotJson => HttpOutcome::Response {
                status: 200,
                body: b"<html>SECRET-not-json</html>".to_vec(),
            },
            HttpAnswer::NotObject => response(200, &json!(["SECRET-array"])),
            HttpAnswer::Odd { field, value } => {
                let mut body = success_body(&request.url, n, 2);
                let odd = odd_number(value);
                if field % 3 != 1 {
                    body["expires_in"] = odd.clone();
                }
                if field % 3 != 0 {
                    body["interval"] = odd;
                }
                response(200, &body)
            }
        };
        self.h
            .engine
            .handle_effect_result(id, EffectResult::Http(outcome), self.h.now);
        self.h.drain();
    }
}

/// Numbers (and non-numbers) a provider or another process might write
/// where a lifetime, interval or expiry belongs.
pub(super) fn odd_number(i: u8) -> Value {
    let values = [
        json!(-1),
        json!(0),
        json!(1e30),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(3.7),
        json!(" 42 "),
        json!("1e400"),
        Value::Null,
        json!("x"),
        json!(1e-300),
        json!(f64::MAX),
        json!(-1e308),
        json!(18_446_744_073_709_551.0),
        json!(true),
        json!([1]),
        json!("-5"),
        json!(4_000_000_000_u64),
        json!(0.0005),
    ];
    values[usize::from(i) % values.len()].clone()
}

pub(super) fn response(status: u16, body: &Value) -> HttpOutcome {
    HttpOutcome::Response {
        status,
        body: body.to_string().into_bytes(),
    }
}

/// What a provider endpoint returns on success, by URL.
fn success_body(url: &str, n: u64, ttl: u8) -> Value {
    if url.ends_with("/.well-known/openid-configuration") {
        return json!({
            "issuer": CORP_ISSUER,
            "token_endpoint": format!("{CORP_ISSUER}/token"),
            "device_authorization_endpoint": format!("{CORP_ISSUER}/device"),
            "authorization_endpoint": format!("{CORP_ISSUER}/authorize"),
        });
    }
    if url.ends_with("/device/code") || url.ends_with("/device") {
        return json!({
            "device_code": format!("SECRET-DEV-{n}"),
            "user_code": format!("UC-{n}"),
            "verification_uri": "https://login.example/activate",
            "expires_in": 900,
            "interval": 1,
        });
    }
    if url.ends_with("deviceauth/usercode") {
        return json!({"device_auth_id": format!("SECRET-DEV-{n}"), "user_code": format!("UC-{n}"), "interval": "1"});
    }
    if url.ends_with("deviceauth/token") {
        return json!({
            "authorization_code": format!("AC-{n}"),
            "code_verifier": format!("SECRET-VER-{n}"),
            "code_challenge": "x",
        });
    }
    let expires_in = match ttl % 4 {
        0 => json!(60),
        1 => json!(400),
        2 => json!(3600),
        _ => json!("7200"),
    };
    let mut body = json!({
        "access_token": format!("AT-p{n}"),
        "refresh_token": format!("SECRET-RT-p{n}"),
        "expires_in": expires_in,
        "token_type": "bearer",
    });
    // Codex reads the account id from the id_token's claims.
    let claims = r#"{"https://api.openai.com/auth":{"chatgpt_account_id":"acct-1"}}"#;
    let id_token = match (ttl / 4) % 5 {
        0 => None,
        1 => Some(format!("h.{}.s", base64url(claims.as_bytes()))),
        2 => Some("a.b.c".to_owned()),
        3 => Some(format!("h.{}.s", base64url(b"[1,2]"))),
        _ => Some("..".to_owned()),
    };
    if let Some(t) = id_token {
        body["id_token"] = json!(t);
    }
    body
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
