//! `--cache-to` of cache mounts' contents (`cache-mounts=true`, or `export=true` on a mount): each mount's
//! files become content-addressed gzip layer blobs in the same cache manifest, listed in its config under
//! the mount's id (`solve::shared_cache::MountRecord`).
//!
//! The split is what makes a second export incremental: a file's group is a stable function of its path
//! (one of `GROUPS` by the path's SHA-256; a file of `BIG` bytes or more is a group of its own), and every
//! directory goes into one `dirs` group, since adding a file bumps its parent's time. Each group's tar is
//! written deterministically, so an unchanged group gives the same blob, by digest, that the registry
//! already holds (and the push skips): only the groups of changed files, and `dirs` when the tree's shape
//! changed, are new blobs.
//!
//! Before a mount goes out, the tar stream of each of its blobs is scanned for the value of every secret
//! given to the build; a mount with a finding is left out whole, with a warning naming the mount only.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::io::Read as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::graph::Dag;
use crate::graph::Op;
use crate::graph::op::{RunMount, Sharing};
use crate::layer;
use crate::secret::LeakScanner;
use crate::solve::shared_cache::{Imported, MountGroup, MountRecord};
use crate::store::{LayerBlob, Store};

/// How many groups a mount's small files are spread over: with a few thousand files, a group holds a
/// few dozen, so one changed file re-uploads little, and a mount makes few enough blobs to push quickly.
const GROUPS: u8 = 64;
/// A file this large is a group of its own: rewriting it must not re-upload its neighbours too.
const BIG: u64 = 1 << 20;
/// Media type of the groups' blobs (gzip, as image layers are by default).
const MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The cache mounts that go out, and why each left out stayed home.
pub struct Mounts {
    pub records: BTreeMap<String, MountRecord>,
    pub warnings: Vec<String>,
}

/// The ids of the cache mounts the build's steps use whose contents go with the cache: all with
/// `cache-mounts=true`, else those marked `export=true`. A mount seeded `from=` a stage is its own cache
/// per seed, whose contents are only meaningful beside that stage's result, so it stays home.
/// With each id, whether a step uses it `sharing=locked` (then the export takes its lock, so that no
/// step of another build writes it meanwhile).
pub fn selected(graph: &Dag, all: bool) -> BTreeMap<String, bool> {
    let mut ids = BTreeMap::new();
    for n in graph.dag.node_indices() {
        if let Op::Run(r) = &graph.dag[n].op {
            for m in &r.mounts {
                if let RunMount::Cache {
                    id,
                    seed: None,
                    export,
                    sharing,
                    ..
                } = m
                    && (all || *export)
                {
                    *ids.entry(id.clone()).or_default() |= *sharing == Sharing::Locked;
                }
            }
        }
    }
    ids
}

/// Packs every selected mount that this store has (or a `--cache-from` cache had, when no step here used
/// it), and leaves out those where a secret of this build is found.
pub fn export(
    store: &Store,
    graph: &Dag,
    all: bool,
    imported: Option<&Imported>,
    scanner: &LeakScanner,
) -> Result<Mounts> {
    let mut out = Mounts {
        records: BTreeMap::new(),
        warnings: Vec::new(),
    };
    for (id, locked) in selected(graph, all) {
        let local = store.cache_mount_dir(&id);
        let record = match &local {
            Some(dir) => match locked_pack(store, &id, dir, locked) {
                Ok(r) => r,
                Err(e) => {
                    out.warnings
                        .push(format!("cache mount `{id}` not exported: {}", e.message));
                    continue;
                }
            },
            // Not used by a step that ran here: what the imported cache had goes on unchanged.
            None => match imported.map(|i| i.fetch_mount(store, &id)).transpose()? {
                Some(Some(r)) => r,
                _ => continue,
            },
        };
        if leaks(store, scanner, &record)? {
            // No copy of the value beyond the mount itself stays behind: the blobs just made go (no other
            // blob can share their bytes, which hold the value).
            for g in &record.groups {
                store.remove_blob(&g.blob.digest)?;
            }
            if let Some(dir) = &local {
                let _ = std::fs::remove_file(dir.with_extension("export.json"));
            }
            out.warnings.push(format!(
                "cache mount `{id}` not exported: it holds the value of a secret given to this build"
            ));
            continue;
        }
        out.records.insert(id, record);
    }
    Ok(out)
}

/// `pack`, holding a locked mount's lock meanwhile.
fn locked_pack(store: &Store, id: &str, dir: &Path, locked: bool) -> Result<MountRecord> {
    let _held = if locked {
        // The mount exists, so the owner given is never used.
        store
            .cache_mount(id, crate::store::Reserve::Wait, (0o755, 0, 0), None)?
            .1
    } else {
        None
    };
    pack(store, dir)
}

/// Whether a secret's value is in any of the mount's blobs (names, contents, link targets, xattrs), read
/// as the tar streams that would leave the machine.
fn leaks(store: &Store, scanner: &LeakScanner, record: &MountRecord) -> Result<bool> {
    if scanner.is_empty() {
        return Ok(false);
    }
    for g in &record.groups {
        let path = store.blob_path(&g.blob.digest);
        let reader = crate::solve::shared_cache::open_layer(&path, &g.blob.media_type)
            .map_err(|e| Diagnostic::io(format!("cannot read blob {}", g.blob.digest), e))?;
        let found = scanner
            .scan_reader(reader)
            .map_err(|e| Diagnostic::io(format!("cannot scan blob {}", g.blob.digest), e))?;
        if found.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The group a non-directory belongs to (see the module's doc).
fn group_of(rel: &[u8], meta: &Metadata) -> String {
    let hash = Sha256::digest(rel);
    if meta.is_file() && meta.len() >= BIG {
        format!("file-{}", hex::encode(hash))
    } else {
        format!("g{:02x}", hash[0] % GROUPS)
    }
}

/// What the last export made of each group of a mount, by the stat data of the group's entries (as
/// git's index): a group whose entries all have the same inode, size, mode, owner, mtime and ctime is
/// neither read nor compressed again. Kept beside the mount (`caches/<hex>.export.json`); a stale or
/// missing one only costs the work it would have saved.
#[derive(Default, Serialize, Deserialize)]
struct Memo {
    groups: BTreeMap<String, (String, MountGroup)>,
}

/// Entries changed this recently are never remembered: a write within the filesystem's timestamp
/// granularity after they were looked at would leave their stat data as it was ("racy git").
const RACY: Duration = Duration::from_secs(2);

/// Splits the mount at `dir` into its groups' blobs, stored in the store's blobs.
fn pack(store: &Store, dir: &Path) -> Result<MountRecord> {
    pack_with(store, dir, RACY)
}

fn pack_with(store: &Store, dir: &Path, racy: Duration) -> Result<MountRecord> {
    let memo_path = dir.with_extension("export.json");
    let memo: Memo = std::fs::read(&memo_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let entries =
        list(dir).map_err(|e| Diagnostic::io(format!("cannot read {}", dir.display()), e))?;
    let recent = SystemTime::now() - racy;
    let made = layer::parallel_map(&entries, 2, |(name, group)| {
        let sig = group.signature();
        match memo.groups.get(name) {
            Some((s, g)) if *s == sig && store.blob_path(&g.blob.digest).is_file() => Ok(g.clone()),
            _ => Ok(MountGroup {
                name: name.clone(),
                files: group.digests(dir)?,
                blob: blob(store, dir, name)?,
            }),
        }
        .map(|g| (sig, group.newest < recent, g))
    });
    let mut record = MountRecord { groups: Vec::new() };
    let mut next = Memo::default();
    for made in made {
        let (sig, settled, group) = made?;
        if settled {
            next.groups.insert(group.name.clone(), (sig, group.clone()));
        }
        record.groups.push(group);
    }
    if let Ok(bytes) = serde_json::to_vec(&next) {
        // Only a cost saver: a memo that cannot be written is no reason to fail the export.
        let _ = crate::store::atomic_write(&memo_path, &bytes);
    }
    Ok(record)
}

/// Writes one group's blob into the store.
fn blob(store: &Store, dir: &Path, name: &str) -> Result<LayerBlob> {
    let tmp = store.temp_dir("mount-")?;
    let gz = tmp.path().join("group.tar.gz");
    let file =
        std::fs::File::create(&gz).map_err(|e| Diagnostic::io("cannot create a layer blob", e))?;
    let takes = |rel: &[u8], meta: &Metadata| group_of(rel, meta) == name;
    let part = layer::Part {
        dirs: name == "dirs",
        takes: &takes,
    };
    let info = layer::part_digests(dir, part, std::io::BufWriter::new(file))
        .map_err(|e| Diagnostic::io(format!("cannot write group {name}"), e))?;
    let bad = |d: &str| Diagnostic::env(format!("layer writer produced a bad digest `{d}`"));
    let blob = LayerBlob {
        diff_id: Digest::parse(&info.diff_id).ok_or_else(|| bad(&info.diff_id))?,
        digest: Digest::parse(&info.digest).ok_or_else(|| bad(&info.digest))?,
        size: info.size,
        media_type: MEDIA_TYPE.to_string(),
        tar_size: Some(info.tar_size),
    };
    store.adopt_blob(&gz, &blob.digest)?;
    Ok(blob)
}

/// The entries of one group: each one's path and stat data, and its newest ctime.
struct Entries {
    items: Vec<(Vec<u8>, Metadata)>,
    newest: SystemTime,
}

impl Entries {
    /// A digest of every entry's path and stat data, in path order.
    fn signature(&self) -> String {
        let mut items: Vec<&(Vec<u8>, Metadata)> = self.items.iter().collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let mut h = Sha256::new();
        for (rel, m) in items {
            h.update((rel.len() as u64).to_le_bytes());
            h.update(rel);
            for n in [
                m.ino(),
                m.size(),
                u64::from(m.mode()),
                u64::from(m.uid()),
                u64::from(m.gid()),
            ] {
                h.update(n.to_le_bytes());
            }
            for t in [m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()] {
                h.update(t.to_le_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    /// Each non-directory by path: a regular file's content digest, or `symlink:` and its target.
    fn digests(&self, dir: &Path) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (rel, meta) in &self.items {
            if meta.is_dir() {
                continue;
            }
            let path = dir.join(std::ffi::OsStr::from_bytes(rel));
            let what = if meta.file_type().is_symlink() {
                std::fs::read_link(&path).map(|t| format!("symlink:{}", t.to_string_lossy()))
            } else if meta.is_file() {
                file_digest(&path, meta)
            } else {
                Ok(format!("special:{:o}", meta.mode()))
            }
            .map_err(|e| Diagnostic::io(format!("cannot read {}", path.display()), e))?;
            out.insert(String::from_utf8_lossy(rel).into_owned(), what);
        }
        Ok(out)
    }
}

/// Every entry under `dir` by group (directories in `dirs`), in group order.
fn list(dir: &Path) -> std::io::Result<Vec<(String, Entries)>> {
    let mut groups: BTreeMap<String, Entries> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1) {
        let entry = entry.map_err(std::io::Error::other)?;
        let meta = entry.metadata().map_err(std::io::Error::other)?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .map_err(std::io::Error::other)?
            .as_os_str()
            .as_bytes()
            .to_vec();
        let name = if meta.is_dir() {
            "dirs".to_string()
        } else {
            group_of(&rel, &meta)
        };
        let ctime = SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(meta.ctime()).unwrap_or(0),
                u32::try_from(meta.ctime_nsec()).unwrap_or(0),
            );
        let group = groups.entry(name).or_insert_with(|| Entries {
            items: Vec::new(),
            newest: SystemTime::UNIX_EPOCH,
        });
        group.newest = group.newest.max(ctime);
        group.items.push((rel, meta));
    }
    Ok(groups.into_iter().collect())
}

fn file_digest(path: &Path, meta: &Metadata) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?.take(meta.len());
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(Digest::from_hasher(hasher).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memo(dir: &Path) -> Memo {
        serde_json::from_slice(&std::fs::read(dir.with_extension("export.json")).unwrap()).unwrap()
    }

    #[test]
    fn only_the_changed_files_group_changes_and_the_memo_never_hides_a_change() {
        let root = tempfile::tempdir().unwrap();
        let store =
            Store::open(&root.path().join("store"), crate::store::Access::Exclusive).unwrap();
        let dir = root.path().join("mount");
        std::fs::create_dir_all(dir.join("d")).unwrap();
        for i in 0..300 {
            let sub = if i % 2 == 0 { "d/" } else { "" };
            std::fs::write(dir.join(format!("{sub}f{i}")), format!("file {i:04}")).unwrap();
        }
        // Fresh entries are not remembered (their stat data may not have settled).
        let first = pack(&store, &dir).unwrap();
        assert!(memo(&dir).groups.is_empty());
        assert!(first.groups.len() > 32, "{}", first.groups.len());
        assert!(first.groups.iter().any(|g| g.name == "dirs"));

        let remembered = pack_with(&store, &dir, Duration::ZERO).unwrap();
        assert_eq!(remembered, first, "the same files give the same blobs");
        assert_eq!(memo(&dir).groups.len(), first.groups.len());
        assert_eq!(pack_with(&store, &dir, Duration::ZERO).unwrap(), first);

        // Same size, same mtime, other content: the ctime still tells.
        std::thread::sleep(Duration::from_millis(50));
        let changed = dir.join("f7");
        let mtime = std::fs::metadata(&changed).unwrap().modified().unwrap();
        std::fs::write(&changed, "file 9999").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&changed)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let after = pack_with(&store, &dir, Duration::ZERO).unwrap();
        let differing: Vec<&MountGroup> = after
            .groups
            .iter()
            .filter(|g| !first.groups.contains(g))
            .collect();
        assert_eq!(differing.len(), 1, "{differing:?}");
        assert_eq!(
            differing[0].files["f7"],
            Digest::of(b"file 9999").to_string()
        );
    }
}
