//! `kiln build --watch`: builds, then rebuilds each time a file the build selects changes (its Dockerfile or
//! `.build` sources, a context's `.dockerignore`, the context files its COPY, ADD and bind mounts read),
//! until Ctrl-C. Only changed steps run again: the cache answers the rest. Files the build does not select
//! (ignored, or read by no step) and the build's own outputs never start one.

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::Watcher as _;

use super::args::BuildCmd;
use super::command_line::CommandLine;
use crate::diag::{Diagnostic, Result};
use crate::graph::op::{Op, RunMount};
use crate::graph::{Dag, NamedContext};
use crate::ignore::Patterns;
use crate::pipeline::BuildRequest;
use crate::progress;
use crate::solve::context::{clean_relative, select};

/// How long a burst of changes (an editor's save, a `git checkout`) must have been quiet before the
/// rebuild starts.
const QUIET: Duration = Duration::from_millis(300);

/// The exit code once Ctrl-C (130) or SIGTERM (143) came, 0 before: a build interrupted by either ends
/// the watch too.
static ENDED: AtomicI32 = AtomicI32::new(0);

enum Message {
    Changed(notify::Result<notify::Event>),
    Interrupt,
}

/// The context files one step reads: `patterns` in `dir`, less what `.dockerignore` (`ignore`) and the
/// step's `--exclude`s leave out.
struct Read {
    dir: PathBuf,
    ignore: Patterns,
    excludes: Patterns,
    patterns: Vec<String>,
}

/// What a build reads from disk.
#[derive(Default)]
struct Selection {
    /// Source files (Dockerfiles, `.build` files and their imports, `.dockerignore` files).
    sources: BTreeSet<PathBuf>,
    reads: Vec<Read>,
    /// Where the build writes: its writes there start no rebuild.
    outputs: Vec<PathBuf>,
}

/// `kiln build --watch`. Returns only on a failure to watch; Ctrl-C exits with 130, SIGTERM with 143.
pub(super) fn run(cmd: &BuildCmd) -> Result<()> {
    let cl = CommandLine::capture();
    // The watcher and the signal listener are threads: an unprivileged kiln must have entered its user
    // namespace before.
    crate::exec::userns::enter()?;
    let (tx, rx) = mpsc::channel();
    let changes = tx.clone();
    let mut watcher = notify::recommended_watcher(move |e| {
        let _ = changes.send(Message::Changed(e));
    })
    .map_err(|e| Diagnostic::env(format!("cannot watch files: {e}")))?;
    listen_for_interrupt(tx)?;
    let color = std::io::stderr().is_terminal();
    let mut watched = BTreeSet::new();
    for round in 1.. {
        let started = Instant::now();
        let mut selection = fallback(cmd);
        let result = BuildRequest::from_command(cmd, &cl).and_then(|req| {
            selection.add_request(&req);
            crate::build(req)
        });
        match result {
            Ok(_) => progress::stderr(&format!(
                "watch: build {round} done in {:.1}s\n",
                started.elapsed().as_secs_f64()
            )),
            Err(d) => {
                progress::stderr(&crate::diag::render(&d, color));
                progress::stderr(&format!("watch: build {round} failed\n"));
            }
        }
        watched = rewatch(&mut watcher, watched, &selection)?;
        progress::stderr(&format!(
            "watch: watching {} source files and {} context selections; Ctrl-C ends\n",
            selection.sources.len(),
            selection.reads.len()
        ));
        let changed = wait(&rx, &selection);
        progress::stderr(&format!(
            "watch: {} changed: rebuilding\n",
            changed.display()
        ));
    }
    Ok(())
}

/// Listens for Ctrl-C and SIGTERM on a thread of its own for the whole session: once a build has
/// caught them (its own listeners end the build they interrupt), nothing else would between builds.
fn listen_for_interrupt(tx: mpsc::Sender<Message>) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Diagnostic::io("cannot listen for Ctrl-C", e))?;
    let mut term = runtime
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        })
        .map_err(|e| Diagnostic::io("cannot listen for SIGTERM", e))?;
    std::thread::spawn(move || {
        runtime.block_on(async {
            loop {
                let code = tokio::select! {
                    r = tokio::signal::ctrl_c() => match r {
                        Ok(()) => 130,
                        Err(_) => return,
                    },
                    _ = term.recv() => 143,
                };
                ENDED.store(code, Ordering::SeqCst);
                let _ = tx.send(Message::Interrupt);
            }
        })
    });
    Ok(())
}

/// Ends kiln as the signal that came asks.
fn end() -> ! {
    std::process::exit(match ENDED.load(Ordering::SeqCst) {
        0 => 130,
        code => code,
    })
}

/// Waits for a change to a selected file, and for the burst it belongs to to end; returns the first such
/// file. Ends kiln on Ctrl-C or SIGTERM.
fn wait(rx: &mpsc::Receiver<Message>, selection: &Selection) -> PathBuf {
    let mut first = None;
    loop {
        let message = match first {
            None => rx.recv().ok(),
            Some(_) => match rx.recv_timeout(QUIET) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => return first.unwrap_or_default(),
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            },
        };
        match message {
            Some(Message::Changed(Ok(event))) if changes_content(&event.kind) => {
                if first.is_none() {
                    first = event.paths.into_iter().find(|p| selection.selects(p));
                }
            }
            Some(Message::Changed(_)) => {}
            Some(Message::Interrupt) | None => end(),
        }
        if ENDED.load(Ordering::SeqCst) != 0 {
            end();
        }
    }
}

/// Reading a file (as the build itself does) changes nothing.
fn changes_content(kind: &notify::EventKind) -> bool {
    !matches!(kind, notify::EventKind::Access(_))
}

/// Watches the directories `selection` needs (contexts as whole trees, the directories of source files,
/// since editors replace a file rather than write it) and stops watching the others.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    old: BTreeSet<(PathBuf, bool)>,
    selection: &Selection,
) -> Result<BTreeSet<(PathBuf, bool)>> {
    let mut new: BTreeSet<(PathBuf, bool)> = selection
        .reads
        .iter()
        .map(|r| (r.dir.clone(), true))
        .collect();
    for source in &selection.sources {
        let dir = source.parent().unwrap_or(Path::new("/")).to_path_buf();
        if dir.is_dir() && !new.iter().any(|(d, r)| *r && dir.starts_with(d)) {
            new.insert((dir, false));
        }
    }
    for (dir, _) in old.difference(&new) {
        let _ = watcher.unwatch(dir);
    }
    for (dir, recursive) in new.difference(&old) {
        let mode = if *recursive {
            notify::RecursiveMode::Recursive
        } else {
            notify::RecursiveMode::NonRecursive
        };
        watcher.watch(dir, mode).map_err(|e| {
            Diagnostic::env(format!("cannot watch {}: {e}", dir.display()))
                .help("on Linux, `fs.inotify.max_user_watches` limits how many directories can be watched")
        })?;
    }
    Ok(new)
}

/// What the command line names, whether or not it compiles: the Dockerfile (or `-f` file) and the
/// `.dockerignore` files beside it, so a broken build is rebuilt once they are fixed.
fn fallback(cmd: &BuildCmd) -> Selection {
    let mut selection = Selection::default();
    let labels = cmd
        .compile
        .inputs
        .iter()
        .any(|i| i.starts_with("//") || i.starts_with(':'));
    if labels {
        return selection;
    }
    let context = absolute(Path::new(
        cmd.compile.inputs.first().map_or(".", String::as_str),
    ));
    let file = cmd
        .compile
        .file
        .as_ref()
        .map_or_else(|| context.join("Dockerfile"), |f| absolute(f));
    let mut ignore = file.clone().into_os_string();
    ignore.push(".dockerignore");
    selection
        .sources
        .extend([file, PathBuf::from(ignore), context.join(".dockerignore")]);
    selection
}

fn absolute(p: &Path) -> PathBuf {
    let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    // notify reports paths under the directory as it was given; contexts are compared canonical.
    p.canonicalize().unwrap_or(p)
}

impl Selection {
    /// Adds what a compiled build reads: the files its instructions came from, and what its steps select
    /// from each context directory.
    fn add_request(&mut self, req: &BuildRequest) {
        let graph = &req.graph;
        for n in graph.dag.node_indices() {
            let node = &graph.dag[n];
            if let Some(at) = &node.at {
                let path = Path::new(&at.file.name);
                if path.is_file() {
                    self.sources.insert(absolute(path));
                }
            }
            let inputs = graph.inputs(n);
            let mut add = |input: Option<&petgraph::stable_graph::NodeIndex>,
                           excludes: &[String],
                           patterns: Vec<String>| {
                if let Some((dir, ignore)) = input.and_then(|&i| context_dir(graph, req, i)) {
                    self.sources.insert(dir.join(".dockerignore"));
                    self.reads.push(Read {
                        dir,
                        ignore,
                        excludes: patterns_of(excludes),
                        patterns,
                    });
                }
            };
            match &node.op {
                Op::Copy(c) => add(inputs.get(1), &c.excludes, c.sources.clone()),
                Op::Run(r) => {
                    for m in &r.mounts {
                        if let RunMount::Bind { input, source, .. } = m {
                            add(inputs.get(*input), &[], vec![source.clone()]);
                        }
                    }
                }
                _ => {}
            }
        }
        self.outputs = req
            .outputs
            .iter()
            .filter_map(|o| match o {
                crate::export::Output::Oci { dest, .. }
                | crate::export::Output::Docker { dest, .. }
                | crate::export::Output::Local { dest }
                | crate::export::Output::Tar { dest } => Some(absolute(dest)),
                crate::export::Output::Load { .. } => None,
            })
            .collect();
    }

    /// Whether a change to `path` (absolute) can change what the build makes.
    fn selects(&self, path: &Path) -> bool {
        if self.outputs.iter().any(|o| path.starts_with(o)) {
            return false;
        }
        self.sources.contains(path) || self.reads.iter().any(|r| r.selects(path))
    }
}

impl Read {
    fn selects(&self, path: &Path) -> bool {
        let Ok(rel) = path.strip_prefix(&self.dir) else {
            return false;
        };
        let text = rel.to_string_lossy();
        let name = rel.file_name().unwrap_or_default().to_string_lossy();
        if self.ignore.excluded(&text)
            || self.excludes.excluded(&text)
            || self.excludes.excluded(&name)
        {
            return false;
        }
        self.patterns.iter().any(|p| {
            // A pattern naming the file or a directory above it (a file just deleted included), or a
            // wildcard that selects it now.
            clean_relative(p).is_ok_and(|c| rel.starts_with(&c))
                || select(&self.dir, p).is_ok_and(|found| found.iter().any(|f| rel.starts_with(f)))
        })
    }
}

/// The directory of a context node and its `.dockerignore` patterns.
fn context_dir(
    graph: &Dag,
    req: &BuildRequest,
    n: petgraph::stable_graph::NodeIndex,
) -> Option<(PathBuf, Patterns)> {
    let Op::Context { name, excludes } = &graph.dag[n].op else {
        return None;
    };
    match req.contexts.get(name) {
        Some(NamedContext::Dir(dir)) => Some((absolute(dir), patterns_of(excludes))),
        _ => None,
    }
}

fn patterns_of(patterns: &[String]) -> Patterns {
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    Patterns::from_patterns(&refs).unwrap_or_default()
}
