//! A build for several platforms as one OCI image index: each platform's image (its manifest naming its
//! platform) in an index, written into an OCI layout (directory or tar) or pushed; a docker archive or
//! a daemon holds one platform only, so those outputs are refused, in buildx's words. Each platform's
//! attestations are OCI 1.1 referrers of its own manifest, as a single-platform image's are of its
//! (BuildKit's `unknown/unknown` attestation manifests inside the index are not used): listed beside
//! the index in a layout's `index.json`, and pushed by digest after the index.

use std::path::Path;

use serde_json::{Value, json};

use super::{Image, Output, image_files, ref_name, write_atomically};
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::platform::Platform;
use crate::store::Store;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The index of `images`, one entry per platform, in the order given.
pub fn index(images: &[(Image, Platform)]) -> Vec<u8> {
    let manifests: Vec<Value> = images
        .iter()
        .map(|(image, p)| {
            let mut platform = json!({"architecture": p.arch, "os": p.os});
            if !p.variant.is_empty() {
                platform["variant"] = json!(p.variant);
            }
            json!({
                "mediaType": OCI_MANIFEST,
                "digest": Digest::of(&image.manifest).to_string(),
                "size": image.manifest.len(),
                "platform": platform,
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))
    .expect("JSON values serialize")
}

/// Writes the index of `images` to an image output; returns the index's digest.
pub fn export(
    store: &Store,
    images: &[(Image, Platform)],
    output: &Output,
    names: &[&str],
) -> Result<Digest> {
    let index = index(images);
    match output {
        Output::Oci {
            dest, tar, name, ..
        } => {
            let tag = ref_name(name.as_deref().or(names.first().copied()));
            if !*tar {
                write_layout(dest, store, images, &index, &tag)?;
                return Ok(Digest::of(&index));
            }
            let tmp = store.temp_dir("export-")?;
            let dir = tmp.path().join("layout");
            write_layout(&dir, store, images, &index, &tag)?;
            write_atomically(dest, |f| crate::oci::write_layout_tar(&dir, f))?;
            Ok(Digest::of(&index))
        }
        Output::Docker { .. } | Output::Load { .. } => Err(Diagnostic::input(format!(
            "docker exporter does not currently support exporting manifest lists ({} platforms to {})",
            images.len(),
            output.destination()
        ))
        .help("a docker image is for one platform: build with one --platform for it, or write the index with `-o type=oci,dest=PATH` or `--push`")),
        Output::Local { .. } | Output::Tar { .. } => Err(Diagnostic::input(format!(
            "{} takes one platform's filesystem, and {} platforms are built",
            output.destination(),
            images.len()
        ))
        .help("build with one --platform for a filesystem output")),
    }
}

/// An OCI layout at `dir` whose `index.json` names the index (tagged `tag`), with every blob.
fn write_layout(
    dir: &Path,
    store: &Store,
    images: &[(Image, Platform)],
    index: &[u8],
    tag: &str,
) -> Result<()> {
    let io = |e| Diagnostic::io(format!("cannot write OCI layout {}", dir.display()), e);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io)?;
    let put = |digest: &Digest, bytes: &[u8]| std::fs::write(blobs.join(digest.hex()), bytes);
    for (image, _) in images {
        for (digest, source) in image_files(store, image) {
            let hex = digest.trim_start_matches("sha256:");
            let dest = blobs.join(hex);
            if !dest.exists() {
                std::fs::copy(&source, &dest).map_err(io)?;
            }
        }
        put(&Digest::of(&image.manifest), &image.manifest).map_err(io)?;
    }
    let digest = Digest::of(index);
    put(&digest, index).map_err(io)?;
    let top = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_INDEX,
            "digest": digest.to_string(),
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&top).expect("JSON values serialize"),
    )
    .map_err(io)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
    // Each platform's attestations refer to its manifest, listed beside the index as a
    // single-platform layout lists them beside its image.
    for (image, _) in images {
        super::attach::add_to_layout(dir, &Digest::of(&image.manifest), &image.referrers)?;
    }
    Ok(())
}

/// Pushes the index of `images` to each of `names`: every image's blobs and manifest (by digest), then
/// the index under the name's tag, then each image's attestations by digest as referrers of its
/// manifest; with `sign`, signs the index, each manifest in it and each attestation under each name.
/// Returns the index's digest and what was done, in words.
pub fn push(
    store: &Store,
    images: &[(Image, Platform)],
    names: &[String],
    registry: &crate::registry::Options,
    sign: Option<&crate::sign::SigningKey>,
) -> Result<(Digest, Vec<String>)> {
    let tmp = store.temp_dir("push-")?;
    let dir = tmp.path().join("layout");
    let index = index(images);
    write_layout(&dir, store, images, &index, "latest")?;
    let digest = Digest::of(&index);
    let mut notes = Vec::new();
    for name in names {
        let manifests: Vec<Vec<u8>> = images.iter().map(|(i, _)| i.manifest.clone()).collect();
        crate::registry::push_index(&dir, &manifests, index.clone(), name, registry)?;
        // The index first: the signature of the index covers its manifests (signed recursively).
        let mut signed = vec![digest.to_string()];
        for (image, _) in images {
            for (referrer, note) in super::attach::push(&dir, &image.referrers, name, registry)? {
                notes.push(note);
                signed.push(referrer);
            }
        }
        let Some(key) = sign else { continue };
        for d in &signed {
            notes.extend(crate::sign::sign_pushed(key, &dir, name, d, registry)?);
        }
    }
    Ok((digest, notes))
}
