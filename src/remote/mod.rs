//! Remote execution and caching over the Remote Execution API v2 (REAPI): an `Executor` that
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
//! bind, tmpfs) runs locally, so no secret value ever enters an Action, a Command or the CAS. With
//! `--remote-secrets=allow` a step whose only mounts are secrets and SSH agents runs remotely, its
//! values sent out of band to the worker that leased it over mutual TLS, and its agent connections
//! relayed back over the same channel (`secrets`); `step.json` names only their ids.

use std::io::{self, Write};
use std::path::Path;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::graph::op::Network;

pub(crate) mod bots;
mod connect;
mod executor;
mod layers;
mod operation;
pub(crate) mod secrets;
mod server;
mod session;
#[cfg(test)]
mod tests;
pub(crate) mod worker;

pub(crate) use connect::{Connect, Header, parse_url};
pub(crate) use executor::{Mode, Options, Remote};
pub(crate) use server::Server;
pub(crate) use session::Stop;

/// The name of the step's description in the input root.
pub(crate) const STEP_FILE: &str = "step.json";
/// The one output path: the step's changes as a layer tar.
pub(crate) const OUTPUT: &str = "upper.tar";

/// What a remote step runs: everything a Command cannot carry exactly (REAPI wants the environment
/// sorted, and has no user or network mode).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct StepSpec {
    pub version: u32,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub network: String,
    /// Version 2 only: the secret mounts (ids and options, never a value), where the worker fetches
    /// their values, and the nonce that names this one execution there. Absent from version 1, so the
    /// digests of steps without secrets are unchanged, and a worker that knows only version 1 refuses a
    /// step it could not run as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::graph::op::SecretMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Version 2 only: the SSH agents the step mounts (never a key): each connection the step makes to
    /// one is relayed to the build's agent through the same endpoint, under the same nonce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh: Vec<SshSpec>,
}

/// An SSH agent mount of a remote step: the `--ssh` id, and the socket's place, mode and owner.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct SshSpec {
    pub id: String,
    pub target: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

pub(crate) fn digest_of(bytes: &[u8]) -> re::Digest {
    re::Digest {
        hash: hex::encode(Sha256::digest(bytes)),
        size_bytes: bytes.len() as i64,
    }
}

pub(crate) fn message_blob<M: prost::Message>(m: &M) -> (re::Digest, Vec<u8>) {
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
pub(crate) fn tar_snapshot(snapshot: &Path, file: &Path) -> io::Result<re::Digest> {
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

pub(super) fn network_name(n: Network) -> &'static str {
    match n {
        Network::Default => "default",
        Network::None => "none",
        Network::Host => "host",
    }
}

pub(crate) fn network_from_name(s: &str) -> Option<Network> {
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
pub(super) fn key_action(key: &crate::digest::Digest) -> (re::Digest, Vec<(re::Digest, Vec<u8>)>) {
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
