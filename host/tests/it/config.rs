//! The configuration file (SPEC §4, §7, §8): built-in providers overridden
//! field by field, custom providers, Codex's device dialect, unknown keys,
//! endpoint checks, client secrets from a file or the environment, and the
//! precedence defaults < environment < file < flags. Then the binary:
//! `providers --json`, the default location and errors with the file path.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use clap::Parser;
use credproxy::config::{LimitsArgs, PolicyArgs, SESSION_TIMEOUT_ENV, Settings};
use credproxy_core::provider::{self, BodyEncoding, Dialect, FlowType};
use serde_json::Value;

use crate::support::Scratch;

/// A config file in a private directory.
struct Cfg {
    dir: tempfile::TempDir,
}

impl Cfg {
    fn new() -> Cfg {
        Cfg {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn write(&self, text: &str) -> PathBuf {
        fs::write(self.path(), text).expect("write config");
        self.path()
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::write(&p, text).expect("write file");
        p
    }
}

/// An environment with only `vars`.
fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name: &str| {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| OsString::from(v))
    }
}

fn load(path: &Path, vars: &[(&str, &str)]) -> Result<Settings, String> {
    let env = env_of(vars);
    let s = Settings::load_with(Some(path), &env).map_err(|e| e.0)?;
    s.validate().map_err(|e| e.0)?;
    Ok(s)
}

/// `pairs` as the owned pairs a provider's `extra_auth_params` holds.
fn owned_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn builtin_overridden_field_by_field() {
    let c = Cfg::new();
    let path = c.write(
        r#"
[providers.anthropic]
token_url = "http://127.0.0.1:8080/token"
scopes = ["user:inference"]
"#,
    );
    let s = load(&path, &[]).expect("valid");
    let a = &s.config.providers["anthropic"];
    assert_eq!(a.token_url.as_deref(), Some("http://127.0.0.1:8080/token"));
    assert_eq!(a.scopes, vec!["user:inference".to_owned()]);
    // Everything else is the built-in's.
    let builtin = provider::anthropic();
    assert_eq!(a.authorize_url, builtin.authorize_url);
    assert_eq!(a.client_id, builtin.client_id);
    assert_eq!(a.redirect_uri, builtin.redirect_uri);
    assert_eq!(a.exchange_encoding, BodyEncoding::Json);
    assert_eq!(a.dialect, Dialect::Anthropic);
    assert_eq!(a.extra_auth_params, builtin.extra_auth_params);
    // The other built-ins are untouched.
    assert_eq!(s.config.providers["qwen"], provider::qwen());
    assert_eq!(s.config.providers.len(), 4);
    assert_eq!(s.source.as_deref(), Some(path.as_path()));
}

#[test]
fn custom_provider_with_issuer() {
    let c = Cfg::new();
    let path = c.write(
        r#"
[providers."corp.sso"]
flow = "pkce_redirect"
issuer = "https://id.corp.example"
client_id = "credproxy"
scopes = ["openid", "offline_access"]
redirect_uri = "https://id.corp.example/cb"
exchange_encoding = "json"
extra_auth_params = [["prompt", "consent"], ["access_type", "offline"]]
default_device_lifetime_s = 300

[providers.devices]
flow = "device_code"
dialect = "standard"
device_url = "https://auth.example.com/device"
token_url = "https://auth.example.com/token"
client_id = "dev"
device_encoding = "json"
extra_auth_params = { z = "1", a = "2" }
"#,
    );
    let s = load(&path, &[]).expect("valid");
    let p = &s.config.providers["corp.sso"];
    assert_eq!(p.name, "corp.sso");
    assert_eq!(p.flow, FlowType::PkceRedirect);
    assert_eq!(p.dialect, Dialect::Standard);
    assert_eq!(p.issuer.as_deref(), Some("https://id.corp.example"));
    assert_eq!(p.authorize_url, None, "from discovery at login time");
    assert_eq!(p.client_id, "credproxy");
    assert_eq!(p.scope(), "openid offline_access");
    assert_eq!(p.exchange_encoding, BodyEncoding::Json);
    assert_eq!(
        p.extra_auth_params,
        owned_pairs(&[("prompt", "consent"), ("access_type", "offline")])
    );
    assert_eq!(p.default_device_lifetime_s, 300);
    assert!(p.client_secret.is_none());
    let d = &s.config.providers["devices"];
    assert_eq!(d.flow, FlowType::DeviceCode);
    assert_eq!(d.device_encoding, BodyEncoding::Json);
    assert_eq!(
        d.extra_auth_params,
        owned_pairs(&[("z", "1"), ("a", "2")]),
        "a table keeps the order written"
    );
    assert_eq!(s.config.providers.len(), 6);
}

/// A redirect flow with an issuer but no `redirect_uri` is refused when the
/// file is loaded (discovery never supplies one), naming the provider and
/// the field; a device flow with an issuer needs none.
#[test]
fn redirect_flow_with_issuer_needs_a_redirect_uri() {
    let c = Cfg::new();
    for flow in ["pkce_redirect", "browser_redirect"] {
        let path = c.write(&format!(
            "[providers.corp]\nflow = \"{flow}\"\nissuer = \"https://id.corp.example\"\n\
             client_id = \"credproxy\"\n"
        ));
        let e = load(&path, &[]).expect_err(flow);
        assert!(e.contains("[providers.corp]"), "{e}");
        assert!(e.contains("redirect_uri is required"), "{e}");
        assert!(e.contains(flow), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }
    let path = c.write(
        "[providers.corp]\nflow = \"device_code\"\nissuer = \"https://id.corp.example\"\n\
         client_id = \"credproxy\"\n",
    );
    load(&path, &[]).expect("a device flow needs no redirect_uri");
}

#[test]
fn codex_flow_device_code_selects_the_device_dialect() {
    let c = Cfg::new();
    let path = c.write("[providers.codex]\nflow = \"device_code\"\n");
    let s = load(&path, &[]).expect("valid");
    assert_eq!(
        s.config.providers["codex"],
        provider::codex_device(provider::codex())
    );
    assert_eq!(s.config.providers["codex"].dialect, Dialect::CodexDevice);

    // Overrides apply on top of the device dialect.
    let path = c.write(
        "[providers.codex]\nflow = \"device_code\"\n\
         device_token_url = \"http://127.0.0.1:9/deviceauth/token\"\n",
    );
    let s = load(&path, &[]).expect("valid");
    let codex = &s.config.providers["codex"];
    assert_eq!(codex.flow, FlowType::DeviceCode);
    assert_eq!(codex.dialect, Dialect::CodexDevice);
    assert_eq!(
        codex.device_token_url.as_deref(),
        Some("http://127.0.0.1:9/deviceauth/token")
    );

    // The default stays the browser redirect.
    let path = c.write("[providers.codex]\nflow = \"browser_redirect\"\n");
    let s = load(&path, &[]).expect("valid");
    assert_eq!(s.config.providers["codex"], provider::codex());
}

#[test]
fn unknown_keys_are_errors_naming_key_and_file() {
    let c = Cfg::new();
    for (text, key) in [
        ("colour = \"blue\"\n", "colour"),
        ("[limits]\nsession_ttl = 5\n", "session_ttl"),
        ("[policy]\nstrict = true\n", "strict"),
        (
            "[providers.anthropic]\ntoken_uri = \"https://x.example/t\"\n",
            "token_uri",
        ),
    ] {
        let path = c.write(text);
        let e = load(&path, &[]).expect_err(text);
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains(key), "{e}");
        assert!(e.contains("unknown field"), "{e}");
    }
    // Wrong types and values too.
    let path = c.write("[limits]\nlock_wait_ms = \"soon\"\n");
    let e = load(&path, &[]).expect_err("type");
    assert!(e.contains(&path.display().to_string()), "{e}");
    let path = c.write("[providers.x]\nflow = \"implicit\"\nclient_id = \"x\"\n");
    let e = load(&path, &[]).expect_err("flow");
    assert!(
        e.contains("pkce_redirect, device_code, browser_redirect"),
        "{e}"
    );
    // A custom provider needs a flow.
    let path = c.write("[providers.x]\nclient_id = \"x\"\n");
    let e = load(&path, &[]).expect_err("no flow");
    assert!(
        e.contains("[providers.x]") && e.contains("flow is required"),
        "{e}"
    );
    // A missing explicit file is an error.
    let e = load(&c.dir.path().join("absent.toml"), &[]).expect_err("absent");
    assert!(e.contains("absent.toml"), "{e}");
}

#[test]
fn insecure_endpoints_are_refused() {
    let c = Cfg::new();
    let path = c.write("[providers.anthropic]\ntoken_url = \"http://auth.example.com/token\"\n");
    let e = load(&path, &[]).expect_err("plain http to a remote host");
    assert!(e.contains("must be HTTPS"), "{e}");
    assert!(e.contains(&path.display().to_string()), "{e}");
    assert!(e.contains("[providers.anthropic]"), "{e}");
    // Loopback over HTTP is fine; so is localhost and ::1.
    for url in [
        "http://127.0.0.1:8080/token",
        "http://localhost/token",
        "http://[::1]:1/t",
    ] {
        let path = c.write(&format!("[providers.anthropic]\ntoken_url = \"{url}\"\n"));
        load(&path, &[]).expect(url);
    }
    // A custom provider without the endpoints its flow needs.
    let path = c.write("[providers.x]\nflow = \"device_code\"\nclient_id = \"x\"\n");
    let e = load(&path, &[]).expect_err("no endpoints");
    assert!(e.contains("token_url"), "{e}");
    // Bad provider names are refused.
    let path = c.write("[providers.\"a/b\"]\nflow = \"device_code\"\n");
    assert!(load(&path, &[]).is_err());
}

#[test]
fn client_secret_from_file_or_env_never_from_the_file_itself() {
    let c = Cfg::new();
    c.file("gemini-secret", "  GOCSPX-from-file \n");
    // Relative to the configuration file's directory.
    let path = c.write("[providers.gemini]\nclient_secret_file = \"gemini-secret\"\n");
    let s = load(&path, &[]).expect("valid");
    let secret = s.config.providers["gemini"]
        .client_secret
        .clone()
        .expect("secret");
    assert_eq!(secret.expose(), "GOCSPX-from-file");
    assert_eq!(format!("{secret:?}"), "[redacted]");

    let path =
        c.write("[providers.gemini]\nclient_secret_env = \"CREDPROXY_GEMINI_CLIENT_SECRET\"\n");
    let s = load(
        &path,
        &[("CREDPROXY_GEMINI_CLIENT_SECRET", "GOCSPX-from-env")],
    )
    .expect("valid");
    assert_eq!(
        s.config.providers["gemini"]
            .client_secret
            .as_ref()
            .map(|s| s.expose().to_owned()),
        Some("GOCSPX-from-env".to_owned())
    );
    // Named but unset: an error that names the variable, not a silent
    // login failure later.
    let e = load(&path, &[]).expect_err("unset");
    assert!(e.contains("CREDPROXY_GEMINI_CLIENT_SECRET"), "{e}");
    // Without configuration the built-in gemini has no secret.
    let path = c.write("");
    assert!(
        load(&path, &[("CREDPROXY_GEMINI_CLIENT_SECRET", "x")])
            .expect("valid")
            .config
            .providers["gemini"]
            .client_secret
            .is_none()
    );

    // A secret written into the file is refused, and never echoed.
    let path = c.write("[providers.gemini]\nclient_secret = \"GOCSPX-inline\"\n");
    let e = load(&path, &[]).expect_err("inline secret");
    assert!(e.contains("client_secret_file"), "{e}");
    assert!(!e.contains("GOCSPX-inline"), "{e}");
    // Both sources, or an unreadable or empty file, are errors.
    let path = c.write(
        "[providers.gemini]\nclient_secret_file = \"gemini-secret\"\nclient_secret_env = \"X\"\n",
    );
    assert!(load(&path, &[("X", "y")]).is_err());
    c.file("empty", "\n");
    let path = c.write("[providers.gemini]\nclient_secret_file = \"empty\"\n");
    assert!(load(&path, &[]).unwrap_err().contains("empty"));
    let path = c.write("[providers.gemini]\nclient_secret_file = \"/nonexistent/s\"\n");
    assert!(load(&path, &[]).unwrap_err().contains("/nonexistent/s"));
}

#[derive(Debug, Parser)]
struct Flags {
    #[command(flatten)]
    limits: LimitsArgs,
    #[command(flatten)]
    policy: PolicyArgs,
}

fn flags(args: &[&str]) -> Flags {
    let mut all = vec!["test"];
    all.extend_from_slice(args);
    Flags::try_parse_from(all).expect("flags parse")
}

#[test]
fn precedence_defaults_env_file_flags() {
    let c = Cfg::new();
    let path = c.write(
        r#"
store = "store-dir"
audit_log = "audit.log"

[limits]
session_timeout_ms = 1000
lock_wait_ms = 2000
refresh_retry_ms = [10, 30]
max_frame_bytes = 1024

[policy]
strict_sandbox = true
allow_provider = ["anthropic"]
allow_bucket = []
allow_uid = [1001, 1002]
"#,
    );
    let env = env_of(&[(SESSION_TIMEOUT_ENV, "7")]);
    let mut s = Settings::load_with(Some(&path), &env).expect("load");
    // The file beats the environment; relative paths are the file's.
    assert_eq!(s.config.limits.session_ttl_ms, 1000);
    assert_eq!(s.store.store, Some(c.dir.path().join("store-dir")));
    assert_eq!(
        s.audit_log,
        Some(c.dir.path().join("audit.log").display().to_string())
    );
    assert_eq!(s.config.limits.refresh_retry_ms, [10, 30]);
    assert!(s.config.policy.strict_sandbox);
    assert_eq!(s.allowed_uids, vec![1001, 1002]);
    assert_eq!(
        s.config.policy.allowed_buckets,
        Some(Default::default()),
        "[] allows none"
    );
    // Untouched limits keep their defaults.
    assert_eq!(s.config.limits.handshake_ms, 5_000);

    // Flags beat the file, only where given.
    let f = flags(&[
        "--session-timeout-ms",
        "2500",
        "--refresh-retry-ms",
        "5,6",
        "--strict-sandbox=false",
        "--allow-provider",
        "codex",
        "--allow-uid",
        "7",
    ]);
    s.apply_limits(&f.limits);
    s.apply_policy(&f.policy);
    s.validate().expect("valid");
    assert_eq!(s.config.limits.session_ttl_ms, 2500);
    assert_eq!(s.config.limits.refresh_retry_ms, [5, 6]);
    assert_eq!(s.config.limits.lock_wait_ms, 2000, "not given: the file's");
    assert_eq!(s.config.limits.max_frame_bytes, 1024);
    assert!(!s.config.policy.strict_sandbox);
    assert_eq!(
        s.config.policy.allowed_providers,
        Some(["codex".to_owned()].into())
    );
    assert_eq!(s.config.policy.allowed_buckets, Some(Default::default()));
    assert_eq!(s.allowed_uids, vec![7]);

    // The environment beats the defaults when the file is silent.
    let path = c.write("");
    let s = Settings::load_with(Some(&path), &env).expect("load");
    assert_eq!(s.config.limits.session_ttl_ms, 7_000);
    let bad = env_of(&[(SESSION_TIMEOUT_ENV, "ten")]);
    let e = Settings::load_with(Some(&path), &bad).expect_err("bad env");
    assert!(e.0.contains(SESSION_TIMEOUT_ENV), "{e}");

    // A bare boolean flag sets true; the new timing flags parse.
    let f = flags(&[
        "--strict-sandbox",
        "--refresh-cooldown-ms",
        "11",
        "--provider-call-timeout-ms",
        "12",
        "--lock-wait-ms",
        "13",
    ]);
    let mut s = Settings::default();
    s.apply_limits(&f.limits);
    s.apply_policy(&f.policy);
    assert!(s.config.policy.strict_sandbox);
    assert_eq!(
        (
            s.config.limits.refresh_cooldown_ms,
            s.config.limits.provider_call_ms,
            s.config.limits.lock_wait_ms
        ),
        (11, 12, 13)
    );

    // Out-of-range limits are refused, naming the file.
    let path = c.write("[limits]\nmax_frame_bytes = 0\n");
    let e = load(&path, &[]).expect_err("zero frame");
    assert!(e.contains("max_frame_bytes"), "{e}");
    assert!(e.contains(&path.display().to_string()), "{e}");
}

#[test]
fn missing_default_file_is_fine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().display().to_string();
    let env = env_of(&[("HOME", &home)]);
    let s = Settings::load_with(None, &env).expect("no file");
    assert!(s.source.is_none());
    assert_eq!(s.config.providers, provider::builtins());
    // The default location: $XDG_CONFIG_HOME, else ~/.config.
    let cfg = dir.path().join(".config/credproxy");
    fs::create_dir_all(&cfg).expect("mkdir");
    fs::write(cfg.join("config.toml"), "[limits]\nlock_wait_ms = 1\n").expect("write");
    let s = Settings::load_with(None, &env).expect("home file");
    assert_eq!(s.config.limits.lock_wait_ms, 1);
    let xdg = dir.path().join("xdg");
    fs::create_dir_all(xdg.join("credproxy")).expect("mkdir");
    fs::write(
        xdg.join("credproxy/config.toml"),
        "[limits]\nlock_wait_ms = 2\n",
    )
    .expect("write");
    let xdg_s = xdg.display().to_string();
    let env = env_of(&[("HOME", &home), ("XDG_CONFIG_HOME", &xdg_s)]);
    let s = Settings::load_with(None, &env).expect("xdg file");
    assert_eq!(s.config.limits.lock_wait_ms, 2);
}

// --- the binary ------------------------------------------------------------

#[test]
fn providers_json_shows_overrides_and_custom_providers_without_secrets() {
    let s = Scratch::new();
    let secret = s.root().join("corp-secret");
    fs::write(&secret, "very-secret-value\n").expect("secret");
    let path = s.write_default_config(&format!(
        r#"
[providers.anthropic]
token_url = "http://127.0.0.1:8080/token"

[providers.codex]
flow = "device_code"

[providers.corp]
flow = "device_code"
issuer = "https://id.corp.example"
client_id = "cp"
client_secret_file = "{}"
"#,
        secret.display()
    ));
    let ran = s.run(&["providers", "--json"], b"");
    ran.assert_code(0);
    assert!(!ran.stdout.contains("very-secret-value"), "{}", ran.stdout);
    let v: Value = serde_json::from_str(&ran.stdout).expect("json");
    assert_eq!(v["config_file"], path.display().to_string());
    let list = v["providers"].as_array().expect("list");
    let names: Vec<&str> = list.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["anthropic", "codex", "corp", "gemini", "qwen"]);
    let by = |n: &str| list.iter().find(|p| p["name"] == n).expect(n).clone();
    let a = by("anthropic");
    assert_eq!(a["token_url"], "http://127.0.0.1:8080/token");
    assert_eq!(a["authorize_url"], "https://claude.ai/oauth/authorize");
    assert_eq!(a["flow"], "pkce_redirect");
    assert_eq!(
        (a["builtin"].clone(), a["configured"].clone()),
        (true.into(), true.into())
    );
    assert_eq!(a["client_secret"], false);
    let c = by("codex");
    assert_eq!(
        (c["flow"].as_str(), c["dialect"].as_str()),
        (Some("device_code"), Some("codex_device"))
    );
    let corp = by("corp");
    assert_eq!(corp["issuer"], "https://id.corp.example");
    assert_eq!(corp["builtin"], false);
    assert_eq!(corp["client_secret"], true);
    let q = by("qwen");
    assert_eq!(q["configured"], false);
    assert_eq!(
        q["device_url"],
        "https://chat.qwen.ai/api/v1/oauth2/device/code"
    );

    // Text output: the same facts, the secret only as "configured".
    let ran = s.run(&["providers"], b"");
    ran.assert_code(0);
    ran.assert_stdout_has(&[
        "client secret: configured",
        "http://127.0.0.1:8080/token",
        "CREDPROXY_GEMINI_CLIENT_SECRET",
    ]);
    assert!(!ran.stdout.contains("very-secret-value"));
}

#[test]
fn invalid_file_stops_serve_with_the_path_and_exit_3() {
    let s = Scratch::new();
    s.serve_refuses_config("[limits]\nsession_ttl = 5\n", &["session_ttl"]);
    let store = s.store_arg();
    // An explicit --config that does not exist.
    let ran = s.run(&["providers", "--config", "/nonexistent/c.toml"], b"");
    ran.assert_stderr(3, &["/nonexistent/c.toml"]);
    // An insecure endpoint.
    s.write_default_config("[providers.qwen]\ntoken_url = \"http://qwen.example/t\"\n");
    let ran = s.run(&["stdio", "--store", &store], b"");
    ran.assert_stderr(3, &["must be HTTPS"]);
}

#[test]
fn store_from_the_file_is_used_by_the_store_commands() {
    let s = Scratch::new();
    let store = s.root().join("configured-store");
    s.write_default_config(&format!("store = \"{}\"\n", store.display()));
    s.run(&["key", "set", "K1"], b"value\n").assert_code(0);
    assert!(store.is_dir(), "the configured store was created");
    let ran = s.run(&["key", "list"], b"");
    ran.assert_code(0);
    assert_eq!(ran.stdout, "K1\n");
    // --store still wins.
    let other = s.store_arg();
    let ran = s.run(&["key", "list", "--store", &other], b"");
    ran.assert_code(0);
    // (Was "": an empty list now says so.)
    assert_eq!(ran.stdout, "no API keys stored\n");
}

/// The long flags a `--help` text lists (`  -x, --name <V>` or `  --name`).
fn long_flags(help: &str) -> Vec<String> {
    help.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-h, ").unwrap_or(l);
            let l = l.split_once(", ").map_or(
                l,
                |(short, rest)| {
                    if short.len() == 2 { rest } else { l }
                },
            );
            let name = l.strip_prefix("--")?;
            let end = name
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .unwrap_or(name.len());
            Some(name[..end].to_owned())
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// Every flag of the serving commands has a configuration key of the same
/// name (`-` → `_`) that the real loader accepts; the few that have none
/// are listed with the reason.
#[test]
fn every_flag_has_a_key_of_the_same_name() {
    use credproxy::config::{LIMIT_KEYS, POLICY_KEYS, TOP_KEYS};
    // Flags that deliberately have no key.
    let no_key = [
        ("help", "clap's"),
        ("config", "names the file itself"),
        ("socket", "one instance's path, given per run"),
        (
            "insecure-no-token",
            "an unsafe mode must be asked for on each run",
        ),
        (
            "store-key-fd",
            "a descriptor exists only in the process given it",
        ),
    ];
    let s = Scratch::new();
    let mut seen = 0;
    for cmd in ["serve", "exec", "stdio"] {
        let ran = s.run(&[cmd, "--help"], b"");
        ran.assert_code(0);
        let flags = long_flags(&ran.stdout);
        assert!(flags.len() > 30, "{cmd}: {flags:?}");
        for flag in flags {
            if no_key.iter().any(|(f, _)| *f == flag) {
                continue;
            }
            let key = flag.replace('-', "_");
            let (table, _) = [
                ("", TOP_KEYS),
                ("limits", LIMIT_KEYS),
                ("policy", POLICY_KEYS),
            ]
            .into_iter()
            .find(|(_, keys)| keys.contains(&key.as_str()))
            .unwrap_or_else(|| panic!("--{flag} of {cmd} has no key {key}"));
            // The loader takes the key (a value of the right type for each).
            let value = match key.as_str() {
                "store" | "audit_log" | "store_key_file" => "\"x\"".to_owned(),
                "store_backend" => "\"encrypted-file\"".to_owned(),
                "refresh_retry_ms" => "[1, 2]".to_owned(),
                "strict_sandbox" | "sandbox_login_overwrite" => "true".to_owned(),
                "allow_uid" => "[7]".to_owned(),
                k if k.starts_with("allow_") => "[\"x\"]".to_owned(),
                _ => "7".to_owned(),
            };
            let text = if table.is_empty() {
                format!("{key} = {value}\n")
            } else {
                format!("[{table}]\n{key} = {value}\n")
            };
            let file = credproxy::config::FileConfig::parse(&text, Path::new("/k.toml"))
                .unwrap_or_else(|e| panic!("--{flag}: key {key} refused: {e}"));
            assert!(file.warnings.is_empty(), "{key}: {:?}", file.warnings);
            seen += 1;
        }
    }
    assert!(seen > 90, "{seen}");
}

/// A limit set by its key and by its flag gives the same value, for every
/// limit.
#[test]
fn each_limit_key_and_flag_set_the_same_field() {
    use credproxy::config::{FileConfig, LIMIT_FLAGS};
    for (flag, key) in LIMIT_FLAGS {
        let (file_value, flag_value) = if *key == "refresh_retry_ms" {
            ("[3, 4]", "3,4")
        } else {
            ("7", "7")
        };
        let file = FileConfig::parse(
            &format!("[limits]\n{key} = {file_value}\n"),
            Path::new("/k.toml"),
        )
        .expect("parses");
        let mut by_file = Settings::default();
        file.limits.apply(&mut by_file.config.limits);
        let mut by_flag = Settings::default();
        by_flag.apply_limits(&flags(&[&format!("--{flag}"), flag_value]).limits);
        assert_eq!(by_file.config.limits, by_flag.config.limits, "{flag}");
        assert_ne!(
            by_file.config.limits,
            Settings::default().config.limits,
            "{flag} changed nothing"
        );
    }
}

/// A deprecated key is read and `serve` warns, naming the new key.
#[test]
fn serve_warns_about_a_deprecated_key() {
    let s = Scratch::new();
    let cfg = s.root().join("old.toml");
    fs::write(&cfg, "[limits]\nhandshake_ms = 4000\n").expect("write");
    let cfg = cfg.display().to_string();
    let mut proxy = s.serve(&["--config", &cfg]);
    let stderr = proxy.wait_for_stderr("deprecated");
    assert!(
        stderr.contains("handshake_ms is deprecated; rename it to handshake_timeout_ms"),
        "{stderr}"
    );
    proxy.stop(nix::sys::signal::Signal::SIGTERM);
}
