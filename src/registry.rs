//! Talks to OCI registries: image references, pulling an image into an OCI layout in the store, pushing a
//! layout's image, and credentials from `~/.docker/config.json` (plus its credential helpers).
//!
//! Only the build talks to a registry (`kiln graph` never does). Everything that comes over the wire is
//! hashed while it streams and refused unless it matches its digest, so the store only ever holds verified
//! content. Transient failures (refused or reset connections, timeouts, 5xx, 429) are retried with
//! backoff; anything else is a `Diagnostic` naming the registry and the reference, and never a credential.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt as _, TryStreamExt as _};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::store::Store;

const DOCKER_HUB: &str = "docker.io";
/// The key docker itself files Docker Hub credentials under in config.json.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Manifests and indexes kiln understands; schema-1 manifests are refused by not asking for them.
const ACCEPT: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
/// Indexes may nest, but a real image never needs more than a couple of levels.
const MAX_INDEX_DEPTH: usize = 4;
/// Attempts per request, the first included.
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Upload read size: oci-client sends one PATCH per chunk of at most 4 MiB, so reading as much keeps
/// requests few while memory stays flat whatever the layer's size.
const UPLOAD_CHUNK: usize = 4 << 20;
/// Layers fetched at once: enough to fill a link, few enough not to upset a registry's rate limits.
const PARALLEL_DOWNLOADS: usize = 3;

/// An image reference, normalised as docker does: `busybox` is `docker.io/library/busybox:latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageName {
    /// `host[:port]`; `docker.io` for Docker Hub.
    pub registry: String,
    pub repository: String,
    /// `None` only when a digest is given without a tag.
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

impl ImageName {
    /// Parses `[host[:port]/]name[:tag][@digest]` with the grammar of distribution/reference.
    pub fn parse(reference: &str) -> Result<ImageName> {
        let bad = |why: &str| {
            Diagnostic::input(format!("invalid image reference `{reference}`: {why}")).help(
                "write `[HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST]`, e.g. `busybox`, `127.0.0.1:5000/team/app:1.0`",
            )
        };
        if reference.is_empty() {
            return Err(bad("it is empty"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, d)) => {
                if Digest::parse(d).is_none() {
                    return Err(bad(&format!(
                        "`{d}` is not a digest (want sha256:<64 lower-case hex>)"
                    )));
                }
                (rest, Some(d.to_string()))
            }
            None => (reference, None),
        };
        // A tag is the text after a `:` that follows the last `/`; an earlier `:` belongs to a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(bad(&format!(
                        "`{tag}` is not a valid tag (letters, digits, `_`, `.` and `-`, at most 128, not starting with `.` or `-`)"
                    )));
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(bad("the name is empty"));
        }
        // Docker's rule: the first component is a registry only if it looks like a host.
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if !valid_host(&registry) {
            return Err(bad(&format!("`{registry}` is not a valid registry host")));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository names must be lower-case"));
        }
        if let Some(c) = repository.split('/').find(|c| !valid_component(c)) {
            return Err(bad(&format!(
                "`{c}` is not a valid name component (lower-case letters and digits, separated by `.`, `_`, `__` or dashes)"
            )));
        }
        if registry.len() + 1 + repository.len() > 255 {
            return Err(bad("the name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_string()),
            (t, _) => t,
        };
        Ok(ImageName {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry as oci-client and config.json know it.
    fn auth_key(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_AUTH_KEY
        } else {
            &self.registry
        }
    }

    fn oci(&self) -> Reference {
        let (registry, repository) = (self.registry.clone(), self.repository.clone());
        match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => {
                Reference::with_tag_and_digest(registry, repository, t.clone(), d.clone())
            }
            (None, Some(d)) => Reference::with_digest(registry, repository, d.clone()),
            (t, None) => Reference::with_tag(
                registry,
                repository,
                t.clone().unwrap_or_else(|| "latest".to_string()),
            ),
        }
    }

    fn with_digest(&self, digest: &str) -> Reference {
        Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            digest.to_string(),
        )
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && tag.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`: one path component of an image name (distribution/reference).
pub fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// `host`, `host:port` or `[ipv6]:port`.
fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, rest)) => {
                if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                    return false;
                }
                ("v6", rest.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = !name.is_empty()
        && name.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    port_ok && name_ok
}

/// How to reach registries.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--insecure-registry HOST[:PORT]`: registries spoken to over plain HTTP (a bare `HOST` covers every
    /// port). Loopback registries always are.
    pub insecure: Vec<String>,
    /// Where `config.json` lives; `None` means `$DOCKER_CONFIG`, else `~/.docker`, as docker does.
    pub docker_config: Option<PathBuf>,
}

impl Options {
    fn plain_http(&self, registry: &str) -> bool {
        let host = host_of(registry);
        matches!(host, "localhost" | "127.0.0.1" | "[::1]")
            || self
                .insecure
                .iter()
                .any(|i| i == registry || (!i.contains(':') || i.starts_with('[')) && i == host)
    }

    /// The config file as messages name it: `~/.docker/config.json` unless moved elsewhere.
    fn config_shown(&self) -> String {
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
struct Credentials {
    auth: RegistryAuth,
    /// The secret part, so that any message can be scrubbed of it before it is shown.
    secret: Option<String>,
}

/// Reads the credentials for `name`'s registry from config.json (`auths`, `credHelpers`, `credsStore`).
fn credentials(name: &ImageName, opts: &Options) -> Result<Credentials> {
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

/// rustls needs one process-wide crypto provider; kiln uses ring (aws-lc would be a slow C build).
fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means someone installed one already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client and credentials for one registry and one operation.
struct Session {
    client: Client,
    name: ImageName,
    creds: Credentials,
    /// `pull` or `push`, for messages.
    action: &'static str,
    plain_http: bool,
    /// config.json as the user knows it, for messages.
    config_shown: String,
}

impl Session {
    async fn open(name: ImageName, opts: &Options, op: RegistryOperation) -> Result<Session> {
        install_crypto();
        let creds = credentials(&name, opts)?;
        let plain_http = opts.plain_http(&name.registry);
        let protocol = if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(300)),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| Diagnostic::env(format!("cannot set up a registry client: {e}")))?;
        let action = match op {
            RegistryOperation::Pull => "pull",
            RegistryOperation::Push => "push",
        };
        let session = Session {
            client,
            name,
            creds,
            action,
            plain_http,
            config_shown: opts.config_shown(),
        };
        // Authenticate once up front, so a wrong password is reported as such rather than as the first
        // request that happened to be refused.
        let reference = session.name.oci();
        session
            .retry("authenticate", || {
                session.client.auth(&reference, &session.creds.auth, op)
            })
            .await?;
        Ok(session)
    }

    /// Runs `attempt` until it succeeds, fails for good, or has failed transiently `ATTEMPTS` times.
    async fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut tries = 1;
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) if tries < ATTEMPTS && transient(&e) => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    tries += 1;
                }
                Err(e) => return Err(self.error(what, &e, tries)),
            }
        }
    }

    /// Turns a client error into a diagnostic that says which registry, which image and what to do.
    fn error(&self, what: &str, e: &OciDistributionError, tries: u32) -> Diagnostic {
        let registry = &self.name.registry;
        let head = format!("cannot {} `{}`", self.action, self.name);
        let config = &self.config_shown;
        let status = status_of(e);
        let d = if status == Some(401)
            || matches!(e, OciDistributionError::AuthenticationFailure(_))
        {
            if self.creds.secret.is_some() {
                Diagnostic::input(format!(
                    "{head}: authentication failed for {registry} (check {config})"
                ))
                .help(format!(
                    "{registry} refused the credentials for it in {config} (or from its credential helper)"
                ))
            } else {
                Diagnostic::input(format!(
                    "{head}: {registry} requires authentication and {config} has no credentials for it"
                ))
                .help(format!("log in first (`docker login {registry}` writes {config})"))
            }
        } else if status == Some(403) {
            Diagnostic::input(format!(
                "{head}: {registry} denies access to {}",
                self.name.repository
            ))
        } else if status == Some(404)
            || matches!(e, OciDistributionError::ImageManifestNotFoundError(_))
            || registry_code(
                e,
                &[
                    "MANIFEST_UNKNOWN",
                    "NAME_UNKNOWN",
                    "NOT_FOUND",
                    "BLOB_UNKNOWN",
                ],
            )
        {
            Diagnostic::input(format!("{head}: not found on {registry} ({what})"))
        } else if let OciDistributionError::RequestError(re) = e
            && (re.is_connect() || re.is_timeout())
        {
            let mut d = Diagnostic::env(format!(
                "{head}: cannot reach {registry} ({tries} attempts): {}",
                error_chain(re)
            ));
            if !self.plain_http {
                d = d.help(format!(
                    "if {registry} serves plain HTTP, pass `--insecure-registry {registry}`"
                ));
            }
            d
        } else {
            let mut d = Diagnostic::env(format!("{head}: {what} failed on {registry}: {e}"));
            if tries > 1 {
                d = d.help(format!("gave up after {tries} attempts"));
            }
            d
        };
        self.scrub(d)
    }

    /// Belt and braces: no message may carry the password, whatever a registry echoes back.
    fn scrub(&self, mut d: Diagnostic) -> Diagnostic {
        if let Some(secret) = self.creds.secret.as_deref().filter(|s| !s.is_empty()) {
            d.message = d.message.replace(secret, "***");
            d.help = d.help.map(|h| h.replace(secret, "***"));
        }
        d
    }
}

fn status_of(e: &OciDistributionError) -> Option<u16> {
    match e {
        OciDistributionError::UnauthorizedError { .. } => Some(401),
        OciDistributionError::ServerError { code, .. } => Some(*code),
        OciDistributionError::RequestError(re) => re.status().map(|s| s.as_u16()),
        _ => None,
    }
}

fn registry_code(e: &OciDistributionError, codes: &[&str]) -> bool {
    let OciDistributionError::RegistryError { envelope, .. } = e else {
        return false;
    };
    envelope.errors.iter().any(|err| {
        serde_json::to_value(&err.code)
            .ok()
            .and_then(|v| v.as_str().map(|s| codes.contains(&s)))
            .unwrap_or(false)
    })
}

/// reqwest's top-level message ("error sending request") hides the cause; show the whole chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Worth another try: the network or the server hiccuped, the request itself was fine.
fn transient(e: &OciDistributionError) -> bool {
    use std::io::ErrorKind as K;
    match e {
        OciDistributionError::RequestError(re) => {
            re.is_connect()
                || re.is_timeout()
                || re.is_body()
                || re
                    .status()
                    .is_some_and(|s| s.is_server_error() || s.as_u16() == 429)
                || (re.is_request() && re.status().is_none())
        }
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        OciDistributionError::IoError(io) => matches!(
            io.kind(),
            K::ConnectionReset
                | K::ConnectionAborted
                | K::BrokenPipe
                | K::UnexpectedEof
                | K::TimedOut
        ),
        _ => false,
    }
}

/// Runs a registry operation to completion from synchronous code. Inside kiln's runtime (the solver calls
/// from `spawn_blocking`) it uses that runtime; elsewhere (the driver after solving) it makes a small one.
fn block_on<F: Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(f),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime starts")
            .block_on(f),
    }
}

/// Pulls `reference` (linux/amd64 from an index) into an OCI layout under `<store>/images/` and returns
/// the layout's path, for `oci::read_image`.
///
/// Layouts are keyed by the image manifest's digest, so a layout never changes once renamed into place
/// and a build reading one is never disturbed by another pulling a newer tag. Blobs the store already
/// holds are linked, not fetched: pulling an image again transfers only its manifest.
pub fn pull(store: &Store, reference: &str, opts: &Options) -> Result<PathBuf> {
    let name = ImageName::parse(reference)?;
    block_on(pull_async(store, name, opts))
}

async fn pull_async(store: &Store, name: ImageName, opts: &Options) -> Result<PathBuf> {
    let s = Session::open(name, opts, RegistryOperation::Pull).await?;
    let (manifest, digest) = resolve(&s).await?;
    let images = store.root().join("images");
    let dest = images.join(Digest::parse(&digest).expect("checked by resolve").hex());
    if dest.join("index.json").is_file() {
        return Ok(dest);
    }
    let json: Value = serde_json::from_slice(&manifest).map_err(|e| {
        Diagnostic::env(format!(
            "manifest {digest} of `{}` is not JSON: {e}",
            s.name
        ))
    })?;
    let mut wanted = vec![descriptor(&json["config"], &s, &digest)?];
    for layer in json["layers"].as_array().into_iter().flatten() {
        wanted.push(descriptor(layer, &s, &digest)?);
    }

    let tmp = store.temp_dir("pull-")?;
    let layout = tmp.path().join("layout");
    let blob_dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir)
        .map_err(|e| Diagnostic::io("cannot create a pull directory", e))?;
    futures_util::stream::iter(wanted.iter().map(|d| fetch_blob(&s, store, d, &blob_dir)))
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .try_collect::<Vec<()>>()
        .await?;
    crate::oci::write_layout(&layout, &manifest, None, &[])
        .map_err(|e| Diagnostic::env(format!("cannot write the layout of `{}`: {e}", s.name)))?;
    std::fs::create_dir_all(&images)
        .map_err(|e| Diagnostic::io("cannot create the image directory", e))?;
    if let Err(e) = std::fs::rename(&layout, &dest) {
        // Another build pulled the same image meanwhile: same digest, same content, so theirs serves.
        if !dest.join("index.json").is_file() {
            return Err(Diagnostic::io(
                format!("cannot store the layout of `{}`", s.name),
                e,
            ));
        }
    }
    Ok(dest)
}

/// Fetches the manifest `s.name` points at, following an index to its linux/amd64 image. Returns the
/// manifest bytes and their (verified) digest.
async fn resolve(s: &Session) -> Result<(Bytes, String)> {
    let mut reference = s.name.oci();
    let mut expected = s.name.digest.clone();
    for _ in 0..MAX_INDEX_DEPTH {
        let (bytes, _) = s
            .retry("manifest", || {
                s.client
                    .pull_manifest_raw(&reference, &s.creds.auth, &ACCEPT)
            })
            .await?;
        let digest = Digest::of(&bytes).to_string();
        if let Some(want) = &expected
            && *want != digest
        {
            return Err(Diagnostic::env(format!(
                "cannot pull `{}`: {} sent a manifest whose digest is {digest}, not {want}",
                s.name, s.name.registry
            )));
        }
        let json: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Diagnostic::env(format!(
                "cannot pull `{}`: the manifest is not JSON: {e}",
                s.name
            ))
        })?;
        let media_type = json["mediaType"].as_str().unwrap_or_default();
        let is_index =
            media_type == OCI_INDEX || media_type == DOCKER_LIST || json.get("manifests").is_some();
        if !is_index {
            return Ok((bytes, digest));
        }
        let chosen = json["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| {
                Diagnostic::input(format!(
                    "cannot pull `{}`: its image index has no linux/amd64 image",
                    s.name
                ))
            })?;
        if Digest::parse(chosen).is_none() {
            return Err(Diagnostic::env(format!(
                "cannot pull `{}`: its index names `{chosen}`, which is not a sha256 digest",
                s.name
            )));
        }
        reference = s.name.with_digest(chosen);
        expected = Some(chosen.to_string());
    }
    Err(Diagnostic::env(format!(
        "cannot pull `{}`: its image indexes nest too deeply",
        s.name
    )))
}

fn descriptor(v: &Value, s: &Session, manifest: &str) -> Result<OciDescriptor> {
    let digest = v["digest"].as_str().filter(|d| Digest::parse(d).is_some());
    let size = v["size"].as_i64().filter(|n| *n >= 0);
    match (digest, size) {
        (Some(d), Some(n)) => Ok(OciDescriptor {
            media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
            digest: d.to_string(),
            size: n,
            ..OciDescriptor::default()
        }),
        _ => Err(Diagnostic::env(format!(
            "cannot pull `{}`: manifest {manifest} has a descriptor without a sha256 digest and size",
            s.name
        ))),
    }
}

/// Puts one blob into the layout: linked from the store when there, else downloaded (hashed and
/// size-checked as it streams) into the store first.
async fn fetch_blob(
    s: &Session,
    store: &Store,
    desc: &OciDescriptor,
    blob_dir: &Path,
) -> Result<()> {
    let digest = Digest::parse(&desc.digest).expect("checked by descriptor");
    let in_store = store.blob_path(&digest);
    if !in_store.is_file() {
        let tmp = store.temp_dir("blob-")?;
        let part = tmp.path().join("blob");
        s.retry(&format!("blob {digest}"), || download(s, desc, &part))
            .await?;
        store.adopt_blob(&part, &digest)?;
    }
    let dest = blob_dir.join(digest.hex());
    // A hard link costs no space; the store and the layout are on one filesystem unless moved by hand.
    if std::fs::hard_link(&in_store, &dest).is_err() {
        std::fs::copy(&in_store, &dest)
            .map_err(|e| Diagnostic::io(format!("cannot copy blob {digest} into the layout"), e))?;
    }
    Ok(())
}

/// One download attempt. A registry that sends more bytes than the descriptor allows, or other bytes, is
/// cut off: the result must be exactly what the manifest promised.
async fn download(
    s: &Session,
    desc: &OciDescriptor,
    part: &Path,
) -> std::result::Result<(), OciDistributionError> {
    let mut stream = s.client.pull_blob_stream(&s.name.oci(), desc).await?;
    let mut file = tokio::fs::File::create(part).await?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    let want = desc.size as u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        written += chunk.len() as u64;
        if written > want {
            return Err(OciDistributionError::GenericError(Some(format!(
                "blob {} is larger than the {want} bytes its descriptor says",
                desc.digest
            ))));
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    let actual = Digest::from_hasher(hasher);
    if written != want || actual.as_str() != desc.digest {
        return Err(OciDistributionError::GenericError(Some(format!(
            "blob {} arrived corrupt ({written} bytes, digest {actual})",
            desc.digest
        ))));
    }
    Ok(())
}

/// What a push did.
pub struct Pushed {
    /// The manifest's digest.
    pub digest: String,
    /// The tag already named this manifest, so nothing was uploaded.
    pub unchanged: bool,
}

/// Fetches the manifest `reference` names (any kind: an image, or an artifact such as a kiln cache),
/// following an index to its linux/amd64 entry. Returns the manifest bytes, verified against their digest.
pub fn fetch_manifest(reference: &str, opts: &Options) -> Result<Vec<u8>> {
    let name = ImageName::parse(reference)?;
    block_on(async {
        let s = Session::open(name, opts, RegistryOperation::Pull).await?;
        let (bytes, _) = resolve(&s).await?;
        Ok(bytes.to_vec())
    })
}

/// Downloads the blobs `(digest, size)` of the repository of `reference` into the store (those it lacks),
/// each hashed and size-checked as it streams.
pub fn fetch_blobs(
    store: &Store,
    reference: &str,
    blobs: &[(Digest, u64)],
    opts: &Options,
) -> Result<()> {
    let missing: Vec<&(Digest, u64)> = blobs
        .iter()
        .filter(|(d, _)| !store.blob_path(d).is_file())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let name = ImageName::parse(reference)?;
    block_on(async {
        let s = Session::open(name, opts, RegistryOperation::Pull).await?;
        futures_util::stream::iter(missing.into_iter().map(|(digest, size)| {
            let s = &s;
            async move {
                let desc = OciDescriptor {
                    digest: digest.to_string(),
                    size: *size as i64,
                    ..OciDescriptor::default()
                };
                let tmp = store.temp_dir("blob-")?;
                let part = tmp.path().join("blob");
                s.retry(&format!("blob {digest}"), || download(s, &desc, &part))
                    .await?;
                store.adopt_blob(&part, digest)?;
                Ok::<(), Diagnostic>(())
            }
        }))
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    })
}

/// Pushes the manifest `manifest` and every blob it names (config and layers, read from the OCI layout
/// at `layout`) to `reference`, sending only the blobs the registry lacks. Unlike `push`, the manifest
/// need not describe an image (a kiln cache's config is not an image config). Returns its digest.
pub fn push_manifest(
    layout: &Path,
    manifest: Vec<u8>,
    reference: &str,
    opts: &Options,
) -> Result<String> {
    let name = ImageName::parse(reference)?;
    if name.digest.is_some() {
        return Err(Diagnostic::input(format!(
            "cannot push to `{reference}`: a push names a tag, not a digest"
        ))
        .help("drop the `@sha256:...` part"));
    }
    let json: Value = serde_json::from_slice(&manifest)
        .map_err(|e| Diagnostic::env(format!("cannot push `{reference}`: bad manifest: {e}")))?;
    let mut blobs = Vec::new();
    for d in std::iter::once(&json["config"]).chain(json["layers"].as_array().into_iter().flatten())
    {
        match (d["digest"].as_str(), d["size"].as_u64()) {
            (Some(digest), Some(size)) => blobs.push((digest.to_string(), size)),
            _ => {
                return Err(Diagnostic::env(format!(
                    "cannot push `{reference}`: the manifest has a descriptor without digest or size"
                )));
            }
        }
    }
    let digest = Digest::of(&manifest).to_string();
    block_on(push_async(name, layout, blobs, manifest, digest, opts)).map(|p| p.digest)
}

/// Pushes the image tagged `tag` in the OCI layout at `layout` to `reference`: the blobs the registry
/// lacks (each file streamed and hashed on the way), then the manifest unless the tag already names it.
pub fn push(layout: &Path, tag: Option<&str>, reference: &str, opts: &Options) -> Result<Pushed> {
    let name = ImageName::parse(reference)?;
    if name.digest.is_some() {
        return Err(Diagnostic::input(format!(
            "cannot push to `{reference}`: a push names a tag, not a digest"
        ))
        .help("drop the `@sha256:...` part"));
    }
    let image = crate::oci::read_image(layout, tag).map_err(|e| {
        Diagnostic::env(format!(
            "cannot push `{reference}`: cannot read {}: {e}",
            layout.display()
        ))
    })?;
    let manifest_path = crate::oci::verify_blob(layout, &image.manifest_digest, None)
        .map_err(|e| Diagnostic::env(format!("cannot push `{reference}`: {e}")))?;
    let manifest = std::fs::read(&manifest_path)
        .map_err(|e| Diagnostic::io(format!("cannot read {}", manifest_path.display()), e))?;
    let mut blobs = vec![(image.config_digest.clone(), image.manifest.config().size())];
    for l in image.manifest.layers() {
        blobs.push((l.digest().to_string(), l.size()));
    }
    block_on(push_async(
        name,
        layout,
        blobs,
        manifest,
        image.manifest_digest,
        opts,
    ))
}

async fn push_async(
    name: ImageName,
    layout: &Path,
    blobs: Vec<(String, u64)>,
    manifest: Vec<u8>,
    manifest_digest: String,
    opts: &Options,
) -> Result<Pushed> {
    let s = Session::open(name, opts, RegistryOperation::Push).await?;
    let reference = s.name.oci();
    for (digest, size) in &blobs {
        let what = format!("blob {digest}");
        if s.retry(&what, || s.client.blob_exists(&reference, digest))
            .await?
        {
            continue;
        }
        let path = crate::oci::blob_path(layout, digest)
            .map_err(|e| Diagnostic::env(format!("cannot push `{}`: {e}", s.name)))?;
        s.retry(&what, || async {
            let stream = upload_stream(path.clone(), digest.clone()).await?;
            s.client
                .push_blob_stream(&reference, stream, digest, Some(*size))
                .await
        })
        .await?;
    }
    let json: Value = serde_json::from_slice(&manifest).map_err(|e| {
        Diagnostic::env(format!(
            "cannot push `{}`: the manifest is not JSON: {e}",
            s.name
        ))
    })?;
    let media_type = json["mediaType"]
        .as_str()
        .unwrap_or(OCI_MANIFEST)
        .to_string();
    // Checked here so that the header conversion below cannot fail.
    if !media_type.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Diagnostic::env(format!(
            "cannot push `{}`: manifest media type `{media_type}` is not a header value",
            s.name
        )));
    }
    // A tag that already names this very manifest needs no PUT (the blobs were all there too, as the
    // manifest names them). Any failure to tell just means the manifest is put.
    let current = s
        .client
        .fetch_manifest_digest(&reference, &s.creds.auth)
        .await
        .ok();
    if current.as_deref() == Some(manifest_digest.as_str()) {
        return Ok(Pushed {
            digest: manifest_digest,
            unchanged: true,
        });
    }
    let body = Bytes::from(manifest);
    s.retry("manifest", || {
        let content_type = media_type.parse().expect("visible ASCII is a header value");
        s.client
            .push_manifest_raw(&reference, body.clone(), content_type)
    })
    .await?;
    Ok(Pushed {
        digest: manifest_digest,
        unchanged: false,
    })
}

/// A layer file as a stream of chunks, hashed as it is read: a file that does not match its digest ends
/// the stream with an error, so the upload is never committed.
async fn upload_stream(
    path: PathBuf,
    digest: String,
) -> std::result::Result<
    impl futures_util::Stream<Item = std::result::Result<Bytes, OciDistributionError>> + Send + 'static,
    OciDistributionError,
> {
    let file = tokio::fs::File::open(&path).await?;
    let state = Some((file, Sha256::new()));
    Ok(futures_util::stream::unfold(state, move |state| {
        let digest = digest.clone();
        async move {
            let (mut file, mut hasher) = state?;
            let mut chunk = BytesMut::with_capacity(UPLOAD_CHUNK);
            while chunk.len() < UPLOAD_CHUNK {
                match file.read_buf(&mut chunk).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Some((Err(e.into()), None)),
                }
            }
            if chunk.is_empty() {
                let actual = Digest::from_hasher(hasher);
                if actual.as_str() != digest {
                    let msg =
                        format!("blob {digest} in the layout is corrupt (its content is {actual})");
                    return Some((Err(OciDistributionError::GenericError(Some(msg))), None));
                }
                return None;
            }
            hasher.update(&chunk);
            Some((Ok(chunk.freeze()), Some((file, hasher))))
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> String {
        ImageName::parse(s).unwrap().to_string()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(parsed("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(parsed("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(
            parsed("library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(parsed("user/app"), "docker.io/user/app:latest");
        assert_eq!(
            parsed("index.docker.io/user/app"),
            "docker.io/user/app:latest"
        );
        assert_eq!(
            parsed("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(parsed("localhost/app"), "localhost/app:latest");
        assert_eq!(parsed("localhost:5000/a/b:v1"), "localhost:5000/a/b:v1");
        assert_eq!(
            parsed("127.0.0.1:5000/busybox"),
            "127.0.0.1:5000/busybox:latest"
        );
        assert_eq!(parsed("ghcr.io/o/r/x:1.0-rc_2"), "ghcr.io/o/r/x:1.0-rc_2");
        assert_eq!(parsed("[::1]:5000/app"), "[::1]:5000/app:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parsed(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(parsed(&format!("h.io/x:t@{d}")), format!("h.io/x:t@{d}"));
        // `foo:5000` alone is a name and a tag, not a host: docker reads it the same way.
        assert_eq!(parsed("foo:5000"), "docker.io/library/foo:5000");
        assert_eq!(
            parsed("ab/c.d-e__f/g---h"),
            "docker.io/ab/c.d-e__f/g---h:latest"
        );
    }

    #[test]
    fn malformed_references_are_refused_with_reasons() {
        for (bad, why) in [
            ("", "empty"),
            ("Busybox", "lower-case"),
            ("busybox:", "not a valid tag"),
            ("busybox:-x", "not a valid tag"),
            ("busybox@sha256:abc", "not a digest"),
            ("busybox@md5:abc", "not a digest"),
            ("a//b", "name component"),
            ("a/-b", "name component"),
            ("a/b_", "name component"),
            ("a/b...c", "name component"),
            ("host:port/app", "registry host"),
            ("-h.io/app", "registry host"),
            (":tag", "name is empty"),
            ("h.io/a b", "name component"),
        ] {
            let e = ImageName::parse(bad).expect_err(bad);
            assert!(e.message.contains(why), "{bad}: {}", e.message);
            assert!(e.message.contains(&format!("`{bad}`")), "{}", e.message);
        }
        assert!(ImageName::parse(&format!("h.io/{}", "a".repeat(260))).is_err());
    }

    #[test]
    fn loopback_and_listed_registries_speak_plain_http() {
        let opts = Options {
            insecure: vec!["reg.lan".into(), "other.lan:5000".into()],
            docker_config: None,
        };
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:41234",
            "[::1]:5000",
            "reg.lan",
            "reg.lan:443",
            "other.lan:5000",
        ] {
            assert!(opts.plain_http(r), "{r}");
        }
        for r in [
            "docker.io",
            "other.lan",
            "other.lan:5001",
            "ghcr.io",
            "127.0.0.2:5000",
        ] {
            assert!(!opts.plain_http(r), "{r}");
        }
    }

    fn config(json: &str) -> (tempfile::TempDir, Options) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let opts = Options {
            insecure: vec![],
            docker_config: Some(dir.path().to_path_buf()),
        };
        (dir, opts)
    }

    #[test]
    fn credentials_come_from_config_json() {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:pa55");
        let hub = base64::engine::general_purpose::STANDARD.encode("bob:hub");
        let (_d, opts) = config(&format!(
            r#"{{"auths": {{"127.0.0.1:5001": {{"auth": "{auth}"}}, "https://index.docker.io/v1/": {{"auth": "{hub}"}}}}}}"#
        ));
        let c = credentials(&ImageName::parse("127.0.0.1:5001/x").unwrap(), &opts).unwrap();
        assert!(matches!(&c.auth, RegistryAuth::Basic(u, p) if u == "alice" && p == "pa55"));
        let c = credentials(&ImageName::parse("busybox").unwrap(), &opts).unwrap();
        assert!(matches!(&c.auth, RegistryAuth::Basic(u, p) if u == "bob" && p == "hub"));
        let c = credentials(&ImageName::parse("127.0.0.1:5000/x").unwrap(), &opts).unwrap();
        assert!(matches!(c.auth, RegistryAuth::Anonymous));
    }

    #[test]
    fn no_config_means_anonymous_and_a_broken_one_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            insecure: vec![],
            docker_config: Some(dir.path().join("nothing-here")),
        };
        let c = credentials(&ImageName::parse("h.io/x").unwrap(), &opts).unwrap();
        assert!(matches!(c.auth, RegistryAuth::Anonymous));
        let (_d, opts) = config(r#"{"auths": {"h.io": {"auth": "!!!"}}}"#);
        let e = credentials(&ImageName::parse("h.io/x").unwrap(), &opts)
            .err()
            .unwrap();
        assert!(e.message.contains("config.json"), "{}", e.message);
        let (_d, opts) = config(r#"{"credHelpers": {"h.io": "kiln-test-no-such-helper"}}"#);
        let e = credentials(&ImageName::parse("h.io/x").unwrap(), &opts)
            .err()
            .unwrap();
        assert!(e.message.contains("h.io"), "{}", e.message);
    }

    #[test]
    fn transient_errors_are_the_retryable_ones() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "m".into(),
        };
        assert!(transient(&server(503)));
        assert!(transient(&server(429)));
        assert!(!transient(&server(400)));
        assert!(!transient(&OciDistributionError::UnauthorizedError {
            url: "u".into()
        }));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(transient(&OciDistributionError::IoError(reset)));
    }
}
