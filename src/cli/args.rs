//! The command line's shape: clap's types for every subcommand and flag (spelling follows `docker build`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Build container images from Dockerfiles, without leaking secrets"
)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// Build a Dockerfile into an image.
    Build(Box<BuildCmd>),
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
    /// List the images kept in the store under a name (`kiln build -t NAME` without an output).
    Images(StoreArgs),
    /// Work with an image kept in the store: `rm`, `export`, `push`.
    Image(ImageArgs),
    /// Show how much space the store uses.
    Du(StoreArgs),
    /// Free space in the store: least recently used results first, never anything a build is using.
    Prune(PruneArgs),
    /// Run as a remote execution worker: take RUN steps leased by a REAPI server (Bots API) and run
    /// them in namespaces, like a local build does.
    Worker(WorkerArgs),
}

#[derive(Args)]
pub(super) struct FmtArgs {
    /// The files to format (directories: every `.build` file below them).
    #[arg(default_value = ".")]
    pub(super) paths: Vec<PathBuf>,
    /// Change nothing; exit 1 and list the files that are not formatted.
    #[arg(long)]
    pub(super) check: bool,
}

#[derive(Args)]
pub(super) struct ConvertArgs {
    /// The Dockerfile.
    #[arg(short = 'f', long = "file", default_value = "Dockerfile")]
    pub(super) file: PathBuf,
    /// Where to write the `.build` source (default: standard output).
    #[arg(short = 'o', long = "output")]
    pub(super) output: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum QueryKind {
    Deps,
    Rdeps,
}

#[derive(Args)]
pub(super) struct QueryArgs {
    pub(super) kind: QueryKind,
    /// Targets: `//path/pkg:target`, `//path/...`, `:target`.
    #[arg(required = true)]
    pub(super) labels: Vec<String>,
    /// Set a `.build` param: `NAME=VALUE`.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub(super) params: Vec<String>,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub(super) struct AffectedArgs {
    /// A git revision: targets whose inputs differ between it and the working tree.
    #[arg(long, value_name = "GITREV")]
    pub(super) since: Option<String>,
    /// Changed files: targets that read one of them.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub(super) files: Vec<PathBuf>,
}

#[derive(Args)]
pub(super) struct StoreArgs {
    /// The store directory (default: $KILN_STORE, else $XDG_CACHE_HOME/kiln or ~/.cache/kiln).
    #[arg(long)]
    pub(super) store: Option<PathBuf>,
}

#[derive(Args)]
pub(super) struct ImageArgs {
    #[command(subcommand)]
    pub(super) command: ImageCommand,
}

#[derive(Subcommand)]
pub(super) enum ImageCommand {
    /// Forget the names; their blobs go at the next `kiln prune` unless something else holds them.
    Rm {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Write a kept image: `-o type=oci,dest=PATH`, `-o type=docker,dest=FILE`, or `-o type=docker`
    /// (or `--load`) to load it into a Docker Engine.
    Export {
        name: String,
        #[arg(short = 'o', long = "output", value_name = "type=oci,dest=PATH")]
        outputs: Vec<String>,
        /// Load it into the Docker Engine of DOCKER_HOST (or the docker context), like `-o type=docker`.
        #[arg(long)]
        load: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Push a kept image to the registry its name (or NEWNAME) says.
    Push {
        name: String,
        new_name: Option<String>,
        /// Talk plain HTTP to this registry (`HOST` or `HOST:PORT`); loopback registries always get it.
        #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
        insecure_registries: Vec<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Args)]
pub(super) struct PruneArgs {
    #[command(flatten)]
    pub(super) store: StoreArgs,
    /// Keep at most this much (`500MB`, `10GB`), the most recently used; without it, everything is
    /// removed. (`--max-used-space` is docker's newer spelling.)
    #[arg(long, visible_alias = "max-used-space", value_name = "SIZE")]
    pub(super) keep_storage: Option<String>,
    /// Do not ask for confirmation (needed where there is no terminal to ask on).
    #[arg(short, long)]
    pub(super) force: bool,
    /// docker's spelling for pruning every record, not only unused ones: kiln's store has no
    /// unused-only mode, so `kiln prune` always considers all of it.
    #[arg(short, long)]
    pub(super) all: bool,
}

#[derive(Args)]
pub(super) struct CompileArgs {
    /// The build context directory, or monorepo labels (`//path/pkg:target`, `//path/...`, `//...`,
    /// `:target`).
    #[arg(value_name = "CONTEXT | LABEL...")]
    pub(super) inputs: Vec<String>,
    /// The Dockerfile or `.build` file (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub(super) file: Option<PathBuf>,
    /// The stage or target to build (default: the last one); for a `.build` file, a comma-separated list.
    #[arg(long)]
    pub(super) target: Option<String>,
    /// Set a `.build` param: `NAME=VALUE` (`--build-arg` sets params too).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub(super) params: Vec<String>,
    /// Set a build-time variable: `KEY=VALUE` (or `KEY` to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub(super) build_args: Vec<String>,
    /// Add a named context: `NAME=DIR` or `NAME=oci-layout://DIR[:TAG]`.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub(super) build_contexts: Vec<String>,
}

#[derive(Args)]
pub(super) struct BuildCmd {
    #[command(flatten)]
    pub(super) compile: CompileArgs,
    /// A secret for the build: `id=ID[,src=PATH|,env=VAR]` (also docker's `type=file|env`).
    #[arg(long = "secret", value_name = "id=ID,src=PATH")]
    pub(super) secrets: Vec<String>,
    /// Forward an SSH agent: `default` ($SSH_AUTH_SOCK) or `ID=SOCKET` (also `ID` alone for $SSH_AUTH_SOCK).
    #[arg(long = "ssh", value_name = "default|ID=SOCKET|ID=KEYFILE")]
    pub(super) ssh: Vec<String>,
    /// Where to write the result: `type=oci,dest=DIR` (a tar when DEST ends in `.tar`), `type=docker`,
    /// `type=local`, `type=tar` (`dest=-` or `-o -`: stdout), or `type=registry,name=HOST/NAME:TAG` to
    /// push it; `compression=`, `compression-level=`, `force-compression=` and `name=` as buildx takes them.
    #[arg(short = 'o', long = "output", value_name = "type=oci,dest=PATH")]
    pub(super) outputs: Vec<String>,
    /// A name for the image, recorded in the OCI layout's index (and pushed to with `--push`); without an
    /// output the image is kept in kiln's store under it (`kiln images`).
    #[arg(short = 't', long = "tag")]
    pub(super) tags: Vec<String>,
    /// Load the image into the Docker Engine of DOCKER_HOST (or the current docker context, else
    /// /var/run/docker.sock), or into podman's service; shorthand for `-o type=docker`.
    #[arg(long)]
    pub(super) load: bool,
    /// Push the image to the registry of every `-t` name (like `-o type=registry`).
    #[arg(long)]
    pub(super) push: bool,
    /// Allow steps an entitlement: `network.host` (`RUN --network=host`) or `security.insecure`
    /// (`RUN --security=insecure`, no sandbox). Repeatable; also comma-separated.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub(super) allow: Vec<String>,
    /// Talk plain HTTP to this registry (`HOST` or `HOST:PORT`); loopback registries always get it.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub(super) insecure_registries: Vec<String>,
    /// How image layers are compressed.
    #[arg(long, value_enum, default_value = "gzip")]
    pub(super) compression: CompressionArg,
    /// Export the build cache: `type=registry,ref=HOST/REPO:TAG[,mode=min|max]` or
    /// `type=local,dest=DIR[,mode=min|max]` (an OCI layout directory). `mode=min` (the default) keeps the
    /// records of the exported image's own steps, `mode=max` those of every stage.
    #[arg(long = "cache-to", value_name = "type=registry,ref=HOST/REPO:TAG")]
    pub(super) cache_to: Vec<String>,
    /// Import a build cache: `type=registry,ref=HOST/REPO:TAG` (or just `HOST/REPO:TAG`) or
    /// `type=local,src=DIR`. Repeatable; one that cannot be read is a warning, not an error.
    #[arg(long = "cache-from", value_name = "type=registry,ref=HOST/REPO:TAG")]
    pub(super) cache_from: Vec<String>,
    /// Do not use the cache; run every step.
    #[arg(long)]
    pub(super) no_cache: bool,
    /// Progress output: `auto` (a live view on a terminal, plain lines otherwise), `tty`, `plain`, `json`
    /// (one event per line) or `quiet`.
    #[arg(long, value_enum, default_value = "auto", overrides_with = "progress")]
    pub(super) progress: ProgressMode,
    /// How many steps may run at once.
    #[arg(long, default_value_t = default_jobs())]
    pub(super) jobs: usize,
    /// The store directory (default: $KILN_STORE, else $XDG_CACHE_HOME/kiln or ~/.cache/kiln).
    #[arg(long)]
    pub(super) store: Option<PathBuf>,
    /// Run RUN steps on a REAPI server's workers (`grpc://HOST:PORT`), answering them from its
    /// ActionCache first. Steps that mount a secret, an SSH agent or anything else run here.
    #[arg(long, value_name = "URL", conflicts_with = "remote_cache")]
    pub(super) remote_executor: Option<String>,
    /// Use a REAPI server (`grpc://HOST:PORT`) as a shared cache only: hits come from its ActionCache,
    /// misses run here and are uploaded.
    #[arg(long, value_name = "URL")]
    pub(super) remote_cache: Option<String>,
    /// The REAPI instance name on the remote server.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub(super) remote_instance_name: String,
}

#[derive(Args)]
pub(super) struct WorkerArgs {
    /// The REAPI server whose Bots service leases the work: `grpc://HOST:PORT`.
    #[arg(long, value_name = "URL")]
    pub(super) server: String,
    /// The REAPI instance name.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub(super) instance: String,
    /// Where to keep unpacked inputs and step directories (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub(super) work_dir: Option<PathBuf>,
}

#[derive(Args)]
pub(super) struct GraphArgs {
    #[command(flatten)]
    pub(super) compile: CompileArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub(super) format: GraphFormat,
    /// Print only the root digest(s), one `sha256:<hex>` per line.
    #[arg(long)]
    pub(super) digest: bool,
}

#[derive(Args)]
pub(super) struct CheckArgs {
    /// The build context directory (for `.dockerignore`).
    #[arg(default_value = ".")]
    pub(super) context: PathBuf,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub(super) file: Option<PathBuf>,
    /// Set a build-time variable: `KEY=VALUE` (or `KEY` to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub(super) build_args: Vec<String>,
    /// Check only the stages this stage needs (default: every stage).
    #[arg(long)]
    pub(super) target: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub(super) format: CheckFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum CheckFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum CompressionArg {
    Gzip,
    Zstd,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum ProgressMode {
    Auto,
    Tty,
    Plain,
    Json,
    Quiet,
}

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum GraphFormat {
    Text,
    Dot,
    Json,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .max(4)
}
