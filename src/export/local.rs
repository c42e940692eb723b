//! Filesystem outputs: the image's layers applied in order into a directory (`type=local`), or that
//! directory as a tar (`type=tar`). Whiteouts delete, opaque directories hide what is below them.

use std::fs;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use crate::diag::{Diagnostic, Result};
use crate::store::Store;

/// Writes the final filesystem of `layers` (bottom first) into `dest`, creating it if needed.
pub fn write_dir(store: &Store, layers: &[String], dest: &Path) -> Result<()> {
    fs::create_dir_all(dest)
        .map_err(|e| Diagnostic::io(format!("cannot create {}", dest.display()), e))?;
    for snapshot in layers {
        apply(&store.snapshot_path(snapshot), dest).map_err(|e| {
            Diagnostic::io(
                format!("cannot write {} (layer {snapshot})", dest.display()),
                e,
            )
        })?;
    }
    Ok(())
}

/// A directory tree as a tar: the same deterministic writer as layers (sorted, times clamped to `epoch`).
pub fn write_tar(dir: &Path, out: impl std::io::Write, epoch: Option<i64>) -> std::io::Result<()> {
    crate::layer::write_layer(dir, out, epoch).map(drop)
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn remove(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Applies one overlay-format snapshot onto `dest`. Parents come before children (walkdir's order), so
/// by the time an entry is written its parent in `dest` is a real directory, never a symlink.
fn apply(snapshot: &Path, dest: &Path) -> std::io::Result<()> {
    let mut dirs = Vec::new();
    for entry in walkdir::WalkDir::new(snapshot)
        .min_depth(1)
        .sort_by_file_name()
    {
        let entry = entry.map_err(std::io::Error::other)?;
        let rel = entry
            .path()
            .strip_prefix(snapshot)
            .map_err(std::io::Error::other)?;
        let target = dest.join(rel);
        let meta = fs::symlink_metadata(entry.path())?;
        if is_whiteout(&meta) {
            remove(&target)?;
            continue;
        }
        let existing = fs::symlink_metadata(&target).ok();
        let ft = meta.file_type();
        if ft.is_dir() {
            let opaque = crate::layer::is_opaque(entry.path()).unwrap_or(false);
            match existing {
                Some(m) if m.is_dir() => {
                    if opaque {
                        for child in fs::read_dir(&target)? {
                            remove(&child?.path())?;
                        }
                    }
                }
                _ => {
                    remove(&target)?;
                    fs::create_dir(&target)?;
                }
            }
            dirs.push((target, meta));
            continue;
        }
        if existing.is_some() {
            remove(&target)?;
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        } else if ft.is_file() {
            fs::copy(entry.path(), &target)?;
        } else {
            let kind = if ft.is_char_device() {
                nix::sys::stat::SFlag::S_IFCHR
            } else if ft.is_block_device() {
                nix::sys::stat::SFlag::S_IFBLK
            } else {
                nix::sys::stat::SFlag::S_IFIFO
            };
            let mode = nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777);
            nix::sys::stat::mknod(&target, kind, mode, meta.rdev())
                .map_err(std::io::Error::from)?;
        }
        finish(&target, &meta)?;
    }
    // Directory times last: writing their children would bump them.
    for (target, meta) in dirs.iter().rev() {
        finish(target, meta)?;
    }
    Ok(())
}

/// Owner, mode, extended attributes and modification time, as in the snapshot.
fn finish(target: &Path, meta: &fs::Metadata) -> std::io::Result<()> {
    std::os::unix::fs::lchown(target, Some(meta.uid()), Some(meta.gid()))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    fs::set_permissions(target, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    let mtime = std::time::UNIX_EPOCH
        + std::time::Duration::new(meta.mtime().max(0) as u64, meta.mtime_nsec() as u32);
    if meta.is_file() || meta.is_dir() {
        fs::File::open(target)?.set_modified(mtime)?;
    }
    Ok(())
}
