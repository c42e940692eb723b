//! Small word-level helpers of the checks: expansion that records which variables were (not) found,
//! BuildKit's "did you mean" search, its secret-name test, image-reference and platform validation.

use std::cell::RefCell;

use crate::frontend::shell;

/// The result of expanding a word: its value (None when the word does not expand) and the variables
/// looked up, found and not found, in order of first use.
pub(crate) struct Expanded {
    pub value: Option<String>,
    pub matched: Vec<String>,
    pub unmatched: Vec<String>,
}

/// Expands `word` against `env` (last definition wins), recording every lookup.
pub(crate) fn expand(word: &str, escape: char, env: &[(String, String)]) -> Expanded {
    let matched = RefCell::new(Vec::<String>::new());
    let unmatched = RefCell::new(Vec::<String>::new());
    let lookup = |name: &str| -> Option<String> {
        let found = env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone());
        let list = if found.is_some() {
            &matched
        } else {
            &unmatched
        };
        let mut list = list.borrow_mut();
        if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
        found
    };
    let value = shell::expand_word(word, escape, &lookup).ok();
    Expanded {
        value,
        matched: matched.into_inner(),
        unmatched: unmatched.into_inner(),
    }
}

/// BuildKit's `suggest.Search`: the first option at edit distance below 3 (closest wins); none when
/// an option equals the value.
pub(crate) fn suggest<'a>(
    value: &str,
    options: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best = None;
    let mut min = 3;
    for opt in options {
        if opt == value {
            return None;
        }
        let d = levenshtein(value, opt);
        if d < min {
            min = d;
            best = Some(opt);
        }
    }
    best
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

const SECRET_PARTS: [&str; 10] = [
    "apikey",
    "auth",
    "credential",
    "credentials",
    "key",
    "password",
    "pword",
    "passwd",
    "secret",
    "token",
];
const ALLOWED_PARTS: [&str; 3] = ["public", "file", "version"];

/// BuildKit's `SecretsUsedInArgOrEnv` name test: some `_`-separated part of the name (case-insensitive)
/// is a secret word, and none is `public`, `file` or `version`. (BuildKit's pattern
/// `(?:_|^)(?:word)(?:_|$)` matches any part, the first and the last as well as inner ones.)
pub(crate) fn secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('_').collect();
    parts.iter().any(|p| SECRET_PARTS.contains(p))
        && !parts.iter().any(|p| ALLOWED_PARTS.contains(p))
}

/// Whether `s` is an image reference docker's `ParseNormalizedNamed` accepts.
pub(crate) fn valid_reference(s: &str) -> bool {
    if s.is_empty()
        || (s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    {
        return false;
    }
    // Split off the digest, then the tag (a `:` after the last `/`).
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let Some((algo, hex)) = d.split_once(':') else {
            return false;
        };
        let algo_ok = algo.split(['-', '_', '+', '.']).all(|p| {
            p.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && p.chars().all(|c| c.is_ascii_alphanumeric())
        });
        if !algo_ok || hex.len() < 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let mut chars = t.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !first_ok
            || t.len() > 128
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return false;
        }
    }
    if name.len() > 255 {
        return false;
    }
    let (domain, path) = match name.split_once('/') {
        Some((d, p))
            if d.contains(['.', ':']) || d == "localhost" || d.to_ascii_lowercase() != d =>
        {
            (Some(d), p)
        }
        _ => (None, name),
    };
    if let Some(d) = domain
        && !valid_domain(d)
    {
        return false;
    }
    !path.is_empty() && path.split('/').all(crate::registry::valid_component)
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.starts_with('[') || h.ends_with(']') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if host.starts_with('[') {
        return host.ends_with(']') && host.len() > 2;
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            !c.is_empty()
                && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        })
}

const KNOWN_OS: [&str; 17] = [
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "zos",
];
const KNOWN_ARCH: [&str; 22] = [
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "ppc64",
    "ppc64le",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "wasm",
];

/// The host's architecture as Go names it.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        _ => "amd64",
    }
}

fn normalize_arch(arch: &str) -> String {
    match arch.to_ascii_lowercase().as_str() {
        "i386" => "386".into(),
        "x86_64" | "x86-64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        "armhf" | "armel" => "arm".into(),
        a => a.into(),
    }
}

/// containerd's `platforms.Parse`, reduced to what the checks need: (os, architecture).
pub(crate) fn parse_platform(s: &str) -> Option<(String, String)> {
    if s.contains('*') {
        return None;
    }
    let parts: Vec<&str> = s.splitn(4, '/').collect();
    let component_ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    let os_part = parts[0].split('(').next().unwrap_or("");
    if !component_ok(os_part) || !parts[1..].iter().all(|p| component_ok(p)) {
        return None;
    }
    let os = match os_part.to_ascii_lowercase().as_str() {
        "macos" => "darwin".to_string(),
        o => o.to_string(),
    };
    match parts.len() {
        1 if KNOWN_OS.contains(&os.as_str()) => Some((os, host_arch().to_string())),
        1 => {
            let arch = normalize_arch(parts[0]);
            KNOWN_ARCH
                .contains(&arch.as_str())
                .then(|| ("linux".to_string(), arch))
        }
        2 | 3 => Some((os, normalize_arch(parts[1]))),
        _ => None,
    }
}

pub(crate) use crate::paths::clean as clean_path;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_follow_buildkit() {
        for n in [
            "api_key",
            "DATABASE_PASSWORD",
            "GITHUB_TOKEN",
            "secret_MESSAGE",
            "AUTH",
            "my_secret_value",
        ] {
            assert!(secret_name(n), "{n}");
        }
        for n in [
            "PUBLIC_KEY",
            "TOKEN_FILE",
            "SECRET_VERSION",
            "keyboard",
            "monkey",
            "AUTHOR",
        ] {
            assert!(!secret_name(n), "{n}");
        }
    }

    #[test]
    fn references() {
        for r in [
            "busybox",
            "busybox:1.36",
            "docker.io/library/alpine:3",
            "localhost:5000/a/b",
            "scratch",
            "Registry.Example.com/x",
        ] {
            assert!(valid_reference(r), "{r}");
        }
        for r in ["", "busybox:", "Busybox", "a//b", ":tag", "x@sha256:zz"] {
            assert!(!valid_reference(r), "{r}");
        }
    }

    #[test]
    fn platforms_and_suggestions() {
        assert_eq!(
            parse_platform("linux/amd64"),
            Some(("linux".into(), "amd64".into()))
        );
        assert_eq!(
            parse_platform("linux/arm64/v8"),
            Some(("linux".into(), "arm64".into()))
        );
        assert_eq!(parse_platform("nonsense"), None);
        assert_eq!(
            suggest("BUIDPLATFORM", ["BUILDPLATFORM", "TARGETOS"]),
            Some("BUILDPLATFORM")
        );
        assert_eq!(suggest("X", ["X"]), None);
        assert_eq!(clean_path("./a/../b/"), "b");
        assert_eq!(clean_path("."), ".");
    }
}
