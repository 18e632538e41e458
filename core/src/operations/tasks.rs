//! The task table and the effect ids it waits on.
//!
//! Every effect the engine emits gets an [`EffectId`] from here, so ids are
//! unique across tasks and detached effects. An effect emitted for a task is
//! recorded against it; removing the task drops those records, so a result
//! that arrives later finds no task and is ignored, and no id outlives its
//! task in the table. Each record also says which kind of result the effect
//! is answered with, so a result of another kind is caught on arrival.

use std::collections::BTreeMap;

use crate::engine::effect::{Effect, EffectId, ResultKind};
use crate::operations::op::Op;
use crate::operations::task::{ReplyTo, Task, TaskId, Work};

/// A task and the effects it waits on.
#[derive(Debug)]
struct Entry {
    task: Task,
    /// Effects emitted for the task whose result has not arrived. Usually
    /// one: a task waits on one effect at a time.
    effects: Vec<EffectId>,
}

/// The live tasks and the effects they wait on.
///
/// Invariants: `effects[id] = (t, _)` exactly when `id` is in the entry of
/// `t`; task and effect ids are never reused.
#[derive(Debug)]
pub(crate) struct Tasks {
    tasks: BTreeMap<TaskId, Entry>,
    next_task: u64,
    effects: BTreeMap<EffectId, (TaskId, ResultKind)>,
    next_effect: u64,
}

impl Default for Tasks {
    fn default() -> Tasks {
        Tasks {
            tasks: BTreeMap::new(),
            next_task: 1,
            effects: BTreeMap::new(),
            next_effect: 1,
        }
    }
}

impl Tasks {
    /// Number of live tasks.
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Number of effects whose result a task waits for.
    pub(crate) fn pending_effects(&self) -> usize {
        self.effects.len()
    }

    /// Creates a task.
    pub(crate) fn spawn(&mut self, op: Op, reply: Option<ReplyTo>, work: Work) -> TaskId {
        let id = TaskId(self.next_task);
        self.next_task += 1;
        let task = Task { op, reply, work };
        self.tasks.insert(
            id,
            Entry {
                task,
                effects: Vec::new(),
            },
        );
        id
    }

    /// A live task.
    pub(crate) fn get(&self, task: TaskId) -> Option<&Task> {
        self.tasks.get(&task).map(|e| &e.task)
    }

    /// A live task, to update.
    pub(crate) fn get_mut(&mut self, task: TaskId) -> Option<&mut Task> {
        self.tasks.get_mut(&task).map(|e| &mut e.task)
    }

    /// The work of a live task.
    pub(crate) fn work(&self, task: TaskId) -> Option<&Work> {
        self.get(task).map(|t| &t.work)
    }

    /// The work of a live task, to update.
    pub(crate) fn work_mut(&mut self, task: TaskId) -> Option<&mut Work> {
        self.get_mut(task).map(|t| &mut t.work)
    }

    /// Removes a task and forgets the effects it waited on.
    pub(crate) fn remove(&mut self, task: TaskId) -> Option<Task> {
        let entry = self.tasks.remove(&task)?;
        for id in entry.effects {
            self.effects.remove(&id);
        }
        Some(entry.task)
    }

    /// Allocates the id of `effect`, emitted for `task`, recording that the
    /// task waits for a result of the effect's kind (when the task is live).
    pub(crate) fn effect_for(&mut self, task: TaskId, effect: &Effect) -> EffectId {
        let id = self.next_effect_id();
        if let Some(entry) = self.tasks.get_mut(&task) {
            entry.effects.push(id);
            self.effects.insert(id, (task, ResultKind::of(effect)));
        }
        id
    }

    /// Allocates the id of an effect whose result nobody waits for.
    pub(crate) fn detached_effect(&mut self) -> EffectId {
        self.next_effect_id()
    }

    fn next_effect_id(&mut self) -> EffectId {
        let id = EffectId(self.next_effect);
        self.next_effect += 1;
        id
    }

    /// The task waiting for the result of effect `id`, which stops waiting,
    /// and the kind of result it expects. `None` for a detached effect, a
    /// spent id, or a task that is gone.
    pub(crate) fn take_result(&mut self, id: EffectId) -> Option<(TaskId, ResultKind)> {
        let (task, kind) = self.effects.remove(&id)?;
        if let Some(entry) = self.tasks.get_mut(&task) {
            entry.effects.retain(|e| *e != id);
        }
        Some((task, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_task_drops_its_effect_ids() {
        let mut t = Tasks::default();
        let a = t.spawn(Op::ListProviders, None, Work::ListProviders);
        let e1 = t.effect_for(a, &Effect::ListProviders);
        let detached = t.detached_effect();
        let e2 = t.effect_for(a, &Effect::ApiKeyList);
        assert_eq!(t.pending_effects(), 2);
        assert_eq!(t.take_result(e1), Some((a, ResultKind::Names)));
        assert_eq!(t.take_result(e1), None, "an id is spent once");
        assert_eq!(t.take_result(detached), None);
        assert!(t.remove(a).is_some());
        assert_eq!(t.pending_effects(), 0);
        assert_eq!(t.take_result(e2), None);
        // Ids are never reused, and an effect of a gone task is not recorded.
        let e3 = t.effect_for(a, &Effect::ListProviders);
        assert!(e3 > e2);
        assert_eq!(t.pending_effects(), 0);
    }
}
