//! `ADD <url>`: the file fetched by kiln's own HTTP client, stored by digest, and offered to the COPY that
//! consumes it as a one-file directory, as BuildKit's HTTP source does: named by the URL's path, mode 0600,
//! `Last-Modified` as its mtime, redirects followed, never unpacked.
//!
//! Caching. The node's key is the content: its SHA-256, the file's name and its `Last-Modified`, never the
//! URL, so an unchanged download keys the steps below it exactly as before (they hit) and a changed one
//! re-runs them. Without `--checksum` the content is only known by asking the server: as BuildKit's HTTP
//! source does, the store remembers the last download of each URL with its `ETag`, and the next build
//! sends `If-None-Match`; a `304 Not Modified` reuses the stored blob without downloading it again. When
//! the server gave no ETag but a `Last-Modified`, kiln sends `If-Modified-Since` (BuildKit only revalidates
//! by ETag and downloads such a file again). With `--checksum` the content is known beforehand: once a
//! download has matched it, later builds take the stored blob and fetch nothing.
//!
//! Credentials. A URL's userinfo goes to the server as HTTP basic auth (as Go's client sends it), but the
//! URL is only ever shown through `remote::redacted`, and no key holds it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures_util::StreamExt;
use petgraph::stable_graph::NodeIndex;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use super::Executor;
use super::context::HostDir;
use super::key::CACHE_DOMAIN;
use super::schedule::{Output, Shared};
use crate::diag::{Diagnostic, Result};
use crate::digest::{Digest, Encoder};
use crate::graph::remote::{self, Checksum, RemoteKind};
use crate::progress::{Event, Vertex};
use crate::store::Store;

/// A download as the store keeps it: its blob and the time the server gave it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Fetched {
    blob: Digest,
    /// `Last-Modified` in seconds since the epoch; `None` when the server sent none.
    modified: Option<u64>,
}

/// The last download of a URL and what the server said identifies it, for a conditional request.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Validated {
    etag: Option<String>,
    /// `Last-Modified` as the server wrote it.
    last_modified: Option<String>,
    fetched: Fetched,
}

impl<E: Executor> Shared<E> {
    /// An `ADD <url>` source: fetched (or, pinned by a checksum already matched, taken from the store)
    /// and laid out as the one-file directory the consuming COPY selects from.
    pub(super) async fn remote_node(
        &self,
        n: NodeIndex,
        url: &str,
        checksum: Option<&str>,
    ) -> Result<(Digest, Output, Option<bool>)> {
        if remote::kind(url) != Some(RemoteKind::Http) {
            return Err(self.located(n, super::preflight::remote_unsupported(url)));
        }
        let want = checksum
            .map(Checksum::parse)
            .transpose()
            .map_err(|e| self.located(n, Diagnostic::input(format!("invalid --checksum: {e}"))))?;
        let name = remote::file_name(url);
        let vertex = Vertex {
            id: self.next_id(),
            name: self.graph.dag[n].name.clone(),
            digest: self.graph.dag[n].digest.to_string(),
            at: self.at(n).map(|a| a.to_string()),
        };
        let pin = want.as_ref().map(|c| pin_path(&self.store, url, c));
        let known = pin
            .as_deref()
            .filter(|_| !self.opts.no_cache)
            .and_then(|p| pinned(&self.store, p));
        let fetched = match known {
            Some(f) => {
                self.reporter.event(Event::Cached(vertex));
                f
            }
            None => {
                let id = vertex.id;
                let started = Instant::now();
                self.reporter.event(Event::Started(vertex));
                // A checksum pins the content itself; a revalidated older download must not stand in.
                let prior = (want.is_none() && !self.opts.no_cache)
                    .then(|| validated(&self.store, url))
                    .flatten();
                match fetch(&self.store, url, want.as_ref(), prior).await {
                    Ok(f) => {
                        self.reporter.event(Event::Done {
                            id,
                            elapsed: started.elapsed(),
                        });
                        if let Some(p) = &pin
                            && std::fs::create_dir_all(p.parent().expect("under the store")).is_ok()
                        {
                            // Losing the pin only costs a later build one more fetch.
                            let bytes =
                                serde_json::to_vec(&f).expect("a download record serializes");
                            let _ = crate::store::atomic_write(p, &bytes);
                        }
                        f
                    }
                    Err(d) => {
                        self.reporter.event(Event::Failed {
                            id,
                            elapsed: started.elapsed(),
                            message: d.to_string(),
                        });
                        return Err(self.located(n, d));
                    }
                }
            }
        };
        let dir = lay_out(&self.store, &name, &fetched).map_err(|d| self.located(n, d))?;
        self.resolve(
            n,
            super::Resolved::Download {
                url: remote::redacted(url),
                blob: fetched.blob.clone(),
            },
        );
        let mut key = Encoder::new(CACHE_DOMAIN);
        key.str("remote").str(&name).digest(&fetched.blob);
        key.u64(fetched.modified.map_or(0, |m| m + 1));
        let dir = HostDir {
            path: dir,
            excludes: Vec::new(),
        };
        Ok((key.finish(), Output::Dir(dir), None))
    }
}

/// Where the store remembers that a pinned URL's download matched its checksum: keyed by the URL without
/// its userinfo and the checksum, so no credential names a file.
fn pin_path(store: &Store, url: &str, want: &Checksum) -> PathBuf {
    let mut e = Encoder::new("kiln/remote-pin/v1");
    e.str(&remote::keyed(url)).str(&want.to_string());
    store
        .root()
        .join("remote")
        .join(format!("{}.json", e.finish().hex()))
}

/// Where the store remembers a URL's last download and its validators: keyed by the URL without its
/// userinfo, so no credential names a file.
fn validator_path(store: &Store, url: &str) -> PathBuf {
    let mut e = Encoder::new("kiln/remote-validator/v1");
    e.str(&remote::keyed(url));
    store
        .root()
        .join("remote")
        .join(format!("{}.json", e.finish().hex()))
}

/// The last download of `url`, when the store still holds its blob and the server gave a validator.
fn validated(store: &Store, url: &str) -> Option<Validated> {
    let v: Validated =
        serde_json::from_slice(&std::fs::read(validator_path(store, url)).ok()?).ok()?;
    (store.blob_path(&v.fetched.blob).is_file() && (v.etag.is_some() || v.last_modified.is_some()))
        .then_some(v)
}

/// Remembers a download's validators; losing them only costs a later build one full download.
fn remember(store: &Store, url: &str, v: &Validated) {
    let path = validator_path(store, url);
    if std::fs::create_dir_all(path.parent().expect("under the store")).is_ok() {
        let bytes = serde_json::to_vec(v).expect("a download record serializes");
        let _ = crate::store::atomic_write(&path, &bytes);
    }
}

/// A pinned download the store still holds, blob included.
fn pinned(store: &Store, pin: &Path) -> Option<Fetched> {
    let f: Fetched = serde_json::from_slice(&std::fs::read(pin).ok()?).ok()?;
    store.blob_path(&f.blob).is_file().then_some(f)
}

/// GETs `url` (redirects followed), streams the body into the store's blobs while hashing it, and checks
/// it against `want`; with a `prior` download, asks the server first whether it changed, and reuses it on
/// a `304`. Errors name the URL redacted and never carry reqwest's own text of it.
async fn fetch(
    store: &Store,
    url: &str,
    want: Option<&Checksum>,
    prior: Option<Validated>,
) -> Result<Fetched> {
    let shown = remote::redacted(url);
    crate::registry::install_crypto();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(10))
        .connect_timeout(Duration::from_secs(30))
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Diagnostic::env(format!("cannot set up an HTTP client: {}", chain(e))))?;
    let failed = |e: reqwest::Error| {
        Diagnostic::build(format!("cannot fetch `{shown}`: {}", chain(e)))
            .help("check the URL and that its host is reachable from this machine")
    };
    let mut request = client.get(url);
    if let Some(p) = &prior {
        request = match (&p.etag, &p.last_modified) {
            (Some(etag), _) => request.header(reqwest::header::IF_NONE_MATCH, etag),
            (None, Some(date)) => request.header(reqwest::header::IF_MODIFIED_SINCE, date),
            (None, None) => request,
        };
    }
    let resp = request.send().await.map_err(failed)?;
    let status = resp.status();
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let etag = header(reqwest::header::ETAG);
    if status == reqwest::StatusCode::NOT_MODIFIED
        && let Some(p) = prior
    {
        // A 304 naming another ETag than the one asked about is not about the stored download.
        if etag.is_none() || etag == p.etag {
            return Ok(p.fetched);
        }
        return Err(Diagnostic::build(format!(
            "cannot fetch `{shown}`: the server answered 304 Not Modified for an ETag kiln did not send"
        ))
        .help("retry with --no-cache, which downloads the file without asking the server"));
    }
    let last_modified = header(reqwest::header::LAST_MODIFIED);
    if !status.is_success() {
        return Err(Diagnostic::build(format!(
            "cannot fetch `{shown}`: the server answered HTTP {status}"
        ))
        .help("check the URL; ADD fetches it with a plain GET"));
    }
    let modified = resp
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let tmp = store.temp_dir("fetch-")?;
    let part = tmp.path().join("body");
    let io = |e| Diagnostic::io(format!("cannot store the download of `{shown}`"), e);
    let mut file = tokio::fs::File::create(&part).await.map_err(io)?;
    let mut hashes = Hashes::new(want.map(|c| c.algorithm));
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(failed)?;
        hashes.update(&chunk);
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.sync_all().await.map_err(io)?;
    drop(file);
    let (blob, pinned) = hashes.finish();
    if let (Some(want), Some(got)) = (want, pinned)
        && got != want.hex
    {
        return Err(Diagnostic::build(format!(
            "checksum mismatch for `{shown}`: expected {want}, got {}:{got}",
            want.algorithm
        ))
        .help("the server sent other content than --checksum (or, for a --locked build, kiln.lock) pins; check the URL, or update the checksum (`kiln lock --update URL`) if the new content is trusted"));
    }
    if !store.blob_path(&blob).is_file() {
        store.adopt_blob(&part, &blob)?;
    }
    let fetched = Fetched { blob, modified };
    if want.is_none() && (etag.is_some() || last_modified.is_some()) {
        let v = Validated {
            etag,
            last_modified,
            fetched: fetched.clone(),
        };
        remember(store, url, &v);
    }
    Ok(fetched)
}

/// The store's SHA-256 of a download, and the digest `--checksum` asks for when it is another algorithm.
struct Hashes {
    blob: sha2::Sha256,
    other: Option<Box<dyn sha2::digest::DynDigest + Send>>,
    same: bool,
}

impl Hashes {
    fn new(algorithm: Option<&str>) -> Hashes {
        let other: Option<Box<dyn sha2::digest::DynDigest + Send>> = match algorithm {
            Some("sha384") => Some(Box::new(sha2::Sha384::new())),
            Some("sha512") => Some(Box::new(sha2::Sha512::new())),
            _ => None,
        };
        Hashes {
            blob: sha2::Sha256::new(),
            other,
            same: algorithm == Some("sha256"),
        }
    }
    fn update(&mut self, bytes: &[u8]) {
        self.blob.update(bytes);
        if let Some(o) = &mut self.other {
            o.update(bytes);
        }
    }
    /// The blob digest, and the hex of the pinned algorithm's digest when one was asked for.
    fn finish(self) -> (Digest, Option<String>) {
        let blob = Digest::from_hasher(self.blob);
        let pinned = match self.other {
            Some(o) => Some(hex::encode(o.finalize())),
            None if self.same => Some(blob.hex().to_string()),
            None => None,
        };
        (blob, pinned)
    }
}

/// The one-file directory a COPY selects a download from: `<name>` holding the blob's bytes, mode 0600
/// (BuildKit's for HTTP sources; `--chmod` changes it in the COPY), `Last-Modified` as its mtime (else the
/// epoch, as in BuildKit). Named by
/// what it holds, so every build that fetched the same thing shares it (and its stat cache).
fn lay_out(store: &Store, name: &str, f: &Fetched) -> Result<PathBuf> {
    let mut e = Encoder::new("kiln/remote-dir/v1");
    e.str(name)
        .digest(&f.blob)
        .u64(f.modified.map_or(0, |m| m + 1));
    let dir = store
        .root()
        .join("tmp")
        .join(format!("remote-{}", e.finish().hex()));
    if dir.join(name).is_file() {
        return Ok(dir);
    }
    let write = || -> std::io::Result<()> {
        let staging = tempfile::Builder::new()
            .prefix("remote-")
            .tempdir_in(store.root().join("tmp"))?;
        let file = staging.path().join(name);
        std::fs::copy(store.blob_path(&f.blob), &file)?;
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        // Without `Last-Modified`, BuildKit dates the file at the epoch, never at the download.
        let t = UNIX_EPOCH + Duration::from_secs(f.modified.unwrap_or(0));
        std::fs::File::options()
            .write(true)
            .open(&file)?
            .set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))?;
        let staging = staging.keep();
        if std::fs::rename(&staging, &dir).is_err() {
            // Another build laid out the same download meanwhile.
            let _ = std::fs::remove_dir_all(&staging);
        }
        Ok(())
    };
    write().map_err(|e| Diagnostic::io("cannot lay out a downloaded file", e))?;
    Ok(dir)
}

/// reqwest's top-level message hides the cause; the whole chain, without the URL reqwest would print.
fn chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
