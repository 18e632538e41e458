//! `refresh_token` during a key's cooldown (SPEC §5.3).
//!
//! After any refresh attempt a key cools down for 30 s. A caller in that
//! window gets the stored token when it is still valid, and
//! `RATE_LIMITED "Refresh rate limited"` only when no valid token exists.
//! The token a request read first may predate the refresh that started
//! the cooldown: it may come from the host's store cache, or its read may
//! have been answered before a refresh that finished while the request's
//! other reads were under way (a slow store: two `refresh_token` sent
//! together on the postgres backend, the second answered with the token
//! the first had just replaced, which rotation may have revoked). A client
//! calling `refresh_token` right after a successful refresh also saw
//! `RATE_LIMITED retryAfter=30` although a fresh token was stored. So in
//! the cooldown the token is always re-read once, fresh, and the answer
//! is decided on what is stored now.

use rand_core::CryptoRng;

use crate::engine::effect::{Effect, EffectResult};
use crate::engine::engine::Engine;
use crate::engine::time::Mono;
use crate::operations::task::CheckStage;
use crate::operations::task::{TaskId, Work};
use crate::sessions::login::still_valid;
use crate::tokens::refresh::{not_available, not_found};
use crate::tokens::token::Token;
use crate::wire::reply::{Data, Failure};
use crate::writes::keylock::Key;

impl<R: CryptoRng> Engine<R> {
    /// When `key` is cooling down, answers `task` (or re-reads fresh first)
    /// and returns true; false when there is no cooldown.
    pub(crate) fn answered_in_cooldown(&mut self, task: TaskId, key: &Key, token: &Token) -> bool {
        let Some(until) = self.cooldown_until(key) else {
            return false;
        };
        let Some(Work::RefreshCheck(check)) = self.tasks.work_mut(task) else {
            return true;
        };
        if !matches!(check.stage, CheckStage::Reread) {
            check.stage = CheckStage::Reread;
            self.emit_effect(task, Effect::token_get(key, true));
        } else if still_valid(token, self.now.unix_ms, self.config.limits.valid_margin_ms) {
            self.finish(task, Ok(Data::Token(token.clone())));
        } else {
            let secs = until.since(self.now.mono).div_ceil(1000);
            let f = Failure::rate_limited("Refresh rate limited", secs);
            self.finish(task, Err(f));
        }
        true
    }

    /// The fresh re-read arrived: back through the cooldown (or a job
    /// that started meanwhile, or a new one if the cooldown ended while
    /// reading) with the token as it is now.
    pub(crate) fn cooldown_reread(&mut self, task: TaskId, key: &Key, result: EffectResult) {
        match result {
            EffectResult::Token(None) => self.finish(task, Err(not_found(key))),
            EffectResult::Token(Some(t)) if t.refresh_token().is_none() => {
                self.finish(task, Err(not_available(key)));
            }
            EffectResult::Token(Some(t)) => self.join_or_start(task, key, &t),
            other => self.finish(task, Err(other.store_failure())),
        }
    }

    /// End of the key's cooldown, while it runs.
    fn cooldown_until(&self, key: &Key) -> Option<Mono> {
        let last = self.keys.last_attempt(key)?;
        let until = last.plus(self.config.limits.refresh_cooldown_ms);
        (until > self.now.mono).then_some(until)
    }
}
