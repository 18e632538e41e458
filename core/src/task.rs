//! Work that waits for effects.
//!
//! A request that needs the store becomes a [`Task`]: the operation's state
//! plus where to send the answer. Cancelling or losing the connection clears
//! `reply` (the task is detached): pure reads are then dropped, while writes
//! run to completion so nothing half-done is left behind.
//!
//! The state of every kind of work lives here, data only (the steps that
//! move it are in `work`, `login`, `persist` and `refresh`), so the task
//! table can hold it without depending on the engine.

use crate::audit::ConnId;
use crate::keylock::Key;
use crate::op::Op;
use crate::reply::Failure;
use crate::secret::Secret;
use crate::token::Token;

/// Identifies a task inside one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TaskId(pub(crate) u64);

/// Where a task's answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplyTo {
    pub(crate) conn: ConnId,
    pub(crate) id: String,
}

/// Progress of a write that holds its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteStep {
    /// Waiting for the key's write lock.
    Queued,
    /// Waiting for the key's cross-process store lock.
    Locking,
    /// Reading the stored value fresh.
    Reading,
    /// Writing (or deleting).
    Writing,
}

/// The state of an operation between effects.
#[derive(Debug)]
pub(crate) enum Work {
    GetToken {
        key: Key,
        sandbox: bool,
    },
    BucketStats {
        key: Key,
    },
    SaveToken {
        key: Key,
        incoming: Token,
        step: WriteStep,
    },
    RemoveToken {
        key: Key,
        step: WriteStep,
    },
    ListProviders,
    ListBuckets {
        provider: String,
    },
    GetApiKey {
        name: String,
        sandbox: bool,
    },
    ListApiKeys,
    HasApiKey {
        name: String,
    },
    /// An OAuth session's I/O: initiation, exchange, polling, storing.
    Login(LoginWork),
    /// The checks of a `refresh_token` request before it joins a refresh.
    RefreshCheck(RefreshCheck),
    /// A request waiting for the refresh job of its key.
    AwaitRefresh {
        key: Key,
    },
    /// The refresh of one key (shared by every caller; background).
    Refresh(Box<RefreshJob>),
    /// Retrying the write of an authoritative token (background).
    WriteBack {
        key: Key,
    },
}

impl Work {
    /// Whether the work changes stored state, and so must finish even when
    /// nobody waits for its answer.
    pub(crate) fn has_side_effects(&self) -> bool {
        matches!(
            self,
            Work::SaveToken { .. }
                | Work::RemoveToken { .. }
                | Work::Login(_)
                | Work::Refresh(_)
                | Work::WriteBack { .. }
        )
    }

    /// The key the work writes under the engine's write lock, if any.
    pub(crate) fn write_key(&self) -> Option<&Key> {
        match self {
            Work::SaveToken { key, .. } | Work::RemoveToken { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// A request waiting for effects.
#[derive(Debug)]
pub(crate) struct Task {
    pub(crate) op: Op,
    pub(crate) reply: Option<ReplyTo>,
    pub(crate) work: Work,
    /// The key whose engine write lock this task holds.
    pub(crate) holds: Option<Key>,
}

/// Where a session's task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginStage {
    /// Waiting for the provider's OIDC discovery.
    Discovering,
    /// Device authorization request in flight.
    DeviceAuthorizing,
    /// Waiting for the loopback listener to start.
    StartingListener,
    /// Code exchange in flight.
    Exchanging,
    /// Device token poll in flight.
    Polling,
    /// Codex device dialect: exchange of the code the poll returned.
    CodexExchanging,
    /// Storing: waiting for the key's engine write lock.
    EngineLock,
    /// Storing: waiting for the key's cross-process lock.
    StoreLock,
    /// Storing (sandbox): reading the credential a login would replace.
    CheckExisting,
    /// Storing (sandbox): whether that credential's refresh token is dead.
    CheckMeta,
    /// Storing: writing the token.
    Put,
    /// Storing: clearing the unusable-refresh mark.
    ClearMeta,
}

/// The task state of a login.
#[derive(Debug)]
pub(crate) struct LoginWork {
    pub(crate) sid: String,
    pub(crate) stage: LoginStage,
    /// The token obtained, while it is being stored.
    pub(crate) token: Option<Token>,
    /// Codex device dialect: the server-generated verifier.
    pub(crate) codex_verifier: Option<Secret>,
    /// The key being written, once storing starts.
    pub(crate) key: Option<Key>,
    /// Whether the login came from a sandbox connection.
    pub(crate) sandbox: bool,
}

impl LoginWork {
    pub(crate) fn new(sid: &str, stage: LoginStage) -> LoginWork {
        LoginWork {
            sid: sid.to_owned(),
            stage,
            token: None,
            codex_verifier: None,
            key: None,
            sandbox: false,
        }
    }
}

/// Where a `refresh_token` request is before it joins a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckStage {
    /// Reading the stored token.
    Read,
    /// Reading the key's metadata.
    Meta,
    /// Re-reading the token fresh during the cooldown (see `cooldown`).
    Reread,
}

/// A `refresh_token` request's checks.
#[derive(Debug)]
pub(crate) struct RefreshCheck {
    pub(crate) key: Key,
    pub(crate) stage: CheckStage,
    pub(crate) token: Option<Token>,
}

/// Where a refresh job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobStage {
    EngineLock,
    StoreLock,
    ReadFresh,
    Meta,
    Discovering,
    Calling,
    Backoff,
    Reread,
    Writing,
    MarkUnusable,
}

/// One refresh of one key.
#[derive(Debug)]
pub(crate) struct RefreshJob {
    pub(crate) key: Key,
    pub(crate) stage: JobStage,
    /// Digest of the access token the caller saw (to detect a refresh by
    /// someone else).
    pub(crate) seen: Option<[u8; 32]>,
    pub(crate) current: Option<Token>,
    pub(crate) merged: Option<Token>,
    pub(crate) failure: Option<Failure>,
    pub(crate) attempts: u8,
    pub(crate) reread: bool,
    pub(crate) renewal: bool,
    pub(crate) logout: bool,
    pub(crate) store_locked: bool,
}
