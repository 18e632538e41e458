//! Token refresh (SPEC §5.3): the `refresh_token` operation and the refresh
//! job shared by every caller of one key.
//!
//! - One job per `provider:bucket` at a time; concurrent callers (and the
//!   proactive renewal) wait for its result.
//! - The job holds the key's engine write lock and its cross-process store
//!   lock, re-reads the token fresh and skips the provider when another
//!   process already refreshed it.
//! - A cooldown follows every provider attempt: during it a still-valid
//!   token (re-read fresh if need be) is returned, else `RATE_LIMITED`.
//! - Transient failures retry after 1 s and 3 s on engine timers; auth
//!   failures re-read once (a sibling may have rotated the refresh token),
//!   then mark the refresh token unusable.
//! - The rotated token is written before anyone gets the access token; if
//!   the write fails, the merged token stays authoritative in memory and the
//!   write is retried.
//! - A `remove_token` during the job wins: the result is not saved.
//! - A write the store refuses because another process wrote the key
//!   meanwhile is reconciled with what is stored now (see `reconcile`).
//! - A store that cannot be reached answers `STORE_UNAVAILABLE` with
//!   `retryAfter` wherever the refresh needs the store to go on (reads, the
//!   lock, the re-read after a refusal). The write of a refreshed token is
//!   the exception: the provider has answered (and may have rotated the
//!   refresh token, spending the old one), so the callers get the new token
//!   and it is kept in memory as authoritative and written again once the
//!   store is due back, exactly as for a failed write.

use rand_core::CryptoRng;
use serde_json::Map;
use sha2::{Digest, Sha256};

use crate::engine::effect::{Effect, EffectResult};
use crate::engine::engine::Engine;
use crate::oauth::http::{self, Verdict};
use crate::oauth::oauth_reply::with_codex_account;
use crate::oauth::provider::{BodyEncoding, Dialect};
use crate::operations::op::Op;
use crate::operations::task::{
    CheckStage, JobStage, RefreshCheck, RefreshJob, Refreshed, TaskId, Work,
};
use crate::sessions::login::{provider_failure, still_valid};
use crate::tokens::token::Token;
use crate::wire::error::ErrorCode;
use crate::wire::reply::{Answer, Data, Failure};
use crate::writes::keylock::Key;
use crate::writes::write_lock::LockedWrite;

/// Attempts of one refresh (the first and two retries).
const MAX_ATTEMPTS: u8 = 3;

/// SHA-256 of a token's access token (kept instead of the token).
pub(crate) fn access_digest(token: &Token) -> [u8; 32] {
    let access = token
        .as_map()
        .get("access_token")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    Sha256::digest(access.as_bytes()).into()
}

fn is_auth_error(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Rejected { status: 401, .. })
        || matches!(verdict, Verdict::Rejected { error: Some(e), .. }
            if matches!(e.as_str(), "invalid_grant" | "invalid_client" | "unauthorized_client"))
}

impl<R: CryptoRng> Engine<R> {
    /// `refresh_token {provider, bucket?}` (validated).
    pub(crate) fn refresh_request(
        &mut self,
        conn: crate::engine::audit::ConnId,
        id: String,
        key: Key,
    ) -> Option<Answer> {
        if !self.config.providers.contains_key(&key.provider) {
            return Some(Err(Failure::new(
                ErrorCode::ProviderNotFound,
                format!("No OAuth provider configured for: {}", key.provider),
            )));
        }
        let override_token = self.keys.override_of(&key).cloned();
        let work = Work::RefreshCheck(RefreshCheck {
            key: key.clone(),
            stage: CheckStage::Read,
        });
        let task = self.attach_task(conn, id, Op::RefreshToken, work);
        match override_token {
            Some(t) => self.check_step(task, EffectResult::Token(Some(t))),
            None => self.emit_effect(task, Effect::token_get(&key, false)),
        }
        None
    }

    /// Continues a request's checks.
    pub(crate) fn check_step(&mut self, task: TaskId, result: EffectResult) {
        let Some(Work::RefreshCheck(check)) = self.tasks.work_mut(task) else {
            return;
        };
        let key = check.key.clone();
        let stage = std::mem::replace(&mut check.stage, CheckStage::Read);
        match (stage, result) {
            (CheckStage::Read, EffectResult::Token(None)) => {
                self.finish(task, Err(not_found(&key)))
            }
            (CheckStage::Read, EffectResult::Token(Some(t))) if t.refresh_token().is_none() => {
                self.finish(task, Err(not_available(&key)));
            }
            (CheckStage::Read, EffectResult::Token(Some(t))) => {
                check.stage = CheckStage::Meta(t);
                self.emit_effect(task, Effect::meta_get(&key));
            }
            (
                CheckStage::Meta(_),
                EffectResult::Meta {
                    refresh_unusable: true,
                },
            ) => {
                self.finish(task, Err(reauth_needed(&key)));
            }
            (CheckStage::Meta(token), EffectResult::Meta { .. }) => {
                self.join_or_start(task, &key, &token);
            }
            (CheckStage::Reread, result) => {
                check.stage = CheckStage::Reread;
                self.cooldown_reread(task, &key, result);
            }
            (_, other) => self.finish(task, Err(other.store_failure())),
        }
    }

    /// Joins the key's job, answers from the cooldown, or starts a job.
    pub(crate) fn join_or_start(&mut self, task: TaskId, key: &Key, token: &Token) {
        if self.keys.wait_refresh(key, task) {
            self.await_job(task, key);
            return;
        }
        if self.answered_in_cooldown(task, key, token) {
            return;
        }
        self.start_refresh_job(key, Some(access_digest(token)), false);
        self.keys.wait_refresh(key, task);
        self.await_job(task, key);
    }

    fn await_job(&mut self, task: TaskId, key: &Key) {
        if let Some(t) = self.tasks.get_mut(task) {
            t.work = Work::AwaitRefresh { key: key.clone() };
        }
    }

    /// Starts the refresh job of `key` (the caller checked none runs).
    pub(crate) fn start_refresh_job(&mut self, key: &Key, seen: Option<[u8; 32]>, renewal: bool) {
        let job = RefreshJob {
            write: LockedWrite::new(key.clone()),
            seen,
            current: None,
            attempts: 0,
            reread: false,
            renewal,
            logout: false,
        };
        let task = self.background_task(Op::RefreshToken, Work::Refresh(Box::new(job)));
        self.keys.start_refresh(key, task);
        self.write_queue(task);
    }

    /// When a refresh of `key` is running, makes it carry the key's due
    /// renewal (its end then reschedules, backs off or stops the renewal)
    /// and returns true.
    pub(crate) fn refresh_carries_renewal(&mut self, key: &Key) -> bool {
        let Some(task) = self.keys.refresh_job(key) else {
            return false;
        };
        if let Some(job) = self.job(task) {
            job.renewal = true;
        }
        true
    }

    pub(crate) fn job(&mut self, task: TaskId) -> Option<&mut RefreshJob> {
        match self.tasks.work_mut(task) {
            Some(Work::Refresh(j)) => Some(j),
            _ => None,
        }
    }

    /// Both locks are held: read the token fresh (another process may have
    /// refreshed it).
    pub(crate) fn refresh_locked(&mut self, task: TaskId) {
        let Some(job) = self.job(task) else { return };
        job.write.set_stage(JobStage::ReadFresh);
        let key = job.key().clone();
        self.write_read_fresh(task, &key);
    }

    /// Continues a job with an effect result.
    pub(crate) fn refresh_step(&mut self, task: TaskId, result: EffectResult) {
        let margin = self.config.limits.valid_margin_ms;
        let now_ms = self.now.unix_ms;
        let Some(job) = self.job(task) else { return };
        let key = job.key().clone();
        let Some(stage) = job.stage().cloned() else {
            return self.job_done(task, Err(Failure::internal()));
        };
        match (stage, result) {
            (JobStage::ReadFresh, EffectResult::Token(None)) => {
                self.job_done(task, Err(not_found(&key)))
            }
            (JobStage::ReadFresh, EffectResult::Token(Some(t))) if t.refresh_token().is_none() => {
                self.job_done(task, Err(not_available(&key)));
            }
            (JobStage::ReadFresh, EffectResult::Token(Some(t))) => {
                let changed = job.seen.is_some_and(|seen| seen != access_digest(&t));
                if changed && still_valid(&t, now_ms, margin) {
                    return self.job_done(task, Ok(t));
                }
                job.current = Some(t);
                job.write.set_stage(JobStage::Meta);
                self.emit_effect(task, Effect::meta_get(&key));
            }
            (
                JobStage::Meta,
                EffectResult::Meta {
                    refresh_unusable: true,
                },
            ) => {
                self.job_done(task, Err(reauth_needed(&key)));
            }
            (JobStage::Meta, EffectResult::Meta { .. }) => {
                if self.needs_discovery(&key.provider) {
                    if let Some(job) = self.job(task) {
                        job.write.set_stage(JobStage::Discovering);
                    }
                    return self.discover(&key.provider, task);
                }
                self.call_provider(task);
            }
            (JobStage::Discovering, result) => self.discovery_result(task, &result),
            (JobStage::Calling, EffectResult::Http(outcome)) => {
                self.refresh_answered(task, &http::classify(&outcome))
            }
            (JobStage::Reread(failure), EffectResult::Token(Some(t))) => {
                let rotated = t.refresh_token().is_some()
                    && t.refresh_token() != job.current.as_ref().and_then(Token::refresh_token);
                if !rotated {
                    return self.mark_unusable(task, failure);
                }
                job.reread = true;
                if still_valid(&t, now_ms, margin) {
                    return self.job_done(task, Ok(t));
                }
                job.current = Some(t);
                self.call_provider(task);
            }
            // Whether a sibling rotated the refresh token cannot be told:
            // neither mark it nor claim a login is needed.
            (JobStage::Reread(_), other @ EffectResult::Unavailable { .. }) => {
                self.job_done(task, Err(other.store_failure()))
            }
            (JobStage::Reread(failure), _) => self.mark_unusable(task, failure),
            (JobStage::Writing(r), EffectResult::Done) => self.job_done(task, Ok(r.merged)),
            (JobStage::Writing(_) | JobStage::MarkUnusable(_), EffectResult::Conflict) => {
                self.write_conflict(task)
            }
            (JobStage::Writing(r), other) => {
                let retry_at = self.now.mono.plus(write_retry_ms(&other, 1_000));
                self.keys
                    .set_override(&key, r.merged.clone(), retry_at, &mut self.timers);
                self.job_done(task, Ok(r.merged));
            }
            (JobStage::Reconciling(r), result) => self.reconcile(task, r, result),
            (JobStage::MarkUnusable(f), _) => self.job_done(task, Err(f)),
            (_, other) => self.job_done(task, Err(other.store_failure())),
        }
    }

    /// Discovery finished for a job.
    pub(crate) fn refresh_after_discovery(&mut self, task: TaskId, result: Result<(), Failure>) {
        match result {
            Ok(()) => self.call_provider(task),
            Err(f) => self.job_done(task, Err(Failure::new(ErrorCode::RefreshFailed, f.message))),
        }
    }

    /// Sends the refresh request with the current refresh token.
    fn call_provider(&mut self, task: TaskId) {
        let timeout = self.config.limits.provider_call_ms;
        let Some(job) = self.job(task) else { return };
        let key = job.key().clone();
        let rt = job
            .current
            .as_ref()
            .and_then(Token::refresh_token)
            .unwrap_or_default()
            .to_owned();
        job.attempts += 1;
        job.write.set_stage(JobStage::Calling);
        let Some(spec) = self.spec(&key.provider) else {
            return self.job_done(
                task,
                Err(Failure::new(
                    ErrorCode::ProviderNotFound,
                    "No OAuth provider configured",
                )),
            );
        };
        let mut fields = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", spec.client_id.as_str()),
        ];
        if let Some(s) = &spec.client_secret {
            fields.push(("client_secret", s.expose()));
        }
        let url = spec.token_url.clone().unwrap_or_default();
        let request = http::post(&url, BodyEncoding::Form, &fields, timeout);
        self.emit_effect(task, Effect::Http(request));
    }

    /// The provider answered a refresh.
    fn refresh_answered(&mut self, task: TaskId, verdict: &Verdict) {
        let retry = self.config.limits.refresh_retry_ms;
        let now_s = self.now.unix_secs();
        let provider = self
            .job(task)
            .map(|j| j.key().provider.clone())
            .unwrap_or_default();
        let dialect = self.config.providers.get(&provider).map(|s| s.dialect);
        let Some(job) = self.job(task) else { return };
        let key = job.key().clone();
        match verdict {
            Verdict::Ok(body) => {
                let Some(new) = http::token_from_response(body.clone(), now_s) else {
                    let f = Failure::new(
                        ErrorCode::RefreshFailed,
                        "Provider rejected the request (invalid_response)",
                    );
                    return self.job_done(task, Err(f));
                };
                let new = match dialect {
                    Some(Dialect::Codex | Dialect::CodexDevice) => with_codex_account(new),
                    _ => new,
                };
                let merged = job.current.clone().unwrap_or_default().merged_with(&new);
                if job.logout {
                    return self.job_done(task, Err(not_found(&key)));
                }
                let put = Effect::token_put(&key, merged.clone());
                job.write
                    .set_stage(JobStage::Writing(Refreshed { new, merged }));
                self.emit_effect(task, put);
            }
            Verdict::Transient(_) if job.attempts < MAX_ATTEMPTS => {
                let wait = retry[usize::from(job.attempts - 1).min(1)];
                job.write.set_stage(JobStage::Backoff);
                let at = self.now.mono.plus(wait);
                self.keys.arm_refresh_retry(&key, at, &mut self.timers);
            }
            Verdict::Transient(_) => {
                self.job_done(
                    task,
                    Err(provider_failure(ErrorCode::RefreshFailed, verdict)),
                );
            }
            v if is_auth_error(v) => {
                let failure = provider_failure(ErrorCode::ReauthRequired, v);
                if job.reread {
                    return self.mark_unusable(task, failure);
                }
                job.write.set_stage(JobStage::Reread(failure));
                self.emit_effect(task, Effect::token_get(&key, true));
            }
            v => self.job_done(task, Err(provider_failure(ErrorCode::RefreshFailed, v))),
        }
    }

    /// A retry timer fired.
    pub(crate) fn refresh_retry_due(&mut self, serial: u64) {
        let Some(key) = self.keys.key_of(serial) else {
            return;
        };
        let Some(job) = self.keys.refresh_job(&key) else {
            return;
        };
        if self
            .job(job)
            .is_some_and(|j| j.stage() == Some(&JobStage::Backoff))
        {
            self.call_provider(job);
        }
    }

    /// The refresh token is dead: mark it, then answer `failure`.
    fn mark_unusable(&mut self, task: TaskId, failure: Failure) {
        let Some(job) = self.job(task) else { return };
        job.write.set_stage(JobStage::MarkUnusable(failure));
        let key = job.key().clone();
        self.emit_effect(task, Effect::meta_put(&key, true));
    }

    /// Ends a job: locks released, cooldown set, waiters answered,
    /// renewal rescheduled or stopped.
    pub(crate) fn job_done(&mut self, task: TaskId, result: Result<Token, Failure>) {
        let Some(job) = self.job(task) else { return };
        let key = job.key().clone();
        let (attempts, renewal) = (job.attempts, job.renewal);
        if attempts > 0 {
            self.keys.record_attempt(&key, self.now.mono);
        }
        self.finish(task, Ok(Map::new().into()));
        let waiters = self.keys.end_refresh(&key);
        let answer: Answer = result
            .as_ref()
            .map(|t| Data::Token(t.clone()))
            .map_err(Clone::clone);
        for w in waiters {
            // A waiter is a request parked by `await_job` (or one already
            // gone with its connection); anything else would be a request
            // answered twice or answered with another key's token.
            debug_assert!(
                match self.tasks.work(w) {
                    None => true,
                    Some(Work::AwaitRefresh { key: k }) => *k == key,
                    Some(_) => false,
                },
                "refresh waiter not awaiting {key:?}"
            );
            self.finish(w, answer.clone());
        }
        match &result {
            Ok(token) => {
                if renewal {
                    // The renewal's timer has fired: its schedule is spent.
                    // Forget it so the token is scheduled anew even when its
                    // expiry is the one already recorded (a re-read token
                    // swapped by another process, a provider answering the
                    // same expiry); `schedule_renewal` would keep the spent
                    // one. (Its tries start over, as on any success.) No
                    // tight loop: `fire_at` answers strictly after now (lead
                    // + jitter < the remaining lifetime) and not before the
                    // cooldown of an attempt; the next fire re-reads the
                    // token recorded here, so it calls the provider unless
                    // someone changed the token again.
                    self.keys.forget_renewal(&key, &mut self.timers);
                } else if let Some(r) = self.keys.renewal_mut(&key) {
                    r.tries = 0;
                }
                self.schedule_renewal(&key, token);
            }
            Err(f) if renewal => self.renewal_failed(&key, f),
            Err(f) if f.code == ErrorCode::ReauthRequired => self.renewal_forget(&key),
            Err(_) => {}
        }
    }

    /// A `remove_token` arrived: a running job must not save its result.
    pub(crate) fn refresh_logout(&mut self, key: &Key) {
        self.keys.clear_override(key);
        self.renewal_forget(key);
        if let Some(job) = self.keys.refresh_job(key)
            && let Some(j) = self.job(job)
        {
            j.logout = true;
        }
    }

    /// Retries writing an authoritative token that failed to persist.
    pub(crate) fn write_back_due(&mut self, serial: u64) {
        let Some(key) = self.keys.key_of(serial) else {
            return;
        };
        let Some(token) = self.keys.override_of(&key).cloned() else {
            return;
        };
        let task = self.background_task(Op::RefreshToken, Work::WriteBack { key: key.clone() });
        self.emit_effect(task, Effect::token_put(&key, token));
    }

    /// Result of a write-back. A refused one (`Conflict`) ends it too:
    /// another process wrote the key since, and a newer stored token is
    /// never written over, so the in-memory copy stops being authoritative.
    pub(crate) fn write_back_done(&mut self, task: TaskId, key: &Key, result: &EffectResult) {
        self.tasks.remove(task);
        if matches!(result, EffectResult::Done | EffectResult::Conflict) {
            self.keys.clear_override(key);
        } else {
            let at = self.now.mono.plus(write_retry_ms(result, 5_000));
            self.keys.retry_write_back(key, at, &mut self.timers);
        }
    }
}

/// When to write an authoritative token again after `result`: `default_ms`
/// later, or when an unreachable store is due back if that is later.
fn write_retry_ms(result: &EffectResult, default_ms: u64) -> u64 {
    match result {
        EffectResult::Unavailable { retry_after_ms } => default_ms.max(*retry_after_ms),
        _ => default_ms,
    }
}

pub(crate) fn not_found(key: &Key) -> Failure {
    Failure::new(
        ErrorCode::NotFound,
        format!("No token found for provider: {}", key.provider),
    )
}

pub(crate) fn not_available(key: &Key) -> Failure {
    Failure::new(
        ErrorCode::RefreshNotAvailable,
        format!("Token for {} does not have a refresh_token", key.provider),
    )
}

fn reauth_needed(key: &Key) -> Failure {
    Failure::new(
        ErrorCode::ReauthRequired,
        format!("Login required for {}/{}", key.provider, key.bucket),
    )
}
