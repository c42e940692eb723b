//! The REAPI executor: which steps may leave the machine, and how one becomes an Action, is answered
//! from the ActionCache or run remotely, and comes back as the step's layer.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;

use super::server::Server;
use super::{
    OUTPUT, STEP_FILE, StepSpec, digest_of, key_action, message_blob, network_name, tar_snapshot,
};
use crate::diag::{Diagnostic, Result};
use crate::graph::op::Network;
use crate::solve::{CopyStep, Executor, Layers, LogSink, RunStep, exit_error};

/// Whether a step may leave the machine: only one with no mounts at all and no entitlement. A secret or
/// an SSH agent must never reach an Action or the CAS, and cache, bind and tmpfs mounts live on this host;
/// `--allow network.host` and `--allow security.insecure` were granted by this build's user for this
/// machine, not for a worker's.
pub(crate) fn remotable(step: &RunStep) -> bool {
    step.secrets.is_empty()
        && step.mounts.is_empty()
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

/// The REAPI executor: RUN steps go through the server, everything else (and every step with a mount)
/// runs on the local executor `L`.
pub(crate) struct Remote<L> {
    local: L,
    /// The namespace the local executor unpacks into, for the layers rebuilt from remote results.
    ids: crate::layer::Ids,
    server: Server,
    mode: Mode,
    /// Snapshot path → digest of its tar: snapshots are immutable, so each is tarred at most once per
    /// build just to learn its digest.
    digests: Mutex<HashMap<PathBuf, re::Digest>>,
}

/// One blob of an Action's inputs, in memory or in a file.
enum Blob {
    Bytes(Vec<u8>),
    Snapshot(PathBuf),
}

impl<L: Executor> Remote<L> {
    pub(crate) fn new(server: Server, mode: Mode, local: L, ids: crate::layer::Ids) -> Remote<L> {
        Remote {
            local,
            ids,
            server,
            mode,
            digests: Mutex::new(HashMap::new()),
        }
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

    async fn run_remote(&self, step: RunStep, logs: LogSink) -> Result<()> {
        // First by kiln's cache key: no input needs tarring, and a result is found even when an input
        // layer was rebuilt with other bytes (a new directory's mtime) but the same meaning.
        let keyed = step.key.as_ref().map(key_action);
        if self.apply_keyed(&step, &logs).await? {
            return Ok(());
        }
        let result = self.run_action(step, logs.clone()).await?;
        if let (Some((digest, blobs)), Some(result)) = (keyed, result)
            && let Err(e) = self.file_under_key(&digest, blobs, result).await
        {
            logs(format!("kiln: not cached remotely by key: {}\n", e.message).as_bytes());
        }
        Ok(())
    }

    /// `Mode::Read`: a result filed under the step's cache key (which covers no secret value and no
    /// input bytes), else the step runs here.
    async fn run_read(&self, step: RunStep, logs: LogSink) -> Result<()> {
        if self.apply_keyed(&step, &logs).await? {
            return Ok(());
        }
        self.local.run(step, logs).await
    }

    /// Applies the successful result filed under the step's cache key, if the server has one whose
    /// blobs are all there; `false` when it has none.
    async fn apply_keyed(&self, step: &RunStep, logs: &LogSink) -> Result<bool> {
        if let Some((digest, _)) = step.key.as_ref().map(key_action)
            && let Some(result) = self.server.get_action_result(&digest).await?
            && result.exit_code == 0
            && self.complete(&result).await?
        {
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
    async fn run_action(&self, step: RunStep, logs: LogSink) -> Result<Option<re::ActionResult>> {
        let scratch = step
            .fs
            .upper
            .parent()
            .unwrap_or(Path::new("/"))
            .join("remote");
        std::fs::create_dir_all(&scratch)
            .map_err(|e| Diagnostic::io("cannot prepare a remote step", e))?;
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
        let spec = StepSpec {
            version: 1,
            args: step.args.clone(),
            env: step.env.clone(),
            cwd: step.cwd.clone(),
            user: step.user.clone(),
            network: network_name(step.network).to_string(),
        };
        let spec_bytes = serde_json::to_vec(&spec).expect("specs serialize");
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
            ..Default::default()
        });
        blobs.push((action_digest.clone(), Blob::Bytes(action)));

        if let Some(result) = self.server.get_action_result(&action_digest).await?
            && result.exit_code == 0
            && self.complete(&result).await?
        {
            self.apply(&result, &step.args, &step.fs, &scratch, &logs)
                .await?;
            return Ok(Some(result));
        }
        match self.mode {
            Mode::Execute => {
                let missing = self
                    .server
                    .find_missing(blobs.iter().map(|(d, _)| d.clone()).collect())
                    .await?;
                for (d, blob) in &blobs {
                    if missing.contains(d) {
                        self.upload(d, blob, &scratch).await?;
                    }
                }
                let resp = self.server.execute(&action_digest).await?;
                if let Some(st) = &resp.status
                    && st.code != 0
                {
                    return Err(Diagnostic::env(format!(
                        "remote execution failed at {}: {} (code {})",
                        self.server.url, st.message, st.code
                    )));
                }
                let result = resp.result.ok_or_else(|| {
                    Diagnostic::env(format!(
                        "remote execution at {} returned no result",
                        self.server.url
                    ))
                })?;
                self.apply(&result, &step.args, &step.fs, &scratch, &logs)
                    .await?;
                Ok(Some(result))
            }
            Mode::Read => {
                self.local.run(step, logs).await?;
                Ok(None)
            }
            Mode::Cache => {
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
        if self.mode == Mode::Read && remotable(&step) {
            self.run_read(step, logs).await
        } else if remotable(&step) {
            self.run_remote(step, logs).await
        } else {
            self.local.run(step, logs).await
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
}
