//! Per-cache-key locks, so that two builds sharing a store run a step once: the first to miss takes the
//! key's lock and runs it, the other waits for the lock and then finds the result in the cache.
//!
//! A lock is `flock` on `locks/<key hex>`: the kernel releases it when its holder dies, so a killed build
//! never blocks the next one. The holder removes the file before unlocking, so locks do not pile up; a
//! waiter that then wins the lock of the removed file sees that the name no longer leads to it and tries
//! again on a fresh file.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use super::Store;
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;

/// A held key lock; dropping it removes the file and releases the lock.
pub struct KeyLock {
    path: PathBuf,
    /// Released when dropped, after `path` is gone.
    _file: fs::File,
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl Store {
    /// The lock of `key` if nobody holds it now, else `None` (try again later).
    pub fn try_lock_key(&self, key: &Digest) -> Result<Option<KeyLock>> {
        let dir = self.root().join("locks");
        let fail = |e| Diagnostic::io("cannot lock a cache key in the store", e);
        fs::create_dir_all(&dir).map_err(fail)?;
        let path = dir.join(key.hex());
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(fail)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(fail(e)),
        }
        let held = file.metadata().map_err(fail)?;
        let current = fs::metadata(&path).ok();
        if current.is_none_or(|m| (m.dev(), m.ino()) != (held.dev(), held.ino())) {
            return Ok(None);
        }
        Ok(Some(KeyLock { path, _file: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Access;

    #[test]
    fn a_key_is_held_once_and_free_again_after_its_holder_lets_go() {
        let root = tempfile::tempdir().unwrap();
        let a = Store::open(root.path(), Access::Shared).unwrap();
        let b = Store::open(root.path(), Access::Shared).unwrap();
        let key = Digest::of(b"step");
        let held = a.try_lock_key(&key).unwrap().expect("free at first");
        assert!(b.try_lock_key(&key).unwrap().is_none(), "held by a");
        drop(held);
        assert!(!root.path().join("locks").join(key.hex()).exists());
        assert!(b.try_lock_key(&key).unwrap().is_some(), "free again");
    }
}
