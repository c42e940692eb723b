//! kiln: a build-graph compiler and container-image builder in which secrets cannot leak.
//!
//! The pipeline (ARCHITECTURE.md has the map and its invariants): `load` (reads source files) →
//! `frontend` (Dockerfile and `.build`, each syntax → check → lower, sharing what both mean) → `graph`
//! (the IR and its content-addressed DAG) → `solve` (cache keys, the scheduler, the `Executor` trait) →
//! `exec` | `remote` (the two executors) → `export`; `pipeline` runs a validated build through them.
//! Beside it sit foundations that no stage owns: `diag` (errors), `digest` (hashing), `options`
//! (key=value lists), `paths` (Go's path cleaning), `secret` (secret values), `store`, `oci` (image
//! layouts), `registry` (pull and push), `sign` (cosign-compatible image signatures), `layer` (the tar codec), `ignore` (`.dockerignore`) and
//! `progress`. The driver is `cli` (and `monorepo`, which answers label queries).
//!
//! The façade, for code that drives kiln (benches, fuzz targets, tests, the driver itself): [`compile`]
//! turns source into a [`graph::Program`], [`plan`] turns a program into the graph `kiln graph` shows,
//! and [`build`] runs a [`BuildRequest`]. Modules no outside driver needs are private.

/// mimalloc for every kiln binary (and the benches): the compile path is allocation-heavy.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod attest;
pub mod cli;
pub mod diag;
pub mod digest;
pub mod exec;
pub mod export;
pub mod frontend;
pub mod graph;
mod ignore;
mod inputs;
pub mod layer;
pub mod load;
mod lock;
mod monorepo;
mod oci;
mod options;
mod paths;
mod pipeline;
pub mod platform;
pub mod progress;
pub mod registry;
mod remote;
pub mod secret;
pub mod sign;
pub mod solve;
pub mod store;

pub use pipeline::{BuildRequest, Remote, Report, SecretChannel};

/// Runs a validated build ([`BuildRequest`], which `kiln build` makes from its command line): checks
/// that every secret, agent and entitlement the graph needs is given, solves the graph (here, or on the
/// REAPI server the request names), runs the leak guard over every image, then writes the outputs,
/// pushes, and exports the cache. Returns what each step produced.
///
/// An unprivileged caller must have entered its user namespace (`exec::userns::enter`) before any
/// thread started; the request's construction from the command line does.
pub fn build(request: BuildRequest) -> diag::Result<solve::Summary> {
    let built = pipeline::execute(request);
    // What the build's steps wrote reaches the disk after it, not on its path (`store::unsynced`).
    for root in store::unsynced::marked_stores() {
        exec::start_detached(&[store::unsynced::SYNC_ARG.as_ref(), root.as_os_str()]);
    }
    built
}

/// What [`compile`] reads.
pub enum Source<'a> {
    /// A Dockerfile's text, named for diagnostics.
    Dockerfile(std::sync::Arc<diag::SourceFile>),
    /// A `.build` file (with its imports) and the targets to select: `None` for the last one, an empty
    /// list for all of them. The monorepo root, if any, is found above the file.
    Buildfile {
        path: &'a std::path::Path,
        targets: Option<&'a [String]>,
        /// `--param NAME=VALUE`.
        params: &'a std::collections::BTreeMap<String, String>,
        /// Where the program's `print(...)` notes go, in order, also when compiling fails (the caller
        /// shows them).
        notes: &'a mut Vec<diag::Note>,
    },
    /// Monorepo labels (`//pkg:target`, `//pkg/...`, `//...`, `:target`), `:target` relative to `cwd`,
    /// in the monorepo whose `kiln.toml` is in `root`.
    Labels {
        root: &'a std::path::Path,
        cwd: &'a std::path::Path,
        labels: &'a [String],
        /// `--param NAME=VALUE`.
        params: &'a std::collections::BTreeMap<String, String>,
        /// Where the program's `print(...)` notes go, in order, also when compiling fails (the caller
        /// shows them).
        notes: &'a mut Vec<diag::Note>,
        /// The workspace's evaluation cache file (`load::EvalCache::path_in`); `None`: none.
        eval_cache: Option<std::path::PathBuf>,
        /// Whether to keep what each unit did (`Compiled::traced`), for `kiln graph`'s reuse.
        trace: bool,
    },
}

/// A compiled program and what came with it.
pub struct Compiled {
    pub program: graph::Program,
    /// The package directories the program's contexts name, by context name (`.build` sources only).
    pub packages: load::PackageContexts,
    /// What the secret checks found while evaluating a `.build` program (a Dockerfile's are the lints'
    /// business: `frontend::dockerfile::lints`).
    pub findings: Vec<frontend::dockerfile::lints::Finding>,
    /// The monorepo's evaluation cache being written back; dropping it waits for the write.
    pub saving: Option<load::Saving>,
    /// What each unit did, the modules loaded and the walks made, when asked (`Source::Labels`).
    pub traced: Option<Box<Traced>>,
}

/// What a traced compile of monorepo labels did (see `Source::Labels`).
pub struct Traced {
    pub trace: load::Trace,
    pub modules: Vec<load::ModuleFile>,
    pub(crate) walked: Vec<(std::path::PathBuf, Vec<std::path::PathBuf>, load::Entered)>,
    /// Units replayed and evaluated.
    pub stats: (usize, usize),
    pub notes: usize,
}

/// Compiles source into a program: parse, check and lower, with the options the command line gives
/// (build args, named contexts, the target, compile-only leniency). Reads the files a `.build` source
/// imports; never touches the network or the store.
pub fn compile(source: Source<'_>, opts: &frontend::LowerOptions) -> diag::Result<Compiled> {
    use load::{EvalOptions, Session, lower_file};
    let build_options = |params: &std::collections::BTreeMap<String, String>| EvalOptions {
        lower: opts.clone(),
        params: params.clone(),
    };
    match source {
        Source::Dockerfile(file) => {
            let df = frontend::dockerfile::syntax::parse(file)?;
            Ok(Compiled {
                program: frontend::dockerfile::lower::lower(&df, opts)?,
                packages: Default::default(),
                findings: Vec::new(),
                saving: None,
                traced: None,
            })
        }
        Source::Buildfile {
            path,
            targets,
            params,
            notes,
        } => {
            let root = Session::find_root(path.parent().unwrap_or(std::path::Path::new(".")));
            let mut session = Session::new(root);
            let lowered = lower_file(
                &mut session,
                path,
                targets,
                &build_options(params),
                opts.target_at.clone(),
            );
            notes.append(&mut session.notes);
            unknown_params(&session, params, opts)?;
            if !opts.lenient {
                warn_unused_build_args(&session, opts);
            }
            let (program, packages) = lowered?;
            Ok(Compiled {
                program,
                packages,
                findings: session.findings,
                saving: None,
                traced: None,
            })
        }
        Source::Labels {
            root,
            cwd,
            labels,
            params,
            notes,
            eval_cache,
            trace,
        } => {
            let mut session = Session::new(Some(root.to_path_buf()));
            session.trace = trace;
            if let Some(path) = eval_cache {
                session = session.with_cache(path);
            }
            let selected = monorepo::expand_labels(&mut session, cwd, labels);
            let lowered = selected
                .and_then(|s| load::lower_targets(&mut session, &s, &build_options(params)));
            let saving = session.save_cache();
            if std::env::var_os("KILN_EVAL_STATS").is_some() {
                let (replayed, evaluated) = session.stats;
                progress::stderr(&format!(
                    "evaluation: {replayed} units replayed from the cache, {evaluated} evaluated\n"
                ));
            }
            notes.append(&mut session.notes);
            unknown_params(&session, params, opts)?;
            if !opts.lenient {
                warn_unused_build_args(&session, opts);
            }
            let mut lowered = lowered?;
            let traced = trace.then(|| {
                Box::new(Traced {
                    trace: std::mem::take(&mut lowered.trace),
                    modules: session.module_files(),
                    walked: std::mem::take(&mut session.walked),
                    stats: session.stats,
                    notes: notes.len() + session.findings.len(),
                })
            });
            Ok(Compiled {
                program: lowered.program,
                packages: lowered.contexts,
                findings: session.findings,
                saving: Some(saving),
                traced,
            })
        }
    }
}

/// Refuses a `--param` no loaded module declares (a misspelt one would otherwise pass silently, and
/// the param meant keep its default). Checked even when lowering failed: a required param reported
/// missing is often the one misspelt.
fn unknown_params(
    session: &load::Session,
    params: &std::collections::BTreeMap<String, String>,
    opts: &frontend::LowerOptions,
) -> diag::Result<()> {
    let declared: std::collections::BTreeSet<&str> = session
        .modules
        .iter()
        .filter(|m| !m.path.starts_with("@std"))
        .flat_map(|m| &m.summary.params)
        .map(String::as_str)
        .collect();
    let Some(name) = params.keys().find(|k| !declared.contains(k.as_str())) else {
        return Ok(());
    };
    let d = diag::Diagnostic::input(format!("no module declares a param `{name}`"));
    let d = match opts.params_at.get(name) {
        Some(at) => d.label(at.clone(), "given here"),
        None => d,
    };
    Err(match diag::suggest(name, declared.iter().copied()) {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None if declared.is_empty() => d.help("the program declares no params"),
        None => d.help(format!(
            "the program's params are {}",
            declared
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    })
}

/// docker's warning for a `--build-arg` a `.build` program never reads: one that names no param of a
/// loaded module and is no quoted key in one (as `.arg({"NAME": ...})` writes it). Generous on purpose:
/// a name in quotes anywhere counts as read, so the warning is never wrong, only sometimes missing.
fn warn_unused_build_args(session: &load::Session, opts: &frontend::LowerOptions) {
    let modules: Vec<_> = session
        .modules
        .iter()
        .filter(|m| !m.path.starts_with("@std"))
        .collect();
    let unused: Vec<&str> = opts
        .build_args
        .keys()
        .map(String::as_str)
        .filter(|k| {
            !modules.iter().any(|m| {
                m.summary.params.iter().any(|p| p == k) || m.file.text.contains(&format!("\"{k}\""))
            })
        })
        .filter(|k| !frontend::image::predefined_arg(k))
        .collect();
    if !unused.is_empty() {
        progress::stderr(&format!(
            "[Warning] One or more build-args [{}] were not consumed\n",
            unused.join(" ")
        ));
    }
}

/// The build graph of a program, as `kiln graph` shows it: nodes deduplicated by definition digest,
/// one root per target.
pub fn plan(program: &graph::Program) -> graph::Dag {
    graph::Dag::new(program)
}

/// `plan`, taking the program (its ops move into the graph).
pub fn plan_owned(program: graph::Program) -> graph::Dag {
    graph::Dag::from_program(program)
}
