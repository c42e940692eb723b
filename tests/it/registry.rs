//! Registries: kiln pulls `FROM` images from and pushes results to real Distribution registries on loopback
//! (one open, one behind htpasswd basic auth), and skopeo, an independent client, judges what it pushed.
//! Skipped, with a note, when Debian's `docker-registry` is not installed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::Value;

use crate::support::{Kiln, base_image, context, start_registries, tempdir, tool, write};

const USER: &str = "kiln";
const PASSWORD: &str = "kiln-test-password-7f3a";

/// The two registries of this test process, with the base image already in both.
struct Registries {
    open: String,
    auth: String,
    dir: PathBuf,
}

/// Starts the registries (once per test process) and pushes the offline busybox image into each with
/// skopeo, so kiln pulls something it did not put there itself. `None` when docker-registry is missing.
fn registries() -> Option<&'static Registries> {
    static REGS: OnceLock<Option<Registries>> = OnceLock::new();
    REGS.get_or_init(|| {
        let (dir, addrs) = start_registries(
            "registry tests",
            &["--user", USER, "--password", PASSWORD],
            &["open", "auth"],
        )?;
        let regs = Registries {
            open: addrs[0].clone(),
            auth: addrs[1].clone(),
            dir,
        };
        let base = format!("oci:{}:latest", base_image().display());
        tool(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                &base,
                &format!("docker://{}/busybox:latest", regs.open),
            ],
        );
        tool(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("{USER}:{PASSWORD}"),
                &base,
                &format!("docker://{}/busybox:latest", regs.auth),
            ],
        );
        Some(regs)
    })
    .as_ref()
}

/// A HOME whose ~/.docker/config.json holds `password` for `registry`.
fn home_with_login(registry: &str, password: &str) -> tempfile::TempDir {
    let home = tempdir("home-");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    write(
        &home.path().join(".docker/config.json"),
        format!(r#"{{"auths": {{"{registry}": {{"auth": "{auth}"}}}}}}"#),
    );
    home
}

/// How many blobs of `repository` the registry has served so far (from its access log).
fn blob_downloads(regs: &Registries, which: &str, repository: &str) -> usize {
    let log = std::fs::read_to_string(regs.dir.join(format!("{which}.log"))).unwrap();
    let needle = format!("\"GET /v2/{repository}/blobs/");
    log.lines().filter(|l| l.contains(&needle)).count()
}

fn inspect(reference: &str, creds: Option<&str>) -> Value {
    let mut args = vec!["inspect", "--tls-verify=false"];
    if let Some(c) = creds {
        args.extend(["--creds", c]);
    }
    let r = format!("docker://{reference}");
    args.push(&r);
    serde_json::from_str(&tool("skopeo", &args)).expect("skopeo inspect prints JSON")
}

fn layers_of(layout: &Path) -> Vec<String> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..])).unwrap(),
    )
    .unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn builds_from_a_registry_image_and_pushes_the_result() {
    let Some(regs) = registries() else { return };
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM {}/busybox\nRUN echo pushed-by-kiln > /hello\nCMD [\"cat\", \"/hello\"]\n",
            regs.open
        ),
    )]);
    let target = format!("{}/kiln/test:1", regs.open);
    let oci = tempdir("oci-");
    let kiln = Kiln::new();
    let out = kiln
        .clone()
        .args(["--push", "-t", &target, "-o"])
        .arg(format!("type=oci,dest={}", oci.path().display()))
        .arg(ctx.path())
        .run();
    out.success();
    assert!(
        out.stderr
            .contains(&format!("to {target}, manifest sha256:")),
        "{}",
        out.stderr
    );

    // skopeo reads back exactly what kiln exported locally: same manifest, same layers.
    let seen = inspect(&target, None);
    let pushed_digest = seen["Digest"].as_str().unwrap();
    assert!(
        out.stdout.lines().all(|l| l == pushed_digest),
        "stdout: {}",
        out.stdout
    );
    let layers: Vec<String> = seen["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert_eq!(layers, layers_of(oci.path()));
    assert_eq!(layers.len(), 2, "the base layer and the RUN layer");
    // The base layer is the very blob the registry served, reused byte for byte.
    assert_eq!(layers[0], layers_of(base_image())[0]);

    // And skopeo can copy it out again, every blob verified, with the RUN's file in it.
    let copy = tempdir("copy-");
    tool(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{target}"),
            &format!("oci:{}:latest", copy.path().display()),
        ],
    );
    assert_eq!(layers_of(copy.path()), layers);
    let unpacked = crate::support::unpack(copy.path());
    assert_eq!(
        std::fs::read_to_string(unpacked.rootfs.join("hello")).unwrap(),
        "pushed-by-kiln\n"
    );

    // The same image pushed again: every blob is already there, so only the manifest goes up.
    let uploads_before = std::fs::read_to_string(regs.dir.join("open.log"))
        .unwrap()
        .matches("\"PATCH /v2/kiln/test/blobs/uploads/")
        .count();
    kiln.clone()
        .args([
            "-o",
            &format!("type=registry,name={}/kiln/test:2", regs.open),
        ])
        .arg(ctx.path())
        .run()
        .success();
    let uploads_after = std::fs::read_to_string(regs.dir.join("open.log"))
        .unwrap()
        .matches("\"PATCH /v2/kiln/test/blobs/uploads/")
        .count();
    assert_eq!(uploads_before, uploads_after, "no blob is uploaded twice");
    assert_eq!(
        inspect(&format!("{}/kiln/test:2", regs.open), None)["Digest"],
        seen["Digest"]
    );

    // Once more to a tag that already names this manifest: not even the manifest is put again.
    let manifest_puts = || {
        std::fs::read_to_string(regs.dir.join("open.log"))
            .unwrap()
            .matches("\"PUT /v2/kiln/test/manifests/2 ")
            .count()
    };
    let puts_before = manifest_puts();
    assert_eq!(puts_before, 1, "the first push of :2 put its manifest");
    let again = kiln
        .clone()
        .args([
            "-o",
            &format!("type=registry,name={}/kiln/test:2", regs.open),
        ])
        .arg(ctx.path())
        .run();
    again.success();
    assert!(again.stderr.contains("nothing pushed"), "{}", again.stderr);
    assert_eq!(again.stdout.trim(), pushed_digest);
    assert_eq!(manifest_puts(), puts_before, "the manifest was put again");
}

#[test]
fn a_second_pull_transfers_no_layer() {
    let Some(regs) = registries() else { return };
    // A repository of its own, so the log counts only this test's downloads.
    let repo_name = "pull-once/busybox";
    let image = format!("{}/{repo_name}:latest", regs.open);
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:latest", base_image().display()),
            &format!("docker://{image}"),
        ],
    );
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {image}\nRUN echo one > /one\n"),
    )]);
    let kiln = Kiln::new();
    kiln.clone().arg(ctx.path()).run().success();
    let first = blob_downloads(regs, "open", repo_name);
    assert_eq!(first, 2, "the config and the one layer, each once");

    // The store keeps the pulled image as a layout named by its manifest digest, its layer in the blob store.
    let images: Vec<_> = std::fs::read_dir(kiln.store().join("images"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(images.len(), 1);
    let layer = &layers_of(base_image())[0];
    let stored = kiln
        .store()
        .join("blobs/sha256")
        .join(&layer["sha256:".len()..]);
    let mtime = std::fs::metadata(&stored).unwrap().modified().unwrap();

    // Again, even with --no-cache: the manifest is resolved, nothing else is fetched.
    kiln.clone()
        .arg("--no-cache")
        .arg(ctx.path())
        .run()
        .success();
    assert_eq!(blob_downloads(regs, "open", repo_name), first);
    assert_eq!(
        std::fs::metadata(&stored).unwrap().modified().unwrap(),
        mtime
    );
}

#[test]
fn the_auth_registry_takes_credentials_from_docker_config() {
    let Some(regs) = registries() else { return };
    let home = home_with_login(&regs.auth, PASSWORD);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {}/busybox:latest\nRUN echo private > /p\n", regs.auth),
    )]);
    let target = format!("{}/kiln/private:1", regs.auth);
    let out = Kiln::new()
        .env("HOME", home.path())
        .args(["--push", "-t", &target])
        .arg(ctx.path())
        .run();
    out.success();
    assert!(!out.stdout.contains(PASSWORD) && !out.stderr.contains(PASSWORD));
    let seen = inspect(&target, Some(&format!("{USER}:{PASSWORD}")));
    assert_eq!(seen["Layers"].as_array().unwrap().len(), 2);
}

#[test]
fn a_wrong_password_fails_clearly_and_is_never_shown() {
    let Some(regs) = registries() else { return };
    let wrong = "not-the-password-9c1e";
    let home = home_with_login(&regs.auth, wrong);
    let ctx = context(&[("Dockerfile", &format!("FROM {}/busybox\n", regs.auth))]);
    let out = Kiln::new().env("HOME", home.path()).arg(ctx.path()).run();
    assert_ne!(out.code, Some(0));
    // The renderer wraps long messages; compare the words, not the line breaks.
    let words = |t: &str| {
        t.split_whitespace()
            .filter(|w| *w != "|")
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        words(&out.stderr).contains(&format!(
            "authentication failed for {} (check ~/.docker/config.json)",
            regs.auth
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("{}/busybox:latest", regs.auth)),
        "{}",
        out.stderr
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(wrong) && !text.contains(PASSWORD), "{text}");
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{wrong}"));
        assert!(!text.contains(&encoded), "{text}");
    }

    // Pushing with the wrong password fails the same way, after the build, before anything is sent.
    let open_ctx = context(&[("Dockerfile", &format!("FROM {}/busybox\n", regs.open))]);
    let out = Kiln::new()
        .env("HOME", home.path())
        .args(["--push", "-t", &format!("{}/kiln/nope:1", regs.auth)])
        .arg(open_ctx.path())
        .run();
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("authentication failed for"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(wrong), "{}", out.stderr);

    // No credentials at all: says that, and how to fix it.
    let empty_home = tempdir("home-");
    let out = Kiln::new()
        .env("HOME", empty_home.path())
        .arg(ctx.path())
        .run();
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("requires authentication"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_missing_image_and_an_unreachable_registry_are_named() {
    let Some(regs) = registries() else { return };
    let ctx = context(&[("Dockerfile", &format!("FROM {}/no/such:image\n", regs.open))]);
    let out = Kiln::new().arg(ctx.path()).run();
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr
            .contains(&format!("cannot pull `{}/no/such:image`", regs.open))
            && out.stderr.contains("not found"),
        "{}",
        out.stderr
    );
}

#[test]
fn references_are_checked_before_the_build_and_graph_stays_offline() {
    // Port 9 (discard) on loopback: nothing answers, so any network use would fail the command.
    let ctx = context(&[("Dockerfile", "FROM 127.0.0.1:9/kiln/offline:1\nRUN true\n")]);
    let out = Kiln::graph().arg(ctx.path()).run();
    out.success();
    assert!(
        out.stdout.contains("127.0.0.1:9/kiln/offline:1"),
        "{}",
        out.stdout
    );

    let bad = context(&[("Dockerfile", "FROM Not/Valid:ref\nRUN true\n")]);
    let out = Kiln::new().arg(bad.path()).run();
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("invalid image reference `Not/Valid:ref`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("lower-case"), "{}", out.stderr);

    let out = Kiln::new().args(["--push"]).arg(ctx.path()).run();
    out.expect_code(2);
    assert!(out.stderr.contains("--push needs a name"), "{}", out.stderr);
}

/// A proxy in front of a registry that misbehaves first: it drops the first connection outright, then
/// answers the first `failures` manifest or blob requests with 503, then forwards everything faithfully.
fn flaky_proxy(upstream: &str, failures: usize) -> String {
    use std::io::{Read as _, Write as _};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        let mut failed = 0;
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(mut client) = conn else { continue };
            if i == 0 {
                continue; // dropped: the client sees its connection closed
            }
            // Read the request head to see what is asked for.
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && client.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let text = String::from_utf8_lossy(&head);
            if failed < failures && (text.contains("/manifests/") || text.contains("/blobs/")) {
                failed += 1;
                let _ = client.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            let Ok(mut server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let _ = server.write_all(&head);
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut s2, &mut c2));
            std::thread::spawn(move || std::io::copy(&mut client, &mut server));
        }
    });
    addr
}

#[test]
fn transient_failures_are_retried() {
    let Some(regs) = registries() else { return };
    let proxy = flaky_proxy(&regs.open, 2);
    let ctx = context(&[("Dockerfile", &format!("FROM {proxy}/busybox\nRUN true\n"))]);
    Kiln::new().arg(ctx.path()).run().success();
}
