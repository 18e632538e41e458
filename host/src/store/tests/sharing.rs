//! One store shared: several instances on one root, the cross-process
//! key lock, and threads of one instance.

use std::fs::{self, File};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::store::names::lock_file_name;

use super::*;

fn another_instance_sees_writes_at_once(b: Flavor) {
    let (_tmp, root, a) = b.new_store();
    let b = b.open(&root).expect("open b");
    assert_eq!(a.get_token("p", "b", false).expect("get"), None);
    for v in 0..20 {
        // Same size every time: only the inode tells the versions apart
        // when they land within one mtime tick.
        let t = tok(json!({"access_token": format!("v{v:02}")}));
        b.put_token("p", "b", &t).expect("put");
        assert_eq!(a.get_token_cached("p", "b"), None, "stale entry not served");
        assert_eq!(a.get_token("p", "b", false).expect("get"), Some(t.clone()));
        assert_eq!(a.get_token_cached("p", "b"), Some(Some(t)));
    }
    b.delete_token("p", "b").expect("delete");
    assert_eq!(a.get_token_cached("p", "b"), None);
    assert_eq!(a.get_token("p", "b", false).expect("get"), None);
}

#[test]
fn fresh_read_bypasses_the_cache() {
    let (_tmp, root, store) = new_store();
    store
        .put_token("p", "b", &tok(json!({"access_token": "aaaa"})))
        .expect("put");
    let path = token_path(&root, "p", "b");
    let before = fs::metadata(&path).expect("stat");
    // Rewrite in place with the same size and restore the mtime: invisible
    // to the identity check, visible to a fresh read.
    let text = fs::read_to_string(&path)
        .expect("read")
        .replace("aaaa", "bbbb");
    fs::write(&path, text).expect("rewrite");
    File::options()
        .write(true)
        .open(&path)
        .expect("open")
        .set_modified(before.modified().expect("mtime"))
        .expect("set mtime");
    let cached = store.get_token("p", "b", false).expect("get");
    assert_eq!(cached, Some(tok(json!({"access_token": "aaaa"}))));
    let fresh = store.get_token("p", "b", true).expect("get");
    assert_eq!(fresh, Some(tok(json!({"access_token": "bbbb"}))));
}

fn lock_excludes_other_instances_until_dropped(b: Flavor) {
    let (_tmp, root, a) = b.new_store();
    let b = b.open(&root).expect("open b");
    let wait = Duration::from_millis(50);
    let held = a.lock_key("p", "b", wait).expect("lock").expect("free");

    let start = Instant::now();
    assert!(
        b.lock_key("p", "b", wait).expect("lock").is_none(),
        "must time out"
    );
    assert!(start.elapsed() >= wait, "waited the full bound");
    assert!(
        a.lock_key("p", "b", Duration::ZERO)
            .expect("lock")
            .is_none(),
        "also in-instance"
    );

    let other = b.lock_key("p", "other", wait).expect("lock");
    assert!(other.is_some(), "another key is independent");
    let other_provider = b.lock_key("q", "b", Duration::ZERO).expect("lock");
    assert!(other_provider.is_some());

    drop(held);
    let again = b.lock_key("p", "b", wait).expect("lock");
    assert!(again.is_some(), "free after the guard is dropped");
    drop(again);
    assert!(
        root.join("locks").join(lock_file_name("p", "b")).exists(),
        "never deleted"
    );
}

fn lock_waiter_gets_the_lock_when_released(b: Flavor) {
    let (_tmp, root, a) = b.new_store();
    let b = b.open(&root).expect("open b");
    let held = a
        .lock_key("p", "b", Duration::ZERO)
        .expect("lock")
        .expect("free");
    let waiter = thread::spawn(move || {
        b.lock_key("p", "b", Duration::from_secs(10))
            .expect("lock")
            .is_some()
    });
    thread::sleep(Duration::from_millis(30));
    drop(held);
    assert!(
        waiter.join().expect("join"),
        "waiter acquired after release"
    );
}

fn concurrent_writers_and_readers_in_one_instance(b: Flavor) {
    let (_tmp, _root, store) = b.new_store();
    let store = Arc::new(store);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for n in 0..25 {
                    let t = tok(json!({"access_token": format!("{i}-{n}")}));
                    store.put_token("p", "shared", &t).expect("put");
                    let got = store.get_token("p", "shared", n % 2 == 0).expect("get");
                    assert!(got.is_some());
                    store
                        .put_token("p", &format!("own{i}"), &t)
                        .expect("put own");
                    assert_eq!(
                        store
                            .get_token("p", &format!("own{i}"), false)
                            .expect("get"),
                        Some(t)
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    assert_eq!(
        store.list_buckets("p").expect("list"),
        ["own0", "own1", "own2", "own3", "shared"]
    );
    let last = store.get_token("p", "shared", true).expect("get");
    assert_eq!(store.get_token("p", "shared", false).expect("get"), last);
}

on_each_backend!(
    another_instance_sees_writes_at_once,
    lock_excludes_other_instances_until_dropped,
    lock_waiter_gets_the_lock_when_released,
    concurrent_writers_and_readers_in_one_instance
);
