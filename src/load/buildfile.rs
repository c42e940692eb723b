//! Reading `.build` programs: a file and its imports (`@std/` modules compiled in, relative paths, `//`
//! paths from the monorepo root), and in a monorepo the packages (`BUILD.build`) that labels name. Each
//! module is read, parsed and type-checked once; the evaluator (`frontend::buildfile::lower`) gets them
//! through its `Loader` trait and never touches a file itself.

use foldhash::{HashMap, HashMapExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::evalcache::{EvalCache, FileSummary};
use crate::diag::{Diagnostic, Located, Note, Result, SourceFile};
use crate::digest::Digest;
use crate::frontend::buildfile::check::Interface;
use crate::frontend::buildfile::lower::{
    EvalOptions, Loader, Lowered, PackageContexts, UnitRecord, lower_module,
    lower_targets as lower_roots,
};
use crate::frontend::buildfile::syntax::{ItemKind, Module};
use crate::frontend::lint::Finding;
use crate::graph::Program;

/// The standard library, compiled into kiln: `import "@std/apt.build" as apt`.
pub const STD: &[(&str, &str)] = &[
    ("apt.build", include_str!("../../std/apt.build")),
    ("apk.build", include_str!("../../std/apk.build")),
    ("go.build", include_str!("../../std/go.build")),
    ("node.build", include_str!("../../std/node.build")),
    ("artifact.build", include_str!("../../std/artifact.build")),
];

/// The name of the file that holds a monorepo package's targets.
pub const PACKAGE_FILE: &str = "BUILD.build";
/// The file that marks a monorepo's root.
pub const ROOT_MARKER: &str = "kiln.toml";

/// A loaded, checked module.
pub struct Loaded {
    /// The parsed module (shared, so evaluation can hold its items while it evaluates them) and what
    /// the checker found. Parsed when loaded, unless the evaluation cache knows the module passed the
    /// checker (same text, same imports): then when something first needs its source.
    parsed: OnceLock<(Arc<Module>, Interface)>,
    pub file: Arc<SourceFile>,
    /// Its imports, targets and params, known without parsing.
    pub summary: Arc<FileSummary>,
    /// The digest of its path, text and imports' keys: what evaluation results are cached under.
    pub key: Digest,
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
    /// The same modules by the path they were asked for, before canonicalizing: each file is imported
    /// by many packages, and canonicalizing walks every component of its path.
    by_given: HashMap<PathBuf, usize>,
    /// Packages by label (`//a/b`), loaded once each (most packages are named by many labels).
    by_package: HashMap<String, usize>,
    /// The monorepo root (the directory holding `kiln.toml`), if any.
    pub root: Option<PathBuf>,
    /// The files being loaded, outermost first, each with the import that asked for it (none for the
    /// file the command line names): an import cycle is shown as the path through them.
    loading: Vec<(PathBuf, Option<Located>)>,
    /// What the secret checks found in the steps evaluated so far (`kiln build` refuses on errors).
    pub findings: Vec<crate::frontend::lint::Finding>,
    /// The program's `print(...)` notes, in the order evaluation reached them, for the driver to show.
    pub notes: Vec<Note>,
    /// The workspace's evaluation cache, when the driver opened one.
    cache: Option<EvalCache>,
    /// Modules by file name (`SourceFile::name`), for cached records that name them.
    by_name: HashMap<String, usize>,
    /// Units replayed and evaluated by the last evaluation.
    pub stats: (usize, usize),
    /// Files read (and parsed, when the cache has no summary of them) ahead of their load, by path.
    ahead: HashMap<PathBuf, Ahead>,
    /// Whether evaluation keeps a trace of each unit (`lower::Trace`), for `kiln graph`'s reuse.
    pub trace: bool,
    /// What each `//dir/...` pattern's walk found: its directory, the `.build` files, and the
    /// directories it entered.
    pub(crate) walked: Vec<(PathBuf, Vec<PathBuf>, super::walk::Entered)>,
}

/// A loaded module's file as `kiln graph`'s reuse of its last graph checks it: the file's name and
/// path, the digest of its text, the names of the modules it imports, and its targets.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ModuleFile {
    pub name: String,
    pub path: PathBuf,
    pub digest: Digest,
    pub imports: Vec<String>,
    pub targets: Vec<String>,
}

/// A file read ahead of its load (see `Session::read_ahead`), with its parse when one was needed.
struct Ahead {
    file: Arc<SourceFile>,
    digest: Digest,
    parsed: Option<Result<Module>>,
}

impl Session {
    pub fn new(root: Option<PathBuf>) -> Session {
        Session {
            modules: Vec::new(),
            by_path: HashMap::new(),
            by_given: HashMap::new(),
            by_package: HashMap::new(),
            root,
            loading: Vec::new(),
            findings: Vec::new(),
            notes: Vec::new(),
            cache: None,
            by_name: HashMap::new(),
            stats: (0, 0),
            ahead: HashMap::new(),
            trace: false,
            walked: Vec::new(),
        }
    }

    /// Keeps evaluation results in the cache file at `path`, for a run that replays few of them (see
    /// `EvalCache::few`).
    pub fn with_cache_for_few(self, path: PathBuf) -> Session {
        let session = self.with_cache(path);
        if let Some(c) = &session.cache {
            c.few();
        }
        session
    }

    /// Every module loaded so far (`@std` ones left out: they come with kiln).
    pub fn module_files(&self) -> Vec<ModuleFile> {
        let user = self.modules.iter().filter(|m| !m.path.starts_with("@std"));
        user.map(|m| ModuleFile {
            name: m.file.name.clone(),
            path: m.path.clone(),
            digest: Digest::of(m.file.text.as_bytes()),
            imports: m
                .imports
                .values()
                .map(|&i| self.modules[i].file.name.clone())
                .collect(),
            targets: m.summary.targets.iter().map(|(t, _)| t.clone()).collect(),
        })
        .collect()
    }

    /// Keeps evaluation results in (and takes them from) the cache file at `path`.
    pub fn with_cache(mut self, path: PathBuf) -> Session {
        self.cache = Some(EvalCache::open(path));
        self
    }

    /// Writes back what this session added to its evaluation cache, on a thread of its own: a cold
    /// `kiln graph //...` of a big monorepo writes megabytes while it builds and prints the graph.
    pub fn save_cache(&mut self) -> Saving {
        Saving(
            self.cache
                .take()
                .filter(EvalCache::dirty)
                .map(|c| std::thread::spawn(move || c.save())),
        )
    }

    /// Every `.build` file at or below `dir` (`load::build_files_under`), with the directory listings
    /// the evaluation cache kept, and the directories entered with their stat data.
    pub(crate) fn walk_dirs(&mut self, dir: &Path) -> Result<(Vec<PathBuf>, super::walk::Entered)> {
        super::walk::walk_dirs(dir, self.cache.as_mut())
    }

    /// The module at `index`, parsed and checked (now, if the cache had spared that so far).
    pub fn parsed(&self, index: usize) -> &(Arc<Module>, Interface) {
        let m = &self.modules[index];
        m.parsed.get_or_init(|| {
            let parsed = crate::frontend::buildfile::syntax::parse(&m.file);
            let deps: Vec<(String, usize, &Interface)> = m
                .imports
                .iter()
                .map(|(a, &i)| (a.clone(), i, &self.parsed(i).1))
                .collect();
            // The cache (written by this very kiln binary) says this text with these imports parsed
            // and checked, and both are functions of them: this cannot fail. Should it, the module is
            // empty, and evaluating it reports its names as unknown rather than panicking.
            match parsed.and_then(|module| {
                let iface = crate::frontend::buildfile::check::check(&module, &deps)?;
                Ok((Arc::new(module), iface))
            }) {
                Ok(p) => p,
                Err(_) => empty_module(&m.file),
            }
        })
    }

    /// The error for a file imported while it is being loaded: the path from it back to itself
    /// (`a.build → b.build → a.build`), each edge labelled at its import line.
    fn import_cycle(&self, start: usize, closing: Option<Located>) -> Diagnostic {
        let path = &self.loading[start..];
        let mut names: Vec<String> = path
            .iter()
            .map(|(k, _)| display_name(k, self.root.as_deref()))
            .collect();
        names.push(names[0].clone());
        let imports = path
            .iter()
            .skip(1)
            .map(|(_, at)| at.clone())
            .chain([closing]);
        let mut d = Diagnostic::input(format!("import cycle: {}", names.join(" → ")));
        for (i, at) in imports.enumerate() {
            if let Some(at) = at {
                d = d.label(at, format!("`{}` imports `{}`", names[i], names[i + 1]));
            }
        }
        d.help("imports must not form a cycle: move what both files need into a third file both import")
    }

    /// Finds the monorepo root above `dir`: the nearest directory with a `kiln.toml`.
    pub fn find_root(dir: &Path) -> Option<PathBuf> {
        let dir = std::fs::canonicalize(dir).ok()?;
        dir.ancestors()
            .find(|d| {
                let marker = d.join(ROOT_MARKER);
                crate::inputs::file(&marker);
                marker.is_file()
            })
            .map(Path::to_path_buf)
    }

    /// Loads (once) the file at `path`, its imports first, and checks it.
    pub fn load(&mut self, path: &Path, from: Option<Located>) -> Result<usize> {
        if let Some(&i) = self.by_given.get(path) {
            return Ok(i);
        }
        let i = self.load_canonical(path, from)?;
        self.by_given.insert(path.to_path_buf(), i);
        Ok(i)
    }

    /// Reads `paths` (canonical, as `load_found` takes them), and parses those the evaluation cache has
    /// no summary of, on every core, before they are loaded one by one: a cold `kiln graph //...`
    /// parses thousands of files. What went wrong with one (a parse error) is reported when its load
    /// comes, so errors come in the order they always did; a file that cannot be read is left to it.
    pub fn read_ahead(&mut self, paths: &[PathBuf]) {
        let root = self.root.clone();
        let read = |p: &PathBuf| -> Option<(Arc<SourceFile>, Digest)> {
            crate::inputs::file(p);
            let text = std::fs::read_to_string(p).ok()?;
            let digest = Digest::of(text.as_bytes());
            Some((
                SourceFile::new(display_name(p, root.as_deref()), text),
                digest,
            ))
        };
        let files: Vec<(&PathBuf, Arc<SourceFile>, Digest)> =
            crate::layer::parallel_map(paths, 0, read)
                .into_iter()
                .zip(paths)
                .filter_map(|(read, path)| read.map(|(file, digest)| (path, file, digest)))
                .collect();
        let cache = self.cache.as_ref();
        let unparsed: Vec<bool> = files
            .iter()
            .map(|(_, _, d)| cache.and_then(|c| c.summary(d)).is_none())
            .collect();
        let to_parse: Vec<&Arc<SourceFile>> = files
            .iter()
            .zip(&unparsed)
            .filter(|(_, u)| **u)
            .map(|((_, file, _), _)| file)
            .collect();
        let parse = |f: &&Arc<SourceFile>| crate::frontend::buildfile::syntax::parse(f);
        let mut parsed = crate::layer::parallel_map(&to_parse, 0, parse).into_iter();
        for ((path, file, digest), unparsed) in files.into_iter().zip(unparsed) {
            let parsed = if unparsed { parsed.next() } else { None };
            let ahead = Ahead {
                file,
                digest,
                parsed,
            };
            self.ahead.insert(path.clone(), ahead);
        }
    }

    /// `load` of a path that is already canonical: a file found by walking down from a canonical
    /// directory without following links (`load::build_files_under`), which spares thousands of
    /// packages a `realpath` each.
    pub fn load_found(&mut self, path: &Path) -> Result<usize> {
        if let Some(&i) = self.by_given.get(path) {
            return Ok(i);
        }
        let i = self.load_key(path.to_path_buf(), None)?;
        self.by_given.insert(path.to_path_buf(), i);
        Ok(i)
    }

    fn load_canonical(&mut self, path: &Path, from: Option<Located>) -> Result<usize> {
        let key = if path.starts_with("@std") {
            path.to_path_buf()
        } else {
            // The name as imported: a link retargeted makes another canonical path.
            crate::inputs::file(path);
            std::fs::canonicalize(path).map_err(|e| {
                let d = Diagnostic::input(format!("cannot read `{}`: {e}", path.display()));
                match &from {
                    Some(at) => d.label(at.clone(), "imported here"),
                    None => d,
                }
                .help("check the path; `//` paths start at the directory holding kiln.toml")
            })?
        };
        self.load_key(key, from)
    }

    /// Loads the module whose canonical path (or `@std/` name) is `key`.
    fn load_key(&mut self, key: PathBuf, from: Option<Located>) -> Result<usize> {
        if let Some(&i) = self.by_path.get(&key) {
            return Ok(i);
        }
        if let Some(start) = self.loading.iter().position(|(k, _)| *k == key) {
            return Err(self.import_cycle(start, from));
        }
        let (file, digest, parsed) = match self.ahead.remove(&key) {
            Some(a) => (a.file, a.digest, a.parsed),
            None => {
                let (file, digest) = self.read_module(&key, &from)?;
                (file, digest, None)
            }
        };
        let known = match parsed {
            Some(_) => None,
            None => self.cache.as_ref().and_then(|c| c.summary(&digest)),
        };
        let (summary, parsed) = match (known, parsed) {
            (Some(s), _) => (s, None),
            (None, parsed) => {
                let module = match parsed {
                    Some(p) => p?,
                    None => crate::frontend::buildfile::syntax::parse(&file)?,
                };
                plain_imports(&module)?;
                (Arc::new(summarize(&module)), Some(module))
            }
        };
        self.load_module(key, from, file, digest, summary, parsed)
    }

    /// The text of module `key` (a file, or an `@std/` module), as a source file, and its digest.
    fn read_module(&self, key: &Path, from: &Option<Located>) -> Result<(Arc<SourceFile>, Digest)> {
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
            crate::inputs::file(key);
            let text = std::fs::read_to_string(key)
                .map_err(|e| Diagnostic::io(format!("cannot read {}", key.display()), e))?;
            (display_name(key, self.root.as_deref()), text)
        };
        let digest = Digest::of(text.as_bytes());
        Ok((SourceFile::new(name, text), digest))
    }

    /// Loads module `key` from its text (`file`, `digest`) and summary (with its parse when that was
    /// needed): its imports first, then its type check unless the cache vouches for it.
    fn load_module(
        &mut self,
        key: PathBuf,
        from: Option<Located>,
        file: Arc<SourceFile>,
        digest: Digest,
        summary: Arc<FileSummary>,
        mut parsed: Option<Module>,
    ) -> Result<usize> {
        let dir = key.parent().map(Path::to_path_buf).unwrap_or_default();
        self.loading.push((key.clone(), from));
        let mut imports = HashMap::new();
        let mut h = crate::digest::Encoder::new("kiln/module/v1");
        h.str(&key.to_string_lossy()).digest(&digest);
        for (alias, spec, span) in &summary.imports {
            let at = Located::new(&file, *span);
            let target = self.resolve_import(spec, &dir, &at)?;
            let idx = self.load(&target, Some(at))?;
            h.str(alias).digest(&self.modules[idx].key);
            imports.insert(alias.clone(), idx);
        }
        self.loading.pop();
        let module_key = h.finish();
        let lazy = parsed.is_none() && self.cache.as_ref().is_some_and(|c| c.checked(&module_key));
        let cell = OnceLock::new();
        if !lazy {
            let module = match parsed.take() {
                Some(m) => m,
                None => crate::frontend::buildfile::syntax::parse(&file)?,
            };
            let deps: Vec<(String, usize, &Interface)> = imports
                .iter()
                .map(|(a, &i)| (a.clone(), i, &self.parsed(i).1))
                .collect();
            let iface = crate::frontend::buildfile::check::check(&module, &deps)?;
            let _ = cell.set((Arc::new(module), iface));
            if let Some(c) = &mut self.cache {
                c.add_module(digest, summary.clone(), module_key.clone());
            }
        }
        let package = self.package_of(&dir);
        self.by_name.insert(file.name.clone(), self.modules.len());
        self.modules.push(Loaded {
            parsed: cell,
            file,
            summary,
            key: module_key,
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

    /// The names of the targets of the module at `module`, in file order.
    pub fn targets(&self, module: usize) -> Vec<String> {
        self.modules[module]
            .summary
            .targets
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
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
        if let Some(&i) = self.by_package.get(package) {
            return Ok(i);
        }
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
        let i = self.load(&path, from)?;
        self.by_package.insert(package.to_string(), i);
        Ok(i)
    }
}

/// An evaluation cache being written: waited for when dropped, so a command never ends with it half
/// written (the file would only be missed, never wrong: it is written whole and renamed).
#[must_use]
pub struct Saving(Option<std::thread::JoinHandle<()>>);

impl Drop for Saving {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
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

/// Refuses an import whose path is not a plain string (it must be known before anything is evaluated).
fn plain_imports(module: &Module) -> Result<()> {
    for item in &module.items {
        if let ItemKind::Import { path: p, .. } = &item.kind
            && p.as_plain_str().is_none()
        {
            return Err(
                Diagnostic::at(&module.file, p.span, "an import path is a plain string")
                    .help("write `import \"//lib/x.build\" as x`"),
            );
        }
    }
    Ok(())
}

/// What loading needs of a parsed module.
fn summarize(module: &Module) -> FileSummary {
    let mut s = FileSummary::default();
    for item in &module.items {
        match &item.kind {
            ItemKind::Import { path, alias } => s.imports.push((
                alias.name.clone(),
                // Always a plain string: `plain_imports` refused the others.
                path.as_plain_str().unwrap_or_default(),
                path.span,
            )),
            ItemKind::Target {
                name,
                tags,
                platforms,
                ..
            } => s
                .targets
                .push((name.name.clone(), tags.is_some() || platforms.is_some())),
            ItemKind::Param { name, .. } => s.params.push(name.name.clone()),
            _ => {}
        }
    }
    s
}

fn empty_module(file: &Arc<SourceFile>) -> (Arc<Module>, Interface) {
    let module = Module {
        file: file.clone(),
        items: Vec::new(),
        comments: Vec::new(),
    };
    let iface = crate::frontend::buildfile::check::check(&module, &[]).unwrap_or_default();
    (Arc::new(module), iface)
}

impl Loader for Session {
    fn module(&self, index: usize) -> &Arc<Module> {
        &self.parsed(index).0
    }

    fn interface(&self, index: usize) -> &Interface {
        &self.parsed(index).1
    }

    fn file(&self, index: usize) -> &Arc<SourceFile> {
        &self.modules[index].file
    }

    fn is_target(&self, index: usize, name: &str) -> bool {
        self.modules[index]
            .summary
            .targets
            .iter()
            .any(|(t, _)| t == name)
    }

    fn targets(&self, index: usize) -> Vec<String> {
        Session::targets(self, index)
    }

    fn has_clauses(&self, index: usize, name: &str) -> bool {
        self.modules[index]
            .summary
            .targets
            .iter()
            .any(|(t, c)| t == name && *c)
    }

    fn caching(&self) -> bool {
        self.cache.is_some()
    }

    fn module_key(&self, index: usize) -> Option<Digest> {
        Some(self.modules[index].key.clone())
    }

    fn cached_unit(&self, key: &Digest) -> Option<UnitRecord> {
        self.cache.as_ref()?.unit(key)
    }

    fn keep_unit(&mut self, key: Digest, record: &UnitRecord) {
        if let Some(c) = &mut self.cache {
            c.keep_unit(key, record);
        }
    }

    fn module_by_name(&mut self, name: &str) -> Result<usize> {
        if let Some(&i) = self.by_name.get(name) {
            return Ok(i);
        }
        let path = match (&self.root, Path::new(name)) {
            (_, p) if p.is_absolute() || name.starts_with("@std/") => p.to_path_buf(),
            (Some(root), p) => root.join(p),
            (None, p) => p.to_path_buf(),
        };
        self.load(&path, None)
    }

    fn file_named(&self, name: &str) -> Option<Arc<SourceFile>> {
        let &i = self.by_name.get(name)?;
        Some(self.modules[i].file.clone())
    }

    fn eval_stats(&mut self, replayed: usize, evaluated: usize) {
        self.stats = (replayed, evaluated);
    }

    fn traced(&self) -> bool {
        self.trace
    }

    fn dir(&self, index: usize) -> &Path {
        &self.modules[index].dir
    }

    fn package(&self, index: usize) -> Option<&str> {
        self.modules[index].package.as_deref()
    }

    fn label(&self, index: usize, name: &str) -> String {
        Session::label(self, index, name)
    }

    fn load_package(&mut self, package: &str, from: Option<Located>) -> Result<usize> {
        Session::load_package(self, package, from)
    }

    fn is_dir(&self, path: &Path) -> bool {
        crate::inputs::file(path);
        path.is_dir()
    }

    fn findings(&mut self) -> &mut Vec<Finding> {
        &mut self.findings
    }

    fn notes(&mut self) -> &mut Vec<Note> {
        &mut self.notes
    }
}

/// Compiles the `.build` file at `path`, selecting `targets` (all of them when empty; the last one when
/// `None`), into a program whose roots are the targets in order.
pub fn lower_file(
    session: &mut Session,
    path: &Path,
    targets: Option<&[String]>,
    opts: &EvalOptions,
    target_at: Option<Located>,
) -> Result<(Program, PackageContexts)> {
    let idx = session.load(path, None)?;
    lower_module(session, idx, targets, opts, target_at)
}

/// Compiles the targets `selected` (a module loaded into `session`, and a target name) into one
/// program whose roots are the targets in order, each named by its label.
pub fn lower_targets(
    session: &mut Session,
    selected: &[(usize, String)],
    opts: &EvalOptions,
) -> Result<Lowered> {
    lower_roots(session, selected, opts)
}
