//! Stage 5, solving: runs a `BuildGraph` with a tokio scheduler. Each node gets a cache key (its definition
//! with the resolved content of its sources mixed in, never a secret's value); a key found in the store is a
//! cache hit and runs nothing; otherwise the node is handed to an `Executor` and its result committed.
//!
//! The solver knows nothing about namespaces or mounts: it talks to the executor through the trait below,
//! which the `exec` stage implements and the driver plugs in.

pub mod context;
use context::HostDir;
pub mod dockerignore;
pub mod shared_cache;
pub mod statcache;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use petgraph::stable_graph::NodeIndex;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::diag::{Diagnostic, Located, Result};
use crate::digest::{Digest, Encoder};
use crate::graph::BuildGraph;
use crate::graph::entitlement::Entitlement;
use crate::graph::op::{ConfigOp, CopyOp, Inherit, Network, RunMount, RunOp, SecretMount, Sharing};
use crate::graph::{NamedContext, Op};
use crate::progress::{Event, Reporter, Vertex};
use crate::secret::{LeakScanner, ScrubStream, Scrubber, SecretStore, SecretValue};
use crate::store::{CacheRecord, LayerBlob, Reserve, SecretVerdict, Store, Verdict};

/// Bump when what a cache key covers changes: every cached result is then rebuilt.
pub const CACHE_DOMAIN: &str = "kiln/cache/v1";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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
    /// Creates a directory (and its parents) inside the filesystem.
    fn mkdir(&self, fs: Layers, path: String) -> impl Future<Output = Result<()>> + Send;
    /// Unpacks a (possibly compressed) layer blob into an empty snapshot directory.
    fn unpack(&self, blob: &Path, media_type: &str, dest: &Path) -> Result<()>;
}

/// What a node produced.
#[derive(Clone, Debug)]
pub enum Output {
    /// A filesystem: layers bottom-up and the config of the image it started from.
    Fs(CacheRecord),
    /// A host directory (a build context).
    Dir(HostDir),
    /// A finished image: layers plus the full OCI image config JSON (without `rootfs`).
    Image { layers: Vec<String>, config: Value },
}

pub struct SolveOptions {
    pub jobs: usize,
    pub no_cache: bool,
    /// The main context directory and the named ones from `--build-context`.
    pub contexts: BTreeMap<String, NamedContext>,
    /// `SOURCE_DATE_EPOCH`, used for `created` times.
    pub epoch: Option<i64>,
    /// `--ssh ID=SOCKET`: the agent socket for each ssh id.
    pub ssh: BTreeMap<String, crate::secret::SshSource>,
    /// How to reach registries for `FROM` images that are not local layouts.
    pub registry: crate::registry::Options,
    /// `--cache-from`: records of shared caches, consulted when the store has no result for a key.
    pub cache_from: Option<Arc<shared_cache::Imported>>,
    /// `--allow`: the entitlements this build grants its steps.
    pub allow: Vec<Entitlement>,
}

pub struct Summary {
    pub outputs: HashMap<NodeIndex, Output>,
    pub executed: usize,
    pub cached: usize,
}

struct Shared<E> {
    graph: Arc<BuildGraph>,
    store: Arc<Store>,
    exec: Arc<E>,
    reporter: Arc<dyn Reporter>,
    secrets: Arc<SecretStore>,
    /// Every secret given to the build: each step's changes are searched for all of them before they are
    /// staged (empty, and no step scanned, in a build given none).
    scanner: Arc<LeakScanner>,
    opts: SolveOptions,
    step_ids: std::sync::atomic::AtomicUsize,
    /// The stat cache of each context directory hashed so far, loaded from the store on first use.
    stat_caches: std::sync::Mutex<HashMap<PathBuf, Arc<statcache::StatCache>>>,
    /// Steps that missed the cache and wait until something needs their result.
    pending: std::sync::Mutex<HashMap<Digest, Arc<Pending>>>,
    /// How many of those ran in the end.
    late_runs: std::sync::atomic::AtomicUsize,
}

/// A step put off: what it needs to run, and its result once it has.
struct Pending {
    result: tokio::sync::OnceCell<Output>,
    work: std::sync::Mutex<Option<Work>>,
    /// How it failed, for every consumer that asks after the first.
    failed: std::sync::Mutex<Option<Diagnostic>>,
}

/// A step's node, inputs, progress id and vertex, and the `--jobs` semaphore: what `execute` takes.
type Work = (
    NodeIndex,
    Vec<(Digest, Output)>,
    usize,
    Vertex,
    Arc<Semaphore>,
);

/// What a put-off step's consumers see until it runs: its key and nothing else. Consumers that hit the
/// cache never look further; those that run ask `demand` for the real result.
fn unrun(key: Digest) -> CacheRecord {
    CacheRecord {
        key,
        layers: Vec::new(),
        times: Vec::new(),
        base: Value::Null.into(),
        secrets: Vec::new(),
    }
}

/// Checks, before anything runs, what would otherwise fail halfway: every step's entitlements must be
/// allowed, every base image must be one kiln can read, and every required secret must have been given.
pub fn preflight(
    graph: &BuildGraph,
    secrets: &SecretStore,
    ssh: &BTreeMap<String, crate::secret::SshSource>,
    allow: &[Entitlement],
) -> Result<()> {
    for n in graph.topo_order() {
        let node = &graph.dag[n];
        if let Op::Run(r) = &node.op
            && let Some(needed) = r.entitlements().into_iter().find(|e| !allow.contains(e))
        {
            let at = node
                .asks
                .iter()
                .find(|(e, _)| *e == needed)
                .map(|(_, at)| at);
            return Err(crate::graph::entitlement::refusal(
                needed,
                at.or(node.at.as_ref()),
            ));
        }
        if let Op::Remote { url, .. } = &graph.dag[n].op {
            let mut d = remote_unsupported(url);
            if let Some(at) = &graph.dag[n].at {
                d = d.label(at.clone(), "");
            }
            return Err(d);
        }
        // Registry images are pulled when solved; here only their names are checked, without the network.
        if let Op::Image { reference } = &graph.dag[n].op
            && !reference.starts_with("oci-layout://")
            && let Err(mut d) = crate::registry::ImageName::parse(reference)
        {
            if let Some(at) = &graph.dag[n].at {
                d = d.label(at.clone(), "this image");
            }
            return Err(d);
        }
    }
    // Required secrets and ssh agents, checked before the first step rather than when it is reached.
    for n in graph.topo_order() {
        let Op::Run(r) = &graph.dag[n].op else {
            continue;
        };
        let missing_secret = r
            .secrets
            .iter()
            .find(|s| s.required && !secrets.contains(&s.id));
        let missing_ssh = r.mounts.iter().find_map(|m| match m {
            RunMount::Ssh {
                id, required: true, ..
            } if !ssh.contains_key(id) => Some(id),
            _ => None,
        });
        let (mut d, what) =
            match (missing_secret, missing_ssh) {
                (Some(s), _) => (
                    Diagnostic::input(format!("secret `{}` is required but was not given", s.id))
                        .help(format!(
                            "pass it with `--secret id={},src=FILE` (or `env=VAR`)",
                            s.id
                        )),
                    "secret",
                ),
                (None, Some(id)) => (
                    Diagnostic::input(format!("ssh agent `{id}` is required but was not given"))
                        .help(if id == "default" {
                            "pass `--ssh default` to forward $SSH_AUTH_SOCK".to_string()
                        } else {
                            format!("pass `--ssh {id}=SOCKET` with an agent socket")
                        }),
                    "ssh agent",
                ),
                (None, None) => continue,
            };
        if let Some(at) = &graph.dag[n].at {
            d = d.label(
                at.clone(),
                format!("this step mounts the {what} with required=true"),
            );
        }
        return Err(d);
    }
    Ok(())
}

/// A scanner for the value of every secret given to the build (read now, dropped with the scanner).
pub fn all_secrets(secrets: &SecretStore) -> Result<LeakScanner> {
    let values = secrets
        .ids()
        .map(|id| {
            Ok(secrets
                .load(id)
                .map_err(Diagnostic::input)?
                .map(|v| (id.to_string(), v)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LeakScanner::new(
        values.iter().flatten().map(|(id, v)| (id.as_str(), v)),
    ))
}

fn remote_unsupported(url: &str) -> Diagnostic {
    Diagnostic::input(format!("ADD from `{url}` is not supported yet: kiln does not fetch URLs or git repositories"))
        .help("fetch it in a RUN step of an earlier stage and COPY --from that stage, or put it in the build context")
}

/// Runs the graph: independent nodes in parallel (at most `jobs` steps at once), each digest once.
pub async fn solve<E: Executor>(
    graph: Arc<BuildGraph>,
    store: Arc<Store>,
    exec: Arc<E>,
    reporter: Arc<dyn Reporter>,
    secrets: Arc<SecretStore>,
    opts: SolveOptions,
) -> Result<Summary> {
    preflight(&graph, &secrets, &opts.ssh, &opts.allow)?;
    let jobs = Arc::new(Semaphore::new(opts.jobs.max(1)));
    let scanner = Arc::new(all_secrets(&secrets)?);
    let shared = Arc::new(Shared {
        graph: graph.clone(),
        store,
        exec,
        reporter,
        secrets,
        scanner,
        opts,
        step_ids: std::sync::atomic::AtomicUsize::new(1),
        stat_caches: Default::default(),
        pending: Default::default(),
        late_runs: Default::default(),
    });
    let mut waiting: HashMap<NodeIndex, usize> = HashMap::new();
    let mut ready = std::collections::BinaryHeap::new();
    for n in graph.topo_order() {
        let deps = graph
            .inputs(n)
            .into_iter()
            .collect::<std::collections::HashSet<_>>()
            .len();
        if deps == 0 {
            ready.push(std::cmp::Reverse(n));
        } else {
            waiting.insert(n, deps);
        }
    }
    let mut book = Book {
        outputs: HashMap::new(),
        waiting,
        ready,
        executed: 0,
        cached: 0,
    };
    let mut tasks = JoinSet::new();
    let failed = 'run: loop {
        while let Some(std::cmp::Reverse(n)) = book.ready.pop() {
            let inputs: Vec<(Digest, Output)> = graph
                .inputs(n)
                .iter()
                .map(|i| book.outputs[i].clone())
                .collect();
            let mut work = Box::pin({
                let shared = shared.clone();
                let jobs = jobs.clone();
                async move { shared.node(n, inputs, jobs).await }
            });
            // Most nodes of a rebuild finish without waiting for anything (a config, a context, a cache
            // hit): polling once here saves each a task, two thread hand-offs and the copies in and out
            // of the task. Whatever does wait (a step, a pull, hashing) goes on in a task of its own.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let result = match work.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => {
                    tasks.spawn(async move { (n, work.await) });
                    continue;
                }
            };
            if let Err(e) = book.done(&graph, n, result) {
                break 'run Some(e);
            }
        }
        let Some(joined) = tasks.join_next().await else {
            break None;
        };
        let (n, result) =
            joined.map_err(|e| Diagnostic::env(format!("a build task failed: {e}")))?;
        if let Err(e) = book.done(&graph, n, result) {
            break Some(e);
        }
    };
    if let Some(e) = failed {
        // Dropping the set aborts the siblings; their executors kill what they started.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        return Err(e);
    }
    // Put-off steps that ran report their real result; those nothing needed have none.
    let pending = std::mem::take(&mut *shared.pending.lock().expect("pending lock"));
    let outputs = book
        .outputs
        .into_iter()
        .filter_map(|(n, (key, o))| match pending.get(&key) {
            Some(p) if matches!(&o, Output::Fs(r) if r.base.is_null()) => {
                p.result.get().map(|real| (n, real.clone()))
            }
            _ => Some((n, o)),
        })
        .collect();
    Ok(Summary {
        outputs,
        executed: book.executed + shared.late_runs.load(std::sync::atomic::Ordering::Relaxed),
        cached: book.cached,
    })
}

/// The scheduler's books: finished nodes' outputs, how many inputs each waiting node still lacks, the
/// nodes ready to go (lowest index first, so runs are reproducible), and the counts for the summary.
struct Book {
    outputs: HashMap<NodeIndex, (Digest, Output)>,
    waiting: HashMap<NodeIndex, usize>,
    ready: std::collections::BinaryHeap<std::cmp::Reverse<NodeIndex>>,
    executed: usize,
    cached: usize,
}

impl Book {
    /// Records a finished node and releases the consumers that waited only for it.
    fn done(
        &mut self,
        graph: &BuildGraph,
        n: NodeIndex,
        result: Result<(Digest, Output, Option<bool>)>,
    ) -> Result<()> {
        let (key, output, ran) = result?;
        match ran {
            Some(true) => self.executed += 1,
            Some(false) => self.cached += 1,
            None => {}
        }
        self.outputs.insert(n, (key, output));
        // A node can consume the same input twice (a stage and a bind mount of it), and `waiting` counts
        // distinct inputs, so each consumer is released once per input node.
        let mut consumers = graph.consumers(n);
        consumers.sort();
        consumers.dedup();
        for c in consumers {
            if let Some(w) = self.waiting.get_mut(&c) {
                *w -= 1;
                if *w == 0 {
                    self.waiting.remove(&c);
                    self.ready.push(std::cmp::Reverse(c));
                }
            }
        }
        Ok(())
    }
}

impl<E: Executor> Shared<E> {
    fn next_id(&self) -> usize {
        self.step_ids
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Fetches and unpacks the snapshots among `layers` that only a shared cache has so far.
    async fn materialize(&self, layers: Vec<String>) -> Result<()> {
        let Some(remote) = self.opts.cache_from.clone() else {
            return Ok(());
        };
        if layers.iter().all(|l| self.store.snapshot_path(l).is_dir()) {
            return Ok(());
        }
        let (store, exec) = (self.store.clone(), self.exec.clone());
        tokio::task::spawn_blocking(move || remote.materialize(&store, &*exec, &layers))
            .await
            .map_err(|e| Diagnostic::env(format!("layer import task failed: {e}")))?
    }

    /// The stat cache of a context directory (one per directory, shared by every step of the build).
    fn stat_cache(&self, dir: &Path) -> Arc<statcache::StatCache> {
        self.stat_caches
            .lock()
            .expect("stat caches lock")
            .entry(dir.to_path_buf())
            .or_insert_with(|| {
                Arc::new(statcache::StatCache::load(self.store.stat_cache_path(dir)))
            })
            .clone()
    }

    fn at(&self, n: NodeIndex) -> Option<Located> {
        self.graph.dag[n].at.clone()
    }

    fn located(&self, n: NodeIndex, d: Diagnostic) -> Diagnostic {
        match (d.location().is_none(), self.at(n)) {
            (true, Some(at)) => d.label(at, ""),
            _ => d,
        }
    }

    /// Solves one node. Returns its cache key, its output, and whether it ran (`Some(true)`), came from the
    /// store (`Some(false)`), or is not a step at all (`None`).
    async fn node(
        self: &Arc<Self>,
        n: NodeIndex,
        inputs: Vec<(Digest, Output)>,
        jobs: Arc<Semaphore>,
    ) -> Result<(Digest, Output, Option<bool>)> {
        let node = &self.graph.dag[n];
        let mut key = Encoder::new(CACHE_DOMAIN);
        node.op.encode(&mut key);
        key.list(inputs.len());
        for (k, _) in &inputs {
            key.digest(k);
        }
        match &node.op {
            Op::Scratch => {
                let key = key.finish();
                let base = json!({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []});
                Ok((
                    key.clone(),
                    Output::Fs(CacheRecord {
                        key,
                        layers: vec![],
                        times: vec![],
                        base: base.into(),
                        secrets: vec![],
                    }),
                    None,
                ))
            }
            Op::Remote { url, .. } => Err(self.located(n, remote_unsupported(url))),
            Op::Inline { files } => {
                let key = key.finish();
                // Written afresh on each build (it is small); the name keeps concurrent builds apart.
                let dir = self
                    .store
                    .root()
                    .join("tmp")
                    .join(format!("inline-{}", node.digest.hex()));
                let write = || -> std::io::Result<()> {
                    let staging = tempfile::Builder::new()
                        .prefix("inline-")
                        .tempdir_in(self.store.root().join("tmp"))?;
                    for (name, content) in files {
                        let path = staging
                            .path()
                            .join(context::clean_relative(name).map_err(std::io::Error::other)?);
                        if let Some(parent) = path.parent() {
                            std::fs::create_dir_all(parent)?;
                        }
                        std::fs::write(&path, content)?;
                        std::fs::set_permissions(
                            &path,
                            std::os::unix::fs::PermissionsExt::from_mode(0o644),
                        )?;
                    }
                    let staging = staging.keep();
                    if std::fs::rename(&staging, &dir).is_err() {
                        let _ = std::fs::remove_dir_all(&staging);
                    }
                    Ok(())
                };
                write().map_err(|e| Diagnostic::io("cannot write a heredoc file", e))?;
                Ok((
                    key,
                    Output::Dir(HostDir {
                        path: dir,
                        excludes: Vec::new(),
                    }),
                    None,
                ))
            }
            Op::Context { name, excludes } => {
                let dir = match self.opts.contexts.get(name) {
                    Some(NamedContext::Dir(d)) => HostDir {
                        path: d.clone(),
                        excludes: excludes.clone(),
                    },
                    _ => {
                        return Err(Diagnostic::input(format!(
                            "build context `{name}` was not given"
                        )));
                    }
                };
                Ok((key.finish(), Output::Dir(dir), None))
            }
            Op::Image { reference } => {
                let store = self.store.clone();
                let exec = self.exec.clone();
                let no_cache = self.opts.no_cache;
                let registry = self.opts.registry.clone();
                let remote = self.opts.cache_from.clone();
                let reference = reference.clone();
                let id = self.next_id();
                let name = node.name.clone();
                let started = Instant::now();
                let reporter = self.reporter.clone();
                let _permit = jobs.acquire().await.expect("semaphore open");
                let (rec, fresh) = tokio::task::spawn_blocking(move || {
                    import_image(
                        &store,
                        &*exec,
                        &reference,
                        no_cache,
                        &registry,
                        remote.as_deref(),
                    )
                })
                .await
                .map_err(|e| Diagnostic::env(format!("image import task failed: {e}")))?
                .map_err(|d| self.located(n, d))?;
                let vertex = Vertex {
                    id,
                    name,
                    digest: self.graph.dag[n].digest.to_string(),
                    at: self.at(n).map(|a| a.to_string()),
                };
                if fresh {
                    reporter.event(Event::Started(vertex));
                    reporter.event(Event::Done {
                        id,
                        elapsed: started.elapsed(),
                    });
                } else {
                    reporter.event(Event::Cached(vertex));
                }
                Ok((rec.key.clone(), Output::Fs(rec), Some(fresh)))
            }
            Op::Config(c) => {
                let key = key.finish();
                let mut inputs = inputs;
                if let Some(real) = self.demand(&inputs[0].0).await? {
                    inputs[0].1 = real;
                }
                let Output::Fs(rec) = &inputs[0].1 else {
                    unreachable!("config consumes a filesystem")
                };
                // Docker runs a base image's ONBUILD triggers in the child's build; kiln cannot yet, and
                // building without them would quietly give a different image.
                if let Some(triggers) = rec.base["config"]["OnBuild"]
                    .as_array()
                    .filter(|t| !t.is_empty())
                {
                    let list: Vec<&str> = triggers.iter().filter_map(|t| t.as_str()).collect();
                    return Err(Diagnostic::input(format!(
                        "the base image of stage `{}` has ONBUILD triggers ({}), which kiln does not run yet",
                        self.graph.dag[n].name.trim_start_matches('[').split(']').next().unwrap_or(""),
                        list.join("; ")
                    ))
                    .help("build from a base image without ONBUILD triggers, or write the triggers out in the Dockerfile"));
                }
                let config = image_config(rec, c, self.opts.epoch);
                Ok((
                    key,
                    Output::Image {
                        layers: rec.layers.clone(),
                        config,
                    },
                    None,
                ))
            }
            Op::Run(_) | Op::Copy(_) | Op::Mkdir { .. } => self.step(n, key, inputs, jobs).await,
        }
    }

    async fn step(
        &self,
        n: NodeIndex,
        mut key: Encoder,
        inputs: Vec<(Digest, Output)>,
        jobs: Arc<Semaphore>,
    ) -> Result<(Digest, Output, Option<bool>)> {
        let node = &self.graph.dag[n];
        // Files taken from a host directory (COPY sources, bind mount sources): only the selected files'
        // content enters the key, never the whole context.
        let selections: Vec<(HostDir, Vec<String>, Vec<String>, &str)> = match &node.op {
            Op::Copy(c) => match inputs.get(1) {
                Some((_, Output::Dir(dir))) => {
                    vec![(dir.clone(), c.sources.clone(), c.excludes.clone(), "COPY")]
                }
                _ => vec![],
            },
            Op::Run(r) => r
                .mounts
                .iter()
                .filter_map(|m| match m {
                    RunMount::Bind { input, source, .. } => match inputs.get(*input) {
                        Some((_, Output::Dir(dir))) => {
                            Some((dir.clone(), vec![source.clone()], Vec::new(), "bind mount"))
                        }
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
            _ => vec![],
        };
        for (dir, sources, excludes, what) in selections {
            let cache = self.stat_cache(&dir.path);
            let digest = tokio::task::spawn_blocking(move || {
                let d =
                    context::selection_digest(&dir.tree()?.excluding(&excludes)?, &sources, &cache);
                cache.save();
                d
            })
            .await
            .map_err(|e| Diagnostic::env(format!("context hashing failed: {e}")))?
            .map_err(|e| {
                self.located(
                    n,
                    Diagnostic::input(format!("{what} failed: {e} in the build context"))
                        .help("check the path; it is relative to the build context directory"),
                )
            })?;
            key.str(&digest);
        }
        let key = key.finish();
        let id = self.next_id();
        let vertex = Vertex {
            id,
            name: node.name.clone(),
            digest: node.digest.to_string(),
            at: node.at.as_ref().map(|a| a.to_string()),
        };
        if !self.opts.no_cache
            && let Some(rec) = self.store.cache_get(&key)
        {
            self.reporter.event(Event::Cached(vertex));
            return Ok((key, Output::Fs(rec), Some(false)));
        }
        let mounted = mounted_ids(&node.op);
        if !self.opts.no_cache
            && let Some(rec) = self
                .opts
                .cache_from
                .as_ref()
                .and_then(|r| r.get(&key, &mounted))
        {
            self.reporter.event(Event::Cached(vertex));
            return Ok((key, Output::Fs(rec), Some(false)));
        }
        // A miss runs only once something needs its result (a step that misses too, or an image), as in
        // BuildKit: a stage whose consumers all hit never runs, so a shared cache's final-stage records
        // alone (mode=min) spare every stage below it, and so does a store that kept only those (after a
        // prune, or after a build from such a cache).
        self.pending
            .lock()
            .expect("pending lock")
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Pending {
                    result: tokio::sync::OnceCell::new(),
                    work: std::sync::Mutex::new(Some((n, inputs, id, vertex, jobs))),
                    failed: std::sync::Mutex::new(None),
                })
            });
        Ok((key.clone(), Output::Fs(unrun(key)), None))
    }

    /// The result of a step that was put off, run now (once, whoever asks first); `None` for a key that
    /// is not such a step.
    fn demand(
        self: &Arc<Self>,
        key: &Digest,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Option<Output>>> + Send + 'static>> {
        let this = self.clone();
        let key = key.clone();
        Box::pin(async move {
            let Some(p) = this
                .pending
                .lock()
                .expect("pending lock")
                .get(&key)
                .cloned()
            else {
                return Ok(None);
            };
            let out = p
                .result
                .get_or_try_init(|| async {
                    let work = p.work.lock().expect("work lock").take();
                    let Some((n, inputs, id, vertex, jobs)) = work else {
                        let failed = p.failed.lock().expect("failed lock").clone();
                        return Err(failed
                            .unwrap_or_else(|| Diagnostic::build("a step this one needs failed")));
                    };
                    // A task of its own rather than an await in place: a chain of put-off steps (one
                    // stage's RUNs) would otherwise nest one poll per step on a worker's stack.
                    let (runner, key) = (this.clone(), key.clone());
                    let ran = tokio::spawn(async move {
                        runner.execute(n, key, inputs, id, vertex, jobs).await
                    })
                    .await
                    .map_err(|e| Diagnostic::env(format!("a build task failed: {e}")))
                    .and_then(|r| r);
                    let (_, out, _) = ran.inspect_err(|e| {
                        *p.failed.lock().expect("failed lock") = Some(e.clone());
                    })?;
                    this.late_runs
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(out)
                })
                .await?;
            Ok(Some(out.clone()))
        })
    }

    /// Runs a step that missed the cache and commits its result.
    async fn execute(
        self: &Arc<Self>,
        n: NodeIndex,
        key: Digest,
        mut inputs: Vec<(Digest, Output)>,
        id: usize,
        vertex: Vertex,
        jobs: Arc<Semaphore>,
    ) -> Result<(Digest, Output, Option<bool>)> {
        // All at once: put-off inputs (and theirs) run side by side, as the scheduler would have run them.
        let demanded =
            futures_util::future::try_join_all(inputs.iter().map(|(k, _)| self.demand(k))).await?;
        for ((_, out), real) in inputs.iter_mut().zip(demanded) {
            if let Some(real) = real {
                *out = real;
            }
        }
        let node = &self.graph.dag[n];
        let Output::Fs(base) = &inputs[0].1 else {
            unreachable!("steps run over a filesystem")
        };
        let _permit = jobs.acquire().await.expect("semaphore open");
        let started = Instant::now();
        self.reporter.event(Event::Started(vertex));
        // Inputs that came from a shared cache get their files now, and only now that a step needs them.
        let mut needed = base.layers.clone();
        for (i, (_, input)) in inputs.iter().enumerate().skip(1) {
            let used = match &node.op {
                Op::Copy(_) => i == 1,
                Op::Run(r) => r
                    .mounts
                    .iter()
                    .any(|m| matches!(m, RunMount::Bind { input, .. } if *input == i)),
                _ => false,
            };
            if let (true, Output::Fs(rec)) = (used, input) {
                needed.extend(rec.layers.iter().cloned());
            }
        }
        if let Err(e) = self.materialize(needed).await {
            self.reporter.event(Event::Failed {
                id,
                elapsed: started.elapsed(),
                message: e.message.clone(),
            });
            return Err(self.located(n, e));
        }
        let work = self.store.work_dir("step-")?;
        let upper = work.path().join("upper");
        let scratch = work.path().join("work");
        for d in [&upper, &scratch] {
            std::fs::create_dir(d)
                .map_err(|e| Diagnostic::io("cannot create a step directory", e))?;
        }
        let fs = Layers {
            lowers: base
                .layers
                .iter()
                .map(|l| self.store.snapshot_path(l))
                .collect(),
            upper: upper.clone(),
            work: scratch,
        };
        // Checks the step's changes for the value of every secret given to the build, whether it mounted
        // one or not: a value can reach any step (through a cache mount, the network, an earlier layer
        // in an encoding the scanner does not know and this step undoes).
        let guard = self.scanner.clone();
        // Hides the secrets of a RUN step in its output and its error message.
        let mut scrubber = Arc::new(Scrubber::new([]));
        // Cache mounts this step holds (lock files) until it is done.
        let mut _reserved: Vec<std::fs::File> = Vec::new();
        // Writable cache mounts: they outlive the step, so the leak guard must look there too.
        let mut caches: Vec<(String, PathBuf)> = Vec::new();
        let mut verdicts: Vec<SecretVerdict> = Vec::new();
        let result = match &node.op {
            Op::Run(r) => {
                let mut step = self.run_step(r, base, fs)?;
                step.key = Some(key.clone());
                let (mounts, held) = self.step_mounts(r, &inputs).await?;
                // As BuildKit does: the step's ssh client finds the (first) forwarded agent by itself.
                if let Some(StepMount::Ssh { target, .. }) =
                    mounts.iter().find(|m| matches!(m, StepMount::Ssh { .. }))
                {
                    step.env.retain(|e| !e.starts_with("SSH_AUTH_SOCK="));
                    step.env.push(format!("SSH_AUTH_SOCK={target}"));
                }
                caches = mounts
                    .iter()
                    .filter_map(|m| match m {
                        StepMount::Cache {
                            target,
                            dir,
                            readonly: false,
                        } => Some((target.clone(), dir.clone())),
                        _ => None,
                    })
                    .collect();
                step.mounts = mounts;
                _reserved = held;
                verdicts = step
                    .secrets
                    .iter()
                    .map(|(m, v)| SecretVerdict {
                        id: m.id.clone(),
                        // `Clean` is only true once the scan below has passed; a leak ends the step first.
                        verdict: if v.is_some() {
                            Verdict::Clean
                        } else {
                            Verdict::NotGiven
                        },
                    })
                    .collect();
                // A build given secrets drops them if it is aborted: a value may be in there in a form
                // no scan finds (a no-op for other builds).
                for (_, dir) in &caches {
                    self.store.note_cache(dir)?;
                }
                scrubber = Arc::new(Scrubber::new(
                    step.secrets.iter().filter_map(|(_, v)| v.as_ref()),
                ));
                let reporter = self.reporter.clone();
                let log = move |text: Vec<u8>| {
                    if !text.is_empty() {
                        reporter.event(Event::Log {
                            id,
                            text: String::from_utf8_lossy(&text).into_owned(),
                        })
                    }
                };
                // Output arrives in chunks; the stream finds a secret split between two.
                let stream = Arc::new(ScrubStream::new(scrubber.clone()));
                let sink: LogSink = {
                    let (stream, log) = (stream.clone(), log.clone());
                    Arc::new(move |chunk: &[u8]| log(stream.push(chunk)))
                };
                let result = self.exec.run(step, sink).await;
                log(stream.finish());
                result
            }
            Op::Copy(c) => {
                let source = match &inputs[1].1 {
                    Output::Dir(d) => CopySource::Dir(d.clone()),
                    Output::Fs(rec) => CopySource::Layers(
                        rec.layers
                            .iter()
                            .map(|l| self.store.snapshot_path(l))
                            .collect(),
                    ),
                    Output::Image { .. } => unreachable!("COPY reads filesystems"),
                };
                let files = match &source {
                    CopySource::Dir(d) => Some((self.store.files_dir(), self.stat_cache(&d.path))),
                    CopySource::Layers(_) => None,
                };
                self.exec
                    .copy(CopyStep {
                        fs,
                        source,
                        op: c.clone(),
                        files,
                    })
                    .await
            }
            Op::Mkdir { path } => self.exec.mkdir(fs, path.clone()).await,
            _ => unreachable!("only steps reach here"),
        };
        if let Err(mut e) = result {
            e.message = scrubber.scrub_str(&e.message);
            self.reporter.event(Event::Failed {
                id,
                elapsed: started.elapsed(),
                message: e.message.clone(),
            });
            return Err(self.located(n, e));
        }
        let scan_dir = upper.clone();
        let leak = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            if guard.is_empty() {
                return Ok(None);
            }
            if let Some((leak, path)) = guard.scan_tree(&scan_dir)? {
                return Ok(Some((
                    leak,
                    format!("into the image at /{}", path.display()),
                )));
            }
            for (target, dir) in &caches {
                if let Some((leak, path)) = guard.scan_tree(dir)? {
                    // A cache outlives the step: drop it whole rather than keep a secret in the store.
                    let _ = std::fs::remove_dir_all(dir);
                    let at = Path::new(target).join(path);
                    return Ok(Some((
                        leak,
                        format!(
                            "into cache mount {target} at {} (the cache was deleted)",
                            at.display()
                        ),
                    )));
                }
            }
            Ok(None)
        })
        .await
        .map_err(|e| Diagnostic::env(format!("leak scan failed: {e}")))?
        .map_err(|e| Diagnostic::io("cannot scan the step's changes for secrets", e))?;
        if let Some((leak, place)) = leak {
            let message = format!(
                "secret `{}` leaked: this step wrote it ({}) {place}",
                leak.id,
                leak.encoding.as_str(),
            );
            self.reporter.event(Event::Failed {
                id,
                elapsed: started.elapsed(),
                message: message.clone(),
            });
            // The step's changes are dropped with its work dir, and the driver drops the build's
            // transaction: nothing of this build reaches the store.
            let message =
                format!("{message}; nothing was exported, and nothing this build made was kept");
            return Err(self.leak_error(n, &mounted_ids(&node.op), &leak.id, message));
        }
        let snapshot = format!("step-{}", key.hex());
        self.store.stage_snapshot(&upper, &snapshot)?;
        let mut layers = base.layers.clone();
        layers.push(snapshot);
        let mut times = base.times.clone();
        times.resize(base.layers.len(), 0);
        times.push(unix_now());
        let rec = CacheRecord {
            key: key.clone(),
            layers,
            times,
            base: base.base.clone(),
            secrets: verdicts,
        };
        self.store.stage_record(&rec)?;
        self.reporter.event(Event::Done {
            id,
            elapsed: started.elapsed(),
        });
        Ok((key, Output::Fs(rec), Some(true)))
    }

    /// A step's leak: located at the step, with a hint that fits how the value got there.
    fn leak_error(&self, n: NodeIndex, mounted: &[&str], id: &str, message: String) -> Diagnostic {
        let (label, help) = if mounted.contains(&id) {
            (
                "this step mounted the secret",
                "use the secret only inside the RUN that mounts it; write nothing derived from it to disk, or delete it in the same RUN",
            )
        } else {
            (
                "this step does not mount the secret, but wrote its value",
                "the value reached this step from a step that mounts it (an earlier layer, a cache mount, the network); no step may pass a secret on in any form",
            )
        };
        let mut d = Diagnostic::build(message).help(help);
        if let Some(at) = self.at(n) {
            d = d.label(at, label);
        }
        d
    }

    fn run_step(&self, r: &RunOp, base: &CacheRecord, fs: Layers) -> Result<RunStep> {
        let cfg = &base.base["config"];
        let mut env: Vec<String> = cfg["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        for (k, v) in &r.env {
            set_env(&mut env, k, v);
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_string());
        }
        let mut secrets = Vec::new();
        for m in &r.secrets {
            let value = self.secrets.load(&m.id).map_err(Diagnostic::input)?;
            if value.is_none() && m.required {
                return Err(Diagnostic::input(format!(
                    "secret `{}` is required but was not given",
                    m.id
                )));
            }
            if let (Some(var), Some(_)) = (&m.env, &value) {
                // The value is injected by the executor into the process only; the name is reserved here.
                env.retain(|e| !e.starts_with(&format!("{var}=")));
            }
            secrets.push((m.clone(), value));
        }
        let cwd = r
            .cwd
            .clone()
            .or_else(|| {
                cfg["WorkingDir"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(String::from)
            })
            .unwrap_or_else(|| "/".to_string());
        let user = r
            .user
            .clone()
            .or_else(|| cfg["User"].as_str().map(String::from))
            .unwrap_or_default();
        Ok(RunStep {
            fs,
            args: r.args.clone(),
            env,
            cwd,
            user,
            network: r.network,
            insecure: r.insecure,
            secrets,
            mounts: Vec::new(),
            key: None,
        })
    }

    /// Cache, bind and tmpfs mounts of a RUN, resolved to host paths. Returns the lock files that reserve
    /// its cache mounts; they must live until the step ends.
    async fn step_mounts(
        &self,
        r: &RunOp,
        inputs: &[(Digest, Output)],
    ) -> Result<(Vec<StepMount>, Vec<std::fs::File>)> {
        let mut mounts = Vec::new();
        let mut held = Vec::new();
        for m in &r.mounts {
            mounts.push(match m {
                RunMount::Cache {
                    target,
                    id,
                    sharing,
                    mode,
                    uid,
                    gid,
                    readonly,
                } => {
                    let reserve = match sharing {
                        Sharing::Shared => Reserve::No,
                        Sharing::Locked => Reserve::Wait,
                        Sharing::Private => Reserve::OrSibling,
                    };
                    let (store, id, owner) = (self.store.clone(), id.clone(), (*mode, *uid, *gid));
                    let (dir, lock) =
                        tokio::task::spawn_blocking(move || store.cache_mount(&id, reserve, owner))
                            .await
                            .map_err(|e| {
                                Diagnostic::env(format!("cache mount task failed: {e}"))
                            })??;
                    held.extend(lock);
                    StepMount::Cache {
                        target: target.clone(),
                        dir,
                        readonly: *readonly,
                    }
                }
                RunMount::Bind {
                    target,
                    input,
                    source,
                    readwrite,
                } => {
                    let from = match &inputs.get(*input).map(|(_, o)| o) {
                        Some(Output::Dir(d)) => CopySource::Dir(d.clone()),
                        Some(Output::Fs(rec)) => CopySource::Layers(
                            rec.layers
                                .iter()
                                .map(|l| self.store.snapshot_path(l))
                                .collect(),
                        ),
                        _ => unreachable!("bind sources are filesystems or directories"),
                    };
                    StepMount::Bind {
                        target: target.clone(),
                        from,
                        source: source.clone(),
                        readwrite: *readwrite,
                    }
                }
                RunMount::Tmpfs { target, size } => StepMount::Tmpfs {
                    target: target.clone(),
                    size: *size,
                },
                RunMount::Ssh {
                    id,
                    target,
                    mode,
                    uid,
                    gid,
                    ..
                } => {
                    let n = mounts
                        .iter()
                        .filter(|m| matches!(m, StepMount::Ssh { .. }))
                        .count();
                    let Some(agent) = self.opts.ssh.get(id) else {
                        // Optional and not given: the step runs without it (required ones fail preflight).
                        continue;
                    };
                    StepMount::Ssh {
                        target: target
                            .clone()
                            .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{n}")),
                        agent: agent.clone(),
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                    }
                }
            });
        }
        Ok((mounts, held))
    }
}

/// The ids of the secrets a step mounts.
fn mounted_ids(op: &Op) -> Vec<&str> {
    match op {
        Op::Run(r) => r.secrets.iter().map(|s| s.id.as_str()).collect(),
        _ => Vec::new(),
    }
}

fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map(|(k, _)| k) == Some(key))
    {
        Some(e) => *e = entry,
        None => env.push(entry),
    }
}

/// Resolves an image reference to a local OCI layout (pulling registry images into the store) and imports
/// its layers as snapshots.
/// Returns the record and whether anything had to be unpacked.
fn import_image<E: Executor>(
    store: &Store,
    exec: &E,
    reference: &str,
    no_cache: bool,
    registry: &crate::registry::Options,
    remote: Option<&shared_cache::Imported>,
) -> Result<(CacheRecord, bool)> {
    // A registry image is pulled into a layout in the store first; from there on both kinds are alike.
    let (dir, tag) = match reference.strip_prefix("oci-layout://") {
        Some(rest) => {
            let (dir, tag) = split_layout_ref(rest);
            (PathBuf::from(dir), tag)
        }
        None => (crate::registry::pull(store, reference, registry)?, None),
    };
    let dir = dir.as_path();
    let image = crate::oci::read_image(dir, tag)
        .map_err(|e| Diagnostic::input(format!("cannot read base image `{reference}`: {e}")))?;
    let manifest = Digest::parse(&image.manifest_digest)
        .ok_or_else(|| Diagnostic::env(format!("bad manifest digest in {}", dir.display())))?;
    let mut key = Encoder::new(CACHE_DOMAIN);
    key.str("image").digest(&manifest);
    let key = key.finish();
    // `--no-cache` re-reads the image; layers stay shared by diff id, so nothing is unpacked twice.
    if !no_cache && let Some(rec) = store.cache_get(&key) {
        return Ok((rec, false));
    }
    // A shared cache that has the image answers without unpacking anything: layers are unpacked from
    // it only when a step runs on them.
    if !no_cache && let Some(rec) = remote.and_then(|r| r.get(&key, &[])) {
        return Ok((rec, false));
    }
    // The raw config, not oci-spec's typed one: Docker's extensions (`Healthcheck`, `OnBuild`, `Shell`)
    // are inherited by the stage and would be lost in the round trip. `read_image` verified its digest.
    let base: Value = crate::oci::blob_path(Path::new(dir), &image.config_digest)
        .and_then(std::fs::read)
        .and_then(|b| serde_json::from_slice(&b).map_err(std::io::Error::other))
        .map_err(|e| Diagnostic::input(format!("cannot read the config of `{reference}`: {e}")))?;
    let diff_ids: Vec<String> = image.config.rootfs().diff_ids().clone();
    if diff_ids.len() != image.manifest.layers().len() {
        return Err(Diagnostic::input(format!(
            "base image `{reference}` is inconsistent: {} layers but {} diff ids",
            image.manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let mut layers = Vec::new();
    for (desc, diff_id) in image.manifest.layers().iter().zip(&diff_ids) {
        let diff = Digest::parse(diff_id)
            .ok_or_else(|| Diagnostic::input(format!("bad diff id `{diff_id}`")))?;
        let snapshot = format!("layer-{}", diff.hex());
        let digest = Digest::parse(desc.digest().as_ref())
            .ok_or_else(|| Diagnostic::input(format!("bad layer digest `{}`", desc.digest())))?;
        let have_snapshot = store.snapshot_path(&snapshot).is_dir();
        let have_blob = store
            .layer_blob(&snapshot)
            .is_some_and(|b| b.digest == digest);
        if have_snapshot && have_blob {
            // Unpacked and kept before (under this very blob digest): the layout's copy is not read at
            // all, so there is nothing to verify. Hashing a 100 MB base layer on every `--no-cache` build
            // was a fifth of a second before the first step could start.
            layers.push(snapshot);
            continue;
        }
        // Verified before use: a layout on disk is input, not something kiln wrote.
        let blob = crate::oci::verify_blob(dir, desc.digest().as_ref(), Some(desc.size()))
            .map_err(|e| Diagnostic::input(format!("base image `{reference}`: {e}")))?;
        let media_type = desc.media_type().to_string();
        if !have_snapshot {
            let tmp = store.temp_dir("unpack-")?;
            let dest = tmp.path().join("layer");
            std::fs::create_dir(&dest)
                .map_err(|e| Diagnostic::io("cannot create a snapshot", e))?;
            exec.unpack(&blob, &media_type, &dest)?;
            store.commit_snapshot(&dest, &snapshot)?;
        }
        if store.layer_blob(&snapshot).is_none() {
            // Keep the original blob so exports reuse it byte for byte.
            store.import_blob(&blob, &digest)?;
            store.put_layer_blob(
                &snapshot,
                &LayerBlob {
                    diff_id: diff,
                    digest,
                    size: desc.size(),
                    media_type,
                    tar_size: None,
                },
            )?;
        }
        layers.push(snapshot);
    }
    let rec = CacheRecord {
        key,
        times: vec![0; layers.len()],
        layers,
        base: base.into(),
        secrets: vec![],
    };
    store.cache_put(&rec)?;
    Ok((rec, true))
}

/// `DIR[:TAG]`: a tag is the text after the last `:` when it holds no `/`.
pub fn split_layout_ref(rest: &str) -> (&str, Option<&str>) {
    match rest.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => (dir, Some(tag)),
        _ => (rest, None),
    }
}

/// The image config of a finished stage: the base image's config with the stage's settings on top, and the
/// base history followed by the stage's. `rootfs` is filled in by the exporter, which knows the diff ids.
///
/// Times come from the records (when each layer was built) or `SOURCE_DATE_EPOCH`, never from "now", so
/// the same cached result always gives the same config digest.
fn image_config(rec: &CacheRecord, op: &ConfigOp, epoch: Option<i64>) -> Value {
    let base = &rec.base;
    let own = op.history.iter().filter(|h| h.layer).count();
    let first_own = rec.layers.len().saturating_sub(own);
    let layer_times: Vec<String> = (first_own..rec.layers.len())
        .map(|i| timestamp(epoch.or(rec.times.get(i).copied()).unwrap_or(0)))
        .collect();
    let base_created = match epoch {
        Some(e) => timestamp(e),
        None => base["created"]
            .as_str()
            .map_or_else(|| timestamp(0), String::from),
    };
    let mut created = layer_times.first().cloned().unwrap_or(base_created);
    let mut cfg = base["config"].as_object().cloned().unwrap_or_default();
    let mut env: Vec<String> = cfg
        .get("Env")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in &op.env {
        set_env(&mut env, k, v);
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    cfg.insert("Env".into(), json!(env));
    if let Some(cwd) = &op.cwd {
        cfg.insert("WorkingDir".into(), json!(cwd));
    }
    if let Some(user) = &op.user {
        cfg.insert("User".into(), json!(user));
    }
    for (field, value) in [("Cmd", &op.cmd), ("Entrypoint", &op.entrypoint)] {
        match value {
            Inherit::Base => {}
            Inherit::Clear => {
                cfg.remove(field);
            }
            Inherit::Set(v) => {
                cfg.insert(field.into(), json!(v));
            }
        }
    }
    let mut add_keys = |field: &str, keys: &[String]| {
        if keys.is_empty() {
            return;
        }
        let mut set = cfg
            .get(field)
            .and_then(|v| v.as_object())
            .cloned()
            .unwrap_or_default();
        for k in keys {
            set.insert(k.clone(), json!({}));
        }
        cfg.insert(field.into(), Value::Object(set));
    };
    add_keys("ExposedPorts", &op.exposed);
    add_keys("Volumes", &op.volumes);
    if let Some(s) = &op.stop_signal {
        cfg.insert("StopSignal".into(), json!(s));
    }
    if let Some(s) = &op.shell {
        cfg.insert("Shell".into(), json!(s));
    }
    match &op.healthcheck {
        Inherit::Base => {}
        Inherit::Clear => {
            cfg.remove("Healthcheck");
        }
        Inherit::Set(h) => {
            let mut hc = serde_json::Map::new();
            hc.insert("Test".into(), json!(h.test));
            for (k, v) in [
                ("Interval", h.interval),
                ("Timeout", h.timeout),
                ("StartPeriod", h.start_period),
                ("StartInterval", h.start_interval),
                ("Retries", h.retries),
            ] {
                if v != 0 {
                    hc.insert(k.into(), json!(v));
                }
            }
            cfg.insert("Healthcheck".into(), Value::Object(hc));
        }
    }
    // A base image's triggers belong to the stage built FROM it, never to this image.
    cfg.remove("OnBuild");
    if !op.onbuild.is_empty() {
        cfg.insert("OnBuild".into(), json!(op.onbuild));
    }
    if !op.labels.is_empty() {
        let mut labels = cfg
            .get("Labels")
            .and_then(|l| l.as_object())
            .cloned()
            .unwrap_or_default();
        for (k, v) in &op.labels {
            labels.insert(k.clone(), json!(v));
        }
        cfg.insert("Labels".into(), Value::Object(labels));
    }
    let mut history: Vec<Value> = base["history"].as_array().cloned().unwrap_or_default();
    let mut next = 0;
    for h in &op.history {
        if h.layer {
            if let Some(t) = layer_times.get(next) {
                created = t.clone();
            }
            next += 1;
        }
        let mut entry = json!({"created": created, "created_by": h.created_by, "comment": "kiln"});
        if !h.layer {
            entry["empty_layer"] = json!(true);
        }
        history.push(entry);
    }
    let mut image = json!({
        "created": created,
        "architecture": base["architecture"].as_str().unwrap_or("amd64"),
        "os": base["os"].as_str().unwrap_or("linux"),
        "config": Value::Object(cfg),
        "history": history,
    });
    match (&op.author, base["author"].as_str()) {
        (Some(a), _) => image["author"] = json!(a),
        (None, Some(a)) => image["author"] = json!(a),
        (None, None) => {}
    }
    image
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// RFC 3339 UTC time of Unix seconds.
fn timestamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm): no date crate needed for one format.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn layout_refs_split_tags() {
        assert_eq!(split_layout_ref("/a/b:latest"), ("/a/b", Some("latest")));
        assert_eq!(split_layout_ref("/a/b"), ("/a/b", None));
        assert_eq!(split_layout_ref("./x:1/y"), ("./x:1/y", None));
    }
}
