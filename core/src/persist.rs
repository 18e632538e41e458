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

use rand_core::CryptoRng;

use crate::audit::{AuditEvent, Level};
use crate::effect::{Effect, EffectResult};
use crate::engine::Engine;
use crate::error::ErrorCode;
use crate::handshake::ConnClass;
use crate::keylock::Key;
use crate::login::{login_event, still_valid};
use crate::reply::Failure;
use crate::session::Outcome;
use crate::task::LoginStage;
use crate::task::{TaskId, Work};
use crate::token::Token;

impl<R: CryptoRng> Engine<R> {
    fn persist_parts(&mut self, task: TaskId) -> Option<(String, LoginStage, Option<Token>)> {
        match self.tasks.work(task) {
            Some(Work::Login(w)) => Some((w.sid.clone(), w.stage, w.token.clone())),
            _ => None,
        }
    }

    /// The key being written and whether the login is a sandbox's.
    fn persist_key(&self, task: TaskId) -> Option<(Key, bool)> {
        match self.tasks.work(task) {
            Some(Work::Login(w)) => w.key.clone().map(|k| (k, w.sandbox)),
            _ => None,
        }
    }

    fn persist_stage(&mut self, task: TaskId, stage: LoginStage) {
        if let Some(Work::Login(w)) = self.tasks.work_mut(task) {
            w.stage = stage;
        }
    }

    /// Starts storing the token of `sid`'s login.
    pub(crate) fn persist_start(&mut self, task: TaskId, sid: &str) {
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
            w.stage = LoginStage::EngineLock;
            w.key = Some(key.clone());
            w.sandbox = class == ConnClass::Sandbox;
        }
        if self.keys.lock(&key, task) {
            self.persist_locked(task);
        }
    }

    /// The engine write lock is held: take the store lock.
    pub(crate) fn persist_locked(&mut self, task: TaskId) {
        let Some(Work::Login(w)) = self.tasks.work(task) else {
            return;
        };
        let Some(key) = w.key.clone() else { return };
        if let Some(t) = self.tasks.get_mut(task) {
            t.holds = Some(key.clone());
        }
        self.persist_stage(task, LoginStage::StoreLock);
        let wait_ms = self.config.limits.lock_wait_ms;
        self.emit_effect(task, Effect::lock_acquire(&key, wait_ms));
    }

    /// Continues storing with an effect result.
    pub(crate) fn persist_step(&mut self, task: TaskId, result: EffectResult) {
        let Some((_, stage, token)) = self.persist_parts(task) else {
            return;
        };
        let Some((key, sandbox)) = self.persist_key(task) else {
            return;
        };
        let Some(token) = token else {
            return self.persist_done(task, Err(Failure::internal()), false);
        };
        let may_overwrite = !sandbox || self.config.policy.sandbox_login_overwrite;
        match (stage, result) {
            (LoginStage::StoreLock, EffectResult::Locked(true)) if may_overwrite => {
                self.persist_put(task, &key, token)
            }
            (LoginStage::StoreLock, EffectResult::Locked(true)) => {
                self.persist_stage(task, LoginStage::CheckExisting);
                self.emit_effect(task, Effect::token_get(&key, true));
            }
            (LoginStage::StoreLock, EffectResult::Locked(false)) => {
                self.persist_done(
                    task,
                    Err(Failure::new(
                        ErrorCode::InternalError,
                        "Credential store is busy",
                    )),
                    false,
                );
            }
            (LoginStage::CheckExisting, EffectResult::Token(existing)) => {
                let margin = self.config.limits.valid_margin_ms;
                if existing.is_some_and(|t| still_valid(&t, self.now.unix_ms, margin)) {
                    self.persist_stage(task, LoginStage::CheckMeta);
                    self.emit_effect(task, Effect::meta_get(&key));
                } else {
                    self.persist_put(task, &key, token);
                }
            }
            (
                LoginStage::CheckMeta,
                EffectResult::Meta {
                    refresh_unusable: true,
                },
            ) => self.persist_put(task, &key, token),
            (LoginStage::CheckMeta, EffectResult::Meta { .. }) => {
                let f = Failure::new(
                    ErrorCode::Forbidden,
                    "Login would replace an existing credential",
                );
                self.persist_done(task, Err(f), true);
            }
            (LoginStage::Put, EffectResult::Done) => {
                self.persist_stage(task, LoginStage::ClearMeta);
                self.emit_effect(task, Effect::meta_put(&key, false));
            }
            (LoginStage::ClearMeta, _) => self.persist_done(task, Ok(token), true),
            (stage, _) => {
                let locked = stage != LoginStage::StoreLock;
                self.persist_done(task, Err(Failure::internal()), locked);
            }
        }
    }

    fn persist_put(&mut self, task: TaskId, key: &Key, token: Token) {
        self.persist_stage(task, LoginStage::Put);
        self.keys.clear_override(key);
        self.emit_effect(task, Effect::token_put(key, token));
    }

    /// The store step is over: release the store lock, audit, schedule
    /// renewal and hand the outcome to the session.
    fn persist_done(&mut self, task: TaskId, result: Result<Token, Failure>, store_locked: bool) {
        let Some((sid, _, _)) = self.persist_parts(task) else {
            return;
        };
        let Some((key, sandbox)) = self.persist_key(task) else {
            return;
        };
        if store_locked {
            self.emit_detached(Effect::lock_release(&key));
        }
        if let Some(t) = self.tasks.get_mut(task)
            && let Some(held) = t.holds.take()
        {
            self.release_key(&held, task);
        }
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
