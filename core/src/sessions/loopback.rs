//! The loopback redirect listener of browser logins (RFC 8252, SPEC §2.1).
//!
//! One listener per port is shared by every browser session that needs it.
//! The host starts it on request ([`Effect::StartListener`]), passes each
//! HTTP request to [`Engine::handle_loopback_request`] and sends back the
//! [`Output::LoopbackReply`](crate::Output::LoopbackReply). Requests are
//! routed by `state`: a wrong path, or an unknown or mismatched state, gets
//! a 400 page and leaves every session untouched. The listener stops when
//! no session waits on it any more.

use rand_core::CryptoRng;
use url::Url;

use crate::engine::effect::{Effect, EffectResult};
use crate::engine::engine::{Engine, Output};
use crate::engine::secret::Secret;
use crate::engine::time::Now;
use crate::oauth::endpoints::ListenerWait;
use crate::oauth::http;
use crate::oauth::oauth_reply::Pasted;
use crate::operations::op::Op;
use crate::operations::task::{LoginStage, LoginWork};
use crate::operations::task::{TaskId, Work};
use crate::sessions::pkce;
use crate::sessions::session::{Outcome, SessionState, Step};
use crate::wire::error::ErrorCode;
use crate::wire::reply::Failure;

/// The page for a request that matches no login.
pub const PAGE_BAD_REQUEST: &str = "This request does not belong to a login in progress.\n";
/// The page after a redirect carrying a code.
pub const PAGE_RECEIVED: &str =
    "Login received. You can close this window and return to your terminal.\n";
/// The page after a redirect carrying an error.
pub const PAGE_FAILED: &str =
    "The login was not completed. You can close this window and try again.\n";

impl<R: CryptoRng> Engine<R> {
    /// Makes sure a listener runs on `port`; true when it already does.
    /// Otherwise `task` waits for it (and may be the one that starts it).
    pub(crate) fn ensure_listener(&mut self, port: u16, path: String, task: TaskId) -> bool {
        match self.endpoints.wait_listener(port, path.clone(), task) {
            ListenerWait::Running => true,
            ListenerWait::Queued => false,
            ListenerWait::Start => {
                self.emit_effect(task, Effect::StartListener { port, path });
                false
            }
        }
    }

    /// The host started (or failed to start) a listener.
    pub(crate) fn listener_result(&mut self, task: TaskId, result: &EffectResult) {
        let Some(port) = self.endpoints.starting_port_of(task) else {
            return;
        };
        let ok = matches!(result, EffectResult::Listening(true));
        let waiters = self.endpoints.listener_started(port, ok);
        for w in waiters {
            if ok {
                self.listener_ready(w);
            } else {
                self.login_after_discovery(
                    w,
                    Err(Failure::new(
                        ErrorCode::FlowInitiationFailed,
                        format!("Cannot listen for the browser redirect on port {port}"),
                    )),
                );
            }
        }
        self.stop_listener_if_idle(port);
    }

    fn listener_ready(&mut self, task: TaskId) {
        let spec = match self.tasks.work(task) {
            Some(Work::Login(w)) => self
                .sessions
                .get(&w.sid)
                .and_then(|s| self.spec(&s.provider)),
            _ => None,
        };
        match spec {
            Some(spec) => self.reply_initiated(task, &spec),
            None => self.finish(
                task,
                Err(Failure::new(
                    ErrorCode::SessionNotFound,
                    "OAuth session not found",
                )),
            ),
        }
    }

    /// Stops the listener on `port` when no initiated session uses it.
    pub(crate) fn stop_listener_if_idle(&mut self, port: u16) {
        let used = self
            .sessions
            .values()
            .any(|s| s.port == Some(port) && matches!(s.state(), SessionState::Initiated(_)));
        if !used && self.endpoints.remove_running(port) {
            self.emit_detached(Effect::StopListener { port });
        }
    }

    /// Releases the listener of `sid` if nothing else needs it.
    pub(crate) fn release_listener_if_unused(&mut self, sid: &str) {
        if let Some(port) = self.sessions.get(sid).and_then(|s| s.port) {
            self.stop_listener_if_idle(port);
        }
    }

    /// An HTTP request reached the loopback listener on `port`. `target` is
    /// the request target (path and query). The answer comes as an
    /// [`Output::LoopbackReply`] with the same `request` id.
    pub fn handle_loopback_request(&mut self, request: u64, port: u16, target: &str, now: Now) {
        self.tick(now);
        let (status, body) = self.route_callback(port, target);
        self.push(Output::LoopbackReply {
            request,
            status,
            body,
        });
    }

    fn route_callback(&mut self, port: u16, target: &str) -> (u16, &'static str) {
        let bad = (400, PAGE_BAD_REQUEST);
        let Some(path) = self.endpoints.running_path(port) else {
            return bad;
        };
        let Ok(url) = Url::parse(&format!("http://127.0.0.1{target}")) else {
            return bad;
        };
        if !target.starts_with('/') || url.path() != path {
            return bad;
        }
        let pasted = Pasted::from_query(&url);
        let Some(state) = pasted.state.as_deref() else {
            return bad;
        };
        let Some(sid) = self
            .sessions
            .iter()
            .find(|(_, s)| {
                s.port == Some(port)
                    && matches!(s.step(), Some(Step::AwaitingCallback { .. }))
                    && pkce::same(state, s.state_param.expose())
            })
            .map(|(id, _)| id.clone())
        else {
            return bad;
        };
        let provider = self
            .sessions
            .get(&sid)
            .map(|s| s.provider.clone())
            .unwrap_or_default();
        let issuer = self
            .config
            .providers
            .get(&provider)
            .and_then(|s| s.issuer.clone());
        if let (Some(got), Some(want)) = (&pasted.iss, &issuer)
            && got != want
        {
            let f = Failure::new(
                ErrorCode::ExchangeFailed,
                "Authorization response does not match this session",
            );
            self.fail_callback(&sid, f);
            return (400, PAGE_FAILED);
        }
        if let Some(e) = pasted.error {
            let what = if http::safe_code(&e) {
                e
            } else {
                "authorization_error".into()
            };
            let f = Failure::new(
                ErrorCode::ExchangeFailed,
                format!("Provider rejected the request ({what})"),
            );
            self.fail_callback(&sid, f);
            return (200, PAGE_FAILED);
        }
        let Some(code) = pasted.code else { return bad };
        let task = self.background_task(
            Op::OauthExchange,
            Work::Login(LoginWork::new(&sid, LoginStage::Exchanging)),
        );
        self.start_exchange(task, &sid, &Secret::new(code));
        (200, PAGE_RECEIVED)
    }

    fn fail_callback(&mut self, sid: &str, f: Failure) {
        if let Some(s) = self.sessions.get_mut(sid) {
            let _ = s.complete(Outcome::Failed(f));
        }
        self.release_listener_if_unused(sid);
    }
}
