//! The `.build` evaluation cache of a monorepo: what a run learnt, kept for the next one, so an unchanged
//! package is neither parsed nor evaluated again (`frontend::buildfile::lower::unit` records and replays
//! the evaluation). No daemon: one file per workspace in the store, `evalcache/<digest of the root
//! path>`, read at the start of a command and written back at its end when something was added.
//!
//! It holds, by content digest: each file's summary (its imports, targets and params), which modules
//! (a file with its imports' digests) passed the type checker, and each unit's record. A record holds
//! what a `.build` program computes (commands, paths, image config), never a secret's value, which is
//! not known when compiling.
//!
//! The file is written through a temp file and a rename, and ends with a SHA-256 of everything before
//! it: a torn or corrupt file reads as an empty cache, never as wrong records. Entries not used by the
//! last `KEEP_RUNS` runs that wrote the file are dropped then.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::diag::Span;
use crate::digest::Digest;
use crate::frontend::buildfile::lower::UnitRecord;

const MAGIC: &[u8] = b"kiln-evalcache-v1\n";
/// An entry no run used in this many writes of the file is dropped.
const KEEP_RUNS: u64 = 16;

/// What loading a module needs of its file without parsing it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FileSummary {
    /// Each import: alias, path as written, where it is written.
    pub imports: Vec<(String, String, Span)>,
    /// Each target's name, and whether it has a `tagged` or `for` clause.
    pub targets: Vec<(String, bool)>,
    pub params: Vec<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct Entries {
    /// The kiln that wrote them (`kiln_identity`): another kiln may check or evaluate differently, so
    /// its entries are not used.
    kiln: String,
    /// How many times the file was written: an entry's `Cell` holds the last one that used it.
    generation: u64,
    files: HashMap<Digest, (Arc<FileSummary>, Cell<u64>)>,
    checked: HashMap<Digest, Cell<u64>>,
    units: HashMap<Digest, Stored>,
}

/// A unit's record, encoded: decoded only when a run replays it, so a command reads the file in one
/// copy and a cold run holds bytes rather than trees.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(with = "serde_bytes")]
    record: Vec<u8>,
    used: Cell<u64>,
}

/// A workspace's evaluation cache, open for one command.
pub struct EvalCache {
    path: PathBuf,
    entries: Entries,
    dirty: bool,
}

impl EvalCache {
    /// The cache of the workspace at `root`, in the store at `store`.
    pub fn path_in(store: &Path, root: &Path) -> PathBuf {
        let name = Digest::of(root.as_os_str().as_encoded_bytes());
        store.join("evalcache").join(name.hex())
    }

    /// Reads the cache at `path`; a missing, torn or corrupt file is an empty cache.
    pub fn open(path: PathBuf) -> EvalCache {
        EvalCache::open_as(path, kiln_identity())
    }

    /// Reads the cache at `path` for the kiln identified by `kiln`.
    fn open_as(path: PathBuf, kiln: String) -> EvalCache {
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|bytes| decode(&bytes))
            .filter(|e| e.kiln == kiln)
            .unwrap_or_else(|| Entries {
                kiln,
                ..Entries::default()
            });
        EvalCache {
            path,
            entries,
            dirty: false,
        }
    }

    fn now(&self) -> u64 {
        self.entries.generation + 1
    }

    pub fn summary(&self, text: &Digest) -> Option<Arc<FileSummary>> {
        let (s, used) = self.entries.files.get(text)?;
        used.set(self.now());
        Some(s.clone())
    }

    /// Whether the module `key` (a file and its imports) passed the type checker before.
    pub fn checked(&self, key: &Digest) -> bool {
        let Some(used) = self.entries.checked.get(key) else {
            return false;
        };
        used.set(self.now());
        true
    }

    /// Remembers a file's summary and that module `key` passed the checker.
    pub fn add_module(&mut self, text: Digest, summary: Arc<FileSummary>, key: Digest) {
        let now = Cell::new(self.now());
        self.entries
            .files
            .entry(text)
            .or_insert((summary, now.clone()));
        self.entries.checked.insert(key, now);
        self.dirty = true;
    }

    /// The record of unit `key`; one that does not decode (written by another version of kiln) is
    /// none.
    pub fn unit(&self, key: &Digest) -> Option<UnitRecord> {
        let stored = self.entries.units.get(key)?;
        let record = rmp_serde::from_slice(&stored.record).ok()?;
        stored.used.set(self.now());
        Some(record)
    }

    pub fn keep_unit(&mut self, key: Digest, record: &UnitRecord) {
        let Ok(bytes) = rmp_serde::to_vec_named(record) else {
            return;
        };
        let stored = Stored {
            record: bytes,
            used: Cell::new(self.now()),
        };
        self.entries.units.insert(key, stored);
        self.dirty = true;
    }

    /// Whether anything was added since it was read.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Writes the cache back if anything was added. Failures are ignored: the cache only saves work.
    pub fn save(mut self) {
        if !self.dirty {
            return;
        }
        let now = self.now();
        let e = &mut self.entries;
        e.generation = now;
        let keep = |used: &Cell<u64>| used.get() + KEEP_RUNS > now;
        e.files.retain(|_, (_, used)| keep(used));
        e.checked.retain(|_, used| keep(used));
        e.units.retain(|_, stored| keep(&stored.used));
        let Some(dir) = self.path.parent() else {
            return;
        };
        let _ = std::fs::create_dir_all(dir);
        // Streamed through the checksum into the file: no copy of the whole cache in memory.
        let Ok(tmp) = tempfile::NamedTempFile::new_in(dir) else {
            return;
        };
        let mut out = Summed {
            inner: std::io::BufWriter::new(tmp),
            sum: Sha256::new(),
        };
        let written = out.write_all(MAGIC).is_ok()
            && rmp_serde::encode::write_named(&mut out, &self.entries).is_ok();
        let sum = out.sum.finalize();
        // A rename without fsync: after a crash the file is old, new or torn, and a torn one fails its
        // checksum and reads as empty.
        if written
            && out.inner.write_all(&sum).is_ok()
            && let Ok(tmp) = out.inner.into_inner()
        {
            let _ = tmp.persist(&self.path);
        }
    }
}

/// Writes through, hashing what it writes.
struct Summed<W> {
    inner: W,
    sum: Sha256,
}

impl<W: std::io::Write> std::io::Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sum.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// This kiln binary: its version and the file's identity (size, modification time, inode), so that
/// rebuilding or upgrading kiln starts an empty cache rather than trusting what another build of the
/// checker and evaluator wrote.
pub fn kiln_identity() -> String {
    use std::os::unix::fs::MetadataExt as _;
    let exe = std::env::current_exe().and_then(std::fs::metadata);
    match exe {
        Ok(m) => format!(
            "{} {} {}.{} {}",
            env!("CARGO_PKG_VERSION"),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino()
        ),
        // Unknown: a value no other run has, so nothing is trusted.
        Err(_) => format!("unknown {:?}", std::time::SystemTime::now()),
    }
}

fn decode(bytes: &[u8]) -> Option<Entries> {
    let body = bytes.strip_prefix(MAGIC)?;
    let split = body.len().checked_sub(32)?;
    let (payload, sum) = body.split_at(split);
    if Sha256::digest(&bytes[..MAGIC.len() + split]).as_slice() != sum {
        return None;
    }
    rmp_serde::from_slice(payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_or_corrupt_file_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut c = EvalCache::open(path.clone());
        let summary = Arc::new(FileSummary {
            params: vec!["level".into()],
            ..FileSummary::default()
        });
        c.add_module(Digest::of(b"text"), summary, Digest::of(b"key"));
        c.save();
        let c = EvalCache::open(path.clone());
        assert!(c.checked(&Digest::of(b"key")));
        assert_eq!(c.summary(&Digest::of(b"text")).unwrap().params, ["level"]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        assert!(!EvalCache::open(path.clone()).checked(&Digest::of(b"key")));
        let mut flipped = bytes.clone();
        flipped[MAGIC.len() + 3] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(!EvalCache::open(path).checked(&Digest::of(b"key")));
    }

    #[test]
    fn another_kilns_entries_are_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut c = EvalCache::open_as(path.clone(), "kiln a".into());
        c.add_module(Digest::of(b"text"), Arc::default(), Digest::of(b"key"));
        c.save();
        assert!(!EvalCache::open_as(path.clone(), "kiln b".into()).checked(&Digest::of(b"key")));
        assert!(EvalCache::open_as(path, "kiln a".into()).checked(&Digest::of(b"key")));
    }

    #[test]
    fn entries_no_run_uses_age_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut c = EvalCache::open(path.clone());
        c.add_module(Digest::of(b"old"), Arc::default(), Digest::of(b"old-key"));
        c.save();
        for i in 0..KEEP_RUNS {
            let mut c = EvalCache::open(path.clone());
            let text = format!("new {i}");
            c.add_module(
                Digest::of(text.as_bytes()),
                Arc::default(),
                Digest::of(b"k"),
            );
            c.save();
        }
        let c = EvalCache::open(path);
        assert!(!c.checked(&Digest::of(b"old-key")));
        assert!(c.checked(&Digest::of(b"k")));
    }
}
