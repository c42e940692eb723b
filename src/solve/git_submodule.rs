//! The submodules of an `ADD <git url>` checkout, as BuildKit's git source sees them (`git submodule
//! update --init --recursive`): each gitlink of the commit, at the commit the superproject records, from the
//! URL `.gitmodules` gives (a relative `./` or `../` URL resolved against the superproject's), into its
//! path. This file reads and checks them; `git.rs` fetches them, recursively (it fetches the superproject).
//!
//! A submodule URL must name a remote repository (`http(s)://`, `git://`, `ssh://`, `user@host:path`).
//! A local path, `file://` or a remote helper (`ext::`, `fd::`, ...) is refused: the repository comes from
//! whoever wrote it, and a Dockerfile's build must not read the builder's filesystem or start its programs
//! (BuildKit runs git with `protocol.file.allow=user` for the same reason).
//!
//! Credentials follow BuildKit: the ssh agent is used for every SSH submodule, the `GIT_AUTH_*` header only
//! for URLs under the superproject's own (any `https://github.com/` URL when the superproject is there).

use std::path::Path;

use crate::graph::remote;

/// How deep submodules may nest: a cycle of repositories must end.
pub(super) const MAX_DEPTH: usize = 8;

/// A submodule as the superproject's commit records it.
pub(super) struct Gitlink {
    /// Its path in the work tree, as `.gitmodules` writes it.
    pub(super) path: String,
    /// Its URL as `.gitmodules` writes it (maybe relative).
    pub(super) url: String,
    /// The commit the superproject's tree points at.
    pub(super) commit: String,
}

/// The submodules of the checked-out commit: the `.gitmodules` of its tree (never of the work tree, where a
/// committed symlink could stand in its place) joined with the gitlinks at their paths. An entry without a
/// gitlink is skipped, as git skips it.
pub(super) fn gitlinks(repo: &gix::Repository) -> std::result::Result<Vec<Gitlink>, String> {
    let tree = repo
        .head_commit()
        .map_err(|e| e.to_string())?
        .tree()
        .map_err(|e| e.to_string())?;
    let Some(modules) = tree
        .lookup_entry_by_path(".gitmodules")
        .map_err(|e| e.to_string())?
    else {
        return Ok(Vec::new());
    };
    if !modules.mode().is_blob() {
        return Err(".gitmodules is not a file".into());
    }
    let blob = modules.object().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&blob.data).into_owned();
    let file: gix::config::File = text
        .parse()
        .map_err(|e: gix::config::parse::Error| e.to_string())?;
    let mut links = Vec::new();
    for section in file.sections_by_name("submodule").into_iter().flatten() {
        let name = section
            .header()
            .subsection_name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        let (Some(path), Some(url)) = (section.value("path"), section.value("url")) else {
            return Err(format!("submodule `{name}` has no path or no url"));
        };
        // `update = none`: `git submodule update --init` (BuildKit's) leaves it an empty directory and
        // never fetches its URL.
        if section.value("update").is_some_and(|u| **u == *b"none") {
            continue;
        }
        let path = path.to_string();
        let Ok(Some(link)) = tree.lookup_entry_by_path(&path) else {
            continue;
        };
        if link.mode().is_commit() {
            links.push(Gitlink {
                path,
                url: url.to_string(),
                commit: link.object_id().to_string(),
            });
        }
    }
    Ok(links)
}

/// Where the git auth header still applies (BuildKit's `tokenScope`): under the superproject's URL, or
/// anywhere on GitHub when the superproject is there.
pub(super) fn token_scope(parent: &str) -> &str {
    for prefix in ["https://github.com/", "https://www.github.com/"] {
        if parent.starts_with(prefix) {
            return prefix;
        }
    }
    parent
}

/// A submodule's URL, a relative one resolved against the superproject's as git resolves it (`../x.git`
/// of `https://h/org/repo.git` is `https://h/org/x.git`), checked to name a remote repository.
pub(super) fn resolve(parent: &str, url: &str) -> std::result::Result<String, String> {
    let resolved = if url.starts_with("./") || url.starts_with("../") {
        let base = parent.trim_end_matches('/');
        // The part no `..` may climb out of: `scheme://host[:port]/`, or `user@host:` of an scp-like URL.
        let root_len = match base.find("://") {
            Some(i) => base[i + 3..]
                .find('/')
                .map_or(base.len(), |j| i + 3 + j + 1),
            None => base.find(':').map_or(0, |i| i + 1),
        };
        if root_len == 0 || root_len > base.len() {
            return Err(format!(
                "`{url}` is relative to a superproject URL kiln cannot resolve"
            ));
        }
        let (root, path) = base.split_at(root_len);
        let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut rest = url;
        loop {
            if let Some(r) = rest.strip_prefix("./") {
                rest = r;
            } else if let Some(r) = rest.strip_prefix("../") {
                parts
                    .pop()
                    .ok_or_else(|| format!("`{url}` climbs above the superproject's host"))?;
                rest = r;
            } else {
                break;
            }
        }
        parts.push(rest);
        let root = if root.ends_with(['/', ':']) {
            root.to_string()
        } else {
            format!("{root}/")
        };
        format!("{root}{}", parts.join("/"))
    } else {
        url.to_string()
    };
    let lower = resolved.to_ascii_lowercase();
    let remote = ["http://", "https://", "git://", "ssh://"]
        .iter()
        .any(|s| lower.starts_with(s))
        || scp_like(&resolved);
    if !remote {
        return Err(format!(
            "`{}` is not a remote repository URL",
            remote::redacted(&resolved)
        ));
    }
    Ok(resolved)
}

/// `user@host:path`, as git reads it: no `/` before the `:`, and not a remote helper's `transport::`.
fn scp_like(url: &str) -> bool {
    match url.split_once(':') {
        Some((who, path)) => {
            who.contains('@')
                && !who.starts_with('-')
                && !who.contains('/')
                && !path.starts_with(':')
                && !path.is_empty()
        }
        None => false,
    }
}

/// The submodule's directory in the work tree: a clean relative path whose existing part is made of real
/// directories of the checkout, so a committed symlink cannot send the checkout elsewhere.
pub(super) fn destination(
    work: &Path,
    path: &str,
) -> std::result::Result<std::path::PathBuf, String> {
    let inside = super::context::clean_relative(path)?;
    if inside.as_os_str().is_empty() || inside.starts_with(".git") {
        return Err(format!("`{path}` is no path for a submodule"));
    }
    let mut at = work.to_path_buf();
    for c in inside.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("`{path}` is not a directory of the checkout")),
            Err(_) => break,
        }
    }
    let dest = work.join(&inside);
    if dest.exists()
        && std::fs::read_dir(&dest)
            .map_err(|e| e.to_string())?
            .next()
            .is_some()
    {
        return Err(format!("`{path}` is not empty in the checkout"));
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_urls_resolve_as_git_resolves_them() {
        let p = "https://h/org/repo.git";
        assert_eq!(resolve(p, "../lib.git").unwrap(), "https://h/org/lib.git");
        assert_eq!(
            resolve(p, "./sub.git").unwrap(),
            "https://h/org/repo.git/sub.git"
        );
        assert_eq!(resolve(p, "../../x/y.git").unwrap(), "https://h/x/y.git");
        assert!(resolve(p, "../../../etc").is_err(), "above the host");
        assert_eq!(
            resolve("git@h:org/repo.git", "../lib.git").unwrap(),
            "git@h:org/lib.git"
        );
        assert_eq!(
            resolve("ssh://git@h:22/srv/repo.git", "../lib.git").unwrap(),
            "ssh://git@h:22/srv/lib.git"
        );
        assert_eq!(resolve(p, "git@h:o/r.git").unwrap(), "git@h:o/r.git");
    }

    #[test]
    fn local_and_helper_urls_are_refused() {
        let p = "https://h/org/repo.git";
        for url in [
            "/etc",
            "file:///etc",
            "FILE:///etc",
            "ext::sh -c touch% /tmp/pwned",
            "fd::17",
            "lib",
            "C:/x",
        ] {
            assert!(resolve(p, url).is_err(), "{url}");
        }
    }
}
