//! A connection over boxed async streams (stdio, embedders): a task on the
//! loop's executor reads, drives the engine with what it read (under the
//! engine lock), and writes the connection's replies. Replies produced
//! elsewhere (an effect finishing, a timer) reach the task through its
//! outbox; so do its own, which keeps every reply in the order the engine
//! produced it.
//!
//! Fairness: a task hands the engine one read (at most [`READ_CHUNK`]
//! bytes) at a time and yields to the other tasks after a read that filled
//! its buffer, so a client that floods its stream cannot keep the
//! executor to itself.
//!
//! Back-pressure: while more than [`MAX_UNSENT`](super::MAX_UNSENT) bytes wait to be written,
//! the task stops reading (the engine, told when the limit was crossed,
//! suspends the partial-frame deadline) and resumes once it has written
//! them down below the limit.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use credproxy_core::{ConnId, Now};
use rand_core::CryptoRng;
use smol::channel::{Receiver, Sender};
use smol::io::{AsyncReadExt, AsyncWriteExt};

use super::socket_conn::{READ_CHUNK, READ_FIRST};
use super::state::{Caller, Flow, Outgoing, Shared, State, drive, written};
use super::{Event, OnClose, Reader, Writer};

/// The parts of a running connection.
pub(super) struct AsyncConn<R> {
    pub conn: ConnId,
    pub reader: Reader,
    pub writer: Writer,
    pub on_close: OnClose,
    pub shared: Arc<Shared<R>>,
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

impl<R: CryptoRng> AsyncConn<R> {
    /// Runs the connection until it is closed, fails or is forgotten.
    pub async fn run(mut self) {
        let mut buf = vec![0u8; READ_FIRST];
        let mut reading = true;
        loop {
            let step = {
                let (outbox, reader) = (&self.outbox, &mut self.reader);
                if reading && !self.flow.paused.load(Ordering::SeqCst) {
                    smol::future::or(async { Step::Outgoing(outbox.recv().await.ok()) }, async {
                        Step::Read(reader.read(&mut buf).await)
                    })
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

    /// Runs `f` on the engine (see [`drive`]).
    fn engine(&self, f: impl FnOnce(&mut State<R>, Now)) {
        drive(&self.shared, Caller::Connection, f);
        self.shared.audit.flush();
    }

    /// The connection failed: the engine forgets it.
    fn gone(&self) {
        let conn = self.conn;
        self.engine(|s, now| s.connection_gone(conn, now));
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
            if self.writer.write_all(&batch).await.is_err() || self.writer.flush().await.is_err() {
                self.gone();
                return Go::Stop;
            }
            written(&self.shared, self.conn, &self.flow, batch.len());
            self.shared.audit.flush();
        }
        if close { Go::Stop } else { Go::On }
    }
}
