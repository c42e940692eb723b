//! Running a step that missed the cache: its put-off inputs run first, their files are materialized, its
//! filesystem is laid out, the executor runs it, its changes are scanned for secrets (`leak.rs`) and its
//! snapshot and record are staged in the build's transaction.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use petgraph::stable_graph::NodeIndex;
use tokio::sync::Semaphore;

use super::Executor;
use super::executor::{CopySource, CopyStep, Layers};
use super::key::mounted_ids;
use super::run::Ran;
use super::schedule::{Output, Shared};
use crate::diag::{Category, Diagnostic, Result};
use crate::digest::Digest;
use crate::graph::Op;
use crate::graph::op::{CopyOp, RunMount};
use crate::progress::{Event, Vertex};
use crate::store::{CacheRecord, KeyLock, SecretVerdict};

impl<E: Executor> Shared<E> {
    /// Runs a step that missed the cache and commits its result.
    pub(super) async fn execute(
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
        // Held until the result is staged: another build on this store that misses the same key waits
        // here, then takes the result from the cache.
        let _key_lock = match self.lock_key(n, &key, &node.op).await? {
            Claim::Run(lock) => lock,
            Claim::Hit(rec) => {
                self.reporter.event(Event::Cached(vertex));
                return Ok((key, Output::Fs(rec), Some(false)));
            }
        };
        let _permit = jobs.acquire().await.expect("semaphore open");
        let started = Instant::now();
        self.reporter.event(Event::Started(vertex));
        // A foreign step with no emulator here fails now that it must run, not before the build: one
        // the cache answers needs none.
        if let Op::Run(r) = &node.op
            && let Some(refused) = self.opts.unrunnable.get(&r.platform)
        {
            let platform = crate::platform::Platform::from_graph(r.platform.as_deref());
            let mut d = refused.clone();
            if let Some(at) = self.at(n) {
                d = d.label(at, format!("this step runs as {platform}"));
            }
            return Err(self.failed(n, id, started, d));
        }
        // Inputs that came from a shared cache get their files now, and only now that a step needs them.
        if let Err(e) = self
            .materialize(needed_layers(&node.op, base, &inputs))
            .await
        {
            return Err(self.failed(n, id, started, e));
        }
        let work = self.store.work_dir("step-")?;
        let (fs, upper) = self.step_fs(work.path(), base)?;
        // Checks the step's changes for the value of every secret given to the build, whether it mounted
        // one or not: a value can reach any step (through a cache mount, the network, an earlier layer
        // in an encoding the scanner does not know and this step undoes).
        let guard = self.scanner.clone();
        let ran = match &node.op {
            Op::Run(r) => self.run(r, base, fs, &key, &inputs, id).await?,
            Op::Copy(c) => Ran::plain(self.copy(c, &inputs[1].1, fs).await),
            Op::Mkdir { path, user } => {
                // With no USER in the Dockerfile, the base image's User owns the new directories, as
                // in BuildKit (which dispatches the image config's User before the stage's own lines).
                let user = user.clone().or_else(|| {
                    base.base["config"]["User"]
                        .as_str()
                        .filter(|u| !u.is_empty())
                        .map(String::from)
                });
                Ran::plain(self.exec.mkdir(fs, path.clone(), user).await)
            }
            _ => unreachable!("only steps reach here"),
        };
        // The cache mounts stay held (`_held`) until the step is committed.
        let Ran {
            result,
            scrubber,
            held: _held,
            caches,
            verdicts,
            shell,
            remote_hit,
        } = ran;
        if let Err(mut e) = result {
            e.message = scrubber.scrub_str(&e.message);
            let e = self.failed(n, id, started, e);
            // A command that ran and failed; the shell sees the upper dir it left, still in `work`.
            if let (Some(shell), Category::Build) = (shell, e.category) {
                self.open_shell(id, shell).await;
            }
            return Err(e);
        }
        if let Some((leak, place)) = super::leak::scan(guard, upper.clone(), caches).await? {
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
        // A COPY from the context and a mkdir make the same files from the same layers every time.
        let fixed = match &node.op {
            Op::Mkdir { .. } => true,
            Op::Copy(_) => matches!(inputs[1].1, Output::Dir(_)),
            _ => false,
        };
        let snapshot = self.snapshot_name(&key, base, fixed);
        let (key, output, _) = self.commit(
            (key, snapshot),
            base,
            &upper,
            verdicts,
            (id, started),
            _key_lock,
        )?;
        if let (Some(told), Output::Fs(rec)) = (&self.opts.committed, &output)
            && !self.store.in_transaction()
            && let Some(snapshot) = rec.layers.last()
        {
            told(n, snapshot);
        }
        // What is left of the work dir (the overlay's work dir, mount points) goes on a blocking thread:
        // the steps waiting for this one need not wait for the unlinks. The runtime finishes such tasks
        // before the build returns.
        drop(tokio::task::spawn_blocking(move || drop(work)));
        // A remote cache's result ran nowhere for this build: the summary counts it as cached.
        Ok((key, output, Some(!remote_hit)))
    }

    /// Waits for the key's lock in the store; a result another build made meanwhile is a hit (except
    /// for a step `--no-cache-filter` runs again).
    async fn lock_key(&self, n: NodeIndex, key: &Digest, op: &Op) -> Result<Claim> {
        loop {
            if let Some(lock) = self.store.try_lock_key(key)? {
                let forced = self.opts.no_cache_for.contains(&n);
                return Ok(match self.cached(key, op).filter(|_| !forced) {
                    Some(rec) => Claim::Hit(rec),
                    None => Claim::Run(lock),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Reports a step's failure and locates its error at the step.
    fn failed(&self, n: NodeIndex, id: usize, started: Instant, e: Diagnostic) -> Diagnostic {
        self.reporter.event(Event::Failed {
            id,
            elapsed: started.elapsed(),
            message: e.message.clone(),
        });
        self.located(n, e)
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

    /// The step's filesystem in `work`: the base's snapshots below a fresh upper dir. Returns it and the
    /// upper dir.
    fn step_fs(&self, work: &Path, base: &CacheRecord) -> Result<(Layers, PathBuf)> {
        let upper = work.join("upper");
        let scratch = work.join("work");
        for d in [&upper, &scratch] {
            std::fs::create_dir(d)
                .map_err(|e| Diagnostic::io("cannot create a step directory", e))?;
        }
        let fs = Layers {
            // Empty layers change nothing in the merged view; each would only lengthen every lookup.
            lowers: base
                .layers
                .iter()
                .filter(|l| !self.store.snapshot_is_empty(l))
                .map(|l| self.store.snapshot_path(l))
                .collect(),
            upper: upper.clone(),
            work: scratch,
        };
        Ok((fs, upper))
    }

    async fn copy(&self, c: &CopyOp, from: &Output, fs: Layers) -> Result<()> {
        let source = match from {
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
        // Held until the copy is over: only then may a `syncfs` confirm the objects it made.
        let _objects = files.as_ref().and_then(|_| self.store.mark_objects());
        self.exec
            .copy(CopyStep {
                fs,
                source,
                op: c.clone(),
                files,
            })
            .await
    }

    /// The name of a step's new snapshot. A step run again (`--no-cache`, or a record gone while its
    /// snapshot stayed) makes a new one, as its output may differ: a RUN reads the clock and the network,
    /// a COPY `--from` copies what its source now holds. Not a `fixed` step (a COPY from the context, a
    /// mkdir) on the very layers its existing snapshot was made on: the same key then means the same
    /// files, and the existing snapshot serves, with the layer blob made of it once.
    fn snapshot_name(&self, key: &Digest, base: &CacheRecord, fixed: bool) -> String {
        let name = format!("step-{}", key.hex());
        let same = || {
            self.store.cache_get(key).is_some_and(|old| {
                old.layers
                    .split_last()
                    .is_some_and(|(last, below)| *last == name && below == base.layers.as_slice())
            })
        };
        if fixed && same() {
            name
        } else {
            self.store.new_snapshot_name(&name)
        }
    }

    /// Stages the step's changes as a snapshot and its record in the build's transaction, or commits
    /// them, the fsyncs on a thread the build joins before it ends (`store::Durable`), holding `lock`.
    fn commit(
        &self,
        (key, snapshot): (Digest, String),
        base: &CacheRecord,
        upper: &Path,
        verdicts: Vec<SecretVerdict>,
        (id, started): (usize, Instant),
        lock: KeyLock,
    ) -> Result<(Digest, Output, Option<bool>)> {
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
        if let Some(durable) = self.store.commit_step(upper, rec.clone(), Some(lock))? {
            self.durable.lock().expect("durable lock").push(durable);
        }
        self.reporter.event(Event::Done {
            id,
            elapsed: started.elapsed(),
        });
        Ok((key, Output::Fs(rec), Some(true)))
    }
}

/// What waiting for a key's lock gave: the lock, to run the step under, or the result of a build that
/// ran it meanwhile.
enum Claim {
    Run(KeyLock),
    Hit(CacheRecord),
}

/// The snapshots a step reads: its base's, and those of the filesystems it copies from or bind-mounts.
fn needed_layers(op: &Op, base: &CacheRecord, inputs: &[(Digest, Output)]) -> Vec<String> {
    let mut needed = base.layers.clone();
    for (i, (_, input)) in inputs.iter().enumerate().skip(1) {
        let used = match op {
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
    needed
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
