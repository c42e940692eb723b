//! A client session with one registry: TLS, authentication, retries of transient failures, and errors
//! that name the registry and the reference but never a credential.

use std::future::Future;
use std::sync::Once;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::{Client, RegistryOperation};

use super::auth::{Credentials, Options, credentials};
use super::reference::ImageName;
use super::{ATTEMPTS, FIRST_BACKOFF};
use crate::diag::{Diagnostic, Result};

/// rustls needs one process-wide crypto provider; kiln uses ring (aws-lc would be a slow C build).
/// Every HTTPS client of kiln's calls this first.
pub(crate) fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means someone installed one already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client and credentials for one registry and one operation.
pub(super) struct Session {
    pub(super) client: Client,
    /// The image as the build names it, for messages.
    pub(super) name: ImageName,
    /// What requests ask for: `name`, or `name` on a mirror's host.
    pub(super) endpoint: ImageName,
    /// The mirror asked, if this session is with one.
    pub(super) mirror: Option<String>,
    pub(super) creds: Credentials,
    /// `pull` or `push`, for messages.
    action: &'static str,
    plain_http: bool,
    /// config.json as the user knows it, for messages.
    config_shown: String,
}

impl Session {
    pub(super) async fn open(
        name: ImageName,
        opts: &Options,
        op: RegistryOperation,
    ) -> Result<Session> {
        Session::open_at(name, None, opts, op).await
    }

    /// A session with `mirror` (a mirror of `name`'s registry) instead of the registry itself: its
    /// credentials and plain-HTTP rule are the mirror's own, as a mirror is another server.
    pub(super) async fn open_at(
        name: ImageName,
        mirror: Option<String>,
        opts: &Options,
        op: RegistryOperation,
    ) -> Result<Session> {
        install_crypto();
        let endpoint = match &mirror {
            Some(host) => ImageName {
                registry: host.clone(),
                ..name.clone()
            },
            None => name.clone(),
        };
        let creds = credentials(&endpoint, opts)?;
        let plain_http = opts.plain_http(&endpoint.registry);
        let protocol = if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            accept_invalid_certificates: opts.skip_verify.contains(&endpoint.registry),
            extra_root_certificates: opts
                .ca
                .get(&endpoint.registry)
                .into_iter()
                .flatten()
                .map(|pem| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
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
            endpoint,
            mirror,
            creds,
            action,
            plain_http,
            config_shown: opts.config_shown(),
        };
        // Authenticate once up front, so a wrong password is reported as such rather than as the first
        // request that happened to be refused.
        let reference = session.endpoint.oci();
        session
            .retry("authenticate", || {
                session.client.auth(&reference, &session.creds.auth, op)
            })
            .await?;
        Ok(session)
    }

    /// Runs `attempt` until it succeeds, fails for good, or has failed transiently `ATTEMPTS` times.
    pub(super) async fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
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
        let registry = &self.endpoint.registry;
        let head = match &self.mirror {
            Some(m) => format!("cannot {} `{}` from its mirror {m}", self.action, self.name),
            None => format!("cannot {} `{}`", self.action, self.name),
        };
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
        } else if not_found(e) {
            Diagnostic::input(format!("{head}: not found on {registry} ({what})"))
        } else if let OciDistributionError::RequestError(re) = e
            && re.is_connect()
            && is_dns_failure(&error_chain(re))
        {
            // Plain HTTP would not have helped: there is no address to speak either to.
            Diagnostic::env(format!(
                "{head}: the registry name `{registry}` did not resolve ({tries} attempts): {}",
                error_chain(re)
            ))
            .help(format!(
                "check the name `{registry}` in the image reference (a typo?) and this machine's DNS"
            ))
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

/// The registry has no such manifest, blob or repository.
pub(super) fn not_found(e: &OciDistributionError) -> bool {
    status_of(e) == Some(404)
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
/// What hyper's resolver says when a name has no address (getaddrinfo's failures).
fn is_dns_failure(chain: &str) -> bool {
    [
        "dns error",
        "failed to lookup address",
        "Name or service not known",
    ]
    .iter()
    .any(|m| chain.contains(m))
}

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
pub(super) fn transient(e: &OciDistributionError) -> bool {
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
pub(super) fn block_on<F: Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(f),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime starts")
            .block_on(f),
    }
}
