//! The scheduler: runs a `Dag` on tokio (a `JoinSet` of node tasks, a `Semaphore` for `--jobs`),
//! keeps the books of finished and waiting nodes, and puts off steps that miss the cache until a step that
//! runs or an image needs their result (so stages below cached steps never run, as in BuildKit).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use petgraph::stable_graph::NodeIndex;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::context::HostDir;
use super::{Executor, shared_cache, statcache};
use crate::diag::{Diagnostic, Located, Result};
use crate::digest::{Digest, Encoder};
use crate::graph::entitlement::Entitlement;
use crate::graph::{Dag, NamedContext};
use crate::progress::{Event, Reporter, Vertex};
use crate::secret::{LeakScanner, SecretStore};
use crate::store::{CacheRecord, Store};

/// What a node produced.
#[derive(Clone, Debug)]
pub enum Output {
    /// A filesystem: layers bottom-up and the config of the image it started from.
    Fs(CacheRecord),
    /// A host directory (a build context).
    Dir(HostDir),
    /// A finished image: layers plus the full OCI image config JSON (without `rootfs`).
    Image {
        layers: Vec<String>,
        config: super::config::ImageConfig,
    },
}

pub struct SolveOptions {
    pub jobs: usize,
    pub no_cache: bool,
    /// `--network`, `--add-host`, `--shm-size`, `--ulimit`: what every RUN step gets.
    pub sandbox: super::Sandbox,
    /// `--no-cache-filter`: the steps that run even when the cache holds their result.
    pub no_cache_for: std::collections::HashSet<NodeIndex>,
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
    /// `--on-error=shell`: what to open in a RUN step that fails.
    pub debug: Option<super::executor::DebugShell>,
    /// The platforms (as RUN ops name them) whose steps cannot run on this machine, and why (no
    /// emulator): a RUN step of one of them fails when it is about to run, so a build whose steps of
    /// that platform the cache answers needs no emulator.
    pub unrunnable: HashMap<Option<String>, Diagnostic>,
    /// Told of each step whose snapshot was committed (not staged in a transaction), as soon as it is.
    pub committed: Option<Committed>,
}

/// What the solve tells of a committed step and its snapshot: the driver starts the digest of a kept
/// image's layer there, beside the steps still to run.
pub type Committed = Arc<dyn Fn(NodeIndex, &str) + Send + Sync>;

pub struct Summary {
    pub outputs: HashMap<NodeIndex, Output>,
    pub executed: usize,
    pub cached: usize,
    /// What each source node resolved to when it was solved (an image's manifest, a download's blob, a
    /// git commit, the files a step selected from a context): the build's inputs by digest, for its
    /// provenance.
    pub resolved: HashMap<NodeIndex, Vec<Resolved>>,
    /// The steps this build committed whose snapshots and records are still being made durable: the
    /// build joins them (`settle`) after its exports, which need only the snapshots, so the last
    /// step's sync overlaps them.
    pub durable: Vec<crate::store::Durable>,
}

impl Summary {
    /// Waits until every step this build committed is on disk; the first store error, if any.
    pub fn settle(&mut self) -> Result<()> {
        crate::store::Durable::wait_all(std::mem::take(&mut self.durable))
    }
}

/// An input a node resolved to, by digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// A base image: its reference as written and the manifest it was pinned to.
    Image { reference: String, manifest: Digest },
    /// An `ADD <url>` download: the URL without userinfo and the blob fetched.
    Download { url: String, blob: Digest },
    /// An `ADD <git url>`: the URL without userinfo and the commit checked out.
    Git { url: String, commit: String },
    /// The files a step selected from a context directory (`COPY`, a bind mount), by content.
    Files { context: String, digest: String },
}

pub(super) struct Shared<E> {
    pub(super) graph: Arc<Dag>,
    pub(super) store: Arc<Store>,
    pub(super) exec: Arc<E>,
    pub(super) reporter: Arc<dyn Reporter>,
    pub(super) secrets: Arc<SecretStore>,
    /// Every secret given to the build: each step's changes are searched for all of them before they are
    /// staged (empty, and no step scanned, in a build given none).
    pub(super) scanner: Arc<LeakScanner>,
    pub(super) opts: SolveOptions,
    pub(super) step_ids: std::sync::atomic::AtomicUsize,
    /// The stat cache of each context directory hashed so far, loaded from the store on first use.
    pub(super) stat_caches: std::sync::Mutex<HashMap<PathBuf, Arc<statcache::StatCache>>>,
    /// Steps that missed the cache and wait until something needs their result.
    pub(super) pending: std::sync::Mutex<HashMap<Digest, Arc<Pending>>>,
    /// How many of those ran in the end.
    pub(super) late_runs: std::sync::atomic::AtomicUsize,
    /// The RUN nodes neither found in the cache nor started yet (see `run_starts`).
    pub(super) runs_left: std::sync::atomic::AtomicUsize,
    /// How many of those another build on the store ran meanwhile.
    pub(super) late_hits: std::sync::atomic::AtomicUsize,
    /// What source nodes resolved to (see `Summary::resolved`).
    pub(super) resolved: std::sync::Mutex<HashMap<NodeIndex, Vec<Resolved>>>,
    /// The committed steps whose snapshots and records are still being made durable.
    pub(super) durable: std::sync::Mutex<Vec<crate::store::Durable>>,
}

impl<E> Shared<E> {
    /// Waits until every committed step is on disk; the first store error, if any.
    async fn durable(&self) -> Result<()> {
        let pending = std::mem::take(&mut *self.durable.lock().expect("durable lock"));
        if pending.is_empty() {
            return Ok(());
        }
        // Every one is waited for, also after an error: none may outlive the solve.
        tokio::task::spawn_blocking(move || crate::store::Durable::wait_all(pending))
            .await
            .map_err(|e| Diagnostic::env(format!("a store write task failed: {e}")))?
    }
}

/// A step put off: what it needs to run, and its result once it has.
pub(super) struct Pending {
    pub(super) result: tokio::sync::OnceCell<Output>,
    pub(super) work: std::sync::Mutex<Option<Work>>,
    /// How it failed, for every consumer that asks after the first.
    pub(super) failed: std::sync::Mutex<Option<Diagnostic>>,
}

/// A step's node, inputs, progress id and vertex, and the `--jobs` semaphore: what `execute` takes.
pub(super) type Work = (
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

/// Runs the graph's nodes as their inputs finish: at once when a node needs no waiting, in a task of its
/// own otherwise; the first failure aborts the rest.
pub(super) async fn run<E: Executor>(
    graph: Arc<Dag>,
    shared: Arc<Shared<E>>,
    jobs: Arc<Semaphore>,
) -> Result<Summary> {
    let mut book = Book::new(&graph);
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
            if let Err(e) = book.done(&graph, n, result, &shared.runs_left) {
                break 'run Some(e);
            }
        }
        let Some(joined) = tasks.join_next().await else {
            break None;
        };
        let (n, result) =
            joined.map_err(|e| Diagnostic::env(format!("a build task failed: {e}")))?;
        if let Err(e) = book.done(&graph, n, result, &shared.runs_left) {
            break Some(e);
        }
    };
    if let Some(e) = failed {
        // Dropping the set aborts the siblings; their executors kill what they started.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let _ = shared.durable().await;
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
        cached: book.cached + shared.late_hits.load(std::sync::atomic::Ordering::Relaxed),
        resolved: std::mem::take(&mut *shared.resolved.lock().expect("resolved lock")),
        durable: std::mem::take(&mut *shared.durable.lock().expect("durable lock")),
    })
}

/// One less of `count` (never below zero): how many are left.
fn take_one(count: &std::sync::atomic::AtomicUsize) -> usize {
    use std::sync::atomic::Ordering::Relaxed;
    let before = count.fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    before.unwrap_or(0).saturating_sub(1)
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
    /// Every node of `graph` waiting for its distinct inputs; those with none are ready.
    fn new(graph: &Dag) -> Book {
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
        Book {
            outputs: HashMap::new(),
            waiting,
            ready,
            executed: 0,
            cached: 0,
        }
    }

    /// Records a finished node and releases the consumers that waited only for it. A RUN found in the
    /// cache is one less that may run (`runs_left`).
    fn done(
        &mut self,
        graph: &Dag,
        n: NodeIndex,
        result: Result<(Digest, Output, Option<bool>)>,
        runs_left: &std::sync::atomic::AtomicUsize,
    ) -> Result<()> {
        let (key, output, ran) = result?;
        match ran {
            Some(true) => self.executed += 1,
            Some(false) => {
                self.cached += 1;
                if matches!(graph.dag[n].op, crate::graph::op::Op::Run(_)) {
                    take_one(runs_left);
                }
            }
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
    /// A RUN step starts: whether another may still run after it (one put off and never needed counts
    /// as one that may).
    pub(super) fn run_starts(&self) -> bool {
        take_one(&self.runs_left) > 0
    }

    pub(super) fn next_id(&self) -> usize {
        self.step_ids
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Records what node `n` resolved to, for the build's provenance.
    pub(super) fn resolve(&self, n: NodeIndex, r: Resolved) {
        let mut resolved = self.resolved.lock().expect("resolved lock");
        let entry = resolved.entry(n).or_default();
        if !entry.contains(&r) {
            entry.push(r);
        }
    }

    pub(super) fn at(&self, n: NodeIndex) -> Option<Located> {
        self.graph.dag[n].at.clone()
    }

    pub(super) fn located(&self, n: NodeIndex, d: Diagnostic) -> Diagnostic {
        match (d.location().is_none(), self.at(n)) {
            (true, Some(at)) => d.label(at, ""),
            _ => d,
        }
    }

    /// A step: a cache hit answers at once; a miss is put off until something needs its result.
    pub(super) async fn step(
        &self,
        n: NodeIndex,
        mut key: Encoder,
        inputs: Vec<(Digest, Output)>,
        jobs: Arc<Semaphore>,
    ) -> Result<(Digest, Output, Option<bool>)> {
        let node = &self.graph.dag[n];
        self.key_sources(n, &mut key, &inputs).await?;
        let key = key.finish();
        let id = self.next_id();
        let vertex = Vertex {
            id,
            name: node.name.clone(),
            digest: node.digest.to_string(),
            at: node.at.as_ref().map(|a| a.to_string()),
        };
        let cached = match self.opts.no_cache_for.contains(&n) {
            true => None,
            false => self.cached(&key, &node.op),
        };
        if let Some(rec) = cached {
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
    pub(super) fn demand(
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
                    let (_, out, ran) = ran.inspect_err(|e| {
                        *p.failed.lock().expect("failed lock") = Some(e.clone());
                    })?;
                    // A step another build ran while this one waited for it is a hit after all.
                    let count = match ran {
                        Some(false) => &this.late_hits,
                        _ => &this.late_runs,
                    };
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(out)
                })
                .await?;
            Ok(Some(out.clone()))
        })
    }
}
