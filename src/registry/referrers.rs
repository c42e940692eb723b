//! Pushing a referrer (an OCI 1.1 artifact manifest whose `subject` is an image manifest, such as an
//! attestation) by digest, and keeping it findable: through the registry's referrers API where it has
//! one, else through the distribution spec's fallback, an index tagged `sha256-<hex>` of the subject that
//! lists every referrer.

use std::path::Path;

use bytes::Bytes;
use oci_client::RegistryOperation;
use oci_client::errors::OciDistributionError;
use serde_json::{Value, json};

use super::OCI_INDEX;
use super::client::{Session, block_on};
use super::reference::ImageName;
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;

/// How a referrer was made findable.
pub(crate) struct ReferrerPushed {
    pub digest: String,
    /// The fallback tag that lists it, when the registry has no referrers API.
    pub fallback_tag: Option<String>,
}

/// Pushes the artifact `manifest` (its blobs read from the OCI layout at `layout`) to the repository of
/// `reference`, by digest, then makes sure the subject's referrers list it.
pub(crate) fn push_referrer(
    layout: &Path,
    manifest: Vec<u8>,
    reference: &str,
    opts: &super::Options,
) -> Result<ReferrerPushed> {
    let json: Value = serde_json::from_slice(&manifest)
        .map_err(|e| Diagnostic::env(format!("a referrer manifest is not JSON: {e}")))?;
    let subject = json["subject"]["digest"]
        .as_str()
        .ok_or_else(|| Diagnostic::env("a referrer manifest without a subject"))?
        .to_string();
    let mut blobs = Vec::new();
    for d in std::iter::once(&json["config"]).chain(json["layers"].as_array().into_iter().flatten())
    {
        match (d["digest"].as_str(), d["size"].as_u64()) {
            (Some(digest), Some(size)) => blobs.push((digest.to_string(), size)),
            _ => {
                return Err(Diagnostic::env(
                    "a referrer descriptor without digest or size",
                ));
            }
        }
    }
    let digest = Digest::of(&manifest).to_string();
    let mut name = ImageName::parse(reference)?;
    name.tag = None;
    name.digest = Some(digest.clone());
    let descriptor = json!({
        "mediaType": json["mediaType"],
        "digest": digest,
        "size": manifest.len(),
        "artifactType": json["artifactType"],
        "annotations": json["annotations"],
    });
    block_on(async {
        super::push::push_async(name.clone(), layout, blobs, manifest, digest.clone(), opts)
            .await?;
        let fallback_tag = list_referrer(name, &subject, descriptor, opts).await?;
        Ok(ReferrerPushed {
            digest,
            fallback_tag,
        })
    })
}

/// Makes sure the referrers of `subject` list `descriptor`: a registry whose referrers API lists it
/// already needs nothing; else the fallback tag's index gets it (made if missing).
async fn list_referrer(
    mut name: ImageName,
    subject: &str,
    descriptor: Value,
    opts: &super::Options,
) -> Result<Option<String>> {
    name.digest = Some(subject.to_string());
    let s = Session::open(name, opts, RegistryOperation::Push).await?;
    let subject_ref = s.name.oci();
    let digest = descriptor["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // oci-client asks the referrers API and, on its 404, reads the fallback tag: either way a listing
    // that holds the referrer needs no more.
    let listed = s
        .retry("referrers", || s.client.pull_referrers(&subject_ref, None))
        .await
        .is_ok_and(|index| index.manifests.iter().any(|m| m.digest == digest));
    if listed {
        return Ok(None);
    }
    let tag = subject.replace(':', "-");
    let mut tagged = s.name.clone();
    tagged.digest = None;
    tagged.tag = Some(tag.clone());
    let tag_ref = tagged.oci();
    let current = s
        .client
        .pull_manifest_raw(&tag_ref, &s.creds.auth, &[OCI_INDEX])
        .await;
    let mut index = match current {
        Ok((bytes, _)) => serde_json::from_slice(&bytes).unwrap_or_else(|_| empty_index()),
        Err(OciDistributionError::ImageManifestNotFoundError(_))
        | Err(OciDistributionError::RegistryError { .. })
        | Err(OciDistributionError::ServerError { code: 404, .. }) => empty_index(),
        Err(e) => {
            return Err(Diagnostic::env(format!(
                "cannot read the referrers index `{tag}` of `{}`: {e}",
                s.name
            )));
        }
    };
    if !index["manifests"].is_array() {
        index = empty_index();
    }
    let manifests = index["manifests"].as_array_mut().expect("an array");
    manifests.retain(|m| m["digest"].as_str() != Some(digest.as_str()));
    manifests.push(descriptor);
    let body = Bytes::from(serde_json::to_vec(&index).expect("an index serializes"));
    s.retry("referrers index", || {
        s.client.push_manifest_raw(
            &tag_ref,
            body.clone(),
            OCI_INDEX.parse().expect("a header value"),
        )
    })
    .await?;
    Ok(Some(tag))
}

fn empty_index() -> Value {
    json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
}
