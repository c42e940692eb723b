//! Shared caches (`--cache-from`, and the format `--cache-to` writes): a cache is an OCI manifest whose
//! config blob (`CONFIG_MEDIA_TYPE`) maps cache keys to records (layers, times, base config, the leak
//! guard's verdicts) and whose layers are the records' layer blobs, exactly as the images were exported.
//! It lives in a registry (`type=registry,ref=...`) or an OCI layout directory (`type=local,src=...`).
//!
//! Import is lazy: loading reads only the manifest and the config. A record found there is a cache hit
//! without any blob moving; a layer is fetched and unpacked only when something needs its files (a step
//! runs on it, a COPY or bind mount reads it, or it is in the exported image), and is then recorded with
//! the very blob it came from, so re-exporting gives byte-identical layers and the same image digest.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{CACHE_DOMAIN, Executor};
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::store::{CacheRecord, LayerBlob, Store};

/// The media type of a kiln cache's config blob (BuildKit's is `application/vnd.buildkit.cacheconfig.v0`).
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cacheconfig.v0+json";
/// The manifest's `artifactType`, so registries and tools can tell a cache from an image.
pub const ARTIFACT_TYPE: &str = "application/vnd.kiln.cache.v0";

/// A cache's config blob.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheConfig {
    /// `solve::CACHE_DOMAIN` of the kiln that wrote it: keys of another domain never match, so such a
    /// cache is ignored whole.
    pub domain: String,
    /// Every snapshot the records name: its layer blob, or `None` for an empty layer (which has no blob).
    pub layers: std::collections::BTreeMap<String, Option<LayerBlob>>,
    pub records: Vec<CacheRecord>,
    /// Exported cache mounts' contents, by mount id (`cache-mounts=true`, or `export=true` on a mount).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub mounts: std::collections::BTreeMap<String, MountRecord>,
}

/// A cache mount's contents as exported: its files split into groups by a stable function of their
/// path, each group one gzip layer blob, so a changed file changes only its group's blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub groups: Vec<MountGroup>,
}

/// One group of a cache mount's files: `dirs` (every directory, and nothing else), `gNN` (the small
/// files whose path hashes to NN) or `file-<hash of the path>` (one large file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountGroup {
    pub name: String,
    pub blob: LayerBlob,
    /// Each file of the group by path: a regular file's content digest, or `symlink:` and its target.
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, String>,
}

/// Where a cache is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `type=registry,ref=HOST/REPO:TAG`
    Registry(String),
    /// `type=local,src=DIR[,tag=TAG]`: an OCI image layout.
    Local { dir: PathBuf, tag: String },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Registry(r) => write!(f, "type=registry,ref={r}"),
            Source::Local { dir, .. } => write!(f, "type=local,src={}", dir.display()),
        }
    }
}

/// The records of every `--cache-from` cache, and where their layers can be fetched.
#[derive(Default)]
pub struct Imported {
    sources: Vec<Source>,
    records: HashMap<Digest, CacheRecord>,
    /// Snapshot → its blob (`None`: empty) and the source that has it.
    layers: HashMap<String, (Option<LayerBlob>, usize)>,
    registry: crate::registry::Options,
    /// Exported cache mounts by id, and the source that has their blobs.
    mounts: HashMap<String, (MountRecord, usize)>,
    /// Records handed out as hits, so the driver can keep the materialized ones in the local store.
    hits: Mutex<HashSet<Digest>>,
    /// One lock per snapshot being materialized, so two steps needing it unpack it once.
    busy: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Imported {
    /// Reads each source's manifest and config. A source that cannot be read is reported through `warn`
    /// and skipped, as BuildKit does: a missing cache makes a slower build, not a failed one.
    pub fn load(
        store: &Store,
        sources: &[Source],
        registry: &crate::registry::Options,
        warn: &dyn Fn(String),
    ) -> Imported {
        let mut imported = Imported {
            registry: registry.clone(),
            ..Imported::default()
        };
        for source in sources {
            let config = match read_config(store, source, registry) {
                Ok(c) => c,
                Err(e) => {
                    warn(format!("cache {source} not used: {}", e.message));
                    continue;
                }
            };
            if config.domain != CACHE_DOMAIN {
                warn(format!(
                    "cache {source} not used: it was written for cache keys `{}`, this kiln uses `{CACHE_DOMAIN}`",
                    config.domain
                ));
                continue;
            }
            let index = imported.sources.len();
            imported.sources.push(source.clone());
            let mut dropped = 0;
            for (snapshot, blob) in &config.layers {
                if valid_snapshot(snapshot) && blob.as_ref().is_none_or(valid_blob) {
                    imported
                        .layers
                        .entry(snapshot.clone())
                        .or_insert((blob.clone(), index));
                }
            }
            for rec in config.records {
                let known = rec.layers.iter().all(|l| {
                    config
                        .layers
                        .get(l)
                        .is_some_and(|b| valid_snapshot(l) && b.as_ref().is_none_or(valid_blob))
                });
                if known && rec.times.len() <= rec.layers.len() {
                    imported.records.entry(rec.key.clone()).or_insert(rec);
                } else {
                    dropped += 1;
                }
            }
            for (id, mount) in config.mounts {
                if mount
                    .groups
                    .iter()
                    .all(|g| valid_blob(&g.blob) && valid_group(&g.name))
                {
                    imported.mounts.entry(id).or_insert((mount, index));
                } else {
                    dropped += 1;
                }
            }
            if dropped > 0 {
                warn(format!(
                    "cache {source}: {dropped} malformed records ignored"
                ));
            }
        }
        imported
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The record for `key`, if a cache has one that can stand in for a step mounting the secrets
    /// `mounted`: it must carry the leak guard's verdict for each of them (see `export::cache`).
    pub fn get(&self, key: &Digest, mounted: &[&str]) -> Option<CacheRecord> {
        let rec = self.records.get(key)?;
        if !mounted
            .iter()
            .all(|id| rec.secrets.iter().any(|v| v.id == *id))
        {
            return None;
        }
        self.hits.lock().expect("hits lock").insert(key.clone());
        Some(rec.clone())
    }

    /// The blob of an imported snapshot (`Some(None)` for an empty layer), if a cache has it.
    pub fn layer(&self, snapshot: &str) -> Option<Option<LayerBlob>> {
        self.layers.get(snapshot).map(|(b, _)| b.clone())
    }

    /// Brings the blob of an imported layer into the store (a no-op when it is there).
    pub fn fetch(&self, store: &Store, blob: &LayerBlob, snapshot: &str) -> Result<PathBuf> {
        let (_, source) = self.layers.get(snapshot).ok_or_else(|| {
            Diagnostic::env(format!("snapshot {snapshot} is in no imported cache"))
        })?;
        self.fetch_from(store, blob, *source)
    }

    /// The exported contents of cache mount `id`, if a cache has them.
    pub fn mount(&self, id: &str) -> Option<&MountRecord> {
        self.mounts.get(id).map(|(m, _)| m)
    }

    /// Brings every blob of imported cache mount `id` into the store; returns its record.
    pub fn fetch_mount(&self, store: &Store, id: &str) -> Result<Option<MountRecord>> {
        let Some((mount, source)) = self.mounts.get(id) else {
            return Ok(None);
        };
        let missing: Vec<(Digest, u64)> = mount
            .groups
            .iter()
            .filter(|g| !store.blob_path(&g.blob.digest).is_file())
            .map(|g| (g.blob.digest.clone(), g.blob.size))
            .collect();
        if let (Source::Registry(reference), false) = (&self.sources[*source], missing.is_empty()) {
            crate::registry::fetch_blobs(store, reference, &missing, &self.registry)?;
        }
        for g in &mount.groups {
            self.fetch_from(store, &g.blob, *source)?;
        }
        Ok(Some(mount.clone()))
    }

    /// Fills the new, empty directory `dest` of cache mount `id` with its imported contents: the files'
    /// groups, then the directories (whose times the files would otherwise bump). Each blob's diff id is
    /// checked against the cache's word for it. Returns whether a cache had the mount.
    pub fn seed_mount<E: Executor>(
        &self,
        store: &Store,
        exec: &E,
        id: &str,
        dest: &Path,
    ) -> Result<bool> {
        let Some(mount) = self.fetch_mount(store, id)? else {
            return Ok(false);
        };
        let (dirs, files): (Vec<&MountGroup>, Vec<&MountGroup>) =
            mount.groups.iter().partition(|g| g.name == "dirs");
        for g in files.into_iter().chain(dirs) {
            let path = store.blob_path(&g.blob.digest);
            check_diff_id(&path, &g.blob)?;
            exec.unpack(&path, &g.blob.media_type, dest)?;
        }
        Ok(true)
    }

    fn fetch_from(&self, store: &Store, blob: &LayerBlob, source: usize) -> Result<PathBuf> {
        let path = store.blob_path(&blob.digest);
        if path.is_file() {
            return Ok(path);
        }
        match &self.sources[source] {
            Source::Registry(reference) => crate::registry::fetch_blobs(
                store,
                reference,
                &[(blob.digest.clone(), blob.size)],
                &self.registry,
            )?,
            Source::Local { dir, .. } => {
                let file = crate::oci::verify_blob(dir, blob.digest.as_str(), Some(blob.size))
                    .map_err(|e| {
                        Diagnostic::input(format!("cache type=local,src={}: {e}", dir.display()))
                    })?;
                store.import_blob(&file, &blob.digest)?;
            }
        }
        Ok(path)
    }

    /// Makes sure every snapshot of `layers` exists in the store, fetching and unpacking the imported
    /// ones that do not. Each unpacked layer's diff id is checked against the cache's word for it, and the
    /// blob is recorded as the snapshot's layer blob, so exports reuse it byte for byte.
    pub fn materialize<E: Executor>(
        &self,
        store: &Store,
        exec: &E,
        layers: &[String],
    ) -> Result<()> {
        // The missing blobs of each registry in one session, downloaded side by side.
        let mut wanted: HashMap<usize, Vec<(Digest, u64)>> = HashMap::new();
        for snapshot in layers {
            if let Some((Some(blob), source)) = self.layers.get(snapshot)
                && !store.snapshot_path(snapshot).is_dir()
                && !store.blob_path(&blob.digest).is_file()
                && matches!(self.sources[*source], Source::Registry(_))
            {
                wanted
                    .entry(*source)
                    .or_default()
                    .push((blob.digest.clone(), blob.size));
            }
        }
        for (source, blobs) in wanted {
            if let Source::Registry(reference) = &self.sources[source] {
                crate::registry::fetch_blobs(store, reference, &blobs, &self.registry)?;
            }
        }
        for snapshot in layers {
            if store.snapshot_path(snapshot).is_dir() {
                continue;
            }
            let Some((blob, _)) = self.layers.get(snapshot) else {
                return Err(
                    Diagnostic::env(format!("store snapshot {snapshot} is missing"))
                        .help("a concurrent `kiln prune` may have removed it; build again"),
                );
            };
            let lock = self
                .busy
                .lock()
                .expect("busy lock")
                .entry(snapshot.clone())
                .or_default()
                .clone();
            let _held = lock.lock().expect("snapshot lock");
            if store.snapshot_path(snapshot).is_dir() {
                continue;
            }
            let tmp = store.temp_dir("unpack-")?;
            let dest = tmp.path().join("layer");
            std::fs::create_dir(&dest)
                .map_err(|e| Diagnostic::io("cannot create a snapshot", e))?;
            if let Some(blob) = blob {
                let path = self.fetch(store, blob, snapshot)?;
                check_diff_id(&path, blob)?;
                exec.unpack(&path, &blob.media_type, &dest)?;
                store.commit_snapshot(&dest, snapshot)?;
                if store.layer_blob(snapshot).is_none() {
                    store.put_layer_blob(snapshot, blob)?;
                }
            } else {
                store.commit_snapshot(&dest, snapshot)?;
            }
        }
        Ok(())
    }

    /// Writes every record handed out as a hit whose snapshots are all in the store now into the local
    /// cache index, so the next build hits locally. Returns how many were kept.
    pub fn keep_hits(&self, store: &Store) -> Result<usize> {
        let hits: Vec<Digest> = self
            .hits
            .lock()
            .expect("hits lock")
            .iter()
            .cloned()
            .collect();
        let mut kept = 0;
        for key in hits {
            let rec = &self.records[&key];
            if rec.layers.iter().all(|l| store.snapshot_path(l).is_dir())
                && store.cache_get(&key).is_none()
            {
                store.cache_put(rec)?;
                kept += 1;
            }
        }
        Ok(kept)
    }
}

/// A cached blob's uncompressed tar must be the one its cache names.
fn check_diff_id(path: &Path, blob: &LayerBlob) -> Result<()> {
    let diff_id = diff_id(path, &blob.media_type)
        .map_err(|e| Diagnostic::env(format!("cannot read cached layer {}: {e}", blob.digest)))?;
    if diff_id != blob.diff_id {
        return Err(Diagnostic::env(format!(
            "cached layer {} is not what its cache says: its diff id is {diff_id}, not {}",
            blob.digest, blob.diff_id
        ))
        .help("the cache is corrupt; rebuild without --cache-from, or export it again"));
    }
    Ok(())
}

/// A cache mount group's name is one kiln writes: `dirs`, `gNN`, or `file-` and a hex digest.
fn valid_group(name: &str) -> bool {
    let hex = |h: &str| {
        h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    name == "dirs"
        || name
            .strip_prefix('g')
            .is_some_and(|h| h.len() == 2 && hex(h))
        || name
            .strip_prefix("file-")
            .is_some_and(|h| h.len() == 64 && hex(h))
}

/// Snapshot names are the store's own (`layer-<diff id hex>`, `step-<key hex>[-<n>]`): a cache from
/// elsewhere must not name a path.
fn valid_snapshot(name: &str) -> bool {
    let hex = |h: &str| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let rerun =
        |n: &str| !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit());
    if let Some(h) = name.strip_prefix("layer-") {
        return hex(h);
    }
    name.strip_prefix("step-")
        .is_some_and(|rest| match rest.split_once('-') {
            Some((h, n)) => hex(h) && rerun(n),
            None => hex(rest),
        })
}

fn valid_blob(b: &LayerBlob) -> bool {
    [
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ]
    .contains(&b.media_type.as_str())
}

/// Opens a layer blob decompressed, by its media type.
pub fn open_layer(path: &Path, media_type: &str) -> std::io::Result<Box<dyn std::io::Read>> {
    let file = std::io::BufReader::new(std::fs::File::open(path)?);
    Ok(if media_type.ends_with("+zstd") {
        Box::new(zstd::stream::read::Decoder::with_buffer(file)?)
    } else if media_type.ends_with("gzip") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

/// The digest of a layer blob's uncompressed tar.
fn diff_id(path: &Path, media_type: &str) -> std::io::Result<Digest> {
    let mut reader = open_layer(path, media_type)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Digest::from_hasher(hasher))
}

/// Reads one blob of a cache, given its digest and size.
type BlobReader<'a> = dyn Fn(&Digest, u64) -> Result<Vec<u8>> + 'a;

/// Reads a cache's config: its manifest from the registry or the layout, then the config blob.
fn read_config(
    store: &Store,
    source: &Source,
    registry: &crate::registry::Options,
) -> Result<CacheConfig> {
    let (manifest, read_blob): (Vec<u8>, Box<BlobReader>) = match source {
        Source::Registry(reference) => {
            let manifest = crate::registry::fetch_manifest(reference, registry)?;
            let reference = reference.clone();
            let registry = registry.clone();
            (
                manifest,
                Box::new(move |d: &Digest, size: u64| {
                    crate::registry::fetch_blobs(
                        store,
                        &reference,
                        &[(d.clone(), size)],
                        &registry,
                    )?;
                    store.read_blob(d)
                }),
            )
        }
        Source::Local { dir, tag } => {
            let manifest = local_manifest(dir, tag)
                .map_err(|e| Diagnostic::input(format!("cannot read {}: {e}", dir.display())))?;
            let dir = dir.clone();
            (
                manifest,
                Box::new(move |d: &Digest, size: u64| {
                    let path = crate::oci::verify_blob(&dir, d.as_str(), Some(size))
                        .map_err(|e| Diagnostic::input(e.to_string()))?;
                    std::fs::read(&path).map_err(|e| Diagnostic::io("cannot read the cache", e))
                }),
            )
        }
    };
    let json: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| Diagnostic::input(format!("its manifest is not JSON: {e}")))?;
    let config = &json["config"];
    if config["mediaType"] != CONFIG_MEDIA_TYPE {
        return Err(Diagnostic::input(format!(
            "it is not a kiln cache (its config is `{}`, not `{CONFIG_MEDIA_TYPE}`)",
            config["mediaType"].as_str().unwrap_or("nothing")
        )));
    }
    let (Some(digest), Some(size)) = (
        config["digest"].as_str().and_then(Digest::parse),
        config["size"].as_u64(),
    ) else {
        return Err(Diagnostic::input(
            "its manifest has no valid config descriptor",
        ));
    };
    let bytes = read_blob(&digest, size)?;
    if Digest::of(&bytes) != digest {
        return Err(Diagnostic::input(format!(
            "its config does not match its digest {digest}"
        )));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| Diagnostic::input(format!("its config is not a kiln cache config: {e}")))
}

/// The manifest tagged `tag` in an OCI layout (or its only manifest), verified against its digest.
fn local_manifest(dir: &Path, tag: &str) -> std::io::Result<Vec<u8>> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)
        .map_err(std::io::Error::other)?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let chosen = manifests
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .or(if manifests.len() == 1 {
            manifests.first()
        } else {
            None
        })
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no manifest tagged `{tag}` in index.json"),
            )
        })?;
    let digest = chosen["digest"].as_str().unwrap_or_default();
    let path = crate::oci::verify_blob(dir, digest, chosen["size"].as_u64())?;
    std::fs::read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_from_a_cache_are_the_stores_own() {
        let hex = "0123456789abcdef".repeat(4);
        assert!(valid_snapshot(&format!("step-{hex}")));
        assert!(valid_snapshot(&format!("layer-{hex}")));
        assert!(valid_snapshot(&format!("step-{hex}-2")));
        for bad in [
            format!("step-{hex}-"),
            format!("step-{hex}-02"),
            format!("step-{hex}-2/.."),
            format!("layer-{hex}-2"),
            "../../etc".to_string(),
            format!("step-{hex}/.."),
            format!("step-{}", hex.to_uppercase()),
            format!("other-{hex}"),
            "step-".to_string(),
        ] {
            assert!(!valid_snapshot(&bad), "{bad}");
        }
    }
}
