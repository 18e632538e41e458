//! The I/O threads that serve Unix socket connections.
//!
//! Each thread owns a set of connections and its own [`mio::Poll`]
//! (edge-triggered epoll) with a [`mio::Waker`], and does everything for
//! them:
//! it waits for readiness, reads, drives the engine with what it read
//! (under the engine lock, see [`drive`](super::state::drive)), and writes
//! the replies — a `get_token` answered from the store's cache is read,
//! handled and written by one thread without waking any other. Connections
//! are handed to the threads in turn, so several connections are served on
//! several cores at once while the engine itself stays single-owner.
//!
//! Bytes for a connection produced by another thread (an effect finishing
//! in the loop task, a timer) wait in the connection's outbox; the producer
//! marks the connection *dirty* with its owner and wakes the owner's poller
//! when it is not the owner itself.
//!
//! Readiness is edge-triggered, so a connection that read a full buffer
//! (it may have more) is queued for another read on the next round
//! instead of being reported again; the round then polls without
//! sleeping.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use credproxy_core::ConnId;
use mio::{Events, Poll, Registry, Token, Waker};
use rand_core::CryptoRng;

use super::socket_conn::{Seen, SocketConn, Status};
use super::state::Shared;

/// The default number of I/O threads: one per core, at most this many (a
/// few threads saturate the engine lock long before more would help).
const MAX_DEFAULT_THREADS: usize = 4;

/// The default number of I/O threads for this machine.
#[must_use]
pub fn default_threads() -> NonZeroUsize {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    NonZeroUsize::new(cores.min(MAX_DEFAULT_THREADS)).unwrap_or(NonZeroUsize::MIN)
}

thread_local! {
    /// The index of the I/O thread running here (`usize::MAX` elsewhere).
    static CURRENT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The poller token of the waker (never a connection's).
const WAKE: Token = Token(usize::MAX);

/// Wakes an I/O thread from others, once per burst.
pub(super) struct Notifier {
    waker: Waker,
    /// Set by [`Notifier::notify`] until the thread has seen the wake-up,
    /// so a burst of notifications writes the waker's eventfd once.
    woken: AtomicBool,
}

impl Notifier {
    fn new(registry: &Registry) -> std::io::Result<Notifier> {
        Ok(Notifier {
            waker: Waker::new(registry, WAKE)?,
            woken: AtomicBool::new(false),
        })
    }

    /// Wakes the thread in (or next entering) its poll.
    pub fn notify(&self) {
        if !self.woken.swap(true, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }

    /// Called by the thread when its poll returned the waker's event,
    /// before it looks at its queues. A notification before this finds the
    /// flag set and does not wake, which is fine: its work was queued
    /// before it, and the thread looks at the queues after this. One after
    /// it wakes again (mio's eventfd waker is edge-triggered: every wake
    /// is an event, nothing needs draining).
    fn seen(&self) {
        self.woken.store(false, Ordering::SeqCst);
    }
}

/// What other threads know of an I/O thread.
pub(super) struct Handle {
    index: usize,
    notifier: Notifier,
    /// Connections with something new in their outbox.
    dirty: Mutex<Vec<ConnId>>,
    /// Connections handed to this thread, not yet registered.
    incoming: Mutex<Vec<SocketConn>>,
    stop: AtomicBool,
}

impl Handle {
    /// Tells the owner that `conn` has something to write (or to close).
    pub fn mark_dirty(&self, conn: ConnId) {
        let first = {
            let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
            dirty.push(conn);
            dirty.len() == 1
        };
        // The owner looks at its dirty list after every step; another
        // thread wakes it, once per batch.
        if first && CURRENT.get() != self.index {
            self.notifier.notify();
        }
    }

    fn take_dirty(&self, into: &mut Vec<ConnId>) {
        let mut dirty = self.dirty.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *dirty, into);
    }
}

/// The running I/O threads. Dropping them stops the threads; the
/// connections they still hold are closed.
pub(super) struct IoThreads {
    handles: Vec<Arc<Handle>>,
    joins: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

impl IoThreads {
    /// Starts `threads` I/O threads driving `shared`'s engine; returns
    /// once every one of them runs (named and about to wait).
    pub fn start<R: CryptoRng + Send + 'static>(
        threads: NonZeroUsize,
        shared: &Arc<Shared<R>>,
    ) -> std::io::Result<IoThreads> {
        let mut io = IoThreads {
            handles: Vec::with_capacity(threads.get()),
            joins: Vec::with_capacity(threads.get()),
            next: AtomicUsize::new(0),
        };
        let (running, started) = std::sync::mpsc::channel();
        for index in 0..threads.get() {
            let poll = Poll::new()?;
            let handle = Arc::new(Handle {
                index,
                notifier: Notifier::new(poll.registry())?,
                dirty: Mutex::new(Vec::new()),
                incoming: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
            });
            let (h, s, running) = (handle.clone(), shared.clone(), running.clone());
            let join = std::thread::Builder::new()
                .name(format!("credproxy-io-{index}"))
                .spawn(move || {
                    let _ = running.send(());
                    run(&h, &s, poll);
                })?;
            io.handles.push(handle);
            io.joins.push(join);
        }
        drop(running);
        for _ in 0..threads.get() {
            // Fails only if a thread died before it ran.
            started
                .recv()
                .map_err(|_| std::io::Error::other("an I/O thread did not start"))?;
        }
        Ok(io)
    }

    /// The thread the next connection goes to (in turn).
    pub fn pick(&self) -> Arc<Handle> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[i].clone()
    }

    /// Hands `conn` to the thread of `handle`.
    pub fn adopt(handle: &Handle, conn: SocketConn) {
        handle
            .incoming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        handle.notifier.notify();
    }
}

impl Drop for IoThreads {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.stop.store(true, Ordering::SeqCst);
            handle.notifier.notify();
        }
        for join in self.joins.drain(..) {
            let _ = join.join();
        }
    }
}

/// Readiness events taken per wait.
const EVENTS_PER_WAIT: usize = 64;

/// An I/O thread's connections and its queue of those that may have more
/// to read.
struct Conns {
    map: BTreeMap<ConnId, SocketConn>,
    /// Connections to read again next round (each with `queued` set).
    again: Vec<ConnId>,
}

impl Conns {
    /// After a turn of `id`: closes it, or queues it for another read if
    /// it may have more.
    fn settle(&mut self, registry: &Registry, id: ConnId, status: Status) {
        if status == Status::Closed {
            if let Some(conn) = self.map.remove(&id) {
                conn.finish(registry);
            }
            return;
        }
        if let Some(conn) = self.map.get_mut(&id)
            && !conn.queued
            && conn.more_to_read()
        {
            conn.queued = true;
            self.again.push(id);
        }
    }
}

/// An I/O thread's loop.
fn run<R: CryptoRng>(handle: &Arc<Handle>, shared: &Arc<Shared<R>>, mut poll: Poll) {
    CURRENT.set(handle.index);
    let mut conns = Conns {
        map: BTreeMap::new(),
        again: Vec::new(),
    };
    let mut events = Events::with_capacity(EVENTS_PER_WAIT);
    let mut retry = Vec::new();
    let mut dirty = Vec::new();
    while !handle.stop.load(Ordering::SeqCst) {
        // Connections with bytes left to read: look for events, but do not
        // sleep.
        let timeout = (!conns.again.is_empty()).then_some(Duration::ZERO);
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            continue;
        }
        if events.iter().any(|e| e.token() == WAKE) {
            handle.notifier.seen();
        }
        let registry = poll.registry();
        adopt_incoming(handle, shared, registry, &mut conns);
        std::mem::swap(&mut conns.again, &mut retry);
        for event in &events {
            if event.token() == WAKE {
                continue;
            }
            let Ok(id) = u64::try_from(event.token().0).map(ConnId) else {
                continue;
            };
            if let Some(conn) = conns.map.get_mut(&id) {
                let status = conn.on_ready(shared, registry, Seen::of(event));
                conns.settle(registry, id, status);
            }
            flush_dirty(handle, shared, registry, &mut conns, &mut dirty);
        }
        for id in retry.drain(..) {
            if let Some(conn) = conns.map.get_mut(&id) {
                conn.queued = false;
                let status = conn.on_ready(shared, registry, Seen::default());
                conns.settle(registry, id, status);
            }
            flush_dirty(handle, shared, registry, &mut conns, &mut dirty);
        }
        flush_dirty(handle, shared, registry, &mut conns, &mut dirty);
        // One audit write for everything this round served.
        shared.audit.flush();
    }
    for (_, conn) in std::mem::take(&mut conns.map) {
        conn.finish(poll.registry());
    }
}

/// Registers the connections handed to this thread and writes whatever
/// was queued for them meanwhile.
fn adopt_incoming<R: CryptoRng>(
    handle: &Handle,
    shared: &Shared<R>,
    registry: &Registry,
    conns: &mut Conns,
) {
    let incoming = std::mem::take(
        &mut *handle
            .incoming
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    for mut conn in incoming {
        let id = conn.id();
        if conn.register(registry).is_err() {
            conn.fail(shared);
            conn.finish(registry);
            continue;
        }
        let status = conn.flush(shared, registry);
        conns.map.insert(id, conn);
        conns.settle(registry, id, status);
    }
}

/// Writes (or closes) every connection of this thread marked dirty.
fn flush_dirty<R: CryptoRng>(
    handle: &Handle,
    shared: &Shared<R>,
    registry: &Registry,
    conns: &mut Conns,
    dirty: &mut Vec<ConnId>,
) {
    loop {
        handle.take_dirty(dirty);
        if dirty.is_empty() {
            return;
        }
        for id in dirty.drain(..) {
            let Some(conn) = conns.map.get_mut(&id) else {
                continue;
            };
            let status = conn.flush(shared, registry);
            conns.settle(registry, id, status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;

    /// Polls until the waker's event comes (other events are none here).
    fn woken(poll: &mut Poll, events: &mut Events, timeout: Option<Duration>) -> bool {
        poll.poll(events, timeout).unwrap();
        events.iter().any(|e| e.token() == WAKE)
    }

    #[test]
    fn a_burst_of_notifications_wakes_once_until_seen() {
        let mut poll = Poll::new().unwrap();
        let n = Notifier::new(poll.registry()).unwrap();
        let mut events = Events::with_capacity(8);
        n.notify();
        n.notify();
        assert!(woken(&mut poll, &mut events, None));
        // The second notify did not wake: nothing is pending.
        assert!(!woken(&mut poll, &mut events, Some(Duration::ZERO)));
        // Until seen, further notifications stay silent; after, they wake.
        n.notify();
        assert!(!woken(&mut poll, &mut events, Some(Duration::ZERO)));
        n.seen();
        n.notify();
        assert!(woken(&mut poll, &mut events, None));
    }

    /// Two threads notify while the owner polls and acknowledges: no
    /// notification may be lost (a lost one leaves its notifier waiting
    /// for the acknowledgement until the deadline).
    #[test]
    fn concurrent_notifications_are_never_lost() {
        let mut poll = Poll::new().unwrap();
        let n = Arc::new(Notifier::new(poll.registry()).unwrap());
        let sent = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (n, sent, seen, stop) = (n.clone(), sent.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut events = Events::with_capacity(8);
                while !stop.load(Ordering::SeqCst) {
                    if woken(&mut poll, &mut events, None) {
                        n.seen();
                    }
                    seen.store(sent.load(Ordering::SeqCst), Ordering::SeqCst);
                }
            })
        };
        let notifiers: Vec<_> = (0..2)
            .map(|_| {
                let (n, sent, seen) = (n.clone(), sent.clone(), seen.clone());
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        let mine = sent.fetch_add(1, Ordering::SeqCst) + 1;
                        n.notify();
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while seen.load(Ordering::SeqCst) < mine {
                            assert!(Instant::now() < deadline, "notification {mine} was lost");
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for t in notifiers {
            t.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        n.notify();
        waiter.join().unwrap();
    }
}
