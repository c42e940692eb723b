//! The Linux-namespace executor, one of the two implementations of `solve::Executor`. Each step runs in a helper process (see `helper`) with
//! its own mount, pid, uts, ipc and network (see `net`) namespaces over an overlayfs whose lower layers are
//! the input snapshots.
//!
//! This is the only module allowed to use `unsafe`, spawn processes or make mount syscalls.

pub mod binfmt;
pub mod bpf;
pub mod credential;
pub mod debug;
pub mod helper;
pub mod limits;
pub mod net;
pub mod remount;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod ssh;
pub mod userns;

/// kiln runs for milliseconds to seconds: transparent huge pages only cost it. The allocator's arenas
/// would each fault in a 2 MiB page the kernel zeroes first (40% of a no-op rebuild's time), for memory
/// it never uses. Best effort: a kernel without the knob simply keeps its default. The executor's helper
/// turns it back on, so the programs a step runs are not affected.
pub fn short_lived_process() {
    let _ = nix::sys::prctl::set_thp_disable(true);
}

/// Ends the command with `code` once it is done: everything kiln keeps on disk is written by then (the
/// evaluation cache's save is joined, temp files removed by their owners) and what it printed flushed
/// (`progress::flush`, by the caller). `exit` would go on to run the allocator's shutdown, which walks
/// every page it handed out (30 ms after a monorepo's graph) for memory the kernel takes back at once.
pub fn end_process(code: i32) -> ! {
    // SAFETY: `_exit` ends the process at once; nothing after it runs, and nothing needs to.
    unsafe { nix::libc::_exit(code) }
}

/// Starts kiln again with `args`, detached (its own process group, no standard streams): work that must
/// not hold up the command that asked for it (`store::unsynced`). Best effort: it is not waited for.
pub fn start_detached(args: &[&std::ffi::OsStr]) {
    use std::os::unix::process::CommandExt as _;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let _ = std::process::Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
}

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zeroize::Zeroizing;

use crate::diag::{Diagnostic, Result};
use crate::graph::op::Network;
use crate::solve::{
    CopySource, CopyStep, Executor, Layers, LogSink, RunExit, RunStep, StepMount, exit_error,
};
use helper::{Overlay, Request, SecretSpec, Status};

/// The executor that runs steps in Linux namespaces. Needs root, real or of a user namespace (`userns`).
#[derive(Default)]
pub struct Namespaces {
    /// The next step's network namespace and stack, made ahead (see `net::Spare`).
    spare: net::Spare,
}

impl Namespaces {
    pub fn new() -> Namespaces {
        Namespaces::default()
    }
}

/// Directories the helper needs beside the step's upper/work dirs, in `aux` (the step's temp dir, or a
/// directory of the debug shell's own there).
fn overlay(fs: &Layers, aux: &Path) -> Result<Overlay> {
    let target = aux.join("rootfs");
    let empty = aux.join("empty");
    for d in [&target, &empty] {
        std::fs::create_dir_all(d).map_err(|e| Diagnostic::io("cannot prepare a step", e))?;
    }
    Ok(Overlay {
        lowers: fs.lowers.clone(),
        upper: fs.upper.clone(),
        work: fs.work.clone(),
        target,
        empty,
    })
}

/// Where a step's helper keeps its private directories: beside its upper dir.
fn step_dir(fs: &Layers) -> PathBuf {
    fs.upper.parent().unwrap_or(Path::new("/")).to_path_buf()
}

impl RunExit for Namespaces {
    async fn run_exit(&self, step: RunStep, logs: LogSink) -> Result<i32> {
        let aux = step_dir(&step.fs);
        run_in(step, &aux, Some(logs), None, &self.spare).await
    }
}

/// A step's mounts as the helper takes them. In a debug shell (`discard`) a cache mount's writes go to a
/// throw-away layer, as a writable bind's do: the session must leave nothing behind.
fn helper_mounts(mounts: Vec<StepMount>, discard: bool) -> Vec<helper::Mount> {
    let layers = |from| match from {
        CopySource::Dir(d) => (Some(d), Vec::new()),
        CopySource::Layers(l) => (None, l),
    };
    mounts
        .into_iter()
        .filter_map(|m| {
            Some(match m {
                StepMount::Ssh { .. } => return None,
                StepMount::Cache {
                    target,
                    dir,
                    readonly,
                    ..
                } if discard => helper::Mount::Bind {
                    target,
                    source_dir: Some(crate::solve::context::HostDir {
                        path: dir,
                        excludes: Vec::new(),
                    }),
                    source_layers: Vec::new(),
                    source: "/".into(),
                    readwrite: !readonly,
                },
                StepMount::Cache {
                    target,
                    dir,
                    readonly,
                    seed,
                } => helper::Mount::Cache {
                    target,
                    dir,
                    readonly,
                    seed: seed.map(|(from, source)| {
                        let (d, l) = layers(from);
                        (d, l, source)
                    }),
                },
                StepMount::Tmpfs { target, size } => helper::Mount::Tmpfs { target, size },
                StepMount::Bind {
                    target,
                    from,
                    source,
                    readwrite,
                } => {
                    let (source_dir, source_layers) = layers(from);
                    helper::Mount::Bind {
                        target,
                        source_dir,
                        source_layers,
                        source,
                        readwrite,
                    }
                }
            })
        })
        .collect()
}

/// Runs a RUN step's process through the helper, its private directories in `aux`: its output to `logs`,
/// or, given the caller's terminal, interactively on a terminal of the sandbox's own (`debug`).
async fn run_in(
    step: RunStep,
    aux: &Path,
    logs: Option<LogSink>,
    tty: Option<&std::fs::File>,
    spare: &net::Spare,
) -> Result<i32> {
    let fs = overlay(&step.fs, aux)?;
    let upper = fs.upper.clone();
    let secret_dir = aux.join("secrets");
    std::fs::create_dir_all(&secret_dir).map_err(|e| Diagnostic::io("cannot prepare a step", e))?;
    let mut values: Vec<&[u8]> = Vec::new();
    let mut specs = Vec::new();
    for (m, v) in &step.secrets {
        if let Some(v) = v {
            values.push(v.expose());
        }
        specs.push(SecretSpec {
            target: m.target.clone(),
            env: m.env.clone(),
            mode: m.mode,
            uid: m.uid,
            gid: m.gid,
            present: v.is_some(),
        });
    }
    let mount_dir = aux.join("mounts");
    // Agent proxies live as long as this call: dropping them stops forwarding.
    let mut proxies = Vec::new();
    let mut sockets = Vec::new();
    for (n, m) in step.mounts.iter().enumerate() {
        if let StepMount::Ssh {
            target,
            id: _,
            agent,
            mode,
            uid,
            gid,
        } = m
        {
            let path = aux.join(format!("ssh-{n}.sock"));
            proxies.push(ssh::Proxy::start(&path, agent, *mode, (*uid, *gid))?);
            sockets.push(helper::Mount::Socket {
                target: target.clone(),
                path,
            });
        }
    }
    let mut mounts = helper_mounts(step.mounts, tty.is_some());
    mounts.extend(sockets);
    let net_dir = aux.join("net");
    std::fs::create_dir_all(&net_dir).map_err(|e| Diagnostic::io("cannot prepare a step", e))?;
    let (network, mut stack) = match step.network {
        Network::None => (net::Net::None, None),
        Network::Host => (net::Net::Host, None),
        Network::Default => {
            let launch = net::Launch {
                stack: net::find_stack()?,
            };
            (
                net::Net::Own,
                Some(spare.take(&launch, step.more_runs).await?),
            )
        }
    };
    let req = Request::Run {
        fs,
        args: step.args,
        env: step.env,
        cwd: step.cwd,
        user: step.user,
        network,
        net_dir,
        insecure: step.insecure,
        secrets: specs,
        secret_dir,
        mounts,
        mount_dir,
        tty: tty.is_some(),
        sandbox: step.sandbox,
    };
    let status = call_helper(&req, &values, logs, stack.as_mut(), tty).await?;
    drop(proxies);
    if let Some(stack) = stack
        && status.error.is_none()
        && !step.insecure
        && tty.is_none()
    {
        spare.give_back(stack);
    }
    remove_stubs(&upper, &status);
    if let Some(e) = status.error {
        return Err(Diagnostic::env(format!("cannot run the step: {e}")));
    }
    Ok(status.exit)
}

impl Executor for Namespaces {
    async fn run(&self, step: RunStep, logs: LogSink) -> Result<()> {
        let args = step.args.clone();
        match self.run_exit(step, logs).await? {
            0 => Ok(()),
            exit => Err(exit_error(&args, exit)),
        }
    }

    async fn copy(&self, step: CopyStep) -> Result<()> {
        if let (CopySource::Dir(dir), Some((files, cache))) = (&step.source, &step.files)
            && direct_copy(&step.fs, &step.op)
        {
            // Nothing below the destination exists in the lower layers, so the merged view of the result
            // is exactly the upper dir: write it there, without a helper, a mount or a copy-up.
            let objects = rootfs::Objects {
                dir: files.clone(),
                cache: cache.clone(),
                context: dir.path.clone(),
                used: Default::default(),
            };
            let (dir, upper, op) = (dir.clone(), step.fs.upper.clone(), step.op.clone());
            return tokio::task::spawn_blocking(move || -> std::result::Result<(), String> {
                let tree = dir.tree()?.excluding(&op.excludes)?;
                rootfs::copy(&tree, &upper, &op, Some(&objects), false)
            })
            .await
            .map_err(|e| Diagnostic::env(format!("copy task failed: {e}")))?
            .map_err(|e| Diagnostic::input(format!("COPY failed: {e}")));
        }
        let fs = overlay(&step.fs, &step_dir(&step.fs))?;
        let source_mount = fs.target.with_file_name("source");
        std::fs::create_dir_all(&source_mount)
            .map_err(|e| Diagnostic::io("cannot prepare a step", e))?;
        let (source_dir, source_layers) = match step.source {
            CopySource::Dir(d) => (Some(d), Vec::new()),
            CopySource::Layers(l) => (None, l),
        };
        let req = Request::Copy {
            fs,
            source_dir,
            source_layers,
            source_mount,
            op: step.op,
        };
        let status = call_helper(&req, &[], None, None, None).await?;
        match status.error {
            // COPY errors are about the user's paths (a missing source, a file where a dir must be).
            Some(e) => Err(Diagnostic::input(format!("COPY failed: {e}"))),
            None => Ok(()),
        }
    }

    async fn mkdir(&self, fs: Layers, path: String, user: Option<String>) -> Result<()> {
        let fs = overlay(&fs, &step_dir(&fs))?;
        let status = call_helper(
            &Request::Mkdir {
                fs,
                path: path.clone(),
                user,
            },
            &[],
            None,
            None,
            None,
        )
        .await?;
        match status.error {
            Some(e) => Err(Diagnostic::input(format!(
                "cannot create directory {path}: {e}"
            ))),
            None => Ok(()),
        }
    }

    async fn shell(&self, step: RunStep) -> Result<()> {
        let aux = step_dir(&step.fs).join("debug");
        let terminal = debug::Terminal::open()?;
        let raw = terminal.raw()?;
        let ran = run_in(step, &aux, None, Some(terminal.file()), &self.spare).await;
        drop(raw);
        ran.map(drop)
    }

    fn unpack(&self, blob: &Path, media_type: &str, dest: &Path) -> Result<()> {
        let reader = crate::layer::open_blob(blob, media_type)
            .map_err(|e| Diagnostic::io(format!("cannot open layer {}", blob.display()), e))?;
        crate::layer::unpack_layer(reader, dest, userns::layer_ids()).map_err(|e| {
            let unmapped = e.kind() == std::io::ErrorKind::InvalidInput && userns::rootless();
            let d = Diagnostic::io(format!("cannot unpack layer {}", blob.display()), e);
            if unmapped {
                d.help(
                    "rootless kiln can only give files to ids its user namespace maps: add a range for \
                     the user running kiln to /etc/subuid and /etc/subgid (e.g. `usermod --add-subuids \
                     100000-165535 --add-subgids 100000-165535 USER`, with the `uidmap` package \
                     installed), or build as root",
                )
            } else {
                d
            }
        })
    }
}

/// Whether a COPY can be written straight into its upper dir: plain COPY semantics (no owner, mode, archive
/// or parents handling) into a top-level directory no lower layer has, not even as a whiteout, so no
/// copy-up, opaque dir or symlink in the image can be involved.
fn direct_copy(fs: &Layers, op: &crate::graph::op::CopyOp) -> bool {
    let first = Path::new(&op.dest).components().find_map(|c| match c {
        std::path::Component::Normal(n) => Some(n.to_os_string()),
        _ => None,
    });
    let Some(first) = first else { return false };
    !op.extract
        && !op.parents
        && op.chown.is_none()
        && op.chmod.is_none()
        && op.dest.starts_with('/')
        && fs
            .lowers
            .iter()
            .all(|l| std::fs::symlink_metadata(l.join(&first)).is_err())
}

/// Spawns the helper, sends the request (and the secret values, length-prefixed after it, never in the
/// JSON), streams the step's output to `logs`, and returns the helper's status. With a `stack`, the helper
/// joins the stack's network namespace (the stack is starting on it, or up already), and one byte
/// after the request tells the helper whether it came up.
async fn call_helper(
    req: &Request,
    secrets: &[&[u8]],
    logs: Option<LogSink>,
    stack: Option<&mut net::Prepared>,
    tty: Option<&std::fs::File>,
) -> Result<Status> {
    let exe = std::env::current_exe()
        .map_err(|e| Diagnostic::io("cannot find the kiln executable", e))?;
    let mut cmd = tokio::process::Command::new(exe);
    let kiln = std::process::id();
    cmd.arg(helper::HELPER_ARG)
        .arg(kiln.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .kill_on_drop(true);
    if tty.is_none() {
        // A process group of its own: a Ctrl-C on kiln's terminal reaches kiln, which stops the
        // build and its steps, and not the helper too, whose death would race that as a failed step.
        // A debug shell's helper stays in the foreground group: it reads kiln's terminal, which a
        // background group may not (SIGTTIN).
        cmd.process_group(0);
    }
    // The helper joins the stack's namespace itself, and sets its own parent-death signal (see
    // `helper::join_parent`): without code to run between fork and exec, the spawn is a vfork, which
    // does not copy kiln's page tables.
    if let Some(s) = &stack {
        cmd.arg(format!(
            "/proc/{kiln}/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&s.ns)
        ));
    }
    if let Some(fd) = tty.map(std::os::fd::AsRawFd::as_raw_fd) {
        // SAFETY: only dup2, async-signal-safe, between fork and exec. The caller's terminal, for a
        // debug shell, becomes the helper's fd 3 (dup2 clears close-on-exec).
        unsafe {
            cmd.pre_exec(move || {
                if nix::libc::dup2(fd, debug::TERMINAL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Diagnostic::io("cannot start the executor helper", e))?;
    // The stack is killed (and reaped by tokio) when the caller drops it, after the helper has ended.
    let running = stack.map(|s| &mut s.running);
    let mut stack_error = None;
    let json = serde_json::to_vec(req).expect("requests serialize");
    let mut input = Zeroizing::new(Vec::new());
    input.extend_from_slice(&(json.len() as u64).to_le_bytes());
    input.extend_from_slice(&json);
    for s in secrets {
        input.extend_from_slice(&(s.len() as u64).to_le_bytes());
        input.extend_from_slice(s);
    }
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (running_ref, stack_error_ref) = (running, &mut stack_error);
    let write = async move {
        let r = stdin.write_all(&input).await;
        if let Some(running) = running_ref {
            let ready = running.ready().await;
            let _ = stdin
                .write_all(if ready.is_ok() { b"1" } else { b"0" })
                .await;
            *stack_error_ref = ready.err();
        }
        drop(stdin);
        r
    };
    let read_logs = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = stdout.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            pending.extend_from_slice(&buf[..n]);
            // Hand over whole lines so progress never splits one.
            if let Some(end) = pending.iter().rposition(|&b| b == b'\n') {
                if let Some(l) = &logs {
                    l(&pending[..=end]);
                }
                pending.drain(..=end);
            }
        }
        if let (Some(l), false) = (&logs, pending.is_empty()) {
            l(&pending);
        }
    };
    let read_status = async move {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s).await;
        s
    };
    let (written, (), status_bytes) = tokio::join!(write, read_logs, read_status);
    let exit = child
        .wait()
        .await
        .map_err(|e| Diagnostic::io("waiting for the executor helper", e))?;
    if let Some(e) = stack_error {
        return Err(e);
    }
    let text = String::from_utf8_lossy(&status_bytes);
    let last = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    match serde_json::from_str::<Status>(last) {
        Ok(status) => Ok(status),
        Err(_) => Err(Diagnostic::env(format!(
            "the executor helper failed ({exit}){}{}",
            written
                .err()
                .map(|e| format!(", request not delivered: {e}"))
                .unwrap_or_default(),
            if text.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", text.trim())
            }
        ))),
    }
}

/// Removes what was created only to hold a mount, and the directories that overlayfs copied up only to
/// hold those stubs, so the layer keeps nothing of the mounts.
fn remove_stubs(upper: &Path, status: &Status) {
    let mut parents: Vec<PathBuf> = Vec::new();
    for stub in status.stubs.iter().rev() {
        let p = upper.join(stub.path.trim_start_matches('/'));
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let removed = if stub.dir {
            meta.is_dir() && std::fs::remove_dir(&p).is_ok()
        } else {
            meta.is_file() && meta.len() == 0 && std::fs::remove_file(&p).is_ok()
        };
        if removed {
            let mut parent = p.parent().map(Path::to_path_buf);
            while let Some(dir) = parent {
                if dir == upper || !dir.starts_with(upper) {
                    break;
                }
                parents.push(dir.clone());
                parent = dir.parent().map(Path::to_path_buf);
            }
        }
    }
    parents.sort();
    parents.dedup();
    for dir in parents.iter().rev() {
        // Root mode's overlay marks opaque dirs with trusted.*, rootless mode's (userxattr) with user.*.
        let opaque = ["trusted.overlay.opaque", "user.overlay.opaque"]
            .iter()
            .any(|name| xattr::get(dir, name).ok().flatten().is_some());
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if empty && !opaque {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
