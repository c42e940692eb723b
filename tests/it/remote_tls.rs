//! Remote execution over an encrypted, authenticated link: a real BuildGrid serving only TLS with a
//! required client certificate and a JWT bearer token (its own `tls-server-*`/`tls-client-certs` and
//! `authorization: jwt` options; certificates from openssl, the token from PyJWT), a `kiln worker`
//! connected to it the same way, and builds whose image must be the local build's. Every refusal (a
//! wrong or missing token, an unknown CA, no client certificate, a wrong host name) is a one-line
//! reason with a hint, and the token is nowhere in kiln's output, store or the worker's files.
//! Skipped, with a note, when BuildGrid is not installed (scripts/setup.sh installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::remote::manifest;
use crate::support::{Kiln, context, leaks_under, repo, tempdir, tool, unwrapped, write};

const EPOCH: &str = "1700000000";

fn buildgrid_installed() -> bool {
    crate::remote::buildgrid_venv().join("bin/bgd").exists()
}

/// BuildGrid behind TLS + mTLS + JWT, and one kiln worker connected over it; stopped when dropped.
struct TlsFarm {
    dir: tempfile::TempDir,
    addr: String,
    worker: Child,
    worker_log: PathBuf,
}

impl TlsFarm {
    fn start() -> Option<TlsFarm> {
        if !buildgrid_installed() {
            crate::support::skip_without("remote TLS tests", "BuildGrid is not installed");
            return None;
        }
        let dir = tempdir("buildgrid-tls-");
        let out = tool(
            "bash",
            &[
                repo()
                    .join("tests/fixtures/start-buildgrid-tls.sh")
                    .to_str()?,
                dir.path().join("bg").to_str()?,
                "--owner",
                &std::process::id().to_string(),
            ],
        );
        let addr = out
            .lines()
            .find_map(|l| l.strip_prefix("tls_addr="))
            .unwrap_or_else(|| panic!("start-buildgrid-tls.sh printed no address:\n{out}"))
            .to_string();
        let tls = dir.path().join("bg/tls");
        let worker_log = dir.path().join("worker.log");
        // The worker gets its token from a credential helper whose answer expires in 10 s, so it must
        // renew it while it serves; `--header` adds one the server ignores.
        let helper = tls.join("worker-helper.sh");
        write(
            &helper,
            format!(
                "#!/bin/sh\n[ \"$1\" = get ] || exit 9\necho >> {calls}\n\
                 printf '{{\"expires\": \"%s\", \"headers\": {{\"authorization\": [\"Bearer %s\"]}}}}' \
                 \"$(date -u -d @$(( $(date +%s) + 10 )) +%Y-%m-%dT%H:%M:%SZ)\" \"$(cat {token})\"\n",
                calls = dir.path().join("helper-calls").display(),
                token = tls.join("token").display(),
            ),
        );
        std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let worker = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["worker", "--server", &format!("grpcs://{addr}")])
            .arg("--tls-ca")
            .arg(tls.join("ca.crt"))
            .arg("--tls-cert")
            .arg(tls.join("client.crt"))
            .arg("--tls-key")
            .arg(tls.join("client.key"))
            .args(["--header", "x-kiln-test=worker"])
            .arg("--credential-helper")
            .arg(&helper)
            .arg("--work-dir")
            .arg(dir.path().join("worker"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&worker_log).unwrap())
            .spawn()
            .expect("cannot start kiln worker");
        let mut farm = TlsFarm {
            dir,
            addr,
            worker,
            worker_log,
        };
        // BuildGrid answers the worker's session only with its first lease, so there is no "connected"
        // to wait for: the worker checks the server's capabilities first, and a refused link ends it.
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            farm.worker.try_wait().unwrap().is_none(),
            "the worker could not connect:\n{}",
            farm.log()
        );
        Some(farm)
    }

    fn url(&self) -> String {
        format!("grpcs://{}", self.addr)
    }

    fn tls(&self, name: &str) -> PathBuf {
        self.dir.path().join("bg/tls").join(name)
    }

    fn token(&self) -> String {
        read(&self.tls("token"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.worker_log).unwrap_or_default()
    }

    /// How many actions the worker ran.
    fn ran(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("kiln worker: running action "))
            .count()
    }

    /// `--remote-executor` with the CA and the client certificate; the token is added by the caller.
    fn flags(&self) -> Vec<String> {
        let path = |n: &str| self.tls(n).display().to_string();
        vec![
            "--remote-executor".into(),
            self.url(),
            "--remote-tls-ca".into(),
            path("ca.crt"),
            "--remote-tls-cert".into(),
            path("client.crt"),
            "--remote-tls-key".into(),
            path("client.key"),
        ]
    }
}

impl Drop for TlsFarm {
    fn drop(&mut self) {
        let _ = self.worker.kill();
        let _ = self.worker.wait();
        let _ = Command::new("bash")
            .arg(repo().join("tests/fixtures/start-buildgrid-tls.sh"))
            .arg(self.dir.path().join("bg"))
            .arg("stop")
            .output();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A build to an OCI layout, with its own store; returns the run and the store (kept for searching).
fn build(ctx: &Path, extra: &[String]) -> (crate::support::Output, Kiln) {
    let out = tempdir("remote-tls-out-");
    let kiln = Kiln::new()
        .with_base()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(extra)
        .arg("-o")
        .arg(format!(
            "type=oci,dest={}",
            out.path().join("img").display()
        ))
        .arg(ctx);
    (kiln.run(), kiln)
}

/// A credential helper in Bazel's protocol that answers with `token` and records the request it got.
fn helper(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("helper.sh");
    write(
        &path,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 9\ncat > \"$(dirname \"$0\")/request.json\"\n\
             printf '{{\"headers\": {{\"Authorization\": [\"Bearer {token}\"]}}}}'\n"
        ),
    );
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// Acceptance 5: a TLS + token-authenticated REAPI endpoint works for the build and the worker (same
/// image as a local build), a wrong token fails with a clear error, and so does every other refusal.
#[test]
fn remote_execution_over_tls_with_a_token() {
    let Some(farm) = TlsFarm::start() else { return };
    let token = farm.token();
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\n\
         RUN mkdir -p /app && echo over-tls > /app/one && chmod 4755 /app/one && ln -s one /app/link\n\
         RUN cat /app/one && echo two >> /app/one\n",
    )]);
    let (local, _) = build(ctx.path(), &[]);
    local.success();

    // The token as a header: both steps run on the worker, over TLS, and give the local image.
    let mut flags = farm.flags();
    flags.extend([
        "--remote-header".into(),
        format!("authorization=Bearer {token}"),
    ]);
    let (remote, remote_kiln) = build(ctx.path(), &flags);
    remote.success();
    assert_eq!(
        manifest(&remote.stdout),
        manifest(&local.stdout),
        "a build over grpcs:// must give the local build's image\n{}",
        remote.stderr
    );
    assert_eq!(
        farm.ran(),
        2,
        "both RUN steps run on the worker:\n{}",
        farm.log()
    );

    // The token from a credential helper (Bazel's protocol), a new step: it runs on the worker too.
    let helper_dir = tempdir("remote-tls-helper-");
    let ctx2 = context(&[("Dockerfile", "FROM base\nRUN echo by-helper > /h\n")]);
    let (local2, _) = build(ctx2.path(), &[]);
    local2.success();
    let mut flags = farm.flags();
    flags.extend([
        "--remote-credential-helper".into(),
        helper(helper_dir.path(), &token).display().to_string(),
    ]);
    let (helped, helped_kiln) = build(ctx2.path(), &flags);
    helped.success();
    assert_eq!(
        manifest(&helped.stdout),
        manifest(&local2.stdout),
        "{}",
        helped.stderr
    );
    assert_eq!(farm.ran(), 3, "{}", farm.log());
    let request: serde_json::Value =
        serde_json::from_str(&read(&helper_dir.path().join("request.json"))).unwrap();
    assert_eq!(request["uri"], farm.url());

    // `--remote-cache` over the same link, from an empty store: both steps are ActionCache hits.
    let mut flags = farm.flags();
    flags[0] = "--remote-cache".into();
    flags.extend([
        "--remote-header".into(),
        format!("Authorization=Bearer {token}"),
    ]);
    let (cached, cached_kiln) = build(ctx.path(), &flags);
    cached.success();
    assert_eq!(
        manifest(&cached.stdout),
        manifest(&local.stdout),
        "{}",
        cached.stderr
    );
    assert_eq!(
        farm.ran(),
        3,
        "nothing more runs on the worker:\n{}",
        farm.log()
    );

    // The token is a credential: in no output, no store, not in the worker's log or directory. The
    // helper's own script holds it (the positive control of the search).
    for out in [&local, &remote, &helped, &cached] {
        assert!(
            !out.stdout.contains(&token) && !out.stderr.contains(&token),
            "{}",
            out.stderr
        );
    }
    assert!(!farm.log().contains(&token), "{}", farm.log());
    let mut found = leaks_under(remote_kiln.store(), &[token.as_bytes()]);
    found.extend(leaks_under(helped_kiln.store(), &[token.as_bytes()]));
    found.extend(leaks_under(cached_kiln.store(), &[token.as_bytes()]));
    found.extend(leaks_under(
        &farm.dir.path().join("worker"),
        &[token.as_bytes()],
    ));
    assert!(found.is_empty(), "the token leaked into {found:?}");
    assert!(
        !leaks_under(helper_dir.path(), &[token.as_bytes()]).is_empty(),
        "the search must find the token where it is"
    );

    // The worker renewed its expiring credentials (and went on running steps with them).
    let calls = read(&farm.dir.path().join("helper-calls")).lines().count();
    assert!(
        calls >= 2,
        "the worker's credential helper ran {calls} time(s):\n{}",
        farm.log()
    );

    refusals(&farm, ctx.path());
}

/// Each way the server or the client refuses the link: one line of reason, a hint, exit code 1 (as for
/// any remote connection error), the token never shown, and no step run.
fn refusals(farm: &TlsFarm, ctx: &Path) {
    let token = farm.token();
    let wrong = read(&farm.tls("wrong-token"));
    let path = |n: &str| farm.tls(n).display().to_string();
    let cases: Vec<(&str, Vec<String>, &[&str])> = vec![
        (
            "a wrong token",
            [
                farm.flags(),
                vec![
                    "--remote-header".into(),
                    format!("authorization=Bearer {wrong}"),
                ],
            ]
            .concat(),
            &[
                "refused the credentials (UNAUTHENTICATED)",
                "check the token",
            ],
        ),
        (
            "no token",
            farm.flags(),
            &[
                "refused the credentials (UNAUTHENTICATED)",
                "--remote-header",
            ],
        ),
        (
            "an unknown CA",
            vec![
                "--remote-executor".into(),
                farm.url(),
                "--remote-tls-ca".into(),
                path("other-ca.crt"),
            ],
            &["not signed by a trusted CA", "--remote-tls-ca"],
        ),
        (
            "the system's roots",
            vec!["--remote-executor".into(), farm.url()],
            &["not signed by a trusted CA", "--remote-tls-ca"],
        ),
        (
            "no client certificate",
            vec![
                "--remote-executor".into(),
                farm.url(),
                "--remote-tls-ca".into(),
                path("ca.crt"),
                "--remote-header".into(),
                format!("authorization=Bearer {token}"),
            ],
            &[
                "closed the connection after the TLS handshake",
                "--remote-tls-cert and --remote-tls-key",
            ],
        ),
        (
            "a host name the certificate is not for",
            [
                vec![
                    "--remote-executor".into(),
                    farm.url().replace("127.0.0.1", "localhost"),
                ],
                farm.flags()[2..].to_vec(),
            ]
            .concat(),
            &["not valid for the host name", "grpcs://NAME:PORT"],
        ),
    ];
    let before = farm.ran();
    for (what, flags, says) in cases {
        let (out, _) = build(ctx, &flags);
        out.expect_code(1);
        let err = unwrapped(&out.stderr);
        for s in says {
            assert!(
                err.contains(s),
                "{what}: expected `{s}` in:\n{}",
                out.stderr
            );
        }
        assert!(
            !out.stderr.contains(&token) && !out.stderr.contains(&wrong),
            "{what}: {}",
            out.stderr
        );
    }
    // The worker's refusals, in its own spellings.
    let worker = |extra: &[String]| {
        Kiln::bare()
            .args(["worker", "--server", &farm.url()])
            .args(extra)
            .run()
    };
    let out = worker(&["--tls-ca".into(), path("other-ca.crt")]);
    out.expect_code(1);
    let err = unwrapped(&out.stderr);
    assert!(
        err.contains("not signed by a trusted CA") && err.contains("--tls-ca"),
        "{err}"
    );
    let mut flags = farm.flags()[2..].to_vec();
    for f in &mut flags {
        *f = f.replace("--remote-tls-", "--tls-");
    }
    flags.extend(["--header".into(), format!("authorization=Bearer {wrong}")]);
    let out = worker(&flags);
    out.expect_code(1);
    let err = unwrapped(&out.stderr);
    assert!(
        err.contains("(UNAUTHENTICATED)") && err.contains("check the token: --header"),
        "{err}"
    );
    assert!(!out.stderr.contains(&wrong), "{}", out.stderr);

    assert_eq!(
        farm.ran(),
        before,
        "no refused build ran a step:\n{}",
        farm.log()
    );
}

/// Options that cannot work are refused before anything is dialled, each at its place on the command
/// line, and no header value is ever shown (not even for an unrelated error).
#[test]
fn tls_and_header_options_are_checked() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN true\n")]);
    let dir = tempdir("remote-tls-files-");
    let not_pem = dir.path().join("not.pem");
    write(&not_pem, "not a certificate\n");
    let s = |v: &str| v.to_string();
    let secret = "hdr-s3cret-4f1a9e";
    let cases: Vec<(Vec<String>, i32, &[&str])> = vec![
        (
            vec![
                s("--remote-executor"),
                s("grpc://127.0.0.1:1"),
                s("--remote-tls-ca"),
                not_pem.display().to_string(),
            ],
            2,
            &[
                "--remote-tls-ca with a plaintext address",
                "write the address as `grpcs://127.0.0.1:1`",
            ],
        ),
        (
            vec![
                s("--remote-header"),
                format!("authorization=Bearer {secret}"),
            ],
            2,
            &[
                "--remote-header without --remote-executor or --remote-cache",
                "authorization=***",
            ],
        ),
        (
            vec![
                s("--remote-cache"),
                s("grpcs://127.0.0.1:1"),
                s("--remote-header"),
                format!("Bearer {secret}"),
            ],
            2,
            &["bad --remote-header: expected `NAME=VALUE`"],
        ),
        (
            vec![
                s("--remote-cache"),
                s("grpcs://127.0.0.1:1"),
                s("--remote-header"),
                format!("grpc-timeout={secret}"),
            ],
            2,
            &["a header gRPC itself sets"],
        ),
        (
            // An error about another flag shows the command line, with the header's value hidden.
            vec![
                s("--remote-header"),
                format!("authorization=Bearer {secret}"),
                s("--remote-cache"),
                s("http://x:1"),
            ],
            2,
            &["must look like", "authorization=***"],
        ),
        (
            vec![
                s("--remote-cache"),
                s("grpcs://127.0.0.1:1"),
                s("--remote-tls-ca"),
                not_pem.display().to_string(),
            ],
            2,
            &["holds no PEM-encoded CA certificate"],
        ),
        (
            vec![
                s("--remote-cache"),
                s("grpcs://127.0.0.1:1"),
                s("--remote-tls-cert"),
                not_pem.display().to_string(),
            ],
            2,
            &["--remote-tls-key"],
        ),
    ];
    for (flags, code, says) in cases {
        let (out, _) = build(ctx.path(), &flags);
        out.expect_code(code);
        let err = unwrapped(&out.stderr);
        for want in says {
            assert!(
                err.contains(want),
                "{flags:?}: expected `{want}` in:\n{}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains(secret), "{flags:?}: {}", out.stderr);
        assert!(!out.stderr.contains("RUN true"), "{}", out.stderr);
    }

    // A credential helper that fails, or answers something else than the protocol's JSON (here with the
    // secret in it): a clear error that quotes neither its answer nor a value.
    for (script, says) in [
        (
            "echo 'no such credentials' >&2; exit 3",
            "no such credentials",
        ),
        (
            &*format!("echo '{{\"headers\": {{\"authorization\": \"Bearer {secret}\"}}}}'"),
            "not the expected JSON",
        ),
        (
            &*format!(
                "cat <<'J'\n{{\"headers\": {{\"authorization\": [\"Bearer {secret}\\n\"]}}}}\nJ"
            ),
            "answered a bad header",
        ),
    ] {
        let helper = dir.path().join("helper.sh");
        write(&helper, format!("#!/bin/sh\n{script}\n"));
        std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let flags = vec![
            s("--remote-cache"),
            s("grpcs://127.0.0.1:1"),
            s("--remote-credential-helper"),
            helper.display().to_string(),
        ];
        let (out, _) = build(ctx.path(), &flags);
        out.expect_code(1);
        let err = unwrapped(&out.stderr);
        assert!(
            err.contains("credential helper") && err.contains(says),
            "{script}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains(secret), "{}", out.stderr);
    }

    // The worker's spellings.
    let out = Kiln::bare()
        .args(["worker", "--server", "grpc://127.0.0.1:1", "--tls-ca"])
        .arg(&not_pem)
        .run();
    out.expect_code(2);
    assert!(
        unwrapped(&out.stderr).contains("--tls-ca with a plaintext address"),
        "{}",
        out.stderr
    );
    let out = Kiln::bare()
        .args(["worker", "--server", "grpcs://127.0.0.1:1", "--header"])
        .arg(format!("x-token{secret}"))
        .run();
    out.expect_code(2);
    assert!(
        unwrapped(&out.stderr).contains("bad --header"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(secret), "{}", out.stderr);
}
