//! Metadata and store-lock effects through the executor.

use std::sync::Arc;

use credproxy::effects::Executor;
use credproxy::store::{FileStore, Store};
use credproxy_core::{Effect, EffectResult};

fn executor(root: &std::path::Path) -> Executor {
    Executor::new(Arc::new(Store::from(FileStore::open(root).unwrap())))
}

fn acquire(provider: &str, bucket: &str, wait_ms: u64) -> Effect {
    Effect::LockAcquire {
        provider: provider.into(),
        bucket: bucket.into(),
        wait_ms,
    }
}

/// Two store instances (as two processes would have) on one new store.
fn two_instances() -> (tempfile::TempDir, Executor, Executor) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let (ours, theirs) = (executor(&root), executor(&root));
    (dir, ours, theirs)
}

/// Whether an acquire of `provider`/`bucket` on `ex` (waiting up to
/// `wait_ms`) got the lock; any other result than `Locked` panics.
fn got_lock(ex: &Executor, provider: &str, bucket: &str, wait_ms: u64) -> bool {
    match ex.execute(acquire(provider, bucket, wait_ms)) {
        EffectResult::Locked(got) => got,
        other => panic!("acquire {provider}/{bucket}: {other:?}"),
    }
}

/// The `refresh_unusable` a `MetaGet` on `ex` reads; any other result
/// than `Meta` panics.
fn meta_of(ex: &Executor, get: Effect) -> bool {
    match ex.execute(get) {
        EffectResult::Meta { refresh_unusable } => refresh_unusable,
        other => panic!("meta get: {other:?}"),
    }
}

fn release(provider: &str, bucket: &str) -> Effect {
    Effect::LockRelease {
        provider: provider.into(),
        bucket: bucket.into(),
    }
}

#[test]
fn meta_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(&dir.path().join("store"));
    let get = Effect::MetaGet {
        provider: "qwen".into(),
        bucket: "default".into(),
    };
    let put = |v| Effect::MetaPut {
        provider: "qwen".into(),
        bucket: "default".into(),
        refresh_unusable: v,
    };
    assert_eq!(ex.try_inline(&get), None);
    assert!(!meta_of(&ex, get.clone()));
    assert_eq!(ex.execute(put(true)), EffectResult::Done);
    assert!(meta_of(&ex, get.clone()));
    // Another instance on the same root sees it.
    let other = executor(&dir.path().join("store"));
    assert!(meta_of(&other, get.clone()));
    assert_eq!(ex.execute(put(false)), EffectResult::Done);
    assert!(!meta_of(&ex, get));
    // Names are checked before the disk is touched.
    let bad = Effect::MetaGet {
        provider: "../x".into(),
        bucket: "default".into(),
    };
    assert_eq!(ex.execute(bad), EffectResult::Failed);
}

#[test]
fn lock_excludes_another_store_instance_until_released() {
    let (_dir, ours, theirs) = two_instances();

    assert!(got_lock(&ours, "codex", "default", 0));
    assert!(ours.locks().is_held("codex", "default"));
    // Held: another instance (another process, as far as flock is
    // concerned) times out after its wait.
    assert!(!got_lock(&theirs, "codex", "default", 50));
    // Another key is independent.
    assert!(got_lock(&theirs, "codex", "work", 0));

    // A release is performed inline, never on the pool.
    assert_eq!(
        ours.try_inline(&release("codex", "default")),
        Some(EffectResult::Done)
    );
    assert!(ours.locks().is_empty());
    assert!(got_lock(&theirs, "codex", "default", 0));
    // Releasing what is not held is harmless.
    assert_eq!(
        ours.execute(release("codex", "default")),
        EffectResult::Done
    );
    assert!(theirs.locks().is_held("codex", "default"));

    // Shutdown releases everything.
    theirs.locks().shutdown();
    assert!(theirs.locks().is_empty());
    assert!(got_lock(&ours, "codex", "default", 0));
    assert!(got_lock(&ours, "codex", "work", 0));
}

#[test]
fn waiting_acquire_gets_the_lock_once_released() {
    let (_dir, ours, theirs) = two_instances();
    assert!(got_lock(&ours, "p", "b", 0));
    let waiter = std::thread::spawn(move || theirs.execute(acquire("p", "b", 10_000)));
    ours.locks().release("p", "b");
    assert_eq!(waiter.join().unwrap(), EffectResult::Locked(true));
}

#[test]
fn listener_effects_are_not_executed_here() {
    let dir = tempfile::tempdir().unwrap();
    let ex = executor(&dir.path().join("store"));
    let start = Effect::StartListener {
        port: 1,
        path: "/cb".into(),
    };
    assert_eq!(ex.try_inline(&start), None);
    assert_eq!(ex.execute(start), EffectResult::Failed);
}
