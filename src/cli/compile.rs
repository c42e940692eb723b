//! Compiling what the command line names (a context and its Dockerfile, a `.build` file, monorepo
//! labels) into a build graph, with the flags every front end takes: build args, params, named contexts,
//! the target, the `.dockerignore`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::absolute;
use super::args::CompileArgs;
use super::command_line::CommandLine;
use crate::diag::{Diagnostic, Result, Span};
use crate::frontend::LowerOptions;
use crate::graph::{Dag, NamedContext};

pub(super) struct Compiled {
    pub(super) graph: Dag,
    pub(super) contexts: BTreeMap<String, NamedContext>,
    /// The secret checks' findings (for a Dockerfile only when building): `kiln build` refuses on errors.
    pub(super) secret_findings: crate::frontend::dockerfile::lints::Report,
    /// The front end (`dockerfile` or `build`) and the source file with the digest of its bytes, for
    /// the provenance (labels name many files, so none).
    pub(super) source: (&'static str, Option<(String, crate::digest::Digest)>),
    /// With several `--platform`s: the platform of each root, in order (one root per platform).
    pub(super) platforms: Vec<crate::platform::Platform>,
    /// The evaluation cache being written meanwhile (monorepo labels); dropping it waits for it.
    pub(super) _saving: Option<crate::load::Saving>,
    /// What a compile of monorepo labels for `kiln graph` did, for its reuse (`last_graph`): the
    /// trace, and the graph node of each program node with each graph node's op encoded.
    pub(super) traced: Option<Traced>,
}

/// A traced compile (`crate::Traced`), the graph node each program node became, and each graph node's
/// digest state after its op (`Dag::from_program_kept`).
pub(super) type Traced = (
    Box<crate::Traced>,
    Vec<Option<petgraph::stable_graph::NodeIndex>>,
    Vec<crate::digest::Midstate>,
);

/// How a command compiles.
pub(super) enum Mode {
    /// `kiln graph` and `kiln check`: what only build-time input could settle stays as written, and no
    /// registry is asked for an image's config.
    Lenient,
    /// `kiln build`: strict, and base images' configs are pulled through the build's store and
    /// registry options, so lowering sees the image the build imports.
    Build(Box<crate::load::Pulls>),
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
    let mut program = crate::frontend::dockerfile::lower::lower(&df, &opts)?;
    let platforms = target_platforms(args, cl)?;
    if platforms.len() > 1 {
        // One sub-graph per platform in one graph: a stage for the build machine is the same node in
        // each, so it is built once.
        program = crate::graph::Program::default();
        opts.multi_platform = true;
        for p in &platforms {
            opts.platform = p.clone();
            let mut one = crate::frontend::dockerfile::lower::lower(&df, &opts)?;
            for r in &mut one.roots {
                r.name = format!("{} ({p})", r.name);
            }
            program.append(one);
        }
    }
    let findings = if mode.lenient() {
        Vec::new()
    } else {
        warn_unused_build_args(&df, &opts.build_args);
        let build_args = lint_build_args(cl, &args.build_args)?;
        crate::frontend::dockerfile::lints::secret_checks(&df, build_args)?.findings
    };
    pin_downloads(&mut program, mode)?;
    let digest = crate::digest::Digest::of(df.file.text.as_bytes());
    Ok(Compiled {
        graph: Dag::new(&program),
        contexts: opts.contexts,
        secret_findings: crate::frontend::dockerfile::lints::Report { findings },
        source: ("dockerfile", Some((df.file.name.clone(), digest))),
        platforms: if platforms.len() > 1 {
            platforms
        } else {
            Vec::new()
        },
        _saving: None,
        traced: None,
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

/// Reads and parses a Dockerfile (`-`: standard input, as `docker build -f -` reads it).
pub(super) fn read_dockerfile(
    path: &Path,
) -> Result<crate::frontend::dockerfile::syntax::ast::Dockerfile> {
    crate::frontend::dockerfile::syntax::parse(crate::load::read_dockerfile(path)?)
}

/// `--platform`: the platforms asked for, normalized as buildx does, each once (linux/amd64 when none
/// is). Several are built from a Dockerfile or a `.build` file; monorepo labels take one.
fn target_platforms(
    args: &CompileArgs,
    cl: &CommandLine,
) -> Result<Vec<crate::platform::Platform>> {
    let mut found: Vec<crate::platform::Platform> = Vec::new();
    for value in &args.platforms {
        let mut start = 0;
        for part in value.split(',') {
            let span = Span::new(start, start + part.len());
            start += part.len() + 1;
            let p = crate::platform::Platform::parse(part).map_err(|e| {
                cl.error(value, span, format!("invalid platform `{part}`: {e}"))
                    .help("write `--platform linux/arm64` (buildx spelling: os/arch[/variant])")
            })?;
            let labels = args
                .inputs
                .iter()
                .any(|i| i.starts_with("//") || i.starts_with(':'));
            if !found.is_empty() && !found.contains(&p) && labels {
                return Err(cl
                    .error(value, span, "monorepo labels are built for one platform at a time")
                    .help("run one build per platform, or build a Dockerfile or `.build` file for several"));
            }
            if !found.contains(&p) {
                found.push(p);
            }
        }
    }
    if found.is_empty() {
        found.push(crate::platform::Platform::amd64());
    }
    Ok(found)
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
            Mode::Build(pulls) => Some((**pulls).clone()),
        }),
        lenient: mode.lenient(),
        target: args.target.clone(),
        target_at: args
            .target
            .as_ref()
            .map(|t| crate::diag::Located::new(&cl.file, cl.span_of(t))),
        ..LowerOptions::default()
    };
    opts.platform = target_platforms(args, cl)?.swap_remove(0);
    opts.build_platform = crate::platform::Platform::host();
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
    let mut platforms = target_platforms(args, cl)?;
    let lower = |opts: &mut crate::frontend::buildfile::lower::EvalOptions,
                 platforms: &[crate::platform::Platform]| {
        lower_build_file(opts, &path, targets.as_deref(), platforms)
    };
    // A target's own platforms are read from a lowering that pulls no base, so a base is pulled only
    // for the platforms built (an arm64-only one for a target declaring arm64). The command line's
    // `--platform` replaces them, as `docker buildx bake --set TARGET.platform=...` does a bake file's.
    let mut first = None;
    if args.platforms.is_empty() {
        let mut probe = opts.clone();
        probe.lower.image_env = crate::load::image_env(None);
        let lowered = lower(&mut probe, &platforms)?;
        match declared_platforms(&lowered.0.program.roots)? {
            Some(declared) if declared != platforms => platforms = declared,
            // Compiling only, the probe pulled nothing a build would: it is the program.
            _ if mode.lenient() => first = Some(lowered),
            _ => {}
        }
    }
    let (mut compiled, notes) = match first {
        Some(lowered) => lowered,
        None => lower(&mut opts, &platforms)?,
    };
    // Notes are the program's, the same for every platform: shown once.
    notes.iter().for_each(crate::diag::print_note);
    if platforms.len() > 1 {
        if compiled.program.roots.len() != platforms.len() {
            return Err(Diagnostic::input(format!(
                "{} targets are selected, and several platforms make one image index of one target",
                compiled.program.roots.len() / platforms.len()
            ))
            .help("select one target with --target"));
        }
        for (r, p) in compiled.program.roots.iter_mut().zip(&platforms) {
            r.name = format!("{} ({p})", r.name);
        }
    }
    let mut compiled = with_packages(compiled, opts.lower.contexts, mode)?;
    if platforms.len() > 1 {
        compiled.platforms = platforms;
    }
    // The file was read whole by the compile above; its bytes are read again only for their digest.
    let digest = std::fs::read(&path)
        .map_err(|e| Diagnostic::io(format!("cannot read {}", path.display()), e))?;
    compiled.source = (
        "build",
        Some((
            path.display().to_string(),
            crate::digest::Digest::of(&digest),
        )),
    );
    Ok(compiled)
}

/// One lowering of a `.build` file per platform, appended into one program, with the notes of the
/// first (every lowering makes the same ones).
fn lower_build_file(
    opts: &mut crate::frontend::buildfile::lower::EvalOptions,
    path: &Path,
    targets: Option<&[String]>,
    platforms: &[crate::platform::Platform],
) -> Result<(crate::Compiled, Vec<crate::diag::Note>)> {
    let mut all: Option<(crate::Compiled, Vec<crate::diag::Note>)> = None;
    for p in platforms {
        opts.lower.platform = p.clone();
        opts.lower.multi_platform = platforms.len() > 1;
        let mut notes = Vec::new();
        let one = crate::compile(
            crate::Source::Buildfile {
                path,
                targets,
                params: &opts.params,
                notes: &mut notes,
            },
            &opts.lower,
        );
        match &mut all {
            None => all = Some((one?, notes)),
            Some((all, _)) => all.program.append(one?.program),
        }
    }
    Ok(all.expect("at least one platform"))
}

/// The platforms the selected targets declare (`for [...]`), if any does. Every selected target must
/// then declare the same ones: they are built as one, and several platforms make one target's index.
fn declared_platforms(
    roots: &[crate::graph::Root],
) -> Result<Option<Vec<crate::platform::Platform>>> {
    let Some(first) = roots.iter().find(|r| r.platforms_at.is_some()) else {
        return Ok(None);
    };
    let at = first.platforms_at.clone().expect("declared");
    let list = |r: &crate::graph::Root| {
        let names: Vec<String> = r.platforms.iter().map(|p| p.to_string()).collect();
        names.join(", ")
    };
    for other in roots.iter().filter(|r| r.name != first.name) {
        let message = if other.platforms_at.is_none() {
            format!(
                "target `{}` is built for {}, and `{}`, selected with it, declares no platforms",
                first.name,
                list(first),
                other.name
            )
        } else if other.platforms != first.platforms {
            format!(
                "targets `{}` ({}) and `{}` ({}) are selected together and declare different platforms",
                first.name,
                list(first),
                other.name,
                list(other)
            )
        } else if first.platforms.len() > 1 {
            format!(
                "{} targets are selected, and several platforms make one image index of one target",
                roots.len()
            )
        } else {
            continue;
        };
        let mut d = Diagnostic::input(message).label(at, "declared here");
        if let Some(o) = other
            .platforms_at
            .clone()
            .filter(|_| other.platforms != first.platforms)
        {
            d = d.label(o, "and here");
        }
        return Err(
            d.help("select one target with --target, or name the platforms with --platform")
        );
    }
    Ok(Some(first.platforms.clone()))
}

/// Monorepo labels: `//pkg:target`, `//pkg` (all its targets), `//pkg/...`, `//...`, `:target`.
fn compile_labels(args: &CompileArgs, cl: &CommandLine, mode: &Mode) -> Result<Compiled> {
    let cwd = std::env::current_dir()
        .map_err(|e| Diagnostic::io("cannot read the current directory", e))?;
    let root = monorepo_root()?;
    let opts = build_options(args, cl, mode, &root)?;
    let mut notes = Vec::new();
    // In the store the build uses; compile-only commands use the default store's.
    let store = match mode {
        Mode::Build(pulls) => pulls.store_root().to_path_buf(),
        Mode::Lenient => crate::store::Store::default_root(),
    };
    let cache = crate::load::EvalCache::path_in(&store, &root);
    let compiled = crate::compile(
        crate::Source::Labels {
            root: &root,
            cwd: &cwd,
            labels: &args.inputs,
            params: &opts.params,
            notes: &mut notes,
            eval_cache: Some(cache.clone()),
            // For `kiln graph` to keep its graph, which it does only when the evaluation cache had
            // something to replay: a cold run (no cache file yet) spends no memory on a trace.
            trace: mode.lenient() && cache.exists(),
        },
        &opts.lower,
    );
    notes.iter().for_each(crate::diag::print_note);
    let compiled = compiled?;
    // Labels take one platform, so a target's own are honoured only when they are that one.
    if args.platforms.is_empty()
        && let Some(r) = compiled
            .program
            .roots
            .iter()
            .find(|r| r.platforms_at.is_some() && r.platforms != [opts.lower.platform.clone()])
    {
        let names: Vec<String> = r.platforms.iter().map(|p| p.to_string()).collect();
        return Err(Diagnostic::input(format!(
            "monorepo labels are built for one platform at a time, and `{}` declares {}",
            r.name,
            names.join(", ")
        ))
        .label(r.platforms_at.clone().expect("declared"), "declared here")
        .help("build its file with `kiln build -f FILE`, or choose one platform with --platform"));
    }
    with_packages(compiled, opts.lower.contexts, mode)
}

/// A `.build` program's graph, with its package directories added to the command line's contexts.
fn with_packages(
    mut compiled: crate::Compiled,
    mut contexts: BTreeMap<String, NamedContext>,
    mode: &Mode,
) -> Result<Compiled> {
    pin_downloads(&mut compiled.program, mode)?;
    for (name, dir) in compiled.packages {
        contexts.insert(name, NamedContext::Dir(dir));
    }
    // Kept only when it can be reused (see `last_graph::keep`): a cold cache's run keeps nothing.
    let keepable = |t: &crate::Traced| t.stats.0 > 0 && t.notes == 0 && t.trace.uncached == 0;
    let (graph, traced) = match compiled.traced.filter(|t| keepable(t)) {
        Some(t) => {
            let (graph, index_of, ops) = Dag::from_program_kept(compiled.program);
            (graph, Some((t, index_of, ops)))
        }
        None => (crate::plan_owned(compiled.program), None),
    };
    Ok(Compiled {
        graph,
        contexts,
        secret_findings: crate::frontend::dockerfile::lints::Report {
            findings: compiled.findings,
        },
        source: ("build", None),
        platforms: Vec::new(),
        _saving: compiled.saving,
        traced,
    })
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

/// `kiln build --locked`: every `ADD <url>` download or git source without a `--checksum` takes the
/// lock's (a content digest; a commit) as if it were given, so the fetch refuses other content or another
/// commit (at its line); one the lock lacks is refused here.
fn pin_downloads(program: &mut crate::graph::Program, mode: &Mode) -> Result<()> {
    let Mode::Build(pulls) = mode else {
        return Ok(());
    };
    let Some(lock) = pulls.lock() else {
        return Ok(());
    };
    for n in &mut program.nodes {
        let crate::graph::op::Op::Remote { url, checksum, .. } = &mut n.op else {
            continue;
        };
        if checksum.is_some() {
            continue;
        }
        let key = crate::graph::remote::redacted(url);
        let pinned = match crate::graph::remote::kind(url) {
            Some(crate::graph::remote::RemoteKind::Http) => {
                lock.urls.get(&key).map(|p| p.digest.to_string())
            }
            Some(crate::graph::remote::RemoteKind::Git) => {
                let reference = crate::graph::remote::GitRef::parse(url).reference;
                if reference.is_some_and(|r| crate::lock::is_commit(&r)) {
                    continue;
                }
                lock.gits.get(&key).map(|c| c.id.clone())
            }
            None => continue,
        };
        match pinned {
            Some(p) => *checksum = Some(p),
            None => {
                let d = Diagnostic::input(format!(
                    "`{}` is not in {}",
                    crate::graph::remote::redacted(url),
                    crate::lock::FILE_NAME
                ))
                .help("run `kiln lock` to add it, then build with --locked again");
                return Err(match &n.at {
                    Some(at) => d.label(at.clone(), "this download"),
                    None => d,
                });
            }
        }
    }
    Ok(())
}

/// What `kiln graph` of monorepo labels asks of its last graph (`last_graph`): the evaluation cache's
/// file, the key of what was asked, the monorepo root and the evaluation options; `None` for other
/// inputs.
pub(super) fn last_graph(
    args: &CompileArgs,
    cl: &CommandLine,
) -> Result<
    Option<(
        PathBuf,
        crate::digest::Digest,
        PathBuf,
        crate::load::EvalOptions,
    )>,
> {
    if !args
        .inputs
        .iter()
        .any(|i| i.starts_with("//") || i.starts_with(':'))
    {
        return Ok(None);
    }
    let cwd = std::env::current_dir()
        .map_err(|e| Diagnostic::io("cannot read the current directory", e))?;
    let root = monorepo_root()?;
    let opts = build_options(args, cl, &Mode::Lenient, &root)?;
    let cache = crate::load::EvalCache::path_in(&crate::store::Store::default_root(), &root);
    let key = super::last_graph::key(&root, &cwd, &args.inputs, &opts);
    Ok(Some((cache, key, root, opts)))
}
