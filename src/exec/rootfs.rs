//! File operations inside a container root seen from the host: resolving paths so that no symlink can lead
//! out of the root, COPY's docker semantics, and user/group names from the image's /etc files.

use std::fs;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use crate::graph::op::CopyOp;
use crate::solve::context::{self, Tree};

/// Resolves `path` (absolute, as seen inside the container) to a host path under `root`, following
/// symlinks the way the container would see them: an absolute link target restarts at `root`, and `..`
/// never climbs above it. With `follow_last` false, a final symlink is returned as is.
pub fn resolve(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf, String> {
    let mut parts: Vec<std::ffi::OsString> = Vec::new();
    let mut todo: Vec<std::ffi::OsString> = components(Path::new(path));
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            parts.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&parts);
        candidate.push(&c);
        let last = todo.is_empty();
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() && (follow_last || !last) => {
                hops += 1;
                if hops > 40 {
                    return Err(format!("too many levels of symbolic links in `{path}`"));
                }
                let target = fs::read_link(&candidate).map_err(|e| e.to_string())?;
                if target.is_absolute() {
                    parts.clear();
                }
                todo.extend(components(&target));
            }
            _ => parts.push(c),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&parts);
    Ok(out)
}

/// Path components as a stack (last component first popped last), without `/` and `.`.
fn components(p: &Path) -> Vec<std::ffi::OsString> {
    p.components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Creates the directory `path` inside `root` and any missing parents. Returns the host path and the
/// directories it created, as their real paths inside the root (symlinks resolved), so mount stubs can be
/// found and removed afterwards.
pub fn mkdir_all(
    root: &Path,
    path: &str,
    owner: Option<(u32, u32)>,
) -> Result<(PathBuf, Vec<String>), String> {
    let mut created = Vec::new();
    let mut sofar = String::new();
    for c in Path::new(path).components() {
        let Component::Normal(n) = c else { continue };
        sofar.push('/');
        sofar.push_str(&n.to_string_lossy());
        let host = resolve(root, &sofar, true)?;
        match fs::symlink_metadata(&host) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("`{sofar}` exists and is not a directory")),
            Err(_) => {
                fs::create_dir(&host).map_err(|e| format!("cannot create `{sofar}`: {e}"))?;
                fs::set_permissions(&host, fs::Permissions::from_mode(0o755))
                    .map_err(|e| e.to_string())?;
                if let Some((u, g)) = owner {
                    std::os::unix::fs::lchown(&host, Some(u), Some(g))
                        .map_err(|e| e.to_string())?;
                }
                created.push(inside(root, &host));
            }
        }
    }
    Ok((resolve(root, path, true)?, created))
}

/// `host` (a path under `root`) as an absolute path inside the root.
pub fn inside(root: &Path, host: &Path) -> String {
    format!("/{}", host.strip_prefix(root).unwrap_or(host).display())
}

/// Performs a COPY: `src` is where sources are selected from, `root` the destination filesystem.
/// `keep_owners`: the source is another stage or an image, whose files keep their owners without
/// `--chown`, as in BuildKit; a build context's files become 0:0 (BuildKit's client resets them).
pub fn copy(
    src: &Tree,
    root: &Path,
    op: &CopyOp,
    objects: Option<&Objects>,
    keep_owners: bool,
) -> Result<(), String> {
    let src_root = &src.root;
    let owner = match &op.chown {
        Some(spec) => Some(owner_ids(root, spec)?),
        None if keep_owners => None,
        None => Some((0, 0)),
    };
    let mut selected = Vec::new();
    for pattern in &op.sources {
        for rel in src.select(pattern)? {
            selected.push((pattern, rel));
        }
    }
    for (pattern, rel) in selected {
        // Decided for each source, as BuildKit copies them one by one: several files a wildcard matched
        // onto a path without a slash that is not a directory leave the last one there (the front end
        // refuses several sources written out without the slash).
        let into_dir =
            op.dest.ends_with('/') || resolve(root, &op.dest, true).is_ok_and(|p| p.is_dir());
        let from = context::resolve_source(src_root, &rel)?;
        let meta =
            fs::metadata(&from).map_err(|e| format!("cannot read source `{pattern}`: {e}"))?;
        if op.parents {
            // `--parents`: the source keeps its path (below a `/./` pivot) under the destination.
            let keep = kept_path(pattern, &rel);
            let target = format!("{}/{}", op.dest.trim_end_matches('/'), keep.display());
            if meta.is_dir() {
                let (dest, _) = mkdir_all(root, &target, owner)?;
                copy_tree(src, &from, &dest, owner, op.chmod, objects)?;
            } else {
                let (parent, name) = split_parent(&target);
                let (dir, _) = mkdir_all(root, &parent, owner)?;
                copy_entry(&from, &dir.join(name), owner, op.chmod, objects)?;
            }
            continue;
        }
        if meta.is_dir() {
            let (dest, _) = mkdir_all(root, &op.dest, owner)?;
            copy_tree(src, &from, &dest, owner, op.chmod, objects)?;
        } else if op.extract && archive_kind(&from)?.is_some() {
            // ADD unpacks local archives into the destination directory, as docker does.
            let (dest, _) = mkdir_all(root, &op.dest, owner)?;
            extract(&from, &dest, op.chown.as_ref().and(owner))?;
        } else {
            let dest_path = if into_dir {
                let name = rel
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("{}/{name}", op.dest.trim_end_matches('/'))
            } else {
                op.dest.clone()
            };
            let (parent, name) = split_parent(&dest_path);
            let (dir, _) = mkdir_all(root, &parent, owner)?;
            let mut target = dir.join(name);
            if !into_dir {
                // A destination that is a symlink in the image is written through, as BuildKit resolves
                // the destination (`RootPath`) before copying: the link stays, its target gets the file.
                target = resolve(root, &dest_path, true)?;
                if let Some(p) = target.parent().filter(|p| !p.exists()) {
                    mkdir_all(root, &inside(root, p), owner)?;
                }
            }
            copy_entry(&from, &target, owner, op.chmod, objects)?;
        }
    }
    write_heredocs(root, op, owner)
}

/// The heredoc files of a COPY that mixes them with files: into the destination directory, mode 0644
/// unless `--chmod` says otherwise, as BuildKit makes them.
fn write_heredocs(root: &Path, op: &CopyOp, owner: Option<(u32, u32)>) -> Result<(), String> {
    if op.files.is_empty() {
        return Ok(());
    }
    let (dir, _) = mkdir_all(root, &op.dest, owner)?;
    for (name, content) in &op.files {
        let path = dir.join(context::clean_relative(name)?);
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
        // What is there is replaced, never written through (a link could point out of the root).
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path).map_err(fail)?,
            Ok(_) => fs::remove_file(&path).map_err(fail)?,
            Err(_) => {}
        }
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, content.as_bytes()))
            .map_err(fail)?;
        if let Some((u, g)) = owner {
            std::os::unix::fs::lchown(&path, Some(u), Some(g)).map_err(fail)?;
        }
        let mode = op.chmod.unwrap_or(0o644);
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(fail)?;
    }
    Ok(())
}

/// How an archive ADD unpacks is compressed, told by its magic bytes as moby's `DetectCompression` does.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Compression {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// The file decompressed (when it is, by its magic bytes).
fn decompressed(path: &Path) -> Result<(Compression, Box<dyn std::io::Read>), String> {
    use std::io::Read as _;
    let fail = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut head = Vec::new();
    fs::File::open(path)
        .map_err(fail)?
        .take(6)
        .read_to_end(&mut head)
        .map_err(fail)?;
    let kind = if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Compression::Gzip
    } else if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    let file = std::io::BufReader::new(fs::File::open(path).map_err(fail)?);
    let reader: Box<dyn std::io::Read> = match kind {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(file)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(file)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(fail)?)
        }
    };
    Ok((kind, reader))
}

/// The compression of a (possibly compressed) tar, `None` for anything else, which ADD copies as is.
fn archive_kind(path: &Path) -> Result<Option<Compression>, String> {
    let (kind, mut reader) = decompressed(path)?;
    let mut block = vec![0u8; 512];
    let mut filled = 0;
    while filled < 512 {
        match reader.read(&mut block[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => filled += k,
        }
    }
    Ok((filled >= 262 && &block[257..262] == b"ustar").then_some(kind))
}

/// Unpacks an archive into `dest`. The tar crate refuses entries that would land outside `dest` (`..`,
/// absolute names, or through a symlink the archive itself created).
fn extract(path: &Path, dest: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot unpack {}: {e}", path.display());
    let (_, reader) = decompressed(path)?;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(owner.is_none());
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(fail)? {
        let mut entry = entry.map_err(fail)?;
        let name = entry.path().map_err(fail)?.into_owned();
        if !entry.unpack_in(dest).map_err(fail)? {
            return Err(format!(
                "cannot unpack {}: entry `{}` points outside the destination",
                path.display(),
                name.display()
            ));
        }
        if let Some((u, g)) = owner {
            let target = dest.join(clean(&name));
            std::os::unix::fs::lchown(&target, Some(u), Some(g)).map_err(fail)?;
        }
    }
    Ok(())
}

/// An archive entry's name made relative (what `unpack_in` does with it).
fn clean(name: &Path) -> PathBuf {
    name.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// The part of a selected path that `--parents` keeps: everything, or what follows a `/./` pivot in the
/// pattern (`a/./b/c` keeps `b/c`).
fn kept_path(pattern: &str, rel: &Path) -> PathBuf {
    let Some((before, _)) = pattern.split_once("/./") else {
        return rel.to_path_buf();
    };
    let skip = Path::new(before.trim_start_matches("./").trim_start_matches('/'))
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count();
    rel.components().skip(skip).collect()
}

fn split_parent(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((p, n)) => (if p.is_empty() { "/".into() } else { p.into() }, n.into()),
        None => ("/".into(), trimmed.into()),
    }
}

/// Copies the contents of `from` (a directory of `tree`) into `dest`, leaving out what the tree excludes.
pub fn copy_tree(
    tree: &Tree,
    from: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
    chmod: Option<u32>,
    objects: Option<&Objects>,
) -> Result<(), String> {
    let mut linked = std::collections::HashMap::new();
    // Directories known to be in `dest`, and those of them this copy made: nothing else is in a directory
    // it made, so an entry there is written without first looking for what it would replace (two
    // look-ups a file saved on a context of thousands of files).
    let mut known = std::collections::HashSet::new();
    let mut made = std::collections::HashSet::new();
    let to = Place {
        owner,
        chmod,
        objects,
    };
    for entry in tree.entries(from)?.into_iter().filter(|e| e.depth() > 0) {
        let rel = entry.path().strip_prefix(from).map_err(|e| e.to_string())?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        if !parent.as_os_str().is_empty() && !known.contains(parent) {
            // A directory entered only for re-included children is made here, without its other files,
            // with its own mode and owner as BuildKit's copier makes it (never the process's umask).
            let mut sofar = PathBuf::new();
            for c in parent.components() {
                sofar.push(c);
                if !dest.join(&sofar).exists() {
                    copy_entry(&from.join(&sofar), &dest.join(&sofar), owner, chmod, None)?;
                    made.insert(sofar.clone());
                }
                known.insert(sofar.clone());
            }
        }
        let target = dest.join(rel);
        let fresh = made.contains(parent);
        // Files hard-linked to each other in the source stay linked, as BuildKit's fsutil copy keeps them.
        let meta = entry.metadata().map_err(|e| e.to_string())?;
        let inode = (meta.is_file() && meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
        if let Some(first) = inode.and_then(|i| linked.get(&i)) {
            if !fresh && fs::symlink_metadata(&target).is_ok_and(|m| !m.is_dir()) {
                fs::remove_file(&target).map_err(|e| e.to_string())?;
            }
            fs::hard_link(first, &target)
                .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
            continue;
        }
        if to.entry(entry.path(), &meta, &target, fresh)? {
            made.insert(rel.to_owned());
        }
        if meta.is_dir() {
            known.insert(rel.to_owned());
        }
        if let Some(i) = inode {
            linked.insert(i, target);
        }
    }
    Ok(())
}

/// Copies the directory `from` of `tree` onto `dest` as it is: every entry, `dest` itself included, keeps
/// its owner and mode (a cache mount's seed, which BuildKit makes a copy-on-write copy of).
pub fn copy_tree_as_is(tree: &Tree, from: &Path, dest: &Path) -> Result<(), String> {
    for entry in tree.entries(from)? {
        let rel = entry.path().strip_prefix(from).map_err(|e| e.to_string())?;
        let meta = fs::symlink_metadata(entry.path()).map_err(|e| e.to_string())?;
        let owner = Some((meta.uid(), meta.gid()));
        copy_entry(entry.path(), &dest.join(rel), owner, None, None)?;
    }
    Ok(())
}

/// Copies one file, directory or symlink (not recursing), replacing what is at `dest` unless both are dirs.
fn copy_entry(
    src: &Path,
    dest: &Path,
    owner: Option<(u32, u32)>,
    chmod: Option<u32>,
    objects: Option<&Objects>,
) -> Result<(), String> {
    let meta =
        fs::symlink_metadata(src).map_err(|e| format!("cannot read {}: {e}", src.display()))?;
    let to = Place {
        owner,
        chmod,
        objects,
    };
    to.entry(src, &meta, dest, false).map(drop)
}

/// How a copy's entries are written: their owner, mode and the store's objects to link files to.
struct Place<'a> {
    owner: Option<(u32, u32)>,
    chmod: Option<u32>,
    objects: Option<&'a Objects>,
}

impl Place<'_> {
    /// Writes `src` (whose metadata is `meta`) at `dest`; `fresh`: nothing is there (its directory was
    /// just made). True when it made a directory.
    fn entry(
        &self,
        src: &Path,
        meta: &fs::Metadata,
        dest: &Path,
        fresh: bool,
    ) -> Result<bool, String> {
        let ft = meta.file_type();
        if ft.is_fifo() || ft.is_socket() {
            // BuildKit's copier (fsutil) has no case for pipes and sockets and leaves them out without a
            // word, from a context and from a stage alike.
            return Ok(false);
        }
        let existing = if fresh {
            None
        } else {
            fs::symlink_metadata(dest).ok()
        };
        if let Some(m) = &existing
            && !(m.is_dir() && ft.is_dir())
        {
            if m.is_dir() {
                fs::remove_dir_all(dest).map_err(|e| e.to_string())?;
            } else {
                fs::remove_file(dest).map_err(|e| e.to_string())?;
            }
        }
        let fail = |e: std::io::Error| format!("cannot write {}: {e}", dest.display());
        let mut made = false;
        if ft.is_dir() {
            if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                fs::create_dir(dest).map_err(fail)?;
                made = true;
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(src).map_err(fail)?;
            std::os::unix::fs::symlink(target, dest).map_err(fail)?;
        } else if ft.is_file() {
            // A linked object already has its owner, mode and time; touching them would change every link.
            if let Some(o) = self.objects
                && self.chmod.is_none()
                && self.owner == Some((0, 0))
                && o.link(src, meta, dest)?
            {
                return Ok(false);
            }
            fs::copy(src, dest).map_err(fail)?;
        } else {
            return Err(format!(
                "cannot copy {}: not a file, directory or symlink",
                src.display()
            ));
        }
        let (u, g) = self.owner.unwrap_or((meta.uid(), meta.gid()));
        std::os::unix::fs::lchown(dest, Some(u), Some(g)).map_err(fail)?;
        if !ft.is_symlink() {
            let mode = self.chmod.unwrap_or(meta.permissions().mode() & 0o7777);
            fs::set_permissions(dest, fs::Permissions::from_mode(mode)).map_err(fail)?;
            set_mtime(dest, filetime_of(meta)).map_err(fail)?;
        }
        Ok(made)
    }
}

/// The store's file objects for a COPY from a context written straight into a fresh snapshot: an unchanged
/// context file becomes a hard link to an object (no new inode, no data copied), as owner 0:0 with its
/// own mode and mtime, exactly what a copy would be.
pub struct Objects {
    pub dir: PathBuf,
    pub cache: std::sync::Arc<crate::solve::statcache::StatCache>,
    /// The context root, which the stat cache's paths are relative to.
    pub context: PathBuf,
    /// Objects linked by this copy: a second file with the same object gets a copy of its own, so the layer
    /// holds no hard links its source did not have.
    pub used: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl Objects {
    /// Links `dest` to the object of `src`; `false` when `src` must be copied instead (its digest is not
    /// known for its current stat, the object is used already, or the link fails).
    fn link(&self, src: &Path, meta: &fs::Metadata, dest: &Path) -> Result<bool, String> {
        use sha2::Digest as _;
        let Ok(rel) = src.strip_prefix(&self.context) else {
            return Ok(false);
        };
        let Some(content) = self.cache.known(rel, meta) else {
            return Ok(false);
        };
        let mut h = sha2::Sha256::new_with_prefix(b"kiln/file/v1\0");
        h.update(content);
        h.update((meta.mode() & 0o7777).to_le_bytes());
        h.update(meta.mtime().to_le_bytes());
        h.update(meta.mtime_nsec().to_le_bytes());
        let name = hex::encode(h.finalize());
        if !self.used.borrow_mut().insert(name.clone()) {
            return Ok(false);
        }
        let object = self.dir.join(&name);
        // Linked at once when the object is there (an unchanged file of a context copied before).
        match fs::hard_link(&object, dest) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Ok(false),
            Err(_) => {}
        }
        if fs::symlink_metadata(&object).is_err() {
            let fail = |e: std::io::Error| format!("cannot store {}: {e}", src.display());
            let _ = fs::create_dir_all(&self.dir);
            let tmp = tempfile::Builder::new()
                .prefix(".new-")
                .tempfile_in(&self.dir)
                .map_err(fail)?;
            fs::copy(src, tmp.path()).map_err(fail)?;
            std::os::unix::fs::lchown(tmp.path(), Some(0), Some(0)).map_err(fail)?;
            fs::set_permissions(tmp.path(), fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(fail)?;
            set_mtime(tmp.path(), filetime_of(meta)).map_err(fail)?;
            // The object is named by the digest the stat cache gave: only if the file stood still while
            // it was copied are these bytes that content.
            let after = fs::symlink_metadata(src).map_err(fail)?;
            if crate::solve::statcache::Stat::of(&after) != crate::solve::statcache::Stat::of(meta)
            {
                return Ok(false);
            }
            tmp.persist_noclobber(&object).ok();
        }
        // Too many links (or none possible): copy instead.
        Ok(fs::hard_link(&object, dest).is_ok())
    }
}

fn filetime_of(meta: &fs::Metadata) -> std::time::SystemTime {
    std::time::UNIX_EPOCH
        + std::time::Duration::new(meta.mtime().max(0) as u64, meta.mtime_nsec() as u32)
}

fn set_mtime(path: &Path, t: std::time::SystemTime) -> std::io::Result<()> {
    let f = fs::File::options().read(true).open(path)?;
    f.set_modified(t)
}

/// `user[:group]` as names or ids, resolved through the image's /etc/passwd and /etc/group.
/// A user named without a group takes its primary group; a user id without a group, the same id.
pub fn owner_ids(root: &Path, spec: &str) -> Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_db(root, "/etc/passwd");
    let (uid, primary) = match user.parse::<u32>() {
        // A user given by id gets that id as its group too, whatever /etc/passwd says, as BuildKit's
        // file ops read a `UserOpt_ByID` (a RUN's user is resolved otherwise: see `exec_user`).
        Ok(uid) => (uid, uid),
        Err(_) => {
            let entry = passwd
                .iter()
                .find(|f| f.first().map(String::as_str) == Some(user))
                .ok_or_else(|| format!("unknown user `{user}` (not in the image's /etc/passwd)"))?;
            let uid = entry
                .get(2)
                .and_then(|s| s.parse().ok())
                .ok_or("bad /etc/passwd entry")?;
            let gid = entry
                .get(3)
                .and_then(|s| s.parse().ok())
                .ok_or("bad /etc/passwd entry")?;
            (uid, gid)
        }
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => read_db(root, "/etc/group")
                .iter()
                .find(|f| f.first().map(String::as_str) == Some(g))
                .and_then(|f| f.get(2).and_then(|s| s.parse().ok()))
                .ok_or_else(|| format!("unknown group `{g}` (not in the image's /etc/group)"))?,
        },
    };
    Ok((uid, gid))
}

/// Who a RUN step runs as, as runc resolves `USER` (moby's `GetExecUser`, which BuildKit's executors
/// use): unlike `--chown`, a numeric user with no passwd entry gets group 0 and home `/`; a user found by
/// name or id gets their passwd group and home, and the groups of /etc/group that list them as members.
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

pub fn exec_user(root: &Path, spec: &str) -> Result<ExecUser, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let field = |f: &[String], i: usize| f.get(i).and_then(|s| s.parse::<u32>().ok());
    let numeric = user.parse::<u32>().ok();
    let passwd = read_db(root, "/etc/passwd");
    let entry = passwd.iter().find(|f| match numeric {
        Some(uid) => field(f, 2) == Some(uid),
        None => f.first().map(String::as_str) == Some(user),
    });
    let (name, mut out) = match (entry, numeric) {
        (Some(f), _) => (
            f.first().cloned(),
            ExecUser {
                uid: field(f, 2).ok_or("bad /etc/passwd entry")?,
                gid: field(f, 3).ok_or("bad /etc/passwd entry")?,
                groups: Vec::new(),
                home: f.get(5).cloned().unwrap_or_else(|| "/".into()),
            },
        ),
        (None, Some(uid)) => (
            None,
            ExecUser {
                uid,
                gid: 0,
                groups: Vec::new(),
                home: "/".into(),
            },
        ),
        (None, None) => {
            return Err(format!(
                "unknown user `{user}` (not in the image's /etc/passwd)"
            ));
        }
    };
    let groups = read_db(root, "/etc/group");
    match group {
        Some(g) => {
            let by_db = groups.iter().find(|f| match g.parse::<u32>() {
                Ok(gid) => field(f, 2) == Some(gid),
                Err(_) => f.first().map(String::as_str) == Some(g),
            });
            out.gid = match (by_db.and_then(|f| field(f, 2)), g.parse::<u32>()) {
                (Some(gid), _) | (None, Ok(gid)) => gid,
                (None, Err(_)) => {
                    return Err(format!(
                        "unknown group `{g}` (not in the image's /etc/group)"
                    ));
                }
            };
        }
        None => {
            if let Some(name) = name {
                out.groups = groups
                    .iter()
                    .filter(|f| f.get(3).is_some_and(|m| m.split(',').any(|u| u == name)))
                    .filter_map(|f| field(f, 2))
                    .collect();
            }
        }
    }
    Ok(out)
}

fn read_db(root: &Path, path: &str) -> Vec<Vec<String>> {
    let Ok(host) = resolve(root, path, true) else {
        return vec![];
    };
    fs::read_to_string(host)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(':').map(String::from).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_cannot_escape_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir(r.join("etc")).unwrap();
        std::os::unix::fs::symlink("/", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../../", r.join("etc/up")).unwrap();
        assert_eq!(resolve(r, "/abs/etc", true).unwrap(), r.join("etc"));
        assert_eq!(resolve(r, "/etc/up/tmp", true).unwrap(), r.join("tmp"));
        assert_eq!(resolve(r, "/../../x", true).unwrap(), r.join("x"));
        assert_eq!(resolve(r, "/abs", false).unwrap(), r.join("abs"));
    }

    #[test]
    fn owners_resolve_through_the_image() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/passwd"),
            "app:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(root.path().join("etc/group"), "staff:x:50:\n").unwrap();
        assert_eq!(owner_ids(root.path(), "app").unwrap(), (1000, 1001));
        assert_eq!(owner_ids(root.path(), "app:staff").unwrap(), (1000, 50));
        assert_eq!(owner_ids(root.path(), "5:6").unwrap(), (5, 6));
        assert!(owner_ids(root.path(), "nobody").is_err());
    }

    #[test]
    fn run_users_resolve_as_runc_does() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("etc")).unwrap();
        fs::write(
            root.path().join("etc/passwd"),
            "app:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            root.path().join("etc/group"),
            "staff:x:50:\nextra:x:60:other,app\n",
        )
        .unwrap();
        let ids = |spec: &str| {
            let u = exec_user(root.path(), spec).unwrap();
            (u.uid, u.gid, u.groups, u.home)
        };
        assert_eq!(ids("app"), (1000, 1001, vec![60], "/home/app".into()));
        assert_eq!(ids("1000"), (1000, 1001, vec![60], "/home/app".into()));
        assert_eq!(ids("app:staff"), (1000, 50, vec![], "/home/app".into()));
        assert_eq!(ids("4321"), (4321, 0, vec![], "/".into()));
        assert_eq!(ids("4321:77"), (4321, 77, vec![], "/".into()));
        assert!(exec_user(root.path(), "nobody").is_err());
        assert!(exec_user(root.path(), "app:nogroup").is_err());
    }
}
