//! The audit log: one JSON line per engine audit event, on stderr or in a
//! file. Events carry no secrets by construction (see
//! `credproxy_core::audit`); the host adds only a timestamp.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use credproxy_core::AuditEvent;
use serde::Serialize;

/// Where audit lines go.
#[derive(Debug)]
pub enum AuditLog {
    /// Standard error (the default).
    Stderr,
    /// An append-only file, created 0600.
    File(Mutex<File>),
    /// Nowhere (`--audit-log off`).
    Off,
    /// Another log, with a [`FaultWatch`] that sees every event first
    /// (`credproxy stdio` learns this way that its one connection ended
    /// by a framing fault, whatever the log's destination).
    Watched(Box<AuditLog>, FaultWatch),
}

/// The first `frame_decode_error` event's reason (e.g. `invalid_json`),
/// shared between the log that sees events and whoever asks afterwards.
#[derive(Debug, Clone, Default)]
pub struct FaultWatch(Arc<Mutex<Option<&'static str>>>);

impl FaultWatch {
    /// The reason of the first framing fault seen, if any.
    #[must_use]
    pub fn fault(&self) -> Option<&'static str> {
        self.0.lock().ok().and_then(|f| *f)
    }

    fn observe(&self, event: &AuditEvent) {
        if event.op == "frame_decode_error"
            && let Ok(mut first) = self.0.lock()
        {
            first.get_or_insert(event.outcome);
        }
    }
}

#[derive(Serialize)]
struct Line<'a> {
    ts: &'a str,
    component: &'static str,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

impl AuditLog {
    /// Opens `path` for appending (mode 0600 when created).
    pub fn file(path: &Path) -> std::io::Result<AuditLog> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(AuditLog::File(Mutex::new(f)))
    }

    /// Writes one event as a JSON line. Failures to log are ignored: the
    /// proxy keeps serving.
    pub fn write(&self, event: &AuditEvent) {
        let mut line = Vec::new();
        self.encode_into(event, &mut line);
        self.write_bytes(&line);
    }

    /// Appends one event as a JSON line to `buf` (nothing when the log is
    /// off). The driver collects a loop turn's lines and writes them with
    /// one [`AuditLog::write_bytes`], one system call instead of one per
    /// event.
    pub fn encode_into(&self, event: &AuditEvent, buf: &mut Vec<u8>) {
        self.encode_with(event, &mut Timestamps::default(), buf);
    }

    /// As [`AuditLog::encode_into`], taking the time from `clock`, which
    /// formats each millisecond once (a busy proxy logs many events per
    /// millisecond).
    pub fn encode_with(&self, event: &AuditEvent, clock: &mut Timestamps, buf: &mut Vec<u8>) {
        match self {
            AuditLog::Off => return,
            AuditLog::Watched(inner, watch) => {
                watch.observe(event);
                return inner.encode_with(event, clock, buf);
            }
            AuditLog::Stderr | AuditLog::File(_) => {}
        }
        let line = Line {
            ts: clock.now(),
            component: "credproxy",
            event,
        };
        let start = buf.len();
        if serde_json::to_writer(&mut *buf, &line).is_err() {
            buf.truncate(start);
            return;
        }
        buf.push(b'\n');
    }

    /// Writes whole lines produced by [`AuditLog::encode_into`].
    pub fn write_bytes(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self {
            AuditLog::Stderr => {
                let _ = std::io::stderr().lock().write_all(bytes);
            }
            AuditLog::File(f) => {
                if let Ok(mut f) = f.lock() {
                    let _ = f.write_all(bytes);
                }
            }
            AuditLog::Watched(inner, _) => inner.write_bytes(bytes),
            AuditLog::Off => {}
        }
    }
}

/// The current time as an RFC 3339 timestamp with milliseconds, formatted
/// again only when the millisecond changed.
#[derive(Debug, Default)]
pub struct Timestamps {
    millis: u128,
    text: String,
}

impl Timestamps {
    /// Now, formatted.
    pub fn now(&mut self) -> &str {
        self.at(SystemTime::now())
    }

    /// `now`, formatted.
    fn at(&mut self, now: SystemTime) -> &str {
        let millis = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if millis != self.millis || self.text.is_empty() {
            use std::fmt::Write as _;
            self.text.clear();
            let _ = write!(self.text, "{}", humantime::format_rfc3339_millis(now));
            self.millis = millis;
        }
        &self.text
    }
}

/// Reports a store failure on stderr. The store's errors name paths and
/// reasons, never token or key values.
pub fn log_store_error(error: &crate::store::StoreError) {
    let line = serde_json::json!({
        "ts": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "component": "credproxy",
        "level": "ERROR",
        "op": "store",
        "outcome": "failed",
        "detail": error.to_string(),
    });
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Reports, once, in the audit log that a write replaced a corrupt token
/// file and where its old bytes were kept (paths only, never content).
pub fn log_corrupt_replaced(audit: &AuditLog, path: &Path, kept: &Path) {
    let line = serde_json::json!({
        "ts": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "component": "credproxy",
        "level": "WARN",
        "op": "store",
        "outcome": "corrupt_replaced",
        "path": path.display().to_string(),
        "kept": kept.display().to_string(),
        "detail": "the stored token could not be read (it did not parse, or in an encrypted store did not authenticate); replaced by the new one, the old file kept",
    });
    let mut bytes = line.to_string().into_bytes();
    bytes.push(b'\n');
    audit.write_bytes(&bytes);
}

#[cfg(test)]
mod watch_tests {
    use super::*;
    use credproxy_core::audit::Level;

    #[test]
    fn the_watch_keeps_the_first_framing_fault_even_when_the_log_is_off() {
        let watch = FaultWatch::default();
        let log = AuditLog::Watched(Box::new(AuditLog::Off), watch.clone());
        let mut buf = Vec::new();
        log.encode_into(
            &AuditEvent::new(Level::Info, None, "connect", "ok"),
            &mut buf,
        );
        assert_eq!(watch.fault(), None);
        for reason in ["invalid_json", "frame_too_large"] {
            let ev = AuditEvent::new(Level::Warn, None, "frame_decode_error", reason);
            log.encode_into(&ev, &mut buf);
        }
        assert_eq!(watch.fault(), Some("invalid_json"));
        assert!(buf.is_empty(), "the inner log is off");
    }
}

#[cfg(test)]
mod timestamp_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_formatted_once_per_millisecond() {
        let mut clock = Timestamps::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_837_160_992);
        assert_eq!(clock.at(t0), "2026-11-28T03:39:20.992Z");
        assert_eq!(
            clock.at(t0 + Duration::from_micros(900)),
            "2026-11-28T03:39:20.992Z"
        );
        assert_eq!(
            clock.at(t0 + Duration::from_millis(1)),
            "2026-11-28T03:39:20.993Z"
        );
        assert_eq!(clock.at(t0), "2026-11-28T03:39:20.992Z", "and back");
        let now = clock.now().to_owned();
        assert!(humantime::parse_rfc3339(&now).is_ok(), "{now}");
    }
}
