//! Latency histograms, percentiles and medians of runs.
//!
//! Every completed request's latency is recorded in microseconds into an
//! HDR histogram (`hdrhistogram`, 3 significant digits: values up to
//! 1 ms are exact, larger ones within 0.1 %), one per connection thread,
//! merged at the end of a run. Percentiles are the histogram's
//! `value_at_quantile` (the smallest recorded value at or above that share
//! of all values, rounded to the bucket's highest equivalent value).

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency tracked exactly: 60 s (larger values are clamped).
const MAX_MICROS: u64 = 60_000_000;

/// Per-request latencies of one connection or one whole run.
#[derive(Debug, Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty histogram (1 µs .. 60 s, 3 significant digits).
    #[must_use]
    pub fn new() -> Latencies {
        Latencies {
            hist: Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"),
        }
    }

    /// Records one latency (whole microseconds; clamped to 60 s).
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.record_micros(us);
    }

    /// Records one latency given in microseconds.
    pub fn record_micros(&mut self, us: u64) {
        self.hist.saturating_record(us.min(MAX_MICROS));
    }

    /// Adds `other`'s values.
    pub fn merge(&mut self, other: &Latencies) {
        self.hist
            .add(&other.hist)
            .expect("histograms with the same bounds");
    }

    /// Number of values recorded.
    #[cfg(test)]
    #[must_use]
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The percentiles of what was recorded (all zero when empty).
    #[must_use]
    pub fn summary(&self) -> Summary {
        if self.hist.is_empty() {
            return Summary::default();
        }
        let at = |q: f64| self.hist.value_at_quantile(q);
        Summary {
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: self.hist.max(),
            mean: self.hist.mean(),
        }
    }
}

/// Latency percentiles of a run, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// The median of `values` (the mean of the two middle values for an even
/// count); `0.0` for none.
#[must_use]
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median of integer values (rounded to nearest).
#[must_use]
pub fn median_u64(values: &[u64]) -> u64 {
    #[allow(clippy::cast_precision_loss)]
    let f: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let m = median(&f).round() as u64;
    m
}

/// One measured run of the load generator.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Replies received inside the measurement window (errors included).
    pub requests: u64,
    /// Of those, error replies; plus connection failures and replies that
    /// matched no request.
    pub errors: u64,
    /// Length of the measurement window in seconds.
    pub elapsed_s: f64,
    /// `requests / elapsed_s`.
    pub rps: f64,
    /// Latency percentiles (µs) of the requests completed in the window.
    pub latency_us: Summary,
    /// The first error seen, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// Several runs of one configuration and their medians.
#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    /// Sum of `requests` over the runs.
    pub requests: u64,
    /// Sum of `errors` over the runs.
    pub errors: u64,
    /// Median over the runs of each figure separately.
    pub median: Median,
    /// Each run, in order.
    pub runs: Vec<RunResult>,
}

/// Medians over runs (each figure on its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Median {
    /// Median requests per second.
    pub rps: f64,
    /// Median of each latency percentile (µs).
    pub latency_us: Summary,
}

impl Aggregate {
    /// Sums and medians of `runs`.
    #[must_use]
    pub fn of(runs: Vec<RunResult>) -> Aggregate {
        let pick = |f: fn(&RunResult) -> u64| median_u64(&runs.iter().map(f).collect::<Vec<_>>());
        let median = Median {
            rps: median(&runs.iter().map(|r| r.rps).collect::<Vec<_>>()),
            latency_us: Summary {
                p50: pick(|r| r.latency_us.p50),
                p99: pick(|r| r.latency_us.p99),
                p999: pick(|r| r.latency_us.p999),
                max: pick(|r| r.latency_us.max),
                mean: median(&runs.iter().map(|r| r.latency_us.mean).collect::<Vec<_>>()),
            },
        };
        Aggregate {
            requests: runs.iter().map(|r| r.requests).sum(),
            errors: runs.iter().map(|r| r.errors).sum(),
            median,
            runs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_a_thousand() {
        let mut l = Latencies::new();
        for us in 1..=1000 {
            l.record_micros(us);
        }
        let s = l.summary();
        assert_eq!(l.count(), 1000);
        assert_eq!((s.p50, s.p99, s.p999, s.max), (500, 990, 999, 1000));
        assert!((s.mean - 500.5).abs() < 0.01, "{}", s.mean);
    }

    #[test]
    fn a_slow_tail_shows_in_p99_and_p999_only() {
        let mut l = Latencies::new();
        // The 9 900th of 10 000 values is 2 000, the 9 990th is 40 000.
        for _ in 0..9_890 {
            l.record_micros(50);
        }
        for _ in 0..99 {
            l.record_micros(2_000);
        }
        for _ in 0..11 {
            l.record_micros(40_000);
        }
        let s = l.summary();
        assert_eq!(s.p50, 50);
        // 3 significant digits: 2 000 and 40 000 are reported within 0.1 %.
        assert!((2_000..=2_002).contains(&s.p99), "{}", s.p99);
        assert!((40_000..=40_040).contains(&s.p999), "{}", s.p999);
        assert!((40_000..=40_040).contains(&s.max), "{}", s.max);
    }

    #[test]
    fn records_durations_in_micros_and_merges() {
        let mut a = Latencies::new();
        a.record(Duration::from_nanos(80_999));
        a.record(Duration::ZERO);
        let mut b = Latencies::new();
        b.record(Duration::from_secs(3_600));
        a.merge(&b);
        assert_eq!(a.count(), 3);
        let s = a.summary();
        assert_eq!(s.p50, 80);
        assert!(s.max >= MAX_MICROS && s.max <= MAX_MICROS + MAX_MICROS / 1000);
        assert_eq!(Latencies::new().summary(), Summary::default());
    }

    #[test]
    fn medians() {
        assert!((median(&[]) - 0.0).abs() < f64::EPSILON);
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < f64::EPSILON);
        assert!((median(&[4.0, 1.0, 3.0, 2.0]) - 2.5).abs() < f64::EPSILON);
        assert_eq!(median_u64(&[10, 1_000, 30, 20, 40]), 30);
        assert_eq!(median_u64(&[1, 2]), 2);
    }

    fn run(rps: f64, p99: u64) -> RunResult {
        RunResult {
            requests: 10,
            errors: 1,
            elapsed_s: 1.0,
            rps,
            latency_us: Summary {
                p50: p99 / 2,
                p99,
                p999: p99 * 2,
                max: p99 * 3,
                mean: 1.0,
            },
            first_error: None,
        }
    }

    #[test]
    fn aggregate_takes_each_figure_s_median() {
        let a = Aggregate::of(vec![run(100.0, 50), run(300.0, 10), run(200.0, 90)]);
        assert_eq!((a.requests, a.errors), (30, 3));
        assert!((a.median.rps - 200.0).abs() < f64::EPSILON);
        // p99 medians are taken independently of rps.
        assert_eq!(a.median.latency_us.p99, 50);
        assert_eq!(a.median.latency_us.p50, 25);
        assert_eq!(a.runs.len(), 3);
    }
}
