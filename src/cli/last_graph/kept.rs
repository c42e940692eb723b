//! The kept graph's format: read borrowing the file's bytes (a monorepo's graph has tens of thousands
//! of nodes, and decoding each string into its own allocation cost more than the rest of a run),
//! written through a temp file and a rename, with a CRC-32 of the rest at its end (a torn or corrupt
//! file is no kept graph). It is a cache: no fsync, since a lost write costs only a full run.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use petgraph::stable_graph::NodeIndex;
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, Midstate};
use crate::graph::Dag;
use crate::inputs::Stat;
use crate::load::ModuleFile;

const MAGIC: &str = "kiln-last-graph-v1";
/// A file or directory changed this close to its stat data being taken may change again unseen
/// (git's racily-clean rule): it is compared again, not trusted by its stat data.
const RACY_SECS: i64 = 2;
/// The slot of a node no root needs.
pub(super) const OUTSIDE: u32 = u32::MAX;

#[derive(Serialize, Deserialize)]
pub(super) struct Kept<'a> {
    #[serde(borrow)]
    magic: Cow<'a, str>,
    /// The kiln, the workspace, the labels and the evaluation options it was made with.
    #[serde(borrow)]
    pub(super) key: Cow<'a, str>,
    pub(super) files: Vec<KeptFile>,
    pub(super) walked: Vec<Walked>,
    /// The directories evaluation checked (`context(...)`), and whether each was one.
    pub(super) dirs: Vec<(PathBuf, bool)>,
    #[serde(borrow)]
    pub(super) units: Vec<Unit<'a>>,
    #[serde(borrow)]
    pub(super) nodes: Vec<Node<'a>>,
    /// The text's node order.
    pub(super) order: Vec<u32>,
    pub(super) roots: Vec<KeptRoot>,
    /// The CRC-32 of the file it was read from (none: this run made it), which a delta names.
    #[serde(skip)]
    pub(super) crc: Option<u32>,
    /// What changed since that file was written.
    #[serde(skip)]
    pub(super) touched: Touched,
}

#[derive(Serialize, Deserialize)]
pub(super) struct KeptFile {
    pub(super) module: ModuleFile,
    /// None when it was too young to vouch for the text (`RACY_SECS`).
    pub(super) stat: Option<Stat>,
}

/// A `//dir/...` pattern's walk: its directory, the `.build` files found, and the directories entered
/// with their stat data (none when too young to vouch for the listing) and their listings' CRC-32.
#[derive(Serialize, Deserialize)]
pub(super) struct Walked {
    pub(super) dir: PathBuf,
    pub(super) files: Vec<PathBuf>,
    pub(super) entered: Vec<(PathBuf, Option<Stat>, u32)>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Unit<'a> {
    #[serde(borrow)]
    pub(super) module: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) name: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) fingerprint: Cow<'a, str>,
    /// The graph node of each slot (`OUTSIDE`: none), and the key of the slots that are leaves.
    #[serde(borrow)]
    pub(super) slots: Vec<(u32, Option<Cow<'a, str>>)>,
    /// The units it used, by index (`ids`).
    #[serde(with = "serde_bytes", borrow)]
    pub(super) calls: Cow<'a, [u8]>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Node<'a> {
    #[serde(borrow)]
    pub(super) digest: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) kind: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) name: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) at: Option<Cow<'a, str>>,
    /// Its inputs' indices (`ids`).
    #[serde(with = "serde_bytes", borrow)]
    pub(super) inputs: Cow<'a, [u8]>,
    /// Its digest's state after its op (`Midstate::as_bytes`; `Dag::node_digest` finishes it).
    #[serde(with = "serde_bytes", borrow)]
    pub(super) op: Cow<'a, [u8]>,
    /// The unit and slot of the first program node that became this node (its name and place are
    /// that node's), and how many program nodes did.
    pub(super) first: Option<(u32, u32)>,
    pub(super) merged: u32,
}

impl Node<'_> {
    pub(super) fn in_range(&self, nodes: usize) -> bool {
        self.inputs.len().is_multiple_of(4) && ids(&self.inputs).all(|i| (i as usize) < nodes)
    }
}

impl Unit<'_> {
    pub(super) fn in_range(&self, nodes: usize, units: usize) -> bool {
        let node = |d: u32| d == OUTSIDE || (d as usize) < nodes;
        self.calls.len().is_multiple_of(4)
            && ids(&self.calls).all(|c| (c as usize) < units)
            && self.slots.iter().all(|(d, _)| node(*d))
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct KeptRoot {
    pub(super) name: String,
    pub(super) node: u32,
    pub(super) tags: Option<Vec<String>>,
}

/// Indices kept as a byte string (four bytes each, little endian): read without a decoder's
/// allocation per node.
pub(super) fn ids(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")))
}

pub(super) fn id_bytes(ids: impl Iterator<Item = u32>) -> Vec<u8> {
    ids.flat_map(u32::to_le_bytes).collect()
}

pub(super) fn path_of(cache: &Path) -> PathBuf {
    let mut p = cache.as_os_str().to_owned();
    p.push(".graph");
    PathBuf::from(p)
}

/// The stat data of `path`.
pub(super) fn stat(path: &Path) -> Option<Stat> {
    std::fs::metadata(path).ok().map(|m| Stat::of(&m))
}

/// `stat` when it vouches for what was read since `started` (the run's start, in seconds): the file
/// was last changed well before, so not after it was read.
pub(super) fn settled(stat: Option<Stat>, started: i64) -> Option<Stat> {
    stat.filter(|s| s.newest() + RACY_SECS < started)
}

impl<'a> Kept<'a> {
    /// The kept graph in `bytes` (a file's content), if whole and made with `key`.
    pub(super) fn read(bytes: &'a [u8], key: &Digest) -> Result<Kept<'a>, super::Why> {
        let (body, crc) = bytes
            .split_at_checked(bytes.len().wrapping_sub(4))
            .ok_or("torn")?;
        let sum = crc32fast::hash(body);
        if sum.to_le_bytes() != crc {
            return Err("torn");
        }
        let mut kept: Kept<'a> = rmp_serde::from_slice(body).map_err(|_| "unreadable")?;
        kept.crc = Some(sum);
        if kept.magic != MAGIC || kept.key != key.as_str() {
            return Err("made by another kiln or for other labels or options");
        }
        kept.in_range().then_some(kept).ok_or("unreadable")
    }

    /// Whether every index it holds is one of its nodes or units (the CRC catches accidents; this,
    /// a file some other writer left, so that nothing indexes out of range).
    fn in_range(&self) -> bool {
        let (nodes, units) = (self.nodes.len(), self.units.len());
        self.nodes.iter().all(|n| n.in_range(nodes))
            && self.order.len() == nodes
            && self.order.iter().all(|&d| (d as usize) < nodes)
            && self.roots.iter().all(|r| (r.node as usize) < nodes)
            && self.units.iter().all(|u| u.in_range(nodes, units))
    }

    /// Writes it whole to `path`.
    pub(super) fn write(&self, path: &Path) {
        write_checked(path, self);
    }

    /// The graph a full run made, with what its trace says of each unit; `None` when a unit used one
    /// the trace does not hold.
    pub(super) fn make(
        started: i64,
        key: &'a Digest,
        dag: &'a Dag,
        traced: &'a crate::Traced,
        index_of: &[Option<NodeIndex>],
        ops: &'a [Midstate],
    ) -> Option<Kept<'a>> {
        let trace = &traced.trace;
        let files = traced.modules.iter().map(|m| KeptFile {
            module: m.clone(),
            stat: settled(stat(&m.path), started),
        });
        let walked = traced.walked.iter().map(|(dir, files, entered)| Walked {
            dir: dir.clone(),
            files: files.clone(),
            entered: (entered.iter())
                .map(|(d, s, sum)| (d.clone(), settled(*s, started), *sum))
                .collect(),
        });
        let mut nodes: Vec<Node<'a>> = (dag.dag.node_indices().zip(ops))
            .map(|(n, op)| {
                let node = &dag.dag[n];
                Node {
                    digest: Cow::Borrowed(node.digest.as_str()),
                    kind: Cow::Borrowed(node.op.kind()),
                    name: Cow::Borrowed(&node.name),
                    at: node.at.as_ref().map(|a| Cow::Owned(a.to_string())),
                    inputs: Cow::Owned(id_bytes(dag.inputs(n).iter().map(|i| i.index() as u32))),
                    op: Cow::Borrowed(op.as_bytes()),
                    first: None,
                    merged: 0,
                }
            })
            .collect();
        let (units, first_of) = units(trace, index_of)?;
        // Each graph node's first program node, and how many program nodes merged into it.
        for (p, d) in index_of.iter().enumerate() {
            let Some(d) = d else { continue };
            let node = &mut nodes[d.index()];
            node.merged += 1;
            if node.merged == 1 {
                node.first = first_of.get(&p).copied();
            }
        }
        let order = dag.topo_order().iter().map(|n| n.index() as u32).collect();
        let roots = dag.roots.iter().map(|(name, n)| KeptRoot {
            name: name.clone(),
            node: n.index() as u32,
            tags: dag.tags.get(name).cloned(),
        });
        Some(Kept {
            magic: Cow::Borrowed(MAGIC),
            key: Cow::Borrowed(key.as_str()),
            files: files.collect(),
            walked: walked.collect(),
            dirs: checked(trace.dirs.clone()),
            units,
            nodes,
            order,
            roots: roots.collect(),
            crc: None,
            touched: Touched::default(),
        })
    }
}

/// Directory checks, each once.
pub(super) fn checked(mut dirs: Vec<(PathBuf, bool)>) -> Vec<(PathBuf, bool)> {
    dirs.sort();
    dirs.dedup();
    dirs
}

/// The trace's units as kept, and the unit and slot of each program node a unit made.
type Units<'a> = (Vec<Unit<'a>>, HashMap<usize, (u32, u32)>);

fn units<'a>(trace: &'a crate::load::Trace, index_of: &[Option<NodeIndex>]) -> Option<Units<'a>> {
    let unit_of: HashMap<(&str, &str), u32> = (trace.units.iter().enumerate())
        .map(|(i, u)| ((u.module.as_str(), u.name.as_str()), i as u32))
        .collect();
    let mut units = Vec::with_capacity(trace.units.len());
    let mut first_of: HashMap<usize, (u32, u32)> = HashMap::new();
    for (u, f) in trace.units.iter().enumerate() {
        let mut slots = Vec::with_capacity(f.slots.len());
        for (s, &p) in f.slots.iter().enumerate() {
            // A node no root needs is in no graph.
            let d = index_of[p].map_or(OUTSIDE, |d| d.index() as u32);
            let leaf = trace.leaf_key.get(&p).map(|k| Cow::Borrowed(k.as_str()));
            first_of.entry(p).or_insert((u as u32, s as u32));
            slots.push((d, leaf));
        }
        let calls = f
            .calls
            .iter()
            .map(|(m, n)| unit_of.get(&(m.as_str(), n.as_str())).copied());
        units.push(Unit {
            module: Cow::Borrowed(&f.module),
            name: Cow::Borrowed(&f.name),
            fingerprint: Cow::Borrowed(f.fingerprint.as_str()),
            slots,
            calls: Cow::Owned(id_bytes(calls.collect::<Option<Vec<u32>>>()?.into_iter())),
        });
    }
    Some((units, first_of))
}

/// The indices of what changed since the kept graph's file was written.
#[derive(Default)]
pub(super) struct Touched {
    /// Nodes whose digest alone changed, and nodes that changed otherwise.
    pub(super) digests: BTreeSet<u32>,
    pub(super) nodes: BTreeSet<u32>,
    pub(super) units: BTreeSet<u32>,
    pub(super) files: BTreeSet<u32>,
    pub(super) roots: BTreeSet<u32>,
    /// The walks' directories whose stat data changed (walk, directory), and the directory checks.
    pub(super) entered: BTreeSet<(u32, u32)>,
    pub(super) dirs: bool,
}

/// Writes `value` with a CRC-32 of it at the end, through a temp file and a rename; errors are
/// ignored (it is only a cache).
pub(super) fn write_checked(path: &Path, value: &impl Serialize) {
    let Ok(mut bytes) = rmp_serde::to_vec(value) else {
        return;
    };
    bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    let dir = path.parent().unwrap_or(Path::new("."));
    let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir) else {
        return;
    };
    if tmp.write_all(&bytes).is_ok() {
        let _ = tmp.persist(path);
    }
}
