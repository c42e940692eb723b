//! The executor's helper process (`kiln __exec-helper`): a fresh, single-threaded kiln that enters new
//! namespaces, mounts the step's overlay, and runs or copies.
//!
//! Why a separate process: `fork` in kiln's multi-threaded runtime is unsafe, and a private mount namespace
//! that dies with this process guarantees that no mount outlives a step, whatever happens to kiln.

use std::ffi::CString;
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{
    ForkResult, Gid, Uid, chdir, fork, pivot_root, setgid, setgroups, sethostname, setuid,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::net::{self, Net};
use super::remount::{remount, remount_readonly};
use super::rootfs;
use crate::graph::op::CopyOp;

/// The `argv[1]` that makes kiln act as the helper.
pub const HELPER_ARG: &str = "__exec-helper";

#[derive(Serialize, Deserialize)]
pub struct Overlay {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where to mount the merged view (an empty dir).
    pub target: PathBuf,
    /// An empty directory, used as the bottom layer when there is none (scratch).
    pub empty: PathBuf,
}

/// A secret mount as the helper sees it; its value follows the JSON on stdin, never inside it.
#[derive(Serialize, Deserialize)]
pub struct SecretSpec {
    pub target: Option<String>,
    pub env: Option<String>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub present: bool,
}

#[derive(Serialize, Deserialize)]
pub enum Request {
    Run {
        fs: Overlay,
        args: Vec<String>,
        env: Vec<String>,
        cwd: String,
        user: String,
        network: super::net::Net,
        /// A private dir for the generated /etc files and the network stack's log.
        net_dir: PathBuf,
        /// `RUN --security=insecure`, allowed by the build: no sandbox (see `sandbox`).
        #[serde(default)]
        insecure: bool,
        secrets: Vec<SecretSpec>,
        /// A private dir where the secrets tmpfs is mounted.
        secret_dir: PathBuf,
        mounts: Vec<Mount>,
        /// A private dir for bind sources and their writable overlays.
        mount_dir: PathBuf,
        /// A debug shell: the process gets a pty of the sandbox's own, relayed to kiln's terminal (fd 3).
        #[serde(default)]
        tty: bool,
        /// `--add-host`, `--shm-size`, `--ulimit`.
        #[serde(default)]
        sandbox: crate::solve::Sandbox,
    },
    Copy {
        fs: Overlay,
        /// A host directory, or the layers of another filesystem (mounted read-only at `source_mount`).
        source_dir: Option<crate::solve::context::HostDir>,
        source_layers: Vec<PathBuf>,
        source_mount: PathBuf,
        op: CopyOp,
    },
    Mkdir {
        fs: Overlay,
        path: String,
        user: Option<String>,
    },
}

/// A cache, bind or tmpfs mount, with host paths.
#[derive(Serialize, Deserialize)]
pub enum Mount {
    Cache {
        target: String,
        dir: PathBuf,
        readonly: bool,
        /// A new cache's seed: a host directory or layers, and the path inside them to copy in.
        seed: Option<(Option<crate::solve::context::HostDir>, Vec<PathBuf>, String)>,
    },
    Bind {
        target: String,
        /// A host directory, or layers to mount read-only first.
        source_dir: Option<crate::solve::context::HostDir>,
        source_layers: Vec<PathBuf>,
        source: String,
        readwrite: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    /// A unix socket on the host (an ssh agent proxy), bound to a file at `target`.
    Socket {
        target: String,
        path: PathBuf,
    },
}

impl Mount {
    fn target(&self) -> &str {
        match self {
            Mount::Cache { target, .. }
            | Mount::Bind { target, .. }
            | Mount::Tmpfs { target, .. }
            | Mount::Socket { target, .. } => target,
        }
    }
}

/// The helper's last word, one JSON line on its stderr.
#[derive(Serialize, Deserialize, Debug)]
pub struct Status {
    pub exit: i32,
    pub error: Option<String>,
    /// Paths (inside the root) created only to hold a mount, to be removed from the layer.
    pub stubs: Vec<Stub>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Stub {
    pub path: String,
    pub dir: bool,
}

/// Entry point of the helper process. Never returns.
pub fn main() -> ! {
    // runc's umask: what a step creates, and what the helper unpacks or copies without an explicit mode,
    // must not depend on the umask of whoever started kiln.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let mut stubs = Vec::new();
    let status = match join_parent().and_then(|()| read_request()) {
        Ok((req, secrets)) => match serve(req, secrets, &mut stubs) {
            Ok(exit) => Status {
                exit,
                error: None,
                stubs,
            },
            Err(e) => Status {
                exit: 125,
                error: Some(e),
                stubs,
            },
        },
        Err(e) => Status {
            exit: 125,
            error: Some(e),
            stubs,
        },
    };
    let line = serde_json::to_string(&status).unwrap_or_else(|_| "{\"exit\":125}".into());
    let _ = writeln!(std::io::stderr(), "{line}");
    std::process::exit(0)
}

/// What kiln's spawn left to the helper itself, so that the spawn needs no code between fork and exec
/// (and can share kiln's memory until the exec instead of copying its page tables). Arguments: kiln's
/// pid, then the network namespace to join (a `/proc/<kiln>/fd/<n>` path), if any. The helper dies with
/// kiln (a parent-death signal, and a check that kiln did not die before it was set), and is born into
/// the step's network namespace before anything else (it is one thread: `setns` moves all of it).
fn join_parent() -> Result<(), String> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
    let parent = args
        .first()
        .and_then(|a| a.to_str()?.parse::<i32>().ok())
        .ok_or("bad request: no parent pid")?;
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(errno("prctl"))?;
    if nix::unistd::getppid().as_raw() != parent {
        std::process::exit(125);
    }
    if let Some(path) = args.get(1) {
        let ns = std::fs::File::open(path)
            .map_err(|e| format!("cannot open the step's network namespace: {e}"))?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(errno("cannot join the step's network namespace"))?;
    }
    Ok(())
}

/// Secret values in request order, each wiped when dropped.
type SecretValues = Vec<Zeroizing<Vec<u8>>>;

fn read_request() -> Result<(Request, SecretValues), String> {
    let mut stdin = std::io::stdin().lock();
    let len = read_len(&mut stdin)?;
    let mut json = vec![0u8; len];
    stdin
        .read_exact(&mut json)
        .map_err(|e| format!("bad request: {e}"))?;
    let req: Request = serde_json::from_slice(&json).map_err(|e| format!("bad request: {e}"))?;
    let mut secrets = Vec::new();
    if let Request::Run { secrets: specs, .. } = &req {
        for _ in specs.iter().filter(|s| s.present) {
            let n = read_len(&mut stdin)?;
            let mut value = Zeroizing::new(vec![0u8; n]);
            stdin
                .read_exact(&mut value)
                .map_err(|e| format!("bad request: {e}"))?;
            secrets.push(value);
        }
    }
    Ok((req, secrets))
}

fn read_len(r: &mut impl std::io::Read) -> Result<usize, String> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)
        .map_err(|e| format!("bad request: {e}"))?;
    usize::try_from(u64::from_le_bytes(b)).map_err(|e| e.to_string())
}

fn errno(what: &str) -> impl Fn(nix::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn serve(req: Request, secrets: SecretValues, stubs: &mut Vec<Stub>) -> Result<i32, String> {
    let mut flags = CloneFlags::CLONE_NEWNS;
    if let Request::Run { network, .. } = &req {
        flags |= CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
        // An own network's namespace was made before this process started (kiln's side, so the network
        // stack could attach to it at once).
        if *network == Net::None {
            flags |= CloneFlags::CLONE_NEWNET;
        }
    }
    unshare(flags).map_err(errno("cannot create namespaces"))?;
    // Nothing mounted from here on may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(errno("cannot make mounts private"))?;
    match req {
        Request::Mkdir { fs, path, user } => {
            mount_overlay(&fs)?;
            // As BuildKit's file op: a user the image does not know owns nothing (root keeps it).
            let owner = user.and_then(|u| rootfs::owner_ids(&fs.target, &u).ok());
            rootfs::mkdir_all(&fs.target, &path, owner)?;
            Ok(0)
        }
        Request::Copy {
            fs,
            source_dir,
            source_layers,
            source_mount,
            op,
        } => {
            mount_overlay(&fs)?;
            let keep_owners = source_dir.is_none();
            let src = match source_dir {
                Some(d) => d.tree()?,
                None => {
                    mount_readonly(&source_layers, &fs.empty, &source_mount)?;
                    crate::solve::context::Tree::whole(&source_mount)
                }
            }
            .excluding(&op.excludes)?;
            rootfs::copy(&src, &fs.target, &op, None, keep_owners)?;
            Ok(0)
        }
        Request::Run {
            fs,
            args,
            env,
            cwd,
            user,
            network,
            net_dir,
            insecure,
            secrets: specs,
            secret_dir,
            mut mounts,
            mount_dir,
            tty,
            sandbox,
        } => {
            // The environment as bytes that are wiped when dropped: secret env values join it below.
            let mut env: Vec<Zeroizing<Vec<u8>>> = env
                .into_iter()
                .map(|e| Zeroizing::new(e.into_bytes()))
                .collect();
            mount_overlay(&fs)?;
            let root = fs.target.clone();
            for dir in ["/proc", "/dev", "/sys"] {
                let (_, created) = rootfs::mkdir_all(&root, dir, None)?;
                stubs.extend(created.into_iter().map(|path| Stub { path, dir: true }));
            }
            setup_dev(&root, &super::limits::shm_options(&sandbox))?;
            // Parents before children, so a mount inside another mount lands on top of it.
            mounts.sort_by(|a, b| a.target().cmp(b.target()));
            for (i, m) in mounts.iter().enumerate() {
                setup_mount(&root, &mount_dir.join(i.to_string()), &fs.empty, m, stubs)?;
            }
            let mut values = secrets.into_iter();
            let mut tmpfs_ready = false;
            for (index, spec) in specs.iter().enumerate() {
                if !spec.present {
                    continue;
                }
                let value = values
                    .next()
                    .ok_or("secret values missing from the request")?;
                if let Some(var) = &spec.env {
                    let mut entry = Zeroizing::new(Vec::with_capacity(var.len() + 1 + value.len()));
                    entry.extend_from_slice(var.as_bytes());
                    entry.push(b'=');
                    entry.extend_from_slice(&value);
                    env.push(entry);
                }
                if let Some(target) = &spec.target {
                    if !tmpfs_ready {
                        mount(
                            Some("tmpfs"),
                            &secret_dir,
                            Some("tmpfs"),
                            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                            Some("mode=0700,size=16m"),
                        )
                        .map_err(errno("cannot mount the secrets tmpfs"))?;
                        tmpfs_ready = true;
                    }
                    mount_secret(
                        &root,
                        &secret_dir.join(format!("s{index}")),
                        target,
                        spec,
                        &value,
                        stubs,
                    )?;
                }
            }
            drop(values);
            etc_files(&root, &network, &net_dir, &sandbox, stubs)?;
            if network.own_namespace() {
                net::loopback_up();
            }
            if network == Net::Own {
                net::wait_for_stack()?;
            }
            let _ = sethostname(net::HOSTNAME);
            super::limits::apply_ulimits(&sandbox.ulimits)?;
            let pty = if tty {
                Some(super::debug::open_pty(&root)?)
            } else {
                None
            };
            let process = Process {
                args: &args,
                env: &env,
                cwd: &cwd,
                user: &user,
                insecure,
            };
            run_pid1(&root, &process, pty)
        }
    }
}

/// Mounts an overlay whose `lowerdir=` names `lowers` (bottom first) over an empty bottom layer, with
/// `rest` (upper/work dirs and extra options, each starting with a comma) after it.
///
/// The kernel takes mount options in one page, and a store snapshot's absolute path is about 90 bytes, so
/// past 40-odd layers the list no longer fits (EINVAL). Then each layer gets a short symlink in a directory
/// of its own beside `empty`, and the mount is made from there with relative names: overlayfs resolves
/// (and follows) them once, at mount time.
fn mount_lowers(
    lowers: &[PathBuf],
    empty: &Path,
    rest: &str,
    target: &Path,
    flags: MsFlags,
    what: &'static str,
) -> Result<(), String> {
    // overlayfs wants the top layer first; an empty bottom layer allows zero or one real layers.
    let ordered: Vec<&Path> = lowers
        .iter()
        .rev()
        .map(PathBuf::as_path)
        .chain([empty])
        .collect();
    let mount_with = |names: &[String]| {
        let data = format!("lowerdir={}{rest}", names.join(":"));
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            flags,
            Some(data.as_str()),
        )
        .map_err(errno(what))
    };
    let absolute: Vec<String> = ordered.iter().map(|p| p.display().to_string()).collect();
    if absolute.iter().map(|a| a.len() + 1).sum::<usize>() + rest.len() < 3072 {
        return mount_with(&absolute);
    }
    static LINK_DIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = LINK_DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let parent = empty.parent().unwrap_or(empty);
    let links = parent.join(format!("lowers-{n}"));
    std::fs::create_dir(&links).map_err(|e| format!("{what}: {e}"))?;
    let mut names = Vec::with_capacity(ordered.len());
    for (i, dir) in ordered.iter().enumerate() {
        std::os::unix::fs::symlink(dir, links.join(i.to_string()))
            .map_err(|e| format!("{what}: {e}"))?;
        names.push(i.to_string());
    }
    let back = std::env::current_dir().map_err(|e| format!("{what}: {e}"))?;
    std::env::set_current_dir(&links).map_err(|e| format!("{what}: {e}"))?;
    let mounted = mount_with(&names);
    std::env::set_current_dir(back).map_err(|e| format!("{what}: {e}"))?;
    mounted
}

/// Extra overlay options: in a user namespace overlayfs cannot use `trusted.*` xattrs and must be told to
/// keep its bookkeeping (opaque dirs) in `user.overlay.*` instead.
fn overlay_options() -> &'static str {
    if super::userns::rootless() {
        ",userxattr"
    } else {
        ""
    }
}

/// The step's overlay is `volatile` where the kernel has it (5.10): its unmount, when the step's mount
/// namespace goes, then does not write the whole upper filesystem out (`syncfs`: 0.65 s after a step
/// that wrote 50,000 files) on the step's path; the store syncs a step's snapshot after the build, and
/// marks it until then (`store::unsynced`). A kernel without it refuses the option, and the mount is
/// made again without.
fn mount_overlay(fs: &Overlay) -> Result<(), String> {
    let rest = |volatile: &str| {
        format!(
            ",upperdir={},workdir={}{}{volatile}",
            fs.upper.display(),
            fs.work.display(),
            overlay_options()
        )
    };
    let mount_with = |rest: &str| {
        mount_lowers(
            &fs.lowers,
            &fs.empty,
            rest,
            &fs.target,
            // A step has CAP_MKNOD (Docker's default set) and no device cgroup: a node it makes must
            // not open.
            MsFlags::MS_NODEV,
            "cannot mount the overlay filesystem",
        )
    };
    // A volatile mount leaves `work/incompat/volatile` in its work dir, and overlayfs refuses the dir
    // again while it is there (after a crash the upper dir may be torn). The debug shell mounts a failed
    // step's dirs a second time, on the same boot, with nothing lost: the mark goes first.
    let _ = std::fs::remove_dir_all(fs.work.join("work/incompat/volatile"));
    volatile_first(|volatile| mount_with(&rest(volatile)))
}

/// An overlay mount tried `volatile` first (`mount` is given the option's text), then without it, on a
/// kernel that refuses it.
fn volatile_first<T, E>(mount: impl Fn(&str) -> Result<T, E>) -> Result<T, E> {
    mount(",volatile").or_else(|_| mount(""))
}

fn mount_readonly(lowers: &[PathBuf], empty: &Path, target: &Path) -> Result<(), String> {
    if lowers.is_empty() {
        // overlayfs refuses a read-only mount of one lower layer (EINVAL): the source of nothing (a
        // copy from `scratch`) is an empty read-only tmpfs.
        return mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            Some("mode=0755,size=4k"),
        )
        .map_err(errno("cannot mount the source filesystem"));
    }
    mount_lowers(
        lowers,
        empty,
        overlay_options(),
        target,
        MsFlags::MS_RDONLY,
        "cannot mount the source filesystem",
    )
}

/// A minimal /dev on its own tmpfs: the usual character devices, the standard links, a devpts and
/// /dev/shm. The tmpfs is `nodev`, so a node the step makes there (it has CAP_MKNOD) does not open; the
/// devices it may use are the host's own nodes, each bound in (its own mount, without `nodev`), which also
/// works in a user namespace, where device nodes cannot be created.
fn setup_dev(root: &Path, shm_options: &str) -> Result<(), String> {
    let dev = root.join("dev");
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV,
        Some("mode=0755,size=65536k"),
    )
    .map_err(errno("cannot mount /dev"))?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let p = dev.join(name);
        std::fs::File::create(&p).map_err(|e| format!("cannot create /dev/{name}: {e}"))?;
        mount(
            Some(&Path::new("/dev").join(name)),
            &p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("cannot bind /dev/{name}: {e}"))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name)).map_err(|e| e.to_string())?;
    }
    setup_pts(&dev)?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(|e| e.to_string())?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(shm_options),
    )
    .map_err(errno("cannot mount /dev/shm"))
}

/// A devpts instance of the step's own (its ptys are not the host's) and /dev/ptmx leading to it, as runc
/// makes them. `gid=5` (tty) needs that group mapped, which a single-id rootless namespace does not.
fn setup_pts(dev: &Path) -> Result<(), String> {
    let pts = dev.join("pts");
    std::fs::create_dir(&pts).map_err(|e| e.to_string())?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    let devpts = |data: &str| mount(Some("devpts"), &pts, Some("devpts"), flags, Some(data));
    devpts("newinstance,ptmxmode=0666,mode=0620,gid=5")
        .or_else(|_| devpts("newinstance,ptmxmode=0666,mode=0620"))
        .map_err(errno("cannot mount /dev/pts"))?;
    std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx")).map_err(|e| e.to_string())
}

/// Makes the mount point (a stub, recorded for removal, when missing) for a source that is a dir or not.
fn mount_point(
    root: &Path,
    target: &str,
    dir: bool,
    stubs: &mut Vec<Stub>,
) -> Result<PathBuf, String> {
    if dir {
        let (host, created) = rootfs::mkdir_all(root, target, None)?;
        stubs.extend(created.into_iter().map(|path| Stub { path, dir: true }));
        return Ok(host);
    }
    let parent = match target.trim_end_matches('/').rsplit_once('/') {
        Some((p, _)) if !p.is_empty() => p,
        _ => "/",
    };
    let (_, created) = rootfs::mkdir_all(root, parent, None)?;
    stubs.extend(created.into_iter().map(|path| Stub { path, dir: true }));
    // Resolved inside the root: a final component that is a symlink must not lead the mount elsewhere.
    let host = rootfs::resolve(root, target, true)?;
    if std::fs::symlink_metadata(&host).is_err() {
        std::fs::File::create(&host)
            .map_err(|e| format!("cannot create the mount point {target}: {e}"))?;
        stubs.push(Stub {
            path: rootfs::inside(root, &host),
            dir: false,
        });
    }
    Ok(host)
}

/// Binds a step's mount, `nodev` (see `mount_overlay`) and read-only when asked.
fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), String> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(errno("cannot bind-mount"))?;
    let mut flags = MsFlags::MS_NODEV;
    if readonly {
        flags |= MsFlags::MS_RDONLY;
    }
    remount(target, flags).map_err(errno("cannot restrict a mount"))
}

/// The tree a bind mount or a cache's seed reads (the context as the build sees it, or a read-only view
/// of layers made under `scratch`) and the path `source` resolves to inside it.
fn mount_source(
    scratch: &Path,
    empty: &Path,
    source_dir: &Option<crate::solve::context::HostDir>,
    source_layers: &[PathBuf],
    source: &str,
) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(scratch).map_err(|e| e.to_string())?;
    let src_root = match source_dir {
        Some(d) if d.excludes.is_empty() => d.path.clone(),
        Some(d) => {
            // The context as the build sees it: what .dockerignore excludes is not there.
            let filtered = scratch.join("filtered");
            std::fs::create_dir_all(&filtered).map_err(|e| e.to_string())?;
            let tree = d.tree()?;
            rootfs::copy_tree(&tree, &d.path, &filtered, Some((0, 0)), None, None)?;
            filtered
        }
        None => {
            let view = scratch.join("view");
            std::fs::create_dir_all(&view).map_err(|e| e.to_string())?;
            mount_readonly(source_layers, empty, &view)?;
            view
        }
    };
    // The source is confined to its tree: `..` and absolute links cannot reach the host.
    let src = crate::solve::context::resolve_source(
        &src_root,
        &crate::solve::context::clean_relative(source)?,
    )?;
    Ok((src_root, src))
}

/// Sets up one cache, bind or tmpfs mount. `scratch` is a private dir for this mount's helpers.
fn setup_mount(
    root: &Path,
    scratch: &Path,
    empty: &Path,
    m: &Mount,
    stubs: &mut Vec<Stub>,
) -> Result<(), String> {
    match m {
        Mount::Tmpfs { target, size } => {
            let host = mount_point(root, target, true, stubs)?;
            let data = match size {
                Some(s) => format!("mode=1777,size={s}"),
                None => "mode=1777".to_string(),
            };
            mount(
                Some("tmpfs"),
                &host,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(data.as_str()),
            )
            .map_err(errno("cannot mount tmpfs"))
        }
        Mount::Socket { target, path } => {
            let host = mount_point(root, target, false, stubs)?;
            bind(path, &host, false)
        }
        Mount::Cache {
            target,
            dir,
            readonly,
            seed,
        } => {
            if let Some((source_dir, source_layers, source)) = seed {
                let (src_root, src) =
                    mount_source(scratch, empty, source_dir, source_layers, source)?;
                if !src.is_dir() {
                    return Err(format!("cache seed `{source}` is not a directory"));
                }
                let tree = crate::solve::context::Tree::whole(&src_root);
                rootfs::copy_tree_as_is(&tree, &src, dir)?;
            }
            let host = mount_point(root, target, true, stubs)?;
            bind(dir, &host, *readonly)
        }
        Mount::Bind {
            target,
            source_dir,
            source_layers,
            source,
            readwrite,
        } => {
            let (_, src) = mount_source(scratch, empty, source_dir, source_layers, source)?;
            let meta =
                std::fs::metadata(&src).map_err(|e| format!("bind source `{source}`: {e}"))?;
            let src = if *readwrite && meta.is_dir() {
                // Writes go to a throw-away upper dir, as BuildKit discards them.
                let (upper, work, merged) = (
                    scratch.join("upper"),
                    scratch.join("work"),
                    scratch.join("merged"),
                );
                for d in [&upper, &work, &merged] {
                    std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
                }
                let data = |volatile: &str| {
                    format!(
                        "lowerdir={}:{},upperdir={},workdir={}{}{volatile}",
                        src.display(),
                        empty.display(),
                        upper.display(),
                        work.display(),
                        overlay_options()
                    )
                };
                // Thrown away, so never worth a sync (see `mount_overlay`).
                volatile_first(|volatile| {
                    mount(
                        Some("overlay"),
                        &merged,
                        Some("overlay"),
                        MsFlags::empty(),
                        Some(data(volatile).as_str()),
                    )
                })
                .map_err(errno("cannot mount a writable bind"))?;
                merged
            } else if *readwrite {
                let copy = scratch.join("file");
                std::fs::copy(&src, &copy).map_err(|e| e.to_string())?;
                copy
            } else {
                src
            };
            let host = mount_point(root, target, meta.is_dir(), stubs)?;
            bind(&src, &host, !*readwrite)
        }
    }
}

/// Writes the secret into the private tmpfs and bind-mounts that one file read-only at its target.
fn mount_secret(
    root: &Path,
    staged: &Path,
    target: &str,
    spec: &SecretSpec,
    value: &[u8],
    stubs: &mut Vec<Stub>,
) -> Result<(), String> {
    {
        let mut f =
            std::fs::File::create(staged).map_err(|e| format!("cannot stage a secret: {e}"))?;
        f.write_all(value)
            .map_err(|e| format!("cannot stage a secret: {e}"))?;
    }
    std::fs::set_permissions(
        staged,
        std::os::unix::fs::PermissionsExt::from_mode(spec.mode),
    )
    .map_err(|e| e.to_string())?;
    std::os::unix::fs::lchown(staged, Some(spec.uid), Some(spec.gid)).map_err(|e| e.to_string())?;
    let host = mount_point(root, target, false, stubs)?;
    mount(
        Some(staged),
        &host,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(errno("cannot mount a secret"))?;
    remount_readonly(
        &host,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
    .map_err(errno("cannot make a secret read-only"))
}

/// Mounts the generated `/etc/resolv.conf` and `/etc/hosts` read-only over the image's (or over stubs that
/// leave the layer). Best effort where the image's own path cannot hold a mount (a link out of the root,
/// a directory): the step then sees what the image has.
fn etc_files(
    root: &Path,
    network: &Net,
    dir: &Path,
    sandbox: &crate::solve::Sandbox,
    stubs: &mut Vec<Stub>,
) -> Result<(), String> {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    for (name, text) in [
        ("resolv.conf", net::resolv_conf(&host, network)),
        ("hosts", super::limits::hosts(sandbox)),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, text).map_err(|e| format!("cannot write /etc/{name}: {e}"))?;
        let Ok(target) = mount_point(root, &format!("/etc/{name}"), false, stubs) else {
            continue;
        };
        if target.is_file() {
            bind(&file, &target, true)?;
        }
    }
    Ok(())
}

/// The step's process: what it runs, and as whom, where and how confined.
struct Process<'a> {
    args: &'a [String],
    env: &'a [Zeroizing<Vec<u8>>],
    cwd: &'a str,
    user: &'a str,
    insecure: bool,
}

/// Forks the step's init (pid 1 of the new pid namespace), which pivots into the root and execs the
/// command. When it exits the kernel kills everything else in the namespace. With a `pty` (a debug
/// shell) the helper relays it to kiln's terminal meanwhile.
fn run_pid1(
    root: &Path,
    process: &Process<'_>,
    pty: Option<super::debug::Pty>,
) -> Result<i32, String> {
    let _ = std::io::stdout().flush();
    // SAFETY: this process is single-threaded (the helper never starts a runtime), so the child may
    // allocate and run ordinary Rust code before exec.
    match unsafe { fork() }.map_err(errno("cannot fork"))? {
        ForkResult::Child => {
            let slave = pty.as_ref().map(|p| &p.slave);
            let code = match child(root, process, slave) {
                Ok(never) => match never {},
                Err(e) => {
                    let _ = writeln!(std::io::stdout(), "kiln: {e}");
                    127
                }
            };
            std::process::exit(code)
        }
        ForkResult::Parent { child } if pty.is_some() => {
            let super::debug::Pty { master, slave } = pty.expect("checked");
            // The shell's exit must close the last slave for the relay to see it.
            drop(slave);
            super::debug::relay(master, child)
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) => continue,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(format!("waiting for the step: {e}")),
            }
        },
    }
}

enum Never {}

fn child(
    root: &Path,
    process: &Process<'_>,
    slave: Option<&std::os::fd::OwnedFd>,
) -> Result<Never, String> {
    let Process {
        args,
        env,
        cwd,
        user,
        insecure,
    } = *process;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(errno("prctl"))?;
    close_inherited(slave.map(std::os::fd::AsRawFd::as_raw_fd))?;
    if let Some(slave) = slave {
        super::debug::attach(slave)?;
    }
    super::sandbox::mount_proc_sys(root, insecure)?;
    chdir(root).map_err(errno("chdir"))?;
    pivot_root(".", ".").map_err(errno("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(errno("cannot detach the host root"))?;
    chdir("/").map_err(errno("chdir"))?;
    let rootfs::ExecUser {
        uid,
        gid,
        groups,
        home,
    } = rootfs::exec_user(Path::new("/"), if user.is_empty() { "0" } else { user })?;
    // A working directory the image lacks (a base image's WorkingDir never made) is created owned by
    // the step's user, as BuildKit's executors do (`MkdirAllAndChown` with the exec user's ids).
    let (dir, _) = rootfs::mkdir_all(Path::new("/"), cwd, Some((uid, gid)))?;
    chdir(&dir).map_err(|e| format!("cannot enter working directory {cwd}: {e}"))?;
    if let Some(confinement) = super::sandbox::Confinement::new(insecure)? {
        confinement.apply()?;
    }
    // The primary group first, then the user's supplementary groups, as current BuildKit lists them.
    let mut all = vec![Gid::from_raw(gid)];
    all.extend(groups.into_iter().filter(|g| *g != gid).map(Gid::from_raw));
    match setgroups(&all) {
        // A single-id user namespace had to deny setgroups; the step keeps the one group it has.
        Err(nix::Error::EPERM) if setgroups_denied() => {}
        other => other.map_err(errno("setgroups"))?,
    }
    let unmapped = |what: &'static str, id: u32| {
        move |e: nix::Error| {
            if e == nix::Error::EINVAL {
                format!(
                    "cannot run as {what} {id} (user `{user}`): kiln's user namespace does not map it; \
                     give the user running kiln a range in /etc/subuid and /etc/subgid"
                )
            } else {
                format!("{}: {e}", if what == "uid" { "setuid" } else { "setgid" })
            }
        }
    };
    setgid(Gid::from_raw(gid)).map_err(unmapped("gid", gid))?;
    setuid(Uid::from_raw(uid)).map_err(unmapped("uid", uid))?;
    nix::unistd::dup2_stderr(std::io::stdout()).map_err(errno("dup2"))?;
    let program = find_program(args.first().ok_or("empty command")?, env)?;
    let cargs: Vec<CString> = args
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<_, _>>()?;
    let mut cenv: Vec<CString> = env.iter().map(|e| cstring(e)).collect::<Result<_, _>>()?;
    // runc sets HOME from the user's passwd entry when the step's environment has none.
    if !env.iter().any(|e| e.starts_with(b"HOME=")) {
        cenv.push(cstring(format!("HOME={home}").as_bytes())?);
    }
    // The prctl flag kiln set for itself survives fork and exec: the helper keeps it (its allocations
    // would each fault in a zeroed 2 MiB page), the step's programs get the machine's own policy back.
    let _ = nix::sys::prctl::set_thp_disable(false);
    let err =
        nix::unistd::execve(&cstring(program.as_os_str().as_bytes())?, &cargs, &cenv).unwrap_err();
    Err(format!("cannot run {}: {err}", args[0]))
}

/// Closes every descriptor beyond stdin, stdout and stderr (and `keep`, a debug shell's terminal) before
/// the step runs. kiln's own are close-on-exec, but one kiln inherited from whoever started it (a CI
/// runner's pipe or socket, a `<(...)` of the shell) is not, and would reach the step's untrusted code;
/// runc, under BuildKit, passes a step only those three as well.
fn close_inherited(keep: Option<std::os::fd::RawFd>) -> Result<(), String> {
    let open: Vec<std::os::fd::RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("cannot list the descriptors to close: {e}"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    // The listing's own descriptor is closed already; closing it again fails harmlessly.
    for fd in open.into_iter().filter(|fd| *fd > 2 && Some(*fd) != keep) {
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

fn setgroups_denied() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny")
}

fn cstring(b: &[u8]) -> Result<CString, String> {
    CString::new(b).map_err(|_| "a command argument contains a NUL byte".to_string())
}

/// `execvp` searches the helper's PATH; the step's own PATH is the one that counts.
fn find_program(name: &str, env: &[Zeroizing<Vec<u8>>]) -> Result<PathBuf, String> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix(b"PATH="))
        .map_or_else(|| "/usr/bin:/bin".into(), String::from_utf8_lossy);
    for dir in path.split(':') {
        let candidate = Path::new(dir).join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(format!("{name}: executable file not found in $PATH"))
}
