//! Talks to OCI registries: image references, pulling an image into an OCI layout in the store, pushing a
//! layout's image, and credentials from `~/.docker/config.json` (plus its credential helpers).
//!
//! Only the build talks to a registry (`kiln graph` never does). Everything that comes over the wire is
//! hashed while it streams and refused unless it matches its digest, so the store only ever holds verified
//! content. Transient failures (refused or reset connections, timeouts, 5xx, 429) are retried with
//! backoff; anything else is a `Diagnostic` naming the registry and the reference, and never a credential.

mod artifact;
mod auth;
mod client;
mod config;
mod mirror;
mod pull;
mod push;
mod reference;
mod referrers;
mod sources;
mod stream;
#[cfg(test)]
mod tests;

pub(crate) use artifact::{Artifact, attach};
pub use auth::{Options, Pulled};
pub(crate) use client::install_crypto;
pub use config::config_paths;
pub use mirror::{MirrorError, Mirrors};
pub(crate) use pull::{fetch_blobs, fetch_manifest, pull, resolve_digest};
pub(crate) use push::{push, push_all, push_index, push_manifest};
pub(crate) use reference::{ImageName, valid_component};
pub(crate) use referrers::push_referrer;
pub(crate) use sources::dir as sources_dir;

use std::time::Duration;

pub(super) const DOCKER_HUB: &str = "docker.io";
/// The key docker itself files Docker Hub credentials under in config.json.
pub(super) const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";
pub(super) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(super) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Manifests and indexes kiln understands; schema-1 manifests are refused by not asking for them.
pub(super) const ACCEPT: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
/// Indexes may nest, but a real image never needs more than a couple of levels.
pub(super) const MAX_INDEX_DEPTH: usize = 4;
/// Attempts per request, the first included.
pub(super) const ATTEMPTS: u32 = 4;
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Upload read size: oci-client sends one PATCH per chunk of at most 4 MiB, so reading as much keeps
/// requests few while memory stays flat whatever the layer's size.
pub(super) const UPLOAD_CHUNK: usize = 4 << 20;
/// Layers fetched at once: enough to fill a link, few enough not to upset a registry's rate limits.
pub(super) const PARALLEL_DOWNLOADS: usize = 3;
/// Blobs of one image sent at once: a big image's layers share the link instead of queueing behind each
/// other, and a registry's rate limits are not upset.
pub(super) const PARALLEL_UPLOADS: usize = 3;
