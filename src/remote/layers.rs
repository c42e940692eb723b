//! The worker's cache of unpacked input snapshots (`WORK/layers/<sha256>`), bounded by
//! `--max-cache-size`: after each job the least recently used snapshots go until the rest fits, except
//! those a running job has open. Recency is the directory's mtime (set at each use), so it survives a
//! restart of the worker; sizes are measured once per snapshot and remembered.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

pub(crate) struct LayerCache {
    dir: PathBuf,
    /// Where a pruned snapshot is moved before it is deleted, so that no job ever sees half of one.
    tmp: PathBuf,
    max: Option<u64>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Snapshots a running job uses, with how many jobs use each.
    in_use: HashMap<String, usize>,
    /// Measured sizes, by digest.
    sizes: HashMap<String, u64>,
}

/// A snapshot held by a running job: pruning leaves it alone until this is dropped.
pub(crate) struct Held<'a> {
    cache: &'a LayerCache,
    hash: String,
    pub(crate) path: PathBuf,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut st = self.cache.state.lock().expect("not poisoned");
        if let Some(n) = st.in_use.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                st.in_use.remove(&self.hash);
            }
        }
    }
}

/// What one pruning pass did.
pub(crate) struct Pruned {
    pub(crate) removed: usize,
    pub(crate) freed: u64,
    pub(crate) kept: u64,
}

impl LayerCache {
    pub(crate) fn new(dir: PathBuf, tmp: PathBuf, max: Option<u64>) -> LayerCache {
        LayerCache {
            dir,
            tmp,
            max,
            state: Mutex::default(),
        }
    }

    /// Holds the snapshot `hash` (present or not yet unpacked) for a job, and marks it as just used.
    pub(crate) fn hold(&self, hash: &str) -> Held<'_> {
        *self
            .state
            .lock()
            .expect("not poisoned")
            .in_use
            .entry(hash.to_string())
            .or_default() += 1;
        let path = self.dir.join(hash);
        if path.is_dir() {
            touch(&path);
        }
        Held {
            cache: self,
            hash: hash.to_string(),
            path,
        }
    }

    /// Removes the least recently used snapshots no job holds until the cache fits its bound; `None`
    /// without a bound.
    pub(crate) fn prune(&self) -> io::Result<Option<Pruned>> {
        let Some(max) = self.max else {
            return Ok(None);
        };
        // Held throughout: one pass at a time, and no job takes a snapshot it is removing.
        let mut st = self.state.lock().expect("not poisoned");
        let mut entries = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let used = e.metadata()?.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            entries.push((used, name));
        }
        entries.sort();
        let mut total = 0;
        for (_, name) in &entries {
            if !st.sizes.contains_key(name) {
                let size = tree_size(&self.dir.join(name));
                st.sizes.insert(name.clone(), size);
            }
            total += st.sizes[name];
        }
        let mut pruned = Pruned {
            removed: 0,
            freed: 0,
            kept: total,
        };
        let mut doomed = Vec::new();
        for (_, name) in entries {
            if pruned.kept <= max {
                break;
            }
            if st.in_use.contains_key(&name) {
                continue;
            }
            // Out of the cache while the lock is held: a job that asks for it from now on unpacks it
            // anew rather than finding a directory being deleted.
            let gone = tempfile::Builder::new()
                .prefix("pruned-")
                .tempdir_in(&self.tmp)?
                .keep();
            let dest = gone.join(&name);
            std::fs::rename(self.dir.join(&name), &dest)?;
            let size = st.sizes.remove(&name).unwrap_or(0);
            pruned.kept -= size;
            pruned.freed += size;
            pruned.removed += 1;
            doomed.push(gone);
        }
        drop(st);
        for d in doomed {
            std::fs::remove_dir_all(d)?;
        }
        Ok(Some(pruned))
    }
}

/// Marks a snapshot as just used.
fn touch(dir: &Path) {
    // Best effort: a snapshot whose time cannot be set is only pruned sooner.
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// The bytes a snapshot takes: its files' sizes, and a block for each other entry.
fn tree_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .map(|m| if m.is_file() { m.len() } else { 4096 })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(cache: &Path, name: &str, bytes: usize, age: u64) {
        let d = cache.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), vec![0u8; bytes]).unwrap();
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + age);
        std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn prunes_least_recently_used_but_never_a_held_snapshot() {
        let t = tempfile::tempdir().unwrap();
        let (dir, tmp) = (t.path().join("layers"), t.path().join("tmp"));
        std::fs::create_dir_all(&tmp).unwrap();
        // Oldest first: a, b, c, d; each about 100 kB.
        for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
            snapshot(&dir, n, 100_000, i as u64);
        }
        let cache = LayerCache::new(dir.clone(), tmp.clone(), Some(250_000));
        let held = cache.hold("a");
        let p = cache.prune().unwrap().unwrap();
        // `a` is the oldest but held; `b` and `c` go, `a` and `d` stay.
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["a", "d"]);
        assert_eq!(p.removed, 2);
        assert!(p.kept <= 250_000, "{}", p.kept);
        assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
        drop(held);
        // Holding `a` made it the most recently used: with room for one, `d` goes.
        let cache = LayerCache::new(dir.clone(), tmp, Some(150_000));
        cache.prune().unwrap();
        assert!(dir.join("a").exists() && !dir.join("d").exists());
    }

    #[test]
    fn without_a_bound_nothing_is_pruned() {
        let t = tempfile::tempdir().unwrap();
        snapshot(&t.path().join("layers"), "a", 10, 0);
        let cache = LayerCache::new(t.path().join("layers"), t.path().to_path_buf(), None);
        assert!(cache.prune().unwrap().is_none());
        assert!(t.path().join("layers/a").exists());
    }
}
