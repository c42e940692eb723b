//! Turns a snapshot directory (overlayfs upperdir format) into a reproducible OCI layer tar.
//!
//! The upperdir encodes deletions as 0/0 character devices and opaque directories as
//! `trusted.overlay.opaque=y` (`user.overlay.opaque=y` when rootless kiln mounted it with `userxattr`,
//! inside a user namespace); OCI layers encode the same facts as `.wh.` files, so this
//! module translates one into the other while writing POSIX (ustar + PAX) headers by hand:
//! every header field is chosen here, so two runs over the same tree give the same bytes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use flate2::Compression;
use flate2::GzBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tar::{Builder, EntryType, Header};

use super::{OPAQUE_MARKER, OVERLAY_XATTR_PREFIXES, WHITEOUT_PREFIX, is_opaque};

/// Largest values the ustar octal fields hold; past them the value also goes into PAX.
const USTAR_MAX_ID: u64 = 0o7_777_777;
const USTAR_MAX_SIZE: u64 = 0o77_777_777_777;
const USTAR_NAME_LEN: usize = 100;
const USTAR_PREFIX_LEN: usize = 155;

/// Digests and size of one exported layer, as the manifest and config need them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: String,
    /// `sha256:<hex>` of the gzip blob (the manifest's layer descriptor).
    pub digest: String,
    /// Length of the gzip blob in bytes.
    pub size: u64,
    /// Length of the uncompressed tar in bytes.
    pub tar_size: u64,
}

/// Writes the snapshot at `snapshot` as an uncompressed OCI layer tar into `out`.
///
/// With `epoch` set, every mtime is clamped to at most `epoch` (SOURCE_DATE_EPOCH) and
/// whiteout entries carry `epoch`; without it whiteouts carry 0.
pub fn write_layer<W: Write>(snapshot: &Path, out: W, epoch: Option<i64>) -> io::Result<W> {
    let meta = fs::symlink_metadata(snapshot)
        .map_err(|e| annotate(e, "cannot read snapshot", snapshot))?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("snapshot {} is not a directory", snapshot.display()),
        ));
    }
    let mut walker = Walker {
        builder: Builder::new(out),
        epoch,
        links: HashMap::new(),
    };
    walker.walk_dir(snapshot, &[])?;
    walker.builder.into_inner()
}

/// How layer blobs are compressed (`--compression`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Codec {
    #[default]
    Gzip,
    Zstd,
}

impl Codec {
    pub fn media_type(self) -> &'static str {
        match self {
            Codec::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Codec::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// Streams the layer once (tar → SHA-256 of the tar → compressor → SHA-256 of the blob → `out`), returning
/// its diff_id plus the digest and size of the compressed blob written to `out`.
pub fn layer_digests(
    snapshot: &Path,
    epoch: Option<i64>,
    codec: Codec,
    out: impl Write,
) -> io::Result<LayerInfo> {
    layer_digests_threaded(snapshot, epoch, codec, 1, out)
}

/// `layer_digests`, compressing on up to `threads` cores where the format allows it without changing the
/// bytes. zstd always runs in its multithreaded mode (with at least one worker): its frames are then the
/// same for any number of workers, though not the same as its single-threaded mode's, and a blob must not
/// depend on the machine that made it. gzip runs on one core: a parallel gzip (pigz's blocks) would give
/// other bytes than kiln always has, so other layer digests, and image digests users may have pinned.
pub fn layer_digests_threaded(
    snapshot: &Path,
    epoch: Option<i64>,
    codec: Codec,
    threads: usize,
    out: impl Write,
) -> io::Result<LayerInfo> {
    let compressed = HashingWriter::new(out);
    let (diff_id, tar_size, mut compressed) = match codec {
        Codec::Gzip => {
            // A fixed mtime and no file name keep the gzip header identical across runs.
            let gz = GzBuilder::new()
                .mtime(0)
                .write(compressed, Compression::new(6));
            let uncompressed = write_layer(snapshot, HashingWriter::new(gz), epoch)?;
            let (diff_id, tar_size, gz) = uncompressed.finish();
            (diff_id, tar_size, gz.finish()?)
        }
        Codec::Zstd => {
            let mut zst = zstd::stream::write::Encoder::new(compressed, 3)?;
            zst.multithread(u32::try_from(threads.max(1)).unwrap_or(u32::MAX))?;
            let uncompressed = write_layer(snapshot, HashingWriter::new(zst), epoch)?;
            let (diff_id, tar_size, zst) = uncompressed.finish();
            (diff_id, tar_size, zst.finish()?)
        }
    };
    compressed.inner.flush()?;
    let (digest, size, _) = compressed.finish();
    Ok(LayerInfo {
        diff_id,
        digest,
        size,
        tar_size,
    })
}

/// `jobs`, with 0 meaning one per core.
pub fn cores(jobs: usize) -> usize {
    match jobs {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

/// `f` over every item, on up to `jobs` threads at once (0: one per core), results in the items' order.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let jobs = cores(jobs).min(items.len());
    if jobs <= 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<R>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every item was mapped")
        })
        .collect()
}

/// Passes bytes through while hashing and counting them.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (String, u64, W) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (digest, self.count, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Walker<W: Write> {
    builder: Builder<W>,
    epoch: Option<i64>,
    /// (dev, ino) of multiply-linked files already written, to the archive name used.
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<W: Write> Walker<W> {
    fn walk_dir(&mut self, dir: &Path, prefix: &[u8]) -> io::Result<()> {
        let mut names: Vec<OsString> = fs::read_dir(dir)
            .map_err(|e| annotate(e, "cannot list", dir))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(|e| annotate(e, "cannot list", dir))?;
        // Byte order, not locale order: the archive must not depend on the host.
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = dir.join(&name);
            let mut rel = prefix.to_vec();
            rel.extend_from_slice(name.as_bytes());
            self.entry(&path, &rel, name.as_bytes())?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, rel: &[u8], name: &[u8]) -> io::Result<()> {
        let meta = fs::symlink_metadata(path).map_err(|e| annotate(e, "cannot stat", path))?;
        let ft = meta.file_type();

        if name.starts_with(WHITEOUT_PREFIX) {
            // A reader would take it for a deletion marker; OCI has no way to escape it.
            return Err(annotate(
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "names starting with `.wh.` are reserved for whiteouts in OCI layers",
                ),
                "cannot export",
                path,
            ));
        }

        if ft.is_char_device() && meta.rdev() == 0 {
            let mut wh = parent_of(rel).to_vec();
            wh.extend_from_slice(WHITEOUT_PREFIX);
            wh.extend_from_slice(name);
            return self.marker(&wh);
        }

        if ft.is_dir() {
            let mut dir_name = rel.to_vec();
            dir_name.push(b'/');
            let mut header = self.base_header(&meta, EntryType::Directory);
            let pax = self.xattr_records(path)?;
            self.append(&mut header, &dir_name, None, pax, 0, io::empty())?;
            if is_opaque(path).map_err(|e| annotate(e, "cannot read xattrs of", path))? {
                let mut marker = dir_name.clone();
                marker.extend_from_slice(OPAQUE_MARKER);
                self.marker(&marker)?;
            }
            return self.walk_dir(path, &dir_name);
        }

        // Overlay may share one inode among whiteouts, so only real content is linked.
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                let mut header = self.base_header(&meta, EntryType::Link);
                return self.append(&mut header, rel, Some(&first), Vec::new(), 0, io::empty());
            }
            self.links.insert(key, rel.to_vec());
        }

        let pax = self.xattr_records(path)?;
        if ft.is_file() {
            let mut header = self.base_header(&meta, EntryType::Regular);
            let size = meta.len();
            let file = File::open(path).map_err(|e| annotate(e, "cannot open", path))?;
            let mut reader = ExactReader {
                inner: file.take(size),
                remaining: size,
                path,
            };
            self.append(&mut header, rel, None, pax, size, &mut reader)
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(|e| annotate(e, "cannot read link", path))?;
            let mut header = self.base_header(&meta, EntryType::Symlink);
            let target = target.as_os_str().as_bytes();
            self.append(&mut header, rel, Some(target), pax, 0, io::empty())
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            };
            let mut header = self.base_header(&meta, kind);
            let dev = meta.rdev();
            let too_big = |_| annotate(io::Error::other("device number too large"), "", path);
            let major = u32::try_from(nix::sys::stat::major(dev)).map_err(too_big)?;
            let minor = u32::try_from(nix::sys::stat::minor(dev)).map_err(too_big)?;
            header.set_device_major(major)?;
            header.set_device_minor(minor)?;
            self.append(&mut header, rel, None, pax, 0, io::empty())
        } else if ft.is_fifo() {
            let mut header = self.base_header(&meta, EntryType::Fifo);
            self.append(&mut header, rel, None, pax, 0, io::empty())
        } else {
            // Sockets have no tar representation and never survive a restart anyway.
            Ok(())
        }
    }

    /// Header fields shared by every entry kind; name, size and checksum come later.
    fn base_header(&self, meta: &Metadata, kind: EntryType) -> Header {
        let mut header = Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(u64::from(meta.uid()));
        header.set_gid(u64::from(meta.gid()));
        header.set_mtime(self.clamp(meta.mtime()));
        header
    }

    fn clamp(&self, mtime: i64) -> u64 {
        let t = match self.epoch {
            Some(epoch) => mtime.min(epoch),
            None => mtime,
        };
        // Pre-1970 times are rare and ustar can't hold them; 0 is the honest floor.
        u64::try_from(t).unwrap_or(0)
    }

    /// An empty root-owned file standing for a whiteout or an opaque-directory marker.
    fn marker(&mut self, name: &[u8]) -> io::Result<()> {
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        let mtime = self.epoch.map_or(0, |e| u64::try_from(e).unwrap_or(0));
        header.set_mtime(mtime);
        self.append(&mut header, name, None, Vec::new(), 0, io::empty())
    }

    fn xattr_records(&self, path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut names: Vec<OsString> = match xattr::list(path) {
            Ok(list) => list.collect(),
            // Filesystems without xattr support simply have none to export.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(annotate(e, "cannot list xattrs of", path)),
        };
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut records = Vec::new();
        for name in names {
            if OVERLAY_XATTR_PREFIXES
                .iter()
                .any(|p| name.as_bytes().starts_with(p))
            {
                continue;
            }
            // A racing removal leaves None; skipping it is the same as not having listed it.
            if let Some(value) =
                xattr::get(path, &name).map_err(|e| annotate(e, "cannot read xattrs of", path))?
            {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(name.as_bytes());
                records.push((key, value));
            }
        }
        Ok(records)
    }

    /// Fills name/link/size (moving whatever ustar can't hold into PAX records) and appends.
    fn append(
        &mut self,
        header: &mut Header,
        name: &[u8],
        link: Option<&[u8]>,
        mut pax: Vec<(Vec<u8>, Vec<u8>)>,
        size: u64,
        data: impl Read,
    ) -> io::Result<()> {
        let mut leading = Vec::new();
        let ustar = header
            .as_ustar_mut()
            .ok_or_else(|| io::Error::other("ustar header expected"))?;
        match split_ustar_name(name) {
            Some((prefix, base)) => {
                ustar.prefix[..prefix.len()].copy_from_slice(prefix);
                ustar.name[..base.len()].copy_from_slice(base);
            }
            None => {
                let cut = name.len().min(USTAR_NAME_LEN);
                ustar.name[..cut].copy_from_slice(&name[..cut]);
                leading.push((b"path".to_vec(), name.to_vec()));
            }
        }
        if let Some(link) = link {
            let cut = link.len().min(ustar.linkname.len());
            ustar.linkname[..cut].copy_from_slice(&link[..cut]);
            if link.len() > cut {
                leading.push((b"linkpath".to_vec(), link.to_vec()));
            }
        }
        header.set_size(size);
        if size > USTAR_MAX_SIZE {
            leading.push((b"size".to_vec(), size.to_string().into_bytes()));
        }
        for (key, value) in [(&b"uid"[..], header.uid()?), (&b"gid"[..], header.gid()?)] {
            if value > USTAR_MAX_ID {
                leading.push((key.to_vec(), value.to_string().into_bytes()));
            }
        }
        leading.append(&mut pax);
        if !leading.is_empty() {
            self.append_pax(name, &leading)?;
        }
        header.set_cksum();
        self.builder.append(header, data)
    }

    fn append_pax(&mut self, name: &[u8], records: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        let mut body = Vec::new();
        for (key, value) in records {
            // The length prefix counts its own digits, so grow it until it fits itself.
            let rest = key.len() + value.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len = len.to_string().len() + rest;
            }
            body.extend_from_slice(len.to_string().as_bytes());
            body.push(b' ');
            body.extend_from_slice(key);
            body.push(b'=');
            body.extend_from_slice(value);
            body.push(b'\n');
        }
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(body.len() as u64);
        let base = name
            .strip_suffix(b"/")
            .unwrap_or(name)
            .rsplit(|&b| b == b'/')
            .next()
            .unwrap_or_default();
        let mut pax_name = b"PaxHeaders/".to_vec();
        pax_name.extend_from_slice(base);
        pax_name.truncate(USTAR_NAME_LEN);
        let ustar = header
            .as_ustar_mut()
            .ok_or_else(|| io::Error::other("ustar header expected"))?;
        ustar.name[..pax_name.len()].copy_from_slice(&pax_name);
        header.set_cksum();
        self.builder.append(&header, body.as_slice())
    }
}

/// Splits a name into ustar (prefix, name) fields, or None when only PAX can hold it.
fn split_ustar_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= USTAR_NAME_LEN {
        return Some((&[], name));
    }
    // The trailing slash of a directory must stay in the name half, so don't split there.
    let searchable = &name[..name.len() - 1];
    searchable
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == b'/')
        .map(|(i, _)| (&name[..i], &name[i + 1..]))
        .find(|(prefix, base)| {
            prefix.len() <= USTAR_PREFIX_LEN && base.len() <= USTAR_NAME_LEN && !base.is_empty()
        })
}

fn parent_of(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => &rel[..=i],
        None => &[],
    }
}

/// Refuses to let a file that changed size mid-export produce a tar whose header lies.
struct ExactReader<'a, R> {
    inner: R,
    remaining: u64,
    path: &'a Path,
}

impl<R: Read> Read for ExactReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(annotate(
                io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while exporting"),
                "",
                self.path,
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn annotate(e: io::Error, what: &str, path: &Path) -> io::Error {
    let msg = if what.is_empty() {
        format!("{}: {e}", path.display())
    } else {
        format!("{what} {}: {e}", path.display())
    };
    io::Error::new(e.kind(), msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::userns::layer_ids;
    use crate::layer::{OPAQUE_XATTR, USER_OPAQUE_XATTR, unpack_layer};
    use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
    use nix::sys::time::TimeSpec;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::PathBuf;

    const T: i64 = 1_700_000_000;
    const LONG_DIR: &str =
        "a-directory-name-long-enough-to-need-the-ustar-prefix-field-or-pax-records";

    fn set_time(path: &Path, secs: i64) {
        let ts = TimeSpec::new(secs, 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            path,
            &ts,
            &ts,
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    fn write(path: &Path, content: &[u8], mode: u32) {
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A snapshot exercising every kind of entry an upperdir can hold.
    fn make_snapshot(root: &Path) {
        for d in ["bin", "etc", "tmp", "empty", "a", "opaque", LONG_DIR] {
            fs::create_dir(root.join(d)).unwrap();
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o700)).unwrap();
        write(&root.join("bin/tool"), b"#!/bin/sh\necho hi\n", 0o4755);
        write(&root.join("bin/group"), b"g", 0o2711);
        write(&root.join("etc/secret"), b"s3cret", 0o600);
        std::os::unix::fs::lchown(root.join("etc/secret"), Some(1234), Some(5678)).unwrap();
        xattr::set(root.join("etc/secret"), "user.note", b"hello").unwrap();
        xattr::set(root.join("etc/secret"), "trusted.overlay.origin", b"junk").unwrap();
        symlink("bin/tool", root.join("link")).unwrap();
        let long_target = format!("../{}", "t".repeat(150));
        symlink(&long_target, root.join("longlink")).unwrap();
        write(&root.join("a/hard1"), b"shared", 0o644);
        fs::hard_link(root.join("a/hard1"), root.join("a/hard2")).unwrap();
        mknod(&root.join("gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        mknod(&root.join("a/gone2"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        mknod(
            &root.join("null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(1, 3),
        )
        .unwrap();
        mknod(
            &root.join("pipe"),
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(0o640),
            0,
        )
        .unwrap();
        xattr::set(root.join("opaque"), "trusted.overlay.opaque", b"y").unwrap();
        write(&root.join("opaque/keep"), b"kept", 0o644);
        write(&root.join(LONG_DIR).join(LONG_DIR), b"deep", 0o644);
        // Children first, so creating them doesn't disturb their parents' times.
        let mut all = Vec::new();
        collect(root, &mut all);
        all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for (i, p) in all.iter().enumerate() {
            set_time(p, T + i as i64);
        }
    }

    fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.clone());
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                collect(&p, out);
            }
        }
    }

    #[derive(Debug, PartialEq, Clone)]
    struct Node {
        kind: String,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: i64,
        rdev: u64,
        content: Vec<u8>,
        xattrs: BTreeMap<String, Vec<u8>>,
    }

    /// Everything a snapshot means, keyed by relative path (atime/ctime/inode numbers aside).
    fn describe(root: &Path) -> BTreeMap<String, Node> {
        let mut all = Vec::new();
        collect(root, &mut all);
        all.into_iter()
            .map(|p| {
                let m = fs::symlink_metadata(&p).unwrap();
                let ft = m.file_type();
                let (kind, content) = if ft.is_dir() {
                    ("dir", Vec::new())
                } else if ft.is_symlink() {
                    let t = fs::read_link(&p).unwrap();
                    ("symlink", t.as_os_str().as_bytes().to_vec())
                } else if ft.is_file() {
                    ("file", fs::read(&p).unwrap())
                } else if ft.is_char_device() {
                    ("char", Vec::new())
                } else if ft.is_fifo() {
                    ("fifo", Vec::new())
                } else {
                    ("other", Vec::new())
                };
                let xattrs = xattr::list(&p)
                    .unwrap()
                    .filter(|n| {
                        let n = n.to_string_lossy();
                        !n.starts_with("trusted.overlay.") || n == OPAQUE_XATTR
                    })
                    .map(|n| {
                        let v = xattr::get(&p, &n).unwrap().unwrap();
                        (n.to_string_lossy().into_owned(), v)
                    })
                    .collect();
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                let node = Node {
                    kind: kind.into(),
                    mode: if ft.is_symlink() {
                        0
                    } else {
                        m.mode() & 0o7777
                    },
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: m.mtime(),
                    rdev: m.rdev(),
                    content,
                    xattrs,
                };
                (rel, node)
            })
            .collect()
    }

    struct TarEntry {
        kind: EntryType,
        mode: u32,
        uid: u64,
        mtime: u64,
        link: Option<Vec<u8>>,
        xattrs: Vec<(String, Vec<u8>)>,
    }

    fn list_tar(bytes: &[u8]) -> Vec<(String, TarEntry)> {
        let mut archive = tar::Archive::new(bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
                let h = e.header();
                let mut entry = TarEntry {
                    kind: h.entry_type(),
                    mode: h.mode().unwrap(),
                    uid: h.uid().unwrap(),
                    mtime: h.mtime().unwrap(),
                    link: e.link_name_bytes().map(|l| l.into_owned()),
                    xattrs: Vec::new(),
                };
                if let Some(pax) = e.pax_extensions().unwrap() {
                    for r in pax {
                        let r = r.unwrap();
                        if let Some(n) = r.key().unwrap().strip_prefix("SCHILY.xattr.") {
                            entry.xattrs.push((n.to_string(), r.value_bytes().to_vec()));
                        }
                    }
                }
                (name, entry)
            })
            .collect()
    }

    #[test]
    fn round_trip_through_tar_and_back() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp.path().join("snap");
        fs::create_dir(&snap).unwrap();
        make_snapshot(&snap);

        let bytes = write_layer(&snap, Vec::new(), None).unwrap();
        let entries = list_tar(&bytes);
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        let long_file = format!("{LONG_DIR}/{LONG_DIR}");
        let long_dir = format!("{LONG_DIR}/");
        assert_eq!(
            names,
            [
                "a/",
                "a/.wh.gone2",
                "a/hard1",
                "a/hard2",
                &long_dir,
                &long_file,
                "bin/",
                "bin/group",
                "bin/tool",
                "empty/",
                "etc/",
                "etc/secret",
                ".wh.gone",
                "link",
                "longlink",
                "null",
                "opaque/",
                "opaque/.wh..wh..opq",
                "opaque/keep",
                "pipe",
                "tmp/",
            ]
        );
        let get = |n: &str| &entries.iter().find(|(name, _)| name == n).unwrap().1;
        assert_eq!(get("bin/tool").mode, 0o4755);
        assert_eq!(get("bin/group").mode, 0o2711);
        assert_eq!(get("tmp/").mode, 0o1777);
        assert_eq!(get("tmp/").kind, EntryType::Directory);
        assert_eq!(get("empty/").mode, 0o700);
        assert_eq!(get("etc/secret").mode, 0o600);
        assert_eq!(get("etc/secret").uid, 1234);
        assert_eq!(
            get("etc/secret").xattrs,
            [("user.note".to_string(), b"hello".to_vec())]
        );
        assert_eq!(get("link").kind, EntryType::Symlink);
        assert_eq!(get("link").link.as_deref(), Some(&b"bin/tool"[..]));
        let long_target = format!("../{}", "t".repeat(150));
        assert_eq!(
            get("longlink").link.as_deref(),
            Some(long_target.as_bytes())
        );
        assert_eq!(get("a/hard1").kind, EntryType::Regular);
        assert_eq!(get("a/hard2").kind, EntryType::Link);
        assert_eq!(get("a/hard2").link.as_deref(), Some(&b"a/hard1"[..]));
        assert_eq!(get("null").kind, EntryType::Char);
        assert_eq!(get("pipe").kind, EntryType::Fifo);
        for marker in [".wh.gone", "a/.wh.gone2", "opaque/.wh..wh..opq"] {
            assert_eq!(get(marker).kind, EntryType::Regular);
            assert_eq!(get(marker).mtime, 0);
        }
        assert!(get("bin/tool").mtime >= T as u64);
        // Overlay bookkeeping must never reach an image.
        assert!(!bytes.windows(15).any(|w| w == b"trusted.overlay"));

        if Path::new("/usr/bin/tar").exists() {
            let file = tmp.path().join("layer.tar");
            fs::write(&file, &bytes).unwrap();
            let out = std::process::Command::new("/usr/bin/tar")
                .arg("-tvf")
                .arg(&file)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let listing = String::from_utf8_lossy(&out.stdout);
            for n in [".wh.gone", "opaque/.wh..wh..opq", "a/hard2 link to a/hard1"] {
                assert!(listing.contains(n), "GNU tar listing lacks {n}:\n{listing}");
            }
            assert!(listing.contains(&long_file), "{listing}");
        } else {
            crate::progress::test_note("note: /usr/bin/tar absent, GNU tar check skipped");
        }

        let back = tmp.path().join("back");
        fs::create_dir(&back).unwrap();
        unpack_layer(bytes.as_slice(), &back, layer_ids()).unwrap();
        let (want, got) = (describe(&snap), describe(&back));
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>()
        );
        for (k, v) in &want {
            let mut got = got.get(k).cloned().expect("entry lost in round trip");
            if v.kind == "char" && v.rdev == 0 {
                // Whiteouts carry no time of their own through a layer.
                got.mtime = v.mtime;
            }
            assert_eq!(v, &got, "{k} differs after round trip");
        }
        assert_eq!(got["gone"].kind, "char");
        assert_eq!(got["gone"].rdev, 0);
        assert_eq!(got["opaque"].xattrs[OPAQUE_XATTR], b"y");
        let ino = |p: &str| fs::symlink_metadata(back.join(p)).unwrap().ino();
        assert_eq!(ino("a/hard1"), ino("a/hard2"));

        // Exporting the unpacked copy must give the very same bytes.
        assert_eq!(write_layer(&back, Vec::new(), None).unwrap(), bytes);
    }

    /// A zstd blob must not depend on the machine: the same snapshot gives the same bytes whatever the
    /// number of workers, across several of zstd's jobs.
    #[test]
    fn zstd_blobs_do_not_depend_on_the_number_of_threads() {
        let tmp = tempfile::tempdir().unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        // Compressible but not trivially so: words drawn at random, 12 MiB, past one zstd job.
        let words: Vec<&[u8]> = vec![b"layer ", b"blob ", b"tar ", b"kiln ", b"\n", b"digest "];
        for f in 0..3 {
            let mut data = Vec::new();
            while data.len() < 4 << 20 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                data.extend_from_slice(words[(seed % words.len() as u64) as usize]);
                data.push(seed as u8);
            }
            write(&tmp.path().join(format!("f{f}")), &data, 0o644);
        }
        let blob = |threads| {
            let mut out = Vec::new();
            let info =
                layer_digests_threaded(tmp.path(), None, Codec::Zstd, threads, &mut out).unwrap();
            (info, out)
        };
        let (one, bytes) = blob(1);
        for threads in [0, 2, 3] {
            assert_eq!(blob(threads).0, one, "{threads} threads");
        }
        let mut plain = Vec::new();
        zstd::stream::copy_decode(bytes.as_slice(), &mut plain).unwrap();
        assert_eq!(
            one.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&plain)))
        );
        assert!(bytes.len() < plain.len() / 2, "{} bytes", bytes.len());
    }

    #[test]
    fn digests_are_reproducible_and_epoch_clamps() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp.path().join("snap");
        fs::create_dir(&snap).unwrap();
        make_snapshot(&snap);
        let old = snap.join("old");
        write(&old, b"old", 0o644);
        set_time(&old, 100);

        let mut gz1 = Vec::new();
        let info1 = layer_digests(&snap, None, Codec::Gzip, &mut gz1).unwrap();
        let mut gz2 = Vec::new();
        let info2 = layer_digests(&snap, None, Codec::Gzip, &mut gz2).unwrap();
        assert_eq!(info1, info2);
        assert_eq!(gz1, gz2);
        assert_eq!(info1.size, gz1.len() as u64);
        assert_eq!(
            info1.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(&gz1)))
        );
        // gzip header: MTIME bytes zero, no FNAME flag.
        assert_eq!(&gz1[4..8], &[0, 0, 0, 0]);
        assert_eq!(gz1[3] & 0x08, 0);

        let plain = write_layer(&snap, Vec::new(), None).unwrap();
        assert_eq!(
            info1.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&plain)))
        );
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(gz1.as_slice())
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, plain);

        let epoch = 1000;
        let clamped = write_layer(&snap, Vec::new(), Some(epoch)).unwrap();
        for (name, e) in list_tar(&clamped) {
            match name.as_str() {
                "old" => assert_eq!(e.mtime, 100),
                ".wh.gone" | "opaque/.wh..wh..opq" => assert_eq!(e.mtime, epoch as u64),
                _ => assert!(e.mtime <= epoch as u64, "{name} not clamped"),
            }
        }
        let info3 = layer_digests(&snap, Some(epoch), Codec::Gzip, io::sink()).unwrap();
        assert_ne!(info3.diff_id, info1.diff_id);
        // Touching files after the epoch no longer changes the layer.
        set_time(&snap.join("bin/tool"), T + 5000);
        assert_eq!(
            layer_digests(&snap, Some(epoch), Codec::Gzip, io::sink()).unwrap(),
            info3
        );
    }

    /// Rootless kiln mounts overlayfs with `userxattr`: opaque dirs come as `user.overlay.opaque`, and
    /// the rest of overlay's `user.overlay.*` bookkeeping stays on this host too.
    #[test]
    fn userxattr_opaque_dirs_export_like_trusted_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir(root.join("uop")).unwrap();
        write(&root.join("uop/keep"), b"k", 0o644);
        xattr::set(root.join("uop"), USER_OPAQUE_XATTR, b"y").unwrap();
        xattr::set(root.join("uop"), "user.overlay.impure", b"y").unwrap();
        xattr::set(root.join("uop/keep"), "user.note", b"kept").unwrap();
        let bytes = write_layer(root, Vec::new(), None).unwrap();
        let entries = list_tar(&bytes);
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["uop/", "uop/.wh..wh..opq", "uop/keep"]);
        assert!(entries[0].1.xattrs.is_empty(), "{:?}", entries[0].1.xattrs);
        assert_eq!(
            entries[2].1.xattrs,
            [("user.note".into(), b"kept".to_vec())]
        );
        assert!(!bytes.windows(12).any(|w| w == b"user.overlay"));
    }

    #[test]
    fn reserved_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        write(&tmp.path().join(".wh.sneaky"), b"", 0o644);
        let err = write_layer(tmp.path(), Vec::new(), None).unwrap_err();
        assert!(err.to_string().contains(".wh.sneaky"), "{err}");
    }

    fn run(cmd: &str, args: &[&str]) -> bool {
        std::process::Command::new(cmd)
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Unmounts on drop so a failing assertion doesn't leave a mount behind.
    struct Mount(PathBuf);

    impl Drop for Mount {
        fn drop(&mut self) {
            run("umount", &[self.0.to_str().unwrap()]);
        }
    }

    fn overlay(lower: &str, upper: Option<(&Path, &Path)>, at: &Path) -> Option<Mount> {
        let mut opts = format!("lowerdir={lower}");
        if let Some((upper, work)) = upper {
            opts += &format!(",upperdir={},workdir={}", upper.display(), work.display());
        }
        let ok = run(
            "mount",
            &[
                "-t",
                "overlay",
                "overlay",
                "-o",
                &opts,
                at.to_str().unwrap(),
            ],
        );
        ok.then(|| Mount(at.to_path_buf()))
    }

    /// The real kernel writes the upperdir: its whiteouts (often hardlinks of one shared
    /// inode) and opaque dirs must export right, and the unpacked layer must hide the same
    /// files when stacked as a lower layer.
    #[test]
    fn real_overlay_upperdir_exports_and_restacks() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| {
            let d = tmp.path().join(n);
            fs::create_dir_all(&d).unwrap();
            d
        };
        let (lower, upper, work, merged) = (p("lower"), p("upper"), p("work"), p("merged"));
        write(&lower.join("a"), b"a", 0o644);
        write(&lower.join("b"), b"b", 0o644);
        fs::create_dir(lower.join("d")).unwrap();
        write(&lower.join("d/old"), b"old", 0o644);
        let Some(mount) = overlay(lower.to_str().unwrap(), Some((&upper, &work)), &merged) else {
            crate::progress::test_note(
                "note: cannot mount overlayfs here; skipping the kernel check",
            );
            return;
        };
        fs::remove_file(merged.join("a")).unwrap();
        fs::remove_file(merged.join("b")).unwrap();
        fs::remove_dir_all(merged.join("d")).unwrap();
        fs::create_dir(merged.join("d")).unwrap();
        write(&merged.join("d/new"), b"new", 0o644);
        write(&merged.join("c"), b"c", 0o644);
        drop(mount);

        let bytes = write_layer(&upper, Vec::new(), None).unwrap();
        let names: Vec<String> = list_tar(&bytes).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [".wh.a", ".wh.b", "c", "d/", "d/.wh..wh..opq", "d/new"]
        );
        assert!(!bytes.windows(15).any(|w| w == b"trusted.overlay"));

        let unpacked = p("unpacked");
        unpack_layer(bytes.as_slice(), &unpacked, layer_ids()).unwrap();
        let view = p("view");
        let lowers = format!("{}:{}", unpacked.display(), lower.display());
        let _mount = overlay(&lowers, None, &view).expect("stacking the unpacked layer");
        let mut seen: Vec<String> = Vec::new();
        let mut all = Vec::new();
        collect(&view, &mut all);
        for path in all {
            seen.push(path.strip_prefix(&view).unwrap().display().to_string());
        }
        seen.sort();
        assert_eq!(seen, ["c", "d", "d/new"]);
    }

    #[test]
    fn long_names_and_pax_records() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp.path().join("snap");
        fs::create_dir(&snap).unwrap();
        let snap = snap.as_path();
        // Over 255 bytes in all and a 120-byte last component: only PAX can hold it.
        let deep = format!("{LONG_DIR}/{LONG_DIR}/{LONG_DIR}");
        fs::create_dir_all(snap.join(&deep)).unwrap();
        let long_name = format!("{deep}/{}", "n".repeat(120));
        write(&snap.join(&long_name), b"far", 0o644);
        // Values sized so the record length crosses a power of ten.
        for len in [80usize, 86, 87, 88, 995, 996, 997] {
            let name = format!("f{len}");
            write(&snap.join(&name), b"", 0o644);
            xattr::set(snap.join(&name), "user.x", &vec![b'v'; len]).unwrap();
        }
        let bytes = write_layer(snap, Vec::new(), None).unwrap();
        let entries = list_tar(&bytes);
        assert!(entries.iter().any(|(n, _)| *n == long_name));
        assert!(entries.iter().any(|(n, _)| *n == format!("{deep}/")));
        for (name, e) in &entries {
            if name.starts_with('f') {
                assert_eq!(e.xattrs.len(), 1, "{name}");
            }
        }
        if Path::new("/usr/bin/tar").exists() {
            let file = tmp.path().join("layer.tar");
            fs::write(&file, &bytes).unwrap();
            fs::create_dir(tmp.path().join("out")).unwrap();
            let out = std::process::Command::new("/usr/bin/tar")
                .args(["--xattrs", "--xattrs-include=*", "-xf"])
                .arg(&file)
                .arg("-C")
                .arg(tmp.path().join("out"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let extracted = tmp.path().join("out").join(&long_name);
            assert_eq!(fs::read(extracted).unwrap(), b"far");
            let v = xattr::get(tmp.path().join("out/f997"), "user.x").unwrap();
            assert_eq!(v.map(|v| v.len()), Some(997));
        } else {
            crate::progress::test_note("note: /usr/bin/tar absent, GNU tar check skipped");
        }
    }
}
