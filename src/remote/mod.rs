//! Stage 8, remote execution and caching over the Remote Execution API v2 (REAPI): an `Executor` that
//! turns each RUN step into an REAPI Action, answers it from the ActionCache or has a remote worker run
//! it, and rebuilds the step's layer from the result; and `kiln worker`, which runs leased Actions
//! through the namespace executor (`worker`, over the Bots API in `bots`).
//!
//! The encoding of a step (see `docs/remote-execution.md`): the input root holds one file per input
//! snapshot, `NNNN.tar` (bottom first, the snapshot as an uncompressed OCI layer tar, exactly as
//! `layer` writes it without SOURCE_DATE_EPOCH clamping), and `step.json` (argv, environment in
//! order, working directory, user, network mode). The only output is `upper.tar`: the step's upper dir
//! in the same format. A tar keeps what a REAPI directory tree cannot (ownership, device nodes, xattrs,
//! whiteouts, hard links), so the remote layer is the local one byte for byte, and each snapshot is one
//! blob that FindMissingBlobs uploads once for every step and machine that builds on it.
//!
//! REAPI has no secret channel: a step that mounts a secret or an SSH agent (or any other mount: cache,
//! bind, tmpfs) always runs locally, so no secret value ever enters an Action, a Command or the CAS.

pub mod bots;
pub mod worker;

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use bazel_remote_apis::google::longrunning::operation;
use futures_util::StreamExt as _;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use tonic::transport::{Channel, Endpoint};

use crate::diag::{Diagnostic, Result};
use crate::graph::op::Network;
use crate::solve::{CopyStep, Executor, Layers, LogSink, RunStep, exit_error};

/// The name of the step's description in the input root.
pub const STEP_FILE: &str = "step.json";
/// The one output path: the step's changes as a layer tar.
pub const OUTPUT: &str = "upper.tar";
/// Blobs up to this size go in batch calls; larger ones are streamed over ByteStream.
const BATCH_LIMIT: usize = 1 << 20;
const CHUNK: usize = 1 << 20;

/// What a remote step runs: everything a Command cannot carry exactly (REAPI wants the environment
/// sorted, and has no user or network mode).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StepSpec {
    pub version: u32,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub network: String,
}

/// A REAPI server: the address (for messages) and the instance name.
#[derive(Clone)]
pub struct Server {
    pub url: String,
    pub instance: String,
    channel: Channel,
}

/// Parses `grpc://HOST:PORT` (REAPI's plaintext scheme, as in Bazel's `--remote_executor`).
pub fn parse_url(url: &str) -> std::result::Result<String, String> {
    let Some(rest) = url.strip_prefix("grpc://") else {
        return Err(if url.starts_with("grpcs://") {
            "TLS (`grpcs://`) is not supported yet; use `grpc://` (behind a TLS-terminating proxy if the link is not trusted)".into()
        } else {
            "the address must look like `grpc://HOST:PORT`".into()
        });
    };
    let hostport = rest.trim_end_matches('/');
    let Some((host, port)) = hostport.rsplit_once(':') else {
        return Err("the address needs a port: `grpc://HOST:PORT`".into());
    };
    if host.is_empty() || port.parse::<u16>().is_err() || hostport.contains('/') {
        return Err("the address must look like `grpc://HOST:PORT`".into());
    }
    Ok(format!("http://{hostport}"))
}

impl Server {
    /// A lazily connected channel: nothing is dialled until the first call (`check` makes one).
    pub fn new(url: &str, instance: &str) -> Result<Server> {
        let http = parse_url(url).map_err(|m| {
            Diagnostic::input(format!("bad remote address `{url}`: {m}"))
                .help("for example `--remote-executor grpc://127.0.0.1:50051`")
        })?;
        let channel = Endpoint::from_shared(http)
            .map_err(|e| Diagnostic::input(format!("bad remote address `{url}`: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .connect_lazy();
        Ok(Server {
            url: url.to_string(),
            instance: instance.to_string(),
            channel,
        })
    }

    fn error(&self, what: &str, s: tonic::Status) -> Diagnostic {
        let mut d = Diagnostic::env(format!(
            "remote {what} failed at {}: {} ({:?})",
            self.url,
            s.message(),
            s.code()
        ));
        if s.code() == tonic::Code::Unavailable {
            d = d.help("check that the REAPI server is running and that the address is right");
        }
        d
    }

    /// Asks the server for its capabilities: a clear error now rather than in the middle of a build.
    pub async fn check(&self) -> Result<()> {
        let mut c = re::capabilities_client::CapabilitiesClient::new(self.channel.clone());
        let call = c.get_capabilities(re::GetCapabilitiesRequest {
            instance_name: self.instance.clone(),
        });
        match tokio::time::timeout(Duration::from_secs(30), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(self.error("capabilities request", s)),
            Err(_) => Err(Diagnostic::env(format!(
                "remote capabilities request failed at {}: no answer in 30s",
                self.url
            ))
            .help("check that the REAPI server is running and that the address is right")),
        }
    }

    fn cas(
        &self,
    ) -> re::content_addressable_storage_client::ContentAddressableStorageClient<Channel> {
        re::content_addressable_storage_client::ContentAddressableStorageClient::new(
            self.channel.clone(),
        )
    }

    fn bytestream(&self) -> bs::byte_stream_client::ByteStreamClient<Channel> {
        bs::byte_stream_client::ByteStreamClient::new(self.channel.clone())
    }

    fn prefix(&self) -> String {
        if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        }
    }

    pub async fn find_missing(&self, digests: Vec<re::Digest>) -> Result<Vec<re::Digest>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let r = self
            .cas()
            .find_missing_blobs(re::FindMissingBlobsRequest {
                instance_name: self.instance.clone(),
                blob_digests: digests,
                ..Default::default()
            })
            .await
            .map_err(|s| self.error("FindMissingBlobs", s))?;
        Ok(r.into_inner().missing_blob_digests)
    }

    pub async fn upload_bytes(&self, digest: &re::Digest, data: Vec<u8>) -> Result<()> {
        if data.len() > BATCH_LIMIT {
            let chunks: Vec<Vec<u8>> = data.chunks(CHUNK).map(<[u8]>::to_vec).collect();
            return self
                .write_stream(
                    digest,
                    futures_util::stream::iter(chunks.into_iter().map(Ok)),
                )
                .await;
        }
        let r = self
            .cas()
            .batch_update_blobs(re::BatchUpdateBlobsRequest {
                instance_name: self.instance.clone(),
                requests: vec![re::batch_update_blobs_request::Request {
                    digest: Some(digest.clone()),
                    data,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await
            .map_err(|s| self.error("BatchUpdateBlobs", s))?;
        for resp in r.into_inner().responses {
            if let Some(st) = resp.status
                && st.code != 0
            {
                return Err(Diagnostic::env(format!(
                    "remote BatchUpdateBlobs failed at {}: {}",
                    self.url, st.message
                )));
            }
        }
        Ok(())
    }

    pub async fn upload_file(&self, digest: &re::Digest, path: &Path) -> Result<()> {
        let size = usize::try_from(digest.size_bytes).unwrap_or(usize::MAX);
        if size <= BATCH_LIMIT {
            let data = std::fs::read(path)
                .map_err(|e| Diagnostic::io("cannot read a blob to upload", e))?;
            return self.upload_bytes(digest, data).await;
        }
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Diagnostic::io("cannot read a blob to upload", e))?;
        let chunks = futures_util::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; CHUNK];
            let mut n = 0;
            while n < CHUNK {
                match file.read(&mut buf[n..]).await {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Some((Err(e), None)),
                }
            }
            if n == 0 {
                return None;
            }
            buf.truncate(n);
            Some((Ok(buf), Some(file)))
        });
        self.write_stream(digest, chunks).await
    }

    async fn write_stream<S>(&self, digest: &re::Digest, chunks: S) -> Result<()>
    where
        S: futures_util::Stream<Item = io::Result<Vec<u8>>> + Send + 'static,
    {
        let resource = format!(
            "{}uploads/{}/blobs/{}/{}",
            self.prefix(),
            upload_id(),
            digest.hash,
            digest.size_bytes
        );
        let total = digest.size_bytes;
        // A read error ends the stream early; the server then refuses the short upload.
        let mut offset = 0i64;
        let requests = chunks
            .take_while(|c| std::future::ready(c.is_ok()))
            .map(move |c| {
                let data = c.unwrap_or_default();
                let req = bs::WriteRequest {
                    resource_name: if offset == 0 {
                        resource.clone()
                    } else {
                        String::new()
                    },
                    write_offset: offset,
                    finish_write: offset + data.len() as i64 == total,
                    data,
                };
                offset += req.data.len() as i64;
                req
            });
        let r = self
            .bytestream()
            .write(requests)
            .await
            .map_err(|s| self.error("ByteStream write", s))?;
        let committed = r.into_inner().committed_size;
        if committed != total {
            return Err(Diagnostic::env(format!(
                "remote ByteStream write failed at {}: {committed} of {total} bytes committed",
                self.url
            )));
        }
        Ok(())
    }

    /// Reads a blob into memory (for the small ones: Directories, Commands, logs).
    pub async fn read_bytes(&self, digest: &re::Digest) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(digest, &mut out).await?;
        Ok(out)
    }

    /// Streams a blob into `out`, checking its digest.
    pub async fn read_into<W: Write>(&self, digest: &re::Digest, out: &mut W) -> Result<()> {
        let mut sha = Sha256::new();
        let mut n = 0i64;
        if digest.size_bytes > 0 {
            let resource = format!(
                "{}blobs/{}/{}",
                self.prefix(),
                digest.hash,
                digest.size_bytes
            );
            let mut stream = self
                .bytestream()
                .read(bs::ReadRequest {
                    resource_name: resource,
                    read_offset: 0,
                    read_limit: 0,
                })
                .await
                .map_err(|s| self.error("ByteStream read", s))?
                .into_inner();
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|s| self.error("ByteStream read", s))?
            {
                sha.update(&chunk.data);
                n += chunk.data.len() as i64;
                out.write_all(&chunk.data)
                    .map_err(|e| Diagnostic::io("cannot write a downloaded blob", e))?;
            }
        }
        if n != digest.size_bytes || hex::encode(sha.finalize()) != digest.hash {
            return Err(Diagnostic::env(format!(
                "remote blob {}/{} arrived corrupt from {}",
                digest.hash, digest.size_bytes, self.url
            )));
        }
        Ok(())
    }

    pub async fn get_action_result(&self, action: &re::Digest) -> Result<Option<re::ActionResult>> {
        let mut c = re::action_cache_client::ActionCacheClient::new(self.channel.clone());
        match c
            .get_action_result(re::GetActionResultRequest {
                instance_name: self.instance.clone(),
                action_digest: Some(action.clone()),
                ..Default::default()
            })
            .await
        {
            Ok(r) => Ok(Some(r.into_inner())),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(self.error("GetActionResult", s)),
        }
    }

    pub async fn update_action_result(
        &self,
        action: &re::Digest,
        result: re::ActionResult,
    ) -> Result<()> {
        let mut c = re::action_cache_client::ActionCacheClient::new(self.channel.clone());
        c.update_action_result(re::UpdateActionResultRequest {
            instance_name: self.instance.clone(),
            action_digest: Some(action.clone()),
            action_result: Some(result),
            ..Default::default()
        })
        .await
        .map_err(|s| self.error("UpdateActionResult", s))?;
        Ok(())
    }

    /// Executes an Action and waits for it (following the operation through WaitExecution if the
    /// stream ends early).
    pub async fn execute(&self, action: &re::Digest) -> Result<re::ExecuteResponse> {
        let mut c = re::execution_client::ExecutionClient::new(self.channel.clone());
        let mut stream = c
            .execute(re::ExecuteRequest {
                instance_name: self.instance.clone(),
                action_digest: Some(action.clone()),
                skip_cache_lookup: false,
                ..Default::default()
            })
            .await
            .map_err(|s| self.error("Execute", s))?
            .into_inner();
        let mut name = String::new();
        loop {
            match stream.message().await {
                Ok(Some(op)) => {
                    name = op.name.clone();
                    if op.done {
                        return match op.result {
                            Some(operation::Result::Response(any)) => {
                                re::ExecuteResponse::decode(any.value.as_slice()).map_err(|e| {
                                    Diagnostic::env(format!(
                                        "remote Execute at {} answered garbage: {e}",
                                        self.url
                                    ))
                                })
                            }
                            Some(operation::Result::Error(st)) => Err(Diagnostic::env(format!(
                                "remote execution failed at {}: {} (code {})",
                                self.url, st.message, st.code
                            ))),
                            None => Err(Diagnostic::env(format!(
                                "remote execution at {} finished without a result",
                                self.url
                            ))),
                        };
                    }
                }
                Ok(None) | Err(_) if !name.is_empty() => {
                    stream = c
                        .wait_execution(re::WaitExecutionRequest { name: name.clone() })
                        .await
                        .map_err(|s| self.error("WaitExecution", s))?
                        .into_inner();
                }
                Ok(None) => {
                    return Err(Diagnostic::env(format!(
                        "remote Execute at {} ended without an operation",
                        self.url
                    )));
                }
                Err(s) => return Err(self.error("Execute", s)),
            }
        }
    }
}

/// A fresh id for a ByteStream upload resource (it only has to be unique per upload).
fn upload_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}

pub fn digest_of(bytes: &[u8]) -> re::Digest {
    re::Digest {
        hash: hex::encode(Sha256::digest(bytes)),
        size_bytes: bytes.len() as i64,
    }
}

pub fn message_blob<M: prost::Message>(m: &M) -> (re::Digest, Vec<u8>) {
    let bytes = m.encode_to_vec();
    (digest_of(&bytes), bytes)
}

/// A writer that hashes (SHA-256) and counts what passes through.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    n: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.sha.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `snapshot` as an uncompressed layer tar to `file`, returning its digest.
pub fn tar_snapshot(snapshot: &Path, file: &Path) -> io::Result<re::Digest> {
    let out = std::fs::File::create(file)?;
    let w = Hashing {
        inner: io::BufWriter::new(out),
        sha: Sha256::new(),
        n: 0,
    };
    let mut w = crate::layer::write_layer(snapshot, w, None)?;
    w.flush()?;
    w.inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    Ok(re::Digest {
        hash: hex::encode(w.sha.finalize()),
        size_bytes: w.n as i64,
    })
}

fn network_name(n: Network) -> &'static str {
    match n {
        Network::Default => "default",
        Network::None => "none",
        Network::Host => "host",
    }
}

pub fn network_from_name(s: &str) -> Option<Network> {
    match s {
        "default" => Some(Network::Default),
        "none" => Some(Network::None),
        "host" => Some(Network::Host),
        _ => None,
    }
}

/// The Action that files a step's result under kiln's cache key: no inputs, a Command naming the key.
/// Never executed; only its ActionCache entry is used. Returns its digest and blobs (Command, empty
/// input root, Action).
fn key_action(key: &crate::digest::Digest) -> (re::Digest, Vec<(re::Digest, Vec<u8>)>) {
    let (command_digest, command) = message_blob(&re::Command {
        arguments: vec![
            "kiln-cached-step".to_string(),
            format!("{}:{key}", crate::solve::CACHE_DOMAIN),
        ],
        output_paths: vec![OUTPUT.to_string()],
        ..Default::default()
    });
    let (root_digest, root) = message_blob(&re::Directory::default());
    let (digest, action) = message_blob(&re::Action {
        command_digest: Some(command_digest.clone()),
        input_root_digest: Some(root_digest.clone()),
        do_not_cache: false,
        ..Default::default()
    });
    (
        digest.clone(),
        vec![
            (command_digest, command),
            (root_digest, root),
            (digest, action),
        ],
    )
}

/// Whether a step may leave the machine: only one with no mounts at all and no entitlement. A secret or
/// an SSH agent must never reach an Action or the CAS, and cache, bind and tmpfs mounts live on this host;
/// `--allow network.host` and `--allow security.insecure` were granted by this build's user for this
/// machine, not for a worker's.
pub fn remotable(step: &RunStep) -> bool {
    step.secrets.is_empty()
        && step.mounts.is_empty()
        && step.network != Network::Host
        && !step.insecure
}

/// How the executor uses the server.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
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
pub struct Remote<L> {
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
    pub fn new(server: Server, mode: Mode, local: L, ids: crate::layer::Ids) -> Remote<L> {
        Remote {
            local,
            ids,
            server,
            mode,
            digests: Mutex::new(HashMap::new()),
        }
    }

    pub fn server(&self) -> &Server {
        &self.server
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

    async fn mkdir(&self, fs: Layers, path: String) -> Result<()> {
        self.local.mkdir(fs, path).await
    }

    fn unpack(&self, blob: &Path, media_type: &str, dest: &Path) -> Result<()> {
        self.local.unpack(blob, media_type, dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::{Mode, SFlag, mknod};
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};

    /// A step that needs an entitlement was allowed for this machine only: it never becomes an Action.
    #[test]
    fn steps_with_an_entitlement_run_locally() {
        let step = |network, insecure| RunStep {
            fs: crate::solve::Layers {
                lowers: Vec::new(),
                upper: PathBuf::from("/step/upper"),
                work: PathBuf::from("/step/scratch"),
            },
            args: vec!["true".into()],
            env: Vec::new(),
            cwd: "/".into(),
            user: String::new(),
            network,
            insecure,
            secrets: Vec::new(),
            mounts: Vec::new(),
            key: None,
        };
        assert!(remotable(&step(Network::Default, false)));
        assert!(remotable(&step(Network::None, false)));
        assert!(!remotable(&step(Network::Host, false)));
        assert!(!remotable(&step(Network::Default, true)));
    }

    /// What a worker sends back is what the client commits: a snapshot survives the trip through its
    /// tar (the step's upper dir → `upper.tar` → the client's upper dir) with every kind of entry an
    /// upper dir holds, and tars again to the same bytes.
    #[test]
    fn a_snapshot_round_trips_through_its_tar() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::create_dir_all(a.join("app/bin")).unwrap();
        std::fs::write(a.join("app/tool"), b"#!/bin/sh\n").unwrap();
        // chown clears setuid, so it goes first.
        std::os::unix::fs::lchown(a.join("app/tool"), Some(1000), Some(1001)).unwrap();
        std::fs::set_permissions(a.join("app/tool"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        xattr::set(a.join("app/tool"), "user.note", b"kept").unwrap();
        std::fs::hard_link(a.join("app/tool"), a.join("app/bin/same")).unwrap();
        symlink("tool", a.join("app/link")).unwrap();
        mknod(&a.join("gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        std::fs::create_dir(a.join("opaque")).unwrap();
        xattr::set(a.join("opaque"), "trusted.overlay.opaque", b"y").unwrap();
        let first = tar_snapshot(&a, &tmp.path().join("a.tar")).unwrap();
        crate::layer::unpack_layer(
            std::fs::File::open(tmp.path().join("a.tar")).unwrap(),
            &b,
            crate::exec::userns::layer_ids(),
        )
        .unwrap();
        let second = tar_snapshot(&b, &tmp.path().join("b.tar")).unwrap();
        assert_eq!(first, second);
        let meta = std::fs::symlink_metadata(b.join("app/tool")).unwrap();
        assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (0o4755, 1000, 1001)
        );
        assert_eq!(
            meta.ino(),
            std::fs::metadata(b.join("app/bin/same")).unwrap().ino()
        );
        assert_eq!(
            std::fs::symlink_metadata(b.join("gone")).unwrap().rdev(),
            0,
            "the whiteout is a 0/0 device again"
        );
        assert!(crate::layer::is_opaque(&b.join("opaque")).unwrap());
        assert_eq!(
            std::fs::symlink_metadata(a.join("app")).unwrap().mtime(),
            std::fs::symlink_metadata(b.join("app")).unwrap().mtime()
        );
    }

    #[test]
    fn addresses_and_key_actions() {
        assert_eq!(
            parse_url("grpc://10.0.0.1:8980").unwrap(),
            "http://10.0.0.1:8980"
        );
        assert_eq!(
            parse_url("grpc://[::1]:8980/").unwrap(),
            "http://[::1]:8980"
        );
        for bad in [
            "10.0.0.1:8980",
            "grpc://host",
            "grpc://:1",
            "grpc://h:99999",
            "grpc://h:1/x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let k1 = crate::digest::Digest::of(b"one");
        let k2 = crate::digest::Digest::of(b"two");
        assert_eq!(key_action(&k1).0, key_action(&k1).0);
        assert_ne!(key_action(&k1).0, key_action(&k2).0);
    }
}
