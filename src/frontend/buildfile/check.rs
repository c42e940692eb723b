//! The `.build` type checker. Besides ordinary typing, it enforces `SPEC.md` §3.5: a `Secret` or `Ssh`
//! handle can be bound, passed to functions and mounted into a step, and nothing else. Every other flow
//! (interpolation, concatenation, comparison, file content, env, label, argument, output, printing) is
//! an error that points at the sink and at the handle's origin.
//!
//! The signatures of the built-in functions and methods live here too, so that lowering evaluates
//! exactly what was checked.

use std::collections::HashMap;
use std::sync::Arc;

use crate::diag::{Diagnostic, Located, Result, SourceFile, Span, suggest};
use crate::frontend::buildfile::syntax::{
    Arg, BinOp, Expr, ExprKind, ItemKind, Module, StrPart, TypeExpr, TypeKind,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ty {
    String,
    Int,
    Bool,
    /// A path inside an image or a context; interchangeable with `String`.
    Path,
    File,
    Dir,
    Image,
    Secret,
    Ssh,
    Cache,
    Mount,
    List(Box<Ty>),
    Map(Box<Ty>),
    Opt(Box<Ty>),
    /// The type of `none`, and of the elements of `[]` and `{}`.
    Nothing,
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ty::List(t) => write!(f, "[{t}]"),
            Ty::Map(t) => write!(f, "{{{t}}}"),
            Ty::Opt(t) => write!(f, "{t}?"),
            Ty::Nothing => f.write_str("none"),
            t => write!(f, "{t:?}"),
        }
    }
}

impl Ty {
    /// Whether a value of this type holds a secret or SSH handle.
    pub fn is_handle(&self) -> bool {
        match self {
            Ty::Secret | Ty::Ssh => true,
            Ty::List(t) | Ty::Map(t) | Ty::Opt(t) => t.is_handle(),
            _ => false,
        }
    }

    fn handle_name(&self) -> &'static str {
        match self {
            Ty::Ssh => "an Ssh handle",
            Ty::List(t) | Ty::Map(t) | Ty::Opt(t) => t.handle_name(),
            _ => "a Secret",
        }
    }

    fn stringy(&self) -> bool {
        matches!(self, Ty::String | Ty::Path)
    }

    /// Whether a value of type `self` may be used where `want` is expected.
    pub fn fits(&self, want: &Ty) -> bool {
        match (self, want) {
            (a, b) if a == b => true,
            (a, b) if a.stringy() && b.stringy() => true,
            (Ty::Cache, Ty::Mount) => true,
            (Ty::Nothing, Ty::Opt(_)) => true,
            (Ty::Opt(a), Ty::Opt(b)) => a.fits(b),
            (a, Ty::Opt(b)) => a.fits(b),
            (Ty::List(a), Ty::List(b)) | (Ty::Map(a), Ty::Map(b)) => {
                **a == Ty::Nothing || a.fits(b)
            }
            _ => false,
        }
    }
}

/// What a built-in parameter accepts: a type, or one of the few unions the operations need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    T(&'static Ty),
    List(&'static Ty),
    Map(&'static Ty),
    /// A map whose values may be `none`.
    OptMap(&'static Ty),
    /// A command: a `String` (shell form, through the image's shell) or `[String]` (exec form).
    Command,
    /// Where `copy`/`add`/`bind` read from: an `Image`, a `Dir` or a `File`.
    Source,
}

impl std::fmt::Display for Want {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Want::Command | Want::Source => {}
            w => return write!(f, "{}", w.ty()),
        }
        match self {
            Want::T(t) => write!(f, "{t}"),
            Want::List(_) | Want::Map(_) | Want::OptMap(_) => Ok(()),
            Want::Command => f.write_str("String or [String]"),
            Want::Source => f.write_str("Image, Dir or File"),
        }
    }
}

impl Want {
    /// The type wanted (for `Command` and `Source`, the first of the types accepted).
    pub fn ty(&self) -> Ty {
        match self {
            Want::T(t) => (*t).clone(),
            Want::List(t) => Ty::List(Box::new((*t).clone())),
            Want::Map(t) => Ty::Map(Box::new((*t).clone())),
            Want::OptMap(t) => Ty::Map(Box::new(Ty::Opt(Box::new((*t).clone())))),
            Want::Command => Ty::String,
            Want::Source => Ty::Image,
        }
    }

    fn accepts(&self, t: &Ty) -> bool {
        match self {
            Want::T(_) | Want::List(_) | Want::Map(_) | Want::OptMap(_) => t.fits(&self.ty()),
            Want::Command => t.stringy() || t.fits(&Ty::List(Box::new(Ty::String))),
            Want::Source => matches!(t, Ty::Image | Ty::Dir | Ty::File),
        }
    }
}

pub struct Param {
    pub name: &'static str,
    pub want: Want,
    /// Optional parameters may be left out (and are usually given by name).
    pub optional: bool,
}

pub struct Builtin {
    pub name: &'static str,
    pub params: &'static [Param],
    pub ret: Ty,
    pub doc: &'static str,
}

const fn req(name: &'static str, want: Want) -> Param {
    Param {
        name,
        want,
        optional: false,
    }
}
const fn opt(name: &'static str, want: Want) -> Param {
    Param {
        name,
        want,
        optional: true,
    }
}

static STRING: Ty = Ty::String;
static INT: Ty = Ty::Int;
static BOOL: Ty = Ty::Bool;
static IMAGE: Ty = Ty::Image;
static MOUNT: Ty = Ty::Mount;

const S: Want = Want::T(&STRING);
const I: Want = Want::T(&INT);
const B: Want = Want::T(&BOOL);

/// Functions callable by name.
pub static FUNCTIONS: &[Builtin] = &[
    Builtin {
        name: "image",
        params: &[req("ref", S)],
        ret: Ty::Image,
        doc: "an image by reference, or a target by label (`//pkg:name`, `:name`)",
    },
    Builtin {
        name: "scratch",
        params: &[],
        ret: Ty::Image,
        doc: "the empty image",
    },
    Builtin {
        name: "from",
        params: &[req("base", Want::T(&IMAGE))],
        ret: Ty::Image,
        doc: "a new stage on top of an image: like FROM, `.arg` declarations do not carry over",
    },
    Builtin {
        name: "context",
        params: &[opt("path", S)],
        ret: Ty::Dir,
        doc: "a local directory: `.` is the build context, other names are --build-context names or package paths",
    },
    Builtin {
        name: "files",
        params: &[req("files", Want::Map(&STRING)), opt("expand", B)],
        ret: Ty::Dir,
        doc: "files written in the build definition: name → content (`expand: true` expands $NAME from the copying image, like an unquoted heredoc)",
    },
    Builtin {
        name: "url",
        params: &[req("url", S), opt("checksum", S)],
        ret: Ty::Dir,
        doc: "a file fetched over HTTP(S), pinned by `checksum`",
    },
    Builtin {
        name: "git",
        params: &[req("url", S), opt("keep_git_dir", B)],
        ret: Ty::Dir,
        doc: "a git repository",
    },
    Builtin {
        name: "cache",
        params: &[
            req("target", S),
            opt("id", S),
            opt("sharing", S),
            opt("mode", I),
            opt("uid", I),
            opt("gid", I),
            opt("readonly", B),
        ],
        ret: Ty::Cache,
        doc: "a cache mount kept in the store across builds (sharing: shared, private or locked)",
    },
    Builtin {
        name: "bind",
        params: &[
            req("from", Want::Source),
            opt("target", S),
            opt("source", S),
            opt("rw", B),
        ],
        ret: Ty::Mount,
        doc: "a read-only (or `rw: true`, writes discarded) view of an image or directory",
    },
    Builtin {
        name: "tmpfs",
        params: &[req("target", S), opt("size", I)],
        ret: Ty::Mount,
        doc: "an empty in-memory filesystem",
    },
    Builtin {
        name: "join",
        params: &[req("items", Want::List(&STRING)), req("sep", S)],
        ret: Ty::String,
        doc: "the items joined with `sep`",
    },
    Builtin {
        name: "print",
        params: &[req("message", S)],
        ret: Ty::String,
        doc: "prints the message when the program is evaluated and returns it",
    },
];

/// Methods of `Image` values: each returns a new image with one more instruction applied.
pub static IMAGE_METHODS: &[Builtin] = &[
    Builtin {
        name: "run",
        params: &[
            req("cmd", Want::Command),
            opt("mounts", Want::List(&MOUNT)),
            opt("network", S),
            opt("security", S),
        ],
        ret: Ty::Image,
        doc: "RUN",
    },
    Builtin {
        name: "copy",
        params: &[
            req("from", Want::Source),
            req("sources", Want::List(&STRING)),
            req("dest", S),
            opt("chown", S),
            opt("chmod", I),
            opt("exclude", Want::List(&STRING)),
            opt("parents", B),
            opt("link", B),
        ],
        ret: Ty::Image,
        doc: "COPY",
    },
    Builtin {
        name: "add",
        params: &[
            req("from", Want::Source),
            req("sources", Want::List(&STRING)),
            req("dest", S),
            opt("chown", S),
            opt("chmod", I),
            opt("exclude", Want::List(&STRING)),
            opt("parents", B),
            opt("link", B),
        ],
        ret: Ty::Image,
        doc: "ADD: like copy, and local tar archives are unpacked",
    },
    Builtin {
        name: "env",
        params: &[req("vars", Want::Map(&STRING))],
        ret: Ty::Image,
        doc: "ENV",
    },
    Builtin {
        name: "arg",
        params: &[req("args", Want::OptMap(&STRING))],
        ret: Ty::Image,
        doc: "ARG: build arguments later runs see in their environment",
    },
    Builtin {
        name: "label",
        params: &[req("labels", Want::Map(&STRING))],
        ret: Ty::Image,
        doc: "LABEL",
    },
    Builtin {
        name: "workdir",
        params: &[req("path", S)],
        ret: Ty::Image,
        doc: "WORKDIR",
    },
    Builtin {
        name: "user",
        params: &[req("user", S)],
        ret: Ty::Image,
        doc: "USER",
    },
    Builtin {
        name: "cmd",
        params: &[req("cmd", Want::Command)],
        ret: Ty::Image,
        doc: "CMD",
    },
    Builtin {
        name: "entrypoint",
        params: &[req("cmd", Want::Command)],
        ret: Ty::Image,
        doc: "ENTRYPOINT",
    },
    Builtin {
        name: "expose",
        params: &[req("ports", Want::List(&STRING))],
        ret: Ty::Image,
        doc: "EXPOSE",
    },
    Builtin {
        name: "volume",
        params: &[req("paths", Want::List(&STRING))],
        ret: Ty::Image,
        doc: "VOLUME",
    },
    Builtin {
        name: "stop_signal",
        params: &[req("signal", S)],
        ret: Ty::Image,
        doc: "STOPSIGNAL",
    },
    Builtin {
        name: "healthcheck",
        params: &[
            req("cmd", Want::Command),
            opt("interval", S),
            opt("timeout", S),
            opt("start_period", S),
            opt("start_interval", S),
            opt("retries", I),
        ],
        ret: Ty::Image,
        doc: "HEALTHCHECK CMD",
    },
    Builtin {
        name: "no_healthcheck",
        params: &[],
        ret: Ty::Image,
        doc: "HEALTHCHECK NONE",
    },
    Builtin {
        name: "shell",
        params: &[req("shell", Want::List(&STRING))],
        ret: Ty::Image,
        doc: "SHELL",
    },
    Builtin {
        name: "onbuild",
        params: &[req("trigger", S)],
        ret: Ty::Image,
        doc: "ONBUILD",
    },
    Builtin {
        name: "maintainer",
        params: &[req("name", S)],
        ret: Ty::Image,
        doc: "MAINTAINER",
    },
    Builtin {
        name: "dir",
        params: &[req("path", S)],
        ret: Ty::Dir,
        doc: "a directory of the image, as a source or an output",
    },
    Builtin {
        name: "file",
        params: &[req("path", S)],
        ret: Ty::File,
        doc: "a file of the image, as a source",
    },
];

/// Methods of `Secret` handles: the only things a secret can become are mounts.
pub static SECRET_METHODS: &[Builtin] = &[
    Builtin {
        name: "file",
        params: &[
            opt("target", S),
            opt("required", B),
            opt("mode", I),
            opt("uid", I),
            opt("gid", I),
        ],
        ret: Ty::Mount,
        doc: "the secret as a read-only file (default /run/secrets/<id>)",
    },
    Builtin {
        name: "env",
        params: &[req("name", S), opt("required", B)],
        ret: Ty::Mount,
        doc: "the secret as an environment variable of the step's process",
    },
    Builtin {
        name: "mount",
        params: &[
            opt("target", S),
            opt("env", S),
            opt("required", B),
            opt("mode", I),
            opt("uid", I),
            opt("gid", I),
        ],
        ret: Ty::Mount,
        doc: "the secret as a file, an environment variable, or both",
    },
];

pub static SSH_METHODS: &[Builtin] = &[Builtin {
    name: "mount",
    params: &[
        opt("target", S),
        opt("required", B),
        opt("mode", I),
        opt("uid", I),
        opt("gid", I),
    ],
    ret: Ty::Mount,
    doc: "the agent's socket (default /run/buildkit/ssh_agent.N, SSH_AUTH_SOCK set)",
}];

pub fn methods_of(t: &Ty) -> &'static [Builtin] {
    match t {
        Ty::Image => IMAGE_METHODS,
        Ty::Secret => SECRET_METHODS,
        Ty::Ssh => SSH_METHODS,
        _ => &[],
    }
}

/// A type as written, resolved.
pub fn resolve_type(file: &Arc<SourceFile>, t: &TypeExpr) -> Result<Ty> {
    Ok(match &t.kind {
        TypeKind::Named(n) => match n.as_str() {
            "String" => Ty::String,
            "Int" => Ty::Int,
            "Bool" => Ty::Bool,
            "Path" => Ty::Path,
            "File" => Ty::File,
            "Dir" => Ty::Dir,
            "Image" => Ty::Image,
            "Secret" => Ty::Secret,
            "Ssh" => Ty::Ssh,
            "Cache" => Ty::Cache,
            "Mount" => Ty::Mount,
            other => {
                const ALL: [&str; 11] = [
                    "String", "Int", "Bool", "Path", "File", "Dir", "Image", "Secret", "Ssh",
                    "Cache", "Mount",
                ];
                let d = Diagnostic::at(file, t.span, format!("unknown type `{other}`"));
                return Err(match suggest(other, ALL) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help(format!(
                        "the types are {}, [T], {{T}} and T?",
                        ALL.join(", ")
                    )),
                });
            }
        },
        TypeKind::List(inner) => Ty::List(Box::new(resolve_type(file, inner)?)),
        TypeKind::Map(inner) => Ty::Map(Box::new(resolve_type(file, inner)?)),
        TypeKind::Optional(inner) => Ty::Opt(Box::new(resolve_type(file, inner)?)),
    })
}

/// What a name in scope stands for.
#[derive(Clone, Debug)]
pub enum Binding {
    Value {
        ty: Ty,
        /// For handles: where the secret or agent came from.
        origin: Option<Located>,
    },
    Fn(FnSig),
    /// An imported module: an index into the checked modules.
    Module(usize),
}

#[derive(Clone, Debug)]
pub struct FnSig {
    pub params: Vec<(String, Ty, bool)>,
    pub ret: Ty,
    pub at: Located,
    /// The result type as written.
    pub ret_at: Located,
}

/// What a use of a name refers to, as the checker resolved it. Lowering evaluates through this record
/// instead of resolving again, so a program means what was checked: a function's body sees its own
/// parameters and lets and its module's top-level names, never its caller's locals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Use {
    /// A top-level name of the module the use is in (let, param, secret, ssh, fn, target).
    Global,
    /// A parameter or let of the enclosing function, by the span of its defining name.
    Local(Span),
    /// An imported module: an index into the checked modules.
    Module(usize),
    /// A built-in function.
    Builtin,
}

/// The checked interface of a module: its top-level names.
#[derive(Clone, Debug, Default)]
pub struct Interface {
    pub names: HashMap<String, Binding>,
    /// Every use of a name in the module (by the span of the name as written) and what it refers to.
    pub uses: HashMap<Span, Use>,
}

/// Checks `module`, whose imports (by alias) are already-checked `deps` with their index.
pub fn check(module: &Module, deps: &[(String, usize, &Interface)]) -> Result<Interface> {
    let mut c = Checker {
        file: module.file.clone(),
        globals: HashMap::new(),
        defined: HashMap::new(),
        ordered: HashMap::new(),
        scopes: Vec::new(),
        uses: HashMap::new(),
        deps: deps.iter().map(|(a, i, f)| (a.clone(), (*i, *f))).collect(),
    };
    for item in &module.items {
        let name = match &item.kind {
            ItemKind::Let(l) => &l.name,
            ItemKind::Param { name, .. }
            | ItemKind::Secret { name, .. }
            | ItemKind::Ssh { name, .. }
            | ItemKind::Import { alias: name, .. } => name,
            ItemKind::Fn(_) | ItemKind::Target { .. } => continue,
        };
        c.ordered.entry(name.name.clone()).or_insert(name.span);
    }
    // Functions and targets carry their types, so they may be used before they appear.
    for item in &module.items {
        match &item.kind {
            ItemKind::Fn(f) => {
                let mut params = Vec::new();
                for p in &f.params {
                    params.push((
                        p.name.name.clone(),
                        resolve_type(&c.file, &p.ty)?,
                        p.default.is_some(),
                    ));
                }
                let sig = FnSig {
                    params,
                    ret: resolve_type(&c.file, &f.ret)?,
                    at: c.at(f.name.span),
                    ret_at: c.at(f.ret.span),
                };
                c.define(&f.name.name, f.name.span, Binding::Fn(sig))?;
            }
            ItemKind::Target { name, ty, .. } => {
                let t = resolve_type(&c.file, ty)?;
                // A handle-typed target is reported with its value's origin in the second pass.
                if !matches!(t, Ty::Image | Ty::Dir) && !t.is_handle() {
                    return Err(Diagnostic::at(
                        &c.file,
                        ty.span,
                        format!("a target is an Image or a Dir, not {t}"),
                    )
                    .help(
                        "targets are what `kiln build` produces: write `target name: Image = ...`",
                    ));
                }
                // (Its origin is the target, for a use that comes before that report.)
                let origin = t.is_handle().then(|| c.at(name.span));
                c.define(&name.name, name.span, Binding::Value { ty: t, origin })?;
            }
            _ => {}
        }
    }
    for item in &module.items {
        match &item.kind {
            ItemKind::Import { path, alias } => {
                if !c.deps.contains_key(&alias.name) {
                    return Err(Diagnostic::at(&c.file, path.span, "import not loaded"));
                }
                let idx = c.deps[&alias.name].0;
                c.define(&alias.name, alias.span, Binding::Module(idx))?;
            }
            ItemKind::Param { name, ty, default } => {
                let t = resolve_type(&c.file, ty)?;
                if t.is_handle() {
                    let instead = match t.handle_name() {
                        "an Ssh handle" => format!(
                            "declare `ssh {0}` and build with `--ssh {0}` (or `--ssh {0}=SOCKET`)",
                            name.name
                        ),
                        _ => format!(
                            "declare `secret {0}` and build with `--secret id={0},src=FILE`",
                            name.name
                        ),
                    };
                    return Err(Diagnostic::at(
                        &c.file,
                        ty.span,
                        format!("a param cannot be {}", t.handle_name()),
                    )
                    .help(format!(
                        "params are plain values from the command line; {instead}"
                    )));
                }
                if !matches!(t, Ty::String | Ty::Path | Ty::Int | Ty::Bool)
                    && !t.fits(&Ty::List(Box::new(Ty::String)))
                    && !t.fits(&Ty::Opt(Box::new(Ty::String)))
                {
                    return Err(Diagnostic::at(
                        &c.file,
                        ty.span,
                        format!("a param cannot be of type {t}"),
                    )
                    .help("params are String, Int, Bool, [String] or String? (the command line gives text)"));
                }
                if let Some(d) = default {
                    let (dt, origin) = c.expr(d)?;
                    c.expect(&dt, &origin, &t, d.span, "the param's default")?;
                }
                // A param without a default must come from the command line: evaluation checks that.
                c.define(
                    &name.name,
                    name.span,
                    Binding::Value {
                        ty: t,
                        origin: None,
                    },
                )?;
            }
            ItemKind::Secret { name, id } | ItemKind::Ssh { name, id } => {
                let ty = if matches!(item.kind, ItemKind::Secret { .. }) {
                    Ty::Secret
                } else {
                    Ty::Ssh
                };
                if let Some(id) = id
                    && id.as_plain_str().is_none_or(|s| s.is_empty())
                {
                    return Err(Diagnostic::at(
                        &c.file,
                        id.span,
                        "the id must be a plain, non-empty string",
                    )
                    .help("ids are fixed names given with `--secret id=ID` or `--ssh ID=...`"));
                }
                let origin = Some(c.at(name.span));
                c.define(&name.name, name.span, Binding::Value { ty, origin })?;
            }
            ItemKind::Let(l) => {
                let (t, origin) = c.expr(&l.value)?;
                let t = match &l.ty {
                    Some(want) => {
                        let w = resolve_type(&c.file, want)?;
                        c.expect(&t, &origin, &w, l.value.span, "the annotated type")?;
                        w
                    }
                    None => t,
                };
                c.define(&l.name.name, l.name.span, Binding::Value { ty: t, origin })?;
            }
            ItemKind::Fn(f) => {
                c.scopes.push(HashMap::new());
                for p in &f.params {
                    let t = resolve_type(&c.file, &p.ty)?;
                    if let Some(d) = &p.default {
                        let (dt, origin) = c.expr(d)?;
                        c.expect(&dt, &origin, &t, d.span, "the parameter's default")?;
                    }
                    let origin = t.is_handle().then(|| c.at(p.name.span));
                    c.scopes.last_mut().expect("pushed").insert(
                        p.name.name.clone(),
                        (p.name.span, Binding::Value { ty: t, origin }),
                    );
                }
                for l in &f.lets {
                    let (t, origin) = c.expr(&l.value)?;
                    let t = match &l.ty {
                        Some(want) => {
                            let w = resolve_type(&c.file, want)?;
                            c.expect(&t, &origin, &w, l.value.span, "the annotated type")?;
                            w
                        }
                        None => t,
                    };
                    c.scopes.last_mut().expect("pushed").insert(
                        l.name.name.clone(),
                        (l.name.span, Binding::Value { ty: t, origin }),
                    );
                }
                let (t, origin) = c.expr(&f.body)?;
                let ret = resolve_type(&c.file, &f.ret)?;
                c.expect(&t, &origin, &ret, f.body.span, "the function's result")?;
                c.scopes.pop();
            }
            ItemKind::Target { name, ty, value } => {
                let want = resolve_type(&c.file, ty)?;
                let (t, origin) = c.expr(value)?;
                if t.is_handle() || want.is_handle() {
                    return Err(c.leak(&t, &origin, value.span, &format!("target `{}`'s output", name.name))
                        .help("targets are Images or Dirs; a secret can only be mounted into a step that builds one"));
                }
                c.expect(
                    &t,
                    &origin,
                    &want,
                    value.span,
                    &format!("target `{}`", name.name),
                )?;
            }
        }
    }
    Ok(Interface {
        names: c.globals,
        uses: c.uses,
    })
}

struct Checker<'a> {
    file: Arc<SourceFile>,
    globals: HashMap<String, Binding>,
    /// Where each global was defined.
    defined: HashMap<String, Span>,
    /// Where each name that may only be used after its definition (lets, params, handles, imports) is
    /// defined, known from the start: a use before it gets a better error than "unknown name".
    ordered: HashMap<String, Span>,
    /// The enclosing function's parameters and lets: name → (defining span, binding).
    scopes: Vec<HashMap<String, (Span, Binding)>>,
    uses: HashMap<Span, Use>,
    deps: HashMap<String, (usize, &'a Interface)>,
}

type Typed = (Ty, Option<Located>);

impl Checker<'_> {
    fn at(&self, span: Span) -> Located {
        Located::new(&self.file, span)
    }

    fn define(&mut self, name: &str, span: Span, b: Binding) -> Result<()> {
        if let Some(&other) = self.defined.get(name) {
            // Functions and targets are defined before the rest: point at the later one in the text.
            let (first, again) = if other.start <= span.start {
                (other, span)
            } else {
                (span, other)
            };
            return Err(
                Diagnostic::at(&self.file, again, format!("`{name}` is defined twice"))
                    .label(self.at(first), "first defined here")
                    .help("each top-level name is defined once; rename one of them"),
            );
        }
        self.defined.insert(name.to_string(), span);
        self.globals.insert(name.to_string(), b);
        Ok(())
    }

    fn lookup(&self, name: &str) -> Option<&Binding> {
        self.resolve(name).map(|(_, b)| b)
    }

    fn resolve(&self, name: &str) -> Option<(Use, &Binding)> {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.get(name))
            .map(|(def, b)| (Use::Local(*def), b))
            .or_else(|| self.globals.get(name).map(|b| (Use::Global, b)))
    }

    /// Looks `name` up and records what its use at `span` refers to.
    fn lookup_at(&mut self, name: &str, span: Span) -> Option<Binding> {
        let (u, b) = self.resolve(name)?;
        let b = b.clone();
        let u = match b {
            Binding::Module(i) => Use::Module(i),
            _ => u,
        };
        self.uses.insert(span, u);
        Some(b)
    }

    /// The error for a handle flowing somewhere it may not: at the sink, with the origin beside it.
    fn leak(&self, t: &Ty, origin: &Option<Located>, sink: Span, what: &str) -> Diagnostic {
        // The help names the handle as the user wrote it, when the origin is a name in this file.
        let mut name = None;
        let mut d = Diagnostic::input(format!("{} cannot flow into {what}", t.handle_name()))
            .label(
                self.at(sink),
                format!("{} would flow into {what} here", t.handle_name()),
            );
        if let Some(o) = origin {
            // (A label in another file is drawn as a note after the error.)
            if Arc::ptr_eq(&o.file, &self.file) {
                let written = o.file.text.get(o.span.start..o.span.end).unwrap_or("");
                name = written
                    .starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    .then_some(written);
            }
            d = d.label(o.clone(), "it comes from here");
        }
        d.help(match t.handle_name() {
            "an Ssh handle" => {
                let n = name.unwrap_or("agent");
                format!("an Ssh handle can only be mounted into a step: `.run(cmd, mounts: [{n}.mount()])`")
            }
            _ => {
                let n = name.unwrap_or("token");
                format!("a Secret can only be mounted into a step: `.run(cmd, mounts: [{n}.file()])` or `{n}.env(\"NAME\")`")
            }
        })
    }

    /// `got` must fit `want`; a handle that does not is a leak, anything else a type error.
    fn expect(
        &self,
        got: &Ty,
        origin: &Option<Located>,
        want: &Ty,
        at: Span,
        what: &str,
    ) -> Result<()> {
        if got.fits(want) {
            return Ok(());
        }
        if got.is_handle() && !want.is_handle() {
            return Err(self.leak(got, origin, at, what));
        }
        Err(Diagnostic::at(
            &self.file,
            at,
            format!("{what} must be {want}, but this is {got}"),
        )
        .help(hint_for(got, want)))
    }

    fn expr(&mut self, e: &Expr) -> Result<Typed> {
        match &e.kind {
            ExprKind::Str { parts, .. } => {
                for p in parts {
                    if let StrPart::Interp(inner) = p {
                        let (t, origin) = self.expr(inner)?;
                        if t.is_handle() {
                            return Err(self.leak(
                                &t,
                                &origin,
                                inner.span,
                                "a string interpolation",
                            ));
                        }
                        let text_like =
                            |t: &Ty| matches!(t, Ty::String | Ty::Path | Ty::Int | Ty::Bool);
                        // An optional value interpolates as empty text when it is `none`.
                        if !text_like(&t) && !matches!(&t, Ty::Opt(inner) if text_like(inner)) {
                            return Err(Diagnostic::at(
                                &self.file,
                                inner.span,
                                format!("a {t} cannot be interpolated into a string"),
                            )
                            .help(
                                "only String, Path, Int and Bool values can be written into text",
                            ));
                        }
                    }
                }
                Ok((Ty::String, None))
            }
            ExprKind::Int { .. } => Ok((Ty::Int, None)),
            ExprKind::Bool(_) => Ok((Ty::Bool, None)),
            ExprKind::None => Ok((Ty::Nothing, None)),
            ExprKind::Paren(inner) => self.expr(inner),
            ExprKind::List(items) => {
                let mut elem = Ty::Nothing;
                let mut origin = None;
                for item in items {
                    let (t, o) = self.expr(item)?;
                    if elem == Ty::Nothing {
                        elem = t;
                        origin = o;
                    } else if t.fits(&elem) {
                    } else if elem.fits(&t) {
                        elem = t;
                    } else if t.is_handle() {
                        return Err(self.leak(&t, &o, item.span, &format!("a list of {elem}")));
                    } else if elem.is_handle() {
                        return Err(self.leak(
                            &elem,
                            &origin,
                            item.span,
                            &format!("a list with {t}"),
                        ));
                    } else {
                        return Err(Diagnostic::at(
                            &self.file,
                            item.span,
                            format!("a list holds one type: this is {t}, the list holds {elem}"),
                        ));
                    }
                }
                Ok((Ty::List(Box::new(elem)), origin))
            }
            ExprKind::Map(entries) => {
                let mut elem = Ty::Nothing;
                for (_, v) in entries {
                    let (t, o) = self.expr(v)?;
                    if t.is_handle() {
                        return Err(self.leak(
                            &t,
                            &o,
                            v.span,
                            "a map of values (env, labels, args or file contents)",
                        ));
                    }
                    if elem == Ty::Nothing || elem.fits(&t) {
                        elem = t;
                    } else if !t.fits(&elem) {
                        return Err(Diagnostic::at(
                            &self.file,
                            v.span,
                            format!("a map holds one type: this is {t}, the map holds {elem}"),
                        ));
                    }
                }
                for (k, _) in entries {
                    if k.as_plain_str().is_none() {
                        self.expr(k)?;
                    }
                }
                Ok((Ty::Map(Box::new(elem)), None))
            }
            ExprKind::Name(n) => match self.lookup_at(n, e.span) {
                Some(Binding::Value { ty, origin }) => Ok((ty, origin)),
                Some(Binding::Fn(_)) => Err(Diagnostic::at(
                    &self.file,
                    e.span,
                    format!("`{n}` is a function; call it: `{n}(...)`"),
                )),
                Some(Binding::Module(_)) => Err(Diagnostic::at(
                    &self.file,
                    e.span,
                    format!("`{n}` is a module; use one of its names: `{n}.name`"),
                )),
                None => Err(self.unknown(n, e.span)),
            },
            ExprKind::Binary(op, l, r) => {
                let (lt, lo) = self.expr(l)?;
                let (rt, ro) = self.expr(r)?;
                let what = match op {
                    BinOp::Add => "a concatenation",
                    _ => "a comparison",
                };
                if lt.is_handle() {
                    return Err(self.leak(&lt, &lo, l.span, what));
                }
                if rt.is_handle() {
                    return Err(self.leak(&rt, &ro, r.span, what));
                }
                match op {
                    BinOp::Add => {
                        let ok = (lt.stringy() && rt.stringy())
                            || (lt == Ty::Int && rt == Ty::Int)
                            || matches!(
                                (&lt, &rt),
                                (Ty::List(_), Ty::List(_)) | (Ty::Map(_), Ty::Map(_))
                            ) && (rt.fits(&lt) || lt.fits(&rt));
                        if !ok {
                            return Err(Diagnostic::at(
                                &self.file,
                                e.span,
                                format!("cannot add {lt} and {rt}"),
                            )
                            .help("`+` joins two strings, two lists or two maps, or adds two Ints; use \"${a}${b}\" to mix"));
                        }
                        Ok((
                            if lt == Ty::Nothing
                                || matches!(&lt, Ty::List(x) | Ty::Map(x) if **x == Ty::Nothing)
                            {
                                rt
                            } else {
                                lt
                            },
                            None,
                        ))
                    }
                    _ => {
                        if !matches!(
                            lt,
                            Ty::String | Ty::Path | Ty::Int | Ty::Bool | Ty::Nothing | Ty::Opt(_)
                        ) || !(lt.fits(&rt) || rt.fits(&lt) || rt == Ty::Nothing)
                        {
                            return Err(Diagnostic::at(
                                &self.file,
                                e.span,
                                format!("cannot compare {lt} with {rt}"),
                            )
                            .help("`==` and `!=` compare strings, numbers and booleans of the same type"));
                        }
                        Ok((Ty::Bool, None))
                    }
                }
            }
            ExprKind::If { cond, then, other } => {
                let (ct, co) = self.expr(cond)?;
                self.expect(&ct, &co, &Ty::Bool, cond.span, "an `if` condition")?;
                let (tt, to) = self.expr(then)?;
                let (ot, oo) = self.expr(other)?;
                if ot.fits(&tt) {
                    Ok((tt, to.or(oo)))
                } else if tt.fits(&ot) {
                    Ok((ot, oo.or(to)))
                } else {
                    Err(Diagnostic::at(
                        &self.file,
                        other.span,
                        format!("both branches must have one type: {tt} and {ot}"),
                    ))
                }
            }
            ExprKind::Member(base, name) => {
                if let ExprKind::Name(m) = &base.kind
                    && let Some(Binding::Module(_)) = self.lookup(m)
                {
                    self.lookup_at(m, base.span);
                    return match self.module_member(m, name)? {
                        Binding::Value { ty, origin } => Ok((ty, origin)),
                        _ => Err(Diagnostic::at(
                            &self.file,
                            name.span,
                            format!("`{m}.{}` is a function; call it", name.name),
                        )),
                    };
                }
                let (bt, bo) = self.expr(base)?;
                if bt.is_handle() {
                    return Err(self.leak(
                        &bt,
                        &bo,
                        e.span,
                        &format!("a field read (`.{}`)", name.name),
                    ));
                }
                Err(Diagnostic::at(
                    &self.file,
                    name.span,
                    format!("{bt} has no field `{}`", name.name),
                )
                .help("call a method: `value.method(...)`"))
            }
            ExprKind::Call { callee, args } => self.call(e, callee, args),
        }
    }

    fn module_member(
        &self,
        module: &str,
        name: &crate::frontend::buildfile::syntax::Ident,
    ) -> Result<Binding> {
        let (_, iface) = self.deps[module];
        iface.names.get(&name.name).cloned().ok_or_else(|| {
            let d = Diagnostic::at(
                &self.file,
                name.span,
                format!("module `{module}` has no `{}`", name.name),
            );
            match suggest(&name.name, iface.names.keys().map(String::as_str)) {
                Some(s) => d.help(format!("did you mean `{module}.{s}`?")),
                None => d,
            }
        })
    }

    fn unknown(&self, n: &str, span: Span) -> Diagnostic {
        let mut names: Vec<&str> = self.globals.keys().map(String::as_str).collect();
        for s in &self.scopes {
            names.extend(s.keys().map(String::as_str));
        }
        names.extend(FUNCTIONS.iter().map(|b| b.name));
        if let Some(&def) = self.ordered.get(n) {
            let d = Diagnostic::at(&self.file, span, "").label(self.at(def), "defined here");
            return if def.start < span.start {
                Diagnostic {
                    message: format!("`{n}` is used in its own definition"),
                    ..d
                }
                .help("a value cannot refer to itself; names are defined once, so build it from a value with another name")
            } else {
                Diagnostic {
                    message: format!("`{n}` is used before it is defined"),
                    ..d
                }
                .help("a let, param, secret, ssh or import can be used only after the line that defines it (functions and targets anywhere); move the definition up")
            };
        }
        let d = Diagnostic::at(&self.file, span, format!("unknown name `{n}`"));
        match suggest(n, names) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None if n.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()) => d.help(format!(
                "for a shell or image variable inside a string, write `${n}` or `\\${{{n}}}`: `${{...}}` interpolates a .build value"
            )),
            None => d.help("names must be defined (with let, param, secret, ssh, fn, target or import) before use"),
        }
    }

    fn call(&mut self, e: &Expr, callee: &Expr, args: &[Arg]) -> Result<Typed> {
        match &callee.kind {
            ExprKind::Name(n) => {
                // Calls name functions: a value that happens to share a built-in's name (a target called
                // `image`) does not hide the built-in.
                let builtin = FUNCTIONS.iter().any(|b| b.name == n);
                if let Some(b) = self.lookup(n).cloned() {
                    match b {
                        Binding::Fn(sig) => {
                            self.uses.insert(callee.span, Use::Global);
                            return self.user_call(&sig, n, e.span, args);
                        }
                        _ if builtin => {}
                        _ => {
                            return Err(Diagnostic::at(
                                &self.file,
                                callee.span,
                                format!("`{n}` is not a function"),
                            ));
                        }
                    }
                }
                match FUNCTIONS.iter().find(|b| b.name == n) {
                    Some(b) => {
                        self.uses.insert(callee.span, Use::Builtin);
                        if b.name == "print" {
                            return self
                                .builtin_call(b, e.span, args, "`print`")
                                .map(|_| (Ty::String, None));
                        }
                        self.builtin_call(b, e.span, args, &format!("`{n}`"))
                    }
                    None => Err(self.unknown(n, callee.span)),
                }
            }
            ExprKind::Member(base, name) => {
                if let ExprKind::Name(m) = &base.kind
                    && let Some(Binding::Module(_)) = self.lookup(m)
                {
                    self.lookup_at(m, base.span);
                    return match self.module_member(m, name)? {
                        Binding::Fn(sig) => {
                            self.user_call(&sig, &format!("{m}.{}", name.name), e.span, args)
                        }
                        _ => Err(Diagnostic::at(
                            &self.file,
                            name.span,
                            format!("`{m}.{}` is not a function", name.name),
                        )),
                    };
                }
                let (bt, bo) = self.expr(base)?;
                let methods = methods_of(&bt);
                match methods.iter().find(|b| b.name == name.name) {
                    Some(b) => {
                        let r = self.builtin_call(b, e.span, args, &format!("`.{}`", name.name))?;
                        // A mount made from a handle is still that handle's; it can only go to `mounts:`.
                        Ok((r.0, if bt.is_handle() { bo } else { None }))
                    }
                    None if bt.is_handle() => Err(self.leak(
                        &bt,
                        &bo,
                        name.span,
                        &format!("a method call (`.{}`)", name.name),
                    )),
                    None => {
                        let d = Diagnostic::at(
                            &self.file,
                            name.span,
                            format!("{bt} has no method `{}`", name.name),
                        );
                        Err(match suggest(&name.name, methods.iter().map(|b| b.name)) {
                            Some(s) => d.help(format!("did you mean `.{s}`?")),
                            None if methods.is_empty() => {
                                d.help(format!("{bt} values have no methods"))
                            }
                            None => d.help(format!(
                                "{bt} methods: {}",
                                methods
                                    .iter()
                                    .map(|b| b.name)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )),
                        })
                    }
                }
            }
            _ => Err(Diagnostic::at(
                &self.file,
                callee.span,
                "this cannot be called",
            )),
        }
    }

    fn builtin_call(&mut self, b: &Builtin, at: Span, args: &[Arg], what: &str) -> Result<Typed> {
        let bound = bind_args(
            &self.file,
            b.params.iter().map(|p| (p.name, p.optional)),
            args,
            at,
            what,
        )?;
        for (i, arg) in bound.iter().enumerate() {
            let Some(arg) = arg else { continue };
            let p = &b.params[i];
            let (t, origin) = self.expr(&arg.value)?;
            if !p.want.accepts(&t) {
                let sink = format!("{what}'s `{}`", p.name);
                if t.is_handle() {
                    return Err(self.leak(&t, &origin, arg.value.span, &sink));
                }
                return Err(Diagnostic::at(
                    &self.file,
                    arg.value.span,
                    format!("{sink} must be {}, but this is {t}", p.want),
                )
                .help(match p.want {
                    Want::Command | Want::Source => format!("{what} takes {}", p.want),
                    w => hint_for(&t, &w.ty()),
                }));
            }
        }
        Ok((b.ret.clone(), None))
    }

    fn user_call(&mut self, sig: &FnSig, name: &str, at: Span, args: &[Arg]) -> Result<Typed> {
        let names: Vec<(&str, bool)> = sig
            .params
            .iter()
            .map(|(n, _, d)| (n.as_str(), *d))
            .collect();
        let bound = bind_args(
            &self.file,
            names.iter().copied(),
            args,
            at,
            &format!("`{name}`"),
        )?;
        // A handle a function returns comes from a handle it was given (the first one), or else from
        // the function's result type: either way a later leak of the result can say where it came from.
        let mut given = None;
        for (i, arg) in bound.iter().enumerate() {
            let Some(arg) = arg else { continue };
            let (pn, pt, _) = &sig.params[i];
            let (t, origin) = self.expr(&arg.value)?;
            self.expect(
                &t,
                &origin,
                pt,
                arg.value.span,
                &format!("`{name}`'s `{pn}`"),
            )?;
            if given.is_none() && t.is_handle() {
                given = origin;
            }
        }
        let origin = sig
            .ret
            .is_handle()
            .then(|| given.unwrap_or_else(|| sig.ret_at.clone()));
        Ok((sig.ret.clone(), origin))
    }
}

/// Matches call arguments to parameters: positional first, then by name. `None` where an optional
/// parameter was left out.
pub fn bind_args<'a>(
    file: &Arc<SourceFile>,
    params: impl Iterator<Item = (&'a str, bool)>,
    args: &'a [Arg],
    at: Span,
    what: &str,
) -> Result<Vec<Option<&'a Arg>>> {
    let params: Vec<(&str, bool)> = params.collect();
    let mut bound: Vec<Option<&Arg>> = vec![None; params.len()];
    let mut positional = 0;
    for a in args {
        match &a.name {
            None => {
                if positional >= params.len() {
                    return Err(Diagnostic::at(
                        file,
                        a.value.span,
                        format!(
                            "{what} takes {} argument(s), this is one too many",
                            params.len()
                        ),
                    )
                    .help(signature_help(&params)));
                }
                bound[positional] = Some(a);
                positional += 1;
            }
            Some(n) => {
                let Some(i) = params.iter().position(|(p, _)| *p == n.name) else {
                    let d = Diagnostic::at(
                        file,
                        n.span,
                        format!("{what} has no parameter `{}`", n.name),
                    );
                    return Err(match suggest(&n.name, params.iter().map(|(p, _)| *p)) {
                        Some(s) => d.help(format!("did you mean `{s}:`?")),
                        None => d.help(signature_help(&params)),
                    });
                };
                if bound[i].is_some() {
                    return Err(Diagnostic::at(
                        file,
                        n.span,
                        format!("`{}` is given twice", n.name),
                    ));
                }
                bound[i] = Some(a);
            }
        }
    }
    for (i, (p, optional)) in params.iter().enumerate() {
        if bound[i].is_none() && !optional {
            return Err(Diagnostic::at(file, at, format!("{what} needs `{p}`"))
                .help(signature_help(&params)));
        }
    }
    Ok(bound)
}

fn signature_help(params: &[(&str, bool)]) -> String {
    let shown: Vec<String> = params
        .iter()
        .map(|(p, o)| {
            if *o {
                format!("{p}: ...")
            } else {
                p.to_string()
            }
        })
        .collect();
    format!("the parameters are ({})", shown.join(", "))
}

fn hint_for(got: &Ty, want: &Ty) -> String {
    match (got, want) {
        (Ty::String, Ty::List(_)) => "wrap it in a list: `[value]`".into(),
        (Ty::Int, Ty::String) => "write it in a string: \"${value}\"".into(),
        (Ty::Secret, Ty::Ssh) => {
            "this is a Secret, not an SSH agent: declare one with `ssh agent` (built with `--ssh default`)".into()
        }
        (Ty::Ssh, Ty::Secret) => {
            "this is an SSH agent, not a Secret: declare one with `secret NAME` (built with `--secret id=NAME,src=FILE`)".into()
        }
        (Ty::Mount | Ty::Cache, _) => "a mount goes in a step's `mounts:` list: `.run(cmd, mounts: [...])`".into(),
        (Ty::List(m) | Ty::Map(m), _) if matches!(**m, Ty::Mount | Ty::Cache) => {
            "mounts go in a step's `mounts:` list: `.run(cmd, mounts: [...])`".into()
        }
        (Ty::Image, Ty::Dir) => "take a directory of the image: `image.dir(\"/path\")`".into(),
        (Ty::Dir, Ty::Image) => {
            "copy it into an image: `scratch().copy(dir, [\".\"], \"/\")`".into()
        }
        _ => format!("give a value of type {want}"),
    }
}
