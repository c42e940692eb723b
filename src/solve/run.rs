//! A RUN step's process: its environment, working directory and user from the base config, its secrets
//! with their values, its cache, bind, tmpfs and ssh mounts resolved to host paths, and its output
//! streamed to the progress log with secrets scrubbed.

use std::path::PathBuf;
use std::sync::Arc;

use super::Executor;
use super::config::{DEFAULT_PATH, set_env};
use super::executor::{CopySource, Layers, LogSink, RunStep, StepMount};
use super::schedule::{Output, Shared};
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::graph::op::{RunMount, RunOp, Sharing};
use crate::progress::Event;
use crate::secret::{ScrubStream, Scrubber};
use crate::store::{CacheRecord, Reserve, SecretVerdict, Verdict};

/// What running a step leaves for the rest of `execute`.
pub(super) struct Ran {
    /// The executor's answer.
    pub(super) result: Result<()>,
    /// Hides the secrets of a RUN step in its output and its error message.
    pub(super) scrubber: Arc<Scrubber>,
    /// Cache mounts this step holds (lock files) until it is done.
    pub(super) held: Vec<std::fs::File>,
    /// Writable cache mounts: they outlive the step, so the leak guard must look there too.
    pub(super) caches: Vec<(String, PathBuf)>,
    pub(super) verdicts: Vec<SecretVerdict>,
    /// With `--on-error=shell`, what to open if the step failed.
    pub(super) shell: Option<RunStep>,
    /// Whether a remote cache had the result, so that the step counts as cached, not run.
    pub(super) remote_hit: bool,
}

impl Ran {
    /// A step that mounts nothing and has no secret to hide (COPY, a directory).
    pub(super) fn plain(result: Result<()>) -> Ran {
        Ran {
            result,
            scrubber: Arc::new(Scrubber::new([])),
            held: Vec::new(),
            caches: Vec::new(),
            verdicts: Vec::new(),
            shell: None,
            remote_hit: false,
        }
    }
}

impl<E: Executor> Shared<E> {
    /// Runs a RUN step over `fs` with its mounts and secrets, streaming its output to the progress log.
    pub(super) async fn run(
        &self,
        r: &RunOp,
        base: &CacheRecord,
        fs: Layers,
        key: &Digest,
        inputs: &[(Digest, Output)],
        id: usize,
    ) -> Result<Ran> {
        let mut step = self.run_step(r, base, fs)?;
        step.key = Some(key.clone());
        let (mounts, held) = self.step_mounts(r, inputs).await?;
        // As BuildKit does: the step's ssh client finds the (first) forwarded agent by itself.
        if let Some(StepMount::Ssh { target, .. }) =
            mounts.iter().find(|m| matches!(m, StepMount::Ssh { .. }))
        {
            step.env.retain(|e| !e.starts_with("SSH_AUTH_SOCK="));
            step.env.push(format!("SSH_AUTH_SOCK={target}"));
        }
        let caches: Vec<(String, PathBuf)> = mounts
            .iter()
            .filter_map(|m| match m {
                StepMount::Cache {
                    target,
                    dir,
                    readonly: false,
                    ..
                } => Some((target.clone(), dir.clone())),
                _ => None,
            })
            .collect();
        step.mounts = mounts;
        let verdicts = step
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
        let scrubber = Arc::new(Scrubber::new(
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
        let shell = self.shell_step(&step, r)?;
        let hit = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let status: super::StatusSink = {
            let (reporter, hit) = (self.reporter.clone(), hit.clone());
            Arc::new(move |placement| {
                hit.store(
                    placement == crate::progress::Placement::RemoteCached,
                    std::sync::atomic::Ordering::Relaxed,
                );
                reporter.event(Event::Status { id, placement });
            })
        };
        let result = self.exec.run_placed(step, sink, status).await;
        log(stream.finish());
        Ok(Ran {
            result,
            scrubber,
            held,
            caches,
            verdicts,
            shell,
            remote_hit: hit.load(std::sync::atomic::Ordering::Relaxed),
        })
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
            network: self.opts.sandbox.network_of(r.network),
            insecure: r.insecure,
            secrets,
            mounts: Vec::new(),
            key: None,
            sandbox: self.opts.sandbox.clone(),
            more_runs: self.run_starts(),
        })
    }

    /// The filesystem or directory of input `input`, as a bind mount or a cache's seed reads it.
    fn mount_source(&self, inputs: &[(Digest, Output)], input: usize) -> CopySource {
        match &inputs.get(input).map(|(_, o)| o) {
            Some(Output::Dir(d)) => CopySource::Dir(d.clone()),
            Some(Output::Fs(rec)) => CopySource::Layers(
                rec.layers
                    .iter()
                    .map(|l| self.store.snapshot_path(l))
                    .collect(),
            ),
            _ => unreachable!("mount sources are filesystems or directories"),
        }
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
                    seed,
                    ..
                } => {
                    let reserve = match sharing {
                        Sharing::Shared => Reserve::No,
                        Sharing::Locked => Reserve::Wait,
                        Sharing::Private => Reserve::OrSibling,
                    };
                    // As in BuildKit, a seeded cache is its own cache per id and seed: a changed seed
                    // starts a new one rather than mixing into the old.
                    let id = match seed {
                        Some(s) => format!("{id}\0seed:{}:{}", inputs[s.input].0, s.source),
                        None => id.clone(),
                    };
                    let (store, owner) = (self.store.clone(), (*mode, *uid, *gid));
                    // A new cache starts with what `--cache-from` exported of it (only now, when a step
                    // that uses it runs); one with local contents keeps them (see `seeder`).
                    let seeder = self.seeder(seed.is_none().then(|| id.clone()));
                    let (dir, lock, fresh) = tokio::task::spawn_blocking(move || {
                        let fill =
                            |dir: &std::path::Path| seeder.as_ref().map_or(Ok(()), |f| f(dir));
                        store.cache_mount(&id, reserve, owner, Some(&fill))
                    })
                    .await
                    .map_err(|e| Diagnostic::env(format!("cache mount task failed: {e}")))??;
                    held.extend(lock);
                    StepMount::Cache {
                        target: target.clone(),
                        dir,
                        readonly: *readonly,
                        seed: seed
                            .as_ref()
                            .filter(|_| fresh)
                            .map(|s| (self.mount_source(inputs, s.input), s.source.clone())),
                    }
                }
                RunMount::Bind {
                    target,
                    input,
                    source,
                    readwrite,
                } => {
                    let from = self.mount_source(inputs, *input);
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
                        id: id.clone(),
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

/// Fills a new cache mount's directory (see `Shared::seeder`).
type Seeder = Box<dyn Fn(&std::path::Path) -> Result<()> + Send>;

impl<E: Executor> Shared<E> {
    /// What fills cache mount `id` when it is created: its contents from a `--cache-from` cache that
    /// exported them, if any. A seed that cannot be read is a warning and leaves the cache empty, as a
    /// cache that cannot be read leaves a build slower, not failed. A cache that already exists here is
    /// never filled: its local contents are the newer (this machine's last run), and merging another
    /// machine's files into them could mix two states of one tool's cache.
    fn seeder(&self, id: Option<String>) -> Option<Seeder> {
        let id = id?;
        let imported = self.opts.cache_from.clone()?;
        imported.mount(&id)?;
        let (store, exec, reporter) =
            (self.store.clone(), self.exec.clone(), self.reporter.clone());
        Some(Box::new(move |dir: &std::path::Path| {
            match imported.seed_mount(&store, &*exec, &id, dir) {
                Ok(_) => {
                    reporter.event(Event::Note(format!(
                        "cache mount `{id}` seeded from the imported cache"
                    )));
                    Ok(())
                }
                Err(e) => {
                    reporter.event(Event::Note(format!(
                        "warning: cache mount `{id}` not seeded from the imported cache: {}",
                        e.message
                    )));
                    empty_dir(dir)
                }
            }
        }))
    }
}

/// Removes everything inside `dir`, keeping `dir`.
fn empty_dir(dir: &std::path::Path) -> Result<()> {
    let fail = |e| Diagnostic::io(format!("cannot empty {}", dir.display()), e);
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path).map_err(fail)?;
        } else {
            std::fs::remove_file(&path).map_err(fail)?;
        }
    }
    Ok(())
}
