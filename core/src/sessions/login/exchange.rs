//! Code flows: `oauth_exchange` checks the pasted code, redirect URL or
//! error against the session (state, issuer), then exchanges the code with
//! the PKCE verifier; the browser callback reuses `start_exchange`.

use rand_core::CryptoRng;

use crate::engine::audit::ConnId;
use crate::engine::effect::{Effect, EffectResult};
use crate::engine::engine::Engine;
use crate::engine::secret::Secret;
use crate::oauth::http::{self, Verdict};
use crate::oauth::oauth_reply::Pasted;
use crate::oauth::provider::{Dialect, FlowType};
use crate::operations::op::Op;
use crate::operations::task::{TaskId, Work};
use crate::sessions::pkce;
use crate::sessions::session::{Owner, Step, TransitionError};
use crate::wire::error::ErrorCode;
use crate::wire::reply::Answer;

use super::errors::{failure, flow_mismatch, mismatch, not_found, provider_failure, verdict_of};
use crate::operations::task::{LoginStage, LoginWork};

impl<R: CryptoRng> Engine<R> {
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
    pub(super) fn exchanged(&mut self, task: TaskId, result: &EffectResult) {
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
}
