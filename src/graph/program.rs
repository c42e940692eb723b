//! The program every front end lowers to: a topological list of `Op` nodes wired to their inputs, the roots
//! selected from it, and the named contexts its `Context` ops may refer to.

use std::path::PathBuf;

use super::Op;
use super::entitlement;
use crate::diag::Located;

/// Index of a node in `Program::nodes`; inputs always point at earlier nodes, so the list is topological.
pub type NodeId = usize;

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<NodeId>,
    /// A human name for progress and listings, e.g. `[build 2/4] RUN make`.
    pub name: String,
    /// The source location that created the node.
    pub at: Option<Located>,
    /// Where the source asks for each entitlement the node's op needs (never hashed).
    pub asks: entitlement::Asks,
}

/// A selected output of the program: a stage of a Dockerfile, a target of a .build file.
#[derive(Clone, Debug, Default)]
pub struct Root {
    pub name: String,
    pub node: NodeId,
    /// The references the target declares (`.build`'s `tagged [...]`): where `--push`, `--load` and
    /// `-o` put it when the command line names none. Never hashed.
    pub tags: Vec<String>,
    /// The platforms the target declares (`.build`'s `for [...]`), normalized, each once: what it is
    /// built for when the command line names none. Never hashed.
    pub platforms: Vec<crate::platform::Platform>,
    /// Where they are declared, for an error about them.
    pub platforms_at: Option<crate::diag::Located>,
}

#[derive(Clone, Debug, Default)]
pub struct Program {
    pub nodes: Vec<Node>,
    pub roots: Vec<Root>,
}

impl Program {
    /// Adds `other`'s nodes and roots after this program's (its node ids shifted past them), so two
    /// lowerings become one program; building its DAG merges the nodes they have in common.
    pub fn append(&mut self, other: Program) {
        let offset = self.nodes.len();
        for mut n in other.nodes {
            for i in &mut n.inputs {
                *i += offset;
            }
            self.nodes.push(n);
        }
        self.roots.extend(other.roots.into_iter().map(|r| Root {
            node: r.node + offset,
            ..r
        }));
    }

    pub fn push(
        &mut self,
        op: Op,
        inputs: Vec<NodeId>,
        name: String,
        at: Option<Located>,
    ) -> NodeId {
        debug_assert!(inputs.iter().all(|&i| i < self.nodes.len()));
        self.nodes.push(Node {
            op,
            inputs,
            name,
            at,
            asks: Vec::new(),
        });
        self.nodes.len() - 1
    }
}

/// A `--build-context NAME=...` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory.
    Dir(PathBuf),
    /// An image reference such as `oci-layout:///abs/dir:tag`.
    Image(String),
}
