//! An older revision of the sources, for `kiln affected --since REV`: read from the git repository that
//! holds the monorepo by gix, so kiln starts no `git`.
//!
//! The repository is opened isolated (its own configuration only, never the machine's or the
//! environment's): finding the machine's configuration would ask the `git` binary where it is installed,
//! and a revision must mean the same on every machine. The revision's tree is written as `git archive`
//! would give it, without attributes and filters (no `export-ignore`, no smudge filter, which would start a
//! process): the committed bytes, the executable bit, symlinks, and each submodule as an empty directory.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use gix::bstr::ByteSlice as _;
use gix::object::tree::EntryKind;

use crate::diag::{Diagnostic, Result};

/// The git repository whose work tree holds a directory.
pub(crate) struct GitRepo {
    repo: gix::Repository,
    top: PathBuf,
}

/// A revision's tree, resolved in its repository.
#[derive(Debug)]
pub(crate) struct GitTree(gix::ObjectId);

impl GitRepo {
    /// The repository whose work tree holds `dir`, found upwards from it as git does.
    pub(crate) fn discover(dir: &Path) -> Result<GitRepo> {
        let not_git = |why: String| {
            Diagnostic::input(format!("{} is not in a git repository{why}", dir.display())).help(
                "--since compares with a git revision; name the changed files with --files instead",
            )
        };
        let repo = gix::open::Options::isolated().discover(dir).map_err(|e| {
            use gix::discover::upwards::Error as Upwards;
            match e.downcast_any_ref::<Upwards>() {
                // The common case needs no more words.
                Some(Upwards::NoGitRepository { .. }) => not_git(String::new()),
                _ => not_git(format!(": {e}")),
            }
        })?;
        let top = repo
            .workdir()
            .ok_or_else(|| not_git(": its repository is bare, with no work tree".into()))?;
        // Both sides canonical, so the directory's place in the work tree is a plain prefix.
        let top = top
            .canonicalize()
            .map_err(|e| Diagnostic::io(format!("cannot read {}", top.display()), e))?;
        Ok(GitRepo { repo, top })
    }

    /// Where `dir` sits inside the work tree (empty for its top).
    pub(crate) fn inside(&self, dir: &Path) -> Result<PathBuf> {
        let dir = dir
            .canonicalize()
            .map_err(|e| Diagnostic::io(format!("cannot read {}", dir.display()), e))?;
        Ok(dir
            .strip_prefix(&self.top)
            .unwrap_or(Path::new(""))
            .to_path_buf())
    }

    /// The tree of `rev`: any single revision git accepts (`HEAD~1`, a branch, a tag, a commit or its
    /// unambiguous prefix, `main^{tree}`). The error says why it names no tree.
    pub(crate) fn tree(&self, rev: &str) -> std::result::Result<GitTree, String> {
        let id = self
            .repo
            .rev_parse_single(rev)
            .map_err(|e| format!("unknown revision `{rev}`: {e}"))?;
        let tree = id
            .object()
            .and_then(|o| o.peel_to_tree())
            .map_err(|e| format!("revision `{rev}` names no commit or tree: {e}"))?;
        Ok(GitTree(tree.id))
    }

    /// The files of `tree`, written into a new temporary directory.
    pub(crate) fn checkout(&self, tree: &GitTree) -> Result<tempfile::TempDir> {
        let tmp = tempfile::tempdir()
            .map_err(|e| Diagnostic::io("cannot make a temporary directory", e))?;
        self.write_tree(tree.0, tmp.path(), Path::new(""))?;
        Ok(tmp)
    }

    /// Writes the entries of tree `id` into the directory `dir` (which is `rel` in the tree's root).
    /// Every name is checked to be one path component, and nothing is written over an existing name, so a
    /// crafted tree (`..`, an entry named twice, a symlink then a directory of the same name) cannot write
    /// outside `dir`.
    fn write_tree(&self, id: gix::ObjectId, dir: &Path, rel: &Path) -> Result<()> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            Diagnostic::env(format!("cannot read {what} of the revision: {e}"))
        };
        let tree = self
            .repo
            .find_tree(id)
            .map_err(|e| failed(&describe(rel), &e))?;
        let entries: Vec<_> = tree
            .decode()
            .map_err(|e| failed(&describe(rel), &e))?
            .entries
            .iter()
            .map(|e| (e.filename.to_owned(), e.mode.kind(), e.oid.to_owned()))
            .collect();
        for (name, kind, oid) in entries {
            let name = name
                .to_os_str()
                .map_err(|_| failed(&describe(rel), &format!("`{name}` is no file name here")))?;
            let file = Path::new(name);
            if file.components().count() != 1
                || !matches!(
                    file.components().next(),
                    Some(std::path::Component::Normal(_))
                )
            {
                return Err(failed(
                    &describe(rel),
                    &format!("`{}` is no file name", file.display()),
                ));
            }
            let (path, rel) = (dir.join(file), rel.join(file));
            let written = match kind {
                EntryKind::Tree => {
                    std::fs::create_dir(&path).map_err(|e| write_error(&rel, e))?;
                    self.write_tree(oid, &path, &rel)?;
                    Ok(())
                }
                // A submodule's commit is in another repository: `git archive` writes an empty directory.
                EntryKind::Commit => std::fs::create_dir(&path),
                EntryKind::Link => {
                    let target = self.blob(oid, &rel)?;
                    let target = target.to_os_str().map_err(|_| {
                        failed(&describe(&rel), &"a symlink target not a path here")
                    })?;
                    std::os::unix::fs::symlink(target, &path)
                }
                EntryKind::Blob | EntryKind::BlobExecutable => {
                    let mode = if kind == EntryKind::Blob {
                        0o644
                    } else {
                        0o755
                    };
                    let data = self.blob(oid, &rel)?;
                    write_file(&path, &data, mode)
                }
            };
            written.map_err(|e| write_error(&rel, e))?;
        }
        Ok(())
    }

    fn blob(&self, id: gix::ObjectId, rel: &Path) -> Result<Vec<u8>> {
        let mut blob = self.repo.find_blob(id).map_err(|e| {
            Diagnostic::env(format!(
                "cannot read {} of the revision: {e}",
                describe(rel)
            ))
        })?;
        Ok(blob.take_data())
    }
}

fn describe(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        "the top directory".to_string()
    } else {
        format!("`{}`", rel.display())
    }
}

fn write_error(rel: &Path, e: std::io::Error) -> Diagnostic {
    Diagnostic::io(
        format!("cannot write `{}` of the older revision", rel.display()),
        e,
    )
}

/// A new file with exactly `mode` (git records only 0644 or 0755), whatever the umask.
fn write_file(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(data)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests;
