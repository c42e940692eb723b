//! How to reach registries (`Options`) and the credentials for one, from docker's `config.json` and its
//! credential helpers.

use std::path::{Path, PathBuf};

use oci_client::secrets::RegistryAuth;

use super::reference::ImageName;
use crate::diag::{Diagnostic, Result};

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--insecure-registry HOST[:PORT]`: registries spoken to over plain HTTP (a bare `HOST` covers every
    /// port). Loopback registries always are.
    pub insecure: Vec<String>,
    /// Where `config.json` lives; `None` means `$DOCKER_CONFIG`, else `~/.docker`, as docker does.
    pub docker_config: Option<PathBuf>,
    /// The images this build pulled, by reference as written, and the layouts they became: a tag is
    /// asked of its registry once per build, so every use of it (its config while compiling, its layers
    /// while building, a `COPY --from` of it) sees one manifest. Clones share it.
    pub pulled: Pulled,
    /// `--registry-mirror`: where pulls ask first.
    pub mirrors: super::Mirrors,
    /// Registries spoken to over HTTPS without verifying their certificate (`insecure = true` in
    /// registries.toml, as buildkitd spells it).
    pub skip_verify: Vec<String>,
    /// By registry, PEM CAs trusted besides the system's (`ca = [...]` in registries.toml).
    pub ca: std::collections::BTreeMap<String, Vec<Vec<u8>>>,
    /// Set for a build: a pull unpacks each layer into its snapshot as it downloads, for a user namespace
    /// with the ids this returns (asked when the pull runs, after rootless kiln entered its namespace).
    pub unpack: Option<fn() -> crate::layer::Ids>,
    /// The store's record of where pulled blobs came from (`registry::sources_dir`): a push mounts a
    /// blob from the repository of the same registry it was pulled from instead of sending it.
    pub sources: Option<PathBuf>,
}

/// See [`Options::pulled`].
#[derive(Clone, Debug, Default)]
pub struct Pulled(std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, PathBuf>>>);

impl Pulled {
    pub(super) fn get(&self, reference: &str) -> Option<PathBuf> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(reference).cloned()
    }
    pub(super) fn insert(&self, reference: &str, layout: PathBuf) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(reference.to_string(), layout);
    }
}

impl Options {
    pub(super) fn plain_http(&self, registry: &str) -> bool {
        let host = host_of(registry);
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
            || self
                .insecure
                .iter()
                .any(|i| i == registry || (!i.contains(':') || i.starts_with('[')) && i == host)
    }

    /// The config file as messages name it: `~/.docker/config.json` unless moved elsewhere.
    pub(super) fn config_shown(&self) -> String {
        let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json"));
        match self.config_path() {
            Some(p) if Some(&p) != home.as_ref() => p.display().to_string(),
            _ => "~/.docker/config.json".to_string(),
        }
    }

    fn config_path(&self) -> Option<PathBuf> {
        let dir = self
            .docker_config
            .clone()
            .or_else(|| std::env::var_os("DOCKER_CONFIG").map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker")))?;
        Some(dir.join("config.json"))
    }
}

/// `host:port` → `host`, `[::1]:5000` → `[::1]`.
fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry
            .split_once(']')
            .map_or(registry, |(h, _)| &registry[..h.len() + 1]);
    }
    registry.rsplit_once(':').map_or(registry, |(h, _)| h)
}

/// Credentials for one registry. Holds the password only as long as the client needs it.
pub(super) struct Credentials {
    pub(super) auth: RegistryAuth,
    /// The secret part, so that any message can be scrubbed of it before it is shown.
    pub(super) secret: Option<String>,
}

/// Reads the credentials for `name`'s registry from config.json (`auths`, `credHelpers`, `credsStore`).
pub(super) fn credentials(name: &ImageName, opts: &Options) -> Result<Credentials> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let anonymous = Credentials {
        auth: RegistryAuth::Anonymous,
        secret: None,
    };
    let Some(path) = opts.config_path() else {
        return Ok(anonymous);
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(anonymous),
        Err(e) => return Err(Diagnostic::io(format!("cannot read {}", path.display()), e)),
    };
    let shown = path.display();
    match docker_credential::get_credential_from_reader(
        std::io::BufReader::new(file),
        name.auth_key(),
    ) {
        Ok(DockerCredential::UsernamePassword(user, password)) => Ok(Credentials {
            secret: Some(password.clone()),
            auth: RegistryAuth::Basic(user, password),
        }),
        // An identity token is an OAuth2 refresh token that must be exchanged first; oci-client cannot.
        Ok(DockerCredential::IdentityToken(_)) => Err(Diagnostic::input(format!(
            "{shown} holds an identity token for {}, which kiln cannot use yet",
            name.registry
        ))
        .help(
            "store a username and password (or a registry token as the password) for it instead",
        )),
        Err(E::NoCredentialConfigured) => Ok(anonymous),
        // The helper's own output is not shown: some helpers echo what they were given.
        Err(E::HelperFailure { helper, .. }) => Err(Diagnostic::env(format!(
            "credential helper `docker-credential-{helper}` failed for {} (configured in {shown})",
            name.registry
        ))),
        Err(E::HelperCommunicationError) => Err(Diagnostic::env(format!(
            "cannot run the credential helper for {} (configured in {shown})",
            name.registry
        ))
        .help("is `docker-credential-<helper>` installed and on PATH?")),
        Err(e) => Err(Diagnostic::input(format!(
            "cannot read the credentials for {} from {shown}: {e}",
            name.registry
        ))),
    }
}
