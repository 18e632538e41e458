//! `get_bucket_stats`: `get_token` requests served by this process.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::writes::keylock::Key;

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    served: u64,
    last_used_ms: u64,
}

/// Served-request counters per key.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    counts: BTreeMap<Key, Count>,
}

impl Stats {
    /// Records one `get_token` served for `key` at `unix_ms`.
    pub(crate) fn record(&mut self, key: &Key, unix_ms: u64) {
        let c = match self.counts.get_mut(key) {
            Some(c) => c,
            None => self.counts.entry(key.clone()).or_default(),
        };
        c.served += 1;
        c.last_used_ms = unix_ms;
    }

    /// The stats object for `key`: its count, its share of the provider's
    /// served requests in percent, and `lastUsed` once it was served.
    pub(crate) fn report(&self, key: &Key) -> Map<String, Value> {
        let mine = self.counts.get(key).copied().unwrap_or_default();
        let total: u64 = self
            .counts
            .iter()
            .filter(|(k, _)| k.provider == key.provider)
            .map(|(_, c)| c.served)
            .sum();
        let mut m = Map::new();
        m.insert("bucket".into(), Value::from(key.bucket.clone()));
        m.insert("requestCount".into(), Value::from(mine.served));
        m.insert("percentage".into(), percentage(mine.served, total));
        if mine.served > 0 {
            m.insert("lastUsed".into(), Value::from(mine.last_used_ms));
        }
        m
    }
}

/// `100 * part / total`, as an integer when whole (as JavaScript prints it).
fn percentage(part: u64, total: u64) -> Value {
    if total == 0 {
        return Value::from(0);
    }
    if (part * 100).is_multiple_of(total) {
        return Value::from(part * 100 / total);
    }
    Value::from(part as f64 * 100.0 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shares_per_provider() {
        let mut s = Stats::default();
        let a = Key::new("p", "a");
        let b = Key::new("p", "b");
        for _ in 0..3 {
            s.record(&a, 10);
        }
        s.record(&b, 20);
        s.record(&Key::new("q", "a"), 30);
        assert_eq!(
            Value::Object(s.report(&a)),
            json!({"bucket":"a","requestCount":3,"percentage":75,"lastUsed":10})
        );
        assert_eq!(
            Value::Object(s.report(&b)),
            json!({"bucket":"b","requestCount":1,"percentage":25,"lastUsed":20})
        );
        assert_eq!(
            Value::Object(s.report(&Key::new("p", "c"))),
            json!({"bucket":"c","requestCount":0,"percentage":0})
        );
        s.record(&Key::new("p", "c"), 40);
        s.record(&Key::new("p", "c"), 40);
        let third = s.report(&b)["percentage"].as_f64().unwrap();
        assert!((third - 100.0 / 6.0).abs() < 1e-9);
    }
}
