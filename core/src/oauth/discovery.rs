//! OIDC discovery for configured providers (SPEC §4).
//!
//! A provider configured with an `issuer` gets its missing endpoints from
//! `<issuer>/.well-known/openid-configuration`, fetched once per provider
//! (single flight: every task that needs it waits for the same request).
//! The document's `issuer` must equal the configured one exactly, and every
//! endpoint it gives must be HTTPS (loopback excepted). Failures are not
//! cached: the next login tries again.

use rand_core::CryptoRng;
use serde_json::Value;

use crate::engine::effect::{Effect, EffectResult};
use crate::engine::engine::Engine;
use crate::oauth::endpoints::Endpoints;
use crate::oauth::http::{self, Verdict};
use crate::oauth::provider::endpoint_allowed;
use crate::operations::task::{TaskId, Work};
use crate::wire::error::ErrorCode;
use crate::wire::reply::Failure;

fn failed(why: &str) -> Failure {
    Failure::new(
        ErrorCode::FlowInitiationFailed,
        format!("OIDC discovery failed ({why})"),
    )
}

impl<R: CryptoRng> Engine<R> {
    /// Makes `task` wait for `provider`'s discovery, starting it if needed.
    pub(crate) fn discover(&mut self, provider: &str, task: TaskId) {
        if self.endpoints.wait_discovery(provider, task) {
            return;
        }
        let Some(issuer) = self
            .config
            .providers
            .get(provider)
            .and_then(|s| s.issuer.clone())
        else {
            return self.after_discovery(task, Err(failed("no issuer")));
        };
        self.endpoints.start_discovery(provider, task);
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let timeout = self.config.limits.http_timeout_ms;
        self.emit_effect(task, Effect::Http(http::get(&url, timeout)));
    }

    /// The discovery document arrived (or did not).
    pub(crate) fn discovery_result(&mut self, task: TaskId, result: &EffectResult) {
        let Some(provider) = self.endpoints.discovery_of(task) else {
            return;
        };
        let issuer = self
            .config
            .providers
            .get(&provider)
            .and_then(|s| s.issuer.clone());
        let outcome = match result {
            EffectResult::Http(o) => parse(http::classify(o), issuer.as_deref()),
            _ => Err(failed("no response")),
        };
        let found = outcome.as_ref().ok().cloned();
        for w in self.endpoints.end_discovery(&provider, found) {
            self.after_discovery(w, outcome.clone().map(|_| ()));
        }
    }

    /// Continues a task that waited for discovery.
    fn after_discovery(&mut self, task: TaskId, result: Result<(), Failure>) {
        match self.tasks.work(task) {
            Some(Work::Login(_)) => self.login_after_discovery(task, result),
            Some(Work::Refresh(_)) => self.refresh_after_discovery(task, result),
            _ => {}
        }
    }
}

fn parse(verdict: Verdict, issuer: Option<&str>) -> Result<Endpoints, Failure> {
    let body = match verdict {
        Verdict::Ok(body) => body,
        Verdict::Transient(word) => return Err(failed(&word)),
        Verdict::Rejected { status, .. } => return Err(failed(&format!("http {status}"))),
    };
    let found = body.get("issuer").and_then(Value::as_str);
    if found != issuer {
        // Both sides are shown: a trailing slash or a scheme difference is
        // the usual cause and is plain once seen. An issuer is an identity,
        // not a secret; the discovered one is bounded and sanitized.
        return Err(failed(&format!(
            "issuer mismatch: configured {}, discovered {}",
            issuer.map_or_else(|| "(none)".to_owned(), shown),
            found.map_or_else(|| "(none)".to_owned(), shown),
        )));
    }
    let endpoint = |name: &str| -> Result<Option<String>, Failure> {
        match body.get(name).and_then(Value::as_str) {
            None => Ok(None),
            Some(u) if endpoint_allowed(u) => Ok(Some(u.to_owned())),
            Some(_) => Err(failed("insecure endpoint")),
        }
    };
    Ok(Endpoints {
        authorize: endpoint("authorization_endpoint")?,
        token: endpoint("token_endpoint")?,
        device: endpoint("device_authorization_endpoint")?,
    })
}

/// Longest issuer shown in a message, in characters.
const SHOWN_MAX: usize = 120;

/// An issuer as shown in a message: printable ASCII only (anything else,
/// quotes and backslashes included, becomes `?`), at most [`SHOWN_MAX`]
/// characters, quoted.
fn shown(issuer: &str) -> String {
    let mut out: String = issuer
        .chars()
        .take(SHOWN_MAX)
        .map(|c| match c {
            '"' | '\\' => '?',
            ' '..='~' => c,
            _ => '?',
        })
        .collect();
    if issuer.chars().count() > SHOWN_MAX {
        out.push_str("...");
    }
    format!("\"{out}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> Verdict {
        Verdict::Ok(v.as_object().cloned().unwrap())
    }

    #[test]
    fn a_shown_issuer_is_cut_only_past_its_limit() {
        let exact = "a".repeat(SHOWN_MAX);
        assert_eq!(shown(&exact), format!("\"{exact}\""));
        let longer = "a".repeat(SHOWN_MAX + 1);
        assert_eq!(shown(&longer), format!("\"{exact}...\""));
        assert_eq!(shown("a\"b\\c\u{e9}"), "\"a?b?c?\"");
    }

    #[test]
    fn issuer_must_match_and_endpoints_be_https() {
        let doc = json!({"issuer":"https://id.example","token_endpoint":"https://id.example/t","authorization_endpoint":"https://id.example/a"});
        let e = parse(ok(doc.clone()), Some("https://id.example")).unwrap();
        assert_eq!(e.token.as_deref(), Some("https://id.example/t"));
        assert_eq!(e.device, None);
        assert!(
            parse(ok(doc), Some("https://id.example/"))
                .unwrap_err()
                .message
                .contains("issuer mismatch")
        );
        let slash = json!({"issuer":"https://id.example/"});
        assert_eq!(
            parse(ok(slash), Some("https://id.example"))
                .unwrap_err()
                .message,
            "OIDC discovery failed (issuer mismatch: configured \"https://id.example\", \
             discovered \"https://id.example/\")"
        );
        let hostile = json!({"issuer": format!("https://x\"\n\u{7f}é{}", "a".repeat(300))});
        let m = parse(ok(hostile), Some("https://id.example"))
            .unwrap_err()
            .message;
        assert!(m.contains("discovered \"https://x????aaa"), "{m}");
        assert!(m.ends_with("...\")"), "{m}");
        assert!(m.len() < 250, "{m}");
        let absent = json!({});
        assert!(
            parse(ok(absent), Some("https://id.example"))
                .unwrap_err()
                .message
                .ends_with("discovered (none))")
        );
        let insecure =
            json!({"issuer":"https://id.example","token_endpoint":"http://id.example/t"});
        assert!(
            parse(ok(insecure), Some("https://id.example"))
                .unwrap_err()
                .message
                .contains("insecure")
        );
        assert!(
            parse(Verdict::Transient("timeout".into()), Some("x"))
                .unwrap_err()
                .message
                .contains("timeout")
        );
    }
}
