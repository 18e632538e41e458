//! `[providers.<name>]` tables: overrides of built-in providers and new
//! providers, with their client secrets from files or the environment.

use std::fmt;
use std::path::Path;
use std::path::PathBuf;

use credproxy_core::Secret;
use credproxy_core::provider::{self, BodyEncoding, Dialect, FlowType, ProviderSpec};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::Env;

/// Accepted values of an enum-valued key, for error messages.
trait Choices: std::str::FromStr {
    const CHOICES: &'static str;
}

impl Choices for FlowType {
    const CHOICES: &'static str = "pkce_redirect, device_code, browser_redirect";
}

impl Choices for Dialect {
    const CHOICES: &'static str = "standard, anthropic, qwen, codex, codex_device";
}

impl Choices for BodyEncoding {
    const CHOICES: &'static str = "form, json";
}

fn opt_choice<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Choices,
{
    let s = String::deserialize(d)?;
    s.parse::<T>().map(Some).map_err(|_| {
        de::Error::custom(format!(
            "unknown value \"{s}\", expected one of: {}",
            T::CHOICES
        ))
    })
}

/// `extra_auth_params`: a table (`{ prompt = "consent" }`) or an array of
/// `[name, value]` pairs; the document's order is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraParams(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for ExtraParams {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ExtraParams, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ExtraParams;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of strings or an array of [name, value] pairs")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ExtraParams, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    out.push((k, v));
                }
                Ok(ExtraParams(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ExtraParams, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = seq.next_element::<(String, String)>()? {
                    out.push((k, v));
                }
                Ok(ExtraParams(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A `[providers.<name>]` table: overrides of a built-in provider, or a new
/// provider (then `flow` and `client_id` are required).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    /// Login flow. For `codex`, `device_code` selects OpenAI's device dialect.
    #[serde(default, deserialize_with = "opt_choice")]
    pub flow: Option<FlowType>,
    /// Provider quirks.
    #[serde(default, deserialize_with = "opt_choice")]
    pub dialect: Option<Dialect>,
    /// OIDC issuer whose discovery document gives the missing endpoints.
    pub issuer: Option<String>,
    /// Authorization endpoint.
    pub authorize_url: Option<String>,
    /// Token endpoint.
    pub token_url: Option<String>,
    /// Device authorization endpoint.
    pub device_url: Option<String>,
    /// Codex device dialect: the endpoint polled for the authorization code.
    pub device_token_url: Option<String>,
    /// Codex device dialect: the page where the user enters the code.
    pub verification_url: Option<String>,
    /// OAuth client id.
    pub client_id: Option<String>,
    /// A file holding the client secret (trimmed).
    pub client_secret_file: Option<PathBuf>,
    /// An environment variable holding the client secret.
    pub client_secret_env: Option<String>,
    /// Refused with an explanation: secrets do not belong in the file.
    #[serde(default)]
    pub client_secret: Option<de::IgnoredAny>,
    /// Scopes.
    pub scopes: Option<Vec<String>>,
    /// Redirect URI.
    pub redirect_uri: Option<String>,
    /// Body encoding of the code exchange.
    #[serde(default, deserialize_with = "opt_choice")]
    pub exchange_encoding: Option<BodyEncoding>,
    /// Body encoding of device requests.
    #[serde(default, deserialize_with = "opt_choice")]
    pub device_encoding: Option<BodyEncoding>,
    /// Extra authorization URL parameters.
    pub extra_auth_params: Option<ExtraParams>,
    /// Device-code lifetime assumed when the provider gives none (seconds).
    pub default_device_lifetime_s: Option<u64>,
}

fn valid_provider_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
}

fn set_url(slot: &mut Option<String>, value: Option<String>) {
    if let Some(v) = value {
        *slot = (!v.is_empty()).then_some(v);
    }
}

impl ProviderFile {
    /// The spec for `name`: the built-in with these overrides, or a new one.
    /// `base` resolves a relative `client_secret_file`.
    pub(super) fn build(
        self,
        name: &str,
        builtin: Option<ProviderSpec>,
        base: &Path,
        env: Env<'_>,
    ) -> Result<ProviderSpec, String> {
        if !valid_provider_name(name) {
            return Err("provider names are 1 to 64 characters of A-Z a-z 0-9 . _ @ -".into());
        }
        if self.client_secret.is_some() {
            return Err(
                "client_secret must not be written in the configuration file; \
                 use client_secret_file = \"/path\" or client_secret_env = \"VAR\""
                    .into(),
            );
        }
        let mut spec = match (builtin, self.flow) {
            (Some(s), Some(FlowType::DeviceCode)) if s.dialect == Dialect::Codex => {
                provider::codex_device(s)
            }
            (Some(mut s), Some(flow)) => {
                s.flow = flow;
                s
            }
            (Some(s), None) => s,
            (None, Some(flow)) => ProviderSpec::new(name, flow, Dialect::Standard, ""),
            (None, None) => {
                return Err(format!(
                    "flow is required for a provider that is not built in \
                     (built-in: {}); one of: {}",
                    provider::builtins()
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                    FlowType::CHOICES
                ));
            }
        };
        if let Some(d) = self.dialect {
            spec.dialect = d;
        }
        set_url(&mut spec.issuer, self.issuer);
        set_url(&mut spec.authorize_url, self.authorize_url);
        set_url(&mut spec.token_url, self.token_url);
        set_url(&mut spec.device_url, self.device_url);
        set_url(&mut spec.device_token_url, self.device_token_url);
        set_url(&mut spec.verification_url, self.verification_url);
        set_url(&mut spec.redirect_uri, self.redirect_uri);
        if let Some(id) = self.client_id {
            spec.client_id = id;
        }
        if let Some(s) = self.scopes {
            spec.scopes = s;
        }
        if let Some(e) = self.exchange_encoding {
            spec.exchange_encoding = e;
        }
        if let Some(e) = self.device_encoding {
            spec.device_encoding = e;
        }
        if let Some(p) = self.extra_auth_params {
            spec.extra_auth_params = p.0;
        }
        if let Some(s) = self.default_device_lifetime_s {
            spec.default_device_lifetime_s = s;
        }
        spec.client_secret = match (self.client_secret_file, self.client_secret_env) {
            (Some(_), Some(_)) => {
                return Err("give either client_secret_file or client_secret_env, not both".into());
            }
            (Some(file), None) => Some(secret_from_file(&base.join(file))?),
            (None, Some(var)) => Some(secret_from_env(&var, env)?),
            (None, None) => spec.client_secret,
        };
        Ok(spec)
    }
}

fn secret_from_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read client_secret_file {}: {e}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("client_secret_file {} is empty", path.display()));
    }
    Ok(Secret::new(value))
}

fn secret_from_env(var: &str, env: Env<'_>) -> Result<Secret, String> {
    let value = env(var)
        .ok_or_else(|| format!("client_secret_env names {var}, which is not set"))?
        .into_string()
        .map_err(|_| format!("the value of {var} (client_secret_env) is not UTF-8"))?;
    let value = value.trim();
    if value.is_empty() {
        return Err(format!("{var} (client_secret_env) is empty"));
    }
    Ok(Secret::new(value))
}
