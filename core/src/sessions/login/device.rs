//! Device flows (RFC 8628 and OpenAI's Codex dialect): the device
//! authorization request, then background polling on an engine timer with
//! `slow_down`, back-off on transient errors and the terminal answers.

use rand_core::CryptoRng;
use serde_json::Value;

use crate::engine::effect::{Effect, EffectResult};
use crate::engine::engine::Engine;
use crate::engine::secret::Secret;
use crate::oauth::http::{self, Verdict};
use crate::oauth::oauth_reply::DeviceGrant;
use crate::oauth::provider::{BodyEncoding, Dialect, ProviderSpec};
use crate::operations::op::Op;
use crate::operations::task::{TaskId, Work};
use crate::sessions::pkce;
use crate::sessions::session::{Outcome, Step};
use crate::wire::error::ErrorCode;

use super::errors::{failure, not_found, provider_failure, verdict_of};
use crate::operations::task::{LoginStage, LoginWork};

impl<R: CryptoRng> Engine<R> {
    pub(super) fn device_authorization(&self, spec: &ProviderSpec, sid: &str) -> http::HttpRequest {
        let timeout = self.config.limits.http_timeout_ms;
        let url = spec.device_url.clone().unwrap_or_default();
        let scope = spec.scope();
        let challenge = self
            .sessions
            .get(sid)
            .map(|s| pkce::challenge(&s.verifier))
            .unwrap_or_default();
        let mut fields: Vec<(&str, &str)> = vec![("client_id", &spec.client_id)];
        match spec.dialect {
            Dialect::CodexDevice => {}
            Dialect::Qwen => {
                fields.push(("scope", &scope));
                fields.push(("code_challenge", &challenge));
                fields.push(("code_challenge_method", "S256"));
            }
            _ => {
                if !scope.is_empty() {
                    fields.push(("scope", &scope));
                }
            }
        }
        if let Some(secret) = &spec.client_secret {
            fields.push(("client_secret", secret.expose()));
        }
        http::post(&url, spec.device_encoding, &fields, timeout)
    }

    /// Result of the device authorization request.
    pub(super) fn device_authorized(&mut self, task: TaskId, result: &EffectResult) {
        let Some(sid) = self.task_sid(task) else {
            return;
        };
        let Some(spec) = self.sessions.get(&sid).and_then(|s| self.spec(&s.provider)) else {
            return self.finish(task, Err(not_found()));
        };
        let verdict = verdict_of(result);
        let grant = match &verdict {
            Verdict::Ok(body) if spec.dialect == Dialect::CodexDevice => {
                DeviceGrant::codex(body, spec.verification_url.as_deref().unwrap_or_default())
            }
            Verdict::Ok(body) => DeviceGrant::standard(body),
            _ => None,
        };
        let Some(grant) = grant else {
            let f = provider_failure(ErrorCode::FlowInitiationFailed, &verdict);
            return self.initiation_failed(task, &f.message);
        };
        let limits = &self.config.limits;
        let interval_ms = grant
            .interval_s
            .filter(|i| *i > 0)
            .map_or(limits.device_poll_ms, |i| i.saturating_mul(1000));
        let lifetime_ms = grant
            .expires_in_s
            .unwrap_or(spec.default_device_lifetime_s)
            .saturating_mul(1000);
        let device_expiry = self.now.mono.plus(lifetime_ms);
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        session.device_code = Some(Secret::new(grant.device_code.clone()));
        session.user_code = Some(grant.user_code.clone());
        session.expires = session.expires.min(device_expiry);
        let _ = session.start_polling(interval_ms);
        let at = self.now.mono.plus(interval_ms);
        self.sessions.arm_poll(&sid, at, &mut self.timers);
        self.initiate_reply(task, &spec, Some(&grant));
    }

    /// A device poll is due.
    pub(crate) fn device_poll_due(&mut self, serial: u64) {
        let Some(sid) = self.sessions.by_serial(serial).map(str::to_owned) else {
            return;
        };
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        if !matches!(session.step(), Some(Step::Polling { .. })) {
            return;
        }
        let Some(spec) = self.spec(&session.provider) else {
            return;
        };
        let device = session.device_code.clone().unwrap_or_default();
        let timeout = self.config.limits.http_timeout_ms;
        let request = match spec.dialect {
            Dialect::CodexDevice => {
                let user = session.user_code.clone().unwrap_or_default();
                let url = spec.device_token_url.clone().unwrap_or_default();
                http::post(
                    &url,
                    BodyEncoding::Json,
                    &[("device_auth_id", device.expose()), ("user_code", &user)],
                    timeout,
                )
            }
            _ => {
                let url = spec.token_url.clone().unwrap_or_default();
                let mut fields = vec![
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", device.expose()),
                    ("client_id", spec.client_id.as_str()),
                ];
                if spec.dialect == Dialect::Qwen {
                    fields.push(("code_verifier", session.verifier.expose()));
                }
                if let Some(s) = &spec.client_secret {
                    fields.push(("client_secret", s.expose()));
                }
                http::post(&url, spec.device_encoding, &fields, timeout)
            }
        };
        let task = self.background_task(
            Op::OauthPoll,
            Work::Login(LoginWork::new(&sid, LoginStage::Polling)),
        );
        self.emit_effect(task, Effect::Http(request));
    }

    /// Result of a device poll.
    pub(super) fn device_polled(&mut self, task: TaskId, result: &EffectResult) {
        let Some(sid) = self.task_sid(task) else {
            return;
        };
        let Some((provider, step)) = self
            .sessions
            .get(&sid)
            .map(|s| (s.provider.clone(), s.step()))
        else {
            return self.finish(task, Err(not_found()));
        };
        let Some(Step::Polling {
            interval_ms,
            slowed,
            errors,
        }) = step
        else {
            return self.finish(task, Err(not_found()));
        };
        let Some(spec) = self.spec(&provider) else {
            return;
        };
        let verdict = verdict_of(result);
        if spec.dialect == Dialect::CodexDevice {
            return self.codex_polled(task, &sid, &spec, verdict, (interval_ms, slowed, errors));
        }
        let limits = &self.config.limits;
        match &verdict {
            Verdict::Ok(body) => {
                self.token_received(task, body.clone(), &spec, ErrorCode::PollFailed)
            }
            Verdict::Transient(_) => {
                let errors = errors.saturating_add(1);
                let wait = interval_ms
                    .saturating_mul(1u64 << errors.min(16))
                    .min(limits.poll_backoff_cap_ms.max(interval_ms));
                self.repoll(task, &sid, interval_ms, slowed, errors, wait);
            }
            Verdict::Rejected { error, .. } => match error.as_deref() {
                Some("authorization_pending") => {
                    self.repoll(task, &sid, interval_ms, slowed, 0, interval_ms)
                }
                Some("slow_down") => {
                    let next = interval_ms.saturating_add(limits.slow_down_ms);
                    self.repoll(task, &sid, next, true, 0, next);
                }
                Some("access_denied") => {
                    let f = failure(ErrorCode::AccessDenied, "User denied authorization");
                    self.complete_session(task, &sid, Outcome::Failed(f));
                }
                Some("expired_token") => {
                    let f = failure(ErrorCode::SessionExpired, "Device code expired");
                    self.complete_session(task, &sid, Outcome::Failed(f));
                }
                _ => {
                    let f = provider_failure(ErrorCode::PollFailed, &verdict);
                    self.complete_session(task, &sid, Outcome::Failed(f));
                }
            },
        }
    }

    pub(super) fn codex_polled(
        &mut self,
        task: TaskId,
        sid: &str,
        spec: &ProviderSpec,
        verdict: Verdict,
        poll: (u64, bool, u8),
    ) {
        let (interval_ms, slowed, errors) = poll;
        match verdict {
            Verdict::Ok(body) => {
                let code = body.get("authorization_code").and_then(Value::as_str);
                let verifier = body.get("code_verifier").and_then(Value::as_str);
                let (Some(code), Some(verifier)) = (code, verifier) else {
                    let f = failure(
                        ErrorCode::PollFailed,
                        "Provider rejected the request (invalid_response)",
                    );
                    return self.complete_session(task, sid, Outcome::Failed(f));
                };
                let code = Secret::new(code);
                let verifier = Secret::new(verifier);
                let redirect = spec.redirect_uri.clone().unwrap_or_default();
                let request = http::post(
                    spec.token_url.as_deref().unwrap_or_default(),
                    BodyEncoding::Form,
                    &[
                        ("grant_type", "authorization_code"),
                        ("code", code.expose()),
                        ("redirect_uri", &redirect),
                        ("client_id", &spec.client_id),
                        ("code_verifier", verifier.expose()),
                    ],
                    self.config.limits.provider_call_ms,
                );
                self.set_stage(task, LoginStage::CodexExchanging);
                self.emit_effect(task, Effect::Http(request));
            }
            Verdict::Rejected {
                status: 403 | 404, ..
            } => {
                self.repoll(task, sid, interval_ms, slowed, 0, interval_ms);
            }
            Verdict::Transient(_) => {
                let errors = errors.saturating_add(1);
                let cap = self.config.limits.poll_backoff_cap_ms.max(interval_ms);
                let wait = interval_ms.saturating_mul(1u64 << errors.min(16)).min(cap);
                self.repoll(task, sid, interval_ms, slowed, errors, wait);
            }
            Verdict::Rejected { .. } => {
                let f = provider_failure(ErrorCode::PollFailed, &verdict);
                self.complete_session(task, sid, Outcome::Failed(f));
            }
        }
    }

    /// Schedules the next device poll and ends this poll's task.
    pub(super) fn repoll(
        &mut self,
        task: TaskId,
        sid: &str,
        interval_ms: u64,
        slowed: bool,
        errors: u8,
        wait_ms: u64,
    ) {
        if let Some(s) = self.sessions.get_mut(sid) {
            let _ = s.set_polling(interval_ms, slowed, errors);
            let at = self.now.mono.plus(wait_ms);
            self.sessions.arm_poll(sid, at, &mut self.timers);
        }
        self.tasks.remove(task);
    }
}
