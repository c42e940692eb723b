//! Committing a step's result without waiting for the disk on the step's path. The snapshot is marked
//! as not yet on disk (`unsynced`) and renamed into place at once (the next step mounts it); the record
//! is written on a thread of its own, in the order a crash needs (the mark on disk; then the record:
//! temp file, fsync, rename, fsync of `cache/`), while the build goes on. The snapshot's files, written
//! through a `volatile` overlay that did not sync them, reach the disk when `kiln __sync-store` runs after
//! the command, or the mark has the snapshot removed after a crash. Where no mark can be made the thread
//! syncs the snapshot (`syncfs`, then the snapshots directory) before the record, as it always did. The
//! step's key lock is held until its record is on disk, so a concurrent build that waits for the key finds
//! the record; the build joins every such thread before it ends (`Durable` joins when dropped, so none
//! outlives a build that failed later).

use std::path::Path;
use std::sync::Arc;

use super::{CacheRecord, KeyLock, Store, sync_dir, sync_fs};
use crate::diag::{Diagnostic, Result};

/// The durable half of a step's commit, running: join it before the build ends.
pub struct Durable(Option<std::thread::JoinHandle<Result<()>>>);

impl Durable {
    /// Waits for the syncs and the record's write; their error, if any.
    pub fn wait(mut self) -> Result<()> {
        self.join()
    }

    /// Waits for every one of `all`, also after an error: the first error, if any.
    pub fn wait_all(all: Vec<Durable>) -> Result<()> {
        all.into_iter().map(Durable::wait).fold(Ok(()), Result::and)
    }

    fn join(&mut self) -> Result<()> {
        let Some(thread) = self.0.take() else {
            return Ok(());
        };
        thread
            .join()
            .unwrap_or_else(|_| Err(Diagnostic::env("a store write thread panicked")))
    }
}

impl Drop for Durable {
    /// A build that fails after its steps ran still waits here (its own error is the one reported): the
    /// steps keep their records, and no store write outlives the build.
    fn drop(&mut self) {
        let _ = self.join();
    }
}

impl Store {
    /// Puts a step's snapshot (`from`, named `rec`'s last layer) in place and writes its record. In a
    /// transaction both are staged (nothing touches the disk's durable state) and `None` is returned;
    /// otherwise the snapshot is in place on return and the returned thread makes both durable,
    /// holding `lock` until then.
    pub fn commit_step(
        self: &Arc<Self>,
        from: &Path,
        rec: CacheRecord,
        lock: Option<KeyLock>,
    ) -> Result<Option<Durable>> {
        let id = rec.layers.last().cloned().unwrap_or_default();
        if self.in_transaction() {
            self.stage_snapshot(from, &id)?;
            self.stage_record(&rec)?;
            return Ok(None);
        }
        let mut in_place = self.snapshot_path(&id).exists();
        if in_place && lock.is_some() && self.cache_get(&rec.key).is_none() {
            // Under the key's lock a build that placed it would have written its record first: this one
            // was left by a build that died between the two, and its files may never have reached the
            // disk. Ours replaces it.
            self.drop_snapshot(&id);
            in_place = false;
        }
        // Marked before it is placed: the record, which makes it trusted, waits for the mark on disk.
        let marked = !in_place && self.mark_unsynced(&id);
        let placed = self.place_snapshot(from, &id)?;
        let store = self.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-commit".into())
            .spawn(move || {
                if marked {
                    store.sync_markers()?;
                } else {
                    sync_fs(&placed)?;
                    sync_dir(&store.root.join("snapshots"));
                }
                let written = store.cache_put(&rec);
                drop(lock);
                written
            })
            .map_err(|e| Diagnostic::io("cannot start a store write", e))?;
        Ok(Some(Durable(Some(thread))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::store::Access;

    fn step(store: &Store, key: &Digest) -> (std::path::PathBuf, CacheRecord) {
        let upper = store.root.join("tmp").join(format!("upper-{}", key.hex()));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::write(upper.join("made"), b"by the step").unwrap();
        let rec = CacheRecord {
            key: key.clone(),
            layers: vec![format!("step-{}", key.hex())],
            times: vec![0],
            base: serde_json::Value::Null.into(),
            secrets: Vec::new(),
        };
        (upper, rec)
    }

    /// The snapshot is in place at once; the record, once the thread is joined, and the key's lock is
    /// held until then, so a build waiting for the key finds the record when it gets the lock.
    #[test]
    fn a_committed_step_is_in_place_at_once_and_its_record_once_joined() {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(root.path(), Access::Shared).unwrap());
        let other = Store::open(root.path(), Access::Shared).unwrap();
        let key = Digest::of(b"a step");
        let (upper, rec) = step(&store, &key);
        let lock = store.try_lock_key(&key).unwrap().expect("free");
        let durable = store.commit_step(&upper, rec.clone(), Some(lock)).unwrap();
        assert!(store.snapshot_path(&rec.layers[0]).join("made").is_file());
        durable.expect("no transaction: a thread").wait().unwrap();
        assert!(other.try_lock_key(&key).unwrap().is_some(), "released");
        assert_eq!(other.cache_get(&key).map(|r| r.layers), Some(rec.layers));
    }

    /// In a transaction nothing is left to do: both are staged, and nothing reaches the store's index.
    #[test]
    fn in_a_transaction_a_step_is_staged() {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(root.path(), Access::Shared).unwrap());
        store.begin();
        let key = Digest::of(b"a staged step");
        let (upper, rec) = step(&store, &key);
        assert!(
            store
                .commit_step(&upper, rec.clone(), None)
                .unwrap()
                .is_none()
        );
        assert!(store.is_staged(&rec.layers[0]));
        let other = Store::open(root.path(), Access::Shared).unwrap();
        assert!(other.cache_get(&key).is_none());
        assert!(store.cache_get(&key).is_some());
    }
}
