use serde_json::json;

use super::ops::bucket_stats;
use super::*;

#[test]
fn defaults() {
    let o = ClientOptions::default();
    assert_eq!(o.request_timeout(), Some(Duration::from_secs(30)));
    assert_eq!(o.idle_close(), Some(Duration::from_secs(300)));
    let off = ClientOptions {
        idle_close_ms: 0,
        ..o
    };
    assert_eq!(off.idle_close(), None);
}

#[test]
fn stats_shape() {
    let data = json!({"bucket":"b","requestCount":3,"percentage":75,"lastUsed":10});
    let stats = bucket_stats(data.as_object().unwrap()).unwrap();
    assert_eq!(
        stats,
        BucketStats {
            bucket: "b".into(),
            request_count: 3,
            percentage: 75.0,
            last_used: Some(10)
        }
    );
    let data = json!({"bucket":"b","requestCount":0,"percentage":0});
    assert_eq!(
        bucket_stats(data.as_object().unwrap()).unwrap().last_used,
        None
    );
    assert!(bucket_stats(json!({"bucket":"b"}).as_object().unwrap()).is_err());
}

#[test]
fn ids_are_unique_and_prefixed() {
    let ids = new_ids();
    let (a, b) = (ids.next_id(), ids.next_id());
    assert_ne!(a, b);
    assert_eq!(a.split('-').next(), b.split('-').next());
    assert_eq!(a.split('-').next().unwrap().len(), 12);
}
