//! The start of a flow: `oauth_initiate` creates the session, runs OIDC
//! discovery when the provider needs it, then the flow's own first step
//! (the authorization URL of a code flow, the loopback listener of a
//! browser flow, the device authorization of a device flow), and answers
//! with what the client shows the user.

use rand_core::CryptoRng;
use serde_json::{Map, Value};
use url::Url;

use crate::engine::audit::ConnId;
use crate::engine::effect::Effect;
use crate::engine::engine::Engine;
use crate::oauth::oauth_reply::DeviceGrant;
use crate::oauth::provider::{Dialect, FlowType, ProviderSpec};
use crate::operations::op::Op;
use crate::operations::task::{TaskId, Work};
use crate::sessions::pkce;
use crate::sessions::session::{Owner, Session, Step};
use crate::wire::error::ErrorCode;
use crate::wire::reply::{Answer, Failure};
use crate::writes::keylock::Key;

use super::errors::{failure, not_found};
use crate::operations::task::{LoginStage, LoginWork};

impl<R: CryptoRng> Engine<R> {
    /// The provider's spec with discovered endpoints filled in.
    pub(crate) fn spec(&self, provider: &str) -> Option<ProviderSpec> {
        let mut spec = self.config.providers.get(provider)?.clone();
        if let Some(d) = self.endpoints.discovered(provider) {
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
            .is_some_and(|s| s.issuer.is_some() && self.endpoints.discovered(provider).is_none())
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
        let sid = pkce::session_id(&mut self.rng);
        let verifier = pkce::verifier(&mut self.rng);
        let state = pkce::state(&mut self.rng);
        let port = spec.loopback_redirect().map(|(port, _)| port);
        self.sessions.insert(sid.clone(), |serial| {
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
            session.port = port;
            session
        });
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

    /// The next initiation step: discovery, then the flow's own step.
    pub(super) fn initiate_next(&mut self, task: TaskId) {
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

    pub(super) fn initiation_failed(&mut self, task: TaskId, message: &str) {
        if let Some(sid) = self.task_sid(task) {
            self.drop_session(&sid);
        }
        self.finish(task, Err(failure(ErrorCode::FlowInitiationFailed, message)));
    }

    /// The authorization URL of a code flow.
    pub(super) fn auth_url(&self, spec: &ProviderSpec, session: &Session) -> Option<String> {
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

    pub(super) fn initiate_reply(
        &mut self,
        task: TaskId,
        spec: &ProviderSpec,
        grant: Option<&DeviceGrant>,
    ) {
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
}

pub(super) fn object(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}
