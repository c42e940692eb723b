//! `--remote-secrets=allow`: a step that mounts a secret runs on a real `kiln worker` behind a real
//! BuildGrid (its log and BuildGrid's operations say so), receiving the value over mutual TLS from the
//! build; the value is in no CAS blob, no row of BuildGrid's database and nowhere in the worker's
//! directory, and the image is the one a local build makes. A worker without a client certificate
//! refuses the step, and the build refuses a worker whose certificate another CA signed; neither gets
//! the value. A step with an SSH agent runs there too, its agent requests relayed to the build's real
//! `ssh-agent` (a signature made on the worker verifies; no key reaches the remote side; adding or
//! removing keys is refused). Certificates come from `tests/fixtures/remote-secrets-certs.sh` (Debian's openssl).
//! Skipped, with a note, when BuildGrid is not installed (scripts/setup.sh installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::remote::{buildgrid_venv, manifest};
use crate::ssh::{Agent, new_key, tools_tree};
use crate::support::{Kiln, context, leaks_under, repo, tempdir, tool, unpack, unwrapped, write};

const EPOCH: &str = "1700000000";
const TOKEN: &str = "worker-s3cr3t-Token-51f0b7c9d2";
/// A value a remote step writes into its layer: the search must find it (the positive control).
const CONTROL: &str = "control-V4lue-2d81c6fe33";

/// BuildGrid, one kiln worker started with `worker_args`, and the certificates; stopped when dropped.
struct Farm {
    dir: tempfile::TempDir,
    addr: String,
    pgsock: PathBuf,
    worker: Child,
    worker_log: PathBuf,
}

impl Farm {
    /// `tls`: the worker's certificate (`worker` or `stranger`), or none.
    fn start(tls: Option<&str>) -> Option<Farm> {
        if !buildgrid_venv().join("bin/bgd").exists() {
            crate::support::skip_without("remote secrets tests", "BuildGrid is not installed");
            return None;
        }
        let dir = tempdir("buildgrid-secrets-");
        let certs = dir.path().join("certs");
        tool(
            "bash",
            &[
                repo()
                    .join("tests/fixtures/remote-secrets-certs.sh")
                    .to_str()?,
                certs.to_str()?,
            ],
        );
        let out = tool(
            "bash",
            &[
                repo().join("tests/fixtures/start-buildgrid.sh").to_str()?,
                dir.path().join("bg").to_str()?,
                "--owner",
                &std::process::id().to_string(),
            ],
        );
        let field = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_else(|| panic!("start-buildgrid.sh printed no {k}\n{out}"))
                .to_string()
        };
        let (addr, pgsock) = (field("addr="), PathBuf::from(field("pgsock=")));
        let worker_log = dir.path().join("worker.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args([
            "worker",
            "--server",
            &format!("grpc://{addr}"),
            "--work-dir",
        ])
        .arg(dir.path().join("worker"));
        if let Some(name) = tls {
            cmd.arg("--tls-ca")
                .arg(certs.join("ca.pem"))
                .arg("--tls-cert")
                .arg(certs.join(format!("{name}.pem")))
                .arg("--tls-key")
                .arg(certs.join(format!("{name}.key")));
        }
        let worker = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&worker_log).unwrap())
            .spawn()
            .expect("cannot start kiln worker");
        let farm = Farm {
            dir,
            addr,
            pgsock,
            worker,
            worker_log,
        };
        let started = Instant::now();
        while !farm.log().contains("connected to") {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the worker did not connect:\n{}",
                farm.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(farm)
    }

    fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    fn cert(&self, name: &str) -> String {
        self.dir
            .path()
            .join("certs")
            .join(name)
            .display()
            .to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.worker_log).unwrap_or_default()
    }

    /// The actions the worker ran, by digest, in order.
    fn ran(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("kiln worker: running action ").map(|(_, r)| r))
            .map(|l| l.split('/').next().unwrap().to_string())
            .collect()
    }

    fn operations(&self) -> String {
        tool(
            buildgrid_venv().join("bin/bgd").to_str().unwrap(),
            &[
                "operation",
                "--remote",
                &format!("http://{}", self.addr),
                "list",
                "--filter",
                "stage=COMPLETED",
                "--json",
            ],
        )
    }

    fn cas(&self) -> PathBuf {
        self.dir.path().join("bg/cas")
    }

    fn dump_database(&self) -> PathBuf {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_dump", "-h"])
            .arg(&self.pgsock)
            .args(["-U", "postgres", "bgd"])
            .output()
            .expect("cannot run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dest = self.dir.path().join("dump/database.sql");
        write(&dest, &out.stdout);
        dest
    }

    /// The secret's bytes (raw, hex, base64) wherever the remote side keeps anything.
    fn secret_found(&self) -> Vec<String> {
        let mut found = leaks_under(&self.cas(), &[TOKEN.as_bytes()]);
        found.extend(leaks_under(&self.dump_database(), &[TOKEN.as_bytes()]));
        found.extend(leaks_under(
            &self.dir.path().join("worker"),
            &[TOKEN.as_bytes()],
        ));
        // The worker's log names the secrets it receives, never their values.
        found.extend(leaks_under(&self.worker_log, &[TOKEN.as_bytes()]));
        found
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        let _ = self.worker.kill();
        let _ = self.worker.wait();
        let _ = Command::new("bash")
            .arg(repo().join("tests/fixtures/start-buildgrid.sh"))
            .arg(self.dir.path().join("bg"))
            .arg("stop")
            .output();
    }
}

/// A Dockerfile whose steps check the secret (by its hash: the value in the Dockerfile would be in the
/// history) as a file and as an environment variable, and write the control value.
fn secret_context() -> tempfile::TempDir {
    let sum = tool(
        "sh",
        &[
            "-c",
            &format!("printf %s '{TOKEN}' | sha256sum | cut -c1-64"),
        ],
    );
    context(&[(
        "Dockerfile",
        &format!(
            "FROM base\n\
             RUN echo {CONTROL} > /control\n\
             RUN --mount=type=secret,id=tok,mode=0400 test \"$(stat -c %a /run/secrets/tok)\" = 400 \
                 && test \"$(sha256sum < /run/secrets/tok | cut -c1-64)\" = {} && echo checked > /checked\n\
             RUN --mount=type=secret,id=tok,env=TOK,target=/tok test -n \"$TOK\" && test -f /tok && echo env > /env\n",
            sum.trim()
        ),
    )])
}

/// Builds `ctx` with the secret, `extra` arguments and (with `farm`) `--remote-secrets=allow`.
fn build(ctx: &Path, farm: Option<&Farm>, extra: &[&str]) -> crate::support::Output {
    build_as("build", ctx, farm, extra)
}

/// `build` with the endpoint's certificate `identity` (`build`, or `impostor` from another CA).
fn build_as(
    identity: &str,
    ctx: &Path,
    farm: Option<&Farm>,
    extra: &[&str],
) -> crate::support::Output {
    let out = tempdir("remote-secrets-out-");
    build_to(identity, ctx, farm, extra, &out.path().join("img"))
}

/// `build_as`, the image written to the OCI layout `dest`.
fn build_to(
    identity: &str,
    ctx: &Path,
    farm: Option<&Farm>,
    extra: &[&str],
    dest: &Path,
) -> crate::support::Output {
    let secret_dir = tempdir("remote-secrets-src-");
    let src = secret_dir.path().join("tok");
    write(&src, TOKEN);
    let mut kiln = Kiln::new()
        .with_base()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .arg("--secret")
        .arg(format!("id=tok,src={}", src.display()));
    if let Some(farm) = farm {
        kiln = kiln.args([
            "--remote-executor",
            &farm.url(),
            "--remote-secrets=allow",
            "--remote-tls-ca",
            &farm.cert("ca.pem"),
            "--remote-tls-cert",
            &farm.cert(&format!("{identity}.pem")),
            "--remote-tls-key",
            &farm.cert(&format!("{identity}.key")),
        ]);
    }
    kiln.args(extra)
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx)
        .run()
}

/// Acceptance 4: the secret steps run on the worker, which receives the value over mutual TLS, and the
/// value reaches no storage of the remote side; the image equals a local build's.
#[test]
fn secret_steps_run_on_a_worker_over_mutual_tls() {
    let Some(farm) = Farm::start(Some("worker")) else {
        return;
    };
    let ctx = secret_context();
    let local = build(ctx.path(), None, &[]);
    local.success();
    let remote = build(ctx.path(), Some(&farm), &[]);
    remote.success();
    assert_eq!(
        manifest(&remote.stdout),
        manifest(&local.stdout),
        "a remote build must give the local build's image\n{}",
        remote.stderr
    );
    let log = farm.log();
    let ran = farm.ran();
    // The control step mounts nothing: a build given secrets runs it here and uploads nothing of it,
    // as before; both secret steps run on the worker.
    assert_eq!(ran.len(), 2, "{log}");
    assert!(
        log.contains("receiving secrets tok from 127.0.0.1:")
            && log.contains("sha256sum < /run/secrets/tok")
            && log.contains("test -n \"$TOK\""),
        "{log}"
    );
    assert!(!log.contains("action failed"), "{log}");
    let ops = farm.operations();
    for action in &ran {
        assert!(
            ops.contains(action.as_str()),
            "BuildGrid lists no operation for {action}:\n{ops}"
        );
    }

    let found = farm.secret_found();
    assert!(
        found.is_empty(),
        "the secret reached the remote side:\n{}",
        found.join("\n")
    );
    // The searches are real: the control value the first step wrote reached the CAS and the worker's
    // directory (as the second step's input), and the database holds the secret steps' operations.
    assert!(!leaks_under(&farm.cas(), &[CONTROL.as_bytes()]).is_empty());
    assert!(!leaks_under(&farm.dir.path().join("worker"), &[CONTROL.as_bytes()]).is_empty());
    let dump = std::fs::read_to_string(farm.dump_database()).unwrap();
    assert!(ran.iter().all(|a| dump.contains(a.as_str())), "{dump}");

    // A step that writes the secret into its layer: the worker's leak guard fails it before anything
    // of it is uploaded, and the build fails with the guard's message.
    let leaky = context(&[(
        "Dockerfile",
        // The check that would refuse this before any step runs is skipped: the worker's guard is tested.
        "# check=skip=SecretCopiedToFile\nFROM base\nRUN --mount=type=secret,id=tok cp /run/secrets/tok /copied\n",
    )]);
    let out = build(leaky.path(), Some(&farm), &[]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("secret `tok` leaked") && out.stderr.contains("/copied"),
        "{}",
        out.stderr
    );
    assert_eq!(farm.ran().len(), 3, "{}", farm.log());
    assert!(farm.log().contains("the worker uploaded nothing"));

    // An endpoint whose certificate another CA signed: the worker refuses it before sending the nonce.
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN --mount=type=secret,id=tok test -s /run/secrets/tok\n",
    )]);
    let out = build_as("impostor", ctx.path(), Some(&farm), &[]);
    out.expect_code(1);
    let said = out.stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        said.contains("TLS handshake failed: invalid peer certificate: UnknownIssuer"),
        "{}",
        out.stderr
    );
    let found = farm.secret_found();
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// A step that mounts an SSH agent runs on the worker: each connection it makes to its agent socket is
/// relayed over mutual TLS to the build's agent (a real `ssh-agent`), so `ssh-keygen -Y sign` inside
/// the step makes a signature the test verifies with the public key, while the private key reaches no
/// CAS blob, no row of BuildGrid's database and nothing in the worker's directory. Requests that would
/// change the user's agent (adding a key, removing all) are refused by the build's relay.
#[test]
fn ssh_agent_steps_run_on_a_worker_through_the_build() {
    let Some(farm) = Farm::start(Some("worker")) else {
        return;
    };
    let agent = Agent::start();
    let ctx = context(&[
        ("message", "signed on a worker\n"),
        ("key.pub", &agent.public_key),
        (
            "Dockerfile",
            "FROM base\n\
             COPY tools/ /\n\
             COPY message key.pub other /in/\n\
             RUN --mount=type=ssh ssh-add -l > /listed && ssh-keygen -Y sign -f /in/key.pub -n kiln /in/message \
                 && mv /in/message.sig /signature\n\
             RUN --mount=type=ssh,id=deploy,target=/tmp/a.sock \
                 if SSH_AUTH_SOCK=/tmp/a.sock ssh-add /in/other; then echo added; else echo refused; fi > /added \
                 && if SSH_AUTH_SOCK=/tmp/a.sock ssh-add -D; then echo removed; else echo refused; fi > /removed\n",
        ),
    ]);
    tools_tree(ctx.path(), &["/usr/bin/ssh-add", "/usr/bin/ssh-keygen"]);
    new_key(&ctx.path().join("other"), "other");
    let out_dir = tempdir("remote-ssh-out-");
    let dest = out_dir.path().join("img");
    let sock = agent.socket.display().to_string();
    let out = build_to(
        "build",
        ctx.path(),
        Some(&farm),
        &[
            "--ssh",
            &format!("default={sock}"),
            "--ssh",
            &format!("deploy={sock}"),
        ],
        &dest,
    );
    out.success();
    let log = farm.log();
    assert_eq!(farm.ran().len(), 2, "{log}");
    assert!(
        log.contains("forwarding ssh agents default from 127.0.0.1:")
            && log.contains("forwarding ssh agents deploy from 127.0.0.1:")
            && log.contains("ssh-keygen -Y sign"),
        "{log}"
    );
    assert!(!log.contains("action failed"), "{log}");

    let image = unpack(&dest);
    let read = |p: &str| std::fs::read_to_string(image.rootfs.join(p)).unwrap();
    assert!(
        read("listed").contains(&agent.fingerprint),
        "{}",
        read("listed")
    );
    // The signature is the agent's: it verifies against the public key.
    let dir = tempdir("remote-ssh-verify-");
    let signers = dir.path().join("allowed_signers");
    write(&signers, format!("kiln-test {}", agent.public_key));
    let sig = dir.path().join("message.sig");
    write(&sig, read("signature"));
    let verified = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "kiln", "-I", "kiln-test", "-f"])
        .arg(&signers)
        .arg("-s")
        .arg(&sig)
        .stdin(std::fs::File::open(ctx.path().join("message")).unwrap())
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    // The relay refuses what would change the user's agent; the agent still holds its one key.
    assert_eq!(read("added").trim(), "refused");
    assert_eq!(read("removed").trim(), "refused");
    let listed = Command::new("ssh-add")
        .arg("-l")
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains(&agent.fingerprint), "{listed}");

    // The key's secret half itself (the file's first bytes are a header every such key shares).
    let parsed = ssh_key::PrivateKey::from_openssh(&agent.private_key).unwrap();
    let seed = parsed.key_data().ed25519().unwrap().private.to_bytes();
    let key: &[&[u8]] = &[&seed];
    let mut found = leaks_under(&farm.cas(), key);
    found.extend(leaks_under(&farm.dump_database(), key));
    found.extend(leaks_under(&farm.dir.path().join("worker"), key));
    assert!(
        found.is_empty(),
        "key material reached the remote side: {found:?}"
    );
    // The search is real: the public key the context holds reached the CAS as a step's input.
    let public = agent.public_key.split_whitespace().nth(1).unwrap();
    assert!(!leaks_under(&farm.cas(), &[public.as_bytes()]).is_empty());

    // The control: the key the step offered is one the agent takes when asked directly.
    let other = ctx.path().join("other");
    let direct = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("ssh-add")
            .args(args)
            .env("SSH_AUTH_SOCK", &agent.socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    direct(&[other.as_os_str()]);
    direct(&["-d".as_ref(), other.as_os_str()]);
}

/// A worker without a TLS client identity refuses a step with secrets; the build fails with its
/// reason, and the value was never sent.
#[test]
fn a_worker_without_a_certificate_refuses_secrets() {
    let Some(farm) = Farm::start(None) else {
        return;
    };
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN --mount=type=secret,id=tok test -s /run/secrets/tok\n",
    )]);
    let out = build(ctx.path(), Some(&farm), &[]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("refuses to receive secrets") && out.stderr.contains("--tls-cert"),
        "{}",
        out.stderr
    );
    assert!(farm.log().contains("refuses to receive secrets"));
    let found = farm.secret_found();
    assert!(found.is_empty(), "{}", found.join("\n"));

    // Nor does it take a step with an SSH agent: no agent request is relayed.
    let agent = Agent::start();
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\"\n",
    )]);
    let ssh = format!("default={}", agent.socket.display());
    let out = build(ctx.path(), Some(&farm), &["--ssh", &ssh]);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("refuses to receive secrets or ssh agents"),
        "{}",
        out.stderr
    );
    assert!(
        farm.log()
            .contains("refuses to receive secrets or ssh agents"),
        "{}",
        farm.log()
    );
}

/// A worker whose certificate another CA signed: the build's endpoint refuses the handshake, the build
/// fails saying so, and the value was never sent.
#[test]
fn the_build_refuses_a_worker_from_another_ca() {
    let Some(farm) = Farm::start(Some("stranger")) else {
        return;
    };
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN --mount=type=secret,id=tok test -s /run/secrets/tok\n",
    )]);
    let out = build(ctx.path(), Some(&farm), &[]);
    out.expect_code(1);
    // The renderer wraps help text at any space.
    let said = out.stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        said.contains("the secrets were never sent")
            && said.contains("TLS handshake refused: invalid peer certificate: UnknownIssuer"),
        "{}",
        out.stderr
    );
    assert!(
        farm.log().contains("cannot receive the step's secrets"),
        "{}",
        farm.log()
    );
    let found = farm.secret_found();
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The flags' mistakes are located command-line errors (exit 2), before anything runs.
#[test]
fn remote_secrets_flags_are_checked() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN true\n")]);
    let certs = tempdir("remote-secrets-certs-");
    let pem = certs.path().join("x.pem");
    write(&pem, "");
    let pem = pem.display().to_string();
    let cases: [(&[&str], &str); 5] = [
        (
            &["--remote-secrets=allow"],
            "--remote-secrets=allow without --remote-executor",
        ),
        (
            &[
                "--remote-cache",
                "grpc://127.0.0.1:1",
                "--remote-secrets=allow",
            ],
            "--remote-secrets=allow without --remote-executor",
        ),
        (
            &[
                "--remote-executor",
                "grpc://127.0.0.1:1",
                "--remote-secrets=allow",
                "--remote-tls-ca",
                &pem,
            ],
            "without a TLS identity: --remote-tls-cert, --remote-tls-key missing",
        ),
        (
            &["--remote-tls-ca", &pem],
            "--remote-tls-ca without --remote-executor or --remote-cache",
        ),
        (
            &["--remote-secrets-listen", "0.0.0.0:0"],
            "--remote-secrets-listen without --remote-secrets=allow",
        ),
    ];
    for (args, says) in cases {
        let out = Kiln::new().with_base().args(args).arg(ctx.path()).run();
        out.expect_code(2);
        assert!(
            unwrapped(&out.stderr).contains(says),
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains('^'), "{args:?}: {}", out.stderr);
    }
    // Unreadable certificates are located errors before anything runs (nothing listens on port 1).
    let good = tempdir("remote-secrets-good-");
    tool(
        "bash",
        &[
            repo()
                .join("tests/fixtures/remote-secrets-certs.sh")
                .to_str()
                .unwrap(),
            good.path().to_str().unwrap(),
        ],
    );
    let good = |n: &str| good.path().join(n).display().to_string();
    for (ca, cert, key, says) in [
        (
            pem.clone(),
            good("build.pem"),
            good("build.key"),
            "cannot read the CA certificate",
        ),
        (
            good("ca.pem"),
            pem.clone(),
            good("build.key"),
            "cannot read the certificate",
        ),
        (
            good("ca.pem"),
            good("build.pem"),
            pem.clone(),
            "cannot read the private key",
        ),
        (
            good("ca.pem"),
            good("build.pem"),
            good("worker.key"),
            "certificate and key",
        ),
    ] {
        let out = Kiln::new()
            .with_base()
            .args([
                "--remote-executor",
                "grpc://127.0.0.1:1",
                "--remote-secrets=allow",
                "--remote-tls-ca",
                &ca,
                "--remote-tls-cert",
                &cert,
                "--remote-tls-key",
                &key,
            ])
            .arg(ctx.path())
            .run();
        out.expect_code(2);
        let said = out.stderr.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            said.contains(says) && said.contains('^'),
            "{says}: {}",
            out.stderr
        );
    }
    let out = Kiln::new()
        .with_base()
        .args(["--remote-secrets=maybe"])
        .arg(ctx.path())
        .run();
    out.expect_code(2);
    assert!(out.stderr.contains("allow"), "{}", out.stderr);
    // The worker's secret identity is whole (CA, certificate and key); a part of it with a plaintext
    // server would secure nothing.
    let out = Kiln::bare()
        .args([
            "worker",
            "--server",
            "grpc://127.0.0.1:1",
            "--tls-cert",
            &pem,
            "--tls-key",
            &pem,
        ])
        .run();
    out.expect_code(2);
    assert!(out.stderr.contains("plaintext"), "{}", out.stderr);
    // Unreadable certificates are named.
    let out = Kiln::bare()
        .args([
            "worker",
            "--server",
            "grpc://127.0.0.1:1",
            "--tls-ca",
            &pem,
            "--tls-cert",
            &pem,
            "--tls-key",
            &pem,
        ])
        .run();
    out.expect_code(2);
    assert!(out.stderr.contains("x.pem"), "{}", out.stderr);
}
