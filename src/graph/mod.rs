//! The graph: a lowered `Program` becomes a content-addressed DAG in petgraph, every node named by
//! the SHA-256 of its operation and its inputs' digests, identical nodes merged into one.
//!
//! Source spans and names ride beside the graph as node metadata and are never hashed, so editing a comment
//! or moving a line does not change any digest.
//!
//! The module also owns the IR the front ends lower to (`op`, `program`, `entitlement`), so that every stage
//! after it depends on the IR without depending on a front end.

pub mod entitlement;
pub mod op;
pub mod program;
pub mod remote;

use foldhash::{HashMap, HashMapExt as _};
use std::fmt::Write as _;

use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use serde::Serialize;

use crate::diag::Located;
use crate::digest::{Digest, Encoder, Midstate};

use op::RunMount;
pub use op::{DEF_DOMAIN, Op};
pub use program::{NamedContext, NodeId, Program, Root};

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub digest: Digest,
    pub name: String,
    pub at: Option<Located>,
    /// Where the source asks for the entitlements the op needs (see `entitlement`).
    pub asks: entitlement::Asks,
}

/// The build graph. Edges point from an input to the node that consumes it; the edge weight is the input's
/// position, because inputs are ordered (`Copy` has `[rootfs, source]`).
pub struct Dag {
    pub dag: StableDiGraph<Node, usize>,
    /// The selected outputs, in the order selected: (name, node).
    pub roots: Vec<(String, NodeIndex)>,
    /// Each root's declared references (`Root::tags`), by root name; absent when it declares none.
    pub tags: HashMap<String, Vec<String>>,
}

/// A secret a root needs, with the first place that mounts it.
#[derive(Clone, Debug, Serialize)]
pub struct SecretNeed {
    pub id: String,
    pub required: bool,
    pub at: Option<String>,
}

impl Dag {
    /// Builds the DAG of everything the program's roots need. Unreachable stages are left out.
    pub fn new(program: &Program) -> Dag {
        Dag::from_program(program.clone())
    }

    /// `new`, taking the program: its ops move into the graph rather than being copied (a monorepo's
    /// program has tens of thousands).
    pub fn from_program(program: Program) -> Dag {
        Dag::build(program, false).0
    }

    /// `from_program`, also giving the graph node each program node became and, by graph node, its
    /// digest's state after its op (`node_digest` finishes it): what `kiln graph` keeps of its last
    /// graph.
    pub fn from_program_kept(program: Program) -> (Dag, Vec<Option<NodeIndex>>, Vec<Midstate>) {
        Dag::build(program, true)
    }

    fn build(program: Program, keep: bool) -> (Dag, Vec<Option<NodeIndex>>, Vec<Midstate>) {
        let mut needed = vec![false; program.nodes.len()];
        let mut stack: Vec<usize> = program.roots.iter().map(|r| r.node).collect();
        while let Some(n) = stack.pop() {
            if !std::mem::replace(&mut needed[n], true) {
                stack.extend(&program.nodes[n].inputs);
            }
        }
        // Sized once: a monorepo's program has tens of thousands of nodes.
        let count = needed.iter().filter(|&&n| n).count();
        let edges = (program.nodes.iter().zip(&needed))
            .filter(|(_, n)| **n)
            .map(|(node, _)| node.inputs.len())
            .sum();
        let mut dag = StableDiGraph::with_capacity(count, edges);
        let mut by_digest: HashMap<Digest, NodeIndex> = HashMap::with_capacity(count);
        let mut index_of: Vec<Option<NodeIndex>> = vec![None; program.nodes.len()];
        let mut encodings = Vec::new();
        for (i, node) in program.nodes.into_iter().enumerate() {
            if !needed[i] {
                continue;
            }
            let inputs: Vec<NodeIndex> = node
                .inputs
                .iter()
                .map(|&j| index_of[j].expect("inputs precede their consumers"))
                .collect();
            let mut enc = match keep {
                true => Encoder::new_kept(DEF_DOMAIN),
                false => Encoder::new(DEF_DOMAIN),
            };
            node.op.encode(&mut enc);
            let encoding = enc.kept();
            enc.list(inputs.len());
            for &input in &inputs {
                let d: &Node = &dag[input];
                enc.digest(&d.digest);
            }
            let digest = enc.finish();
            let idx = *by_digest.entry(digest.clone()).or_insert_with(|| {
                if keep {
                    encodings.push(Midstate::of(&encoding));
                }
                let idx = dag.add_node(Node {
                    op: node.op,
                    digest,
                    name: node.name,
                    at: node.at,
                    asks: node.asks,
                });
                for (pos, &input) in inputs.iter().enumerate() {
                    dag.add_edge(input, idx, pos);
                }
                idx
            });
            index_of[i] = Some(idx);
        }
        let roots = program
            .roots
            .iter()
            .map(|r| (r.name.clone(), index_of[r.node].expect("roots are needed")))
            .collect();
        let tags = program
            .roots
            .into_iter()
            .filter(|r| !r.tags.is_empty())
            .map(|r| (r.name, r.tags))
            .collect();
        (Dag { dag, roots, tags }, index_of, encodings)
    }

    /// The digest of a node whose digest's state after its op is `op` (`op_midstate`'s bytes) and
    /// whose inputs have the digests `inputs` (as text), in order; `None` when `op` is no midstate.
    pub fn node_digest(op: &[u8], inputs: &[&str]) -> Option<Digest> {
        let rest = Encoder::bytes_of(|e| {
            e.list(inputs.len());
            for d in inputs {
                e.digest_text(d);
            }
        });
        Midstate::finish_bytes(op, &rest)
    }

    /// A node digest's state after `op` (`node_digest` finishes it).
    pub fn op_midstate(op: &Op) -> Midstate {
        let mut enc = Encoder::new_kept(DEF_DOMAIN);
        op.encode(&mut enc);
        Midstate::of(&enc.kept())
    }

    /// A node's inputs in order.
    pub fn inputs(&self, n: NodeIndex) -> Vec<NodeIndex> {
        let mut edges = Vec::new();
        self.inputs_into(n, &mut edges);
        edges.into_iter().map(|(_, s)| s).collect()
    }

    /// `n`'s inputs in order, each with its position, into `edges` (cleared first): a caller that walks
    /// every node reuses one buffer.
    fn inputs_into(&self, n: NodeIndex, edges: &mut Vec<(usize, NodeIndex)>) {
        edges.clear();
        let incoming = self.dag.edges_directed(n, Direction::Incoming);
        edges.extend(incoming.map(|e| (*e.weight(), e.source())));
        edges.sort_unstable();
    }

    pub fn consumers(&self, n: NodeIndex) -> Vec<NodeIndex> {
        self.dag
            .neighbors_directed(n, Direction::Outgoing)
            .collect()
    }

    /// Nodes in a dependency order (inputs first), stable across runs.
    pub fn topo_order(&self) -> Vec<NodeIndex> {
        petgraph::algo::toposort(&self.dag, None)
            .expect("the lowered program is acyclic by construction")
    }

    /// Every secret (`ssh: false`) or ssh agent (`ssh: true`) mounted by a node that `root` depends on, in
    /// first-use order; `required` if any use requires it, `at` the first place that does (or uses it).
    pub fn needs_of(&self, root: NodeIndex, ssh: bool) -> Vec<SecretNeed> {
        let mut seen = std::collections::HashSet::new();
        let mut dfs = petgraph::visit::Dfs::new(petgraph::visit::Reversed(&self.dag), root);
        while let Some(n) = dfs.next(petgraph::visit::Reversed(&self.dag)) {
            seen.insert(n);
        }
        let mut needs: Vec<SecretNeed> = Vec::new();
        for n in self.topo_order().into_iter().filter(|n| seen.contains(n)) {
            let Op::Run(r) = &self.dag[n].op else {
                continue;
            };
            let uses: Vec<(&str, bool)> = if ssh {
                r.mounts
                    .iter()
                    .filter_map(|m| match m {
                        RunMount::Ssh { id, required, .. } => Some((id.as_str(), *required)),
                        _ => None,
                    })
                    .collect()
            } else {
                r.secrets
                    .iter()
                    .map(|s| (s.id.as_str(), s.required))
                    .collect()
            };
            let at = self.dag[n].at.as_ref().map(|a| a.to_string());
            for (id, required) in uses {
                match needs.iter_mut().find(|e| e.id == id) {
                    None => needs.push(SecretNeed {
                        id: id.to_string(),
                        required,
                        at: at.clone(),
                    }),
                    Some(e) if required && !e.required => {
                        e.required = true;
                        e.at = at.clone();
                    }
                    Some(_) => {}
                }
            }
        }
        needs
    }

    /// One line per node: digest prefix, operation, inputs, name and source location.
    pub fn render_text(&self) -> String {
        let order = self.topo_order();
        // Pieces pushed, not formatted, and one buffer for every node's inputs: a monorepo's graph is
        // tens of thousands of lines.
        let mut out = String::new();
        let mut inputs = Vec::new();
        for n in order {
            let node = &self.dag[n];
            self.inputs_into(n, &mut inputs);
            let digests = inputs.iter().map(|&(_, i)| self.dag[i].digest.as_str());
            let at = node.at.as_ref().map(|a| a as &dyn std::fmt::Display);
            let line = (node.digest.as_str(), node.op.kind(), node.name.as_str());
            push_node_line(&mut out, line, digests, at);
        }
        for (name, root) in &self.roots {
            let tags = self.tags.get(name).map(Vec::as_slice);
            push_root_line(&mut out, name, self.dag[*root].digest.as_str(), tags);
        }
        out
    }

    pub fn render_dot(&self) -> String {
        let mut out = String::from(
            "digraph kiln {\n  rankdir=LR;\n  node [shape=box, fontname=monospace];\n",
        );
        for n in self.topo_order() {
            let node = &self.dag[n];
            let label = format!("{}\\n{}", node.digest.short(), escape_dot(&node.name));
            let _ = writeln!(out, "  \"{}\" [label=\"{label}\"];", node.digest.short());
        }
        for e in (&self.dag).edge_references() {
            let _ = writeln!(
                out,
                "  \"{}\" -> \"{}\" [label=\"{}\"];",
                self.dag[e.source()].digest.short(),
                self.dag[e.target()].digest.short(),
                e.weight()
            );
        }
        out.push_str("}\n");
        out
    }

    /// The stable machine schema (`schema: 1`): nodes in dependency order, roots with their secret needs.
    pub fn render_json(&self) -> String {
        #[derive(Serialize)]
        struct JsonNode<'a> {
            digest: &'a Digest,
            op: &'a Op,
            inputs: Vec<&'a Digest>,
            name: &'a str,
            at: Option<String>,
        }
        #[derive(Serialize)]
        struct JsonRoot<'a> {
            name: &'a str,
            digest: &'a Digest,
            secrets: Vec<SecretNeed>,
            ssh: Vec<SecretNeed>,
            /// The names it declares (`tagged [...]`), when it declares any.
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            tags: &'a [String],
        }
        #[derive(Serialize)]
        struct JsonGraph<'a> {
            schema: u32,
            roots: Vec<JsonRoot<'a>>,
            nodes: Vec<JsonNode<'a>>,
        }
        let g = JsonGraph {
            schema: 1,
            roots: self
                .roots
                .iter()
                .map(|(name, n)| JsonRoot {
                    name,
                    digest: &self.dag[*n].digest,
                    secrets: self.needs_of(*n, false),
                    ssh: self.needs_of(*n, true),
                    tags: self.tags.get(name).map_or(&[], Vec::as_slice),
                })
                .collect(),
            nodes: self
                .topo_order()
                .into_iter()
                .map(|n| JsonNode {
                    digest: &self.dag[n].digest,
                    op: &self.dag[n].op,
                    inputs: self
                        .inputs(n)
                        .iter()
                        .map(|&i| &self.dag[i].digest)
                        .collect(),
                    name: &self.dag[n].name,
                    at: self.dag[n].at.as_ref().map(|a| a.to_string()),
                })
                .collect(),
        };
        let mut s = serde_json::to_string_pretty(&g).expect("graph JSON serializes");
        s.push('\n');
        s
    }

    /// `sha256:<hex>` of each root, one per line, in the order selected.
    pub fn render_digests(&self) -> String {
        self.roots
            .iter()
            .map(|(_, n)| format!("{}\n", self.dag[*n].digest))
            .collect()
    }
}

/// A node's line of the text view: its digest's first digits, its kind, its name, its inputs' digests
/// (all as text) and where it is written. `kiln graph`'s reuse of its last graph writes it too.
pub fn push_node_line<'a>(
    out: &mut String,
    (digest, kind, name): (&str, &str, &str),
    inputs: impl Iterator<Item = &'a str>,
    at: Option<&dyn std::fmt::Display>,
) {
    // Pieces pushed, not formatted: a monorepo's graph is tens of thousands of lines.
    out.push_str(crate::digest::short(digest));
    out.push_str("  ");
    out.push_str(kind);
    out.extend(std::iter::repeat_n(
        ' ',
        8usize.saturating_sub(kind.len()).max(1),
    ));
    out.push_str(name);
    for (i, input) in inputs.enumerate() {
        out.push_str(if i == 0 { "  <- " } else { ", " });
        out.push_str(crate::digest::short(input));
    }
    if let Some(at) = at {
        let _ = write!(out, "  ({at})");
    }
    out.push('\n');
}

/// A root's line of the text view: its name, its digest, the names it is tagged with.
pub fn push_root_line(out: &mut String, name: &str, digest: &str, tags: Option<&[String]>) {
    let _ = write!(out, "root {name}: {digest}");
    if let Some(tags) = tags {
        let _ = write!(out, "  tagged {}", tags.join(", "));
    }
    out.push('\n');
}

fn escape_dot(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
