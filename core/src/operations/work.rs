//! Carrying requests through their effects.
//!
//! [`Engine::begin`] issues a task's first effect (or queues it on its key's
//! write lock), [`Engine::resume`] continues it with an effect result, and
//! [`Engine::finish`] answers it. Detached tasks (cancelled, or their
//! connection gone) are dropped when they only read, and run to completion
//! silently when they write.

use rand_core::CryptoRng;
use serde_json::{Map, Value};

use crate::conn::connection::Phase;
use crate::engine::audit::{AuditEvent, ConnId, Level};
use crate::engine::effect::{Effect, EffectResult};
use crate::engine::engine::Engine;
use crate::operations::op::Op;
use crate::operations::ops::{filter_allowed, names};
use crate::operations::task::{RemoveStage, ReplyTo, SaveStage, TaskId, Work};
use crate::tokens::token::Token;
use crate::wire::error::ErrorCode;
use crate::wire::handshake::Accepted;
use crate::wire::reply::{Answer, Data, Failure};
use crate::writes::keylock::Key;
use crate::writes::write_lock::LockedWrite;

/// What a task does after an effect result.
enum Next {
    /// Issue another effect.
    Effect(Effect),
    /// Answer the request.
    Answer(Answer),
    /// The store refused the write (see `locked_write::write_conflict`).
    Conflict,
}

impl<R: CryptoRng> Engine<R> {
    /// Creates a task answering request `id` on `conn`.
    pub(crate) fn attach_task(&mut self, conn: ConnId, id: String, op: Op, work: Work) -> TaskId {
        let reply = ReplyTo {
            conn,
            id: id.clone(),
        };
        let task = self.tasks.spawn(op, Some(reply), work);
        if let Some(c) = self.conns.get_mut(conn) {
            c.in_flight.insert(id, task);
        }
        task
    }

    /// Creates a background task (no reply).
    pub(crate) fn background_task(&mut self, op: Op, work: Work) -> TaskId {
        self.tasks.spawn(op, None, work)
    }

    /// Issues the first effect of a new task.
    pub(crate) fn begin(&mut self, task: TaskId) {
        let Some(t) = self.tasks.get(task) else {
            return;
        };
        match &t.work {
            Work::RemoveToken { write } => {
                let key = write.key().clone();
                self.refresh_logout(&key);
                return self.write_queue(task);
            }
            Work::SaveToken { .. } => return self.write_queue(task),
            _ => {}
        }
        if let Work::GetToken { key, .. } = &t.work
            && let Some(token) = self.keys.override_of(key).cloned()
        {
            return self.resume(task, EffectResult::Token(Some(token)));
        }
        let effect = match &t.work {
            Work::GetToken { key, .. } | Work::BucketStats { key } => Effect::token_get(key, false),
            Work::ListProviders => Effect::ListProviders,
            Work::ListBuckets { provider } => Effect::ListBuckets {
                provider: provider.clone(),
            },
            Work::GetApiKey { name, .. } => Effect::ApiKeyGet { name: name.clone() },
            Work::ListApiKeys => Effect::ApiKeyList,
            Work::HasApiKey { name } => Effect::ApiKeyHas { name: name.clone() },
            _ => return,
        };
        self.emit_effect(task, effect);
    }

    /// A save or remove holds both of its key's locks: a save reads the
    /// stored token fresh, a remove deletes it.
    pub(crate) fn token_write_locked(&mut self, task: TaskId) {
        match self.tasks.work_mut(task) {
            Some(Work::SaveToken { write, .. }) => {
                write.set_stage(SaveStage::Reading);
                let key = write.key().clone();
                self.write_read_fresh(task, &key);
            }
            Some(Work::RemoveToken { write }) => {
                write.set_stage(RemoveStage::Deleting);
                let effect = Effect::token_delete(write.key());
                self.emit_effect(task, effect);
            }
            _ => {}
        }
    }

    /// The store refused a save's write or a remove's delete: a save
    /// re-reads and merges its token over what is stored now, a remove
    /// re-reads (so the store's compare-and-set sees the current version)
    /// and deletes again — a remove wins over whatever was written. Returns
    /// whether the task re-decides after a fresh read.
    pub(crate) fn token_write_conflicted(&mut self, task: TaskId) -> bool {
        match self.tasks.work_mut(task) {
            // Only their write stage answers `Conflict` (`save_step`,
            // `remove_step`).
            Some(Work::SaveToken { write, .. }) => {
                write.set_stage(SaveStage::Reading);
                true
            }
            Some(Work::RemoveToken { write }) => {
                write.set_stage(RemoveStage::Rereading);
                true
            }
            _ => false,
        }
    }

    /// Continues a task with the result of its effect.
    pub(crate) fn resume(&mut self, task: TaskId, result: EffectResult) {
        let Some(t) = self.tasks.get(task) else {
            return;
        };
        if self.write_locking(task) {
            return self.write_store_locked(task, result);
        }
        match &t.work {
            Work::Login(_) => return self.resume_login(task, result),
            Work::RefreshCheck(_) => return self.check_step(task, result),
            Work::Refresh(_) => return self.refresh_step(task, result),
            Work::WriteBack { key } => {
                let key = key.clone();
                return self.write_back_done(task, &key, &result);
            }
            Work::AwaitRefresh { .. } => return,
            Work::GetToken { key, .. } => {
                if let EffectResult::Token(Some(token)) = &result
                    && self.renewal_wanted(key, token)
                {
                    let key = key.clone();
                    self.schedule_renewal(&key, token);
                }
            }
            _ => {}
        }
        let Some(t) = self.tasks.get_mut(task) else {
            return;
        };
        let next = match &mut t.work {
            Work::SaveToken { write, incoming } => save_step(write, incoming, result),
            Work::RemoveToken { write } => remove_step(write, result),
            Work::BucketStats { key } if matches!(result, EffectResult::Token(Some(_))) => {
                Next::Answer(Ok(self.stats.report(key).into()))
            }
            work => Next::Answer(read_answer(work, result, &self.config.policy)),
        };
        match next {
            Next::Effect(effect) => {
                if let Effect::TokenPut {
                    provider,
                    bucket,
                    token,
                } = &effect
                {
                    let key = Key::new(provider.clone(), bucket.clone());
                    let token = token.clone();
                    self.keys.clear_override(&key);
                    self.schedule_renewal(&key, &token);
                }
                self.emit_effect(task, effect);
            }
            Next::Answer(answer) => self.finish(task, answer),
            Next::Conflict => self.write_conflict(task),
        }
    }

    /// Answers a task (if still attached), releases its key and forgets it.
    pub(crate) fn finish(&mut self, task: TaskId, answer: Answer) {
        let Some(mut t) = self.tasks.remove(task) else {
            return;
        };
        // The locks of a write (a save, a remove, a login's store step, a
        // refresh job), given back once, here, as the task ends.
        if let Some(write) = t.work.write_lock_mut() {
            let key = write.key().clone();
            let was = write.release();
            self.release_locks(task, &key, was);
        }
        if let (Work::GetToken { key, .. }, Ok(_)) = (&t.work, &answer) {
            self.stats.record(key, self.now.unix_ms);
        }
        let Some(reply) = t.reply else { return };
        let Some(c) = self.conns.get_mut(reply.conn) else {
            return;
        };
        c.in_flight.remove(&reply.id);
        let Phase::Open(Accepted { version, .. }) = c.phase() else {
            return;
        };
        let mut event = AuditEvent::new(Level::Info, Some(reply.conn), t.op.into(), "ok");
        describe(t.work, &mut event);
        self.send_answer_audited(reply.conn, version, &reply.id, &answer, event);
        self.maybe_finish_half_close(reply.conn);
    }

    /// Detaches a task from its request: reads are dropped, writes continue
    /// without a reply.
    pub(crate) fn detach(&mut self, task: TaskId) {
        let Some(t) = self.tasks.get_mut(task) else {
            return;
        };
        t.reply = None;
        if !t.work.has_side_effects() {
            self.tasks.remove(task);
        }
    }
}

/// Names the provider, bucket or key of a request in its audit event. The
/// task is finished, so its names move into the event (no copies).
fn describe(work: Work, event: &mut AuditEvent) {
    let key = match work {
        Work::GetToken { key, .. }
        | Work::BucketStats { key }
        | Work::RefreshCheck(crate::operations::task::RefreshCheck { key, .. })
        | Work::AwaitRefresh { key }
        | Work::WriteBack { key } => key,
        Work::SaveToken { write, .. } => write.into_key(),
        Work::RemoveToken { write } => write.into_key(),
        Work::Refresh(job) => job.write.into_key(),
        Work::ListBuckets { provider } => {
            event.provider = Some(provider);
            return;
        }
        Work::GetApiKey { name, .. } | Work::HasApiKey { name } => {
            event.name = Some(name);
            return;
        }
        Work::ListProviders | Work::ListApiKeys | Work::Login(_) => return,
    };
    event.provider = Some(key.provider);
    event.bucket = Some(key.bucket);
}

/// `save_token` under its key's locks: fresh read, merge, write.
fn save_step(write: &mut LockedWrite<SaveStage>, incoming: &Token, result: EffectResult) -> Next {
    match (write.stage().copied(), result) {
        (Some(SaveStage::Reading), EffectResult::Token(existing)) => {
            write.set_stage(SaveStage::Writing);
            let merged = existing.unwrap_or_default().merged_with(incoming);
            Next::Effect(Effect::token_put(write.key(), merged))
        }
        (Some(SaveStage::Writing), EffectResult::Done) => Next::Answer(Ok(Map::new().into())),
        (Some(SaveStage::Writing), EffectResult::Conflict) => Next::Conflict,
        (_, other) => Next::Answer(Err(other.store_failure())),
    }
}

/// `remove_token` under its key's locks: delete (again after a fresh read
/// when the store refused the delete).
fn remove_step(write: &mut LockedWrite<RemoveStage>, result: EffectResult) -> Next {
    match (write.stage().copied(), result) {
        (Some(RemoveStage::Deleting), EffectResult::Done) => Next::Answer(Ok(Map::new().into())),
        (Some(RemoveStage::Deleting), EffectResult::Conflict) => Next::Conflict,
        (Some(RemoveStage::Rereading), EffectResult::Token(_)) => {
            write.set_stage(RemoveStage::Deleting);
            Next::Effect(Effect::token_delete(write.key()))
        }
        (_, other) => Next::Answer(Err(other.store_failure())),
    }
}

/// The answer of a task that needs one effect.
fn read_answer(
    work: &Work,
    result: EffectResult,
    policy: &crate::engine::config::Policy,
) -> Answer {
    let denied = || Failure::new(ErrorCode::Forbidden, "Access denied");
    match (work, result) {
        (Work::GetToken { .. }, EffectResult::Token(Some(token))) => Ok(Data::Token(token)),
        (Work::GetToken { sandbox: true, .. }, EffectResult::Token(None)) => Err(denied()),
        (Work::GetToken { key, .. }, EffectResult::Token(None)) => Err(Failure::new(
            ErrorCode::NotFound,
            format!("No token found for provider: {}", key.provider),
        )),
        (Work::BucketStats { key }, EffectResult::Token(None)) => Err(Failure::new(
            ErrorCode::NotFound,
            format!("No stats found for {}/{}", key.provider, key.bucket),
        )),
        (Work::ListProviders, EffectResult::Names(list)) => Ok(names(
            "providers",
            filter_allowed(policy.allowed_providers.as_ref(), list),
        )
        .into()),
        (Work::ListBuckets { .. }, EffectResult::Names(list)) => Ok(names(
            "buckets",
            filter_allowed(policy.allowed_buckets.as_ref(), list),
        )
        .into()),
        (Work::ListApiKeys, EffectResult::Names(list)) => {
            Ok(names("keys", filter_allowed(policy.allowed_keys.as_ref(), list)).into())
        }
        (Work::GetApiKey { .. }, EffectResult::ApiKey(Some(secret))) => {
            let mut m = Map::new();
            m.insert("key".into(), Value::from(secret.into_inner()));
            Ok(m.into())
        }
        (Work::GetApiKey { sandbox: true, .. }, EffectResult::ApiKey(None)) => Err(denied()),
        (Work::GetApiKey { name, .. }, EffectResult::ApiKey(None)) => Err(Failure::new(
            ErrorCode::NotFound,
            format!("No API key found for: {name}"),
        )),
        (Work::HasApiKey { .. }, EffectResult::Exists(exists)) => {
            let mut m = Map::new();
            m.insert("exists".into(), Value::Bool(exists));
            Ok(m.into())
        }
        (_, other) => Err(other.store_failure()),
    }
}
