//! `kiln.lock`: what a build's floating inputs resolved to, so `kiln build --locked` builds the same thing
//! next week. A line format rather than TOML: one input per line, sorted, so a change to one input is a
//! one-line diff, and where the input is used rides along as a comment no reader depends on.
//!
//! ```text
//! image 127.0.0.1:5000/base:1 linux/amd64 sha256:…  # Dockerfile:1
//! url https://example.com/tool.tgz sha256:…  # Dockerfile:4
//! git https://example.com/repo.git#main 1f0c…  # Dockerfile:5
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;

/// The file's name in the directory it locks.
pub(crate) const FILE_NAME: &str = "kiln.lock";

const HEADER: &str = "# kiln.lock: what this build's floating inputs resolved to, written by `kiln lock`.\n\
# `kiln build --locked` builds only with these; `kiln lock --update [NAME]` refreshes them.\n";

/// One base image reference for one platform: the manifest digest its tag resolved to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ImageKey {
    /// The reference as the build names it (after ARG expansion), e.g. `busybox:1.36`.
    pub(crate) reference: String,
    /// `linux/amd64`, `linux/arm64`, …
    pub(crate) platform: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pin {
    /// The digest of the platform's image manifest (not of an index), which names one image.
    pub(crate) digest: Digest,
    /// Where the input is used (`Dockerfile:3`); informative only.
    pub(crate) used: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lock {
    pub(crate) images: BTreeMap<ImageKey, Pin>,
    /// `ADD <url>` downloads by URL as kiln shows it (userinfo dropped, query values `***`: a signed
    /// URL's credential is no part of a file that is committed), pinned to the SHA-256 of their content.
    pub(crate) urls: BTreeMap<String, Pin>,
    /// `ADD <git url>` sources by URL (`#ref:subdir` included, shown as a download's), pinned to the
    /// commit the ref named.
    pub(crate) gits: BTreeMap<String, Commit>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Commit {
    /// The full commit id (40 hex digits).
    pub(crate) id: String,
    pub(crate) used: Vec<String>,
}

impl Lock {
    /// Reads `path`; `Ok(None)` when there is no such file.
    pub(crate) fn read(path: &Path) -> Result<Option<Lock>> {
        crate::inputs::file(path);
        match std::fs::read_to_string(path) {
            Ok(text) => Lock::parse(&text).map(Some).map_err(|e| {
                e.help(format!(
                    "fix or remove {}, then run `kiln lock`",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Diagnostic::io(format!("cannot read {}", path.display()), e)),
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Lock> {
        let mut lock = Lock::default();
        for (n, line) in text.lines().enumerate() {
            // A `#` starts a comment only at a word's start: a URL may hold one.
            let start = line
                .match_indices('#')
                .map(|(i, _)| i)
                .find(|&i| i == 0 || line[..i].ends_with(char::is_whitespace));
            let (data, comment) = match start {
                Some(i) => (&line[..i], Some(&line[i + 1..])),
                None => (line, None),
            };
            let words: Vec<&str> = data.split_whitespace().collect();
            let bad = |why: &str| Diagnostic::input(format!("{FILE_NAME} line {}: {why}", n + 1));
            let used = || -> Vec<String> {
                comment
                    .map(|c| {
                        c.split(',')
                            .map(|u| u.trim().to_string())
                            .filter(|u| !u.is_empty())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let digest = |d: &str| {
                Digest::parse(d).ok_or_else(|| bad(&format!("`{d}` is not a sha256 digest")))
            };
            match words.as_slice() {
                [] => {}
                ["url", url, d] => {
                    let pin = Pin {
                        digest: digest(d)?,
                        used: used(),
                    };
                    lock.urls.insert(url.to_string(), pin);
                }
                ["url", ..] => return Err(bad("a url line is `url URL DIGEST`")),
                ["git", url, id] if is_commit(id) => {
                    let commit = Commit {
                        id: id.to_string(),
                        used: used(),
                    };
                    lock.gits.insert(url.to_string(), commit);
                }
                ["git", ..] => return Err(bad("a git line is `git URL COMMIT` (40 hex digits)")),
                ["image", reference, platform, d] => {
                    let key = ImageKey {
                        reference: reference.to_string(),
                        platform: platform.to_string(),
                    };
                    let pin = Pin {
                        digest: digest(d)?,
                        used: used(),
                    };
                    lock.images.insert(key, pin);
                }
                [kind, ..] if *kind == "image" => {
                    return Err(bad("an image line is `image REFERENCE PLATFORM DIGEST`"));
                }
                [kind, ..] => return Err(bad(&format!("unknown input kind `{kind}`"))),
            }
        }
        Ok(lock)
    }

    /// The file's text: the header, then one line per input, sorted.
    pub(crate) fn render(&self) -> String {
        let mut out = HEADER.to_string();
        let mut line = |input: String, pinned: &str, used: &[String]| {
            out.push_str(&format!("{input} {pinned}"));
            if !used.is_empty() {
                out.push_str(&format!("  # {}", used.join(", ")));
            }
            out.push('\n');
        };
        for (k, pin) in &self.images {
            let pinned = pin.digest.to_string();
            line(
                format!("image {} {}", k.reference, k.platform),
                &pinned,
                &pin.used,
            );
        }
        for (url, pin) in &self.urls {
            line(format!("url {url}"), &pin.digest.to_string(), &pin.used);
        }
        for (url, commit) in &self.gits {
            line(format!("git {url}"), &commit.id, &commit.used);
        }
        out
    }

    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.render())
            .map_err(|e| Diagnostic::io(format!("cannot write {}", path.display()), e))
    }
}

/// A full commit id, as a lock pins one.
pub(crate) fn is_commit(id: &str) -> bool {
    id.len() == 40
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_sorted_with_uses() {
        let d = format!("sha256:{}", "a".repeat(64));
        let c = "0123456789abcdef0123456789abcdef01234567";
        let text = format!(
            "git http://h/r.git#main:sub {c}  # Dockerfile:9\nurl http://h/x#y {d}\nimage b:1 linux/arm64 {d}  # Dockerfile:4\n\nimage a:1 linux/amd64 {d}  # Dockerfile:1, Dockerfile:7\n"
        );
        let lock = Lock::parse(&text).unwrap();
        let rendered = lock.render();
        let lines: Vec<&str> = rendered.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                format!("image a:1 linux/amd64 {d}  # Dockerfile:1, Dockerfile:7"),
                format!("image b:1 linux/arm64 {d}  # Dockerfile:4"),
                format!("url http://h/x#y {d}"),
                format!("git http://h/r.git#main:sub {c}  # Dockerfile:9"),
            ]
        );
        assert_eq!(Lock::parse(&rendered).unwrap(), lock);
    }

    #[test]
    fn bad_lines_are_located() {
        let e = Lock::parse("\nimage a:1 linux/amd64\n").unwrap_err();
        assert!(e.message.contains("line 2"), "{}", e.message);
        let e = Lock::parse("svn http://x 1\n").unwrap_err();
        assert!(
            e.message.contains("unknown input kind `svn`"),
            "{}",
            e.message
        );
        let e = Lock::parse("git http://x.git main\n").unwrap_err();
        assert!(e.message.contains("`git URL COMMIT`"), "{}", e.message);
        let e = Lock::parse("url http://x sha256:00\n").unwrap_err();
        assert!(e.message.contains("not a sha256 digest"), "{}", e.message);
    }
}
