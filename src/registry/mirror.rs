//! Registry mirrors, as buildkitd's `[registry."docker.io"] mirrors = ["mirror.internal:5000"]`: pulls
//! from a registry ask its mirrors first, in order, and the registry itself last (unless
//! `--registry-mirror-only`). Only where bytes come from changes: the image keeps its name (in the
//! lock, the provenance, messages), and every manifest and blob is still checked against its digest, so
//! a mirror can make a pull fail but never change what a digest-pinned or locked build gets.

use std::collections::BTreeMap;
use std::ops::Range;

use super::DOCKER_HUB;
use super::reference::{ImageName, valid_host};

/// See the module.
#[derive(Clone, Debug, Default)]
pub struct Mirrors {
    /// By registry as references normalise it (`docker.io`), its mirrors (`host[:port]`), in order.
    by_registry: BTreeMap<String, Vec<String>>,
    /// Registries with mirrors are never asked themselves: a pull the mirrors cannot serve fails.
    pub only: bool,
    /// Registries that are never asked themselves (`mirror-only` in registries.toml).
    only_for: std::collections::BTreeSet<String>,
}

impl Mirrors {
    /// Adds `REGISTRY=HOST[:PORT]`. `Err` holds what is wrong, how to write it instead, and the bytes of
    /// `spec` at fault.
    pub fn add(&mut self, spec: &str) -> Result<(), MirrorError> {
        let hint =
            "write `--registry-mirror REGISTRY=HOST[:PORT]`, e.g. `docker.io=mirror.internal:5000`";
        let bad = |why: String, at: Range<usize>| MirrorError {
            why,
            hint: hint.to_string(),
            at,
        };
        let Some((registry, mirror)) = spec.split_once('=') else {
            return Err(bad(
                format!("`{spec}` names no registry to mirror"),
                0..spec.len(),
            ));
        };
        let mirror_at = registry.len() + 1..spec.len();
        let registry = match registry {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
            r => r,
        };
        if !valid_host(registry) {
            let at = 0..spec.len() - mirror.len() - 1;
            return Err(bad(format!("`{registry}` is not a registry host"), at));
        }
        if mirror.is_empty() {
            return Err(bad(format!("`{spec}` names no mirror"), 0..spec.len()));
        }
        if let Some((scheme, _)) = mirror.split_once("://") {
            return Err(MirrorError {
                why: format!("a mirror is a host, not a URL (`{scheme}://`)"),
                hint: "write HOST[:PORT]: loopback mirrors are spoken to over plain HTTP, others over HTTPS unless named by `--insecure-registry`".to_string(),
                at: mirror_at,
            });
        }
        if !valid_host(mirror) {
            return Err(bad(format!("`{mirror}` is not a mirror host"), mirror_at));
        }
        let list = self.by_registry.entry(registry.to_string()).or_default();
        if !list.iter().any(|m| m == mirror) {
            list.push(mirror.to_string());
        }
        Ok(())
    }

    /// No registry has a mirror.
    pub fn is_empty(&self) -> bool {
        self.by_registry.is_empty()
    }

    /// Never asks `registry` itself, only its mirrors.
    pub(super) fn only_for(&mut self, registry: &str) {
        self.only_for.insert(registry.to_string());
    }

    /// Where to pull `name` from, in order: each mirror of its registry (`Some(host)`), then the
    /// registry itself (`None`) unless mirrors only are wanted. A reference whose registry has no mirror
    /// is asked of its registry alone.
    pub(super) fn hosts(&self, name: &ImageName) -> Vec<Option<String>> {
        let mirrors = self.by_registry.get(&name.registry);
        let mut hosts: Vec<Option<String>> =
            mirrors.into_iter().flatten().cloned().map(Some).collect();
        if hosts.is_empty() || !(self.only || self.only_for.contains(&name.registry)) {
            hosts.push(None);
        }
        hosts
    }
}

/// A `--registry-mirror` value kiln cannot use.
#[derive(Debug)]
pub struct MirrorError {
    pub why: String,
    pub hint: String,
    /// The bytes of the value at fault.
    pub at: Range<usize>,
}
