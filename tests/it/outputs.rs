//! Every output type, judged by independent tools: docker-archive (skopeo reads it back), the final
//! filesystem as a directory and as a tar (files, modes, symlinks, deletions), and reproducible digests
//! with `SOURCE_DATE_EPOCH`.

use std::os::unix::fs::PermissionsExt as _;

use crate::support::{Kiln, context, tempdir, tool};

const DOCKERFILE: &str = "FROM base
RUN rm /etc/group && mkdir -p /app && echo hi > /app/hello && chmod 0750 /app/hello && ln -s /app/hello /app/link
LABEL org.example.kind=outputs
CMD [\"/app/hello\"]
";

fn build(outputs: &[String], env: Option<(&str, &str)>) -> crate::support::Output {
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let mut k = Kiln::new().with_base().args(["-t", "kiln/outputs:1.0"]);
    for o in outputs {
        k = k.arg("-o").arg(o);
    }
    if let Some((key, value)) = env {
        k = k.env(key, value);
    }
    let out = k.arg(ctx.path()).run();
    out.success();
    out
}

#[test]
fn docker_archive_local_dir_and_tar() {
    let dir = tempdir("out-");
    let archive = dir.path().join("image.tar");
    let rootfs = dir.path().join("rootfs");
    let fs_tar = dir.path().join("rootfs.tar");
    build(
        &[
            format!("type=docker,dest={}", archive.display()),
            format!("type=local,dest={}", rootfs.display()),
            format!("type=tar,dest={}", fs_tar.display()),
        ],
        None,
    );

    // skopeo reads the docker-archive and copies it into an OCI layout: config and layers are consistent.
    let inspect = tool(
        "skopeo",
        &["inspect", &format!("docker-archive:{}", archive.display())],
    );
    let json: serde_json::Value = serde_json::from_str(&inspect).expect("skopeo JSON");
    assert_eq!(json["Labels"]["org.example.kind"], "outputs", "{inspect}");
    let copied = dir.path().join("copied");
    tool(
        "skopeo",
        &[
            "copy",
            &format!("docker-archive:{}", archive.display()),
            &format!("oci:{}:x", copied.display()),
        ],
    );
    let manifest = tool("tar", &["-xOf", archive.to_str().unwrap(), "manifest.json"]);
    assert!(
        manifest.contains("kiln/outputs:1.0"),
        "RepoTags: {manifest}"
    );

    // The final filesystem: the RUN's files with their modes and link, the deleted file gone.
    let hello = rootfs.join("app/hello");
    assert_eq!(std::fs::read_to_string(&hello).unwrap(), "hi\n");
    assert_eq!(
        std::fs::metadata(&hello).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("app/link"))
            .unwrap()
            .to_str(),
        Some("/app/hello")
    );
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap().to_str(),
        Some("/bin/busybox")
    );
    assert!(rootfs.join("etc/passwd").is_file());
    assert!(
        !rootfs.join("etc/group").exists(),
        "a file the RUN deleted must be gone"
    );
    assert!(!rootfs.join(".wh.group").exists() && !rootfs.join("etc/.wh.group").exists());

    // The same as a tar, listed by GNU tar.
    let listing = tool("tar", &["-tvf", fs_tar.to_str().unwrap()]);
    assert!(listing.contains("app/hello"), "{listing}");
    assert!(listing.contains("app/link -> /app/hello"), "{listing}");
    assert!(!listing.contains("etc/group"), "{listing}");
    assert!(!listing.contains(".wh."), "{listing}");
}

#[test]
fn source_date_epoch_makes_builds_reproducible() {
    let digests: Vec<String> = (0..2)
        .map(|_| {
            let dir = tempdir("out-");
            let out = build(
                &[format!(
                    "type=oci,dest={}",
                    dir.path().join("image").display()
                )],
                Some(("SOURCE_DATE_EPOCH", "1700000000")),
            );
            // The builds run at different moments in different stores; only the epoch is shared.
            std::thread::sleep(std::time::Duration::from_millis(1100));
            out.stdout.trim().to_string()
        })
        .collect();
    assert!(digests[0].starts_with("sha256:"), "{digests:?}");
    assert_eq!(
        digests[0], digests[1],
        "two builds from empty stores differ"
    );
}

/// `--compression zstd`: new layers are zstd blobs (the base image's own blob is kept as it came), also
/// when the store made gzip blobs of the same snapshots before; skopeo reads the image, and kiln builds
/// FROM it again.
#[test]
fn zstd_layers() {
    let dir = tempdir("out-");
    let image = dir.path().join("image");
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let kiln = Kiln::new().with_base();
    kiln.clone()
        .arg("-o")
        .arg(format!(
            "type=oci,dest={}",
            dir.path().join("gzip").display()
        ))
        .arg(ctx.path())
        .run()
        .success();
    kiln.args(["--compression", "zstd", "-o"])
        .arg(format!("type=oci,dest={}", image.display()))
        .arg(ctx.path())
        .run()
        .success();
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:latest", image.display()),
        ],
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let types = crate::support::layer_media_types(&manifest);
    assert_eq!(
        types.last().map(String::as_str),
        Some("application/vnd.oci.image.layer.v1.tar+zstd"),
        "{types:?}"
    );
    tool(
        "skopeo",
        &[
            "copy",
            &format!("oci:{}:latest", image.display()),
            &format!("dir:{}", dir.path().join("copy").display()),
        ],
    );
    let child = context(&[("Dockerfile", "FROM parent\nRUN cat /app/hello\n")]);
    let out = Kiln::new()
        .arg("--build-context")
        .arg(format!("parent=oci-layout://{}", image.display()))
        .arg(child.path())
        .run();
    out.success();
    assert!(out.stderr.contains(" hi"), "{}", out.stderr);
}

/// Inode, size, mtime and ctime: any write to the file, even of the same bytes, moves the ctime.
fn stamp(path: &std::path::Path) -> (u64, u64, i64, i64, i64, i64) {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// A fully cached build whose outputs already hold its image writes nothing; an output that was damaged
/// since, or that should now hold something else, is written again.
#[test]
fn unchanged_outputs_are_left_alone() {
    use sha2::Digest as _;
    let dir = tempdir("out-");
    let layout = dir.path().join("layout");
    let oci_tar = dir.path().join("image-oci.tar");
    let archive = dir.path().join("image-docker.tar");
    let fs_tar = dir.path().join("rootfs.tar");
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let store = tempdir("store-");
    let build = |tag: &str| {
        let out = Kiln::build_in(store.path())
            .with_base()
            .args(["-t", tag, "-o"])
            .arg(format!("type=oci,dest={}", layout.display()))
            .arg("-o")
            .arg(format!("type=oci,dest={}", oci_tar.display()))
            .arg("-o")
            .arg(format!("type=docker,dest={}", archive.display()))
            .arg("-o")
            .arg(format!("type=tar,dest={}", fs_tar.display()))
            .arg(ctx.path())
            .run();
        out.success();
        out
    };
    let left_alone = |out: &crate::support::Output| -> Vec<String> {
        out.stderr
            .lines()
            .chain(out.stdout.lines())
            .filter(|l| l.ends_with("nothing written"))
            .map(str::to_string)
            .collect()
    };

    let first = build("kiln/outputs:1.0");
    assert!(left_alone(&first).is_empty(), "{}", first.stderr);
    let manifest = crate::support::Layout::new(&layout).manifest();
    let top = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let top_blob = layout.join("blobs/sha256").join(&top["sha256:".len()..]);
    let watched = [
        layout.join("index.json"),
        top_blob.clone(),
        oci_tar.clone(),
        archive.clone(),
        fs_tar.clone(),
    ];
    let stamps: Vec<_> = watched.iter().map(|p| stamp(p)).collect();
    let archive_bytes = std::fs::read(&archive).unwrap();

    // Nothing changed: every output is left as it is, not a file touched.
    let second = build("kiln/outputs:1.0");
    assert_eq!(second.summary().0, 0, "{}", second.stderr);
    assert_eq!(left_alone(&second).len(), 4, "{}", second.stderr);
    assert_eq!(
        first.stdout, second.stdout,
        "the same manifests are reported"
    );
    let now: Vec<_> = watched.iter().map(|p| stamp(p)).collect();
    assert_eq!(stamps, now, "an unchanged output was written again");

    // Damage: the layout's top layer truncated, one byte of the docker archive changed in place (the same
    // size, the same inode). Both are written again, whole; the other outputs are still left alone.
    let blob = std::fs::read(&top_blob).unwrap();
    std::fs::write(&top_blob, &blob[..blob.len() / 2]).unwrap();
    let mut damaged = archive_bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&archive, &damaged).unwrap();
    let third = build("kiln/outputs:1.0");
    let notes = left_alone(&third);
    assert_eq!(notes.len(), 2, "{}", third.stderr);
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with(&oci_tar.display().to_string())),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with(&fs_tar.display().to_string())),
        "{notes:?}"
    );
    let repaired = std::fs::read(&top_blob).unwrap();
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&repaired))),
        top
    );
    assert_eq!(std::fs::read(&archive).unwrap(), archive_bytes);
    tool(
        "skopeo",
        &[
            "inspect",
            &format!("oci:{}:kiln/outputs:1.0", layout.display()),
        ],
    );
    // The index names the image by the whole name given to -t (the OCI annotation's grammar allows
    // `/` and `:`), not by its tag alone, and umoci finds it by that name.
    let index = crate::support::Layout::new(&layout).index();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert_eq!(names, ["kiln/outputs:1.0"], "{index}");
    // BuildKit's annotation for the normalised name, which containerd names an imported image by.
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        "docker.io/kiln/outputs:1.0"
    );
    tool(
        "umoci",
        &[
            "stat",
            "--image",
            &format!("{}:kiln/outputs:1.0", layout.display()),
        ],
    );

    // Another tag: the image outputs name it, so they are written again; the filesystem is the same.
    let fourth = build("kiln/outputs:2.0");
    let notes = left_alone(&fourth);
    assert_eq!(notes.len(), 1, "{}", fourth.stderr);
    assert!(
        notes[0].starts_with(&fs_tar.display().to_string()),
        "{notes:?}"
    );
    assert_ne!(stamp(&oci_tar), stamps[2]);
    let manifest = tool("tar", &["-xOf", archive.to_str().unwrap(), "manifest.json"]);
    assert!(manifest.contains("kiln/outputs:2.0"), "{manifest}");
    tool(
        "skopeo",
        &[
            "inspect",
            &format!("oci:{}:kiln/outputs:2.0", layout.display()),
        ],
    );
}

/// A snapshot is named by its step's cache key: after a prune the step runs again and may write other
/// bytes under the same name. A filesystem tar of the earlier result must not pass for the new one.
#[test]
fn a_rerun_step_rewrites_the_filesystem_tar() {
    let dir = tempdir("out-");
    let fs_tar = dir.path().join("rootfs.tar");
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN cat /proc/sys/kernel/random/uuid > /stamp\n",
    )]);
    let store = tempdir("store-");
    let build = || {
        let out = Kiln::build_in(store.path())
            .with_base()
            .arg("-o")
            .arg(format!("type=tar,dest={}", fs_tar.display()))
            .arg(ctx.path())
            .run();
        out.success();
        out
    };
    let stamp_in_tar = || tool("tar", &["-xOf", fs_tar.to_str().unwrap(), "stamp"]);
    build();
    let first = stamp_in_tar();
    let cached = build();
    assert!(
        cached.stderr.contains("nothing written"),
        "{}",
        cached.stderr
    );
    Kiln::bare()
        .args(["prune", "-f", "--store"])
        .arg(store.path())
        .run()
        .success();
    let rerun = build();
    assert_eq!(rerun.summary().1, 0, "{}", rerun.stderr);
    assert!(
        !rerun.stderr.contains("nothing written"),
        "{}",
        rerun.stderr
    );
    let second = stamp_in_tar();
    assert_ne!(first, second, "the tar still holds the first run's file");
}
