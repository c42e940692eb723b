//! Pulls that unpack while they download, and pushes that send each blob once: judged by the loopback
//! registry's access log (what was fetched or sent), by Python's tarfile (what a layer holds) and by
//! skopeo (what was pushed).

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::support::{
    Kiln, Layout, base_image, context, start_registries, tempdir, tool, unwrapped,
};

/// One open loopback registry for this module: its address and directory (access log `open.log`).
fn registry() -> Option<&'static (String, PathBuf)> {
    static REG: OnceLock<Option<(String, PathBuf)>> = OnceLock::new();
    REG.get_or_init(|| {
        let (dir, addrs) = start_registries("registry pull tests", &[], &["open"])?;
        Some((addrs[0].clone(), dir))
    })
    .as_ref()
}

fn copy_to_registry(layout: &Path, tag: &str, dest: &str) {
    tool(
        "skopeo",
        &[
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{dest}"),
        ],
    );
}

/// The blob digests fetched (GET) from `repository` since the log had `skip` lines.
fn fetched(dir: &Path, repository: &str, skip: usize) -> Vec<String> {
    let log = std::fs::read_to_string(dir.join("open.log")).unwrap();
    let needle = format!("\"GET /v2/{repository}/blobs/sha256:");
    let mut out: Vec<String> = log
        .lines()
        .skip(skip)
        .filter_map(|l| l.split_once(&needle))
        .map(|(_, rest)| format!("sha256:{}", &rest[..64]))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn log_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("open.log"))
        .unwrap()
        .lines()
        .count()
}

/// Writes with Python (not kiln) an OCI layout at `dir` holding one image per tag: `gzip`, `zstd` and
/// `plain` have the same two layers, compressed each way (the second has a whiteout, an opaque
/// directory, a hard link, a symlink and odd owners and modes); `top1` and `top2` have the gzip layers
/// and a third layer of their own; `lie`'s config gives its second layer the diff id of another tar.
const MAKE_LAYOUT: &str = r#"
import gzip, hashlib, io, json, os, subprocess, sys, tarfile
dest = sys.argv[1]
blobs = os.path.join(dest, "blobs", "sha256"); os.makedirs(blobs, exist_ok=True)
def put(b):
    d = hashlib.sha256(b).hexdigest(); open(os.path.join(blobs, d), "wb").write(b); return "sha256:" + d, len(b)
def tar(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, extra in entries:
            i = tarfile.TarInfo(name); i.mtime = 1700000000; i.uid = extra.get("uid", 0); i.gid = extra.get("gid", 0)
            i.mode = extra.get("mode", 0o755 if kind == "dir" else 0o644)
            data = extra.get("data", b"")
            if kind == "dir": i.type = tarfile.DIRTYPE
            elif kind == "sym": i.type = tarfile.SYMTYPE; i.linkname = extra["to"]
            elif kind == "link": i.type = tarfile.LNKTYPE; i.linkname = extra["to"]
            else: i.size = len(data)
            t.addfile(i, io.BytesIO(data) if kind == "file" else None)
    return buf.getvalue()
l1 = tar([("app", "dir", {}), ("app/gone", "file", {"data": b"old"}), ("app/keep", "file", {"data": b"keep"}),
          ("cfg", "dir", {}), ("cfg/old", "file", {"data": b"x"})]
         + [(f"app/f{i}", "file", {"data": os.urandom(3000)}) for i in range(40)])
l2 = tar([("app", "dir", {"mode": 0o750, "uid": 1000, "gid": 1000}), ("app/.wh.gone", "file", {}),
          ("app/new", "file", {"data": b"new\n" * 1000, "mode": 0o4755, "uid": 1000, "gid": 100}),
          ("app/hard", "link", {"to": "app/new"}), ("app/sym", "sym", {"to": "../cfg/x"}),
          ("cfg", "dir", {"mode": 0o700}), ("cfg/.wh..wh..opq", "file", {}), ("cfg/x", "file", {"data": b"x"})])
def zstd(b):
    return subprocess.run(["zstd", "-q", "-c"], input=b, stdout=subprocess.PIPE, check=True).stdout
ways = {"gzip": ("+gzip", lambda b: gzip.compress(b, mtime=0)), "zstd": ("+zstd", zstd), "plain": ("", lambda b: b)}
index = []
def image(tag, layers, lie=False):
    diffs = ["sha256:" + hashlib.sha256(t).hexdigest() for t, _ in layers]
    if lie: diffs[-1] = "sha256:" + hashlib.sha256(b"another tar").hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
    cd, cs = put(config)
    descs = []
    for t, (suffix, f) in layers:
        d, s = put(f(t)); descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar" + suffix, "digest": d, "size": s})
    md, ms = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs}, "layers": descs}).encode())
    index.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
                  "annotations": {"org.opencontainers.image.ref.name": tag}})
for tag, way in ways.items():
    image(tag, [(l1, way), (l2, way)])
for tag in ("top1", "top2"):
    image(tag, [(l1, ways["gzip"]), (l2, ways["gzip"]), (tar([(tag, "file", {"data": tag.encode()})]), ways["gzip"])])
image("lie", [(l1, ways["zstd"]), (tar([("lie", "file", {"data": b"lie"})]), ways["zstd"])], lie=True)
json.dump({"schemaVersion": 2, "manifests": index}, open(os.path.join(dest, "index.json"), "w"))
open(os.path.join(dest, "oci-layout"), "w").write('{"imageLayoutVersion": "1.0.0"}')
"#;

/// The Python-written layout, pushed under `pull/<tag>` for every tag.
fn pushed_images() -> Option<&'static (String, PathBuf, PathBuf)> {
    static IMAGES: OnceLock<Option<(String, PathBuf, PathBuf)>> = OnceLock::new();
    IMAGES
        .get_or_init(|| {
            let (addr, dir) = registry()?;
            let layout = tempdir("pull-layout-").keep();
            tool("python3", &["-c", MAKE_LAYOUT, layout.to_str()?]);
            for tag in ["gzip", "zstd", "plain", "top1", "top2", "lie"] {
                copy_to_registry(&layout, tag, &format!("{addr}/pull/{tag}:1"));
            }
            Some((addr.clone(), dir.clone(), layout))
        })
        .as_ref()
}

fn from(image: &str) -> tempfile::TempDir {
    context(&[("Dockerfile", &format!("FROM {image}\nCOPY Dockerfile /\n"))])
}

/// A snapshot tree as comparable data: each path with its kind, mode, owner, size, link target and
/// content (files), and whether it shares its inode with another entry (hard links).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
        let body = if m.file_type().is_symlink() {
            std::fs::read_link(e.path()).unwrap().display().to_string()
        } else if m.is_file() {
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                std::fs::read(e.path()).unwrap(),
            ))
        } else {
            String::new()
        };
        let opaque = xattr::get(e.path(), "trusted.overlay.opaque")
            .ok()
            .flatten()
            .or_else(|| xattr::get(e.path(), "user.overlay.opaque").ok().flatten());
        out.push(format!(
            "{rel} {:o} {}:{} rdev={} nlink={} opaque={opaque:?} {body}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.rdev(),
            if m.is_dir() { 0 } else { m.nlink() }
        ));
    }
    out
}

fn snapshots(store: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(store.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("layer-")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn gzip_zstd_and_uncompressed_layers_unpack_to_the_same_snapshots() {
    let Some((addr, _, layout)) = pushed_images() else {
        return;
    };
    let mut trees = Vec::new();
    for tag in ["gzip", "zstd", "plain"] {
        let store = tempdir("store-");
        Kiln::build_in(store.path())
            .arg(from(&format!("{addr}/pull/{tag}:1")).path())
            .run()
            .success();
        let snaps = snapshots(store.path());
        assert_eq!(snaps.len(), 2, "{tag}: {snaps:?}");
        // Unpacked as it downloaded: only that path counts the tar's bytes of a pulled layer.
        for s in &snaps {
            let name = s.file_name().unwrap().to_string_lossy();
            let record = std::fs::read_to_string(store.path().join(format!("layers/{name}.json")));
            assert!(record.unwrap().contains("\"tar_size\""), "{tag}: {name}");
        }
        trees.push((tag, snaps.iter().map(|s| tree(s)).collect::<Vec<_>>()));
    }
    assert_eq!(trees[0].1, trees[1].1, "gzip and zstd differ");
    assert_eq!(trees[0].1, trees[2].1, "gzip and uncompressed differ");
    // Python's tarfile, an independent reader, says what each layer holds: every file's bytes are there.
    let image = Layout::new(layout);
    let listing = tool(
        "python3",
        &[
            "-c",
            "import gzip,sys,tarfile,hashlib\n\
             t=tarfile.open(fileobj=gzip.open(sys.argv[1]))\n\
             [print(m.name, hashlib.sha256(t.extractfile(m).read()).hexdigest()) for m in t if m.isfile() and '.wh.' not in m.name]",
            image
                .dir
                .join("blobs/sha256")
                .join(&image.manifest()["layers"][1]["digest"].as_str().unwrap()[7..])
                .to_str()
                .unwrap(),
        ],
    );
    let all = trees[0].1.concat().join("\n");
    for line in listing.lines() {
        let (name, sum) = line.split_once(' ').unwrap();
        assert!(
            all.lines()
                .any(|l| l.starts_with(&format!("{name} ")) && l.ends_with(sum)),
            "{name} is not in the snapshot with its bytes:\n{all}"
        );
    }
    assert!(
        all.contains("app/gone 20000 0:0 rdev=0"),
        "no whiteout:\n{all}"
    );
    assert!(all.contains("opaque=Some([121])"), "no opaque dir:\n{all}");
    assert!(
        all.contains("app/hard 104755 1000:100 rdev=0 nlink=2"),
        "{all}"
    );
}

#[test]
fn a_second_pull_sharing_all_but_one_layer_fetches_one_layer_blob() {
    let Some((addr, dir, layout)) = pushed_images() else {
        return;
    };
    let store = tempdir("store-");
    Kiln::build_in(store.path())
        .arg(from(&format!("{addr}/pull/top1:1")).path())
        .run()
        .success();
    let before = log_lines(dir);
    Kiln::build_in(store.path())
        .arg(from(&format!("{addr}/pull/top2:1")).path())
        .run()
        .success();
    let got = fetched(dir, "pull/top2", before);
    // top2's own layer and its config: nothing else.
    let image = Layout::new(layout);
    let index = image.index();
    let top2 = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "top2")
        .unwrap();
    let manifest = image.json(top2["digest"].as_str().unwrap());
    let mut want = vec![
        manifest["config"]["digest"].as_str().unwrap().to_string(),
        manifest["layers"][2]["digest"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_corrupt_blob_fails_the_pull_and_leaves_nothing_in_the_store() {
    let Some((addr, dir, layout)) = pushed_images() else {
        return;
    };
    // A repository of its own whose second layer the registry serves corrupt (same size, other bytes).
    copy_to_registry(layout, "zstd", &format!("{addr}/pull/corrupt:1"));
    let image = Layout::new(layout);
    let index = image.index();
    let zstd = &index["manifests"][1];
    let manifest = image.json(zstd["digest"].as_str().unwrap());
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = &layer[7..];
    let data = dir.join(format!(
        "open-data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let original = std::fs::read(&data).unwrap();
    let mut bad = original.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0xff;
    std::fs::write(&data, &bad).unwrap();
    let store = tempdir("store-");
    let out = Kiln::build_in(store.path())
        .arg(from(&format!("{addr}/pull/corrupt:1")).path())
        .run();
    std::fs::write(&data, &original).unwrap();
    out.expect_code(1);
    // oci-client checks the digest too, and may be the first to say so.
    let said = unwrapped(&out.stderr);
    assert!(
        said.contains(&format!("blob {layer}"))
            && (said.contains("arrived corrupt") || said.contains("Invalid digest")),
        "{said}"
    );
    assert!(!store.path().join("blobs/sha256").join(hex).exists());
    let diff = image.json(manifest["config"]["digest"].as_str().unwrap())["rootfs"]["diff_ids"][1]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !store
            .path()
            .join(format!("snapshots/layer-{}", &diff[7..]))
            .exists()
    );
    let left: Vec<_> = std::fs::read_dir(store.path().join("tmp"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Pushes `FROM <base>` plus one layer to `app` and returns the access-log lines of `app`'s blob
/// requests that name one of the base's blobs.
fn push_over_base(addr: &str, dir: &Path, base: &str, app: &str) -> (Vec<String>, Vec<String>) {
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {addr}/{base}\nRUN echo app > /app\n"),
    )]);
    let before = log_lines(dir);
    Kiln::new()
        .args(["--push", "-t", &format!("{addr}/{app}:1")])
        .arg(ctx.path())
        .run()
        .success();
    let layout = Layout::new(base_image());
    let base_blobs: Vec<String> = layout.manifest()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap()[7..].to_string())
        .collect();
    let log = std::fs::read_to_string(dir.join("open.log")).unwrap();
    let lines: Vec<String> = log
        .lines()
        .skip(before)
        .filter(|l| l.contains(&format!(" /v2/{app}/blobs/")) && l.contains("\" "))
        .map(String::from)
        .collect();
    let about_base = lines
        .iter()
        .filter(|l| base_blobs.iter().any(|b| l.contains(b.as_str())))
        .cloned()
        .collect();
    (lines, about_base)
}

#[test]
fn a_push_mounts_the_base_from_where_it_was_pulled_and_sends_no_base_blob() {
    let Some((addr, dir)) = registry() else {
        return;
    };
    copy_to_registry(base_image(), "latest", &format!("{addr}/src/base:1"));
    let (lines, about_base) = push_over_base(addr, dir, "src/base:1", "dst/empty");
    assert!(!about_base.is_empty(), "{lines:#?}");
    for l in &about_base {
        let mounted = l.contains("\"POST /v2/dst/empty/blobs/uploads/?mount=sha256%3A")
            && l.contains("&from=src%2Fbase HTTP/1.1\" 201 ");
        assert!(
            mounted || l.contains("\"HEAD "),
            "a base blob was not mounted: {l}\n{lines:#?}"
        );
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("\"PUT ") && about_base.contains(l)),
        "{lines:#?}"
    );
}

#[test]
fn a_push_to_a_repository_holding_the_base_only_asks_for_it() {
    let Some((addr, dir)) = registry() else {
        return;
    };
    copy_to_registry(base_image(), "latest", &format!("{addr}/held/base:1"));
    copy_to_registry(base_image(), "latest", &format!("{addr}/held/app:0"));
    let (lines, about_base) = push_over_base(addr, dir, "held/base:1", "held/app");
    assert!(!about_base.is_empty(), "{lines:#?}");
    for l in &about_base {
        assert!(l.contains("\"HEAD "), "not a HEAD: {l}\n{lines:#?}");
    }
    let uploads = lines.iter().filter(|l| l.contains("\"PUT ")).count();
    // The one new layer (and the config) are all that is sent.
    assert_eq!(uploads, 2, "{lines:#?}");
}

#[test]
fn a_layer_whose_tar_is_not_its_diff_id_fails_the_pull_and_leaves_no_snapshot() {
    let Some((addr, _, _)) = pushed_images() else {
        return;
    };
    let store = tempdir("store-");
    let out = Kiln::build_in(store.path())
        .arg(from(&format!("{addr}/pull/lie:1")).path())
        .run();
    out.expect_code(1);
    let said = unwrapped(&out.stderr);
    assert!(
        said.contains("unpacks to a tar whose digest is")
            && said.contains("but the image config says"),
        "{said}"
    );
    // The first layer may have been unpacked already; the lying one left neither blob nor snapshot.
    let snaps = snapshots(store.path());
    assert!(snaps.len() <= 1, "{snaps:?}");
    let left: Vec<_> = std::fs::read_dir(store.path().join("tmp"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}
