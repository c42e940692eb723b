//! Stage 5, solving: runs a `Dag` with a tokio scheduler. Each node gets a cache key (its definition
//! with the resolved content of its sources mixed in, never a secret's value); a key found in the store is a
//! cache hit and runs nothing; otherwise the node is handed to an `Executor` and its result committed.
//!
//! The solver knows nothing about namespaces or mounts: it talks to the executor through the trait in
//! `executor.rs`, which the `exec` stage implements and the driver plugs in. `schedule.rs` runs the graph,
//! `node.rs` solves one node, `key.rs` keys it, `import.rs` and `config.rs` answer images and stage
//! configs, `step.rs` and `run.rs` run a step that missed, `leak.rs` scans what it wrote.

mod config;
pub mod context;
mod debug;
mod executor;
mod fetch;
mod git;
mod git_ssh;
mod git_submodule;
mod import;
mod key;
mod leak;
mod node;
mod preflight;
mod run;
mod schedule;
pub mod shared_cache;
pub mod statcache;
mod step;

use std::sync::Arc;

use tokio::sync::Semaphore;

pub use crate::oci::split_layout_ref;
pub use config::ImageConfig;
pub use executor::{
    CopySource, CopyStep, DebugShell, Executor, Layers, LogSink, RunExit, RunStep, Sandbox,
    StatusSink, StepMount, Ulimit,
};
pub(crate) use executor::{abbreviate, exit_error};
pub(crate) use git::resolve_commit;
pub use key::CACHE_DOMAIN;
pub use preflight::{all_secrets, preflight};
pub use schedule::{Committed, Output, Resolved, SolveOptions, Summary};

use crate::diag::Result;
use crate::graph::Dag;
use crate::progress::Reporter;
use crate::secret::SecretStore;
use crate::store::Store;

/// Runs the graph: independent nodes in parallel (at most `jobs` steps at once), each digest once.
pub async fn solve<E: Executor>(
    graph: Arc<Dag>,
    store: Arc<Store>,
    exec: Arc<E>,
    reporter: Arc<dyn Reporter>,
    secrets: Arc<SecretStore>,
    opts: SolveOptions,
) -> Result<Summary> {
    preflight(&graph, &secrets, &opts.ssh, &opts.allow)?;
    let jobs = Arc::new(Semaphore::new(opts.jobs.max(1)));
    let scanner = Arc::new(all_secrets(&secrets)?);
    let reporter: Arc<dyn Reporter> = match opts.debug {
        Some(_) => Arc::new(debug::Gate::new(reporter)),
        None => reporter,
    };
    let shared = Arc::new(schedule::Shared {
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
        runs_left: std::sync::atomic::AtomicUsize::new(
            (graph.dag.node_weights())
                .filter(|n| matches!(n.op, crate::graph::op::Op::Run(_)))
                .count(),
        ),
        late_hits: Default::default(),
        resolved: Default::default(),
        durable: Default::default(),
    });
    schedule::run(graph, shared, jobs).await
}
