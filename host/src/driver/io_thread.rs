//! The I/O threads that serve Unix socket connections.
//!
//! Each thread owns a set of connections and its own [`Poller`]
//! (level-triggered epoll), and does everything for them:
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

use std::cell::Cell;
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use credproxy_core::ConnId;
use nix::sys::epoll::EpollEvent;
use rand_core::CryptoRng;

use super::poller::Poller;

use super::socket_conn::{SocketConn, Status};
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

/// What other threads know of an I/O thread.
pub(super) struct Handle {
    index: usize,
    poller: Poller,
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
            self.poller.notify();
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
            let handle = Arc::new(Handle {
                index,
                poller: Poller::new()?,
                dirty: Mutex::new(Vec::new()),
                incoming: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
            });
            let (h, s, running) = (handle.clone(), shared.clone(), running.clone());
            let join = std::thread::Builder::new()
                .name(format!("credproxy-io-{index}"))
                .spawn(move || {
                    let _ = running.send(());
                    run(&h, &s);
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
        handle.poller.notify();
    }
}

impl Drop for IoThreads {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.stop.store(true, Ordering::SeqCst);
            handle.poller.notify();
        }
        for join in self.joins.drain(..) {
            let _ = join.join();
        }
    }
}

/// Readiness events taken per wait.
const EVENTS_PER_WAIT: usize = 64;

/// An I/O thread's loop.
fn run<R: CryptoRng>(handle: &Arc<Handle>, shared: &Arc<Shared<R>>) {
    CURRENT.set(handle.index);
    let mut conns: BTreeMap<ConnId, SocketConn> = BTreeMap::new();
    let mut buf = vec![EpollEvent::empty(); EVENTS_PER_WAIT];
    let mut ready = Vec::with_capacity(EVENTS_PER_WAIT);
    let mut dirty = Vec::new();
    while !handle.stop.load(Ordering::SeqCst) {
        if handle.poller.wait(&mut buf, &mut ready).is_err() {
            continue;
        }
        adopt_incoming(handle, shared, &mut conns);
        for event in &ready {
            let id = ConnId(event.key);
            if let Some(conn) = conns.get_mut(&id) {
                let status = conn.on_ready(shared, &handle.poller, event.readable);
                if status == Status::Closed {
                    close(&handle.poller, &mut conns, id);
                }
            }
            flush_dirty(handle, shared, &mut conns, &mut dirty);
        }
        flush_dirty(handle, shared, &mut conns, &mut dirty);
        // One audit write for everything this round served.
        shared.audit.flush();
    }
    for (_, conn) in std::mem::take(&mut conns) {
        conn.finish(&handle.poller);
    }
}

/// Registers the connections handed to this thread and writes whatever
/// was queued for them meanwhile.
fn adopt_incoming<R: CryptoRng>(
    handle: &Handle,
    shared: &Shared<R>,
    conns: &mut BTreeMap<ConnId, SocketConn>,
) {
    let incoming = std::mem::take(
        &mut *handle
            .incoming
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    for mut conn in incoming {
        let id = conn.id();
        if conn.register(&handle.poller).is_err() {
            conn.fail(shared);
            conn.finish(&handle.poller);
            continue;
        }
        let status = conn.flush(shared, &handle.poller);
        conns.insert(id, conn);
        if status == Status::Closed {
            close(&handle.poller, conns, id);
        }
    }
}

/// Writes (or closes) every connection of this thread marked dirty.
fn flush_dirty<R: CryptoRng>(
    handle: &Handle,
    shared: &Shared<R>,
    conns: &mut BTreeMap<ConnId, SocketConn>,
    dirty: &mut Vec<ConnId>,
) {
    loop {
        handle.take_dirty(dirty);
        if dirty.is_empty() {
            return;
        }
        for id in dirty.drain(..) {
            let Some(conn) = conns.get_mut(&id) else {
                continue;
            };
            if conn.flush(shared, &handle.poller) == Status::Closed {
                close(&handle.poller, conns, id);
            }
        }
    }
}

fn close(poller: &Poller, conns: &mut BTreeMap<ConnId, SocketConn>, id: ConnId) {
    if let Some(conn) = conns.remove(&id) {
        conn.finish(poller);
    }
}
