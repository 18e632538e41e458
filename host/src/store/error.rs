//! The store's error type.
//!
//! Every message is written for the person running credproxy: it names the
//! path and, where the fix is mechanical, the exact command. No variant has a
//! field that could hold a token or an API key, and JSON parse errors are
//! reduced to their position because serde's messages may quote the input.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What a rejected name was meant to be, so the message says which argument
/// was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// An OAuth provider name (`provider:bucket` key, first half).
    Provider,
    /// A bucket name (`provider:bucket` key, second half).
    Bucket,
    /// The name of a stored API key.
    ApiKey,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Provider => "provider",
            NameKind::Bucket => "bucket",
            NameKind::ApiKey => "API key",
        })
    }
}

/// Why a store operation failed. `Display` never contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Neither `$XDG_DATA_HOME` nor `$HOME` gives an absolute path, so there
    /// is no safe default location.
    #[error(
        "cannot locate the credential store: neither XDG_DATA_HOME nor HOME is an absolute path; \
         set one of them"
    )]
    NoDataDir,

    /// A provider, bucket or API key name outside the allowed alphabet or
    /// length. `shown` is the name, escaped and truncated.
    #[error("invalid {kind} name {shown}: {reason}")]
    InvalidName {
        /// Which kind of name was rejected.
        kind: NameKind,
        /// The rejected name, `Debug`-escaped and truncated for display.
        shown: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A store directory or file is not private to us (symlink, wrong type,
    /// wrong owner, group/other permission bits). Refused, with the fix.
    #[error("{what} {path} {problem}; fix with {fix}")]
    Insecure {
        /// "store directory" or "store file".
        what: &'static str,
        /// The offending path.
        path: PathBuf,
        /// What is wrong, e.g. "is group-writable (mode 0770)".
        problem: String,
        /// The command that fixes it, e.g. "chmod 700 /x/credproxy".
        fix: String,
    },

    /// A stored file does not parse. Only its path and the position of the
    /// problem are reported, never its content.
    #[error("store file {path} is corrupt ({detail}); remove it or restore it from a backup")]
    Corrupt {
        /// The unreadable file.
        path: PathBuf,
        /// Position or kind of the problem, free of file content.
        detail: String,
    },

    /// The data key of an encrypted store is missing, unusable or not the
    /// store's, or the backend does not fit the store on disk. The detail
    /// names paths and fixes, never key material.
    #[error("{detail}")]
    Key {
        /// What is wrong and how to fix it.
        detail: String,
    },

    /// The OS keyring (the `keyring` backend) refused or did not answer:
    /// unavailable, locked, or another failure. Nothing was lost: a
    /// failed write left the previous entry in place.
    #[error("cannot {op} the keyring item (service credproxy, account {account}): {cause}")]
    Keyring {
        /// What we were doing: "read", "store", "remove".
        op: &'static str,
        /// The item's account (`<provider>/<bucket>`, `key/<name>`).
        account: String,
        /// The keyring's error (its message never holds a secret).
        cause: crate::keyring::KeyringError,
    },

    /// The OS keyring of the `keyring` backend cannot be reached (not
    /// started yet, gone away, or no answer within the time limit): a
    /// temporary state, the proxy connects again with back-off;
    /// `retry_after` is when the next attempt is due. Nothing was lost: a
    /// failed write left the previous entry in place.
    #[error(
        "cannot {op} the keyring item (service credproxy, account {account}): {cause} \
         (retry in {} s)",
        retry_after.as_secs()
    )]
    KeyringUnavailable {
        /// What we were doing: "read", "store", "remove".
        op: &'static str,
        /// The item's account (`<provider>/<bucket>`, `key/<name>`).
        account: String,
        /// Why the keyring cannot be reached (never holds a secret).
        cause: crate::keyring::KeyringError,
        /// How long until the next connection attempt.
        retry_after: std::time::Duration,
    },

    /// The PostgreSQL store could not be reached or refused a statement
    /// (`postgres` backend). The detail is the server's message and SQLSTATE
    /// or the connection error; statements carry secrets only as sealed
    /// parameters, which no error message quotes.
    #[error("PostgreSQL store: cannot {op}: {detail}")]
    Database {
        /// What we were doing, e.g. "connect", "read token".
        op: &'static str,
        /// The error, free of parameter values.
        detail: String,
    },

    /// A PostgreSQL row failed its check (authentication of the sealed
    /// value, or a version older than one already seen): it was modified,
    /// swapped with another row or rolled back. Never served.
    #[error("PostgreSQL store: {what} {provider}:{bucket} refused: {detail}")]
    RowRefused {
        /// "token", "metadata".
        what: &'static str,
        /// The row's provider.
        provider: String,
        /// The row's bucket.
        bucket: String,
        /// Why, free of content.
        detail: String,
    },

    /// The PostgreSQL store cannot be reached (connect failed, the
    /// connection broke, or a statement timed out): a temporary state, the
    /// proxy reconnects with back-off; `retry_after` is when the next
    /// attempt is due. Nothing was written by the failed operation, or it
    /// committed and will be seen by the next read (never written twice:
    /// writes are compare-and-set on the row version).
    #[error("PostgreSQL store unavailable: cannot {op}: {detail}")]
    Unavailable {
        /// What we were doing, e.g. "connect", "read a token".
        op: &'static str,
        /// The error, free of parameter values.
        detail: String,
        /// How long until the next connection attempt.
        retry_after: std::time::Duration,
    },

    /// A compare-and-set write was refused: the row changed since this
    /// store read it (another proxy wrote it, or this proxy's lease was
    /// taken over). Nothing was written; re-read and merge.
    #[error("store entry {provider}:{bucket} changed since it was read; nothing was written")]
    Stale {
        /// The row's provider.
        provider: String,
        /// The row's bucket.
        bucket: String,
    },

    /// An operating-system error on a store path.
    #[error("cannot {op} {path}: {cause}")]
    Io {
        /// What we were doing, e.g. "read", "rename", "fsync".
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error (its message never includes file content).
        cause: io::Error,
    },
}

impl StoreError {
    /// Shorthand for an [`StoreError::Io`] on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> StoreError {
        StoreError::Io {
            op,
            path: path.into(),
            cause,
        }
    }

    /// A parse failure of `path`, keeping only serde's position and category
    /// (its message text can quote the file).
    pub(crate) fn corrupt_json(path: impl Into<PathBuf>, err: &serde_json::Error) -> StoreError {
        let what = match err.classify() {
            serde_json::error::Category::Io => "I/O error while parsing",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "unexpected JSON structure",
            serde_json::error::Category::Eof => "truncated JSON",
        };
        StoreError::Corrupt {
            path: path.into(),
            detail: format!("{what} at line {} column {}", err.line(), err.column()),
        }
    }
}
