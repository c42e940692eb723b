//! The digests of a kept image's own layers, each taken on a thread of its own as soon as the step that
//! made the layer committed it (`export::kept::digest_early`), so that hashing a large layer overlaps
//! the steps after it instead of following the build. Keeping the image then finds them recorded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use petgraph::stable_graph::NodeIndex;

use crate::graph::{Dag, Op};
use crate::store::Store;

pub(super) struct Early {
    store: Arc<Store>,
    settings: crate::export::Settings,
    /// The steps whose layers an image kept under a name holds, each with the snapshot of the layer at
    /// its place (counted from the top) in the image the name held before: the digest resumes from
    /// that one's index where their tars begin alike.
    steps: HashMap<NodeIndex, Option<String>>,
    /// The layers waiting for a thread, and how many threads take them (at most one per core the
    /// build may use: a monorepo's many images must not start a thread per step).
    queue: Mutex<(VecDeque<Layer>, usize)>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A committed layer's snapshot, and the earlier one its digest may resume from.
type Layer = (String, Option<String>);

impl Early {
    /// For the roots that `names` keeps under a name; `None` when there are none.
    pub(super) fn new(
        graph: &Dag,
        store: &Arc<Store>,
        settings: &crate::export::Settings,
        names: impl Fn(&str) -> Vec<String>,
    ) -> Option<Arc<Early>> {
        let mut steps = HashMap::new();
        for (label, root) in &graph.roots {
            let Some(name) = names(label).into_iter().next() else {
                continue;
            };
            let before = store.named(&name).map(|n| n.snapshots).unwrap_or_default();
            let mut at = match graph.dag[*root].op {
                Op::Config(_) => graph.inputs(*root).first().copied(),
                _ => Some(*root),
            };
            let mut from_top = 0;
            while let Some(n) = at.filter(|n| graph.dag[*n].op.makes_layer()) {
                let earlier = before.len().checked_sub(from_top + 1);
                steps.insert(n, earlier.and_then(|i| before[i].clone()));
                at = graph.inputs(n).first().copied();
                from_top += 1;
            }
        }
        (!steps.is_empty()).then(|| {
            Arc::new(Early {
                store: store.clone(),
                settings: settings.clone(),
                steps,
                queue: Mutex::new((VecDeque::new(), 0)),
                threads: Mutex::new(Vec::new()),
            })
        })
    }

    /// The solve's hook (`SolveOptions::committed`).
    pub(super) fn hook(self: &Arc<Self>) -> crate::solve::Committed {
        let me = self.clone();
        Arc::new(move |n, snapshot| me.committed(n, snapshot))
    }

    /// Step `n` committed `snapshot`: its digest is taken now if a kept image holds it. A digest that
    /// fails here is taken again, and its error reported, when the image is kept.
    pub(super) fn committed(self: &Arc<Self>, n: NodeIndex, snapshot: &str) {
        let Some(earlier) = self.steps.get(&n).cloned() else {
            return;
        };
        let mut queue = self.queue.lock().expect("digests lock");
        queue.0.push_back((snapshot.to_string(), earlier));
        if queue.1 >= crate::layer::cores(self.settings.jobs) {
            return;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("kiln-digest".into())
            .spawn(move || me.work());
        if let Ok(handle) = spawned {
            queue.1 += 1;
            self.threads.lock().expect("digests lock").push(handle);
        }
    }

    /// One thread's loop: the next waiting layer's digest, until none waits.
    fn work(&self) {
        loop {
            let next = {
                let mut queue = self.queue.lock().expect("digests lock");
                let next = queue.0.pop_front();
                if next.is_none() {
                    queue.1 -= 1;
                }
                next
            };
            let Some((snapshot, earlier)) = next else {
                return;
            };
            let _ = crate::export::kept::digest_early(
                &self.store,
                &snapshot,
                &self.settings,
                earlier.as_ref(),
            );
        }
    }

    /// Waits for every digest asked for.
    pub(super) fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().expect("digests lock"));
        for handle in threads {
            let _ = handle.join();
        }
    }
}
