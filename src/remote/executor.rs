//! The REAPI executor: which steps may leave the machine, and how one becomes an Action, is answered
//! from the ActionCache or run remotely, and comes back as the step's layer.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;

use super::operation::{CancelOnDrop, Running};
use super::secrets::Endpoint;
use super::server::Server;
use super::{
    OUTPUT, STEP_FILE, StepSpec, digest_of, key_action, message_blob, network_name, tar_snapshot,
};
use crate::diag::{Diagnostic, Result};
use crate::graph::op::Network;
use crate::progress::Placement;
use crate::secret::SecretValue;
use crate::solve::{
    CopyStep, Executor, Layers, LogSink, RunStep, StatusSink, StepMount, exit_error,
};

/// Whether a step may leave the machine: only one with no mounts at all and no entitlement. A secret or
/// an SSH agent must never reach an Action or the CAS, and cache, bind and tmpfs mounts live on this host;
/// `--allow network.host` and `--allow security.insecure` were granted by this build's user for this
/// machine, not for a worker's.
pub(crate) fn remotable(step: &RunStep) -> bool {
    step.secrets.is_empty() && step.mounts.is_empty() && confined(step)
}

/// Whether a step that mounts secrets or SSH agents may run on a worker under `--remote-secrets=allow`:
/// those are its only mounts (values go out of band, agent connections are relayed back to this
/// machine's agent).
pub(crate) fn remotable_with_secrets(step: &RunStep) -> bool {
    let ssh = |m: &StepMount| matches!(m, StepMount::Ssh { .. });
    (!step.secrets.is_empty() || !step.mounts.is_empty())
        && step.mounts.iter().all(ssh)
        && confined(step)
}

fn confined(step: &RunStep) -> bool {
    // What the command line sets for steps (hosts, /dev/shm, limits) has no place in an Action.
    step.sandbox == crate::solve::Sandbox::default()
        && step.network != Network::Host
        && !step.insecure
}

/// How the executor uses the server.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    /// `--remote-executor`: misses run on a remote worker.
    Execute,
    /// `--remote-cache`: misses run here and their results are uploaded.
    Cache,
    /// A build given secrets: results filed under a step's cache key are used, misses run here, and
    /// nothing is uploaded (the build's results may not leave before its leak checks have passed).
    Read,
}

/// What the command line asks of the remote side beyond its address.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// `--remote-timeout`: the most a remote step may take, from its first lookup to its result
    /// (queueing and retries included); its operation is cancelled when it is up.
    pub timeout: Option<std::time::Duration>,
    /// `false` with `--no-cache` or `--remote-accept-cached=false`: no ActionCache lookup, and
    /// Execute with `skip_cache_lookup`, so the step runs again on a worker.
    pub accept_cached: bool,
}

/// The REAPI executor: RUN steps go through the server, everything else (and every step with a mount)
/// runs on the local executor `L`.
pub(crate) struct Remote<L> {
    local: L,
    /// The namespace the local executor unpacks into, for the layers rebuilt from remote results.
    ids: crate::layer::Ids,
    server: Server,
    mode: Mode,
    options: Options,
    /// Snapshot path → digest of its tar: snapshots are immutable, so each is tarred at most once per
    /// build just to learn its digest.
    digests: Mutex<HashMap<PathBuf, re::Digest>>,
    /// `--remote-secrets=allow`: the endpoint that hands remote steps their secrets.
    secrets: Option<Endpoint>,
}

/// One blob of an Action's inputs, in memory or in a file.
enum Blob {
    Bytes(Vec<u8>),
    Snapshot(PathBuf),
}

impl<L: Executor> Remote<L> {
    pub(crate) fn new(
        server: Server,
        mode: Mode,
        options: Options,
        local: L,
        ids: crate::layer::Ids,
    ) -> Remote<L> {
        Remote {
            local,
            ids,
            server,
            mode,
            options,
            digests: Mutex::new(HashMap::new()),
            secrets: None,
        }
    }

    /// Steps whose only mounts are secrets run remotely too, their values served by `endpoint`.
    pub(crate) fn with_secret_channel(mut self, endpoint: Endpoint) -> Remote<L> {
        self.secrets = Some(endpoint);
        self
    }

    /// A step with secrets on a worker: its values go out of band (see `secrets`), the Action carries a
    /// nonce for this execution and is never cached by the server. The result is found under the step's
    /// cache key like any other, but never filed there: a build given secrets uploads no cache entry
    /// (see `Mode::Read`).
    async fn run_with_secrets(
        &self,
        step: RunStep,
        logs: LogSink,
        channel: &Endpoint,
        status: &StatusSink,
    ) -> Result<()> {
        if self.apply_keyed(&step, &logs, status).await? {
            return Ok(());
        }
        let mut values: Vec<(String, SecretValue)> = Vec::new();
        for (m, v) in &step.secrets {
            if let Some(v) = v
                && !values.iter().any(|(id, _)| id == &m.id)
            {
                let copy = SecretValue::new(zeroize::Zeroizing::new(v.expose().to_vec()));
                values.push((m.id.clone(), copy));
            }
        }
        let mut agents = Vec::new();
        let mut ssh = Vec::new();
        for m in &step.mounts {
            if let StepMount::Ssh {
                id,
                target,
                agent,
                mode,
                uid,
                gid,
            } = m
            {
                agents.push((id.clone(), agent.clone()));
                ssh.push(super::SshSpec {
                    id: id.clone(),
                    target: target.clone(),
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                });
            }
        }
        let registration = channel.register(values, agents)?;
        let spec = StepSpec {
            version: 2,
            args: step.args.clone(),
            env: step.env.clone(),
            cwd: step.cwd.clone(),
            user: step.user.clone(),
            network: network_name(step.network).to_string(),
            secrets: step.secrets.iter().map(|(m, _)| m.clone()).collect(),
            secret_endpoint: Some(channel.addr()),
            nonce: Some(registration.nonce.clone()),
            ssh,
        };
        let (action, blobs, scratch) = self.prepare(&step, &spec, true).await?;
        let result = match self.execute(&action, &blobs, &scratch, status).await {
            Ok(r) => r,
            Err(e) if !channel.taken(&registration) => {
                let refused = channel.refusals();
                if refused.is_empty() {
                    return Err(e);
                }
                return Err(e.help(format!(
                    "the secrets were never sent: this build's secret endpoint refused {}",
                    refused.join("; ")
                )));
            }
            Err(e) => return Err(e),
        };
        drop(registration);
        self.apply(&result, &step.args, &step.fs, &scratch, &logs)
            .await
    }

    /// The digest of a snapshot's tar, tarring it into `scratch` when not known yet.
    async fn snapshot_digest(&self, snapshot: &Path, scratch: &Path) -> Result<re::Digest> {
        if let Some(d) = self.digests.lock().expect("not poisoned").get(snapshot) {
            return Ok(d.clone());
        }
        let (s, f) = (snapshot.to_path_buf(), scratch.to_path_buf());
        let d = tokio::task::spawn_blocking(move || tar_snapshot(&s, &f))
            .await
            .map_err(|e| Diagnostic::env(format!("snapshot tar failed: {e}")))?
            .map_err(|e| Diagnostic::io("cannot write a snapshot for the remote", e))?;
        self.digests
            .lock()
            .expect("not poisoned")
            .insert(snapshot.to_path_buf(), d.clone());
        Ok(d)
    }

    async fn upload(&self, d: &re::Digest, blob: &Blob, scratch: &Path) -> Result<()> {
        match blob {
            Blob::Bytes(b) => self.server.upload_bytes(d, b.clone()).await,
            Blob::Snapshot(snapshot) => {
                // The tar may have been removed with an earlier step's scratch dir: write it again (it is
                // deterministic, so the digest holds).
                let file = scratch.join(format!("{}.tar", d.hash));
                if !file.exists() {
                    let again = self.snapshot_digest_fresh(snapshot, &file).await?;
                    if &again != d {
                        return Err(Diagnostic::env(format!(
                            "snapshot {} changed while building",
                            snapshot.display()
                        )));
                    }
                }
                self.server.upload_file(d, &file).await
            }
        }
    }

    async fn snapshot_digest_fresh(&self, snapshot: &Path, file: &Path) -> Result<re::Digest> {
        let (s, f) = (snapshot.to_path_buf(), file.to_path_buf());
        tokio::task::spawn_blocking(move || tar_snapshot(&s, &f))
            .await
            .map_err(|e| Diagnostic::env(format!("snapshot tar failed: {e}")))?
            .map_err(|e| Diagnostic::io("cannot write a snapshot for the remote", e))
    }

    /// Whether the CAS still holds every blob a cached result refers to (a service may evict blobs before
    /// the ActionCache entries that name them); if not, the step runs again.
    async fn complete(&self, result: &re::ActionResult) -> Result<bool> {
        let wanted: Vec<re::Digest> = result
            .output_files
            .iter()
            .filter_map(|f| f.digest.clone())
            .chain(result.stdout_digest.clone())
            .chain(result.stderr_digest.clone())
            .filter(|d| d.size_bytes > 0)
            .collect();
        Ok(self.server.find_missing(wanted).await?.is_empty())
    }

    /// Replays a result's output and rebuilds the layer from it into `upper`.
    async fn apply(
        &self,
        result: &re::ActionResult,
        args: &[String],
        fs: &Layers,
        scratch: &Path,
        logs: &LogSink,
    ) -> Result<()> {
        for (raw, digest) in [
            (&result.stdout_raw, &result.stdout_digest),
            (&result.stderr_raw, &result.stderr_digest),
        ] {
            if !raw.is_empty() {
                logs(raw);
            } else if let Some(d) = digest
                && d.size_bytes > 0
            {
                logs(&self.server.read_bytes(d).await?);
            }
        }
        if result.exit_code != 0 {
            return Err(exit_error(args, result.exit_code));
        }
        let out = result
            .output_files
            .iter()
            .find(|f| f.path == OUTPUT)
            .and_then(|f| f.digest.clone())
            .ok_or_else(|| {
                Diagnostic::env(format!(
                    "the remote result from {} has no `{OUTPUT}`; is the worker a kiln worker?",
                    self.server.url
                ))
            })?;
        let file = scratch.join(OUTPUT);
        {
            let mut f = std::fs::File::create(&file)
                .map_err(|e| Diagnostic::io("cannot store a remote result", e))?;
            self.server.read_into(&out, &mut f).await?;
        }
        let (upper, ids) = (fs.upper.clone(), self.ids);
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&file)?;
            crate::layer::unpack_layer(io::BufReader::new(f), &upper, ids)
        })
        .await
        .map_err(|e| Diagnostic::env(format!("unpacking a remote result failed: {e}")))?
        .map_err(|e| Diagnostic::io("cannot unpack the remote result", e))
    }

    async fn run_remote(&self, step: RunStep, logs: LogSink, status: &StatusSink) -> Result<()> {
        // First by kiln's cache key: no input needs tarring, and a result is found even when an input
        // layer was rebuilt with other bytes (a new directory's mtime) but the same meaning.
        let keyed = step.key.as_ref().map(key_action);
        if self.apply_keyed(&step, &logs, status).await? {
            return Ok(());
        }
        let result = self.run_action(step, logs.clone(), status).await?;
        if let (Some((digest, blobs)), Some(result)) = (keyed, result)
            && let Err(e) = self.file_under_key(&digest, blobs, result).await
        {
            logs(format!("kiln: not cached remotely by key: {}\n", e.message).as_bytes());
        }
        Ok(())
    }

    /// `Mode::Read`: a result filed under the step's cache key (which covers no secret value and no
    /// input bytes), else the step runs here.
    async fn run_read(&self, step: RunStep, logs: LogSink, status: &StatusSink) -> Result<()> {
        if self.apply_keyed(&step, &logs, status).await? {
            return Ok(());
        }
        status(Placement::Local);
        self.local.run(step, logs).await
    }

    /// Applies the successful result filed under the step's cache key, if the server has one whose
    /// blobs are all there; `false` when it has none.
    async fn apply_keyed(
        &self,
        step: &RunStep,
        logs: &LogSink,
        status: &StatusSink,
    ) -> Result<bool> {
        if !self.options.accept_cached {
            return Ok(false);
        }
        if let Some((digest, _)) = step.key.as_ref().map(key_action)
            && let Some(result) = self.server.get_action_result(&digest).await?
            && result.exit_code == 0
            && self.complete(&result).await?
        {
            status(Placement::RemoteCached);
            let scratch = self.scratch(&step.fs)?;
            self.apply(&result, &step.args, &step.fs, &scratch, logs)
                .await?;
            return Ok(true);
        }
        Ok(false)
    }

    fn scratch(&self, fs: &Layers) -> Result<PathBuf> {
        let scratch = fs.upper.parent().unwrap_or(Path::new("/")).join("remote");
        std::fs::create_dir_all(&scratch)
            .map_err(|e| Diagnostic::io("cannot prepare a remote step", e))?;
        Ok(scratch)
    }

    /// Records `result` in the ActionCache under the key Action too (with its blobs, so the entry is
    /// complete for servers that check).
    async fn file_under_key(
        &self,
        digest: &re::Digest,
        blobs: Vec<(re::Digest, Vec<u8>)>,
        result: re::ActionResult,
    ) -> Result<()> {
        let missing = self
            .server
            .find_missing(blobs.iter().map(|(d, _)| d.clone()).collect())
            .await?;
        for (d, b) in blobs {
            if missing.contains(&d) {
                self.server.upload_bytes(&d, b).await?;
            }
        }
        self.server.update_action_result(digest, result).await
    }

    /// Runs the step as a content-addressed Action (ActionCache first); returns the successful result.
    async fn run_action(
        &self,
        step: RunStep,
        logs: LogSink,
        status: &StatusSink,
    ) -> Result<Option<re::ActionResult>> {
        let spec = StepSpec {
            version: 1,
            args: step.args.clone(),
            env: step.env.clone(),
            cwd: step.cwd.clone(),
            user: step.user.clone(),
            network: network_name(step.network).to_string(),
            secrets: Vec::new(),
            secret_endpoint: None,
            nonce: None,
            ssh: Vec::new(),
        };
        let (action_digest, blobs, scratch) = self.prepare(&step, &spec, false).await?;
        if self.options.accept_cached
            && let Some(result) = self.server.get_action_result(&action_digest).await?
            && result.exit_code == 0
            && self.complete(&result).await?
        {
            status(Placement::RemoteCached);
            self.apply(&result, &step.args, &step.fs, &scratch, &logs)
                .await?;
            return Ok(Some(result));
        }
        match self.mode {
            Mode::Execute => {
                let result = self
                    .execute(&action_digest, &blobs, &scratch, status)
                    .await?;
                self.apply(&result, &step.args, &step.fs, &scratch, &logs)
                    .await?;
                Ok(Some(result))
            }
            Mode::Read => {
                status(Placement::Local);
                self.local.run(step, logs).await?;
                Ok(None)
            }
            Mode::Cache => {
                status(Placement::Local);
                let upper = step.fs.upper.clone();
                self.local.run(step, logs.clone()).await?;
                match self.publish(&upper, &scratch, &blobs, &action_digest).await {
                    Ok(result) => Ok(Some(result)),
                    Err(e) => {
                        // A cache that cannot take a result costs a rebuild elsewhere, not this build.
                        logs(format!("kiln: not cached remotely: {}\n", e.message).as_bytes());
                        Ok(None)
                    }
                }
            }
        }
    }

    /// The Action of a step described by `spec`: its digest, every blob it needs, and the step's scratch
    /// directory.
    async fn prepare(
        &self,
        step: &RunStep,
        spec: &StepSpec,
        do_not_cache: bool,
    ) -> Result<(re::Digest, Vec<(re::Digest, Blob)>, PathBuf)> {
        let scratch = self.scratch(&step.fs)?;
        let mut blobs: Vec<(re::Digest, Blob)> = Vec::new();
        let mut files = Vec::new();
        for (i, lower) in step.fs.lowers.iter().enumerate() {
            let probe = scratch.join(format!("probe-{i}.tar"));
            let d = self.snapshot_digest(lower, &probe).await?;
            if probe.exists() {
                let _ = std::fs::rename(&probe, scratch.join(format!("{}.tar", d.hash)));
            }
            files.push(re::FileNode {
                name: format!("{i:04}.tar"),
                digest: Some(d.clone()),
                ..Default::default()
            });
            blobs.push((d, Blob::Snapshot(lower.clone())));
        }
        let spec_bytes = serde_json::to_vec(spec).expect("specs serialize");
        let spec_digest = digest_of(&spec_bytes);
        files.push(re::FileNode {
            name: STEP_FILE.to_string(),
            digest: Some(spec_digest.clone()),
            ..Default::default()
        });
        blobs.push((spec_digest, Blob::Bytes(spec_bytes)));
        let (root_digest, root) = message_blob(&re::Directory {
            files,
            ..Default::default()
        });
        blobs.push((root_digest.clone(), Blob::Bytes(root)));
        let mut env: Vec<re::command::EnvironmentVariable> = step
            .env
            .iter()
            .map(|e| {
                let (k, v) = e.split_once('=').unwrap_or((e, ""));
                re::command::EnvironmentVariable {
                    name: k.to_string(),
                    value: v.to_string(),
                }
            })
            .collect();
        env.sort_by(|a, b| a.name.cmp(&b.name));
        env.dedup_by(|a, b| a.name == b.name);
        let (command_digest, command) = message_blob(&re::Command {
            arguments: step.args.clone(),
            environment_variables: env,
            output_paths: vec![OUTPUT.to_string()],
            ..Default::default()
        });
        blobs.push((command_digest.clone(), Blob::Bytes(command)));
        let (action_digest, action) = message_blob(&re::Action {
            command_digest: Some(command_digest),
            input_root_digest: Some(root_digest),
            do_not_cache,
            ..Default::default()
        });
        blobs.push((action_digest.clone(), Blob::Bytes(action)));
        Ok((action_digest, blobs, scratch))
    }

    /// Uploads what the server lacks of an Action's blobs and has a worker execute it.
    async fn execute(
        &self,
        action_digest: &re::Digest,
        blobs: &[(re::Digest, Blob)],
        scratch: &Path,
        status: &StatusSink,
    ) -> Result<re::ActionResult> {
        let missing = self
            .server
            .find_missing(blobs.iter().map(|(d, _)| d.clone()).collect())
            .await?;
        for (d, blob) in blobs {
            if missing.contains(d) {
                self.upload(d, blob, scratch).await?;
            }
        }
        // Cancelled if this future is dropped (the build interrupted, a sibling failed, the timeout
        // up) while the operation runs.
        let cancel = CancelOnDrop {
            server: self.server.clone(),
            running: Running::default(),
        };
        let skip = !self.options.accept_cached;
        let resp = self
            .server
            .execute(action_digest, skip, &cancel.running, &**status)
            .await?;
        if resp.cached_result {
            status(Placement::RemoteCached);
        }
        if let Some(st) = &resp.status
            && st.code != 0
        {
            return Err(Diagnostic::env(format!(
                "remote execution failed at {}: {} (code {})",
                self.server.url, st.message, st.code
            )));
        }
        resp.result.ok_or_else(|| {
            Diagnostic::env(format!(
                "remote execution at {} returned no result",
                self.server.url
            ))
        })
    }

    /// The error of a remote step `--remote-timeout` ended, saying what it was waiting for.
    fn timed_out(&self, limit: std::time::Duration, last: Option<Placement>) -> Diagnostic {
        let was = match last {
            Some(Placement::Queued) => "it was still queued: no worker took it".to_string(),
            Some(Placement::Remote { worker: Some(w) }) => format!("it was running on {w}"),
            Some(Placement::Remote { worker: None }) => {
                "it was running on the remote executor".to_string()
            }
            _ => "it was still being prepared (lookups and uploads)".to_string(),
        };
        Diagnostic::env(format!(
            "the remote step did not finish within {} (--remote-timeout): {was}; its remote operation was cancelled",
            humanize(limit)
        ))
        .help(format!(
            "check that a worker is connected to {} and takes work, or raise --remote-timeout",
            self.server.url
        ))
    }

    /// Uploads a locally built result and records it in the ActionCache.
    async fn publish(
        &self,
        upper: &Path,
        scratch: &Path,
        blobs: &[(re::Digest, Blob)],
        action: &re::Digest,
    ) -> Result<re::ActionResult> {
        let file = scratch.join(OUTPUT);
        let out = self.snapshot_digest_fresh(upper, &file).await?;
        // The Action and its small inputs go along so the entry is complete; the input snapshots stay.
        let mut wanted: Vec<re::Digest> = blobs
            .iter()
            .filter(|(_, b)| matches!(b, Blob::Bytes(_)))
            .map(|(d, _)| d.clone())
            .collect();
        wanted.push(out.clone());
        let missing = self.server.find_missing(wanted).await?;
        for (d, blob) in blobs {
            if matches!(blob, Blob::Bytes(_)) && missing.contains(d) {
                self.upload(d, blob, scratch).await?;
            }
        }
        if missing.contains(&out) {
            self.server.upload_file(&out, &file).await?;
        }
        let result = re::ActionResult {
            output_files: vec![re::OutputFile {
                path: OUTPUT.to_string(),
                digest: Some(out),
                ..Default::default()
            }],
            exit_code: 0,
            ..Default::default()
        };
        self.server
            .update_action_result(action, result.clone())
            .await?;
        Ok(result)
    }
}

impl<L: Executor> Executor for Remote<L> {
    async fn run(&self, step: RunStep, logs: LogSink) -> Result<()> {
        self.run_placed(step, logs, Arc::new(|_| {})).await
    }

    async fn run_placed(&self, step: RunStep, logs: LogSink, status: StatusSink) -> Result<()> {
        let channel = self
            .secrets
            .as_ref()
            .filter(|_| remotable_with_secrets(&step));
        if channel.is_none() && !remotable(&step) {
            status(Placement::Local);
            return self.local.run(step, logs).await;
        }
        // A build that only reads the remote (given secrets) runs its misses here, and a local step is
        // not the timeout's to end; a step whose secrets go to a worker is remote.
        let limit = self
            .options
            .timeout
            .filter(|_| self.mode == Mode::Execute || channel.is_some());
        // The last placement, for the timeout's message.
        let last = Arc::new(Mutex::new(None::<Placement>));
        let status: StatusSink = {
            let last = last.clone();
            Arc::new(move |p: Placement| {
                *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.clone());
                status(p);
            })
        };
        let running = async {
            match (channel, self.mode) {
                (Some(channel), _) => self.run_with_secrets(step, logs, channel, &status).await,
                (None, Mode::Read) => self.run_read(step, logs, &status).await,
                (None, _) => self.run_remote(step, logs, &status).await,
            }
        };
        let Some(limit) = limit else {
            return running.await;
        };
        // Dropping `running` cancels the step's operation, if it has one.
        match tokio::time::timeout(limit, running).await {
            Ok(r) => r,
            Err(_) => {
                Err(self.timed_out(limit, last.lock().unwrap_or_else(|e| e.into_inner()).take()))
            }
        }
    }

    async fn copy(&self, step: CopyStep) -> Result<()> {
        self.local.copy(step).await
    }

    async fn mkdir(&self, fs: Layers, path: String, user: Option<String>) -> Result<()> {
        self.local.mkdir(fs, path, user).await
    }

    fn unpack(&self, blob: &Path, media_type: &str, dest: &Path) -> Result<()> {
        self.local.unpack(blob, media_type, dest)
    }

    /// With `--remote-cache` a step that fails ran here (a debug shell refuses `--remote-executor`), so
    /// its shell opens here too.
    async fn shell(&self, step: RunStep) -> Result<()> {
        self.local.shell(step).await
    }
}

/// A duration as the user wrote one: `10s`, `1m30s`, `250ms`.
fn humanize(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}
