//! `--load`: an image streamed as a docker-archive into a Docker Engine (or podman's Docker-compatible
//! service) through `POST /images/load` on its unix socket, written while it is sent, never to a file.
//!
//! The socket is chosen as the docker CLI chooses it: `DOCKER_HOST`, else the current docker context
//! (`DOCKER_CONTEXT`, else `currentContext` in `config.json`), else `/var/run/docker.sock`.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Frame;
use sha2::Digest as _;

use super::Image;
use crate::diag::{Diagnostic, Result};
use crate::store::Store;

/// The socket docker uses when nothing chooses another.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// How much of the archive is handed to the connection at once.
const CHUNK: usize = 256 * 1024;

/// A daemon's API socket, and what chose it (shown in errors, so a user knows what to change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub socket: PathBuf,
    pub chosen_by: String,
}

/// The endpoint the docker CLI would talk to. Only unix sockets are spoken; any other host is an error
/// that says how to name a socket.
pub fn endpoint() -> Result<Endpoint> {
    if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        return from_host(&host, "DOCKER_HOST");
    }
    let config_dir = docker_config_dir();
    let context = std::env::var("DOCKER_CONTEXT")
        .ok()
        .filter(|c| !c.is_empty())
        .map(|c| (c, "DOCKER_CONTEXT".to_string()))
        .or_else(|| {
            let path = config_dir.join("config.json");
            let config: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
            let name = config["currentContext"].as_str()?.to_string();
            Some((name, format!("currentContext in {}", path.display())))
        });
    match context {
        Some((name, by)) if name != "default" => context_endpoint(&config_dir, &name, &by),
        _ => Ok(Endpoint {
            socket: PathBuf::from(DEFAULT_SOCKET),
            chosen_by: "the default (neither DOCKER_HOST nor a docker context is set)".into(),
        }),
    }
}

/// `$DOCKER_CONFIG`, else `~/.docker`.
fn docker_config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".docker")
}

/// A context's docker endpoint, from `contexts/meta/<sha256 of its name>/meta.json` as the CLI stores it.
fn context_endpoint(config_dir: &Path, name: &str, by: &str) -> Result<Endpoint> {
    let hex = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    let meta = config_dir.join("contexts/meta").join(hex).join("meta.json");
    let missing = || {
        Diagnostic::env(format!(
            "the docker context `{name}` (from {by}) has no docker endpoint in {}",
            meta.display()
        ))
        .help("create it with `docker context create`, or choose a daemon with DOCKER_HOST=unix:///PATH/docker.sock")
    };
    let bytes = std::fs::read(&meta).map_err(|_| missing())?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| missing())?;
    let host = json["Endpoints"]["docker"]["Host"]
        .as_str()
        .ok_or_else(missing)?;
    from_host(host, &format!("the docker context `{name}` (from {by})"))
}

fn from_host(host: &str, by: &str) -> Result<Endpoint> {
    match host.strip_prefix("unix://") {
        Some(path) if !path.is_empty() => Ok(Endpoint {
            socket: PathBuf::from(path),
            chosen_by: by.to_string(),
        }),
        _ => Err(Diagnostic::env(format!(
            "{by} names the daemon `{host}`, but --load talks to a daemon through a unix socket only"
        ))
        .help("point DOCKER_HOST at the daemon's socket: DOCKER_HOST=unix:///var/run/docker.sock (podman: `podman system service unix:///PATH`)")),
    }
}

/// Checks that something answers on the endpoint's socket, so a build that cannot be loaded fails
/// before it runs a step (buildx also asks the daemon first).
pub fn check(endpoint: &Endpoint) -> Result<()> {
    std::os::unix::net::UnixStream::connect(&endpoint.socket)
        .map(drop)
        .map_err(|e| no_daemon(endpoint, e))
}

/// What the daemon said it loaded (`Loaded image: NAME`, or `Loaded image ID: ...` for an unnamed image).
pub struct Loaded {
    pub messages: Vec<String>,
}

/// Streams `image` as a docker-archive into the daemon at `endpoint`, tagged with `names`.
pub fn load(
    store: &Store,
    image: &Image,
    names: &[&str],
    epoch: Option<i64>,
    endpoint: &Endpoint,
) -> Result<Loaded> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Diagnostic::io("cannot start the loader", e))?;
    let socket = &endpoint.socket;
    let stream = runtime
        .block_on(tokio::net::UnixStream::connect(socket))
        .map_err(|e| no_daemon(endpoint, e))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Frame<Bytes>>>(4);
    let body = http_body_util::StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|frame| (frame, rx))
    }));
    std::thread::scope(|scope| {
        // The archive is written on a thread of its own while the connection sends what it has made:
        // the image is never whole in memory or on disk.
        let writer = scope.spawn(move || {
            let mut out = std::io::BufWriter::with_capacity(CHUNK, Channel { tx: tx.clone() });
            let written = super::docker::write_archive(store, image, names, epoch, &mut out)
                .and_then(|()| out.flush());
            if let Err(e) = &written {
                let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
            }
            written
        });
        let answer = runtime.block_on(send(stream, body));
        let written = writer.join().expect("the archive writer does not panic");
        let cannot_write = |e| Diagnostic::io("cannot write the image for the daemon", e);
        let ((status, answer), written) = match (answer, written) {
            (Ok(answer), written) => (answer, written),
            // The request broke because the archive could not be made: that is the cause to show.
            (Err(_), Err(e)) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                return Err(cannot_write(e));
            }
            (Err(e), _) => {
                return Err(Diagnostic::env(format!(
                    "loading into the daemon at {} failed: {e}",
                    socket.display()
                )));
            }
        };
        // The daemon's own word comes first: when it refuses the archive, writing it fails too.
        let messages = daemon_messages(&answer, endpoint)?;
        if !status.is_success() {
            return Err(Diagnostic::env(format!(
                "the daemon at {} refused the image ({status}): {}",
                socket.display(),
                messages.join("; ")
            )));
        }
        written.map_err(cannot_write)?;
        Ok(Loaded { messages })
    })
}

/// One request: the archive as a chunked body; the whole answer (a few JSON lines) read back.
async fn send<B>(
    stream: tokio::net::UnixStream,
    body: B,
) -> std::result::Result<(hyper::StatusCode, Bytes), String>
where
    B: hyper::body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driving = tokio::spawn(connection);
    let request = hyper::Request::post("/images/load?quiet=1")
        .header(hyper::header::HOST, "docker")
        .header(hyper::header::CONTENT_TYPE, "application/x-tar")
        .body(body)
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    // The answer is whole. A daemon that answered before the archive was (a refusal) may keep the
    // connection open; dropping it ends the body too, so the archive writer stops instead of waiting.
    driving.abort();
    Ok((status, answer))
}

/// The daemon's answer: JSON objects, each a `stream` line, an `error` (the load failed) or, for a
/// refused request, a `message`.
fn daemon_messages(answer: &[u8], endpoint: &Endpoint) -> Result<Vec<String>> {
    let mut messages = Vec::new();
    for value in serde_json::Deserializer::from_slice(answer).into_iter::<serde_json::Value>() {
        let Ok(value) = value else {
            messages.push(String::from_utf8_lossy(answer).trim().to_string());
            break;
        };
        if let Some(error) = value["error"].as_str() {
            return Err(Diagnostic::env(format!(
                "the daemon at {} could not load the image: {}",
                endpoint.socket.display(),
                error.trim()
            )));
        }
        for key in ["stream", "message"] {
            if let Some(text) = value[key].as_str().map(str::trim).filter(|t| !t.is_empty()) {
                messages.push(text.to_string());
            }
        }
    }
    Ok(messages)
}

fn no_daemon(endpoint: &Endpoint, e: std::io::Error) -> Diagnostic {
    let socket = endpoint.socket.display();
    Diagnostic::env(format!(
        "--load: no Docker Engine answers on {socket} (chosen by {}): {e}",
        endpoint.chosen_by
    ))
    .help("start dockerd, or choose the daemon's socket with DOCKER_HOST=unix:///PATH/docker.sock (podman: run `podman system service --time=0 unix:///PATH/podman.sock` and point DOCKER_HOST at it); or write a file instead: `-o type=docker,dest=image.tar`")
}

/// The archive's bytes, handed to the connection a buffer at a time (the `BufWriter` above makes them
/// `CHUNK`s); a connection that went away is a broken pipe.
struct Channel {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Frame<Bytes>>>,
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(Frame::data(Bytes::copy_from_slice(buf))))
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the daemon closed the connection",
                )
            })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_other_than_unix_sockets_are_refused_with_a_hint() {
        let e = from_host("tcp://127.0.0.1:2375", "DOCKER_HOST").unwrap_err();
        assert!(e.message.contains("unix socket only"), "{}", e.message);
        assert!(e.help.unwrap().contains("DOCKER_HOST=unix://"));
        let ok = from_host("unix:///run/x.sock", "DOCKER_HOST").unwrap();
        assert_eq!(ok.socket, PathBuf::from("/run/x.sock"));
    }

    #[test]
    fn the_daemons_error_is_shown() {
        let endpoint = Endpoint {
            socket: "/s".into(),
            chosen_by: "test".into(),
        };
        let ok = br#"{"stream":"Loaded image: a:1\n"}"#;
        assert_eq!(
            daemon_messages(ok, &endpoint).unwrap(),
            ["Loaded image: a:1"]
        );
        let bad = br#"{"errorDetail":{"message":"unexpected EOF"},"error":"unexpected EOF"}"#;
        let e = daemon_messages(bad, &endpoint).unwrap_err();
        assert!(
            e.message
                .ends_with("could not load the image: unexpected EOF"),
            "{}",
            e.message
        );
    }
}
