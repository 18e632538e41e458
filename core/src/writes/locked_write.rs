//! One state machine for every write under a key's locks: `save_token`,
//! `remove_token`, storing a login's token and a refresh job.
//!
//! ```text
//!   Queued ──► Locking ──► Locked(stage) ──► Released
//!   (engine     (store lock   (the caller's    (store lock released,
//!    write lock) requested)    own stages)      engine lock passed on)
//! ```
//!
//! The machine drives the common part: the key's engine write lock (FIFO
//! inside this process), the cross-process store lock with its wait, the
//! fresh read of the stored value (where an authoritative in-memory token
//! wins), and the release in a fixed order — the store lock first, then the
//! engine lock, whose next waiter then starts. A caller plugs in only its
//! decisions: what to do once both locks are held (`write_locked`), and how
//! it ends when the store lock is busy or the host fails
//! (`write_aborted`). The lock state lives in a `LockedWrite` (see
//! `write_lock`) inside the caller's work, so "holds the engine lock" and
//! "holds the store lock" are one enum, not flags kept in step by hand.
//!
//! A store whose writes are compare-and-set (the PostgreSQL backend) can
//! refuse a write made after the fresh read: another process wrote the key
//! meanwhile, or this process's lease was taken over
//! ([`EffectResult::Conflict`]). The machine then forgets any in-memory
//! authoritative token of the key (the store holds something newer), lets
//! the caller name the stage it re-decides from (`*_conflicted`), and reads
//! the key fresh again under the same locks; the caller's post-read
//! decision runs on what is stored now (SPEC §5.2–5.3). After
//! [`MAX_CONFLICTS`] refusals in a row the write fails with the code a
//! failed write gives, "Credential store changed during the write".

use rand_core::CryptoRng;

use crate::engine::effect::{Effect, EffectResult};
use crate::engine::engine::Engine;
use crate::operations::task::{TaskId, Work};
use crate::wire::error::ErrorCode;
use crate::wire::reply::Failure;
use crate::writes::keylock::Key;
use crate::writes::write_lock::LockPhase;

/// Refused writes in a row after which a write under the locks gives up:
/// each refusal means another process wrote the key between this write's
/// fresh read and its write, so a few in a row are a write storm, not a
/// race, and the client is better told than kept waiting.
pub(crate) const MAX_CONFLICTS: u8 = 3;

impl<R: CryptoRng> Engine<R> {
    /// Queues `task`'s write on its key's engine write lock; requests the
    /// store lock at once when the engine lock is free.
    pub(crate) fn write_queue(&mut self, task: TaskId) {
        let Some(key) = self
            .tasks
            .work(task)
            .and_then(Work::write_lock)
            .map(|w| w.key().clone())
        else {
            return;
        };
        if self.keys.lock(&key, task) {
            self.write_granted(task);
        }
    }

    /// `task` now holds its key's engine write lock: take the store lock.
    pub(crate) fn write_granted(&mut self, task: TaskId) {
        let wait_ms = self.config.limits.lock_wait_ms;
        let Some(write) = self.tasks.work_mut(task).and_then(Work::write_lock_mut) else {
            return;
        };
        write.granted();
        let effect = Effect::lock_acquire(write.key(), wait_ms);
        self.emit_effect(task, effect);
    }

    /// Whether `task` waits for its store lock (its next result is the
    /// lock's).
    pub(crate) fn write_locking(&self, task: TaskId) -> bool {
        self.tasks
            .work(task)
            .and_then(Work::write_lock)
            .is_some_and(|w| w.phase() == LockPhase::Locking)
    }

    /// The code of a write that cannot be done (store lock busy, the store
    /// changing under it): a refresh's callers get `REFRESH_FAILED`, other
    /// writes `INTERNAL_ERROR`.
    fn write_failure_code(&self, task: TaskId) -> ErrorCode {
        match self.tasks.work(task) {
            Some(Work::Refresh(_)) => ErrorCode::RefreshFailed,
            _ => ErrorCode::InternalError,
        }
    }

    /// The store lock was (or was not) granted. A store that cannot be
    /// reached answers `STORE_UNAVAILABLE` (see
    /// [`EffectResult::store_failure`]).
    pub(crate) fn write_store_locked(&mut self, task: TaskId, result: EffectResult) {
        match result {
            EffectResult::Locked(true) => self.write_locked(task),
            EffectResult::Locked(false) => {
                let code = self.write_failure_code(task);
                let f = Failure::new(code, "Credential store is busy");
                self.write_aborted(task, f);
            }
            other => self.write_aborted(task, other.store_failure()),
        }
    }

    /// The store refused `task`'s write under the locks
    /// ([`EffectResult::Conflict`]): read the key fresh again and let the
    /// caller decide anew, or give up after [`MAX_CONFLICTS`] in a row.
    pub(crate) fn write_conflict(&mut self, task: TaskId) {
        let code = self.write_failure_code(task);
        let Some(write) = self.tasks.work_mut(task).and_then(Work::write_lock_mut) else {
            return;
        };
        let conflicts = write.conflicted();
        let key = write.key().clone();
        // The store holds something newer than what this write was based
        // on, so no in-memory token of the key is authoritative any more
        // (that override is for writes that failed, not lost races), and
        // the re-read below must reach the store.
        self.keys.clear_override(&key);
        if conflicts == 0 {
            // Not under the locks: a host fault.
            return self.write_aborted(task, Failure::internal());
        }
        if conflicts >= MAX_CONFLICTS {
            let f = Failure::new(code, "Credential store changed during the write");
            return self.write_aborted(task, f);
        }
        let redecide = match self.tasks.work(task) {
            Some(Work::SaveToken { .. } | Work::RemoveToken { .. }) => {
                self.token_write_conflicted(task)
            }
            Some(Work::Login(_)) => self.persist_conflicted(task),
            Some(Work::Refresh(_)) => self.refresh_conflicted(task),
            _ => false,
        };
        if redecide {
            self.emit_effect(task, Effect::token_get(&key, true));
        } else {
            self.write_aborted(task, Failure::internal());
        }
    }

    /// Both locks are held: the caller's first decision.
    fn write_locked(&mut self, task: TaskId) {
        match self.tasks.work(task) {
            Some(Work::SaveToken { .. } | Work::RemoveToken { .. }) => {
                self.token_write_locked(task)
            }
            Some(Work::Login(_)) => self.persist_locked(task),
            Some(Work::Refresh(_)) => self.refresh_locked(task),
            _ => {}
        }
    }

    /// The store lock is busy, or the host failed to take it: the caller
    /// ends with `f`.
    fn write_aborted(&mut self, task: TaskId, f: Failure) {
        match self.tasks.work(task) {
            Some(Work::Login(_)) => self.persist_aborted(task, f),
            Some(Work::Refresh(_)) => self.job_done(task, Err(f)),
            _ => self.finish(task, Err(f)),
        }
    }

    /// Reads `key` fresh under the locks: an authoritative in-memory token
    /// (its write failed) is the answer at once, else the store is read
    /// bypassing any cache.
    pub(crate) fn write_read_fresh(&mut self, task: TaskId, key: &Key) {
        match self.keys.override_of(key).cloned() {
            Some(token) => self.resume(task, EffectResult::Token(Some(token))),
            None => self.emit_effect(task, Effect::token_get(key, true)),
        }
    }

    /// Releases the locks of a write that was in `phase` (its task may be
    /// gone from the table already): the store lock first (when held), then
    /// the engine lock, which starts the key's next waiter; nothing for a
    /// write that was still queued. [`finish`](Engine::finish) does this for
    /// every task that ends holding them.
    pub(crate) fn release_locks(&mut self, task: TaskId, key: &Key, phase: LockPhase) {
        if phase == LockPhase::Locked {
            self.emit_detached(Effect::lock_release(key));
        }
        if matches!(phase, LockPhase::Locking | LockPhase::Locked) {
            self.release_key(key, task);
        }
    }
}
