//! Finding a monorepo's packages: every `.build` file below a directory. A workspace of thousands of
//! packages has thousands of directories, and listing each one is most of what a `//...` pattern costs
//! before anything is evaluated; so the evaluation cache keeps each directory's listing with its stat
//! data, and a directory whose stat data are unchanged is not listed again (adding, removing or
//! renaming an entry changes a directory's modification time, as git's untracked cache relies on).

use std::path::{Path, PathBuf};

use super::evalcache::{EvalCache, Listing};
use crate::diag::{Diagnostic, Result};
use crate::inputs::Stat;

/// Every `.build` file at or below `dir`, in the order of a walk that takes each directory's names
/// sorted. Hidden directories and the usual build-output folders (`target`, `node_modules`) are not
/// entered, and no link is followed below `dir`. Listings come from `cache` where it has them.
pub(crate) fn build_files_under(dir: &Path, cache: Option<&mut EvalCache>) -> Result<Vec<PathBuf>> {
    walk_dirs(dir, cache).map(|(files, _)| files)
}

/// The directories a walk entered, each with its stat data when it was taken (with a cache) and
/// the CRC-32 of its listing (`listing_sum`).
pub(crate) type Entered = Vec<(PathBuf, Option<Stat>, u32)>;

/// `build_files_under`, with the directories the walk entered.
pub(crate) fn walk_dirs(
    dir: &Path,
    cache: Option<&mut EvalCache>,
) -> Result<(Vec<PathBuf>, Entered)> {
    // A directory changed in the second it is listed may change again and keep its times: its
    // listing is not kept (git's "racily clean" entries).
    walk(dir, cache, crate::inputs::epoch_secs() - 1)
}

/// `walk_dirs`, keeping the listings of directories last changed before `settled_before`.
fn walk(
    dir: &Path,
    cache: Option<&mut EvalCache>,
    settled_before: i64,
) -> Result<(Vec<PathBuf>, Entered)> {
    let mut walk = Walk {
        cache,
        settled_before,
        out: Vec::new(),
        entered: Vec::new(),
    };
    walk.dir(dir)?;
    Ok((walk.out, walk.entered))
}

struct Walk<'a> {
    cache: Option<&'a mut EvalCache>,
    settled_before: i64,
    out: Vec<PathBuf>,
    entered: Entered,
}

impl Walk<'_> {
    fn dir(&mut self, dir: &Path) -> Result<()> {
        let cannot =
            |e: std::io::Error| Diagnostic::input(format!("cannot list {}: {e}", dir.display()));
        // Stat data only for those who compare them: the cache, and a recording of what is read.
        let stat = if self.cache.is_some() || crate::inputs::on() {
            // Followed: `dir` itself may be a link (below it, only real directories are entered).
            let meta = std::fs::metadata(dir).map_err(cannot)?;
            // A package added or removed below changes a directory listed here.
            if crate::inputs::on() {
                crate::inputs::entry(dir, &meta);
            }
            Some(Stat::of(&meta))
        } else {
            None
        };
        let kept = (self.cache.as_deref()).zip(stat.as_ref());
        let listing = match kept.and_then(|(c, stat)| c.listing(dir, stat)) {
            Some(listing) => listing,
            None => {
                let listing = list(dir).map_err(cannot)?;
                if let (Some(cache), Some(stat)) = (self.cache.as_deref_mut(), stat)
                    && stat.newest() < self.settled_before
                {
                    cache.keep_listing(dir, stat, &listing);
                }
                listing
            }
        };
        self.entered.push((dir.to_path_buf(), stat, sum(&listing)));
        for (name, is_dir) in listing {
            let path = dir.join(name);
            if is_dir {
                self.dir(&path)?;
            } else {
                self.out.push(path);
            }
        }
        Ok(())
    }
}

/// The CRC-32 of what a walk takes from `dir` (its subdirectories and `.build` files), which changes
/// when a package could have been added or removed there.
pub(crate) fn listing_sum(dir: &Path) -> std::io::Result<u32> {
    list(dir).map(|l| sum(&l))
}

fn sum(listing: &Listing) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (name, is_dir) in listing {
        h.update(name.as_encoded_bytes());
        h.update(&[0, u8::from(*is_dir)]);
    }
    h.finalize()
}

fn list(dir: &Path) -> std::io::Result<Listing> {
    let mut listing = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let kind = entry.file_type()?;
        let skipped = |n: &str| n.starts_with('.') || n == "target" || n == "node_modules";
        if kind.is_dir() && !skipped(&name.to_string_lossy()) {
            listing.push((name, true));
        } else if kind.is_file() && Path::new(&name).extension().is_some_and(|e| e == "build") {
            listing.push((name, false));
        }
    }
    listing.sort();
    Ok(listing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Makes `files` under `root`, then dates every directory back a day: an entry added or removed
    /// later gives its directory other times even within the same clock tick.
    fn tree(root: &Path, files: &[&str]) {
        for f in files {
            let path = root.join(f);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, "").unwrap();
        }
        backdate(root);
    }

    fn backdate(dir: &Path) {
        let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
        fs::File::open(dir).unwrap().set_modified(day_ago).unwrap();
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                backdate(&entry.path());
            }
        }
    }

    fn names(root: &Path, found: Vec<PathBuf>) -> Vec<String> {
        let rel = |p: PathBuf| p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        found.into_iter().map(rel).collect()
    }

    #[test]
    fn kept_listings_find_what_a_fresh_walk_finds_after_packages_come_and_go() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        tree(
            root,
            &[
                "a/BUILD.build",
                "a/b/lib.build",
                "a/b/notes.txt",
                "a/.hidden/BUILD.build",
                "a/target/BUILD.build",
                "node_modules/BUILD.build",
                "c/BUILD.build",
                "c/d/e/BUILD.build",
            ],
        );
        std::os::unix::fs::symlink(root.join("a"), root.join("link")).unwrap();
        let store = tempfile::tempdir().unwrap();
        let path = store.path().join("cache");
        let walked =
            |cache: &mut EvalCache| names(root, walk(root, Some(cache), i64::MAX).unwrap().0);
        let fresh = || names(root, walk(root, None, i64::MAX).unwrap().0);
        let expected = [
            "a/BUILD.build",
            "a/b/lib.build",
            "c/BUILD.build",
            "c/d/e/BUILD.build",
        ];
        assert_eq!(fresh(), expected);
        let mut cache = EvalCache::open(path.clone());
        assert_eq!(walked(&mut cache), expected);
        assert!(cache.dirty(), "settled directories' listings are kept");
        cache.save();

        fs::create_dir(root.join("c/d/f")).unwrap();
        fs::write(root.join("c/d/f/BUILD.build"), "").unwrap();
        fs::remove_file(root.join("a/b/lib.build")).unwrap();
        fs::rename(root.join("c/d/e"), root.join("c/d/g")).unwrap();
        let mut cache = EvalCache::open(path.clone());
        assert_eq!(walked(&mut cache), fresh());
        assert_eq!(
            fresh(),
            [
                "a/BUILD.build",
                "c/BUILD.build",
                "c/d/f/BUILD.build",
                "c/d/g/BUILD.build"
            ]
        );
        cache.save();
        assert_eq!(walked(&mut EvalCache::open(path)), fresh());
    }

    #[test]
    fn a_directory_changed_in_the_last_second_is_listed_again_next_time() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("p")).unwrap();
        fs::write(root.path().join("p/BUILD.build"), "").unwrap();
        let store = tempfile::tempdir().unwrap();
        let mut cache = EvalCache::open(store.path().join("cache"));
        let found = build_files_under(root.path(), Some(&mut cache)).unwrap();
        assert_eq!(names(root.path(), found), ["p/BUILD.build"]);
        assert!(
            !cache.dirty(),
            "no listing of a directory this young is kept"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("gone");
        let err = build_files_under(&missing, None).unwrap_err();
        assert!(format!("{err:?}").contains("cannot list"), "{err:?}");
        assert!(format!("{err:?}").contains("gone"), "{err:?}");
    }
}
