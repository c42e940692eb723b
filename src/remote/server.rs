//! A REAPI server as kiln uses it: the CAS (batch calls and ByteStream), the ActionCache and Execute.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use bazel_remote_apis::google::longrunning::operation;
use futures_util::StreamExt as _;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;
use tonic::transport::{Channel, Endpoint};

use crate::diag::{Diagnostic, Result};

/// Blobs up to this size go in batch calls; larger ones are streamed over ByteStream.
const BATCH_LIMIT: usize = 1 << 20;
const CHUNK: usize = 1 << 20;
/// A REAPI server: the address (for messages) and the instance name.
#[derive(Clone)]
pub(crate) struct Server {
    pub url: String,
    pub instance: String,
    pub(super) channel: Channel,
}

/// Parses `grpc://HOST:PORT` (REAPI's plaintext scheme, as in Bazel's `--remote_executor`).
pub(crate) fn parse_url(url: &str) -> std::result::Result<String, String> {
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
    pub(crate) fn new(url: &str, instance: &str) -> Result<Server> {
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

    pub(super) fn error(&self, what: &str, s: tonic::Status) -> Diagnostic {
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
    pub(crate) async fn check(&self) -> Result<()> {
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

    pub(crate) async fn find_missing(&self, digests: Vec<re::Digest>) -> Result<Vec<re::Digest>> {
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

    pub(crate) async fn upload_bytes(&self, digest: &re::Digest, data: Vec<u8>) -> Result<()> {
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

    pub(crate) async fn upload_file(&self, digest: &re::Digest, path: &Path) -> Result<()> {
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
    pub(crate) async fn read_bytes(&self, digest: &re::Digest) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_into(digest, &mut out).await?;
        Ok(out)
    }

    /// Streams a blob into `out`, checking its digest.
    pub(crate) async fn read_into<W: Write>(&self, digest: &re::Digest, out: &mut W) -> Result<()> {
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

    pub(crate) async fn get_action_result(
        &self,
        action: &re::Digest,
    ) -> Result<Option<re::ActionResult>> {
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

    pub(crate) async fn update_action_result(
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
    pub(crate) async fn execute(&self, action: &re::Digest) -> Result<re::ExecuteResponse> {
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
