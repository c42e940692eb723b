//! `registries.toml`: how to reach registries, in the shape of buildkitd.toml's `[registry."HOST"]`
//! tables, so that section of a buildkitd configuration reads as is:
//!
//! ```toml
//! [registry."docker.io"]
//! mirrors = ["mirror.internal:5000"]
//!
//! [registry."mirror.internal:5000"]
//! http = true            # plain HTTP, as `--insecure-registry`
//! # insecure = true      # HTTPS without verifying the certificate
//! # ca = ["/etc/ssl/internal-ca.pem"]
//! ```
//!
//! kiln reads `$XDG_CONFIG_HOME/kiln/registries.toml` (else `~/.config/kiln/registries.toml`), or, when
//! there is none, `/etc/kiln/registries.toml`. A key kiln does not know is an error at its place in the
//! file, never ignored: a registry setting that silently did nothing would send pulls elsewhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::auth::Options;
use crate::diag::{Diagnostic, Result, SourceFile, Span};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    registry: BTreeMap<String, Host>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Host {
    /// Asked before the registry, in order.
    #[serde(default)]
    mirrors: Vec<String>,
    /// kiln's own: never ask the registry itself, only its mirrors.
    #[serde(default, rename = "mirror-only")]
    mirror_only: bool,
    /// Plain HTTP.
    #[serde(default)]
    http: bool,
    /// HTTPS without verifying the server's certificate.
    #[serde(default)]
    insecure: bool,
    /// PEM files of CAs trusted for this host besides the system's.
    #[serde(default)]
    ca: Vec<PathBuf>,
}

/// Where kiln looks for `registries.toml`, in order; the first that exists is read.
pub fn config_paths() -> Vec<PathBuf> {
    let user = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")));
    user.map(|d| d.join("kiln/registries.toml"))
        .into_iter()
        .chain([PathBuf::from("/etc/kiln/registries.toml")])
        .collect()
}

impl Options {
    /// Adds what the first `registries.toml` of `config_paths` says after what the command line said
    /// (whose mirrors are asked first).
    pub fn read_config(&mut self) -> Result<()> {
        for path in config_paths() {
            match std::fs::read_to_string(&path) {
                Ok(text) => return self.apply_config(&path, &text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(Diagnostic::io(format!("cannot read {}", path.display()), e));
                }
            }
        }
        Ok(())
    }

    pub(super) fn apply_config(&mut self, path: &Path, text: &str) -> Result<()> {
        let source = SourceFile::new(path.display().to_string(), text);
        let at = |range: Option<std::ops::Range<usize>>, message: String| {
            let span = range.map_or(Span::new(0, 0), |r| Span::new(r.start, r.end));
            Diagnostic::at(&source, span, message)
        };
        let file: File = toml::from_str(text).map_err(|e| {
            at(e.span(), e.message().trim_end().to_string())
                .help("see the registry mirrors section of kiln's README for the keys kiln reads")
        })?;
        // A table's key is located by its text for the errors below.
        let table_at = |host: &str| {
            let quoted = format!("\"{host}\"");
            text.find(&quoted).map(|i| i..i + quoted.len())
        };
        for (host, h) in file.registry {
            for mirror in &h.mirrors {
                self.mirrors.add(&format!("{host}={mirror}")).map_err(|e| {
                    at(table_at(&host), format!("[registry.\"{host}\"]: {}", e.why))
                })?;
            }
            if h.mirror_only {
                if h.mirrors.is_empty() {
                    return Err(at(
                        table_at(&host),
                        format!("[registry.\"{host}\"] is `mirror-only` but names no mirrors"),
                    ));
                }
                self.mirrors.only_for(&host);
            }
            if h.http {
                self.insecure.push(host.clone());
            }
            if h.insecure {
                self.skip_verify.push(host.clone());
            }
            for ca in &h.ca {
                let pem = std::fs::read(ca).map_err(|e| {
                    Diagnostic::io(
                        format!(
                            "cannot read the CA {} that {} names for {host}",
                            ca.display(),
                            path.display()
                        ),
                        e,
                    )
                })?;
                self.ca.entry(host.clone()).or_default().push(pem);
            }
        }
        Ok(())
    }
}
