//! Images kept in the store under a name (`kiln build -t NAME` without an output): a record per name,
//! `names/<sha256 of the name>.json`, pointing at the image's manifest and listing the blobs it needs,
//! so `kiln images`, `kiln image export|push|rm` reach it later and `prune` keeps those blobs.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Store, atomic_write};
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;

/// One name's record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamedImage {
    pub name: String,
    /// The image manifest's digest (its blob is in the store).
    pub manifest: Digest,
    /// The config and layer blobs the manifest names, kept by garbage collection while the name exists.
    pub blobs: Vec<Digest>,
    /// Manifest, config and layer blobs, in bytes, as the store holds them.
    pub size: u64,
    /// When the name was given, in seconds since the epoch.
    pub created: u64,
    /// Each layer's uncompressed tar length where kiln made the blob, in manifest order: a
    /// docker-archive (`--load`) then streams it without spooling it first.
    #[serde(default)]
    pub tar_sizes: Vec<Option<u64>>,
    /// The build's `SOURCE_DATE_EPOCH`, which also dates a docker-archive's entries: an export then
    /// writes the bytes the build would have written.
    #[serde(default)]
    pub epoch: Option<i64>,
    /// The layers kiln keeps uncompressed for this image and how they leave the store compressed
    /// (`export::kept`). `None` in records of earlier kilns, whose layers were all compressed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaves: Option<Leaves>,
    /// By manifest position, the snapshot a layer's blob is made from when it leaves the store (`None`:
    /// the blob is in the store). A layer the build made is kept as its snapshot and its digests, as
    /// docker's and podman's stores keep a layer as its directory: a rebuilt 170 MB layer costs reading
    /// it once for its digest, not writing its tar. Garbage collection keeps these snapshots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<Option<String>>,
}

/// How the uncompressed layers of a kept image are compressed when it leaves the store: as the build
/// that kept it would have compressed them for an output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Leaves {
    /// The layers, by their position in the manifest.
    pub layers: Vec<usize>,
    /// `gzip` or `zstd`.
    pub codec: String,
    /// `compression-level=`, if the build gave one.
    pub level: Option<i32>,
}

impl Store {
    /// The record of `name` (whether or not there is one).
    pub fn name_path(&self, name: &str) -> PathBuf {
        self.root
            .join("names")
            .join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    /// Records `image` under its name, replacing what the name held (written atomically: a crash leaves
    /// the old record or the new one).
    pub fn put_name(&self, image: &NamedImage) -> Result<()> {
        let dir = self.root.join("names");
        fs::create_dir_all(&dir)
            .map_err(|e| Diagnostic::io(format!("cannot create {}", dir.display()), e))?;
        let path = self.name_path(&image.name);
        // The name already holds this very image: the record stays as it is, with the time the name was
        // first given to it, and a rebuild with `-t` writes and syncs nothing.
        let held = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<NamedImage>(&b).ok());
        if let Some(held) = held
            && (NamedImage {
                created: held.created,
                ..image.clone()
            }) == held
        {
            return Ok(());
        }
        let bytes = serde_json::to_vec(image)
            .map_err(|e| Diagnostic::env(format!("cannot encode an image name: {e}")))?;
        atomic_write(&path, &bytes)
    }

    /// The image kept under `name`, if its record and manifest are there.
    pub fn named(&self, name: &str) -> Option<NamedImage> {
        let bytes = fs::read(self.name_path(name)).ok()?;
        let image: NamedImage = serde_json::from_slice(&bytes).ok()?;
        (image.name == name && self.blob_path(&image.manifest).is_file()).then_some(image)
    }

    /// Every named image, by name.
    pub fn names(&self) -> Vec<NamedImage> {
        let mut all: Vec<NamedImage> = fs::read_dir(self.root.join("names"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Forgets a name; its blobs go at the next prune unless another name or a cached result holds them.
    /// Returns whether the name existed.
    pub fn remove_name(&self, name: &str) -> Result<bool> {
        let path = self.name_path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Diagnostic::io(
                format!("cannot remove {}", path.display()),
                e,
            )),
        }
    }

    /// The hex digests of every blob a named image needs, manifests included.
    /// The snapshots named images' unwritten layers are made from.
    pub(super) fn named_snapshots(&self) -> std::collections::HashSet<String> {
        self.names()
            .into_iter()
            .flat_map(|n| n.snapshots.into_iter().flatten())
            .collect()
    }

    pub(super) fn named_blobs(&self) -> std::collections::HashSet<String> {
        self.names()
            .iter()
            .flat_map(|n| n.blobs.iter().chain([&n.manifest]))
            .map(|d| d.hex().to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Access;

    /// A name survives a prune that empties everything else, and its blobs with it; forgetting it lets
    /// the next prune take them.
    #[test]
    fn a_named_images_blobs_outlive_a_prune_until_the_name_goes() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path(), Access::Exclusive).unwrap();
        let config = store.put_blob(b"{\"config\":1}").unwrap();
        let manifest = store.put_blob(b"{\"manifest\":1}").unwrap();
        let stray = store.put_blob(b"nothing holds this").unwrap();
        let image = NamedImage {
            name: "kiln/app:1.0".into(),
            manifest: manifest.clone(),
            blobs: vec![config.clone()],
            size: 28,
            created: 1,
            tar_sizes: Vec::new(),
            snapshots: Vec::new(),
            leaves: None,
            epoch: None,
        };
        store.put_name(&image).unwrap();
        assert_eq!(store.named("kiln/app:1.0"), Some(image.clone()));
        assert_eq!(store.named("kiln/app:2.0"), None);
        store.prune(0).unwrap();
        assert!(store.blob_path(&config).is_file() && store.blob_path(&manifest).is_file());
        assert!(!store.blob_path(&stray).exists());
        assert_eq!(store.names(), [image]);
        assert!(store.remove_name("kiln/app:1.0").unwrap());
        assert!(!store.remove_name("kiln/app:1.0").unwrap());
        store.prune(0).unwrap();
        assert!(!store.blob_path(&config).exists() && !store.blob_path(&manifest).exists());
    }

    /// Naming the same image again keeps the record (and when the name was first given); another
    /// image under the name replaces it.
    #[test]
    fn naming_the_same_image_again_writes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path(), Access::Exclusive).unwrap();
        let manifest = store.put_blob(b"{\"manifest\":1}").unwrap();
        let image = NamedImage {
            name: "kiln/app:1.0".into(),
            manifest,
            blobs: Vec::new(),
            size: 14,
            created: 1,
            tar_sizes: Vec::new(),
            snapshots: Vec::new(),
            leaves: None,
            epoch: None,
        };
        store.put_name(&image).unwrap();
        let path = store.name_path("kiln/app:1.0");
        // A write goes through a new file and a rename: a new inode.
        use std::os::unix::fs::MetadataExt as _;
        let written = fs::metadata(&path).unwrap().ino();
        store
            .put_name(&NamedImage {
                created: 2,
                ..image.clone()
            })
            .unwrap();
        assert_eq!(store.named("kiln/app:1.0"), Some(image.clone()));
        assert_eq!(fs::metadata(&path).unwrap().ino(), written);
        let other = NamedImage {
            manifest: store.put_blob(b"{\"manifest\":2}").unwrap(),
            created: 3,
            ..image
        };
        store.put_name(&other).unwrap();
        assert_ne!(fs::metadata(&path).unwrap().ino(), written);
        assert_eq!(store.named("kiln/app:1.0"), Some(other));
    }
}
