//! Host-side OAuth login (SPEC §4): `oauth_initiate`, `oauth_exchange`,
//! `oauth_poll`, `oauth_cancel`, background device polling, the browser
//! callback, and storing the resulting token.
//!
//! Every provider call is an [`Effect::Http`]; every wait is an engine
//! timer. A session's I/O runs as a [`LoginWork`] task, which counts as
//! side-effecting: cancelling the request that started it detaches it but
//! never drops it, so a token obtained is always stored.

use rand_core::CryptoRng;
use serde_json::{Map, Value};
use url::Url;

use crate::audit::{AuditEvent, ConnId, Level};
use crate::effect::{Effect, EffectResult};
use crate::engine::Engine;
use crate::error::ErrorCode;
use crate::handshake::ConnClass;
use crate::http::{self, Verdict};
use crate::keylock::Key;
use crate::oauth_reply::{DeviceGrant, Pasted, with_codex_account};
use crate::op::Op;
use crate::pkce;
use crate::provider::{BodyEncoding, Dialect, FlowType, ProviderSpec};
use crate::reply::{Answer, Data, Failure};
use crate::secret::Secret;
use crate::session::{Outcome, Owner, Session, Step, TransitionError};
use crate::task::{ReplyTo, Task, TaskId, Work};
use crate::time::Mono;
use crate::timer::TimerKey;
use crate::token::Token;

/// Where a session's task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoginStage {
    /// Waiting for the provider's OIDC discovery.
    Discovering,
    /// Device authorization request in flight.
    DeviceAuthorizing,
    /// Waiting for the loopback listener to start.
    StartingListener,
    /// Code exchange in flight.
    Exchanging,
    /// Device token poll in flight.
    Polling,
    /// Codex device dialect: exchange of the code the poll returned.
    CodexExchanging,
    /// Storing: waiting for the key's engine write lock.
    EngineLock,
    /// Storing: waiting for the key's cross-process lock.
    StoreLock,
    /// Storing (sandbox): reading the credential a login would replace.
    CheckExisting,
    /// Storing (sandbox): whether that credential's refresh token is dead.
    CheckMeta,
    /// Storing: writing the token.
    Put,
    /// Storing: clearing the unusable-refresh mark.
    ClearMeta,
}

/// The task state of a login.
#[derive(Debug)]
pub(crate) struct LoginWork {
    pub(crate) sid: String,
    pub(crate) stage: LoginStage,
    /// The token obtained, while it is being stored.
    pub(crate) token: Option<Token>,
    /// Codex device dialect: the server-generated verifier.
    pub(crate) codex_verifier: Option<Secret>,
    /// The key being written, once storing starts.
    pub(crate) key: Option<Key>,
    /// Whether the login came from a sandbox connection.
    pub(crate) sandbox: bool,
}

impl LoginWork {
    pub(crate) fn new(sid: &str, stage: LoginStage) -> LoginWork {
        LoginWork {
            sid: sid.to_owned(),
            stage,
            token: None,
            codex_verifier: None,
            key: None,
            sandbox: false,
        }
    }
}

/// A loopback listener shared by the browser sessions on its port.
#[derive(Debug)]
pub(crate) struct LoopbackListener {
    pub(crate) path: String,
    pub(crate) running: bool,
    pub(crate) waiters: Vec<TaskId>,
}

fn failure(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure::new(code, message)
}

fn not_found() -> Failure {
    failure(ErrorCode::SessionNotFound, "OAuth session not found")
}

fn mismatch() -> Failure {
    failure(
        ErrorCode::ExchangeFailed,
        "Authorization response does not match this session",
    )
}

/// `Provider unreachable (…)` / `Provider rejected the request (…)`.
pub(crate) fn provider_failure(code: ErrorCode, verdict: &Verdict) -> Failure {
    match verdict {
        Verdict::Transient(word) => failure(code, format!("Provider unreachable ({word})")),
        Verdict::Rejected { status, error } => {
            let what = error.clone().unwrap_or_else(|| format!("http {status}"));
            failure(code, format!("Provider rejected the request ({what})"))
        }
        Verdict::Ok(_) => failure(code, "Provider rejected the request (invalid_response)"),
    }
}

fn verdict_of(result: &EffectResult) -> Verdict {
    match result {
        EffectResult::Http(outcome) => http::classify(outcome),
        _ => Verdict::Transient("other".into()),
    }
}

fn object(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

impl<R: CryptoRng> Engine<R> {
    /// The provider's spec with discovered endpoints filled in.
    pub(crate) fn spec(&self, provider: &str) -> Option<ProviderSpec> {
        let mut spec = self.config.providers.get(provider)?.clone();
        if let Some(d) = self.discovered.get(provider) {
            spec.authorize_url = spec.authorize_url.or_else(|| d.authorize.clone());
            spec.token_url = spec.token_url.or_else(|| d.token.clone());
            spec.device_url = spec.device_url.or_else(|| d.device.clone());
        }
        Some(spec)
    }

    /// Whether the provider still needs its discovery document.
    pub(crate) fn needs_discovery(&self, provider: &str) -> bool {
        self.config
            .providers
            .get(provider)
            .is_some_and(|s| s.issuer.is_some() && !self.discovered.contains_key(provider))
    }

    /// `oauth_initiate {provider, bucket?}` (validated).
    pub(crate) fn oauth_initiate(
        &mut self,
        conn: ConnId,
        id: String,
        owner: Owner,
        key: Key,
    ) -> Option<Answer> {
        let Some(spec) = self.config.providers.get(&key.provider).cloned() else {
            return Some(Err(failure(
                ErrorCode::ProviderNotConfigured,
                format!(
                    "No OAuth flow factory configured for provider: {}",
                    key.provider
                ),
            )));
        };
        let mine = self.sessions.values().filter(|s| s.owner == owner).count();
        let limits = &self.config.limits;
        if mine >= limits.sessions_per_peer || self.sessions.len() >= limits.sessions_total {
            return Some(Err(failure(
                ErrorCode::ResourceExhausted,
                "Too many OAuth sessions",
            )));
        }
        let first = match spec.flow {
            FlowType::PkceRedirect => Step::AwaitingCode { attempts: 0 },
            FlowType::BrowserRedirect => Step::AwaitingCallback { attempts: 0 },
            FlowType::DeviceCode => Step::Authorizing,
        };
        let expires = self.now.mono.plus(limits.session_ttl_ms);
        self.next_serial += 1;
        let serial = self.next_serial;
        let sid = pkce::session_id(&mut self.rng);
        let verifier = pkce::verifier(&mut self.rng);
        let state = pkce::state(&mut self.rng);
        let mut session = Session::new(
            serial,
            key.provider,
            key.bucket,
            spec.flow,
            (owner, conn),
            expires,
            verifier,
            state,
            first,
        );
        session.port = spec.loopback_redirect().map(|(port, _)| port);
        self.session_serials.insert(serial, sid.clone());
        self.sessions.insert(sid.clone(), session);
        self.arm_sweep();
        let task = self.attach_task(
            conn,
            id,
            Op::OauthInitiate,
            Work::Login(LoginWork::new(&sid, LoginStage::Discovering)),
        );
        self.initiate_next(task);
        None
    }

    /// Creates a task answering request `id` on `conn`.
    pub(crate) fn attach_task(&mut self, conn: ConnId, id: String, op: Op, work: Work) -> TaskId {
        let task = self.new_task_id();
        if let Some(c) = self.conns.get_mut(&conn) {
            c.in_flight.insert(id.clone(), task);
        }
        let reply = Some(ReplyTo { conn, id });
        self.tasks.insert(
            task,
            Task {
                op,
                reply,
                work,
                holds: None,
            },
        );
        task
    }

    /// Creates a background task (no reply).
    pub(crate) fn background_task(&mut self, op: Op, work: Work) -> TaskId {
        let task = self.new_task_id();
        self.tasks.insert(
            task,
            Task {
                op,
                reply: None,
                work,
                holds: None,
            },
        );
        task
    }

    fn login_work(&mut self, task: TaskId) -> Option<&mut LoginWork> {
        match self.tasks.get_mut(&task).map(|t| &mut t.work) {
            Some(Work::Login(w)) => Some(w),
            _ => None,
        }
    }

    fn set_stage(&mut self, task: TaskId, stage: LoginStage) {
        if let Some(w) = self.login_work(task) {
            w.stage = stage;
        }
    }

    fn task_sid(&self, task: TaskId) -> Option<String> {
        match self.tasks.get(&task).map(|t| &t.work) {
            Some(Work::Login(w)) => Some(w.sid.clone()),
            _ => None,
        }
    }

    /// The next initiation step: discovery, then the flow's own step.
    fn initiate_next(&mut self, task: TaskId) {
        let Some(sid) = self.task_sid(task) else {
            return;
        };
        let Some(provider) = self.sessions.get(&sid).map(|s| s.provider.clone()) else {
            return self.finish(task, Err(not_found()));
        };
        if self.needs_discovery(&provider) {
            self.set_stage(task, LoginStage::Discovering);
            return self.discover(&provider, task);
        }
        let Some(spec) = self.spec(&provider) else {
            return self.initiation_failed(task, "Provider is not configured");
        };
        match spec.flow {
            FlowType::PkceRedirect => self.initiate_reply(task, &spec, None),
            FlowType::BrowserRedirect => match spec.loopback_redirect() {
                Some((port, path)) => {
                    self.set_stage(task, LoginStage::StartingListener);
                    if self.ensure_listener(port, path, task) {
                        self.initiate_reply(task, &spec, None);
                    }
                }
                None => self.initiate_reply(task, &spec, None),
            },
            FlowType::DeviceCode => {
                self.set_stage(task, LoginStage::DeviceAuthorizing);
                let request = self.device_authorization(&spec, &sid);
                self.emit_effect(task, Effect::Http(request));
            }
        }
    }

    /// Continues a task that waited for discovery.
    pub(crate) fn login_after_discovery(&mut self, task: TaskId, result: Result<(), Failure>) {
        match result {
            Ok(()) => self.initiate_next(task),
            Err(f) => self.initiation_failed(task, &f.message),
        }
    }

    fn initiation_failed(&mut self, task: TaskId, message: &str) {
        if let Some(sid) = self.task_sid(task) {
            self.drop_session(&sid);
        }
        self.finish(task, Err(failure(ErrorCode::FlowInitiationFailed, message)));
    }

    /// The authorization URL of a code flow.
    fn auth_url(&self, spec: &ProviderSpec, session: &Session) -> Option<String> {
        let mut url = Url::parse(spec.authorize_url.as_deref()?).ok()?;
        {
            let mut q = url.query_pairs_mut();
            if spec.dialect == Dialect::Anthropic {
                for (k, v) in &spec.extra_auth_params {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("client_id", &spec.client_id);
            q.append_pair("response_type", "code");
            if let Some(r) = &spec.redirect_uri {
                q.append_pair("redirect_uri", r);
            }
            if !spec.scopes.is_empty() {
                q.append_pair("scope", &spec.scope());
            }
            q.append_pair("code_challenge", &pkce::challenge(&session.verifier));
            q.append_pair("code_challenge_method", "S256");
            q.append_pair("state", session.state_param.expose());
            if spec.dialect != Dialect::Anthropic {
                for (k, v) in &spec.extra_auth_params {
                    q.append_pair(k, v);
                }
            }
        }
        Some(url.into())
    }

    /// Answers `oauth_initiate` once the session is ready.
    pub(crate) fn reply_initiated(&mut self, task: TaskId, spec: &ProviderSpec) {
        self.initiate_reply(task, spec, None);
    }

    fn initiate_reply(&mut self, task: TaskId, spec: &ProviderSpec, grant: Option<&DeviceGrant>) {
        let Some(sid) = self.task_sid(task) else {
            return;
        };
        let Some(session) = self.sessions.get(&sid) else {
            return self.finish(task, Err(not_found()));
        };
        let expires_in = session.expires.since(self.now.mono).div_ceil(1000);
        let interval = match session.step() {
            Some(Step::Polling { interval_ms, .. }) => interval_ms,
            _ => self.config.limits.device_poll_ms,
        };
        let mut data = object(vec![
            ("flow_type", Value::from(spec.flow.to_string())),
            ("session_id", Value::from(sid.clone())),
            ("pollIntervalMs", Value::from(interval)),
            ("expires_in", Value::from(expires_in)),
        ]);
        match grant {
            Some(g) => {
                data.insert("auth_url".into(), Value::from(g.verification_uri.clone()));
                data.insert(
                    "verification_uri".into(),
                    Value::from(g.verification_uri.clone()),
                );
                if let Some(c) = &g.verification_uri_complete {
                    data.insert("verification_uri_complete".into(), Value::from(c.clone()));
                }
                data.insert("user_code".into(), Value::from(g.user_code.clone()));
            }
            None => match self.auth_url(spec, session) {
                Some(url) => {
                    data.insert("auth_url".into(), Value::from(url));
                }
                None => {
                    return self
                        .initiation_failed(task, "Provider has no usable authorization endpoint");
                }
            },
        }
        self.finish(task, Ok(data.into()));
    }

    fn device_authorization(&self, spec: &ProviderSpec, sid: &str) -> http::HttpRequest {
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
    fn device_authorized(&mut self, task: TaskId, result: &EffectResult) {
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
        let serial = session.serial;
        self.timers.set(
            TimerKey::DevicePoll(serial),
            self.now.mono.plus(interval_ms),
        );
        self.initiate_reply(task, &spec, Some(&grant));
    }

    /// A device poll is due.
    pub(crate) fn device_poll_due(&mut self, serial: u64) {
        let Some(sid) = self.session_serials.get(&serial).cloned() else {
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
    fn device_polled(&mut self, task: TaskId, result: &EffectResult) {
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

    fn codex_polled(
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
                if let Some(w) = self.login_work(task) {
                    w.stage = LoginStage::CodexExchanging;
                    w.codex_verifier = Some(verifier);
                }
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
    fn repoll(
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
            let serial = s.serial;
            self.timers
                .set(TimerKey::DevicePoll(serial), self.now.mono.plus(wait_ms));
        }
        self.tasks.remove(&task);
    }

    /// A token endpoint answered 2xx: read the token and store it.
    fn token_received(
        &mut self,
        task: TaskId,
        body: Map<String, Value>,
        spec: &ProviderSpec,
        code: ErrorCode,
    ) {
        let Some(sid) = self.task_sid(task) else {
            return;
        };
        let token = http::token_from_response(body, self.now.unix_secs());
        let token = match (token, spec.dialect) {
            (Some(t), Dialect::Codex | Dialect::CodexDevice) => Some(with_codex_account(t)),
            (t, _) => t,
        };
        let Some(token) = token else {
            let f = failure(code, "Provider rejected the request (invalid_response)");
            return self.login_failed(task, &sid, f);
        };
        if let Some(s) = self.sessions.get_mut(&sid) {
            let _ = s.token_obtained();
        }
        if let Some(w) = self.login_work(task) {
            w.token = Some(token);
            w.codex_verifier = None;
        }
        self.persist_start(task, &sid);
    }

    /// `oauth_exchange {session_id, code}` (validated).
    pub(crate) fn oauth_exchange(
        &mut self,
        conn: ConnId,
        id: String,
        owner: Owner,
        sid: &str,
        raw: &str,
    ) -> Option<Answer> {
        if let Err(f) = self.lookup(sid, owner) {
            return Some(Err(f));
        }
        let session = self.sessions.get(sid)?;
        if session.flow == FlowType::DeviceCode {
            return Some(Err(flow_mismatch(Op::OauthExchange, session.flow)));
        }
        if matches!(
            session.step(),
            Some(Step::Exchanging { .. } | Step::Storing { .. }) | None
        ) {
            return Some(Err(failure(
                ErrorCode::SessionAlreadyUsed,
                "OAuth session already used",
            )));
        }
        let pasted = Pasted::parse(raw);
        let issuer = self
            .config
            .providers
            .get(&session.provider)
            .and_then(|s| s.issuer.clone());
        if let Some(e) = pasted.error {
            let what = if http::safe_code(&e) {
                e
            } else {
                "authorization_error".into()
            };
            self.drop_session(sid);
            return Some(Err(failure(
                ErrorCode::ExchangeFailed,
                format!("Provider rejected the request ({what})"),
            )));
        }
        let state_ok = pasted
            .state
            .as_deref()
            .is_none_or(|st| pkce::same(st, session.state_param.expose()));
        let iss_ok = match (&pasted.iss, &issuer) {
            (Some(got), Some(want)) => got == want,
            _ => true,
        };
        if !state_ok || !iss_ok {
            self.drop_session(sid);
            return Some(Err(mismatch()));
        }
        let Some(code) = pasted.code else {
            return Some(Err(failure(ErrorCode::InvalidRequest, "Invalid code")));
        };
        let task = self.attach_task(
            conn,
            id,
            Op::OauthExchange,
            Work::Login(LoginWork::new(sid, LoginStage::Exchanging)),
        );
        self.start_exchange(task, sid, &Secret::new(code));
        None
    }

    /// Moves the session to `Exchanging` and sends the code exchange.
    pub(crate) fn start_exchange(&mut self, task: TaskId, sid: &str, code: &Secret) {
        let Some(session) = self.sessions.get_mut(sid) else {
            return self.finish(task, Err(not_found()));
        };
        if let Err(e) = session.begin_exchange() {
            let f = match e {
                TransitionError::Ended => not_found(),
                _ => failure(ErrorCode::SessionAlreadyUsed, "OAuth session already used"),
            };
            return self.finish(task, Err(f));
        }
        let provider = session.provider.clone();
        let state = session.state_param.clone();
        let verifier = session.verifier.clone();
        let Some(spec) = self.spec(&provider) else {
            return;
        };
        let redirect = spec.redirect_uri.clone().unwrap_or_default();
        let token_url = spec.token_url.clone().unwrap_or_default();
        let mut fields: Vec<(&str, &str)> = vec![
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
        ];
        if spec.dialect == Dialect::Anthropic {
            fields.push(("state", state.expose()));
        }
        fields.push(("client_id", &spec.client_id));
        fields.push(("redirect_uri", &redirect));
        fields.push(("code_verifier", verifier.expose()));
        if let Some(s) = &spec.client_secret {
            fields.push(("client_secret", s.expose()));
        }
        let request = http::post(
            &token_url,
            spec.exchange_encoding,
            &fields,
            self.config.limits.provider_call_ms,
        );
        self.set_stage(task, LoginStage::Exchanging);
        self.emit_effect(task, Effect::Http(request));
    }

    /// Result of a code exchange.
    fn exchanged(&mut self, task: TaskId, result: &EffectResult) {
        let Some(sid) = self.task_sid(task) else {
            return;
        };
        let Some(spec) = self.sessions.get(&sid).and_then(|s| self.spec(&s.provider)) else {
            return self.finish(task, Err(not_found()));
        };
        let verdict = verdict_of(result);
        match &verdict {
            Verdict::Ok(body) => {
                self.token_received(task, body.clone(), &spec, ErrorCode::ExchangeFailed)
            }
            Verdict::Transient(_) => {
                let usable = self
                    .sessions
                    .get_mut(&sid)
                    .is_some_and(|s| s.exchange_failed_transiently() == Ok(true));
                let f = provider_failure(ErrorCode::ExchangeFailed, &verdict);
                if usable {
                    self.release_listener_if_unused(&sid);
                    self.finish(task, Err(f));
                } else {
                    self.login_failed(task, &sid, f);
                }
            }
            Verdict::Rejected { .. } => {
                let f = provider_failure(ErrorCode::ExchangeFailed, &verdict);
                self.login_failed(task, &sid, f);
            }
        }
    }

    /// The flow failed for good: answer the request, or keep the failure
    /// for `oauth_poll`.
    fn login_failed(&mut self, task: TaskId, sid: &str, f: Failure) {
        self.complete_session(task, sid, Outcome::Failed(f));
    }

    /// Hands a stored (or refused) login to its session.
    pub(crate) fn complete_login(&mut self, task: TaskId, sid: &str, outcome: Outcome) {
        self.complete_session(task, sid, outcome);
    }

    /// Finishes a session with an outcome: a request waiting for it gets it
    /// directly (the session ends); otherwise it waits for `oauth_poll`.
    fn complete_session(&mut self, task: TaskId, sid: &str, outcome: Outcome) {
        let attached = self.tasks.get(&task).is_some_and(|t| t.reply.is_some());
        if attached {
            self.drop_session(sid);
            let answer = match outcome {
                Outcome::Token(t) => Ok(Data::Token(t)),
                Outcome::Failed(f) => Err(f),
            };
            return self.finish(task, answer);
        }
        if let Some(s) = self.sessions.get_mut(sid) {
            let _ = s.complete(outcome);
            let serial = s.serial;
            self.timers.cancel(TimerKey::DevicePoll(serial));
        }
        self.release_listener_if_unused(sid);
        self.finish(task, Ok(Map::new().into()));
    }

    /// `oauth_poll {session_id}`: reads the session, never waits.
    pub(crate) fn oauth_poll(&mut self, owner: Owner, sid: &str) -> Answer {
        self.lookup(sid, owner)?;
        let Some(session) = self.sessions.get_mut(sid) else {
            return Err(not_found());
        };
        if session.flow == FlowType::PkceRedirect {
            return Err(flow_mismatch(Op::OauthPoll, session.flow));
        }
        if let Some(step) = session.step() {
            let mut data = object(vec![("status", Value::from("pending"))]);
            let (interval, slowed) = match step {
                Step::Polling {
                    interval_ms,
                    slowed,
                    ..
                } => (interval_ms, slowed),
                _ => (self.config.limits.device_poll_ms, false),
            };
            data.insert("pollIntervalMs".into(), Value::from(interval));
            if slowed {
                data.insert("interval".into(), Value::from(interval.div_ceil(1000)));
            }
            return Ok(data.into());
        }
        let outcome = session.collect().map_err(|_| not_found())?;
        self.drop_session(sid);
        match outcome {
            Outcome::Token(t) => Ok(object(vec![
                ("status", Value::from("complete")),
                ("token", Value::Object(t.into_sanitized())),
            ])
            .into()),
            Outcome::Failed(f) => Err(f),
        }
    }

    /// `oauth_cancel {session_id}`: ends the session; `{}` in every case.
    pub(crate) fn oauth_cancel(&mut self, owner: Owner, sid: &str) -> Answer {
        if self.expired.get(sid).is_some_and(|(o, _)| *o == owner) {
            self.expired.remove(sid);
        }
        if self.sessions.get(sid).is_some_and(|s| s.owner == owner) {
            self.drop_session(sid);
        }
        Ok(Map::new().into())
    }

    /// Checks that `sid` names a live session of `owner`; an expired one is
    /// reported once and removed.
    fn lookup(&mut self, sid: &str, owner: Owner) -> Result<(), Failure> {
        let expired = || failure(ErrorCode::SessionExpired, "OAuth session expired");
        if self.expired.get(sid).is_some_and(|(o, _)| *o == owner) {
            self.expired.remove(sid);
            return Err(expired());
        }
        match self.sessions.get(sid) {
            Some(s) if s.owner == owner => {
                if s.expires <= self.now.mono {
                    self.drop_session(sid);
                    return Err(expired());
                }
                Ok(())
            }
            _ => Err(not_found()),
        }
    }

    /// Removes a session with its timers and its use of a listener.
    pub(crate) fn drop_session(&mut self, sid: &str) {
        let Some(mut s) = self.sessions.remove(sid) else {
            return;
        };
        s.end();
        self.session_serials.remove(&s.serial);
        self.timers.cancel(TimerKey::DevicePoll(s.serial));
        if let Some(port) = s.port {
            self.stop_listener_if_idle(port);
        }
    }

    /// Arms the session sweep if it is not armed.
    fn arm_sweep(&mut self) {
        if self.timers.get(TimerKey::SessionSweep).is_none() {
            let at = self.now.mono.plus(self.config.limits.session_sweep_ms);
            self.timers.set(TimerKey::SessionSweep, at);
        }
    }

    /// The periodic sweep: expired sessions become tombstones (reported
    /// once as `SESSION_EXPIRED`), old tombstones go.
    pub(crate) fn sweep_sessions(&mut self) {
        let now = self.now.mono;
        let ttl = self.config.limits.session_ttl_ms;
        self.expired.retain(|_, (_, at)| now.since(*at) < ttl);
        let dead: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.expires <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for sid in dead {
            if let Some(owner) = self.sessions.get(&sid).map(|s| s.owner) {
                self.expired.insert(sid.clone(), (owner, now));
            }
            self.drop_session(&sid);
        }
        while self.expired.len() > self.config.limits.sessions_total {
            let oldest = self
                .expired
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.expired.remove(&k);
            }
        }
        if !self.sessions.is_empty() || !self.expired.is_empty() {
            self.timers.set(
                TimerKey::SessionSweep,
                now.plus(self.config.limits.session_sweep_ms),
            );
        }
    }

    /// Routes an effect result to the login step waiting for it.
    pub(crate) fn resume_login(&mut self, task: TaskId, result: EffectResult) {
        let Some(stage) = self.login_work(task).map(|w| w.stage) else {
            return;
        };
        match stage {
            LoginStage::Discovering => self.discovery_result(task, &result),
            LoginStage::DeviceAuthorizing => self.device_authorized(task, &result),
            LoginStage::StartingListener => self.listener_result(task, &result),
            LoginStage::Exchanging => self.exchanged(task, &result),
            LoginStage::Polling => self.device_polled(task, &result),
            LoginStage::CodexExchanging => {
                let Some(sid) = self.task_sid(task) else {
                    return;
                };
                let verdict = verdict_of(&result);
                let spec = self.sessions.get(&sid).and_then(|s| self.spec(&s.provider));
                match (&verdict, spec) {
                    (Verdict::Ok(body), Some(spec)) => {
                        self.token_received(task, body.clone(), &spec, ErrorCode::PollFailed)
                    }
                    _ => {
                        let f = provider_failure(ErrorCode::PollFailed, &verdict);
                        self.login_failed(task, &sid, f);
                    }
                }
            }
            _ => self.persist_step(task, result),
        }
    }
}

/// `Operation <op> not valid for flow type <flow>`.
fn flow_mismatch(op: Op, flow: FlowType) -> Failure {
    failure(
        ErrorCode::InvalidRequest,
        format!("Operation {op} not valid for flow type {flow}"),
    )
}

/// The owner of a request: its peer uid and connection class.
#[must_use]
pub(crate) fn owner_of(uid: Option<u32>, class: ConnClass) -> Owner {
    Owner { uid, class }
}

/// Audit event for a completed login (always WARN).
pub(crate) fn login_event(key: &Key, class: ConnClass) -> AuditEvent {
    let mut ev = AuditEvent::new(Level::Info, None, "login_complete", "ok");
    ev.provider = Some(key.provider.clone());
    ev.bucket = Some(key.bucket.clone());
    ev.class = Some(class);
    ev
}

/// Whether `expiry` (unix seconds) leaves more than `margin_ms`.
pub(crate) fn still_valid(token: &Token, now_unix_ms: u64, margin_ms: u64) -> bool {
    token
        .expiry_secs()
        .is_some_and(|e| e * 1000.0 - now_unix_ms as f64 > margin_ms as f64)
}

/// The engine's monotonic deadline for a wall-clock instant.
pub(crate) fn mono_at(now_mono: Mono, now_unix_ms: u64, at_unix_ms: u64) -> Mono {
    now_mono.plus(at_unix_ms.saturating_sub(now_unix_ms))
}
