//! The driver: parses the command line (flag spelling follows `docker build`), wires the stages together
//! and turns every failure into one rendered diagnostic and an exit code.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::diag::{Diagnostic, Result, SourceFile, Span, suggest};
use crate::frontend::LowerOptions;
use crate::graph::BuildGraph;
use crate::graph::NamedContext;
use crate::graph::entitlement::Entitlement;
use crate::progress::{self, Event};
use crate::secret::{SecretSource, SecretStore, SshSource};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build container images from Dockerfiles, without leaking secrets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a Dockerfile into an image.
    Build(Box<BuildArgs>),
    /// Compile only and print the build graph. Never runs a step, never touches the network.
    Graph(GraphArgs),
    /// Lint a Dockerfile: BuildKit's build checks and kiln's secret checks. Never builds anything.
    Check(CheckArgs),
    /// Format `.build` files in place (or check that they are formatted).
    Fmt(FmtArgs),
    /// Translate a Dockerfile into `.build` source that compiles to the same graph.
    Convert(ConvertArgs),
    /// Monorepo queries: `deps LABEL...` (what the targets are built from) or `rdeps LABEL...` (what
    /// is built from them).
    Query(QueryArgs),
    /// The monorepo targets whose inputs changed since a git revision, or that read the given files.
    Affected(AffectedArgs),
    /// Show how much space the store uses.
    Du(StoreArgs),
    /// Free space in the store: least recently used results first, never anything a build is using.
    Prune(PruneArgs),
    /// Run as a remote execution worker: take RUN steps leased by a REAPI server (Bots API) and run
    /// them in namespaces, like a local build does.
    Worker(WorkerArgs),
}

#[derive(Args)]
struct FmtArgs {
    /// The files to format (directories: every `.build` file below them).
    #[arg(default_value = ".")]
    paths: Vec<PathBuf>,
    /// Change nothing; exit 1 and list the files that are not formatted.
    #[arg(long)]
    check: bool,
}

#[derive(Args)]
struct ConvertArgs {
    /// The Dockerfile.
    #[arg(short = 'f', long = "file", default_value = "Dockerfile")]
    file: PathBuf,
    /// Where to write the `.build` source (default: standard output).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum QueryKind {
    Deps,
    Rdeps,
}

#[derive(Args)]
struct QueryArgs {
    kind: QueryKind,
    /// Targets: `//path/pkg:target`, `//path/...`, `:target`.
    #[arg(required = true)]
    labels: Vec<String>,
    /// Set a `.build` param: `NAME=VALUE`.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct AffectedArgs {
    /// A git revision: targets whose inputs differ between it and the working tree.
    #[arg(long, value_name = "GITREV")]
    since: Option<String>,
    /// Changed files: targets that read one of them.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct StoreArgs {
    /// The store directory (default: $KILN_STORE, else $XDG_CACHE_HOME/kiln or ~/.cache/kiln).
    #[arg(long)]
    store: Option<PathBuf>,
}

#[derive(Args)]
struct PruneArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Keep at most this much (`500MB`, `10GB`); without it, everything is removed.
    #[arg(long, value_name = "SIZE")]
    keep_storage: Option<String>,
}

#[derive(Args)]
struct CompileArgs {
    /// The build context directory, or monorepo labels (`//path/pkg:target`, `//path/...`, `//...`,
    /// `:target`).
    #[arg(value_name = "CONTEXT | LABEL...")]
    inputs: Vec<String>,
    /// The Dockerfile or `.build` file (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The stage or target to build (default: the last one); for a `.build` file, a comma-separated list.
    #[arg(long)]
    target: Option<String>,
    /// Set a `.build` param: `NAME=VALUE` (`--build-arg` sets params too).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Set a build-time variable: `KEY=VALUE` (or `KEY` to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// Add a named context: `NAME=DIR` or `NAME=oci-layout://DIR[:TAG]`.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    build_contexts: Vec<String>,
}

#[derive(Args)]
struct BuildArgs {
    #[command(flatten)]
    compile: CompileArgs,
    /// A secret for the build: `id=ID[,src=PATH|,env=VAR]` (also docker's `type=file|env`).
    #[arg(long = "secret", value_name = "id=ID,src=PATH")]
    secrets: Vec<String>,
    /// Forward an SSH agent: `default` ($SSH_AUTH_SOCK) or `ID=SOCKET` (also `ID` alone for $SSH_AUTH_SOCK).
    #[arg(long = "ssh", value_name = "default|ID=SOCKET|ID=KEYFILE")]
    ssh: Vec<String>,
    /// Where to write the result: `type=oci,dest=DIR` (a tar when DEST ends in `.tar`), or
    /// `type=registry,name=HOST/NAME:TAG` to push it.
    #[arg(short = 'o', long = "output", value_name = "type=oci,dest=PATH")]
    outputs: Vec<String>,
    /// A name for the image, recorded in the OCI layout's index (and pushed to with `--push`).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Push the image to the registry of every `-t` name (like `-o type=registry`).
    #[arg(long)]
    push: bool,
    /// Allow steps an entitlement: `network.host` (`RUN --network=host`) or `security.insecure`
    /// (`RUN --security=insecure`, no sandbox). Repeatable; also comma-separated.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    allow: Vec<String>,
    /// Talk plain HTTP to this registry (`HOST` or `HOST:PORT`); loopback registries always get it.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure_registries: Vec<String>,
    /// How image layers are compressed.
    #[arg(long, value_enum, default_value = "gzip")]
    compression: CompressionArg,
    /// Export the build cache: `type=registry,ref=HOST/REPO:TAG[,mode=min|max]` or
    /// `type=local,dest=DIR[,mode=min|max]` (an OCI layout directory). `mode=min` (the default) keeps the
    /// records of the exported image's own steps, `mode=max` those of every stage.
    #[arg(long = "cache-to", value_name = "type=registry,ref=HOST/REPO:TAG")]
    cache_to: Vec<String>,
    /// Import a build cache: `type=registry,ref=HOST/REPO:TAG` (or just `HOST/REPO:TAG`) or
    /// `type=local,src=DIR`. Repeatable; one that cannot be read is a warning, not an error.
    #[arg(long = "cache-from", value_name = "type=registry,ref=HOST/REPO:TAG")]
    cache_from: Vec<String>,
    /// Do not use the cache; run every step.
    #[arg(long)]
    no_cache: bool,
    /// Progress output: `auto` (a live view on a terminal, plain lines otherwise), `tty`, `plain`, `json`
    /// (one event per line) or `quiet`.
    #[arg(long, value_enum, default_value = "auto", overrides_with = "progress")]
    progress: ProgressMode,
    /// How many steps may run at once.
    #[arg(long, default_value_t = default_jobs())]
    jobs: usize,
    /// The store directory (default: $KILN_STORE, else $XDG_CACHE_HOME/kiln or ~/.cache/kiln).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Run RUN steps on a REAPI server's workers (`grpc://HOST:PORT`), answering them from its
    /// ActionCache first. Steps that mount a secret, an SSH agent or anything else run here.
    #[arg(long, value_name = "URL", conflicts_with = "remote_cache")]
    remote_executor: Option<String>,
    /// Use a REAPI server (`grpc://HOST:PORT`) as a shared cache only: hits come from its ActionCache,
    /// misses run here and are uploaded.
    #[arg(long, value_name = "URL")]
    remote_cache: Option<String>,
    /// The REAPI instance name on the remote server.
    #[arg(long, value_name = "NAME", default_value = "")]
    remote_instance_name: String,
}

#[derive(Args)]
struct WorkerArgs {
    /// The REAPI server whose Bots service leases the work: `grpc://HOST:PORT`.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The REAPI instance name.
    #[arg(long, value_name = "NAME", default_value = "")]
    instance: String,
    /// Where to keep unpacked inputs and step directories (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

#[derive(Args)]
struct GraphArgs {
    #[command(flatten)]
    compile: CompileArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: GraphFormat,
    /// Print only the root digest(s), one `sha256:<hex>` per line.
    #[arg(long)]
    digest: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// The build context directory (for `.dockerignore`).
    #[arg(default_value = ".")]
    context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Set a build-time variable: `KEY=VALUE` (or `KEY` to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// Check only the stages this stage needs (default: every stage).
    #[arg(long)]
    target: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: CheckFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum CheckFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    Gzip,
    Zstd,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProgressMode {
    Auto,
    Tty,
    Plain,
    Json,
    Quiet,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Text,
    Dot,
    Json,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .max(4)
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let color = std::io::stderr().is_terminal();
    let result = match cli.command {
        Command::Build(args) => build(*args),
        Command::Graph(args) => graph(args),
        Command::Check(args) => check(args),
        Command::Fmt(args) => fmt(args),
        Command::Convert(args) => convert(args),
        Command::Query(args) => query(args),
        Command::Affected(args) => affected(args),
        Command::Du(args) => du(args),
        Command::Prune(args) => prune(args),
        Command::Worker(args) => worker(args),
    };
    match result {
        Ok(()) => 0,
        Err(d) => {
            eprint!("{}", crate::diag::render(&d, color));
            d.category.exit_code()
        }
    }
}

/// The command line as a source text, so flag errors get a caret like file errors do.
struct CommandLine {
    file: Arc<SourceFile>,
    args: Vec<(usize, String)>,
}

impl CommandLine {
    fn capture() -> CommandLine {
        let mut text = String::from("kiln");
        let mut args = Vec::new();
        for a in std::env::args().skip(1) {
            text.push(' ');
            args.push((text.len(), a.clone()));
            text.push_str(&a);
        }
        CommandLine {
            file: SourceFile::new("command line", text),
            args,
        }
    }

    /// The span of `value` where it appears as (the tail of) an argument.
    fn span_of(&self, value: &str) -> Span {
        self.args
            .iter()
            .find_map(|(start, a)| {
                a.rfind(value)
                    .filter(|_| a.ends_with(value))
                    .map(|i| start + i)
            })
            .map_or(Span::new(0, 4), |s| Span::new(s, s + value.len()))
    }

    fn error(&self, value: &str, inner: Span, msg: impl Into<String>) -> Diagnostic {
        let base = self.span_of(value);
        let span = if inner.end > inner.start && inner.end <= value.len() {
            Span::new(base.start + inner.start, base.start + inner.end)
        } else {
            base
        };
        Diagnostic::at(&self.file, span, msg)
    }
}

struct Compiled {
    graph: BuildGraph,
    contexts: BTreeMap<String, NamedContext>,
    /// The secret checks' findings (for a Dockerfile only when building): `kiln build` refuses on errors.
    secret_findings: crate::frontend::dockerfile::lints::Report,
}

fn compile(args: &CompileArgs, cl: &CommandLine, lenient: bool) -> Result<Compiled> {
    if args
        .inputs
        .iter()
        .any(|i| i.starts_with("//") || i.starts_with(':'))
    {
        return compile_labels(args, cl, lenient);
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
        return compile_build_file(args, cl, lenient, context);
    }
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let df = read_dockerfile(&path)?;
    let mut opts = lower_options(args, cl, lenient, context)?;
    opts.excludes = dockerignore(context, &path)?;
    let program = crate::frontend::dockerfile::lower::lower(&df, &opts)?;
    let findings = if lenient {
        Vec::new()
    } else {
        let build_args = lint_build_args(cl, &args.build_args)?;
        crate::frontend::dockerfile::lints::secret_checks(&df, build_args)?.findings
    };
    Ok(Compiled {
        graph: BuildGraph::new(&program),
        contexts: opts.contexts,
        secret_findings: crate::frontend::dockerfile::lints::Report { findings },
    })
}

fn read_dockerfile(path: &Path) -> Result<crate::frontend::dockerfile::syntax::ast::Dockerfile> {
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
    lenient: bool,
    context: &Path,
) -> Result<LowerOptions> {
    let mut opts = LowerOptions {
        image_env: local_image_env(),
        lenient,
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
    lenient: bool,
    context: &Path,
) -> Result<crate::frontend::buildfile::lower::EvalOptions> {
    let lower = lower_options(args, cl, lenient, context)?;
    let mut params = BTreeMap::new();
    for p in &args.params {
        match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                params.insert(k.to_string(), v.to_string());
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
    lenient: bool,
    context: &Path,
) -> Result<Compiled> {
    let path = args.file.clone().expect("a .build file was given");
    let mut opts = build_options(args, cl, lenient, context)?;
    opts.lower.target = None;
    opts.lower.excludes = dockerignore(context, &path)?;
    let targets: Option<Vec<String>> = args.target.as_ref().map(|t| {
        t.split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    });
    let root = crate::load::Session::find_root(path.parent().unwrap_or(Path::new(".")));
    let mut session = crate::load::Session::new(root);
    let target_at = args
        .target
        .as_ref()
        .map(|t| crate::diag::Located::new(&cl.file, cl.span_of(t)));
    let (program, packages) =
        crate::load::lower_file(&mut session, &path, targets.as_deref(), &opts, target_at)?;
    let mut contexts = opts.lower.contexts;
    for (name, dir) in packages {
        contexts.insert(name, NamedContext::Dir(dir));
    }
    Ok(Compiled {
        graph: BuildGraph::new(&program),
        contexts,
        secret_findings: crate::frontend::dockerfile::lints::Report {
            findings: session.findings,
        },
    })
}

/// Monorepo labels: `//pkg:target`, `//pkg` (all its targets), `//pkg/...`, `//...`, `:target`.
fn compile_labels(args: &CompileArgs, cl: &CommandLine, lenient: bool) -> Result<Compiled> {
    let cwd = std::env::current_dir()
        .map_err(|e| Diagnostic::io("cannot read the current directory", e))?;
    let root = monorepo_root()?;
    let opts = build_options(args, cl, lenient, &root)?;
    let mut session = crate::load::Session::new(Some(root.clone()));
    let selected = crate::monorepo::expand_labels(&mut session, &cwd, &args.inputs)?;
    let lowered = crate::monorepo::lower_selected(&mut session, &selected, &opts)?;
    let program = lowered.program;
    let mut contexts = opts.lower.contexts;
    for (name, dir) in lowered.contexts {
        contexts.insert(name, NamedContext::Dir(dir));
    }
    Ok(Compiled {
        graph: BuildGraph::new(&program),
        contexts,
        secret_findings: crate::frontend::dockerfile::lints::Report {
            findings: session.findings,
        },
    })
}

fn monorepo_root() -> Result<PathBuf> {
    let cwd = std::env::current_dir()
        .map_err(|e| Diagnostic::io("cannot read the current directory", e))?;
    crate::load::Session::find_root(&cwd).ok_or_else(|| {
        Diagnostic::input("not in a monorepo: no kiln.toml in this directory or above")
            .help("create an empty kiln.toml at the repository's root")
    })
}

fn query(args: QueryArgs) -> Result<()> {
    let root = monorepo_root()?;
    let mut opts = crate::frontend::buildfile::lower::EvalOptions {
        lower: LowerOptions {
            lenient: true,
            ..LowerOptions::default()
        },
        params: BTreeMap::new(),
    };
    for p in &args.params {
        if let Some((k, v)) = p.split_once('=') {
            opts.params.insert(k.to_string(), v.to_string());
        }
    }
    let kind = match args.kind {
        QueryKind::Deps => "deps",
        QueryKind::Rdeps => "rdeps",
    };
    for l in crate::monorepo::query(&root, kind, &args.labels, &opts)? {
        println!("{l}");
    }
    Ok(())
}

fn affected(args: AffectedArgs) -> Result<()> {
    let root = monorepo_root()?;
    let opts = crate::frontend::buildfile::lower::EvalOptions {
        lower: LowerOptions {
            lenient: true,
            ..LowerOptions::default()
        },
        params: BTreeMap::new(),
    };
    let labels = match &args.since {
        Some(rev) => crate::monorepo::affected_since(&root, rev, &opts)?,
        None => crate::monorepo::affected_by_files(&root, &args.files, &opts)?,
    };
    for l in labels {
        println!("{l}");
    }
    Ok(())
}

/// `kiln fmt`: rewrites `.build` files in the canonical layout.
fn fmt(args: FmtArgs) -> Result<()> {
    let mut files = Vec::new();
    for p in &args.paths {
        if p.is_dir() {
            files.extend(crate::monorepo::build_files_under(p)?);
        } else {
            files.push(p.clone());
        }
    }
    let mut unformatted = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Diagnostic::input(format!("cannot read {}: {e}", f.display())))?;
        let module = crate::frontend::buildfile::syntax::parse(&SourceFile::new(
            f.display().to_string(),
            text.as_str(),
        ))?;
        let formatted = crate::frontend::buildfile::syntax::fmt::module(&module);
        if formatted != text {
            if args.check {
                println!("{}", f.display());
            } else {
                crate::store::atomic_write(f, formatted.as_bytes())?;
            }
            unformatted.push(f);
        }
    }
    if args.check && !unformatted.is_empty() {
        return Err(Diagnostic::build(format!(
            "{} file(s) not formatted; run `kiln fmt`",
            unformatted.len()
        )));
    }
    Ok(())
}

/// `kiln convert`: a Dockerfile as `.build` source.
fn convert(args: ConvertArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file).map_err(|e| {
        Diagnostic::input(format!(
            "cannot read Dockerfile {}: {e}",
            args.file.display()
        ))
        .help("name it with `-f PATH`")
    })?;
    let df = crate::frontend::dockerfile::syntax::parse(SourceFile::new(
        args.file.display().to_string(),
        text,
    ))?;
    crate::frontend::dockerfile::check::dockerfile(&df)?;
    let source = crate::frontend::convert::dockerfile(&df)?;
    match &args.output {
        Some(out) => crate::store::atomic_write(out, source.as_bytes())?,
        None => print!("{source}"),
    }
    Ok(())
}

/// The `.dockerignore` patterns that apply (`<Dockerfile>.dockerignore` first, then the context's), cleaned.
fn dockerignore(context: &Path, dockerfile: &Path) -> Result<Vec<String>> {
    match crate::ignore::load(context, dockerfile) {
        Ok((patterns, _)) => Ok(patterns.canonical()),
        Err(e) => {
            // A bad pattern: point at its line in the ignore file.
            let file = [
                PathBuf::from(format!("{}.dockerignore", dockerfile.display())),
                context.join(".dockerignore"),
            ]
            .into_iter()
            .find(|p| p.is_file());
            let inner = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<crate::ignore::PatternError>());
            match (file, inner) {
                (Some(f), Some(pe)) => {
                    let text = std::fs::read_to_string(&f).unwrap_or_default();
                    let source = SourceFile::new(f.display().to_string(), text.clone());
                    let start: usize = text
                        .lines()
                        .take(pe.line.saturating_sub(1))
                        .map(|l| l.len() + 1)
                        .sum();
                    let len = text
                        .lines()
                        .nth(pe.line.saturating_sub(1))
                        .map_or(1, str::len);
                    Err(Diagnostic::at(&source, Span::new(start, start + len), pe.message.clone())
                        .help("patterns follow Docker's .dockerignore rules: `*`, `?`, `[...]`, `**`, and `!` to re-include"))
                }
                _ => Err(Diagnostic::input(format!("cannot read .dockerignore: {e}"))),
            }
        }
    }
}

/// Base image environments from local OCI layouts (a file read, never the network), so `$PATH` in a
/// Dockerfile means the image's PATH. Registry images are not consulted while compiling.
fn local_image_env() -> crate::frontend::ImageEnv {
    crate::frontend::ImageEnv::new(|reference| {
        let rest = reference.strip_prefix("oci-layout://")?;
        let (dir, tag) = crate::solve::split_layout_ref(rest);
        let image = crate::oci::read_image(Path::new(dir), tag).ok()?;
        let env = image.config.config().as_ref()?.env().clone()?;
        Some(
            env.iter()
                .filter_map(|e| {
                    e.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect(),
        )
    })
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn graph(args: GraphArgs) -> Result<()> {
    let cl = CommandLine::capture();
    let compiled = compile(&args.compile, &cl, true)?;
    let g = &compiled.graph;
    let out = if args.digest {
        g.render_digests()
    } else {
        match args.format {
            GraphFormat::Text => g.render_text(),
            GraphFormat::Dot => g.render_dot(),
            GraphFormat::Json => g.render_json(),
        }
    };
    print!("{out}");
    Ok(())
}

/// `kiln check`: parse, then run the lints; exit 1 when a finding is an error.
fn check(args: CheckArgs) -> Result<()> {
    let cl = CommandLine::capture();
    let context = &args.context;
    if args
        .file
        .as_ref()
        .is_some_and(|f| f.extension().is_some_and(|e| e == "build"))
    {
        let compile_args = CompileArgs {
            inputs: vec![context.display().to_string()],
            file: args.file.clone(),
            target: args.target.clone(),
            params: Vec::new(),
            build_args: args.build_args.clone(),
            build_contexts: Vec::new(),
        };
        // A `.build` file's checks are its type checker's and the secret rules, which evaluation
        // applies to each step's final command and sources.
        let report = compile(&compile_args, &cl, true)?.secret_findings;
        return print_check_report(&report, &args.format);
    }
    if !context.is_dir() {
        let shown = context.display().to_string();
        return Err(cl.error(
            &shown,
            Span::default(),
            format!("build context `{shown}` is not a directory"),
        ));
    }
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let df = read_dockerfile(&path)?;
    let build_args = lint_build_args(&cl, &args.build_args)?;
    let patterns = dockerignore(context, &path)?;
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    let matcher = crate::ignore::Patterns::from_patterns(&refs)
        .map_err(|e| Diagnostic::input(format!("cannot read .dockerignore: {e}")))?;
    let root_ignored = patterns
        .iter()
        .any(|p| matches!(p.as_str(), "*" | "**" | "**/*"));
    let ignored = move |p: &str| {
        if p == "." {
            root_ignored
        } else {
            matcher.matches_or_parent_matches(p)
        }
    };
    let use_ignore = !patterns.is_empty() && !patterns.iter().any(|p| p.starts_with('!'));
    let opts = crate::frontend::dockerfile::lints::Options {
        build_args,
        target: args.target.clone(),
        target_at: args
            .target
            .as_ref()
            .map(|t| crate::diag::Located::new(&cl.file, cl.span_of(t))),
        ignored: use_ignore.then_some(&ignored as &dyn Fn(&str) -> bool),
    };
    let report = crate::frontend::dockerfile::lints::run(&df, &opts)?;
    print_check_report(&report, &args.format)
}

/// Prints a `kiln check` report; an error finding makes the command fail.
fn print_check_report(
    report: &crate::frontend::dockerfile::lints::Report,
    format: &CheckFormat,
) -> Result<()> {
    match format {
        CheckFormat::Text => print!("{}", report.render_text()),
        CheckFormat::Json => print!("{}", report.render_json()),
    }
    match report.errors() {
        0 => Ok(()),
        n => Err(Diagnostic::build(format!(
            "check failed: {n} error{}",
            if n == 1 { "" } else { "s" }
        ))),
    }
}

/// `--build-arg`s as the lints see them: each with its value (from the environment when only a name is
/// given) and where it is on the command line.
fn lint_build_args(
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

fn store_root(args: &StoreArgs) -> PathBuf {
    args.store
        .clone()
        .unwrap_or_else(crate::store::Store::default_root)
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn worker(args: WorkerArgs) -> Result<()> {
    crate::remote::parse_url(&args.server).map_err(|m| {
        Diagnostic::input(format!("bad server address `{}`: {m}", args.server))
            .help("for example `kiln worker --server grpc://127.0.0.1:50051`")
    })?;
    // Before any thread starts: an unprivileged worker becomes root of its own user namespace here.
    crate::exec::userns::enter()?;
    let temp;
    let work = match args.work_dir {
        Some(d) => d,
        None => {
            temp = tempfile::Builder::new()
                .prefix("kiln-worker-")
                .tempdir()
                .map_err(|e| Diagnostic::io("cannot make the worker's directory", e))?;
            temp.path().to_path_buf()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Diagnostic::io("cannot start the worker", e))?;
    runtime.block_on(async {
        let server = crate::remote::Server::new(&args.server, &args.instance)?;
        server.check().await?;
        let worker = crate::remote::worker::Worker::new(
            server,
            work,
            crate::exec::Namespaces::new(),
            crate::exec::userns::layer_ids(),
        )?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Diagnostic::io("cannot watch for SIGTERM", e))?;
        tokio::select! {
            r = worker.serve() => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        }
    })
}

fn du(args: StoreArgs) -> Result<()> {
    // Rootless stores hold files owned by subordinate ids, readable only inside the namespace.
    crate::exec::userns::enter()?;
    let store = crate::store::Store::open(&store_root(&args), crate::store::Access::Shared)?;
    let u = store.usage();
    println!(
        "{:<22}{:>12}",
        "layer snapshots",
        format!("{} ({})", human(u.snapshots), u.snapshot_count)
    );
    println!("{:<22}{:>12}", "blobs", human(u.blobs));
    println!("{:<22}{:>12}", "cache mounts", human(u.caches));
    println!("{:<22}{:>12}", "work in progress", human(u.tmp));
    println!("{:<22}{:>12}", "cached results", u.records);
    println!("{:<22}{:>12}", "total", human(u.total()));
    Ok(())
}

fn prune(args: PruneArgs) -> Result<()> {
    // Rootless stores hold files owned by subordinate ids, removable only inside the namespace.
    crate::exec::userns::enter()?;
    let cl = CommandLine::capture();
    let keep = match &args.keep_storage {
        None => 0,
        Some(s) => crate::options::parse_size(s).ok_or_else(|| {
            cl.error(s, Span::default(), format!("`{s}` is not a size"))
                .help("write a size such as `500MB` or `10GB`")
        })?,
    };
    let store =
        crate::store::Store::open(&store_root(&args.store), crate::store::Access::Exclusive)?;
    let freed = store.prune(keep)?;
    println!(
        "freed {}, {} left",
        human(freed),
        human(store.usage().total())
    );
    Ok(())
}

fn parse_secret(cl: &CommandLine, value: &str) -> Result<(String, SecretSource)> {
    let fields = crate::options::parse(value)
        .map_err(|e| cl.error(value, e.span, e.message).help(e.help))?;
    let (mut id, mut src, mut env, mut kind) = (None, None, None, None);
    for f in &fields {
        let Some(v) = f.value.clone() else {
            return Err(cl
                .error(
                    value,
                    f.span,
                    format!("`{}` must be a key=value pair", f.key),
                )
                .help("write `--secret id=ID,src=PATH` or `--secret id=ID,env=VAR`"));
        };
        match f.key.to_ascii_lowercase().as_str() {
            "id" => id = Some(v),
            "src" | "source" => src = Some(v),
            "env" => env = Some(v),
            "type" if v == "file" || v == "env" => kind = Some(v),
            "type" => {
                return Err(cl
                    .error(
                        value,
                        f.value_span(),
                        format!("unsupported secret type `{v}`"),
                    )
                    .help("secret types are `file` and `env`"));
            }
            other => {
                let d = cl.error(value, f.span, format!("unknown key `{other}` in --secret"));
                return Err(
                    match suggest(other, ["id", "src", "source", "env", "type"]) {
                        Some(s) => d.help(format!("did you mean `{s}`?")),
                        None => d.help("--secret takes id, src (or source), env and type"),
                    },
                );
            }
        }
    }
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        return Err(cl
            .error(value, Span::default(), "--secret needs an `id`")
            .help("write `--secret id=ID,src=PATH`"));
    };
    if kind.as_deref() == Some("env") && env.is_none() {
        env = src.take();
    }
    let source = match (src, env) {
        (Some(_), Some(_)) => {
            return Err(cl
                .error(
                    value,
                    Span::default(),
                    "--secret takes either `src` or `env`, not both",
                )
                .help("drop one of them"));
        }
        (Some(path), None) => SecretSource::File(absolute(Path::new(&path))),
        (None, Some(var)) => SecretSource::Env(var),
        // buildx's rule: with no source, the secret comes from the environment variable named like it.
        (None, None) => SecretSource::Env(id.clone()),
    };
    if let SecretSource::File(p) = &source
        && !p.is_file()
    {
        let shown = p.display().to_string();
        return Err(cl
            .error(
                value,
                Span::default(),
                if p.is_dir() {
                    format!("secret `{id}`: {shown} is a directory, not a file")
                } else {
                    format!("secret `{id}`: file {shown} does not exist")
                },
            )
            .help("check the `src=` path; it is relative to the current directory"));
    }
    Ok((id, source))
}

/// `--allow NAME[,NAME...]`, each repeatable, as buildx takes them.
fn parse_allow(cl: &CommandLine, values: &[String]) -> Result<Vec<Entitlement>> {
    let mut allow = Vec::new();
    for value in values {
        let mut start = 0;
        for name in value.split(',') {
            let span = Span::new(start, start + name.len());
            start += name.len() + 1;
            let Some(e) = Entitlement::parse(name.trim()) else {
                let names = Entitlement::ALL.map(Entitlement::name);
                let d = cl.error(value, span, format!("unknown entitlement `{name}`"));
                return Err(match suggest(name.trim(), names) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help(format!("entitlements are {}", names.join(" and "))),
                });
            };
            allow.push(e);
        }
    }
    Ok(allow)
}

/// `--ssh default`, `--ssh ID`, `--ssh ID=SOCKET` (an agent to forward), `--ssh ID=KEYFILE[,KEYFILE]`
/// (keys kiln serves itself from an in-process agent).
fn parse_ssh(cl: &CommandLine, value: &str) -> Result<(String, SshSource)> {
    let (id, paths) = match value.split_once('=') {
        Some((id, paths)) => (id, Some(paths)),
        None => (value, None),
    };
    if id.is_empty() {
        return Err(cl
            .error(value, Span::default(), "--ssh needs an id")
            .help("write `--ssh default`, `--ssh ID=SOCKET` or `--ssh ID=KEYFILE`"));
    }
    let paths: Vec<PathBuf> = match paths {
        Some(p) => p.split(',').map(PathBuf::from).collect(),
        None => match std::env::var_os("SSH_AUTH_SOCK") {
            Some(s) => vec![PathBuf::from(s)],
            None => {
                return Err(cl
                    .error(value, Span::default(), "SSH_AUTH_SOCK is not set, so there is no agent to forward")
                    .help("start an agent (`eval $(ssh-agent)`, `ssh-add`), or pass `--ssh ID=SOCKET` or `--ssh ID=KEYFILE`"));
            }
        },
    };
    use std::os::unix::fs::FileTypeExt as _;
    if let [socket] = paths.as_slice()
        && std::fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket())
    {
        return Ok((id.to_string(), SshSource::Socket(absolute(socket))));
    }
    let mut keys = Vec::new();
    for path in &paths {
        let shown = path.display().to_string();
        let key = ssh_key::PrivateKey::read_openssh_file(path).map_err(|e| {
            cl.error(value, Span::default(), format!("cannot use `{shown}` as an ssh agent socket or key file: {e}"))
                .help("give an agent socket, or an OpenSSH private key file (ed25519, without a passphrase)")
        })?;
        if key.is_encrypted() {
            return Err(cl
                .error(
                    value,
                    Span::default(),
                    format!("the ssh key `{shown}` is protected by a passphrase"),
                )
                .help("load it into an agent with `ssh-add` and pass `--ssh ID=$SSH_AUTH_SOCK`"));
        }
        keys.push(key);
    }
    Ok((id.to_string(), SshSource::Keys(Arc::new(keys))))
}

/// `-o type=TYPE,dest=PATH` (docker's spelling); a bare `-o PATH` means `type=local,dest=PATH`.
fn parse_output(cl: &CommandLine, value: &str) -> Result<crate::export::Output> {
    use crate::export::Output;
    if !value.contains('=') {
        if value == "-" {
            return Err(cl
                .error(
                    value,
                    Span::default(),
                    "writing an output to stdout is not supported yet",
                )
                .help("give a file: `-o type=tar,dest=rootfs.tar`"));
        }
        return Ok(Output::Local {
            dest: PathBuf::from(value),
        });
    }
    let fields = crate::options::parse(value)
        .map_err(|e| cl.error(value, e.span, e.message).help(e.help))?;
    let get = |k: &str| fields.iter().find(|f| f.key == k);
    let kind = get("type")
        .and_then(|f| f.value.clone())
        .unwrap_or_default();
    let known = ["oci", "docker", "local", "tar", "registry", "image"];
    if !["oci", "docker", "local", "tar"].contains(&kind.as_str()) {
        let d = match kind.as_str() {
            "" => cl.error(value, Span::default(), "output needs a `type`"),
            k if known.contains(&k) => cl.error(
                value,
                Span::default(),
                format!("output type `{k}` is not supported yet"),
            ),
            k => cl.error(value, Span::default(), format!("unknown output type `{k}`")),
        };
        return Err(match suggest(&kind, known).filter(|s| *s != kind) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help(
                "output types are `oci`, `docker`, `local`, `tar` and `registry`, e.g. `-o type=oci,dest=DIR`",
            ),
        });
    }
    let Some(dest) = get("dest")
        .and_then(|f| f.value.clone())
        .filter(|d| !d.is_empty())
    else {
        return Err(cl
            .error(
                value,
                Span::default(),
                format!("output type `{kind}` needs `dest`"),
            )
            .help(format!("write `-o type={kind},dest=PATH`")));
    };
    let dest = PathBuf::from(dest);
    Ok(match kind.as_str() {
        "oci" => {
            let tar = match get("tar").map(|f| crate::options::parse_bool(f.value.as_deref())) {
                Some(Some(b)) => b,
                Some(None) => {
                    return Err(cl.error(value, Span::default(), "`tar` must be true or false"));
                }
                None => dest.extension().is_some_and(|e| e == "tar"),
            };
            Output::Oci { dest, tar }
        }
        "docker" => Output::Docker { dest },
        "local" => Output::Local { dest },
        _ => Output::Tar { dest },
    })
}

/// What a `--cache-to`/`--cache-from` value says, checked field by field (buildx's spelling).
struct CacheSpec {
    kind: String,
    fields: BTreeMap<String, String>,
}

impl CacheSpec {
    /// A local cache's tag inside its layout (`tag=`), `latest` by default.
    fn tag(&self) -> String {
        self.fields
            .get("tag")
            .cloned()
            .unwrap_or_else(|| "latest".into())
    }
}

/// Parses `--cache-to`/`--cache-from`: `type=...,key=value...`, or a bare reference meaning
/// `type=registry,ref=...` (as buildx reads it). `allowed` lists the keys each type takes.
fn parse_cache_spec(
    cl: &CommandLine,
    flag: &str,
    value: &str,
    allowed: &[(&str, &[&str])],
) -> Result<CacheSpec> {
    let example = format!("`{flag} type=registry,ref=HOST/REPO:TAG`");
    if !value.contains('=') {
        if value.is_empty() {
            return Err(cl
                .error(value, Span::default(), format!("{flag} needs a value"))
                .help(format!("write {example}")));
        }
        return Ok(CacheSpec {
            kind: "registry".into(),
            fields: BTreeMap::from([("ref".to_string(), value.to_string())]),
        });
    }
    let parsed = crate::options::parse(value)
        .map_err(|e| cl.error(value, e.span, e.message).help(e.help))?;
    let mut kind = None;
    let mut fields = BTreeMap::new();
    for f in &parsed {
        let v = f.value.clone().unwrap_or_default();
        if f.key == "type" {
            kind = Some((v, f.span));
        } else {
            fields.insert(f.key.clone(), v);
        }
    }
    // buildx reads a spec without a type as a registry cache.
    let (kind, span) = kind.unwrap_or_else(|| ("registry".to_string(), Span::default()));
    let types: Vec<&str> = allowed.iter().map(|(t, _)| *t).collect();
    let Some((_, keys)) = allowed.iter().find(|(t, _)| *t == kind) else {
        let later = ["inline", "gha", "s3", "azblob"];
        let d = if later.contains(&kind.as_str()) {
            cl.error(
                value,
                span,
                format!("cache type `{kind}` is not supported yet"),
            )
        } else if kind.is_empty() {
            cl.error(value, span, format!("{flag} needs a `type`"))
        } else {
            cl.error(value, span, format!("unknown cache type `{kind}`"))
        };
        return Err(
            match suggest(&kind, types.iter().copied()).filter(|s| *s != kind) {
                Some(s) => d.help(format!("did you mean `type={s}`?")),
                None => d.help(format!(
                    "cache types are `registry` and `local`, e.g. {example}"
                )),
            },
        );
    };
    for f in &parsed {
        if f.key != "type" && !keys.contains(&f.key.as_str()) {
            return Err(cl
                .error(
                    value,
                    f.span,
                    format!("unsupported key `{}` for a {kind} cache in {flag}", f.key),
                )
                .help(format!(
                    "a {kind} cache takes {}",
                    keys.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
        }
    }
    Ok(CacheSpec { kind, fields })
}

/// The `ref` of a registry cache, checked as an image name.
fn cache_ref(cl: &CommandLine, flag: &str, value: &str, spec: &CacheSpec) -> Result<String> {
    let Some(r) = spec.fields.get("ref").filter(|r| !r.is_empty()) else {
        return Err(cl
            .error(
                value,
                Span::default(),
                format!("a registry cache in {flag} needs `ref`"),
            )
            .help(format!("write `{flag} type=registry,ref=HOST/REPO:TAG`")));
    };
    crate::registry::ImageName::parse(r).map_err(|d| {
        cl.error(value, Span::default(), d.message)
            .help(d.help.unwrap_or_default())
    })?;
    Ok(r.clone())
}

/// The directory of a local cache (`dest` for --cache-to, `src` for --cache-from).
fn cache_dir(
    cl: &CommandLine,
    flag: &str,
    value: &str,
    spec: &CacheSpec,
    key: &str,
) -> Result<PathBuf> {
    match spec.fields.get(key).filter(|d| !d.is_empty()) {
        Some(d) => Ok(PathBuf::from(d)),
        None => Err(cl
            .error(
                value,
                Span::default(),
                format!("a local cache in {flag} needs `{key}`"),
            )
            .help(format!("write `{flag} type=local,{key}=DIR`"))),
    }
}

/// `--cache-to` (buildx's spelling). Returns the destination and whether a failure is only a warning
/// (`ignore-error=true`).
fn parse_cache_to(cl: &CommandLine, value: &str) -> Result<(crate::export::cache::CacheTo, bool)> {
    use crate::export::cache::{CacheTo, Dest, Mode};
    let flag = "--cache-to";
    let spec = parse_cache_spec(
        cl,
        flag,
        value,
        &[
            ("registry", &["ref", "mode", "ignore-error"]),
            ("local", &["dest", "mode", "tag", "ignore-error"]),
        ],
    )?;
    let mode = match spec.fields.get("mode").map(String::as_str) {
        None | Some("min") => Mode::Min,
        Some("max") => Mode::Max,
        Some(m) => {
            return Err(cl
                .error(value, Span::default(), format!("unknown cache mode `{m}`"))
                .help("`mode=min` exports the final image's steps, `mode=max` every stage's"));
        }
    };
    let ignore = match spec.fields.get("ignore-error") {
        None => false,
        Some(v) => crate::options::parse_bool(Some(v)).ok_or_else(|| {
            cl.error(
                value,
                Span::default(),
                "`ignore-error` must be true or false",
            )
        })?,
    };
    let dest = match spec.kind.as_str() {
        "registry" => Dest::Registry(cache_ref(cl, flag, value, &spec)?),
        _ => Dest::Local {
            dir: cache_dir(cl, flag, value, &spec, "dest")?,
            tag: spec.tag(),
        },
    };
    Ok((CacheTo { dest, mode }, ignore))
}

/// `--cache-from` (buildx's spelling).
fn parse_cache_from(cl: &CommandLine, value: &str) -> Result<crate::solve::shared_cache::Source> {
    use crate::solve::shared_cache::Source;
    let flag = "--cache-from";
    let spec = parse_cache_spec(
        cl,
        flag,
        value,
        &[("registry", &["ref"]), ("local", &["src", "tag", "digest"])],
    )?;
    Ok(match spec.kind.as_str() {
        "registry" => Source::Registry(cache_ref(cl, flag, value, &spec)?),
        _ => Source::Local {
            dir: cache_dir(cl, flag, value, &spec, "src")?,
            tag: spec.tag(),
        },
    })
}

/// Names where the export guard found a secret: the file and the step that wrote it, or the config.
/// Where the config entry at `path` (`history[3].created_by`, `config.Labels.x`) comes from: the step
/// whose history entry it is, else the FROM of the image (settings such as LABEL and ENV have no node
/// of their own).
fn config_location(
    graph: &BuildGraph,
    root: petgraph::stable_graph::NodeIndex,
    config: &serde_json::Value,
    path: &str,
) -> Option<(crate::diag::Located, &'static str)> {
    let crate::graph::Op::Config(op) = &graph.dag[root].op else {
        return None;
    };
    // The stage's own steps, top first, down to the node it starts from.
    let mut steps = Vec::new();
    let mut at = graph.inputs(root).first().copied();
    let own = op.history.iter().filter(|h| h.layer).count();
    while let Some(n) = at.filter(|n| graph.dag[*n].op.makes_layer() && steps.len() < own) {
        steps.push(n);
        at = graph.inputs(n).first().copied();
    }
    let from = at.and_then(|n| graph.dag[n].at.clone());
    let entry = path
        .strip_prefix("history[")
        .and_then(|rest| rest.split(']').next())
        .and_then(|i| i.parse::<usize>().ok());
    let total = config["history"].as_array().map_or(0, Vec::len);
    let own_entry = entry.and_then(|i| i.checked_sub(total.checked_sub(op.history.len())?));
    if let Some(j) = own_entry.filter(|j| op.history.get(*j).is_some_and(|h| h.layer)) {
        let k = op.history[..j].iter().filter(|h| h.layer).count();
        let step = steps.len().checked_sub(k + 1).map(|i| steps[i]);
        if let Some(located) = step.and_then(|n| graph.dag[n].at.clone()) {
            return Some((
                located,
                "this step's history entry holds it (a build arg it uses)",
            ));
        }
    }
    from.map(|f| {
        (
            f,
            "the config of the image built from here holds it (an ARG in ENV, LABEL, WORKDIR, ...)",
        )
    })
}

fn leak_error(
    graph: &BuildGraph,
    summary: &crate::solve::Summary,
    root: petgraph::stable_graph::NodeIndex,
    config: &serde_json::Value,
    found: crate::export::Found,
) -> Diagnostic {
    let help = "a secret must only ever be mounted (`RUN --mount=type=secret`); never COPY it, pass it as a build arg or write it to a file";
    match found {
        crate::export::Found::Config { leak, at } => {
            let mut d = Diagnostic::build(format!(
                "secret `{}` is in the image config or history at `{at}` ({}); nothing was exported, and nothing this build made was kept",
                leak.id,
                leak.encoding.as_str()
            ))
            .help(help);
            if let Some((located, label)) = config_location(graph, root, config, &at) {
                d = d.label(located, label);
            }
            d
        }
        crate::export::Found::Layer {
            leak,
            snapshot,
            path,
        } => {
            let step = summary.outputs.iter().find_map(|(n, o)| match o {
                crate::solve::Output::Fs(rec)
                    if graph.dag[*n].op.makes_layer() && rec.layers.last() == Some(&snapshot) =>
                {
                    Some(&graph.dag[*n])
                }
                _ => None,
            });
            let mut d = Diagnostic::build(format!(
                "secret `{}` is in the image ({}) at /{}; nothing was exported, and nothing this build made was kept",
                leak.id,
                leak.encoding.as_str(),
                path.display()
            ))
            .help(help);
            if let Some(at) = step.and_then(|s| s.at.clone()) {
                d = d.label(at, "this step put it there");
            }
            d
        }
    }
}

fn build(args: BuildArgs) -> Result<()> {
    let cl = CommandLine::capture();
    let mut secrets = SecretStore::default();
    for s in &args.secrets {
        let (id, source) = parse_secret(&cl, s)?;
        secrets.insert(id, source);
    }
    // Registry outputs are pushes, not files: they are collected apart from the exported outputs.
    let mut outputs = Vec::new();
    let mut pushes = Vec::new();
    for o in &args.outputs {
        match parse_registry_output(&cl, o, &args.tags)? {
            Some(names) => pushes.extend(names),
            None => outputs.push(parse_output(&cl, o)?),
        }
    }
    if args.push {
        if args.tags.is_empty() {
            return Err(Diagnostic::input("--push needs a name to push to")
                .help("name the image: `--push -t HOST/NAME:TAG`"));
        }
        pushes.extend(args.tags.iter().cloned());
    }
    pushes.sort();
    pushes.dedup();
    let cache_to = args
        .cache_to
        .iter()
        .map(|v| parse_cache_to(&cl, v))
        .collect::<Result<Vec<_>>>()?;
    let cache_from = args
        .cache_from
        .iter()
        .map(|v| parse_cache_from(&cl, v))
        .collect::<Result<Vec<_>>>()?;
    for p in &pushes {
        crate::registry::ImageName::parse(p).map_err(|d| {
            cl.error(p, Span::default(), d.message)
                .help(d.help.unwrap_or_default())
        })?;
    }
    let registry = crate::registry::Options {
        insecure: args.insecure_registries.clone(),
        docker_config: None,
    };
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(v.parse::<i64>().map_err(|_| {
            Diagnostic::input(format!(
                "SOURCE_DATE_EPOCH=`{v}` is not a number of seconds"
            ))
        })?),
        _ => None,
    };
    let secrets = Arc::new(secrets);
    // Before any thread starts: an unprivileged kiln becomes root of its own user namespace here.
    crate::exec::userns::enter()?;
    let settings = crate::export::Settings {
        epoch,
        codec: match args.compression {
            CompressionArg::Gzip => crate::layer::Codec::Gzip,
            CompressionArg::Zstd => crate::layer::Codec::Zstd,
        },
        jobs: args.jobs,
    };
    let compiled = compile(&args.compile, &cl, false)?;
    // What `kiln check` knows, the build enforces, before any step runs (`# check=skip=` opts out).
    eprint!("{}", compiled.secret_findings.render_for_build());
    if let Some(refusal) = compiled.secret_findings.refusal() {
        return Err(refusal);
    }
    if compiled.graph.roots.len() > 1 && (!outputs.is_empty() || !pushes.is_empty()) {
        // One destination cannot hold several images; exporting each over the last would lose all
        // but one without a word.
        let names: Vec<&str> = compiled
            .graph
            .roots
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        return Err(Diagnostic::input(format!(
            "{} targets are selected ({}), but an output or a push takes one image",
            names.len(),
            names.join(", ")
        ))
        .help("build them into the store without -o/--push, or select one target for the output"));
    }
    let graph = Arc::new(compiled.graph);
    let mut ssh = BTreeMap::new();
    for s in &args.ssh {
        let (id, socket) = parse_ssh(&cl, s)?;
        ssh.insert(id, socket);
    }
    let allow = parse_allow(&cl, &args.allow)?;
    crate::solve::preflight(&graph, &secrets, &ssh, &allow)?;
    let store = Arc::new(crate::store::Store::open(
        &args
            .store
            .clone()
            .unwrap_or_else(crate::store::Store::default_root),
        crate::store::Access::Shared,
    )?);
    let mode = match args.progress {
        ProgressMode::Auto => progress::Mode::Auto,
        ProgressMode::Tty => progress::Mode::Tty,
        ProgressMode::Plain => progress::Mode::Plain,
        ProgressMode::Json => progress::Mode::Json,
        ProgressMode::Quiet => progress::Mode::Quiet,
    };
    // A build given secrets is a transaction: what its steps make is staged and kept only once every
    // leak check has passed (`store::Txn`).
    let given_secrets = secrets.ids().next().is_some();
    if given_secrets {
        store.begin()?;
    }
    let reporter: Arc<dyn progress::Reporter> = Arc::from(progress::reporter(mode));
    if let Some(note) = crate::exec::userns::note() {
        reporter.event(Event::Note(note.to_string()));
    }
    for warning in secrets.warnings() {
        reporter.event(Event::Note(format!("warning: {warning}")));
    }
    // Only manifests and configs are read here; layers come when a step or the export needs them.
    let imported = (!cache_from.is_empty()).then(|| {
        let warn = |w: String| reporter.event(Event::Note(format!("warning: {w}")));
        let imported =
            crate::solve::shared_cache::Imported::load(&store, &cache_from, &registry, &warn);
        reporter.event(Event::Note(format!(
            "imported {} cache records from {} caches",
            imported.len(),
            cache_from.len()
        )));
        Arc::new(imported)
    });
    let executor = Arc::new(crate::exec::Namespaces::new());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Diagnostic::io("cannot start the scheduler", e))?;
    let started = std::time::Instant::now();
    let solve_opts = crate::solve::SolveOptions {
        jobs: args.jobs,
        no_cache: args.no_cache,
        contexts: compiled.contexts,
        epoch,
        ssh,
        registry: registry.clone(),
        cache_from: imported.clone(),
        allow,
    };
    let remote = match (&args.remote_executor, &args.remote_cache) {
        // A build given secrets only reads the remote: uploading would publish its steps' results
        // before its leak checks have passed (the inputs of a remote step included).
        (Some(url), _) | (None, Some(url)) if given_secrets => {
            Some((url, crate::remote::Mode::Read))
        }
        (Some(url), _) => Some((url, crate::remote::Mode::Execute)),
        (None, Some(url)) => Some((url, crate::remote::Mode::Cache)),
        (None, None) => None,
    };
    type Solving<'a> =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<crate::solve::Summary>> + 'a>>;
    let solve: Solving = match remote {
        Some((url, mode)) => {
            crate::remote::parse_url(url).map_err(|m| {
                cl.error(
                    url,
                    Span::default(),
                    format!("bad remote address `{url}`: {m}"),
                )
                .help("for example `--remote-executor grpc://127.0.0.1:50051`")
            })?;
            let instance = args.remote_instance_name.clone();
            let (graph, store, reporter, secrets) = (
                graph.clone(),
                store.clone(),
                reporter.clone(),
                secrets.clone(),
            );
            Box::pin(async move {
                // The channel needs the runtime, so it is made inside it.
                let server = crate::remote::Server::new(url, &instance)?;
                server.check().await?;
                let executor = Arc::new(crate::remote::Remote::new(
                    server,
                    mode,
                    crate::exec::Namespaces::new(),
                    crate::exec::userns::layer_ids(),
                ));
                crate::solve::solve(graph, store, executor, reporter, secrets, solve_opts).await
            })
        }
        None => Box::pin(crate::solve::solve(
            graph.clone(),
            store.clone(),
            executor.clone(),
            reporter.clone(),
            secrets.clone(),
            solve_opts,
        )),
    };
    let summary = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Diagnostic::io("cannot watch for SIGTERM", e))?;
        tokio::select! {
            r = solve => r,
            _ = tokio::signal::ctrl_c() => Err(Diagnostic::build("interrupted")),
            _ = term.recv() => Err(Diagnostic::build("terminated")),
        }
    });
    // Dropping the runtime cancels every running step; the executor kills what they started.
    drop(runtime);
    // A failed build given secrets keeps nothing: its staged steps were never checked as a whole.
    let summary = summary.inspect_err(|_| store.abort())?;
    reporter.event(Event::Note(format!(
        "{} steps run, {} cached, in {:.1}s",
        summary.executed,
        summary.cached,
        started.elapsed().as_secs_f64()
    )));
    let scanner = crate::solve::all_secrets(&secrets).inspect_err(|_| store.abort())?;
    // Every image is checked before anything is kept or written: the build's transaction is committed
    // only when the steps' scans and every image's guard have passed.
    for (_, root) in &graph.roots {
        let Some(crate::solve::Output::Image { layers, config }) = summary.outputs.get(root) else {
            continue;
        };
        // The image's layers are in the store from here on, as after any build (the guard reads them);
        // other stages' layers that came from a cache stay where they are until a step needs them.
        if let Some(imported) = &imported {
            imported
                .materialize(&store, &*executor, layers)
                .inspect_err(|_| store.abort())?;
        }
        match crate::export::guard(&store, layers, config, &scanner) {
            Ok(None) => {}
            Ok(Some(found)) => {
                store.abort();
                return Err(leak_error(&graph, &summary, *root, config, found));
            }
            Err(e) => {
                store.abort();
                return Err(e);
            }
        }
    }
    store.commit()?;
    for (name, root) in &graph.roots {
        let Some(crate::solve::Output::Image { layers, config }) = summary.outputs.get(root) else {
            continue;
        };
        for out in &outputs {
            let exported = crate::export::export(
                &store,
                layers,
                config,
                out,
                args.tags.first().map(String::as_str),
                &settings,
            )?;
            let dest = match out {
                crate::export::Output::Oci { dest, .. }
                | crate::export::Output::Docker { dest }
                | crate::export::Output::Local { dest }
                | crate::export::Output::Tar { dest } => dest,
            };
            let note = match &exported.manifest {
                Some(m) if exported.unchanged => format!(
                    "{} already holds {name} ({} layers), manifest {m}: nothing written",
                    dest.display(),
                    exported.layers
                ),
                None if exported.unchanged => format!(
                    "{} already holds the filesystem of {name}: nothing written",
                    dest.display()
                ),
                Some(m) => format!(
                    "exported {name} to {} ({} layers), manifest {m}",
                    dest.display(),
                    exported.layers
                ),
                None => format!("exported the filesystem of {name} to {}", dest.display()),
            };
            reporter.event(Event::Note(note));
            if let Some(m) = exported.manifest {
                println!("{m}");
            }
        }
        if !pushes.is_empty() {
            push(
                &store, layers, config, &pushes, &registry, &settings, &*reporter, name,
            )?;
        }
    }
    if let Some(imported) = &imported {
        imported.keep_hits(&store)?;
    }
    for (to, ignore_error) in &cache_to {
        let written = crate::export::cache::export(
            &store,
            &graph,
            &summary,
            imported.as_deref(),
            to,
            &scanner,
            &settings,
            &registry,
        );
        match written {
            Ok(w) => {
                let mut note = format!(
                    "exported cache to {} ({} records, {} layers), manifest {}",
                    to.dest, w.records, w.layers, w.manifest
                );
                if w.withheld > 0 {
                    note.push_str(&format!(
                        "; {} records withheld (a layer without the leak guard's verdict)",
                        w.withheld
                    ));
                }
                reporter.event(Event::Note(note));
            }
            // As buildx: a cache that cannot be written fails the build unless `ignore-error=true`.
            Err(e) if *ignore_error => reporter.event(Event::Note(format!(
                "warning: cache not exported to {}: {}",
                to.dest, e.message
            ))),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `-o type=registry,name=HOST/NAME:TAG` (docker's spelling): the names to push to, or `None` for any
/// other output. Without `name`, the `-t` names are used, as buildx does.
fn parse_registry_output(
    cl: &CommandLine,
    value: &str,
    tags: &[String],
) -> Result<Option<Vec<String>>> {
    if !value.contains('=') {
        return Ok(None);
    }
    let fields = crate::options::parse(value)
        .map_err(|e| cl.error(value, e.span, e.message).help(e.help))?;
    if !fields
        .iter()
        .any(|f| f.key == "type" && f.value.as_deref() == Some("registry"))
    {
        return Ok(None);
    }
    let mut names = Vec::new();
    for f in &fields {
        match (f.key.as_str(), &f.value) {
            ("type", _) => {}
            ("name", Some(n)) if !n.is_empty() => names.push(n.clone()),
            // buildx's `push=true` is implied by the type.
            ("push", v) if crate::options::parse_bool(v.as_deref()) == Some(true) => {}
            (k, _) => {
                return Err(cl
                    .error(
                        value,
                        f.span,
                        format!("unsupported key `{k}` in a registry output"),
                    )
                    .help("write `-o type=registry,name=HOST/NAME:TAG`"));
            }
        }
    }
    if names.is_empty() {
        names = tags.to_vec();
    }
    if names.is_empty() {
        return Err(cl
            .error(value, Span::default(), "a registry output needs a name")
            .help("write `-o type=registry,name=HOST/NAME:TAG` (or give `-t HOST/NAME:TAG`)"));
    }
    Ok(Some(names))
}

/// Pushes one built image to every name: written once as an OCI layout in the store, then uploaded.
#[allow(clippy::too_many_arguments)]
fn push(
    store: &crate::store::Store,
    layers: &[String],
    config: &serde_json::Value,
    names: &[String],
    registry: &crate::registry::Options,
    settings: &crate::export::Settings,
    reporter: &dyn progress::Reporter,
    stage: &str,
) -> Result<()> {
    let tmp = store.temp_dir("push-")?;
    let dir = tmp.path().join("layout");
    crate::export::export_for_push(store, layers, config, &dir, settings)?;
    for name in names {
        let pushed = crate::registry::push(&dir, Some("latest"), name, registry)?;
        let digest = pushed.digest;
        reporter.event(Event::Note(if pushed.unchanged {
            format!("{name} already holds {stage}, manifest {digest}: nothing pushed")
        } else {
            format!("pushed {stage} to {name}, manifest {digest}")
        }));
        println!("{digest}");
    }
    Ok(())
}
