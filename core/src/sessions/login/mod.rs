//! Host-side OAuth login (SPEC §4): `oauth_initiate`, `oauth_exchange`,
//! `oauth_poll`, `oauth_cancel`, background device polling, the browser
//! callback, and storing the resulting token.
//!
//! Every provider call is an [`Effect::Http`](crate::engine::effect::Effect::Http);
//! every wait is an engine timer. A session's I/O runs as a [`LoginWork`]
//! task, which counts as side-effecting: cancelling the request that
//! started it detaches it but never drops it, so a token obtained is
//! always stored.
//!
//! By stage of a flow: `initiate.rs` (the start), `device.rs` (device
//! authorization and polling), `exchange.rs` (code flows), `complete.rs`
//! (the token and its outcome), `sessions.rs` (poll, cancel, expiry);
//! `errors.rs` holds the failures they answer with. This file routes
//! effect results to the step waiting for them; the task state
//! ([`LoginWork`]) is data in `task`.

use rand_core::CryptoRng;

use crate::engine::effect::EffectResult;
use crate::engine::engine::Engine;
use crate::oauth::http::Verdict;
use crate::operations::task::{LoginStage, LoginWork, TaskId, Work};
use crate::wire::error::ErrorCode;

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

impl<R: CryptoRng> Engine<R> {
    fn login_work(&mut self, task: TaskId) -> Option<&mut LoginWork> {
        match self.tasks.work_mut(task) {
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
        match self.tasks.work(task) {
            Some(Work::Login(w)) => Some(w.sid.clone()),
            _ => None,
        }
    }

    /// Routes an effect result to the login step waiting for it.
    pub(crate) fn resume_login(&mut self, task: TaskId, result: EffectResult) {
        let Some(stage) = self.login_work(task).map(|w| match &w.stage {
            // Storing carries the token: route it without a copy.
            LoginStage::Storing(_) => None,
            stage => Some(stage.clone()),
        }) else {
            return;
        };
        let Some(stage) = stage else {
            return self.persist_step(task, result);
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
            LoginStage::Storing(_) => self.persist_step(task, result),
        }
    }
}
