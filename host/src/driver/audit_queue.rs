//! Audit lines, written in the engine's order without holding the engine
//! lock.
//!
//! Lines are staged under the engine lock (so they queue in the order the
//! engine produced them) and written after it is released by whichever
//! thread gets the writer's turn: one system call per batch, and a thread
//! that finds another writing leaves its lines to it instead of waiting.

use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use crate::audit_log::AuditLog;

/// The staged lines and the writer's turn.
pub(super) struct AuditQueue {
    log: std::sync::Arc<AuditLog>,
    staged: Mutex<Vec<u8>>,
    /// Held while writing; holds the buffer being written (kept for reuse).
    writing: Mutex<Vec<u8>>,
}

/// A lock whose holder panicked still guards plain bytes.
fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AuditQueue {
    pub fn new(log: std::sync::Arc<AuditLog>) -> AuditQueue {
        AuditQueue {
            log,
            staged: Mutex::new(Vec::new()),
            writing: Mutex::new(Vec::new()),
        }
    }

    /// The log the lines go to.
    pub fn log(&self) -> &AuditLog {
        &self.log
    }

    /// Queues `lines` (whole JSON lines) and empties it, keeping its
    /// capacity (copying a few hundred bytes is cheaper than growing a
    /// fresh buffer for every drain). Call under the engine lock.
    pub fn stage(&self, lines: &mut Vec<u8>) {
        if lines.is_empty() {
            return;
        }
        relock(&self.staged).extend_from_slice(lines);
        lines.clear();
    }

    /// Writes everything staged, unless another thread is writing: that
    /// one then writes these lines too, because it looks at the queue again
    /// after giving up its turn.
    pub fn flush(&self) {
        loop {
            let mut batch = match self.writing.try_lock() {
                Ok(batch) => batch,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            loop {
                std::mem::swap(&mut *batch, &mut *relock(&self.staged));
                if batch.is_empty() {
                    break;
                }
                self.log.write_bytes(&batch);
                batch.clear();
            }
            drop(batch);
            if relock(&self.staged).is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn file_log(dir: &std::path::Path) -> (Arc<AuditLog>, std::path::PathBuf) {
        let path = dir.join("audit.log");
        (Arc::new(AuditLog::file(&path).unwrap()), path)
    }

    #[test]
    fn writes_staged_lines_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = file_log(dir.path());
        let q = AuditQueue::new(log);
        let mut a = b"1\n".to_vec();
        q.stage(&mut a);
        assert!(a.is_empty());
        let mut b = b"2\n".to_vec();
        q.stage(&mut b);
        q.flush();
        let mut c = b"3\n".to_vec();
        q.stage(&mut c);
        q.flush();
        assert_eq!(std::fs::read_to_string(path).unwrap(), "1\n2\n3\n");
    }

    #[test]
    fn concurrent_writers_lose_and_reorder_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (log, path) = file_log(dir.path());
        let q = Arc::new(AuditQueue::new(log));
        // Staging happens under one lock (the engine's, here `order`), so
        // lines must come out numbered in sequence.
        let order = Arc::new(Mutex::new(0u32));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (q, order) = (q.clone(), order.clone());
                std::thread::spawn(move || {
                    for _ in 0..2_000 {
                        {
                            let mut n = order.lock().unwrap();
                            *n += 1;
                            let mut line = format!("{n}\n").into_bytes();
                            q.stage(&mut line);
                        }
                        q.flush();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(path).unwrap();
        let got: Vec<u32> = text.lines().map(|l| l.parse().unwrap()).collect();
        let want: Vec<u32> = (1..=8_000).collect();
        assert_eq!(got, want);
    }
}
