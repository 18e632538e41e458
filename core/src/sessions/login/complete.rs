//! The end of a flow: a token endpoint's 2xx becomes a token that is
//! stored (`persist`), and the outcome goes to the request waiting for it
//! or stays in the session for `oauth_poll`.

use rand_core::CryptoRng;
use serde_json::{Map, Value};

use crate::engine::audit::{AuditEvent, Level};
use crate::engine::engine::Engine;
use crate::oauth::http;
use crate::oauth::oauth_reply::with_codex_account;
use crate::oauth::provider::{Dialect, ProviderSpec};
use crate::operations::task::TaskId;
use crate::sessions::session::Outcome;
use crate::wire::error::ErrorCode;
use crate::wire::handshake::ConnClass;
use crate::wire::reply::{Data, Failure};
use crate::writes::keylock::Key;

use super::errors::failure;

impl<R: CryptoRng> Engine<R> {
    /// A token endpoint answered 2xx: read the token and store it.
    pub(super) fn token_received(
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
        self.persist_start(task, &sid, token);
    }

    /// The flow failed for good: answer the request, or keep the failure
    /// for `oauth_poll`.
    pub(super) fn login_failed(&mut self, task: TaskId, sid: &str, f: Failure) {
        self.complete_session(task, sid, Outcome::Failed(f));
    }

    /// Hands a stored (or refused) login to its session.
    pub(crate) fn complete_login(&mut self, task: TaskId, sid: &str, outcome: Outcome) {
        self.complete_session(task, sid, outcome);
    }

    /// Finishes a session with an outcome: a request waiting for it gets it
    /// directly (the session ends); otherwise it waits for `oauth_poll`.
    pub(super) fn complete_session(&mut self, task: TaskId, sid: &str, outcome: Outcome) {
        let attached = self.tasks.get(task).is_some_and(|t| t.reply.is_some());
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
            self.sessions.disarm_poll(sid, &mut self.timers);
        }
        self.release_listener_if_unused(sid);
        self.finish(task, Ok(Map::new().into()));
    }
}

/// Audit event for a completed login (always WARN).
pub(crate) fn login_event(key: &Key, class: ConnClass) -> AuditEvent {
    let mut ev = AuditEvent::new(Level::Info, None, "login_complete", "ok");
    ev.provider = Some(key.provider.clone());
    ev.bucket = Some(key.bucket.clone());
    ev.class = Some(class);
    ev
}
