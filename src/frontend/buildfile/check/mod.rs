//! The `.build` type checker. Besides ordinary typing, it enforces `SPEC.md` §3.5: a `Secret` or `Ssh`
//! handle can be bound, passed to functions and mounted into a step, and nothing else. Every other flow
//! (interpolation, concatenation, comparison, file content, env, label, argument, output, printing) is
//! an error that points at the sink and at the handle's origin.
//!
//! The signatures of the built-in functions and methods live beside it (`signatures.rs`), so that
//! lowering evaluates exactly what was checked; `checker.rs` holds the checker itself.

use std::collections::HashMap;
use std::sync::Arc;

use crate::diag::{Diagnostic, Located, Result, SourceFile, Span, suggest};
use crate::frontend::buildfile::syntax::{Arg, TypeExpr, TypeKind};

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

mod checker;
mod signatures;

pub use checker::check;
pub use signatures::{
    Builtin, FUNCTIONS, IMAGE_METHODS, Param, SECRET_METHODS, SSH_METHODS, methods_of,
};

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
