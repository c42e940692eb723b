//! What kiln last wrote to each output, so that a rebuild which would write the very same bytes again
//! leaves the output alone: per destination, a key naming what was written (the image or filesystem and
//! every setting that shapes the bytes) and the stat data of each file written, as git's index keeps them.
//!
//! A file whose size, mtime, ctime, inode and mode are unchanged since kiln wrote it still holds what kiln
//! wrote: nothing can change a file without moving its ctime, and no tool can set a ctime back. The record
//! is taken only once the clock has moved past the files' ctime (see `RACY`), so a change right after the
//! write cannot share the recorded ctime either. The record is removed before an output is rewritten, so
//! an interrupted write never leaves a record that vouches for a half-written file.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::store::Store;

/// Coarse kernel timestamps advance once per tick (at most 10 ms at HZ=100); a record taken later than
/// this after the last write can no longer share a ctime with a change made after it.
const RACY: Duration = Duration::from_millis(20);

#[derive(Serialize, Deserialize)]
struct Record {
    key: String,
    files: Vec<FileStat>,
}

#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Debug)]
struct FileStat {
    path: PathBuf,
    #[serde(flatten)]
    stat: crate::inputs::Stat,
}

impl FileStat {
    fn of(path: &Path) -> Option<FileStat> {
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(FileStat {
            path: path.to_path_buf(),
            stat: crate::inputs::Stat::of(&m),
        })
    }
}

/// The record file of the output at `dest` (by its absolute path; `dest` itself may not exist yet).
fn record_path(store: &Store, dest: &Path) -> PathBuf {
    let abs = absolute(dest);
    let name = Digest::of(abs.as_os_str().as_encoded_bytes());
    store.root().join("exports").join(name.hex())
}

/// `dest` with its parent resolved, so two spellings of one output share a record.
pub fn absolute(dest: &Path) -> PathBuf {
    let name = dest.file_name();
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    match (parent.canonicalize(), name) {
        (Ok(p), Some(n)) => p.join(n),
        _ => std::path::absolute(dest).unwrap_or_else(|_| dest.to_path_buf()),
    }
}

fn load(store: &Store, dest: &Path) -> Option<Record> {
    let bytes = std::fs::read(record_path(store, dest)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether the record of `dest` says kiln wrote exactly `key` there, and every one of `files` still holds
/// what kiln wrote.
pub fn holds(store: &Store, dest: &Path, key: &str, files: &[PathBuf]) -> bool {
    let Some(record) = load(store, dest) else {
        return false;
    };
    record.key == key
        && files.iter().all(|f| {
            let now = FileStat::of(f);
            now.is_some() && record.files.iter().any(|r| Some(r) == now.as_ref())
        })
}

/// The files among those recorded for `dest` (whatever was written there) that are unchanged since kiln
/// wrote them: an OCI layout's blobs stay valid when another image was written beside them.
pub fn unchanged(store: &Store, dest: &Path) -> Vec<PathBuf> {
    let Some(record) = load(store, dest) else {
        return Vec::new();
    };
    record
        .files
        .into_iter()
        .filter(|r| FileStat::of(&r.path).as_ref() == Some(r))
        .map(|r| r.path)
        .collect()
}

/// Drops the record of `dest` before it is rewritten.
pub fn forget(store: &Store, dest: &Path) -> Result<()> {
    match std::fs::remove_file(record_path(store, dest)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Diagnostic::io(
            "cannot update the store's export records",
            e,
        )),
    }
}

/// Records that `dest` now holds `key`, written as `files`.
pub fn remember(store: &Store, dest: &Path, key: &str, files: &[PathBuf]) -> Result<()> {
    let latest = files
        .iter()
        .filter_map(|f| std::fs::symlink_metadata(f).ok())
        .map(|m| {
            std::time::UNIX_EPOCH + Duration::new(m.ctime().max(0) as u64, m.ctime_nsec() as u32)
        })
        .max();
    if let Some(latest) = latest {
        let ready = latest + RACY;
        if let Ok(wait) = ready.duration_since(std::time::SystemTime::now()) {
            std::thread::sleep(wait.min(RACY));
        }
    }
    let files = files
        .iter()
        .map(|f| {
            FileStat::of(f).ok_or_else(|| {
                Diagnostic::env(format!(
                    "{} vanished right after kiln wrote it",
                    f.display()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let record = Record {
        key: key.to_string(),
        files,
    };
    let path = record_path(store, dest);
    let dir = path.parent().expect("records live in a directory");
    std::fs::create_dir_all(dir)
        .map_err(|e| Diagnostic::io(format!("cannot create {}", dir.display()), e))?;
    let bytes = serde_json::to_vec(&record).expect("export records serialize");
    crate::store::atomic_write(&path, &bytes)
}
