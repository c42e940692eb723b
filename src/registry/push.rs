//! Pushing: a layout's image, or any manifest and its blobs, sending only what the registry lacks.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use oci_client::RegistryOperation;
use oci_client::errors::OciDistributionError;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

use super::auth::Options;
use super::client::{Session, block_on};
use super::reference::ImageName;
use super::{OCI_MANIFEST, UPLOAD_CHUNK};
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;

/// What a push did.
pub(crate) struct Pushed {
    /// The manifest's digest.
    pub digest: String,
    /// The tag already named this manifest, so nothing was uploaded.
    pub unchanged: bool,
}

/// Pushes the manifest `manifest` and every blob it names (config and layers, read from the OCI layout
/// at `layout`) to `reference`, sending only the blobs the registry lacks. Unlike `push`, the manifest
/// need not describe an image (a kiln cache's config is not an image config). Returns its digest.
pub(crate) fn push_manifest(
    layout: &Path,
    manifest: Vec<u8>,
    reference: &str,
    opts: &Options,
) -> Result<String> {
    let name = ImageName::parse(reference)?;
    if name.digest.is_some() {
        return Err(Diagnostic::input(format!(
            "cannot push to `{reference}`: a push names a tag, not a digest"
        ))
        .help("drop the `@sha256:...` part"));
    }
    let json: Value = serde_json::from_slice(&manifest)
        .map_err(|e| Diagnostic::env(format!("cannot push `{reference}`: bad manifest: {e}")))?;
    let mut blobs = Vec::new();
    for d in std::iter::once(&json["config"]).chain(json["layers"].as_array().into_iter().flatten())
    {
        match (d["digest"].as_str(), d["size"].as_u64()) {
            (Some(digest), Some(size)) => blobs.push((digest.to_string(), size)),
            _ => {
                return Err(Diagnostic::env(format!(
                    "cannot push `{reference}`: the manifest has a descriptor without digest or size"
                )));
            }
        }
    }
    let digest = Digest::of(&manifest).to_string();
    block_on(push_async(name, layout, blobs, manifest, digest, opts)).map(|p| p.digest)
}

/// Pushes the image tagged `tag` in the OCI layout at `layout` to `reference`: the blobs the registry
/// lacks (each file streamed and hashed on the way), then the manifest unless the tag already names it.
pub(crate) fn push(
    layout: &Path,
    tag: Option<&str>,
    reference: &str,
    opts: &Options,
) -> Result<Pushed> {
    let name = ImageName::parse(reference)?;
    if name.digest.is_some() {
        return Err(Diagnostic::input(format!(
            "cannot push to `{reference}`: a push names a tag, not a digest"
        ))
        .help("drop the `@sha256:...` part"));
    }
    let image = crate::oci::read_image(layout, tag).map_err(|e| {
        Diagnostic::env(format!(
            "cannot push `{reference}`: cannot read {}: {e}",
            layout.display()
        ))
    })?;
    let manifest_path = crate::oci::verify_blob(layout, &image.manifest_digest, None)
        .map_err(|e| Diagnostic::env(format!("cannot push `{reference}`: {e}")))?;
    let manifest = std::fs::read(&manifest_path)
        .map_err(|e| Diagnostic::io(format!("cannot read {}", manifest_path.display()), e))?;
    let mut blobs = vec![(image.config_digest.clone(), image.manifest.config().size())];
    for l in image.manifest.layers() {
        blobs.push((l.digest().to_string(), l.size()));
    }
    block_on(push_async(
        name,
        layout,
        blobs,
        manifest,
        image.manifest_digest,
        opts,
    ))
}

async fn push_async(
    name: ImageName,
    layout: &Path,
    blobs: Vec<(String, u64)>,
    manifest: Vec<u8>,
    manifest_digest: String,
    opts: &Options,
) -> Result<Pushed> {
    let s = Session::open(name, opts, RegistryOperation::Push).await?;
    let reference = s.name.oci();
    for (digest, size) in &blobs {
        let what = format!("blob {digest}");
        if s.retry(&what, || s.client.blob_exists(&reference, digest))
            .await?
        {
            continue;
        }
        let path = crate::oci::blob_path(layout, digest)
            .map_err(|e| Diagnostic::env(format!("cannot push `{}`: {e}", s.name)))?;
        s.retry(&what, || async {
            let stream = upload_stream(path.clone(), digest.clone()).await?;
            s.client
                .push_blob_stream(&reference, stream, digest, Some(*size))
                .await
        })
        .await?;
    }
    let json: Value = serde_json::from_slice(&manifest).map_err(|e| {
        Diagnostic::env(format!(
            "cannot push `{}`: the manifest is not JSON: {e}",
            s.name
        ))
    })?;
    let media_type = json["mediaType"]
        .as_str()
        .unwrap_or(OCI_MANIFEST)
        .to_string();
    // Checked here so that the header conversion below cannot fail.
    if !media_type.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Diagnostic::env(format!(
            "cannot push `{}`: manifest media type `{media_type}` is not a header value",
            s.name
        )));
    }
    // A tag that already names this very manifest needs no PUT (the blobs were all there too, as the
    // manifest names them). Any failure to tell just means the manifest is put.
    let current = s
        .client
        .fetch_manifest_digest(&reference, &s.creds.auth)
        .await
        .ok();
    if current.as_deref() == Some(manifest_digest.as_str()) {
        return Ok(Pushed {
            digest: manifest_digest,
            unchanged: true,
        });
    }
    let body = Bytes::from(manifest);
    s.retry("manifest", || {
        let content_type = media_type.parse().expect("visible ASCII is a header value");
        s.client
            .push_manifest_raw(&reference, body.clone(), content_type)
    })
    .await?;
    Ok(Pushed {
        digest: manifest_digest,
        unchanged: false,
    })
}

/// A layer file as a stream of chunks, hashed as it is read: a file that does not match its digest ends
/// the stream with an error, so the upload is never committed.
async fn upload_stream(
    path: PathBuf,
    digest: String,
) -> std::result::Result<
    impl futures_util::Stream<Item = std::result::Result<Bytes, OciDistributionError>> + Send + 'static,
    OciDistributionError,
> {
    let file = tokio::fs::File::open(&path).await?;
    let state = Some((file, Sha256::new()));
    Ok(futures_util::stream::unfold(state, move |state| {
        let digest = digest.clone();
        async move {
            let (mut file, mut hasher) = state?;
            let mut chunk = BytesMut::with_capacity(UPLOAD_CHUNK);
            while chunk.len() < UPLOAD_CHUNK {
                match file.read_buf(&mut chunk).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Some((Err(e.into()), None)),
                }
            }
            if chunk.is_empty() {
                let actual = Digest::from_hasher(hasher);
                if actual.as_str() != digest {
                    let msg =
                        format!("blob {digest} in the layout is corrupt (its content is {actual})");
                    return Some((Err(OciDistributionError::GenericError(Some(msg))), None));
                }
                return None;
            }
            hasher.update(&chunk);
            Some((Ok(chunk.freeze()), Some((file, hasher))))
        }
    }))
}
