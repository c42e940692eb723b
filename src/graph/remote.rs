//! What an `ADD <url>` source means before anything is fetched: which kind of source a URL is, the name
//! BuildKit gives the fetched file, the digest a `--checksum` pins, and the URL as it may be shown.

use std::fmt;

/// What an `ADD` URL fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteKind {
    /// One file over HTTP(S).
    Http,
    /// A git repository (`git@host:repo`, `git://`, `ssh://`, or an HTTP(S) URL ending in `.git`).
    Git,
}

/// Classifies a URL the way BuildKit's Dockerfile frontend does: git transports and `*.git` paths are
/// repositories, other HTTP(S) URLs are files. `None`: no scheme kiln can fetch.
pub fn kind(url: &str) -> Option<RemoteKind> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("git@") || lower.starts_with("git://") || lower.starts_with("ssh://") {
        return Some(RemoteKind::Git);
    }
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return None;
    }
    let before_fragment = lower.split('#').next().unwrap_or("");
    let path = before_fragment.split('?').next().unwrap_or("");
    if path.trim_end_matches('/').ends_with(".git") {
        return Some(RemoteKind::Git);
    }
    Some(RemoteKind::Http)
}

/// The name of the fetched file, as BuildKit's Dockerfile frontend chooses it: the last element of the
/// URL's (decoded) path, never the query and never `Content-Disposition`; `__unnamed__` when the path has
/// none (`http://host/`).
pub fn file_name(url: &str) -> String {
    let path = match url::Url::parse(url) {
        Ok(u) => percent_encoding::percent_decode_str(u.path())
            .decode_utf8_lossy()
            .into_owned(),
        Err(_) => return "__unnamed__".into(),
    };
    // Go's path.Base: trailing slashes dropped, then the last element.
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit('/').next() {
        // `..` names no file (BuildKit's SafeFileName makes it `__unnamed__` too).
        Some(base) if !base.is_empty() && base != "." && base != ".." => base.to_string(),
        _ => "__unnamed__".into(),
    }
}

/// The one source a COPY takes from a fetched tree: the downloaded file, or all of a checked-out repository.
pub fn source_name(url: &str) -> String {
    match kind(url) {
        Some(RemoteKind::Git) => ".".into(),
        _ => file_name(url),
    }
}

/// A git source as BuildKit reads it: the repository's URL, then after `#` a ref (branch, tag or commit)
/// and after a `:` a directory of the repository to take instead of its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitRef {
    pub repo: String,
    pub reference: Option<String>,
    pub subdir: Option<String>,
}

impl GitRef {
    pub fn parse(url: &str) -> GitRef {
        let (repo, fragment) = url.split_once('#').unwrap_or((url, ""));
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        GitRef {
            repo: repo.to_string(),
            reference: some(reference),
            subdir: some(subdir.trim_matches('/')),
        }
    }
}

/// A `--checksum` value: `sha256:`, `sha384:` or `sha512:` and the digest's lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: &'static str,
    pub hex: String,
}

impl Checksum {
    /// Parses `algo:hex` as the OCI digest grammar has it; the error says what was expected.
    pub fn parse(s: &str) -> Result<Checksum, String> {
        let (algo, hex) = s.split_once(':').ok_or_else(|| {
            format!("`{s}` is not a digest: expected `sha256:` and 64 hex digits")
        })?;
        let (algorithm, len) = match algo {
            "sha256" => ("sha256", 64),
            "sha384" => ("sha384", 96),
            "sha512" => ("sha512", 128),
            _ => {
                return Err(format!(
                    "unsupported digest algorithm `{algo}`: expected sha256, sha384 or sha512"
                ));
            }
        };
        if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "`{s}` is not a {algorithm} digest: expected {len} lowercase hex digits after `{algorithm}:`"
            ));
        }
        Ok(Checksum {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

/// The URL as kiln shows it (progress, graph listings, errors): a password or token in its userinfo is
/// dropped and every query value becomes `***`, since signed URLs carry their credentials there.
pub fn redacted(url: &str) -> String {
    let Ok(mut u) = url::Url::parse(url) else {
        // Not a URL kiln can parse (a scp-like git address): only what precedes an `@` may be secret.
        return match url.rsplit_once('@') {
            Some((_, rest)) if url.contains("://") => format!("***@{rest}"),
            _ => url.to_string(),
        };
    };
    let userinfo = !u.username().is_empty() || u.password().is_some();
    if !userinfo && u.query().is_none() {
        return url.to_string();
    }
    if userinfo {
        let _ = u.set_username("");
        let _ = u.set_password(None);
    }
    if u.query().is_some() {
        let masked: Vec<String> = u.query_pairs().map(|(k, _)| format!("{k}=***")).collect();
        u.set_query(Some(&masked.join("&")));
    }
    u.to_string()
}

/// `text` (an instruction as written) with every URL in it shown as `redacted` shows it.
pub fn redact_text(text: &str) -> String {
    text.split(' ')
        .map(|w| {
            if w.contains("://") {
                redacted(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The URL as it enters a definition digest: without userinfo, so a rotated token neither changes a
/// digest nor is hashed into one. The query stays: it selects the resource (BuildKit keys on the whole URL).
pub fn keyed(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_buildkit() {
        assert_eq!(file_name("https://h/a/b.tar.gz?x=1#f"), "b.tar.gz");
        assert_eq!(file_name("https://h/a/dir/"), "dir");
        assert_eq!(file_name("https://h/"), "__unnamed__");
        assert_eq!(file_name("https://h"), "__unnamed__");
        assert_eq!(file_name("https://h/a%20b"), "a b");
        assert_eq!(file_name("https://h/x/%2E%2E"), "__unnamed__");
        assert_eq!(file_name("https://h/x/a%2Fb"), "b");
    }

    #[test]
    fn kinds() {
        assert_eq!(kind("https://h/f.txt"), Some(RemoteKind::Http));
        assert_eq!(kind("https://h/r.git#main"), Some(RemoteKind::Git));
        assert_eq!(kind("git@github.com:o/r"), Some(RemoteKind::Git));
        assert_eq!(kind("ftp://h/f"), None);
    }

    #[test]
    fn credentials_are_never_shown_or_keyed() {
        let url = "https://user:hunter22@h/f.txt?token=abc123&v=2";
        let shown = redacted(url);
        assert!(
            !shown.contains("hunter22") && !shown.contains("abc123") && !shown.contains("user")
        );
        assert_eq!(shown, "https://h/f.txt?token=***&v=***");
        assert_eq!(keyed(url), "https://h/f.txt?token=abc123&v=2");
        assert_eq!(
            redact_text(&format!("[s 1/2] ADD --chmod=644 {url} /d/")),
            "[s 1/2] ADD --chmod=644 https://h/f.txt?token=***&v=*** /d/"
        );
    }

    #[test]
    fn git_fragments() {
        let g = GitRef::parse("https://h/r.git#v1:docs/");
        assert_eq!(g.repo, "https://h/r.git");
        assert_eq!(
            (g.reference.as_deref(), g.subdir.as_deref()),
            (Some("v1"), Some("docs"))
        );
        let g = GitRef::parse("git@h:o/r.git");
        assert_eq!(
            (g.repo.as_str(), g.reference, g.subdir),
            ("git@h:o/r.git", None, None)
        );
    }

    #[test]
    fn checksums_parse() {
        let hex = "a".repeat(64);
        assert_eq!(Checksum::parse(&format!("sha256:{hex}")).unwrap().hex, hex);
        assert!(Checksum::parse("sha256:abc").is_err());
        assert!(Checksum::parse("md5:abc").is_err());
        assert!(Checksum::parse(&hex).is_err());
    }
}
