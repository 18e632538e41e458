//! llxprt's `.enc` envelope: parsing, key derivation and decryption.
//!
//! One line of JSON, `{"v":1|2,"crypto":{"alg":"aes-256-gcm","kdf":"scrypt",
//! "N":16384,"r":8,"p":1,"saltLen":16},"data":"<base64>"}`, where `data` is
//! standard padded base64 of `salt[16] | iv[12] | tag[16] | ciphertext`.
//! key = scrypt(KDF input, salt, N=16384, r=8, p=1, 32 bytes); AES-256-GCM
//! with no associated data. Like llxprt, anything else is refused.
//!
//! The derived key and the plaintext live in [`Zeroizing`] buffers. No
//! error carries file content: only what kind of problem it is.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::Value;
use zeroize::Zeroizing;

const SALT_LEN: usize = 16;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = SALT_LEN + IV_LEN + TAG_LEN;
const KEY_LEN: usize = 32;
/// scrypt N = 16384 = 2^14.
const LOG_N: u8 = 14;
const R: u32 = 8;
const P: u32 = 1;

/// The envelope's format version, which decides the KDF input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `<service>-<machine_id>`.
    V1,
    /// `hex(machine_secret)|<service>|<machine_id>`.
    V2,
}

impl Version {
    /// 1 or 2, for reports.
    #[must_use]
    pub fn number(self) -> u8 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }
}

/// Why an envelope could not be opened. Never holds file content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not a JSON object at all (e.g. a truncated file).
    #[error("not an llxprt envelope (not JSON)")]
    NotJson,
    /// JSON, but without the envelope's fields or with wrong types.
    #[error("not an llxprt envelope (missing or malformed `{0}`)")]
    Malformed(&'static str),
    /// A `v` other than 1 and 2.
    #[error("unknown envelope version {0} (only 1 and 2 exist)")]
    UnknownVersion(String),
    /// A `crypto` description other than llxprt's only one.
    #[error("unsupported envelope crypto parameters (`{0}`)")]
    UnsupportedCrypto(&'static str),
    /// `data` is not standard padded base64.
    #[error("the envelope data is not base64")]
    BadBase64,
    /// `data` is shorter than salt, IV and tag.
    #[error("the envelope data is too short ({0} bytes, at least 44 needed)")]
    TooShort(usize),
    /// The GCM tag does not match: a wrong key input or a damaged file.
    #[error("decryption failed (authentication tag mismatch)")]
    TagMismatch,
}

/// A parsed envelope, not yet decrypted.
pub struct Envelope {
    version: Version,
    raw: Vec<u8>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("version", &self.version)
            .field("data_len", &self.raw.len())
            .finish()
    }
}

#[derive(Deserialize)]
struct Crypto {
    alg: Value,
    kdf: Value,
    #[serde(rename = "N")]
    n: Value,
    r: Value,
    p: Value,
    #[serde(rename = "saltLen")]
    salt_len: Value,
}

impl Envelope {
    /// Parses the bytes of an `.enc` file.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|_| EnvelopeError::NotJson)?;
        let Value::Object(map) = value else {
            return Err(EnvelopeError::Malformed("{}"));
        };
        let version = match map.get("v") {
            Some(v) if v.as_u64() == Some(1) => Version::V1,
            Some(v) if v.as_u64() == Some(2) => Version::V2,
            Some(v @ Value::Number(_)) => {
                return Err(EnvelopeError::UnknownVersion(v.to_string()));
            }
            _ => return Err(EnvelopeError::Malformed("v")),
        };
        let crypto: Crypto = map
            .get("crypto")
            .cloned()
            .and_then(|c| serde_json::from_value(c).ok())
            .ok_or(EnvelopeError::Malformed("crypto"))?;
        check_crypto(&crypto)?;
        let data = map
            .get("data")
            .and_then(Value::as_str)
            .ok_or(EnvelopeError::Malformed("data"))?;
        let raw = STANDARD
            .decode(data)
            .map_err(|_| EnvelopeError::BadBase64)?;
        if raw.len() < HEADER_LEN {
            return Err(EnvelopeError::TooShort(raw.len()));
        }
        Ok(Envelope { version, raw })
    }

    /// The format version.
    #[must_use]
    pub fn version(&self) -> Version {
        self.version
    }

    /// Derives the key from `kdf_input` and decrypts; [`EnvelopeError::TagMismatch`]
    /// when the input (or the file) is wrong.
    pub fn open(&self, kdf_input: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let (salt, rest) = self.raw.split_at(SALT_LEN);
        let (iv, rest) = rest.split_at(IV_LEN);
        let (tag, ciphertext) = rest.split_at(TAG_LEN);
        let key = derive_key(kdf_input, salt);
        let cipher =
            Aes256Gcm::new_from_slice(key.as_slice()).map_err(|_| EnvelopeError::TagMismatch)?;
        let nonce = Nonce::try_from(iv).map_err(|_| EnvelopeError::Malformed("data"))?;
        let tag = Tag::try_from(tag).map_err(|_| EnvelopeError::Malformed("data"))?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        cipher
            .decrypt_inout_detached(&nonce, b"", buffer.as_mut_slice().into(), &tag)
            .map_err(|_| EnvelopeError::TagMismatch)?;
        Ok(buffer)
    }
}

/// scrypt(N=16384, r=8, p=1) of `input` with `salt`, 32 bytes.
fn derive_key(input: &[u8], salt: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    // Fixed, valid parameters and a 32-byte output: neither call can fail.
    let params = scrypt::Params::new(LOG_N, R, P).expect("valid scrypt parameters");
    scrypt::scrypt(input, salt, &params, key.as_mut_slice()).expect("valid scrypt output length");
    key
}

fn check_crypto(c: &Crypto) -> Result<(), EnvelopeError> {
    let is_str = |v: &Value, want: &str| v.as_str() == Some(want);
    let is_num = |v: &Value, want: u64| v.as_u64() == Some(want);
    if !is_str(&c.alg, "aes-256-gcm") {
        return Err(EnvelopeError::UnsupportedCrypto("alg"));
    }
    if !is_str(&c.kdf, "scrypt") {
        return Err(EnvelopeError::UnsupportedCrypto("kdf"));
    }
    if !is_num(&c.n, 1 << LOG_N) {
        return Err(EnvelopeError::UnsupportedCrypto("N"));
    }
    if !is_num(&c.r, u64::from(R)) {
        return Err(EnvelopeError::UnsupportedCrypto("r"));
    }
    if !is_num(&c.p, u64::from(P)) {
        return Err(EnvelopeError::UnsupportedCrypto("p"));
    }
    if !is_num(&c.salt_len, SALT_LEN as u64) {
        return Err(EnvelopeError::UnsupportedCrypto("saltLen"));
    }
    Ok(())
}

/// Writes an envelope the way llxprt does, with the given salt and IV: for
/// tests (round trips and damaged files), never used to store anything.
#[cfg(test)]
pub(crate) fn seal(
    version: Version,
    kdf_input: &[u8],
    salt: [u8; 16],
    iv: [u8; 12],
    plaintext: &[u8],
) -> String {
    let key = derive_key(kdf_input, &salt);
    let cipher = Aes256Gcm::new_from_slice(key.as_slice()).expect("key");
    let mut buffer = plaintext.to_vec();
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(iv), b"", buffer.as_mut_slice().into())
        .expect("encrypt");
    let mut raw = salt.to_vec();
    raw.extend_from_slice(&iv);
    raw.extend_from_slice(&tag);
    raw.extend_from_slice(&buffer);
    serde_json::json!({
        "v": version.number(),
        "crypto": {"alg":"aes-256-gcm","kdf":"scrypt","N":16384,"r":8,"p":1,"saltLen":16},
        "data": STANDARD.encode(raw),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &[u8] =
        b"llxprt-code-oauth-015e9009e311c45df27517f810a69424ab6d72ac801d4d78e96e09dc4697c621";

    fn sealed() -> String {
        seal(
            Version::V1,
            INPUT,
            [7; 16],
            [9; 12],
            b"{\"access_token\":\"SECRET-A\"}",
        )
    }

    fn with(field: &str, value: Value) -> Vec<u8> {
        let mut v: Value = serde_json::from_str(&sealed()).unwrap();
        if let Some((outer, inner)) = field.split_once('.') {
            v[outer][inner] = value;
        } else {
            v[field] = value;
        }
        v.to_string().into_bytes()
    }

    #[test]
    fn round_trip_and_version() {
        let env = Envelope::parse(sealed().as_bytes()).unwrap();
        assert_eq!(env.version(), Version::V1);
        assert_eq!(
            env.open(INPUT).unwrap().as_slice(),
            b"{\"access_token\":\"SECRET-A\"}"
        );
    }

    #[test]
    fn wrong_input_is_a_tag_mismatch() {
        let env = Envelope::parse(sealed().as_bytes()).unwrap();
        assert_eq!(
            env.open(b"other input").unwrap_err(),
            EnvelopeError::TagMismatch
        );
    }

    #[test]
    fn flipped_tag_byte_is_a_tag_mismatch() {
        let v: Value = serde_json::from_str(&sealed()).unwrap();
        let mut raw = STANDARD.decode(v["data"].as_str().unwrap()).unwrap();
        raw[SALT_LEN + IV_LEN] ^= 0x01;
        let bytes = with("data", Value::String(STANDARD.encode(raw)));
        let env = Envelope::parse(&bytes).unwrap();
        assert_eq!(env.open(INPUT).unwrap_err(), EnvelopeError::TagMismatch);
    }

    #[test]
    fn parse_errors_name_the_problem() {
        let s = sealed();
        assert_eq!(
            Envelope::parse(&s.as_bytes()[..s.len() / 2]).unwrap_err(),
            EnvelopeError::NotJson
        );
        assert_eq!(
            Envelope::parse(b"[1]").unwrap_err(),
            EnvelopeError::Malformed("{}")
        );
        assert_eq!(
            Envelope::parse(&with("v", 3.into())).unwrap_err(),
            EnvelopeError::UnknownVersion("3".into())
        );
        assert_eq!(
            Envelope::parse(&with("v", "2".into())).unwrap_err(),
            EnvelopeError::Malformed("v")
        );
        assert_eq!(
            Envelope::parse(&with("crypto", Value::Null)).unwrap_err(),
            EnvelopeError::Malformed("crypto")
        );
        for (field, value, name) in [
            ("crypto.alg", Value::from("aes-128-gcm"), "alg"),
            ("crypto.kdf", Value::from("pbkdf2"), "kdf"),
            ("crypto.N", Value::from(1024), "N"),
            ("crypto.r", Value::from(16), "r"),
            ("crypto.p", Value::from(2), "p"),
            ("crypto.saltLen", Value::from(32), "saltLen"),
        ] {
            assert_eq!(
                Envelope::parse(&with(field, value)).unwrap_err(),
                EnvelopeError::UnsupportedCrypto(name),
                "{field}"
            );
        }
        assert_eq!(
            Envelope::parse(&with("data", 5.into())).unwrap_err(),
            EnvelopeError::Malformed("data")
        );
        assert_eq!(
            Envelope::parse(&with("data", "not base64!".into())).unwrap_err(),
            EnvelopeError::BadBase64
        );
        assert_eq!(
            Envelope::parse(&with("data", STANDARD.encode([0u8; 43]).into())).unwrap_err(),
            EnvelopeError::TooShort(43)
        );
    }

    #[test]
    fn errors_and_debug_hold_no_content() {
        let env = Envelope::parse(sealed().as_bytes()).unwrap();
        let shown = format!("{env:?} {}", env.open(b"x").unwrap_err());
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains(&STANDARD.encode([7u8; 16])[..8]), "{shown}");
    }
}

/// The files llxprt itself wrote (host/tests/fixtures/llxprt-store).
#[cfg(test)]
mod fixture_tests {
    use super::*;

    const ID: &str = "015e9009e311c45df27517f810a69424ab6d72ac801d4d78e96e09dc4697c621";
    const SECRET_HEX: &str = "6372656470726f78792d666978747572652d6d616368696e652d736563726574";

    #[test]
    fn llxprt_v1_file_opens_with_the_v1_input_only() {
        let bytes = include_bytes!("../../tests/fixtures/llxprt-store/v1/provider-keys/openai.enc");
        let env = Envelope::parse(bytes).unwrap();
        assert_eq!(env.version(), Version::V1);
        let v1 = format!("llxprt-code-provider-keys-{ID}");
        assert_eq!(
            env.open(v1.as_bytes()).unwrap().as_slice(),
            b"sk-fixture-openai-key-v1"
        );
        let v2 = format!("{SECRET_HEX}|llxprt-code-provider-keys|{ID}");
        assert_eq!(
            env.open(v2.as_bytes()).unwrap_err(),
            EnvelopeError::TagMismatch
        );
    }

    #[test]
    fn llxprt_v2_file_opens_with_the_v2_input_only() {
        let bytes = include_bytes!("../../tests/fixtures/llxprt-store/v2/provider-keys/openai.enc");
        let env = Envelope::parse(bytes).unwrap();
        assert_eq!(env.version(), Version::V2);
        let v2 = format!("{SECRET_HEX}|llxprt-code-provider-keys|{ID}");
        assert_eq!(
            env.open(v2.as_bytes()).unwrap().as_slice(),
            b"sk-fixture-openai-key-v2"
        );
        let v1 = format!("llxprt-code-provider-keys-{ID}");
        assert_eq!(
            env.open(v1.as_bytes()).unwrap_err(),
            EnvelopeError::TagMismatch
        );
    }

    #[test]
    fn llxprt_damaged_files_fail_as_llxprt_says() {
        let corrupt = include_bytes!(
            "../../tests/fixtures/llxprt-store/broken/secure-store/llxprt-code-oauth/anthropic%3Acorrupt.enc"
        );
        assert_eq!(
            Envelope::parse(corrupt).unwrap_err(),
            EnvelopeError::NotJson
        );
        let wrongtag = include_bytes!(
            "../../tests/fixtures/llxprt-store/broken/secure-store/llxprt-code-oauth/anthropic%3Awrongtag.enc"
        );
        let env = Envelope::parse(wrongtag).unwrap();
        let v2 = format!("{SECRET_HEX}|llxprt-code-oauth|{ID}");
        assert_eq!(
            env.open(v2.as_bytes()).unwrap_err(),
            EnvelopeError::TagMismatch
        );
    }
}
