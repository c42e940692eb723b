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

mod attest;
mod early;
mod interrupt;
mod leak;
mod report;
mod run;
mod summary;

pub use report::Report;

pub(crate) use run::execute;

/// A build, validated: what to build, with what, and where its results go.
pub struct BuildRequest {
    /// The compiled graph: one root per selected target.
    pub graph: Dag,
    /// With several `--platform`s, the platform of each root, in order: the roots are the images of
    /// one image index.
    pub platforms: Vec<crate::platform::Platform>,
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
    /// `--push` without `-t`: each image goes to the tags its target declares (`.build`'s
    /// `tagged [...]`); one that declares none is built and not pushed.
    pub push_declared: bool,
    /// The `-t` names: the first is recorded in an OCI layout's index, all of them in a docker-archive
    /// and a `--load`.
    pub tags: Vec<String>,
    /// Nothing else to do with the images: keep each in the store under its names (the `-t` names, as
    /// buildx keeps it in its builder, or its target's declared tags), for `kiln images` and
    /// `kiln image export|push`.
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
    /// The store, opened once for the pulls lowering made and the build.
    pub store: std::sync::Arc<crate::store::Store>,
    /// `--remote-executor` or `--remote-cache`.
    pub remote: Option<Remote>,
    /// `--label`: image config labels over the build's own.
    pub labels: BTreeMap<String, String>,
    /// `--iidfile`, `--metadata-file`, `-q`.
    pub report: Report,
    /// `--no-cache-filter`: the nodes of the stages or targets named, which run even on a cache hit.
    pub no_cache_for: std::collections::HashSet<petgraph::stable_graph::NodeIndex>,
    /// `--network`, `--add-host`, `--shm-size`, `--ulimit`: what every RUN step gets.
    pub sandbox: crate::solve::Sandbox,
    /// `--attest`, `--sbom`, `--provenance`: what to attach to each image.
    pub attest: crate::attest::Request,
    /// What the build was asked to do, for the provenance (its times are filled in by the build).
    pub invocation: crate::attest::provenance::Invocation,
    /// `--sign`: the key every pushed image is signed with.
    pub sign: Option<crate::sign::SigningKey>,
    /// `--on-error=shell`: a shell in the sandbox of a RUN step that fails.
    pub debug: Option<crate::solve::DebugShell>,
    /// Where a copy of the build's progress events goes (`kiln build`'s memo of a no-op build).
    pub transcript: Option<progress::Transcript>,
}

impl BuildRequest {
    /// Whether the build leaves nothing but its results in the store (names included) and was given
    /// nothing a memo of it could not check: no output, push, cache export or report, no SSH agent,
    /// remote or value guarded like a secret (the `--sign` key). Secrets may be given: no cache key
    /// holds their values, and the memo searches its images for them again each time it is used. Only
    /// such a build may be answered from `kiln build`'s memo when nothing it read has changed. Every
    /// field is named, so that a new one must be decided here.
    pub fn only_stores(&self) -> bool {
        let BuildRequest {
            graph: _,
            platforms: _,
            contexts: _,
            secrets,
            ssh,
            allow: _,
            outputs,
            pushes,
            push_declared,
            tags: _,
            keep_named: _,
            cache_to,
            cache_from,
            registry: _,
            settings: _,
            no_cache,
            progress: _,
            store: _,
            remote,
            labels: _,
            report,
            no_cache_for,
            sandbox: _,
            attest,
            invocation: _,
            sign,
            debug,
            transcript: _,
        } = self;
        secrets.guarded().next().is_none()
            && ssh.is_empty()
            && outputs.is_empty()
            && pushes.is_empty()
            && !push_declared
            && cache_to.is_empty()
            && cache_from.is_empty()
            && !no_cache
            && remote.is_none()
            && !report.wanted()
            && no_cache_for.is_empty()
            && attest.is_empty()
            && sign.is_none()
            && debug.is_none()
    }
}

/// What a build shows about its secrets before its steps (one too short to search for), each time it
/// runs: `kiln build`'s memo shows these anew, from the secrets as they are then.
pub(crate) fn secret_notes(secrets: &SecretStore) -> Vec<String> {
    (secrets.warnings().into_iter())
        .map(|w| format!("warning: {w}"))
        .collect()
}

/// A REAPI server to run steps on, or to use as a shared cache.
pub struct Remote {
    pub url: String,
    /// Where the address is on the command line, for the error when it is not one.
    pub at: Option<Located>,
    pub instance: String,
    /// `--remote-executor` (run steps there), not `--remote-cache` (look results up there).
    pub execute: bool,
    /// `--remote-timeout`.
    pub timeout: Option<std::time::Duration>,
    /// `--remote-accept-cached` (`--no-cache` turns it off).
    pub accept_cached: bool,
    /// TLS and headers (`--remote-tls-*`, `--remote-header`).
    pub(crate) connect: crate::remote::Connect,
    /// `--remote-credential-helper`: run before the build connects, and again before its headers expire.
    pub credential_helper: Option<PathBuf>,
    /// `--remote-secrets=allow`: steps that mount secrets run there too, their values served over
    /// this channel.
    pub secrets: Option<SecretChannel>,
}

/// The endpoint a build serves its remote steps' secrets on, and its TLS identity (PEM files).
pub struct SecretChannel {
    /// `HOST:PORT` to listen on and to tell workers.
    pub listen: String,
    /// The CA a worker's certificate must be signed by.
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// A credential helper's headers for `url`, and when they expire. For the build's remote and
/// `kiln worker` (which renews them).
pub(crate) fn helper_headers(
    helper: &std::path::Path,
    url: &str,
) -> crate::diag::Result<(Vec<crate::remote::Header>, Option<std::time::SystemTime>)> {
    let answer = crate::exec::credential::get(helper, url)?;
    let mut headers = Vec::new();
    for (name, value) in answer.headers {
        headers.push(crate::remote::Header::new(&name, value).map_err(|m| {
            crate::diag::Diagnostic::env(format!(
                "credential helper `{}` answered a bad header: {m}",
                helper.display()
            ))
        })?);
    }
    Ok((headers, answer.expires))
}

/// Runs the credential helper again before its headers expire (30 s ahead; every 30 minutes when it
/// does not say, as Bazel's default `--credential_helper_cache_duration`), for as long as the build or
/// the worker runs. A failed renewal keeps the old headers and is retried a minute later.
pub(crate) async fn renew_credentials(
    server: crate::remote::Server,
    helper: std::path::PathBuf,
    url: String,
    mut expires: Option<std::time::SystemTime>,
) {
    use std::time::{Duration, SystemTime};
    loop {
        let wait = match expires {
            Some(t) => t
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .saturating_sub(Duration::from_secs(30)),
            None => Duration::from_secs(30 * 60),
        };
        tokio::time::sleep(wait.max(Duration::from_secs(5))).await;
        let (h, u) = (helper.clone(), url.clone());
        match tokio::task::spawn_blocking(move || helper_headers(&h, &u)).await {
            Ok(Ok((headers, until))) => {
                server.renew_headers(headers);
                expires = until;
            }
            Ok(Err(d)) => {
                crate::progress::line(&format!(
                    "kiln: cannot renew the remote's credentials: {}",
                    d.message
                ));
                expires = Some(SystemTime::now() + Duration::from_secs(90));
            }
            Err(_) => return,
        }
    }
}
