//! Stage 7, export: a solved image (snapshots plus config) becomes OCI blobs (layer tars, config, manifest)
//! and is written out as an OCI image layout directory or tar.

pub mod layer;

use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, DescriptorBuilder, ImageConfiguration, ImageManifestBuilder, MediaType,
};
use serde_json::{Value, json};

use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::secret::{Leak, LeakScanner};
use crate::store::{LayerBlob, Store};

/// `-o type=...,dest=...`
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// An OCI image layout; a tar of one when `tar` is set (dest ends in `.tar`).
    Oci { dest: PathBuf, tar: bool },
}

/// What was exported: the manifest digest and its size, for the summary line.
pub struct Exported {
    pub manifest: Digest,
    pub layers: usize,
}

/// Builds the image's blobs in the store (reusing any computed before) and writes the requested output.
pub fn export(
    store: &Store,
    layers: &[String],
    config: &Value,
    output: &Output,
    tag: Option<&str>,
    epoch: Option<i64>,
) -> Result<Exported> {
    let mut blobs: Vec<LayerBlob> = Vec::new();
    let mut empty = Vec::new();
    for snapshot in layers {
        let path = store.snapshot_path(snapshot);
        let is_empty = std::fs::read_dir(&path)
            .map_err(|e| Diagnostic::io(format!("store snapshot {snapshot} is missing"), e))?
            .next()
            .is_none();
        empty.push(is_empty);
        if !is_empty {
            blobs.push(layer_blob(store, snapshot, epoch)?);
        }
    }
    let config = finish_config(config, &blobs, &empty)?;
    let config_bytes = canonical_json(&config)?;
    let config_digest = store.put_blob(&config_bytes)?;
    let descriptor = |media: MediaType, digest: &Digest, size: u64| -> Result<Descriptor> {
        let d = oci_spec::image::Digest::try_from(digest.as_str())
            .map_err(|e| Diagnostic::env(format!("bad digest {digest}: {e}")))?;
        DescriptorBuilder::default()
            .media_type(media)
            .digest(d)
            .size(size)
            .build()
            .map_err(|e| Diagnostic::env(format!("cannot build a descriptor: {e}")))
    };
    let mut layer_descs = Vec::new();
    for b in &blobs {
        layer_descs.push(descriptor(
            MediaType::from(b.media_type.as_str()),
            &b.digest,
            b.size,
        )?);
    }
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(
            MediaType::ImageConfig,
            &config_digest,
            config_bytes.len() as u64,
        )?)
        .layers(layer_descs)
        .build()
        .map_err(|e| Diagnostic::env(format!("cannot build the manifest: {e}")))?;
    let manifest_bytes = canonical_json(&manifest)?;
    let manifest_digest = Digest::of(&manifest_bytes);
    let mut files: Vec<(String, PathBuf)> = blobs
        .iter()
        .map(|b| (b.digest.to_string(), store.blob_path(&b.digest)))
        .collect();
    files.push((config_digest.to_string(), store.blob_path(&config_digest)));
    match output {
        Output::Oci { dest, tar: false } => {
            crate::oci::write_layout(dest, &manifest_bytes, tag, &files).map_err(|e| {
                Diagnostic::io(format!("cannot write OCI layout {}", dest.display()), e)
            })?;
        }
        Output::Oci { dest, tar: true } => {
            let tmp = store.temp_dir("export-")?;
            let dir = tmp.path().join("layout");
            crate::oci::write_layout(&dir, &manifest_bytes, tag, &files)
                .map_err(|e| Diagnostic::io("cannot write OCI layout", e))?;
            let parent = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let fail = |e| Diagnostic::io(format!("cannot write {}", dest.display()), e);
            let mut file = tempfile::NamedTempFile::new_in(parent).map_err(fail)?;
            crate::oci::write_layout_tar(&dir, &mut file).map_err(fail)?;
            file.persist(dest).map_err(|e| fail(e.error))?;
        }
    }
    Ok(Exported {
        manifest: manifest_digest,
        layers: blobs.len(),
    })
}

/// Where the guard found a secret in a finished image.
pub enum Found {
    /// In the image config (env, labels, history...).
    Config(Leak),
    /// In the layer of `snapshot`, at `path` (inside the image, already redacted).
    Layer {
        leak: Leak,
        snapshot: String,
        path: PathBuf,
    },
}

/// The last check before anything leaves kiln: every layer this build made and the config are searched
/// for the values of every secret given to the build. Layers imported from a base image are not this
/// build's doing and are skipped.
pub fn guard(
    store: &Store,
    layers: &[String],
    config: &Value,
    scanner: &LeakScanner,
) -> Result<Option<Found>> {
    if scanner.is_empty() {
        return Ok(None);
    }
    let bytes = serde_json::to_vec(config).map_err(|e| Diagnostic::env(e.to_string()))?;
    if let Some(leak) = scanner.scan(&bytes) {
        return Ok(Some(Found::Config(leak)));
    }
    for snapshot in layers.iter().filter(|l| !l.starts_with("layer-")) {
        let found = scanner
            .scan_tree(&store.snapshot_path(snapshot))
            .map_err(|e| Diagnostic::io(format!("cannot scan snapshot {snapshot}"), e))?;
        if let Some((leak, path)) = found {
            return Ok(Some(Found::Layer {
                leak,
                snapshot: snapshot.clone(),
                path,
            }));
        }
    }
    Ok(None)
}

/// The blob of one snapshot: from the store if computed before (or kept from an imported image), else made
/// now by streaming the snapshot through tar, SHA-256 and gzip once.
fn layer_blob(store: &Store, snapshot: &str, epoch: Option<i64>) -> Result<LayerBlob> {
    if let Some(b) = store.layer_blob(snapshot) {
        return Ok(b);
    }
    // Clamped times change the bytes, so an epoch gets blobs of its own.
    let key = match epoch {
        Some(t) => format!("{snapshot}@{t}"),
        None => snapshot.to_string(),
    };
    if let Some(b) = store.layer_blob(&key) {
        return Ok(b);
    }
    let tmp = store.temp_dir("layer-")?;
    let gz = tmp.path().join("layer.tar.gz");
    let file =
        std::fs::File::create(&gz).map_err(|e| Diagnostic::io("cannot create a layer blob", e))?;
    let info = layer::layer_digests(
        &store.snapshot_path(snapshot),
        epoch,
        std::io::BufWriter::new(file),
    )
    .map_err(|e| Diagnostic::io(format!("cannot write the layer of {snapshot}"), e))?;
    let bad = |d: &str| Diagnostic::env(format!("layer writer produced a bad digest `{d}`"));
    let blob = LayerBlob {
        diff_id: Digest::parse(&info.diff_id).ok_or_else(|| bad(&info.diff_id))?,
        digest: Digest::parse(&info.digest).ok_or_else(|| bad(&info.digest))?,
        size: info.size,
        media_type: MediaType::ImageLayerGzip.to_string(),
    };
    store.adopt_blob(&gz, &blob.digest)?;
    store.put_layer_blob(&key, &blob)?;
    Ok(blob)
}

/// Adds `rootfs` and marks history entries whose layer turned out empty (such layers are left out, as
/// BuildKit does), then checks the result against the OCI config schema.
fn finish_config(config: &Value, blobs: &[LayerBlob], empty: &[bool]) -> Result<Value> {
    let mut config = config.clone();
    config["rootfs"] = json!({
        "type": "layers",
        "diff_ids": blobs.iter().map(|b| b.diff_id.as_str()).collect::<Vec<_>>(),
    });
    if let Some(history) = config["history"].as_array_mut() {
        let mut layer = 0;
        for entry in history.iter_mut() {
            if entry["empty_layer"].as_bool() == Some(true) {
                continue;
            }
            if empty.get(layer) == Some(&true) {
                entry["empty_layer"] = json!(true);
            }
            layer += 1;
        }
    }
    let typed: ImageConfiguration = serde_json::from_value(config.clone())
        .map_err(|e| Diagnostic::env(format!("the image config is not valid OCI: {e}")))?;
    serde_json::to_value(&typed).map_err(|e| Diagnostic::env(e.to_string()))
}

/// JSON with sorted keys (serde_json's map is ordered), so equal content gives equal digests.
fn canonical_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    let value = serde_json::to_value(v).map_err(|e| Diagnostic::env(e.to_string()))?;
    serde_json::to_vec(&value).map_err(|e| Diagnostic::env(e.to_string()))
}
