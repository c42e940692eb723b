//! `--cache-to`: writes the build's cache records and their layer blobs as a shared cache (the format is
//! `solve::shared_cache`'s) to a registry or an OCI layout directory.
//!
//! What goes out, and the secrets rule:
//! - `mode=min` (the default, as in BuildKit): the records of each exported image's own chain (its
//!   stage's steps down to the base image); `mode=max`: the record of every node, other stages included.
//! - A step that mounted secrets carries the leak guard's verdict (`store::SecretVerdict`) for each: its
//!   layer was scanned for the value before it was committed (`Clean`), or the secret was optional and not
//!   given (`NotGiven`). A layer of such a step without a verdict for every secret it mounted (a result
//!   from before verdicts existed) is withheld, with every record that contains it.
//! - Then every layer this build's steps made is scanned once more, as the exact tar stream that would
//!   leave the machine (names, contents, link targets, PAX xattrs), and the config, for the value of
//!   every secret given to this build; a hit stops the export before anything is written.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use serde_json::json;

use super::Settings;
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::graph::Dag;
use crate::graph::Op;
use crate::secret::LeakScanner;
use crate::solve::shared_cache::{ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, CacheConfig, Imported};
use crate::solve::{Output, Summary};
use crate::store::{CacheRecord, LayerBlob, Store};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Min,
    Max,
}

/// Where `--cache-to` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dest {
    /// `type=registry,ref=HOST/REPO:TAG`
    Registry(String),
    /// `type=local,dest=DIR[,tag=TAG]`: an OCI layout directory (created or added to).
    Local { dir: PathBuf, tag: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheTo {
    pub dest: Dest,
    pub mode: Mode,
    /// `cache-mounts=true`: the contents of every cache mount the build uses go with the cache.
    pub mounts: bool,
}

impl std::fmt::Display for Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dest::Registry(r) => write!(f, "type=registry,ref={r}"),
            Dest::Local { dir, .. } => write!(f, "type=local,dest={}", dir.display()),
        }
    }
}

/// What was written.
pub struct Written {
    pub records: usize,
    pub layers: usize,
    /// The cache manifest's digest.
    pub manifest: String,
    /// Records left out because a layer lacks the leak guard's verdict.
    pub withheld: usize,
    /// Cache mounts whose contents went out.
    pub mounts: usize,
    /// Why each selected cache mount that stayed home did.
    pub mount_warnings: Vec<String>,
}

/// The records `mode` selects from a finished build, with the secret ids each node's step mounted.
fn select(graph: &Dag, summary: &Summary, mode: Mode) -> Vec<(CacheRecord, Vec<String>)> {
    let cacheable = |n: petgraph::stable_graph::NodeIndex| {
        let op = &graph.dag[n].op;
        op.makes_layer() || matches!(op, Op::Image { .. })
    };
    let mut nodes = Vec::new();
    match mode {
        Mode::Max => nodes.extend(graph.topo_order().into_iter().filter(|n| cacheable(*n))),
        Mode::Min => {
            for (_, root) in &graph.roots {
                // A root is a stage's config node; its first input is the stage's filesystem, whose first
                // input is the one below it, down to the base image.
                let mut at = graph.inputs(*root).first().copied();
                while let Some(n) = at.filter(|n| cacheable(*n)) {
                    nodes.push(n);
                    at = graph.inputs(n).first().copied();
                }
            }
        }
    }
    nodes.sort();
    nodes.dedup();
    nodes
        .into_iter()
        .filter_map(|n| match summary.outputs.get(&n) {
            Some(Output::Fs(rec)) => {
                let mounted = match &graph.dag[n].op {
                    Op::Run(r) => r.secrets.iter().map(|s| s.id.clone()).collect(),
                    _ => Vec::new(),
                };
                Some((rec.clone(), mounted))
            }
            _ => None,
        })
        .collect()
}

/// Exports the cache of a finished build to `to`.
#[allow(clippy::too_many_arguments)]
pub fn export(
    store: &Store,
    graph: &Dag,
    summary: &Summary,
    imported: Option<&Imported>,
    to: &CacheTo,
    scanner: &LeakScanner,
    settings: &Settings,
    registry: &crate::registry::Options,
) -> Result<Written> {
    let (records, withheld) = safe_records(graph, summary, to.mode);
    let layers = layer_blobs(store, &records, imported, settings)?;
    scan_layers(store, scanner, &layers)?;
    let mounts = super::cache_mounts::export(store, graph, to.mounts, imported, scanner)?;
    let config = CacheConfig {
        domain: crate::solve::CACHE_DOMAIN.to_string(),
        layers: layers.clone(),
        records,
        mounts: mounts.records,
    };
    let (config_digest, config_len) = put_config(store, scanner, &config)?;
    let blobs = sorted_blobs(&config);
    let manifest = manifest(&blobs, &config_digest, config_len)?;
    let mut files: Vec<(String, PathBuf)> = blobs
        .iter()
        .map(|b| (b.digest.to_string(), store.blob_path(&b.digest)))
        .collect();
    files.push((config_digest.to_string(), store.blob_path(&config_digest)));
    let digest = write(store, to, registry, manifest, &files)?;
    Ok(Written {
        records: config.records.len(),
        layers: blobs.len(),
        manifest: digest,
        withheld,
        mounts: config.mounts.len(),
        mount_warnings: mounts.warnings,
    })
}

/// The records `mode` selects, less those holding a layer without the leak guard's verdict for every
/// secret its step mounted; and how many were left out.
fn safe_records(graph: &Dag, summary: &Summary, mode: Mode) -> (Vec<CacheRecord>, usize) {
    // Which step made each layer, and whether its verdict covers every secret it mounted. Every node of
    // the graph counts, not only the selected ones: a selected record holds the layers below it too.
    let mut unsafe_layers = BTreeSet::new();
    for (n, out) in &summary.outputs {
        if let (Op::Run(r), Output::Fs(rec)) = (&graph.dag[*n].op, out)
            && let Some(own) = rec.layers.last()
            && !r
                .secrets
                .iter()
                .all(|s| rec.secrets.iter().any(|v| v.id == s.id))
        {
            unsafe_layers.insert(own.clone());
        }
    }
    let chosen = select(graph, summary, mode);
    let total = chosen.len();
    let records: Vec<CacheRecord> = chosen
        .into_iter()
        .filter(|(rec, mounted)| {
            rec.layers.iter().all(|l| !unsafe_layers.contains(l))
                && mounted
                    .iter()
                    .all(|id| rec.secrets.iter().any(|v| v.id == *id))
        })
        .map(|(rec, _)| rec)
        .collect();
    let withheld = total - records.len();
    (records, withheld)
}

/// Every layer's blob: made (or reused) as the image export makes it, so a cache and an image built by
/// the same build share their layer blobs; a layer this machine only knows from a cache keeps that
/// cache's blob.
fn layer_blobs(
    store: &Store,
    records: &[CacheRecord],
    imported: Option<&Imported>,
    settings: &Settings,
) -> Result<BTreeMap<String, Option<LayerBlob>>> {
    let mut layers: BTreeMap<String, Option<LayerBlob>> = BTreeMap::new();
    for snapshot in records.iter().flat_map(|r| r.layers.iter()) {
        if layers.contains_key(snapshot) {
            continue;
        }
        let path = store.snapshot_path(snapshot);
        let blob = if path.is_dir() {
            let empty = std::fs::read_dir(&path)
                .map_err(|e| Diagnostic::io(format!("cannot read snapshot {snapshot}"), e))?
                .next()
                .is_none();
            if empty {
                None
            } else {
                Some(super::layer_blob(store, snapshot, settings)?)
            }
        } else {
            let Some(blob) = imported.and_then(|i| i.layer(snapshot)) else {
                return Err(Diagnostic::env(format!(
                    "store snapshot {snapshot} is missing"
                )));
            };
            if let (Some(b), Some(i)) = (&blob, imported) {
                i.fetch(store, b, snapshot)?;
            }
            blob
        };
        layers.insert(snapshot.clone(), blob);
    }
    Ok(layers)
}

/// The last check of the layers before anything leaves: the tar streams of this build's layers (base
/// image layers are not its doing, as for the image guard).
fn scan_layers(
    store: &Store,
    scanner: &LeakScanner,
    layers: &BTreeMap<String, Option<LayerBlob>>,
) -> Result<()> {
    if !scanner.is_empty() {
        for (snapshot, blob) in layers {
            let Some(blob) = blob.as_ref().filter(|_| !snapshot.starts_with("layer-")) else {
                continue;
            };
            let reader = crate::solve::shared_cache::open_layer(
                &store.blob_path(&blob.digest),
                &blob.media_type,
            )
            .map_err(|e| Diagnostic::io(format!("cannot read layer {}", blob.digest), e))?;
            let found = scanner
                .scan_reader(reader)
                .map_err(|e| Diagnostic::io(format!("cannot scan layer {}", blob.digest), e))?;
            if let Some(leak) = found {
                return Err(Diagnostic::build(format!(
                    "secret `{}` is in layer {} ({}); no cache was exported",
                    leak.id,
                    blob.digest,
                    leak.encoding.as_str()
                ))
                .help("a secret must only ever be mounted (`RUN --mount=type=secret`); never write it to a file"));
            }
        }
    }
    Ok(())
}

/// Scans the config for secrets and stores it as a blob; returns its digest and size.
fn put_config(
    store: &Store,
    scanner: &LeakScanner,
    config: &CacheConfig,
) -> Result<(Digest, usize)> {
    let config_bytes = serde_json::to_vec(config).map_err(|e| Diagnostic::env(e.to_string()))?;
    let decoded = serde_json::to_value(config).map_err(|e| Diagnostic::env(e.to_string()))?;
    if let Some((leak, at)) = super::scan_json(scanner, &decoded) {
        return Err(Diagnostic::build(format!(
            "secret `{}` is in the cache config at `{at}` ({}); no cache was exported",
            leak.id,
            leak.encoding.as_str()
        ))
        .help("a secret must only ever be mounted (`RUN --mount=type=secret`); never pass it as a build arg"));
    }
    let config_digest = store.put_blob(&config_bytes)?;
    Ok((config_digest, config_bytes.len()))
}

/// The blobs of the layers and of the cache mounts' groups in a stable order (by digest), each once.
fn sorted_blobs(config: &CacheConfig) -> Vec<&LayerBlob> {
    let mut blobs: HashMap<Digest, &LayerBlob> = HashMap::new();
    let groups = config.mounts.values().flat_map(|m| &m.groups);
    for b in config
        .layers
        .values()
        .flatten()
        .chain(groups.map(|g| &g.blob))
    {
        blobs.entry(b.digest.clone()).or_insert(b);
    }
    let mut blobs: Vec<&LayerBlob> = blobs.into_values().collect();
    blobs.sort_by(|a, b| a.digest.as_str().cmp(b.digest.as_str()));
    blobs
}

/// The cache's artifact manifest.
fn manifest(blobs: &[&LayerBlob], config_digest: &Digest, config_len: usize) -> Result<Vec<u8>> {
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": ARTIFACT_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config_digest.as_str(),
            "size": config_len,
        },
        "layers": blobs.iter().map(|b| json!({
            "mediaType": b.media_type,
            "digest": b.digest.as_str(),
            "size": b.size,
        })).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&manifest).map_err(|e| Diagnostic::env(e.to_string()))
}

/// Writes the manifest and `files` (digest, path) to the destination; returns the manifest's digest.
fn write(
    store: &Store,
    to: &CacheTo,
    registry: &crate::registry::Options,
    manifest: Vec<u8>,
    files: &[(String, PathBuf)],
) -> Result<String> {
    Ok(match &to.dest {
        Dest::Local { dir, tag } => crate::oci::write_layout(dir, &manifest, Some(tag), files)
            .map_err(|e| {
                Diagnostic::io(format!("cannot write the cache to {}", dir.display()), e)
            })?,
        Dest::Registry(reference) => {
            let tmp = store.temp_dir("cache-")?;
            let dir = tmp.path().join("layout");
            crate::oci::write_layout(&dir, &manifest, None, files)
                .map_err(|e| Diagnostic::io("cannot stage the cache", e))?;
            crate::registry::push_manifest(&dir, manifest, reference, registry)?
        }
    })
}
