//! Artifacts kept beside an image in its repository under a tag derived from the image's digest
//! (cosign's `sha256-<hex>.sig`): the manifest such a tag holds, if any, replaced by one made from it,
//! with blobs that are small enough to hold in memory.

use bytes::Bytes;
use oci_client::RegistryOperation;

use super::OCI_MANIFEST;
use super::auth::Options;
use super::client::{Session, block_on, not_found};
use super::reference::ImageName;
use crate::diag::Result;
use crate::digest::Digest;

/// An OCI manifest and the blobs (`digest`, bytes) it names that may not be in the repository yet.
pub(crate) struct Artifact {
    pub blobs: Vec<(String, Vec<u8>)>,
    pub manifest: Vec<u8>,
}

/// Reads the OCI manifest at `tag` in the repository of `reference` (`None` when the tag does not
/// exist), hands it to `make`, and pushes the artifact `make` returns under that tag: its blobs the
/// registry lacks, then the manifest. Returns the new manifest's digest, or `None` when `make` found
/// nothing to change. One session (push scope) for the read and the write.
pub(crate) fn attach(
    reference: &str,
    tag: &str,
    opts: &Options,
    make: impl FnOnce(Option<&[u8]>) -> Result<Option<Artifact>>,
) -> Result<Option<String>> {
    let mut name = ImageName::parse(reference)?;
    name.tag = Some(tag.to_string());
    name.digest = None;
    block_on(async {
        let s = Session::open(name, opts, RegistryOperation::Push).await?;
        let at = s.name.oci();
        let existing = s
            .retry(&format!("manifest {tag}"), || async {
                match s
                    .client
                    .pull_manifest_raw(&at, &s.creds.auth, &[OCI_MANIFEST])
                    .await
                {
                    Ok((bytes, _)) => Ok(Some(bytes)),
                    Err(e) if not_found(&e) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        let Some(artifact) = make(existing.as_deref())? else {
            return Ok(None);
        };
        for (digest, bytes) in artifact.blobs {
            let what = format!("blob {digest}");
            if s.retry(&what, || s.client.blob_exists(&at, &digest))
                .await?
            {
                continue;
            }
            let bytes = Bytes::from(bytes);
            s.retry(&what, || s.client.push_blob(&at, bytes.clone(), &digest))
                .await?;
        }
        let digest = Digest::of(&artifact.manifest).to_string();
        let body = Bytes::from(artifact.manifest);
        s.retry(&format!("manifest {tag}"), || {
            let content_type = OCI_MANIFEST.parse().expect("a constant header value");
            s.client.push_manifest_raw(&at, body.clone(), content_type)
        })
        .await?;
        Ok(Some(digest))
    })
}
