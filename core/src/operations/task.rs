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

use crate::engine::audit::ConnId;
use crate::operations::op::Op;
use crate::tokens::token::Token;
use crate::wire::reply::Failure;
use crate::writes::keylock::Key;
use crate::writes::write_lock::{LockedWrite, WriteLock};

/// Identifies a task inside one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TaskId(pub(crate) u64);

/// Where a task's answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplyTo {
    pub(crate) conn: ConnId,
    pub(crate) id: String,
}

/// Where a `save_token` is while it holds its key's locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SaveStage {
    /// Reading the stored value fresh.
    Reading,
    /// Writing the merged token.
    Writing,
}

/// Where a `remove_token` is while it holds its key's locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemoveStage {
    /// Deleting the stored token.
    Deleting,
    /// The store refused the delete (another process wrote the key):
    /// reading it fresh before deleting again.
    Rereading,
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
        write: LockedWrite<SaveStage>,
        incoming: Token,
    },
    RemoveToken {
        write: LockedWrite<RemoveStage>,
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

    /// The write under its key's locks the work does, if any (see
    /// `locked_write`).
    pub(crate) fn write_lock(&self) -> Option<&dyn WriteLock> {
        match self {
            Work::SaveToken { write, .. } => Some(write),
            Work::RemoveToken { write } => Some(write),
            Work::Login(LoginWork {
                stage: LoginStage::Storing(s),
                ..
            }) => Some(&s.write),
            Work::Refresh(job) => Some(&job.write),
            _ => None,
        }
    }

    /// [`Work::write_lock`], to move it along.
    pub(crate) fn write_lock_mut(&mut self) -> Option<&mut dyn WriteLock> {
        match self {
            Work::SaveToken { write, .. } => Some(write),
            Work::RemoveToken { write } => Some(write),
            Work::Login(LoginWork {
                stage: LoginStage::Storing(s),
                ..
            }) => Some(&mut s.write),
            Work::Refresh(job) => Some(&mut job.write),
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
}

/// Where a session's task is.
#[derive(Debug, Clone, PartialEq)]
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
    /// Storing the token obtained, under its key's locks (see `persist`).
    Storing(Box<Storing>),
}

/// A login's token being stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Storing {
    pub(crate) write: LockedWrite<StoreStage>,
    /// The token obtained.
    pub(crate) token: Token,
    /// Whether the login came from a sandbox connection.
    pub(crate) sandbox: bool,
}

/// Where storing a login's token is while it holds the key's locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreStage {
    /// Sandbox: reading the credential a login would replace.
    CheckExisting,
    /// Sandbox: whether that credential's refresh token is dead.
    CheckMeta,
    /// Writing the token.
    Put,
    /// Clearing the unusable-refresh mark.
    ClearMeta,
    /// The store refused the mark's clear (the key changed after the
    /// token was stored): reading it fresh before clearing again.
    RereadForMeta,
}

/// The task state of a login.
#[derive(Debug)]
pub(crate) struct LoginWork {
    pub(crate) sid: String,
    pub(crate) stage: LoginStage,
}

impl LoginWork {
    pub(crate) fn new(sid: &str, stage: LoginStage) -> LoginWork {
        LoginWork {
            sid: sid.to_owned(),
            stage,
        }
    }
}

/// Where a `refresh_token` request is before it joins a job.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CheckStage {
    /// Reading the stored token.
    Read,
    /// Reading the key's metadata; carries the token read.
    Meta(Token),
    /// Re-reading the token fresh during the cooldown (see `cooldown`).
    Reread,
}

/// A `refresh_token` request's checks.
#[derive(Debug)]
pub(crate) struct RefreshCheck {
    pub(crate) key: Key,
    pub(crate) stage: CheckStage,
}

/// Where a refresh job is while it holds its key's locks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JobStage {
    /// Reading the token fresh.
    ReadFresh,
    /// Reading the key's metadata.
    Meta,
    /// Waiting for the provider's OIDC discovery.
    Discovering,
    /// The provider call is in flight.
    Calling,
    /// Waiting for the retry timer.
    Backoff,
    /// The provider refused the refresh token: re-reading once, in case a
    /// sibling rotated it. Carries the refusal.
    Reread(Failure),
    /// Writing the merged token.
    Writing(Refreshed),
    /// The store refused the write of the refreshed token (another process
    /// wrote the key meanwhile): re-reading it fresh to decide between the
    /// stored token and ours (see `refresh::reconcile`).
    Reconciling(Refreshed),
    /// Marking the refresh token unusable; carries the failure to answer.
    MarkUnusable(Failure),
}

/// A provider's answer to a refresh, and the token to store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refreshed {
    /// The provider's token, as answered: merged again over the re-read
    /// token when the write is refused.
    pub(crate) new: Token,
    /// `new` merged over the token refreshed.
    pub(crate) merged: Token,
}

/// One refresh of one key.
#[derive(Debug)]
pub(crate) struct RefreshJob {
    pub(crate) write: LockedWrite<JobStage>,
    /// Digest of the access token the caller saw (to detect a refresh by
    /// someone else).
    pub(crate) seen: Option<[u8; 32]>,
    /// The token being refreshed, once read.
    pub(crate) current: Option<Token>,
    pub(crate) attempts: u8,
    /// Whether the token was re-read after a refusal already.
    pub(crate) reread: bool,
    pub(crate) renewal: bool,
    pub(crate) logout: bool,
}

impl RefreshJob {
    /// The key refreshed.
    pub(crate) fn key(&self) -> &Key {
        self.write.key()
    }

    /// The stage, while the job holds its locks.
    pub(crate) fn stage(&self) -> Option<&JobStage> {
        self.write.stage()
    }
}
