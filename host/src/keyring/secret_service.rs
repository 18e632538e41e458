//! Linux: the freedesktop Secret Service (GNOME Keyring, KWallet) on the
//! session bus, through keyring-core's zbus store.
//!
//! The store connects to `$DBUS_SESSION_BUS_ADDRESS` and opens an
//! encrypted (DH) session with `org.freedesktop.secrets` when it is made;
//! [`super::probe`] does the same with the secret-service crate under it
//! and also reads whether the default collection exists and is locked,
//! which the store does not expose. Items are found by the
//! attributes `service` and `username` only, in every collection, and new
//! items go to the default collection (normally `login`), so items written
//! by llxprt-code (same crates) and by credproxy are matched the same way.

use std::sync::Arc;

use keyring_core::CredentialStore;
use keyring_core::error::PlatformError;
use secret_service::blocking::SecretService;
use secret_service::{EncryptionType, Error as SsError};
use zbus::DBusError;

use super::error::{ErrorKind, KeyringError, from_core};
use super::probe::Readiness;

/// Connects to the Secret Service (blocking; the caller bounds the time).
pub(crate) fn open() -> Result<Arc<CredentialStore>, KeyringError> {
    match zbus_secret_service_keyring_store::Store::new() {
        Ok(store) => Ok(store),
        Err(e) => Err(from_core(e, "", "")),
    }
}

/// Connects (as [`open`] does: a DH session) and reads the state of the
/// default collection: no item is touched and nothing prompts.
pub(crate) fn readiness() -> Result<Readiness, KeyringError> {
    let to_error = |e: SsError| {
        let platform: PlatformError = Box::new(e);
        from_core(keyring_core::Error::PlatformFailure(platform), "", "")
    };
    let ss = SecretService::connect(EncryptionType::Dh).map_err(to_error)?;
    match ss.get_default_collection() {
        Ok(collection) => match collection.is_locked() {
            Ok(true) => Ok(Readiness::Locked),
            Ok(false) => Ok(Readiness::Unlocked),
            Err(e) => Err(to_error(e)),
        },
        Err(SsError::NoResult) => Ok(Readiness::NoDefaultCollection),
        Err(e) => Err(to_error(e)),
    }
}

/// The modifiers for a new item: its label (shown in Seahorse).
pub(crate) fn label_modifier(label: &str) -> Option<(&'static str, &str)> {
    Some(("label", label))
}

/// D-Bus error names meaning "nobody answers on the bus".
fn is_unreachable_name(name: &str) -> bool {
    matches!(
        name,
        "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner"
            | "org.freedesktop.DBus.Error.NoServer"
            | "org.freedesktop.DBus.Error.NoReply"
            | "org.freedesktop.DBus.Error.Disconnected"
            | "org.freedesktop.DBus.Error.TimedOut"
            | "org.freedesktop.DBus.Error.Timeout"
            // The Secret Service restarted since the session was opened:
            // a new connection opens a new one.
            | "org.freedesktop.Secret.Error.NoSession"
    ) || name.starts_with("org.freedesktop.DBus.Error.Spawn")
}

fn classify_name(name: &str) -> ErrorKind {
    if is_unreachable_name(name) {
        ErrorKind::Unavailable
    } else if name == "org.freedesktop.Secret.Error.IsLocked" {
        ErrorKind::Locked
    } else {
        ErrorKind::Other
    }
}

fn classify_zbus(err: &zbus::Error) -> ErrorKind {
    match err {
        zbus::Error::MethodError(name, _, _) => classify_name(name.as_str()),
        zbus::Error::FDO(fdo) => classify_name(fdo.name().as_str()),
        zbus::Error::Address(_)
        | zbus::Error::InputOutput(_)
        | zbus::Error::Connection(..)
        | zbus::Error::Handshake(_)
        | zbus::Error::InterfaceNotFound => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    }
}

/// Sorts a Secret Service error: nobody answering is `Unavailable`, a
/// locked item or a dismissed unlock prompt is `Locked`.
pub(crate) fn classify(err: &PlatformError) -> ErrorKind {
    let Some(err) = err.downcast_ref::<SsError>() else {
        return ErrorKind::Other;
    };
    match err {
        SsError::Locked | SsError::Prompt => ErrorKind::Locked,
        // "No result": the default-collection alias is unset, i.e. there is
        // no login keyring to write to yet.
        SsError::Unavailable | SsError::NoResult | SsError::PromptDisconnected => {
            ErrorKind::Unavailable
        }
        SsError::Zbus(e) => classify_zbus(e),
        SsError::ZbusFdo(e) => classify_name(e.name().as_str()),
        _ => ErrorKind::Other,
    }
}

/// Words for the Secret Service errors whose own text is cryptic.
pub(crate) fn describe(err: &PlatformError) -> Option<String> {
    let words = match err.downcast_ref::<SsError>()? {
        SsError::Prompt => "the unlock prompt was dismissed or could not be shown",
        SsError::Locked => "the item or its collection is locked",
        SsError::NoResult => "there is no default collection (no login keyring yet)",
        SsError::PromptDisconnected => "the connection closed before the unlock prompt completed",
        SsError::Unavailable => "no D-Bus session bus, or no Secret Service on it",
        _ => return None,
    };
    Some(words.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(err: SsError) -> ErrorKind {
        let platform: PlatformError = Box::new(err);
        classify(&platform)
    }

    #[test]
    fn secret_service_errors_sort_into_kinds() {
        assert_eq!(kind_of(SsError::Prompt), ErrorKind::Locked);
        assert_eq!(kind_of(SsError::Locked), ErrorKind::Locked);
        assert_eq!(kind_of(SsError::Unavailable), ErrorKind::Unavailable);
        assert_eq!(kind_of(SsError::NoResult), ErrorKind::Unavailable);
        let unknown = zbus::fdo::Error::ServiceUnknown("org.freedesktop.secrets".into());
        assert_eq!(
            kind_of(SsError::ZbusFdo(unknown.clone())),
            ErrorKind::Unavailable
        );
        let boxed = zbus::Error::FDO(Box::new(unknown));
        assert_eq!(kind_of(SsError::Zbus(boxed)), ErrorKind::Unavailable);
        // A restarted Secret Service no longer knows the session.
        assert_eq!(
            classify_name("org.freedesktop.Secret.Error.NoSession"),
            ErrorKind::Unavailable
        );
        let denied = zbus::fdo::Error::AccessDenied("no".into());
        assert_eq!(kind_of(SsError::ZbusFdo(denied)), ErrorKind::Other);
        assert_eq!(kind_of(SsError::Crypto("bad key")), ErrorKind::Other);
        let other: PlatformError = "not a Secret Service error".into();
        assert_eq!(classify(&other), ErrorKind::Other);
    }

    #[test]
    fn a_dismissed_prompt_reads_as_locked_with_plain_words() {
        let platform: PlatformError = Box::new(SsError::Prompt);
        let e = from_core(keyring_core::Error::NoStorageAccess(platform), "s", "a");
        assert_eq!(e.kind(), ErrorKind::Locked);
        assert!(e.to_string().contains("unlock prompt was dismissed"), "{e}");
    }
}
