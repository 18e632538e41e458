//! Work that waits for effects.
//!
//! A request that needs the store becomes a [`Task`]: the operation's state
//! plus where to send the answer. Cancelling or losing the connection clears
//! `reply` (the task is detached): pure reads are then dropped, while writes
//! run to completion so nothing half-done is left behind.

use crate::audit::ConnId;
use crate::keylock::Key;
use crate::login::LoginWork;
use crate::op::Op;
use crate::refresh::{RefreshCheck, RefreshJob};
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
