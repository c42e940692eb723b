//! SSH agent forwarding against a real `ssh-agent`: `RUN --mount=type=ssh` reaches the agent through a
//! per-step socket (the host's `ssh-add` runs inside the image to ask it), and no key enters the image.

use std::path::Path;
use std::process::{Child, Command};

use crate::support::{Kiln, context, files_under, leaks, tempdir, tool, unpack};

/// A real ssh-agent on a private socket, holding one fresh ed25519 key, killed when dropped.
pub(crate) struct Agent {
    child: Child,
    pub(crate) socket: std::path::PathBuf,
    pub(crate) fingerprint: String,
    pub(crate) private_key: Vec<u8>,
    /// The key's public half, as an `authorized_keys` line.
    pub(crate) public_key: String,
    _dir: tempfile::TempDir,
}

/// A fresh ed25519 key without passphrase at `path`: its fingerprint and the private key file's bytes.
pub(crate) fn new_key(path: &Path, comment: &str) -> (String, Vec<u8>) {
    let file = path.to_str().unwrap();
    tool(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", file],
    );
    let fingerprint = tool("ssh-keygen", &["-lf", file]);
    let fingerprint = fingerprint
        .split_whitespace()
        .nth(1)
        .expect("a fingerprint")
        .to_string();
    (fingerprint, std::fs::read(path).unwrap())
}

impl Agent {
    pub(crate) fn start() -> Agent {
        let dir = tempdir("agent-");
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("ssh-agent (openssh-client) is installed");
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let key = dir.path().join("id_ed25519");
        let (fingerprint, private_key) = new_key(&key, "kiln-test");
        let added = Command::new("ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &socket)
            .output()
            .expect("ssh-add");
        assert!(
            added.status.success(),
            "ssh-add: {}",
            String::from_utf8_lossy(&added.stderr)
        );
        let public_key =
            std::fs::read_to_string(key.with_extension("pub")).expect("the public key");
        Agent {
            child,
            socket,
            fingerprint,
            private_key,
            public_key,
            _dir: dir,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host's `ssh-add` and the libraries it links, laid out as a root filesystem under `tools/`.
pub(crate) fn ssh_add_tree(ctx: &Path) {
    tools_tree(ctx, &["/usr/bin/ssh-add"]);
}

/// The host's `binaries` and the libraries they link, laid out as a root filesystem under `tools/`.
pub(crate) fn tools_tree(ctx: &Path, binaries: &[&str]) {
    let mut files = Vec::new();
    for binary in binaries {
        files.push(Path::new(binary).to_path_buf());
        let ldd = tool("ldd", &[binary]);
        for line in ldd.lines() {
            if let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) {
                files.push(std::fs::canonicalize(path).unwrap_or_else(|_| path.into()));
                files.push(path.into());
            }
        }
    }
    for f in files {
        let dest = ctx.join("tools").join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(&f).unwrap(), &dest).unwrap();
    }
}

#[test]
fn agent_is_forwarded_and_no_key_enters_the_image() {
    let agent = Agent::start();
    let ctx = context(&[(
        "Dockerfile",
        "FROM base
COPY tools/ /
RUN --mount=type=ssh ! ssh-add -D
RUN --mount=type=ssh ssh-add -l && test \"$SSH_AUTH_SOCK\" = /run/buildkit/ssh_agent.0
RUN --mount=type=ssh,id=deploy,target=/tmp/agent.sock,uid=1000,mode=0600 test \"$(stat -c '%u %a' /tmp/agent.sock)\" = '1000 600'
USER appuser
RUN --mount=type=ssh,id=deploy,uid=1000 ssh-add -l
RUN test ! -e /run/buildkit && test -z \"$SSH_AUTH_SOCK\"
",
    )]);
    ssh_add_tree(ctx.path());
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let out = Kiln::new()
        .with_base()
        .arg("--ssh")
        .arg(format!("default={}", agent.socket.display()))
        .arg("--ssh")
        .arg(format!("deploy={}", agent.socket.display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run();
    out.success();
    assert!(
        out.stderr.matches(&agent.fingerprint).count() >= 2,
        "the agent's key is listed from inside both steps:\n{}",
        out.stderr
    );
    let image = unpack(&dest);
    assert!(
        !image.rootfs.join("run/buildkit").exists(),
        "the socket's mount point stayed"
    );
    assert!(
        !image.rootfs.join("tmp/agent.sock").exists(),
        "the socket's mount point stayed"
    );
    let found = leaks(&files_under(&dest), &agent.private_key[40..100]);
    assert!(found.is_empty(), "key material in the image: {found:?}");
}

#[test]
fn a_required_agent_must_be_given_before_anything_runs() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN --mount=type=ssh,required=true true\n",
    )]);
    let out = Kiln::new().with_base().arg(ctx.path()).run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("ssh agent `default` is required"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--ssh default"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("#2 "),
        "no step may start:\n{}",
        out.stderr
    );
}

/// `--ssh ID=KEYFILE`: kiln serves the key from an in-process agent; the step lists it through its
/// socket, and the key's bytes are in no layer, no output and no store file.
#[test]
fn key_files_are_served_by_kiln_and_never_enter_the_image() {
    let dir = tempdir("key-");
    let key = dir.path().join("id_ed25519");
    let (fingerprint, private_key) = new_key(&key, "kiln-keyfile");
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nCOPY tools/ /\nRUN --mount=type=ssh,id=deploy ssh-add -l\n",
    )]);
    ssh_add_tree(ctx.path());
    let store = tempdir("store-");
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let out = Kiln::build_in(store.path())
        .with_base()
        .arg("--ssh")
        .arg(format!("deploy={}", key.display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run();
    out.success();
    assert!(
        out.stderr.contains(&fingerprint),
        "the key is listed in the step:\n{}",
        out.stderr
    );
    for place in [&dest, &store.path().to_path_buf()] {
        let found = leaks(&files_under(place), &private_key[40..100]);
        assert!(
            found.is_empty(),
            "key material in {}: {found:?}",
            place.display()
        );
    }
}
