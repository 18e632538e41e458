//! A Unix socket connection as its I/O thread serves it: non-blocking
//! reads and writes on readiness, the engine driven with what was read.
//!
//! Readiness is edge-triggered (mio): an event says the socket *became*
//! readable or writable, and is not repeated. So the connection remembers
//! that it may have unread bytes ([`SocketConn::more_to_read`]) until a
//! read drains the socket: a read that returns `WouldBlock`, or fewer bytes
//! than asked (a Unix stream socket's `recv` copies everything queued up to
//! the buffer's size, and bytes arriving after it raise a new edge; tokio
//! clears readiness on short reads the same way, which saves the second
//! `recv` ending in `EAGAIN` on every request). Writes go on until the
//! outbox is empty or the socket is full; writable readiness is asked for
//! only while bytes wait (asking always would wake the thread each time the
//! peer reads a reply).
//!
//! Fairness: one read (at most [`READ_CHUNK`] bytes) per turn; a
//! connection with more to read is queued by its I/O thread for the next
//! round, after every other ready connection.
//!
//! Back-pressure: while more than [`MAX_UNSENT`](super::MAX_UNSENT) bytes wait to be written
//! the connection is not read (the engine, told when the limit was
//! crossed, suspends the partial-frame deadline); reading resumes once the
//! backlog is below the limit again (the bytes that arrived meanwhile are
//! remembered as unread, so no edge is lost).

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use credproxy_core::ConnId;
use mio::net::UnixStream;
use mio::{Interest, Registry, Token};
use rand_core::CryptoRng;
use smol::channel::{Receiver, Sender};

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

/// What a readiness event reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Seen {
    /// Bytes arrived.
    pub readable: bool,
    /// The peer closed its side, or the socket has an error (the next
    /// reads report it).
    pub hung_up: bool,
}

impl Seen {
    pub fn of(event: &mio::event::Event) -> Seen {
        Seen {
            readable: event.is_readable(),
            hung_up: event.is_read_closed() || event.is_error(),
        }
    }
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
    /// The socket may hold bytes not read yet (a readable edge was seen
    /// and no read has drained it since).
    unread: bool,
    /// A hang-up or an error was reported: reads go on until one returns
    /// it (a short read does not mean drained then — the end of the stream
    /// raises no new edge).
    hung_up: bool,
    /// Queued by the I/O thread for another read next round.
    pub queued: bool,
    /// What the poller waits for on the socket (`None`: not registered).
    interest: Option<Interest>,
    /// Dropped when the connection is finished (the final flush waits).
    alive: Sender<()>,
}

impl SocketConn {
    /// A connection the engine knows as `id`; `stream` is made
    /// non-blocking.
    pub fn new(
        id: ConnId,
        stream: std::os::unix::net::UnixStream,
        outbox: Receiver<Outgoing>,
        flow: Arc<Flow>,
        alive: Sender<()>,
    ) -> io::Result<SocketConn> {
        stream.set_nonblocking(true)?;
        Ok(SocketConn {
            id,
            stream: UnixStream::from_std(stream),
            outbox,
            flow,
            pending: Vec::new(),
            written: 0,
            buf: vec![0; READ_FIRST],
            reading: true,
            closing: false,
            unread: false,
            hung_up: false,
            queued: false,
            interest: None,
            alive,
        })
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The poller token of the connection.
    pub fn token(id: ConnId) -> Token {
        // Connection ids are allocated from 1 up and never come near
        // `usize::MAX` (the waker's token) on a 64-bit target.
        Token(usize::try_from(id.0).unwrap_or(usize::MAX - 1))
    }

    /// Adds the socket to `registry`, interested in reading. Bytes already
    /// queued on it raise an event at once.
    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(&mut self.stream, Self::token(self.id), Interest::READABLE)?;
        self.interest = Some(Interest::READABLE);
        Ok(())
    }

    /// Handles a turn: a readiness event or a queued re-read (`seen`
    /// empty). Reads once if the socket may hold bytes and the connection
    /// reads, then writes what is queued (a writable event, or replies to
    /// what was read) and brings the interest up to date.
    pub fn on_ready<R: CryptoRng>(
        &mut self,
        shared: &Shared<R>,
        registry: &Registry,
        seen: Seen,
    ) -> Status {
        self.hung_up |= seen.hung_up;
        self.unread |= seen.readable || seen.hung_up;
        if self.more_to_read() && self.read(shared) == Status::Closed {
            return Status::Closed;
        }
        self.flush(shared, registry)
    }

    /// Whether a read now could find bytes the engine would take.
    pub fn more_to_read(&self) -> bool {
        self.unread && self.wants_read()
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
                self.unread = false;
                drive(shared, Caller::Connection, |s, now| {
                    s.engine.handle_read_closed(id, now);
                });
            }
            Ok(n) => {
                let bytes = &self.buf[..n];
                drive(shared, Caller::Connection, |s, now| {
                    s.engine.handle_bytes(id, bytes, now);
                });
                if n < self.buf.len() {
                    // Drained (see the module's comment), unless the end
                    // of the stream is still to be read.
                    self.unread = self.hung_up;
                } else if n < READ_CHUNK {
                    self.buf.resize((n * 2).min(READ_CHUNK), 0);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.unread = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                self.fail(shared);
                return Status::Closed;
            }
        }
        Status::Open
    }

    /// Writes what the outbox holds until it is empty or the socket is
    /// full; closes after a queued close.
    pub fn flush<R: CryptoRng>(&mut self, shared: &Shared<R>, registry: &Registry) -> Status {
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
        self.update_interest(registry);
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
    /// Readable stays asked for while the connection is paused (an edge
    /// then only marks bytes as unread), so pausing costs no system call;
    /// it is dropped once the peer has closed its side or a close is
    /// queued.
    fn update_interest(&mut self, registry: &Registry) {
        let read = self.reading && !self.closing;
        let write = self.written < self.pending.len();
        let want = match (read, write) {
            (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
            (true, false) => Some(Interest::READABLE),
            (false, true) => Some(Interest::WRITABLE),
            (false, false) => None,
        };
        if want == self.interest {
            return;
        }
        let token = Self::token(self.id);
        let done = match (self.interest, want) {
            (None, Some(w)) => registry.register(&mut self.stream, token, w),
            (Some(_), Some(w)) => registry.reregister(&mut self.stream, token, w),
            (Some(_), None) => registry.deregister(&mut self.stream),
            (None, None) => Ok(()),
        };
        if done.is_ok() {
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
    pub fn finish(mut self, registry: &Registry) {
        if self.interest.is_some() {
            let _ = registry.deregister(&mut self.stream);
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        drop(self.alive);
    }
}
