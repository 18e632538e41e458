//! The `encrypted-file` envelope: one store file, sealed with AES-256-GCM.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "CPXE"
//! 4       1     format version (1)
//! 5       12    nonce, random for every write (getrandom)
//! 17      n+16  ciphertext of the n plaintext bytes, then the GCM tag
//! ```
//!
//! The associated data binds the header and the entry the file belongs
//! to: `"credproxy-store" 0 magic version 0 kind 0 part 0 part` (kinds
//! `token`, `meta`, `key`, `check`; the parts are the provider and bucket,
//! or the key name; names never contain a NUL, so the encoding is
//! unambiguous). A file renamed or copied onto another entry, a file of
//! another kind, a changed header, a truncated or modified file and a
//! wrong key all fail the tag check, and nothing of the file is used.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use super::key::DataKey;

/// First bytes of every envelope.
pub const MAGIC: &[u8; 4] = b"CPXE";
/// The format version written; the only one read.
pub const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;
/// Bytes an envelope adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// What an envelope holds, part of its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An OAuth token: parts provider, bucket.
    Token,
    /// Per-key metadata: parts provider, bucket.
    Meta,
    /// An API key: part its name.
    ApiKey,
    /// The store's key check (proves the key opens this store).
    Check,
}

impl Kind {
    fn label(self) -> &'static [u8] {
        match self {
            Kind::Token => b"token",
            Kind::Meta => b"meta",
            Kind::ApiKey => b"key",
            Kind::Check => b"check",
        }
    }
}

/// Why an envelope was refused. The messages name no content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Shorter than a header and a tag.
    Truncated,
    /// Does not start with the magic: not an envelope (a plaintext file?).
    NotEnvelope,
    /// A format version this build does not read.
    Version(u8),
    /// The tag does not verify.
    Authentication,
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Truncated => f.write_str("encrypted entry is truncated"),
            OpenError::NotEnvelope => {
                f.write_str("not an encrypted entry (a plaintext file in an encrypted store?)")
            }
            OpenError::Version(v) => write!(f, "unknown encrypted entry format version {v}"),
            OpenError::Authentication => f.write_str(
                "encrypted entry failed authentication: it was modified, truncated, \
                 moved from another entry, or the key is not this store's",
            ),
        }
    }
}

/// The associated data of an entry.
fn aad(kind: Kind, parts: &[&str]) -> Vec<u8> {
    let mut a = Vec::with_capacity(64);
    a.extend_from_slice(b"credproxy-store\0");
    a.extend_from_slice(MAGIC);
    a.push(VERSION);
    a.push(0);
    a.extend_from_slice(kind.label());
    for part in parts {
        a.push(0);
        a.extend_from_slice(part.as_bytes());
    }
    a
}

/// Seals `plain` for the entry `kind`/`parts` with a fresh random nonce.
///
/// # Errors
///
/// The OS random generator failed (nothing is written then).
pub fn seal(key: &DataKey, kind: Kind, parts: &[&str], plain: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
    seal_with_nonce(key, kind, parts, plain, nonce)
}

fn seal_with_nonce(
    key: &DataKey,
    kind: Kind,
    parts: &[&str],
    plain: &[u8],
    nonce: [u8; NONCE_LEN],
) -> std::io::Result<Vec<u8>> {
    let aad = aad(kind, parts);
    let cipher = cipher(key);
    let sealed = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .map_err(|_| std::io::Error::other("the entry is too large to encrypt"))?;
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens an envelope of the entry `kind`/`parts`.
///
/// # Errors
///
/// [`OpenError`]: truncated, not an envelope, unknown version, or the tag
/// does not verify (modified, moved, wrong key).
pub fn open(
    key: &DataKey,
    kind: Kind,
    parts: &[&str],
    bytes: &[u8],
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if bytes.len() < MAGIC.len() + 1 {
        return Err(OpenError::Truncated);
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(OpenError::NotEnvelope);
    }
    let version = bytes[MAGIC.len()];
    if version != VERSION {
        return Err(OpenError::Version(version));
    }
    if bytes.len() < OVERHEAD {
        return Err(OpenError::Truncated);
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&bytes[MAGIC.len() + 1..HEADER_LEN]);
    let mut buffer = Zeroizing::new(bytes[HEADER_LEN..].to_vec());
    let aad = aad(kind, parts);
    aes_gcm::aead::AeadInOut::decrypt_in_place(
        &cipher(key),
        &Nonce::from(nonce),
        &aad,
        &mut *buffer,
    )
    .map_err(|_| OpenError::Authentication)?;
    Ok(buffer)
}

fn cipher(key: &DataKey) -> Aes256Gcm {
    // A 32-byte key always fits AES-256; the key schedule is zeroized on
    // drop (feature `zeroize`).
    Aes256Gcm::new(&(*key.bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> DataKey {
        DataKey::from_bytes([b; 32])
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let k = key(7);
        let a = seal(&k, Kind::Token, &["anthropic", "default"], b"{\"a\":1}").unwrap();
        let b = seal(&k, Kind::Token, &["anthropic", "default"], b"{\"a\":1}").unwrap();
        assert_eq!(&a[..4], MAGIC);
        assert_eq!(a[4], VERSION);
        assert_eq!(a.len(), 7 + OVERHEAD);
        assert_ne!(a[5..17], b[5..17], "a new nonce for every write");
        assert_ne!(a, b);
        for sealed in [&a, &b] {
            let plain = open(&k, Kind::Token, &["anthropic", "default"], sealed).unwrap();
            assert_eq!(plain.as_slice(), b"{\"a\":1}");
        }
        assert!(
            !a.windows(5).any(|w| w == b"\"a\":1"),
            "no plaintext in the envelope"
        );
    }

    #[test]
    fn another_entry_kind_or_key_fails_authentication() {
        let k = key(7);
        let sealed = seal(&k, Kind::Token, &["anthropic", "default"], b"x").unwrap();
        for (kind, parts) in [
            (Kind::Token, ["anthropic", "work"]),
            (Kind::Token, ["codex", "default"]),
            (Kind::Meta, ["anthropic", "default"]),
            // Not confusable by moving the separator.
            (Kind::Token, ["anthropicd", "efault"]),
        ] {
            assert_eq!(
                open(&k, kind, &parts, &sealed).unwrap_err(),
                OpenError::Authentication,
                "{kind:?} {parts:?}"
            );
        }
        assert_eq!(
            open(&k, Kind::ApiKey, &["anthropic"], &sealed).unwrap_err(),
            OpenError::Authentication
        );
        assert_eq!(
            open(&key(8), Kind::Token, &["anthropic", "default"], &sealed).unwrap_err(),
            OpenError::Authentication,
            "wrong key"
        );
    }

    #[test]
    fn truncated_modified_and_foreign_files_are_refused() {
        let k = key(1);
        let parts = ["p", "b"];
        let sealed = seal(&k, Kind::Token, &parts, b"secret token bytes").unwrap();
        for len in 0..sealed.len() {
            let err = open(&k, Kind::Token, &parts, &sealed[..len]).unwrap_err();
            assert!(
                matches!(err, OpenError::Truncated | OpenError::Authentication),
                "length {len}: {err:?}"
            );
        }
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open(&k, Kind::Token, &parts, &bad).is_err(),
                "bit flip at {i}"
            );
        }
        assert_eq!(
            open(&k, Kind::Token, &parts, b"{\"access_token\":\"x\"}").unwrap_err(),
            OpenError::NotEnvelope
        );
        let mut v2 = sealed.clone();
        v2[4] = 2;
        assert_eq!(
            open(&k, Kind::Token, &parts, &v2).unwrap_err(),
            OpenError::Version(2)
        );
    }

    #[test]
    fn known_answer_pins_the_format() {
        // Fixed key and nonce: a change of layout or associated data
        // breaks this (and every store written before it).
        let sealed = seal_with_nonce(&key(0), Kind::ApiKey, &["K"], b"v", [9; 12]).unwrap();
        assert_eq!(
            &sealed[..17],
            b"CPXE\x01\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09"
        );
        assert_eq!(sealed.len(), 1 + OVERHEAD);
        let plain = open(&key(0), Kind::ApiKey, &["K"], &sealed).unwrap();
        assert_eq!(plain.as_slice(), b"v");
    }

    #[test]
    fn errors_name_no_content() {
        for e in [
            OpenError::Truncated,
            OpenError::NotEnvelope,
            OpenError::Version(3),
            OpenError::Authentication,
        ] {
            let shown = e.to_string();
            assert!(!shown.is_empty());
            assert!(!shown.contains("secret"));
        }
    }
}
