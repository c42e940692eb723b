//! SSH agent forwarding: a per-step socket that relays connections to an agent on the host, or that kiln
//! answers itself with keys loaded from `--ssh id=KEYFILE` (a minimal agent: list identities, sign).
//!
//! The step never sees the host's agent path or any key: it gets a fresh socket (with the mount's mode and
//! owner) inside its own work directory, and the socket stops answering when the step ends.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

use crate::diag::{Diagnostic, Result};
use crate::secret::SshSource;

/// A running relay; dropping it stops accepting and closes the socket.
pub struct Proxy {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Proxy {
    /// Listens at `path` and relays every connection to the agent at `agent`, or answers it with keys.
    pub fn start(path: &Path, agent: &SshSource, mode: u32, owner: (u32, u32)) -> Result<Proxy> {
        let fail = |e| {
            Diagnostic::io(
                format!("cannot create the ssh agent socket {}", path.display()),
                e,
            )
        };
        let listener = UnixListener::bind(path).map_err(fail)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
        std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1)).map_err(fail)?;
        let agent = agent.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let agent = agent.clone();
                tokio::spawn(async move {
                    match agent {
                        SshSource::Socket(path) => {
                            if let Ok(mut upstream) = UnixStream::connect(&path).await {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                            }
                        }
                        SshSource::Keys(keys) => {
                            let _ = serve(&mut client, &keys).await;
                        }
                    }
                });
            }
        });
        Ok(Proxy {
            task,
            path: path.to_path_buf(),
        })
    }
}

// The SSH agent protocol (draft-miller-ssh-agent): u32-length-framed messages, strings u32-prefixed.
const FAILURE: u8 = 5;
const REQUEST_IDENTITIES: u8 = 11;
const IDENTITIES_ANSWER: u8 = 12;
const SIGN_REQUEST: u8 = 13;
const SIGN_RESPONSE: u8 = 14;

/// Answers one client until it hangs up: identities and signatures, nothing else (no key can be added,
/// removed or exported through this socket).
async fn serve(client: &mut UnixStream, keys: &[ssh_key::PrivateKey]) -> std::io::Result<()> {
    loop {
        let len = match client.read_u32().await {
            Ok(n) => n as usize,
            Err(_) => return Ok(()),
        };
        if len > 256 * 1024 {
            return Ok(());
        }
        let mut msg = vec![0u8; len];
        client.read_exact(&mut msg).await?;
        let reply = answer(&msg, keys).unwrap_or_else(|| vec![FAILURE]);
        client.write_u32(reply.len() as u32).await?;
        client.write_all(&reply).await?;
    }
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take_string<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let s = buf.get(4..4 + len)?;
    *buf = &buf[4 + len..];
    Some(s)
}

fn answer(msg: &[u8], keys: &[ssh_key::PrivateKey]) -> Option<Vec<u8>> {
    use signature::Signer as _;
    use ssh_encoding::Encode as _;
    match *msg.first()? {
        REQUEST_IDENTITIES => {
            let mut out = vec![IDENTITIES_ANSWER];
            out.extend_from_slice(&(keys.len() as u32).to_be_bytes());
            for key in keys {
                put_string(&mut out, &key.public_key().to_bytes().ok()?);
                put_string(&mut out, key.comment().as_bytes());
            }
            Some(out)
        }
        SIGN_REQUEST => {
            let mut rest = &msg[1..];
            let blob = take_string(&mut rest)?;
            let data = take_string(&mut rest)?;
            let key = keys
                .iter()
                .find(|k| k.public_key().to_bytes().is_ok_and(|b| b == blob))?;
            let sig: ssh_key::Signature = key.try_sign(data).ok()?;
            let mut encoded = Vec::new();
            sig.encode(&mut encoded).ok()?;
            let mut out = vec![SIGN_RESPONSE];
            put_string(&mut out, &encoded);
            Some(out)
        }
        _ => None,
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}
