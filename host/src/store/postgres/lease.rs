//! The cross-machine refresh lock: a lease row per key.
//!
//! A row `(provider, bucket, holder, deadline, fence)`: the holder is the
//! store's random id, the deadline is computed by the database clock
//! (`now()`, so the proxies' clocks do not matter), and the fence comes
//! from a sequence, growing with every grant. A lease is free when there is
//! no row, its deadline has passed, it is this store's own (a release
//! still queued, see [`super::release`]: the engine never holds one key
//! twice), or its holder has no connection to the database any more; taking
//! it over replaces the holder and the fence.
//!
//! The last rule makes a crash cheap: every connection of a store is named
//! `credproxy <holder>` (`application_name`), and a process that dies
//! (kill -9, OOM) closes its sockets, so the server drops its sessions at
//! once and the next waiter takes the lease without waiting out the
//! deadline. A holder that is only cut off (its sessions still open on the
//! server until TCP keepalive notices) keeps the lease until the deadline.
//! A live holder with no session for a moment (all its connections being
//! made again after a database restart) can lose its lease early; its
//! late write is then refused by the row version, as for any deposed
//! holder. Releasing
//! deletes the row only where holder and fence are still ours.
//!
//! Why a lease row and not a session advisory lock: an advisory lock lives
//! as long as the holder's session, and a holder on a dead TCP peer (a
//! machine cut off, a kill -9 behind a NAT) is only noticed by TCP
//! keepalive, minutes later; transaction-mode poolers (PgBouncer) do not
//! keep a session per client at all, which breaks session locks. A row
//! with a deadline bounds a dead holder's reign to the lease time, and
//! every statement is an ordinary transaction.

use std::thread;
use std::time::{Duration, Instant};

use postgres::Client;

use super::super::error::StoreError;
use super::PgStore;

/// First pause between lease attempts; doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(5);
/// Longest pause between lease attempts.
const MAX_POLL: Duration = Duration::from_millis(100);

/// A held lease. Release it with [`PgStore::release_lease`]; if the holder
/// dies it expires at its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The key's provider.
    pub provider: String,
    /// The key's bucket.
    pub bucket: String,
    /// The fencing number of this grant (grows with every grant).
    pub fence: i64,
}

impl PgStore {
    /// Takes the lease of `provider`/`bucket` if it is free or expired, once.
    ///
    /// # Errors
    ///
    /// The database cannot be reached.
    pub fn try_lease(&self, provider: &str, bucket: &str) -> Result<Option<Lease>, StoreError> {
        super::tokens::check_names(provider, bucket)?;
        let secs = self.options.lease.as_secs_f64();
        let holder = self.holder.as_str();
        let row = self
            .pool
            .with_client("take a refresh lease", |c: &mut Client| {
                c.query_opt(
                    "INSERT INTO credproxy_leases AS l (provider, bucket, holder, deadline, fence) \
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4), \
                         nextval('credproxy_lease_fence')) \
                 ON CONFLICT (provider, bucket) DO UPDATE \
                 SET holder = EXCLUDED.holder, deadline = EXCLUDED.deadline, \
                     fence = EXCLUDED.fence \
                 WHERE l.deadline < now() OR l.holder = EXCLUDED.holder \
                    OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a \
                                   WHERE a.application_name = 'credproxy ' || l.holder) \
                 RETURNING fence",
                    &[&provider, &bucket, &holder, &secs],
                )
            })?;
        Ok(row.map(|r| Lease {
            provider: provider.to_owned(),
            bucket: bucket.to_owned(),
            fence: r.get(0),
        }))
    }

    /// Takes the lease, polling with back-off for at most `wait`. `Ok(None)`
    /// if another holder kept it for the whole wait.
    ///
    /// # Errors
    ///
    /// The database cannot be reached.
    pub fn lease(
        &self,
        provider: &str,
        bucket: &str,
        wait: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let deadline = Instant::now() + wait;
        let mut pause = FIRST_POLL;
        loop {
            if let Some(lease) = self.try_lease(provider, bucket)? {
                return Ok(Some(lease));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    /// Whether `lease` is still ours and unexpired (checked by the database
    /// clock): a holder checks before it writes what it refreshed.
    ///
    /// # Errors
    ///
    /// The database cannot be reached.
    pub fn lease_valid(&self, lease: &Lease) -> Result<bool, StoreError> {
        let holder = self.holder.as_str();
        let row = self
            .pool
            .with_client("check a refresh lease", |c: &mut Client| {
                c.query_opt(
                    "SELECT 1 FROM credproxy_leases WHERE provider = $1 AND bucket = $2 \
                 AND holder = $3 AND fence = $4 AND deadline >= now()",
                    &[&lease.provider, &lease.bucket, &holder, &lease.fence],
                )
            })?;
        Ok(row.is_some())
    }

    /// Releases `lease` now: deletes its row if it is still ours (a lease
    /// taken over after expiry belongs to its new holder and stays).
    /// `Ok(true)` if it was. (A [`super::LeaseGuard`] releases on drop,
    /// off the caller's thread.)
    ///
    /// # Errors
    ///
    /// The database cannot be reached (the lease then expires by itself).
    pub fn release_lease(&self, lease: &Lease) -> Result<bool, StoreError> {
        super::release::delete(&self.pool, &self.holder, lease)
    }
}
