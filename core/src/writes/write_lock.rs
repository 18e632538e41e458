//! The lock state of a write under its key's locks, as data: the caller's
//! work holds a [`LockedWrite`], and `locked_write` drives it through the
//! [`WriteLock`] view.

use crate::writes::keylock::Key;

/// Where a write is with its key's locks; `S` is the caller's stage while
/// it holds both.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lock<S> {
    /// Waiting for the key's engine write lock.
    Queued,
    /// Holding the engine lock; the store lock is requested.
    Locking,
    /// Holding both locks, at the caller's stage, after `conflicts`
    /// writes the store refused (see `locked_write::write_conflict`).
    Locked { stage: S, conflicts: u8 },
    /// Both locks given back.
    Released,
}

/// The lock state of a [`Lock`], without the caller's stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockPhase {
    Queued,
    Locking,
    Locked,
    Released,
}

/// A write of one key under its locks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LockedWrite<S> {
    key: Key,
    lock: Lock<S>,
}

impl<S> LockedWrite<S> {
    /// A write of `key`, not yet queued.
    pub(crate) fn new(key: Key) -> LockedWrite<S> {
        LockedWrite {
            key,
            lock: Lock::Queued,
        }
    }

    /// The key written.
    pub(crate) fn key(&self) -> &Key {
        &self.key
    }

    /// The key written, when the write is over.
    pub(crate) fn into_key(self) -> Key {
        self.key
    }

    /// The caller's stage, while both locks are held.
    pub(crate) fn stage(&self) -> Option<&S> {
        match &self.lock {
            Lock::Locked { stage, .. } => Some(stage),
            _ => None,
        }
    }

    /// Moves to the caller's stage `stage`: both locks must be held, or the
    /// store lock just granted.
    /// The count of refused writes carries over from stage to stage.
    pub(crate) fn set_stage(&mut self, stage: S) {
        debug_assert!(
            matches!(self.lock, Lock::Locking | Lock::Locked { .. }),
            "stage set without the locks"
        );
        let conflicts = match self.lock {
            Lock::Locked { conflicts, .. } => conflicts,
            _ => 0,
        };
        self.lock = Lock::Locked { stage, conflicts };
    }

    fn phase(&self) -> LockPhase {
        match self.lock {
            Lock::Queued => LockPhase::Queued,
            Lock::Locking => LockPhase::Locking,
            Lock::Locked { .. } => LockPhase::Locked,
            Lock::Released => LockPhase::Released,
        }
    }
}

/// The stage-independent view of a write the machine drives.
pub(crate) trait WriteLock {
    /// The key written.
    fn key(&self) -> &Key;
    /// Where the write is with its locks.
    fn phase(&self) -> LockPhase;
    /// The engine lock was granted: the store lock is requested next.
    fn granted(&mut self);
    /// Gives both locks back; returns the phase it was in.
    fn release(&mut self) -> LockPhase;
    /// The store refused a write under the locks: counts it and returns
    /// how many were refused so far (0 when the locks are not held).
    fn conflicted(&mut self) -> u8;
}

impl<S> WriteLock for LockedWrite<S> {
    fn key(&self) -> &Key {
        &self.key
    }

    fn phase(&self) -> LockPhase {
        LockedWrite::phase(self)
    }

    fn granted(&mut self) {
        debug_assert!(matches!(self.lock, Lock::Queued), "granted twice");
        self.lock = Lock::Locking;
    }

    fn release(&mut self) -> LockPhase {
        let was = LockedWrite::phase(self);
        self.lock = Lock::Released;
        was
    }

    fn conflicted(&mut self) -> u8 {
        match &mut self.lock {
            Lock::Locked { conflicts, .. } => {
                *conflicts = conflicts.saturating_add(1);
                *conflicts
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_forward_and_releases_once() {
        let mut w: LockedWrite<u8> = LockedWrite::new(Key::new("p", "default"));
        assert_eq!(WriteLock::phase(&w), LockPhase::Queued);
        assert_eq!(w.stage(), None);
        w.granted();
        assert_eq!(WriteLock::phase(&w), LockPhase::Locking);
        w.set_stage(1);
        assert_eq!(w.conflicted(), 1);
        w.set_stage(2);
        assert_eq!(w.stage(), Some(&2));
        assert_eq!(w.conflicted(), 2, "the count survives a new stage");
        assert_eq!(w.release(), LockPhase::Locked);
        // A second release gives nothing back.
        assert_eq!(w.release(), LockPhase::Released);
        assert_eq!(w.stage(), None);
        assert_eq!(w.conflicted(), 0, "nothing counted without the locks");
        assert_eq!(w.into_key(), Key::new("p", "default"));
    }
}
