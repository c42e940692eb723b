//! Redoing what an edit reached: the units evaluated again (`evaluate`), what they made mapped onto
//! the kept graph (`splice`, `apply`), the digests downstream of a changed op (`rehash`), and the text
//! as `Dag::render_text` writes it (`render`).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};

use super::Why;
use super::kept::{Kept, OUTSIDE, id_bytes, ids};
use crate::graph::{Dag, Program};
use crate::load::{EvalOptions, Session, Targeted, Trace};

/// More units than this to redo: the full run is as quick.
const MOST_UNITS: usize = 512;

/// Evaluates what the edit of the `changed` modules reaches and brings the kept graph up to date; an
/// error when it cannot say what a full run would.
pub(super) fn redo(
    kept: &mut Kept<'_>,
    session: &mut Session,
    opts: &EvalOptions,
    changed: &BTreeSet<String>,
) -> Result<(), Why> {
    let reached = importers(kept, changed);
    let (program, trace) = {
        let mut t = Targeted::new(session, opts);
        let moved = evaluate(kept, &mut t, &reached)?;
        // A root's image config is made from its target's value: again when that may have changed.
        for r in &kept.roots {
            let (module, target) = root_module(&r.name).ok_or("a root is not a package's")?;
            if reached.contains(&module) || moved.contains(&(module.as_str(), target.as_str())) {
                t.root(&module, &target).map_err(|_| "a root failed")?;
            }
        }
        t.finish()
    };
    if !session.notes.is_empty() || !session.findings.is_empty() || trace.uncached > 0 {
        return Err("a note, a finding or a unit that cannot be recorded");
    }
    // Labels take one platform: a target declaring others is the full run's to refuse or allow.
    let platform = &opts.lower.platform;
    if (program.roots.iter()).any(|r| r.platforms_at.is_some() && r.platforms != [platform.clone()])
    {
        return Err("a target declares its platforms");
    }
    let ops = splice(kept, &program, &trace)?;
    // What the units evaluated again checked, for the next run to check.
    let dirs = super::kept::checked([&kept.dirs[..], &trace.dirs[..]].concat());
    if dirs != kept.dirs {
        kept.dirs = dirs;
        kept.touched.dirs = true;
    }
    rehash(kept, &ops)?;
    for m in session.module_files() {
        let i = (kept.files.iter()).position(|f| f.module.name == m.name);
        let i = i.ok_or("a module it does not know")?;
        let f = &mut kept.files[i];
        if reached.contains(&m.name) && f.module.targets != m.targets {
            return Err("a package's targets changed");
        }
        if f.module.imports != m.imports {
            f.module.imports = m.imports;
            kept.touched.files.insert(i as u32);
        }
    }
    Ok(())
}

/// The `changed` modules and every module importing one of them, directly or not.
fn importers(kept: &Kept<'_>, changed: &BTreeSet<String>) -> BTreeSet<String> {
    let mut reached = changed.clone();
    loop {
        let before = reached.len();
        for f in &kept.files {
            if f.module.imports.iter().any(|i| reached.contains(i)) {
                reached.insert(f.module.name.clone());
            }
        }
        if reached.len() == before {
            return reached;
        }
    }
}

/// Evaluates the units of the `reached` modules, then each unit that used one whose fingerprint
/// changed, in the order the kept run finished them (a unit finishes after those it uses): the units
/// whose fingerprint changed (module, name).
fn evaluate<'k>(
    kept: &'k Kept<'_>,
    t: &mut Targeted<'_>,
    reached: &BTreeSet<String>,
) -> Result<HashSet<(&'k str, &'k str)>, Why> {
    let mut callers: Vec<Vec<u32>> = vec![Vec::new(); kept.units.len()];
    for (i, u) in kept.units.iter().enumerate() {
        for c in ids(&u.calls) {
            callers[c as usize].push(i as u32);
        }
    }
    let mut work: BTreeSet<u32> = (kept.units.iter().enumerate())
        .filter(|(_, u)| reached.contains(u.module.as_ref()))
        .map(|(i, _)| i as u32)
        .collect();
    let mut done = 0;
    let mut moved = HashSet::new();
    while let Some(i) = work.pop_first() {
        done += 1;
        if done > MOST_UNITS {
            return Err("the edit reaches too many units");
        }
        let u = &kept.units[i as usize];
        let fingerprint = t.unit(&u.module, &u.name).map_err(|_| "a unit failed")?;
        if fingerprint.ok_or("a unit is not cached")?.as_str() != u.fingerprint {
            work.extend(&callers[i as usize]);
            moved.insert((u.module.as_ref(), u.name.as_ref()));
        }
    }
    Ok(moved)
}

/// The module file and target a root's label names (`//dir:target` is a target of `dir/BUILD.build`).
fn root_module(label: &str) -> Option<(String, String)> {
    let (package, target) = label.strip_prefix("//")?.rsplit_once(':')?;
    let file = crate::load::PACKAGE_FILE;
    let module = match package {
        "" => file.to_string(),
        p => format!("{p}/{file}"),
    };
    Some((module, target.to_string()))
}

/// Maps what the units of `trace` made onto the kept graph (their fingerprints, calls, ops, names and
/// places): the graph nodes whose op changed. An error when a unit, node or root is not one it knows
/// as such.
fn splice(kept: &mut Kept<'_>, program: &Program, trace: &Trace) -> Result<Vec<u32>, Why> {
    let mut to_graph: Vec<Option<u32>> = vec![None; program.nodes.len()];
    // (program node, unit, slot) of every node a unit made, and (unit, calls, fingerprint) of each.
    let mut made = Vec::new();
    let mut leaves = Vec::new();
    let mut units = Vec::with_capacity(trace.units.len());
    {
        let index: HashMap<(&str, &str), usize> = (kept.units.iter().enumerate())
            .map(|(i, u)| ((u.module.as_ref(), u.name.as_ref()), i))
            .collect();
        let find = |m: &str, n: &str| index.get(&(m, n)).copied().ok_or("a new unit");
        for f in &trace.units {
            let u = find(&f.module, &f.name)?;
            let slots = &kept.units[u].slots;
            if f.slots.len() != slots.len() {
                return Err("a unit made another number of nodes");
            }
            for (s, &p) in f.slots.iter().enumerate() {
                let (d, leaf) = &slots[s];
                let key = trace.leaf_key.get(&p).map(String::as_str);
                if key != leaf.as_deref() || to_graph[p].is_some_and(|x| x != *d) {
                    return Err("a unit's nodes are not the ones kept");
                }
                to_graph[p] = Some(*d);
                // A replayed unit too: it may be one an earlier edit changed, replayed as it was.
                match leaf {
                    None => made.push((p, u as u32, s as u32)),
                    Some(_) => leaves.push((p, *d, (u as u32, s as u32))),
                }
            }
            let calls = f.calls.iter().map(|(m, n)| find(m, n).map(|i| i as u32));
            units.push((u, calls.collect::<Result<Vec<u32>, Why>>()?, &f.fingerprint));
        }
    }
    for (u, calls, fingerprint) in units {
        let calls = id_bytes(calls.into_iter());
        let unit = &mut kept.units[u];
        if *unit.calls != calls || unit.fingerprint != fingerprint.as_str() {
            unit.calls = Cow::Owned(calls);
            unit.fingerprint = Cow::Owned(fingerprint.as_str().to_string());
            kept.touched.units.insert(u as u32);
        }
    }
    // A leaf (an image, scratch, a context) is one node wherever used, placed where its first user
    // in a full run's order uses it; this run's first user may be another, which only a full run
    // settles.
    for (p, d, slot) in leaves.into_iter().filter(|l| l.1 != OUTSIDE) {
        let (node, k) = (&program.nodes[p], &kept.nodes[d as usize]);
        let at = node.at.as_ref().map(ToString::to_string);
        let moved = node.name != k.name || at.as_deref() != k.at.as_deref();
        if k.first == Some(slot) && moved {
            return Err("a shared node's place changed");
        }
    }
    let mut ops = Vec::new();
    for (p, u, s) in made {
        // A node no root needs is in no graph, and one that now needs it has an input the kept
        // graph does not know.
        let Some(d) = to_graph[p].filter(|&d| d != OUTSIDE) else {
            continue;
        };
        let k = &kept.nodes[d as usize];
        let named = k.first == Some((u, s)) || k.merged == 1;
        apply(kept, (&program.nodes[p], d), &to_graph, named, &mut ops)?;
    }
    // A root's own node (its image config) is made outside any unit.
    for r in &program.roots {
        let moved = "a root is another node";
        let k = (kept.roots.iter())
            .position(|k| k.name == r.name)
            .ok_or(moved)?;
        let d = kept.roots[k].node;
        match to_graph[r.node] {
            Some(x) if x != d => return Err(moved),
            Some(_) => {}
            None => {
                to_graph[r.node] = Some(d);
                let only = kept.nodes[d as usize].merged == 1;
                apply(kept, (&program.nodes[r.node], d), &to_graph, only, &mut ops)?;
            }
        }
        let tags = (!r.tags.is_empty()).then(|| r.tags.clone());
        if kept.roots[k].tags != tags {
            kept.roots[k].tags = tags;
            kept.touched.roots.insert(k as u32);
        }
    }
    Ok(ops)
}

/// Brings kept node `d` up to what program node `node` is: its op (noted in `ops` when it changed),
/// and its name and place when `named` (the node is the first of those merged into `d`). An error
/// when its inputs are other nodes, or something changed that other merged nodes may not share.
fn apply(
    kept: &mut Kept<'_>,
    (node, d): (&crate::graph::program::Node, u32),
    to_graph: &[Option<u32>],
    named: bool,
    ops: &mut Vec<u32>,
) -> Result<(), Why> {
    let inputs = node
        .inputs
        .iter()
        .map(|&i| to_graph[i].filter(|&d| d != OUTSIDE));
    let k = &mut kept.nodes[d as usize];
    let inputs = inputs
        .collect::<Option<Vec<u32>>>()
        .ok_or("a node's inputs changed")?;
    if !inputs.iter().copied().eq(ids(&k.inputs)) {
        return Err("a node's inputs changed");
    }
    let op = Dag::op_midstate(&node.op);
    let at = node.at.as_ref().map(ToString::to_string);
    let text_changed = node.name != k.name || at.as_deref() != k.at.as_deref();
    let op_changed = op.as_bytes() != &*k.op;
    if k.merged > 1 && (op_changed || (!named && text_changed)) {
        return Err("a changed node was merged with another");
    }
    if op_changed {
        k.op = Cow::Owned(op.as_bytes().to_vec());
        k.kind = Cow::Borrowed(node.op.kind());
        ops.push(d);
    }
    if named && text_changed {
        k.name = Cow::Owned(node.name.clone());
        k.at = at.map(Cow::Owned);
    }
    if op_changed || (named && text_changed) {
        kept.touched.nodes.insert(d);
    }
    Ok(())
}

/// Hashes again the nodes whose op changed and every node downstream of a changed digest; an error
/// when a node's new digest is another node's (a full run would merge them).
fn rehash(kept: &mut Kept<'_>, ops: &[u32]) -> Result<(), Why> {
    if ops.is_empty() {
        return Ok(());
    }
    let mut changed = vec![false; kept.nodes.len()];
    let op_changed: HashSet<u32> = ops.iter().copied().collect();
    for i in 0..kept.order.len() {
        let d = kept.order[i] as usize;
        let k = &kept.nodes[d];
        if !op_changed.contains(&(d as u32)) && !ids(&k.inputs).any(|i| changed[i as usize]) {
            continue;
        }
        let inputs: Vec<&str> = (ids(&k.inputs))
            .map(|i| kept.nodes[i as usize].digest.as_ref())
            .collect();
        let digest = Dag::node_digest(&k.op, &inputs).ok_or("unreadable")?;
        if digest.as_str() != kept.nodes[d].digest {
            kept.nodes[d].digest = Cow::Owned(digest.as_str().to_string());
            kept.touched.digests.insert(d as u32);
            changed[d] = true;
        }
    }
    let unique: HashSet<&str> = kept.nodes.iter().map(|n| n.digest.as_ref()).collect();
    match unique.len() == kept.nodes.len() {
        true => Ok(()),
        false => Err("a changed node is now another's twin"),
    }
}

/// The graph as `Dag::render_text` writes it.
pub(super) fn render(kept: &Kept<'_>) -> String {
    let mut out = String::with_capacity(kept.nodes.len() * 128);
    for &d in &kept.order {
        let node = &kept.nodes[d as usize];
        let inputs = ids(&node.inputs).map(|i| kept.nodes[i as usize].digest.as_ref());
        let at = node.at.as_ref().map(|a| a as &dyn std::fmt::Display);
        let line = (node.digest.as_ref(), node.kind.as_ref(), node.name.as_ref());
        crate::graph::push_node_line(&mut out, line, inputs, at);
    }
    for r in &kept.roots {
        let digest = &kept.nodes[r.node as usize].digest;
        crate::graph::push_root_line(&mut out, &r.name, digest, r.tags.as_deref());
    }
    out
}
