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

use rand_core::CryptoRng;

use crate::engine::effect::{Effect, EffectResult};
use crate::engine::engine::Engine;
use crate::operations::task::{TaskId, Work};
use crate::wire::error::ErrorCode;
use crate::wire::reply::Failure;
use crate::writes::keylock::Key;
use crate::writes::write_lock::LockPhase;

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

    /// The store lock was (or was not) granted.
    pub(crate) fn write_store_locked(&mut self, task: TaskId, result: EffectResult) {
        match result {
            EffectResult::Locked(true) => self.write_locked(task),
            EffectResult::Locked(false) => {
                let code = match self.tasks.work(task) {
                    Some(Work::Refresh(_)) => ErrorCode::RefreshFailed,
                    _ => ErrorCode::InternalError,
                };
                let f = Failure::new(code, "Credential store is busy");
                self.write_aborted(task, f);
            }
            _ => self.write_aborted(task, Failure::internal()),
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
            Some(Work::Login(_)) => self.persist_done(task, Err(f)),
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

    /// Gives back `task`'s locks: the store lock first (when held), then the
    /// engine lock, which starts the key's next waiter. Once only; nothing
    /// for a write that was still queued.
    pub(crate) fn write_release(&mut self, task: TaskId) {
        let Some(write) = self.tasks.work_mut(task).and_then(Work::write_lock_mut) else {
            return;
        };
        let (key, was) = (write.key().clone(), write.release());
        self.release_locks(task, &key, was);
    }

    /// Releases the locks of a write that was in `phase` (its task may be
    /// gone from the table already).
    pub(crate) fn release_locks(&mut self, task: TaskId, key: &Key, phase: LockPhase) {
        if phase == LockPhase::Locked {
            self.emit_detached(Effect::lock_release(key));
        }
        if matches!(phase, LockPhase::Locking | LockPhase::Locked) {
            self.release_key(key, task);
        }
    }
}
