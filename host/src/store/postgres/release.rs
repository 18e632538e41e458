//! Lease releases off the caller's thread.
//!
//! The proxy releases a store lock by dropping its guard, inline on an I/O
//! thread, in the order the engine emitted it (see `crate::locks`): that
//! must never wait for the network. A lease guard therefore only queues its
//! release here; one thread per store deletes the rows in order. The
//! proxy's own next acquire of the key does not wait for it: a lease row
//! held by this store is taken over at once (the engine never holds one
//! key twice), and the queued delete, which names the old fence, then
//! touches nothing.
//!
//! When the store is dropped (or flushed, as `serve` and `stdio` do when
//! they stop), the thread finishes the releases queued before (and stops), so a CLI command leaves no lease behind for others to
//! wait out. A release that cannot reach the database is dropped: the lease
//! expires by itself at its deadline.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use postgres::Client;

use super::lease::Lease;
use super::lock;
use super::pool::Pool;

enum Msg {
    Release(Lease),
    /// Answer once every release queued before is done.
    Flush(Sender<()>),
    Stop,
}

/// A held lease; dropping it queues the release.
pub struct LeaseGuard {
    lease: Option<Lease>,
    tx: Sender<Msg>,
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl LeaseGuard {
    /// The lease held.
    #[must_use]
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            // The store is gone: the lease expires at its deadline.
            let _ = self.tx.send(Msg::Release(lease));
        }
    }
}

/// The release thread of one store.
pub struct Releaser {
    tx: Mutex<Sender<Msg>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Releaser {
    /// Starts the thread, releasing as `holder` through `pool`.
    ///
    /// # Errors
    ///
    /// The thread could not be started.
    pub fn start(pool: Arc<Pool>, holder: String) -> std::io::Result<Releaser> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("credproxy-lease-release".to_owned())
            .spawn(move || run(&rx, &pool, &holder))?;
        Ok(Releaser {
            tx: Mutex::new(tx),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// A guard for `lease` that queues its release when dropped.
    pub fn guard(&self, lease: Lease) -> LeaseGuard {
        LeaseGuard {
            lease: Some(lease),
            tx: lock(&self.tx).clone(),
        }
    }
}

impl Releaser {
    /// Waits (at most `wait`) until the releases queued so far are done:
    /// a proxy shutting down gives its leases back before it exits, even
    /// while other parts of it still hold the store.
    pub fn flush(&self, wait: std::time::Duration) {
        let (tx, rx) = mpsc::channel();
        if lock(&self.tx).send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(wait);
        }
    }
}

impl Drop for Releaser {
    fn drop(&mut self) {
        let _ = lock(&self.tx).send(Msg::Stop);
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

fn run(rx: &Receiver<Msg>, pool: &Pool, holder: &str) {
    loop {
        match rx.recv() {
            Ok(Msg::Release(lease)) => {
                let _ = delete(pool, holder, &lease);
            }
            Ok(Msg::Flush(done)) => {
                let _ = done.send(());
            }
            Ok(Msg::Stop) | Err(_) => return,
        }
    }
}

/// Deletes the lease row if it is still this grant (holder and fence): a
/// lease taken over after expiry belongs to its new holder and stays.
pub(super) fn delete(
    pool: &Pool,
    holder: &str,
    lease: &Lease,
) -> Result<bool, super::super::error::StoreError> {
    let n = pool.with_client("release a refresh lease", |c: &mut Client| {
        c.execute(
            "DELETE FROM credproxy_leases WHERE provider = $1 AND bucket = $2 \
             AND holder = $3 AND fence = $4",
            &[&lease.provider, &lease.bucket, &holder, &lease.fence],
        )
    })?;
    Ok(n == 1)
}
