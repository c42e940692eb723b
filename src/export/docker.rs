//! The docker-archive format (`docker save`): `manifest.json`, the config as `<hex>.json`, and each layer
//! as an uncompressed `<diff id hex>/layer.tar`, so that `docker load` and `podman load` accept it.

use std::io::{Seek as _, Write};

use serde_json::json;

use super::Image;
use crate::store::Store;

/// Writes the archive of `image`. Layers are the store's blobs, decompressed, so each tar is exactly the
/// one its diff id names (also for layers kept from a base image).
pub fn write_archive(
    store: &Store,
    image: &Image,
    name: Option<&str>,
    epoch: Option<i64>,
    out: impl Write,
) -> std::io::Result<()> {
    let mtime = epoch.unwrap_or(0).max(0) as u64;
    let mut tar = tar::Builder::new(out);
    let mut append = |path: &str, size: u64, data: &mut dyn std::io::Read| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        tar.append_data(&mut h, path, data)
    };
    let config_name = format!("{}.json", image.config_digest.hex());
    append(
        &config_name,
        image.config.len() as u64,
        &mut &image.config[..],
    )?;
    let mut layer_names = Vec::new();
    let scratch = tempfile::tempfile_in(store.root().join("tmp"))?;
    for blob in &image.blobs {
        let path = format!("{}/layer.tar", blob.diff_id.hex());
        // The tar header needs the size first: spool the decompressed layer, then copy it in.
        let mut spool = scratch.try_clone()?;
        spool.set_len(0)?;
        spool.rewind()?;
        let mut layer =
            crate::exec::unpack::open_blob(&store.blob_path(&blob.digest), &blob.media_type)?;
        let size = std::io::copy(&mut layer, &mut spool)?;
        spool.rewind()?;
        append(&path, size, &mut spool)?;
        layer_names.push(path);
    }
    let repo_tags = name.map(|n| {
        let last = n.rsplit('/').next().unwrap_or(n);
        if last.contains(':') {
            vec![n.to_string()]
        } else {
            vec![format!("{n}:latest")]
        }
    });
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": repo_tags,
        "Layers": layer_names,
    }]);
    let bytes = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
    append("manifest.json", bytes.len() as u64, &mut &bytes[..])?;
    tar.into_inner()?.flush()
}
