//! `kiln lock` on the example monorepo, whose base is `image("busybox")`, i.e. Docker Hub: with
//! `--registry-mirror docker.io=HOST` the tag is resolved and pulled from a loopback registry standing
//! in for a corporate mirror, while the lock, the errors and the provenance keep the image's own name.
//! A mirror that cannot serve an image falls back to the registry (said in a warning) unless
//! `--registry-mirror-only`; a `--build-context` redirect is locked under the reference it redirects to.
//! registries.toml adds buildkitd's per-registry `ca` and `insecure` (tried on an HTTPS registry with a
//! private CA). skopeo judges what each registry serves, the OCI layouts' configs what was built on.

use std::path::Path;

use serde_json::Value;

use crate::lock::{lock_of, push_base};
use crate::support::{
    Kiln, Layout, context, copy_dir, repo, start_registries, tempdir, tool, unwrapped,
};

/// The GREETING the `//base:base` image of an `-o type=oci,dest=OUT/{target}` build inherited.
fn greeting_of(out: &Path) -> String {
    let config = Layout::new(&out.join("base/base")).config();
    let env = config["config"]["Env"].as_array().unwrap().clone();
    env.iter()
        .filter_map(Value::as_str)
        .find_map(|e| e.strip_prefix("GREETING="))
        .unwrap_or_else(|| panic!("no GREETING in {env:?}"))
        .to_string()
}

#[test]
fn the_example_monorepo_locks_and_builds_through_a_registry_mirror() {
    let Some((_regs, addrs)) = start_registries("monorepo lock", &[], &["open"]) else {
        return;
    };
    let mirror = &addrs[0];
    // What a pull-through mirror of Docker Hub holds for `busybox`.
    let first = push_base(&format!("{mirror}/library/busybox:latest"), "one");
    let mono = copy_dir(&repo().join("examples/monorepo"));
    let store = tempdir("store-");
    let via_mirror = ["--registry-mirror", &format!("docker.io={mirror}")];
    let lock = |extra: &[&str]| {
        Kiln::bare()
            .arg("lock")
            .current_dir(mono.path())
            .arg("//...")
            .args(via_mirror)
            .args(extra)
            .run()
    };
    let out_dir = tempdir("mono-out-");
    let locked_build = || {
        Kiln::build_in(store.path())
            .current_dir(mono.path())
            .args(["//...", "--locked", "--provenance", "true"])
            .args(via_mirror)
            .arg("-o")
            .arg(format!(
                "type=oci,dest={}/{{target}}",
                out_dir.path().display()
            ))
            .run()
    };

    let out = lock(&[]);
    out.success();
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    // The image keeps its name: the lock says `busybox`, not the mirror it was asked of.
    assert_eq!(
        lock_of(mono.path()),
        [format!(
            "image busybox linux/amd64 {first}  # base/BUILD.build:3"
        )]
    );
    let out = locked_build();
    out.success();
    assert!(out.stderr.contains("built 5 targets:"), "{}", out.stderr);
    assert_eq!(greeting_of(out_dir.path()), "one");

    // The tag moves on the mirror: the locked build refuses it at the base's `image("busybox")`.
    let second = push_base(&format!("{mirror}/library/busybox:latest"), "two");
    assert_ne!(first, second);
    let out = locked_build();
    let err = unwrapped(&out.expect_code(2).stderr);
    assert!(
        err.contains(&format!(
            "base image `busybox` (linux/amd64) now resolves to {second}, but kiln.lock pins {first}"
        )),
        "{err}"
    );
    assert!(err.contains("base/BUILD.build:3"), "{err}");
    let line = err
        .lines()
        .position(|l| l.contains("target base: Image = image(\"busybox\")"))
        .unwrap_or_else(|| panic!("the source line is shown:\n{err}"));
    let caret = err.lines().nth(line + 1).unwrap();
    let source = err.lines().nth(line).unwrap();
    // The caret is under the reference `image(...)` is given, as for any base image of a `.build`.
    let at = source.find("\"busybox\"").unwrap();
    assert_eq!(
        caret.find('^'),
        Some(at),
        "the caret is under \"busybox\":\n{err}"
    );

    // `kiln lock --update` takes the new image, and the locked build builds on it.
    lock(&["--update"]).success();
    assert_eq!(
        lock_of(mono.path()),
        [format!(
            "image busybox linux/amd64 {second}  # base/BUILD.build:3"
        )]
    );
    locked_build().success();
    assert_eq!(greeting_of(out_dir.path()), "two");
    // The provenance names Docker Hub's busybox at the digest the mirror served, and not the mirror.
    let provenance = crate::attest::provenance_of(&out_dir.path().join("base/base"));
    let deps = provenance["predicate"]["buildDefinition"]["resolvedDependencies"].to_string();
    let busybox = format!("pkg:docker/library/busybox@{}", second.replace(':', "%3A"));
    assert!(deps.contains(&busybox), "{deps}");
    assert!(!deps.contains(mirror.as_str()), "{deps}");

    // A named context that redirects `busybox` to another image is locked under the reference it
    // redirects to, and a locked build with the same redirect follows it.
    let third = push_base(&format!("{mirror}/team/busybox:1"), "three");
    let redirect = format!("busybox=docker-image://{mirror}/team/busybox:1");
    Kiln::bare()
        .arg("lock")
        .current_dir(mono.path())
        .args(["//...", "--build-context", &redirect])
        .run()
        .success();
    assert_eq!(
        lock_of(mono.path()),
        [format!(
            "image {mirror}/team/busybox:1 linux/amd64 {third}  # base/BUILD.build:3"
        )]
    );
    Kiln::build_in(store.path())
        .current_dir(mono.path())
        .args(["//...", "--locked", "--build-context", &redirect])
        .arg("-o")
        .arg(format!(
            "type=oci,dest={}/{{target}}",
            out_dir.path().display()
        ))
        .run()
        .success();
    assert_eq!(greeting_of(out_dir.path()), "three");
}

/// The mirror is asked first, the registry only when the mirror cannot serve the image (with a warning
/// naming the mirror), and never with `--registry-mirror-only`.
#[test]
fn a_mirror_is_asked_first_and_the_registry_only_when_it_cannot_serve() {
    let Some((_origin_dir, origin)) = start_registries("registry mirrors", &[], &["open"]) else {
        return;
    };
    let Some((_mirror_dir, mirror)) = start_registries("registry mirrors", &[], &["open"]) else {
        return;
    };
    let (origin, mirror) = (&origin[0], &mirror[0]);
    let image = format!("{origin}/mirrored/base:1");
    let at_origin = push_base(&image, "origin");
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {image}\nRUN echo \"$GREETING\" > /g\n"),
    )]);
    let spec = format!("{origin}={mirror}");
    let lock = |extra: &[&str]| {
        Kiln::bare()
            .arg("lock")
            .args(["--registry-mirror", &spec])
            .args(extra)
            .arg(ctx.path())
            .run()
    };

    // The mirror lacks the image: the registry serves it, and the user hears of the mirror.
    let out = lock(&[]);
    out.success();
    let err = unwrapped(&out.stderr);
    assert!(
        err.contains(&format!(
            "warning: cannot pull `{image}` from its mirror {mirror}: not found on {mirror}"
        )) && err.contains(&format!("pulled it from {origin}")),
        "{err}"
    );
    assert_eq!(
        lock_of(ctx.path()),
        [format!(
            "image {image} linux/amd64 {at_origin}  # Dockerfile:1"
        )]
    );

    // Mirrors only: the registry is not asked, so the image is not found.
    std::fs::remove_file(ctx.path().join("kiln.lock")).unwrap();
    let out = lock(&["--registry-mirror-only"]);
    let err = unwrapped(&out.expect_code(2).stderr);
    assert!(
        err.contains(&format!(
            "cannot pull `{image}` from its mirror {mirror}: not found on {mirror}"
        )),
        "{err}"
    );
    assert!(err.contains("Dockerfile:1"), "{err}");

    // Once the mirror holds the image, it is what is asked: its own (here different) image is the one
    // locked and built on, without a warning. The mirror comes from registries.toml this time, in
    // buildkitd.toml's shape.
    let at_mirror = push_base(&format!("{mirror}/mirrored/base:1"), "mirror");
    assert_ne!(at_mirror, at_origin);
    let config = tempdir("config-");
    let toml = config.path().join("kiln/registries.toml");
    crate::support::write(
        &toml,
        format!("[registry.\"{origin}\"]\nmirrors = [\"{mirror}\"]\n"),
    );
    let out = Kiln::bare()
        .arg("lock")
        .env("XDG_CONFIG_HOME", config.path())
        .arg(ctx.path())
        .run();
    out.success();
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    assert_eq!(
        lock_of(ctx.path()),
        [format!(
            "image {image} linux/amd64 {at_mirror}  # Dockerfile:1"
        )]
    );
    // `--registry-mirror-only` holds for the file's mirrors too.
    Kiln::bare()
        .args(["lock", "--registry-mirror-only"])
        .env("XDG_CONFIG_HOME", config.path())
        .arg(ctx.path())
        .arg("--update")
        .run()
        .success();
    let oci = tempdir("oci-");
    Kiln::new()
        .env("XDG_CONFIG_HOME", config.path())
        .args(["--locked", "-o"])
        .arg(format!("type=oci,dest={}", oci.path().display()))
        .arg(ctx.path())
        .run()
        .success();
    let image = crate::support::unpack(oci.path());
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("g")).unwrap(),
        "mirror\n"
    );

    // A key of buildkitd.toml kiln does not read is an error at its place in the file, not ignored.
    crate::support::write(
        &toml,
        format!("[registry.\"{origin}\"]\nmirrors = [\"{mirror}\"]\nkeypair = []\n"),
    );
    let out = Kiln::bare()
        .arg("lock")
        .env("XDG_CONFIG_HOME", config.path())
        .arg(ctx.path())
        .run();
    let err = unwrapped(&out.expect_code(2).stderr);
    assert!(err.contains("unknown field `keypair`"), "{err}");
    assert!(
        err.contains(&format!("{}:3:1", toml.display())) && err.contains("keypair = []"),
        "{err}"
    );
}

/// `kiln lock` asks a private git repository with the credentials `kiln build` clones it with: the
/// `GIT_AUTH_TOKEN` secret (basic auth for `x-access-token`, as BuildKit sends it). Without it the ref
/// cannot be resolved, at its line; with it the commit git itself names is locked, and the token is in
/// neither the lock nor the output.
#[test]
fn kiln_lock_logs_in_to_private_git_repositories_as_the_build_does() {
    use base64::Engine as _;
    let token = "lock-tok3n-Hq27xR";
    let basic = format!(
        "basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
    );
    let server = crate::add_git::GitServer::private(&[&basic]);
    let url = server.url("#v1");
    let ctx = context(&[("Dockerfile", &format!("FROM scratch\nADD {url} /src\n"))]);
    let lock = |extra: &[&str]| {
        Kiln::bare()
            .arg("lock")
            .env("TOK", token)
            .args(extra)
            .arg(ctx.path())
            .run()
    };

    let out = lock(&[]);
    let err = unwrapped(&out.expect_code(1).stderr);
    assert!(
        err.contains("Dockerfile:2") && err.contains("GIT_AUTH_TOKEN"),
        "{err}"
    );
    assert!(!ctx.path().join("kiln.lock").exists());

    let out = lock(&["--secret", "id=GIT_AUTH_TOKEN,env=TOK"]);
    out.success();
    let repo_dir = server.root.path().join("repo.git");
    let v1 = crate::add_git::git(&repo_dir, &["rev-parse", "v1^{commit}"]);
    assert_eq!(
        lock_of(ctx.path()),
        [format!("git {url} {v1}  # Dockerfile:2")]
    );
    let text = std::fs::read_to_string(ctx.path().join("kiln.lock")).unwrap();
    for shown in [&text, &out.stdout, &out.stderr] {
        assert!(!shown.contains(token) && !shown.contains(&basic), "{shown}");
    }
}

/// A registry over HTTPS with a certificate from a private CA, on 127.0.0.2 (kiln speaks plain HTTP to
/// 127.0.0.1 and localhost only). Stopped when dropped.
struct TlsRegistry {
    child: std::process::Child,
    dir: tempfile::TempDir,
    addr: String,
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsRegistry {
    /// `None` (with a note) when Debian's docker-registry is missing.
    fn start() -> Option<TlsRegistry> {
        if std::process::Command::new("docker-registry")
            .arg("--version")
            .output()
            .is_err()
        {
            crate::support::skip_without(
                "the registries.toml TLS test",
                "docker-registry is not installed",
            );
            return None;
        }
        let dir = tempdir("tls-registry-");
        let d = dir.path();
        let p = |name: &str| d.join(name).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca_subject = ["-subj", "/CN=kiln-test-ca", "-days", "2"];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(ca_subject);
        let (ca_key, ca_pem) = (p("ca.key"), p("ca.pem"));
        ca.extend(["-keyout", &ca_key, "-out", &ca_pem]);
        tool("openssl", &ca);
        let (key, csr, cert, ext) = (p("reg.key"), p("reg.csr"), p("reg.pem"), p("ext"));
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-subj", "/CN=127.0.0.2", "-keyout", &key, "-out", &csr]);
        tool("openssl", &req);
        crate::support::write(&d.join("ext"), "subjectAltName=IP:127.0.0.2\n");
        tool(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_pem,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
                &ext,
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.2:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.2:{port}");
        let config = d.join("config.yml");
        crate::support::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: kiln-tests-only\n  tls:\n    certificate: {cert}\n    key: {key}\n",
                p("data")
            ),
        );
        let log = std::fs::File::create(d.join("registry.log")).unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot run docker-registry");
        let registry = TlsRegistry { child, dir, addr };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&registry.addr).is_ok() {
                return Some(registry);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "the TLS registry did not start: {}",
            std::fs::read_to_string(registry.dir.path().join("registry.log")).unwrap_or_default()
        );
    }
}

/// registries.toml's `ca` and `insecure`, as buildkitd reads them: a registry whose certificate comes
/// from a private CA is refused until the file names the CA for it, or says not to verify it.
#[test]
fn registries_toml_trusts_a_private_ca_or_skips_verification_per_registry() {
    let Some(registry) = TlsRegistry::start() else {
        return;
    };
    let addr = &registry.addr;
    let image = format!("{addr}/private/base:1");
    let digest = push_base(&image, "tls");
    let ctx = context(&[("Dockerfile", &format!("FROM {image}\n"))]);
    let config = tempdir("config-");
    let toml = config.path().join("kiln/registries.toml");
    let lock = || {
        Kiln::bare()
            .arg("lock")
            .env("XDG_CONFIG_HOME", config.path())
            .arg(ctx.path())
            .run()
    };

    crate::support::write(&toml, "");
    let out = lock();
    let err = unwrapped(&out.expect_code(1).stderr);
    assert!(err.contains(&format!("cannot pull `{image}`")), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(!ctx.path().join("kiln.lock").exists());

    let ca = registry.dir.path().join("ca.pem");
    crate::support::write(
        &toml,
        format!("[registry.\"{addr}\"]\nca = [\"{}\"]\n", ca.display()),
    );
    lock().success();
    assert_eq!(
        lock_of(ctx.path()),
        [format!(
            "image {image} linux/amd64 {digest}  # Dockerfile:1"
        )]
    );

    std::fs::remove_file(ctx.path().join("kiln.lock")).unwrap();
    crate::support::write(&toml, format!("[registry.\"{addr}\"]\ninsecure = true\n"));
    lock().success();
    assert_eq!(
        lock_of(ctx.path()),
        [format!(
            "image {image} linux/amd64 {digest}  # Dockerfile:1"
        )]
    );
}
