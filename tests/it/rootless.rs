//! Rootless mode: kiln run by an unprivileged user (made here, with a /etc/subuid range) builds through a
//! user namespace. The secret, SSH and cache builds pass as they do for root, layers carry the ids of the
//! namespace (not the host's subordinate ids), and nothing outlives the build.
//!
//! The tests run as root (as CI does) so they can create the users; everything they hand to kiln lives in
//! a workspace the user owns.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::isolation::{OtherAddress, Server};
use crate::support::{
    Kiln, Layout, Output, base_image, context, files_under, leaks, tool, unpack, write,
};

/// A user with a subordinate id range: kiln maps 65536 ids.
pub(crate) const RANGED: &str = "kiln-rootless";
/// A user without one: kiln falls back to mapping its own id only.
const SINGLE: &str = "kiln-rootless1";
const RANGE: &str = "200000-265535";

/// One unprivileged user, created on first use.
pub(crate) struct User {
    name: &'static str,
    uid: u32,
    gid: u32,
}

/// Creates the user (and its range, or makes sure it has none) once per test process; useradd and
/// /etc/subuid edits are not safe to run concurrently.
pub(crate) fn user(name: &'static str, ranged: bool) -> User {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        nix::unistd::geteuid().is_root(),
        "the rootless tests create users and must run as root"
    );
    assert!(
        Path::new("/usr/bin/newuidmap").exists(),
        "newuidmap is missing: install Debian's `uidmap` (scripts/setup.sh does)"
    );
    if nix::unistd::User::from_name(name).ok().flatten().is_none() {
        tool(
            "useradd",
            &[
                "--system",
                "--create-home",
                "--home-dir",
                &format!("/home/{name}"),
                "--shell",
                "/bin/sh",
                name,
            ],
        );
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let has = text.lines().any(|l| l.starts_with(&format!("{name}:")));
        if ranged && !has {
            let flag = if file.ends_with("uid") {
                "--add-subuids"
            } else {
                "--add-subgids"
            };
            tool("usermod", &[flag, RANGE, name]);
        } else if !ranged && has {
            let kept: String = text
                .lines()
                .filter(|l| !l.starts_with(&format!("{name}:")))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(file, kept).unwrap();
        }
    }
    let u = nix::unistd::User::from_name(name)
        .unwrap()
        .expect("the user exists now");
    User {
        name,
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    }
}

impl User {
    /// `setpriv` execs (where `runuser` would fork), so a signal to the child reaches kiln itself.
    pub(crate) fn wrapper(&self) -> Vec<String> {
        vec![
            "setpriv".into(),
            format!("--reuid={}", self.name),
            format!("--regid={}", self.name),
            "--init-groups".into(),
        ]
    }

    fn command(&self, program: &str) -> Command {
        let w = self.wrapper();
        let mut c = Command::new(&w[0]);
        c.args(&w[1..]).arg(program).env("HOME", self.home());
        c
    }

    pub(crate) fn home(&self) -> PathBuf {
        PathBuf::from(format!("/home/{}", self.name))
    }

    /// Gives `path` and everything under it to this user.
    pub(crate) fn own(&self, path: &Path) {
        for e in walkdir::WalkDir::new(path) {
            let e = e.unwrap();
            std::os::unix::fs::lchown(e.path(), Some(self.uid), Some(self.gid)).unwrap();
        }
    }

    /// Whether this user can run `test ARGS`.
    fn can(&self, args: &[&str]) -> bool {
        self.command("test")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A kiln binary this user can execute: cargo's own when its directories are traversable, else a copy.
    pub(crate) fn kiln_binary(&self) -> PathBuf {
        let cargo = PathBuf::from(env!("CARGO_BIN_EXE_kiln"));
        if self.can(&["-x", cargo.to_str().unwrap()]) {
            return cargo;
        }
        static COPY: OnceLock<PathBuf> = OnceLock::new();
        COPY.get_or_init(|| {
            // Not under the target dir, whose parents (a checkout under /root, say) may be closed.
            let dir = Path::new("/var/tmp/kiln-rootless-it");
            std::fs::create_dir_all(dir).unwrap();
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            let copy = dir.join("kiln");
            let tmp = dir.join(format!("kiln.{}", std::process::id()));
            std::fs::copy(&cargo, &tmp).unwrap();
            std::fs::rename(&tmp, &copy).unwrap();
            copy
        })
        .clone()
    }

    /// `kiln build --store STORE --progress plain` as this user, with the base image from `ws`.
    fn build(&self, ws: &Workspace) -> Kiln {
        let wrapper = self.wrapper();
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        Kiln::build_in(&ws.store)
            .program(self.kiln_binary())
            .wrapped(&wrapper)
            .env("HOME", self.home())
            .arg("--build-context")
            .arg(format!("base=oci-layout://{}", ws.base.display()))
    }

    /// Any other kiln command as this user.
    fn kiln(&self, args: &[&str]) -> Output {
        let wrapper = self.wrapper();
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        Kiln::bare()
            .program(self.kiln_binary())
            .wrapped(&wrapper)
            .env("HOME", self.home())
            .args(args)
            .run()
    }
}

/// A directory the user owns, holding the base image, a store and whatever the test adds.
struct Workspace {
    dir: tempfile::TempDir,
    base: PathBuf,
    store: PathBuf,
}

impl Workspace {
    fn new(user: &User) -> Workspace {
        // In the user's home: the target dir's parents need not be traversable by other users.
        let dir = tempfile::Builder::new()
            .prefix("kiln-it-")
            .tempdir_in(user.home())
            .unwrap();
        let base = dir.path().join("base");
        copy_tree(base_image(), &base);
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        user.own(dir.path());
        assert!(
            user.can(&["-r", base.join("index.json").to_str().unwrap()]),
            "{} cannot read {} in its own home",
            user.name,
            base.display()
        );
        Workspace { dir, base, store }
    }

    /// Moves a context into the workspace (so the user can read it) and returns its path.
    fn context(&self, user: &User, files: &[(&str, &str)]) -> PathBuf {
        let ctx = context(files);
        self.adopt(user, ctx.path(), "ctx")
    }

    fn adopt(&self, user: &User, from: &Path, name: &str) -> PathBuf {
        let to = self.dir.path().join(name);
        copy_tree(from, &to);
        user.own(&to);
        to
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out/image")
    }
}

/// Copies a tree of directories and regular files (contexts, an image layout) to `to`.
fn copy_tree(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// `(path, uid, gid)` of every entry of a layer tar.
fn owners(tar: &[u8]) -> Vec<(String, u64, u64)> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path().unwrap().to_string_lossy().into_owned(),
                h.uid().unwrap(),
                h.gid().unwrap(),
            )
        })
        .collect()
}

#[test]
fn secret_build_runs_rootless_with_namespace_ids_and_no_leak() {
    let u = user(RANGED, true);
    let ws = Workspace::new(&u);
    let secret_value = "rootless-s3cret-7f3a9c-value";
    let secret = ws.dir.path().join("secret.txt");
    write(&secret, secret_value);
    u.own(&secret);
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // Only part of the value is named in the Dockerfile: the whole of it would land in the history.
    let ctx = ws.context(
        &u,
        &[(
            "Dockerfile",
            "FROM base
RUN --mount=type=secret,id=s grep -q 3cret-7f3a9c-val /run/secrets/s \\
    && echo made > /made && id -u > /id
RUN mkdir /owned && echo x > /owned/f && chown -R 1000:1000 /owned && rm /bin/ls \\
    && rm -rf /root && mkdir /root && echo new > /root/only
",
        )],
    );
    let dest = ws.out();
    let out = u
        .build(&ws)
        .args(["--secret"])
        .arg(format!("id=s,src={}", secret.display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(&ctx)
        .run();
    out.success();
    assert!(
        out.stderr
            .contains("rootless: uid 0 is kiln-rootless, uids 1-65536 come from /etc/subuid"),
        "{}",
        out.stderr
    );
    // The output belongs to the user who ran kiln, not to a subordinate id.
    assert_eq!(
        std::fs::metadata(dest.join("index.json")).unwrap().uid(),
        u.uid
    );

    // Independent judges read the image; the step saw itself as root.
    tool(
        "skopeo",
        &["inspect", &format!("oci:{}:latest", dest.display())],
    );
    let image = unpack(&dest);
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("made")).unwrap(),
        "made\n"
    );
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("id")).unwrap(),
        "0\n"
    );
    assert!(!image.rootfs.join("bin/ls").exists(), "the whiteout holds");
    assert!(
        !image.rootfs.join("root/.profile").exists() && image.rootfs.join("root/only").exists(),
        "the opaque dir holds"
    );

    // The layers carry the namespace's ids: 0 for root's files, 1000 where the step chowned, never the
    // host's subordinate ids (200000 and up).
    let tars = Layout::new(&dest).layer_tars();
    let [_, first, second] = tars.as_slice() else {
        panic!("three layers expected, got {}", tars.len());
    };
    let first = owners(first);
    assert!(
        first
            .iter()
            .any(|(p, uid, gid)| p == "made" && (*uid, *gid) == (0, 0)),
        "{first:?}"
    );
    let second = owners(second);
    for (path, uid, gid) in &second {
        let want = if path.starts_with("owned") { 1000 } else { 0 };
        assert_eq!((*uid, *gid), (want, want), "{path}: {second:?}");
    }
    let paths: Vec<&str> = second.iter().map(|(p, _, _)| p.as_str()).collect();
    assert!(paths.contains(&"bin/.wh.ls"), "{paths:?}");
    assert!(paths.contains(&"root/.wh..wh..opq"), "{paths:?}");

    let mut everything = files_under(&dest);
    everything.extend(files_under(&ws.store));
    let found = leaks(&everything, secret_value.as_bytes());
    assert!(found.is_empty(), "the secret leaked: {found:?}");
}

/// A real ssh-agent run by the user, and a key file it owns: both reach the step rootless.
#[test]
fn ssh_forwarding_runs_rootless() {
    let u = user(RANGED, true);
    let ws = Workspace::new(&u);
    let keys = ws.dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let agent_key = keys.join("agent_key");
    let (agent_fp, agent_private) = crate::ssh::new_key(&agent_key, "kiln-rootless-agent");
    let file_key = keys.join("file_key");
    let (file_fp, file_private) = crate::ssh::new_key(&file_key, "kiln-rootless-file");
    u.own(&keys);
    let socket = keys.join("agent.sock");
    let agent = u
        .command("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent (openssh-client) is installed");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let agent = Kill(agent);
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let added = u
        .command("ssh-add")
        .arg(&agent_key)
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "ssh-add: {}",
        String::from_utf8_lossy(&added.stderr)
    );

    let staged = context(&[(
        "Dockerfile",
        "FROM base
COPY tools/ /
RUN --mount=type=ssh ssh-add -l && test \"$SSH_AUTH_SOCK\" = /run/buildkit/ssh_agent.0
USER appuser
RUN --mount=type=ssh,id=deploy,uid=1000 ssh-add -l
",
    )]);
    crate::ssh::ssh_add_tree(staged.path());
    let ctx = ws.adopt(&u, staged.path(), "ctx");
    let dest = ws.out();
    let out = u
        .build(&ws)
        .env("SSH_AUTH_SOCK", &socket)
        .args(["--ssh", "default"])
        .arg("--ssh")
        .arg(format!("deploy={}", file_key.display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(&ctx)
        .run();
    out.success();
    assert!(
        out.stderr.contains(&agent_fp),
        "the user's agent answers inside the step:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&file_fp),
        "kiln's own agent serves the key file to uid 1000:\n{}",
        out.stderr
    );
    let image = unpack(&dest);
    assert!(!image.rootfs.join("run/buildkit").exists());
    let mut everything = files_under(&dest);
    everything.extend(files_under(&ws.store));
    for key in [&agent_private, &file_private] {
        let found = leaks(&everything, &key[40..100]);
        assert!(found.is_empty(), "key material leaked: {found:?}");
    }
    drop(agent);
}

/// A cache mount survives between two rootless builds, stays out of the layers, and `kiln du`/`prune` as
/// the user handle a store full of subordinate-id files.
#[test]
fn cache_mounts_work_rootless_and_prune_cleans_up() {
    let u = user(RANGED, true);
    let ws = Workspace::new(&u);
    let dockerfile = |n: &str| {
        format!(
            "FROM base
RUN --mount=type=cache,target=/var/cache/k,uid=1000,gid=1000 \\
    ls /var/cache/k > /seen-{n} && echo {n} > /var/cache/k/from-{n} \\
    && test \"$(stat -c %u /var/cache/k)\" = 1000
"
        )
    };
    let first_ctx = ws.context(&u, &[("Dockerfile", &dockerfile("first"))]);
    u.build(&ws).arg(&first_ctx).run().success();
    let second = context(&[("Dockerfile", &dockerfile("second"))]);
    let second_ctx = ws.adopt(&u, second.path(), "ctx2");
    let dest = ws.out();
    u.build(&ws)
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(&second_ctx)
        .run()
        .success();
    let image = unpack(&dest);
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("seen-second")).unwrap(),
        "from-first\n",
        "the second build sees what the first left in the cache"
    );
    for tar in Layout::new(&dest).layer_tars() {
        let paths = crate::support::tar_paths(&tar);
        assert!(
            !paths.iter().any(|p| p.contains("from-")),
            "the cache is in a layer: {paths:?}"
        );
    }
    // On the host the cache dir belongs to a subordinate id: uid 1000 of the namespace.
    let caches: Vec<_> = std::fs::read_dir(ws.store.join("caches"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(
        caches
            .iter()
            .any(|e| e.metadata().unwrap().uid() == 200_000 + 999),
        "{caches:?}"
    );

    let store = ws.store.to_str().unwrap();
    let du = u.kiln(&["du", "--store", store]);
    du.success();
    assert!(du.stdout.contains("cache mounts"), "{}", du.stdout);
    u.kiln(&["prune", "-f", "--store", store, "--keep-storage", "0"])
        .success();
    let left: Vec<_> = walkdir::WalkDir::new(ws.store.join("snapshots"))
        .min_depth(1)
        .into_iter()
        .flatten()
        .map(|e| e.path().to_path_buf())
        .collect();
    assert!(left.is_empty(), "prune left {left:?}");
}

/// Without a subordinate range kiln maps only the user's own id: a busybox image builds, and an image
/// with files of another owner fails with an error that names the file, the id and the fix.
#[test]
fn a_single_id_map_builds_busybox_and_explains_other_owners() {
    let u = user(SINGLE, false);
    let ws = Workspace::new(&u);
    let ctx = ws.context(
        &u,
        &[(
            "Dockerfile",
            "FROM base\nRUN echo built > /built && id -u > /id\n",
        )],
    );
    let dest = ws.out();
    let out = u
        .build(&ws)
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(&ctx)
        .run();
    out.success();
    assert!(
        out.stderr.contains("rootless: only one id is mapped"),
        "{}",
        out.stderr
    );
    let image = unpack(&dest);
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("id")).unwrap(),
        "0\n"
    );

    // An image with a file owned by uid 1000, made by root kiln.
    let owned_ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN echo x > /owned && chown 1000:1000 /owned\n",
    )]);
    let owned = ws.dir.path().join("owned-image");
    Kiln::new()
        .with_base()
        .arg("-o")
        .arg(format!("type=oci,dest={}", owned.display()))
        .arg(owned_ctx.path())
        .run()
        .success();
    u.own(&owned);
    let from_owned = ws.adopt(
        &u,
        context(&[("Dockerfile", "FROM owned\nRUN true\n")]).path(),
        "ctx-owned",
    );
    let out = u
        .build(&ws)
        .arg("--build-context")
        .arg(format!("owned=oci-layout://{}", owned.display()))
        .arg(&from_owned)
        .run();
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    for needed in [
        "`owned`",
        "uid 1000",
        "/etc/subuid",
        "usermod --add-subuids",
    ] {
        assert!(
            out.stderr.contains(needed),
            "`{needed}` missing from:\n{}",
            out.stderr
        );
    }
}

/// SIGTERM to an unprivileged kiln mid-step: kiln is the process the caller started (no forwarding
/// parent), it stops, and neither the step's processes nor mounts survive.
#[test]
fn sigterm_to_rootless_kiln_leaves_nothing_behind() {
    use std::io::{BufRead as _, BufReader};
    let u = user(RANGED, true);
    let ws = Workspace::new(&u);
    let ctx = ws.context(
        &u,
        &[("Dockerfile", "FROM base\nRUN echo started && sleep 317\n")],
    );
    let mut cmd = u.command(u.kiln_binary().to_str().unwrap());
    cmd.args(["build", "--progress", "plain", "--store"])
        .arg(&ws.store)
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", ws.base.display()))
        .arg(&ctx)
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kiln starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.ends_with(" started") {
            break;
        }
    }
    assert!(seen.contains("started"), "the step never started:\n{seen}");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // The pid we hold is kiln, in its user namespace: there is no parent left to forward signals.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, u.kiln_binary());
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert!(uid_map.contains("200000"), "{uid_map}");
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        rest.join("\n").contains("terminated"),
        "{}",
        rest.join("\n")
    );
    assert_nothing_left("sleep 317", &ws.store);
}

/// A finished rootless build (with a tmpfs mount and both network modes) leaves no process (the id mapper
/// included) and no mount.
#[test]
fn successful_rootless_build_leaves_nothing_behind() {
    let u = user(RANGED, true);
    let ws = Workspace::new(&u);
    let ctx = ws.context(
        &u,
        &[(
            "Dockerfile",
            "FROM base
RUN --mount=type=tmpfs,target=/t (sleep 318 &) ; echo bg
RUN --network=none ip link show lo | grep -q UP && ! ip link | grep -v ' lo:' | grep -q '^[0-9]'
RUN --network=host ip link | grep -q ' lo:'
",
        )],
    );
    u.build(&ws)
        .args(["--allow", "network.host"])
        .arg(&ctx)
        .run()
        .success();
    assert_nothing_left("sleep 318", &ws.store);
    // Of the store's, only the sync kiln starts after a build (detached, `store::unsynced`) may still
    // run, and it ends by itself once its `syncfs` returns.
    let of_the_store = || -> Vec<(u32, String)> {
        pids()
            .into_iter()
            .filter_map(|p| {
                let c = std::fs::read_to_string(format!("/proc/{p}/cmdline")).ok()?;
                c.contains(ws.store.to_str().unwrap()).then_some((p, c))
            })
            .collect()
    };
    let others: Vec<_> = of_the_store()
        .into_iter()
        .filter(|(_, c)| !c.contains("__sync-store"))
        .collect();
    assert!(others.is_empty(), "{others:?}");
    let synced = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        of_the_store().is_empty()
    });
    assert!(
        synced,
        "the store's sync outlived the build by a minute: {:?}",
        of_the_store()
    );
}

/// A default step of a rootless build has its own network too: slirp4netns, run inside kiln's user
/// namespace, takes it out to another address of the machine, and the host's loopback stays out of reach.
#[test]
fn default_network_works_rootless() {
    let u = user(RANGED, true);
    let ws = Workspace::new(&u);
    let outside = OtherAddress::start("kiln-rootless-outbound");
    let loopback = Server::start("kiln-rootless-loopback");
    let ctx = ws.context(
        &u,
        &[(
            "Dockerfile",
            &format!(
                "FROM base
RUN timeout 10 nc {addr} {port} </dev/null | grep -q kiln-rootless-outbound
RUN for a in 127.0.0.1 10.0.2.2; do \\
      if timeout 5 nc $a {lport} </dev/null | grep kiln-rootless; then exit 1; fi; \\
    done
",
                addr = outside.addr,
                port = outside.port,
                lport = loopback.port
            ),
        )],
    );
    u.build(&ws).arg(&ctx).run().success();
    assert_eq!(outside.peers().len(), 1, "{:?}", outside.peers());
    assert_eq!(
        loopback.accepted(),
        0,
        "a rootless step reached the host's loopback"
    );
    assert_nothing_left("kiln-rootless-outbound", &ws.store);
}

/// A tun device the user cannot open (0600, as a machine without udev may leave it): the build stops with
/// what is wrong and how to fix it. The device is swapped only in a private mount namespace around kiln.
#[test]
fn an_unusable_tun_device_is_a_clear_error() {
    let u = user(RANGED, true);
    let ws = Workspace::new(&u);
    let ctx = ws.context(
        &u,
        &[(
            "Dockerfile",
            "FROM base\nRUN --network=none true\nRUN true\n",
        )],
    );
    let mut wrapper = vec![
        "unshare".to_string(),
        "--mount".into(),
        "--propagation=private".into(),
        "sh".into(),
        "-c".into(),
        "mount -t tmpfs none /dev/net && mknod -m 600 /dev/net/tun c 10 200 && exec \"$@\"".into(),
        "sh".into(),
    ];
    wrapper.extend(u.wrapper());
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let out = Kiln::build_in(&ws.store)
        .program(u.kiln_binary())
        .wrapped(&wrapper)
        .env("HOME", u.home())
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", ws.base.display()))
        .arg(&ctx)
        .run();
    out.expect_code(1);
    for needle in [
        "slirp4netns needs /dev/net/tun: EACCES",
        "mode 0666",
        "RUN --network=none",
        "2 | RUN --network=none true",
    ] {
        assert!(
            out.stderr.contains(needle),
            "no `{needle}` in:\n{}",
            out.stderr
        );
    }
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Waits up to 2 s for processes whose command line holds `marker` to end (killing and reporting any
/// left), and checks no mount anywhere on the machine names `store`.
fn assert_nothing_left(marker: &str, store: &Path) {
    let with_marker = || -> Vec<u32> {
        pids()
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                    let c: Vec<u8> = c.iter().map(|b| if *b == 0 { b' ' } else { *b }).collect();
                    String::from_utf8_lossy(&c).contains(marker)
                })
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut alive = with_marker();
    while !alive.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        alive = with_marker();
    }
    for p in &alive {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(alive.is_empty(), "`{marker}` outlived the build: {alive:?}");
    let stacks = crate::isolation::stray_network_stacks();
    assert!(
        stacks.is_empty(),
        "slirp4netns outlived the build: {stacks:?}"
    );
    // Every mount namespace still alive, not just ours: a leaked helper would hold its own.
    let store = store.to_string_lossy();
    let mounts: Vec<String> = pids()
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/mountinfo")).ok())
        .flat_map(|m| {
            m.lines()
                .filter(|l| l.contains(&*store))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        mounts.is_empty(),
        "mounts outlived the build:\n{}",
        mounts.join("\n")
    );
}

/// The sandbox holds rootless too, with a ranged and with a single-id map: Docker's default capabilities
/// (relative to kiln's user namespace), the seccomp profile, the host's device nodes bound into a minimal
/// /dev, masked /proc paths and a read-only /sys (a sysfs of its own in a network namespace of kiln's;
/// the host's, bound recursively read-only, where the namespace may not mount one).
#[test]
fn rootless_steps_are_sandboxed() {
    for (name, ranged) in [(RANGED, true), (SINGLE, false)] {
        let u = user(name, ranged);
        let ws = Workspace::new(&u);
        let ctx = ws.context(
            &u,
            &[(
                "Dockerfile",
                "FROM base
RUN grep -q 'CapEff:.00000000a80425fb' /proc/self/status \
 && ! unshare -m true && ! hostname evil \
 && test \"$(ls -A /dev | tr '\\n' ' ')\" = 'fd full null ptmx pts random shm stderr stdin stdout tty urandom zero ' \
 && head -c 4 /dev/zero | wc -c | grep -qx 4 && echo ok > /dev/null \
 && test -z \"$(ls -A /sys/firmware)\" \
 && ! touch /sys/kiln && ! touch /sys/fs/cgroup/kiln && ! echo 1 > /proc/sys/kernel/ns_last_pid
RUN --network=none grep -q ' /sys ro,' /proc/self/mountinfo && test -z \"$(ls -A /sys/firmware)\"
",
            )],
        );
        let out = u.build(&ws).arg(&ctx).run();
        out.success();
    }
}
