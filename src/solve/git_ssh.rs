//! `ADD <git url>` over SSH: an in-process SSH client (russh) that authenticates with the build's `default`
//! agent (`--ssh default`, as BuildKit's Dockerfile frontend forwards for git sources), checks the host key
//! against the user's `known_hosts`, runs `git-upload-pack` on the server and hands gix the channel as its
//! transport.
//!
//! Why in process rather than gix's own ssh transport, which runs the system `ssh` client: solving starts
//! no process (only `exec` does), a spawned `ssh` would read the user's ssh configuration (ProxyCommand,
//! IdentityFile, ControlMaster) unless every option were locked down, and its failures come back as text on
//! stderr, where an unknown host key, a refused key and an unreachable host cannot be told apart reliably.
//! russh exposes each of those as a value, so each becomes its own error with its own hint.
//!
//! Host keys. BuildKit's client fills in known hosts with an `ssh-keyscan` of a `git@host:` URL's host at
//! build time (trust on first use), and for `ssh://` URLs runs ssh with `StrictHostKeyChecking=no`; kiln
//! never trusts a host it has not been told about: the key must be in `~/.ssh/known_hosts` or
//! `/etc/ssh/ssh_known_hosts`, else the clone fails naming the key's fingerprint.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::diag::{Diagnostic, Result};
use crate::secret::SshSource;

/// Where a server's host key is looked up, in order.
fn known_hosts_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".ssh/known_hosts"));
    }
    files.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
    files
}

/// An SSH remote as gix parsed it: who to log in as, where, and the repository's path on the server.
pub(super) struct Remote {
    pub(super) user: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) path: String,
}

impl Remote {
    /// `git@host:path` (scp-like) or `ssh://[user@]host[:port]/path`. Without a user, OpenSSH logs in as
    /// the local user; kiln does the same.
    pub(super) fn parse(url: &str) -> std::result::Result<Remote, String> {
        let u = gix::url::parse(gix::bstr::BStr::new(url)).map_err(|e| e.to_string())?;
        if u.scheme != gix::url::Scheme::Ssh {
            return Err("not an SSH URL".into());
        }
        let host = u.host().ok_or("the URL names no host")?.to_string();
        let user = match u.user() {
            Some(user) => user.to_string(),
            None => std::env::var("USER").unwrap_or_else(|_| "root".into()),
        };
        let mut path = u.path.to_string();
        // `ssh://host/~user/repo` means a path relative to a home directory, as git sends it.
        if path.starts_with("/~") {
            path.remove(0);
        }
        Ok(Remote {
            user,
            host,
            port: u.port.unwrap_or(22),
            path,
        })
    }

    fn shown(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The host key check, whose verdict is kept so the error can say which check failed.
struct Checker {
    host: String,
    port: u16,
    verdict: Arc<Mutex<Option<Diagnostic>>>,
}

impl russh::client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.verdict.lock().expect("verdict") = Some(Diagnostic::build(format!(
                "`{}` presented a host certificate, which kiln does not check",
                self.host
            )));
            return Ok(false);
        };
        let verdict = check_host_key(&self.host, self.port, key);
        let ok = verdict.is_ok();
        *self.verdict.lock().expect("verdict") = verdict.err();
        Ok(ok)
    }
}

fn check_host_key(host: &str, port: u16, key: &PublicKey) -> Result<()> {
    let shown = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let fingerprint = key.fingerprint(HashAlg::Sha256);
    let files = known_hosts_files();
    for file in &files {
        if !file.is_file() {
            continue;
        }
        match russh::keys::check_known_hosts_path(host, port, key, file) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(russh::keys::Error::KeyChanged { line }) => {
                return Err(Diagnostic::build(format!(
                    "the host key of `{shown}` ({} {fingerprint}) differs from the one in {}:{line}",
                    key.algorithm(),
                    file.display()
                ))
                .help("someone may be intercepting the connection; if the server's key really changed, replace that line after checking the new fingerprint with the server's owner"));
            }
            Err(e) => {
                return Err(Diagnostic::build(format!(
                    "cannot read the known hosts in {}: {e}",
                    file.display()
                )));
            }
        }
    }
    Err(Diagnostic::build(format!(
        "the host key of `{shown}` is not known: {} {fingerprint}",
        key.algorithm()
    ))
    .help(format!(
        "kiln never trusts an SSH host on first use; check the fingerprint with the server's owner, then add the key to ~/.ssh/known_hosts (e.g. `ssh-keyscan {}{host} >> ~/.ssh/known_hosts`); looked in {}",
        if port == 22 { String::new() } else { format!("-p {port} ") },
        files
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    )))
}

/// Connects, checks the host key, authenticates with `agent` and starts `git-upload-pack` for the
/// repository; the result is a gix transport over that channel. Blocking: called from the clone's thread.
pub(super) fn connect(
    remote: &Remote,
    agent: &SshSource,
    url: &str,
) -> Result<Box<dyn gix::protocol::transport::client::blocking_io::Transport + Send>> {
    let rt = tokio::runtime::Handle::current();
    let (session, channel) = rt.block_on(open(remote, agent))?;
    let (read, write) = tokio::io::split(channel.into_stream());
    let read = Blocking {
        io: read,
        rt: rt.clone(),
        _session: Some(session),
    };
    let write = Blocking {
        io: write,
        rt,
        _session: None,
    };
    let connection = gix::protocol::transport::client::git::blocking_io::Connection::new(
        read,
        write,
        gix::protocol::transport::Protocol::V2,
        remote.path.as_str(),
        None::<(String, Option<u16>)>,
        gix::protocol::transport::client::git::ConnectMode::Process,
        false,
    )
    .custom_url(Some(url.into()));
    Ok(Box::new(connection))
}

type Session = russh::client::Handle<Checker>;

async fn open(
    remote: &Remote,
    agent: &SshSource,
) -> Result<(Session, russh::Channel<russh::client::Msg>)> {
    let shown = remote.shown();
    let verdict = Arc::new(Mutex::new(None));
    let checker = Checker {
        host: remote.host.clone(),
        port: remote.port,
        verdict: verdict.clone(),
    };
    let config = Arc::new(russh::client::Config {
        inactivity_timeout: Some(std::time::Duration::from_secs(300)),
        ..Default::default()
    });
    let connected = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        russh::client::connect(config, (remote.host.as_str(), remote.port), checker),
    )
    .await
    .unwrap_or_else(|_| Err(russh::Error::ConnectionTimeout));
    let mut session = match connected {
        Ok(s) => s,
        Err(e) => {
            if let Some(d) = verdict.lock().expect("verdict").take() {
                return Err(d);
            }
            return Err(Diagnostic::build(format!("cannot connect to `{shown}` over SSH: {e}"))
                .help("check the host and port of the repository URL and that its SSH server is reachable from this machine"));
        }
    };
    authenticate(&mut session, remote, agent).await?;
    let lost =
        |e: russh::Error| Diagnostic::build(format!("the SSH connection to `{shown}` failed: {e}"));
    let channel = session.channel_open_session().await.map_err(lost)?;
    // Servers that accept it (AcceptEnv GIT_PROTOCOL) answer in protocol v2; others in v0, which gix reads too.
    let _ = channel.set_env(false, "GIT_PROTOCOL", "version=2").await;
    channel
        .exec(
            false,
            format!("git-upload-pack {}", shell_quote(&remote.path)),
        )
        .await
        .map_err(lost)?;
    Ok((session, channel))
}

/// Offers the agent's keys one after the other, as ssh does; the first the server accepts logs in.
async fn authenticate(session: &mut Session, remote: &Remote, agent: &SshSource) -> Result<()> {
    let shown = remote.shown();
    let rsa_hash = session
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten();
    let failed = |e: &dyn std::fmt::Display| {
        Diagnostic::build(format!("SSH authentication to `{shown}` failed: {e}"))
    };
    let mut offered = 0;
    match agent {
        SshSource::Socket(socket) => {
            let mut client = AgentClient::connect_uds(socket).await.map_err(|e| {
                Diagnostic::build(format!("cannot reach the ssh agent `default`: {e}"))
                    .help("check that the agent given with --ssh default is running")
            })?;
            let identities = client.request_identities().await.map_err(|e| failed(&e))?;
            for id in identities {
                let key = id.public_key().into_owned();
                offered += 1;
                let done = session
                    .authenticate_publickey_with(&remote.user, key, rsa_hash, &mut client)
                    .await
                    .map_err(|e| failed(&e))?;
                if done.success() {
                    return Ok(());
                }
            }
        }
        SshSource::Keys(keys) => {
            for key in keys.iter() {
                // The ssh-key version kiln's agent holds differs from russh's: hand it over as OpenSSH text,
                // wiped when dropped.
                let pem = key
                    .to_openssh(ssh_key::LineEnding::LF)
                    .map_err(|e| failed(&e))?;
                let key = russh::keys::decode_secret_key(&pem, None).map_err(|e| failed(&e))?;
                offered += 1;
                let with_hash = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
                let done = session
                    .authenticate_publickey(&remote.user, with_hash)
                    .await
                    .map_err(|e| failed(&e))?;
                if done.success() {
                    return Ok(());
                }
            }
        }
    }
    Err(Diagnostic::build(format!(
        "`{shown}` refused every key of the ssh agent `default` ({offered} offered) for user `{}`",
        remote.user
    ))
    .help("give `--ssh default` an agent (or key file) holding a key the server accepts for this user"))
}

/// The path as one single-quoted shell word, as git quotes it for `git-upload-pack`.
fn shell_quote(path: &str) -> String {
    format!("'{}'", path.replace('\'', r"'\''"))
}

/// One half of the channel as the blocking reader or writer gix's transport wants; the reader keeps the
/// session alive for as long as gix holds the connection.
struct Blocking<T> {
    io: T,
    rt: tokio::runtime::Handle,
    _session: Option<Session>,
}

impl<T: tokio::io::AsyncRead + Unpin> Read for Blocking<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.rt.block_on(self.io.read(buf))
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> Write for Blocking<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.rt.block_on(self.io.write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.rt.block_on(self.io.flush())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_parse_as_git_reads_them() {
        let r = Remote::parse("git@example.com:org/repo.git").unwrap();
        assert_eq!(
            (r.user.as_str(), r.host.as_str(), r.port, r.path.as_str()),
            ("git", "example.com", 22, "org/repo.git")
        );
        let r = Remote::parse("ssh://git@127.0.0.1:2222/srv/repo.git").unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.path.as_str()),
            ("127.0.0.1", 2222, "/srv/repo.git")
        );
        let r = Remote::parse("ssh://git@h/~me/repo.git").unwrap();
        assert_eq!(r.path, "~me/repo.git");
        assert!(Remote::parse("https://h/r.git").is_err());
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
