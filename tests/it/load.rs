//! Where images go: `--load` into a real Docker Engine (Debian's dockerd on a private socket, with its own
//! data root) and into podman's Docker-compatible API service (its own storage root), judged by
//! `docker image inspect` / `podman image inspect` and a `docker run`; `-t` alone keeps the image in the
//! store, where `kiln images` lists it and `kiln image export|push|rm` reach it, with the digest a direct
//! build gives. Daemon tests are skipped, with a note, when their Debian package is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{
    Kiln, context, layer_media_types, repo, start_registries, tempdir, tool, write,
};

const DOCKERFILE: &str = "FROM base
ENV GREETING=hello-from-kiln
LABEL org.example.loaded=yes
RUN echo loaded > /loaded
CMD [\"/bin/busybox\", \"cat\", \"/loaded\"]
";

/// The 20.10 client that matches Debian's daemon (a newer one may be earlier in PATH).
const DOCKER: &str = "/usr/bin/docker";

/// A private dockerd, stopped when the test ends (pass or fail).
pub(crate) struct Dockerd {
    dir: tempfile::TempDir,
}

impl Dockerd {
    pub(crate) fn start() -> Option<Dockerd> {
        if !Path::new("/usr/sbin/dockerd").is_file() || !Path::new(DOCKER).is_file() {
            crate::support::skip_without(
                "--load into dockerd",
                "docker.io is not installed (apt-get install docker.io)",
            );
            return None;
        }
        let dir = tempdir("dockerd-");
        let script = repo().join("bench/peers/start-dockerd.sh");
        tool("bash", &[script.to_str()?, dir.path().to_str()?, "start"]);
        Some(Dockerd { dir })
    }

    pub(crate) fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    pub(crate) fn docker(&self, args: &[&str]) -> String {
        let out = Command::new(DOCKER)
            .args(args)
            .env("DOCKER_HOST", self.host())
            .output()
            .expect("cannot run docker");
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let script = repo().join("bench/peers/start-dockerd.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg(self.dir.path())
            .arg("stop")
            .output();
    }
}

fn build(store: &Path, args: &[&str], env: &[(&str, &str)]) -> crate::support::Output {
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let mut k = Kiln::build_in(store).with_base().args(args.iter().copied());
    for (key, value) in env {
        k = k.env(key, value);
    }
    k.arg(ctx.path()).run()
}

/// `docker image inspect` of what kiln loaded: its tags and its config.
fn assert_config(inspect: &str, tags: &[&str]) {
    let json: serde_json::Value = serde_json::from_str(inspect).expect("inspect JSON");
    let image = &json[0];
    let repo_tags: Vec<&str> = image["RepoTags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    for tag in tags {
        assert!(repo_tags.contains(tag), "{tag} not in {repo_tags:?}");
    }
    let env = image["Config"]["Env"].to_string();
    assert!(env.contains("GREETING=hello-from-kiln"), "{env}");
    assert_eq!(
        image["Config"]["Cmd"],
        serde_json::json!(["/bin/busybox", "cat", "/loaded"])
    );
    assert_eq!(image["Config"]["Labels"]["org.example.loaded"], "yes");
}

#[test]
fn load_into_docker_engine() {
    let Some(dockerd) = Dockerd::start() else {
        return;
    };
    let store = tempdir("store-");
    let host = dockerd.host();
    let out = build(
        store.path(),
        &[
            "-t",
            "kiln-load/hello:1.0",
            "-t",
            "kiln-load/second",
            "--load",
        ],
        &[("DOCKER_HOST", &host)],
    );
    out.success();
    assert!(
        out.stderr.contains("Loaded image: kiln-load/hello:1.0"),
        "{}",
        out.stderr
    );
    let inspect = dockerd.docker(&["image", "inspect", "kiln-load/hello:1.0"]);
    assert_config(
        &inspect,
        &["kiln-load/hello:1.0", "kiln-load/second:latest"],
    );
    // The loaded image runs: its layers and config are whole. Under heavy load, Debian's dockerd now and
    // then fails to start a container (runc: "stat /bin/busybox: no such file") of an image whose
    // export lists the file and which runs moments later, so a start is tried a few times.
    let run = || {
        Command::new(DOCKER)
            .args(["run", "--rm", "--network=none", "kiln-load/hello:1.0"])
            .env("DOCKER_HOST", &host)
            .output()
            .expect("cannot run docker")
    };
    let mut ran = run();
    for _ in 0..4 {
        if ran.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
        ran = run();
    }
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout),
        "loaded\n",
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );

    // The daemon's own refusal is shown: docker tags an image, so a name with a digest (which buildx and
    // kiln accept for -t) is refused by the daemon, not by kiln.
    let pinned = format!("kiln-load/pinned@sha256:{}", "a".repeat(64));
    let out = build(
        store.path(),
        &["-t", &pinned, "--load"],
        &[("DOCKER_HOST", &host)],
    );
    out.expect_code(1);
    assert!(
        out.stderr.contains(&format!(
            "the daemon at {} could not load the image: invalid tag \"{pinned}\"",
            host.trim_start_matches("unix://")
        )),
        "{}",
        out.stderr
    );

    // `-o type=docker` without `dest` loads too (buildx's reading); the endpoint comes from the current
    // docker context when DOCKER_HOST is not set.
    let config = tempdir("docker-config-");
    let name = "kiln-test-context";
    use sha2::Digest as _;
    let meta = config
        .path()
        .join("contexts/meta")
        .join(hex::encode(sha2::Sha256::digest(name)));
    write(
        &meta.join("meta.json"),
        serde_json::json!({"Name": name, "Endpoints": {"docker": {"Host": host}}}).to_string(),
    );
    write(
        &config.path().join("config.json"),
        format!(r#"{{"currentContext": "{name}"}}"#),
    );
    let docker_config = config.path().to_str().unwrap();
    let out = build(
        store.path(),
        &["-t", "kiln-load/by-context:2", "-o", "type=docker"],
        &[("DOCKER_HOST", ""), ("DOCKER_CONFIG", docker_config)],
    );
    out.success();
    assert_config(
        &dockerd.docker(&["image", "inspect", "kiln-load/by-context:2"]),
        &["kiln-load/by-context:2"],
    );

    // A kept image is loaded later by `kiln image export --load`.
    build(store.path(), &["-t", "kiln-load/kept:3"], &[]).success();
    Kiln::bare()
        .args(["image", "export", "kiln-load/kept:3", "--load", "--store"])
        .arg(store.path())
        .env("DOCKER_HOST", &host)
        .run()
        .success();
    assert_config(
        &dockerd.docker(&["image", "inspect", "kiln-load/kept:3"]),
        &["kiln-load/kept:3"],
    );

    // A layer blob damaged in the store: the archive cannot be made, that is what the error says, and
    // the daemon is left without the image.
    let manifest = kept_manifest(store.path(), "kiln-load/kept:3");
    let top = manifest["layers"].as_array().unwrap().last().unwrap();
    // The build's own layer is kept as its tar: a daemon load takes it as it is.
    assert_eq!(top["mediaType"], "application/vnd.oci.image.layer.v1.tar");
    let top = top["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let blob = store.path().join("blobs/sha256").join(top);
    let bytes = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, &bytes[..bytes.len() / 2]).unwrap();
    build(store.path(), &["-t", "kiln-load/broken:4"], &[]).success();
    let out = Kiln::bare()
        .args(["image", "export", "kiln-load/broken:4", "--load", "--store"])
        .arg(store.path())
        .env("DOCKER_HOST", &host)
        .run();
    out.expect_code(1);
    assert!(
        out.stderr.contains("cannot write the image for the daemon"),
        "{}",
        out.stderr
    );
    let inspect = Command::new(DOCKER)
        .args(["image", "inspect", "kiln-load/broken:4"])
        .env("DOCKER_HOST", &host)
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "the daemon has the broken image");
}

/// podman's API service on a socket of its own, with its storage under a temp dir; killed when done.
struct Podman {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Podman {
    fn start() -> Option<Podman> {
        if Command::new("podman").arg("--version").output().is_err() {
            crate::support::skip_without(
                "--load into podman",
                "podman is not installed (apt-get install podman)",
            );
            return None;
        }
        let dir = tempdir("podman-");
        let mut args = Self::storage(dir.path());
        args.extend(["system", "service", "--time=0"].map(String::from));
        args.push(format!(
            "unix://{}",
            dir.path().join("podman.sock").display()
        ));
        let child = Command::new("podman")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot start podman system service");
        let podman = Podman { dir, child };
        for _ in 0..100 {
            if std::os::unix::net::UnixStream::connect(podman.socket()).is_ok() {
                return Some(podman);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "podman system service did not listen on {}",
            podman.socket().display()
        );
    }

    /// Everything podman keeps, under `dir`: nothing global is touched.
    fn storage(dir: &Path) -> Vec<String> {
        let at = |sub: &str| dir.join(sub).display().to_string();
        vec![
            "--root".into(),
            at("root"),
            "--runroot".into(),
            at("run"),
            "--tmpdir".into(),
            at("tmp"),
            "--storage-driver".into(),
            "vfs".into(),
            "--cgroup-manager".into(),
            "cgroupfs".into(),
            "--events-backend".into(),
            "file".into(),
        ]
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("podman.sock")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn load_into_podman_service() {
    let Some(podman) = Podman::start() else {
        return;
    };
    let store = tempdir("store-");
    let host = format!("unix://{}", podman.socket().display());
    let out = build(
        store.path(),
        &["-t", "kiln-load/podman:1.0", "--load"],
        &[("DOCKER_HOST", &host)],
    );
    out.success();
    let mut args = Podman::storage(podman.dir.path());
    args.extend(["image", "inspect", "kiln-load/podman:1.0"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let inspect = tool("podman", &args);
    // podman qualifies a short name as `localhost/...`, as `podman load` does.
    assert_config(&inspect, &["localhost/kiln-load/podman:1.0"]);

    // `podman load` of an OCI archive names the image by its index entry's ref name: the whole name
    // given to -t (the tag alone, as kiln wrote it before, made podman name it `localhost/1.0:latest`).
    let dir = tempdir("oci-");
    let archive = dir.path().join("image.tar");
    build(
        store.path(),
        &[
            "-t",
            "kiln-load/oci:1.0",
            "-o",
            &format!("type=oci,dest={}", archive.display()),
        ],
        &[],
    )
    .success();
    let mut args = Podman::storage(podman.dir.path());
    args.extend(["load", "-i"].map(String::from));
    args.push(archive.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let loaded = tool("podman", &args);
    assert!(loaded.contains("docker.io/kiln-load/oci:1.0"), "{loaded}");
}

/// The manifest of the image kept in `store` as `name`, as the store's record of the name points at it.
fn kept_manifest(store: &Path, name: &str) -> serde_json::Value {
    let record = std::fs::read_dir(store.join("names"))
        .unwrap()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(e.unwrap().path()).unwrap())
                .unwrap()
        })
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no record of {name}"));
    let digest = record["manifest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    serde_json::from_slice(&std::fs::read(store.join("blobs/sha256").join(digest)).unwrap())
        .unwrap()
}

/// The manifest digest of `name` in the OCI layout at `dir`, as skopeo reads it.
fn skopeo_digest(dir: &Path, name: &str) -> String {
    let inspect = tool(
        "skopeo",
        &["inspect", &format!("oci:{}:{name}", dir.display())],
    );
    let json: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    json["Digest"].as_str().unwrap().to_string()
}

#[test]
fn a_tag_without_an_output_keeps_the_image_in_the_store() {
    let store = tempdir("store-");
    let name = "kiln-kept/app:1.0";
    // Two builds give one digest only with a fixed epoch (configs carry the build's time otherwise).
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];
    let out = build(store.path(), &["-t", name], &epoch);
    out.success();
    assert!(
        out.stderr.contains("warning: no output specified")
            && out
                .stderr
                .contains(&format!("kept in kiln's store as {name}")),
        "{}",
        out.stderr
    );
    let images = |store: &Path| {
        let out = Kiln::bare().args(["images", "--store"]).arg(store).run();
        out.success();
        out.stdout
    };
    let listed = images(store.path());
    let kept = kept_manifest(store.path(), name);
    // `kiln images` shows the image ID, the config's digest, as `docker images` does.
    let id = kept["config"]["digest"].as_str().unwrap();
    assert!(
        listed.contains(name) && listed.contains(&id[..19]),
        "{listed}"
    );
    assert!(
        out.stderr.contains(&format!("image ID {id}")),
        "{}",
        out.stderr
    );
    // The build's own layer is kept uncompressed; the OCI layout below has it compressed.
    let own = kept["layers"].as_array().unwrap().last().unwrap();
    assert_eq!(own["mediaType"], "application/vnd.oci.image.layer.v1.tar");

    // `kiln image export` writes the digest a direct `-o type=oci` build of the same input gives.
    let dir = tempdir("out-");
    let exported = dir.path().join("exported");
    let export = |store: &Path, output: String| {
        Kiln::bare()
            .args(["image", "export", name, "-o", &output, "--store"])
            .arg(store)
            .run()
    };
    export(
        store.path(),
        format!("type=oci,dest={}", exported.display()),
    )
    .success();
    let direct = dir.path().join("direct");
    let fresh = tempdir("store-");
    let direct_archive = dir.path().join("direct.tar");
    build(
        fresh.path(),
        &[
            "-t",
            name,
            "-o",
            &format!("type=oci,dest={}", direct.display()),
            "-o",
            &format!("type=docker,dest={}", direct_archive.display()),
        ],
        &epoch,
    )
    .success();
    let digest = skopeo_digest(&direct, name);
    assert_eq!(skopeo_digest(&exported, name), digest);
    // What the output asks of compression is honoured, as the direct build honours it; with
    // `force-compression` the base image's layer is compressed so too.
    for asked in [
        "compression=zstd,compression-level=5",
        "force-compression=true",
    ] {
        let (exported, direct) = (dir.path().join("asked"), dir.path().join("asked-direct"));
        let _ = (
            std::fs::remove_dir_all(&exported),
            std::fs::remove_dir_all(&direct),
        );
        export(
            store.path(),
            format!("type=oci,dest={},{asked}", exported.display()),
        )
        .success();
        let output = format!("type=oci,dest={},{asked}", direct.display());
        build(fresh.path(), &["-t", name, "-o", &output], &epoch).success();
        let raw = tool(
            "skopeo",
            &[
                "inspect",
                "--raw",
                &format!("oci:{}:{name}", exported.display()),
            ],
        );
        let types = layer_media_types(&serde_json::from_str(&raw).unwrap());
        let compressed = if asked.contains("zstd") {
            "+zstd"
        } else {
            "+gzip"
        };
        assert!(
            types.last().unwrap().ends_with(compressed),
            "{asked}: {types:?}"
        );
        if asked.contains("force") {
            assert!(types.iter().all(|t| t.ends_with(compressed)), "{types:?}");
        } else {
            assert_eq!(skopeo_digest(&exported, name), skopeo_digest(&direct, name));
        }
    }
    // The layout's entry is named `kiln-kept/app:1.0`; `oci-layout://DIR:TAG` still finds it by its tag.
    let on_top = context(&[("Dockerfile", "FROM kept\nRUN /bin/busybox cat /loaded\n")]);
    Kiln::build_in(store.path())
        .arg("--build-context")
        .arg(format!("kept=oci-layout://{}:1.0", exported.display()))
        .arg(on_top.path())
        .run()
        .success();
    let archive = dir.path().join("image.tar");
    export(
        store.path(),
        format!("type=docker,dest={}", archive.display()),
    )
    .success();
    let manifest = tool("tar", &["-xOf", archive.to_str().unwrap(), "manifest.json"]);
    assert!(manifest.contains(name), "{manifest}");
    // The very bytes the build writes as a docker-archive (dated by the same SOURCE_DATE_EPOCH).
    assert!(
        std::fs::read(&archive).unwrap() == std::fs::read(&direct_archive).unwrap(),
        "the exported docker-archive differs from the build's"
    );

    // `kiln prune` keeps what a name holds: the image is still whole afterwards.
    Kiln::bare()
        .args(["prune", "-f", "--keep-storage", "0", "--store"])
        .arg(store.path())
        .run()
        .success();
    let again = dir.path().join("again");
    export(store.path(), format!("type=oci,dest={}", again.display())).success();
    assert_eq!(skopeo_digest(&again, name), digest);

    // A filesystem output needs the build's snapshots, not an image: refused with a hint.
    let refused = export(
        store.path(),
        format!("type=local,dest={}", dir.path().join("fs").display()),
    );
    refused.expect_code(2);
    assert!(
        refused.stderr.contains("filesystem output"),
        "{}",
        refused.stderr
    );

    Kiln::bare()
        .args(["image", "rm", name, "--store"])
        .arg(store.path())
        .run()
        .success();
    assert!(!images(store.path()).contains(name));
    let gone = export(store.path(), format!("type=oci,dest={}", again.display()));
    gone.expect_code(2);
    assert!(
        gone.stderr
            .contains(&format!("no image named `{name}` in the store"))
            && gone.stderr.contains("kiln image export kiln-kept/app:1.0")
            && gone.stderr.contains('^'),
        "{}",
        gone.stderr
    );
}

/// The build's own layer of a kept image is held as its snapshot and digests: no tar is written until
/// the image leaves the store, then the tar made from the snapshot is the one the build would have
/// written (the digest a direct build gives); a prune keeps the snapshot while the name holds it, and a
/// snapshot changed behind the store's back is refused, not exported under the old digest.
#[test]
fn a_kept_layer_is_written_only_when_it_leaves() {
    let store = tempdir("store-");
    let name = "kiln-kept/unwritten:1";
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];
    build(store.path(), &["-t", name], &epoch).success();
    let own = |name: &str| {
        let kept = kept_manifest(store.path(), name);
        let digest = kept["layers"].as_array().unwrap().last().unwrap()["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        store.path().join("blobs/sha256").join(digest)
    };
    assert!(!own(name).exists(), "the kept layer's tar was written");
    let prune = || {
        Kiln::bare()
            .args(["prune", "-f", "--keep-storage", "0", "--store"])
            .arg(store.path())
            .run()
            .success();
    };
    prune();
    let dir = tempdir("out-");
    let export = |name: &str, dest: &Path| {
        Kiln::bare()
            .args(["image", "export", name, "-o"])
            .arg(format!("type=oci,dest={}", dest.display()))
            .arg("--store")
            .arg(store.path())
            .run()
    };
    export(name, &dir.path().join("exported")).success();
    assert!(own(name).is_file(), "the layer left without its tar kept");
    let direct = dir.path().join("direct");
    let output = format!("type=oci,dest={}", direct.display());
    build(
        tempdir("store-").path(),
        &["-t", name, "-o", &output],
        &epoch,
    )
    .success();
    assert_eq!(
        skopeo_digest(&dir.path().join("exported"), name),
        skopeo_digest(&direct, name)
    );

    // Another image, its layer's snapshot changed in the store before it leaves.
    let other = "kiln-kept/changed:1";
    let ctx = context(&[("Dockerfile", "FROM base\nRUN echo changed > /changed\n")]);
    Kiln::build_in(store.path())
        .with_base()
        .args(["-t", other])
        .arg(ctx.path())
        .run()
        .success();
    let record = std::fs::read_dir(store.path().join("names"))
        .unwrap()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(e.unwrap().path()).unwrap())
                .unwrap()
        })
        .find(|r| r["name"] == other)
        .unwrap();
    let snapshot = record["snapshots"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let snapshot = store.path().join("snapshots").join(snapshot);
    std::fs::write(snapshot.join("changed"), "tampered\n").unwrap();
    let refused = export(other, &dir.path().join("tampered"));
    refused.expect_code(1);
    assert!(
        refused.stderr.contains("is damaged") && !own(other).exists(),
        "{}",
        refused.stderr
    );

    // Once no name holds it, a prune removes the snapshot.
    Kiln::bare()
        .args(["image", "rm", other, "--store"])
        .arg(store.path())
        .run()
        .success();
    prune();
    assert!(
        !snapshot.exists(),
        "a snapshot no name holds outlived a prune"
    );
}

/// A name rebuilt after an edit keeps the digest a fresh build gives: with `SOURCE_DATE_EPOCH` the COPY
/// layer's tar begins as the one it replaces, and its digest resumes from that one's past the entries
/// they share; the layer written as it leaves is checked against it.
#[test]
fn a_rebuilt_kept_layer_has_the_digest_a_fresh_build_gives() {
    let store = tempdir("store-");
    let name = "kiln-kept/rebuilt:1";
    let epoch = [("SOURCE_DATE_EPOCH", "1700000000")];
    let ctx = context(&[
        ("Dockerfile", "FROM base\nCOPY . /data/\n"),
        ("a/first", "first\n"),
        ("z/last", "last\n"),
    ]);
    let build = |store: &Path, extra: &[&str]| {
        let mut k = Kiln::build_in(store).with_base().args(["-t", name]);
        k = k.args(extra.iter().copied()).env(epoch[0].0, epoch[0].1);
        k.arg(ctx.path()).run().success();
    };
    build(store.path(), &[]);
    let dir = tempdir("out-");
    for (n, content) in ["edited\n", "edited again, longer\n"].iter().enumerate() {
        write(&ctx.path().join("z/last"), content);
        build(store.path(), &[]);
        let exported = dir.path().join(format!("exported{n}"));
        Kiln::bare()
            .args(["image", "export", name, "-o"])
            .arg(format!("type=oci,dest={}", exported.display()))
            .arg("--store")
            .arg(store.path())
            .run()
            .success();
        let direct = dir.path().join(format!("direct{n}"));
        let output = format!("type=oci,dest={}", direct.display());
        build(tempdir("store-").path(), &["-o", &output]);
        assert_eq!(skopeo_digest(&exported, name), skopeo_digest(&direct, name));
    }
}

#[test]
fn a_kept_image_is_pushed_by_name() {
    let Some((_dir, addrs)) = start_registries("kiln image push", &[], &["open"]) else {
        return;
    };
    let store = tempdir("store-");
    let name = "kiln-kept/pushed:1";
    build(store.path(), &["-t", name], &[]).success();
    let target = format!("{}/kiln/pushed:1", addrs[0]);
    let out = Kiln::bare()
        .args(["image", "push", name, &target, "--store"])
        .arg(store.path())
        .run();
    out.success();
    let inspect = tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{target}"),
        ],
    );
    let json: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(json["Digest"].as_str().unwrap(), out.stdout.trim());
    assert_eq!(json["Labels"]["org.example.loaded"], "yes");
    // The layers the store kept as tars left compressed.
    let manifest = serde_json::from_str(&crate::support::registry_raw(&target)).unwrap();
    let types = crate::support::layer_media_types(&manifest);
    assert!(types.iter().all(|t| t.ends_with("tar+gzip")), "{types:?}");
}

#[test]
fn load_without_a_daemon_says_which_socket_and_how_to_choose() {
    let store = tempdir("store-");
    let missing = store.path().join("no-daemon.sock");
    let out = build(
        store.path(),
        &["--load"],
        &[("DOCKER_HOST", &format!("unix://{}", missing.display()))],
    );
    out.expect_code(1);
    assert!(
        out.stderr.contains(&format!(
            "no Docker Engine answers on {} (chosen by DOCKER_HOST)",
            missing.display()
        )) && out.stderr.contains("DOCKER_HOST=unix://"),
        "{}",
        out.stderr
    );
    // Refused before any step ran.
    assert!(out.steps().is_empty(), "{}", out.stderr);

    // A docker context that does not exist names itself and where it was looked for.
    let config = tempdir("docker-config-");
    let out = build(
        store.path(),
        &["--load"],
        &[
            ("DOCKER_HOST", ""),
            ("DOCKER_CONTEXT", "kiln-missing"),
            ("DOCKER_CONFIG", config.path().to_str().unwrap()),
        ],
    );
    out.expect_code(1);
    assert!(
        out.stderr.contains(
            "the docker context `kiln-missing` (from DOCKER_CONTEXT) has no docker endpoint in"
        ) && out.stderr.contains("docker context create"),
        "{}",
        out.stderr
    );

    let out = build(
        store.path(),
        &["--load"],
        &[("DOCKER_HOST", "tcp://127.0.0.1:2375")],
    );
    out.expect_code(1);
    assert!(
        out.stderr.contains("through a unix socket only"),
        "{}",
        out.stderr
    );

    // As buildx: --load is `-o type=docker`, so another output type beside it is refused, located.
    let out = build(store.path(), &["--load", "-o", "type=oci,dest=x"], &[]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("--load and this output can't be used together")
            && out.stderr.contains("^^^^"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_tag_that_is_no_image_name_is_a_located_error() {
    let store = tempdir("store-");
    let out = build(store.path(), &["-t", "Kiln/Upper:1"], &[]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("invalid image reference `Kiln/Upper:1`")
            && out.stderr.contains("^^^^")
            && out.stderr.contains("help:"),
        "{}",
        out.stderr
    );
    assert!(out.steps().is_empty(), "{}", out.stderr);
}

/// `-t` names one image: several selected targets with a name are refused before anything runs, as
/// several targets with one output are.
#[test]
fn a_tag_for_several_targets_is_refused() {
    let dir = crate::support::copy_dir(&repo().join("examples/monorepo"));
    let out = Kiln::new()
        .current_dir(dir.path())
        .args(["//services/...", "-t", "kiln-load/many:1"])
        .run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("3 targets are selected")
            && out.stderr.contains("a -t name takes one image"),
        "{}",
        out.stderr
    );
    assert!(out.steps().is_empty(), "{}", out.stderr);
}

/// The store commands' mistakes: a store that is not one, an export with no output, a push to a name
/// that is no reference.
#[test]
fn image_command_errors() {
    let nowhere = tempdir("not-a-store-");
    let missing = nowhere.path().join("typo");
    let out = Kiln::bare().args(["images", "--store"]).arg(&missing).run();
    out.expect_code(2);
    assert!(out.stderr.contains("is not a kiln store"), "{}", out.stderr);
    assert!(!missing.exists(), "kiln images made {}", missing.display());

    let store = tempdir("store-");
    build(store.path(), &["-t", "kiln-kept/errors:1"], &[]).success();
    let image = |args: &[&str]| {
        Kiln::bare()
            .arg("image")
            .args(args.iter().copied())
            .arg("--store")
            .arg(store.path())
            .run()
    };
    let out = image(&["export", "kiln-kept/errors:1"]);
    out.expect_code(2);
    assert!(out.stderr.contains("needs an output"), "{}", out.stderr);
    let out = image(&["push", "kiln-kept/errors:1", "Bad Name"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("invalid image reference `Bad Name`") && out.stderr.contains('^'),
        "{}",
        out.stderr
    );
    let out = image(&["rm", "kiln-kept/nope:1"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("no image named `kiln-kept/nope:1`")
            && out.stderr.contains("did you mean `kiln-kept/errors:1`?"),
        "{}",
        out.stderr
    );
}
