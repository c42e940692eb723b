//! Monorepos: `.build` packages under a root marked by `kiln.toml`, targets addressed by labels
//! (`//path/pkg:target`), label patterns (`//...`, `//path/...`, `:target`), `kiln query deps|rdeps`
//! and `kiln affected`.
//!
//! Like `cli`, this is a driver: it may use every stage. Which targets a change affects is decided from
//! content digests: a target's digest covers its graph's root digest (so any change to the `.build`
//! source that changes what is built) and the digests of the context files its steps select.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::diag::{Diagnostic, Result};
use crate::graph::Dag;
use crate::graph::Op;
use crate::graph::op::RunMount;
use crate::load::{EvalOptions, Lowered, PACKAGE_FILE, PackageContexts, Session, lower_targets};

/// A selected target: its module and name.
pub(crate) type Selected = Vec<(usize, String)>;

/// Every `.build` file at or below `dir`, sorted. Hidden directories and the usual build-output folders
/// (`target`, `node_modules`) are not entered.
pub(crate) fn build_files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    crate::load::build_files_under(dir, None)
}

/// The package directories (those holding a BUILD.build) of `build_files`, sorted.
fn package_dirs(build_files: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = build_files
        .into_iter()
        .filter(|f| f.file_name().is_some_and(|n| n == PACKAGE_FILE))
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    out.sort();
    out
}

/// Resolves label patterns to targets, loading the packages they name.
pub(crate) fn expand_labels(
    session: &mut Session,
    cwd: &Path,
    inputs: &[String],
) -> Result<Selected> {
    let root = session.root.clone().expect("labels need a root");
    let mut selected: Selected = Vec::new();
    // Each target once, in the order first named: a set beside the list keeps `//...` on thousands of
    // targets linear.
    let mut seen = std::collections::HashSet::new();
    let mut push = |s: &mut Selected, m: usize, t: String| {
        if seen.insert((m, t.clone())) {
            s.push((m, t));
        }
    };
    for input in inputs {
        let bad = || {
            Diagnostic::input(format!("`{input}` is not a label"))
                .help("labels are //path/pkg:target, //path/pkg:all, //path/... or :target")
        };
        let (package, target) = if let Some(rest) = input.strip_prefix(':') {
            let rel = std::fs::canonicalize(cwd)
                .ok()
                .and_then(|c| c.strip_prefix(&root).ok().map(Path::to_path_buf))
                .ok_or_else(bad)?;
            (format!("//{}", rel.to_string_lossy()), rest.to_string())
        } else if let Some(dir) = input.strip_suffix("...") {
            // `//...` is everything; `//a/b/...` everything at or below a/b. Never a path outside the root.
            let rel = dir.strip_prefix("//").ok_or_else(bad)?.trim_matches('/');
            if rel.split('/').any(|c| c == "..") || (!rel.is_empty() && !dir.ends_with('/')) {
                return Err(bad());
            }
            // Canonical, so everything the walk finds below it is too: the walk follows no links.
            let base = std::fs::canonicalize(root.join(rel)).unwrap_or_else(|_| root.join(rel));
            let (walked, entered) = session.walk_dirs(&base).unwrap_or_default();
            if session.trace {
                session.walked.push((base.clone(), walked.clone(), entered));
            }
            let found = package_dirs(walked);
            if found.is_empty() {
                return Err(Diagnostic::input(format!("no packages under `{input}`"))
                    .help(format!("a package is a directory with a {PACKAGE_FILE}")));
            }
            let files: Vec<PathBuf> = found.iter().map(|p| p.join(PACKAGE_FILE)).collect();
            session.read_ahead(&files);
            for file in &files {
                let m = session.load_found(file)?;
                for t in session.targets(m) {
                    push(&mut selected, m, t);
                }
            }
            continue;
        } else {
            match input.rsplit_once(':') {
                Some((p, t)) if p.starts_with("//") => (p.to_string(), t.to_string()),
                // Bazel's rule: `//a/b` means `//a/b:b`.
                _ if input.starts_with("//") => {
                    let last = input.trim_end_matches('/').rsplit('/').next().unwrap_or("");
                    (input.trim_end_matches('/').to_string(), last.to_string())
                }
                _ => return Err(bad()),
            }
        };
        let m = session.load_package(&package, None)?;
        if target == "all" {
            for t in session.targets(m) {
                push(&mut selected, m, t);
            }
        } else {
            push(&mut selected, m, target);
        }
    }
    Ok(selected)
}

/// Evaluates `selected`, then shows the program's `print(...)` notes (also when evaluation fails, before
/// the error).
fn lower_shown(session: &mut Session, selected: &Selected, opts: &EvalOptions) -> Result<Lowered> {
    let lowered = lower_targets(session, selected, opts);
    session
        .notes
        .drain(..)
        .for_each(|n| crate::diag::print_note(&n));
    lowered
}

/// Everything `labels` depend on (transitively), or everything that depends on them.
pub(crate) fn query(
    root: &Path,
    kind: &str,
    labels: &[String],
    opts: &EvalOptions,
) -> Result<Vec<String>> {
    let mut session = Session::new(Some(root.to_path_buf()));
    let all = expand_labels(&mut session, root, &["//...".to_string()])?;
    let lowered = lower_shown(&mut session, &all, opts)?;
    let wanted = expand_labels(&mut session, root, labels)?;
    let ev_labels: Vec<String> = wanted.iter().map(|(m, t)| session.label(*m, t)).collect();
    let edges: BTreeMap<String, BTreeSet<String>> = if kind == "rdeps" {
        let mut inv: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, tos) in &lowered.deps {
            for to in tos {
                inv.entry(to.clone()).or_default().insert(from.clone());
            }
        }
        inv
    } else {
        lowered.deps
    };
    let mut seen = BTreeSet::new();
    let mut stack = ev_labels.clone();
    while let Some(l) = stack.pop() {
        for next in edges.get(&l).into_iter().flatten() {
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    for l in &ev_labels {
        seen.remove(l);
    }
    Ok(seen.into_iter().collect())
}

/// Each target of the monorepo at `root` with the digest of everything it is built from.
pub(crate) fn target_digests(root: &Path, opts: &EvalOptions) -> Result<BTreeMap<String, String>> {
    let mut session = Session::new(Some(root.to_path_buf()));
    let all = expand_labels(&mut session, root, &["//...".to_string()])?;
    let lowered = lower_shown(&mut session, &all, opts)?;
    let graph = Dag::new(&lowered.program);
    let mut out = BTreeMap::new();
    for (label, node) in &graph.roots {
        let mut h = crate::digest::Encoder::new("kiln/affected/v1");
        h.digest(&graph.dag[*node].digest);
        for (dir, excludes, patterns) in context_reads(&graph, *node, &lowered.contexts, opts) {
            let tree = crate::solve::context::HostDir {
                path: dir.clone(),
                excludes: Vec::new(),
            }
            .tree()
            .and_then(|t| t.excluding(&excludes))
            .map_err(|e| Diagnostic::input(format!("{}: {e}", dir.display())))?;
            let d = content_digest(&tree, &patterns)
                .map_err(|e| Diagnostic::input(format!("{}: {e}", dir.display())))?;
            h.str(&d);
        }
        out.insert(label.clone(), h.finish().to_string());
    }
    Ok(out)
}

/// What version control sees of a selection: each path, its kind, whether it is executable, and its
/// content or link target. (A build's cache key also covers the other permission bits; a checkout's
/// permissions follow the umask, so comparing them across revisions would report changes nobody made.)
fn content_digest(
    tree: &crate::solve::context::Tree,
    patterns: &[String],
) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut h = crate::digest::Encoder::new("kiln/affected-files/v1");
    for pattern in patterns {
        h.str(pattern);
        // A source that is missing is a change like any other, not an error.
        let Ok(selected) = tree.select(pattern) else {
            h.str("missing");
            continue;
        };
        for rel in selected {
            let start = tree.root.join(&rel);
            for entry in tree.entries(&start)? {
                let meta = entry
                    .path()
                    .symlink_metadata()
                    .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
                let name = entry
                    .path()
                    .strip_prefix(&tree.root)
                    .unwrap_or(entry.path());
                h.str(&name.to_string_lossy());
                let ft = meta.file_type();
                if ft.is_file() {
                    let bytes = std::fs::read(entry.path())
                        .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
                    h.str(if meta.permissions().mode() & 0o111 != 0 {
                        "x"
                    } else {
                        "f"
                    });
                    h.bytes(&bytes);
                } else if ft.is_symlink() {
                    let target = std::fs::read_link(entry.path()).unwrap_or_default();
                    h.str("l").str(&target.to_string_lossy());
                } else {
                    h.str("d");
                }
            }
        }
    }
    Ok(h.finish().to_string())
}

/// The context files a root's steps read: (directory, copy excludes, source patterns), in graph order.
fn context_reads(
    graph: &Dag,
    root: petgraph::stable_graph::NodeIndex,
    contexts: &PackageContexts,
    opts: &EvalOptions,
) -> Vec<(PathBuf, Vec<String>, Vec<String>)> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    let dir_of = |n: petgraph::stable_graph::NodeIndex| -> Option<PathBuf> {
        let Op::Context { name, .. } = &graph.dag[n].op else {
            return None;
        };
        contexts
            .get(name)
            .cloned()
            .or_else(|| match opts.lower.contexts.get(name) {
                Some(crate::graph::NamedContext::Dir(d)) => Some(d.clone()),
                _ => None,
            })
    };
    while let Some(n) = stack.pop() {
        if !seen.insert(n) {
            continue;
        }
        let inputs = graph.inputs(n);
        match &graph.dag[n].op {
            Op::Copy(c) => {
                if let Some(dir) = inputs.get(1).and_then(|&i| dir_of(i)) {
                    out.push((dir, c.excludes.clone(), c.sources.clone()));
                }
            }
            Op::Run(r) => {
                for m in &r.mounts {
                    if let RunMount::Bind { input, source, .. } = m
                        && let Some(dir) = inputs.get(*input).and_then(|&i| dir_of(i))
                    {
                        out.push((dir, Vec::new(), vec![source.clone()]));
                    }
                }
            }
            _ => {}
        }
        stack.extend(inputs);
    }
    out.sort();
    out
}

/// Whether `file` (absolute) is one of the files a root reads from its contexts.
fn reads_file(
    graph: &Dag,
    root: petgraph::stable_graph::NodeIndex,
    contexts: &PackageContexts,
    opts: &EvalOptions,
    file: &Path,
) -> bool {
    for (dir, excludes, patterns) in context_reads(graph, root, contexts, opts) {
        let Ok(rel) = file.strip_prefix(&dir) else {
            continue;
        };
        let Ok(tree) = crate::solve::context::HostDir {
            path: dir.clone(),
            excludes: Vec::new(),
        }
        .tree()
        .and_then(|t| t.excluding(&excludes)) else {
            continue;
        };
        for p in &patterns {
            // A file that no longer exists still counts when a pattern names it or a directory above it.
            let named = crate::solve::context::clean_relative(p)
                .is_ok_and(|c| c.as_os_str().is_empty() || rel.starts_with(&c));
            let selected = tree.select(p).unwrap_or_default();
            if named || selected.iter().any(|s| rel.starts_with(s)) {
                return true;
            }
        }
    }
    false
}

/// The targets a set of changed files affects: those reading one of the files through a context, and
/// those whose `.build` sources (their package file, its imports, the packages they build from) changed.
pub(crate) fn affected_by_files(
    root: &Path,
    files: &[PathBuf],
    opts: &EvalOptions,
) -> Result<Vec<String>> {
    let mut session = Session::new(Some(root.to_path_buf()));
    let all = expand_labels(&mut session, root, &["//...".to_string()])?;
    let lowered = lower_shown(&mut session, &all, opts)?;
    let graph = Dag::new(&lowered.program);
    let files: Vec<PathBuf> = files
        .iter()
        .map(|f| {
            let abs = if f.is_absolute() {
                f.clone()
            } else {
                root.join(f)
            };
            std::path::absolute(&abs).unwrap_or(abs)
        })
        .collect();
    let changed_modules: BTreeSet<usize> = (0..session.modules.len())
        .filter(|&m| {
            files
                .iter()
                .any(|f| Some(f.as_path()) == session.path_of(m))
        })
        .collect();
    let mut out = BTreeSet::new();
    for (label, node) in &graph.roots {
        if files
            .iter()
            .any(|f| reads_file(&graph, *node, &lowered.contexts, opts, f))
        {
            out.insert(label.clone());
        }
    }
    // A changed module affects the targets of every package that uses it, and whatever builds on them.
    for (m, t) in &all {
        let uses: BTreeSet<usize> = session.closure(*m);
        if uses.iter().any(|u| changed_modules.contains(u)) {
            out.insert(session.label(*m, t));
        }
    }
    let mut inv: BTreeMap<&String, Vec<&String>> = BTreeMap::new();
    for (from, tos) in &lowered.deps {
        for to in tos {
            inv.entry(to).or_default().push(from);
        }
    }
    let mut stack: Vec<String> = out.iter().cloned().collect();
    while let Some(l) = stack.pop() {
        for up in inv.get(&l).into_iter().flatten() {
            if out.insert((*up).clone()) {
                stack.push((*up).clone());
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The targets whose digest differs between `old` (the monorepo as an older revision had it, unpacked
/// elsewhere) and the working tree at `root` (new targets count as affected).
pub(crate) fn affected_since(old: &Path, root: &Path, opts: &EvalOptions) -> Result<Vec<String>> {
    let before = target_digests(old, opts).unwrap_or_default();
    let now = target_digests(root, opts)?;
    Ok(now
        .iter()
        .filter(|(label, d)| before.get(*label) != Some(d))
        .map(|(l, _)| l.clone())
        .collect())
}
