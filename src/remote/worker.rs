//! `kiln worker`: a REAPI worker for any server that leases work over the Bots API (BuildGrid, and the
//! servers that speak the same protocol). It takes one lease at a time, fetches the Action, its Command
//! and input root from the CAS, unpacks the input snapshots (kept by digest, so a base image is unpacked
//! once per worker), runs the step through kiln's namespace executor over an overlay of them, and
//! reports an ActionResult whose `upper.tar` is the step's layer. Each action it runs is logged to
//! stderr, with its digest and command.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::protobuf::Any;
use bazel_remote_apis::google::rpc::Status;
use prost::Message as _;

use super::bots::{
    BotSession, BotStatus, BotsClient, CreateBotSessionRequest, LeaseState, UpdateBotSessionRequest,
};
use super::{OUTPUT, STEP_FILE, Server, StepSpec, digest_of, network_from_name, tar_snapshot};
use crate::diag::{Diagnostic, Result};
use crate::solve::{Layers, LogSink, RunExit, RunStep, abbreviate};

const ACTION_TYPE: &str = "build.bazel.remote.execution.v2.Action";
const DIGEST_TYPE: &str = "build.bazel.remote.execution.v2.Digest";
const RESULT_TYPE: &str = "type.googleapis.com/build.bazel.remote.execution.v2.ActionResult";
/// How often a busy worker tells the server it is alive (BuildGrid drops silent bots after a timeout).
const KEEPALIVE: Duration = Duration::from_secs(10);

pub(crate) struct Worker<E> {
    server: Server,
    bot_id: String,
    /// Unpacked input snapshots (`layers/<sha256>`), step dirs and downloads (`tmp/`).
    work: PathBuf,
    /// Runs the leased steps.
    exec: E,
    /// The namespace `exec` runs in, for unpacking input snapshots.
    ids: crate::layer::Ids,
}

fn log(line: &str) {
    crate::progress::line(&format!("kiln worker: {line}"));
}

impl<E: RunExit> Worker<E> {
    pub(crate) fn new(
        server: Server,
        work: PathBuf,
        exec: E,
        ids: crate::layer::Ids,
    ) -> Result<Worker<E>> {
        for d in ["layers", "tmp"] {
            std::fs::create_dir_all(work.join(d))
                .map_err(|e| Diagnostic::io("cannot prepare the worker's directory", e))?;
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        Ok(Worker {
            server,
            bot_id: format!("kiln-{}-{}", host.trim(), std::process::id()),
            work,
            exec,
            ids,
        })
    }

    /// Serves leases until stopped. A lost session (the server restarted, the network broke) is logged
    /// and replaced by a new one; the server requeues what the old one held.
    pub(crate) async fn serve(self) -> Result<()> {
        let me = Arc::new(self);
        let mut delay = Duration::from_secs(1);
        loop {
            let started = Instant::now();
            let e = me.clone().session().await;
            log(&format!("session lost: {}; reconnecting", e.message));
            if started.elapsed() > Duration::from_secs(60) {
                delay = Duration::from_secs(1);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// One bot session, until it fails.
    async fn session(self: Arc<Self>) -> Diagnostic {
        match self.session_inner().await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn session_inner(self: &Arc<Self>) -> Result<std::convert::Infallible> {
        let me = self;
        let mut bots = BotsClient::new(me.server.channel.clone());
        let mut session = bots
            .create_bot_session(CreateBotSessionRequest {
                parent: me.server.instance.clone(),
                bot_session: Some(BotSession {
                    bot_id: me.bot_id.clone(),
                    status: BotStatus::Ok as i32,
                    ..Default::default()
                }),
            })
            .await
            .map_err(|s| me.server.error("CreateBotSession", s))?;
        log(&format!(
            "connected to {} as {} (session {})",
            me.server.url, me.bot_id, session.name
        ));
        // Leases this worker has reported, in case a server repeats one.
        let mut done: Vec<String> = Vec::new();
        loop {
            // A new lease arrives PENDING, or already ACTIVE (BuildGrid marks it so on assignment).
            let pending = session.leases.iter().position(|l| {
                (l.state == LeaseState::Pending as i32 || l.state == LeaseState::Active as i32)
                    && !done.contains(&l.id)
            });
            let Some(i) = pending else {
                // Nothing to do: the server holds this call until it has a lease (or a timeout).
                session = me.update(&mut bots, session).await?;
                continue;
            };
            session.leases[i].state = LeaseState::Active as i32;
            let lease = session.leases[i].clone();
            let worker = Arc::clone(me);
            let mut task = tokio::spawn(async move { worker.run_lease(lease.payload).await });
            let outcome = loop {
                tokio::select! {
                    r = &mut task => break r.map_err(|e| Diagnostic::env(format!("the action task failed: {e}")))?,
                    _ = tokio::time::sleep(KEEPALIVE) => {
                        // Keep-alive with the lease still active; the answer carries nothing new for a
                        // bot at capacity.
                        let answer = match me.update(&mut bots, session.clone()).await {
                            Ok(a) => a,
                            Err(e) => {
                                // The server will requeue the lease: stop the step (its helper dies
                                // with the task).
                                task.abort();
                                return Err(e);
                            }
                        };
                        session.name = answer.name;
                        session.expire_time = answer.expire_time;
                    }
                }
            };
            let lease = &mut session.leases[i];
            done.push(lease.id.clone());
            if done.len() > 1000 {
                done.remove(0);
            }
            lease.state = LeaseState::Completed as i32;
            match outcome {
                Ok(result) => {
                    lease.status = Some(Status::default());
                    lease.result = Some(Any {
                        type_url: RESULT_TYPE.to_string(),
                        value: result.encode_to_vec(),
                    });
                }
                Err(e) => {
                    log(&format!("action failed to run: {}", e.message));
                    lease.status = Some(Status {
                        code: tonic::Code::Internal as i32,
                        message: e.message,
                        ..Default::default()
                    });
                    lease.result = None;
                }
            }
            session = me.update(&mut bots, session).await?;
        }
    }

    async fn update(&self, bots: &mut BotsClient, session: BotSession) -> Result<BotSession> {
        bots.update_bot_session(UpdateBotSessionRequest {
            name: session.name.clone(),
            bot_session: Some(session),
        })
        .await
        .map_err(|s| self.server.error("UpdateBotSession", s))
    }

    async fn run_lease(&self, payload: Option<Any>) -> Result<re::ActionResult> {
        let payload =
            payload.ok_or_else(|| Diagnostic::env("the lease carries no action".to_string()))?;
        let bad = |e: prost::DecodeError| Diagnostic::env(format!("a bad lease payload: {e}"));
        let (action_digest, action) = if payload.type_url.ends_with(ACTION_TYPE) {
            let a = re::Action::decode(payload.value.as_slice()).map_err(bad)?;
            (digest_of(&payload.value), a)
        } else if payload.type_url.ends_with(DIGEST_TYPE) {
            let d = re::Digest::decode(payload.value.as_slice()).map_err(bad)?;
            let bytes = self.server.read_bytes(&d).await?;
            (d, re::Action::decode(bytes.as_slice()).map_err(bad)?)
        } else {
            return Err(Diagnostic::env(format!(
                "a lease payload of unknown type `{}`",
                payload.type_url
            )));
        };
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
        if spec.version != 1 || spec.args != command.arguments {
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
        let mut lowers = Vec::new();
        let mut layers: Vec<&re::FileNode> =
            root.files.iter().filter(|f| f.name != STEP_FILE).collect();
        layers.sort_by(|a, b| a.name.cmp(&b.name));
        for f in layers {
            let d = f
                .digest
                .as_ref()
                .ok_or_else(|| Diagnostic::env("an input without a digest".to_string()))?;
            lowers.push(self.layer(d).await?);
        }
        let step_dir = tempfile::tempdir_in(self.work.join("tmp"))
            .map_err(|e| Diagnostic::io("cannot make a step directory", e))?;
        let upper = step_dir.path().join("upper");
        let scratch = step_dir.path().join("work");
        for d in [&upper, &scratch] {
            std::fs::create_dir(d)
                .map_err(|e| Diagnostic::io("cannot make a step directory", e))?;
        }
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink_out = output.clone();
        let sink: LogSink = Arc::new(move |chunk: &[u8]| {
            sink_out
                .lock()
                .expect("not poisoned")
                .extend_from_slice(chunk)
        });
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
                    secrets: Vec::new(),
                    mounts: Vec::new(),
                    key: None,
                },
                sink,
            )
            .await?;
        let mut result = re::ActionResult {
            exit_code: exit,
            ..Default::default()
        };
        let stdout = std::mem::take(&mut *output.lock().expect("not poisoned"));
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
        Ok(result)
    }

    /// The unpacked snapshot of a layer tar, downloaded and unpacked on first use.
    async fn layer(&self, d: &re::Digest) -> Result<PathBuf> {
        let dir = self.work.join("layers").join(&d.hash);
        if dir.is_dir() {
            return Ok(dir);
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
        std::fs::rename(&unpacked, &dir)
            .map_err(|e| Diagnostic::io("cannot keep an input snapshot", e))?;
        Ok(dir)
    }
}
