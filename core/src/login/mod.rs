//! Host-side OAuth login (SPEC §4): `oauth_initiate`, `oauth_exchange`,
//! `oauth_poll`, `oauth_cancel`, background device polling, the browser
//! callback, and storing the resulting token.
//!
//! Every provider call is an [`Effect::Http`](crate::effect::Effect::Http);
//! every wait is an engine timer. A session's I/O runs as a [`LoginWork`]
//! task, which counts as side-effecting: cancelling the request that
//! started it detaches it but never drops it, so a token obtained is
//! always stored.
//!
//! By stage of a flow: `initiate.rs` (the start), `device.rs` (device
//! authorization and polling), `exchange.rs` (code flows), `complete.rs`
//! (the token and its outcome), `sessions.rs` (poll, cancel, expiry);
//! `errors.rs` holds the failures they answer with. This file holds the
//! task state and routes effect results to the step waiting for them.

use rand_core::CryptoRng;

use crate::audit::ConnId;
use crate::effect::EffectResult;
use crate::engine::Engine;
use crate::error::ErrorCode;
use crate::http::Verdict;
use crate::keylock::Key;
use crate::op::Op;
use crate::secret::Secret;
use crate::task::{ReplyTo, Task, TaskId, Work};
use crate::token::Token;

mod complete;
mod device;
mod errors;
mod exchange;
mod expiry;
mod initiate;
mod sessions;

pub(crate) use complete::login_event;
pub(crate) use errors::provider_failure;
pub(crate) use expiry::{mono_at, still_valid};
pub(crate) use sessions::owner_of;

use errors::verdict_of;

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

impl<R: CryptoRng> Engine<R> {
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
