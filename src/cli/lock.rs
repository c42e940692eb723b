//! `kiln lock`: resolves every registry base image of what the command line names (each platform it is
//! built for) to its manifest digest and writes them to `kiln.lock`; `kiln build --locked` then builds
//! only with those. Entries the lock already holds are kept unless `--update` asks again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::args::{CompileArgs, LockArgs};
use super::command_line::CommandLine;
use super::compile::{Mode, compile};
use crate::diag::{Diagnostic, Result, Span};
use crate::graph::op::Op;
use crate::graph::remote::{self, RemoteKind};
use crate::lock::{Commit, ImageKey, Lock, Pin};
use crate::platform::Platform;

/// Where the lock of a build lives: its context directory (the current one for monorepo labels).
pub(super) fn lock_path(args: &CompileArgs) -> PathBuf {
    let dir = args
        .inputs
        .first()
        .filter(|i| !i.starts_with("//") && !i.starts_with(':'))
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    dir.join(crate::lock::FILE_NAME)
}

/// `kiln build --locked`: the lock the build must follow; a build without one cannot be locked.
pub(super) fn read_for_build(args: &CompileArgs, cl: &CommandLine, flag: &str) -> Result<Lock> {
    let path = lock_path(args);
    Lock::read(&path)?.ok_or_else(|| {
        cl.error(
            flag,
            Span::default(),
            format!("{flag}, but there is no {}", path.display()),
        )
        .help("run `kiln lock` (with the same context, file and platforms) to write it")
    })
}

pub(super) fn run(args: LockArgs) -> Result<()> {
    let cl = CommandLine::capture();
    let registry = super::flags::registry_options(&cl, &args.insecure_registries, &args.mirrors)?;
    // Private git repositories are asked with what `kiln build` would clone them with.
    let mut secrets = crate::secret::SecretStore::default();
    for s in &args.secrets {
        let (id, source) = super::flags::parse_secret(&cl, s)?;
        secrets.insert(id, source);
    }
    let mut ssh = BTreeMap::new();
    for s in &args.ssh {
        let (id, socket) = super::flags::parse_ssh(&cl, s)?;
        ssh.insert(id, socket);
    }
    let compiled = compile(&args.compile, &cl, &Mode::Lenient)?;
    let path = lock_path(&args.compile);
    let dir = path.parent().unwrap_or(Path::new("."));
    let (used, first_use) = floating_images(&compiled.graph, dir);
    let downloads = floating_urls(&compiled.graph, dir, RemoteKind::Http);
    let repos = floating_urls(&compiled.graph, dir, RemoteKind::Git);
    if let Some(Some(name)) = &args.update
        && !used.keys().any(|k| &k.reference == name)
        && !downloads.contains_key(name)
        && !repos.contains_key(name)
    {
        return Err(cl
            .error(name, Span::default(), format!("`{name}` is no input of this build"))
            .help("give a base image reference or an ADD URL (git: with its #ref) as the build writes it (see kiln.lock), or no NAME to update all"));
    }
    let old = Lock::read(&path)?.unwrap_or_default();
    // Whether `--update` asks for the input named `name` again, rather than keeping the lock's.
    let asked = |name: &str| match &args.update {
        None => false,
        Some(None) => true,
        Some(Some(wanted)) => wanted == name,
    };
    let mut lock = Lock::default();
    for (key, used) in used {
        let kept = old.images.get(&key).filter(|_| !asked(&key.reference));
        let digest = match kept {
            Some(pin) => pin.digest.clone(),
            None => {
                let platform = Platform::parse(&key.platform).map_err(Diagnostic::input)?;
                let d = crate::registry::resolve_digest(&key.reference, &platform, &registry)
                    .map_err(|e| match first_use.get(&key) {
                        Some(at) => e.label(at.clone(), "this base image"),
                        None => e,
                    })?;
                if old.images.get(&key).is_none_or(|p| p.digest != d) {
                    crate::progress::stderr(&format!(
                        "locked {} ({}) at {d}\n",
                        key.reference, key.platform
                    ));
                }
                d
            }
        };
        lock.images.insert(key, Pin { digest, used });
    }
    for (url, Download { at, used, full }) in downloads {
        let digest = match old.urls.get(&url).filter(|_| !asked(&url)) {
            Some(pin) => pin.digest.clone(),
            None => {
                let d = download_digest(&full).map_err(|e| e.label(at, "this download"))?;
                if old.urls.get(&url).is_none_or(|p| p.digest != d) {
                    crate::progress::stderr(&format!("locked {} at {d}\n", remote::redacted(&url)));
                }
                d
            }
        };
        lock.urls.insert(url, Pin { digest, used });
    }
    for (url, Download { at, used, full }) in repos {
        let id = match old.gits.get(&url).filter(|_| !asked(&url)) {
            Some(c) => c.id.clone(),
            None => {
                let id = crate::solve::resolve_commit(&full, &secrets, ssh.get("default").cloned())
                    .map_err(|e| e.label(at, "this repository"))?;
                if old.gits.get(&url).is_none_or(|c| c.id != id) {
                    crate::progress::stderr(&format!(
                        "locked {} at {id}\n",
                        remote::redacted(&url)
                    ));
                }
                id
            }
        };
        lock.gits.insert(url, Commit { id, used });
    }
    lock.write(&path)
}

/// An `ADD <url>` download as `kiln lock` finds it in the graph.
struct Download {
    /// Its first use, which an error points at.
    at: crate::diag::Located,
    /// Where the source uses it, as the lock shows it.
    used: Vec<String>,
    /// The URL as written, credentials included: the lock's key has none, but the server may want them.
    full: String,
}

/// Every `ADD <url>` source of `kind` without a `--checksum` (for git, nor a commit as its ref), by its
/// URL as kiln shows it (no userinfo, query values `***`).
fn floating_urls(
    graph: &crate::graph::Dag,
    dir: &Path,
    kind: RemoteKind,
) -> BTreeMap<String, Download> {
    let mut found: BTreeMap<String, Download> = BTreeMap::new();
    for n in graph.dag.node_weights() {
        let Op::Remote {
            url,
            checksum: None,
            ..
        } = &n.op
        else {
            continue;
        };
        let Some(at) = n.at.as_ref().filter(|_| remote::kind(url) == Some(kind)) else {
            continue;
        };
        let reference = remote::GitRef::parse(url).reference;
        if kind == RemoteKind::Git && reference.is_some_and(|r| crate::lock::is_commit(&r)) {
            continue;
        }
        let place = place(at, dir);
        let entry = found
            .entry(remote::redacted(url))
            .or_insert_with(|| Download {
                at: at.clone(),
                used: Vec::new(),
                full: url.clone(),
            });
        if !entry.used.contains(&place) {
            entry.used.push(place);
            entry.used.sort();
        }
    }
    found
}

/// The SHA-256 of what `url` serves now (redirects followed, as `ADD` fetches it), streamed.
fn download_digest(url: &str) -> Result<crate::digest::Digest> {
    use futures_util::StreamExt as _;
    use sha2::Digest as _;
    let shown = remote::redacted(url);
    let failed = |e: reqwest::Error| {
        Diagnostic::env(format!("cannot fetch `{shown}`: {e}"))
            .help("check the URL and that its host is reachable from this machine")
    };
    crate::registry::install_crypto();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Diagnostic::io("cannot start the HTTP client", e))?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(10))
            .connect_timeout(std::time::Duration::from_secs(30))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(failed)?;
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| failed(e.without_url()))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Diagnostic::env(format!(
                "cannot fetch `{shown}`: the server answered HTTP {status}"
            ))
            .help("check the URL; ADD fetches it with a plain GET"));
        }
        let mut hasher = sha2::Sha256::new();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            hasher.update(&chunk.map_err(|e| failed(e.without_url()))?);
        }
        Ok(crate::digest::Digest::from_hasher(hasher))
    })
}

/// `Dockerfile:3`: a use as the lock shows it, relative to the lock's directory.
fn place(at: &crate::diag::Located, dir: &Path) -> String {
    // Front ends name files as they were reached (relative to the working directory, or absolute).
    let name = super::absolute(Path::new(&at.file.name));
    let dir = super::absolute(dir);
    let name = name.strip_prefix(&dir).unwrap_or(&name).display();
    let (line, _) = at.file.line_col(at.span.start);
    format!("{name}:{line}")
}

/// Where each image is used, as the lock shows it (`Dockerfile:2`), and its first use, which an error
/// points at.
type Uses = (
    BTreeMap<ImageKey, Vec<String>>,
    BTreeMap<ImageKey, crate::diag::Located>,
);

/// Every registry base image the graph imports, per platform, with where the source names it. Images
/// pinned by digest, local layouts and `scratch` do not float.
fn floating_images(graph: &crate::graph::Dag, dir: &Path) -> Uses {
    let mut used: BTreeMap<ImageKey, Vec<String>> = BTreeMap::new();
    let mut first_use = BTreeMap::new();
    for n in graph.dag.node_weights() {
        let Op::Image {
            reference,
            platform,
        } = &n.op
        else {
            continue;
        };
        if reference == "scratch"
            || reference.starts_with("oci-layout://")
            || reference.contains('@')
        {
            continue;
        }
        let platform = platform
            .as_deref()
            .and_then(|p| Platform::parse(p).ok())
            .unwrap_or_else(Platform::amd64);
        let key = ImageKey {
            reference: reference.clone(),
            platform: platform.to_string(),
        };
        let uses = used.entry(key.clone()).or_default();
        if let Some(at) = &n.at {
            first_use.entry(key).or_insert_with(|| at.clone());
            let place = place(at, dir);
            if !uses.contains(&place) {
                uses.push(place);
            }
        }
    }
    for uses in used.values_mut() {
        uses.sort();
    }
    (used, first_use)
}
