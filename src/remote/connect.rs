//! How kiln reaches a REAPI server, for the build's client and `kiln worker` alike: the address
//! (`grpc://` plaintext or `grpcs://` TLS), the TLS settings (rustls with ring; a custom CA or the
//! system's roots; an optional client certificate for mutual TLS) and the headers sent on every call
//! (`--remote-header`, a credential helper's answer), which are credentials: never shown, zeroized.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

use crate::diag::{Diagnostic, Result};

/// The transport every REAPI client of kiln's uses: the channel, with the headers added to each call.
pub(crate) type Transport = InterceptedService<Channel, Auth>;

/// A REAPI address, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    /// `http://HOST:PORT` or `https://HOST:PORT`, as tonic dials it.
    pub uri: String,
    pub tls: bool,
}

/// Parses `grpc://HOST:PORT` (plaintext) or `grpcs://HOST:PORT` (TLS), as Bazel's `--remote_executor`.
pub(crate) fn parse_url(url: &str) -> std::result::Result<Address, String> {
    let (rest, tls) = if let Some(rest) = url.strip_prefix("grpc://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("grpcs://") {
        (rest, true)
    } else {
        return Err("the address must look like `grpc://HOST:PORT` or `grpcs://HOST:PORT`".into());
    };
    let scheme = if tls { "grpcs" } else { "grpc" };
    let hostport = rest.trim_end_matches('/');
    let Some((host, port)) = hostport.rsplit_once(':') else {
        return Err(format!("the address needs a port: `{scheme}://HOST:PORT`"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() || hostport.contains('/') {
        return Err(format!("the address must look like `{scheme}://HOST:PORT`"));
    }
    let http = if tls { "https" } else { "http" };
    Ok(Address {
        uri: format!("{http}://{hostport}"),
        tls,
    })
}

/// One header sent on every call. Its value is a credential (a bearer token, an API key): zeroized
/// when dropped, and never printed.
#[derive(Clone)]
pub(crate) struct Header {
    key: AsciiMetadataKey,
    value: Zeroizing<String>,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: <redacted>", self.key)
    }
}

impl Header {
    /// A header from its name and value; the error says what is wrong, without the value.
    pub(crate) fn new(name: &str, value: Zeroizing<String>) -> std::result::Result<Header, String> {
        let lower = name.to_ascii_lowercase();
        if lower.is_empty() {
            return Err("the header has no name: expected `NAME=VALUE`".into());
        }
        if lower.starts_with("grpc-")
            || lower.starts_with(':')
            || lower.ends_with("-bin")
            || ["content-type", "te", "user-agent", "host"].contains(&lower.as_str())
        {
            return Err(format!(
                "`{name}` is a header gRPC itself sets (or a binary one), not one to send"
            ));
        }
        let key = AsciiMetadataKey::from_bytes(lower.as_bytes())
            .map_err(|_| format!("`{name}` is not a valid header name"))?;
        if AsciiMetadataValue::try_from(value.as_str()).is_err() {
            return Err(format!(
                "the value of header `{name}` is not printable ASCII (nor may it hold a line break)"
            ));
        }
        Ok(Header { key, value })
    }

    /// Parses `NAME=VALUE` (`--remote-header`). An error gives the byte range of the bad part and
    /// never quotes the value.
    pub(crate) fn parse(
        arg: &str,
    ) -> std::result::Result<Header, (std::ops::Range<usize>, String)> {
        let Some((name, value)) = arg.split_once('=') else {
            return Err((0..arg.len(), "expected `NAME=VALUE`".into()));
        };
        Header::new(name, Zeroizing::new(value.to_string())).map_err(|m| (0..name.len(), m))
    }
}

/// How to connect: TLS files and headers. `Default` is a plaintext connection without headers.
#[derive(Clone, Debug, Default)]
pub(crate) struct Connect {
    /// The CA that signs the server's certificate (PEM); the system's roots when `None`.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate (PEM) and its key, for servers that require mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub headers: Vec<Header>,
}

impl Connect {
    /// Whether any TLS file is given (a `grpc://` address refuses them rather than ignoring them).
    pub(crate) fn any_tls(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_key.is_some()
    }

    /// The lazily dialled transport to `url`, with its TLS settings checked now: a bad file is an
    /// error before anything is sent. `flags` names the options in the user's terms (`--remote-tls-`
    /// for a build, `--tls-` for the worker).
    /// The `Auth` returned is the transport's own (shared), for renewing a helper's headers.
    pub(crate) fn channel(&self, url: &str, flags: &str) -> Result<(Transport, Auth)> {
        let address = parse_url(url).map_err(|m| {
            Diagnostic::input(format!("bad remote address `{url}`: {m}"))
                .help("for example `grpcs://reapi.example.com:443` or `grpc://127.0.0.1:50051`")
        })?;
        let mut endpoint = Endpoint::from_shared(address.uri.clone())
            .map_err(|e| Diagnostic::input(format!("bad remote address `{url}`: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30));
        if address.tls {
            endpoint = endpoint
                .tls_config(self.tls(flags)?)
                .map_err(|e| Diagnostic::input(format!("cannot set up TLS for `{url}`: {e}")))?;
        } else if self.any_tls() {
            return Err(Diagnostic::input(format!(
                "{flags}ca/{flags}cert/{flags}key given, but `{url}` is plaintext (`grpc://`)"
            ))
            .help(format!(
                "use `grpcs://` for TLS, or drop the {flags}* options"
            )));
        }
        let auth = Auth {
            fixed: Arc::new(self.headers.clone()),
            renewed: Arc::default(),
        };
        Ok((
            InterceptedService::new(endpoint.connect_lazy(), auth.clone()),
            auth,
        ))
    }

    fn tls(&self, flags: &str) -> Result<ClientTlsConfig> {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.tls_ca {
            Some(ca) => {
                let pem = read(ca, &format!("{flags}ca"))?;
                let n = CertificateDer::pem_slice_iter(&pem)
                    .filter(std::result::Result::is_ok)
                    .count();
                if n == 0 {
                    return Err(not_pem(ca, &format!("{flags}ca"), "CA certificate"));
                }
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let cert_pem = read(cert, &format!("{flags}cert"))?;
                if CertificateDer::pem_slice_iter(&cert_pem)
                    .next()
                    .is_none_or(|c| c.is_err())
                {
                    return Err(not_pem(cert, &format!("{flags}cert"), "certificate"));
                }
                let key_pem = Zeroizing::new(read(key, &format!("{flags}key"))?);
                if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
                    return Err(not_pem(key, &format!("{flags}key"), "private key"));
                }
                tls = tls.identity(Identity::from_pem(cert_pem, key_pem.as_slice()));
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(Diagnostic::input(format!(
                    "a client certificate needs both {flags}cert and {flags}key"
                ))
                .help("give the certificate and its private key, or neither"));
            }
        }
        Ok(tls)
    }
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Diagnostic::io(format!("cannot read {flag} `{}`", path.display()), e))
}

fn not_pem(path: &Path, flag: &str, what: &str) -> Diagnostic {
    Diagnostic::input(format!(
        "{flag} `{}` holds no PEM-encoded {what}",
        path.display()
    ))
    .help("give a PEM file (`-----BEGIN ...-----`), as openssl writes them")
}

/// Adds the configured headers to every call. The values are marked sensitive (HPACK never indexes
/// them, and `http` prints them as `Sensitive`).
#[derive(Clone)]
pub(crate) struct Auth {
    /// `--remote-header`s.
    fixed: Arc<Vec<Header>>,
    /// The credential helper's latest answer, replaced before it expires.
    renewed: Arc<std::sync::RwLock<Arc<Vec<Header>>>>,
}

impl Auth {
    pub(crate) fn renew(&self, headers: Vec<Header>) {
        if let Ok(mut r) = self.renewed.write() {
            *r = Arc::new(headers);
        }
    }

    /// The credential helper's latest headers, for a new connection to the same server.
    pub(crate) fn renewed(&self) -> Vec<Header> {
        self.renewed
            .read()
            .map(|r| r.as_ref().clone())
            .unwrap_or_default()
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        let renewed = self.renewed.read().map(|r| r.clone()).unwrap_or_default();
        for h in self.fixed.iter().chain(renewed.iter()) {
            // Checked when the header was made.
            if let Ok(mut v) = AsciiMetadataValue::try_from(h.value.as_str()) {
                v.set_sensitive(true);
                req.metadata_mut().append(h.key.clone(), v);
            }
        }
        Ok(req)
    }
}

/// The reason and hint for a TLS connection the server closed without a word: a TLS 1.3 server that
/// refuses the client's certificate (or its absence) says so in an alert after the client's side of the
/// handshake is done, which the HTTP/2 connection only sees as "connection closed".
pub(crate) fn closed_reason(
    connect: &Connect,
    s: &tonic::Status,
    flags: &str,
) -> Option<(String, String)> {
    // hyper keeps the cause only in its Debug form ("connection closed", or rustls' "peer closed
    // connection without sending TLS close_notify" as an UnexpectedEof). Which one arrives depends on
    // timing: the server's alert may be read, or the socket found reset or closed first.
    let shown = format!("{s:?}");
    let closed = [
        "connection closed",
        "UnexpectedEof",
        "ConnectionReset",
        "BrokenPipe",
        "AlertReceived",
    ]
    .iter()
    .any(|c| shown.contains(c));
    let codes = [
        tonic::Code::Cancelled,
        tonic::Code::Unavailable,
        tonic::Code::Unknown,
    ];
    if !closed || !codes.contains(&s.code()) {
        return None;
    }
    let hint = if connect.tls_cert.is_some() {
        format!(
            "the server may not accept {flags}cert (signed by a CA it does not trust, or expired)"
        )
    } else {
        format!("the server may require a client certificate: give {flags}cert and {flags}key")
    };
    Some((
        "the server closed the connection after the TLS handshake".into(),
        hint,
    ))
}

/// The one-line reason and hint for a failed call, when the cause is the connection's security: a
/// TLS handshake the client refused (unknown CA, wrong name, expired), one the server refused (no or a
/// bad client certificate), or a credential the server refused (UNAUTHENTICATED, PERMISSION_DENIED).
/// `flags` is how the TLS options are spelled (`--remote-tls-` or `--tls-`).
pub(crate) fn security_reason(s: &tonic::Status, flags: &str) -> Option<(String, String)> {
    let header = format!("{}header", flags.trim_end_matches("tls-"));
    match s.code() {
        tonic::Code::Unauthenticated => {
            return Some((
                "the server refused the credentials (UNAUTHENTICATED)".into(),
                format!(
                    "check the token: {header} (`authorization=Bearer ...`) or the credential helper's answer"
                ),
            ));
        }
        tonic::Code::PermissionDenied => {
            return Some((
                "the server denied access (PERMISSION_DENIED)".into(),
                "the credentials are valid but not allowed this call or instance: check the server's access rules and the instance name".into(),
            ));
        }
        _ => {}
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(s);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls_reason(tls, flags));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(tls_reason(tls, flags));
        }
        source = e.source();
    }
    None
}

fn tls_reason(e: &rustls::Error, flags: &str) -> (String, String) {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let (why, hint): (String, String) = match e {
        E::InvalidCertificate(C::UnknownIssuer) => (
            "TLS: the server's certificate is not signed by a trusted CA".into(),
            format!(
                "give the CA that signed it with {flags}ca; without one the system's roots are used"
            ),
        ),
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => (
            "TLS: the server's certificate is not valid for the host name in the address".into(),
            "use the name the certificate was issued for in the address (grpcs://NAME:PORT)".into(),
        ),
        E::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => (
            "TLS: the server's certificate is expired or not yet valid".into(),
            "renew the server's certificate, or check this machine's clock".into(),
        ),
        E::InvalidCertificate(c) => (
            format!("TLS: the server's certificate is not acceptable ({c:?})"),
            format!("check the server's certificate and {flags}ca"),
        ),
        E::AlertReceived(
            A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::HandshakeFailure
            | A::CertificateUnknown,
        ) => (
            format!("TLS: the server refused the handshake ({e})"),
            format!(
                "the server may require a client certificate it trusts: give {flags}cert and {flags}key"
            ),
        ),
        E::InvalidMessage(_) => (
            format!("TLS: the server does not speak TLS ({e})"),
            "use `grpc://` for a plaintext server".into(),
        ),
        other => (
            format!("TLS: {other}"),
            format!("check the server's certificate and the {flags}* options"),
        ),
    };
    (why, hint)
}
