//! `credproxy providers`: the configured providers, never secrets.

use std::process::ExitCode;

use credproxy_core::provider::{self, ProviderSpec};
use serde_json::{Value, json};

use crate::config::{self, Settings};

use super::{Failure, ProvidersArgs, emit, emit_line};

pub(super) fn provider_json(spec: &ProviderSpec, builtin: bool, configured: bool) -> Value {
    let mut v = json!({
        "name": spec.name,
        "flow": spec.flow.to_string(),
        "dialect": spec.dialect.to_string(),
        "builtin": builtin,
        "configured": configured,
        "client_id": spec.client_id,
        "client_secret": spec.client_secret.is_some(),
        "scopes": spec.scopes,
        "exchange_encoding": spec.exchange_encoding.to_string(),
        "device_encoding": spec.device_encoding.to_string(),
        "extra_auth_params": spec.extra_auth_params,
        "default_device_lifetime_s": spec.default_device_lifetime_s,
    });
    for (key, value) in endpoints(spec) {
        v[key] = Value::from(value);
    }
    v
}

pub(super) fn endpoints(spec: &ProviderSpec) -> Vec<(&'static str, &str)> {
    [
        ("issuer", &spec.issuer),
        ("authorize_url", &spec.authorize_url),
        ("token_url", &spec.token_url),
        ("device_url", &spec.device_url),
        ("device_token_url", &spec.device_token_url),
        ("verification_url", &spec.verification_url),
        ("redirect_uri", &spec.redirect_uri),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    .collect()
}

pub(super) fn cmd_providers(a: &ProvidersArgs) -> Result<ExitCode, Failure> {
    let s = Settings::load(a.config.config.as_deref())?;
    s.validate()?;
    let builtins = provider::builtins();
    let rows: Vec<(&ProviderSpec, bool, bool)> = s
        .config
        .providers
        .values()
        .map(|spec| {
            (
                spec,
                builtins.contains_key(&spec.name),
                s.configured_providers.contains(&spec.name),
            )
        })
        .collect();
    if a.json {
        let list: Vec<Value> = rows
            .iter()
            .map(|(spec, b, c)| provider_json(spec, *b, *c))
            .collect();
        emit_line(format_args!(
            "{}",
            json!({
                "config_file": s.source.as_ref().map(|p| p.display().to_string()),
                "providers": list,
            })
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    match &s.source {
        Some(p) => out.push_str(&format!("configuration file: {}\n", p.display())),
        None => out.push_str("configuration file: none (built-in providers only)\n"),
    }
    for (spec, builtin, configured) in rows {
        let origin = match (builtin, configured) {
            (true, false) => "built-in",
            (true, true) => "built-in, overridden in the configuration file",
            _ => "from the configuration file",
        };
        out.push_str(&format!("\n{}  {} ({})\n", spec.name, spec.flow, origin));
        out.push_str(&format!("  dialect: {}\n", spec.dialect));
        for (k, v) in endpoints(spec) {
            out.push_str(&format!("  {k}: {v}\n"));
        }
        out.push_str(&format!("  client_id: {}\n", spec.client_id));
        if !spec.scopes.is_empty() {
            out.push_str(&format!("  scopes: {}\n", spec.scope()));
        }
        out.push_str(&format!(
            "  encodings: exchange {}, device {}\n",
            spec.exchange_encoding, spec.device_encoding
        ));
        if !spec.extra_auth_params.is_empty() {
            let params: Vec<String> = spec
                .extra_auth_params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!("  extra_auth_params: {}\n", params.join(" ")));
        }
        if spec.client_secret.is_some() {
            out.push_str("  client secret: configured\n");
        } else if spec.name == "gemini" {
            out.push_str(&format!(
                "  client secret: not configured (Google requires one: set \
                 client_secret_env = \"{}\" in [providers.gemini])\n",
                config::GEMINI_SECRET_ENV
            ));
        }
    }
    emit(&out);
    Ok(ExitCode::SUCCESS)
}
