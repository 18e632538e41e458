//! Effects that may block, and their results waiting for the engine.
//!
//! An effect that may block (a store read or write, a lock wait, HTTP) is
//! started on the blocking pool by the lock holder that drained it; its
//! result is put here, and whoever takes the engine lock next feeds every waiting result
//! to the engine before its own work ([`drive`](super::state::drive)): an
//! I/O thread in the middle of a flood, or the loop task, woken for the
//! purpose when nobody else would come. A completion therefore waits at
//! most for the lock holder of the moment, never for the loop task to win
//! the lock against I/O threads that take it back to back (which made one
//! connection's store read wait behind another connection's flood).
//!
//! Lock order: the engine lock, then this queue's own (held only to swap
//! the queue out); a producer holds only the queue's.

use std::sync::{Arc, Mutex, PoisonError};

use credproxy_core::{Effect, EffectId, EffectResult, Engine, Now};
use rand_core::CryptoRng;
use smol::channel::Sender;

use super::Event;
use crate::effects::Executor;

/// Results in the order they finished.
#[derive(Default)]
pub(super) struct Completions {
    queue: Mutex<Vec<(EffectId, EffectResult)>>,
}

impl Completions {
    /// Runs `effect` on the blocking pool; its result is queued here and
    /// `wake` (the loop task) told when the queue stops being empty.
    /// Called by the lock holder that drained the effect: sending it to
    /// the loop task first would make it wait for that task's turn too.
    pub fn run(
        self: &Arc<Self>,
        executor: &Executor,
        wake: &Sender<Event>,
        id: EffectId,
        effect: Effect,
    ) {
        let (queue, executor, wake) = (self.clone(), executor.clone(), wake.clone());
        smol::unblock(move || {
            let result = executor.execute(effect);
            if queue.push(id, result) {
                // Unbounded: fails only once the loop task is gone.
                let _ = wake.try_send(Event::EffectsDone);
            }
        })
        .detach();
    }

    /// Queues a finished effect's result. True when the queue was empty:
    /// the caller then wakes the loop task, so that the result is fed even
    /// if no connection drives the engine meanwhile (one wake-up per
    /// burst; a result queued behind others is fed with them).
    pub fn push(&self, id: EffectId, result: EffectResult) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.push((id, result));
        queue.len() == 1
    }

    /// Feeds every queued result to `engine` (called under the engine
    /// lock), in the order they finished.
    pub fn feed<R: CryptoRng>(&self, engine: &mut Engine<R>, now: Now) {
        let done = std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
        for (id, result) in done {
            engine.handle_effect_result(id, result, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_of_a_burst_asks_for_a_wake_up() {
        let c = Completions::default();
        assert!(c.push(EffectId(1), EffectResult::Done));
        assert!(!c.push(EffectId(2), EffectResult::Done));
        // Taken (here by hand, as `feed` does): the next one wakes again.
        let taken = std::mem::take(&mut *c.queue.lock().unwrap());
        assert_eq!(taken.iter().map(|(id, _)| id.0).collect::<Vec<_>>(), [1, 2]);
        assert!(c.push(EffectId(3), EffectResult::Done));
    }
}
