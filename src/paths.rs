//! Container paths as Go handles them: `/`-separated strings, cleaned lexically (never by asking a
//! filesystem), so a path means the same in every front end, lint and matcher.

/// Go's `path.Clean` (on Unix also `filepath.Clean`): one `/` between elements, no `.` elements, each
/// `..` cancels the element before it (and at the root is dropped); the empty result is `.`.
pub fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Joins `path` onto the directory `base` (an absolute `path` replaces it) and cleans the result as an
/// absolute path: `..` never climbs above `/`.
pub fn join(base: &str, path: &str) -> String {
    let full = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    clean(&format!("/{full}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_follows_go() {
        for (p, want) in [
            ("", "."),
            (".", "."),
            ("/", "/"),
            ("//", "/"),
            ("a//b/./c/", "a/b/c"),
            ("./a/../b/", "b"),
            ("a/..", "."),
            ("../a/../..", "../.."),
            ("/../a", "/a"),
            ("/a/b/../../..", "/"),
            ("a/b/../../../c", "../c"),
        ] {
            assert_eq!(clean(p), want, "{p:?}");
        }
    }

    #[test]
    fn join_stays_under_the_root() {
        assert_eq!(join("/app", "src"), "/app/src");
        assert_eq!(join("/app", "/x/../y"), "/y");
        assert_eq!(join("/", "../../etc"), "/etc");
        assert_eq!(join("/a", "."), "/a");
        assert_eq!(join("app", "x/.."), "/app");
        assert_eq!(join("", ""), "/");
    }
}
