//! Pulling: an image into an OCI layout in the store, and any manifest and its blobs (shared caches),
//! every byte verified against its digest while it streams.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use oci_client::RegistryOperation;
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::auth::Options;
use super::client::{Session, block_on};
use super::reference::ImageName;
use super::{ACCEPT, DOCKER_LIST, MAX_INDEX_DEPTH, OCI_INDEX, PARALLEL_DOWNLOADS};
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::layer::Ids;
use crate::platform::Platform;
use crate::store::Store;

/// Pulls `reference` (the `platform` entry of an index) into an OCI layout under `<store>/images/` and returns
/// the layout's path, for `oci::read_image`.
///
/// Layouts are keyed by the image manifest's digest, so a layout never changes once renamed into place
/// and a build reading one is never disturbed by another pulling a newer tag. Blobs the store already
/// holds are linked, not fetched: pulling an image again transfers only its manifest.
///
/// An image this build pulled before is not asked for again (see `Options::pulled`), nor is one pinned
/// by a digest (of its manifest, or of the index it was chosen from) whose layout the store holds.
pub(crate) fn pull(
    store: &Store,
    reference: &str,
    platform: &Platform,
    opts: &Options,
) -> Result<PathBuf> {
    // linux/amd64 keeps the plain reference as its key, which other readers of the record look up.
    let key = match platform.in_graph() {
        None => reference.to_string(),
        Some(p) => format!("{reference} for {p}"),
    };
    if let Some(layout) = opts.pulled.get(&key) {
        return Ok(layout);
    }
    let name = ImageName::parse(reference)?;
    let pinned = name.digest.as_deref().and_then(Digest::parse);
    let images = store.root().join("images");
    // A pinned index resolves to one image per platform, so the link that remembers it says which.
    let link_name = |d: &Digest| match platform.in_graph() {
        None => d.hex().to_string(),
        Some(p) => format!("{}.{}", d.hex(), p.replace('/', "-")),
    };
    let kept = pinned
        .as_ref()
        .map(|d| images.join(link_name(d)))
        .filter(|dir| dir.join("index.json").is_file());
    let layout = match kept {
        Some(dir) => dir,
        None => {
            let layout = block_on(pull_async(store, name, platform, opts))?;
            if let Some(d) = &pinned {
                link_index(&images, &link_name(d), &layout);
            }
            layout
        }
    };
    opts.pulled.insert(&key, layout.clone());
    Ok(layout)
}

/// A reference pinned by an index's digest resolved to the layout of one of its images: a link named
/// by the index's digest finds that layout next time without asking the registry (an index names its
/// images by digest, so what it resolves to never changes). Best effort: without it, the registry is
/// asked again.
fn link_index(images: &Path, link: &str, layout: &Path) {
    let Some(target) = layout.file_name() else {
        return;
    };
    if target.to_string_lossy() != link {
        let _ = std::os::unix::fs::symlink(target, images.join(link));
    }
}

async fn pull_async(
    store: &Store,
    name: ImageName,
    platform: &Platform,
    opts: &Options,
) -> Result<PathBuf> {
    let (s, manifest, digest) = open_resolved(name, platform, opts).await?;
    let images = store.root().join("images");
    let dest = images.join(Digest::parse(&digest).expect("checked by resolve").hex());
    if dest.join("index.json").is_file() {
        return Ok(dest);
    }
    let json: Value = serde_json::from_slice(&manifest).map_err(|e| {
        Diagnostic::env(format!(
            "manifest {digest} of `{}` is not JSON: {e}",
            s.name
        ))
    })?;
    let config = descriptor(&json["config"], &s, &digest)?;
    let mut layers = Vec::new();
    for layer in json["layers"].as_array().into_iter().flatten() {
        layers.push(descriptor(layer, &s, &digest)?);
    }

    let tmp = store.temp_dir("pull-")?;
    let layout = tmp.path().join("layout");
    let blob_dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir)
        .map_err(|e| Diagnostic::io("cannot create a pull directory", e))?;
    // The config first: its diff ids name the snapshots the layers unpack into as they arrive.
    fetch_blob(&s, store, &config, &blob_dir).await?;
    let unpack = opts
        .unpack
        .and_then(|ids| Some((ids(), diff_ids(store, &config, layers.len())?)));
    // The biggest layers start first, so that the last to finish is not a big one started late.
    let mut order: Vec<usize> = (0..layers.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(layers[i].size));
    let fetches = order.into_iter().map(|i| {
        let into = unpack.as_ref().map(|(ids, diffs)| (*ids, &diffs[i]));
        fetch_layer(&s, store, &layers[i], into, &blob_dir)
    });
    // Every fetch ends before the first error is returned: a fetch dropped halfway would leave its
    // unpacking thread writing into a temporary directory that is being removed.
    futures_util::stream::iter(fetches)
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .collect::<Vec<Result<()>>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>>>()?;
    crate::oci::write_layout(&layout, &manifest, None, &[])
        .map_err(|e| Diagnostic::env(format!("cannot write the layout of `{}`: {e}", s.name)))?;
    std::fs::create_dir_all(&images)
        .map_err(|e| Diagnostic::io("cannot create the image directory", e))?;
    if let Err(e) = std::fs::rename(&layout, &dest) {
        // Another build pulled the same image meanwhile: same digest, same content, so theirs serves.
        if !dest.join("index.json").is_file() {
            return Err(Diagnostic::io(
                format!("cannot store the layout of `{}`", s.name),
                e,
            ));
        }
    }
    Ok(dest)
}

/// A session with the first of `name`'s mirrors that serves its manifest for `platform` (else with its
/// registry), that manifest and its digest. The rest of a pull (the blobs) asks the same server, since a
/// manifest's blobs are where the manifest is.
async fn open_resolved(
    name: ImageName,
    platform: &Platform,
    opts: &Options,
) -> Result<(Session, Bytes, String)> {
    let mut failed = Vec::new();
    for host in opts.mirrors.hosts(&name) {
        let attempt = async {
            let s =
                Session::open_at(name.clone(), host.clone(), opts, RegistryOperation::Pull).await?;
            let (bytes, digest) = resolve(&s, platform).await?;
            Ok::<_, Diagnostic>((s, bytes, digest))
        };
        match attempt.await {
            Ok(found) => {
                mirror_notes(&name, host.as_deref(), &failed);
                return Ok(found);
            }
            Err(e) => failed.push((host, e)),
        }
    }
    Err(all_failed(failed))
}

/// A pull that a mirror could not serve but another server could says so once: a mirror that is down
/// or incomplete is worth knowing about, though the build goes on.
fn mirror_notes(name: &ImageName, served: Option<&str>, failed: &[(Option<String>, Diagnostic)]) {
    let by = served.unwrap_or(&name.registry);
    for (_, e) in failed {
        crate::progress::stderr(&format!("warning: {}; pulled it from {by}\n", e.message));
    }
}

/// The error of a pull no server could serve: the registry's own when it was asked (the mirrors' follow
/// as help), else the last mirror's.
fn all_failed(mut failed: Vec<(Option<String>, Diagnostic)>) -> Diagnostic {
    let (_, last) = failed.pop().expect("a registry always has a server to ask");
    let mirrors: Vec<String> = failed.into_iter().map(|(_, e)| e.message).collect();
    if mirrors.is_empty() {
        return last;
    }
    let help = match &last.help {
        Some(h) => format!("{h}; before that: {}", mirrors.join("; ")),
        None => format!("before that: {}", mirrors.join("; ")),
    };
    last.help(help)
}

/// Fetches the manifest `s.name` points at, following an index to its `platform` image. Returns the
/// manifest bytes and their (verified) digest.
async fn resolve(s: &Session, platform: &Platform) -> Result<(Bytes, String)> {
    let mut reference = s.endpoint.oci();
    let mut expected = s.name.digest.clone();
    for _ in 0..MAX_INDEX_DEPTH {
        let (bytes, _) = s
            .retry("manifest", || {
                s.client
                    .pull_manifest_raw(&reference, &s.creds.auth, &ACCEPT)
            })
            .await?;
        let digest = Digest::of(&bytes).to_string();
        if let Some(want) = &expected
            && *want != digest
        {
            return Err(Diagnostic::env(format!(
                "cannot pull `{}`: {} sent a manifest whose digest is {digest}, not {want}",
                s.name, s.endpoint.registry
            )));
        }
        let json: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Diagnostic::env(format!(
                "cannot pull `{}`: the manifest is not JSON: {e}",
                s.name
            ))
        })?;
        let media_type = json["mediaType"].as_str().unwrap_or_default();
        let is_index =
            media_type == OCI_INDEX || media_type == DOCKER_LIST || json.get("manifests").is_some();
        if !is_index {
            return Ok((bytes, digest));
        }
        let chosen = json["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                let p = &m["platform"];
                let field = |k: &str| p[k].as_str().unwrap_or_default();
                platform.matches(field("os"), field("architecture"), field("variant"))
            })
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| {
                Diagnostic::input(format!(
                    "cannot pull `{}`: its image index has no {platform} image",
                    s.name
                ))
                .help("choose another image or tag, or another --platform")
            })?;
        if Digest::parse(chosen).is_none() {
            return Err(Diagnostic::env(format!(
                "cannot pull `{}`: its index names `{chosen}`, which is not a sha256 digest",
                s.name
            )));
        }
        reference = s.endpoint.with_digest(chosen);
        expected = Some(chosen.to_string());
    }
    Err(Diagnostic::env(format!(
        "cannot pull `{}`: its image indexes nest too deeply",
        s.name
    )))
}

pub(super) fn descriptor(v: &Value, s: &Session, manifest: &str) -> Result<OciDescriptor> {
    let digest = v["digest"].as_str().filter(|d| Digest::parse(d).is_some());
    let size = v["size"].as_i64().filter(|n| *n >= 0);
    match (digest, size) {
        (Some(d), Some(n)) => Ok(OciDescriptor {
            media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
            digest: d.to_string(),
            size: n,
            ..OciDescriptor::default()
        }),
        _ => Err(Diagnostic::env(format!(
            "cannot pull `{}`: manifest {manifest} has a descriptor without a sha256 digest and size",
            s.name
        ))),
    }
}

/// The diff ids of the image whose config (in the store) is `config`, one per layer; `None` when the
/// config does not list one per layer (the import reports that, from the layout).
fn diff_ids(store: &Store, config: &OciDescriptor, layers: usize) -> Option<Vec<Digest>> {
    let digest = Digest::parse(&config.digest)?;
    let json: Value = serde_json::from_slice(&store.read_blob(&digest).ok()?).ok()?;
    let ids = json["rootfs"]["diff_ids"]
        .as_array()?
        .iter()
        .map(|d| d.as_str().and_then(Digest::parse))
        .collect::<Option<Vec<Digest>>>()?;
    (ids.len() == layers).then_some(ids)
}

/// Puts one layer into the layout as `fetch_blob` does; with `into` (the user namespace's ids and the
/// layer's diff id), a layer whose blob and snapshot the store lacks is unpacked while it downloads.
async fn fetch_layer(
    s: &Session,
    store: &Store,
    desc: &OciDescriptor,
    into: Option<(Ids, &Digest)>,
    blob_dir: &Path,
) -> Result<()> {
    let digest = Digest::parse(&desc.digest).expect("checked by descriptor");
    let streamable = crate::layer::decompress(&[][..], &desc.media_type).is_ok();
    if let Some((ids, diff_id)) = into.filter(|_| streamable)
        && !store.blob_path(&digest).is_file()
        && !store.snapshot_path(&Store::base_layer_id(diff_id)).is_dir()
    {
        super::stream::fetch_unpacked(s, store, desc, diff_id, ids).await?;
    }
    fetch_blob(s, store, desc, blob_dir).await
}

/// Puts one blob into the layout: linked from the store when there, else downloaded (hashed and
/// size-checked as it streams) into the store first. Either way, the store notes that the blob is in
/// this session's repository (for pushes that can mount it).
async fn fetch_blob(
    s: &Session,
    store: &Store,
    desc: &OciDescriptor,
    blob_dir: &Path,
) -> Result<()> {
    let digest = Digest::parse(&desc.digest).expect("checked by descriptor");
    let in_store = store.blob_path(&digest);
    if !in_store.is_file() {
        let tmp = store.temp_dir("blob-")?;
        let part = tmp.path().join("blob");
        s.retry(&format!("blob {digest}"), || download(s, desc, &part))
            .await?;
        store.adopt_blob(&part, &digest)?;
    }
    let sources = super::sources::dir(store.root());
    super::sources::note(
        &sources,
        &digest,
        &s.endpoint.registry,
        &s.endpoint.repository,
    );
    let dest = blob_dir.join(digest.hex());
    // A hard link costs no space; the store and the layout are on one filesystem unless moved by hand.
    if std::fs::hard_link(&in_store, &dest).is_err() {
        std::fs::copy(&in_store, &dest)
            .map_err(|e| Diagnostic::io(format!("cannot copy blob {digest} into the layout"), e))?;
    }
    Ok(())
}

/// One download attempt. A registry that sends more bytes than the descriptor allows, or other bytes, is
/// cut off: the result must be exactly what the manifest promised.
async fn download(
    s: &Session,
    desc: &OciDescriptor,
    part: &Path,
) -> std::result::Result<(), OciDistributionError> {
    let mut stream = s.client.pull_blob_stream(&s.endpoint.oci(), desc).await?;
    let mut file = tokio::fs::File::create(part).await?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    let want = desc.size as u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        written += chunk.len() as u64;
        if written > want {
            return Err(OciDistributionError::GenericError(Some(format!(
                "blob {} is larger than the {want} bytes its descriptor says",
                desc.digest
            ))));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    // No sync here: `Store::adopt_blob` syncs the file before renaming it into place.
    file.flush().await?;
    let actual = Digest::from_hasher(hasher);
    if written != want || actual.as_str() != desc.digest {
        return Err(OciDistributionError::GenericError(Some(format!(
            "blob {} arrived corrupt ({written} bytes, digest {actual})",
            desc.digest
        ))));
    }
    Ok(())
}

/// Fetches the manifest `reference` names (any kind: an image, or an artifact such as a kiln cache),
/// following an index to its linux/amd64 entry. Returns the manifest bytes, verified against their digest.
pub(crate) fn fetch_manifest(reference: &str, opts: &Options) -> Result<Vec<u8>> {
    let name = ImageName::parse(reference)?;
    block_on(async {
        let (_, bytes, _) = open_resolved(name, &Platform::amd64(), opts).await?;
        Ok(bytes.to_vec())
    })
}

/// The digest of the image manifest `reference` names for `platform` (an index followed to that
/// platform's entry), asked of the registry without fetching any blob: what `kiln lock` pins.
pub(crate) fn resolve_digest(
    reference: &str,
    platform: &Platform,
    opts: &Options,
) -> Result<Digest> {
    let name = ImageName::parse(reference)?;
    block_on(async {
        let (_, _, digest) = open_resolved(name, platform, opts).await?;
        Ok(Digest::parse(&digest).expect("checked by resolve"))
    })
}

/// Downloads the blobs `(digest, size)` of the repository of `reference` into the store (those it lacks),
/// each hashed and size-checked as it streams.
pub(crate) fn fetch_blobs(
    store: &Store,
    reference: &str,
    blobs: &[(Digest, u64)],
    opts: &Options,
) -> Result<()> {
    let missing: Vec<&(Digest, u64)> = blobs
        .iter()
        .filter(|(d, _)| !store.blob_path(d).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let name = ImageName::parse(reference)?;
    block_on(async {
        let mut failed = Vec::new();
        for host in opts.mirrors.hosts(&name) {
            match fetch_blobs_from(store, name.clone(), host.clone(), &missing, opts).await {
                Ok(()) => {
                    mirror_notes(&name, host.as_deref(), &failed);
                    return Ok(());
                }
                Err(e) => failed.push((host, e)),
            }
        }
        Err(all_failed(failed))
    })
}

async fn fetch_blobs_from(
    store: &Store,
    name: ImageName,
    mirror: Option<String>,
    missing: &[&(Digest, u64)],
    opts: &Options,
) -> Result<()> {
    let s = Session::open_at(name, mirror, opts, RegistryOperation::Pull).await?;
    futures_util::stream::iter(missing.iter().map(|(digest, size)| {
        let s = &s;
        async move {
            let desc = OciDescriptor {
                digest: digest.to_string(),
                size: *size as i64,
                ..OciDescriptor::default()
            };
            let tmp = store.temp_dir("blob-")?;
            let part = tmp.path().join("blob");
            s.retry(&format!("blob {digest}"), || download(s, &desc, &part))
                .await?;
            store.adopt_blob(&part, digest)?;
            Ok::<(), Diagnostic>(())
        }
    }))
    .buffer_unordered(PARALLEL_DOWNLOADS)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}
