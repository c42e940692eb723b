//! Turns a snapshot directory (overlayfs upperdir format) into a reproducible OCI layer tar.
//!
//! The upperdir encodes deletions as 0/0 character devices and opaque directories as
//! `trusted.overlay.opaque=y` (`user.overlay.opaque=y` when rootless kiln mounted it with `userxattr`,
//! inside a user namespace); OCI layers encode the same facts as `.wh.` files, so this
//! module translates one into the other while writing POSIX (ustar + PAX) headers by hand:
//! every header field is chosen here, so two runs over the same tree give the same bytes.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use flate2::Compression;
use flate2::GzBuilder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tar::{Builder, EntryType, Header};

mod fetch;
mod index;

pub use index::TarIndex;

use super::{OPAQUE_MARKER, WHITEOUT_PREFIX};

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
    check_snapshot(snapshot)?;
    let mut walker = Walker {
        builder: Builder::new(Plain(out)),
        epoch,
        links: HashMap::new(),
        part: None,
        index: None,
    };
    walker.walk(snapshot)?;
    Ok(walker.builder.into_inner()?.0)
}

/// Refuses a snapshot that is not a directory.
fn check_snapshot(snapshot: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(snapshot)
        .map_err(|e| annotate(e, "cannot read snapshot", snapshot))?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("snapshot {} is not a directory", snapshot.display()),
        ));
    }
    Ok(())
}

/// The uncompressed layer tar of `snapshot`, as `write_layer` writes it, hashed but not written: its
/// `LayerInfo` and its index. With the index of an earlier tar whose snapshot still exists, the entries
/// both begin with are neither read nor hashed again (`index`).
pub fn layer_digest_indexed(
    snapshot: &Path,
    epoch: Option<i64>,
    earlier: Option<&TarIndex>,
) -> io::Result<(LayerInfo, TarIndex)> {
    check_snapshot(snapshot)?;
    let mut walker = Walker {
        builder: Builder::new(index::Hashing::default()),
        epoch,
        links: HashMap::new(),
        part: None,
        index: Some(index::Indexer::new(earlier)),
    };
    walker.walk(snapshot)?;
    let indexer = walker.index.take().expect("an indexed walk");
    let made = indexer.finish(&mut walker.builder.get_mut().0);
    let hashed = walker.builder.into_inner()?.0;
    let tar_size = hashed.hashed();
    let diff_id = hashed.finish().to_string();
    let info = LayerInfo {
        digest: diff_id.clone(),
        diff_id,
        size: tar_size,
        tar_size,
    };
    Ok((info, made))
}

/// Which entries of a tree one part of it holds, when a tree is split into several tars (a cache
/// mount's contents, exported in groups so that a changed file changes only its group's blob).
#[derive(Clone, Copy)]
pub struct Part<'a> {
    /// The part that holds the directories (and nothing else): their metadata changes whenever a child
    /// is added, so they travel apart from the files' groups.
    pub dirs: bool,
    /// Whether a non-directory (its path relative to the root, and its metadata) is in this part.
    pub takes: &'a (dyn Fn(&[u8], &Metadata) -> bool + Sync),
}

/// `write_layer` for one part of `tree` (no whiteouts are expected in a plain directory). Hard links are
/// written as files, since the first name of a linked file may be in another part.
pub fn write_part<W: Write>(tree: &Path, out: W, part: Part<'_>) -> io::Result<W> {
    let mut walker = Walker {
        builder: Builder::new(Plain(out)),
        epoch: None,
        links: HashMap::new(),
        part: Some(part),
        index: None,
    };
    walker.walk(tree)?;
    Ok(walker.builder.into_inner()?.0)
}

/// `layer_digests` of one part of `tree`, gzip-compressed as an image layer is.
pub fn part_digests(tree: &Path, part: Part<'_>, out: impl Write + Send) -> io::Result<LayerInfo> {
    let tar = |w: &mut dyn Write| write_part(tree, w, part).map(drop);
    compress(tar, (Codec::Gzip, None), 1, out)
}

/// How layer blobs are compressed (`--compression`, `compression=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Codec {
    #[default]
    Gzip,
    Zstd,
    /// The tar itself: its digest is its diff id.
    Uncompressed,
}

impl Codec {
    pub fn media_type(self) -> &'static str {
        match self {
            Codec::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Codec::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Codec::Uncompressed => "application/vnd.oci.image.layer.v1.tar",
        }
    }
}

/// Streams the layer once (tar → SHA-256 of the tar → compressor → SHA-256 of the blob → `out`), returning
/// its diff_id plus the digest and size of the compressed blob written to `out`.
pub fn layer_digests(
    snapshot: &Path,
    epoch: Option<i64>,
    codec: Codec,
    out: impl Write + Send,
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
    out: impl Write + Send,
) -> io::Result<LayerInfo> {
    layer_digests_leveled(snapshot, epoch, (codec, None), threads, out)
}

/// `layer_digests_threaded` at a compression level of the caller's (`None`: gzip 6, zstd 3).
pub fn layer_digests_leveled(
    snapshot: &Path,
    epoch: Option<i64>,
    codec: (Codec, Option<i32>),
    threads: usize,
    out: impl Write + Send,
) -> io::Result<LayerInfo> {
    let tar = |w: &mut dyn Write| write_layer(snapshot, w, epoch).map(drop);
    compress(tar, codec, threads, out)
}

/// The blob of a layer tar read from `tar` (one kiln wrote uncompressed earlier): the same bytes
/// `layer_digests_leveled` gives for the tree that tar holds, as neither compressor's output depends on
/// how its input is split into writes (a test holds kiln to that).
pub fn compress_tar(
    tar: &mut dyn Read,
    codec: (Codec, Option<i32>),
    threads: usize,
    out: impl Write + Send,
) -> io::Result<LayerInfo> {
    compress(|w| io::copy(tar, w).map(drop), codec, threads, out)
}

/// What `tar` writes, through SHA-256 (the diff id), the compressor and SHA-256 again (the blob's digest)
/// into `out`.
fn compress(
    tar: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    (codec, level): (Codec, Option<i32>),
    threads: usize,
    out: impl Write + Send,
) -> io::Result<LayerInfo> {
    let gzip_level = || Compression::new(level.map_or(6, |l| l.clamp(0, 9).unsigned_abs()));
    let compressed = HashingWriter::new(out);
    let (diff_id, tar_size, mut compressed) = match codec {
        Codec::Uncompressed => {
            let mut plain = compressed;
            tar(&mut plain)?;
            let (diff_id, tar_size, mut out) = plain.finish();
            out.flush()?;
            return Ok(LayerInfo {
                digest: diff_id.clone(),
                diff_id,
                size: tar_size,
                tar_size,
            });
        }
        Codec::Gzip if threads > 1 => gzip_beside(compressed, gzip_level(), tar)?,
        Codec::Gzip => {
            // A fixed mtime and no file name keep the gzip header identical across runs.
            let gz = GzBuilder::new().mtime(0).write(compressed, gzip_level());
            let mut uncompressed = HashingWriter::new(Blocks::new(gz));
            tar(&mut uncompressed)?;
            let (diff_id, tar_size, gz) = uncompressed.finish();
            (diff_id, tar_size, gz.finish()?.finish()?)
        }
        Codec::Zstd => {
            let mut zst = zstd::stream::write::Encoder::new(compressed, level.unwrap_or(3))?;
            zst.multithread(u32::try_from(threads.max(1)).unwrap_or(u32::MAX))?;
            let mut uncompressed = HashingWriter::new(Blocks::new(zst));
            tar(&mut uncompressed)?;
            let (diff_id, tar_size, zst) = uncompressed.finish();
            (diff_id, tar_size, zst.finish()?.finish()?)
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

/// The tar (written by `tar` through SHA-256 for the diff id) on this thread, gzip and the blob's SHA-256
/// on another, so that walking the tree (a few syscalls per file) and compressing overlap. The
/// compressor gets the same blocks as on one thread, so the blob's bytes are the same. Returns the diff
/// id, the tar's size and the compressed side.
fn gzip_beside<W: Write + Send>(
    compressed: HashingWriter<W>,
    level: Compression,
    tar: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<(String, u64, HashingWriter<W>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    std::thread::scope(|scope| {
        let gz = scope.spawn(move || -> io::Result<HashingWriter<W>> {
            let mut gz = GzBuilder::new().mtime(0).write(compressed, level);
            for block in rx {
                gz.write_all(&block)?;
            }
            gz.finish()
        });
        let written = (|| -> io::Result<(String, u64)> {
            let mut h = HashingWriter::new(Blocks::new(BlockSender(tx)));
            tar(&mut h)?;
            let (diff_id, size, blocks) = h.finish();
            blocks.finish()?;
            Ok((diff_id, size))
        })();
        // The sender is gone (dropped with the tar's writer), so the compressor ends either way; its own
        // error is the cause of a broken channel on this side.
        let compressed = gz
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the layer compressor thread panicked")));
        let (diff_id, size) = match (written, &compressed) {
            (Err(_), Err(e)) => return Err(io::Error::new(e.kind(), e.to_string())),
            (written, _) => written?,
        };
        Ok((diff_id, size, compressed?))
    })
}

/// How much input a compressor is given at a time (the last block of a tar is shorter). Part of every
/// blob's bytes: changing it changes every layer digest kiln writes.
const BLOCK: usize = 128 * 1024;

/// Hands a compressor its input in blocks of exactly `BLOCK` bytes, however the writes came: gzip's
/// output depends on how its input is split, and a blob must depend on the tar's bytes alone, not on
/// the writes of the tar writer (or of a tar file being read back) that made them.
struct Blocks<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Blocks<W> {
    fn new(inner: W) -> Blocks<W> {
        Blocks {
            inner,
            buf: Vec::with_capacity(BLOCK),
        }
    }

    /// Hands over the last, short block.
    fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf)?;
        }
        Ok(self.inner)
    }
}

impl<W: Write> Write for Blocks<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        if !self.buf.is_empty() {
            let take = (BLOCK - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() < BLOCK {
                return Ok(data.len());
            }
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        let whole = rest.len() - rest.len() % BLOCK;
        for block in rest[..whole].chunks(BLOCK) {
            self.inner.write_all(block)?;
        }
        self.buf.extend_from_slice(&rest[whole..]);
        Ok(data.len())
    }

    /// Nothing: a compressor's flush would end a deflate block, so the blob would depend on when
    /// flushes came. `finish` hands everything over.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hands each block to the compressor's thread.
struct BlockSender(std::sync::mpsc::SyncSender<Vec<u8>>);

impl Write for BlockSender {
    fn write(&mut self, block: &[u8]) -> io::Result<usize> {
        self.0.send(block.to_vec()).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the layer compressor stopped")
        })?;
        Ok(block.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `jobs`, with 0 meaning one per core (counted once: it reads the cgroup's quota files).
pub fn cores(jobs: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    match jobs {
        0 => *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from)),
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

/// Where a walk writes its tar: any writer (`Plain`), or SHA-256 whose state an indexed walk reads and
/// sets at entry starts (`index::Hashing`).
trait Sink: Write {
    fn hasher(&mut self) -> Option<&mut crate::digest::Resumable> {
        None
    }
}

struct Plain<W>(W);

impl<W: Write> Write for Plain<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Sink for Plain<W> {}

impl Sink for index::Hashing {
    fn hasher(&mut self) -> Option<&mut crate::digest::Resumable> {
        Some(&mut self.0)
    }
}

/// What follows an entry's header: nothing, or a regular file's content (read already when small,
/// otherwise opened only to be written).
enum Content<'p> {
    None,
    File(&'p Path, &'p Metadata, Option<&'p [u8]>),
}

struct Walker<'a, S: Sink> {
    builder: Builder<S>,
    epoch: Option<i64>,
    /// (dev, ino) of multiply-linked files already written, to the archive name used.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Only this part of the tree (`write_part`); `None`: all of it.
    part: Option<Part<'a>>,
    /// An indexed walk's (`layer_digest_indexed`) books; the sink is then `index::Hashing`.
    index: Option<index::Indexer<'a>>,
}

impl<S: Sink> Walker<'_, S> {
    /// Archives the tree at `root`, its file-system half on threads of their own (`fetch`).
    fn walk(&mut self, root: &Path) -> io::Result<()> {
        // A part leaves most files out, a resumed digest most files' contents: reading them ahead
        // would be wasted.
        let resumes = self.index.as_ref().is_some_and(index::Indexer::resumes);
        let contents = self.part.is_none() && !resumes;
        fetch::in_order(root, contents, |f| self.entry(f))
    }

    fn entry(&mut self, f: fetch::Fetched) -> io::Result<()> {
        let path = f.path.as_path();
        let meta = f.meta?;
        let ft = meta.file_type();
        let (rel, name) = (&f.rel[..], &f.rel[f.name_at..]);

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

        if let Some(part) = self.part
            && !ft.is_dir()
            && (part.dirs || !(part.takes)(rel, &meta))
        {
            return Ok(());
        }

        if ft.is_char_device() && meta.rdev() == 0 {
            let mut wh = parent_of(rel).to_vec();
            wh.extend_from_slice(WHITEOUT_PREFIX);
            wh.extend_from_slice(name);
            return self.marker(&wh);
        }

        if ft.is_dir() {
            // Its children follow it in the walk.
            if self.part.is_some_and(|p| !p.dirs) {
                return Ok(());
            }
            let mut dir_name = rel.to_vec();
            dir_name.push(b'/');
            let mut header = self.base_header(&meta, EntryType::Directory);
            self.append(&mut header, &dir_name, None, f.xattrs?, Content::None)?;
            if f.opaque? {
                let mut marker = dir_name.clone();
                marker.extend_from_slice(OPAQUE_MARKER);
                self.marker(&marker)?;
            }
            return Ok(());
        }

        // Overlay may share one inode among whiteouts, so only real content is linked.
        if meta.nlink() > 1 && self.part.is_none() {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                let mut header = self.base_header(&meta, EntryType::Link);
                return self.append(&mut header, rel, Some(&first), Vec::new(), Content::None);
            }
            self.links.insert(key, rel.to_vec());
        }

        let pax = f.xattrs?;
        if ft.is_file() {
            let mut header = self.base_header(&meta, EntryType::Regular);
            let data = f.data.transpose()?;
            let content = Content::File(path, &meta, data.as_deref());
            self.append(&mut header, rel, None, pax, content)
        } else if ft.is_symlink() {
            let target = f.target.unwrap_or_else(|| fs::read_link(path))?;
            let mut header = self.base_header(&meta, EntryType::Symlink);
            let target = target.as_os_str().as_bytes();
            self.append(&mut header, rel, Some(target), pax, Content::None)
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
            self.append(&mut header, rel, None, pax, Content::None)
        } else if ft.is_fifo() {
            let mut header = self.base_header(&meta, EntryType::Fifo);
            self.append(&mut header, rel, None, pax, Content::None)
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
        self.append(&mut header, name, None, Vec::new(), Content::None)
    }

    /// Fills name/link/size (moving whatever ustar can't hold into PAX records) and appends.
    fn append(
        &mut self,
        header: &mut Header,
        name: &[u8],
        link: Option<&[u8]>,
        mut pax: Vec<(Vec<u8>, Vec<u8>)>,
        content: Content<'_>,
    ) -> io::Result<()> {
        let size = match content {
            Content::File(_, meta, _) => meta.len(),
            Content::None => 0,
        };
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
        header.set_cksum();
        let pax = match leading.is_empty() {
            true => None,
            false => Some(pax_entry(name, &leading)?),
        };
        if self.indexed_skip(header, &leading, pax.as_ref(), &content) {
            return Ok(());
        }
        if let Some((pax_header, body)) = pax {
            self.builder.append(&pax_header, body.as_slice())?;
        }
        let Content::File(path, _, data) = content else {
            return self.builder.append(header, io::empty());
        };
        if let Some(data) = data {
            return self.builder.append(header, data);
        }
        let file = fetch::open(path)?;
        let reader = ExactReader {
            inner: file.take(size),
            remaining: size,
            path,
        };
        self.builder.append(header, reader)
    }

    /// In an indexed walk: whether the entry is skipped, the earlier tar holding it where this one
    /// would (`index::Indexer::entry`).
    fn indexed_skip(
        &mut self,
        header: &Header,
        records: &[(Vec<u8>, Vec<u8>)],
        pax: Option<&(Header, Vec<u8>)>,
        content: &Content<'_>,
    ) -> bool {
        let Some(ix) = self.index.as_mut() else {
            return false;
        };
        let Some(hasher) = self.builder.get_mut().hasher() else {
            return false;
        };
        let blocks = |n: u64| 512 + n.div_ceil(512) * 512;
        let (inode, size) = match content {
            Content::File(_, meta, _) => (Some((meta.dev(), meta.ino())), meta.len()),
            Content::None => (None, 0),
        };
        let len = blocks(size) + pax.map_or(0, |(_, body)| blocks(body.len() as u64));
        ix.entry(
            index::entry_key(header.as_bytes(), records, inode),
            len,
            hasher,
        )
    }
}

/// The PAX extended header carrying `records` for the entry `name`, and its body.
fn pax_entry(name: &[u8], records: &[(Vec<u8>, Vec<u8>)]) -> io::Result<(Header, Vec<u8>)> {
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
    Ok((header, body))
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
mod tests;
