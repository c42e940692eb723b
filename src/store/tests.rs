//! The store's own tests: transactions, records and their recovery.

use super::records::LIST_AFTER;
use super::*;

fn record(key: &str, layers: &[&str]) -> CacheRecord {
    CacheRecord {
        key: Digest::of(key.as_bytes()),
        layers: layers.iter().map(|l| l.to_string()).collect(),
        times: vec![0; layers.len()],
        base: serde_json::Value::Null.into(),
        secrets: Vec::new(),
    }
}

/// Records read back are what was written, and records with the same base config share one copy.
#[test]
fn records_read_back_share_their_base_config() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path(), Access::Shared).unwrap();
    let base = std::sync::Arc::new(serde_json::json!({"config": {"Env": ["A=1"]}, "os": "linux"}));
    let other = std::sync::Arc::new(serde_json::json!({"config": {"Env": ["A=2"]}}));
    let mut recs = Vec::new();
    for (key, base) in [("a", &base), ("b", &base), ("c", &other)] {
        let mut rec = record(key, &[]);
        rec.base = base.clone();
        rec.secrets = vec![SecretVerdict {
            id: "s".into(),
            verdict: Verdict::Clean,
        }];
        store.cache_put(&rec).unwrap();
        recs.push(rec);
    }
    let got: Vec<CacheRecord> = ["a", "b", "c"]
        .iter()
        .map(|k| store.cache_get(&Digest::of(k.as_bytes())).unwrap())
        .collect();
    for (got, put) in got.iter().zip(&recs) {
        assert_eq!(
            serde_json::to_value(got).unwrap(),
            serde_json::to_value(put).unwrap()
        );
    }
    assert!(std::sync::Arc::ptr_eq(&got[0].base, &got[1].base));
    assert!(!std::sync::Arc::ptr_eq(&got[0].base, &got[2].base));
}

fn staged_step(store: &Store, id: &str) {
    let work = store.work_dir("step-").unwrap();
    let upper = work.path().join("upper");
    fs::create_dir(&upper).unwrap();
    fs::write(upper.join("f"), id).unwrap();
    store.stage_snapshot(&upper, id).unwrap();
    store.stage_record(&record(id, &[id])).unwrap();
}

/// Staged results serve the build that made them, and reach the store only on commit.
#[test]
fn a_transaction_is_kept_only_when_committed() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path(), Access::Shared).unwrap();
    store.begin();
    staged_step(&store, "step-a");
    assert!(store.cache_get(&Digest::of(b"step-a")).is_some());
    assert!(store.snapshot_path("step-a").join("f").is_file());
    assert_eq!(store.usage().records, 0);
    assert_eq!(store.usage().snapshot_count, 0);
    store.commit().unwrap();
    assert_eq!(store.usage().records, 1);
    assert!(root.path().join("snapshots/step-a/f").is_file());
    assert_eq!(store.usage().tmp, 0);
    assert!(store.cache_get(&Digest::of(b"step-a")).is_some());
}

/// A build that stages nothing (every step cached) makes no transaction directory; one that
/// stages only records keeps them in memory until commit.
#[test]
fn a_transaction_makes_its_directory_only_when_something_is_staged() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path(), Access::Shared).unwrap();
    let tmp_entries = || fs::read_dir(root.path().join("tmp")).unwrap().count();
    store.begin();
    store.stage_record(&record("step-r", &[])).unwrap();
    assert!(store.cache_get(&Digest::of(b"step-r")).is_some());
    assert_eq!(tmp_entries(), 0);
    store.commit().unwrap();
    assert_eq!(tmp_entries(), 0);
    assert_eq!(store.usage().records, 1);
    store.begin();
    let work = store.work_dir("step-").unwrap();
    assert!(work.path().starts_with(root.path().join("tmp")));
    assert_eq!(
        tmp_entries(),
        1,
        "the transaction's directory holds the work dir"
    );
    drop(work);
    store.abort();
    assert_eq!(tmp_entries(), 0);
}

/// An aborted transaction leaves nothing, and takes the cache mounts its steps wrote with it.
#[test]
fn an_aborted_transaction_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path(), Access::Shared).unwrap();
    let (cache, _, _) = store
        .cache_mount("c", Reserve::No, (0o755, 0, 0), None)
        .unwrap();
    fs::write(cache.join("kept"), "x").unwrap();
    store.begin();
    store.note_cache(&cache).unwrap();
    staged_step(&store, "step-a");
    store.abort();
    assert!(store.cache_get(&Digest::of(b"step-a")).is_none());
    assert!(!cache.exists());
    let usage = store.usage();
    assert_eq!((usage.records, usage.snapshot_count, usage.tmp), (0, 0, 0));
}

/// A build that died mid-transaction: the next open removes what it staged and the caches it wrote;
/// a live build's transaction is left alone.
#[test]
fn a_dead_builds_transaction_is_removed_on_open() {
    let root = tempfile::tempdir().unwrap();
    let live = Store::open(root.path(), Access::Shared).unwrap();
    live.begin();
    staged_step(&live, "step-live");
    let (cache, _, _) = live
        .cache_mount("c", Reserve::No, (0o755, 0, 0), None)
        .unwrap();
    // A dead build's transaction: its directory and cache list, with no lock held.
    let dead = root.path().join("tmp/txn-dead");
    fs::create_dir_all(dead.join("snapshots/step-dead")).unwrap();
    fs::write(dead.join("lock"), "").unwrap();
    let name = cache.file_name().unwrap().to_string_lossy().into_owned();
    fs::write(dead.join("caches"), format!("{name}\n")).unwrap();
    drop(Store::open(root.path(), Access::Shared).unwrap());
    assert!(!dead.exists());
    assert!(!cache.exists());
    assert!(live.snapshot_path("step-live").join("f").is_file());
}

/// Past `LIST_AFTER` lookups the store lists `snapshots/` once: records are still usable exactly when
/// their snapshots exist, including a snapshot made after the listing.
#[test]
fn many_records_are_checked_against_one_listing_of_the_snapshots() {
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path(), Access::Shared).unwrap();
    let n = LIST_AFTER as usize + 50;
    for i in 0..n {
        let id = format!("step-{i}");
        fs::create_dir(root.path().join("snapshots").join(&id)).unwrap();
        store.cache_put(&record(&id, &[&id])).unwrap();
    }
    store.cache_put(&record("lost", &["step-lost"])).unwrap();
    let get = |k: &str| store.cache_get(&Digest::of(k.as_bytes()));
    for i in 0..n {
        assert!(get(&format!("step-{i}")).is_some(), "step-{i}");
    }
    assert!(store.present.lock().unwrap().listed);
    assert!(get("lost").is_none());
    fs::create_dir(root.path().join("snapshots/step-late")).unwrap();
    store.cache_put(&record("late", &["step-late"])).unwrap();
    assert!(get("late").is_some());
}
