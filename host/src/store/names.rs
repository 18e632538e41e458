//! Name validation and the hex file-name encoding.
//!
//! Provider, bucket and API key names come from sandboxes and the command
//! line, so they are validated, and then never used as path components
//! directly: each is lowercase-hex-encoded. That rules out traversal and
//! keeps `Foo` and `foo` apart on case-insensitive file systems. Listing
//! decodes file names back and skips anything that does not decode to a
//! valid name (temp files, stray files).

use super::error::{NameKind, StoreError};

/// Longest accepted name, in bytes (all accepted characters are ASCII).
pub const MAX_NAME_LEN: usize = 64;

/// Longest name excerpt echoed in an error message.
const SHOWN_MAX: usize = 64;

/// Extension of token and metadata files.
const JSON_EXT: &str = ".json";
/// Extension of lock files.
const LOCK_EXT: &str = ".lock";

/// Checks a provider or bucket name: `[A-Za-z0-9._@-]{1,64}`, not `.`/`..`.
pub fn check_key_part(kind: NameKind, name: &str) -> Result<(), StoreError> {
    check(kind, name, true)
}

/// Checks an API key name: `[A-Za-z0-9._-]{1,64}`, not `.`/`..`.
pub fn check_api_key_name(name: &str) -> Result<(), StoreError> {
    check(NameKind::ApiKey, name, false)
}

fn check(kind: NameKind, name: &str, allow_at: bool) -> Result<(), StoreError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 64 characters")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not names")
    } else if !name.bytes().all(|b| allowed(b, allow_at)) {
        Some(if allow_at {
            "only A-Z a-z 0-9 . _ @ - are allowed"
        } else {
            "only A-Z a-z 0-9 . _ - are allowed"
        })
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(StoreError::InvalidName {
            kind,
            shown: shown(name),
            reason,
        }),
    }
}

fn allowed(b: u8, allow_at: bool) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') || (allow_at && b == b'@')
}

/// The name as it may appear in a message: escaped, at most `SHOWN_MAX` chars.
fn shown(name: &str) -> String {
    let mut cut: String = name.chars().take(SHOWN_MAX).collect();
    if cut.len() < name.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// Lowercase hex of the bytes of `name`.
pub fn hex_encode(name: &str) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(name.len() * 2);
    for b in name.bytes() {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Inverse of [`hex_encode`]; `None` unless `hex` is non-empty, even-length
/// lowercase hex of UTF-8 (uppercase is refused so each name has exactly one
/// file name).
pub fn hex_decode(hex: &str) -> Option<String> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = hex.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(2) {
        return None;
    }
    let decoded = bytes
        .chunks_exact(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(decoded).ok()
}

/// `<hex(provider)>.<hex(bucket)>`: the per-key stem shared by token, meta
/// and lock files. Callers validate the names first.
fn key_stem(provider: &str, bucket: &str) -> String {
    format!("{}.{}", hex_encode(provider), hex_encode(bucket))
}

/// File name of a key's token (in `tokens/`) or metadata (in `meta/`).
pub fn json_file_name(provider: &str, bucket: &str) -> String {
    key_stem(provider, bucket) + JSON_EXT
}

/// File name of a key's lock file (in `locks/`).
pub fn lock_file_name(provider: &str, bucket: &str) -> String {
    key_stem(provider, bucket) + LOCK_EXT
}

/// File name of an API key (in `keys/`).
pub fn api_key_file_name(name: &str) -> String {
    hex_encode(name)
}

/// Decodes a token file name back to `(provider, bucket)`; `None` for
/// anything that is not exactly what [`json_file_name`] produces for valid
/// names.
pub fn parse_json_file_name(file_name: &str) -> Option<(String, String)> {
    let stem = file_name.strip_suffix(JSON_EXT)?;
    let (p, b) = stem.split_once('.')?;
    let provider = hex_decode(p)?;
    let bucket = hex_decode(b)?;
    check_key_part(NameKind::Provider, &provider).ok()?;
    check_key_part(NameKind::Bucket, &bucket).ok()?;
    Some((provider, bucket))
}

/// Decodes an API key file name back to the key name; `None` for anything
/// that is not exactly what [`api_key_file_name`] produces for a valid name.
pub fn parse_api_key_file_name(file_name: &str) -> Option<String> {
    let name = hex_decode(file_name)?;
    check_api_key_name(&name).ok()?;
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_alphabet() {
        for ok in [
            "gemini",
            "anthropic",
            "a",
            "A-b_c.d",
            "user@example.com",
            "...",
        ] {
            check_key_part(NameKind::Provider, ok).expect(ok);
        }
        let max = "x".repeat(64);
        check_key_part(NameKind::Bucket, &max).expect("64 chars");
        check_api_key_name("OPENAI_API_KEY").expect("key");
        check_api_key_name(&max).expect("64 chars");
    }

    #[test]
    fn refuses_traversal_and_bad_lengths() {
        let long = "x".repeat(65);
        for bad in [
            "../x", ".", "..", "a/b", "", &long, "a\0b", "a b", "é", "/abs", "a\\b",
        ] {
            assert!(
                matches!(
                    check_key_part(NameKind::Provider, bad),
                    Err(StoreError::InvalidName { .. })
                ),
                "{bad:?} accepted"
            );
            assert!(check_api_key_name(bad).is_err(), "{bad:?} accepted as key");
        }
        assert!(check_api_key_name("a@b").is_err(), "@ is for buckets only");
    }

    #[test]
    fn error_message_is_escaped_and_truncated() {
        let long = format!("{}\n", "y".repeat(200));
        let err = check_key_part(NameKind::Bucket, &long).expect_err("too long");
        let msg = err.to_string();
        assert!(msg.starts_with("invalid bucket name \"yyyy"), "{msg}");
        assert!(msg.contains('…'), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.len() < 200, "{msg}");
    }

    #[test]
    fn hex_round_trip_and_strictness() {
        assert_eq!(hex_encode("Ab.@"), "41622e40");
        assert_eq!(hex_decode("41622e40").as_deref(), Some("Ab.@"));
        assert_eq!(hex_decode("41622E40"), None, "uppercase refused");
        assert_eq!(hex_decode(""), None);
        assert_eq!(hex_decode("4"), None);
        assert_eq!(hex_decode("zz"), None);
        assert_eq!(hex_decode("ff"), None, "not UTF-8");
    }

    #[test]
    fn file_names_round_trip_and_distinguish_case() {
        let upper = json_file_name("Gemini", "default");
        let lower = json_file_name("gemini", "default");
        assert_ne!(upper, lower);
        assert_eq!(
            parse_json_file_name(&upper),
            Some(("Gemini".to_owned(), "default".to_owned()))
        );
        assert_eq!(parse_json_file_name(".tmp-x.json"), None);
        assert_eq!(parse_json_file_name("61.62.lock"), None);
        assert_eq!(parse_json_file_name("61.json"), None);
        assert_eq!(
            parse_json_file_name("2e2e.61.json"),
            None,
            "`..` decodes but is invalid"
        );
        assert_eq!(parse_json_file_name("61.62.63.json"), None);
        assert_eq!(lock_file_name("a", "b"), "61.62.lock");
        assert_eq!(
            parse_api_key_file_name(&api_key_file_name("K1")).as_deref(),
            Some("K1")
        );
        assert_eq!(
            parse_api_key_file_name("2f"),
            None,
            "`/` decodes but is invalid"
        );
    }
}
