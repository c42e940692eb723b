//! SSH end to end: a real `sshd` on 127.0.0.1 serves a git repository, and a `RUN --mount=type=ssh` clones
//! it with the image's own git and ssh, authenticated through a real `ssh-agent` (`--ssh default`) or
//! through kiln's in-process agent (`--ssh default=KEYFILE`). The clone must land in the image; the key
//! must land nowhere.

use std::io::Read as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::Digest as _;

use crate::ssh::{Agent, new_key};
use crate::support::{Kiln, Output, StepState, context, leaks_under, repo, tempdir, tool, unpack};

/// The Debian image with git and openssh-client, made by `tests/fixtures/make-git-image.sh` on first use
/// and kept under the target dir, named by the script's hash: debootstrap costs tens of seconds and needs
/// the Debian mirror, so later runs (and every test of this run) share the one made before.
pub(crate) fn git_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let script = repo().join("tests/fixtures/make-git-image.sh");
        let hash = hex::encode(sha2::Sha256::digest(
            std::fs::read(&script).expect("the fixture script"),
        ));
        let name = format!("git-image-{}", &hash[..16]);
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dest = root.join(&name);
        if dest.join("index.json").is_file() {
            return dest;
        }
        remove_stale_git_images(root, &name);
        // Made under a private name and renamed, so a concurrent test process never sees half an image.
        let work = root.join(format!("{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(&script)
            .arg(&work)
            .output()
            .expect("cannot run bash");
        assert!(
            out.status.success(),
            "tests/fixtures/make-git-image.sh failed (are debootstrap and the Debian mirror reachable?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "made the git base image {} in {:.1?}",
            dest.display(),
            started.elapsed()
        );
        if std::fs::rename(&work, &dest).is_err() {
            // Another process got there first; its image is as good as ours.
            let _ = std::fs::remove_dir_all(&work);
        }
        assert!(dest.join("index.json").is_file(), "no git image at {}", dest.display());
        dest
    })
}

/// Images from an older version of the script, and half-made ones whose maker is gone: each is ~100 MB.
fn remove_stale_git_images(root: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("git-image-") else {
            continue;
        };
        let stale = match rest.split_once(".tmp-") {
            Some((_, pid)) => !Path::new("/proc").join(pid).exists(),
            None => name != current,
        };
        if stale {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A real OpenSSH server on 127.0.0.1 that lets `root` in with one public key and serves a bare git
/// repository holding one commit with `README`; killed when dropped. `add_git_ssh` clones it too.
pub(crate) struct GitServer {
    child: Child,
    pub(crate) port: u16,
    pub(crate) repo: PathBuf,
    /// What `README` in the repository says: unique per server, so a clone cannot come from anywhere else.
    pub(crate) readme: String,
    dir: tempfile::TempDir,
}

impl GitServer {
    /// The server's host key as a `known_hosts` line.
    pub(crate) fn known_host(&self) -> String {
        let key = std::fs::read_to_string(self.dir.path().join("host_ed25519.pub")).unwrap();
        format!("[127.0.0.1]:{} {}", self.port, key.trim())
    }

    pub(crate) fn start(authorized_key: &str) -> GitServer {
        let dir = tempdir("sshd-");
        let d = dir.path();
        let readme = format!(
            "cloned over ssh from the test's sshd {}-{}\n",
            std::process::id(),
            d.file_name().unwrap().to_string_lossy()
        );
        let repo = make_repo(d, &readme);

        let host_key = d.join("host_ed25519");
        tool(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                host_key.to_str().unwrap(),
            ],
        );
        let authorized = d.join("authorized_keys");
        std::fs::write(&authorized, authorized_key).unwrap();
        // sshd refuses to start without its privilege separation directory; a host that never ran the
        // packaged service has none.
        std::fs::create_dir_all("/run/sshd").expect("cannot make /run/sshd");

        // A free port: the kernel picks one, and it is released just before sshd binds it.
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {authorized}\n\
                 AuthenticationMethods publickey\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 AllowUsers root\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 LogLevel VERBOSE\n",
                host_key = host_key.display(),
                pid = d.join("sshd.pid").display(),
                authorized = authorized.display(),
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();

        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start /usr/sbin/sshd (install Debian's openssh-server)");
        let mut server = GitServer {
            child,
            port,
            repo,
            readme,
            dir,
        };
        server.wait_until_listening();
        server
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("sshd exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "sshd is not listening on port {} after 10s:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What sshd said so far (it logs to stderr with `-e`): shown when a clone fails.
    pub(crate) fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.path().join("sshd.log")) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare repository under `dir` whose `main` holds one commit with `README`.
fn make_repo(dir: &Path, readme: &str) -> PathBuf {
    let work = dir.join("work");
    let bare = dir.join("repo.git");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("README"), readme).unwrap();
    let git = |args: &[&str]| {
        let mut all = vec![
            "-C",
            work.to_str().unwrap(),
            "-c",
            "user.name=kiln tests",
            "-c",
            "user.email=tests@kiln.invalid",
        ];
        all.extend_from_slice(args);
        tool("git", &all);
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "README"]);
    git(&["commit", "-q", "-m", "the file the image must clone"]);
    tool(
        "git",
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            bare.to_str().unwrap(),
        ],
    );
    bare
}

/// Clones the server's repository over ssh inside the image and prints its README. The host key is not
/// checked (it is made per test); `BatchMode` makes a missing key fail at once instead of prompting.
fn clone_dockerfile(required: bool) -> String {
    let mount = if required {
        "type=ssh,required=true"
    } else {
        "type=ssh"
    };
    format!(
        "# syntax=docker/dockerfile:1
FROM base
ARG SSH_PORT
ARG REPO
RUN --mount={mount} --network=host \\
    GIT_SSH_COMMAND=\"ssh -p $SSH_PORT -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null\" \\
    git clone ssh://root@127.0.0.1:$SSH_PORT$REPO /src && cat /src/README
"
    )
}

/// `kiln build` of the clone Dockerfile against `server`, FROM the git image, into a fresh store.
fn clone_build(server: &GitServer, required: bool) -> (Kiln, tempfile::TempDir) {
    let ctx = context(&[("Dockerfile", &clone_dockerfile(required))]);
    let kiln = Kiln::new()
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", git_image().display()))
        .arg("--build-arg")
        .arg(format!("SSH_PORT={}", server.port))
        .arg("--build-arg")
        .arg(format!("REPO={}", server.repo.display()))
        .args(["--allow", "network.host"]);
    (kiln, ctx)
}

/// The build succeeded, the clone ran (not from a cache), and the image holds the server's README; the
/// key's bytes (raw seed and key file, every encoding) are in no file of the image or the store.
#[track_caller]
fn assert_cloned(out: &Output, kiln: &Kiln, dest: &Path, server: &GitServer, key_file: &[u8]) {
    assert_eq!(
        out.code,
        Some(0),
        "the clone build failed\n--- kiln\n{}\n--- sshd\n{}",
        out.stderr,
        server.log()
    );
    assert_eq!(out.step("git clone").state, StepState::Done);
    assert!(
        out.stderr.contains(server.readme.trim()),
        "the step printed the cloned README:\n{}",
        out.stderr
    );
    let image = unpack(dest);
    let cloned = std::fs::read_to_string(image.rootfs.join("src/README"))
        .expect("the image holds the cloned repository's README");
    assert_eq!(cloned, server.readme);
    assert!(
        image.rootfs.join("src/.git/HEAD").is_file(),
        "a git checkout"
    );

    let key = ssh_key::PrivateKey::from_openssh(key_file).expect("an OpenSSH key");
    let seed = key
        .key_data()
        .ed25519()
        .expect("an ed25519 key")
        .private
        .to_bytes();
    // The 32-byte secret scalar itself, and a stretch of the key file's base64 body (past its header).
    let secrets: [&[u8]; 2] = [&seed, &key_file[40..100]];
    for place in [dest, kiln.store()] {
        let found = leaks_under(place, &secrets);
        assert!(
            found.is_empty(),
            "key material in {}: {found:?}",
            place.display()
        );
    }
}

/// A real `ssh-agent` holding the key, forwarded with a bare `--ssh default` (from `SSH_AUTH_SOCK`).
#[test]
fn clones_over_ssh_through_a_real_agent() {
    let agent = Agent::start();
    let server = GitServer::start(&agent.public_key);
    let (kiln, ctx) = clone_build(&server, true);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let kiln = kiln
        .env("SSH_AUTH_SOCK", &agent.socket)
        .args(["--ssh", "default", "-o"])
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path());
    let out = kiln.run();
    assert_cloned(&out, &kiln, &dest, &server, &agent.private_key);
}

/// `--ssh default=KEYFILE`: kiln's own in-process agent signs for the clone.
#[test]
fn clones_over_ssh_with_a_key_file() {
    let keys = tempdir("key-");
    let key = keys.path().join("id_ed25519");
    let (_, private_key) = new_key(&key, "kiln-clone");
    let public_key = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let server = GitServer::start(&public_key);
    let (kiln, ctx) = clone_build(&server, true);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let kiln = kiln
        .arg("--ssh")
        .arg(format!("default={}", key.display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path());
    let out = kiln.run();
    assert_cloned(&out, &kiln, &dest, &server, &private_key);
}

/// Without `--ssh`, the required mount stops the build before any step runs (nothing is imported or
/// cloned); made optional, the same clone runs and is refused by the server, so the builds above succeed
/// only through the agent they were given.
#[test]
fn the_clone_needs_the_agent() {
    let agent = Agent::start();
    let server = GitServer::start(&agent.public_key);

    let (kiln, ctx) = clone_build(&server, true);
    let out = kiln.arg(ctx.path()).run();
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("ssh agent `default` is required but was not given")
            && out.stderr.contains("--ssh default"),
        "{}",
        out.stderr
    );
    assert!(
        !out.steps().iter().any(|s| s.name.contains("git clone")),
        "no step may start:\n{}",
        out.stderr
    );

    let (kiln, ctx) = clone_build(&server, false);
    let out = kiln.arg(ctx.path()).run();
    out.expect_code(1);
    assert_eq!(out.step("git clone").state, StepState::Error);
    assert!(
        out.stderr.contains("Permission denied (publickey)"),
        "the server refused the clone:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains(server.readme.trim()));
}

/// `examples/ssh/app.build`, the same clone in kiln's own language: the agent is a typed handle mounted
/// into the step, the repository and ssh options are params.
#[test]
fn the_build_language_example_clones_through_the_agent() {
    let agent = Agent::start();
    let server = GitServer::start(&agent.public_key);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let kiln = Kiln::new()
        .current_dir(repo())
        .env("SSH_AUTH_SOCK", &agent.socket)
        .args(["-f", "examples/ssh/app.build", "--build-context"])
        .arg(format!("git-base=oci-layout://{}", git_image().display()))
        .args(["--ssh", "default", "--allow", "network.host", "--param"])
        .arg(format!(
            "repo=ssh://root@127.0.0.1:{}{}",
            server.port,
            server.repo.display()
        ))
        .args([
            "--param",
            "ssh_options=-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "-o",
        ])
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg("examples/ssh");
    let out = kiln.run();
    assert_cloned(&out, &kiln, &dest, &server, &agent.private_key);
}
