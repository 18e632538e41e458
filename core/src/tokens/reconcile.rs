//! A refresh whose write the store refused (SPEC §5.2–5.3, fresh-read
//! rule across processes).
//!
//! A compare-and-set store refuses the refreshed token's write when another
//! process wrote the key between the job's fresh read and its write (it
//! refreshed too, saved, logged in, or took over this process's lease).
//! The locked-write machine re-reads the key fresh under the same locks and
//! the job decides on what is stored now:
//!
//! - nothing stored: it was removed, and a remove wins → `NOT_FOUND`;
//! - a token that changed and is still valid: refreshed meanwhile by
//!   someone else → it is the answer; ours is neither written over it nor
//!   kept in memory (never overwrite a newer token);
//! - a token that is not valid but still carries the refresh token this
//!   job spent: nobody else refreshed, so our answer is still the live
//!   grant → merged over the re-read token (keeping what the other writer
//!   changed) and written again, without a second provider call;
//! - a token that is not valid and carries another refresh token (a login
//!   or a sibling's rotation wrote a newer grant that is expired or about
//!   to be): ours is not written over it; the job decides as after its
//!   first fresh read, so it refreshes that grant with its own refresh
//!   token (one more provider call, bounded by the machine's conflict
//!   limit).

use rand_core::CryptoRng;

use crate::engine::effect::{Effect, EffectResult};
use crate::engine::engine::Engine;
use crate::operations::task::{JobStage, Refreshed, TaskId};
use crate::sessions::login::still_valid;
use crate::tokens::refresh::{access_digest, not_found};
use crate::tokens::token::Token;

impl<R: CryptoRng> Engine<R> {
    /// The store refused the job's write: the token's or the unusable
    /// mark's. Names the stage the fresh re-read is decided from (see
    /// `locked_write`): a refused mark goes back to the re-read after a
    /// refusal (a sibling may have rotated the refresh token, which must
    /// not be marked). Returns whether there is one.
    pub(crate) fn refresh_conflicted(&mut self, task: TaskId) -> bool {
        let Some(job) = self.job(task) else {
            return false;
        };
        let next = match job.stage() {
            Some(JobStage::Writing(r)) => JobStage::Reconciling(r.clone()),
            Some(JobStage::MarkUnusable(f)) => JobStage::Reread(f.clone()),
            _ => return false,
        };
        job.write.set_stage(next);
        true
    }

    /// The fresh re-read after a refused write of the refreshed token `r`.
    pub(crate) fn reconcile(&mut self, task: TaskId, r: Refreshed, result: EffectResult) {
        let margin = self.config.limits.valid_margin_ms;
        let now_ms = self.now.unix_ms;
        let Some(job) = self.job(task) else { return };
        let key = job.key().clone();
        let stored = match result {
            EffectResult::Token(Some(t)) => t,
            EffectResult::Token(None) => return self.job_done(task, Err(not_found(&key))),
            other => return self.job_done(task, Err(other.store_failure())),
        };
        let spent = job.current.as_ref();
        let changed = spent.is_none_or(|c| access_digest(c) != access_digest(&stored));
        if changed && still_valid(&stored, now_ms, margin) {
            return self.job_done(task, Ok(stored));
        }
        if job.logout {
            return self.job_done(task, Err(not_found(&key)));
        }
        let ours = stored.refresh_token().is_some()
            && stored.refresh_token() == spent.and_then(Token::refresh_token);
        if ours {
            let merged = stored.merged_with(&r.new);
            job.current = Some(stored);
            let put = Effect::token_put(&key, merged.clone());
            job.write
                .set_stage(JobStage::Writing(Refreshed { new: r.new, merged }));
            return self.emit_effect(task, put);
        }
        job.write.set_stage(JobStage::ReadFresh);
        self.refresh_step(task, EffectResult::Token(Some(stored)));
    }
}
