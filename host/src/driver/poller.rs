//! An I/O thread's poller: level-triggered epoll (through `nix`) with an
//! eventfd to wake it from other threads.
//!
//! Each wait is one `epoll_wait`: no timer or wake-up descriptor is re-armed
//! around it (a general-purpose poller's one-shot bookkeeping would add
//! four system calls per wait, about one per request at eight connections;
//! see BENCHMARKS.md). A descriptor with no interest left is removed from
//! the set rather than kept with an empty mask, because epoll reports a
//! hang-up whatever the mask says, which level-triggered would repeat
//! forever.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// The key of the wake-up eventfd (never a connection's).
const WAKE_KEY: u64 = u64::MAX;

/// What a descriptor is waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Interest {
    pub read: bool,
    pub write: bool,
}

impl Interest {
    fn flags(self) -> EpollFlags {
        let mut flags = EpollFlags::empty();
        if self.read {
            flags |= EpollFlags::EPOLLIN;
        }
        if self.write {
            flags |= EpollFlags::EPOLLOUT;
        }
        flags
    }

    fn is_none(self) -> bool {
        !self.read && !self.write
    }
}

/// A readiness event. Only whether it was readable matters: every event
/// is followed by writing what is queued. Hang-ups and errors count as
/// readable (the next read reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ready {
    pub key: u64,
    pub readable: bool,
}

/// Level-triggered epoll plus a wake-up eventfd.
pub(super) struct Poller {
    epoll: Epoll,
    wake: EventFd,
    /// Set by [`Poller::notify`] until the waiter has seen the wake-up, so
    /// a burst of notifications writes the eventfd once.
    woken: AtomicBool,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE_KEY))?;
        Ok(Poller {
            epoll,
            wake,
            woken: AtomicBool::new(false),
        })
    }

    /// Changes what `fd` (registered under `key`, or not at all when `old`
    /// is empty) is waited for.
    pub fn set(&self, fd: impl AsFd, key: u64, old: Interest, new: Interest) -> io::Result<()> {
        match (old.is_none(), new.is_none()) {
            (true, true) => Ok(()),
            (true, false) => Ok(self.epoll.add(fd, EpollEvent::new(new.flags(), key))?),
            (false, true) => Ok(self.epoll.delete(fd)?),
            (false, false) => Ok(self
                .epoll
                .modify(fd, &mut EpollEvent::new(new.flags(), key))?),
        }
    }

    /// Wakes the thread in (or next entering) [`Poller::wait`].
    pub fn notify(&self) {
        if !self.woken.swap(true, Ordering::SeqCst) {
            let _ = self.wake.write(1);
        }
    }

    /// Waits for readiness; fills `ready` (cleared first) with the
    /// connections' events. Returns after a [`Poller::notify`] too, possibly
    /// with no event.
    pub fn wait(&self, buf: &mut [EpollEvent], ready: &mut Vec<Ready>) -> io::Result<()> {
        ready.clear();
        let n = match self.epoll.wait(buf, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        for event in &buf[..n] {
            if event.data() == WAKE_KEY {
                // Drain, then reset. A notification before the reset finds
                // the flag set and does not write, which is fine: its
                // caller's work was queued before it, and this thread looks
                // at the queues after this wait. Resetting first would let
                // a notification write between the reset and the drain; the
                // drain would swallow it and leave the flag set with the
                // eventfd empty, so no later notification would ever write
                // (the thread would sleep through every one).
                let _ = self.wake.read();
                self.woken.store(false, Ordering::SeqCst);
                continue;
            }
            let flags = event.events();
            let broken = flags.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP);
            ready.push(Ready {
                key: event.data(),
                readable: broken || flags.contains(EpollFlags::EPOLLIN),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    const READ: Interest = Interest {
        read: true,
        write: false,
    };

    fn events() -> Vec<EpollEvent> {
        vec![EpollEvent::empty(); 8]
    }

    #[test]
    fn reports_readable_and_stays_level_triggered() {
        let p = Poller::new().unwrap();
        let (a, mut b) = UnixStream::pair().unwrap();
        p.set(&a, 7, Interest::default(), READ).unwrap();
        b.write_all(b"x").unwrap();
        let (mut buf, mut ready) = (events(), Vec::new());
        for _ in 0..2 {
            p.wait(&mut buf, &mut ready).unwrap();
            assert_eq!(
                ready,
                vec![Ready {
                    key: 7,
                    readable: true,
                }]
            );
        }
    }

    #[test]
    fn notify_wakes_a_wait_with_no_event() {
        let p = Poller::new().unwrap();
        p.notify();
        p.notify();
        let (mut buf, mut ready) = (events(), Vec::new());
        p.wait(&mut buf, &mut ready).unwrap();
        assert!(ready.is_empty());
        // Consumed: a second notify is needed to wake again.
        let (a, mut b) = UnixStream::pair().unwrap();
        p.set(&a, 1, Interest::default(), READ).unwrap();
        b.write_all(b"x").unwrap();
        p.wait(&mut buf, &mut ready).unwrap();
        assert_eq!(ready.len(), 1);
    }

    /// Two threads notify while the owner waits and acknowledges: no
    /// notification may be lost (a lost one leaves its notifier waiting
    /// for the acknowledgement until the deadline).
    #[test]
    fn concurrent_notifications_are_never_lost() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicU64;
        use std::time::{Duration, Instant};

        let p = Arc::new(Poller::new().unwrap());
        let sent = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (p, sent, seen, stop) = (p.clone(), sent.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut buf, mut ready) = (events(), Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    p.wait(&mut buf, &mut ready).unwrap();
                    seen.store(sent.load(Ordering::SeqCst), Ordering::SeqCst);
                }
            })
        };
        let notifiers: Vec<_> = (0..2)
            .map(|_| {
                let (p, sent, seen) = (p.clone(), sent.clone(), seen.clone());
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        let mine = sent.fetch_add(1, Ordering::SeqCst) + 1;
                        p.notify();
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while seen.load(Ordering::SeqCst) < mine {
                            assert!(Instant::now() < deadline, "notification {mine} was lost");
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for n in notifiers {
            n.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        p.notify();
        waiter.join().unwrap();
    }

    #[test]
    fn no_interest_means_not_registered_even_after_a_hang_up() {
        let p = Poller::new().unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        p.set(&a, 3, Interest::default(), READ).unwrap();
        p.set(&a, 3, READ, Interest::default()).unwrap();
        drop(b);
        // The peer hung up, but `a` is out of the set: only the wake-up
        // returns.
        p.notify();
        let (mut buf, mut ready) = (events(), Vec::new());
        p.wait(&mut buf, &mut ready).unwrap();
        assert!(ready.is_empty());
        p.set(&a, 3, Interest::default(), READ).unwrap();
        p.wait(&mut buf, &mut ready).unwrap();
        assert_eq!(ready.first().map(|r| (r.key, r.readable)), Some((3, true)));
    }
}
