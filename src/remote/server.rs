//! A REAPI server as kiln uses it: the CAS (batch calls and ByteStream) and the ActionCache (Execute is
//! in `operation.rs`).

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream as bs;
use futures_util::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncReadExt as _;

use super::connect::{Connect, Transport};

use crate::diag::{Diagnostic, Result};

/// Blobs up to this size go in batch calls; larger ones are streamed over ByteStream.
const BATCH_LIMIT: usize = 1 << 20;
const CHUNK: usize = 1 << 20;
/// A REAPI server: the address (for messages) and the instance name.
#[derive(Clone)]
pub(crate) struct Server {
    pub url: String,
    pub instance: String,
    pub(super) channel: Transport,
    auth: super::connect::Auth,
    /// How it was set up, and how its TLS options are spelled (`--remote-tls-` or `--tls-`), to explain
    /// a refused link.
    connect: Connect,
    flags: String,
}

impl Server {
    /// A lazily connected channel: nothing is dialled until the first call (`check` makes one). `flags`
    /// is how the TLS options are spelled where they were given (`--remote-tls-` or `--tls-`).
    pub(crate) fn new(url: &str, instance: &str, connect: &Connect, flags: &str) -> Result<Server> {
        let (channel, auth) = connect.channel(url, flags)?;
        Ok(Server {
            url: url.to_string(),
            instance: instance.to_string(),
            channel,
            auth,
            connect: connect.clone(),
            flags: flags.to_string(),
        })
    }

    pub(super) fn error(&self, what: &str, s: tonic::Status) -> Diagnostic {
        let closed = || {
            (self.url.starts_with("grpcs://"))
                .then(|| super::connect::closed_reason(&self.connect, &s, &self.flags))
                .flatten()
        };
        if let Some((why, hint)) = super::connect::security_reason(&s, &self.flags).or_else(closed)
        {
            return Diagnostic::env(format!("remote {what} failed at {}: {why}", self.url))
                .help(hint);
        }
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

    /// The same server over a new connection, with the same headers (a credential helper's latest
    /// included): for a call made on another runtime than the one this connection lives on, which may
    /// be shutting down (cancelling a dropped step's operation).
    pub(crate) fn reconnect(&self) -> Result<Server> {
        let server = Server::new(&self.url, &self.instance, &self.connect, &self.flags)?;
        server.renew_headers(self.auth.renewed());
        Ok(server)
    }

    /// Replaces the headers a credential helper gave (kept apart from `--remote-header`'s) for the
    /// calls from now on.
    pub(crate) fn renew_headers(&self, headers: Vec<super::Header>) {
        self.auth.renew(headers);
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
    ) -> re::content_addressable_storage_client::ContentAddressableStorageClient<Transport> {
        re::content_addressable_storage_client::ContentAddressableStorageClient::new(
            self.channel.clone(),
        )
    }

    fn bytestream(&self) -> bs::byte_stream_client::ByteStreamClient<Transport> {
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
