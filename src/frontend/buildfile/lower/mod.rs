//! `.build` programs → `Program`: evaluates the selected targets of modules that `load` has read,
//! parsed and type-checked, into graph nodes.
//!
//! An `Image` value is the same state a Dockerfile stage has (filesystem node, env, args, working
//! directory, user, shell, image config), and every method does exactly what the instruction of the same
//! name does in a Dockerfile (`frontend::image` holds what both mean), down to variable expansion and
//! history text. That is what lets a Dockerfile and its `kiln convert` output compile to the same root
//! digest.

mod copy;
mod eval;
mod function;
mod method;
mod run;
mod unit;

pub use unit::{Finished, Trace, UnitRecord, options_digest};

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diag::{Diagnostic, Located, Note, Result, SourceFile, Span, suggest};
use crate::digest::Digest;
use crate::frontend::buildfile::check::{self as types, Interface, Ty, Use};
use crate::frontend::buildfile::syntax::{
    Arg, BinOp, Expr, ExprKind, FnDef, ItemKind, Module, StrPart,
};
use crate::frontend::image::{
    ImageState, arg_history, builtin_arg, copy_history, expose_ports, healthcheck_history,
    json_list, parse_duration, platform_arg, run_history, set,
};
use crate::frontend::lint::Finding;
use crate::frontend::shell;
use crate::frontend::{LowerOptions, join_path};
use crate::graph::entitlement::Entitlement;
use crate::graph::op::{
    CopyOp, Healthcheck, Inherit, Network, Op, RunMount, RunOp, SecretMount, Sharing,
};
use crate::graph::{NamedContext, NodeId, Program, Root};

/// The state of an image under construction: a Dockerfile stage's state.
type Img = ImageState;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum MountValue {
    Secret(SecretMount),
    Ssh {
        id: String,
        target: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Cache {
        target: String,
        id: Option<String>,
        sharing: String,
        mode: u32,
        uid: u32,
        gid: u32,
        readonly: bool,
        /// `from:` and `source:`: what a new cache starts with.
        seed: Option<(NodeId, String)>,
        /// `export: true`: `--cache-to` carries its contents.
        export: bool,
    },
    Bind {
        from: NodeId,
        target: Option<String>,
        source: String,
        rw: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum Value {
    Str(String),
    Int(u64),
    Bool(bool),
    None,
    List(Vec<Value>),
    Map(Vec<(String, Value)>),
    Image(Arc<Img>),
    /// A node whose root is the directory.
    Dir(NodeId),
    File {
        node: NodeId,
        path: String,
    },
    /// `files(...)`: written when used (after the using step expands `$NAME`, with `expand: true`).
    Inline {
        files: Vec<(String, String)>,
        expand: bool,
        span: Span,
    },
    /// `url(...)`/`git(...)`: fetched when used, after the using step expands `$NAME` in it.
    Remote {
        url: String,
        checksum: Option<String>,
        keep_git_dir: bool,
        span: Span,
    },
    Secret(String),
    Ssh(String),
    Mount(Box<MountValue>, Span),
}

impl Value {
    fn str(&self) -> &str {
        match self {
            Value::Str(s) => s,
            _ => "",
        }
    }
    fn opt_str(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn bool(&self) -> bool {
        matches!(self, Value::Bool(true))
    }
    fn strs(&self) -> Vec<String> {
        match self {
            Value::List(v) => v.iter().map(|x| x.str().to_string()).collect(),
            _ => Vec::new(),
        }
    }
    fn text(&self) -> String {
        match self {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => String::new(),
        }
    }
}

/// What the command line gives a `.build` program.
#[derive(Clone, Debug, Default)]
pub struct EvalOptions {
    pub lower: LowerOptions,
    /// `--param NAME=VALUE` (and `--build-arg`, which also sets params).
    pub params: BTreeMap<String, String>,
}

/// Directories that package contexts (`context(".")` in a monorepo package) stand for, by context name.
pub type PackageContexts = BTreeMap<String, PathBuf>;

/// What the evaluator asks of whoever loaded the program (a `Session`), so that evaluation does no IO:
/// the modules it read, parsed and checked, by index; a package that a label names, loaded on demand
/// (only the targets evaluation reaches name packages, and a label may be computed, so the set is not
/// known before evaluating); whether a directory `context()` names exists; and where secret check
/// findings and `print(...)` notes go.
pub trait Loader {
    /// The parsed module at `index`.
    fn module(&self, index: usize) -> &Arc<Module>;
    /// What the type checker found in the module at `index`.
    fn interface(&self, index: usize) -> &Interface;
    /// The directory `context(".")` means for the module at `index`.
    fn dir(&self, index: usize) -> &Path;
    /// The package label (`//services/api`) of the module at `index`, in a monorepo.
    fn package(&self, index: usize) -> Option<&str>;
    /// `//pkg:name` for a target of a monorepo package, `name` otherwise.
    fn label(&self, index: usize, name: &str) -> String;
    /// Loads the package `//a/b` (its BUILD.build) and returns its module's index.
    fn load_package(&mut self, package: &str, from: Option<Located>) -> Result<usize>;
    fn is_dir(&self, path: &Path) -> bool;
    /// What the secret checks found in the steps evaluated so far (`kiln build` refuses on errors).
    fn findings(&mut self) -> &mut Vec<Finding>;
    /// The program's `print(...)` notes so far, in order (the driver shows them).
    fn notes(&mut self) -> &mut Vec<Note>;
    /// The source file of the module at `index` (read, not necessarily parsed).
    fn file(&self, index: usize) -> &Arc<SourceFile>;
    /// Whether the module at `index` has a target `name` (known without parsing a cached module).
    fn is_target(&self, index: usize, name: &str) -> bool;
    /// Its targets' names, in file order.
    fn targets(&self, index: usize) -> Vec<String>;
    /// Whether evaluation results are kept between runs (see `unit`).
    fn caching(&self) -> bool {
        false
    }
    /// The digest of the module at `index` as evaluation sees it (its path, text and imports' digests);
    /// `None`: its globals are not cached.
    fn module_key(&self, _index: usize) -> Option<Digest> {
        None
    }
    /// The record a previous run kept for unit `key`.
    fn cached_unit(&self, _key: &Digest) -> Option<UnitRecord> {
        None
    }
    /// Keeps the record of unit `key` for later runs.
    fn keep_unit(&mut self, _key: Digest, _record: &UnitRecord) {}
    /// The module whose file is named `name` (as `SourceFile::name` says), loaded if need be.
    fn module_by_name(&mut self, _name: &str) -> Result<usize> {
        Err(Diagnostic::input("no module cache"))
    }
    /// The loaded module's file named `name`.
    fn file_named(&self, _name: &str) -> Option<Arc<SourceFile>> {
        None
    }
    /// Whether target `name` of the module at `index` may have a `tagged` or `for` clause.
    fn has_clauses(&self, _index: usize, _name: &str) -> bool {
        true
    }
    /// Units replayed and evaluated by the last evaluation (for `KILN_EVAL_STATS`).
    fn eval_stats(&mut self, _replayed: usize, _evaluated: usize) {}
    /// Whether evaluation keeps a `Trace` of what each unit did.
    fn traced(&self) -> bool {
        false
    }
}

pub struct Evaluator<'s> {
    loader: &'s mut dyn Loader,
    opts: &'s EvalOptions,
    pub program: Program,
    pub contexts: PackageContexts,
    globals: HashMap<(usize, String), Value>,
    /// The globals being evaluated, outermost first, each with where the one before it used it (none
    /// for a selected target): a cycle is shown as the path through them.
    busy: Vec<((usize, String), Option<Located>)>,
    leaves: BTreeMap<String, NodeId>,
    /// Whose module the expression being evaluated belongs to.
    module: usize,
    /// One frame per function call being evaluated, innermost last: its parameters' and lets' values
    /// by the span of their defining name. Only the innermost frame is visible (lexical scoping).
    scopes: Vec<HashMap<Span, Value>>,
    /// Target label → the targets its value was built from (for `kiln query`).
    pub deps: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// The targets being evaluated, innermost last.
    current: Vec<String>,
    /// Recording and replaying units (see `unit`).
    units: unit::Units,
}

impl<'s> Evaluator<'s> {
    fn new(loader: &'s mut dyn Loader, opts: &'s EvalOptions) -> Evaluator<'s> {
        let mut units = unit::Units::new(loader.caching().then(|| unit::options_digest(opts)));
        units.traced = loader.traced().then(Vec::new);
        Evaluator {
            loader,
            opts,
            program: Program::default(),
            contexts: BTreeMap::new(),
            globals: HashMap::new(),
            busy: Vec::new(),
            leaves: BTreeMap::new(),
            module: 0,
            scopes: Vec::new(),
            deps: BTreeMap::new(),
            current: Vec::new(),
            units,
        }
    }

    /// Tells the loader how many units were replayed and evaluated.
    fn report(&mut self) {
        let (r, e) = (self.units.replayed, self.units.evaluated);
        self.loader.eval_stats(r, e);
    }

    /// `//pkg:name` in a monorepo, `name` otherwise.
    fn label(&self, module: usize, name: &str) -> String {
        self.loader.label(module, name)
    }

    fn is_target(&self, module: usize, name: &str) -> bool {
        self.loader.is_target(module, name)
    }

    /// The names of the targets of a module, in file order.
    fn targets(&self, module: usize) -> Vec<String> {
        self.loader.targets(module)
    }

    /// Adds each `(module, target)` of `roots` as a root named by its label; a diagnostic that points
    /// nowhere points at `at` (where the command line named the target).
    fn add_roots(&mut self, roots: &[(usize, String)], at: Option<&Located>) -> Result<()> {
        for (m, t) in roots {
            let label = self.label(*m, t);
            self.add_root(*m, t, label).map_err(|d| match at {
                Some(at) if d.labels.is_empty() => d.label(at.clone(), ""),
                _ => d,
            })?;
        }
        Ok(())
    }

    /// Evaluates target `name` of `module` and adds it as a root named `label`.
    fn add_root(&mut self, module: usize, name: &str, label: String) -> Result<NodeId> {
        let node = self.target_node(module, name, None)?;
        let tags = self.tags(module, name)?;
        let (platforms, platforms_at) = self.platforms(module, name)?;
        self.program.roots.push(Root {
            name: label,
            node,
            tags,
            platforms,
            platforms_at,
        });
        Ok(node)
    }

    /// A target's `tagged [...]` (`tags: true`) or `for [...]` clause and its value, evaluated in the
    /// target's module; `None` when the target has no such clause.
    fn clause(&mut self, module: usize, name: &str, tags: bool) -> Result<Option<(Expr, Value)>> {
        if !self.loader.has_clauses(module, name) {
            return Ok(None);
        }
        let expr = self
            .loader
            .module(module)
            .items
            .iter()
            .find_map(|i| match &i.kind {
                ItemKind::Target {
                    name: n,
                    tags: t,
                    platforms: p,
                    ..
                } if n.name == name => {
                    if tags {
                        t.clone()
                    } else {
                        p.clone()
                    }
                }
                _ => None,
            });
        let Some(expr) = expr else {
            return Ok(None);
        };
        let saved_module = std::mem::replace(&mut self.module, module);
        let saved_scopes = std::mem::take(&mut self.scopes);
        let value = self.eval(&expr);
        self.module = saved_module;
        self.scopes = saved_scopes;
        Ok(Some((expr, value?)))
    }

    /// A target's `for [...]`: its platforms normalized, each once, and where they are declared.
    fn platforms(
        &mut self,
        module: usize,
        name: &str,
    ) -> Result<(Vec<crate::platform::Platform>, Option<Located>)> {
        let Some((expr, value)) = self.clause(module, name, false)? else {
            return Ok((Vec::new(), None));
        };
        let file = self.loader.file(module).clone();
        let Value::List(items) = value else {
            return Err(self.err(expr.span, "platforms must be a list of strings"));
        };
        if items.is_empty() {
            return Err(Diagnostic::at(
                &file,
                expr.span,
                format!("target `{name}` declares no platforms"),
            )
            .help("name at least one, such as `for [\"linux/amd64\"]`, or drop the clause"));
        }
        let spans = element_spans(&expr, items.len());
        let mut platforms = Vec::new();
        for (item, span) in items.iter().zip(spans) {
            let text = item.str();
            let p = crate::platform::Platform::parse(text).map_err(|e| {
                Diagnostic::at(
                    &file,
                    span,
                    format!("target `{name}`: invalid platform `{text}`: {e}"),
                )
                .help("write os/arch[/variant], such as `linux/arm64` (buildx spelling)")
            })?;
            if !platforms.contains(&p) {
                platforms.push(p);
            }
        }
        Ok((platforms, Some(Located::new(&file, expr.span))))
    }

    /// A target's `tagged [...]`, evaluated in its module, each checked as a reference a push can name.
    fn tags(&mut self, module: usize, name: &str) -> Result<Vec<String>> {
        let Some((expr, value)) = self.clause(module, name, true)? else {
            return Ok(Vec::new());
        };
        let Value::List(items) = value else {
            return Err(self.err(expr.span, "tags must be a list of strings"));
        };
        let spans = element_spans(&expr, items.len());
        let file = self.loader.file(module).clone();
        let mut tags = Vec::new();
        for (item, span) in items.iter().zip(spans) {
            let tag = item.str();
            let bad = |message: String, help: String| {
                Diagnostic::at(&file, span, format!("target `{name}`: {message}")).help(help)
            };
            let parsed = crate::registry::ImageName::parse(tag)
                .map_err(|d| bad(d.message, d.help.unwrap_or_default()))?;
            if parsed.digest.is_some() {
                return Err(bad(
                    format!("tag `{tag}` names a digest; a push needs a tag"),
                    "drop the `@sha256:...` part: `HOST/NAME:TAG`".into(),
                ));
            }
            tags.push(tag.to_string());
        }
        Ok(tags)
    }

    fn file(&self) -> Arc<SourceFile> {
        self.loader.file(self.module).clone()
    }

    fn err(&self, span: Span, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::at(&self.file(), span, msg)
    }

    fn at(&self, span: Span) -> Option<Located> {
        Some(Located::new(&self.file(), span))
    }

    /// The node a target stands for: an Image's config node, or a Dir's node.
    fn target_node(&mut self, module: usize, name: &str, from: Option<Located>) -> Result<NodeId> {
        if !self.is_target(module, name) {
            let targets = self.targets(module);
            let file = self.loader.file(module);
            let mut d = Diagnostic::input(format!("no target `{name}` in {}", file.name));
            if let Some(at) = from {
                d = d.label(at, "");
            }
            return Err(match suggest(name, targets.iter().map(String::as_str)) {
                Some(s) => d.help(format!("did you mean `{s}`?")),
                None => d.help(format!("the targets are: {}", targets.join(", "))),
            });
        }
        let v = self.global(module, name, Span::default())?;
        let dir = match v {
            Value::Image(img) => return Ok(self.finish(&img)),
            v @ (Value::Dir(_) | Value::Inline { .. } | Value::Remote { .. }) => {
                self.source_node(&v)
            }
            _ => unreachable!("targets are checked to be Image or Dir"),
        };
        // A Dir target is exported as a filesystem (or an image of just those files). A host directory
        // (a context, inline files, a download) is no filesystem yet: copied onto scratch it becomes
        // one, as `scratch().copy(...)` would make it.
        let fs = if matches!(
            self.program.nodes[dir].op,
            Op::Context { .. } | Op::Inline { .. } | Op::Remote { .. }
        ) {
            let scratch = self.leaf("image:scratch".into(), Op::Scratch, "scratch".into(), None);
            self.push(
                Op::Copy(CopyOp {
                    sources: vec![".".into()],
                    dest: "/".into(),
                    chown: None,
                    chmod: None,
                    extract: false,
                    excludes: Vec::new(),
                    parents: false,
                    files: Vec::new(),
                }),
                vec![scratch, dir],
                format!("[{}] directory", self.label(module, name)),
                None,
            )
        } else {
            dir
        };
        Ok(self.push(
            Op::Config(Box::default()),
            vec![fs],
            format!("{name} (directory)"),
            None,
        ))
    }

    /// The image config node of an image value (what a stage ends with).
    fn finish(&mut self, img: &Img) -> NodeId {
        let mut config = img.config.clone();
        config.env = img.env.clone();
        config.cwd = img.config_cwd.clone();
        config.user = img.user.clone();
        self.push(
            Op::Config(Box::new(config)),
            vec![img.fs],
            "image config".into(),
            None,
        )
    }

    fn global(&mut self, module: usize, name: &str, use_at: Span) -> Result<Value> {
        let key = (module, name.to_string());
        let target_label = self
            .is_target(module, name)
            .then(|| self.label(module, name));
        if let (Some(label), Some(outer)) = (&target_label, self.current.last())
            && label != outer
        {
            self.deps
                .entry(outer.clone())
                .or_default()
                .insert(label.clone());
        }
        if let Some(v) = self.globals.get(&key) {
            let v = v.clone();
            self.record_call(module, name, use_at);
            return Ok(v);
        }
        let used_at = (use_at != Span::default()).then(|| Located::new(&self.file(), use_at));
        if let Some(start) = self.busy.iter().position(|(k, _)| *k == key) {
            return Err(self.cycle(start, used_at));
        }
        self.busy.push((key.clone(), used_at));
        let saved_module = self.module;
        let saved_scopes = std::mem::take(&mut self.scopes);
        self.module = module;
        if let Some(label) = &target_label {
            self.deps.entry(label.clone()).or_default();
            self.current.push(label.clone());
        }
        let result = self.unit_value(module, name, use_at);
        if target_label.is_some() {
            self.current.pop();
        }
        // Steps of a target show its name in progress output.
        if let (Some(label), Ok(Value::Image(img))) = (&target_label, &result) {
            self.name_steps(img.fs, label);
        }
        self.module = saved_module;
        self.scopes = saved_scopes;
        self.busy.pop();
        let v = result?;
        self.globals.insert(key, v.clone());
        self.record_call(module, name, use_at);
        Ok(v)
    }

    /// A global's value: replayed from a previous run's record when nothing it read has changed, else
    /// evaluated (and recorded).
    fn unit_value(&mut self, module: usize, name: &str, use_at: Span) -> Result<Value> {
        let unit = self.unit_key(module, name);
        let orphans = self.units.orphans.len();
        if let Some(u) = &unit
            && let Some(record) = self.loader.cached_unit(u)
            && let Some(v) = self.replay(module, name, record)?
        {
            return Ok(v);
        }
        if let Some(u) = unit.clone() {
            self.begin_unit(u, module, name);
        }
        let v = self.evaluate_global(module, name, use_at);
        if unit.is_some() {
            self.end_unit(v.as_ref().ok());
        }
        // What a stopped replay of this unit left and its evaluation did not reuse is garbage.
        let keep = orphans.min(self.units.orphans.len());
        self.units.orphans.truncate(keep);
        v
    }

    /// Evaluates global `name` of `module` (the current module) from its source.
    fn evaluate_global(&mut self, module: usize, name: &str, use_at: Span) -> Result<Value> {
        // The module is shared: its items are evaluated in place, never copied.
        let source = self.loader.module(module).clone();
        let item = source.items.iter().find(|i| match &i.kind {
            ItemKind::Let(l) => l.name.name == name,
            ItemKind::Target { name: n, .. }
            | ItemKind::Param { name: n, .. }
            | ItemKind::Secret { name: n, .. }
            | ItemKind::Ssh { name: n, .. } => n.name == name,
            _ => false,
        });
        match item.map(|i| &i.kind) {
            Some(ItemKind::Let(l)) => self.eval(&l.value),
            Some(ItemKind::Target { value, .. }) => self.eval(value),
            Some(ItemKind::Param {
                name: n,
                ty,
                default,
            }) => self.param(&n.name, n.span, ty, default.as_ref()),
            Some(ItemKind::Secret { name: n, id }) => Ok(Value::Secret(
                id.as_ref()
                    .and_then(|i| i.as_plain_str())
                    .unwrap_or_else(|| n.name.clone()),
            )),
            Some(ItemKind::Ssh { name: n, id }) => Ok(Value::Ssh(
                id.as_ref()
                    .and_then(|i| i.as_plain_str())
                    .unwrap_or_else(|| n.name.clone()),
            )),
            _ => Err(self.err(use_at, format!("unknown name `{name}`"))),
        }
    }

    /// The error for a global used while it is being evaluated: the path from it back to itself
    /// (`a → b → a`), every edge labelled at the use that makes it, in whichever file that is.
    fn cycle(&self, start: usize, closing: Option<Located>) -> Diagnostic {
        let path = &self.busy[start..];
        let names: Vec<String> = path.iter().map(|((m, n), _)| self.label(*m, n)).collect();
        let uses = path
            .iter()
            .skip(1)
            .map(|(_, at)| at.clone())
            .chain([closing]);
        let mut shown = names.clone();
        shown.push(names[0].clone());
        let mut d = Diagnostic::input(format!("cycle: {}", shown.join(" → ")));
        for (i, at) in uses.enumerate() {
            if let Some(at) = at {
                d = d.label(at, format!("`{}` uses `{}`", shown[i], shown[i + 1]));
            }
        }
        d.help("targets and lets must not refer to themselves, directly or through others: break the cycle at one of these uses")
    }

    /// Prefixes step names with the target that made them (only steps not yet named by another target).
    fn name_steps(&mut self, mut node: NodeId, label: &str) {
        loop {
            let n = &mut self.program.nodes[node];
            if n.name.starts_with('[') || !n.op.makes_layer() {
                return;
            }
            n.name = format!("[{label}] {}", n.name);
            match n.inputs.first() {
                Some(&i) => node = i,
                None => return,
            }
        }
    }

    fn param(
        &mut self,
        name: &str,
        span: Span,
        ty: &crate::frontend::buildfile::syntax::TypeExpr,
        default: Option<&Expr>,
    ) -> Result<Value> {
        let file = self.file();
        let t = types::resolve_type(&file, ty)?;
        let given = self
            .opts
            .params
            .get(name)
            .or_else(|| self.opts.lower.build_args.get(name));
        let Some(text) = given else {
            return match default {
                Some(d) => self.eval(d),
                None if matches!(t, Ty::Opt(_)) => Ok(Value::None),
                None => Err(self
                    .err(
                        span,
                        format!("param `{name}` has no default and was not given"),
                    )
                    .help(format!("pass `--param {name}=VALUE`"))),
            };
        };
        let bad = |what: &str| {
            Diagnostic::input(format!("--param {name}={text}: {what}"))
                .label(Located::new(&file, span), "declared here")
        };
        Ok(match t {
            Ty::Int => Value::Int(text.parse().map_err(|_| bad("not a whole number"))?),
            Ty::Bool => Value::Bool(
                crate::options::parse_bool(Some(text)).ok_or_else(|| bad("not true or false"))?,
            ),
            Ty::List(_) => Value::List(
                text.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::Str(s.to_string()))
                    .collect(),
            ),
            _ => Value::Str(text.clone()),
        })
    }

    /// What the checker resolved the name used at `span` (in the current module) to.
    fn resolved(&self, span: Span) -> Result<Use> {
        self.loader
            .interface(self.module)
            .uses
            .get(&span)
            .copied()
            .ok_or_else(|| self.unresolved(span))
    }

    /// A use the checker recorded nothing (or something else) for: a bug in kiln, never a panic.
    fn unresolved(&self, span: Span) -> Diagnostic {
        self.err(
            span,
            "internal error: the checker did not resolve this name",
        )
        .category(crate::diag::Category::Build)
        .help("please report this program; it is a bug in kiln, not in the program")
    }

    fn lookup(&mut self, name: &str, span: Span) -> Result<Value> {
        match self.resolved(span)? {
            Use::Global => self.global(self.module, name, span),
            Use::Local(def) => self
                .scopes
                .last()
                .and_then(|frame| frame.get(&def))
                .cloned()
                .ok_or_else(|| self.unresolved(span)),
            Use::Module(_) | Use::Builtin => Err(self.unresolved(span)),
        }
    }

    /// The module an expression names (`m` in `m.name`), if the checker resolved it to one.
    fn module_named(&self, e: &Expr) -> Option<usize> {
        match (&e.kind, self.resolved(e.span)) {
            (ExprKind::Name(_), Ok(Use::Module(idx))) => Some(idx),
            _ => None,
        }
    }

    fn bind(&mut self, def: Span, v: Value) {
        self.scopes.last_mut().expect("a frame").insert(def, v);
    }

    fn leaf(&mut self, key: String, op: Op, name: String, at: Option<Located>) -> NodeId {
        let id = match self.leaves.get(&key) {
            Some(&id) => id,
            None => {
                let id = self.program.push(op, vec![], name, at);
                self.leaves.insert(key.clone(), id);
                id
            }
        };
        self.record_leaf(&key, id);
        id
    }

    fn image_leaf(
        &mut self,
        reference: &str,
        span: Span,
        platform: &crate::platform::Platform,
    ) -> NodeId {
        let at = self.at(span);
        if reference == "scratch" {
            return self.leaf("image:scratch".into(), Op::Scratch, "scratch".into(), at);
        }
        let platform = platform.in_graph();
        let name = match &platform {
            Some(p) => format!("FROM {reference} ({p})"),
            None => format!("FROM {reference}"),
        };
        self.leaf(
            format!("image:{reference} {platform:?}"),
            Op::Image {
                reference: reference.to_string(),
                platform,
            },
            name,
            at,
        )
    }

    fn context_leaf(&mut self, name: &str) -> NodeId {
        let excludes = if name == "context" {
            self.opts.lower.excludes.clone()
        } else {
            Vec::new()
        };
        self.leaf(
            format!("context:{name}"),
            Op::Context {
                name: name.to_string(),
                excludes,
            },
            format!("context {name}"),
            None,
        )
    }

    fn new_image(
        &self,
        fs: NodeId,
        base: crate::frontend::BaseConfig,
        platform: &crate::platform::Platform,
    ) -> Img {
        let mut img = ImageState::new(fs, base);
        img.set_platform(platform);
        img
    }
}

fn opt_int(v: &Value, default: u32) -> u32 {
    match v {
        Value::Int(i) => u32::try_from(*i).unwrap_or(u32::MAX),
        _ => default,
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::None, Value::None) => true,
        _ => false,
    }
}

/// A command value as argv: a string runs through the image's shell, a list as written.
fn command(img: &Img, v: &Value) -> Vec<String> {
    match v {
        Value::Str(s) => {
            let mut argv = img
                .shell
                .clone()
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
            argv.push(s.clone());
            argv
        }
        other => other.strs(),
    }
}

fn step_name(op: &Op) -> String {
    match op {
        Op::Run(r) => format!("run {}", r.args.last().map(String::as_str).unwrap_or("")),
        Op::Copy(c) => format!(
            "{} {} {}",
            if c.extract { "add" } else { "copy" },
            c.sources.join(" "),
            c.dest
        ),
        Op::Mkdir { path, .. } => format!("workdir {path}"),
        other => other.kind().to_string(),
    }
}

/// Evaluates the loaded module `module`, selecting `targets` (all of them when empty; the last one when
/// `None`), into a program whose roots are the targets in order.
pub fn lower_module(
    loader: &mut dyn Loader,
    module: usize,
    targets: Option<&[String]>,
    opts: &EvalOptions,
    target_at: Option<Located>,
) -> Result<(Program, PackageContexts)> {
    let idx = module;
    let mut ev = Evaluator::new(loader, opts);
    ev.module = idx;
    let all = ev.targets(idx);
    let selected: Vec<String> = match targets {
        Some(t) if !t.is_empty() => t.to_vec(),
        Some(_) => all.clone(),
        None => match all.last() {
            Some(t) => vec![t.clone()],
            None => {
                let file = ev.loader.file(idx);
                return Err(
                    Diagnostic::input(format!("{} defines no target", file.name))
                        .help("add one: `target image: Image = image(\"busybox\").run(\"...\")`"),
                );
            }
        },
    };
    let roots: Vec<(usize, String)> = selected.into_iter().map(|t| (idx, t)).collect();
    ev.add_roots(&roots, target_at.as_ref())?;
    Ok((ev.program, ev.contexts))
}

/// What evaluating a selection of targets gives.
pub struct Lowered {
    pub program: Program,
    /// The package directories the program's contexts name.
    pub contexts: PackageContexts,
    /// Target label → the targets its value was built from (for `kiln query`).
    pub deps: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// What each unit did, when the loader asked for it (`Loader::traced`).
    pub trace: Trace,
}

/// Evaluates each `(module, target)` of `roots`, in order, into one program whose roots are those
/// targets, named by their labels.
pub fn lower_targets(
    loader: &mut dyn Loader,
    roots: &[(usize, String)],
    opts: &EvalOptions,
) -> Result<Lowered> {
    let mut ev = Evaluator::new(loader, opts);
    let added = ev.add_roots(roots, None);
    ev.report();
    added?;
    let trace = ev.units.trace();
    let Evaluator {
        program,
        contexts,
        deps,
        globals,
        leaves,
        units,
        ..
    } = ev;
    // A monorepo's evaluation leaves tens of thousands of values and map entries: freeing them costs
    // milliseconds nothing after this waits for.
    std::thread::spawn(move || drop((globals, leaves, units)));
    Ok(Lowered {
        program,
        contexts,
        deps,
        trace,
    })
}

/// An evaluation of chosen globals only, with the run's cache: what `kiln graph` redoes after an edit
/// when it reuses its last graph for the rest. The globals they use are replayed (or evaluated) as
/// in a full run.
pub struct Targeted<'s>(Evaluator<'s>);

impl<'s> Targeted<'s> {
    pub fn new(loader: &'s mut dyn Loader, opts: &'s EvalOptions) -> Targeted<'s> {
        let mut ev = Evaluator::new(loader, opts);
        ev.units.traced = Some(Vec::new());
        Targeted(ev)
    }

    /// Evaluates (or replays) global `name` of the module whose file is named `module`: its
    /// fingerprint, or `None` when it is not cached.
    pub fn unit(&mut self, module: &str, name: &str) -> Result<Option<Digest>> {
        let m = self.0.loader.module_by_name(module)?;
        self.0.global(m, name, Span::default())?;
        Ok(self.0.units.fingerprint(m, name))
    }

    /// Adds target `name` of the module whose file is named `module` as a root, named by its label.
    pub fn root(&mut self, module: &str, name: &str) -> Result<()> {
        let m = self.0.loader.module_by_name(module)?;
        let label = self.0.label(m, name);
        self.0.add_root(m, name, label).map(|_| ())
    }

    /// The program made, and what each unit did.
    pub fn finish(mut self) -> (Program, Trace) {
        self.0.report();
        let trace = self.0.units.trace();
        (self.0.program, trace)
    }
}

/// Where each of a clause's `n` values is written: a list written out points at the bad element, a
/// list from elsewhere at the whole expression.
fn element_spans(expr: &Expr, n: usize) -> Vec<Span> {
    match &expr.kind {
        ExprKind::List(es) if es.len() == n => es.iter().map(|e| e.span).collect(),
        _ => vec![expr.span; n],
    }
}
