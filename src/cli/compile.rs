//! Compiling what the command line names (a context and its Dockerfile, a `.build` file, monorepo
//! labels) into a build graph, with the flags every front end takes: build args, params, named contexts,
//! the target, the `.dockerignore`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::absolute;
use super::args::CompileArgs;
use super::command_line::CommandLine;
use crate::diag::{Diagnostic, Result, SourceFile, Span};
use crate::frontend::LowerOptions;
use crate::graph::{Dag, NamedContext};

pub(super) struct Compiled {
    pub(super) graph: Dag,
    pub(super) contexts: BTreeMap<String, NamedContext>,
    /// The secret checks' findings (for a Dockerfile only when building): `kiln build` refuses on errors.
    pub(super) secret_findings: crate::frontend::dockerfile::lints::Report,
}

/// How a command compiles.
pub(super) enum Mode {
    /// `kiln graph` and `kiln check`: what only build-time input could settle stays as written, and no
    /// registry is asked for an image's config.
    Lenient,
    /// `kiln build`: strict, and base images' configs are pulled through the build's store and
    /// registry options, so lowering sees the image the build imports.
    Build(crate::load::Pulls),
}

impl Mode {
    fn lenient(&self) -> bool {
        matches!(self, Mode::Lenient)
    }
}

pub(super) fn compile(args: &CompileArgs, cl: &CommandLine, mode: &Mode) -> Result<Compiled> {
    if args
        .inputs
        .iter()
        .any(|i| i.starts_with("//") || i.starts_with(':'))
    {
        return compile_labels(args, cl, mode);
    }
    if args.inputs.len() > 1 {
        return Err(cl
            .error(
                &args.inputs[1],
                Span::default(),
                "more than one build context",
            )
            .help("give one context directory, or monorepo labels such as //services/api:image"));
    }
    let context = &args
        .inputs
        .first()
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    if !context.is_dir() {
        let shown = context.display().to_string();
        return Err(cl
            .error(
                &shown,
                Span::default(),
                format!("build context `{shown}` is not a directory"),
            )
            .help("give the directory that holds the files the build copies"));
    }
    if args
        .file
        .as_ref()
        .is_some_and(|f| f.extension().is_some_and(|e| e == "build"))
    {
        return compile_build_file(args, cl, mode, context);
    }
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let df = read_dockerfile(&path)?;
    let mut opts = lower_options(args, cl, mode, context)?;
    opts.excludes = dockerignore(context, &path)?;
    let program = crate::frontend::dockerfile::lower::lower(&df, &opts)?;
    let findings = if mode.lenient() {
        Vec::new()
    } else {
        warn_unused_build_args(&df, &opts.build_args);
        let build_args = lint_build_args(cl, &args.build_args)?;
        crate::frontend::dockerfile::lints::secret_checks(&df, build_args)?.findings
    };
    Ok(Compiled {
        graph: Dag::new(&program),
        contexts: opts.contexts,
        secret_findings: crate::frontend::dockerfile::lints::Report { findings },
    })
}

/// docker's warning for a `--build-arg` no ARG declares (a misspelt one would pass silently and the
/// ARG keep its default), in docker's words. (`docker build` on BuildKit v0.8 prints none; the words
/// are those of docker's own builder, which users know.) Args BuildKit predefines (proxies, platforms,
/// `BUILDKIT_*`) need no ARG.
fn warn_unused_build_args(
    df: &crate::frontend::dockerfile::syntax::ast::Dockerfile,
    given: &BTreeMap<String, String>,
) {
    use crate::frontend::dockerfile::syntax::ast::InstructionKind;
    let declared: Vec<&str> = df
        .instructions
        .iter()
        .filter_map(|i| match &i.kind {
            InstructionKind::Arg(decls) => Some(decls),
            _ => None,
        })
        .flatten()
        .map(|d| d.key.text.as_str())
        .collect();
    let unused: Vec<&str> = given
        .keys()
        .map(String::as_str)
        .filter(|k| !declared.contains(k) && !crate::frontend::image::predefined_arg(k))
        .collect();
    if !unused.is_empty() {
        crate::progress::stderr(&format!(
            "[Warning] One or more build-args [{}] were not consumed\n",
            unused.join(" ")
        ));
    }
}

pub(super) fn read_dockerfile(
    path: &Path,
) -> Result<crate::frontend::dockerfile::syntax::ast::Dockerfile> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostic::input(format!("cannot read Dockerfile {}: {e}", path.display()))
            .help("name it with `-f PATH`, or put a `Dockerfile` in the context directory")
    })?;
    crate::frontend::dockerfile::syntax::parse(SourceFile::new(path.display().to_string(), text))
}

/// What every front end takes from the command line: build args, named contexts, the target.
fn lower_options(
    args: &CompileArgs,
    cl: &CommandLine,
    mode: &Mode,
    context: &Path,
) -> Result<LowerOptions> {
    let mut opts = LowerOptions {
        image_env: crate::load::image_env(match mode {
            Mode::Lenient => None,
            Mode::Build(pulls) => Some(pulls.clone()),
        }),
        lenient: mode.lenient(),
        target: args.target.clone(),
        target_at: args
            .target
            .as_ref()
            .map(|t| crate::diag::Located::new(&cl.file, cl.span_of(t))),
        ..LowerOptions::default()
    };
    for a in &args.build_args {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                opts.build_args.insert(k.to_string(), v.to_string());
            }
            None if !a.is_empty() => {
                // docker's rule: `--build-arg KEY` takes the value from the environment, if set.
                if let Ok(v) = std::env::var(a) {
                    opts.build_args.insert(a.clone(), v);
                }
            }
            _ => {
                return Err(cl
                    .error(a, Span::default(), "malformed --build-arg")
                    .help("write `--build-arg KEY=VALUE`"));
            }
        }
    }
    opts.contexts
        .insert("context".to_string(), NamedContext::Dir(absolute(context)));
    for c in &args.build_contexts {
        let Some((name, value)) = c
            .split_once('=')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        else {
            return Err(cl
                .error(c, Span::default(), "malformed --build-context")
                .help("write `--build-context NAME=DIR` or `NAME=oci-layout://DIR[:TAG]`"));
        };
        let ctx = if let Some(rest) = value.strip_prefix("oci-layout://") {
            let (dir, tag) = crate::solve::split_layout_ref(rest);
            let dir = absolute(Path::new(dir));
            NamedContext::Image(match tag {
                Some(t) => format!("oci-layout://{}:{t}", dir.display()),
                None => format!("oci-layout://{}", dir.display()),
            })
        } else if let Some(image) = value.strip_prefix("docker-image://") {
            NamedContext::Image(image.to_string())
        } else if Path::new(value).is_dir() {
            NamedContext::Dir(absolute(Path::new(value)))
        } else {
            return Err(cl
                .error(
                    value,
                    Span::default(),
                    format!("build context `{name}`: `{value}` is not a directory"),
                )
                .help("give a directory, or `oci-layout://DIR[:TAG]` for an image"));
        };
        opts.contexts.insert(name.to_string(), ctx);
    }
    Ok(opts)
}

fn build_options(
    args: &CompileArgs,
    cl: &CommandLine,
    mode: &Mode,
    context: &Path,
) -> Result<crate::frontend::buildfile::lower::EvalOptions> {
    let mut lower = lower_options(args, cl, mode, context)?;
    let mut params = BTreeMap::new();
    for p in &args.params {
        match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                params.insert(k.to_string(), v.to_string());
                let at = cl.span_of(p);
                let name = crate::diag::Span::new(at.start, at.start + k.len());
                lower
                    .params_at
                    .insert(k.to_string(), crate::diag::Located::new(&cl.file, name));
            }
            _ => {
                return Err(cl
                    .error(p, Span::default(), "malformed --param")
                    .help("write `--param NAME=VALUE`"));
            }
        }
    }
    Ok(crate::frontend::buildfile::lower::EvalOptions { lower, params })
}

/// `-f app.build [CONTEXT]`: one `.build` file (with its imports); `--target a,b` selects targets.
fn compile_build_file(
    args: &CompileArgs,
    cl: &CommandLine,
    mode: &Mode,
    context: &Path,
) -> Result<Compiled> {
    let path = args.file.clone().expect("a .build file was given");
    let mut opts = build_options(args, cl, mode, context)?;
    opts.lower.target = None;
    opts.lower.excludes = dockerignore(context, &path)?;
    let targets: Option<Vec<String>> = args.target.as_ref().map(|t| {
        t.split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    });
    let mut notes = Vec::new();
    let compiled = crate::compile(
        crate::Source::Buildfile {
            path: &path,
            targets: targets.as_deref(),
            params: &opts.params,
            notes: &mut notes,
        },
        &opts.lower,
    );
    notes.iter().for_each(crate::diag::print_note);
    Ok(with_packages(compiled?, opts.lower.contexts))
}

/// Monorepo labels: `//pkg:target`, `//pkg` (all its targets), `//pkg/...`, `//...`, `:target`.
fn compile_labels(args: &CompileArgs, cl: &CommandLine, mode: &Mode) -> Result<Compiled> {
    let cwd = std::env::current_dir()
        .map_err(|e| Diagnostic::io("cannot read the current directory", e))?;
    let root = monorepo_root()?;
    let opts = build_options(args, cl, mode, &root)?;
    let mut notes = Vec::new();
    let compiled = crate::compile(
        crate::Source::Labels {
            root: &root,
            cwd: &cwd,
            labels: &args.inputs,
            params: &opts.params,
            notes: &mut notes,
        },
        &opts.lower,
    );
    notes.iter().for_each(crate::diag::print_note);
    Ok(with_packages(compiled?, opts.lower.contexts))
}

/// A `.build` program's graph, with its package directories added to the command line's contexts.
fn with_packages(
    compiled: crate::Compiled,
    mut contexts: BTreeMap<String, NamedContext>,
) -> Compiled {
    for (name, dir) in compiled.packages {
        contexts.insert(name, NamedContext::Dir(dir));
    }
    Compiled {
        graph: crate::plan(&compiled.program),
        contexts,
        secret_findings: crate::frontend::dockerfile::lints::Report {
            findings: compiled.findings,
        },
    }
}

pub(super) fn monorepo_root() -> Result<PathBuf> {
    let cwd = std::env::current_dir()
        .map_err(|e| Diagnostic::io("cannot read the current directory", e))?;
    crate::load::Session::find_root(&cwd).ok_or_else(|| {
        Diagnostic::input("not in a monorepo: no kiln.toml in this directory or above")
            .help("create an empty kiln.toml at the repository's root")
    })
}

/// The `.dockerignore` patterns that apply (`<Dockerfile>.dockerignore` first, then the context's), cleaned.
pub(super) fn dockerignore(context: &Path, dockerfile: &Path) -> Result<Vec<String>> {
    let (patterns, _) = crate::ignore::load(context, dockerfile)?;
    Ok(patterns.canonical())
}

/// `--build-arg`s as the lints see them: each with its value (from the environment when only a name is
/// given) and where it is on the command line.
pub(super) fn lint_build_args(
    cl: &CommandLine,
    args: &[String],
) -> Result<Vec<crate::frontend::dockerfile::lints::BuildArg>> {
    let mut build_args = Vec::new();
    for a in args {
        let (key, value) = match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => (k.to_string(), v.to_string()),
            None if !a.is_empty() => match std::env::var(a) {
                Ok(v) => (a.clone(), v),
                Err(_) => continue,
            },
            _ => {
                return Err(cl
                    .error(a, Span::default(), "malformed --build-arg")
                    .help("write `--build-arg KEY=VALUE`"));
            }
        };
        let at = Some(crate::diag::Located::new(&cl.file, cl.span_of(a)));
        build_args.push(crate::frontend::dockerfile::lints::BuildArg { key, value, at });
    }
    Ok(build_args)
}
