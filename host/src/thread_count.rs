//! The I/O thread count of `--io-threads` and `io_threads`, bounded.
//!
//! Why a bound: each I/O thread costs a thread and two descriptors (its
//! epoll instance and eventfd), and threads beyond a few per core only
//! contend for the engine lock. `--io-threads 100000` used to fail deep in
//! start-up with "Too many open files"; now a count above
//! [`max_io_threads`] (4 per core, at least 8 so that a small count works
//! on any machine) is refused where it is given: by the flag's parser
//! (usage error, exit 2) or by the configuration file's parser (exit 3,
//! naming the file and the key).

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer};

/// I/O threads allowed per core.
pub const PER_CORE: usize = 4;
/// The bound is never below this, whatever the core count.
pub const AT_LEAST: usize = 8;

/// Cores available to this process.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// The largest I/O thread count accepted on this machine.
#[must_use]
pub fn max_io_threads() -> usize {
    cores().saturating_mul(PER_CORE).max(AT_LEAST)
}

/// A number of I/O threads between 1 and [`max_io_threads`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoThreadCount(NonZeroUsize);

impl IoThreadCount {
    /// Checks `n` against the bounds.
    ///
    /// # Errors
    ///
    /// Zero, or more than [`max_io_threads`]; the message names the bound.
    pub fn new(n: u64) -> Result<IoThreadCount, String> {
        let max = max_io_threads();
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        match NonZeroUsize::new(n) {
            None => Err("must be at least 1".to_owned()),
            Some(_) if n > max => Err(format!(
                "{n} is too many: at most {max} I/O threads ({PER_CORE} per core, {} cores; \
                 at least {AT_LEAST} allowed)",
                cores()
            )),
            Some(count) => Ok(IoThreadCount(count)),
        }
    }

    /// The count.
    #[must_use]
    pub fn get(self) -> NonZeroUsize {
        self.0
    }
}

impl From<IoThreadCount> for NonZeroUsize {
    fn from(c: IoThreadCount) -> NonZeroUsize {
        c.0
    }
}

impl fmt::Display for IoThreadCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for IoThreadCount {
    type Err = String;

    fn from_str(s: &str) -> Result<IoThreadCount, String> {
        let n: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a whole number"))?;
        IoThreadCount::new(n)
    }
}

impl<'de> Deserialize<'de> for IoThreadCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IoThreadCount, D::Error> {
        let n = u64::deserialize(d)?;
        IoThreadCount::new(n).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        let max = max_io_threads();
        assert!(max >= AT_LEAST);
        assert_eq!(max % PER_CORE, 0);
        assert_eq!(
            IoThreadCount::new(1).map(IoThreadCount::get),
            Ok(NonZeroUsize::MIN)
        );
        assert!(IoThreadCount::new(max as u64).is_ok());
        let e = IoThreadCount::new(max as u64 + 1).unwrap_err();
        assert!(e.contains(&format!("at most {max} I/O threads")), "{e}");
        assert_eq!(IoThreadCount::new(0).unwrap_err(), "must be at least 1");
        assert!(IoThreadCount::new(u64::MAX).is_err());
    }

    #[test]
    fn parses_from_flags_and_files() {
        assert_eq!("3".parse::<IoThreadCount>().map(|c| c.get().get()), Ok(3));
        assert!("x".parse::<IoThreadCount>().is_err());
        assert!("100000".parse::<IoThreadCount>().is_err());
        #[derive(serde::Deserialize)]
        struct F {
            n: IoThreadCount,
        }
        let f: F = toml::from_str("n = 2").expect("parses");
        assert_eq!(f.n.get().get(), 2);
        let e = toml::from_str::<F>("n = 100000").err().expect("refused");
        assert!(e.to_string().contains("at most"), "{e}");
        assert!(toml::from_str::<F>("n = -1").is_err());
    }
}
