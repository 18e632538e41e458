//! A connection's task: reads the socket, drives the engine with what it
//! read (under the engine lock), and writes the connection's replies.
//!
//! One task per connection does all three, on the I/O threads: a request
//! answered from the store's cache is read, handled and written by the
//! same task on the same thread, with no hand-off to another task. Replies
//! produced elsewhere (an effect finishing, a timer) reach the task through
//! its outbox; so do its own, which keeps every reply in the order the
//! engine produced it.
//!
//! Fairness: a task hands the engine one read (at most [`READ_CHUNK`]
//! bytes) at a time and yields to the other tasks of its thread after a
//! read that filled its buffer, so a client that floods its socket cannot
//! keep a thread to itself.
//!
//! Back-pressure: while more than [`MAX_UNSENT`] bytes wait to be written,
//! the task stops reading (the engine, told when the limit was crossed,
//! suspends the partial-frame deadline) and resumes once it has written
//! them down below the limit.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use credproxy_core::{ConnId, Now};
use rand_core::CryptoRng;
use smol::channel::{Receiver, Sender};
use smol::io::{AsyncReadExt, AsyncWriteExt};

use super::state::{Flow, Outgoing, State};
use super::{Event, MAX_UNSENT, OnClose, Reader, Writer};

/// The most a connection hands the engine at once.
const READ_CHUNK: usize = 16 * 1024;

/// A connection's first read buffer, doubled (up to [`READ_CHUNK`]) after
/// each read that fills it: an idle connection holds 512 bytes instead of
/// a whole chunk (see BENCHMARKS.md, "Memory").
const READ_FIRST: usize = 512;

/// Locks the engine. A panic while it was held leaves the engine in an
/// unknown state: the process stops rather than serve from it.
pub(super) fn lock<R>(state: &Mutex<State<R>>) -> MutexGuard<'_, State<R>> {
    match state.lock() {
        Ok(guard) => guard,
        Err(_) => {
            eprintln!("credproxy: the engine lock was poisoned by a panic; aborting");
            std::process::abort()
        }
    }
}

/// The parts of a running connection.
pub(super) struct Connection<R> {
    pub conn: ConnId,
    pub reader: Reader,
    pub writer: Writer,
    pub on_close: OnClose,
    pub state: Arc<Mutex<State<R>>>,
    pub outbox: Receiver<Outgoing>,
    pub flow: Arc<Flow>,
    /// Tells the loop task the connection's task has ended.
    pub events: Sender<Event>,
    /// Dropped when the task ends (the loop's final flush waits for all).
    pub alive: Sender<()>,
}

/// What woke the task.
enum Step {
    Outgoing(Option<Outgoing>),
    Read(std::io::Result<usize>),
}

/// Whether the task goes on after a step.
#[derive(PartialEq, Eq)]
enum Go {
    On,
    Stop,
}

impl<R: CryptoRng> Connection<R> {
    /// Runs the connection until it is closed, fails or is forgotten.
    pub async fn run(mut self) {
        let mut buf = vec![0u8; READ_FIRST];
        let mut reading = true;
        loop {
            let step = {
                let (outbox, reader) = (&self.outbox, &mut self.reader);
                if reading && !self.flow.paused.load(Ordering::SeqCst) {
                    smol::future::or(
                        async { Step::Outgoing(outbox.recv().await.ok()) },
                        async { Step::Read(reader.read(&mut buf).await) },
                    )
                    .await
                } else {
                    Step::Outgoing(outbox.recv().await.ok())
                }
            };
            let go = match step {
                Step::Outgoing(None) => Go::Stop,
                Step::Outgoing(Some(first)) => self.write(Some(first)).await,
                Step::Read(Ok(0)) => {
                    reading = false;
                    self.engine(|s, now| s.engine.handle_read_closed(self.conn, now));
                    self.write(None).await
                }
                Step::Read(Ok(n)) => {
                    self.engine(|s, now| s.engine.handle_bytes(self.conn, &buf[..n], now));
                    let go = self.write(None).await;
                    if n == buf.len() {
                        if n < READ_CHUNK {
                            buf.resize((n * 2).min(READ_CHUNK), 0);
                        }
                        smol::future::yield_now().await;
                    }
                    go
                }
                Step::Read(Err(_)) => {
                    self.gone();
                    Go::Stop
                }
            };
            if go == Go::Stop {
                break;
            }
        }
        let _ = self.writer.flush().await;
        let _ = self.writer.close().await;
        (self.on_close)();
        drop(self.alive);
        let _ = self.events.try_send(Event::ConnectionEnded);
    }

    /// Runs `f` on the engine under the lock, then drains it.
    fn engine(&self, f: impl FnOnce(&mut State<R>, Now)) {
        let mut state = lock(&self.state);
        let now = state.now();
        f(&mut state, now);
        state.drain();
    }

    /// The connection failed: the engine forgets it.
    fn gone(&self) {
        let conn = self.conn;
        self.engine(|s, now| {
            s.engine.handle_connection_gone(conn, now);
            s.conns.remove(&conn);
        });
    }

    /// Writes `first` and everything queued behind it, in one system call
    /// when they are several; stops after a close or a failed write.
    async fn write(&mut self, first: Option<Outgoing>) -> Go {
        let mut batch: Vec<u8> = Vec::new();
        let mut close = false;
        let mut next = first.or_else(|| self.outbox.try_recv().ok());
        while let Some(item) = next {
            match item {
                Outgoing::Bytes(bytes) if batch.is_empty() => batch = bytes,
                Outgoing::Bytes(bytes) => batch.extend_from_slice(&bytes),
                Outgoing::Close => {
                    close = true;
                    break;
                }
            }
            next = self.outbox.try_recv().ok();
        }
        if !batch.is_empty() {
            if self.writer.write_all(&batch).await.is_err() || self.writer.flush().await.is_err()
            {
                self.gone();
                return Go::Stop;
            }
            self.written(batch.len());
        }
        if close { Go::Stop } else { Go::On }
    }

    /// Accounts for `n` written bytes; resumes reading once the backlog is
    /// below the limit again.
    fn written(&self, n: usize) {
        let left = self.flow.unsent.fetch_sub(n, Ordering::SeqCst) - n;
        if left <= MAX_UNSENT && self.flow.paused.load(Ordering::SeqCst) {
            // Checked again under the lock, where the pause was decided.
            let (conn, flow) = (self.conn, &self.flow);
            self.engine(|s, now| {
                if flow.unsent.load(Ordering::SeqCst) <= MAX_UNSENT
                    && flow.paused.swap(false, Ordering::SeqCst)
                {
                    s.engine.handle_resume_reading(conn, now);
                }
            });
        }
    }
}
