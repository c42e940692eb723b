//! The layer writer against GNU tar, the reader (round trips) and the kernel's overlayfs.

use super::*;
use crate::exec::userns::layer_ids;
use crate::layer::{OPAQUE_XATTR, USER_OPAQUE_XATTR, unpack_layer};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, makedev, mknod, utimensat};
use nix::sys::time::TimeSpec;
use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::PathBuf;

const T: i64 = 1_700_000_000;
const LONG_DIR: &str = "a-directory-name-long-enough-to-need-the-ustar-prefix-field-or-pax-records";

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

/// gzip beside the walk (on a thread of its own) writes the very bytes gzip on one thread does, for a
/// tree of many small files and one past several of the hand-over chunks; and an error of the output
/// reaches the caller.
#[test]
fn gzip_on_its_own_thread_gives_the_same_blob() {
    let tmp = tempfile::tempdir().unwrap();
    for d in 0..5 {
        std::fs::create_dir(tmp.path().join(d.to_string())).unwrap();
        for f in 0..300 {
            write(
                &tmp.path().join(format!("{d}/{f}")),
                format!("file {d}/{f}").as_bytes(),
                0o644,
            );
        }
    }
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write(&tmp.path().join("big"), &big, 0o600);
    let blob = |threads| {
        let mut out = Vec::new();
        let info =
            layer_digests_threaded(tmp.path(), None, Codec::Gzip, threads, &mut out).unwrap();
        (info, out)
    };
    let (one, bytes) = blob(1);
    let (two, bytes2) = blob(2);
    assert_eq!(two, one);
    assert!(bytes2 == bytes, "the blobs differ");
    assert_eq!(
        one.digest,
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes)))
    );

    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let err = layer_digests_threaded(tmp.path(), None, Codec::Gzip, 2, Full).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
}

/// A layer kept uncompressed and compressed later, read in writes of any size, gives the very blob the
/// tree gives when compressed as it is walked: with gzip on one thread or beside the walk, and with zstd.
/// Kept images rely on it (`export::kept`: an image kept under a name leaves the store with the digest a
/// direct build gives).
#[test]
fn a_tar_compressed_later_gives_the_same_blob_whatever_its_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut noise = vec![0u8; 700_000];
    for b in noise.iter_mut() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed as u8;
    }
    write(&tmp.path().join("noise.bin"), &noise, 0o644);
    let text: String = (0..40_000).map(|i| format!("line {i} of text\n")).collect();
    write(&tmp.path().join("text.txt"), text.as_bytes(), 0o644);
    for f in 0..200 {
        write(
            &tmp.path().join(format!("small-{f}")),
            &noise[f..f * 3],
            0o600,
        );
    }
    let mut tar = Vec::new();
    let plain = layer_digests(tmp.path(), None, Codec::Uncompressed, &mut tar).unwrap();
    assert_eq!(plain.digest, plain.diff_id);
    assert_eq!(plain.size, tar.len() as u64);
    /// Hands out at most `n` bytes a read.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    for (codec, threads) in [(Codec::Gzip, 1), (Codec::Gzip, 2), (Codec::Zstd, 2)] {
        let mut walked = Vec::new();
        let info = layer_digests_threaded(tmp.path(), None, codec, threads, &mut walked).unwrap();
        assert_eq!(info.diff_id, plain.diff_id);
        for n in [4097, 65_536, 1 << 20, 7] {
            let mut later = Vec::new();
            let again =
                compress_tar(&mut Trickle(&tar, n), (codec, None), threads, &mut later).unwrap();
            assert_eq!(again, info, "{codec:?} on {threads} threads, reads of {n}");
            assert!(later == walked, "{codec:?}, reads of {n}: the blobs differ");
        }
    }
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

/// A tree of several hundred entries, dealt to the readers in many batches: the archive still lists
/// them in byte order, each directory before its children, each file with its own bytes (small ones
/// read ahead, a large one streamed).
#[test]
fn a_walk_of_many_batches_keeps_archive_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    for d in ["b", "a", "a/z", "a/y", "c"] {
        fs::create_dir(tmp.path().join(d)).unwrap();
    }
    for d in ["a", "a/y", "a/z", "b", "c"] {
        for i in (0..90).rev() {
            write(
                &tmp.path().join(format!("{d}/f{i:02}")),
                format!("{d} {i}").as_bytes(),
                0o644,
            );
        }
    }
    let big = vec![7u8; 100 * 1024];
    write(&tmp.path().join("b/big"), &big, 0o644);
    let mut walk = vec![PathBuf::new()];
    while let Some(dir) = walk.pop() {
        let mut names: Vec<_> = fs::read_dir(tmp.path().join(&dir))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names.iter().rev() {
            let rel = dir.join(n);
            if tmp.path().join(&rel).is_dir() {
                walk.push(rel);
            }
        }
        expected.extend(names.iter().map(|n| dir.join(n)));
    }
    // The walk above is breadth-ish; archive order is depth-first: sort by path components.
    expected.sort_by(|a, b| a.components().cmp(b.components()));
    let bytes = write_layer(tmp.path(), Vec::new(), None).unwrap();
    let names: Vec<String> = list_tar(&bytes).into_iter().map(|(n, _)| n).collect();
    let want: Vec<String> = expected
        .iter()
        .map(|p| {
            let s = p.to_string_lossy().into_owned();
            if tmp.path().join(p).is_dir() {
                s + "/"
            } else {
                s
            }
        })
        .collect();
    assert_eq!(names, want);
    let mut archive = tar::Archive::new(bytes.as_slice());
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        if name.ends_with('/') {
            continue;
        }
        let mut got = Vec::new();
        io::Read::read_to_end(&mut e, &mut got).unwrap();
        assert_eq!(got, fs::read(tmp.path().join(&name)).unwrap(), "{name}");
    }
}

/// A refused entry far into the walk (in a later batch than the first) still fails the walk, naming it.
#[test]
fn a_refused_entry_deep_in_the_walk_fails_it() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..300 {
        write(&tmp.path().join(format!("f{i:03}")), b"x", 0o644);
    }
    fs::create_dir(tmp.path().join("z")).unwrap();
    write(&tmp.path().join("z/.wh.sneaky"), b"", 0o644);
    let err = write_layer(tmp.path(), Vec::new(), None).unwrap_err();
    assert!(err.to_string().contains("z/.wh.sneaky"), "{err}");
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
        crate::progress::test_note("note: cannot mount overlayfs here; skipping the kernel check");
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

/// `tree` with every file hard-linked from `from` (the same inodes, as kiln's COPY links its file
/// objects), directories made anew with the same modes and times.
fn link_tree(from: &Path, to: &Path) {
    fs::create_dir(to).unwrap();
    let mut names: Vec<_> = fs::read_dir(from).unwrap().map(|e| e.unwrap()).collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let meta = fs::symlink_metadata(&src).unwrap();
        if meta.is_dir() {
            link_tree(&src, &dst);
        } else if meta.is_file() {
            fs::hard_link(&src, &dst).unwrap();
        }
    }
    fs::set_permissions(to, fs::symlink_metadata(from).unwrap().permissions()).unwrap();
    set_time(to, T);
}

/// A tree of plain files and directories (what a COPY makes), times pinned.
fn copy_tree(root: &Path, files: &[(&str, &[u8])]) {
    for (name, content) in files {
        let path = root.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        write(&path, content, 0o644);
        set_time(&path, T);
    }
    for dir in ["", "a", "b"] {
        set_time(&root.join(dir), T);
    }
}

fn tar_digest(tree: &Path, epoch: Option<i64>) -> String {
    layer_digests(tree, epoch, Codec::Uncompressed, io::sink())
        .unwrap()
        .diff_id
}

/// A tar's digest resumed from an earlier tar's index is the digest of the whole tar, whatever changed:
/// a file late in the tar, the first one, one added or removed at the end, nothing, the epoch.
#[test]
fn an_indexed_digest_resumes_from_the_entries_an_earlier_tar_shares() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let big = vec![7u8; 300_000];
    copy_tree(
        &first,
        &[
            ("a/big", &big),
            ("a/small", b"small"),
            ("b/late", b"late"),
            ("b/z", b"z"),
        ],
    );
    let (info, index) = layer_digest_indexed(&first, None, None).unwrap();
    assert_eq!(info.diff_id, tar_digest(&first, None));
    assert_eq!(
        info.tar_size,
        write_layer(&first, Vec::new(), None).unwrap().len() as u64
    );
    // A changed file is a new inode, as a COPY writes one; the others stay links to the first tree's.
    let replace = |t: &Path, name: &str, content: &[u8]| {
        let _ = fs::remove_file(t.join(name));
        write(&t.join(name), content, 0o644);
        set_time(&t.join(name), T);
    };
    type Edit<'a> = &'a dyn Fn(&Path);
    let edits: [(&str, Edit); 6] = [
        ("nothing", &|_| {}),
        ("a late file", &|t| replace(t, "b/late", b"later")),
        ("the first file", &|t| replace(t, "a/big", b"new")),
        ("a file added", &|t| replace(t, "b/zz", b"added")),
        ("the last file removed", &|t| {
            fs::remove_file(t.join("b/z")).unwrap()
        }),
        ("a directory's time", &|_| {}),
    ];
    for (n, (what, edit)) in edits.into_iter().enumerate() {
        let next = dir.path().join(format!("next{n}"));
        link_tree(&first, &next);
        edit(&next);
        for sub in ["", "a", "b"] {
            set_time(&next.join(sub), T);
        }
        if what == "a directory's time" {
            set_time(&next.join("b"), T + 1);
        }
        for epoch in [None, Some(T - 10)] {
            let (resumed, _) = layer_digest_indexed(&next, epoch, Some(&index)).unwrap();
            assert_eq!(
                resumed.diff_id,
                tar_digest(&next, epoch),
                "{what}, {epoch:?}"
            );
        }
    }
}

/// Entries the earlier tar holds are not read again: content changed in place under the same inode
/// (which kiln's immutable file objects never are) still hashes as it was, which is how this shows.
#[test]
fn an_indexed_digest_does_not_read_the_shared_entries() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    copy_tree(&first, &[("a/x", b"before"), ("b/y", b"y")]);
    let (was, index) = layer_digest_indexed(&first, None, None).unwrap();
    let next = dir.path().join("next");
    link_tree(&first, &next);
    fs::write(first.join("a/x"), b"after!").unwrap();
    set_time(&first.join("a/x"), T);
    let (resumed, again) = layer_digest_indexed(&next, None, Some(&index)).unwrap();
    assert_eq!(resumed.diff_id, was.diff_id);
    assert_eq!(again, index);
    assert_ne!(tar_digest(&next, None), was.diff_id);
}
