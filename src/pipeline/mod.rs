//! A validated build and running it: [`BuildRequest`] holds everything `kiln build` checks before it runs
//! a step (the compiled graph and its contexts, secrets, SSH agents, entitlements, outputs and pushes,
//! cache imports and exports) and [`execute`] runs it through solve, the leak guard and export. The
//! command line makes the request (`cli`); the façade (`crate::build`) runs it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::diag::Located;
use crate::graph::entitlement::Entitlement;
use crate::graph::{Dag, NamedContext};
use crate::progress;
use crate::secret::{SecretStore, SshSource};

mod leak;
mod run;

pub(crate) use run::execute;

/// A build, validated: what to build, with what, and where its results go.
pub struct BuildRequest {
    /// The compiled graph: one root per selected target.
    pub graph: Dag,
    /// The directories and images the graph's contexts name (`context`, `--build-context`, packages).
    pub contexts: BTreeMap<String, NamedContext>,
    /// `--secret`.
    pub secrets: SecretStore,
    /// `--ssh`: the agent (or key files) for each ssh id.
    pub ssh: BTreeMap<String, SshSource>,
    /// `--allow`: the entitlements granted to steps.
    pub allow: Vec<Entitlement>,
    /// `-o` outputs other than registries.
    pub outputs: Vec<crate::export::Output>,
    /// Where to push the image: `-o type=registry` names and, with `--push`, the `-t` names.
    pub pushes: Vec<String>,
    /// The `-t` names: the first is recorded in an OCI layout's index, all of them in a docker-archive
    /// and a `--load`.
    pub tags: Vec<String>,
    /// Keep the image in the store under the `-t` names (`-t` without an output or a push, as buildx
    /// keeps it in its builder), for `kiln images` and `kiln image export|push`.
    pub keep_named: bool,
    /// `--cache-to`, each with whether a failure is only a warning (`ignore-error=true`).
    pub cache_to: Vec<(crate::export::cache::CacheTo, bool)>,
    /// `--cache-from`.
    pub cache_from: Vec<crate::solve::shared_cache::Source>,
    pub registry: crate::registry::Options,
    /// `SOURCE_DATE_EPOCH`, `--compression` and `--jobs`, as the exporters take them.
    pub settings: crate::export::Settings,
    pub no_cache: bool,
    pub progress: progress::Mode,
    /// The store directory.
    pub store: PathBuf,
    /// `--remote-executor` or `--remote-cache`.
    pub remote: Option<Remote>,
}

/// A REAPI server to run steps on, or to use as a shared cache.
pub struct Remote {
    pub url: String,
    /// Where the address is on the command line, for the error when it is not one.
    pub at: Option<Located>,
    pub instance: String,
    /// `--remote-executor` (run steps there), not `--remote-cache` (look results up there).
    pub execute: bool,
}
