//! Documents attached to an image as OCI 1.1 referrers: each becomes an artifact manifest (`artifactType`
//! the document's media type, an empty config, the document as its one layer, `subject` the image
//! manifest) whose blobs are in the store. An OCI layout lists them in its `index.json` beside the image,
//! marked with `artifactType` and the subject they refer to, so tools can tell them from images (and
//! reach them, as the layout spec requires); a push sends them by digest (`registry::push_referrer`).
//! The subject of a multi-platform image's referrer is a platform manifest that only the layout's image
//! index names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::Image;
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::store::Store;

/// OCI's empty JSON (`{}`), the config of an artifact manifest.
pub const EMPTY_JSON: &str = "application/vnd.oci.empty.v1+json";
/// The annotation on a layout index entry that names the image manifest the referrer refers to.
pub const SUBJECT_ANNOTATION: &str = "vnd.kiln.referrer.subject";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A document to attach: its media type (also the artifact type) and bytes.
pub struct Referrer {
    pub artifact_type: String,
    pub payload: Vec<u8>,
    pub annotations: BTreeMap<String, String>,
}

/// A referrer's artifact manifest, with its blobs in the store.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub manifest: Vec<u8>,
    pub digest: Digest,
    pub artifact_type: String,
    pub annotations: BTreeMap<String, String>,
    /// The config and the layer: (digest, file in the store).
    pub blobs: Vec<(String, PathBuf)>,
}

/// Makes each document an artifact manifest referring to `image`, its blobs put in the store.
pub fn artifacts(store: &Store, image: &Image, referrers: &[Referrer]) -> Result<Vec<Artifact>> {
    let subject = Digest::of(&image.manifest);
    let empty = store.put_blob(b"{}")?;
    let mut out = Vec::new();
    for r in referrers {
        let layer = store.put_blob(&r.payload)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": r.artifact_type,
            "config": {"mediaType": EMPTY_JSON, "digest": empty.to_string(), "size": 2, "data": "e30="},
            "layers": [{
                "mediaType": r.artifact_type,
                "digest": layer.to_string(),
                "size": r.payload.len(),
            }],
            "subject": {
                "mediaType": OCI_MANIFEST,
                "digest": subject.to_string(),
                "size": image.manifest.len(),
            },
            "annotations": r.annotations,
        });
        let bytes = crate::oci::canonical_json(&manifest)
            .map_err(|e| Diagnostic::env(format!("cannot write a referrer manifest: {e}")))?;
        let digest = store.put_blob(&bytes)?;
        out.push(Artifact {
            blobs: vec![
                (empty.to_string(), store.blob_path(&empty)),
                (layer.to_string(), store.blob_path(&layer)),
                (digest.to_string(), store.blob_path(&digest)),
            ],
            manifest: bytes,
            digest,
            artifact_type: r.artifact_type.clone(),
            annotations: r.annotations.clone(),
        });
    }
    Ok(out)
}

/// Adds the referrers of the image `subject` to the OCI layout at `dir` (which holds the image): their
/// blobs, and an index entry each. Entries of earlier referrers of the same subject and artifact type
/// are replaced, and those whose subject the index no longer lists are dropped (their blobs stay, as
/// an image's do when its tag moves).
pub fn add_to_layout(dir: &Path, subject: &Digest, artifacts: &[Artifact]) -> Result<()> {
    let fail =
        |e: std::io::Error| Diagnostic::io(format!("cannot write OCI layout {}", dir.display()), e);
    for a in artifacts {
        for (digest, source) in &a.blobs {
            let dest = crate::oci::blob_path(dir, digest).map_err(fail)?;
            if !crate::oci::file_holds(&dest, digest) {
                copy_blob(source, &dest).map_err(fail)?;
            }
        }
    }
    let index_path = dir.join("index.json");
    let bytes = std::fs::read(&index_path).map_err(fail)?;
    let mut index: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Diagnostic::env(format!("{} is not JSON: {e}", index_path.display())))?;
    let Some(manifests) = index["manifests"].as_array_mut() else {
        return Err(Diagnostic::env(format!(
            "{} has no manifests list",
            index_path.display()
        )));
    };
    // A layout that never held referrers is left as it was written.
    let had_referrers = manifests
        .iter()
        .any(|m| !m["annotations"][SUBJECT_ANNOTATION].is_null());
    if artifacts.is_empty() && !had_referrers {
        return Ok(());
    }
    let images = listed_images(dir, manifests);
    manifests.retain(|m| {
        let Some(of) = m["annotations"][SUBJECT_ANNOTATION].as_str() else {
            return true;
        };
        let replaced = of == subject.as_str()
            && artifacts
                .iter()
                .any(|a| m["artifactType"].as_str() == Some(&a.artifact_type));
        images.iter().any(|i| i == of) && !replaced
    });
    for a in artifacts {
        let mut annotations = a.annotations.clone();
        annotations.insert(SUBJECT_ANNOTATION.into(), subject.to_string());
        manifests.push(json!({
            "mediaType": OCI_MANIFEST,
            "artifactType": a.artifact_type,
            "digest": a.digest.to_string(),
            "size": a.manifest.len(),
            "annotations": annotations,
        }));
    }
    let bytes = crate::oci::canonical_json(&index).map_err(fail)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(fail)?;
    tmp.persist(&index_path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// The image manifests the layout's `index.json` entries `manifests` name: each entry that is no
/// referrer, and the manifests of an image index among them (a multi-platform image's referrers refer
/// to its platforms' manifests, which only the index names).
fn listed_images(dir: &Path, manifests: &[Value]) -> Vec<String> {
    let mut images = Vec::new();
    for m in manifests
        .iter()
        .filter(|m| m["annotations"][SUBJECT_ANNOTATION].is_null())
    {
        let Some(digest) = m["digest"].as_str() else {
            continue;
        };
        images.push(digest.to_string());
        if m["mediaType"] != OCI_INDEX {
            continue;
        }
        let index = crate::oci::blob_path(dir, digest)
            .and_then(std::fs::read)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
        let children = index.as_ref().and_then(|i| i["manifests"].as_array());
        images.extend(
            children
                .into_iter()
                .flatten()
                .filter_map(|c| c["digest"].as_str().map(str::to_string)),
        );
    }
    images
}

/// Pushes `artifacts` (their blobs in the OCI layout at `dir`) to the repository of `name` by digest,
/// each listed among its subject's referrers. Each one's manifest digest and what was done, in words.
pub fn push(
    dir: &Path,
    artifacts: &[Artifact],
    name: &str,
    registry: &crate::registry::Options,
) -> Result<Vec<(String, String)>> {
    let mut pushed = Vec::new();
    for a in artifacts {
        let r = crate::registry::push_referrer(dir, a.manifest.clone(), name, registry)?;
        let listed = match &r.fallback_tag {
            Some(tag) => format!("listed in the referrers tag `{tag}`"),
            None => "listed by the registry's referrers API".to_string(),
        };
        let note = format!(
            "attached {} to {name}: referrer {}, {listed}",
            a.artifact_type, r.digest
        );
        pushed.push((r.digest, note));
    }
    Ok(pushed)
}

/// A blob into a layout: copied, never linked, since the user may change a layout and the store's
/// blobs must not change with it.
fn copy_blob(source: &Path, dest: &Path) -> std::io::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(dest);
    std::fs::copy(source, dest).map(drop)
}
