//! Attestations of a built image, as documents for the exporters to attach as OCI referrers: its SBOM
//! (`sbom`: an SPDX 2.3 document of the OS packages its final filesystem records, read from the layer
//! snapshots by `rootfs`) and its provenance (`provenance`: an in-toto Statement v1 with a SLSA
//! provenance v1 predicate, made by walking the build graph and what its sources resolved to).

pub mod provenance;
mod rootfs;
pub mod sbom;

use crate::diag::Result;
use crate::digest::Digest;
use crate::store::Store;

/// The artifact type (and layer media type) of an SBOM referrer.
pub const SPDX_JSON: &str = "application/spdx+json";
/// The artifact type (and layer media type) of a provenance referrer.
pub const IN_TOTO_JSON: &str = "application/vnd.in-toto+json";
const SPDX_NOASSERTION: &str = "NOASSERTION";

/// How much the provenance says, as BuildKit's `mode=`: `min` leaves out the ids of the secrets and
/// SSH agents the build mounted, `max` lists them (never a value).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Min,
    Max,
}

/// The attestations a build is asked for (`--attest`, `--sbom`, `--provenance`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub sbom: bool,
    pub provenance: Option<Mode>,
}

impl Request {
    pub fn is_empty(&self) -> bool {
        !self.sbom && self.provenance.is_none()
    }
}

/// The SBOM of the image whose layers (snapshots, bottom first) are `layers`, as SPDX JSON bytes, and
/// the package databases it found but cannot read (for a warning).
pub fn sbom(
    store: &Store,
    layers: &[String],
    name: &str,
    manifest: &Digest,
    created: i64,
) -> Result<(Vec<u8>, Vec<String>)> {
    let fs = rootfs::Merged::new(layers.iter().map(|l| store.snapshot_path(l)).collect());
    let inventory = sbom::inventory(&fs);
    let doc = sbom::document(&inventory, name, manifest, created);
    let bytes = crate::oci::canonical_json(&doc)
        .map_err(|e| crate::diag::Diagnostic::env(format!("cannot write the SBOM: {e}")))?;
    Ok((bytes, inventory.unread))
}

/// Seconds since the epoch as RFC 3339 in UTC (`2024-01-02T03:04:05Z`), as SPDX and SLSA write times.
pub fn rfc3339(secs: i64) -> String {
    let t = jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_in_utc() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
