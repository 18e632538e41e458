//! Storing the token of a completed login (SPEC §3.5, §5.2, §5.3).
//!
//! A login replaces the stored token (no merge). The write holds the key's
//! engine write lock and its cross-process store lock. For a sandbox
//! connection, unless `sandbox_login_overwrite` is set, the login may only
//! replace a credential that is missing, expired, or whose refresh token
//! is marked unusable. A completion is audited (`login_complete`) at INFO,
//! at WARN when a sandbox stored it or it failed; a stored token without a
//! refresh token adds `login_no_refresh_token` at WARN, since such a login
//! cannot be renewed and the usual cause is a missing `offline_access`
//! scope or `prompt=consent`.
//!
//! When the store refuses the write because another process wrote the key
//! since the fresh read (`EffectResult::Conflict`), the key is read fresh
//! again and the decision made anew: a login still replaces (no merge),
//! but a sandbox login is checked again against what is stored now. A
//! refused clear of the unusable mark is read fresh and cleared again (the
//! login's token is stored; a mark left set would answer `REAUTH_REQUIRED`
//! for it). A store that cannot be reached answers `STORE_UNAVAILABLE`; a
//! failed clear of the mark after the token is stored does not fail the
//! login.

use rand_core::CryptoRng;

use crate::engine::audit::{AuditEvent, Level};
use crate::engine::effect::{Effect, EffectResult};
use crate::engine::engine::Engine;
use crate::operations::task::{LoginStage, LoginWork, StoreStage, Storing, TaskId, Work};
use crate::sessions::login::{login_event, still_valid};
use crate::sessions::session::Outcome;
use crate::tokens::token::Token;
use crate::wire::error::ErrorCode;
use crate::wire::handshake::ConnClass;
use crate::wire::reply::Failure;
use crate::writes::keylock::Key;
use crate::writes::write_lock::LockedWrite;

impl<R: CryptoRng> Engine<R> {
    fn storing(&self, task: TaskId) -> Option<(&str, &Storing)> {
        match self.tasks.work(task) {
            Some(Work::Login(LoginWork {
                sid,
                stage: LoginStage::Storing(s),
            })) => Some((sid, s)),
            _ => None,
        }
    }

    fn storing_mut(&mut self, task: TaskId) -> Option<&mut Storing> {
        match self.tasks.work_mut(task) {
            Some(Work::Login(LoginWork {
                stage: LoginStage::Storing(s),
                ..
            })) => Some(s),
            _ => None,
        }
    }

    /// Starts storing `token`, obtained by `sid`'s login, under the key's
    /// locks (see `locked_write`).
    pub(crate) fn persist_start(&mut self, task: TaskId, sid: &str, token: Token) {
        let Some((key, class)) = self.sessions.get(sid).map(|s| {
            (
                Key::new(s.provider.clone(), s.bucket.clone()),
                s.owner.class,
            )
        }) else {
            return self.finish(
                task,
                Err(Failure::new(
                    ErrorCode::SessionNotFound,
                    "OAuth session not found",
                )),
            );
        };
        if let Some(Work::Login(w)) = self.tasks.work_mut(task) {
            w.stage = LoginStage::Storing(Box::new(Storing {
                write: LockedWrite::new(key),
                token,
                sandbox: class == ConnClass::Sandbox,
            }));
        }
        self.write_queue(task);
    }

    /// Both locks are held: write the token, or first check what it would
    /// replace (a sandbox login without `sandbox_login_overwrite`).
    pub(crate) fn persist_locked(&mut self, task: TaskId) {
        let overwrite = self.config.policy.sandbox_login_overwrite;
        let Some(s) = self.storing_mut(task) else {
            return;
        };
        if !s.sandbox || overwrite {
            return self.persist_put(task);
        }
        s.write.set_stage(StoreStage::CheckExisting);
        let effect = Effect::token_get(s.write.key(), true);
        self.emit_effect(task, effect);
    }

    /// The store refused the token's write or the mark's clear: the stage
    /// the fresh re-read is decided from (see `locked_write`). Returns
    /// whether there is one.
    pub(crate) fn persist_conflicted(&mut self, task: TaskId) -> bool {
        let Some(s) = self.storing_mut(task) else {
            return false;
        };
        let next = match s.write.stage() {
            Some(StoreStage::Put) => StoreStage::CheckExisting,
            Some(StoreStage::ClearMeta) => StoreStage::RereadForMeta,
            _ => return false,
        };
        s.write.set_stage(next);
        true
    }

    /// Continues storing with an effect result.
    pub(crate) fn persist_step(&mut self, task: TaskId, result: EffectResult) {
        let Some((_, s)) = self.storing(task) else {
            return;
        };
        let Some(stage) = s.write.stage().copied() else {
            return;
        };
        let key = s.write.key().clone();
        let checks = s.sandbox && !self.config.policy.sandbox_login_overwrite;
        match (stage, result) {
            // Only after a refused write: a login that replaces whatever
            // is stored writes again on the version just read.
            (StoreStage::CheckExisting, EffectResult::Token(_)) if !checks => {
                self.persist_put(task)
            }
            (StoreStage::CheckExisting, EffectResult::Token(existing)) => {
                let margin = self.config.limits.valid_margin_ms;
                if existing.is_some_and(|t| still_valid(&t, self.now.unix_ms, margin)) {
                    self.persist_stage(task, StoreStage::CheckMeta);
                    self.emit_effect(task, Effect::meta_get(&key));
                } else {
                    self.persist_put(task);
                }
            }
            (
                StoreStage::CheckMeta,
                EffectResult::Meta {
                    refresh_unusable: true,
                },
            ) => self.persist_put(task),
            (StoreStage::CheckMeta, EffectResult::Meta { .. }) => {
                let f = Failure::new(
                    ErrorCode::Forbidden,
                    "Login would replace an existing credential",
                );
                self.persist_done(task, Err(f));
            }
            (StoreStage::Put, EffectResult::Done)
            | (StoreStage::RereadForMeta, EffectResult::Token(_)) => {
                self.persist_stage(task, StoreStage::ClearMeta);
                self.emit_effect(task, Effect::meta_put(&key, false));
            }
            (StoreStage::Put | StoreStage::ClearMeta, EffectResult::Conflict) => {
                self.write_conflict(task)
            }
            // The token is stored: a mark that could not be cleared (or
            // re-read for) does not undo the login.
            (StoreStage::ClearMeta | StoreStage::RereadForMeta, _) => {
                let token = s.token.clone();
                self.persist_done(task, Ok(token));
            }
            (_, other) => self.persist_done(task, Err(other.store_failure())),
        }
    }

    /// The write cannot go on (store lock busy or unreachable, the store
    /// changing under it): the login fails with `f`, unless its token is
    /// stored already and only the mark's clear is left.
    pub(crate) fn persist_aborted(&mut self, task: TaskId, f: Failure) {
        let stored = self.storing(task).and_then(|(_, s)| {
            matches!(
                s.write.stage(),
                Some(StoreStage::ClearMeta | StoreStage::RereadForMeta)
            )
            .then(|| s.token.clone())
        });
        match stored {
            Some(token) => self.persist_done(task, Ok(token)),
            None => self.persist_done(task, Err(f)),
        }
    }

    fn persist_stage(&mut self, task: TaskId, stage: StoreStage) {
        if let Some(s) = self.storing_mut(task) {
            s.write.set_stage(stage);
        }
    }

    fn persist_put(&mut self, task: TaskId) {
        let Some(s) = self.storing_mut(task) else {
            return;
        };
        s.write.set_stage(StoreStage::Put);
        let (key, token) = (s.write.key().clone(), s.token.clone());
        self.keys.clear_override(&key);
        self.emit_effect(task, Effect::token_put(&key, token));
    }

    /// The store step is over: audit, schedule renewal and hand the outcome
    /// to the session, which finishes the task (and so gives its locks
    /// back).
    pub(crate) fn persist_done(&mut self, task: TaskId, result: Result<Token, Failure>) {
        let Some((sid, key, sandbox)) = self
            .storing(task)
            .map(|(sid, s)| (sid.to_owned(), s.write.key().clone(), s.sandbox))
        else {
            return;
        };
        let class = if sandbox {
            ConnClass::Sandbox
        } else {
            ConnClass::Host
        };
        let mut event = login_event(&key, class);
        // INFO for a login that stored a credential; WARN when a sandbox
        // connection stored it (a host credential written from inside the
        // sandbox is what an operator may want to see) and for failures.
        event.level = if sandbox { Level::Warn } else { Level::Info };
        let mut no_refresh = None;
        let outcome = match result {
            Ok(token) => {
                if token.refresh_token().is_none() {
                    no_refresh = Some(no_refresh_event(&key, class));
                }
                self.renewal_forget(&key);
                self.schedule_renewal(&key, &token);
                Outcome::Token(token)
            }
            Err(f) => {
                event.outcome = f.code.into();
                event.level = Level::Warn;
                Outcome::Failed(f)
            }
        };
        self.audit(event);
        if let Some(ev) = no_refresh {
            self.audit(ev);
        }
        self.complete_login(task, &sid, outcome);
    }
}

/// The hint that a login stored no refresh token (it cannot be renewed).
fn no_refresh_event(key: &Key, class: ConnClass) -> AuditEvent {
    let mut ev = AuditEvent::new(
        Level::Warn,
        None,
        "login_no_refresh_token",
        "no refresh token: add offline_access / prompt=consent",
    );
    ev.provider = Some(key.provider.clone());
    ev.bucket = Some(key.bucket.clone());
    ev.class = Some(class);
    ev
}
