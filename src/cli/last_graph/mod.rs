//! `kiln graph` of monorepo labels after an edit, without evaluating or hashing what the edit cannot
//! reach. A run that compiled the whole graph keeps it beside the evaluation cache (`<cache>.graph`,
//! `kept.rs`): every node with its digest, its digest's state after its op, inputs and text; every
//! unit (a global of a module) with its fingerprint, the graph nodes it made by slot and the units it
//! used; the modules' files and the directories the package walk entered, with their stat data, and
//! the directories evaluation checked. The next run checks those; when only some module files
//! changed, it evaluates the units of the changed modules (and of the
//! modules importing them) through the evaluation cache, then the units that used a unit whose
//! fingerprint changed, and so on (early cut-off), maps what they made onto the kept nodes, hashes
//! again only the nodes downstream of a changed op, and prints the graph as a full run would
//! (`redo.rs`).
//!
//! Anything the kept graph cannot say as a full run would (a unit, node or root it does not know, a
//! node that would merge with another or split from one, a note or finding, too many units to redo)
//! means the full run, which keeps its graph anew. A run whose evaluation replayed nothing (a cold
//! cache) keeps no graph: that run's memory is the one the monorepo goal bounds.

mod delta;
mod kept;
mod redo;

use std::collections::BTreeSet;
use std::path::Path;

use petgraph::stable_graph::NodeIndex;

use crate::digest::{Digest, Encoder};
use crate::graph::Dag;
use crate::load::{EvalOptions, Session};
use kept::Kept;

/// Why the kept graph was not reused (`KILN_EVAL_STATS` shows it).
type Why = &'static str;

/// What identifies a kept graph's making: the kiln, the workspace, the command line's labels and
/// working directory, and the evaluation options.
pub(super) fn key(root: &Path, cwd: &Path, labels: &[String], opts: &EvalOptions) -> Digest {
    let mut e = Encoder::new("kiln/last-graph/v1");
    e.str(&crate::load::kiln_identity())
        .str(&root.to_string_lossy())
        .str(&cwd.to_string_lossy())
        .strs(labels)
        .digest(&crate::load::options_digest(opts));
    e.finish()
}

/// Keeps the graph a full run compiled (one whose evaluation replayed units, noted nothing and
/// recorded every unit: `compile` traces only those).
pub(super) fn keep(
    started: i64,
    cache: &Path,
    key: &Digest,
    dag: &Dag,
    traced: &crate::Traced,
    (index_of, ops): (&[Option<NodeIndex>], &[crate::digest::Midstate]),
) {
    forget(cache);
    if let Some(kept) = Kept::make(started, key, dag, traced, index_of, ops) {
        kept.write(&kept::path_of(cache));
    }
}

/// Removes the kept graph: a full run that keeps none leaves none that another edit would redo.
pub(super) fn forget(cache: &Path) {
    let path = kept::path_of(cache);
    let _ = std::fs::remove_file(delta::delta_of(&path));
    let _ = std::fs::remove_file(&path);
}

/// What a run compiling `labels` asks of the kept graph.
pub(super) struct Ask<'a> {
    /// When the run started, in seconds (see `kept::settled`).
    pub(super) started: i64,
    pub(super) cache: &'a Path,
    pub(super) key: Digest,
    pub(super) root: &'a Path,
    pub(super) opts: &'a EvalOptions,
}

/// Shows the graph's text through `show`, from the kept graph and the units an edit reaches, then
/// brings the kept graph up to date; `false` when it cannot: the full run.
pub(super) fn reuse(ask: &Ask<'_>, show: &mut dyn FnMut(&str)) -> bool {
    let stats = std::env::var_os("KILN_EVAL_STATS").is_some();
    let note = |s: String| {
        if stats {
            crate::progress::stderr(&s);
        }
    };
    let path = kept::path_of(ask.cache);
    let Ok(bytes) = std::fs::read(&path) else {
        note("graph: the last graph not reused: none kept\n".into());
        return false;
    };
    let delta = std::fs::read(delta::delta_of(&path)).unwrap_or_default();
    let mut kept = match Kept::read(&bytes, &ask.key) {
        Ok(k) => k,
        Err(why) => {
            note(format!("graph: the last graph not reused: {why}\n"));
            return false;
        }
    };
    kept.apply_delta(&delta);
    // The evaluation cache is read on a thread of its own from here, while the kept graph is checked.
    let session = Session::new(Some(ask.root.to_path_buf()));
    let mut session = session.with_cache_for_few(ask.cache.to_path_buf());
    match brought_up_to_date(&mut kept, &mut session, ask) {
        Ok(changed) => {
            let (replayed, evaluated) = session.stats;
            note(format!(
                "evaluation: {replayed} units replayed from the cache, {evaluated} evaluated\n\
                 graph: the last graph reused\n"
            ));
            show(&redo::render(&kept));
            let saving = session.save_cache();
            if changed {
                kept.save(&path, bytes.len());
            }
            drop(saving);
            true
        }
        Err(why) => {
            note(format!("graph: the last graph not reused: {why}\n"));
            false
        }
    }
}

/// Checks the walks and files and redoes what an edit reached: whether the kept graph changed.
fn brought_up_to_date(
    kept: &mut Kept<'_>,
    session: &mut Session,
    ask: &Ask<'_>,
) -> Result<bool, Why> {
    for (i, w) in kept.walked.iter_mut().enumerate() {
        for (j, (dir, kept_stat, sum)) in w.entered.iter_mut().enumerate() {
            let stat = kept::stat(dir);
            if kept_stat.is_some() && stat == *kept_stat {
                continue;
            }
            // Changed (an editor's save by rename changes its package's): listed again, and the
            // same subdirectories and `.build` files are the same packages.
            let added = "a package was added or removed";
            if crate::load::listing_sum(dir).map_err(|_| added)? != *sum {
                return Err(added);
            }
            *kept_stat = kept::settled(stat, ask.started);
            kept.touched.entered.insert((i as u32, j as u32));
        }
    }
    // Replayed units check again the directories they checked; those not replayed, here.
    if kept.dirs.iter().any(|(d, is)| d.is_dir() != *is) {
        return Err("a directory a package names was added or removed");
    }
    let (changed, touched) =
        changed_files(kept, ask.started).ok_or("a module's file cannot be read")?;
    if !changed.is_empty() {
        redo::redo(kept, session, ask.opts, &changed)?;
    }
    Ok(touched || !kept.touched.entered.is_empty() || kept.touched.dirs)
}

/// The modules whose text changed (by file name), and whether any file's kept stat data did (then
/// brought up to date).
fn changed_files(kept: &mut Kept<'_>, started: i64) -> Option<(BTreeSet<String>, bool)> {
    let mut changed = BTreeSet::new();
    let mut touched = false;
    for (i, f) in kept.files.iter_mut().enumerate() {
        // Taken before the file is read: a change after it is one the next run sees.
        let stat = kept::stat(&f.module.path);
        if f.stat.is_some() && stat == f.stat {
            continue;
        }
        touched = true;
        kept.touched.files.insert(i as u32);
        let digest = Digest::of(&std::fs::read(&f.module.path).ok()?);
        if digest != f.module.digest {
            changed.insert(f.module.name.clone());
            f.module.digest = digest;
        }
        f.stat = kept::settled(stat, started);
    }
    Some((changed, touched))
}
