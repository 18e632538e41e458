//! llxprt's fallback file names and accounts.
//!
//! In the account, each of `* < > : " / \ | ?` becomes `%` + upper-case hex
//! and `.enc` is appended (`anthropic:default` → `anthropic%3Adefault.enc`);
//! `%` itself is not escaped. Listing runs names through JavaScript's
//! `decodeURIComponent`, so any `%XX` sequence decodes, and the legacy
//! unescaped name (`anthropic:default.enc`) names the same account.

/// The suffix of every envelope file.
pub const ENC_SUFFIX: &str = ".enc";
/// Accounts llxprt uses to probe the store, never real entries.
pub const PROBE_PREFIX: &str = "__securestore_probe__";

const ESCAPED: &[char] = &['*', '<', '>', ':', '"', '/', '\\', '|', '?'];

/// The file name llxprt writes for `account`.
#[must_use]
pub fn escaped_file_name(account: &str) -> String {
    let mut out = String::with_capacity(account.len() + ENC_SUFFIX.len());
    for c in account.chars() {
        if ESCAPED.contains(&c) {
            out.push_str(&format!("%{:02X}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out.push_str(ENC_SUFFIX);
    out
}

/// What a directory entry is to the importer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// An envelope of `account`; `legacy` when the name is not the one
    /// llxprt writes today (the unescaped form).
    Entry {
        /// The decoded account.
        account: String,
        /// Not the escaped name of its account.
        legacy: bool,
    },
    /// Not ours to read: temporary files (`<file>.tmp.<hex>`), probe
    /// accounts, anything not ending in `.enc`.
    Ignored,
    /// An `.enc` name that does not percent-decode (llxprt's
    /// `decodeURIComponent` would throw on it).
    Undecodable,
}

/// Classifies a file name found in an llxprt store directory.
#[must_use]
pub fn classify(file_name: &str) -> FileKind {
    if is_temp_name(file_name) {
        return FileKind::Ignored;
    }
    let Some(stem) = file_name.strip_suffix(ENC_SUFFIX) else {
        return FileKind::Ignored;
    };
    let Some(account) = percent_decode(stem) else {
        return FileKind::Undecodable;
    };
    if account.starts_with(PROBE_PREFIX) || account.is_empty() {
        return FileKind::Ignored;
    }
    let legacy = escaped_file_name(&account) != file_name;
    FileKind::Entry { account, legacy }
}

/// llxprt's atomic writes go through `<file>.tmp.<8 hex>`.
fn is_temp_name(name: &str) -> bool {
    name.rsplit_once(".tmp.")
        .is_some_and(|(_, tail)| !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `decodeURIComponent`: `%XX` sequences are bytes of UTF-8; a `%` not
/// followed by two hex digits, or bytes that are not UTF-8, fail.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `<provider>:<bucket>` → (provider, bucket); the bucket defaults to
/// `default` when there is no `:`.
#[must_use]
pub fn split_account(account: &str) -> (&str, &str) {
    account.split_once(':').unwrap_or((account, "default"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_llxprt_does() {
        assert_eq!(
            escaped_file_name("anthropic:default"),
            "anthropic%3Adefault.enc"
        );
        assert_eq!(
            escaped_file_name(r#"a*<>:"/\|?b"#),
            "a%2A%3C%3E%3A%22%2F%5C%7C%3Fb.enc"
        );
        assert_eq!(escaped_file_name("100%"), "100%.enc");
        assert_eq!(escaped_file_name("my-key"), "my-key.enc");
    }

    #[test]
    fn escaping_round_trips() {
        for account in [
            "anthropic:default",
            "codex:work@x",
            r#"a*<>:"/\|?b"#,
            "é:ü",
            "openai",
        ] {
            assert_eq!(
                classify(&escaped_file_name(account)),
                FileKind::Entry {
                    account: account.to_owned(),
                    legacy: false
                },
                "{account}"
            );
        }
    }

    #[test]
    fn legacy_unescaped_name_is_the_same_account() {
        assert_eq!(
            classify("anthropic:default.enc"),
            FileKind::Entry {
                account: "anthropic:default".into(),
                legacy: true
            }
        );
        // Lower-case hex decodes too, but is not what llxprt writes.
        assert_eq!(
            classify("anthropic%3adefault.enc"),
            FileKind::Entry {
                account: "anthropic:default".into(),
                legacy: true
            }
        );
    }

    #[test]
    fn ignores_temp_files_probes_and_other_names() {
        assert_eq!(
            classify("anthropic%3Adefault.enc.tmp.0a1b2c3d"),
            FileKind::Ignored
        );
        assert_eq!(classify("__securestore_probe__123.enc"), FileKind::Ignored);
        assert_eq!(classify("notes.txt"), FileKind::Ignored);
        assert_eq!(classify(".enc"), FileKind::Ignored);
        assert_eq!(classify("bad%zz.enc"), FileKind::Undecodable);
        assert_eq!(classify("bad%.enc"), FileKind::Undecodable);
        assert_eq!(classify("bad%ff.enc"), FileKind::Undecodable);
    }

    #[test]
    fn accounts_split_into_provider_and_bucket() {
        assert_eq!(split_account("anthropic:work"), ("anthropic", "work"));
        assert_eq!(split_account("gemini"), ("gemini", "default"));
        assert_eq!(split_account("a:b:c"), ("a", "b:c"));
    }
}
