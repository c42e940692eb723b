//! What a build of several targets made, target by target: the label, the image's manifest digest,
//! where it went (written, loaded, pushed, kept), how many of its steps ran or came from the cache, and
//! when it was ready. Shown at the end of the build (an event of its own in `--progress json`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use petgraph::stable_graph::NodeIndex;
use petgraph::visit::NodeIndexable as _;
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
    /// Where a copy of every event goes, when the driver asked for one.
    transcript: Option<crate::progress::Transcript>,
}

impl Recorder {
    /// Shows the events as `mode` asks, keeping a copy in `transcript` when given.
    pub(super) fn new(
        mode: crate::progress::Mode,
        transcript: Option<crate::progress::Transcript>,
    ) -> Recorder {
        Recorder {
            inner: Arc::from(crate::progress::reporter(mode)),
            start: Instant::now(),
            books: Mutex::new(Books::default()),
            transcript,
        }
    }

    /// The summary of `targets` (by root, in the graph's order), as an event.
    pub(super) fn summary(&self, graph: &Dag, targets: &HashMap<NodeIndex, Target>) -> Event {
        let books = self.books.lock().unwrap_or_else(|p| p.into_inner());
        // Each node's entry in the books, looked up once: the walks below then touch no string.
        let mut done = vec![None; graph.dag.node_bound()];
        for n in graph.dag.node_indices() {
            done[n.index()] = books.done.get(&graph.dag[n].digest.to_string()).copied();
        }
        let mut walk = Walk {
            seen: vec![0; graph.dag.node_bound()],
            round: 0,
        };
        let mut lines = vec![format!("built {} targets:", graph.roots.len())];
        let mut rows = Vec::new();
        for (label, root) in &graph.roots {
            let (mut ran, mut cached, mut ready) = (0, 0, Duration::ZERO);
            walk.each_above(graph, *root, |n| {
                if let Some((t, r)) = done[n.index()] {
                    if r {
                        ran += 1;
                    } else {
                        cached += 1;
                    }
                    ready = ready.max(t);
                }
            });
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

/// Walks what a root needs, once per node, with a mark per node instead of a set per root: a summary
/// of thousands of targets over a shared graph walks it once per target.
struct Walk {
    /// The round in which each node was last seen.
    seen: Vec<u32>,
    round: u32,
}

impl Walk {
    /// Calls `f` on `root` and every node it depends on, each once.
    fn each_above(&mut self, graph: &Dag, root: NodeIndex, mut f: impl FnMut(NodeIndex)) {
        self.round += 1;
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut self.seen[n.index()], self.round) == self.round {
                continue;
            }
            f(n);
            stack.extend(
                graph
                    .dag
                    .neighbors_directed(n, petgraph::Direction::Incoming),
            );
        }
    }
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
        match &self.transcript {
            // Kept and shown under one lock: the copy is in the order shown.
            Some(t) => {
                let mut kept = t.lock().unwrap_or_else(|p| p.into_inner());
                kept.push(e.clone());
                self.inner.event(e);
            }
            None => self.inner.event(e),
        }
    }

    fn finish(&self) {
        self.inner.finish();
    }

    fn pause(&self, paused: bool) {
        self.inner.pause(paused);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Op, Program, Root};

    fn mkdir(p: &mut Program, path: &str, inputs: Vec<usize>) -> usize {
        let op = Op::Mkdir {
            path: path.into(),
            user: None,
        };
        p.push(op, inputs, path.into(), None)
    }

    /// A diamond under two roots: each root's walk sees each node it needs once, and a second root's
    /// walk is not cut short by the first's marks.
    #[test]
    fn each_root_walks_what_it_needs_once() {
        let mut p = Program::default();
        let base = p.push(Op::Scratch, vec![], "scratch".into(), None);
        let left = mkdir(&mut p, "/left", vec![base]);
        let right = mkdir(&mut p, "/right", vec![base]);
        let top = p.push(
            Op::Config(Box::default()),
            vec![left, right],
            "config".into(),
            None,
        );
        for (name, node) in [("top", top), ("left", left)] {
            p.roots.push(Root {
                name: name.into(),
                node,
                ..Root::default()
            });
        }
        let graph = Dag::new(&p);
        let mut walk = Walk {
            seen: vec![0; graph.dag.node_bound()],
            round: 0,
        };
        let counts: Vec<usize> = graph
            .roots
            .iter()
            .map(|(_, root)| {
                let mut n = 0;
                walk.each_above(&graph, *root, |_| n += 1);
                n
            })
            .collect();
        assert_eq!(counts, [4, 2]);
    }
}
