//! An image's final filesystem read straight from its layer snapshots (overlayfs upper dirs, bottom
//! first), as overlayfs would merge them: the topmost layer that has a path wins, a whiteout deletes it,
//! an opaque directory hides what the layers below hold under it. Symlinks are followed inside the
//! image, never out of it. Nothing is mounted and no process runs in the image.

use std::collections::{BTreeMap, VecDeque};
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::PathBuf;

/// The most symlinks one lookup follows, as Linux's `ELOOP` limit.
const MAX_LINKS: usize = 40;

/// The largest file read whole (a dpkg status file of a big image is a few MiB).
const MAX_READ: u64 = 64 << 20;

/// The merged view of an image's layers.
pub(super) struct Merged {
    /// The snapshots' directories, bottom first.
    layers: Vec<PathBuf>,
}

/// What one layer says about a path.
enum InLayer {
    /// Nothing: look below, unless an opaque directory on the way hides the layers below.
    Absent { hides_below: bool },
    /// The path is deleted (a whiteout, or a non-directory where a parent should be).
    Deleted,
    Found {
        path: PathBuf,
        meta: Metadata,
        hides_below: bool,
    },
}

fn whiteout(m: &Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

impl Merged {
    pub(super) fn new(layers: Vec<PathBuf>) -> Merged {
        Merged { layers }
    }

    fn in_layer(layer: &std::path::Path, comps: &[String]) -> InLayer {
        let mut path = layer.to_path_buf();
        let mut hides_below = false;
        for (i, c) in comps.iter().enumerate() {
            path.push(c);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                return InLayer::Absent { hides_below };
            };
            if whiteout(&meta) {
                return InLayer::Deleted;
            }
            if i + 1 == comps.len() {
                let opaque = meta.is_dir() && crate::layer::is_opaque(&path).unwrap_or(false);
                return InLayer::Found {
                    path,
                    meta,
                    hides_below: hides_below || opaque,
                };
            }
            if !meta.is_dir() {
                return InLayer::Deleted;
            }
            hides_below |= crate::layer::is_opaque(&path).unwrap_or(false);
        }
        InLayer::Absent { hides_below }
    }

    /// The entry at `comps` (no symlink followed at its end), from the topmost layer that has it.
    fn lookup(&self, comps: &[String]) -> Option<(PathBuf, Metadata)> {
        for layer in self.layers.iter().rev() {
            match Self::in_layer(layer, comps) {
                InLayer::Found { path, meta, .. } => return Some((path, meta)),
                InLayer::Deleted | InLayer::Absent { hides_below: true } => return None,
                InLayer::Absent { hides_below: false } => {}
            }
        }
        None
    }

    /// `path` resolved inside the image, every symlink on the way followed (absolute targets from the
    /// image's root): its components and the entry that holds it.
    fn resolve(&self, path: &str) -> Option<(Vec<String>, PathBuf, Metadata)> {
        let mut todo: VecDeque<String> = components(path).collect();
        let mut done: Vec<String> = Vec::new();
        let mut links = 0;
        let mut last = None;
        while let Some(c) = todo.pop_front() {
            if c == ".." {
                done.pop();
                continue;
            }
            done.push(c);
            let (real, meta) = self.lookup(&done)?;
            if meta.file_type().is_symlink() {
                links += 1;
                if links > MAX_LINKS {
                    return None;
                }
                let target = std::fs::read_link(&real).ok()?;
                let target = target.to_string_lossy();
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                for t in components(&target).collect::<Vec<_>>().into_iter().rev() {
                    todo.push_front(t);
                }
                last = None;
                continue;
            }
            last = Some((real, meta));
        }
        let (real, meta) = last?;
        Some((done, real, meta))
    }

    /// The content of the regular file at `path`, if the image has one there.
    pub(super) fn read(&self, path: &str) -> Option<Vec<u8>> {
        let (_, real, meta) = self.resolve(path)?;
        (meta.is_file() && meta.len() <= MAX_READ)
            .then(|| std::fs::read(real).ok())
            .flatten()
    }

    /// Whether the image has anything at `path` (symlinks followed).
    pub(super) fn exists(&self, path: &str) -> bool {
        self.resolve(path).is_some()
    }

    /// The regular files of the directory at `path`, by name, as the merged view lists them.
    pub(super) fn files_in(&self, path: &str) -> BTreeMap<String, PathBuf> {
        let mut files = BTreeMap::new();
        let Some((comps, _, meta)) = self.resolve(path) else {
            return files;
        };
        if !meta.is_dir() {
            return files;
        }
        let mut seen = std::collections::BTreeSet::new();
        for layer in self.layers.iter().rev() {
            let (dir, hides_below) = match Self::in_layer(layer, &comps) {
                InLayer::Found {
                    path,
                    meta,
                    hides_below,
                } if meta.is_dir() => (path, hides_below),
                InLayer::Absent { hides_below: false } => continue,
                _ => break,
            };
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !seen.insert(name.clone()) {
                    continue;
                }
                if entry.metadata().is_ok_and(|m| m.is_file() && !whiteout(&m)) {
                    files.insert(name, entry.path());
                }
            }
            if hides_below {
                break;
            }
        }
        files
    }
}

/// The components of a path, without empty ones and `.`.
fn components(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upper layers win, whiteouts delete, opaque directories hide, symlinks resolve inside the image.
    #[test]
    fn merges_layers_as_overlayfs_does() {
        let tmp = tempfile::tempdir().unwrap();
        let (low, up) = (tmp.path().join("low"), tmp.path().join("up"));
        for d in ["etc", "usr/lib", "var/lib/dpkg/status.d", "gone"] {
            std::fs::create_dir_all(low.join(d)).unwrap();
        }
        std::fs::write(low.join("usr/lib/os-release"), "ID=low\n").unwrap();
        std::os::unix::fs::symlink("../usr/lib/os-release", low.join("etc/os-release")).unwrap();
        std::fs::write(low.join("var/lib/dpkg/status.d/a"), "a").unwrap();
        std::fs::write(low.join("var/lib/dpkg/status.d/b"), "b").unwrap();
        std::fs::write(low.join("gone/file"), "x").unwrap();
        std::fs::create_dir_all(up.join("usr/lib")).unwrap();
        std::fs::create_dir_all(up.join("var/lib/dpkg/status.d")).unwrap();
        std::fs::write(up.join("usr/lib/os-release"), "ID=up\n").unwrap();
        std::fs::write(up.join("var/lib/dpkg/status.d/c"), "c").unwrap();
        nix::sys::stat::mknod(
            &up.join("var/lib/dpkg/status.d/a"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        nix::sys::stat::mknod(
            &up.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let m = Merged::new(vec![low, up]);
        assert_eq!(m.read("/etc/os-release").unwrap(), b"ID=up\n");
        let names: Vec<String> = m.files_in("/var/lib/dpkg/status.d").into_keys().collect();
        assert_eq!(names, ["b", "c"]);
        assert!(m.read("/gone/file").is_none());
        assert!(!m.exists("/nowhere"));
    }
}
