//! `kiln build` flags read as buildx reads them: `-o -` and `dest=-` on stdout, the compression keys of
//! `-o`, `name=`, `--secret src=` without an id. Each image is judged by tar or skopeo.

use std::path::Path;

use crate::support::{Kiln, context, tempdir, tool, write};

const DOCKERFILE: &str = "FROM base\nRUN mkdir /app && echo hi > /app/hello\n";

/// Runs `kiln build ARGS CTX` with stdout sent to `out` (stdout carries binary data here).
fn build_to_stdout(args: &[&str], out: &Path) -> crate::support::Output {
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let run = Kiln::new()
        .with_base()
        .args(args)
        .arg(ctx.path())
        .current_dir(ctx.path())
        // Fixed times, so two builds give the same bytes.
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .wrapped(&[
            "sh",
            "-c",
            &format!("exec \"$@\" > {}", out.display()),
            "sh",
        ])
        .run();
    run.success();
    assert!(
        !ctx.path().join("-").exists(),
        "`dest=-` made a file named `-`"
    );
    run
}

#[test]
fn dash_output_is_the_filesystem_tar_on_stdout() {
    let dir = tempdir("stdout-");
    let tar = dir.path().join("fs.tar");
    build_to_stdout(&["-o", "-"], &tar);
    let listing = tool("tar", &["-tf", tar.to_str().unwrap()]);
    assert!(listing.lines().any(|l| l == "app/hello"), "{listing}");
    assert_eq!(
        tool("tar", &["-xOf", tar.to_str().unwrap(), "app/hello"]),
        "hi\n"
    );

    let spelled = dir.path().join("fs2.tar");
    build_to_stdout(&["-o", "type=tar,dest=-"], &spelled);
    assert!(
        std::fs::read(&tar).unwrap() == std::fs::read(&spelled).unwrap(),
        "`-o -` is not `-o type=tar,dest=-`"
    );
    // Keys are read case-insensitively, as buildx reads them.
    let capitals = dir.path().join("fs3.tar");
    build_to_stdout(&["-o", "Type=tar,Dest=-"], &capitals);
    assert!(
        std::fs::read(&tar).unwrap() == std::fs::read(&capitals).unwrap(),
        "`Type=tar,Dest=-` is not `type=tar,dest=-`"
    );
}

#[test]
fn oci_tar_on_stdout_carries_the_name_given() {
    let dir = tempdir("stdout-");
    let tar = dir.path().join("image.tar");
    build_to_stdout(
        &[
            "-t",
            "kiln/other:0",
            "-o",
            "type=oci,dest=-,name=kiln/named:2",
        ],
        &tar,
    );
    // skopeo reads the archive as an OCI image (nothing but the tar is on stdout).
    let inspect = tool(
        "skopeo",
        &["inspect", &format!("oci-archive:{}", tar.display())],
    );
    let json: serde_json::Value = serde_json::from_str(&inspect).expect("skopeo JSON");
    assert_eq!(
        json["Layers"].as_array().map(Vec::len),
        Some(2),
        "{inspect}"
    );
    let index = tool("tar", &["-xOf", tar.to_str().unwrap(), "index.json"]);
    assert!(
        index.contains("named:2") || index.contains("\"2\""),
        "{index}"
    );
    assert!(!index.contains("other"), "`name=` wins over -t: {index}");
}

/// The layer media types and digests skopeo reads from an OCI layout.
fn layers(layout: &Path) -> Vec<(String, String)> {
    let raw = tool(
        "skopeo",
        &["inspect", "--raw", &format!("oci:{}", layout.display())],
    );
    let manifest: serde_json::Value = serde_json::from_str(&raw).expect("a manifest");
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            (
                l["mediaType"].as_str().unwrap().to_string(),
                l["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn build_oci(output: &str, store: &Path) {
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    Kiln::build_in(store)
        .with_base()
        .args(["-o", output])
        .arg(ctx.path())
        .run()
        .success();
}

#[test]
fn output_compression_keys_are_honoured() {
    let dir = tempdir("compression-");
    let store = tempdir("store-");
    let out = |n: &str| dir.path().join(n);
    let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
    let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";

    // The base layer keeps its own compression, as BuildKit keeps it without force-compression.
    build_oci(
        &format!("type=oci,dest={},compression=zstd", out("z").display()),
        store.path(),
    );
    let z = layers(&out("z"));
    assert_eq!(z[0].0, gzip, "{z:?}");
    assert_eq!(z[1].0, zstd, "{z:?}");

    build_oci(
        &format!(
            "type=oci,dest={},compression=zstd,force-compression=true",
            out("f").display()
        ),
        store.path(),
    );
    let f = layers(&out("f"));
    assert!(f.iter().all(|(m, _)| m == zstd), "{f:?}");

    // Another level makes other bytes: the level reached the compressor.
    build_oci(
        &format!(
            "type=oci,dest={},compression=zstd,compression-level=19",
            out("l").display()
        ),
        store.path(),
    );
    let l = layers(&out("l"));
    assert_eq!(l[1].0, zstd);
    assert_ne!(
        l[1].1, z[1].1,
        "compression-level=19 gave the default's bytes"
    );

    // `compression=uncompressed` (BuildKit's spelling): the layer is its tar, digest and diff id alike,
    // and umoci unpacks it.
    build_oci(
        &format!(
            "type=oci,dest={},compression=uncompressed",
            out("u").display()
        ),
        store.path(),
    );
    let u = layers(&out("u"));
    assert_eq!(u[0].0, gzip, "{u:?}");
    assert_eq!(u[1].0, "application/vnd.oci.image.layer.v1.tar", "{u:?}");
    let blob = out("u")
        .join("blobs/sha256")
        .join(&u[1].1["sha256:".len()..]);
    let tar = std::fs::read(&blob).unwrap();
    use sha2::Digest as _;
    assert_eq!(
        u[1].1,
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&tar)))
    );
    assert!(
        tar.len() >= 1024 && tar.len() % 512 == 0,
        "{} bytes",
        tar.len()
    );
    let bundle = dir.path().join("bundle");
    tool(
        "umoci",
        &[
            "raw",
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:latest", out("u").display()),
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("app/hello")).unwrap(),
        "hi\n"
    );

    // A docker-archive holds its layers as tars: the build's own layer is never compressed for one,
    // so the store's only blob of it is its tar, named by its diff id (a fresh store: nothing else
    // made a blob of it).
    let fresh = tempdir("store-");
    let archive = out("image.tar");
    build_oci(
        &format!("type=docker,dest={}", archive.display()),
        fresh.path(),
    );
    let manifest: serde_json::Value = serde_json::from_str(&tool(
        "tar",
        &["-xOf", archive.to_str().unwrap(), "manifest.json"],
    ))
    .unwrap();
    let top = manifest[0]["Layers"].as_array().unwrap().last().unwrap();
    let diff_id = top.as_str().unwrap().trim_end_matches("/layer.tar");
    let blobs: Vec<String> = std::fs::read_dir(fresh.path().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        blobs.iter().any(|b| b == diff_id),
        "{diff_id} not in {blobs:?}"
    );
    let gzipped = blobs.iter().filter(|b| {
        let bytes = std::fs::read(fresh.path().join("blobs/sha256").join(b)).unwrap();
        bytes.starts_with(&[0x1f, 0x8b])
    });
    // The base image's own gzip layer is all the store holds compressed.
    assert_eq!(gzipped.count(), 1, "{blobs:?}");
}

#[test]
fn secret_without_id_is_named_after_its_file() {
    let dir = tempdir("secret-");
    let npmrc = dir.path().join("npmrc");
    write(&npmrc, "//registry.example/:_authToken=abcdef123456\n");
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN --mount=type=secret,id=npmrc,required=true grep -q _authToken /run/secrets/npmrc\n",
    )]);
    Kiln::new()
        .with_base()
        .arg("--secret")
        .arg(format!("src={}", npmrc.display()))
        .arg(ctx.path())
        .run()
        .success();
}

/// buildx's `type=image` without `push` (and `type=registry,push=false`) keep the image where the
/// build put it, pushing nothing: kiln's store.
#[test]
fn image_output_without_push_pushes_nothing() {
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    for output in [
        "type=image,name=kiln/kept:1",
        "type=registry,name=kiln/kept:1,push=false",
    ] {
        let out = Kiln::new()
            .with_base()
            .args(["-o", output])
            .arg(ctx.path())
            .run();
        out.success();
        assert!(!out.stderr.contains("pushed"), "{output}: {}", out.stderr);
        assert!(out.stdout.trim().is_empty(), "{output}: {}", out.stdout);
    }
}
