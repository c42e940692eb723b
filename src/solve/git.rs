//! `ADD <git url>`: the repository cloned by gix (kiln runs no `git`), checked out at the URL's ref (a
//! branch, a tag or a full commit id; the remote's HEAD without one), and offered to the COPY that consumes
//! it as a directory: the work tree, or the `:subdir` of it, without `.git` unless `--keep-git-dir`.
//!
//! Caching. Every build clones again (BuildKit asks the remote for the ref first; a clone is the simple
//! correct form of it). The node's key is the commit checked out, the subdirectory and `--keep-git-dir`,
//! never the URL, and the consuming COPY keys on the files themselves: a ref still at the same commit
//! re-runs nothing. With `--keep-git-dir` the `.git` directory's files (its index, its logs) differ from
//! clone to clone, so that COPY runs again, as the layer would differ too.
//!
//! Gix runs isolated: no global or system git configuration and no environment is read, so a build does
//! not depend on the machine's git setup, and credential helpers are not asked.
//!
//! Access, as BuildKit gives it. Over HTTP(S) the first of the secrets `GIT_AUTH_HEADER.<host>`,
//! `GIT_AUTH_TOKEN.<host>`, `GIT_AUTH_HEADER`, `GIT_AUTH_TOKEN` the build was given becomes the
//! `Authorization` header (a token as basic auth for `x-access-token`, a header as written); over SSH the
//! `default` agent (`--ssh default`) logs in (`git_ssh`). Neither enters a key, a log or an error.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use petgraph::stable_graph::NodeIndex;

use super::Executor;
use super::context::HostDir;
use super::git_ssh;
use super::git_submodule;
use super::key::CACHE_DOMAIN;
use super::schedule::{Output, Shared};
use crate::diag::{Diagnostic, Result};
use crate::digest::{Digest, Encoder};
use crate::graph::remote::{self, GitRef};
use crate::progress::{Event, Vertex};
use crate::secret::{SecretStore, SshSource};
use crate::store::Store;

/// How the clone may authenticate: an `Authorization` header for HTTP(S), an agent for SSH.
#[derive(Clone, Default)]
pub(super) struct Access {
    /// The whole `http.extraHeader` config value, `Authorization: ...`; wiped when dropped.
    pub(super) header: Option<zeroize::Zeroizing<String>>,
    pub(super) ssh: Option<SshSource>,
}

impl<E: Executor> Shared<E> {
    /// An `ADD <git url>` source: cloned off the async workers, reported as a step of its own.
    pub(super) async fn git_node(
        &self,
        n: NodeIndex,
        url: &str,
        checksum: Option<&str>,
        keep_git_dir: bool,
    ) -> Result<(Digest, Output, Option<bool>)> {
        let access = Access {
            header: auth_header(&self.secrets, url).map_err(|d| self.located(n, d))?,
            ssh: self.opts.ssh.get("default").cloned(),
        };
        let vertex = Vertex {
            id: self.next_id(),
            name: self.graph.dag[n].name.clone(),
            digest: self.graph.dag[n].digest.to_string(),
            at: self.at(n).map(|a| a.to_string()),
        };
        let id = vertex.id;
        let started = Instant::now();
        self.reporter.event(Event::Started(vertex));
        let store = self.store.clone();
        let url_shown = url;
        let url = url.to_string();
        let cloned =
            tokio::task::spawn_blocking(move || clone(&store, &url, keep_git_dir, &access))
                .await
                .map_err(|e| Diagnostic::env(format!("git clone task failed: {e}")))?;
        // `--checksum` on a git source pins the commit (current BuildKit): a full id or its prefix.
        let cloned = cloned.and_then(|c| match checksum {
            Some(want) if !c.1.starts_with(want) => Err(Diagnostic::build(format!(
                "checksum mismatch for `{}`: expected commit {want}, got {}",
                remote::redacted(url_shown),
                c.1
            ))
            .help("the ref points at another commit than --checksum (or, for a --locked build, kiln.lock) pins; `kiln lock --update URL` takes the new one")),
            _ => Ok(c),
        });
        let (dir, commit, subdir) = match cloned {
            Ok(c) => c,
            Err(d) => {
                self.reporter.event(Event::Failed {
                    id,
                    elapsed: started.elapsed(),
                    message: d.to_string(),
                });
                return Err(self.located(n, d));
            }
        };
        self.reporter.event(Event::Done {
            id,
            elapsed: started.elapsed(),
        });
        self.resolve(
            n,
            super::Resolved::Git {
                url: remote::redacted(url_shown),
                commit: commit.clone(),
            },
        );
        let mut key = Encoder::new(CACHE_DOMAIN);
        key.str("git")
            .str(&commit)
            .opt_str(subdir.as_deref())
            .bool(keep_git_dir);
        let path = match &subdir {
            Some(s) => dir.join(s),
            None => dir,
        };
        Ok((
            key.finish(),
            Output::Dir(HostDir {
                path,
                excludes: Vec::new(),
            }),
            None,
        ))
    }
}

/// Clones `url` into the store's `tmp/` and checks out its ref, then its submodules. Returns the
/// directory (named by the commit, so builds that check out the same commit share it and its stat cache),
/// the commit id and the subdirectory to take.
fn clone(
    store: &Store,
    url: &str,
    keep_git_dir: bool,
    access: &Access,
) -> Result<(PathBuf, String, Option<String>)> {
    let git = GitRef::parse(url);
    let shown = remote::redacted(url);
    let at = git
        .reference
        .as_deref()
        .map_or(String::new(), |r| format!(" at `{r}`"));
    crate::registry::install_crypto();
    let staging = store.temp_dir("git-")?;
    let work = staging.path().join("tree");
    let (commit, gitlinks) = fetch_tree(&git.repo, git.reference.as_deref(), &work, access)?;
    check_out(&git.repo, &work, gitlinks, access, keep_git_dir)?;
    let subdir = match &git.subdir {
        Some(s) => Some(subdirectory(&work, s).map_err(|e| {
            Diagnostic::build(format!("`{shown}`{at} has no directory `{s}`: {e}"))
                .help("after `#ref:` name a directory of the repository")
        })?),
        None => None,
    };
    if !keep_git_dir {
        std::fs::remove_dir_all(work.join(".git"))
            .map_err(|e| Diagnostic::io("cannot remove the clone's .git", e))?;
    }
    // `-sub`: checkouts made before submodules were checked out lack them, and must not be taken.
    let dir = store.root().join("tmp").join(format!(
        "git-{commit}-sub-{}",
        if keep_git_dir { "kept" } else { "tree" }
    ));
    publish(&work, &dir)?;
    Ok((dir, commit, subdir))
}

/// The commit `url`'s ref (`#ref`, else the remote's HEAD) names now, for `kiln lock`: fetched as `ADD`
/// fetches it (with the same `GIT_AUTH_*` secrets and `default` SSH agent), into a scratch directory
/// removed after.
pub(crate) fn resolve_commit(
    url: &str,
    secrets: &SecretStore,
    ssh: Option<SshSource>,
) -> Result<String> {
    crate::registry::install_crypto();
    let git = GitRef::parse(url);
    let scratch = tempfile::tempdir()
        .map_err(|e| Diagnostic::io("cannot make a directory to fetch into", e))?;
    let access = Access {
        header: auth_header(secrets, url)?,
        ssh,
    };
    let work = scratch.path().join("tree");
    let (commit, _) = fetch_tree(&git.repo, git.reference.as_deref(), &work, &access)?;
    Ok(commit)
}

/// Fetches `repo` at `reference` (a ref name, a full commit id, or the remote's HEAD) into `work` and
/// checks it out. Returns the commit and the submodules its tree records.
pub(super) fn fetch_tree(
    repo: &str,
    reference: Option<&str>,
    work: &Path,
    access: &Access,
) -> Result<(String, Vec<git_submodule::Gitlink>)> {
    let shown = remote::redacted(repo);
    let secret = access.header.as_ref().map(|h| h.as_str());
    let at = reference.map_or(String::new(), |r| format!(" at `{r}`"));
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        let text = scrub(&e.to_string(), repo, secret);
        let help = if text.contains("credentials") || text.contains("401") {
            if secret.is_some() {
                "the server refused the GIT_AUTH_HEADER/GIT_AUTH_TOKEN secret given; check its value and scope"
            } else {
                "the server asks for credentials: pass a token as BuildKit takes it, `--secret id=GIT_AUTH_TOKEN,env=VAR` (or `GIT_AUTH_TOKEN.<host>`, or a whole header as `GIT_AUTH_HEADER`)"
            }
        } else {
            "check the repository URL and that the ref (a branch, a tag or a full commit id) exists"
        };
        Diagnostic::build(format!("cannot {what} `{shown}`{at}: {text}")).help(help)
    };
    let interrupt = AtomicBool::new(false);
    let mut prepare = gix::clone::PrepareFetch::new(
        repo,
        work,
        gix::create::Kind::WithWorktree,
        gix::create::Options::default(),
        gix::open::Options::isolated(),
    )
    .map_err(|e| failed("clone", &e))?;
    if let Some(h) = &access.header {
        prepare = prepare.with_in_memory_config_overrides([h.as_str()]);
    }
    if let Ok(ssh) = git_ssh::Remote::parse(repo) {
        let agent = access.ssh.as_ref().ok_or_else(|| {
            Diagnostic::input(format!(
                "`{shown}` is fetched over SSH, which needs the ssh agent `default`"
            ))
            .help("pass `--ssh default` (the agent of $SSH_AUTH_SOCK) or `--ssh default=KEYFILE`")
        })?;
        let transport = git_ssh::connect(&ssh, agent, repo)?;
        let slot = std::sync::Mutex::new(Some(transport));
        // gix made a transport that would start `ssh` on first use; it is replaced before that use.
        prepare = prepare.configure_connection(move |c| {
            let t = slot.lock().expect("transport").take();
            *c.transport_mut() = t.ok_or(gix::error::message("one SSH connection per clone"))?;
            Ok(())
        });
    }
    prepare = match reference {
        Some(r) if r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()) => prepare
            .with_revision(Some(r))
            .map_err(|e| failed("clone", &e))?,
        Some(r) => prepare
            .with_ref_name(Some(r))
            .map_err(|e| failed("clone", &e))?,
        None => prepare,
    };
    let (mut checkout, _) = prepare
        .fetch_then_checkout(gix::progress::Discard, &interrupt)
        .map_err(|e| failed("fetch", &e))?;
    let (repo, _) = checkout
        .main_worktree(gix::progress::Discard, &interrupt)
        .map_err(|e| failed("check out", &e))?;
    let commit = repo
        .head_id()
        .map_err(|e| failed("check out", &e))?
        .to_string();
    let gitlinks = git_submodule::gitlinks(&repo).map_err(|e| {
        Diagnostic::build(format!("cannot read the submodules of `{shown}`{at}: {e}"))
            .help("the commit's .gitmodules must be a git config file naming each submodule's path and url")
    })?;
    Ok((commit, gitlinks))
}

/// The `#ref:subdir` directory, cleaned, and checked to be a directory of the checkout itself: a committed
/// symlink (`docs -> /etc`) must not hand the COPY a directory of the host.
fn subdirectory(work: &Path, subdir: &str) -> std::result::Result<String, String> {
    let inside = crate::solve::context::clean_relative(subdir)?;
    let top = work.canonicalize().map_err(|e| e.to_string())?;
    let real = work
        .join(&inside)
        .canonicalize()
        .map_err(|_| "not in the repository".to_string())?;
    if !real.starts_with(&top) || real.starts_with(top.join(".git")) || !real.is_dir() {
        return Err("not a directory of the repository".into());
    }
    Ok(real
        .strip_prefix(&top)
        .expect("checked")
        .to_string_lossy()
        .into_owned())
}

/// Moves a finished clone to its name; one made meanwhile by another build of the same commit wins
/// (keeping its stat cache valid), except a kept `.git`, which is per clone anyway.
fn publish(work: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        if dir.join(".git").exists() {
            let _ = std::fs::remove_dir_all(dir);
        } else {
            return Ok(());
        }
    }
    std::fs::rename(work, dir)
        .or_else(|e| if dir.exists() { Ok(()) } else { Err(e) })
        .map_err(|e| Diagnostic::io("cannot keep a git checkout", e))
}

/// The `Authorization` header BuildKit's git source sends over HTTP(S): from the first of its four
/// secrets the build was given. `None` for other transports, or when none was given.
fn auth_header(secrets: &SecretStore, url: &str) -> Result<Option<zeroize::Zeroizing<String>>> {
    let Ok(u) = url::Url::parse(&GitRef::parse(url).repo) else {
        return Ok(None);
    };
    if !matches!(u.scheme(), "http" | "https") {
        return Ok(None);
    }
    // Go's `url.Host`: the host with the port when the URL gives one.
    let host = match u.port() {
        Some(p) => format!("{}:{p}", u.host_str().unwrap_or("")),
        None => u.host_str().unwrap_or("").to_string(),
    };
    let names = [
        (format!("GIT_AUTH_HEADER.{host}"), false),
        (format!("GIT_AUTH_TOKEN.{host}"), true),
        ("GIT_AUTH_HEADER".to_string(), false),
        ("GIT_AUTH_TOKEN".to_string(), true),
    ];
    for (name, token) in names {
        let Some(value) = secrets.load(&name).map_err(Diagnostic::input)? else {
            continue;
        };
        // A secret file's final newline is no part of a header value.
        let raw = String::from_utf8_lossy(value.expose());
        let raw = zeroize::Zeroizing::new(raw.trim_end_matches(['\r', '\n']).to_string());
        let value = if token {
            use base64::Engine as _;
            let pair = zeroize::Zeroizing::new(format!("x-access-token:{}", raw.as_str()));
            zeroize::Zeroizing::new(format!(
                "basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
            ))
        } else {
            raw
        };
        return Ok(Some(zeroize::Zeroizing::new(format!(
            "http.extraHeader=Authorization: {}",
            value.as_str()
        ))));
    }
    Ok(None)
}

/// A git error's text without the URL's credentials or the auth header, which gix may quote.
fn scrub(text: &str, url: &str, header: Option<&str>) -> String {
    let mut text = text.to_string();
    if let Some(h) = header.and_then(|h| h.split_once(": ")).map(|(_, v)| v) {
        text = text.replace(h, "***");
    }
    if let Ok(u) = url::Url::parse(url) {
        if let Some(p) = u.password().filter(|p| !p.is_empty()) {
            text = text.replace(p, "***");
        }
        if !u.username().is_empty() {
            text = text.replace(u.username(), "***");
        }
    }
    text
}

/// Checks out the submodules: every gitlink of the superproject `parent` (checked out in `work`) into its path, then
/// theirs. Their `.git` stays only with `--keep-git-dir`.
fn check_out(
    parent: &str,
    work: &Path,
    links: Vec<git_submodule::Gitlink>,
    access: &Access,
    keep_git_dir: bool,
) -> Result<()> {
    nested(parent, work, links, access, keep_git_dir, 0)
}

fn nested(
    parent: &str,
    work: &Path,
    links: Vec<git_submodule::Gitlink>,
    access: &Access,
    keep_git_dir: bool,
    depth: usize,
) -> Result<()> {
    let shown = remote::redacted(parent);
    for link in links {
        let refused = |why: String| {
            Diagnostic::build(format!(
                "submodule `{}` of `{shown}`: {why}",
                link.path
            ))
            .help("a build may fetch submodules only from remote repositories (http(s)://, git://, ssh:// or user@host:path), never from the builder's filesystem or through a remote helper")
        };
        if depth >= git_submodule::MAX_DEPTH {
            return Err(refused(format!(
                "submodules nest deeper than {}",
                git_submodule::MAX_DEPTH
            )));
        }
        let url = git_submodule::resolve(parent, &link.url).map_err(refused)?;
        let dest = git_submodule::destination(work, &link.path).map_err(refused)?;
        let staging = tempfile::Builder::new()
            .prefix("submodule-")
            .tempdir_in(work.parent().expect("a checkout has a parent"))
            .map_err(|e| Diagnostic::io("cannot make a directory for a submodule", e))?;
        let sub_work = staging.path().join("tree");
        let sub_access = Access {
            header: access
                .header
                .clone()
                .filter(|_| url.starts_with(git_submodule::token_scope(parent))),
            ssh: access.ssh.clone(),
        };
        let (_, inner) = fetch_tree(&url, Some(&link.commit), &sub_work, &sub_access)?;
        nested(&url, &sub_work, inner, access, keep_git_dir, depth + 1)?;
        let io = |e| Diagnostic::io(format!("cannot check out submodule `{}`", link.path), e);
        if !keep_git_dir {
            std::fs::remove_dir_all(sub_work.join(".git")).map_err(io)?;
        }
        if dest.exists() {
            std::fs::remove_dir(&dest).map_err(io)?;
        } else if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).map_err(io)?;
        }
        std::fs::rename(&sub_work, &dest).map_err(io)?;
    }
    Ok(())
}
