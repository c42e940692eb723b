//! A registry base image's config is read before lowering, as BuildKit resolves a base image before
//! converting: its Env expands `$PATH`, its WorkingDir anchors relative paths, its OnBuild triggers run
//! first. The image is pulled once per build (compiling and building see one manifest), an image pinned
//! by digest is not asked for again, and a registry that cannot be reached is an error at the FROM.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::support::{
    Kiln, Layout, base_image_with, context, start_registries, tempdir, tool, unpack,
};

struct Registry {
    addr: String,
    dir: PathBuf,
    /// The digest of `cfg/indexed:1`, an image index holding the base for linux/amd64.
    indexed: String,
}

/// Puts an OCI image index (one entry: the layout's image, for linux/amd64) between the layout's
/// `index.json` and its manifest, as multi-platform images are published; returns the index's digest.
fn index_of(layout: &std::path::Path) -> String {
    use sha2::Digest as _;
    let index_path = layout.join("index.json");
    let mut top: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entry = &top["manifests"][0];
    let image = json!({
        "mediaType": entry["mediaType"],
        "digest": entry["digest"],
        "size": entry["size"],
        "platform": {"architecture": "amd64", "os": "linux"},
    });
    let bytes = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [image],
    }))
    .unwrap();
    let hex = hex::encode(sha2::Sha256::digest(&bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), &bytes).unwrap();
    let digest = format!("sha256:{hex}");
    top["manifests"][0]["mediaType"] = json!("application/vnd.oci.image.index.v1+json");
    top["manifests"][0]["digest"] = json!(digest);
    top["manifests"][0]["size"] = json!(bytes.len());
    std::fs::write(&index_path, serde_json::to_vec(&top).unwrap()).unwrap();
    digest
}

/// One loopback registry holding the busybox base with a config of its own as `cfg/base:1`: Env,
/// WorkingDir and OnBuild set.
fn registry() -> Option<&'static Registry> {
    static REG: OnceLock<Option<Registry>> = OnceLock::new();
    REG.get_or_init(|| {
        let (dir, addrs) = start_registries("registry base config tests", &[], &["open"])?;
        let base = base_image_with(|c| {
            c["Env"] = json!(["PATH=/custom/bin:/bin", "GREETING=hello"]);
            c["WorkingDir"] = json!("/srv");
            c["OnBuild"] = json!(["RUN echo \"trig $GREETING\" > /trig"]);
        });
        let indexed = index_of(base.path());
        tool(
            "skopeo",
            &[
                "copy",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
                &format!("oci:{}:latest", base.path().display()),
                &format!("docker://{}/cfg/indexed:1", addrs[0]),
            ],
        );
        for repo in ["cfg/base:1", "cfg/pinned:1"] {
            tool(
                "skopeo",
                &[
                    "copy",
                    "--dest-tls-verify=false",
                    &format!("oci:{}:latest", base.path().display()),
                    &format!("docker://{}/{repo}", addrs[0]),
                ],
            );
        }
        Some(Registry {
            addr: addrs[0].clone(),
            dir,
            indexed,
        })
    })
    .as_ref()
}

/// How many times the registry has served a manifest of `repository` (from its access log).
fn manifest_requests(reg: &Registry, repository: &str) -> usize {
    let log = std::fs::read_to_string(reg.dir.join("open.log")).unwrap();
    let needle = format!("\"GET /v2/{repository}/manifests/");
    log.lines().filter(|l| l.contains(&needle)).count()
}

/// BuildKit v0.8 (dockerd 20.10, the same image in a loopback registry) gives the same /trig, /path, /pwd,
/// Env and WorkingDir, and no OnBuild.
#[test]
fn a_registry_bases_env_workdir_and_triggers_are_known_when_lowering() {
    let Some(reg) = registry() else { return };
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {}/cfg/base:1\nENV PATH=/x:$PATH\nWORKDIR rel\nRUN echo \"$PATH\" > /path && pwd > /pwd\n",
            reg.addr
        ),
    )]);
    let before = manifest_requests(reg, "cfg/base");
    let oci = tempdir("oci-");
    Kiln::new()
        .arg("-o")
        .arg(format!("type=oci,dest={}", oci.path().display()))
        .arg(ctx.path())
        .run()
        .success();
    assert_eq!(
        manifest_requests(reg, "cfg/base") - before,
        1,
        "the tag is resolved once, for compiling and building alike"
    );
    let unpacked = unpack(oci.path());
    let read = |p: &str| std::fs::read_to_string(unpacked.rootfs.join(p)).unwrap();
    assert_eq!(read("trig"), "trig hello\n", "the base image's trigger ran");
    assert_eq!(read("path"), "/x:/custom/bin:/bin\n");
    assert_eq!(read("pwd"), "/srv/rel\n");
    let config = Layout::new(oci.path()).config()["config"].clone();
    let env = config["Env"].as_array().unwrap();
    assert!(env.contains(&json!("PATH=/x:/custom/bin:/bin")), "{env:?}");
    assert_eq!(config["WorkingDir"], "/srv/rel");
    assert!(
        matches!(config["OnBuild"], Value::Null) || config["OnBuild"] == json!([]),
        "{}",
        config["OnBuild"]
    );
}

#[test]
fn an_image_pinned_by_digest_is_not_asked_for_again() {
    let Some(reg) = registry() else { return };
    let image = format!("{}/cfg/pinned:1", reg.addr);
    let seen: Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ],
    ))
    .unwrap();
    let digest = seen["Digest"].as_str().unwrap();
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {}/cfg/pinned@{digest}\nRUN cat /trig\n", reg.addr),
    )]);
    let kiln = Kiln::new();
    kiln.clone().arg(ctx.path()).run().success();
    let first = manifest_requests(reg, "cfg/pinned");
    kiln.clone()
        .arg("--no-cache")
        .arg(ctx.path())
        .run()
        .success();
    assert_eq!(manifest_requests(reg, "cfg/pinned"), first);
}

/// The same for a digest of an image index (how multi-platform images are pinned): the store remembers
/// which of its images the index chose.
#[test]
fn an_image_pinned_by_an_index_digest_is_not_asked_for_again() {
    let Some(reg) = registry() else { return };
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {}/cfg/indexed@{}\nRUN cat /trig\n",
            reg.addr, reg.indexed
        ),
    )]);
    let before = manifest_requests(reg, "cfg/indexed");
    let kiln = Kiln::new();
    kiln.clone().arg(ctx.path()).run().success();
    let first = manifest_requests(reg, "cfg/indexed");
    assert_eq!(first - before, 2, "the index, then the image it names");
    kiln.clone()
        .arg("--no-cache")
        .arg(ctx.path())
        .run()
        .success();
    assert_eq!(manifest_requests(reg, "cfg/indexed"), first);
}

#[test]
fn an_unreachable_registry_is_an_error_at_the_from() {
    // Port 9 (discard) on loopback: nothing answers.
    let ctx = context(&[(
        "Dockerfile",
        "FROM base AS ok\nRUN true\nFROM 127.0.0.1:9/kiln/offline:1\nCOPY --from=ok / /\n",
    )]);
    let out = Kiln::new().with_base().arg(ctx.path()).run();
    assert_ne!(out.code, Some(0));
    for want in [
        "cannot pull `127.0.0.1:9/kiln/offline:1`",
        "Dockerfile:3:6",
        "FROM 127.0.0.1:9/kiln/offline:1",
    ] {
        assert!(out.stderr.contains(want), "{want:?} in\n{}", out.stderr);
    }
    assert!(
        out.steps().is_empty(),
        "no step ran before the error:\n{}",
        out.stderr
    );
}
