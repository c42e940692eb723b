//! `.build` programs → `Program`: loads a file and its imports (and, in a monorepo, the packages its
//! labels name), type-checks each module, and evaluates the selected targets into graph nodes.
//!
//! An `Image` value is the same state a Dockerfile stage has (filesystem node, env, args, working
//! directory, user, shell, image config), and every method does exactly what the instruction of the same
//! name does in a Dockerfile (`frontend::image` holds what both mean), down to variable expansion and history text. That is what lets a
//! Dockerfile and its `kiln convert` output compile to the same root digest.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::diag::{Diagnostic, Located, Result, SourceFile, Span, suggest};
use crate::frontend::buildfile::check::{self as types, Interface, Ty, Use};
use crate::frontend::buildfile::syntax::{
    Arg, BinOp, Expr, ExprKind, FnDef, ItemKind, Module, StrPart,
};
use crate::frontend::image::{
    arg_history, builtin_arg, copy_history, expose_ports, healthcheck_history, json_list,
    parse_duration, run_history, set,
};
use crate::frontend::shell;
use crate::frontend::{LowerOptions, join_path};
use crate::graph::entitlement::Entitlement;
use crate::graph::op::{
    ConfigOp, CopyOp, Healthcheck, HistoryEntry, Inherit, Network, Op, RunMount, RunOp,
    SecretMount, Sharing,
};
use crate::graph::{NamedContext, NodeId, Program, Root};

/// The standard library, compiled into kiln: `import "@std/apt.build" as apt`.
pub const STD: &[(&str, &str)] = &[
    ("apt.build", include_str!("../../../std/apt.build")),
    ("apk.build", include_str!("../../../std/apk.build")),
    ("go.build", include_str!("../../../std/go.build")),
    ("node.build", include_str!("../../../std/node.build")),
    (
        "artifact.build",
        include_str!("../../../std/artifact.build"),
    ),
];

/// The name of the file that holds a monorepo package's targets.
pub const PACKAGE_FILE: &str = "BUILD.build";
/// The file that marks a monorepo's root.
pub const ROOT_MARKER: &str = "kiln.toml";

/// A loaded, checked module.
pub struct Loaded {
    pub module: Module,
    pub iface: Interface,
    /// Import alias → module index.
    pub imports: HashMap<String, usize>,
    /// The directory `context(".")` means, and the package label (`//services/api`) in a monorepo.
    pub dir: PathBuf,
    pub package: Option<String>,
    /// The file (canonical), or `@std/<name>`.
    pub path: PathBuf,
}

/// Every module of a build, loaded on demand.
pub struct Session {
    pub modules: Vec<Loaded>,
    by_path: HashMap<PathBuf, usize>,
    /// The monorepo root (the directory holding `kiln.toml`), if any.
    pub root: Option<PathBuf>,
    loading: Vec<PathBuf>,
    /// What the secret checks found in the steps evaluated so far (`kiln build` refuses on errors).
    pub findings: Vec<crate::frontend::lint::Finding>,
}

impl Session {
    pub fn new(root: Option<PathBuf>) -> Session {
        Session {
            modules: Vec::new(),
            by_path: HashMap::new(),
            root,
            loading: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// Finds the monorepo root above `dir`: the nearest directory with a `kiln.toml`.
    pub fn find_root(dir: &Path) -> Option<PathBuf> {
        let dir = std::fs::canonicalize(dir).ok()?;
        dir.ancestors()
            .find(|d| d.join(ROOT_MARKER).is_file())
            .map(Path::to_path_buf)
    }

    /// Loads (once) the file at `path`, its imports first, and checks it.
    pub fn load(&mut self, path: &Path, from: Option<Located>) -> Result<usize> {
        let key = if path.starts_with("@std") {
            path.to_path_buf()
        } else {
            std::fs::canonicalize(path).map_err(|e| {
                let d = Diagnostic::input(format!("cannot read `{}`: {e}", path.display()));
                match &from {
                    Some(at) => d.label(at.clone(), "imported here"),
                    None => d,
                }
                .help("check the path; `//` paths start at the directory holding kiln.toml")
            })?
        };
        if let Some(&i) = self.by_path.get(&key) {
            return Ok(i);
        }
        if self.loading.contains(&key) {
            let d = Diagnostic::input(format!("`{}` imports itself", path.display()));
            return Err(match from {
                Some(at) => d.label(at, "this import closes the cycle"),
                None => d,
            }
            .help("imports must not form a cycle"));
        }
        let (name, text) = if let Ok(rest) = key.strip_prefix("@std") {
            let n = rest.to_string_lossy().to_string();
            let Some((_, text)) = STD.iter().find(|(f, _)| *f == n) else {
                let d = Diagnostic::input(format!("the standard library has no `{n}`"));
                let names: Vec<&str> = STD.iter().map(|(f, _)| *f).collect();
                let d = match &from {
                    Some(at) => d.label(at.clone(), ""),
                    None => d,
                };
                return Err(d.help(format!("std modules: {}", names.join(", "))));
            };
            (format!("@std/{n}"), text.to_string())
        } else {
            let text = std::fs::read_to_string(&key)
                .map_err(|e| Diagnostic::io(format!("cannot read {}", key.display()), e))?;
            (display_name(&key, self.root.as_deref()), text)
        };
        let file = SourceFile::new(name, text);
        let module = crate::frontend::buildfile::syntax::parse(&file)?;
        let dir = key.parent().map(Path::to_path_buf).unwrap_or_default();
        self.loading.push(key.clone());
        let mut imports = HashMap::new();
        for item in &module.items {
            if let ItemKind::Import { path: p, alias } = &item.kind {
                let at = Located::new(&file, p.span);
                let Some(spec) = p.as_plain_str() else {
                    return Err(
                        Diagnostic::at(&file, p.span, "an import path is a plain string")
                            .help("write `import \"//lib/x.build\" as x`"),
                    );
                };
                let target = self.resolve_import(&spec, &dir, &at)?;
                let idx = self.load(&target, Some(at))?;
                imports.insert(alias.name.clone(), idx);
            }
        }
        self.loading.pop();
        let deps: Vec<(String, usize, &Interface)> = imports
            .iter()
            .map(|(a, &i)| (a.clone(), i, &self.modules[i].iface))
            .collect();
        let iface = crate::frontend::buildfile::check::check(&module, &deps)?;
        let package = self.package_of(&dir);
        self.modules.push(Loaded {
            module,
            iface,
            imports,
            dir,
            package,
            path: key.clone(),
        });
        let idx = self.modules.len() - 1;
        self.by_path.insert(key, idx);
        Ok(idx)
    }

    fn resolve_import(&self, spec: &str, dir: &Path, at: &Located) -> Result<PathBuf> {
        if let Some(rest) = spec.strip_prefix("@std/") {
            return Ok(Path::new("@std").join(rest));
        }
        if let Some(rest) = spec.strip_prefix("//") {
            let Some(root) = &self.root else {
                return Err(Diagnostic::input(format!("`{spec}` needs a monorepo root"))
                    .label(at.clone(), "")
                    .help("`//` paths start at the directory holding kiln.toml; create one, or import a relative path"));
            };
            return Ok(root.join(rest));
        }
        Ok(dir.join(spec))
    }

    /// `//pkg:name` for a target of a monorepo package, `name` otherwise.
    pub fn label(&self, module: usize, name: &str) -> String {
        match &self.modules[module].package {
            Some(p) => format!("{p}:{name}"),
            None => name.to_string(),
        }
    }

    pub fn path_of(&self, module: usize) -> Option<&Path> {
        Some(self.modules.get(module)?.path.as_path())
    }

    /// A module and every module it imports, transitively.
    pub fn closure(&self, module: usize) -> std::collections::BTreeSet<usize> {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack = vec![module];
        while let Some(m) = stack.pop() {
            if seen.insert(m) {
                stack.extend(self.modules[m].imports.values().copied());
            }
        }
        seen
    }

    /// `//services/api` for a directory inside the monorepo.
    pub fn package_of(&self, dir: &Path) -> Option<String> {
        let root = self.root.as_ref()?;
        let rel = dir.strip_prefix(root).ok()?;
        Some(format!("//{}", rel.to_string_lossy()))
    }

    /// Loads the package `//a/b` (its BUILD.build).
    pub fn load_package(&mut self, package: &str, from: Option<Located>) -> Result<usize> {
        let Some(root) = self.root.clone() else {
            let d = Diagnostic::input(format!("`{package}` needs a monorepo root"));
            return Err(match from {
                Some(at) => d.label(at, ""),
                None => d,
            }
            .help("labels like //pkg:target are resolved from the directory holding kiln.toml"));
        };
        let rel = package.strip_prefix("//").unwrap_or(package);
        // A label names a directory inside the monorepo, never one above or beside it.
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
            let d = Diagnostic::input(format!("`{package}` is not a package label"));
            return Err(match from {
                Some(at) => d.label(at, ""),
                None => d,
            }
            .help("labels are //path/below/the/root:target"));
        }
        let path = root.join(rel).join(PACKAGE_FILE);
        if !path.is_file() {
            let d = Diagnostic::input(format!("package `{package}` has no {PACKAGE_FILE}"));
            return Err(match from {
                Some(at) => d.label(at, ""),
                None => d,
            }
            .help(format!("expected {}", path.display())));
        }
        self.load(&path, from)
    }
}

fn display_name(path: &Path, root: Option<&Path>) -> String {
    if let Some(root) = root
        && let Ok(rel) = path.strip_prefix(root)
    {
        return rel.to_string_lossy().to_string();
    }
    if let Ok(cwd) = std::env::current_dir()
        && let Ok(rel) = path.strip_prefix(&cwd)
    {
        return rel.to_string_lossy().to_string();
    }
    path.to_string_lossy().to_string()
}

/// The state of an image under construction: a Dockerfile stage's state.
#[derive(Clone, Debug)]
pub struct Img {
    fs: NodeId,
    env: Vec<(String, String)>,
    base_env: Vec<(String, String)>,
    args: Vec<(String, Option<String>)>,
    cwd: Option<String>,
    user: Option<String>,
    shell: Option<Vec<String>>,
    config: ConfigOp,
}

impl Img {
    fn lookup(&self, name: &str) -> Option<String> {
        crate::frontend::image::lookup(&self.env, &self.base_env, &self.args, name)
    }

    fn run_env(&self) -> Vec<(String, String)> {
        crate::frontend::image::run_env(&self.env, &self.args)
    }

    fn arg_values(&self) -> Vec<(String, String)> {
        crate::frontend::image::arg_values(&self.env, &self.args)
    }

    fn history(&mut self, created_by: String, layer: bool) {
        self.config.history.push(HistoryEntry { created_by, layer });
    }
}

#[derive(Clone, Debug)]
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

#[derive(Clone, Debug)]
enum Value {
    Str(String),
    Int(u64),
    Bool(bool),
    None,
    List(Vec<Value>),
    Map(Vec<(String, Value)>),
    Image(Box<Img>),
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
pub struct BuildOptions {
    pub lower: LowerOptions,
    /// `--param NAME=VALUE` (and `--build-arg`, which also sets params).
    pub params: BTreeMap<String, String>,
}

/// Directories that package contexts (`context(".")` in a monorepo package) stand for, by context name.
pub type PackageContexts = BTreeMap<String, PathBuf>;

pub struct Evaluator<'s> {
    pub session: &'s mut Session,
    opts: &'s BuildOptions,
    pub program: Program,
    pub contexts: PackageContexts,
    globals: HashMap<(usize, String), Value>,
    busy: Vec<(usize, String)>,
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
}

impl<'s> Evaluator<'s> {
    pub fn new(session: &'s mut Session, opts: &'s BuildOptions) -> Evaluator<'s> {
        Evaluator {
            session,
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
        }
    }

    /// `//pkg:name` in a monorepo, `name` otherwise.
    pub fn label(&self, module: usize, name: &str) -> String {
        self.session.label(module, name)
    }

    fn is_target(&self, module: usize, name: &str) -> bool {
        self.session.modules[module]
            .module
            .items
            .iter()
            .any(|i| matches!(&i.kind, ItemKind::Target { name: n, .. } if n.name == name))
    }

    /// The names of the targets of a module, in file order.
    pub fn targets(&self, module: usize) -> Vec<String> {
        self.session.modules[module]
            .module
            .items
            .iter()
            .filter_map(|i| match &i.kind {
                ItemKind::Target { name, .. } => Some(name.name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Evaluates target `name` of `module` and adds it as a root named `label`.
    pub fn add_root(&mut self, module: usize, name: &str, label: String) -> Result<NodeId> {
        let node = self.target_node(module, name, None)?;
        self.program.roots.push(Root { name: label, node });
        Ok(node)
    }

    fn file(&self) -> Arc<SourceFile> {
        self.session.modules[self.module].module.file.clone()
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
            let file = &self.session.modules[module].module.file;
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
        Ok(match v {
            Value::Image(img) => self.finish(&img),
            // A Dir target is exported as a filesystem (or an image of just those files).
            Value::Dir(n) => self.program.push(
                Op::Config(Box::default()),
                vec![n],
                format!("{name} (directory)"),
                None,
            ),
            _ => unreachable!("targets are checked to be Image or Dir"),
        })
    }

    /// The image config node of an image value (what a stage ends with).
    fn finish(&mut self, img: &Img) -> NodeId {
        let mut config = img.config.clone();
        config.env = img.env.clone();
        config.cwd = img.cwd.clone();
        config.user = img.user.clone();
        self.program.push(
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
            return Ok(v.clone());
        }
        if self.busy.contains(&key) {
            let saved = self.module;
            self.module = module;
            let e = self
                .err(use_at, format!("`{name}` depends on itself"))
                .help("targets and lets must not refer to themselves, directly or through others");
            self.module = saved;
            return Err(e);
        }
        self.busy.push(key.clone());
        let saved_module = self.module;
        let saved_scopes = std::mem::take(&mut self.scopes);
        self.module = module;
        let item = self.session.modules[module]
            .module
            .items
            .iter()
            .find(|i| match &i.kind {
                ItemKind::Let(l) => l.name.name == name,
                ItemKind::Target { name: n, .. }
                | ItemKind::Param { name: n, .. }
                | ItemKind::Secret { name: n, .. }
                | ItemKind::Ssh { name: n, .. } => n.name == name,
                _ => false,
            })
            .cloned();
        let result = match item.map(|i| i.kind) {
            Some(ItemKind::Let(l)) => self.eval(&l.value),
            Some(ItemKind::Target { value, name: n, .. }) => {
                let label = self.label(module, &n.name);
                self.deps.entry(label.clone()).or_default();
                self.current.push(label.clone());
                let v = self.eval(&value);
                self.current.pop();
                // Steps of a target show its name in progress output.
                if let Ok(Value::Image(img)) = &v {
                    self.name_steps(img.fs, &label);
                }
                v
            }
            Some(ItemKind::Param {
                name: n,
                ty,
                default,
            }) => self.param(&n.name, n.span, &ty, default.as_ref()),
            Some(ItemKind::Secret { name: n, id }) => Ok(Value::Secret(
                id.and_then(|i| i.as_plain_str()).unwrap_or(n.name),
            )),
            Some(ItemKind::Ssh { name: n, id }) => Ok(Value::Ssh(
                id.and_then(|i| i.as_plain_str()).unwrap_or(n.name),
            )),
            _ => Err(self.err(use_at, format!("unknown name `{name}`"))),
        };
        self.module = saved_module;
        self.scopes = saved_scopes;
        self.busy.pop();
        let v = result?;
        self.globals.insert(key, v.clone());
        Ok(v)
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
        self.session.modules[self.module]
            .iface
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

    fn eval(&mut self, e: &Expr) -> Result<Value> {
        Ok(match &e.kind {
            ExprKind::Str { parts, .. } => {
                let mut s = String::new();
                for p in parts {
                    match p {
                        StrPart::Text { text, .. } => s.push_str(text),
                        StrPart::Interp(inner) => s.push_str(&self.eval(inner)?.text()),
                    }
                }
                Value::Str(s)
            }
            ExprKind::Int { value, .. } => Value::Int(*value),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::None => Value::None,
            ExprKind::Paren(inner) => self.eval(inner)?,
            ExprKind::List(items) => {
                Value::List(items.iter().map(|i| self.eval(i)).collect::<Result<_>>()?)
            }
            ExprKind::Map(entries) => {
                let mut out: Vec<(String, Value)> = Vec::new();
                for (k, v) in entries {
                    let key = self.eval(k)?.text();
                    let value = self.eval(v)?;
                    match out.iter_mut().find(|(ok, _)| *ok == key) {
                        Some(slot) => slot.1 = value,
                        None => out.push((key, value)),
                    }
                }
                Value::Map(out)
            }
            ExprKind::Name(n) => self.lookup(n, e.span)?,
            ExprKind::Binary(op, l, r) => {
                let lv = self.eval(l)?;
                let rv = self.eval(r)?;
                match op {
                    BinOp::Add => match (lv, rv) {
                        (Value::Int(a), Value::Int(b)) => {
                            Value::Int(a.checked_add(b).ok_or_else(|| {
                                self.err(e.span, "the sum does not fit in 64 bits")
                            })?)
                        }
                        (Value::List(mut a), Value::List(b)) => {
                            a.extend(b);
                            Value::List(a)
                        }
                        (Value::Map(mut a), Value::Map(b)) => {
                            for (k, v) in b {
                                match a.iter_mut().find(|(ak, _)| *ak == k) {
                                    Some(slot) => slot.1 = v,
                                    None => a.push((k, v)),
                                }
                            }
                            Value::Map(a)
                        }
                        (a, b) => Value::Str(a.text() + &b.text()),
                    },
                    BinOp::Eq => Value::Bool(same(&lv, &rv)),
                    BinOp::Ne => Value::Bool(!same(&lv, &rv)),
                }
            }
            ExprKind::If { cond, then, other } => {
                if self.eval(cond)?.bool() {
                    self.eval(then)?
                } else {
                    self.eval(other)?
                }
            }
            ExprKind::Member(base, name) => {
                let Some(idx) = self.module_named(base) else {
                    return Err(self.unresolved(base.span));
                };
                self.global(idx, &name.name, name.span)?
            }
            ExprKind::Call { callee, args } => self.call(e, callee, args)?,
        })
    }

    fn call(&mut self, e: &Expr, callee: &Expr, args: &[Arg]) -> Result<Value> {
        match &callee.kind {
            ExprKind::Name(n) => {
                if self.resolved(callee.span)? == Use::Global {
                    return self.user_call(self.module, n, e.span, args);
                }
                let Some(b) = types::FUNCTIONS.iter().find(|b| b.name == n) else {
                    return Err(self.unresolved(callee.span));
                };
                let vals = self.args(b, e.span, args)?;
                self.function(n, e.span, vals, args)
            }
            ExprKind::Member(base, name) => {
                if let Some(idx) = self.module_named(base) {
                    return self.user_call(idx, &name.name, e.span, args);
                }
                let recv = self.eval(base)?;
                let table = match &recv {
                    Value::Image(_) => types::IMAGE_METHODS,
                    Value::Secret(_) => types::SECRET_METHODS,
                    _ => types::SSH_METHODS,
                };
                let b = table.iter().find(|b| b.name == name.name).expect("checked");
                let vals = self.args(b, e.span, args)?;
                match recv {
                    Value::Image(img) => {
                        // A step's location is its own `.method(...)`, not the start of the chain.
                        let at = Span::new(name.span.start.saturating_sub(1), e.span.end);
                        self.image_method(*img, &name.name, at, vals, args)
                    }
                    Value::Secret(id) => Ok(self.secret_mount(id, &name.name, &vals, e.span)),
                    Value::Ssh(id) => Ok(Value::Mount(
                        Box::new(MountValue::Ssh {
                            id,
                            target: vals[0].opt_str(),
                            required: vals[1].bool(),
                            mode: opt_int(&vals[2], 0o600),
                            uid: opt_int(&vals[3], 0),
                            gid: opt_int(&vals[4], 0),
                        }),
                        e.span,
                    )),
                    _ => unreachable!("checked"),
                }
            }
            _ => unreachable!("checked"),
        }
    }

    /// Evaluates a builtin's arguments into parameter order (`Value::None` where left out).
    fn args(&mut self, b: &types::Builtin, at: Span, args: &[Arg]) -> Result<Vec<Value>> {
        let file = self.file();
        let bound = types::bind_args(
            &file,
            b.params.iter().map(|p| (p.name, p.optional)),
            args,
            at,
            b.name,
        )?;
        bound
            .into_iter()
            .map(|a| match a {
                Some(a) => self.eval(&a.value),
                None => Ok(Value::None),
            })
            .collect()
    }

    fn user_call(&mut self, module: usize, name: &str, at: Span, args: &[Arg]) -> Result<Value> {
        let def: FnDef = self.session.modules[module]
            .module
            .items
            .iter()
            .find_map(|i| match &i.kind {
                ItemKind::Fn(f) if f.name.name == name => Some(f.clone()),
                _ => None,
            })
            .expect("checked");
        if self.scopes.len() > 200 {
            return Err(self
                .err(at, format!("`{name}` calls itself too deeply"))
                .help("functions may not recurse without end"));
        }
        let file = self.file();
        let bound = types::bind_args(
            &file,
            def.params
                .iter()
                .map(|p| (p.name.name.as_str(), p.default.is_some())),
            args,
            at,
            name,
        )?;
        let mut vals = Vec::new();
        for a in &bound {
            vals.push(match a {
                Some(a) => Some(self.eval(&a.value)?),
                None => None,
            });
        }
        // The body, and the defaults (which see the parameters before them, as the checker does), are
        // evaluated in the function's own module and frame: never in the caller's.
        let saved = self.module;
        self.module = module;
        self.scopes.push(HashMap::new());
        let result = (|| {
            for (p, v) in def.params.iter().zip(vals) {
                let v = match (v, &p.default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => self.eval(d)?,
                    (None, None) => return Err(self.unresolved(p.name.span)),
                };
                self.bind(p.name.span, v);
            }
            for l in &def.lets {
                let v = self.eval(&l.value)?;
                self.bind(l.name.span, v);
            }
            self.eval(&def.body)
        })();
        self.scopes.pop();
        self.module = saved;
        result
    }

    fn bind(&mut self, def: Span, v: Value) {
        self.scopes.last_mut().expect("a frame").insert(def, v);
    }

    fn leaf(&mut self, key: String, op: Op, name: String, at: Option<Located>) -> NodeId {
        if let Some(&id) = self.leaves.get(&key) {
            return id;
        }
        let id = self.program.push(op, vec![], name, at);
        self.leaves.insert(key, id);
        id
    }

    fn image_leaf(&mut self, reference: &str, span: Span) -> NodeId {
        let at = self.at(span);
        if reference == "scratch" {
            return self.leaf("image:scratch".into(), Op::Scratch, "scratch".into(), at);
        }
        self.leaf(
            format!("image:{reference}"),
            Op::Image {
                reference: reference.to_string(),
            },
            format!("FROM {reference}"),
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

    fn new_image(&self, fs: NodeId, base_env: Vec<(String, String)>) -> Img {
        Img {
            fs,
            env: Vec::new(),
            base_env,
            args: Vec::new(),
            cwd: None,
            user: None,
            shell: None,
            config: ConfigOp::default(),
        }
    }

    fn function(&mut self, name: &str, span: Span, v: Vec<Value>, args: &[Arg]) -> Result<Value> {
        let arg_span = |i: usize| args.get(i).map_or(span, |a| a.value.span);
        Ok(match name {
            "image" => {
                let r = v[0].str().to_string();
                if r.starts_with("//") || r.starts_with(':') {
                    return self.label_image(&r, arg_span(0));
                }
                if r.is_empty() {
                    return Err(self
                        .err(arg_span(0), "image() names an empty reference")
                        .help("give a reference such as `debian:bookworm`, or `scratch()`"));
                }
                let (leaf, resolved) = match self.opts.lower.contexts.get(&r) {
                    Some(NamedContext::Image(to)) => {
                        let to = to.clone();
                        (self.image_leaf(&to, arg_span(0)), to)
                    }
                    _ => (self.image_leaf(&r, arg_span(0)), r.clone()),
                };
                let env = self.opts.lower.image_env.get(&resolved);
                Value::Image(Box::new(self.new_image(leaf, env)))
            }
            "scratch" => {
                let leaf = self.image_leaf("scratch", span);
                Value::Image(Box::new(self.new_image(leaf, Vec::new())))
            }
            "from" => match &v[0] {
                Value::Image(img) => {
                    let mut img = img.clone();
                    img.args.clear();
                    Value::Image(img)
                }
                _ => unreachable!("checked"),
            },
            "context" => {
                let path = match &v[0] {
                    Value::Str(s) => s.clone(),
                    _ => ".".to_string(),
                };
                Value::Dir(self.context(&path, arg_span(0))?)
            }
            "files" => {
                let files: Vec<(String, String)> = match &v[0] {
                    Value::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.text())).collect(),
                    _ => Vec::new(),
                };
                Value::Inline {
                    files,
                    expand: v[1].bool(),
                    span,
                }
            }
            "url" | "git" => {
                let url = v[0].str().to_string();
                let (checksum, keep_git_dir) = if name == "url" {
                    (v[1].opt_str(), false)
                } else {
                    (None, v[1].bool())
                };
                Value::Remote {
                    url,
                    checksum,
                    keep_git_dir,
                    span,
                }
            }
            "cache" => Value::Mount(
                Box::new(MountValue::Cache {
                    target: v[0].str().to_string(),
                    id: v[1].opt_str(),
                    sharing: v[2].opt_str().unwrap_or_else(|| "shared".into()),
                    mode: opt_int(&v[3], 0o755),
                    uid: opt_int(&v[4], 0),
                    gid: opt_int(&v[5], 0),
                    readonly: v[6].bool(),
                }),
                span,
            ),
            "bind" => {
                let from = self.source_node(&v[0]);
                Value::Mount(
                    Box::new(MountValue::Bind {
                        from,
                        target: v[1].opt_str(),
                        source: v[2].opt_str().unwrap_or_else(|| "/".into()),
                        rw: v[3].bool(),
                    }),
                    span,
                )
            }
            "tmpfs" => Value::Mount(
                Box::new(MountValue::Tmpfs {
                    target: v[0].str().to_string(),
                    size: match v[1] {
                        Value::Int(i) => Some(i),
                        _ => None,
                    },
                }),
                span,
            ),
            "join" => Value::Str(v[0].strs().join(v[1].str())),
            "print" => {
                eprintln!("{}: {}", self.at(span).expect("located"), v[0].str());
                v[0].clone()
            }
            other => unreachable!("builtin {other} is checked"),
        })
    }

    /// `context(".")`: the build context (or, in a monorepo package, the package's directory);
    /// another name: a `--build-context`, or a directory of the package.
    fn context(&mut self, path: &str, span: Span) -> Result<NodeId> {
        let loaded = &self.session.modules[self.module];
        let Some(package) = loaded.package.clone() else {
            if path == "." || path.is_empty() {
                return Ok(self.context_leaf("context"));
            }
            if self.opts.lower.contexts.contains_key(path) {
                return Ok(self.context_leaf(path));
            }
            return Err(self
                .err(span, format!("no build context named `{path}`"))
                .help(format!(
                    "`.` is the build context; give others with `--build-context {path}=DIR`"
                )));
        };
        let (dir, name) = match path.trim_end_matches('/') {
            "." | "" => (loaded.dir.clone(), package),
            p => (
                loaded.dir.join(p),
                format!("{package}/{}", p.trim_start_matches("./")),
            ),
        };
        if !dir.is_dir() {
            return Err(self
                .err(span, format!("`{}` is not a directory", dir.display()))
                .help("context() names a directory relative to the package"));
        }
        self.contexts.insert(name.clone(), dir);
        Ok(self.context_leaf(&name))
    }

    fn label_image(&mut self, label: &str, span: Span) -> Result<Value> {
        let (package, target) = label
            .rsplit_once(':')
            .ok_or_else(|| self.err(span, format!("`{label}` is not a label")))?;
        let module = if package.is_empty() {
            self.module
        } else {
            let at = self.at(span);
            self.session.load_package(package, at)?
        };
        if !self.is_target(module, target) {
            let at = self.at(span);
            self.target_node(module, target, at)?;
        }
        match self.global(module, target, span)? {
            v @ Value::Image(_) => Ok(v),
            _ => Err(self
                .err(span, format!("`{label}` is a Dir, not an Image"))
                .help("copy from it instead: `.copy(image_or_dir, [\".\"], \"/dest\")`")),
        }
    }

    fn source_node(&mut self, v: &Value) -> NodeId {
        match v {
            Value::Image(img) => img.fs,
            Value::Dir(n) => *n,
            Value::File { node, .. } => *node,
            Value::Remote {
                url,
                checksum,
                keep_git_dir,
                span,
            } => self.remote_node(url.clone(), checksum.clone(), *keep_git_dir, *span),
            Value::Inline { files, span, .. } => self.inline_node(files.clone(), *span),
            _ => unreachable!("checked"),
        }
    }

    fn inline_node(&mut self, files: Vec<(String, String)>, span: Span) -> NodeId {
        let at = self.at(span);
        self.program
            .push(Op::Inline { files }, vec![], "inline files".into(), at)
    }

    fn remote_node(
        &mut self,
        url: String,
        checksum: Option<String>,
        keep_git_dir: bool,
        span: Span,
    ) -> NodeId {
        let at = self.at(span);
        let name = format!("fetch {url}");
        self.program.push(
            Op::Remote {
                url,
                checksum,
                keep_git_dir,
            },
            vec![],
            name,
            at,
        )
    }

    fn secret_mount(&self, id: String, method: &str, v: &[Value], span: Span) -> Value {
        let m = match method {
            "file" => SecretMount {
                id,
                target: v[0].opt_str(),
                env: None,
                required: v[1].bool(),
                mode: opt_int(&v[2], 0o400),
                uid: opt_int(&v[3], 0),
                gid: opt_int(&v[4], 0),
            },
            "env" => SecretMount {
                id,
                target: None,
                env: v[0].opt_str(),
                required: v[1].bool(),
                mode: 0o400,
                uid: 0,
                gid: 0,
            },
            _ => SecretMount {
                id,
                target: v[0].opt_str(),
                env: v[1].opt_str(),
                required: v[2].bool(),
                mode: opt_int(&v[3], 0o400),
                uid: opt_int(&v[4], 0),
                gid: opt_int(&v[5], 0),
            },
        };
        Value::Mount(Box::new(MountValue::Secret(m)), span)
    }

    fn expand(&self, img: &Img, text: &str, span: Span) -> Result<String> {
        shell::expand_word(text, '\\', &|n| img.lookup(n)).map_err(|e| {
            self.err(span, format!("cannot expand `{text}`: {e}")).help(
                "image operations expand $NAME like a Dockerfile does; write \\\\$ for a literal $",
            )
        })
    }

    fn push_fs(
        &mut self,
        img: &mut Img,
        op: Op,
        extra: Vec<NodeId>,
        created_by: String,
        span: Span,
    ) {
        let mut inputs = vec![img.fs];
        inputs.extend(extra);
        let at = self.at(span);
        let name = step_name(&op);
        img.fs = self.program.push(op, inputs, name, at);
        img.history(created_by, true);
    }

    fn image_method(
        &mut self,
        mut img: Img,
        method: &str,
        span: Span,
        v: Vec<Value>,
        args: &[Arg],
    ) -> Result<Value> {
        let arg_span = |i: usize| {
            args.iter()
                .filter(|a| a.name.is_none())
                .nth(i)
                .map_or(span, |a| a.value.span)
        };
        match method {
            "run" => {
                self.run(&mut img, &v, span, arg_span(0))?;
                self.program.nodes[img.fs].asks = self.asks(args, span);
            }
            "copy" | "add" => self.copy(&mut img, method == "add", &v, span, args)?,
            "env" | "label" => {
                let mut shown = Vec::new();
                if let Value::Map(m) = &v[0] {
                    for (k, val) in m {
                        let key = self.expand(&img, k, arg_span(0))?;
                        let value = self.expand(&img, val.str(), arg_span(0))?;
                        shown.push(format!("{key}={value}"));
                        if method == "env" {
                            self.lint_value("ENV", &key, val.str(), arg_span(0))?;
                            set(&mut img.env, &key, &value);
                        } else {
                            set(&mut img.config.labels, &key, &value);
                        }
                    }
                }
                let what = if method == "env" { "ENV" } else { "LABEL" };
                img.history(format!("{what} {}", shown.join(" ")), false);
            }
            "arg" => {
                let mut shown = Vec::new();
                if let Value::Map(m) = &v[0] {
                    for (k, val) in m {
                        let value = match self.opts.lower.build_args.get(k) {
                            Some(over) => Some(over.clone()),
                            None => match val {
                                Value::Str(s) => {
                                    self.lint_value("ARG", k, s, arg_span(0))?;
                                    Some(self.expand(&img, s, arg_span(0))?)
                                }
                                _ => builtin_arg(k).map(String::from),
                            },
                        };
                        img.args.retain(|(ak, _)| ak != k);
                        img.args.push((k.clone(), value.clone()));
                        shown.push((k.clone(), value));
                    }
                }
                img.history(arg_history(&shown), false);
            }
            "workdir" => {
                let dir = self.expand(&img, v[0].str(), arg_span(0))?;
                let path = join_path(img.cwd.as_deref().unwrap_or("/"), &dir);
                img.cwd = Some(path.clone());
                self.push_fs(
                    &mut img,
                    Op::Mkdir { path: path.clone() },
                    vec![],
                    format!("WORKDIR {path}"),
                    span,
                );
            }
            "user" => {
                let user = self.expand(&img, v[0].str(), arg_span(0))?;
                img.history(format!("USER {user}"), false);
                img.user = Some(user);
            }
            "cmd" | "entrypoint" => {
                let argv = command(&img, &v[0]);
                if method == "cmd" {
                    img.history(format!("CMD {}", json_list(&argv)), false);
                    img.config.cmd = Inherit::Set(argv);
                } else {
                    img.history(format!("ENTRYPOINT {}", json_list(&argv)), false);
                    img.config.entrypoint = Inherit::Set(argv);
                    if img.config.cmd == Inherit::Base {
                        img.config.cmd = Inherit::Clear;
                    }
                }
            }
            "expose" => {
                let mut ports = Vec::new();
                for w in v[0].strs() {
                    for p in shell::expand_words(&w, '\\', &|n| img.lookup(n)).map_err(|err| {
                        self.err(arg_span(0), format!("cannot expand `{w}`: {err}"))
                    })? {
                        ports.extend(expose_ports(&p).ok_or_else(|| {
                            self.err(arg_span(0), format!("invalid port `{p}`")).help(
                                "write a port or range with an optional protocol: `80`, `53/udp`, `8000-8010/tcp`",
                            )
                        })?);
                    }
                }
                img.history(format!("EXPOSE {}", ports.join(" ")), false);
                for p in ports {
                    if !img.config.exposed.contains(&p) {
                        img.config.exposed.push(p);
                    }
                }
            }
            "volume" => {
                let mut vols = Vec::new();
                for w in v[0].strs() {
                    let p = self.expand(&img, &w, arg_span(0))?;
                    if p.trim().is_empty() {
                        return Err(self.err(arg_span(0), "volume() names an empty path"));
                    }
                    vols.push(p);
                }
                img.history(format!("VOLUME {}", json_list(&vols)), false);
                for p in vols {
                    if !img.config.volumes.contains(&p) {
                        img.config.volumes.push(p);
                    }
                }
            }
            "stop_signal" => {
                let sig = self.expand(&img, v[0].str(), arg_span(0))?;
                img.history(format!("STOPSIGNAL {sig}"), false);
                img.config.stop_signal = Some(sig);
            }
            "maintainer" => {
                let who = self.expand(&img, v[0].str(), arg_span(0))?;
                img.history(format!("MAINTAINER {who}"), false);
                img.config.author = Some(who);
            }
            "onbuild" => {
                let t = v[0].str().to_string();
                img.history(format!("ONBUILD {t}"), false);
                img.config.onbuild.push(t);
            }
            "shell" => {
                let sh = v[0].strs();
                if sh.is_empty() {
                    return Err(self
                        .err(arg_span(0), "shell() needs at least the shell program")
                        .help("write `.shell([\"/bin/bash\", \"-c\"])`"));
                }
                img.history(format!("SHELL {}", json_list(&sh)), false);
                img.shell = Some(sh.clone());
                img.config.shell = Some(sh);
            }
            "healthcheck" => {
                let test = match &v[0] {
                    Value::Str(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                    other => {
                        let mut t = vec!["CMD".to_string()];
                        t.extend(other.strs());
                        t
                    }
                };
                let mut check = Healthcheck {
                    test,
                    ..Healthcheck::default()
                };
                let names = ["interval", "timeout", "start_period", "start_interval"];
                for (i, name) in names.iter().enumerate() {
                    let Value::Str(s) = &v[i + 1] else { continue };
                    let s = self.expand(&img, s, span)?;
                    let d = parse_duration(&s).ok_or_else(|| {
                        self.err(span, format!("invalid duration `{s}` for {name}"))
                            .help("write a duration such as `30s`, `1m30s` or `500ms`")
                    })?;
                    if d != 0 && d < 1_000_000 {
                        return Err(self
                            .err(span, format!("invalid duration `{s}` for {name}"))
                            .help("durations must be at least 1ms"));
                    }
                    match i {
                        0 => check.interval = d,
                        1 => check.timeout = d,
                        2 => check.start_period = d,
                        _ => check.start_interval = d,
                    }
                }
                if let Value::Int(r) = v[5] {
                    check.retries = r;
                }
                img.history(healthcheck_history(&check), false);
                img.config.healthcheck = Inherit::Set(check);
            }
            "no_healthcheck" => {
                let none = Healthcheck {
                    test: vec!["NONE".into()],
                    ..Healthcheck::default()
                };
                img.history(healthcheck_history(&none), false);
                img.config.healthcheck = Inherit::Set(none);
            }
            "dir" | "file" => {
                let path = join_path(img.cwd.as_deref().unwrap_or("/"), v[0].str());
                if method == "file" {
                    return Ok(Value::File { node: img.fs, path });
                }
                let scratch = self.image_leaf("scratch", span);
                let at = self.at(span);
                let node = self.program.push(
                    Op::Copy(CopyOp {
                        sources: vec![path.clone()],
                        dest: "/".into(),
                        chown: None,
                        chmod: None,
                        extract: false,
                        excludes: Vec::new(),
                        parents: false,
                    }),
                    vec![scratch, img.fs],
                    format!("directory {path}"),
                    at,
                );
                return Ok(Value::Dir(node));
            }
            other => unreachable!("method {other} is checked"),
        }
        Ok(Value::Image(Box::new(img)))
    }

    /// Where a `.run(...)` call asks for entitlements: its `network:` or `security:` argument (by name, or
    /// third and fourth by position), when the value needs one.
    fn asks(&self, args: &[Arg], span: Span) -> crate::graph::entitlement::Asks {
        let arg_at = |name: &str, position: usize| {
            args.iter()
                .find(|a| a.name.as_ref().is_some_and(|n| n.name == name))
                .or_else(|| args.iter().filter(|a| a.name.is_none()).nth(position))
                .map_or(span, |a| a.value.span)
        };
        let Some(Op::Run(r)) = self.program.nodes.last().map(|n| &n.op) else {
            return Vec::new();
        };
        r.entitlements()
            .into_iter()
            .filter_map(|e| {
                let at = match e {
                    Entitlement::NetworkHost => arg_at("network", 2),
                    Entitlement::SecurityInsecure => arg_at("security", 3),
                };
                Some((e, self.at(at)?))
            })
            .collect()
    }

    fn run(&mut self, img: &mut Img, v: &[Value], span: Span, cmd_span: Span) -> Result<()> {
        let args = command(img, &v[0]);
        if args.is_empty() || args.iter().all(|a| a.trim().is_empty()) {
            return Err(self
                .err(cmd_span, "run() needs a command")
                .help("give a shell command, or an argument list such as [\"make\", \"all\"]"));
        }
        let cwd = img.cwd.clone().unwrap_or_else(|| "/".into());
        let mut secrets: Vec<SecretMount> = Vec::new();
        let mut mounts = Vec::new();
        let mut extra: Vec<NodeId> = Vec::new();
        let list = match &v[1] {
            Value::List(l) => l.clone(),
            _ => Vec::new(),
        };
        for m in list {
            let Value::Mount(m, mspan) = m else {
                unreachable!("checked")
            };
            let ex = |s: &str| self.expand(img, s, mspan);
            let target = |t: &Option<String>| -> Result<Option<String>> {
                match t.as_deref().filter(|t| !t.is_empty()) {
                    Some(t) => Ok(Some(join_path(&cwd, &ex(t)?))),
                    None => Ok(None),
                }
            };
            match *m {
                MountValue::Secret(mut s) => {
                    s.target = target(&s.target)?;
                    if let Some(e) = &s.env {
                        s.env = Some(ex(e)?).filter(|e| !e.is_empty());
                    }
                    if s.target.is_none() && s.env.is_none() {
                        s.target = Some(join_path(&cwd, &format!("/run/secrets/{}", s.id)));
                    }
                    if let Some(dup) = secrets
                        .iter()
                        .find(|o| o.target.is_some() && o.target == s.target)
                    {
                        return Err(self.err(
                            mspan,
                            format!(
                                "secret `{}` is mounted at the same target as secret `{}`",
                                s.id, dup.id
                            ),
                        ));
                    }
                    secrets.push(s);
                }
                MountValue::Ssh {
                    id,
                    target: t,
                    required,
                    mode,
                    uid,
                    gid,
                } => mounts.push(RunMount::Ssh {
                    id,
                    target: target(&t)?,
                    required,
                    mode,
                    uid,
                    gid,
                }),
                MountValue::Cache {
                    target: t,
                    id,
                    sharing,
                    mode,
                    uid,
                    gid,
                    readonly,
                } => {
                    let t = target(&Some(t))?.ok_or_else(|| {
                        self.err(mspan, "a cache mount needs a target")
                            .help("write `cache(\"/var/cache/apt\")`")
                    })?;
                    let sharing = Sharing::parse(&ex(&sharing)?).ok_or_else(|| {
                        self.err(mspan, format!("invalid sharing mode `{sharing}`"))
                            .help("sharing is one of: shared, private, locked")
                    })?;
                    let id = match id {
                        Some(i) if !i.is_empty() => ex(&i)?,
                        _ => t.clone(),
                    };
                    mounts.push(RunMount::Cache {
                        target: t,
                        id,
                        sharing,
                        mode,
                        uid,
                        gid,
                        readonly,
                    });
                }
                MountValue::Bind {
                    from,
                    target: t,
                    source,
                    rw,
                } => {
                    let t = target(&t)?.unwrap_or_else(|| join_path(&cwd, "."));
                    let input = match extra.iter().position(|&i| i == from) {
                        Some(p) => p + 1,
                        None => {
                            extra.push(from);
                            extra.len()
                        }
                    };
                    mounts.push(RunMount::Bind {
                        target: t,
                        input,
                        source: ex(&source)?,
                        readwrite: rw,
                    });
                }
                MountValue::Tmpfs { target: t, size } => {
                    let t = target(&Some(t))?.ok_or_else(|| {
                        self.err(mspan, "a tmpfs mount needs a target")
                            .help("write `tmpfs(\"/tmp\")`")
                    })?;
                    mounts.push(RunMount::Tmpfs { target: t, size });
                }
            }
        }
        let network = match &v[2] {
            Value::Str(s) => {
                let s = self.expand(img, s, span)?;
                Network::parse(&s).ok_or_else(|| {
                    let d = self.err(span, format!("unknown network mode `{s}`"));
                    match suggest(&s, ["default", "none", "host"]) {
                        Some(x) => d.help(format!("did you mean `{x}`?")),
                        None => d.help("network modes are: default, none, host"),
                    }
                })?
            }
            _ => Network::Default,
        };
        let insecure = match &v[3] {
            Value::Str(s) => match self.expand(img, s, span)?.as_str() {
                "sandbox" => false,
                "insecure" => true,
                other => {
                    return Err(self
                        .err(span, format!("unknown security mode `{other}`"))
                        .help("security modes are `sandbox` (the default) and `insecure`"));
                }
            },
            _ => false,
        };
        self.lint_run(&v[0], &args, &secrets, &mounts, &cwd, span)?;
        let created_by = run_history(&img.arg_values(), &args);
        let op = Op::Run(RunOp {
            args,
            env: img.run_env(),
            cwd: img.cwd.clone(),
            user: img.user.clone(),
            network,
            insecure,
            secrets,
            mounts,
        });
        self.push_fs(img, op, extra, created_by, span);
        Ok(())
    }

    /// The secret checks `kiln check` runs on a Dockerfile's RUN, on this step's command.
    fn lint_run(
        &mut self,
        cmd: &Value,
        args: &[String],
        secrets: &[SecretMount],
        mounts: &[RunMount],
        cwd: &str,
        span: Span,
    ) -> Result<()> {
        use crate::frontend::lint::secrets as lint;
        let text = match cmd {
            Value::Str(s) => s.clone(),
            _ => args.join(" "),
        };
        let mounted: Vec<lint::SecretMount> = secrets
            .iter()
            .map(|s| lint::SecretMount {
                id: s.id.clone(),
                target: s.target.clone(),
                env: s.env.clone(),
            })
            .collect();
        let tmpfs: Vec<String> = mounts
            .iter()
            .filter_map(|m| match m {
                RunMount::Tmpfs { target, .. } => Some(target.clone()),
                _ => None,
            })
            .collect();
        for f in lint::run_findings(&text, &mounted, &tmpfs, cwd, &[]) {
            let at = self.locate(span, &f.needle);
            self.lint(at, f.rule, f.message)?;
        }
        Ok(())
    }

    /// `SecretInBuildArg` for an `.env` or `.arg` value written in the program (at the value, when it is
    /// a plain string there).
    fn lint_value(&mut self, kind: &str, key: &str, value: &str, span: Span) -> Result<()> {
        use crate::frontend::lint::secrets::value_message;
        match value_message(kind, key, value) {
            Some(message) => {
                let at = self.locate(span, &format!("\"{value}\""));
                self.lint(at, "SecretInBuildArg", message)
            }
            None => Ok(()),
        }
    }

    /// Where `needle` is written inside `span`, or `span`.
    fn locate(&self, span: Span, needle: &str) -> Span {
        let file = self.file();
        match file
            .text
            .get(span.start..span.end)
            .and_then(|t| t.find(needle))
        {
            Some(i) if !needle.is_empty() => {
                Span::new(span.start + i, span.start + i + needle.len())
            }
            _ => span,
        }
    }

    /// Records a secret check's finding, unless the file's `# check=` comments skip it (once per place:
    /// a helper called twice makes one finding).
    fn lint(&mut self, span: Span, rule: &str, message: String) -> Result<()> {
        let file = self.file();
        let Some(f) = crate::frontend::lint::program_finding(&file, span, rule, message)? else {
            return Ok(());
        };
        let seen = self.session.findings.iter().any(|o| {
            o.rule == f.rule && o.at.span == f.at.span && Arc::ptr_eq(&o.at.file, &f.at.file)
        });
        if !seen {
            self.session.findings.push(f);
        }
        Ok(())
    }

    fn copy(
        &mut self,
        img: &mut Img,
        add: bool,
        v: &[Value],
        span: Span,
        args: &[Arg],
    ) -> Result<()> {
        let what = if add { "add" } else { "copy" };
        let at = |i: usize| args.get(i).map_or(span, |a| a.value.span);
        let mut srcs = Vec::new();
        for s in v[1].strs() {
            let mut x = self.expand(img, &s, at(1))?;
            if x.is_empty() && self.opts.lower.lenient {
                // Compile-only: what only a build argument could settle stays as written.
                x = s.clone();
            }
            if x.is_empty() {
                return Err(self.err(at(1), format!("{what}() source is empty after expansion")));
            }
            srcs.push(x);
        }
        if !matches!(v[0], Value::Inline { .. }) {
            for x in &srcs {
                if let Some(message) =
                    crate::frontend::lint::secrets::copied_file(&format!("{what}()"), x)
                {
                    // Each source where it is written, when it is written as a plain string.
                    let place = self.locate(at(1), &format!("\"{x}\""));
                    self.lint(place, "SecretFileCopied", message)?;
                }
            }
        }
        // As ADD does: a source that expands to a URL is fetched (one URL per instruction).
        let mut remote: Vec<String> = Vec::new();
        if add {
            let (urls, locals): (Vec<String>, Vec<String>) = srcs
                .into_iter()
                .partition(|x| x.contains("://") || x.starts_with("git@"));
            srcs = locals;
            remote = urls;
            if !remote.is_empty() && srcs.len() + remote.len() != 1 && !self.opts.lower.lenient {
                return Err(self
                    .err(at(1), "add() of a URL takes exactly one source")
                    .help("use one add() per URL"));
            }
        }
        let source = match &v[0] {
            _ if !remote.is_empty() => {
                let url = remote.remove(0);
                srcs.push(
                    url.trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .unwrap_or("download")
                        .to_string(),
                );
                let keep = false;
                self.remote_node(url, None, keep, at(1))
            }
            Value::Remote {
                url,
                checksum,
                keep_git_dir,
                span: rspan,
            } => {
                // As ADD does: the URL is expanded like any source, and the fetched file is the single
                // entry of its tree, named like the URL's end.
                let url = self.expand(img, url, *rspan)?;
                let checksum = match checksum {
                    Some(c) => Some(self.expand(img, c, *rspan)?),
                    None => None,
                };
                if srcs.is_empty() {
                    srcs.push(
                        url.trim_end_matches('/')
                            .rsplit('/')
                            .next()
                            .unwrap_or("download")
                            .to_string(),
                    );
                }
                self.remote_node(url, checksum, *keep_git_dir, *rspan)
            }
            Value::Inline {
                files,
                expand: true,
                span: ispan,
            } => {
                // An unquoted heredoc: variables expand, quotes and escapes stay as written.
                let mut expanded = Vec::new();
                for (name, content) in files {
                    let text = shell::expand_raw(content, '\\', &|n| img.lookup(n))
                        .map_err(|e| self.err(*ispan, format!("cannot expand `{name}`: {e}")))?;
                    expanded.push((name.clone(), text));
                }
                self.inline_node(expanded, *ispan)
            }
            other => self.source_node(other),
        };
        match &v[0] {
            Value::File { path, .. } => {
                if !srcs.is_empty() {
                    return Err(self
                        .err(at(1), "a File source is the one file to copy")
                        .help("give `[]` as the sources, or copy from `image.dir(...)`"));
                }
                srcs.push(path.clone());
            }
            _ if srcs.is_empty() => {
                return Err(self
                    .err(at(1), format!("{what}() needs at least one source path"))
                    .help("name paths relative to the source, e.g. `[\".\"]` for all of it"));
            }
            _ => {}
        }
        let raw_dest = self.expand(img, v[2].str(), at(2))?;
        let mut dest = join_path(img.cwd.as_deref().unwrap_or("/"), &raw_dest);
        if (raw_dest.ends_with('/') || raw_dest == "." || raw_dest.ends_with("/."))
            && !dest.ends_with('/')
        {
            dest.push('/');
        }
        if srcs.len() > 1 && !dest.ends_with('/') && !self.opts.lower.lenient {
            return Err(self
                .err(
                    at(2),
                    "when copying several sources, the destination must be a directory",
                )
                .help(format!("end it with a slash: `{raw_dest}/`")));
        }
        let chown = match &v[3] {
            Value::Str(s) => Some(self.expand(img, s, span)?),
            _ => None,
        };
        let chmod = match v[4] {
            Value::Int(m) if m <= 0o7777 => Some(m as u32),
            Value::Int(m) => {
                return Err(self
                    .err(span, format!("invalid chmod {m:o}"))
                    .help("give an octal mode such as `0o644`"));
            }
            _ => None,
        };
        let mut excludes = Vec::new();
        for x in v[5].strs() {
            let x = self.expand(img, &x, span)?;
            if x.is_empty() {
                return Err(self.err(span, "exclude needs a pattern"));
            }
            excludes.push(x);
        }
        let created_by = copy_history(add, &srcs, &dest);
        let op = Op::Copy(CopyOp {
            sources: srcs,
            dest,
            chown,
            chmod,
            extract: add,
            excludes,
            parents: v[6].bool(),
        });
        self.push_fs(img, op, vec![source], created_by, span);
        Ok(())
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
        Op::Mkdir { path } => format!("workdir {path}"),
        other => other.kind().to_string(),
    }
}

/// Compiles the `.build` file at `path`, selecting `targets` (all of them when empty; the last one when
/// `None`), into a program whose roots are the targets in order.
pub fn lower_file(
    session: &mut Session,
    path: &Path,
    targets: Option<&[String]>,
    opts: &BuildOptions,
    target_at: Option<Located>,
) -> Result<(Program, PackageContexts)> {
    let idx = session.load(path, None)?;
    let mut ev = Evaluator::new(session, opts);
    ev.module = idx;
    let all = ev.targets(idx);
    let selected: Vec<String> = match targets {
        Some(t) if !t.is_empty() => t.to_vec(),
        Some(_) => all.clone(),
        None => match all.last() {
            Some(t) => vec![t.clone()],
            None => {
                let file = &ev.session.modules[idx].module.file;
                return Err(
                    Diagnostic::input(format!("{} defines no target", file.name))
                        .help("add one: `target image: Image = image(\"busybox\").run(\"...\")`"),
                );
            }
        },
    };
    for t in &selected {
        let label = ev.label(idx, t);
        ev.add_root(idx, t, label).map_err(|d| match &target_at {
            Some(at) if d.labels.is_empty() => d.label(at.clone(), ""),
            _ => d,
        })?;
    }
    Ok((ev.program, ev.contexts))
}
