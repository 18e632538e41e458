//! What the host side does to the engine besides answering provider calls:
//! completes held store effects (in any order, or wrongly), lets another
//! process plant tokens, sends a browser to the loopback listener and moves
//! the clock (forward, again, backwards, or the wall clock alone).

use serde_json::json;

use crate::engine::effect::{Effect, EffectResult};
use crate::engine::time::Now;
use crate::oauth::http::{HttpOutcome, TransportError};

use super::super::fixtures::{BUCKETS, CODEX_PORT, PROVIDERS};
use super::super::ops::{Callback, Completion, KeySel, Tick};
use super::World;
use super::connections::junk;
use super::http::odd_number;

impl World {
    pub(super) fn complete(&mut self, index: u8, how: Completion) {
        if self.h.held.is_empty() {
            return;
        }
        let i = usize::from(index) % self.h.held.len();
        let Some((id, effect)) = self.h.held.remove(i) else {
            return;
        };
        let result = match how {
            Completion::Store => self.h.store.execute(&effect),
            Completion::Failed => EffectResult::Failed,
            Completion::Missing => match effect {
                Effect::TokenGet { .. } => EffectResult::Token(None),
                Effect::ApiKeyGet { .. } => EffectResult::ApiKey(None),
                Effect::ApiKeyHas { .. } => EffectResult::Exists(false),
                Effect::ListProviders | Effect::ListBuckets { .. } | Effect::ApiKeyList => {
                    EffectResult::Names(Vec::new())
                }
                _ => self.h.store.execute(&effect),
            },
            Completion::Busy => match effect {
                Effect::LockAcquire { .. } => EffectResult::Locked(false),
                _ => self.h.store.execute(&effect),
            },
            Completion::WrongKind(k) => match k % 8 {
                0 => EffectResult::Done,
                1 => EffectResult::Exists(true),
                2 => EffectResult::Names(vec!["x".into()]),
                3 => EffectResult::Token(None),
                4 => EffectResult::Locked(true),
                5 => EffectResult::Meta {
                    refresh_unusable: true,
                },
                6 => EffectResult::Listening(true),
                _ => EffectResult::Http(HttpOutcome::Failed(TransportError::Other)),
            },
            Completion::Conflict => EffectResult::Conflict,
            Completion::Unavailable(ms) => EffectResult::Unavailable {
                retry_after_ms: u64::from(ms),
            },
        };
        self.h.engine.handle_effect_result(id, result, self.h.now);
        self.h.drain();
    }

    pub(super) fn plant(&mut self, key: KeySel, expiry: u8, refresh: bool) {
        let p = PROVIDERS[usize::from(key.provider) % 5];
        let b = BUCKETS[usize::from(key.bucket) % 3].unwrap_or("default");
        let now_s = self.h.now.unix_ms / 1000;
        let expiry = match expiry % 4 {
            0 => json!(now_s + 90),
            1 => json!(now_s.saturating_sub(90)),
            _ => odd_number(expiry / 4),
        };
        let n = self.next();
        let mut t = json!({"access_token": format!("AT-planted-{n}"), "expiry": expiry, "token_type": "Bearer"});
        if refresh {
            t["refresh_token"] = json!(format!("SECRET-RT-planted-{n}"));
        }
        self.h.store.put_token(p, b, t);
    }

    pub(super) fn loopback(&mut self, session: u8, kind: Callback) {
        let (_, state) = self.session(session);
        let n = self.next();
        let (port, target) = match kind {
            Callback::Code => (
                CODEX_PORT,
                format!("/auth/callback?code=AC-{n}&state={state}"),
            ),
            Callback::Error => (
                CODEX_PORT,
                format!("/auth/callback?error=access_denied&state={state}"),
            ),
            Callback::NoCode => (CODEX_PORT, format!("/auth/callback?state={state}")),
            Callback::WrongState => (
                CODEX_PORT,
                format!("/auth/callback?code=AC-{n}&state=forged"),
            ),
            Callback::WrongPath => (CODEX_PORT, format!("/elsewhere?code=AC-{n}&state={state}")),
            Callback::OtherPort => (
                CODEX_PORT + 1,
                format!("/auth/callback?code=AC-{n}&state={state}"),
            ),
            Callback::Junk(b) => (
                CODEX_PORT,
                format!("/auth/callback?{}", String::from_utf8_lossy(&junk(8, b))),
            ),
        };
        self.detach_budget += 1;
        let (status, _) = self.h.loopback(port, &target);
        assert!(
            matches!(status, 200 | 400),
            "loopback answered with status {status}"
        );
    }

    pub(super) fn tick(&mut self, t: Tick) {
        match t {
            Tick::Ms(ms) => self.h.advance(u64::from(ms)),
            Tick::Secs(s) => self.h.advance(u64::from(s) * 1000),
            Tick::Minutes(m) => self.h.advance(u64::from(m % 64) * 60_000),
            Tick::Next => {
                self.h.advance_to_next(u64::MAX);
            }
            Tick::Repeat => {
                self.h.engine.handle_timeout(self.h.now);
                self.h.drain();
            }
            Tick::Back(ms) => {
                let ms = u64::from(ms);
                self.h.now = Now::new(
                    self.h.now.mono.0.saturating_sub(ms),
                    self.h.now.unix_ms.saturating_sub(ms),
                );
                self.h.engine.handle_timeout(self.h.now);
                self.h.drain();
            }
            Tick::Wall(s) => {
                let delta = i64::from(s) * 1000;
                let unix = self.h.now.unix_ms.saturating_add_signed(delta);
                self.h.now = Now::new(self.h.now.mono.0, unix);
                self.h.engine.handle_timeout(self.h.now);
                self.h.drain();
            }
        }
    }
}
