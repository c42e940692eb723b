//! Image references, normalised and validated as docker's distribution/reference does.

use std::fmt;

use oci_client::Reference;

use super::{DOCKER_HUB, DOCKER_HUB_AUTH_KEY};
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;

/// An image reference, normalised as docker does: `busybox` is `docker.io/library/busybox:latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImageName {
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
    pub(crate) fn parse(reference: &str) -> Result<ImageName> {
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

    /// The name a `--build-context` must have to stand for this image, as BuildKit looks one up: the
    /// reference in docker's familiar form (`busybox`, `team/app:1.0`, `host:5000/app`) without a
    /// trailing `:latest`, so `FROM busybox:latest` and `FROM docker.io/library/busybox` find `busybox`.
    pub(crate) fn context_key(&self) -> String {
        let mut key = if self.registry == DOCKER_HUB {
            let path = self.repository.strip_prefix("library/");
            path.filter(|p| !p.contains('/'))
                .unwrap_or(&self.repository)
                .to_string()
        } else {
            format!("{}/{}", self.registry, self.repository)
        };
        if let Some(t) = &self.tag {
            key = format!("{key}:{t}");
        }
        if let Some(d) = &self.digest {
            key = format!("{key}@{d}");
        }
        key.strip_suffix(":latest")
            .map_or(key.clone(), str::to_string)
    }

    /// The registry as oci-client and config.json know it.
    pub(super) fn auth_key(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_AUTH_KEY
        } else {
            &self.registry
        }
    }

    pub(super) fn oci(&self) -> Reference {
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

    pub(super) fn with_digest(&self, digest: &str) -> Reference {
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
pub(crate) fn valid_component(c: &str) -> bool {
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
pub(super) fn valid_host(host: &str) -> bool {
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
