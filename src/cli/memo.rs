//! `kiln build`'s memo of a no-op build. A build that ran no step, left nothing but its results in the
//! store (and the names it keeps images under) and was given nothing a memo could not check
//! (`BuildRequest::only_stores`) writes, in the store, what it read (each path's stat data as it was
//! read: source files, the directories a `//...` pattern listed, every entry of the contexts its steps
//! copy from, the OCI layouts of its bases, the store's records of its names: `inputs`) and what it
//! showed (its progress events and notes). The same command line, run again from the same directory by
//! the same kiln, finds the memo, stats those paths, and when none changed shows the same thing without
//! compiling or solving anything: a cached build of a monorepo of 10,000 targets reads one file and
//! stats its packages, where it would evaluate them all and read every step's record. Any change, or
//! any doubt, is a full build (which writes a new memo).
//!
//! Not memoised: a build that fetches something each time (a registry tag, a download, a git source),
//! whose command line reads the environment (`--build-arg NAME`), or whose Dockerfile comes from stdin.
//! `kiln prune` removes every memo before it removes results; a memo older than an hour is not used
//! either, so the full build it stands for refreshes the records' last-use times prune goes by.
//!
//! A context file COPY read whose stat data changed while its type, mode and size did not (touched, or
//! rewritten with the same bytes) is read again and compared with the digest COPY's cache key held:
//! the same content is no change to the build (`still_holds`).
//!
//! A build given secrets is memoised without them: no cache key holds a secret's value (so an edited
//! secret changes no image) and the memo records neither a value nor its file's stat data. What does
//! depend on the values, the leak guard and the warnings about them, is done again each time the memo
//! is used: the secrets are read and the images the build made searched for them (`Guarded`); one
//! found is a full build, which refuses the image. Nothing a secret's value could be found in (the
//! events, the notes, the paths read) is written into a memo.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::args::BuildCmd;
use super::command_line::CommandLine;
use crate::digest::Encoder;
use crate::graph::NamedContext;
use crate::graph::op::Op;
use crate::inputs::Input;
use crate::pipeline::BuildRequest;
use crate::progress::{self, Event};
use crate::secret::{LeakScanner, SecretStore};
use crate::store::{Access, Store};

/// How long a memo answers for its build (see the module's comment).
const FRESH: Duration = Duration::from_secs(3600);

#[derive(Serialize, Deserialize)]
struct Memo {
    inputs: Vec<Input>,
    /// `Shown`, encoded: decoded only once every input is found unchanged (a memo of thousands of
    /// steps is mostly events, and a build whose memo no longer holds should not pay for them).
    #[serde(with = "serde_bytes")]
    shown: Vec<u8>,
    /// The content digests of the context files the build's COPY steps read (`Contents`, encoded:
    /// decoded only when some input changed).
    #[serde(with = "serde_bytes")]
    contents: Vec<u8>,
    /// For a build given secrets, the images its leak guard searched, to be searched again for the
    /// secrets' values as they are each time the memo is used.
    guarded: Option<Vec<Guarded>>,
}

/// Context files by path, each with the digest of what the build read of it.
type Contents = Vec<(PathBuf, [u8; 32])>;

/// How many changed files a memo may check by content, and how many bytes it may read for it: a file
/// touched, or rewritten with what it held, is no change to a COPY (its cache key holds contents, not
/// times), and a few such files are cheaper to read than a build is to run; a checkout that touched
/// the whole tree is a full build (whose memo then holds the new stat data).
const MOST_REREAD: usize = 64;
const MOST_REREAD_BYTES: u64 = 64 << 20;

/// An image a build given secrets made: its own layers' snapshots and its config (JSON), what the
/// build's leak guard searches (`export::guard`).
#[derive(Serialize, Deserialize)]
struct Guarded {
    layers: Vec<String>,
    config: String,
}

#[derive(Serialize, Deserialize)]
struct Shown {
    /// What compiling wrote to stderr (notes, warnings), then the build's progress events.
    stderr: String,
    events: Vec<Event>,
}

/// The memo file of a command line, when a build so asked may have one.
pub(super) fn path(cmd: &BuildCmd) -> Option<PathBuf> {
    // `--build-arg NAME` takes its value from the environment, which no memo records; a run asked for
    // evaluation statistics wants an evaluation.
    if cmd.compile.build_args.iter().any(|a| !a.contains('='))
        || std::env::var_os("KILN_EVAL_STATS").is_some()
    {
        return None;
    }
    let cwd = std::env::current_dir().ok()?;
    let mut key = Encoder::new("kiln/build-memo/v2");
    key.str(&crate::load::kiln_identity())
        .str(&nix::unistd::geteuid().to_string())
        .str(&cwd.to_string_lossy())
        .str(&std::env::var("SOURCE_DATE_EPOCH").unwrap_or_default());
    for arg in std::env::args_os().skip(1) {
        key.str(&arg.to_string_lossy());
    }
    Some(Store::memo_path(&store_root(cmd), &key.finish()))
}

fn store_root(cmd: &BuildCmd) -> PathBuf {
    cmd.store.clone().unwrap_or_else(Store::default_root)
}

/// Shows the memo at `path` when nothing it read has changed (and, for a build given secrets, no image
/// it made holds one's value as it is now); whether it did.
pub(super) fn replay(path: &Path, cmd: &BuildCmd, cl: &CommandLine, mode: progress::Mode) -> bool {
    let Some(memo) = read(path) else {
        return false;
    };
    // The store's next open removes what a crash may have cost (`store::unsynced`): the build that
    // opens it finds what is left.
    if crate::store::unsynced::unconfirmed_of_an_earlier_boot(&store_root(cmd))
        || !still_holds(&memo)
    {
        return false;
    }
    let secrets = match &memo.guarded {
        Some(images) => match guard_again(path, images, cmd, cl) {
            Some(secrets) => Some(secrets),
            None => return false,
        },
        None if cmd.secrets.is_empty() => None,
        None => return false,
    };
    let Ok(shown) = rmp_serde::from_slice::<Shown>(&memo.shown) else {
        return false;
    };
    progress::stderr(&shown.stderr);
    let reporter = progress::reporter(mode);
    let notes = secrets.as_ref().map(crate::pipeline::secret_notes);
    for note in notes.into_iter().flatten() {
        reporter.event(Event::Note(note));
    }
    for e in shown.events {
        reporter.event(e);
    }
    reporter.event(Event::Note(format!(
        "nothing this build reads changed since it last ran ({} paths checked): its steps were not looked up again",
        memo.inputs.len()
    )));
    reporter.finish();
    true
}

/// Whether every input looks as it did, or is a context file whose content is still what the build
/// read.
fn still_holds(memo: &Memo) -> bool {
    // Only a file a walk found can be excused: any other change (a source file read, a directory)
    // ends the check at once.
    let Some(changed) = crate::inputs::changed(&memo.inputs, MOST_REREAD, Input::walked_file)
    else {
        return false;
    };
    if changed.is_empty() {
        return true;
    }
    let Ok(contents) = rmp_serde::from_slice::<Contents>(&memo.contents) else {
        return false;
    };
    let contents: std::collections::HashMap<&Path, &[u8; 32]> =
        contents.iter().map(|(p, d)| (p.as_path(), d)).collect();
    let mut budget = MOST_REREAD_BYTES;
    changed.into_iter().all(|i| {
        let input = &memo.inputs[i];
        contents
            .get(input.path.as_path())
            .is_some_and(|digest| same_content(input, digest, &mut budget))
    })
}

/// Whether the file `input` names is still a regular file of the same mode and size whose content has
/// `digest`, read within `budget` bytes.
fn same_content(input: &Input, digest: &[u8; 32], budget: &mut u64) -> bool {
    let Ok(mut file) = std::fs::File::open(&input.path) else {
        return false;
    };
    // Of the link itself for an entry of a walk: a file replaced by a link is a change.
    let now = if input.follow {
        file.metadata()
    } else {
        std::fs::symlink_metadata(&input.path)
    };
    let Ok(now) = now else {
        return false;
    };
    if !input.same_kind(&now) || now.len() > *budget {
        return false;
    }
    *budget -= now.len();
    crate::solve::statcache::content_digest(&mut file).is_ok_and(|d| d == *digest)
}

/// The secrets `cmd` names, read now, when no image in `images` holds any of their values; `None` (a full
/// build, which says why) when one does, or a secret cannot be read.
fn guard_again(
    path: &Path,
    images: &[Guarded],
    cmd: &BuildCmd,
    cl: &CommandLine,
) -> Option<SecretStore> {
    let mut secrets = SecretStore::default();
    for s in &cmd.secrets {
        let (id, source) = super::flags::parse_secret(cl, s).ok()?;
        secrets.insert(id, source);
    }
    let scanner = crate::solve::all_secrets(&secrets).ok()?;
    // Shared, as a build holds it: no prune removes a snapshot while it is searched.
    let store = Store::open(&store_root(cmd), Access::Shared).ok()?;
    for image in images {
        let config = serde_json::from_str(&image.config).ok()?;
        if !matches!(
            crate::export::guard(&store, &image.layers, &config, &scanner),
            Ok(None)
        ) {
            // The full build refuses the image: this memo must not stand for it again.
            let _ = std::fs::remove_file(path);
            return None;
        }
    }
    Some(secrets)
}

fn read(path: &Path) -> Option<Memo> {
    let meta = std::fs::metadata(path).ok()?;
    if meta
        .modified()
        .ok()?
        .elapsed()
        .map_or(true, |age| age > FRESH)
    {
        return None;
    }
    rmp_serde::from_slice(&std::fs::read(path).ok()?).ok()
}

/// A build that may leave a memo: what it reads is being recorded.
pub(super) struct Recording {
    path: PathBuf,
    /// When recording started (seconds since the epoch): see `inputs::settled`.
    started: i64,
    transcript: progress::Transcript,
    /// The contexts the build's steps read (a directory and its `.dockerignore` patterns).
    trees: Vec<(PathBuf, Vec<String>)>,
    /// For a build given secrets.
    secrets: Option<Secrets>,
}

/// What a memo of a build given secrets needs: its images (`Guarded`), what its leak guard looks for
/// (the memo must hold none of it) and its notes about the secrets (shown anew when the memo is used).
struct Secrets {
    roots: Vec<petgraph::stable_graph::NodeIndex>,
    scanner: LeakScanner,
    notes: Vec<String>,
}

impl Recording {
    /// Starts recording what the build reads and writes to stderr.
    pub(super) fn start(path: PathBuf) -> Recording {
        crate::inputs::start();
        progress::keep_stderr(true);
        Recording {
            path,
            started: crate::inputs::epoch_secs(),
            transcript: Default::default(),
            trees: Vec::new(),
            secrets: None,
        }
    }

    /// Keeps recording if `request`, as compiled, may be memoised: notes the contexts its steps read
    /// (their entries are recorded as COPY walks them, or at the end: `record_trees`) and asks for its
    /// progress events.
    pub(super) fn keep_for(mut self, request: &mut BuildRequest) -> Option<Recording> {
        if !request.only_stores() {
            return None;
        }
        self.trees = sources(request)?;
        if request.secrets.ids().next().is_some() {
            self.secrets = Some(Secrets {
                roots: request.graph.roots.iter().map(|(_, n)| *n).collect(),
                scanner: crate::solve::all_secrets(&request.secrets).ok()?,
                notes: crate::pipeline::secret_notes(&request.secrets),
            });
        }
        crate::inputs::want_trees(&self.trees);
        // The names the images are kept under: one changed by anything else is given back by a build.
        let declared = request.graph.tags.values().flatten();
        for name in request.tags.iter().chain(declared) {
            crate::inputs::file(&request.store.name_path(name));
        }
        request.transcript = Some(self.transcript.clone());
        Some(self)
    }

    /// After the build: writes the memo if no step ran and every input was settled before it started.
    pub(super) fn finish(self, summary: &crate::solve::Summary) {
        let stderr = progress::keep_stderr(false).unwrap_or_default();
        // What makes a memo impossible is seen before the contexts are walked for one.
        if summary.executed != 0 || !crate::inputs::settled_so_far(self.started - 1) {
            return;
        }
        let mut events =
            std::mem::take(&mut *self.transcript.lock().unwrap_or_else(|p| p.into_inner()));
        if events
            .iter()
            .any(|e| !matches!(e, Event::Cached(_) | Event::Note(_) | Event::Summary { .. }))
        {
            return;
        }
        if let Some(s) = &self.secrets {
            events.retain(|e| !matches!(e, Event::Note(n) if s.notes.contains(n)));
        }
        let guarded = match &self.secrets {
            Some(s) => match guarded(s, summary) {
                Some(images) => Some(images),
                None => return,
            },
            None => None,
        };
        if !record_trees(&self.trees) {
            return;
        }
        let mut contents = crate::inputs::take_contents();
        let Some(inputs) = crate::inputs::stop() else {
            return;
        };
        contents.sort_unstable();
        contents.dedup();
        if !crate::inputs::settled(&inputs, self.started - 1) {
            return;
        }
        let shown = Shown { stderr, events };
        if let Some(s) = &self.secrets
            && holds_a_secret(&s.scanner, &inputs, &shown, guarded.as_deref())
        {
            return;
        }
        let Ok(shown) = rmp_serde::to_vec(&shown) else {
            return;
        };
        let Ok(contents) = rmp_serde::to_vec(&contents) else {
            return;
        };
        let memo = Memo {
            inputs,
            shown,
            contents,
            guarded,
        };
        // A memo is only ever a shortcut: one that cannot be written is no error.
        if let Ok(bytes) = rmp_serde::to_vec(&memo)
            && let Some(dir) = self.path.parent()
            && std::fs::create_dir_all(dir).is_ok()
        {
            let _ = crate::store::atomic_write(&self.path, &bytes);
            sweep(dir);
        }
    }
}

/// The images a build given secrets made, as its leak guard searched them.
fn guarded(secrets: &Secrets, summary: &crate::solve::Summary) -> Option<Vec<Guarded>> {
    let images = secrets
        .roots
        .iter()
        .filter_map(|root| match summary.outputs.get(root) {
            Some(crate::solve::Output::Image { layers, config }) => Some((layers, config)),
            _ => None,
        });
    images
        .map(|(layers, config)| {
            Some(Guarded {
                layers: crate::export::guarded_layers(layers).cloned().collect(),
                config: serde_json::to_string(config.get()).ok()?,
            })
        })
        .collect()
}

/// Whether anything a memo would hold holds a secret's value, in any encoding the leak guard knows.
fn holds_a_secret(
    scanner: &LeakScanner,
    inputs: &[Input],
    shown: &Shown,
    guarded: Option<&[Guarded]>,
) -> bool {
    let Ok(doc) = serde_json::to_value((inputs, shown, guarded)) else {
        return true;
    };
    crate::export::scan_json(scanner, &doc).is_some()
}

/// The contexts `request`'s graph reads, or `None` when it reads a source no memo can check.
fn sources(request: &BuildRequest) -> Option<Vec<(PathBuf, Vec<String>)>> {
    let mut trees = std::collections::BTreeSet::new();
    for n in request.graph.dag.node_indices() {
        match &request.graph.dag[n].op {
            // Fetched again by every build (a tag may move) or not from the host at all.
            Op::Remote { .. } => return None,
            Op::Image { reference, .. }
                if !reference.starts_with("oci-layout://") && !reference.contains("@sha256:") =>
            {
                return None;
            }
            Op::Context { name, excludes } => match request.contexts.get(name) {
                Some(NamedContext::Dir(dir)) => {
                    trees.insert((dir.clone(), excludes.clone()));
                }
                Some(NamedContext::Image(_)) => {}
                None => return None,
            },
            _ => {}
        }
    }
    Some(trees.into_iter().collect())
}

/// Records every entry of the contexts no COPY walked whole during the build; false when one cannot
/// be. Walked after the build read them: a file changed since is newer than the build's start, and no
/// memo is written (`inputs::settled`).
fn record_trees(trees: &[(PathBuf, Vec<String>)]) -> bool {
    let left: Vec<_> = (trees.iter())
        .filter(|(dir, excludes)| !crate::inputs::tree_recorded(dir, excludes))
        .collect();
    // A few contexts are each walked on every core; a monorepo's thousands, one per core.
    let many = left.len() >= crate::layer::cores(0);
    let jobs = if many { 0 } else { 1 };
    crate::layer::parallel_map(&left, jobs, |(dir, excludes)| {
        record_tree(dir, excludes, !many)
    })
    .into_iter()
    .all(|recorded| recorded)
}

/// A recording dropped unfinished (the build failed, or may not be memoised) stops with no memo.
impl Drop for Recording {
    fn drop(&mut self) {
        progress::keep_stderr(false);
        crate::inputs::abandon();
    }
}

/// Removes the memos too old to be used (other command lines'), so they do not pile up in the store.
fn sweep(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > FRESH);
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Records every entry of the context `dir` (less what its `.dockerignore` hides), as COPY's selection
/// walks it: an added, removed or edited file changes an entry or its directory.
fn record_tree(dir: &Path, excludes: &[String], on_every_core: bool) -> bool {
    // A context named through a link is walked where it leads (as COPY reads it); the link's target,
    // recorded through it, changes if the link is pointed elsewhere.
    let real = match dir.symlink_metadata() {
        // The walk records the directory itself.
        Ok(m) if m.is_dir() => dir.to_path_buf(),
        _ => {
            crate::inputs::file(dir);
            match std::fs::canonicalize(dir) {
                Ok(real) => real,
                Err(_) => return false,
            }
        }
    };
    let host = crate::solve::context::HostDir {
        path: real.clone(),
        excludes: excludes.to_vec(),
    };
    let Ok(tree) = host.tree() else {
        return false;
    };
    if on_every_core {
        let Ok(walked) = tree.entries_with_meta(&real) else {
            return false;
        };
        walked
            .iter()
            .for_each(|w| crate::inputs::entry(&w.path, &w.meta));
        return true;
    }
    let Ok(entries) = tree.entries(&real) else {
        return false;
    };
    entries.iter().all(|e| match e.metadata() {
        Ok(meta) => {
            crate::inputs::entry(e.path(), &meta);
            true
        }
        Err(_) => false,
    })
}
