//! Images kept in the store under a name (`kiln build -t NAME` with no output). Their own layers stay
//! uncompressed there, and unwritten: as docker's and podman's local stores keep a layer as its
//! directory, kiln keeps the layer's snapshot and the digest of its tar, read once (a rebuilt 170 MB
//! layer costs reading it, not writing its tar nor seconds of gzip). When the image leaves the store its
//! tars are written from the snapshots (`stored_image`, checked against the kept digests) and, for a
//! push or an OCI layout, compressed as the build would have compressed them for that output, so it
//! leaves with the manifest a build with the output gives: the compressors are fed the tar in fixed
//! blocks (`layer::compress_tar`), so a blob depends on the tar's bytes alone. A docker-archive or a
//! daemon load takes the tars as they are.

use serde_json::Value;

use super::{Image, Settings, build_image, manifest_bytes};
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::layer::{self, Codec};
use crate::store::{LayerBlob, Leaves, NamedImage, Store};

/// An image as the store keeps it under a name.
pub struct Kept {
    pub image: Image,
    /// Which of its layers leave the store compressed, and how.
    pub leaves: Option<Leaves>,
    /// By manifest position, the snapshot of each layer whose tar is not written (`NamedImage::snapshots`).
    pub snapshots: Vec<Option<String>>,
}

/// The image of `layers` and `config` as the store keeps it under a name, and which of its layers leave
/// it compressed. A base image's layers are kept as they came (a build with an output reuses them so
/// too); the build's own are kept as their snapshots and digests, their tars written when they leave;
/// with `force-compression` or an uncompressed codec asked for, every layer is as the build's settings
/// say.
///
/// `earlier` are the snapshots of the image the name held before, by position: a layer's digest resumes
/// from its earlier one's wherever their tars begin alike (`layer::TarIndex`).
pub fn keep(
    store: &Store,
    layers: &[String],
    config: &Value,
    settings: &Settings,
    earlier: &[Option<String>],
) -> Result<Kept> {
    let Some(codec) = leaving_codec(settings) else {
        let image = build_image(store, layers, config, settings)?;
        return Ok(Kept {
            image,
            leaves: None,
            snapshots: Vec::new(),
        });
    };
    let kept = settings.as_kept();
    digest_unwritten(store, layers, &kept, earlier)?;
    let image = build_image(store, layers, config, &kept)?;
    let snapshots: Vec<Option<String>> = (layers.iter().zip(&image.blobs))
        .map(|(snapshot, blob)| {
            (!store.blob_path(&blob.digest).is_file()).then(|| snapshot.clone())
        })
        .collect();
    let snapshots = match snapshots.iter().any(Option::is_some) {
        true => snapshots,
        false => Vec::new(),
    };
    let own: Vec<usize> = (layers.iter().zip(&image.blobs).enumerate())
        .filter(|(_, (snapshot, blob))| {
            blob.media_type == Codec::Uncompressed.media_type()
                && store.layer_blob(snapshot).map(|b| b.digest) != Some(blob.digest.clone())
        })
        .map(|(i, _)| i)
        .collect();
    let leaves = (!own.is_empty()).then(|| Leaves {
        layers: own,
        codec: codec.to_string(),
        level: settings.level,
    });
    Ok(Kept {
        image,
        leaves,
        snapshots,
    })
}

/// Records the digests of the layers whose tars are not in the store, hashing each without writing it
/// (in parallel, up to `jobs`), and keeps each one's index for the next build of the name.
fn digest_unwritten(
    store: &Store,
    layers: &[String],
    settings: &Settings,
    earlier: &[Option<String>],
) -> Result<()> {
    let missing: Vec<(&String, Option<&String>)> = (layers.iter().enumerate())
        .filter(|(_, s)| super::cached_blob(store, s, settings).is_none())
        .map(|(i, s)| (s, earlier.get(i).and_then(Option::as_ref)))
        .collect();
    let at_once = layer::cores(settings.jobs).min(missing.len()).max(1);
    let done = layer::parallel_map(&missing, at_once, |(snapshot, earlier)| {
        digest_layer(store, snapshot, settings, *earlier)
    });
    done.into_iter().collect()
}

/// The digest `keep` records for the build's own layer `snapshot`, taken as soon as the step that made
/// it committed (`pipeline`), so that hashing it overlaps the steps after it. Nothing when the image
/// would not keep the layer unwritten, or it has its digest already.
pub fn digest_early(
    store: &Store,
    snapshot: &str,
    settings: &Settings,
    earlier: Option<&String>,
) -> Result<()> {
    if leaving_codec(settings).is_none() {
        return Ok(());
    }
    let kept = settings.as_kept();
    match super::cached_blob(store, snapshot, &kept) {
        Some(_) => Ok(()),
        None => digest_layer(store, snapshot, &kept, earlier),
    }
}

fn digest_layer(
    store: &Store,
    snapshot: &str,
    settings: &Settings,
    earlier: Option<&String>,
) -> Result<()> {
    let index = earlier
        .filter(|e| store.snapshot_path(e).is_dir())
        .and_then(|e| store.layer_index(&super::blob_key(e, settings)))
        .and_then(|bytes| layer::TarIndex::from_bytes(&bytes));
    let path = store.snapshot_path(snapshot);
    let (info, made) = layer::layer_digest_indexed(&path, settings.epoch, index.as_ref())
        .map_err(|e| Diagnostic::io(format!("cannot read the layer of {snapshot}"), e))?;
    let key = super::blob_key(snapshot, settings);
    store.put_layer_blob(&key, &super::layer_blob_of(info, settings)?)?;
    store.put_layer_index(&key, &made.to_bytes())
}

/// What an output asks of a kept image's layers as it leaves the store (`-o type=oci,compression=...,
/// compression-level=...,force-compression=...`); what it leaves unset is as the build that kept the
/// image would have written it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Asked {
    pub codec: Option<Codec>,
    pub level: Option<i32>,
    pub force: bool,
}

/// The kept image `image` (read back for `named`) as it leaves the store: the layers kiln kept
/// uncompressed are compressed as `asked`, else as the build would have (once: the blob is kept for the
/// next time), and with `force` every other layer compressed otherwise too, as BuildKit's
/// `force-compression` does; the manifest names them.
pub fn leaving(store: &Store, image: Image, named: &NamedImage, asked: Asked) -> Result<Image> {
    let built = match &named.leaves {
        Some(leaves) => Some((stored_codec(&leaves.codec, named)?, leaves.level)),
        None => None,
    };
    let Some(codec) = asked.codec.or(built.map(|(c, _)| c)) else {
        return Ok(image);
    };
    // A level goes with the codec it was given for.
    let level = match asked.codec {
        Some(_) => asked.level,
        None => asked.level.or(built.and_then(|(_, l)| l)),
    };
    let own = named.leaves.as_ref().map_or(&[][..], |l| &l.layers[..]);
    if let Some(&i) = own.iter().find(|&&i| i >= image.blobs.len()) {
        return Err(Diagnostic::env(format!(
            "the stored image {} has no layer {i}",
            named.name
        )));
    }
    let mut blobs = image.blobs.clone();
    for (i, blob) in blobs.iter_mut().enumerate() {
        let convert = own.contains(&i) || asked.force;
        if convert && blob.media_type != codec.media_type() {
            *blob = compressed(store, blob, (codec, level))?;
        }
    }
    if blobs == image.blobs {
        return Ok(image);
    }
    let manifest: Value = serde_json::from_slice(&image.manifest).map_err(|_| {
        Diagnostic::env(format!(
            "the stored image {} has a bad manifest",
            named.name
        ))
    })?;
    let annotations = serde_json::from_value(manifest["annotations"].clone()).unwrap_or_default();
    let config_size = image.config.len() as u64;
    let manifest = manifest_bytes(&image.config_digest, config_size, &blobs, &annotations)?;
    store.put_blob(&manifest)?;
    Ok(Image {
        blobs,
        manifest,
        ..image
    })
}

/// The codec a kept image's record says its own layers leave in.
fn stored_codec(name: &str, named: &NamedImage) -> Result<Codec> {
    match name {
        "gzip" => Ok(Codec::Gzip),
        "zstd" => Ok(Codec::Zstd),
        other => Err(Diagnostic::env(format!(
            "the stored image {} is to leave as `{other}`, which this kiln does not write",
            named.name
        ))),
    }
}

/// The codec the build's own layers leave the store in, when the store keeps them as tars (unwritten):
/// `None` when the build asks for every layer as it is to be stored (`force-compression`, no codec).
fn leaving_codec(settings: &Settings) -> Option<&'static str> {
    codec_name(settings.codec).filter(|_| !settings.force)
}

fn codec_name(codec: Codec) -> Option<&'static str> {
    match codec {
        Codec::Gzip => Some("gzip"),
        Codec::Zstd => Some("zstd"),
        Codec::Uncompressed => None,
    }
}

/// The layer `blob` compressed as `codec` (from whatever it is compressed with now: the build's own
/// layers are kept as tars, a base image's come as they were pulled), from the store if made before.
fn compressed(
    store: &Store,
    blob: &LayerBlob,
    (codec, level): (Codec, Option<i32>),
) -> Result<LayerBlob> {
    let mut key = format!(
        "tar-{}+{}",
        blob.digest.hex(),
        codec_name(codec).unwrap_or("tar")
    );
    if let Some(level) = level {
        key.push_str(&format!("+level{level}"));
    }
    if let Some(made) = store.layer_blob(&key) {
        return Ok(made);
    }
    let source = store.blob_path(&blob.digest);
    let damaged = |e| {
        Diagnostic::io(
            format!("cannot compress the stored layer {}", blob.digest),
            e,
        )
    };
    let stored =
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&source).map_err(damaged)?);
    let mut tar = layer::decompress(stored, &blob.media_type).map_err(damaged)?;
    let tmp = store.temp_dir("layer-")?;
    let out = tmp.path().join("layer");
    let file =
        std::fs::File::create(&out).map_err(|e| Diagnostic::io("cannot create a layer blob", e))?;
    let threads = layer::cores(0).min(super::ZSTD_WORKERS);
    let info = layer::compress_tar(
        &mut tar,
        (codec, level),
        threads,
        std::io::BufWriter::new(file),
    )
    .map_err(damaged)?;
    if info.diff_id != blob.diff_id.as_str() {
        return Err(Diagnostic::env(format!(
            "the stored layer {} is damaged: its tar's digest is {}",
            blob.digest, info.diff_id
        ))
        .help("build the image again (`kiln build -t NAME ...`)"));
    }
    let bad = |d: &str| Diagnostic::env(format!("layer writer produced a bad digest `{d}`"));
    let made = LayerBlob {
        diff_id: blob.diff_id.clone(),
        digest: crate::digest::Digest::parse(&info.digest).ok_or_else(|| bad(&info.digest))?,
        size: info.size,
        media_type: codec.media_type().to_string(),
        tar_size: Some(info.tar_size),
    };
    store.adopt_blob(&out, &made.digest)?;
    store.put_layer_blob(&key, &made)?;
    Ok(made)
}

/// An image kept in the store, read back from its manifest and config blobs (each checked against its
/// digest), so it is exported with the very digest it was built with.
pub fn stored_image(store: &Store, named: &NamedImage) -> Result<Image> {
    let manifest = &named.manifest;
    let manifest_bytes = store.read_blob(manifest)?;
    let bad = |what: &str| Diagnostic::env(format!("the stored image {manifest} has {what}"));
    let m: Value =
        serde_json::from_slice(&manifest_bytes).map_err(|_| bad("a manifest that is not JSON"))?;
    let config_digest = m["config"]["digest"]
        .as_str()
        .and_then(Digest::parse)
        .ok_or_else(|| bad("no config digest"))?;
    let config = store.read_blob(&config_digest)?;
    let c: Value = serde_json::from_slice(&config).map_err(|_| bad("a config that is not JSON"))?;
    let empty = Vec::new();
    let descriptors = m["layers"].as_array().unwrap_or(&empty);
    let diff_ids = c["rootfs"]["diff_ids"].as_array().unwrap_or(&empty);
    if descriptors.len() != diff_ids.len() {
        return Err(bad("as many diff ids as layers"));
    }
    let mut blobs = Vec::new();
    for (i, (d, diff_id)) in descriptors.iter().zip(diff_ids).enumerate() {
        let digest = d["digest"].as_str().and_then(Digest::parse);
        let diff_id = diff_id.as_str().and_then(Digest::parse);
        let (Some(digest), Some(diff_id)) = (digest, diff_id) else {
            return Err(bad("a layer without a digest"));
        };
        let blob = LayerBlob {
            diff_id,
            digest,
            size: d["size"].as_u64().unwrap_or(0),
            media_type: d["mediaType"].as_str().unwrap_or_default().to_string(),
            tar_size: named.tar_sizes.get(i).copied().flatten(),
        };
        if !store.blob_path(&blob.digest).is_file() {
            match named.snapshots.get(i).cloned().flatten() {
                Some(snapshot) => write_kept_layer(store, &snapshot, &blob, named)?,
                None => return Err(bad(&format!("lost its layer {}", blob.digest))),
            }
        }
        blobs.push(blob);
    }
    Ok(Image {
        blobs,
        snapshots: Vec::new(),
        config,
        config_digest,
        manifest: manifest_bytes,
        descriptor_annotations: Vec::new(),
        referrers: Vec::new(),
    })
}

/// Writes the tar of a kept image's layer that the store holds as `snapshot` alone, as the build that
/// kept it would have written it (its `SOURCE_DATE_EPOCH`), checked against the digest it was kept with.
fn write_kept_layer(
    store: &Store,
    snapshot: &str,
    blob: &LayerBlob,
    named: &NamedImage,
) -> Result<()> {
    let lost = || {
        Diagnostic::env(format!(
            "the stored image {} lost its layer {}",
            named.name, blob.digest
        ))
        .help("build the image again (`kiln build -t NAME ...`)")
    };
    let path = store.snapshot_path(snapshot);
    if blob.media_type != layer::Codec::Uncompressed.media_type() || !path.is_dir() {
        return Err(lost());
    }
    let tmp = store.temp_dir("layer-")?;
    let out = tmp.path().join("layer.tar");
    let file =
        std::fs::File::create(&out).map_err(|e| Diagnostic::io("cannot create a layer blob", e))?;
    let info = layer::layer_digests(
        &path,
        named.epoch,
        layer::Codec::Uncompressed,
        std::io::BufWriter::new(file),
    )
    .map_err(|e| Diagnostic::io(format!("cannot write the layer of {snapshot}"), e))?;
    if info.digest != blob.digest.as_str() {
        return Err(Diagnostic::env(format!(
            "the stored layer {} of {} is damaged: its tar's digest is {}",
            blob.digest, named.name, info.digest
        ))
        .help("build the image again (`kiln build -t NAME ...`)"));
    }
    store.adopt_blob(&out, &blob.digest)?;
    Ok(())
}
