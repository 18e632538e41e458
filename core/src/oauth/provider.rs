//! Provider behaviour as data (SPEC §2.1, §4).
//!
//! A [`ProviderSpec`] says everything the engine needs to run a login or a
//! refresh for one provider: the flow type, endpoints (or an OIDC issuer to
//! discover them from), client id and optional secret, scopes, redirect URI,
//! body encoding, extra authorization parameters and a [`Dialect`] for the
//! few provider quirks. Built-in providers and configured ones go through
//! the same code; built-ins can be overridden field by field.

use std::collections::BTreeMap;

use strum::{Display, EnumIter, EnumString, IntoStaticStr};
use url::Url;

use crate::engine::secret::Secret;

/// How a login proceeds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Display,
    EnumString,
    IntoStaticStr,
    EnumIter,
)]
#[strum(serialize_all = "snake_case")]
pub enum FlowType {
    /// Authorization code with PKCE; the user pastes the code.
    PkceRedirect,
    /// RFC 8628 device authorization; the host polls.
    DeviceCode,
    /// Authorization code with PKCE and a loopback redirect (RFC 8252).
    BrowserRedirect,
}

/// Provider quirks that are not expressible as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Dialect {
    /// Plain OAuth 2.0 / RFC 8628.
    Standard,
    /// Anthropic: `code=true` on the auth URL, `CODE#STATE` paste, the
    /// `state` repeated in the JSON exchange body.
    Anthropic,
    /// Qwen: PKCE on the device authorization request and poll.
    Qwen,
    /// OpenAI Codex: `account_id` from the id_token claims.
    Codex,
    /// OpenAI Codex device dialect: `deviceauth/usercode` then
    /// `deviceauth/token` returning an authorization code to exchange.
    CodexDevice,
}

/// Encoding of token endpoint request bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Display, EnumString, IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum BodyEncoding {
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `application/json`.
    Json,
}

/// Everything the engine knows about one provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSpec {
    /// Provider name as used on the wire.
    pub name: String,
    /// Login flow.
    pub flow: FlowType,
    /// Quirks.
    pub dialect: Dialect,
    /// OIDC issuer whose discovery document gives missing endpoints.
    pub issuer: Option<String>,
    /// Authorization endpoint.
    pub authorize_url: Option<String>,
    /// Token endpoint (exchange and refresh).
    pub token_url: Option<String>,
    /// Device authorization endpoint.
    pub device_url: Option<String>,
    /// Codex device dialect: the endpoint polled for the authorization code.
    pub device_token_url: Option<String>,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret (confidential or installed-app clients).
    pub client_secret: Option<Secret>,
    /// Scopes, joined with spaces.
    pub scopes: Vec<String>,
    /// Redirect URI sent in the authorization and exchange requests.
    pub redirect_uri: Option<String>,
    /// Body encoding of the code exchange.
    pub exchange_encoding: BodyEncoding,
    /// Body encoding of device authorization and polling requests.
    pub device_encoding: BodyEncoding,
    /// Codex device dialect: the page where the user enters the code.
    pub verification_url: Option<String>,
    /// Extra authorization URL parameters, in order.
    pub extra_auth_params: Vec<(String, String)>,
    /// Device-code lifetime assumed when the provider gives none (seconds).
    pub default_device_lifetime_s: u64,
}

/// A provider specification that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

/// Whether `url` may be used as an endpoint: HTTPS, or HTTP to a loopback
/// host (`localhost`, 127.0.0.0/8, `::1`).
#[must_use]
pub fn endpoint_allowed(url: &str) -> bool {
    let Ok(u) = Url::parse(url) else { return false };
    match u.scheme() {
        "https" => u.host().is_some(),
        "http" => is_loopback(&u),
        _ => false,
    }
}

/// Whether the URL's host is a loopback host.
#[must_use]
pub fn is_loopback(u: &Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl ProviderSpec {
    /// A spec with only these fields set: no endpoints, issuer, secret,
    /// scopes, redirect or extra parameters, form-encoded bodies and a
    /// device-code lifetime of 900 s. Built-in and configured providers
    /// start from it and set the rest.
    #[must_use]
    pub fn new(name: &str, flow: FlowType, dialect: Dialect, client_id: &str) -> ProviderSpec {
        ProviderSpec {
            name: name.to_owned(),
            flow,
            dialect,
            issuer: None,
            authorize_url: None,
            token_url: None,
            device_url: None,
            device_token_url: None,
            client_id: client_id.to_owned(),
            client_secret: None,
            scopes: Vec::new(),
            redirect_uri: None,
            exchange_encoding: BodyEncoding::Form,
            device_encoding: BodyEncoding::Form,
            verification_url: None,
            extra_auth_params: Vec::new(),
            default_device_lifetime_s: 900,
        }
    }

    /// Checks that the spec can run its flow: required endpoints present
    /// (directly or through an issuer) and all of them HTTPS or loopback.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |what: &str| SpecError(format!("provider {}: {what}", self.name));
        if self.client_id.is_empty() {
            return Err(bad("client_id is required"));
        }
        for url in [
            &self.issuer,
            &self.authorize_url,
            &self.token_url,
            &self.device_url,
            &self.device_token_url,
            &self.verification_url,
        ]
        .into_iter()
        .flatten()
        {
            if !endpoint_allowed(url) {
                return Err(bad(&format!(
                    "endpoint {url} must be HTTPS (HTTP only for loopback hosts)"
                )));
            }
        }
        // Discovery gives endpoints, never the redirect URI: a redirect
        // flow needs one configured whatever the endpoints come from (an
        // IdP refuses an authorization request without it).
        if matches!(
            self.flow,
            FlowType::PkceRedirect | FlowType::BrowserRedirect
        ) && self.redirect_uri.is_none()
        {
            return Err(bad(&format!(
                "redirect_uri is required for the {} flow",
                self.flow
            )));
        }
        if self.issuer.is_some() {
            return Ok(());
        }
        if self.token_url.is_none() {
            return Err(bad("token_url (or issuer) is required"));
        }
        match (self.flow, self.dialect) {
            (FlowType::DeviceCode, Dialect::CodexDevice) if self.device_token_url.is_none() => Err(
                bad("device_token_url is required for the codex device dialect"),
            ),
            (FlowType::DeviceCode, _) if self.device_url.is_none() => {
                Err(bad("device_url (or issuer) is required"))
            }
            (FlowType::PkceRedirect | FlowType::BrowserRedirect, _)
                if self.authorize_url.is_none() =>
            {
                Err(bad("authorize_url (or issuer) is required"))
            }
            _ => Ok(()),
        }
    }

    /// The space-joined scope string.
    #[must_use]
    pub fn scope(&self) -> String {
        self.scopes.join(" ")
    }

    /// For browser_redirect: the loopback port and path of the redirect URI.
    #[must_use]
    pub fn loopback_redirect(&self) -> Option<(u16, String)> {
        let u = Url::parse(self.redirect_uri.as_deref()?).ok()?;
        if u.scheme() != "http" || !is_loopback(&u) {
            return None;
        }
        Some((u.port_or_known_default()?, u.path().to_owned()))
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Anthropic (Claude): PKCE with a pasted `CODE#STATE`, JSON exchange.
#[must_use]
pub fn anthropic() -> ProviderSpec {
    let mut s = ProviderSpec::new(
        "anthropic",
        FlowType::PkceRedirect,
        Dialect::Anthropic,
        "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
    );
    s.authorize_url = Some("https://claude.ai/oauth/authorize".into());
    s.token_url = Some("https://console.anthropic.com/v1/oauth/token".into());
    s.scopes = strings(&["org:create_api_key", "user:profile", "user:inference"]);
    s.redirect_uri = Some("https://console.anthropic.com/oauth/code/callback".into());
    s.exchange_encoding = BodyEncoding::Json;
    s.extra_auth_params = vec![("code".into(), "true".into())];
    s
}

/// Google Gemini (Code Assist): PKCE to Google's code page. Google's
/// installed-app client secret is not shipped here; configure it from a
/// file or the environment.
#[must_use]
pub fn gemini() -> ProviderSpec {
    let mut s = ProviderSpec::new(
        "gemini",
        FlowType::PkceRedirect,
        Dialect::Standard,
        "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com",
    );
    s.authorize_url = Some("https://accounts.google.com/o/oauth2/v2/auth".into());
    s.token_url = Some("https://oauth2.googleapis.com/token".into());
    s.scopes = strings(&[
        "https://www.googleapis.com/auth/cloud-platform",
        "https://www.googleapis.com/auth/userinfo.email",
        "https://www.googleapis.com/auth/userinfo.profile",
    ]);
    s.redirect_uri = Some("https://codeassist.google.com/authcode".into());
    s.extra_auth_params = vec![("access_type".into(), "offline".into())];
    s
}

/// Qwen: RFC 8628 device flow with PKCE.
#[must_use]
pub fn qwen() -> ProviderSpec {
    let mut s = ProviderSpec::new(
        "qwen",
        FlowType::DeviceCode,
        Dialect::Qwen,
        "f0304373b74a44d2b584a3fb70ca9e56",
    );
    s.device_url = Some("https://chat.qwen.ai/api/v1/oauth2/device/code".into());
    s.token_url = Some("https://chat.qwen.ai/api/v1/oauth2/token".into());
    s.scopes = strings(&["openid", "profile", "email", "model.completion"]);
    s
}

/// OpenAI Codex: browser redirect to `http://localhost:1455/auth/callback`.
#[must_use]
pub fn codex() -> ProviderSpec {
    let mut s = ProviderSpec::new(
        "codex",
        FlowType::BrowserRedirect,
        Dialect::Codex,
        "app_EMoamEEZ73f0CkXaXp7hrann",
    );
    s.authorize_url = Some("https://auth.openai.com/oauth/authorize".into());
    s.token_url = Some("https://auth.openai.com/oauth/token".into());
    s.device_url = Some("https://auth.openai.com/api/accounts/deviceauth/usercode".into());
    s.device_token_url = Some("https://auth.openai.com/api/accounts/deviceauth/token".into());
    s.scopes = strings(&["openid", "profile", "email", "offline_access"]);
    s.redirect_uri = Some("http://localhost:1455/auth/callback".into());
    s.extra_auth_params = vec![
        ("id_token_add_organizations".into(), "true".into()),
        ("codex_cli_simplified_flow".into(), "true".into()),
        ("originator".into(), "codex_cli_rs".into()),
    ];
    s
}

/// Switches Codex to OpenAI's device dialect (`flow = "device_code"`).
#[must_use]
pub fn codex_device(mut s: ProviderSpec) -> ProviderSpec {
    s.flow = FlowType::DeviceCode;
    s.dialect = Dialect::CodexDevice;
    s.redirect_uri = Some("https://auth.openai.com/deviceauth/callback".into());
    s.exchange_encoding = BodyEncoding::Form;
    s.device_encoding = BodyEncoding::Json;
    s.verification_url = Some("https://auth.openai.com/codex/device".into());
    s
}

/// The built-in providers by name.
#[must_use]
pub fn builtins() -> BTreeMap<String, ProviderSpec> {
    [anthropic(), gemini(), qwen(), codex()]
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_validate() {
        for (name, s) in builtins() {
            assert_eq!(s.validate(), Ok(()), "{name}");
        }
        assert_eq!(codex_device(codex()).validate(), Ok(()));
        assert_eq!(
            codex().loopback_redirect(),
            Some((1455, "/auth/callback".into()))
        );
        assert_eq!(anthropic().loopback_redirect(), None);
    }

    #[test]
    fn endpoints_must_be_https_or_loopback() {
        assert!(endpoint_allowed("https://auth.example.com/token"));
        assert!(endpoint_allowed("http://127.0.0.1:8080/token"));
        assert!(endpoint_allowed("http://[::1]:8080/token"));
        assert!(endpoint_allowed("http://localhost/token"));
        assert!(!endpoint_allowed("http://auth.example.com/token"));
        assert!(!endpoint_allowed("ftp://127.0.0.1/x"));
        assert!(!endpoint_allowed("not a url"));
        let mut s = qwen();
        s.token_url = Some("http://evil.example/token".into());
        assert!(s.validate().unwrap_err().0.contains("must be HTTPS"));
    }

    #[test]
    fn flow_type_wire_names() {
        assert_eq!(FlowType::PkceRedirect.to_string(), "pkce_redirect");
        assert_eq!(FlowType::DeviceCode.to_string(), "device_code");
        assert_eq!(FlowType::BrowserRedirect.to_string(), "browser_redirect");
    }
}
