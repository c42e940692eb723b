//! A step's cache records: written whole and renamed into place, read back (with a look that every
//! snapshot they name is there), their base configs parsed once per build, not once per record.

use std::fs;
use std::path::PathBuf;

use serde::Deserialize;

use super::{CacheRecord, SecretVerdict, Store, atomic_write};
use crate::diag::Result;
use crate::digest::Digest;

/// The snapshots known to exist, and how they were learnt (see `Store::snapshot_exists`).
#[derive(Default)]
pub(super) struct Present {
    ids: std::collections::HashSet<String>,
    /// Snapshots looked up one by one so far.
    looks: u32,
    /// Whether `snapshots/` was listed whole.
    pub(super) listed: bool,
}

/// After this many lookups of single snapshots a build lists `snapshots/` once instead: a cached build of
/// a monorepo checks 10,000 snapshots, one `getdents` pass is cheaper than as many `stat`s, and a
/// small build of a big store never pays for the listing.
pub(super) const LIST_AFTER: u32 = 256;

/// A record as read from its file, its base config not parsed yet (see `Store::cache_get`).
#[derive(Deserialize)]
struct RecordText<'a> {
    key: Digest,
    layers: Vec<String>,
    #[serde(default)]
    times: Vec<i64>,
    #[serde(borrow)]
    base: &'a serde_json::value::RawValue,
    #[serde(default)]
    secrets: Vec<SecretVerdict>,
}

impl Store {
    fn cache_path(&self, key: &Digest) -> PathBuf {
        self.root.join("cache").join(format!("{}.json", key.hex()))
    }

    /// The record for `key`, if present, intact, and all its snapshots exist.
    pub fn cache_get(&self, key: &Digest) -> Option<CacheRecord> {
        use std::io::Read as _;
        if let Some(txn) = &*self.txn.lock().expect("txn lock")
            && let Some(rec) = txn.records.iter().find(|r| r.key == *key)
        {
            return Some(rec.clone());
        }
        let mut file = fs::File::open(self.cache_path(key)).ok()?;
        let meta = file.metadata().ok()?;
        // A record is written whole and renamed into place, never changed in place: the size read
        // from its inode is all of it, so one read does (a cached build reads thousands).
        let mut bytes = vec![0; usize::try_from(meta.len()).ok()?];
        file.read_exact(&mut bytes).ok()?;
        let rec = self.parse_record(&bytes)?;
        let usable = rec.key == *key && rec.layers.iter().all(|l| self.snapshot_exists(l));
        if usable {
            // The record's time is its last use: prune removes the least recently used first. An hour's
            // resolution is plenty for that, and skipping the write keeps a no-op rebuild read-only.
            let stale = meta.modified().ok().and_then(|m| m.elapsed().ok())
                >= Some(std::time::Duration::from_secs(3600));
            if stale {
                let _ = file.set_modified(std::time::SystemTime::now());
            }
        }
        usable.then_some(rec)
    }

    /// A record from its JSON, its base config shared with every record read before that has the same
    /// one (a cached build of a monorepo reads thousands of records and a handful of bases).
    fn parse_record(&self, bytes: &[u8]) -> Option<CacheRecord> {
        let text: RecordText = serde_json::from_slice(bytes).ok()?;
        let mut bases = self.bases.lock().expect("base config lock");
        let base = match bases.get(text.base.get()) {
            Some(base) => base.clone(),
            None => {
                let base: std::sync::Arc<serde_json::Value> =
                    std::sync::Arc::new(serde_json::from_str(text.base.get()).ok()?);
                bases.insert(text.base.get().into(), base.clone());
                base
            }
        };
        Some(CacheRecord {
            key: text.key,
            layers: text.layers,
            times: text.times,
            base,
            secrets: text.secrets,
        })
    }

    fn snapshot_exists(&self, id: &str) -> bool {
        let staged = self.txn.lock().expect("txn lock");
        if staged.as_ref().is_some_and(|t| t.snapshots.contains(id)) {
            return true;
        }
        drop(staged);
        let mut present = self.present.lock().expect("snapshot set lock");
        if present.ids.contains(id) {
            return true;
        }
        if !present.listed && present.looks >= LIST_AFTER {
            present.listed = true;
            let listing = fs::read_dir(self.root.join("snapshots"))
                .into_iter()
                .flatten();
            present.ids.extend(
                listing
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok()),
            );
            if present.ids.contains(id) {
                return true;
            }
        }
        // Not listed yet, or made since the listing (by another build).
        present.looks += 1;
        let exists = self.snapshot_path(id).is_dir();
        if exists {
            present.ids.insert(id.to_owned());
        }
        exists
    }

    pub fn cache_put(&self, rec: &CacheRecord) -> Result<()> {
        let bytes = serde_json::to_vec(rec).expect("cache records serialize");
        atomic_write(&self.cache_path(&rec.key), &bytes)
    }
}
