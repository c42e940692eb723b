//! `--remote-tls-*`, `--remote-header` and `--remote-credential-helper` (the worker's `--tls-*`,
//! `--header`, `--credential-helper`): checked against the address they go with, and made into how
//! the REAPI connection is set up.

use std::path::PathBuf;

use super::command_line::{CommandLine, redact_header};
use crate::diag::{Result, Span};
use crate::remote::{Connect, Header};

/// The options as given, with the prefix they are spelled with (`--remote-` or `--`).
pub(super) struct AuthFlags<'a> {
    pub(super) prefix: &'a str,
    pub(super) tls_ca: &'a Option<PathBuf>,
    pub(super) tls_cert: &'a Option<PathBuf>,
    pub(super) tls_key: &'a Option<PathBuf>,
    pub(super) headers: &'a [String],
    pub(super) credential_helper: &'a Option<PathBuf>,
    /// The TLS files also secure the channel that hands remote steps their secrets (`--remote-secrets=
    /// allow`, a worker's full identity): then they are not an error with a plaintext address, where
    /// they serve that channel only.
    pub(super) secret_channel: bool,
}

impl AuthFlags<'_> {
    /// The first option given, by name, with its value as the command line shows it.
    fn first_given(&self) -> Option<(String, String)> {
        let p = self.prefix;
        let path = |name: &str, v: &Option<PathBuf>| {
            v.as_ref()
                .map(|v| (format!("{p}{name}"), v.display().to_string()))
        };
        path("tls-ca", self.tls_ca)
            .or_else(|| path("tls-cert", self.tls_cert))
            .or_else(|| path("tls-key", self.tls_key))
            .or_else(|| path("credential-helper", self.credential_helper))
            .or_else(|| {
                self.headers
                    .first()
                    .map(|h| (format!("{p}header"), redact_header(h)))
            })
    }

    /// The connection settings for `url` (none given: `Connect::default()`, and no helper). `url` is
    /// `None` when no remote is named, and then any of these options is an error, not ignored.
    pub(super) fn connect(
        &self,
        cl: &CommandLine,
        url: Option<&str>,
        needs: &str,
    ) -> Result<(Connect, Option<PathBuf>)> {
        let Some(url) = url else {
            return match self.first_given() {
                Some((flag, value)) => Err(cl
                    .error(&value, Span::default(), format!("{flag} without {needs}"))
                    .help(format!(
                        "it sets up the connection to {needs}: add one, or drop it"
                    ))),
                None => Ok((Connect::default(), None)),
            };
        };
        let plaintext = url.starts_with("grpc://");
        let tls_given = [self.tls_ca, self.tls_cert, self.tls_key]
            .iter()
            .zip(["tls-ca", "tls-cert", "tls-key"])
            .find_map(|(v, name)| v.as_ref().map(|v| (name, v)));
        if plaintext
            && !self.secret_channel
            && let Some((name, v)) = tls_given
        {
            return Err(cl
                .error(
                    &v.display().to_string(),
                    Span::default(),
                    format!(
                        "{}{name} with a plaintext address (`{url}`)",
                        self.prefix
                    ),
                )
                .help(format!(
                    "TLS needs `grpcs://`: write the address as `grpcs://{}`, or drop the {}tls-* options ({})",
                    url.trim_start_matches("grpc://"),
                    self.prefix,
                    match self.prefix {
                        "--" => "with a plaintext server they serve only the channel secrets come over, which needs all three of --tls-ca, --tls-cert and --tls-key",
                        _ => "with a plaintext server they serve only the channel of --remote-secrets=allow",
                    }
                )));
        }
        let mut headers = Vec::new();
        for h in self.headers {
            let header = Header::parse(h).map_err(|(range, message)| {
                let shown = redact_header(h);
                let span = if shown == "***" {
                    Span::default()
                } else {
                    Span::new(range.start, range.end)
                };
                cl.error(
                    &shown,
                    span,
                    format!("bad {}header: {message}", self.prefix),
                )
                .help("for example `authorization=Bearer TOKEN` (the value is never shown)")
            })?;
            headers.push(header);
        }
        Ok((
            Connect {
                tls_ca: self.tls_ca.clone().filter(|_| !plaintext),
                tls_cert: self.tls_cert.clone().filter(|_| !plaintext),
                tls_key: self.tls_key.clone().filter(|_| !plaintext),
                headers,
            },
            self.credential_helper.clone(),
        ))
    }
}
