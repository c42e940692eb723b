//! The attestations of a built image: its SBOM and provenance made by `attest`, searched for every
//! secret given to the build as the image itself was, then made referrers of the image
//! (`export::attach`) for the OCI layouts and pushes that carry them.

use petgraph::stable_graph::NodeIndex;

use crate::attest::provenance::Invocation;
use crate::attest::{IN_TOTO_JSON, Request, SPDX_JSON};
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::export::Image;
use crate::export::attach::{self, Referrer};
use crate::graph::Dag;
use crate::progress::{Event, Reporter};
use crate::secret::LeakScanner;
use crate::store::Store;

/// What one image's attestations are made from.
pub(super) struct Subject<'a> {
    pub(super) root: NodeIndex,
    /// The image's name: its first `-t`, else the stage or target.
    pub(super) name: &'a str,
    pub(super) layers: &'a [String],
    /// The image config, whose `os`/`architecture`/`variant` are the provenance's platform.
    pub(super) config: &'a serde_json::Value,
}

/// What every image's attestations share.
pub(super) struct Attesting<'a> {
    pub(super) request: Request,
    pub(super) invocation: &'a Invocation,
    pub(super) epoch: Option<i64>,
    pub(super) scanner: &'a LeakScanner,
}

pub(super) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Attesting<'_> {
    /// Makes the image's attestations and sets them as its referrers (blobs in the store).
    pub(super) fn attach(
        &self,
        store: &Store,
        graph: &Dag,
        summary: &crate::solve::Summary,
        subject: &Subject<'_>,
        image: &mut Image,
        reporter: &dyn Reporter,
    ) -> Result<()> {
        let manifest = Digest::of(&image.manifest);
        // With SOURCE_DATE_EPOCH the SBOM is the same for the same image; the provenance records
        // when this build ran, which is what it is for.
        let created = self.epoch.unwrap_or_else(now);
        let mut referrers = Vec::new();
        if self.request.sbom {
            let (bytes, unread) =
                crate::attest::sbom(store, subject.layers, subject.name, &manifest, created)?;
            for what in unread {
                reporter.event(Event::Note(format!(
                    "warning: the SBOM of {} does not list the packages of {what}: kiln reads dpkg and apk databases, and no Rust reader of rpm's is at hand",
                    subject.name
                )));
            }
            referrers.push(self.referrer(SPDX_JSON, "SBOM", bytes, created, subject.name)?);
        }
        if let Some(mode) = self.request.provenance {
            let mut inv = self.invocation.clone();
            inv.finished = now();
            // Each image says which platform it is for; the command line's default stands otherwise.
            let c = subject.config;
            if let (Some(os), Some(arch)) = (c["os"].as_str(), c["architecture"].as_str()) {
                inv.platform = match c["variant"].as_str() {
                    Some(v) => format!("{os}/{arch}/{v}"),
                    None => format!("{os}/{arch}"),
                };
            }
            let statement = crate::attest::provenance::statement(
                graph,
                summary,
                subject.root,
                subject.name,
                &manifest,
                &inv,
                mode,
            );
            let bytes = crate::oci::canonical_json(&statement)
                .map_err(|e| Diagnostic::env(format!("cannot write the provenance: {e}")))?;
            referrers.push(self.referrer(
                IN_TOTO_JSON,
                "provenance",
                bytes,
                created,
                subject.name,
            )?);
        }
        image.referrers = attach::artifacts(store, image, &referrers)?;
        Ok(())
    }

    /// A document as a referrer, once the leak guard has searched it (every decoded string) for every
    /// secret given: a build arg or a package field could hold one.
    fn referrer(
        &self,
        media_type: &str,
        what: &str,
        payload: Vec<u8>,
        created: i64,
        name: &str,
    ) -> Result<Referrer> {
        let doc: serde_json::Value = serde_json::from_slice(&payload)
            .map_err(|e| Diagnostic::env(format!("the {what} is not JSON: {e}")))?;
        if let Some((leak, at)) = crate::export::scan_json(self.scanner, &doc) {
            return Err(Diagnostic::build(format!(
                "the {what} of {name} would hold the value of secret `{}` (at {at}); nothing was written",
                leak.id
            ))
            .help("a build arg may not carry a secret's value: pass it with `--secret` and mount it"));
        }
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(
            "org.opencontainers.image.created".to_string(),
            crate::attest::rfc3339(created),
        );
        Ok(Referrer {
            artifact_type: media_type.to_string(),
            payload,
            annotations,
        })
    }
}
