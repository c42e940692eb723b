//! Pushing: a layout's image, or any manifest and its blobs, sending only what the registry lacks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use oci_client::RegistryOperation;
use oci_client::errors::OciDistributionError;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

use super::auth::Options;
use super::client::{Session, block_on};
use super::reference::ImageName;
use super::{OCI_MANIFEST, PARALLEL_UPLOADS, UPLOAD_CHUNK};
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;

/// What a push did.
pub(crate) struct Pushed {
    /// The manifest's digest.
    pub digest: String,
    /// The tag already named this manifest, so nothing was uploaded.
    pub unchanged: bool,
    /// Blobs sent, and blobs mounted from another repository of the registry that an earlier push of
    /// the same batch had sent them to.
    pub uploaded: usize,
    pub mounted: usize,
}

/// Which repository of a registry holds each blob pushed so far, shared by the pushes of one batch. A
/// blob's slot is locked while it is being checked or sent, so that images sharing a layer send it once:
/// the first sends it, the others wait, then mount it from there.
#[derive(Default)]
struct Sent {
    slots: std::sync::Mutex<HashMap<(String, String), Slot>>,
}

/// The repository a blob was sent to, if it was.
type Slot = Arc<tokio::sync::Mutex<Option<String>>>;

impl Sent {
    fn slot(&self, registry: &str, digest: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry((registry.to_string(), digest.to_string()))
            .or_default()
            .clone()
    }
}

/// Pushes each `(layout, reference)` as [`push`] does, `parallel` at a time, in two rounds: every
/// image's blobs first, each blob sent once for the batch (later repositories mount it; a registry that
/// cannot mount is sent it again), then the manifests, so that a batch that fails while uploading names
/// nothing new. Results come in the order of `jobs`; the first failure is the error.
pub(crate) fn push_all(
    jobs: &[(PathBuf, String)],
    opts: &Options,
    parallel: usize,
) -> Result<Vec<Pushed>> {
    use futures_util::StreamExt as _;
    let sent = Sent::default();
    block_on(async {
        let staging = jobs.iter().map(|(layout, reference)| async {
            let (name, blobs, manifest, digest) = read_layout(layout, Some("latest"), reference)?;
            stage(name, layout, blobs, manifest, digest, opts, &sent).await
        });
        let staged: Vec<Result<Staged>> = futures_util::stream::iter(staging)
            .buffered(parallel.max(1))
            .collect()
            .await;
        let staged = staged.into_iter().collect::<Result<Vec<_>>>()?;
        let pushed: Vec<Result<Pushed>> =
            futures_util::stream::iter(staged.into_iter().map(finish))
                .buffered(parallel.max(1))
                .collect()
                .await;
        pushed.into_iter().collect()
    })
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
    let name = tag_reference(reference)?;
    let blobs = manifest_blobs(&manifest, reference)?;
    let digest = Digest::of(&manifest).to_string();
    push_one((name, blobs, manifest, digest), layout, opts).map(|p| p.digest)
}

/// Pushes an image index to `reference`: each image's blobs (from `layout`) and manifest, by digest,
/// then the index under the reference's tag.
pub(crate) fn push_index(
    layout: &Path,
    manifests: &[Vec<u8>],
    index: Vec<u8>,
    reference: &str,
    opts: &Options,
) -> Result<Pushed> {
    let name = tag_reference(reference)?;
    for manifest in manifests {
        let blobs = manifest_blobs(manifest, reference)?;
        let digest = Digest::of(manifest).to_string();
        let mut by_digest = name.clone();
        by_digest.tag = None;
        by_digest.digest = Some(digest.clone());
        block_on(push_async(
            by_digest,
            layout,
            blobs,
            manifest.clone(),
            digest,
            opts,
        ))?;
    }
    let digest = Digest::of(&index).to_string();
    block_on(push_async(name, layout, Vec::new(), index, digest, opts))
}

/// A reference to push to: it names a tag, never a digest.
fn tag_reference(reference: &str) -> Result<ImageName> {
    let name = ImageName::parse(reference)?;
    if name.digest.is_some() {
        return Err(Diagnostic::input(format!(
            "cannot push to `{reference}`: a push names a tag, not a digest"
        ))
        .help("drop the `@sha256:...` part"));
    }
    Ok(name)
}

/// The blobs a manifest names (its config, then its layers), each with its size.
fn manifest_blobs(manifest: &[u8], reference: &str) -> Result<Vec<(String, u64)>> {
    let json: Value = serde_json::from_slice(manifest)
        .map_err(|e| Diagnostic::env(format!("cannot push `{reference}`: bad manifest: {e}")))?;
    std::iter::once(&json["config"])
        .chain(json["layers"].as_array().into_iter().flatten())
        .map(|d| match (d["digest"].as_str(), d["size"].as_u64()) {
            (Some(digest), Some(size)) => Ok((digest.to_string(), size)),
            _ => Err(Diagnostic::env(format!(
                "cannot push `{reference}`: the manifest has a descriptor without digest or size"
            ))),
        })
        .collect()
}

/// Pushes the image tagged `tag` in the OCI layout at `layout` to `reference`: the blobs the registry
/// lacks (each file streamed and hashed on the way), then the manifest unless the tag already names it.
pub(crate) fn push(
    layout: &Path,
    tag: Option<&str>,
    reference: &str,
    opts: &Options,
) -> Result<Pushed> {
    push_one(read_layout(layout, tag, reference)?, layout, opts)
}

/// One push on its own: its blobs, then its manifest.
fn push_one(prepared: Prepared, layout: &Path, opts: &Options) -> Result<Pushed> {
    let (name, blobs, manifest, digest) = prepared;
    block_on(async {
        let sent = Sent::default();
        finish(stage(name, layout, blobs, manifest, digest, opts, &sent).await?).await
    })
}

/// What pushing the image tagged `tag` in `layout` to `reference` takes: the parsed name, the blobs
/// (config and layers, with sizes), the manifest and its digest.
type Prepared = (ImageName, Vec<(String, u64)>, Vec<u8>, String);

fn read_layout(layout: &Path, tag: Option<&str>, reference: &str) -> Result<Prepared> {
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
    Ok((name, blobs, manifest, image.manifest_digest))
}

/// One manifest and its blobs pushed on their own (an attestation's artifact, pushed by digest).
pub(super) async fn push_async(
    name: ImageName,
    layout: &Path,
    blobs: Vec<(String, u64)>,
    manifest: Vec<u8>,
    manifest_digest: String,
    opts: &Options,
) -> Result<Pushed> {
    let sent = Sent::default();
    finish(stage(name, layout, blobs, manifest, manifest_digest, opts, &sent).await?).await
}

/// A push whose blobs are all in the registry, its manifest not put yet.
struct Staged {
    s: Session,
    manifest: Vec<u8>,
    manifest_digest: String,
    uploaded: usize,
    mounted: usize,
}

/// Sends the blobs the registry lacks, `PARALLEL_UPLOADS` at a time (mounting those another repository
/// of it has: one this batch sent them to, or the one they were pulled from).
async fn stage(
    name: ImageName,
    layout: &Path,
    blobs: Vec<(String, u64)>,
    manifest: Vec<u8>,
    manifest_digest: String,
    opts: &Options,
    sent: &Sent,
) -> Result<Staged> {
    use futures_util::{StreamExt as _, TryStreamExt as _};
    let s = Session::open(name, opts, RegistryOperation::Push).await?;
    let sources = opts.sources.as_deref();
    let outcomes: Vec<Outcome> = futures_util::stream::iter(
        blobs
            .iter()
            .map(|(digest, size)| send_blob(&s, layout, digest, *size, sources, sent)),
    )
    .buffer_unordered(PARALLEL_UPLOADS)
    .try_collect()
    .await?;
    let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
    Ok(Staged {
        manifest,
        manifest_digest,
        uploaded: count(Outcome::Uploaded),
        mounted: count(Outcome::Mounted),
        s,
    })
}

/// What became of one blob of a push.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    There,
    Mounted,
    Uploaded,
}

/// One blob: mounted from the repository this batch sent it to, else left alone when the repository
/// has it (HEAD), else mounted from the repository it was pulled from, else sent.
async fn send_blob(
    s: &Session,
    layout: &Path,
    digest: &String,
    size: u64,
    sources: Option<&Path>,
    sent: &Sent,
) -> Result<Outcome> {
    let reference = s.name.oci();
    let slot = sent.slot(&s.name.registry, digest);
    let mut holder = slot.lock().await;
    let batch = holder.clone().filter(|r| *r != s.name.repository);
    if let Some(from) = batch
        && mount(s, &from, digest).await
    {
        return Ok(Outcome::Mounted);
    }
    let what = format!("blob {digest}");
    if s.retry(&what, || s.client.blob_exists(&reference, digest))
        .await?
    {
        holder.get_or_insert_with(|| s.name.repository.clone());
        return Ok(Outcome::There);
    }
    let pulled_from = sources
        .and_then(|dir| super::sources::repository_on(dir, digest, &s.name.registry))
        .filter(|r| *r != s.name.repository);
    if let Some(from) = pulled_from
        && mount(s, &from, digest).await
    {
        *holder = Some(s.name.repository.clone());
        return Ok(Outcome::Mounted);
    }
    let path = crate::oci::blob_path(layout, digest)
        .map_err(|e| Diagnostic::env(format!("cannot push `{}`: {e}", s.name)))?;
    s.retry(&what, || async {
        let stream = upload_stream(path.clone(), digest.clone()).await?;
        s.client
            .push_blob_stream(&reference, stream, digest, Some(size))
            .await
    })
    .await?;
    *holder = Some(s.name.repository.clone());
    Ok(Outcome::Uploaded)
}

/// Asks the registry to mount `digest` from its repository `from` into the session's. A registry that
/// will not (it answers otherwise than 201) has the blob sent instead.
async fn mount(s: &Session, from: &str, digest: &str) -> bool {
    let source = ImageName {
        repository: from.to_string(),
        ..s.name.clone()
    }
    .oci();
    s.client
        .mount_blob(&s.name.oci(), &source, digest)
        .await
        .is_ok()
}

/// Puts a staged push's manifest, unless the tag already names it.
async fn finish(staged: Staged) -> Result<Pushed> {
    let Staged {
        s,
        manifest,
        manifest_digest,
        uploaded,
        mounted,
    } = staged;
    let reference = s.name.oci();
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
            uploaded,
            mounted,
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
        uploaded,
        mounted,
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
