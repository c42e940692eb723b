//! What the solver asks of an executor: the `Executor` trait and the steps it runs (`RunStep`, `CopyStep`,
//! their filesystems and mounts). `exec` (namespaces) and `remote` (REAPI) implement it; the solver knows
//! nothing about how a step is carried out.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::context::HostDir;
use super::statcache;
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::graph::op::{CopyOp, Network, SecretMount};
use crate::secret::SecretValue;

/// A filesystem to work on: read-only lower snapshots (bottom first) and a fresh upper dir for the changes.
#[derive(Clone, Debug)]
pub struct Layers {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    /// Scratch space on the same filesystem as `upper` (overlayfs needs one).
    pub work: PathBuf,
}

pub struct RunStep {
    pub fs: Layers,
    pub args: Vec<String>,
    /// The full environment of the process.
    pub env: Vec<String>,
    pub cwd: String,
    /// `user[:group]` or numeric ids; empty means root.
    pub user: String,
    pub network: Network,
    /// `RUN --security=insecure`, which the build allowed: the step runs without a sandbox.
    pub insecure: bool,
    /// Each secret mount with its value (`None` when an optional secret was not given).
    pub secrets: Vec<(SecretMount, Option<SecretValue>)>,
    pub mounts: Vec<StepMount>,
    /// The step's cache key (never covering a secret's value): a remote cache may file the result under
    /// it, as the store does.
    pub key: Option<Digest>,
    /// What the build's command line sets for every RUN step (`--add-host`, `--shm-size`, `--ulimit`).
    pub sandbox: Sandbox,
    /// Whether another RUN of the build may run after this one starts: only then is a network stack
    /// started ahead for it (`exec::net::Spare`).
    pub more_runs: bool,
}

/// What `kiln build`'s command line sets for every RUN step, as buildx's flags of the same names do:
/// beyond what a step's op says, so it is mixed into the step's cache key when set.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sandbox {
    /// `--network`: the network of a RUN that does not choose one (`RUN --network=...` wins).
    pub network: Option<Network>,
    /// `--add-host HOST:IP`: extra `/etc/hosts` lines, in order.
    pub hosts: Vec<(String, String)>,
    /// `--shm-size`: the size of `/dev/shm` in bytes (64 MiB otherwise, as Docker's default).
    pub shm_size: Option<u64>,
    /// `--ulimit NAME=SOFT[:HARD]`: resource limits of the step's processes.
    pub ulimits: Vec<Ulimit>,
}

/// One `--ulimit`: a resource (docker's name: `nofile`, `nproc`, `core`, ...) and its limits
/// (`u64::MAX`: unlimited).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ulimit {
    pub name: String,
    pub soft: u64,
    pub hard: u64,
}

impl Sandbox {
    /// The network a RUN whose op asks for `network` gets.
    pub fn network_of(&self, network: Network) -> Network {
        match (network, self.network) {
            (Network::Default, Some(n)) => n,
            (n, _) => n,
        }
    }

    /// Mixes what is set into a RUN step's cache key (nothing when nothing is set, so keys stay as
    /// they were), like BuildKit's, whose ExecOp carries these.
    pub fn key(&self, op_network: Network, key: &mut crate::digest::Encoder) {
        if op_network == Network::Default
            && let Some(n) = self.network
        {
            key.str("network").str(n.as_str());
        }
        if !self.hosts.is_empty() {
            key.str("hosts").pairs(&self.hosts);
        }
        if let Some(size) = self.shm_size {
            key.str("shm").u64(size);
        }
        if !self.ulimits.is_empty() {
            key.str("ulimits").list(self.ulimits.len());
            for u in &self.ulimits {
                key.str(&u.name).u64(u.soft).u64(u.hard);
            }
        }
    }
}

/// A cache, bind or tmpfs mount of a step, with host paths.
#[derive(Clone, Debug)]
pub enum StepMount {
    Cache {
        target: String,
        dir: PathBuf,
        readonly: bool,
        /// For a cache created for this step: the directory `source` of `from` it starts with.
        seed: Option<(CopySource, String)>,
    },
    Bind {
        target: String,
        from: CopySource,
        /// The path inside `from` to mount.
        source: String,
        readwrite: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    /// An agent socket on the host, served to the step through a socket of its own at `target`.
    Ssh {
        /// The `--ssh` id it forwards.
        id: String,
        target: String,
        agent: crate::secret::SshSource,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// Where COPY reads from.
#[derive(Clone, Debug)]
pub enum CopySource {
    /// A directory on the host (a build context).
    Dir(HostDir),
    /// Another node's layers, bottom first (a stage or an image).
    Layers(Vec<PathBuf>),
}

#[derive(Clone, Debug)]
pub struct CopyStep {
    pub fs: Layers,
    pub source: CopySource,
    pub op: CopyOp,
    /// For a COPY from a host directory: the store's file objects and the directory's stat cache, so the
    /// executor may hard-link unchanged files instead of copying them (see `Store::files_dir`).
    pub files: Option<(PathBuf, Arc<statcache::StatCache>)>,
}

pub type LogSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Where an executor says a step is carried out, as it learns it (progress shows it; a remote cache
/// hit counts as cached in the summary).
pub type StatusSink = Arc<dyn Fn(crate::progress::Placement) + Send + Sync>;

/// What the solver needs from an executor. Implementations must leave no mount and no process behind,
/// whatever the outcome, and must write nothing outside `upper`/`work`.
pub trait Executor: Send + Sync + 'static {
    /// Runs a command; a non-zero exit is an `Err` of category `Build`.
    fn run(&self, step: RunStep, logs: LogSink) -> impl Future<Output = Result<()>> + Send;
    /// `run`, telling `status` where the step is carried out; an executor that only runs steps here
    /// has nothing to tell.
    fn run_placed(
        &self,
        step: RunStep,
        logs: LogSink,
        status: StatusSink,
    ) -> impl Future<Output = Result<()>> + Send {
        drop(status);
        self.run(step, logs)
    }
    fn copy(&self, step: CopyStep) -> impl Future<Output = Result<()>> + Send;
    /// Creates a directory (and its parents) inside the filesystem, the new ones owned by `user`.
    fn mkdir(
        &self,
        fs: Layers,
        path: String,
        user: Option<String>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Unpacks a (possibly compressed) layer blob into an empty snapshot directory.
    fn unpack(&self, blob: &Path, media_type: &str, dest: &Path) -> Result<()>;
    /// Runs `step` (a failed RUN's, over the filesystem it left) interactively on the caller's terminal,
    /// confined as the step was, until it exits (`--on-error=shell`). Writes to its cache mounts are
    /// discarded. Executors that cannot reach the caller's terminal refuse.
    fn shell(&self, step: RunStep) -> impl Future<Output = Result<()>> + Send {
        drop(step);
        std::future::ready(Err(Diagnostic::input(
            "this executor cannot open a debug shell",
        )))
    }
}

/// An executor that can report a step's exit code instead of failing on it: a remote worker hands the
/// code back itself (REAPI's `ActionResult.exit_code`) instead of a message.
pub trait RunExit: Executor {
    /// Runs a command and returns its exit code; `Err` only when it could not be run at all.
    fn run_exit(&self, step: RunStep, logs: LogSink) -> impl Future<Output = Result<i32>> + Send;
}

/// The error of a step that exited with `exit`, in BuildKit's words (the command double-quoted as Go's
/// `%q` quotes it, here only its backslashes and quotes escaped).
pub(crate) fn exit_error(args: &[String], exit: i32) -> Diagnostic {
    let command = abbreviate(&args.join(" "))
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    Diagnostic::build(format!(
        "process \"{command}\" did not complete successfully: exit code: {exit}"
    ))
}

/// A command on one line, cut to 120 characters: for progress lines and logs.
pub(crate) fn abbreviate(s: &str) -> String {
    let one_line = s.replace('\n', " ");
    if one_line.chars().count() > 120 {
        format!("{}...", one_line.chars().take(117).collect::<String>())
    } else {
        one_line
    }
}

/// What to open when a RUN step fails.
pub struct DebugShell {
    /// The command, run as the step's process was (`/bin/sh`).
    pub command: Vec<String>,
    /// `--debug-secrets`: mount the step's secrets and SSH agents in the shell too.
    pub secrets: bool,
    /// Whether a shell was opened: one per build, and a second failure waits until it has ended.
    pub(super) opened: tokio::sync::Mutex<bool>,
}

impl DebugShell {
    pub fn new(command: Vec<String>, secrets: bool) -> DebugShell {
        DebugShell {
            command,
            secrets,
            opened: tokio::sync::Mutex::new(false),
        }
    }
}
