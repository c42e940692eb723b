//! SSH agent forwarding: a per-step socket that relays connections to an agent on the host, or that kiln
//! answers itself with keys loaded from `--ssh id=KEYFILE` (a minimal agent); either way only listing
//! identities and signing pass (`secret::agent`).
//!
//! The step never sees the host's agent path or any key: it gets a fresh socket (with the mount's mode and
//! owner) inside its own work directory, and the socket stops answering when the step ends.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

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
                    let _ = crate::secret::agent::serve(&mut client, &agent).await;
                });
            }
        });
        Ok(Proxy {
            task,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}
