//! What a build of several targets made, target by target: the label, the image's manifest digest,
//! where it went (written, loaded, pushed, kept), how many of its steps ran or came from the cache, and
//! when it was ready. Shown at the end of the build (an event of its own in `--progress json`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use petgraph::stable_graph::NodeIndex;
use serde_json::json;

use crate::graph::Dag;
use crate::progress::{Event, Reporter};

/// What happened to one target after solving.
#[derive(Default)]
pub(super) struct Target {
    /// The manifest digest, once an output, a push or the store made the manifest.
    pub digest: Option<String>,
    /// Destinations written or loaded (`-o`, `--load`).
    pub written: Vec<String>,
    /// References pushed.
    pub pushed: Vec<String>,
    /// Names kept in kiln's store.
    pub kept: Vec<String>,
    /// Why it went nowhere it could have gone (`--push` without declared tags).
    pub skipped: Option<String>,
}

/// Per step definition digest: when it finished (from the build's start) and whether it ran.
#[derive(Default)]
struct Books {
    digest_of: HashMap<usize, String>,
    done: HashMap<String, (Duration, bool)>,
}

/// A reporter that passes every event on and keeps the books the summary needs.
pub(super) struct Recorder {
    inner: Arc<dyn Reporter>,
    start: Instant,
    books: Mutex<Books>,
}

impl Recorder {
    pub(super) fn new(inner: Arc<dyn Reporter>) -> Recorder {
        Recorder {
            inner,
            start: Instant::now(),
            books: Mutex::new(Books::default()),
        }
    }

    /// The summary of `targets` (by root, in the graph's order), as an event.
    pub(super) fn summary(&self, graph: &Dag, targets: &HashMap<NodeIndex, Target>) -> Event {
        let books = self.books.lock().unwrap_or_else(|p| p.into_inner());
        let mut lines = vec![format!("built {} targets:", graph.roots.len())];
        let mut rows = Vec::new();
        for (label, root) in &graph.roots {
            let steps = steps_of(graph, *root);
            let mine = || books.done.iter().filter(|(d, _)| steps.contains(*d));
            let ran = mine().filter(|(_, (_, r))| *r).count();
            let cached = mine().filter(|(_, (_, r))| !*r).count();
            let ready = mine().map(|(_, (t, _))| *t).max().unwrap_or_default();
            let empty = Target::default();
            let t = targets.get(root).unwrap_or(&empty);
            let mut went = Vec::new();
            if !t.pushed.is_empty() {
                went.push(format!("pushed {}", t.pushed.join(", ")));
            }
            if !t.written.is_empty() {
                went.push(format!("written to {}", t.written.join(", ")));
            }
            if !t.kept.is_empty() {
                went.push(format!("kept as {}", t.kept.join(", ")));
            }
            if let Some(why) = &t.skipped {
                went.push(why.clone());
            }
            if went.is_empty() {
                went.push("build cache only".into());
            }
            // A filesystem output (a Dir's `-o type=local`) has no manifest to show.
            let digest = match &t.digest {
                Some(d) => d.as_str(),
                None if !t.written.is_empty() => "files",
                None => "-",
            };
            lines.push(format!(
                "  {label}  {digest}  {}  ({ran} run, {cached} cached, ready at {:.1}s)",
                went.join("; "),
                ready.as_secs_f64()
            ));
            rows.push(json!({
                "target": label,
                "digest": t.digest,
                "written": t.written,
                "pushed": t.pushed,
                "kept": t.kept,
                "skipped": t.skipped,
                "run": ran,
                "cached": cached,
                "seconds": ready.as_secs_f64(),
            }));
        }
        Event::Summary {
            text: lines.join("\n"),
            targets: serde_json::Value::Array(rows),
        }
    }
}

/// The definition digests of every step `root` needs.
fn steps_of(graph: &Dag, root: NodeIndex) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut digests = HashSet::new();
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        if seen.insert(n) {
            digests.insert(graph.dag[n].digest.to_string());
            stack.extend(graph.inputs(n));
        }
    }
    digests
}

impl Reporter for Recorder {
    fn event(&self, e: Event) {
        {
            let mut books = self.books.lock().unwrap_or_else(|p| p.into_inner());
            let now = self.start.elapsed();
            match &e {
                Event::Started(v) => {
                    books.digest_of.insert(v.id, v.digest.clone());
                }
                Event::Cached(v) => {
                    books.done.insert(v.digest.clone(), (now, false));
                }
                Event::Done { id, .. } => {
                    if let Some(d) = books.digest_of.get(id).cloned() {
                        books.done.insert(d, (now, true));
                    }
                }
                _ => {}
            }
        }
        self.inner.event(e);
    }

    fn finish(&self) {
        self.inner.finish();
    }

    fn pause(&self, paused: bool) {
        self.inner.pause(paused);
    }
}
