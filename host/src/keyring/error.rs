//! The keyring's one error type: what went wrong, in four kinds a caller
//! can act on, with a message that never holds a secret.
//!
//! Platform errors arrive as `keyring_core::Error`; [`from_core`] sorts
//! them. Variants of that enum that carry the secret's bytes
//! (`BadEncoding`, `BadDataFormat`) are wiped here, never formatted.

use keyring_core::Error as CoreError;
use keyring_core::error::PlatformError;
use zeroize::Zeroizing;

/// A failed keyring operation. The message names the service and account
/// where it helps, and the platform's reason; never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// No OS keyring answers: no D-Bus session, no Secret Service on it,
    /// no answer within the time limit, or no collection to write to.
    #[error("no OS keyring is available: {0}")]
    Unavailable(String),
    /// The keyring answers but is locked and was not unlocked (a prompt was
    /// dismissed or could not be shown).
    #[error(
        "the OS keyring is locked: {0}; unlock it (log in to the desktop session, or \
         `gnome-keyring-daemon --unlock` with its password on stdin) and retry"
    )]
    Locked(String),
    /// No entry for this service and account.
    #[error("no keyring entry for service {service:?}, account {account:?}")]
    NotFound {
        /// The service asked for.
        service: String,
        /// The account asked for.
        account: String,
    },
    /// Anything else: a refused value, an ambiguous match, a platform failure.
    #[error("OS keyring error: {0}")]
    Other(String),
}

/// The kind of a [`KeyringError`], for callers that branch on it (and for
/// status output): `unavailable`, `locked`, `not-found`, `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// [`KeyringError::Unavailable`].
    Unavailable,
    /// [`KeyringError::Locked`].
    Locked,
    /// [`KeyringError::NotFound`].
    NotFound,
    /// [`KeyringError::Other`].
    Other,
}

impl ErrorKind {
    /// The kind's name: `unavailable`, `locked`, `not-found` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Locked => "locked",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Other => "other",
        }
    }
}

impl KeyringError {
    /// This error's kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            KeyringError::Unavailable(_) => ErrorKind::Unavailable,
            KeyringError::Locked(_) => ErrorKind::Locked,
            KeyringError::NotFound { .. } => ErrorKind::NotFound,
            KeyringError::Other(_) => ErrorKind::Other,
        }
    }

    pub(crate) fn not_found(service: &str, account: &str) -> Self {
        KeyringError::NotFound {
            service: service.to_owned(),
            account: account.to_owned(),
        }
    }
}

/// How a platform error reads to a caller, and in what words; decided per
/// platform.
fn classify_platform(err: &PlatformError) -> (ErrorKind, String) {
    #[cfg(target_os = "linux")]
    {
        let kind = super::secret_service::classify(err);
        let words = super::secret_service::describe(err).unwrap_or_else(|| err.to_string());
        (kind, format!("Secret Service: {words}"))
    }
    #[cfg(not(target_os = "linux"))]
    {
        (ErrorKind::Other, err.to_string())
    }
}

fn from_platform(err: &PlatformError, fallback: ErrorKind) -> KeyringError {
    let (kind, message) = classify_platform(err);
    match kind {
        ErrorKind::Unavailable => KeyringError::Unavailable(message),
        ErrorKind::Locked => KeyringError::Locked(message),
        _ if fallback == ErrorKind::Locked => KeyringError::Locked(message),
        _ => KeyringError::Other(message),
    }
}

/// Sorts a keyring-core error for the entry (`service`, `account`).
pub(crate) fn from_core(err: CoreError, service: &str, account: &str) -> KeyringError {
    match err {
        CoreError::NoEntry => KeyringError::not_found(service, account),
        // keyring-core's "could not access the storage" is a locked or
        // refusing store unless the platform error says otherwise.
        CoreError::NoStorageAccess(e) => from_platform(&e, ErrorKind::Locked),
        CoreError::PlatformFailure(e) => from_platform(&e, ErrorKind::Other),
        CoreError::BadEncoding(bytes) => {
            drop(Zeroizing::new(bytes));
            KeyringError::Other(format!(
                "the entry for service {service:?}, account {account:?} is not UTF-8 text"
            ))
        }
        CoreError::BadDataFormat(bytes, _) => {
            drop(Zeroizing::new(bytes));
            KeyringError::Other(format!(
                "the entry for service {service:?}, account {account:?} is malformed"
            ))
        }
        CoreError::Ambiguous(entries) => KeyringError::Other(format!(
            "{} keyring entries match service {service:?}, account {account:?}; \
             remove the extra ones (e.g. in Seahorse)",
            entries.len()
        )),
        CoreError::TooLong(what, limit) => KeyringError::Other(format!(
            "{what} is longer than the keyring's limit of {limit}"
        )),
        CoreError::Invalid(what, why) => KeyringError::Other(format!("{what} is invalid: {why}")),
        CoreError::BadStoreFormat(why) => {
            KeyringError::Other(format!("the keyring's data is malformed: {why}"))
        }
        CoreError::NotSupportedByStore(why) => KeyringError::Other(format!("unsupported: {why}")),
        CoreError::NoDefaultStore => KeyringError::Other("no keyring store is configured".into()),
        // The enum is non-exhaustive; a new variant might carry data, so
        // only its existence is reported.
        _ => KeyringError::Other("unexpected keyring error".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_entry_is_not_found_for_that_entry() {
        let e = from_core(CoreError::NoEntry, "svc", "acct");
        assert_eq!(e, KeyringError::not_found("svc", "acct"));
        assert_eq!(e.kind().as_str(), "not-found");
        assert!(e.to_string().contains("\"svc\"") && e.to_string().contains("\"acct\""));
    }

    #[test]
    fn errors_carrying_the_secret_never_show_it() {
        let secret = b"bad-encoding-secret\xff".to_vec();
        let platform: PlatformError = "platform detail".into();
        for err in [
            CoreError::BadEncoding(secret.clone()),
            CoreError::BadDataFormat(secret.clone(), platform),
        ] {
            let e = from_core(err, "svc", "acct");
            assert_eq!(e.kind(), ErrorKind::Other);
            for text in [e.to_string(), format!("{e:?}")] {
                assert!(!text.contains("bad-encoding-secret"), "{text}");
            }
        }
    }

    #[test]
    fn storage_access_refused_is_locked_unless_the_platform_says_otherwise() {
        let platform: PlatformError = "refused".into();
        let e = from_core(CoreError::NoStorageAccess(platform), "svc", "acct");
        assert_eq!(e.kind(), ErrorKind::Locked);
        let platform: PlatformError = "broken".into();
        let e = from_core(CoreError::PlatformFailure(platform), "svc", "acct");
        assert_eq!(e.kind(), ErrorKind::Other);
    }
}
