//! Incremental evaluation: each global (a target, let, param, secret or ssh of a module) is a unit whose
//! evaluation is recorded as the sequence of what it did (nodes pushed, leaves reused, other globals
//! used, notes, secret findings, contexts, directory checks, base image configs) and its value. A later
//! run whose unit has the same key (the module's source and imports, the name, the options) replays
//! the record instead of evaluating, in the same order, so the program is the one a fresh evaluation
//! would make, node for node.
//!
//! A record is only replayed while everything it read is as it was: each global it used must have the
//! fingerprint it had, each directory it checked must still be (or not be) one, each base config must
//! be the same. Otherwise the replay stops and the unit is evaluated afresh; the nodes the replay had
//! pushed are reused by that evaluation where they are equal, so the order still matches.
//!
//! A fingerprint covers a record's own content and the identities of the nodes it refers to (owner and
//! slot, or leaf key), not the owners' content: a unit whose record comes out the same after one of
//! its inputs changed cuts the re-evaluation off there (Buck2's and Bazel's early cut-off).

use foldhash::{HashMap, HashMapExt as _};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Evaluator, MountValue, NodeId, Op, Result, Span, Value};
use crate::diag::{Located, Note, SourceFile};
use crate::digest::{Digest, Encoder};
use crate::graph::entitlement::Entitlement;

/// A unit's evaluation as it can be replayed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnitRecord {
    /// The files the record's locations are in, by name; locations index this list.
    files: Vec<String>,
    refs: Vec<Ref>,
    events: Vec<Event>,
    /// The value, its node ids replaced by indices into `refs`.
    value: Value,
    pub fingerprint: Digest,
}

/// A node a record refers to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Ref {
    /// The record's own node or leaf, by the order its events made or reused them.
    Own(u32),
    /// A leaf node (an image, scratch, a context): the same node wherever it is used.
    Leaf(String),
    /// A node another unit made: that unit (its module's file name and its name) and its slot, and the
    /// node's kind, which evaluation may look at.
    Of {
        module: String,
        name: String,
        slot: u32,
        kind: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct At {
    file: u32,
    span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Event {
    Node {
        op: Op,
        inputs: Vec<u32>,
        name: String,
        at: Option<At>,
        asks: Vec<(Entitlement, At)>,
    },
    Leaf {
        key: String,
        op: Op,
        name: String,
        at: Option<At>,
    },
    /// Another global was used: by its module's file name, its name, and the fingerprint its record
    /// had.
    Call {
        module: String,
        name: String,
        use_at: Span,
        fingerprint: Digest,
    },
    Note {
        at: At,
        message: String,
    },
    Lint {
        at: At,
        rule: String,
        message: String,
    },
    Context {
        name: String,
        dir: std::path::PathBuf,
    },
    IsDir {
        path: std::path::PathBuf,
        is: bool,
    },
    Base {
        reference: String,
        platform: String,
        at: At,
        config: crate::frontend::BaseConfig,
    },
}

/// What a unit did, as it happens (node ids of this run), until it becomes a record.
pub(super) struct Recording {
    key: Digest,
    module: usize,
    name: String,
    events: Vec<Raw>,
    /// Nodes the unit made or reused as leaves, in order, and each one's slot.
    slots: Vec<NodeId>,
    slot_of: HashMap<NodeId, u32>,
    /// Something it did cannot be recorded (a global that is not cacheable): no record is kept.
    poisoned: bool,
}

enum Raw {
    Node(NodeId),
    Leaf(String, NodeId),
    Call {
        module: usize,
        name: String,
        use_at: Span,
        fingerprint: Digest,
    },
    Note(Note),
    Lint {
        at: Located,
        rule: String,
        message: String,
    },
    Context(String, std::path::PathBuf),
    IsDir(std::path::PathBuf, bool),
    Base {
        reference: String,
        platform: String,
        at: Located,
        config: crate::frontend::BaseConfig,
    },
}

/// What a traced run did, unit by unit, in the order the units finished: what `kiln graph` keeps of
/// its last graph to redo only the units an edit reaches.
#[derive(Default)]
pub struct Trace {
    pub units: Vec<Finished>,
    /// The key of each leaf node (an image, scratch, a context), which is the same node wherever used.
    pub leaf_key: HashMap<NodeId, String>,
    /// Units that could not be recorded: their fingerprints differ from run to run.
    pub uncached: u64,
    /// Every directory check evaluation made or a replay checked again: the path, and whether it was
    /// a directory.
    pub dirs: Vec<(std::path::PathBuf, bool)>,
}

/// A unit of a traced run: its module's file name, its name, its fingerprint, the nodes it made or
/// reused by slot, and the globals it used.
pub struct Finished {
    pub module: String,
    pub name: String,
    pub fingerprint: Digest,
    pub slots: Vec<NodeId>,
    pub calls: Vec<(String, String)>,
}

/// A unit evaluated or replayed in this run.
pub(super) struct Done {
    pub(super) fingerprint: Digest,
    slots: Vec<NodeId>,
}

/// The evaluator's incremental state.
#[derive(Default)]
pub(super) struct Units {
    /// The digest of the options every unit key covers; `None`: no caching.
    pub(super) options: Option<Digest>,
    recording: Vec<Recording>,
    /// By (module, name).
    done: HashMap<(usize, String), Done>,
    /// Unit keys of the globals of this run, by (module, name).
    keys: HashMap<(usize, String), Option<Digest>>,
    /// Which unit made each node (module, name), and its slot there.
    owner: HashMap<NodeId, (usize, String, u32)>,
    /// Leaf keys by node.
    leaf_key: HashMap<NodeId, String>,
    /// Nodes a stopped replay pushed: a fresh evaluation that pushes an equal node reuses one.
    pub(super) orphans: Vec<NodeId>,
    /// How many units were replayed and evaluated (for `KILN_EVAL_STATS`).
    pub(super) replayed: usize,
    pub(super) evaluated: usize,
    /// Units that could not be recorded so far (each gets a fingerprint of its own).
    uncached: u64,
    /// The units finished so far, when the run is traced.
    pub(super) traced: Option<Vec<Finished>>,
    /// The directory checks so far, when the run is traced (`Trace::dirs`).
    dirs: Vec<(std::path::PathBuf, bool)>,
}

impl Units {
    pub(super) fn new(options: Option<Digest>) -> Units {
        Units {
            options,
            ..Units::default()
        }
    }

    /// The fingerprint of global `name` of `module`, once it is done.
    pub(super) fn fingerprint(&self, module: usize, name: &str) -> Option<Digest> {
        let done = self.done.get(&(module, name.to_string()));
        done.map(|d| d.fingerprint.clone())
    }

    /// What the run did, when it was traced.
    pub(super) fn trace(&mut self) -> Trace {
        Trace {
            units: self.traced.take().unwrap_or_default(),
            leaf_key: std::mem::take(&mut self.leaf_key),
            uncached: self.uncached,
            dirs: std::mem::take(&mut self.dirs),
        }
    }
}

/// Why a replay stopped: the unit is evaluated afresh.
struct Stale;

/// A replay in progress: the nodes of its slots, those it pushed, the nodes its references resolved to,
/// and where its notes and findings went.
struct Replay {
    /// The record's files in this run, found as they are needed.
    files: Vec<Option<Arc<SourceFile>>>,
    slots: Vec<NodeId>,
    pushed: Vec<NodeId>,
    resolved: Vec<Option<NodeId>>,
    notes: Vec<usize>,
    findings: Vec<usize>,
    /// The globals it used (module, name).
    calls: Vec<(usize, String)>,
}

impl Evaluator<'_> {
    /// The unit key of global `name` of `module`, or `None` when it cannot be cached.
    pub(super) fn unit_key(&mut self, module: usize, name: &str) -> Option<Digest> {
        let options = self.units.options.clone()?;
        let k = (module, name.to_string());
        if let Some(key) = self.units.keys.get(&k) {
            return key.clone();
        }
        let key = self.loader.module_key(module).map(|m| {
            let mut h = Encoder::new("kiln/eval-unit/v1");
            h.digest(&options).digest(&m).str(name);
            h.finish()
        });
        self.units.keys.insert(k, key.clone());
        key
    }

    /// Pushes a node and records it as the innermost unit's own (or reuses an equal node a stopped
    /// replay left).
    pub(super) fn push(
        &mut self,
        op: Op,
        inputs: Vec<NodeId>,
        name: String,
        at: Option<Located>,
    ) -> NodeId {
        let reused = self.units.orphans.iter().position(|&o| {
            let n = &self.program.nodes[o];
            n.op == op && n.inputs == inputs && n.name == name && same_at(&n.at, &at)
        });
        let id = match reused {
            Some(p) => self.units.orphans.remove(p),
            None => self.program.push(op, inputs, name, at),
        };
        if let Some(r) = self.units.recording.last_mut() {
            r.slot(id);
            r.events.push(Raw::Node(id));
        }
        id
    }

    /// Records the reuse (or making) of the leaf `key`.
    pub(super) fn record_leaf(&mut self, key: &str, id: NodeId) {
        self.units
            .leaf_key
            .entry(id)
            .or_insert_with(|| key.to_string());
        if let Some(r) = self.units.recording.last_mut() {
            r.slot(id);
            r.events.push(Raw::Leaf(key.to_string(), id));
        }
    }

    pub(super) fn record_note(&mut self, note: &Note) {
        if let Some(r) = self.units.recording.last_mut() {
            r.events.push(Raw::Note(note.clone()));
        }
    }

    pub(super) fn record_lint(&mut self, at: Located, rule: &str, message: &str) {
        if let Some(r) = self.units.recording.last_mut() {
            r.events.push(Raw::Lint {
                at,
                rule: rule.to_string(),
                message: message.to_string(),
            });
        }
    }

    pub(super) fn record_context(&mut self, name: &str, dir: &std::path::Path) {
        if let Some(r) = self.units.recording.last_mut() {
            r.events
                .push(Raw::Context(name.to_string(), dir.to_path_buf()));
        }
    }

    pub(super) fn record_is_dir(&mut self, path: &std::path::Path, is: bool) {
        if self.units.traced.is_some() {
            self.units.dirs.push((path.to_path_buf(), is));
        }
        if let Some(r) = self.units.recording.last_mut() {
            r.events.push(Raw::IsDir(path.to_path_buf(), is));
        }
    }

    pub(super) fn record_base(
        &mut self,
        reference: &str,
        platform: &crate::platform::Platform,
        at: &Located,
        config: &crate::frontend::BaseConfig,
    ) {
        if let Some(r) = self.units.recording.last_mut() {
            r.events.push(Raw::Base {
                reference: reference.to_string(),
                platform: platform.to_string(),
                at: at.clone(),
                config: config.clone(),
            });
        }
    }

    /// Records that the innermost unit used global `name` of `module` (after it was evaluated).
    pub(super) fn record_call(&mut self, module: usize, name: &str, use_at: Span) {
        if self.units.recording.is_empty() {
            return;
        }
        let done = self
            .units
            .done
            .get(&(module, name.to_string()))
            .map(|d| d.fingerprint.clone());
        let r = self.units.recording.last_mut().expect("checked above");
        match done {
            Some(fingerprint) => r.events.push(Raw::Call {
                module,
                name: name.to_string(),
                use_at,
                fingerprint,
            }),
            None => r.poisoned = true,
        }
    }

    /// Starts recording unit `key`, global `name` of `module`.
    pub(super) fn begin_unit(&mut self, key: Digest, module: usize, name: &str) {
        self.units.recording.push(Recording {
            key,
            module,
            name: name.to_string(),
            events: Vec::new(),
            slots: Vec::new(),
            slot_of: HashMap::new(),
            poisoned: false,
        });
    }

    /// Ends the innermost recording: on success its record is kept (and given to the loader to keep),
    /// and the unit counts as done.
    pub(super) fn end_unit(&mut self, value: Option<&Value>) {
        let Some(rec) = self.units.recording.pop() else {
            return;
        };
        let Some(value) = value else { return };
        self.units.evaluated += 1;
        let key = rec.key.clone();
        let record = if rec.poisoned {
            None
        } else {
            self.make_record(&rec, value)
        };
        let fingerprint = match &record {
            Some(r) => r.fingerprint.clone(),
            // Not cacheable: a fingerprint no record can match, so nothing that used it replays.
            None => {
                self.units.uncached += 1;
                let mut h = Encoder::new("kiln/eval-unit-uncached/v1");
                h.digest(&key).str(&self.units.uncached.to_string());
                h.finish()
            }
        };
        let calls = rec.events.iter().filter_map(|e| match e {
            Raw::Call { module, name, .. } if self.units.traced.is_some() => {
                Some((*module, name.clone()))
            }
            _ => None,
        });
        let calls = calls.collect();
        self.finish_unit((rec.module, &rec.name), fingerprint, rec.slots, calls);
        if let Some(record) = record {
            self.loader.keep_unit(key, &record);
        }
    }

    /// Marks a unit done; `calls`: the globals it used.
    fn finish_unit(
        &mut self,
        (module, name): (usize, &str),
        fingerprint: Digest,
        slots: Vec<NodeId>,
        calls: Vec<(usize, String)>,
    ) {
        if let Some(traced) = &mut self.units.traced {
            let file = |m: usize| self.loader.file(m).name.clone();
            traced.push(Finished {
                module: file(module),
                name: name.to_string(),
                fingerprint: fingerprint.clone(),
                slots: slots.clone(),
                calls: calls.into_iter().map(|(m, n)| (file(m), n)).collect(),
            });
        }
        for (i, &id) in slots.iter().enumerate() {
            self.units
                .owner
                .entry(id)
                .or_insert_with(|| (module, name.to_string(), i as u32));
        }
        let done = Done { fingerprint, slots };
        self.units.done.insert((module, name.to_string()), done);
    }

    fn make_record(&self, rec: &Recording, value: &Value) -> Option<UnitRecord> {
        let mut b = Builder {
            ev: self,
            rec,
            files: Vec::new(),
            file_index: HashMap::new(),
            refs: Vec::new(),
            ref_of: HashMap::new(),
            ok: true,
        };
        let mut events = Vec::with_capacity(rec.events.len());
        for raw in &rec.events {
            events.push(b.event(raw));
        }
        let mut value = value.clone();
        value.map_nodes(&mut |n| b.reference(n) as NodeId);
        // A URL may carry a token: a unit that holds one is evaluated every time, never written down.
        let token = events.iter().any(|e| match e {
            Event::Node { op, .. } | Event::Leaf { op, .. } => op_has_token(op),
            _ => false,
        }) || value_has_token(&value);
        if !b.ok || token {
            return None;
        }
        let mut record = UnitRecord {
            files: b.files,
            refs: b.refs,
            events,
            value,
            fingerprint: Digest::of(b""),
        };
        record.fingerprint = fingerprint(&record);
        Some(record)
    }

    /// Replays `record` as unit `key`: its value, or `None` when something it read has changed (the
    /// nodes it had pushed are left as orphans for the fresh evaluation to reuse).
    /// Takes the record: its ops and value move into the program, never copied.
    pub(super) fn replay(
        &mut self,
        module: usize,
        name: &str,
        mut record: UnitRecord,
    ) -> Result<Option<Value>> {
        let mut st = Replay {
            files: Vec::new(),
            slots: Vec::new(),
            pushed: Vec::new(),
            resolved: vec![None; record.refs.len()],
            notes: Vec::new(),
            findings: Vec::new(),
            calls: Vec::new(),
        };
        // What the replay does is the record's, not the recording's of whoever uses this global: a
        // marker takes it (the globals it uses record their own).
        self.begin_unit(Digest::of(b"replay"), module, name);
        let events = std::mem::take(&mut record.events);
        let replayed = self.replay_events(&record, events, &mut st);
        self.units.recording.pop();
        if let Err(Stale) = replayed? {
            self.undo_replay(st);
            return Ok(None);
        }
        let mut value = std::mem::replace(&mut record.value, Value::None);
        let mut stale = false;
        value.map_nodes(
            &mut |r| match self.resolve(&record, r, &st.slots, &mut st.resolved) {
                Ok(id) => id,
                Err(Stale) => {
                    stale = true;
                    0
                }
            },
        );
        if stale {
            self.undo_replay(st);
            return Ok(None);
        }
        self.units.replayed += 1;
        self.finish_unit((module, name), record.fingerprint, st.slots, st.calls);
        Ok(Some(value))
    }

    /// What a stopped replay leaves: its nodes become orphans; its notes and findings are taken back
    /// (the fresh evaluation makes them again). Those of the globals it used stay: they are done.
    fn undo_replay(&mut self, st: Replay) {
        self.units.orphans.extend(st.pushed);
        for &i in st.notes.iter().rev() {
            self.loader.notes().remove(i);
        }
        for &i in st.findings.iter().rev() {
            self.loader.findings().remove(i);
        }
    }

    fn replay_events(
        &mut self,
        record: &UnitRecord,
        events: Vec<Event>,
        st: &mut Replay,
    ) -> Result<std::result::Result<(), Stale>> {
        st.files = vec![None; record.files.len()];
        for ev in events {
            let outcome = match ev {
                Event::Node {
                    op,
                    inputs,
                    name,
                    at,
                    asks,
                } => self.replay_node(record, st, (op, &inputs, name), at.as_ref(), &asks),
                Event::Leaf { key, op, name, at } => {
                    self.replay_leaf(record, st, key, op, name, &at)
                }
                Event::Call {
                    module,
                    name,
                    use_at,
                    fingerprint,
                } => {
                    let Ok(m) = self.loader.module_by_name(&module) else {
                        return Ok(Err(Stale));
                    };
                    self.global(m, &name, use_at)?;
                    let done = self.units.done.get(&(m, name.clone()));
                    if self.units.traced.is_some() {
                        st.calls.push((m, name));
                    }
                    match done.map(|d| &d.fingerprint) == Some(&fingerprint) {
                        true => Ok(()),
                        false => Err(Stale),
                    }
                }
                Event::Note { at, message } => self.file_at(record, st, &at).map(|at| {
                    let notes = self.loader.notes();
                    notes.push(Note { at, message });
                    st.notes.push(notes.len() - 1);
                }),
                Event::Lint { at, rule, message } => match self.file_at(record, st, &at) {
                    Ok(at) => {
                        if let Some(i) = self.add_finding(&at, &rule, message)? {
                            st.findings.push(i);
                        }
                        Ok(())
                    }
                    Err(s) => Err(s),
                },
                Event::Context { name, dir } => {
                    self.contexts.insert(name, dir);
                    Ok(())
                }
                Event::IsDir { path, is } => match self.loader.is_dir(&path) == is {
                    true if self.units.traced.is_some() => {
                        self.units.dirs.push((path, is));
                        Ok(())
                    }
                    true => Ok(()),
                    false => Err(Stale),
                },
                Event::Base {
                    reference,
                    platform,
                    at,
                    config,
                } => self.replay_base(record, st, &reference, &platform, &at, &config),
            };
            if let Err(s) = outcome {
                return Ok(Err(s));
            }
        }
        Ok(Ok(()))
    }

    /// The location `at` of `record` in this run's files.
    fn file_at(
        &self,
        record: &UnitRecord,
        st: &mut Replay,
        at: &At,
    ) -> std::result::Result<Located, Stale> {
        let i = at.file as usize;
        let slot = st.files.get_mut(i).ok_or(Stale)?;
        if slot.is_none() {
            *slot = self.loader.file_named(&record.files[i]);
        }
        let file = slot.as_ref().ok_or(Stale)?;
        Ok(Located::new(file, at.span))
    }

    fn replay_node(
        &mut self,
        record: &UnitRecord,
        st: &mut Replay,
        (op, inputs, name): (Op, &[u32], String),
        at: Option<&At>,
        asks: &[(Entitlement, At)],
    ) -> std::result::Result<(), Stale> {
        let mut ids = Vec::with_capacity(inputs.len());
        for &r in inputs {
            ids.push(self.resolve(record, r as usize, &st.slots, &mut st.resolved)?);
        }
        let at = at.map(|a| self.file_at(record, st, a)).transpose()?;
        let mut located = Vec::with_capacity(asks.len());
        for (e, a) in asks {
            located.push((*e, self.file_at(record, st, a)?));
        }
        let id = self.program.push(op, ids, name, at);
        self.program.nodes[id].asks = located;
        st.slots.push(id);
        st.pushed.push(id);
        Ok(())
    }

    fn replay_leaf(
        &mut self,
        record: &UnitRecord,
        st: &mut Replay,
        key: String,
        op: Op,
        name: String,
        at: &Option<At>,
    ) -> std::result::Result<(), Stale> {
        let at = at
            .as_ref()
            .map(|a| self.file_at(record, st, a))
            .transpose()?;
        let id = match self.leaves.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.program.push(op, vec![], name, at);
                self.leaves.insert(key.clone(), id);
                id
            }
        };
        self.units.leaf_key.entry(id).or_insert(key);
        st.slots.push(id);
        Ok(())
    }

    /// A base image's config is asked for again (when building, the image is resolved as the build
    /// will import it); the record holds only while it is the same.
    fn replay_base(
        &mut self,
        record: &UnitRecord,
        st: &mut Replay,
        reference: &str,
        platform: &str,
        at: &At,
        config: &crate::frontend::BaseConfig,
    ) -> std::result::Result<(), Stale> {
        let p = crate::platform::Platform::parse(platform).map_err(|_| Stale)?;
        let at = self.file_at(record, st, at)?;
        match self.opts.lower.image_env.get(reference, &p, at) {
            Ok(c) if c == *config => Ok(()),
            _ => Err(Stale),
        }
    }

    /// The node of this run that reference `r` of `record` stands for.
    fn resolve(
        &mut self,
        record: &UnitRecord,
        r: usize,
        slots: &[NodeId],
        resolved: &mut [Option<NodeId>],
    ) -> std::result::Result<NodeId, Stale> {
        if let Some(id) = resolved.get(r).copied().flatten() {
            return Ok(id);
        }
        let id = match record.refs.get(r).ok_or(Stale)? {
            Ref::Own(s) => *slots.get(*s as usize).ok_or(Stale)?,
            Ref::Leaf(key) => *self.leaves.get(key).ok_or(Stale)?,
            Ref::Of {
                module,
                name,
                slot,
                kind,
            } => {
                let m = self.loader.module_by_name(module).map_err(|_| Stale)?;
                let done = self.units.done.get(&(m, name.clone())).ok_or(Stale)?;
                let id = *done.slots.get(*slot as usize).ok_or(Stale)?;
                if self.program.nodes[id].op.kind() != kind {
                    return Err(Stale);
                }
                id
            }
        };
        resolved[r] = Some(id);
        Ok(id)
    }
}

impl Recording {
    fn slot(&mut self, id: NodeId) {
        let next = self.slots.len() as u32;
        self.slot_of.entry(id).or_insert(next);
        self.slots.push(id);
    }
}

/// Turns a recording's raw events into a record's, naming files and nodes as a later run can.
struct Builder<'a, 'b> {
    ev: &'a Evaluator<'b>,
    rec: &'a Recording,
    files: Vec<String>,
    file_index: HashMap<String, u32>,
    refs: Vec<Ref>,
    ref_of: HashMap<NodeId, u32>,
    ok: bool,
}

impl Builder<'_, '_> {
    fn at(&mut self, at: &Located) -> At {
        let name = &at.file.name;
        let file = match self.file_index.get(name) {
            Some(&i) => i,
            None => {
                let i = self.files.len() as u32;
                self.files.push(name.clone());
                self.file_index.insert(name.clone(), i);
                i
            }
        };
        At {
            file,
            span: at.span,
        }
    }

    fn reference(&mut self, id: NodeId) -> u32 {
        if let Some(&r) = self.ref_of.get(&id) {
            return r;
        }
        let units = &self.ev.units;
        let r = if let Some(&slot) = self.rec.slot_of.get(&id) {
            Ref::Own(slot)
        } else if let Some(key) = units.leaf_key.get(&id) {
            Ref::Leaf(key.clone())
        } else if let Some((module, name, slot)) = units.owner.get(&id) {
            Ref::Of {
                module: self.ev.loader.file(*module).name.clone(),
                name: name.clone(),
                slot: *slot,
                kind: self.ev.program.nodes[id].op.kind().to_string(),
            }
        } else {
            self.ok = false;
            Ref::Own(u32::MAX)
        };
        let i = self.refs.len() as u32;
        self.refs.push(r);
        self.ref_of.insert(id, i);
        i
    }

    fn event(&mut self, raw: &Raw) -> Event {
        match raw {
            Raw::Node(id) => {
                let n = &self.ev.program.nodes[*id];
                let inputs = n.inputs.iter().map(|&i| self.reference(i)).collect();
                let at = n.at.as_ref().map(|a| self.at(a));
                let asks = n.asks.iter().map(|(e, a)| (*e, self.at(a))).collect();
                Event::Node {
                    op: n.op.clone(),
                    inputs,
                    name: n.name.clone(),
                    at,
                    asks,
                }
            }
            Raw::Leaf(key, id) => {
                let n = &self.ev.program.nodes[*id];
                Event::Leaf {
                    key: key.clone(),
                    op: n.op.clone(),
                    name: n.name.clone(),
                    at: n.at.as_ref().map(|a| self.at(a)),
                }
            }
            Raw::Call {
                module,
                name,
                use_at,
                fingerprint,
            } => Event::Call {
                module: self.ev.loader.file(*module).name.clone(),
                name: name.clone(),
                use_at: *use_at,
                fingerprint: fingerprint.clone(),
            },
            Raw::Note(n) => Event::Note {
                at: self.at(&n.at),
                message: n.message.clone(),
            },
            Raw::Lint { at, rule, message } => Event::Lint {
                at: self.at(at),
                rule: rule.clone(),
                message: message.clone(),
            },
            Raw::Context(name, dir) => Event::Context {
                name: name.clone(),
                dir: dir.clone(),
            },
            Raw::IsDir(path, is) => Event::IsDir {
                path: path.clone(),
                is: *is,
            },
            Raw::Base {
                reference,
                platform,
                at,
                config,
            } => Event::Base {
                reference: reference.clone(),
                platform: platform.clone(),
                at: self.at(at),
                config: config.clone(),
            },
        }
    }
}

/// A record's fingerprint: what a user of its value can see of it. That is its content, less the
/// fingerprints of the globals it used (each use is checked against them when the record itself is
/// replayed) and where in the source its nodes, notes and findings are (a comment added above a target
/// moves them, and changes nothing a user of the value reads; the value's own locations stay).
fn fingerprint(record: &UnitRecord) -> Digest {
    let mut shown = record.clone();
    let nowhere = At {
        file: 0,
        span: Span::default(),
    };
    for e in &mut shown.events {
        match e {
            Event::Call {
                fingerprint,
                use_at,
                ..
            } => {
                *fingerprint = Digest::of(b"");
                *use_at = Span::default();
            }
            Event::Node { at, asks, .. } => {
                *at = None;
                asks.iter_mut().for_each(|(_, a)| *a = nowhere.clone());
            }
            Event::Leaf { at, .. } => *at = None,
            Event::Note { at, .. } | Event::Lint { at, .. } | Event::Base { at, .. } => {
                *at = nowhere.clone()
            }
            Event::Context { .. } | Event::IsDir { .. } => {}
        }
    }
    shown.fingerprint = Digest::of(b"");
    let bytes = rmp_serde::to_vec_named(&shown).unwrap_or_default();
    let mut h = Encoder::new("kiln/eval-record/v1");
    h.bytes(&bytes);
    h.finish()
}

fn op_has_token(op: &Op) -> bool {
    matches!(op, Op::Remote { url, .. } if crate::graph::remote::redacted(url) != *url)
}

fn value_has_token(v: &Value) -> bool {
    match v {
        Value::Remote { url, .. } => crate::graph::remote::redacted(url) != *url,
        Value::List(items) => items.iter().any(value_has_token),
        Value::Map(items) => items.iter().any(|(_, v)| value_has_token(v)),
        _ => false,
    }
}

fn same_at(a: &Option<Located>, b: &Option<Located>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.span == b.span && Arc::ptr_eq(&a.file, &b.file),
        _ => false,
    }
}

impl Value {
    /// Applies `f` to every node id the value holds.
    pub(super) fn map_nodes(&mut self, f: &mut impl FnMut(NodeId) -> NodeId) {
        match self {
            Value::Image(img) => {
                let fs = f(img.fs);
                if fs != img.fs {
                    Arc::make_mut(img).fs = fs;
                }
            }
            Value::Dir(n) => *n = f(*n),
            Value::File { node, .. } => *node = f(*node),
            Value::List(items) => items.iter_mut().for_each(|v| v.map_nodes(f)),
            Value::Map(items) => items.iter_mut().for_each(|(_, v)| v.map_nodes(f)),
            Value::Mount(m, _) => match m.as_mut() {
                MountValue::Cache {
                    seed: Some((n, _)), ..
                } => *n = f(*n),
                MountValue::Bind { from, .. } => *from = f(*from),
                _ => {}
            },
            Value::Str(_)
            | Value::Int(_)
            | Value::Bool(_)
            | Value::None
            | Value::Inline { .. }
            | Value::Remote { .. }
            | Value::Secret(_)
            | Value::Ssh(_) => {}
        }
    }
}

/// What of the options evaluation can read, as one digest (every unit key covers it). Where the command
/// line gave them (for error carets) is left out.
pub fn options_digest(opts: &super::EvalOptions) -> Digest {
    let l = &opts.lower;
    let mut h = Encoder::new("kiln/eval-options/v1");
    h.str(&format!(
        "{:?}",
        (
            &l.build_args,
            &l.contexts,
            &l.target,
            &l.excludes,
            l.lenient,
            &l.image_env,
            &l.platform,
            &l.build_platform,
            l.multi_platform,
            &opts.params,
        )
    ));
    h.finish()
}
