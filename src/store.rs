//! The persistent local store: content-addressed blobs, layer snapshots, and the cache index from a node's
//! cache key to its result.
//!
//! Layout under the store root:
//! - `blobs/sha256/<hex>`: compressed layers, image configs and manifests, named by their digest;
//! - `snapshots/<id>/`: one layer's filesystem in overlayfs upper-dir form (whiteouts as 0/0 devices),
//!   `layer-<diff id>` for an image's layer, `step-<key>[-<n>]` for a step's (see `new_snapshot_name`);
//! - `layers/<id>.json`: the original blob of a snapshot (a base image's or a shared cache's layer);
//!   `layers/<id>@[<epoch>][+zstd].json`: a blob kiln made of it with those settings, once computed;
//! - `cache/<hex>.json`: a cache key's result (the snapshots of every layer, the base image config, the
//!   leak guard's verdicts for the secrets its step mounted);
//! - `exports/<hex>`: per output destination, what kiln last wrote there and the stat data of those files;
//! - `statcache/<hex>`: per context directory, the content digests of its files by stat (never content);
//! - `files/<hex>`: immutable file objects that snapshots hard-link (COPY from a context);
//! - `caches/<hex>[-n]/`: the directories of `RUN --mount=type=cache` mounts, by id (plus a lock file each,
//!   and `<hex>.export.json`, what the last `--cache-to` made of its files: see `export::cache_mounts`);
//! - `names/<hex>.json`: images kept under a name, by the SHA-256 of the name (see `names`);
//! - `unsynced/<snapshot id>`: a step's snapshot placed before its files were known to be on disk, and
//!   the boot that wrote it (see `unsynced`);
//! - `locks/<hex>`: the lock of a cache key whose step a build is running (see `keylock`), so that a
//!   concurrent build waits for that result instead of running the step too;
//! - `tmp/`: work in progress. Everything is built there and renamed into place, so a crash leaves at most
//!   garbage in `tmp/`, never a half-written entry.
//! - `tmp/txn-<random>/`: a build's transaction (see `Txn`): its steps' work dirs, snapshots and records,
//!   staged until every leak check has passed. A transaction whose lock nobody holds belongs to a build
//!   that died; opening the store removes it, the cache mounts it had written and the file objects
//!   nothing links any more.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;

mod durable;
mod empty;
mod keylock;
mod names;
mod records;
pub mod unsynced;
pub use durable::Durable;
pub use keylock::KeyLock;
pub use names::{Leaves, NamedImage};

pub struct Store {
    root: PathBuf,
    /// Held (shared by builds, exclusive by prune) for as long as the store is open, so that pruning never
    /// deletes what a running build uses.
    _lock: fs::File,
    /// Snapshots seen to exist during this open. Nothing removes a snapshot while a build holds the shared
    /// lock (prune takes it exclusively), so one look per snapshot per build is enough: a cached rebuild of
    /// a deep chain checks each layer once, not once per record that lists it.
    present: std::sync::Mutex<records::Present>,
    /// Whether each snapshot looked at so far holds nothing (see `empty`); snapshots never change.
    empty: std::sync::Mutex<std::collections::HashMap<String, bool>>,
    /// The open transaction of a build given secrets: its steps' results are staged here, not committed.
    txn: std::sync::Mutex<Option<Txn>>,
    /// The base configs of the records read so far, by their JSON text: the records of a stage each
    /// carry the same one, which is then parsed and held once (see `cache_get`).
    bases: std::sync::Mutex<std::collections::HashMap<Box<str>, std::sync::Arc<serde_json::Value>>>,
}

/// A build's staged results. A build given secrets keeps every step's snapshot and record in a private
/// directory under `tmp/` until the leak guard has passed over everything it made; only then are they
/// renamed into place (`Store::commit`). A refused build (`Store::abort`), a failed one or a crashed one
/// leaves nothing in the store: the directory goes, and with it every byte the build produced, and so do
/// the file objects (`files/`) its COPY steps made that nothing links any more. Later steps of the same
/// build find staged results through `snapshot_path` and `cache_get` as if they were committed.
struct Txn {
    /// `tmp/txn-*`, made when the build first stages a snapshot, a work dir or a cache mount: a fully
    /// cached build makes none (making and removing it was a fifth of such a build's time).
    dir: Option<TxnDir>,
    snapshots: std::collections::HashSet<String>,
    /// In staging order, so inputs are committed before what was built on them.
    records: Vec<CacheRecord>,
    /// Writable cache mounts the build's steps used; also listed in the `caches` file, for a crash.
    caches: Vec<PathBuf>,
}

/// How the store is opened: by a build (alongside other builds) or for pruning (alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Shared,
    Exclusive,
}

/// What `kiln du` reports, in bytes.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub blobs: u64,
    pub snapshots: u64,
    pub snapshot_count: usize,
    pub caches: u64,
    pub records: usize,
    pub tmp: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.blobs + self.snapshots + self.caches + self.tmp
    }
}

/// The result of a filesystem node: its layers bottom-up, and the config of the image it started from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The cache key this record answers, checked on read so a misplaced file is never trusted.
    pub key: Digest,
    pub layers: Vec<String>,
    /// When each layer was first built (Unix seconds; 0 for layers of an imported image). History takes
    /// its times from here, so rebuilding from cache yields the very same image digest.
    #[serde(default)]
    pub times: Vec<i64>,
    /// The base image's OCI config (`ImageConfiguration` JSON): env, user, workdir, history. Shared: every
    /// step of a stage carries the same one, and outputs are cloned once per consumer.
    pub base: std::sync::Arc<serde_json::Value>,
    /// For a step that mounted secrets: the leak guard's verdict on the step's own (last) layer, one per
    /// mounted secret. Travels with the record into shared caches (see `solve::shared_cache`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretVerdict>,
}

/// What the leak guard found when a step that mounted secret `id` was committed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretVerdict {
    pub id: String,
    pub verdict: Verdict,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The value was given; the layer was scanned for it (raw, base64, hex; contents, names, link
    /// targets, xattrs) and it is not there.
    Clean,
    /// An optional secret that was not given: the step never saw a value, so there was nothing to leak.
    NotGiven,
}

/// A transaction's directory, removed when the transaction is dropped (committed or not).
struct TxnDir {
    path: PathBuf,
    /// Held while the build runs: a transaction whose lock is free belongs to a dead build.
    _lock: fs::File,
}

impl Drop for TxnDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

impl Txn {
    /// The transaction's directory, made on first use.
    fn dir(&mut self, store: &Store) -> Result<&Path> {
        if self.dir.is_none() {
            self.dir = Some(store.new_txn_dir()?);
        }
        Ok(self
            .dir
            .as_ref()
            .map(|d| d.path.as_path())
            .expect("made above"))
    }

    /// Where staged snapshot `id` is (a staged snapshot means the directory exists).
    fn snapshot(&self, id: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref().filter(|_| self.snapshots.contains(id))?;
        Some(dir.path.join("snapshots").join(id))
    }
}

/// How a step claims a cache mount directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// Use it alongside anyone else.
    No,
    /// Wait until nobody else holds it.
    Wait,
    /// Take it if free, else a sibling directory of one's own.
    OrSibling,
}

/// What fills a new cache mount's directory before it is put in place (`Store::cache_mount`).
pub type Fill<'a> = &'a dyn Fn(&Path) -> Result<()>;

/// A snapshot's exported layer blob.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerBlob {
    pub diff_id: Digest,
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// The uncompressed tar's length, when kiln made the blob (a docker-archive needs it up front).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tar_size: Option<u64>,
}

impl Store {
    /// Opens (creating when missing) the store at `root`.
    pub fn open(root: &Path, access: Access) -> Result<Store> {
        for sub in [
            "blobs/sha256",
            "snapshots",
            "layers",
            "cache",
            "caches",
            "files",
            "tmp",
        ] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(|e| {
                Diagnostic::io(
                    format!("cannot create store directory {}", dir.display()),
                    e,
                )
            })?;
        }
        let root = root
            .canonicalize()
            .map_err(|e| Diagnostic::io(format!("cannot open store {}", root.display()), e))?;
        let fail = |e| Diagnostic::io(format!("cannot lock store {}", root.display()), e);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("lock"))
            .map_err(fail)?;
        match access {
            Access::Shared => lock.lock_shared().map_err(fail)?,
            Access::Exclusive => lock.try_lock().map_err(|_| {
                Diagnostic::input(format!(
                    "the store {} is in use by a running build",
                    root.display()
                ))
                .help("try again when the build has finished")
            })?,
        }
        let store = Store {
            root,
            _lock: lock,
            present: Default::default(),
            empty: Default::default(),
            bases: Default::default(),
            txn: Default::default(),
        };
        store.drop_unconfirmed();
        store.recover();
        Ok(store)
    }

    /// Removes the transactions of builds that died (their lock is free), and the cache mounts they
    /// wrote: those may hold what the build's leak guard never got to check.
    fn recover(&self) {
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).into_iter().flatten().flatten() {
            if !e.file_name().to_string_lossy().starts_with("txn-") {
                continue;
            }
            let free = fs::File::open(e.path().join("lock")).is_ok_and(|f| f.try_lock().is_ok());
            if !free {
                continue;
            }
            let listed = fs::read_to_string(e.path().join("caches")).unwrap_or_default();
            for name in listed.lines().filter(|n| !n.is_empty() && !n.contains('/')) {
                self.drop_cache_dir(&self.root.join("caches").join(name));
            }
            let _ = fs::remove_dir_all(e.path());
            self.drop_unlinked_files();
        }
    }

    /// Removes the file objects no snapshot links (one link left: their own name), as prune does. Safe
    /// beside running builds: a COPY whose object vanishes before it links it copies the file instead.
    fn drop_unlinked_files(&self) {
        for e in fs::read_dir(self.files_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.metadata()
                .is_ok_and(|m| std::os::unix::fs::MetadataExt::nlink(&m) <= 1)
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Starts staging this build's results (see `Txn`).
    pub fn begin(&self) {
        *self.txn.lock().expect("txn lock") = Some(Txn {
            dir: None,
            snapshots: Default::default(),
            records: Vec::new(),
            caches: Vec::new(),
        });
    }

    fn new_txn_dir(&self) -> Result<TxnDir> {
        // Made and locked under another name, then renamed: `recover` never sees a transaction whose
        // lock is not yet held.
        let fresh = self.temp_dir("new-txn-")?;
        let fail = |e| Diagnostic::io("cannot start the build's transaction in the store", e);
        fs::create_dir(fresh.path().join("snapshots")).map_err(fail)?;
        let lock = fs::File::create(fresh.path().join("lock")).map_err(fail)?;
        lock.lock().map_err(fail)?;
        let name = fresh
            .path()
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        let dir = self
            .root
            .join("tmp")
            .join(name.replacen("new-txn-", "txn-", 1));
        fs::rename(fresh.path(), &dir).map_err(fail)?;
        let _ = fresh.keep();
        Ok(TxnDir {
            path: dir,
            _lock: lock,
        })
    }

    /// Moves everything the build staged into place: snapshots first, then the records (a record is
    /// only usable once its snapshots exist). A crash in between leaves snapshots no record names, which
    /// prune collects.
    pub fn commit(&self) -> Result<()> {
        let Some(txn) = self.txn.lock().expect("txn lock").take() else {
            return Ok(());
        };
        if let Some(dir) = txn.dir.as_ref().filter(|_| !txn.snapshots.is_empty()) {
            // The staged steps' overlays were volatile (see `durable`).
            sync_fs(&dir.path)?;
        }
        for id in &txn.snapshots {
            let staged = txn.snapshot(id).expect("a staged snapshot's directory");
            self.commit_snapshot(&staged, id)?;
        }
        for rec in &txn.records {
            self.cache_put(rec)?;
        }
        Ok(())
    }

    /// Drops everything the build staged, and every writable cache mount its steps used (see `Txn`).
    pub fn abort(&self) {
        let Some(txn) = self.txn.lock().expect("txn lock").take() else {
            return;
        };
        for dir in &txn.caches {
            self.drop_cache_dir(dir);
        }
        drop(txn);
        self.drop_unlinked_files();
    }

    /// Removes a cache mount's directory: renamed away first, so the next step that mounts the cache
    /// finds it empty (or absent) even while the old content is being deleted.
    fn drop_cache_dir(&self, dir: &Path) {
        let Ok(gone) = self.temp_dir("dropped-") else {
            let _ = fs::remove_dir_all(dir);
            return;
        };
        if fs::rename(dir, gone.path().join("cache")).is_err() {
            let _ = fs::remove_dir_all(dir);
        }
    }

    /// Notes a writable cache mount a step of this build uses: aborting the build removes it.
    pub fn note_cache(&self, dir: &Path) -> Result<()> {
        let mut guard = self.txn.lock().expect("txn lock");
        let Some(txn) = guard.as_mut() else {
            return Ok(());
        };
        if txn.caches.iter().any(|c| c == dir) {
            return Ok(());
        }
        txn.caches.push(dir.to_path_buf());
        let names: String = txn
            .caches
            .iter()
            .filter_map(|c| c.file_name())
            .map(|n| format!("{}\n", n.to_string_lossy()))
            .collect();
        atomic_write(&txn.dir(self)?.join("caches"), names.as_bytes())
    }

    /// Whether snapshot `id` is staged by this build: made by one of its steps, and scanned then for
    /// every secret given to it.
    pub fn is_staged(&self, id: &str) -> bool {
        self.txn
            .lock()
            .expect("txn lock")
            .as_ref()
            .is_some_and(|t| t.snapshots.contains(id))
    }

    /// Commits a step's snapshot, or stages it while a transaction is open.
    pub fn stage_snapshot(&self, from: &Path, id: &str) -> Result<PathBuf> {
        let mut guard = self.txn.lock().expect("txn lock");
        let Some(txn) = guard.as_mut() else {
            drop(guard);
            return self.commit_snapshot(from, id);
        };
        let to = txn.dir(self)?.join("snapshots").join(id);
        if !txn.snapshots.contains(id) {
            fs::rename(from, &to)
                .map_err(|e| Diagnostic::io(format!("cannot stage snapshot {id}"), e))?;
            txn.snapshots.insert(id.to_string());
        }
        Ok(to)
    }

    /// Writes a step's record, or stages it while a transaction is open.
    pub fn stage_record(&self, rec: &CacheRecord) -> Result<()> {
        let mut guard = self.txn.lock().expect("txn lock");
        match guard.as_mut() {
            Some(txn) => {
                txn.records.retain(|r| r.key != rec.key);
                txn.records.push(rec.clone());
                Ok(())
            }
            None => {
                drop(guard);
                self.cache_put(rec)
            }
        }
    }

    /// Sizes of everything in the store.
    pub fn usage(&self) -> Usage {
        let count = |sub: &str| fs::read_dir(self.root.join(sub)).map_or(0, |d| d.count());
        Usage {
            blobs: du(&self.root.join("blobs")),
            snapshots: du(&self.root.join("snapshots")),
            snapshot_count: count("snapshots"),
            caches: du(&self.root.join("caches")),
            records: count("cache"),
            tmp: du(&self.root.join("tmp")),
        }
    }

    /// Deletes least recently used results (and cache mounts) until the store holds at most `keep`
    /// bytes, then everything nothing refers to any more. Needs the store opened `Exclusive`.
    /// Returns the bytes freed.
    pub fn prune(&self, keep: u64) -> Result<u64> {
        let before = self.usage().total();
        let _ = fs::remove_dir_all(self.root.join("tmp"));
        let _ = fs::create_dir_all(self.root.join("tmp"));
        // Pulled image layouts hard-link store blobs; a later pull rebuilds them from the registry.
        let _ = fs::remove_dir_all(self.root.join("images"));
        // `.build` evaluation caches (load::EvalCache): the next compile of a workspace rebuilds its own.
        let _ = fs::remove_dir_all(self.root.join("evalcache"));
        // Memos of no-op builds stand for results that may go now (`cli/memo.rs`).
        fs::remove_dir_all(self.root.join("memo"))
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| Diagnostic::io("cannot remove the build memos", e))?;
        // Oldest first: cache records by last use, cache mounts by last write.
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = ["cache", "caches"]
            .iter()
            .flat_map(|sub| {
                fs::read_dir(self.root.join(sub))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter(|e| e.path().extension().is_none_or(|x| x != "lock"))
            .map(|e| {
                (
                    e.metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH),
                    e.path(),
                )
            })
            .collect();
        entries.sort();
        let mut entries = entries.into_iter();
        loop {
            self.collect_garbage()?;
            if self.usage().total() <= keep {
                break;
            }
            let Some((_, path)) = entries.next() else {
                break;
            };
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| Diagnostic::io(format!("cannot remove {}", path.display()), e))?;
        }
        Ok(before.saturating_sub(self.usage().total()))
    }

    /// Removes snapshots no cache record uses, layer records of removed snapshots, and blobs neither a
    /// layer record nor a named image names (other configs and manifests are rebuilt from the records on
    /// the next export).
    fn collect_garbage(&self) -> Result<()> {
        let records: Vec<CacheRecord> = fs::read_dir(self.root.join("cache"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
            .collect();
        let named = self.named_snapshots();
        let live: std::collections::HashSet<&str> = records
            .iter()
            .flat_map(|r| r.layers.iter().map(String::as_str))
            .chain(named.iter().map(String::as_str))
            .collect();
        for e in fs::read_dir(self.root.join("snapshots"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if !live.contains(e.file_name().to_string_lossy().as_ref()) {
                fs::remove_dir_all(e.path()).map_err(|err| {
                    Diagnostic::io(format!("cannot remove {}", e.path().display()), err)
                })?;
            }
        }
        // A file object no snapshot links any more has one link left: its own name.
        self.drop_unlinked_files();
        // Named images keep their manifests, configs and layers: they are what `kiln images` lists.
        let mut blobs = self.named_blobs();
        for e in fs::read_dir(self.root.join("layers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".json")
                .to_string();
            let snapshot = name.split('@').next().unwrap_or_default().to_string();
            if !live.contains(snapshot.as_str()) {
                let _ = fs::remove_file(e.path());
            } else if let Some(info) = fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<LayerBlob>(&b).ok())
            {
                blobs.insert(info.digest.hex().to_string());
            }
        }
        for e in fs::read_dir(self.root.join("blobs/sha256"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if !blobs.contains(e.file_name().to_string_lossy().as_ref()) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// `$KILN_STORE`, else `$XDG_CACHE_HOME/kiln`, else `~/.cache/kiln`.
    pub fn default_root() -> PathBuf {
        if let Some(s) = std::env::var_os("KILN_STORE") {
            return PathBuf::from(s);
        }
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(x).join("kiln");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        home.join(".cache/kiln")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh private directory under `tmp/`, removed when dropped.
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.root.join("tmp"))
            .map_err(|e| Diagnostic::io("cannot create a work directory in the store", e))
    }

    /// Where the stat cache of a context directory lives (see `solve::statcache`): named by a digest of
    /// the directory's absolute path, so each context has its own. The path is made absolute without
    /// resolving links (a monorepo build has thousands of contexts, and `canonicalize` costs a
    /// `readlink` per component): a directory reached by two names has two caches, each checked
    /// against the files' own stat data, so neither can answer for the other's files.
    pub fn stat_cache_path(&self, context: &Path) -> PathBuf {
        let abs = std::path::absolute(context).unwrap_or_else(|_| context.to_path_buf());
        let name = Digest::of(abs.as_os_str().as_encoded_bytes());
        self.root.join("statcache").join(name.hex())
    }

    /// Where `kiln build`'s memo of the command line whose digest is `key` lives, in the store at
    /// `root` (looked up before the store is opened). Prune removes them all before any result.
    pub fn memo_path(root: &Path, key: &Digest) -> PathBuf {
        root.join("memo").join(key.hex())
    }

    /// Immutable file objects that snapshots hard-link instead of holding copies: a context file copied
    /// by COPY, with owner 0:0, its mode and its mtime, named by a digest of all of these. Nothing may
    /// ever write to one (snapshots are read-only; overlayfs copies up before writing).
    pub fn files_dir(&self) -> PathBuf {
        self.root.join("files")
    }

    /// A step's work directory: inside the open transaction, so a build that dies mid-step leaves its
    /// changes where the next open of the store removes them (see `recover`); else under `tmp/`.
    pub fn work_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        let mut txn = self.txn.lock().expect("txn lock");
        let Some(txn) = txn.as_mut() else {
            drop(txn);
            return self.temp_dir(prefix);
        };
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(txn.dir(self)?)
            .map_err(|e| Diagnostic::io("cannot create a work directory in the store", e))
    }

    /// Where snapshot `id` is: staged by this build's transaction, or in the store.
    pub fn snapshot_path(&self, id: &str) -> PathBuf {
        if let Some(staged) = self
            .txn
            .lock()
            .expect("txn lock")
            .as_ref()
            .and_then(|t| t.snapshot(id))
        {
            return staged;
        }
        self.root.join("snapshots").join(id)
    }

    /// The name for a step's new snapshot: `base` (`step-<key>`), or, when a snapshot of that name
    /// exists (the step ran again: `--no-cache`, or its record went while the snapshot stayed),
    /// `base-2`, `base-3`...: the new content is this build's result (a step that reads the clock or the
    /// network gives other bytes), and the old snapshot stays whole for the records built on top of it
    /// until prune finds nothing naming it. Deleting it in its place would also cost the build the time
    /// of removing every file of the layer. Names are taken under the step's key lock.
    pub fn new_snapshot_name(&self, base: &str) -> String {
        let mut name = base.to_string();
        let mut n = 1;
        while self.snapshot_path(&name).exists() {
            n += 1;
            name = format!("{base}-{n}");
        }
        name
    }

    /// Moves a finished snapshot into place. If another build committed the same id first, ours is dropped.
    pub fn commit_snapshot(&self, from: &Path, id: &str) -> Result<PathBuf> {
        let to = self.place_snapshot(from, id)?;
        sync_dir(&self.root.join("snapshots"));
        Ok(to)
    }

    /// Whether a transaction is open (see `Txn`).
    pub fn in_transaction(&self) -> bool {
        self.txn.lock().expect("txn lock").is_some()
    }

    /// `commit_snapshot` without the fsync of `snapshots/`, which the caller makes before anything
    /// names the snapshot durably.
    fn place_snapshot(&self, from: &Path, id: &str) -> Result<PathBuf> {
        let to = self.snapshot_path(id);
        if to.exists() {
            let _ = fs::remove_dir_all(from);
            return Ok(to);
        }
        if let Err(e) = fs::rename(from, &to) {
            // Another kiln committed the same snapshot between our check and our rename: same key, same
            // content, so theirs serves us.
            if to.is_dir() {
                let _ = fs::remove_dir_all(from);
                return Ok(to);
            }
            return Err(Diagnostic::io(format!("cannot commit snapshot {id}"), e));
        }
        Ok(to)
    }

    /// The directory of a cache mount and, unless `reserve` is `No`, the open lock file that reserves it
    /// until dropped, and whether this call created it. Created (with `mode`, `uid`, `gid`) on first use,
    /// and then given to `fill` before anyone can see it: a concurrent user of a shared cache finds it
    /// whole or not at all. Blocks while a locked cache is busy.
    pub fn cache_mount(
        &self,
        id: &str,
        reserve: Reserve,
        owner: (u32, u32, u32),
        fill: Option<Fill<'_>>,
    ) -> Result<(PathBuf, Option<fs::File>, bool)> {
        let base = Digest::of(id.as_bytes());
        let caches = self.root.join("caches");
        let lock_file = |name: &str| {
            fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(caches.join(format!("{name}.lock")))
                .map_err(|e| Diagnostic::io(format!("cannot lock cache mount `{id}`"), e))
        };
        let (name, lock) = match reserve {
            Reserve::No => (base.hex().to_string(), None),
            Reserve::Wait => {
                let f = lock_file(base.hex())?;
                f.lock()
                    .map_err(|e| Diagnostic::io(format!("cannot lock cache mount `{id}`"), e))?;
                (base.hex().to_string(), Some(f))
            }
            Reserve::OrSibling => {
                // The first instance nobody holds; a busy cache gets a sibling of its own.
                let mut n = 0;
                loop {
                    let name = if n == 0 {
                        base.hex().to_string()
                    } else {
                        format!("{}-{n}", base.hex())
                    };
                    let f = lock_file(&name)?;
                    if f.try_lock().is_ok() {
                        break (name, Some(f));
                    }
                    n += 1;
                }
            }
        };
        let dir = caches.join(&name);
        let fresh = !dir.is_dir();
        if fresh {
            let tmp = self.temp_dir("cache-")?;
            let new = tmp.path().join("dir");
            let fail = |e| Diagnostic::io(format!("cannot create cache mount `{id}`"), e);
            fs::create_dir(&new).map_err(fail)?;
            fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(owner.0))
                .map_err(fail)?;
            std::os::unix::fs::chown(&new, Some(owner.1), Some(owner.2)).map_err(fail)?;
            if let Some(fill) = fill {
                fill(&new)?;
            }
            // Another build may have created it meanwhile; either directory is as good.
            let _ = fs::rename(&new, &dir);
        }
        Ok((dir, lock, fresh))
    }

    /// The directory of cache mount `id` (its first instance, which `private` siblings only stand in
    /// for while it is busy), if a step has made it.
    pub fn cache_mount_dir(&self, id: &str) -> Option<PathBuf> {
        let dir = self
            .root
            .join("caches")
            .join(Digest::of(id.as_bytes()).hex());
        dir.is_dir().then_some(dir)
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Removes a blob (a no-op when it is not there).
    pub fn remove_blob(&self, digest: &Digest) -> Result<()> {
        match fs::remove_file(self.blob_path(digest)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Diagnostic::io(format!("cannot remove blob {digest}"), e))
            }
            _ => Ok(()),
        }
    }

    /// Stores `bytes` as a blob and returns its digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        if !path.exists() {
            atomic_write(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Moves a file whose digest the caller computed while writing it into the blob store.
    pub fn adopt_blob(&self, file: &Path, digest: &Digest) -> Result<PathBuf> {
        let path = self.blob_path(digest);
        if let Ok(f) = fs::File::open(file) {
            let _ = f.sync_all();
        }
        fs::rename(file, &path)
            .map_err(|e| Diagnostic::io(format!("cannot store blob {digest}"), e))?;
        Ok(path)
    }

    /// Moves a blob that was pulled (hashed against its digest as it streamed) into the blob store
    /// without an fsync of its own. Safe because nothing trusts such a blob blindly after a crash: the
    /// snapshots unpacked from it are not fsynced either (the store's crash model is a killed process,
    /// whose page-cache writes survive, not a power cut), and a pulled blob is hashed again when it leaves
    /// the store (a push hashes it as it uploads). Per blob, a sync of a 500 MB pull waits for the disk
    /// to write everything before the next step may start.
    pub fn adopt_pulled_blob(&self, file: &Path, digest: &Digest) -> Result<PathBuf> {
        let path = self.blob_path(digest);
        fs::rename(file, &path)
            .map_err(|e| Diagnostic::io(format!("cannot store blob {digest}"), e))?;
        Ok(path)
    }

    /// Copies a blob whose digest the caller has verified into the store (a no-op when present).
    pub fn import_blob(&self, file: &Path, digest: &Digest) -> Result<PathBuf> {
        let path = self.blob_path(digest);
        if path.is_file() {
            return Ok(path);
        }
        let tmp = self.temp_dir("blob-")?;
        let staged = tmp.path().join("blob");
        fs::copy(file, &staged)
            .map_err(|e| Diagnostic::io(format!("cannot copy {}", file.display()), e))?;
        self.adopt_blob(&staged, digest)
    }

    /// Reads a blob and checks it against its digest before handing it out.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let bytes = fs::read(self.blob_path(digest))
            .map_err(|e| Diagnostic::io(format!("cannot read blob {digest} from the store"), e))?;
        if Digest::of(&bytes) != *digest {
            return Err(Diagnostic::env(format!(
                "store blob {digest} is corrupt (its content does not match its digest); remove it and rebuild"
            )));
        }
        Ok(bytes)
    }

    /// The snapshot id of a base image's layer: named by its diff id, so images sharing a layer share
    /// its snapshot, whichever registry or layout they came from.
    pub fn base_layer_id(diff_id: &Digest) -> String {
        format!("layer-{}", diff_id.hex())
    }

    pub fn layer_blob(&self, snapshot: &str) -> Option<LayerBlob> {
        let info = self.layer_record(snapshot)?;
        self.blob_path(&info.digest).is_file().then_some(info)
    }

    /// The layer record under `key`, whether or not its blob was written (a kept image's layer is
    /// recorded by its digests alone until it leaves the store: `NamedImage::snapshots`).
    pub fn layer_record(&self, key: &str) -> Option<LayerBlob> {
        let bytes = fs::read(self.root.join("layers").join(format!("{key}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The bytes kept beside the layer record `key` (`layer::TarIndex`), if any.
    pub fn layer_index(&self, key: &str) -> Option<Vec<u8>> {
        fs::read(self.root.join("layers").join(format!("{key}.idx"))).ok()
    }

    /// Keeps `bytes` beside the layer record `key`: renamed into place, not synced, as what only saves
    /// work may be lost (its reader checks it).
    pub fn put_layer_index(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.root.join("layers");
        let fail = |e| Diagnostic::io("cannot keep a layer's index", e);
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(fail)?;
        std::io::Write::write_all(&mut tmp, bytes).map_err(fail)?;
        tmp.persist(dir.join(format!("{key}.idx")))
            .map_err(|e| fail(e.error))?;
        Ok(())
    }

    pub fn put_layer_blob(&self, snapshot: &str, info: &LayerBlob) -> Result<()> {
        let bytes = serde_json::to_vec(info).expect("layer records serialize");
        atomic_write(
            &self.root.join("layers").join(format!("{snapshot}.json")),
            &bytes,
        )
    }
}

/// Writes a file so that readers see either the old content or the new, never a mix: temp file in the same
/// directory, fsync, rename, fsync the directory.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let fail = |e| Diagnostic::io(format!("cannot write {}", path.display()), e);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    tmp.write_all(bytes).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Bytes used by a tree (files' lengths; directories themselves not counted).
fn du(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .into_iter()
        .flatten()
        .filter_map(|e| e.path().symlink_metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Writes out everything of the filesystem holding `path` (`syncfs`): the files a step wrote through
/// its `volatile` overlay, before a record names them. A write the disk refused is an error, so no
/// record points at files that may not be there after a crash.
fn sync_fs(path: &Path) -> Result<()> {
    let fail =
        |e: std::io::Error| Diagnostic::io(format!("cannot write {} to disk", path.display()), e);
    let dir = fs::File::open(path).map_err(fail)?;
    nix::unistd::syncfs(&dir).map_err(|e| fail(e.into()))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests;
