//! The KDF input of llxprt's envelopes: who and where wrote the file.
//!
//! ```text
//! machine_id = lowercase hex SHA-256(UTF-8(hostname + username))
//! v1: <service> + "-" + machine_id
//! v2: hex(machine_secret) + "|" + <service> + "|" + machine_id
//! ```
//!
//! llxprt under Bun takes the user name from `$USER` (verbatim, `unknown`
//! when unset), Node from the passwd entry: the importer tries each
//! candidate and the GCM tag tells which was right.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::envelope::Version;

/// Largest machine secret file read (its base64 is 44 bytes).
const MAX_SECRET_FILE: u64 = 4096;

/// llxprt's 32-byte v2 machine secret. `Debug` is redacted.
pub struct MachineSecret(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MachineSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MachineSecret([redacted])")
    }
}

/// Why the machine secret could not be used. Never holds its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No `<data>/machine_secret` (llxprt may keep it in the OS keyring).
    #[error(
        "a v2 envelope needs llxprt's machine secret, and {0} does not exist (llxprt may keep \
         it in the OS keyring, which was not read or holds none)"
    )]
    Missing(String),
    /// The file could not be read.
    #[error("cannot read the machine secret {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// Not base64 of exactly 32 bytes.
    #[error("the machine secret {0} is not base64 of exactly 32 bytes")]
    Invalid(String),
}

impl MachineSecret {
    /// From the base64 text llxprt writes (no newline; surrounding white
    /// space is tolerated).
    pub fn from_base64(text: &[u8], shown_path: &str) -> Result<MachineSecret, SecretError> {
        let text = text.trim_ascii();
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text)
                .map_err(|_| SecretError::Invalid(shown_path.to_owned()))?,
        );
        let bytes: [u8; 32] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| SecretError::Invalid(shown_path.to_owned()))?;
        Ok(MachineSecret(Zeroizing::new(bytes)))
    }

    /// Reads `<data>/machine_secret`.
    pub fn load(path: &Path) -> Result<MachineSecret, SecretError> {
        let shown = path.display().to_string();
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretError::Missing(shown));
            }
            Err(e) => {
                return Err(SecretError::Unreadable {
                    path: shown,
                    reason: e.to_string(),
                });
            }
        };
        let mut text = Zeroizing::new(Vec::new());
        file.take(MAX_SECRET_FILE)
            .read_to_end(&mut text)
            .map_err(|e| SecretError::Unreadable {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        MachineSecret::from_base64(&text, &shown)
    }

    fn hex(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(64));
        for b in self.0.iter() {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

/// `machine_id`: lowercase hex SHA-256 of hostname + username.
#[must_use]
pub fn machine_id(hostname: &str, username: &str) -> String {
    let digest = Sha256::new()
        .chain_update(hostname.as_bytes())
        .chain_update(username.as_bytes())
        .finalize();
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The KDF input for an envelope of `version` of `service`; `None` for v2
/// without a machine secret.
#[must_use]
pub fn kdf_input(
    version: Version,
    service: &str,
    machine_id: &str,
    secret: Option<&MachineSecret>,
) -> Option<Zeroizing<String>> {
    match version {
        Version::V1 => Some(Zeroizing::new(format!("{service}-{machine_id}"))),
        Version::V2 => {
            let hex = secret?.hex();
            let mut out = Zeroizing::new(String::with_capacity(hex.len() + 2 + 64 + service.len()));
            out.push_str(&hex);
            out.push('|');
            out.push_str(service);
            out.push('|');
            out.push_str(machine_id);
            Some(out)
        }
    }
}

/// The user names to try, in order, without repeats: `--user` alone when
/// given; else `$USER` (Bun's choice, `unknown` when unset), the passwd
/// name of the euid (Node's choice) and `unknown`.
#[must_use]
pub fn user_candidates(
    given: Option<&str>,
    env_user: Option<&str>,
    passwd_name: Option<&str>,
) -> Vec<String> {
    if let Some(u) = given {
        return vec![u.to_owned()];
    }
    let mut out: Vec<String> = Vec::new();
    for name in [env_user, passwd_name, Some("unknown")]
        .into_iter()
        .flatten()
    {
        if !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
    }
    out
}

/// The passwd name of this process's effective user, if it has one.
#[must_use]
pub fn passwd_name() -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// The system's host name (what Node's `os.hostname()` returns).
pub fn system_hostname() -> Result<String, String> {
    nix::unistd::gethostname()
        .map_err(|e| format!("cannot read the host name: {e}; give it with --hostname"))?
        .into_string()
        .map_err(|_| "the host name is not UTF-8; give it with --hostname".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE_ID: &str = "015e9009e311c45df27517f810a69424ab6d72ac801d4d78e96e09dc4697c621";
    const FIXTURE_SECRET_B64: &[u8] = b"Y3JlZHByb3h5LWZpeHR1cmUtbWFjaGluZS1zZWNyZXQ=";

    #[test]
    fn machine_id_is_sha256_of_hostname_and_user_without_separator() {
        assert_eq!(machine_id("fixture-host", "fixture-user"), FIXTURE_ID);
        assert_eq!(machine_id("fixture-hos", "tfixture-user"), FIXTURE_ID);
    }

    #[test]
    fn v1_and_v2_inputs_differ_as_llxprt_writes_them() {
        let secret = MachineSecret::from_base64(FIXTURE_SECRET_B64, "s").unwrap();
        let v1 = kdf_input(Version::V1, "llxprt-code-oauth", FIXTURE_ID, Some(&secret)).unwrap();
        assert_eq!(v1.as_str(), format!("llxprt-code-oauth-{FIXTURE_ID}"));
        let v2 = kdf_input(
            Version::V2,
            "llxprt-code-provider-keys",
            FIXTURE_ID,
            Some(&secret),
        )
        .unwrap();
        assert_eq!(
            v2.as_str(),
            format!(
                "6372656470726f78792d666978747572652d6d616368696e652d736563726574|\
                 llxprt-code-provider-keys|{FIXTURE_ID}"
            )
        );
        assert!(kdf_input(Version::V2, "s", FIXTURE_ID, None).is_none());
        assert!(kdf_input(Version::V1, "s", FIXTURE_ID, None).is_some());
    }

    #[test]
    fn machine_secret_must_be_base64_of_exactly_32_bytes() {
        assert!(
            MachineSecret::from_base64(b"Y3JlZHByb3h5LWZpeHR1cmUtbWFjaGluZS1zZWNyZXQ=\n", "s")
                .is_ok()
        );
        assert_eq!(
            MachineSecret::from_base64(b"c2hvcnQ=", "f").unwrap_err(),
            SecretError::Invalid("f".into())
        );
        assert_eq!(
            MachineSecret::from_base64(b"!!!", "f").unwrap_err(),
            SecretError::Invalid("f".into())
        );
        let s = MachineSecret::from_base64(FIXTURE_SECRET_B64, "s").unwrap();
        assert_eq!(format!("{s:?}"), "MachineSecret([redacted])");
    }

    #[test]
    fn machine_secret_file_missing_or_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine_secret");
        assert!(matches!(
            MachineSecret::load(&path),
            Err(SecretError::Missing(_))
        ));
        std::fs::write(&path, FIXTURE_SECRET_B64).unwrap();
        assert!(MachineSecret::load(&path).is_ok());
        std::fs::create_dir(dir.path().join("d")).unwrap();
        assert!(matches!(
            MachineSecret::load(&dir.path().join("d")),
            Err(SecretError::Unreadable { .. })
        ));
    }

    #[test]
    fn user_candidates_in_bun_node_order_without_repeats() {
        assert_eq!(user_candidates(Some("u"), Some("e"), Some("p")), ["u"]);
        assert_eq!(
            user_candidates(None, Some("e"), Some("p")),
            ["e", "p", "unknown"]
        );
        assert_eq!(
            user_candidates(None, Some("p"), Some("p")),
            ["p", "unknown"]
        );
        assert_eq!(user_candidates(None, None, Some("p")), ["p", "unknown"]);
        assert_eq!(user_candidates(None, Some(""), None), ["", "unknown"]);
    }
}
