//! Instance directory names: `<pid>-<22-char base64url nonce>`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::UnixError;

/// Random bytes in an instance nonce (22 base64url characters).
const NONCE_BYTES: usize = 16;
/// Length of the encoded nonce.
const NONCE_CHARS: usize = 22;
/// Most digits a pid can have (u32).
const MAX_PID_DIGITS: usize = 10;

/// A fresh instance directory name for process `pid`: the pid, a dash, and
/// 16 bytes from the OS random generator as unpadded base64url.
pub(crate) fn new_instance_name(pid: u32) -> Result<String, UnixError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|error| UnixError::Random { error })?;
    Ok(format!("{pid}-{}", URL_SAFE_NO_PAD.encode(nonce)))
}

/// Whether `name` has the shape of an instance directory name:
/// `<digits>-<22 base64url characters>`.
///
/// Stale-instance cleanup touches only directories whose names pass this
/// check, so unrelated entries in the base directory are never considered.
#[must_use]
pub fn is_instance_dir_name(name: &str) -> bool {
    let Some((pid, nonce)) = name.split_once('-') else {
        return false;
    };
    !pid.is_empty()
        && pid.len() <= MAX_PID_DIGITS
        && pid.bytes().all(|b| b.is_ascii_digit())
        && nonce.len() == NONCE_CHARS
        && nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_names_have_the_documented_shape() {
        let a = new_instance_name(4242).expect("name");
        let b = new_instance_name(4242).expect("name");
        assert!(a.starts_with("4242-"), "{a}");
        assert_eq!(a.len(), "4242-".len() + NONCE_CHARS);
        assert!(is_instance_dir_name(&a), "{a}");
        assert_ne!(a, b, "nonces must differ");
    }

    #[test]
    fn other_names_are_rejected() {
        assert!(is_instance_dir_name("1-AAAAAAAAAAAAAAAAAAAA-_"));
        for name in [
            "",
            "1234",
            "-AAAAAAAAAAAAAAAAAAAAAA",
            "12a-AAAAAAAAAAAAAAAAAAAAAA",
            "12-AAAAAAAAAAAAAAAAAAAAA",
            "12-AAAAAAAAAAAAAAAAAAAAAAA",
            "12-AAAAAAAAAAAAAAAAAAAA+A",
            "12-AAAAAAAAAAAAAAAAAAAA/A",
            "12345678901-AAAAAAAAAAAAAAAAAAAAAA",
            "credproxy",
            "..",
        ] {
            assert!(!is_instance_dir_name(name), "{name:?} accepted");
        }
    }
}
