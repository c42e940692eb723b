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

/// What the solver needs from an executor. Implementations must leave no mount and no process behind,
/// whatever the outcome, and must write nothing outside `upper`/`work`.
pub trait Executor: Send + Sync + 'static {
    /// Runs a command; a non-zero exit is an `Err` of category `Build`.
    fn run(&self, step: RunStep, logs: LogSink) -> impl Future<Output = Result<()>> + Send;
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
}

/// An executor that can report a step's exit code instead of failing on it: a remote worker hands the
/// code back itself (REAPI's `ActionResult.exit_code`) instead of a message.
pub trait RunExit: Executor {
    /// Runs a command and returns its exit code; `Err` only when it could not be run at all.
    fn run_exit(&self, step: RunStep, logs: LogSink) -> impl Future<Output = Result<i32>> + Send;
}

/// The error of a step that exited with `exit`.
pub(crate) fn exit_error(args: &[String], exit: i32) -> Diagnostic {
    Diagnostic::build(format!(
        "process `{}` did not complete successfully: exit code {exit}",
        abbreviate(&args.join(" ")),
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
