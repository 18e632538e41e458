//! A Unix socket connection as its I/O thread serves it: non-blocking
//! reads and writes on readiness, the engine driven with what was read.
//!
//! Fairness: one read (at most [`READ_CHUNK`] bytes) per readiness event;
//! the poller is level-triggered, so a client with more to send is seen
//! again on the next round, after every other ready connection.
//!
//! Back-pressure: while more than [`MAX_UNSENT`](super::MAX_UNSENT) bytes wait to be written
//! the connection is not read (the engine, told when the limit was
//! crossed, suspends the partial-frame deadline); reading resumes once the
//! backlog is below the limit again.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use credproxy_core::ConnId;
use rand_core::CryptoRng;
use smol::channel::{Receiver, Sender};

use super::poller::{Interest, Poller};
use super::state::{Caller, Flow, Outgoing, Shared, drive, written};

/// The most a connection hands the engine at once.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// A connection's first read buffer, doubled (up to [`READ_CHUNK`]) after
/// each read that fills it: an idle connection holds 512 bytes instead of
/// a whole chunk (see BENCHMARKS.md, "Memory").
pub(super) const READ_FIRST: usize = 512;

/// Whether the connection is still served after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Open,
    Closed,
}

/// A connection owned by an I/O thread.
pub(super) struct SocketConn {
    id: ConnId,
    stream: UnixStream,
    outbox: Receiver<Outgoing>,
    flow: Arc<Flow>,
    /// Bytes taken from the outbox; `pending[written..]` is still to write.
    pending: Vec<u8>,
    written: usize,
    buf: Vec<u8>,
    /// The peer has not closed its writing side.
    reading: bool,
    /// A close was queued: write what is pending, then close.
    closing: bool,
    /// What the poller waits for on the socket.
    interest: Interest,
    /// Dropped when the connection is finished (the final flush waits).
    alive: Sender<()>,
}

impl SocketConn {
    /// A connection the engine knows as `id`; `stream` is made
    /// non-blocking.
    pub fn new(
        id: ConnId,
        stream: UnixStream,
        outbox: Receiver<Outgoing>,
        flow: Arc<Flow>,
        alive: Sender<()>,
    ) -> io::Result<SocketConn> {
        stream.set_nonblocking(true)?;
        Ok(SocketConn {
            id,
            stream,
            outbox,
            flow,
            pending: Vec::new(),
            written: 0,
            buf: vec![0; READ_FIRST],
            reading: true,
            closing: false,
            interest: Interest::default(),
            alive,
        })
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Adds the socket to `poller`, interested in reading.
    pub fn register(&mut self, poller: &Poller) -> io::Result<()> {
        let read = Interest {
            read: true,
            write: false,
        };
        poller.set(&self.stream, self.id.0, self.interest, read)?;
        self.interest = read;
        Ok(())
    }

    /// Handles a readiness event: reads once if it was readable and the
    /// connection reads, then writes what is queued (a writable event, or
    /// replies to what was read) and brings the interest up to date.
    pub fn on_ready<R: CryptoRng>(
        &mut self,
        shared: &Shared<R>,
        poller: &Poller,
        readable: bool,
    ) -> Status {
        if readable && self.wants_read() && self.read(shared) == Status::Closed {
            return Status::Closed;
        }
        self.flush(shared, poller)
    }

    fn wants_read(&self) -> bool {
        self.reading && !self.closing && !self.flow.paused.load(Ordering::SeqCst)
    }

    /// One read, handed to the engine.
    fn read<R: CryptoRng>(&mut self, shared: &Shared<R>) -> Status {
        let id = self.id;
        match self.stream.read(&mut self.buf) {
            Ok(0) => {
                self.reading = false;
                drive(shared, Caller::Connection, |s, now| {
                    s.engine.handle_read_closed(id, now);
                });
            }
            Ok(n) => {
                let bytes = &self.buf[..n];
                drive(shared, Caller::Connection, |s, now| {
                    s.engine.handle_bytes(id, bytes, now);
                });
                if n == self.buf.len() && n < READ_CHUNK {
                    self.buf.resize((n * 2).min(READ_CHUNK), 0);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                self.fail(shared);
                return Status::Closed;
            }
        }
        Status::Open
    }

    /// Writes what the outbox holds until it is empty or the socket is
    /// full; closes after a queued close.
    pub fn flush<R: CryptoRng>(&mut self, shared: &Shared<R>, poller: &Poller) -> Status {
        loop {
            self.take_outbox();
            if self.written == self.pending.len() {
                self.pending.clear();
                self.written = 0;
                if self.closing {
                    return Status::Closed;
                }
                break;
            }
            match self.stream.write(&self.pending[self.written..]) {
                Ok(n) => {
                    self.written += n;
                    written(shared, self.id, &self.flow, n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.fail(shared);
                    return Status::Closed;
                }
            }
        }
        self.update_interest(poller);
        Status::Open
    }

    /// Moves the outbox's bytes behind the pending ones.
    fn take_outbox(&mut self) {
        if self.closing {
            return;
        }
        while let Ok(item) = self.outbox.try_recv() {
            match item {
                Outgoing::Bytes(bytes) if self.pending.is_empty() => self.pending = bytes,
                Outgoing::Bytes(bytes) => self.pending.extend_from_slice(&bytes),
                Outgoing::Close => {
                    self.closing = true;
                    return;
                }
            }
        }
    }

    /// Registers the interest the connection now has, if it changed.
    fn update_interest(&mut self, poller: &Poller) {
        let want = Interest {
            read: self.wants_read(),
            write: self.written < self.pending.len(),
        };
        if self.interest != want
            && poller
                .set(&self.stream, self.id.0, self.interest, want)
                .is_ok()
        {
            self.interest = want;
        }
    }

    /// The connection failed: the engine forgets it.
    pub fn fail<R: CryptoRng>(&self, shared: &Shared<R>) {
        let id = self.id;
        drive(shared, Caller::Connection, |s, now| {
            s.connection_gone(id, now)
        });
    }

    /// Removes the socket from the poller and closes it.
    pub fn finish(self, poller: &Poller) {
        let _ = poller.set(&self.stream, self.id.0, self.interest, Interest::default());
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        drop(self.alive);
    }
}
