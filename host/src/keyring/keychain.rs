//! macOS: the login Keychain (generic passwords), through keyring-core's
//! Apple store. Not built or tested by this project's (Linux) CI.

use std::sync::Arc;

use keyring_core::CredentialStore;

use super::error::KeyringError;

/// The user's default keychain.
pub(crate) fn open() -> Result<Arc<CredentialStore>, KeyringError> {
    match apple_native_keyring_store::keychain::Store::new() {
        Ok(store) => Ok(store),
        Err(e) => Err(KeyringError::Unavailable(format!("Keychain: {e}"))),
    }
}

/// The Keychain store takes no label: items show the service name.
pub(crate) fn label_modifier(_label: &str) -> Option<(&'static str, &str)> {
    None
}
