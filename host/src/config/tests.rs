use super::*;
use credproxy_core::config::Limits;

fn no_env(_: &str) -> Option<OsString> {
    None
}

#[test]
fn every_limits_field_has_a_key_and_a_flag() {
    // `Limits { a: 1, b: [1, 2], … }`: the field names from Debug.
    let debug = format!("{:?}", Limits::default());
    let body = debug
        .trim_start_matches("Limits {")
        .trim_end_matches('}')
        .to_owned();
    let mut depth = 0;
    let mut fields = Vec::new();
    let mut current = String::new();
    for c in body.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                fields.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    fields.push(current);
    let names: Vec<String> = fields
        .iter()
        .filter_map(|f| f.split(':').next())
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    assert!(names.len() > 20, "{names:?}");
    assert_eq!(names.len(), LIMIT_KEYS.len(), "one key per field");
    assert_eq!(names.len(), LIMIT_FLAGS.len(), "one flag per field");
    // Every key is its flag's name with `_` for `-`.
    for (flag, key) in LIMIT_FLAGS {
        assert_eq!(flag.replace('-', "_"), *key);
        assert!(LIMIT_KEYS.contains(key), "{key}");
    }
}

/// Old key names still load, with one warning each naming the new key;
/// old and new together are refused.
#[test]
fn deprecated_keys_load_with_a_warning() {
    let mut text = String::from("[limits]\n");
    for (i, (old, _)) in DEPRECATED_LIMIT_KEYS.iter().enumerate() {
        text.push_str(&format!("{old} = {}\n", 1000 + i));
    }
    text.push_str("[policy]\n");
    for (old, _) in DEPRECATED_POLICY_KEYS {
        let value = if old.ends_with("uids") {
            "[7]"
        } else {
            "[\"x\"]"
        };
        text.push_str(&format!("{old} = {value}\n"));
    }
    let file = FileConfig::parse(&text, Path::new("/c.toml")).expect("old keys load");
    assert_eq!(
        file.warnings.len(),
        DEPRECATED_LIMIT_KEYS.len() + DEPRECATED_POLICY_KEYS.len()
    );
    for (old, new) in DEPRECATED_LIMIT_KEYS.iter().chain(DEPRECATED_POLICY_KEYS) {
        assert!(
            file.warnings
                .iter()
                .any(|w| w.contains("/c.toml") && w.contains(old) && w.contains(new)),
            "{old} -> {new}: {:?}",
            file.warnings
        );
    }
    let mut limits = Limits::default();
    file.limits.apply(&mut limits);
    assert_eq!(limits.partial_frame_ms, 1000);
    assert_eq!(limits.handshake_ms, 1001);
    assert_eq!(limits.session_ttl_ms, 1002);
    assert_eq!(limits.provider_call_ms, 1003);
    assert_eq!(file.policy.allow_provider, Some(vec!["x".to_owned()]));
    assert_eq!(file.policy.allow_uid, Some(vec![7]));

    let both = "[limits]\nhandshake_ms = 1\nhandshake_timeout_ms = 2\n";
    let e = FileConfig::parse(both, Path::new("/c.toml")).expect_err("both names");
    assert!(
        e.0.contains("handshake_ms") && e.0.contains("handshake_timeout_ms"),
        "{e}"
    );
    let both = "[policy]\nallowed_keys = []\nallow_key = []\n";
    let e = FileConfig::parse(both, Path::new("/c.toml")).expect_err("both names");
    assert!(
        e.0.contains("allowed_keys") && e.0.contains("allow_key"),
        "{e}"
    );
    // The new names give no warning.
    let new = "[limits]\nhandshake_timeout_ms = 2\n[policy]\nallow_key = []\n";
    assert!(
        FileConfig::parse(new, Path::new("/c.toml"))
            .unwrap()
            .warnings
            .is_empty()
    );
}

/// The example in the module docs parses, and its `[limits]` are the
/// defaults.
#[test]
fn documented_example_is_valid() {
    let source = include_str!("mod.rs");
    let start = source.find("//! ```toml\n").expect("example start") + 12;
    let len = source[start..].find("//! ```\n").expect("example end");
    let text: String = source[start..start + len]
        .lines()
        .map(|l| {
            l.strip_prefix("//! ")
                .unwrap_or(l.trim_start_matches("//!"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let file = FileConfig::parse(&text, Path::new("example.toml")).expect("example parses");
    let mut limits = Limits {
        max_frame_bytes: 1,
        refresh_retry_ms: [0, 0],
        renewal_max_tries: 0,
        ..Limits::default()
    };
    file.limits.apply(&mut limits);
    assert_eq!(limits, Limits::default(), "documented defaults");
    for key in LIMIT_KEYS {
        assert!(
            text.contains(&format!("\n{key} = ")),
            "{key} is not in the example"
        );
    }
    assert_eq!(file.providers.len(), 4);
}

#[test]
fn extra_params_in_both_shapes_keep_order() {
    let f: FileConfig = toml::from_str(
        "[providers.a]\nflow=\"device_code\"\nextra_auth_params = { z = \"1\", a = \"2\" }\n\
         [providers.b]\nflow=\"device_code\"\nextra_auth_params = [[\"z\", \"1\"], [\"a\", \"2\"]]\n",
    )
    .unwrap();
    let want = vec![
        ("z".to_owned(), "1".to_owned()),
        ("a".to_owned(), "2".to_owned()),
    ];
    assert_eq!(f.providers["b"].extra_auth_params.clone().unwrap().0, want);
    assert_eq!(f.providers["a"].extra_auth_params.clone().unwrap().0, want);
}

#[test]
fn bad_enum_value_lists_the_choices() {
    let e = FileConfig::parse("[providers.x]\nflow = \"implicit\"\n", Path::new("/c.toml"))
        .unwrap_err();
    assert!(e.0.contains("/c.toml"), "{e}");
    assert!(
        e.0.contains("pkce_redirect, device_code, browser_redirect"),
        "{e}"
    );
}

#[test]
fn env_session_timeout() {
    let env = |n: &str| (n == SESSION_TIMEOUT_ENV).then(|| OsString::from("42"));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.toml");
    let s = Settings::load_with(None, &|n| {
        if n == "XDG_CONFIG_HOME" {
            Some(missing.clone().into_os_string())
        } else {
            env(n)
        }
    })
    .unwrap();
    assert_eq!(s.config.limits.session_ttl_ms, 42_000);
    let bad = |n: &str| (n == SESSION_TIMEOUT_ENV).then(|| OsString::from("soon"));
    assert!(Settings::load_with(Some(&missing), &bad).is_err());
    assert!(Settings::load_with(None, &no_env).is_ok());
}

#[test]
fn store_settings_layer_env_then_file_relative_to_the_file() {
    use crate::store::BackendName;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let env = |n: &str| (n == "CREDPROXY_STORE_KEY_FILE").then(|| OsString::from("/env/key"));
    std::fs::write(&cfg, "store = \"s\"\n").unwrap();
    let s = Settings::load_with(Some(&cfg), &env).unwrap();
    assert_eq!(s.store.store, Some(dir.path().join("s")));
    assert_eq!(s.store.store_key_file, Some(PathBuf::from("/env/key")));
    assert_eq!(s.store.store_backend, None);
    std::fs::write(
        &cfg,
        "store_backend = \"encrypted-file\"\nstore_key_file = \"keys/k\"\n",
    )
    .unwrap();
    let s = Settings::load_with(Some(&cfg), &env).unwrap();
    assert_eq!(s.store.store_backend, Some(BackendName::EncryptedFile));
    assert_eq!(s.store.store_key_file, Some(dir.path().join("keys/k")));
    std::fs::write(&cfg, "store_backend = \"keyring\"\n").unwrap();
    let s = Settings::load_with(Some(&cfg), &no_env).unwrap();
    assert_eq!(s.store.store_backend, Some(BackendName::Keyring));
    std::fs::write(&cfg, "store_backend = \"postgres\"\n").unwrap();
    let s = Settings::load_with(Some(&cfg), &no_env).unwrap();
    assert_eq!(s.store.store_backend, Some(BackendName::Postgres));
    // A backend this build does not know is refused.
    std::fs::write(&cfg, "store_backend = \"mysql\"\n").unwrap();
    let e = Settings::load_with(Some(&cfg), &no_env).unwrap_err();
    assert!(
        e.0.contains("store_backend") || e.0.contains("mysql"),
        "{}",
        e.0
    );
}
