//! Image import: resolves a `FROM` reference to a local OCI layout (pulling registry images into the
//! store), imports its layers as snapshots under a cache key of the manifest digest, and reports the
//! image node to the progress stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use petgraph::stable_graph::NodeIndex;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::key::CACHE_DOMAIN;
use super::schedule::{Output, Shared};
use super::{Executor, shared_cache};
use crate::diag::{Diagnostic, Result};
use crate::digest::{Digest, Encoder};
use crate::platform::Platform;
use crate::progress::{Event, Vertex};
use crate::store::{CacheRecord, LayerBlob, Store};

impl<E: Executor> Shared<E> {
    /// A `FROM` image: imported off the async workers under a `--jobs` permit, reported as run when
    /// anything had to be unpacked and as cached otherwise.
    pub(super) async fn image_node(
        &self,
        n: NodeIndex,
        reference: &str,
        platform: Platform,
        jobs: Arc<Semaphore>,
    ) -> Result<(Digest, Output, Option<bool>)> {
        let node = &self.graph.dag[n];
        let store = self.store.clone();
        let exec = self.exec.clone();
        let no_cache = self.opts.no_cache;
        let registry = self.opts.registry.clone();
        let remote = self.opts.cache_from.clone();
        let reference = reference.to_string();
        let id = self.next_id();
        let name = node.name.clone();
        let started = Instant::now();
        let reporter = self.reporter.clone();
        let _permit = jobs.acquire().await.expect("semaphore open");
        let written = reference.clone();
        let (rec, fresh, manifest) = tokio::task::spawn_blocking(move || {
            import_image(
                &store,
                &*exec,
                &reference,
                &platform,
                no_cache,
                &registry,
                remote.as_deref(),
            )
        })
        .await
        .map_err(|e| Diagnostic::env(format!("image import task failed: {e}")))?
        .map_err(|d| self.located(n, d))?;
        self.resolve(
            n,
            super::Resolved::Image {
                reference: written,
                manifest,
            },
        );
        let vertex = Vertex {
            id,
            name,
            digest: self.graph.dag[n].digest.to_string(),
            at: self.at(n).map(|a| a.to_string()),
        };
        if fresh {
            reporter.event(Event::Started(vertex));
            reporter.event(Event::Done {
                id,
                elapsed: started.elapsed(),
            });
        } else {
            reporter.event(Event::Cached(vertex));
        }
        Ok((rec.key.clone(), Output::Fs(rec), Some(fresh)))
    }
}

/// Resolves an image reference to a local OCI layout (pulling registry images into the store) and imports
/// its layers as snapshots.
/// Returns the record, whether anything had to be unpacked, and the manifest digest it was pinned to.
fn import_image<E: Executor>(
    store: &Store,
    exec: &E,
    reference: &str,
    platform: &Platform,
    no_cache: bool,
    registry: &crate::registry::Options,
    remote: Option<&shared_cache::Imported>,
) -> Result<(CacheRecord, bool, Digest)> {
    // A registry image is pulled into a layout in the store first; from there on both kinds are alike.
    let (dir, tag) = match reference.strip_prefix("oci-layout://") {
        Some(rest) => {
            let (dir, tag) = crate::oci::split_layout_ref(rest);
            (PathBuf::from(dir), tag)
        }
        None => (
            crate::registry::pull(store, reference, platform, registry)?,
            None,
        ),
    };
    let dir = dir.as_path();
    let image = crate::oci::read_image_for(dir, tag, platform).map_err(|e| {
        let d = Diagnostic::input(format!("cannot read base image `{reference}`: {e}"));
        if e.kind() != std::io::ErrorKind::Unsupported {
            return d;
        }
        d.help(format!(
            "build with `--platform` naming a platform the image has, or use a base image (or an \
             image index) for {platform}"
        ))
    })?;
    let manifest = Digest::parse(&image.manifest_digest)
        .ok_or_else(|| Diagnostic::env(format!("bad manifest digest in {}", dir.display())))?;
    let mut key = Encoder::new(CACHE_DOMAIN);
    key.str("image").digest(&manifest);
    let key = key.finish();
    // `--no-cache` re-reads the image; layers stay shared by diff id, so nothing is unpacked twice.
    if !no_cache && let Some(rec) = store.cache_get(&key) {
        return Ok((rec, false, manifest));
    }
    // A shared cache that has the image answers without unpacking anything: layers are unpacked from
    // it only when a step runs on them.
    if !no_cache && let Some(rec) = remote.and_then(|r| r.get(&key, &[])) {
        return Ok((rec, false, manifest));
    }
    // The raw config, not oci-spec's typed one: Docker's extensions (`Healthcheck`, `OnBuild`, `Shell`)
    // are inherited by the stage and would be lost in the round trip. `read_image` verified its digest.
    let base: Value = crate::oci::blob_path(Path::new(dir), &image.config_digest)
        .and_then(std::fs::read)
        .and_then(|b| serde_json::from_slice(&b).map_err(std::io::Error::other))
        .map_err(|e| Diagnostic::input(format!("cannot read the config of `{reference}`: {e}")))?;
    let diff_ids: Vec<String> = image.config.rootfs().diff_ids().clone();
    if diff_ids.len() != image.manifest.layers().len() {
        return Err(Diagnostic::input(format!(
            "base image `{reference}` is inconsistent: {} layers but {} diff ids",
            image.manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (desc, diff_id) in image.manifest.layers().iter().zip(&diff_ids) {
        let diff = Digest::parse(diff_id)
            .ok_or_else(|| Diagnostic::input(format!("bad diff id `{diff_id}`")))?;
        let snapshot = Store::base_layer_id(&diff);
        let digest = Digest::parse(desc.digest().as_ref())
            .ok_or_else(|| Diagnostic::input(format!("bad layer digest `{}`", desc.digest())))?;
        let have_snapshot = store.snapshot_path(&snapshot).is_dir();
        let have_blob = store
            .layer_blob(&snapshot)
            .is_some_and(|b| b.digest == digest);
        if have_snapshot && have_blob {
            // Unpacked and kept before (under this very blob digest): the layout's copy is not read at
            // all, so there is nothing to verify. Hashing a 100 MB base layer on every `--no-cache` build
            // was a fifth of a second before the first step could start.
            layers.push(snapshot);
            continue;
        }
        // Verified before use: a layout on disk is input, not something kiln wrote.
        let blob = crate::oci::verify_blob(dir, desc.digest().as_ref(), Some(desc.size()))
            .map_err(|e| Diagnostic::input(format!("base image `{reference}`: {e}")))?;
        let media_type = desc.media_type().to_string();
        if !have_snapshot {
            let tmp = store.temp_dir("unpack-")?;
            let dest = tmp.path().join("layer");
            std::fs::create_dir(&dest)
                .map_err(|e| Diagnostic::io("cannot create a snapshot", e))?;
            exec.unpack(&blob, &media_type, &dest)?;
            store.commit_snapshot(&dest, &snapshot)?;
        }
        if store.layer_blob(&snapshot).is_none() {
            // Keep the original blob so exports reuse it byte for byte.
            store.import_blob(&blob, &digest)?;
            store.put_layer_blob(
                &snapshot,
                &LayerBlob {
                    diff_id: diff,
                    digest,
                    size: desc.size(),
                    media_type,
                    tar_size: None,
                },
            )?;
        }
        layers.push(snapshot);
    }
    let rec = CacheRecord {
        key,
        times: vec![0; layers.len()],
        layers,
        base: base.into(),
        secrets: vec![],
    };
    store.cache_put(&rec)?;
    Ok((rec, true, manifest))
}
