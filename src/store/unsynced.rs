//! Step snapshots not yet known to be on disk. A step writes its files through a `volatile` overlay, and
//! a `syncfs` before its record would make the build wait for the disk: 0.55 s after a step that wrote
//! 50,000 files, and on a busy machine for whatever else is dirty on the same filesystem. Instead, before
//! the snapshot is placed, a marker `unsynced/<snapshot>` names the boot that wrote it, and is on disk
//! before the step's record is (`Store::commit_step`). Within that boot the page cache is the truth: the
//! snapshot is used as it is. As the build ends it starts `kiln __sync-store` on its own
//! (`marked_stores`), which runs one `syncfs` and then removes the markers it listed before it: those
//! snapshots are on disk, and so are the file objects of the copies marked `objects-…` (confirmable
//! once their copy is over). A marker naming another boot means the
//! machine went down before that: the next open of the store removes the snapshot, its layer records and
//! every file object (`drop_unconfirmed`), so the records naming the snapshot miss and their steps run
//! again, where trusting it could give an image with lost bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::{Store, sync_dir, sync_fs};
use crate::diag::{Diagnostic, Result};

/// The hidden command that confirms the markers of a store: `kiln __sync-store <root>`.
pub const SYNC_ARG: &str = "__sync-store";

const DIR: &str = "unsynced";

/// The stores this process marked snapshots in (see `marked_stores`).
static MARKED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// This boot's identity, read once; `None` where the kernel does not say (then every commit syncs).
fn boot_id() -> Option<&'static str> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| {
        let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id = id.trim();
        (!id.is_empty()).then(|| id.to_string())
    })
    .as_deref()
}

/// What a mark of objects a copy is still making holds after the boot: `confirm` leaves it alone.
const MAKING: &str = " making";

/// The prefix of the marks of file objects (no snapshot has such a name).
const OBJECTS: &str = "objects-";

/// Whether the marker at `path` was written in this boot and may be confirmed.
fn ready_in_this_boot(path: &Path, boot: &str) -> bool {
    fs::read_to_string(path).is_ok_and(|b| b == boot)
}

/// Whether the marker at `path` holds another boot's id (or nothing: written just before a crash). One
/// that cannot be read is not: a confirmation removed it between the listing and the read.
fn of_another_boot(path: &Path, boot: &str) -> bool {
    fs::read_to_string(path).is_ok_and(|b| b != boot && b.strip_suffix(MAKING) != Some(boot))
}

/// A number for each mark of objects this process makes (with its pid, a name no live process shares;
/// one left by a dead process of the same pid is taken over, and covers its objects too).
fn next_mark() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The mark of the file objects one copy from a context makes (`Store::mark_objects`): confirmable once
/// dropped, when the copy is over (an object made after a `syncfs` began would not be covered by it).
pub struct ObjectsMark {
    root: PathBuf,
    name: String,
}

impl Drop for ObjectsMark {
    fn drop(&mut self) {
        if let Some(boot) = boot_id() {
            let _ = write_mark(&self.root, &self.name, boot);
        }
    }
}

/// Writes a mark whole, through a temp file renamed into place: an open of the store in this boot
/// (another build's, or this one's) must never read a mark half-written and take it for another boot's.
fn write_mark(root: &Path, name: &str, content: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = root.join(DIR);
    let mut tmp = tempfile::NamedTempFile::new_in(root.join("tmp"))?;
    tmp.write_all(content.as_bytes())?;
    match tmp.persist(dir.join(name)) {
        Ok(_) => Ok(()),
        Err(e) if e.error.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(&dir)?;
            e.file
                .persist(dir.join(name))
                .map(drop)
                .map_err(|e| e.error)
        }
        Err(e) => Err(e.error),
    }
}

impl Store {
    /// Marks snapshot `id` as written in this boot and not synced; `false` when it is not marked (the boot
    /// is unknown, or the marker cannot be written): the caller syncs it then, as before.
    pub(super) fn mark_unsynced(&self, id: &str) -> bool {
        boot_id().is_some_and(|boot| self.mark(id, boot))
    }

    /// Marks the file objects a copy from a context is about to make (`files/`), which nothing syncs on
    /// their own: a crash before they are confirmed costs every object (they only save copying).
    pub fn mark_objects(&self) -> Option<ObjectsMark> {
        let boot = boot_id()?;
        let name = format!("{OBJECTS}{}-{}", std::process::id(), next_mark());
        self.mark(&name, &format!("{boot}{MAKING}"))
            .then(|| ObjectsMark {
                root: self.root.clone(),
                name,
            })
    }

    fn mark(&self, name: &str, content: &str) -> bool {
        if write_mark(&self.root, name, content).is_err() {
            return false;
        }
        let mut marked = MARKED.lock().expect("marked stores lock");
        if !marked.contains(&self.root) {
            marked.push(self.root.clone());
        }
        true
    }

    /// Makes the markers written so far durable: before a record naming their snapshots is.
    pub(super) fn sync_markers(&self) -> Result<()> {
        let dir = self.root.join(DIR);
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Diagnostic::io("cannot write the store's unsynced marks to disk", e))
    }

    /// Removes what an earlier boot marked and never confirmed: the machine went down before its data
    /// was known to be on disk. Cheap when there is nothing: one failed open of `unsynced/`.
    pub(super) fn drop_unconfirmed(&self) {
        let dir = self.root.join(DIR);
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        let Some(boot) = boot_id() else {
            return;
        };
        let mut dropped = false;
        for e in entries.flatten() {
            if !of_another_boot(&e.path(), boot) {
                continue;
            }
            if let Some(id) = e.file_name().to_str()
                && !id.starts_with(OBJECTS)
            {
                self.drop_snapshot(id);
            }
            let _ = fs::remove_file(e.path());
            dropped = true;
        }
        if dropped {
            // Objects are made by copies and synced with their snapshots: any may have lost bytes. They
            // only save copying; the snapshots that link them keep their own links.
            for e in fs::read_dir(self.files_dir())
                .into_iter()
                .flatten()
                .flatten()
            {
                let _ = fs::remove_file(e.path());
            }
            sync_dir(&dir);
        }
    }

    /// Removes snapshot `id` and the layer records made of it (their digests describe its old bytes).
    pub(super) fn drop_snapshot(&self, id: &str) {
        let path = self.snapshot_path(id);
        // Renamed away first: a half-removed snapshot is never seen under its name.
        if let Ok(gone) = tempfile::Builder::new()
            .prefix("dropped-")
            .tempdir_in(self.root.join("tmp"))
            && fs::rename(&path, gone.path().join("snapshot")).is_ok()
        {
            sync_dir(&self.root.join("snapshots"));
            drop(gone);
        }
        let layers = self.root.join("layers");
        for e in fs::read_dir(&layers).into_iter().flatten().flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let of = name
                .strip_prefix(id)
                .is_some_and(|rest| rest.starts_with('@') || rest == ".json" || rest == ".idx");
            if of {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// Whether the store at `root` holds marks of another boot, which its next open removes with what they
/// mark: a build's memo must not stand for results that may go.
pub fn unconfirmed_of_an_earlier_boot(root: &Path) -> bool {
    let Ok(entries) = fs::read_dir(root.join(DIR)) else {
        return false;
    };
    let boot = boot_id().unwrap_or_default();
    entries.flatten().any(|e| of_another_boot(&e.path(), boot))
}

/// `kiln __sync-store <root>`: one `syncfs` of the store's filesystem, then the removal of every marker of
/// this boot listed before it (a marker is written after its snapshot's files, so these are on disk now).
/// Takes no lock: markers are only ever added by builds and removed here or by an open in a later boot.
pub fn confirm(root: &Path) -> Result<()> {
    let dir = root.join(DIR);
    let Some(boot) = boot_id() else {
        return Ok(());
    };
    let listed: Vec<PathBuf> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| ready_in_this_boot(p, boot))
        .collect();
    if listed.is_empty() {
        return Ok(());
    }
    sync_fs(root)?;
    for path in &listed {
        let _ = fs::remove_file(path);
    }
    sync_dir(&dir);
    Ok(())
}

/// The stores this process marked snapshots in since the last call, each once: a build, as it ends,
/// starts `kiln __sync-store` for each (`exec::start_detached`), so its caller does not wait for the disk.
pub fn marked_stores() -> Vec<PathBuf> {
    std::mem::take(&mut *MARKED.lock().expect("marked stores lock"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::store::{Access, CacheRecord};
    use std::sync::Arc;

    /// The record of a one-layer step: its key and its snapshot's id.
    fn record(name: &str) -> (Digest, String, CacheRecord) {
        let key = Digest::of(name.as_bytes());
        let id = format!("step-{}", key.hex());
        let rec = CacheRecord {
            key: key.clone(),
            layers: vec![id.clone()],
            times: vec![0],
            base: serde_json::Value::Null.into(),
            secrets: Vec::new(),
        };
        (key, id, rec)
    }

    fn commit(store: &Arc<Store>, name: &str) -> (String, CacheRecord) {
        let (_, id, rec) = record(name);
        let upper = store.root.join("tmp").join(name);
        fs::create_dir_all(&upper).unwrap();
        fs::write(upper.join("made"), name).unwrap();
        let durable = store.commit_step(&upper, rec.clone(), None).unwrap();
        durable.expect("no transaction: a thread").wait().unwrap();
        (id, rec)
    }

    fn marker(root: &Path, id: &str) -> PathBuf {
        root.join(DIR).join(id)
    }

    /// A committed step's snapshot is marked with this boot, serves at once, and the confirmation (a
    /// `syncfs`) removes the mark.
    #[test]
    fn a_step_is_marked_until_confirmed() {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(root.path(), Access::Shared).unwrap());
        let (id, rec) = commit(&store, "a");
        let boot = boot_id().expect("the kernel gives a boot id");
        assert_eq!(fs::read_to_string(marker(&store.root, &id)).unwrap(), boot);
        assert!(
            store.cache_get(&rec.key).is_some(),
            "trusted in its own boot"
        );
        assert!(!unconfirmed_of_an_earlier_boot(&store.root));
        confirm(&store.root).unwrap();
        assert!(!marker(&store.root, &id).exists());
        let again = Store::open(root.path(), Access::Shared).unwrap();
        assert!(again.cache_get(&rec.key).is_some(), "confirmed: kept");
    }

    /// A mark of another boot (the machine went down before the confirmation) costs the snapshot, its
    /// layer records and the file objects at the next open; its record then misses. A mark of this boot
    /// and a confirmed snapshot stay.
    #[test]
    fn a_mark_of_an_earlier_boot_drops_its_snapshot_at_the_next_open() {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(root.path(), Access::Shared).unwrap());
        let (lost, lost_rec) = commit(&store, "lost");
        let (kept, kept_rec) = commit(&store, "kept");
        confirm(&store.root).unwrap();
        let (fresh, fresh_rec) = commit(&store, "fresh");
        fs::write(marker(&store.root, &lost), "an-earlier-boot").unwrap();
        let layers = store.root.join("layers");
        for name in [
            format!("{lost}@.json"),
            format!("{lost}@.idx"),
            format!("{kept}@.json"),
        ] {
            fs::write(layers.join(name), "{}").unwrap();
        }
        fs::write(store.files_dir().join("object"), "bytes").unwrap();
        assert!(unconfirmed_of_an_earlier_boot(&store.root));
        drop(store);

        let store = Store::open(root.path(), Access::Shared).unwrap();
        assert!(!store.snapshot_path(&lost).exists());
        assert!(
            store.cache_get(&lost_rec.key).is_none(),
            "its step runs again"
        );
        assert!(!marker(&store.root, &lost).exists());
        assert!(!layers.join(format!("{lost}@.json")).exists());
        assert!(!layers.join(format!("{lost}@.idx")).exists());
        assert!(layers.join(format!("{kept}@.json")).exists());
        assert!(!store.files_dir().join("object").exists());
        assert!(store.cache_get(&kept_rec.key).is_some());
        assert!(store.cache_get(&fresh_rec.key).is_some());
        assert!(
            marker(&store.root, &fresh).exists(),
            "this boot's mark stays"
        );
        assert!(!unconfirmed_of_an_earlier_boot(&store.root));
        let leftovers: Vec<_> = fs::read_dir(store.root.join("tmp")).unwrap().collect();
        assert!(leftovers.is_empty(), "the dropped snapshot is gone whole");
    }

    /// The objects of a copy still running are not confirmed by a `syncfs` that may have begun before
    /// some of them were made; once the copy is over they are. A mark of objects from another boot costs
    /// every object, and no snapshot.
    #[test]
    fn objects_are_confirmed_only_once_their_copy_is_over() {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(root.path(), Access::Shared).unwrap());
        let (id, rec) = commit(&store, "a");
        let mark = store.mark_objects().expect("marked");
        let path = store.root.join(DIR).join(&mark.name);
        confirm(&store.root).unwrap();
        assert!(path.exists(), "a running copy's mark stays");
        assert!(
            !marker(&store.root, &id).exists(),
            "a finished step's mark goes"
        );
        drop(mark);
        confirm(&store.root).unwrap();
        assert!(!path.exists());

        let stale = store.root.join(DIR).join(format!("{OBJECTS}1-0"));
        fs::write(&stale, "an-earlier-boot making").unwrap();
        fs::write(store.files_dir().join("object"), "bytes").unwrap();
        drop(store);
        let store = Store::open(root.path(), Access::Shared).unwrap();
        assert!(!stale.exists());
        assert!(!store.files_dir().join("object").exists());
        assert!(store.cache_get(&rec.key).is_some());
    }

    /// Marks are written whole, and one a confirmation removes meanwhile is gone, not foreign: opens of the
    /// store beside this boot's marks being written and confirmed (another build's, the same build's
    /// second open, the sync after a build) never take one for another boot's and drop anything.
    #[test]
    fn an_open_beside_marks_being_written_drops_nothing() {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(root.path(), Access::Shared).unwrap());
        let (_, rec) = commit(&store, "a");
        let object = store.files_dir().join("object");
        fs::write(&object, "bytes").unwrap();
        let writing = std::sync::atomic::AtomicBool::new(true);
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..300 {
                    drop(store.mark_objects());
                    confirm(&store.root).unwrap();
                }
                writing.store(false, std::sync::atomic::Ordering::Relaxed);
            });
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let again = Store::open(root.path(), Access::Shared).unwrap();
                assert!(object.exists(), "an object was dropped");
                assert!(
                    again.cache_get(&rec.key).is_some(),
                    "a snapshot was dropped"
                );
            }
        });
    }

    /// A step's snapshot left in place without its record (its build died between the two, maybe
    /// before its files reached the disk) is not trusted by the next commit of the step: replaced.
    #[test]
    fn a_snapshot_left_without_its_record_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(root.path(), Access::Shared).unwrap());
        let (key, id, rec) = record("left");
        let left = store.snapshot_path(&id);
        fs::create_dir_all(&left).unwrap();
        fs::write(left.join("made"), "").unwrap();
        let upper = store.root.join("tmp").join("upper");
        fs::create_dir_all(&upper).unwrap();
        fs::write(upper.join("made"), "whole").unwrap();
        let lock = store.try_lock_key(&key).unwrap().expect("free");
        let durable = store.commit_step(&upper, rec, Some(lock)).unwrap();
        durable.expect("a thread").wait().unwrap();
        assert_eq!(fs::read_to_string(left.join("made")).unwrap(), "whole");
        assert!(store.cache_get(&key).is_some());
    }
}
