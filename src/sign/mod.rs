//! Image signatures as cosign stores them, which containers/image (skopeo, podman) verifies with a
//! `sigstoreSigned` policy: an ECDSA P-256 signature over a simple-signing payload naming the image and
//! its manifest digest, kept in the image's repository under the tag `sha256-<hex>.sig` as an OCI
//! manifest with one layer per signature (the payload, the signature in an annotation).
//!
//! The private key is read into zeroizing memory and stays in [`SigningKey`], which has no Debug,
//! Display, Clone or Serialize; it never reaches the store, the cache, a log or a message.

mod key;

use std::path::Path;

use serde_json::{Value, json};

pub use key::KeyError;

use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::registry::{Artifact, ImageName, OCI_MANIFEST};
use crate::secret::SecretValue;

/// The media type of a signature layer: the payload cosign and containers/image sign.
pub(crate) const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the base64 DER signature of the payload.
pub(crate) const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Indexes may nest; a real image never needs more than a couple of levels.
const MAX_DEPTH: usize = 4;

/// A private ECDSA P-256 key (`--sign key=PATH`), zeroized when dropped.
pub struct SigningKey {
    key: p256::ecdsa::SigningKey,
}

impl SigningKey {
    /// Reads the key file at `path`: cosign's encrypted format, decrypted with `password` (asked for
    /// only then), or an unencrypted PEM EC P-256 key (SEC1 or PKCS#8).
    pub fn read(
        path: &Path,
        password: impl FnOnce() -> Option<SecretValue>,
    ) -> std::result::Result<SigningKey, KeyError> {
        key::read(path, password).map(|key| SigningKey { key })
    }

    /// The private scalar, for the leak guard: every encoding of a key file holds it (raw in SEC1 and
    /// PKCS#8 DER, base64 at some alignment in PEM, hex in `openssl ec -text`).
    pub(crate) fn guard_value(&self) -> SecretValue {
        let bytes = zeroize::Zeroizing::new(self.key.to_bytes());
        SecretValue::new(zeroize::Zeroizing::new(bytes.to_vec()))
    }

    /// The base64 of the DER-encoded ECDSA signature (SHA-256) of `payload`, as cosign writes it.
    /// RFC 6979 nonces: the same key and payload always give the same signature.
    fn sign(&self, payload: &[u8]) -> String {
        use base64::Engine as _;
        use p256::ecdsa::signature::Signer as _;
        let signature: p256::ecdsa::Signature = self.key.sign(payload);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }
}

/// Signs the manifest `digest` just pushed to `name` and, when it is an index, every manifest it names
/// (as `cosign sign --recursive`: skopeo checks the signature of the manifest it copies, which is a
/// platform's when it picks one from an index). The manifests are read from the OCI layout `layout`
/// the push was made from. Each signature is added to the `.sig` manifest the repository holds, as
/// cosign adds it. Returns a note per manifest signed.
pub(crate) fn sign_pushed(
    key: &SigningKey,
    layout: &Path,
    name: &str,
    digest: &str,
    opts: &crate::registry::Options,
) -> Result<Vec<String>> {
    let identity = ImageName::parse(name)?.to_string();
    let mut digests = Vec::new();
    manifests_under(layout, digest, 0, &mut digests)?;
    let mut signed = Vec::new();
    for digest in digests {
        let payload = payload(&identity, &digest);
        let signature = key.sign(&payload);
        let tag = signature_tag(&digest);
        let pushed = crate::registry::attach(name, &tag, opts, |existing| {
            with_signature(existing, &payload, &signature)
                .map_err(|e| Diagnostic::env(format!("cannot sign `{name}`: {tag}: {e}")))
        })?;
        signed.push(match pushed {
            Some(_) => format!("signed {identity}, manifest {digest}: signature in {tag}"),
            None => format!("{tag} already holds this signature of {identity}, manifest {digest}"),
        });
    }
    Ok(signed)
}

/// `digest` and, if it is an index in `layout`, the manifests under it.
fn manifests_under(layout: &Path, digest: &str, depth: usize, out: &mut Vec<String>) -> Result<()> {
    out.push(digest.to_string());
    let read = || -> std::io::Result<Value> {
        let bytes = std::fs::read(crate::oci::blob_path(layout, digest)?)?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    };
    let json = read().map_err(|e| Diagnostic::io(format!("cannot read manifest {digest}"), e))?;
    let media_type = json["mediaType"].as_str().unwrap_or_default();
    let is_index = media_type == OCI_INDEX || media_type == DOCKER_LIST;
    if !is_index || depth >= MAX_DEPTH {
        return Ok(());
    }
    for child in json["manifests"].as_array().into_iter().flatten() {
        if let Some(d) = child["digest"].as_str() {
            manifests_under(layout, d, depth + 1, out)?;
        }
    }
    Ok(())
}

/// The simple-signing payload for the image `identity` (a full reference, its tag included) whose
/// manifest is `digest`, in the form containers/image and cosign write and read.
pub(crate) fn payload(identity: &str, digest: &str) -> Vec<u8> {
    let doc = json!({
        "critical": {
            "identity": {"docker-reference": identity},
            "image": {"docker-manifest-digest": digest},
            "type": "cosign container image signature",
        },
        "optional": {"creator": concat!("kiln ", env!("CARGO_PKG_VERSION"))},
    });
    serde_json::to_vec(&doc).expect("JSON values serialize")
}

/// Where cosign keeps the signatures of the manifest `digest`: `sha256-<hex>.sig`.
pub(crate) fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// The signature manifest holding the layers of `existing` (the tag's current manifest, if any) and a
/// layer for `payload` signed with `signature`; `None` when `existing` already holds that very layer.
fn with_signature(
    existing: Option<&[u8]>,
    payload: &[u8],
    signature: &str,
) -> std::result::Result<Option<Artifact>, String> {
    let payload_digest = Digest::of(payload).to_string();
    let mut layers = match existing {
        None => Vec::new(),
        Some(bytes) => {
            let json: Value = serde_json::from_slice(bytes)
                .map_err(|e| format!("its manifest is not JSON: {e}"))?;
            json["layers"]
                .as_array()
                .cloned()
                .ok_or("the tag holds something other than a signature manifest")?
        }
    };
    let present = layers.iter().any(|l| {
        l["digest"] == payload_digest.as_str()
            && l["annotations"][SIGNATURE_ANNOTATION] == signature
    });
    if present {
        return Ok(None);
    }
    layers.push(json!({
        "mediaType": SIMPLE_SIGNING,
        "digest": payload_digest,
        "size": payload.len(),
        "annotations": {SIGNATURE_ANNOTATION: signature},
    }));
    let diff_ids: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("JSON values serialize");
    let config_digest = Digest::of(&config).to_string();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": layers,
    }))
    .expect("JSON values serialize");
    Ok(Some(Artifact {
        blobs: vec![(payload_digest, payload.to_vec()), (config_digest, config)],
        manifest,
    }))
}

#[cfg(test)]
mod tests;
