//! Unpacks an OCI layer tar into a snapshot directory in overlayfs upperdir format.
//!
//! Layers come from registries and other people's builds, so every name is treated as
//! hostile: nothing may land outside `dest`, and no symlink is ever followed while
//! creating parents or hardlinks. `.wh.` entries become the overlay's own encoding of
//! deletions (0/0 char devices and `trusted.overlay.opaque=y`, or `user.overlay.opaque=y` in rootless
//! mode, where overlayfs is mounted with `userxattr` and `trusted.*` xattrs cannot be written). Which mode
//! applies is the caller's to say (`Ids`): the executor knows its user namespace, the codec does not.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use tar::{Archive, EntryType};

use super::{
    OPAQUE_MARKER, OPAQUE_XATTR, OVERLAY_XATTR_PREFIXES, USER_OPAQUE_XATTR, WHITEOUT_PREFIX,
};

const XATTR_PAX_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Opens a layer blob as a stream of uncompressed tar bytes, chosen by its media type.
pub fn open_blob(path: &Path, media_type: &str) -> io::Result<Box<dyn Read>> {
    let file = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    decompress(BufReader::new(file), media_type)
}

/// The uncompressed tar bytes of a layer blob read from `blob`, chosen by its media type (gzip, zstd or
/// none); anything else is `Unsupported`. Used on files and on blobs as they stream from a registry.
pub fn decompress<'a, R: io::BufRead + 'a>(
    blob: R,
    media_type: &str,
) -> io::Result<Box<dyn Read + 'a>> {
    if media_type.ends_with("+zstd") {
        return Ok(Box::new(zstd::stream::read::Decoder::with_buffer(blob)?));
    }
    let gzip = media_type.ends_with("+gzip") || media_type.ends_with(".gzip");
    let plain = media_type.ends_with(".tar") || media_type.ends_with("+tar");
    if !gzip && !plain {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("unsupported layer media type `{media_type}`"),
        ));
    }
    Ok(if gzip {
        // Some tools write layers as several concatenated gzip members.
        Box::new(MultiGzDecoder::new(blob))
    } else {
        Box::new(blob)
    })
}

/// The user namespace a snapshot is unpacked in, as the executor that owns it knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ids {
    /// Real root: every owner exists, device nodes can be made, overlayfs reads `trusted.overlay.*`.
    Host,
    /// A user namespace mapping ids 0 to `mapped - 1`, where overlayfs is mounted with `userxattr` (so
    /// reads `user.overlay.*`) and device nodes cannot be made.
    Rootless { mapped: u64 },
}

/// Unpacks the uncompressed layer `tar` into the fresh empty directory `dest`, for a namespace with `ids`.
pub fn unpack_layer<R: Read>(tar: R, dest: &Path, ids: Ids) -> io::Result<()> {
    let mut archive = Archive::new(tar);
    let mut dir_times: Vec<(PathBuf, TimeSpec)> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read layer: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| io::Error::new(e.kind(), format!("cannot read layer: {e}")))?;
        let raw_name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_name).into_owned();
        unpack_entry(&mut entry, &raw_name, dest, ids, &mut dir_times)
            .map_err(|e| io::Error::new(e.kind(), format!("layer entry `{shown}`: {e}")))?;
    }
    // Children created after a directory bump its mtime, so directories go last.
    for (path, mtime) in dir_times.iter().rev() {
        set_mtime(path, *mtime)?;
    }
    Ok(())
}

fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    raw_name: &[u8],
    dest: &Path,
    ids: Ids,
    dir_times: &mut Vec<(PathBuf, TimeSpec)>,
) -> io::Result<()> {
    let kind = entry.header().entry_type();
    if matches!(kind, EntryType::XGlobalHeader) {
        return Ok(());
    }
    let components = normalise(raw_name)?;

    let Some((last, parents)) = components.split_last() else {
        // `./` describes dest itself; only its metadata can be taken from it.
        if !kind.is_dir() {
            return Err(invalid("an entry without a name must be a directory"));
        }
        let meta = Meta::read(entry)?;
        meta.apply(dest, false, ids)?;
        dir_times.push((dest.to_path_buf(), meta.mtime));
        return Ok(());
    };

    let parent = ensure_parents(dest, parents)?;

    if last.as_slice() == OPAQUE_MARKER {
        let name = match ids {
            Ids::Rootless { .. } => USER_OPAQUE_XATTR,
            Ids::Host => OPAQUE_XATTR,
        };
        return xattr::set(&parent, name, b"y")
            .map_err(|e| io::Error::new(e.kind(), format!("cannot mark opaque: {e}")));
    }
    if let Some(hidden) = last.strip_prefix(WHITEOUT_PREFIX) {
        if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
            return Err(invalid("malformed whiteout name"));
        }
        let target = parent.join(std::ffi::OsStr::from_bytes(hidden));
        clear(&target, false)?;
        mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
            .map_err(|e| io::Error::other(format!("cannot create whiteout: {e}")))?;
        // Snapshots from the same layer should be identical, down to the whiteouts' times.
        return set_mtime(&target, Meta::read(entry)?.mtime);
    }

    let path = parent.join(std::ffi::OsStr::from_bytes(last));
    let meta = Meta::read(entry)?;
    match kind {
        EntryType::Directory => {
            clear(&path, true)?;
            if fs::symlink_metadata(&path).is_err() {
                DirBuilder::new().mode(0o700).create(&path)?;
            }
            meta.apply(&path, false, ids)?;
            dir_times.push((path, meta.mtime));
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            clear(&path, false)?;
            // create_new is O_EXCL, which refuses to open through a symlink.
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            io::copy(entry, &mut file)?;
            drop(file);
            meta.apply(&path, false, ids)?;
            set_mtime(&path, meta.mtime)?;
        }
        EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| invalid("symlink without a target"))?;
            clear(&path, false)?;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)?;
            meta.apply(&path, true, ids)?;
            set_mtime(&path, meta.mtime)?;
        }
        EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| invalid("hardlink without a target"))?;
            let source = confined_existing(dest, &target)?;
            clear(&path, false)?;
            // linkat without AT_SYMLINK_FOLLOW links a symlink itself, never its target.
            fs::hard_link(&source, &path)?;
        }
        EntryType::Char | EntryType::Block if matches!(ids, Ids::Rootless { .. }) => {
            let dev = shown(dest, &path);
            // Every step gets a fresh /dev, and exports reuse the original layer blob, so a device node
            // under dev/ changes nothing the build can see; anywhere else it would, so it is refused.
            if !(dev == "dev" || dev.starts_with("dev/")) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "device nodes outside /dev cannot be created in rootless mode (a user namespace may \
                     not make them); build this image as root",
                ));
            }
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let (sflag, dev) = match kind {
                EntryType::Fifo => (SFlag::S_IFIFO, 0),
                _ => {
                    let major = entry.header().device_major()?.unwrap_or(0);
                    let minor = entry.header().device_minor()?.unwrap_or(0);
                    let sflag = if kind == EntryType::Char {
                        SFlag::S_IFCHR
                    } else {
                        SFlag::S_IFBLK
                    };
                    (sflag, makedev(u64::from(major), u64::from(minor)))
                }
            };
            clear(&path, false)?;
            mknod(&path, sflag, Mode::empty(), dev)
                .map_err(|e| io::Error::other(format!("mknod: {e}")))?;
            meta.apply(&path, false, ids)?;
            set_mtime(&path, meta.mtime)?;
        }
        other => {
            return Err(invalid(&format!("unsupported entry type {other:?}")));
        }
    }
    Ok(())
}

/// Ownership, permissions, xattrs and mtime of one entry, gathered before its data is read.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
        let header = entry.header();
        let mode = header.mode()? & 0o7777;
        let uid = u32::try_from(header.uid()?).map_err(|_| invalid("uid out of range"))?;
        let gid = u32::try_from(header.gid()?).map_err(|_| invalid("gid out of range"))?;
        let mut mtime = TimeSpec::new(i64::try_from(header.mtime()?).unwrap_or(i64::MAX), 0);
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions()? {
            for record in pax {
                let record = record?;
                let key = record.key_bytes();
                if key == b"mtime" {
                    if let Some(t) = parse_pax_time(record.value_bytes()) {
                        mtime = t;
                    }
                } else if let Some(name) = key.strip_prefix(XATTR_PAX_PREFIX)
                    && !OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
                    && !name.is_empty()
                {
                    xattrs.push((name.to_vec(), record.value_bytes().to_vec()));
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            xattrs,
        })
    }

    /// chown clears setuid bits and capabilities, so it goes first, then mode, then xattrs.
    fn apply(&self, path: &Path, is_symlink: bool, ids: Ids) -> io::Result<()> {
        std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)).map_err(|e| {
            if let (Some(nix::libc::EINVAL), Ids::Rootless { mapped }) = (e.raw_os_error(), ids) {
                // The kind tells the executor to add the /etc/subuid hint (see `Namespaces::unpack`).
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "owner uid {} gid {} is not mapped in kiln's user namespace (it maps only \
                         ids 0 to {})",
                        self.uid,
                        self.gid,
                        mapped.saturating_sub(1)
                    ),
                )
            } else {
                io::Error::new(e.kind(), format!("chown: {e}"))
            }
        })?;
        if !is_symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(self.mode))?;
        }
        for (name, value) in &self.xattrs {
            xattr::set(path, std::ffi::OsStr::from_bytes(name), value).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot set xattr {}: {e}", String::from_utf8_lossy(name)),
                )
            })?;
        }
        Ok(())
    }
}

/// Splits an entry name into plain components, refusing `..` rather than resolving it.
fn normalise(raw: &[u8]) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(invalid("`..` in entry name")),
            _ if part.contains(&0) => return Err(invalid("NUL in entry name")),
            _ => out.push(part.to_vec()),
        }
    }
    Ok(out)
}

/// Walks (creating as needed) the parent directories, refusing to pass through symlinks.
fn ensure_parents(dest: &Path, parents: &[Vec<u8>]) -> io::Result<PathBuf> {
    let mut cur = dest.to_path_buf();
    for part in parents {
        cur.push(std::ffi::OsStr::from_bytes(part));
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(invalid(&format!(
                    "refusing to write through symlink `{}`",
                    shown(dest, &cur)
                )));
            }
            Ok(_) => {
                return Err(invalid(&format!(
                    "parent `{}` is not a directory",
                    shown(dest, &cur)
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new().mode(0o755).create(&cur)?;
                // The umask must not decide what the image's implicit directories look like.
                fs::set_permissions(&cur, fs::Permissions::from_mode(0o755))?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

/// Resolves a hardlink target inside dest without following any symlink on the way.
fn confined_existing(dest: &Path, target: &[u8]) -> io::Result<PathBuf> {
    let parts = normalise(target).map_err(|_| {
        invalid(&format!(
            "hardlink target `{}` escapes the layer",
            String::from_utf8_lossy(target)
        ))
    })?;
    let Some((last, parents)) = parts.split_last() else {
        return Err(invalid("hardlink to the layer root"));
    };
    let mut cur = dest.to_path_buf();
    for part in parents {
        cur.push(std::ffi::OsStr::from_bytes(part));
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            _ => {
                return Err(invalid(&format!(
                    "hardlink target `{}` is not inside the layer",
                    String::from_utf8_lossy(target)
                )));
            }
        }
    }
    cur.push(std::ffi::OsStr::from_bytes(last));
    match fs::symlink_metadata(&cur) {
        Ok(m) if !m.is_dir() => Ok(cur),
        Ok(_) => Err(invalid("hardlink to a directory")),
        Err(_) => Err(invalid(&format!(
            "hardlink target `{}` was not extracted before the link",
            String::from_utf8_lossy(target)
        ))),
    }
}

/// Later entries replace earlier ones, as tar does; an existing dir stays for a dir entry.
fn clear(path: &Path, keep_dir: bool) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            if keep_dir {
                Ok(())
            } else {
                fs::remove_dir_all(path)
            }
        }
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_mtime(path: &Path, mtime: TimeSpec) -> io::Result<()> {
    utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &mtime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io::Error::other(format!("cannot set mtime of {}: {e}", path.display())))
}

/// PAX times are decimal seconds with an optional fraction, possibly negative.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(value).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<9}").parse().ok()?
    };
    Some(if !negative {
        TimeSpec::new(secs, nanos)
    } else if nanos == 0 {
        TimeSpec::new(-secs, 0)
    } else {
        TimeSpec::new(-secs - 1, 1_000_000_000 - nanos)
    })
}

fn shown(dest: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(dest).unwrap_or(path);
    String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned()
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::Header;

    /// Builds tars byte by byte, since tar::Builder itself refuses the hostile names under test.
    struct RawTar(Vec<u8>);

    impl RawTar {
        fn new() -> Self {
            RawTar(Vec::new())
        }

        fn entry(mut self, name: &str, kind: EntryType, link: Option<&str>, data: &[u8]) -> Self {
            let mut h = Header::new_ustar();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(kind);
            h.set_mode(if kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_000_000);
            h.set_size(data.len() as u64);
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0, pad));
            self
        }

        fn file(self, name: &str, data: &[u8]) -> Self {
            self.entry(name, EntryType::Regular, None, data)
        }

        fn pax(mut self, records: &[(&str, &str)]) -> Self {
            let mut body = String::new();
            for (k, v) in records {
                let rest = k.len() + v.len() + 3;
                let mut len = rest + 1;
                while len.to_string().len() + rest != len {
                    len = len.to_string().len() + rest;
                }
                body.push_str(&format!("{len} {k}={v}\n"));
            }
            self = self.entry("PaxHeaders/x", EntryType::XHeader, None, body.as_bytes());
            self
        }

        fn finish(mut self) -> Vec<u8> {
            self.0.extend(std::iter::repeat_n(0, 1024));
            self.0
        }
    }

    fn unpack(tar: Vec<u8>) -> (tempfile::TempDir, io::Result<()>) {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("dest")).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        let result = unpack_layer(
            tar.as_slice(),
            &tmp.path().join("dest"),
            crate::exec::userns::layer_ids(),
        );
        (tmp, result)
    }

    fn assert_outside_empty(tmp: &tempfile::TempDir) {
        let outside: Vec<_> = fs::read_dir(tmp.path().join("outside")).unwrap().collect();
        assert!(outside.is_empty(), "something escaped: {outside:?}");
        let top: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(top.len(), 2, "something escaped: {top:?}");
    }

    #[test]
    fn dotdot_is_refused() {
        let (tmp, result) = unpack(RawTar::new().file("../evil", b"x").finish());
        let err = result.unwrap_err().to_string();
        assert!(err.contains("../evil") && err.contains(".."), "{err}");
        assert_outside_empty(&tmp);

        let (tmp, result) = unpack(RawTar::new().file("ok/../../evil", b"x").finish());
        assert!(result.is_err());
        assert_outside_empty(&tmp);
    }

    #[test]
    fn absolute_and_dotted_names_land_inside() {
        let tar = RawTar::new()
            .file("/abs", b"a")
            .file("./rel/./x", b"b")
            .entry("./", EntryType::Directory, None, b"")
            .finish();
        let (tmp, result) = unpack(tar);
        result.unwrap();
        let dest = tmp.path().join("dest");
        assert_eq!(fs::read(dest.join("abs")).unwrap(), b"a");
        assert_eq!(fs::read(dest.join("rel/x")).unwrap(), b"b");
        // Implicit parents are 0755 whatever the umask.
        let m = fs::metadata(dest.join("rel")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755);
        assert_outside_empty(&tmp);
    }

    #[test]
    fn writing_through_a_symlinked_parent_is_refused() {
        let tar = RawTar::new()
            .entry("a", EntryType::Symlink, Some("/"), b"")
            .file("a/etc/kiln-evil", b"x")
            .finish();
        let (tmp2, result) = unpack(tar);
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("a/etc/kiln-evil") && err.contains("symlink"),
            "{err}"
        );
        assert!(!Path::new("/etc/kiln-evil").exists());
        assert_outside_empty(&tmp2);

        // The same through a relative link that climbs out of dest.
        let tar = RawTar::new()
            .entry("b", EntryType::Symlink, Some("../outside"), b"")
            .file("b/x", b"x")
            .finish();
        let (tmp3, result) = unpack(tar);
        assert!(result.is_err());
        assert_outside_empty(&tmp3);
    }

    #[test]
    fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("victim");
        fs::write(&target, b"original").unwrap();
        let tar = RawTar::new()
            .entry("f", EntryType::Symlink, Some(target.to_str().unwrap()), b"")
            .file("f", b"new")
            .finish();
        let (tmp2, result) = unpack(tar);
        result.unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"original");
        let f = tmp2.path().join("dest/f");
        assert!(fs::symlink_metadata(&f).unwrap().is_file());
        assert_eq!(fs::read(f).unwrap(), b"new");
    }

    #[test]
    fn hardlinks_are_confined() {
        let (tmp, result) = unpack(
            RawTar::new()
                .entry("h", EntryType::Link, Some("../outside/x"), b"")
                .finish(),
        );
        let err = result.unwrap_err().to_string();
        assert!(err.contains("`h`") && err.contains("escapes"), "{err}");
        assert_outside_empty(&tmp);

        // A target reached through a symlinked directory is refused too.
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("secret");
        fs::write(&secret, b"s").unwrap();
        let tar = RawTar::new()
            .entry(
                "s",
                EntryType::Symlink,
                Some(tmp.path().to_str().unwrap()),
                b"",
            )
            .entry("h", EntryType::Link, Some("s/secret"), b"")
            .finish();
        let (_tmp2, result) = unpack(tar);
        assert!(result.is_err());
        assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);

        // Links to entries not yet extracted are refused rather than dangling.
        let (_tmp3, result) = unpack(
            RawTar::new()
                .entry("h", EntryType::Link, Some("later"), b"")
                .finish(),
        );
        assert!(result.is_err());

        let (tmp4, result) = unpack(
            RawTar::new()
                .file("/d/orig", b"o")
                .entry("h", EntryType::Link, Some("/d/orig"), b"")
                .finish(),
        );
        result.unwrap();
        let dest = tmp4.path().join("dest");
        let ino = |p: &str| fs::metadata(dest.join(p)).unwrap().ino();
        assert_eq!(ino("d/orig"), ino("h"));
    }

    #[test]
    fn whiteouts_become_overlay_markers() {
        let tar = RawTar::new()
            .file(".wh.gone", b"")
            .file("d/.wh..wh..opq", b"")
            .file("d/keep", b"k")
            .file("e/.wh.sub", b"")
            .finish();
        let (tmp, result) = unpack(tar);
        result.unwrap();
        let dest = tmp.path().join("dest");
        for wh in ["gone", "e/sub"] {
            let m = fs::symlink_metadata(dest.join(wh)).unwrap();
            assert!(m.file_type().is_char_device(), "{wh}");
            assert_eq!(m.rdev(), 0);
        }
        assert_eq!(
            xattr::get(dest.join("d"), OPAQUE_XATTR).unwrap().as_deref(),
            Some(&b"y"[..])
        );
        assert!(!dest.join(".wh.gone").exists());
        assert!(!dest.join("d/.wh..wh..opq").exists());
    }

    #[test]
    fn pax_metadata_is_applied_and_overlay_xattrs_dropped() {
        let tar = RawTar::new()
            .pax(&[
                ("mtime", "1234.5"),
                ("SCHILY.xattr.user.kept", "v"),
                ("SCHILY.xattr.trusted.overlay.opaque", "y"),
                ("SCHILY.xattr.user.overlay.opaque", "y"),
                ("uid", "3000000"),
            ])
            .entry("dir", EntryType::Directory, None, b"")
            .file("dir/child", b"c")
            .finish();
        let (tmp, result) = unpack(tar);
        result.unwrap();
        let dir = tmp.path().join("dest/dir");
        let m = fs::metadata(&dir).unwrap();
        // The child was written after the dir, yet the dir keeps its own time.
        assert_eq!((m.mtime(), m.mtime_nsec()), (1234, 500_000_000));
        assert_eq!(m.uid(), 3_000_000);
        assert_eq!(
            xattr::get(&dir, "user.kept").unwrap().as_deref(),
            Some(&b"v"[..])
        );
        assert_eq!(xattr::get(&dir, OPAQUE_XATTR).unwrap(), None);
        assert_eq!(xattr::get(&dir, USER_OPAQUE_XATTR).unwrap(), None);
    }

    #[test]
    fn pax_times_parse() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
        assert_eq!(t("12"), Some((12, 0)));
        assert_eq!(t("12.25"), Some((12, 250_000_000)));
        assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(t("1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(t("x"), None);
    }

    #[test]
    fn open_blob_picks_decompression_by_media_type() {
        let tmp = tempfile::tempdir().unwrap();
        let tar = RawTar::new().file("f", b"data").finish();
        let plain = tmp.path().join("plain");
        fs::write(&plain, &tar).unwrap();
        let gz = tmp.path().join("gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&tar).unwrap();
        fs::write(&gz, enc.finish().unwrap()).unwrap();

        for (path, mt) in [
            (&plain, "application/vnd.oci.image.layer.v1.tar"),
            (&plain, "application/vnd.docker.image.rootfs.diff.tar"),
            (&gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
            (&gz, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
            (
                &gz,
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            ),
        ] {
            let mut out = Vec::new();
            open_blob(path, mt).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, tar, "{mt}");
        }
        let zst = tmp.path().join("layer.tar.zst");
        std::fs::write(&zst, zstd::encode_all(&tar[..], 3).unwrap()).unwrap();
        let mut out = Vec::new();
        open_blob(&zst, "application/vnd.oci.image.layer.v1.tar+zstd")
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, tar, "zstd");
        assert!(open_blob(&gz, "application/json").is_err());
    }
}
