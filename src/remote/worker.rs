//! `kiln worker`: a REAPI worker for any server that leases work over the Bots API (BuildGrid, and the
//! servers that speak the same protocol). For each lease (up to `--concurrency` at once; the session
//! itself is `session.rs`) it fetches the Action, its Command and input root from the CAS, unpacks the
//! input snapshots (kept by digest in `layers.rs`, so a base image is unpacked once per worker), runs the
//! step through kiln's namespace executor over an overlay of them, and reports an ActionResult whose
//! `upper.tar` is the step's layer. Its log (stderr) has a timestamped line for each action it starts
//! and finishes, with the action's digest and command.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::protobuf::Any;
use prost::Message as _;

use super::layers::{Held, LayerCache};
use super::{OUTPUT, STEP_FILE, Server, StepSpec, digest_of, network_from_name, tar_snapshot};
use crate::diag::{Diagnostic, Result};
use crate::graph::op::SecretMount;
use crate::secret::{LeakScanner, Scrubber, SecretValue};
use crate::solve::{Layers, LogSink, RunExit, RunStep, StepMount, abbreviate};

const ACTION_TYPE: &str = "build.bazel.remote.execution.v2.Action";
const DIGEST_TYPE: &str = "build.bazel.remote.execution.v2.Digest";

pub(crate) struct Worker<E> {
    pub(super) server: Server,
    pub(super) bot_id: String,
    /// How many leases it runs at once.
    pub(super) capacity: usize,
    /// Step dirs and downloads (`tmp/`); the unpacked snapshots are `cache`'s (`layers/`).
    work: PathBuf,
    cache: LayerCache,
    /// Runs the leased steps.
    exec: E,
    /// The namespace `exec` runs in, for unpacking input snapshots.
    ids: crate::layer::Ids,
    /// `--tls-ca/--tls-cert/--tls-key`: the identity this worker receives a step's secrets with; without
    /// it, a step with secrets is refused.
    secrets_tls: Option<Arc<rustls::ClientConfig>>,
}

/// A line of the worker's log, after the time (RFC 3339, UTC, milliseconds) it is written.
pub(super) fn log(line: &str) {
    crate::progress::line(&format!(
        "{} kiln worker: {line}",
        timestamp(SystemTime::now())
    ));
}

fn timestamp(t: SystemTime) -> String {
    let t = jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl<E: RunExit> Worker<E> {
    pub(crate) fn new(
        server: Server,
        work: PathBuf,
        exec: E,
        ids: crate::layer::Ids,
        capacity: usize,
        max_cache_size: Option<u64>,
    ) -> Result<Worker<E>> {
        let prepare = |e| Diagnostic::io("cannot prepare the worker's directory", e);
        // What a worker killed mid-step left in `tmp/` belongs to no job now.
        if work.join("tmp").is_dir() {
            std::fs::remove_dir_all(work.join("tmp")).map_err(prepare)?;
        }
        for d in ["layers", "tmp"] {
            std::fs::create_dir_all(work.join(d)).map_err(prepare)?;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Ok(Worker {
            server,
            bot_id: format!("kiln-{}-{}", host.trim(), std::process::id()),
            capacity: capacity.max(1),
            cache: LayerCache::new(work.join("layers"), work.join("tmp"), max_cache_size),
            work,
            exec,
            ids,
            secrets_tls: None,
        })
    }

    /// Receives the secrets of the steps that mount them as a TLS client with this identity.
    pub(crate) fn with_secret_tls(mut self, config: Arc<rustls::ClientConfig>) -> Worker<E> {
        self.secrets_tls = Some(config);
        self
    }

    /// Prunes the snapshot cache to its bound (after each job).
    pub(super) fn prune_cache(&self) {
        match self.cache.prune() {
            Ok(Some(p)) if p.removed > 0 => log(&format!(
                "pruned {} cached snapshot(s), {} bytes; {} bytes kept",
                p.removed, p.freed, p.kept
            )),
            Ok(_) => {}
            Err(e) => log(&format!("cannot prune the snapshot cache: {e}")),
        }
    }

    /// The Action a lease names (inline, or by digest in the CAS), with its digest.
    async fn lease_action(&self, payload: Option<Any>) -> Result<(re::Digest, re::Action)> {
        let payload =
            payload.ok_or_else(|| Diagnostic::env("the lease carries no action".to_string()))?;
        let bad = |e: prost::DecodeError| Diagnostic::env(format!("a bad lease payload: {e}"));
        if payload.type_url.ends_with(ACTION_TYPE) {
            let a = re::Action::decode(payload.value.as_slice()).map_err(bad)?;
            Ok((digest_of(&payload.value), a))
        } else if payload.type_url.ends_with(DIGEST_TYPE) {
            let d = re::Digest::decode(payload.value.as_slice()).map_err(bad)?;
            let bytes = self.server.read_bytes(&d).await?;
            Ok((d, re::Action::decode(bytes.as_slice()).map_err(bad)?))
        } else {
            Err(Diagnostic::env(format!(
                "a lease payload of unknown type `{}`",
                payload.type_url
            )))
        }
    }

    pub(super) async fn run_lease(&self, payload: Option<Any>) -> Result<re::ActionResult> {
        let (action_digest, action) = self.lease_action(payload).await?;
        let bad = |e: prost::DecodeError| Diagnostic::env(format!("a bad lease payload: {e}"));
        let started = Instant::now();
        let fetch = async |d: &Option<re::Digest>| -> Result<Vec<u8>> {
            let d = d
                .as_ref()
                .ok_or_else(|| Diagnostic::env("the action lacks a digest".to_string()))?;
            self.server.read_bytes(d).await
        };
        let command =
            re::Command::decode(fetch(&action.command_digest).await?.as_slice()).map_err(bad)?;
        let root = re::Directory::decode(fetch(&action.input_root_digest).await?.as_slice())
            .map_err(bad)?;
        let spec_node = root
            .files
            .iter()
            .find(|f| f.name == STEP_FILE)
            .ok_or_else(|| {
                Diagnostic::env(format!(
                    "not a kiln action: its input root has no `{STEP_FILE}`"
                ))
            })?;
        let spec: StepSpec = serde_json::from_slice(&fetch(&spec_node.digest).await?)
            .map_err(|e| Diagnostic::env(format!("a bad `{STEP_FILE}`: {e}")))?;
        if !matches!(spec.version, 1 | 2) || spec.args != command.arguments {
            return Err(Diagnostic::env(format!(
                "`{STEP_FILE}` does not match the action's command"
            )));
        }
        let network = network_from_name(&spec.network)
            .ok_or_else(|| Diagnostic::env(format!("unknown network mode `{}`", spec.network)))?;
        log(&format!(
            "running action {}/{}: {}",
            action_digest.hash,
            action_digest.size_bytes,
            abbreviate(&spec.args.join(" "))
        ));
        // Before any input is fetched: a worker that cannot receive the secrets refuses at once.
        let secrets = self.receive(&spec).await?;
        let mut lowers = Vec::new();
        // Held until the step's result is uploaded: pruning never takes a snapshot a job uses.
        let mut held = Vec::new();
        let mut layers: Vec<&re::FileNode> =
            root.files.iter().filter(|f| f.name != STEP_FILE).collect();
        layers.sort_by(|a, b| a.name.cmp(&b.name));
        for f in layers {
            let d = f
                .digest
                .as_ref()
                .ok_or_else(|| Diagnostic::env("an input without a digest".to_string()))?;
            let h = self.layer(d).await?;
            lowers.push(h.path.clone());
            held.push(h);
        }
        let step_dir = tempfile::tempdir_in(self.work.join("tmp"))
            .map_err(|e| Diagnostic::io("cannot make a step directory", e))?;
        let upper = step_dir.path().join("upper");
        let scratch = step_dir.path().join("work");
        for d in [&upper, &scratch] {
            std::fs::create_dir(d)
                .map_err(|e| Diagnostic::io("cannot make a step directory", e))?;
        }
        // Relaying for as long as the step runs; dropped (closed) with the lease.
        let (mounts, _relays) = self.agents(&spec, step_dir.path())?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink_out = output.clone();
        let sink: LogSink = Arc::new(move |chunk: &[u8]| {
            sink_out
                .lock()
                .expect("not poisoned")
                .extend_from_slice(chunk)
        });
        // The leak guard and the scrubber keep copies of the values; the step's own are zeroized when
        // it drops them, these when the lease ends.
        let guard = (!secrets.is_empty()).then(|| guard_of(&secrets));
        let exit = self
            .exec
            .run_exit(
                RunStep {
                    fs: Layers {
                        lowers,
                        upper: upper.clone(),
                        work: scratch,
                    },
                    args: spec.args,
                    env: spec.env,
                    cwd: spec.cwd,
                    user: spec.user,
                    network,
                    insecure: false,
                    secrets,
                    mounts,
                    key: None,
                    sandbox: Default::default(),
                    // A worker runs the steps of many builds: the next one may come at any time.
                    more_runs: true,
                },
                sink,
            )
            .await?;
        let mut result = re::ActionResult {
            exit_code: exit,
            ..Default::default()
        };
        let mut stdout = std::mem::take(&mut *output.lock().expect("not poisoned"));
        if let Some(guard) = &guard {
            // The output goes to the CAS, where no secret may go: scrubbed as a local build's log is.
            stdout = guard.1.scrub(&stdout);
            if exit == 0 {
                check_leaks(guard.0.clone(), &upper).await?;
            }
        }
        if !stdout.is_empty() {
            let d = digest_of(&stdout);
            self.server.upload_bytes(&d, stdout).await?;
            result.stdout_digest = Some(d);
        }
        if exit == 0 {
            let file = step_dir.path().join(OUTPUT);
            let (u, f) = (upper.clone(), file.clone());
            let d = tokio::task::spawn_blocking(move || tar_snapshot(&u, &f))
                .await
                .map_err(|e| Diagnostic::env(format!("layer tar failed: {e}")))?
                .map_err(|e| Diagnostic::io("cannot write the step's layer", e))?;
            if !self.server.find_missing(vec![d.clone()]).await?.is_empty() {
                self.server.upload_file(&d, &file).await?;
            }
            result.output_files.push(re::OutputFile {
                path: OUTPUT.to_string(),
                digest: Some(d),
                ..Default::default()
            });
        }
        log(&format!(
            "finished action {}/{}: exit code {exit} in {:.1}s",
            action_digest.hash,
            action_digest.size_bytes,
            started.elapsed().as_secs_f64()
        ));
        drop(held);
        Ok(result)
    }

    /// The secrets a step mounts, fetched from the build's endpoint (see `secrets`); none for a step
    /// without.
    async fn receive(&self, spec: &StepSpec) -> Result<Vec<(SecretMount, Option<SecretValue>)>> {
        if spec.version == 1 || (spec.secrets.is_empty() && spec.ssh.is_empty()) {
            return Ok(Vec::new());
        }
        let (config, addr, nonce) = self.channel(spec)?;
        if spec.secrets.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = spec.secrets.iter().map(|m| m.id.as_str()).collect();
        log(&format!("receiving secrets {} from {addr}", ids.join(", ")));
        let mut values = super::secrets::fetch(config.clone(), addr, nonce).await?;
        let mut out = Vec::new();
        for m in &spec.secrets {
            let value = match values.iter().position(|(id, _)| id == &m.id) {
                // A secret mounted twice is sent once.
                Some(i) if spec.secrets.iter().filter(|o| o.id == m.id).count() > 1 => Some(
                    SecretValue::new(zeroize::Zeroizing::new(values[i].1.expose().to_vec())),
                ),
                Some(i) => Some(values.remove(i).1),
                None => None,
            };
            if value.is_none() && m.required {
                return Err(Diagnostic::build(format!(
                    "the build sent no value for the required secret `{}`",
                    m.id
                )));
            }
            out.push((m.clone(), value));
        }
        Ok(out)
    }

    /// The build's channel a step with secrets or SSH agents needs: this worker's TLS identity, the
    /// endpoint and the nonce.
    fn channel<'s>(
        &'s self,
        spec: &'s StepSpec,
    ) -> Result<(&'s Arc<rustls::ClientConfig>, &'s str, &'s str)> {
        let Some(config) = &self.secrets_tls else {
            return Err(Diagnostic::build(
                "this worker refuses to receive secrets or ssh agents: it has no TLS client identity to receive them over mutual TLS; start it with --tls-ca, --tls-cert and --tls-key".to_string(),
            ));
        };
        let (Some(addr), Some(nonce)) = (&spec.secret_endpoint, &spec.nonce) else {
            return Err(Diagnostic::env(format!(
                "`{STEP_FILE}` mounts secrets or ssh agents but names no endpoint to reach them at"
            )));
        };
        Ok((config, addr, nonce))
    }

    /// The step's SSH agent mounts: for each, a socket in `dir` whose every connection is relayed to the
    /// build's agent over the channel (the executor gives the step its own socket in front of it). No
    /// key ever reaches this machine: only agent requests and their answers pass.
    fn agents(
        &self,
        spec: &StepSpec,
        dir: &std::path::Path,
    ) -> Result<(Vec<StepMount>, Vec<Relay>)> {
        if spec.ssh.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let (config, addr, nonce) = self.channel(spec)?;
        let ids: Vec<&str> = spec.ssh.iter().map(|m| m.id.as_str()).collect();
        log(&format!(
            "forwarding ssh agents {} from {addr}",
            ids.join(", ")
        ));
        let (mut mounts, mut relays) = (Vec::new(), Vec::new());
        for (n, m) in spec.ssh.iter().enumerate() {
            let path = dir.join(format!("agent-{n}.sock"));
            let listener = tokio::net::UnixListener::bind(&path)
                .map_err(|e| Diagnostic::io("cannot make the step's ssh agent relay", e))?;
            let (config, addr, nonce, id) = (
                config.clone(),
                addr.to_string(),
                nonce.to_string(),
                m.id.clone(),
            );
            relays.push(Relay(tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let (config, addr, nonce, id) =
                        (config.clone(), addr.clone(), nonce.clone(), id.clone());
                    tokio::spawn(async move {
                        match super::secrets::agent(config, &addr, &nonce, &id).await {
                            Ok(mut tls) => {
                                let _ = tokio::io::copy_bidirectional(&mut client, &mut tls).await;
                            }
                            // The step sees its agent hang up; the log says why.
                            Err(e) => log(&e.message),
                        }
                    });
                }
            })));
            mounts.push(StepMount::Ssh {
                id: m.id.clone(),
                target: m.target.clone(),
                agent: crate::secret::SshSource::Socket(path),
                mode: m.mode,
                uid: m.uid,
                gid: m.gid,
            });
        }
        Ok((mounts, relays))
    }

    /// The unpacked snapshot of a layer tar, downloaded and unpacked on first use.
    async fn layer(&self, d: &re::Digest) -> Result<Held<'_>> {
        let held = self.cache.hold(&d.hash);
        let dir = held.path.clone();
        if dir.is_dir() {
            return Ok(held);
        }
        let tmp = tempfile::tempdir_in(self.work.join("tmp"))
            .map_err(|e| Diagnostic::io("cannot make a download directory", e))?;
        let file = tmp.path().join("layer.tar");
        {
            let mut f = std::fs::File::create(&file)
                .map_err(|e| Diagnostic::io("cannot store a download", e))?;
            self.server.read_into(d, &mut f).await?;
        }
        let unpacked = tmp.path().join("snapshot");
        std::fs::create_dir(&unpacked)
            .map_err(|e| Diagnostic::io("cannot make a download directory", e))?;
        let (f, u, ids) = (file.clone(), unpacked.clone(), self.ids);
        tokio::task::spawn_blocking(move || {
            crate::layer::unpack_layer(std::io::BufReader::new(std::fs::File::open(&f)?), &u, ids)
        })
        .await
        .map_err(|e| Diagnostic::env(format!("unpacking an input failed: {e}")))?
        .map_err(|e| Diagnostic::io("cannot unpack an input snapshot", e))?;
        if let Err(e) = std::fs::rename(&unpacked, &dir) {
            // Another job (`--concurrency`) unpacked the same snapshot first: use that one.
            if !dir.is_dir() {
                return Err(Diagnostic::io("cannot keep an input snapshot", e));
            }
        }
        Ok(held)
    }
}

/// A step's agent relay: stops accepting when dropped.
struct Relay(tokio::task::JoinHandle<()>);

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The leak guard and the log scrubber for a step's secrets.
fn guard_of(secrets: &[(SecretMount, Option<SecretValue>)]) -> (Arc<LeakScanner>, Scrubber) {
    let values = || {
        secrets
            .iter()
            .filter_map(|(m, v)| Some((m.id.as_str(), v.as_ref()?)))
    };
    (
        Arc::new(LeakScanner::new(values())),
        Scrubber::new(values().map(|(_, v)| v)),
    )
}

/// The leak guard on a step's changes before they are uploaded: a finding fails the action, with
/// nothing of it in the CAS.
async fn check_leaks(guard: Arc<LeakScanner>, upper: &std::path::Path) -> Result<()> {
    let upper = upper.to_path_buf();
    let found = tokio::task::spawn_blocking(move || guard.scan_tree(&upper))
        .await
        .map_err(|e| Diagnostic::env(format!("leak scan failed: {e}")))?
        .map_err(|e| Diagnostic::io("cannot scan the step's changes for secrets", e))?;
    match found {
        Some((leak, path)) => Err(Diagnostic::build(format!(
            "secret `{}` leaked: this step wrote it ({}) into the image at /{}; the worker uploaded nothing",
            leak.id,
            leak.encoding.as_str(),
            path.display()
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    #[test]
    fn log_times_are_rfc3339_utc_with_milliseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_042);
        assert_eq!(super::timestamp(t), "2023-11-14T22:13:20.042Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 86_399);
        assert_eq!(super::timestamp(leap), "2000-02-29T23:59:59.000Z");
    }
}
