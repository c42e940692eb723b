//! The secret channel of `--remote-secrets=allow`: REAPI has none, so a remote step's secrets travel out
//! of band. The building client serves a short-lived TLS endpoint for the build; a step's `step.json`
//! carries only the secrets' ids and mount options, the endpoint's address and a nonce made for this one
//! execution (so the Action's digest is unique and never cached). A worker that leased the Action
//! connects with its client certificate, sends the nonce, and receives exactly that execution's values,
//! once. Both sides check the other's certificate against a CA they were given (mutual TLS): the client
//! hands a value only to a worker whose certificate that CA signed, and a worker sends its nonce only to
//! an endpoint whose certificate it signed.
//!
//! The wire, after the handshake: the worker writes the nonce (64 hex digits) and a newline; the client
//! answers with a count, then each secret as id and value, each a big-endian u32 length and its bytes,
//! and closes. An unknown or used nonce gets the connection closed with nothing sent.
//!
//! SSH agents: for each connection the step makes to an agent socket, the worker connects again and
//! writes the nonce, ` ssh `, the agent's id and a newline; from then on the connection carries the agent
//! protocol, which the client relays to the agent `--ssh` named, letting only identity listing and sign
//! requests through (`secret::agent`). Keys never leave the client; such a connection is accepted for as
//! long as the execution is registered, any number of times.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use zeroize::Zeroizing;

use crate::diag::{Diagnostic, Result};
use crate::secret::{SecretValue, SshSource};

/// How long either side waits for the other during one exchange.
const EXCHANGE: Duration = Duration::from_secs(30);
/// The most secrets and the largest value one exchange may carry (BuildKit caps a secret at 500 KiB).
const MAX_SECRETS: u32 = 1024;
const MAX_VALUE: u32 = 1 << 20;

/// The TLS identity of one side: the CA that must have signed the other side's certificate, and this
/// side's certificate chain and key.
pub(crate) struct TlsFiles<'a> {
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, path: &Path, e: impl std::fmt::Display) -> Diagnostic {
    Diagnostic::input(format!("cannot read the {what} {}: {e}", path.display()))
        .help("give PEM files: a CA certificate, a certificate chain, and its private key")
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|i| i.collect())
        .map_err(|e| tls_error("CA certificate", ca, e))?;
    if certs.is_empty() {
        return Err(tls_error("CA certificate", ca, "no certificate in it"));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| tls_error("CA certificate", ca, e))?;
    }
    Ok(roots)
}

fn identity(
    files: &TlsFiles<'_>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(files.cert)
        .and_then(|i| i.collect())
        .map_err(|e| tls_error("certificate", files.cert, e))?;
    if chain.is_empty() {
        return Err(tls_error("certificate", files.cert, "no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(files.key)
        .map_err(|e| tls_error("private key", files.key, e))?;
    Ok((chain, key))
}

/// The worker's side: a client configuration that presents its certificate and trusts only `ca`.
pub(crate) fn client_config(files: &TlsFiles<'_>) -> Result<Arc<rustls::ClientConfig>> {
    let (chain, key) = identity(files)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Diagnostic::env(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots(files.ca)?)
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls_error("certificate and key", files.cert, e))?;
    Ok(Arc::new(config))
}

/// Reads the endpoint's files as `Endpoint::start` will, before anything runs: the file at fault and
/// what is wrong with it.
pub(crate) fn check_endpoint_files(
    files: &TlsFiles<'_>,
) -> std::result::Result<(), Box<(std::path::PathBuf, Diagnostic)>> {
    roots(files.ca).map_err(|e| Box::new((files.ca.to_path_buf(), e)))?;
    identity(files).map_err(|e| {
        let key = e.message.contains(&files.key.display().to_string());
        let at = if key { files.key } else { files.cert };
        Box::new((at.to_path_buf(), e))
    })?;
    server_config(files).map_err(|e| Box::new((files.cert.to_path_buf(), e)))?;
    Ok(())
}

fn server_config(files: &TlsFiles<'_>) -> Result<Arc<rustls::ServerConfig>> {
    let (chain, key) = identity(files)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(files.ca)?),
        provider(),
    )
    .build()
    .map_err(|e| tls_error("CA certificate", files.ca, e))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Diagnostic::env(format!("TLS setup failed: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_error("certificate and key", files.cert, e))?;
    Ok(Arc::new(config))
}

/// What one execution may ask the endpoint for.
struct Entry {
    /// Its secret values, until a worker took them.
    secrets: Option<Vec<(String, SecretValue)>>,
    /// Its SSH agents by id.
    agents: Vec<(String, SshSource)>,
    /// Whether a worker presented its nonce.
    used: bool,
}

type Pending = Arc<Mutex<HashMap<String, Entry>>>;

/// The client's endpoint: serves the secrets of the executions registered with it, each once, to a
/// worker the CA vouches for. Stops serving when dropped.
pub(crate) struct Endpoint {
    addr: SocketAddr,
    pending: Pending,
    /// Why handshakes were refused, for the error of a step whose worker could not get its secrets.
    refused: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An execution's registration: its secrets are withdrawn when it is dropped, sent or not.
pub(crate) struct Registration {
    pub nonce: String,
    pending: Pending,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.pending
            .lock()
            .expect("not poisoned")
            .remove(&self.nonce);
    }
}

impl Endpoint {
    /// Listens on `listen` (inside a tokio runtime).
    pub(crate) async fn start(listen: &str, files: &TlsFiles<'_>) -> Result<Endpoint> {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(files)?);
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            Diagnostic::io(
                format!("cannot listen on {listen} for the remote secret channel"),
                e,
            )
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Diagnostic::io("cannot listen for the remote secret channel", e))?;
        let pending: Pending = Arc::default();
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (p, r) = (pending.clone(), refused.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    // Out of descriptors, say: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, p, r) = (acceptor.clone(), p.clone(), r.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(acceptor, stream, &p).await {
                        // The first few explain a failure; a port scanner adds no more.
                        let mut r = r.lock().expect("not poisoned");
                        if r.len() < 8 {
                            r.push(format!("{peer}: {e}"));
                        }
                    }
                });
            }
        });
        Ok(Endpoint {
            addr,
            pending,
            refused,
            task,
        })
    }

    /// The address workers are told to connect to.
    pub(crate) fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Registers one execution's secrets and SSH agents under a fresh nonce.
    pub(crate) fn register(
        &self,
        secrets: Vec<(String, SecretValue)>,
        agents: Vec<(String, SshSource)>,
    ) -> Result<Registration> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom(&mut bytes[..])?;
        let nonce = hex::encode(&bytes[..]);
        self.pending.lock().expect("not poisoned").insert(
            nonce.clone(),
            Entry {
                secrets: Some(secrets),
                agents,
                used: false,
            },
        );
        Ok(Registration {
            nonce,
            pending: self.pending.clone(),
        })
    }

    /// Whether a worker presented the nonce of `r`.
    pub(crate) fn taken(&self, r: &Registration) -> bool {
        self.pending
            .lock()
            .expect("not poisoned")
            .get(&r.nonce)
            .is_none_or(|e| e.used)
    }

    /// The handshakes refused so far, for an error message.
    pub(crate) fn refusals(&self) -> Vec<String> {
        self.refused.lock().expect("not poisoned").clone()
    }
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| Diagnostic::env("no randomness for the secret channel".to_string()))
}

/// What a worker asked for after the handshake.
enum Ask {
    Secrets(Vec<(String, SecretValue)>),
    Agent(SshSource),
}

async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    pending: &Pending,
) -> std::result::Result<(), String> {
    let exchange = async {
        let mut tls = acceptor
            .accept(stream)
            .await
            .map_err(|e| format!("TLS handshake refused: {e}"))?;
        let ask = read_ask(&mut tls, pending).await?;
        Ok::<_, String>((tls, ask))
    };
    let (mut tls, ask) = tokio::time::timeout(EXCHANGE, exchange)
        .await
        .map_err(|_| "timed out".to_string())??;
    match ask {
        Ask::Secrets(secrets) => {
            let send = async {
                let mut out = Zeroizing::new(Vec::new());
                out.extend_from_slice(&(secrets.len() as u32).to_be_bytes());
                for (id, value) in &secrets {
                    for part in [id.as_bytes(), value.expose()] {
                        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
                        out.extend_from_slice(part);
                    }
                }
                tls.write_all(&out)
                    .await
                    .map_err(|e| format!("sending failed: {e}"))?;
                tls.shutdown().await.map_err(|e| format!("closing: {e}"))
            };
            tokio::time::timeout(EXCHANGE, send)
                .await
                .map_err(|_| "timed out".to_string())?
        }
        // As long as the step keeps its agent connection open: an agent's user may take time to sign.
        Ask::Agent(agent) => crate::secret::agent::serve(&mut tls, &agent)
            .await
            .map_err(|e| format!("relaying the ssh agent: {e}")),
    }
}

/// Reads the nonce line and finds what it may have: the secrets (once), or an agent (while registered).
async fn read_ask(
    tls: &mut (impl tokio::io::AsyncRead + Unpin),
    pending: &Pending,
) -> std::result::Result<Ask, String> {
    let mut nonce = [0u8; 65];
    tls.read_exact(&mut nonce)
        .await
        .map_err(|e| format!("no nonce: {e}"))?;
    let agent = match nonce[64] {
        b'\n' => None,
        b' ' => {
            let mut line = Vec::new();
            loop {
                let b = tls
                    .read_u8()
                    .await
                    .map_err(|e| format!("no agent id: {e}"))?;
                if b == b'\n' {
                    break;
                }
                if line.len() > 256 {
                    return Err("an agent id too long".to_string());
                }
                line.push(b);
            }
            let line = String::from_utf8(line).map_err(|_| "a bad agent id".to_string())?;
            let id = line
                .strip_prefix("ssh ")
                .ok_or_else(|| "a bad request".to_string())?;
            Some(id.to_string())
        }
        _ => return Err("a bad nonce".to_string()),
    };
    let nonce = std::str::from_utf8(&nonce[..64]).unwrap_or_default();
    let mut pending = pending.lock().expect("not poisoned");
    let entry = pending
        .get_mut(nonce)
        .ok_or_else(|| "an unknown or withdrawn nonce".to_string())?;
    entry.used = true;
    match agent {
        None => entry
            .secrets
            .take()
            .map(Ask::Secrets)
            .ok_or_else(|| "an already used nonce".to_string()),
        Some(id) => entry
            .agents
            .iter()
            .find(|(a, _)| a == &id)
            .map(|(_, s)| Ask::Agent(s.clone()))
            .ok_or_else(|| format!("the execution forwards no ssh agent `{id}`")),
    }
}

/// The worker's side: a connection to the build's agent `id` for the execution `nonce`, over which the
/// agent protocol then runs.
pub(crate) async fn agent(
    config: Arc<rustls::ClientConfig>,
    addr: &str,
    nonce: &str,
    id: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let fail = |m: String| {
        Diagnostic::build(format!(
            "cannot reach the build's ssh agent `{id}` at {addr}: {m}"
        ))
    };
    let name = server_name(addr).map_err(fail)?;
    let connect = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        tls.write_all(format!("{nonce} ssh {id}\n").as_bytes())
            .await
            .map_err(|e| format!("the endpoint refused this worker: {e}"))?;
        tls.flush()
            .await
            .map_err(|e| format!("the endpoint refused this worker: {e}"))?;
        Ok(tls)
    };
    tokio::time::timeout(EXCHANGE, connect)
        .await
        .map_err(|_| fail("timed out".to_string()))?
        .map_err(fail)
}

fn server_name(addr: &str) -> std::result::Result<ServerName<'static>, String> {
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| "not HOST:PORT".to_string())?;
    ServerName::try_from(host.to_string()).map_err(|e| e.to_string())
}

/// The worker's side: fetches the secrets of the execution `nonce` from the endpoint at `addr`.
pub(crate) async fn fetch(
    config: Arc<rustls::ClientConfig>,
    addr: &str,
    nonce: &str,
) -> Result<Vec<(String, SecretValue)>> {
    // A refusal (a certificate either side does not accept, a nonce the build does not know) ends the
    // job; a broken connection may be retried elsewhere.
    let fail = |(refused, m): (bool, String)| {
        let message =
            format!("cannot receive the step's secrets from the build's endpoint at {addr}: {m}");
        match refused {
            true => Diagnostic::build(message),
            false => Diagnostic::env(message),
        }
    };
    let name = server_name(addr).map_err(|m| fail((true, m)))?;
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| (false, format!("cannot connect: {e}")))?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| (true, format!("TLS handshake failed: {e}")))?;
        tls.write_all(format!("{nonce}\n").as_bytes())
            .await
            .map_err(|e| (true, format!("the endpoint refused this worker: {e}")))?;
        tls.flush()
            .await
            .map_err(|e| (true, format!("the endpoint refused this worker: {e}")))?;
        let mut secrets = Vec::new();
        let count = tls
            .read_u32()
            .await
            .map_err(|e| (true, format!("the endpoint refused this worker: {e}")))?;
        if count > MAX_SECRETS {
            return Err((true, format!("{count} secrets is too many")));
        }
        for _ in 0..count {
            let id = read_part(&mut tls).await.map_err(|m| (false, m))?;
            let value = read_part(&mut tls).await.map_err(|m| (false, m))?;
            let id = String::from_utf8(id.to_vec())
                .map_err(|_| (true, "a bad secret id".to_string()))?;
            secrets.push((id, SecretValue::new(value)));
        }
        Ok(secrets)
    };
    tokio::time::timeout(EXCHANGE, exchange)
        .await
        .map_err(|_| fail((false, "timed out".to_string())))?
        .map_err(fail)
}

async fn read_part(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
    let n = r.read_u32().await.map_err(|e| format!("cut short: {e}"))?;
    if n > MAX_VALUE {
        return Err(format!("a value of {n} bytes is too large"));
    }
    let mut buf = Zeroizing::new(vec![0u8; n as usize]);
    r.read_exact(&mut buf[..])
        .await
        .map_err(|e| format!("cut short: {e}"))?;
    Ok(buf)
}
