//! The production clock: turns the OS clocks into the engine's [`Now`].

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use credproxy_core::{Mono, Now};

/// Monotonic time since the proxy started, plus the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock whose monotonic origin is now.
    #[must_use]
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// The current time as the engine sees it.
    #[must_use]
    pub fn now(&self) -> Now {
        let mono = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Now::new(mono, unix_ms)
    }

    /// The OS instant of an engine deadline.
    #[must_use]
    pub fn instant_of(&self, at: Mono) -> Instant {
        self.start + Duration::from_millis(at.0)
    }
}
