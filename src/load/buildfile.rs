//! Reading `.build` programs: a file and its imports (`@std/` modules compiled in, relative paths, `//`
//! paths from the monorepo root), and in a monorepo the packages (`BUILD.build`) that labels name. Each
//! module is read, parsed and type-checked once; the evaluator (`frontend::buildfile::lower`) gets them
//! through its `Loader` trait and never touches a file itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::diag::{Diagnostic, Located, Note, Result, SourceFile};
use crate::frontend::buildfile::check::Interface;
use crate::frontend::buildfile::lower::{
    EvalOptions, Loader, Lowered, PackageContexts, lower_module, lower_targets as lower_roots,
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
    /// Shared, so evaluation can hold a module's items while it evaluates them (no copies of the tree).
    pub module: std::sync::Arc<Module>,
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
        }
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
            .find(|d| d.join(ROOT_MARKER).is_file())
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

    fn load_canonical(&mut self, path: &Path, from: Option<Located>) -> Result<usize> {
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
        if let Some(start) = self.loading.iter().position(|(k, _)| *k == key) {
            return Err(self.import_cycle(start, from));
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
        self.loading.push((key.clone(), from));
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
            module: std::sync::Arc::new(module),
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

    /// The names of the targets of the module at `module`, in file order.
    pub fn targets(&self, module: usize) -> Vec<String> {
        self.modules[module]
            .module
            .items
            .iter()
            .filter_map(|i| match &i.kind {
                ItemKind::Target { name, .. } => Some(name.name.clone()),
                _ => None,
            })
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

impl Loader for Session {
    fn module(&self, index: usize) -> &std::sync::Arc<Module> {
        &self.modules[index].module
    }

    fn interface(&self, index: usize) -> &Interface {
        &self.modules[index].iface
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
        path.is_dir()
    }

    fn findings(&mut self) -> &mut Vec<Finding> {
        &mut self.findings
    }

    fn note(&mut self, note: Note) {
        self.notes.push(note);
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
