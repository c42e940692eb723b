//! The docker-archive format (`docker save`): `manifest.json`, the config as `<hex>.json`, and each layer
//! as an uncompressed `<diff id hex>/layer.tar`, so that `docker load` and `podman load` accept it.

use std::io::{Read, Seek as _, Write};

use serde_json::json;

use super::Image;
use crate::store::Store;

/// Writes the archive of `image`, tagged with every one of `names`. Layers are the store's blobs, decompressed, so each tar is exactly the
/// one its diff id names (also for layers kept from a base image).
pub fn write_archive(
    store: &Store,
    image: &Image,
    names: &[&str],
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
    let mut scratch = None;
    for blob in &image.blobs {
        let path = format!("{}/layer.tar", blob.diff_id.hex());
        let mut layer = crate::layer::open_blob(&store.blob_path(&blob.digest), &blob.media_type)?;
        if let Some(size) = blob.tar_size {
            // kiln made this blob and counted its tar: decompressed straight into the archive.
            append(
                &path,
                size,
                &mut Exact {
                    inner: layer,
                    left: size,
                },
            )?;
        } else {
            // The tar header needs the size first: spool the decompressed layer, then copy it in.
            let mut spool = match &scratch {
                Some(f) => std::fs::File::try_clone(f)?,
                None => {
                    let f = tempfile::tempfile_in(store.root().join("tmp"))?;
                    scratch.insert(f).try_clone()?
                }
            };
            spool.set_len(0)?;
            spool.rewind()?;
            let size = std::io::copy(&mut layer, &mut spool)?;
            spool.rewind()?;
            append(&path, size, &mut spool)?;
        }
        layer_names.push(path);
    }
    // docker's `RepoTags`: each name with its tag (`latest` when it has none); `null` for none at all.
    let repo_tags = (!names.is_empty()).then(|| {
        names
            .iter()
            .map(|n| {
                let last = n.rsplit('/').next().unwrap_or(n);
                if last.contains(':') {
                    n.to_string()
                } else {
                    format!("{n}:latest")
                }
            })
            .collect::<Vec<_>>()
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

/// Exactly `left` bytes of `inner`, or an error: the tar header already announced that many, so a blob
/// that decompresses to more or fewer (a damaged store) must fail the archive, never corrupt it.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "a layer blob in the store decompresses to more than kiln recorded",
                )),
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a layer blob in the store decompresses to less than kiln recorded",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(data: &[u8], left: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        Exact { inner: data, left }.read_to_end(&mut out)?;
        Ok(out)
    }

    /// A layer that decompresses to another length than its tar header announced fails the archive.
    #[test]
    fn a_layer_of_another_length_than_recorded_is_refused() {
        assert_eq!(read_all(b"layer", 5).unwrap(), b"layer");
        let short = read_all(b"laye", 5).unwrap_err();
        assert_eq!(short.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(short.to_string().contains("less than"), "{short}");
        let long = read_all(b"layers", 5).unwrap_err();
        assert_eq!(long.kind(), std::io::ErrorKind::InvalidData);
        assert!(long.to_string().contains("more than"), "{long}");
    }
}
