//! Reading a git repository's history for `kiln affected --since`: the one place kiln runs `git`.
//!
//! kiln reads, never writes, the repository: it asks git for the work tree's top and for an archive of
//! an older revision, which it unpacks itself into a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::diag::{Diagnostic, Result};

fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Diagnostic::env(format!("cannot run git: {e}"))
                .help("kiln affected --since needs git on PATH; --files works without it")
        })?;
    if !out.status.success() {
        return Err(Diagnostic::input(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
        .help("give a revision git knows, such as HEAD~1, a branch or a commit"));
    }
    Ok(out.stdout)
}

/// The top of the git work tree that holds `dir`.
pub fn git_toplevel(dir: &Path) -> Result<PathBuf> {
    let out = git(dir, &["rev-parse", "--show-toplevel"])?;
    Ok(PathBuf::from(String::from_utf8_lossy(&out).trim()))
}

/// The whole tree of revision `rev` of the repository holding `dir`, unpacked into a temporary directory.
pub fn git_checkout(dir: &Path, rev: &str) -> Result<tempfile::TempDir> {
    let top = git_toplevel(dir)?;
    let tar = git(&top, &["archive", "--format=tar", rev])?;
    let tmp =
        tempfile::tempdir().map_err(|e| Diagnostic::io("cannot make a temporary directory", e))?;
    tar::Archive::new(tar.as_slice())
        .unpack(tmp.path())
        .map_err(|e| Diagnostic::io(format!("cannot unpack revision {rev}"), e))?;
    Ok(tmp)
}
