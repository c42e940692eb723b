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
    /// Pin every registry base image (per platform) to its manifest digest in `kiln.lock`, for
    /// `kiln build --locked`.
    Lock(LockArgs),
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
        /// Sign the pushed image as cosign does (`key=PATH`: a cosign.key, with its password in
        /// COSIGN_PASSWORD, or a PEM EC P-256 private key).
        #[arg(long = "sign", value_name = "key=PATH")]
        sign: Option<String>,
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
    /// The platform to build for, as buildx spells it: `linux/arm64`, `linux/arm/v7`, `arm64`
    /// (default: linux/amd64). Steps for a foreign architecture run under binfmt_misc emulation.
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]")]
    pub(super) platforms: Vec<String>,
}

#[derive(Args)]
pub(super) struct LockArgs {
    #[command(flatten)]
    pub(super) compile: CompileArgs,
    /// Resolve the inputs again (only the base image NAME, as the build writes it, when given) instead
    /// of keeping what the lock holds.
    #[arg(long, value_name = "NAME", num_args = 0..=1)]
    pub(super) update: Option<Option<String>>,
    /// Talk plain HTTP to this registry (`HOST` or `HOST:PORT`); loopback registries always get it.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub(super) insecure_registries: Vec<String>,
    #[command(flatten)]
    pub(super) mirrors: MirrorArgs,
    /// A secret, as `kiln build` takes it: the `GIT_AUTH_TOKEN`/`GIT_AUTH_HEADER` secrets (also
    /// `.<host>`-scoped) log in to private git repositories whose refs are locked.
    #[arg(long = "secret", value_name = "id=ID,src=PATH")]
    pub(super) secrets: Vec<String>,
    /// An SSH agent, as `kiln build` takes it: `default` logs in to `ssh://` and `git@host:` repositories
    /// whose refs are locked.
    #[arg(long = "ssh", value_name = "default|ID=SOCKET|ID=KEYFILE")]
    pub(super) ssh: Vec<String>,
}

/// Registry mirrors, for every command that pulls or resolves images.
#[derive(Args, Clone, Default)]
pub(super) struct MirrorArgs {
    /// Pull REGISTRY's images from this mirror first (buildkitd's `[registry."docker.io"] mirrors`):
    /// `docker.io=mirror.internal:5000`. Repeatable; mirrors are asked in order, then the registry.
    /// Images keep their names; what a mirror serves is checked against the same digests.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=HOST[:PORT]")]
    pub(super) mirrors: Vec<String>,
    /// Never ask a registry that has mirrors (here or in registries.toml) itself: a pull its mirrors
    /// cannot serve fails.
    #[arg(long = "registry-mirror-only")]
    pub(super) mirror_only: bool,
}

#[derive(Args)]
pub(super) struct BuildCmd {
    #[command(flatten)]
    pub(super) compile: CompileArgs,
    #[command(flatten)]
    pub(super) buildx: super::buildx::BuildxArgs,
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
    /// Attach an attestation to the image, as buildx: `type=sbom` (SPDX) or
    /// `type=provenance[,mode=min|max][,builder-id=URI]` (SLSA v1); `disabled=true` turns one off.
    #[arg(long = "attest", value_name = "type=sbom|provenance[,...]")]
    pub(super) attest: Vec<String>,
    /// Shorthand for `--attest type=sbom`: `true`, `false`, or that attestation's keys.
    #[arg(long = "sbom", value_name = "true|false")]
    pub(super) sbom: Option<String>,
    /// Shorthand for `--attest type=provenance`: `true`, `false`, or that attestation's keys
    /// (`mode=max`).
    #[arg(long = "provenance", value_name = "true|false|mode=min|max")]
    pub(super) provenance: Option<String>,
    /// Sign every pushed image as cosign does, for cosign and skopeo's `sigstoreSigned` policy
    /// (`key=PATH`: a cosign.key, with its password in COSIGN_PASSWORD, or a PEM EC P-256 private key).
    #[arg(long = "sign", value_name = "key=PATH")]
    pub(super) sign: Option<String>,
    /// Allow steps an entitlement: `network.host` (`RUN --network=host`) or `security.insecure`
    /// (`RUN --security=insecure`, no sandbox). Repeatable; also comma-separated.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub(super) allow: Vec<String>,
    /// Talk plain HTTP to this registry (`HOST` or `HOST:PORT`); loopback registries always get it.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub(super) insecure_registries: Vec<String>,
    #[command(flatten)]
    pub(super) mirrors: MirrorArgs,
    /// Build only with the base images `kiln.lock` (in the context directory) pins: one it lacks, or
    /// whose tag now names another image, is an error (see `kiln lock`).
    #[arg(long)]
    pub(super) locked: bool,
    /// `--locked`, every step without network (`--network none`; `--allow network.host` refused) and
    /// SOURCE_DATE_EPOCH 0 unless set: the image is a function of its locked inputs.
    #[arg(long)]
    pub(super) hermetic: bool,
    /// How image layers are compressed.
    #[arg(long, value_enum, default_value = "gzip")]
    pub(super) compression: CompressionArg,
    /// Export the build cache: `type=registry,ref=HOST/REPO:TAG[,mode=min|max]` or
    /// `type=local,dest=DIR[,mode=min|max]` (an OCI layout directory). `mode=min` (the default) keeps the
    /// records of the exported image's own steps, `mode=max` those of every stage. `cache-mounts=true`
    /// also exports the contents of every cache mount the build uses (`export=true` on a mount: that one).
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
    /// How many steps may run at once [default: the number of cores, at least 4].
    #[arg(long)]
    pub(super) jobs: Option<usize>,
    /// The store directory (default: $KILN_STORE, else $XDG_CACHE_HOME/kiln or ~/.cache/kiln).
    #[arg(long)]
    pub(super) store: Option<PathBuf>,
    /// Run RUN steps on a REAPI server's workers (`grpc://HOST:PORT`, or `grpcs://` for TLS), answering them from its
    /// ActionCache first. Steps that mount a secret or an SSH agent (unless `--remote-secrets=allow`) or
    /// anything else run here.
    #[arg(long, value_name = "URL", conflicts_with = "remote_cache")]
    pub(super) remote_executor: Option<String>,
    /// Use a REAPI server (`grpc://HOST:PORT`, or `grpcs://` for TLS) as a shared cache only: hits come from its ActionCache,
    /// misses run here and are uploaded.
    #[arg(long, value_name = "URL")]
    pub(super) remote_cache: Option<String>,
    /// The REAPI instance name on the remote server.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub(super) remote_instance_name: String,
    #[command(flatten)]
    pub(super) remote_auth: RemoteAuthArgs,
    /// Whether a RUN step that mounts secrets or SSH agents (and nothing else) may run on a remote
    /// worker: `deny` (it runs here) or `allow` (the worker that leased it receives the values from this
    /// build over mutual TLS, never through the REAPI server, and its agent requests are relayed back to
    /// this build's agent over the same channel). `allow` needs `--remote-executor` and
    /// `--remote-tls-ca/--remote-tls-cert/--remote-tls-key`.
    #[arg(long, value_enum, value_name = "allow|deny", default_value = "deny")]
    pub(super) remote_secrets: RemoteSecrets,
    /// With `--remote-secrets=allow`: where this build serves its remote steps' secrets (`HOST:PORT`,
    /// an address the workers reach; port 0 picks a free one). Default `127.0.0.1:0`.
    #[arg(long, value_name = "HOST:PORT")]
    pub(super) remote_secrets_listen: Option<String>,
    /// The most a remote step may take, queueing and retries included (`90s`, `5m`, `1h`); its remote
    /// operation is cancelled when it is up. Default: no limit.
    #[arg(long, value_name = "DURATION")]
    pub(super) remote_timeout: Option<String>,
    /// `false`: take no result from the remote ActionCache and have the worker run each remote step
    /// again (`--no-cache` implies it).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub(super) remote_accept_cached: Option<bool>,
    /// When a RUN step fails: `fail`, or `shell` to open /bin/sh on this terminal in the step's sandbox,
    /// over the files it left (buildx: `debug --on=error`); the build fails when the shell exits.
    #[arg(long = "on-error", value_enum, default_value = "fail")]
    pub(super) on_error: OnError,
    /// With `--on-error=shell`: mount the failed step's secrets and SSH agents in the shell too.
    #[arg(long)]
    pub(super) debug_secrets: bool,
    /// After the build, rebuild whenever a file it selects changes (sources, `.dockerignore`, the
    /// context files its steps read), until Ctrl-C.
    #[arg(long)]
    pub(super) watch: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum RemoteSecrets {
    Deny,
    Allow,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum OnError {
    Fail,
    Shell,
}

#[derive(Args)]
pub(super) struct WorkerArgs {
    /// The REAPI server whose Bots service leases the work: `grpc://HOST:PORT`, or `grpcs://` for TLS.
    #[arg(long, value_name = "URL")]
    pub(super) server: String,
    /// The REAPI instance name.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub(super) instance: String,
    /// Where to keep unpacked inputs and step directories (default: a temporary directory).
    #[arg(long, value_name = "DIR")]
    pub(super) work_dir: Option<PathBuf>,
    /// How many leased steps to run at once.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(super) concurrency: u32,
    /// Keep the unpacked input snapshots under this size (`500MB`, `10GB`), pruning the least
    /// recently used after each job (never one a running step uses); default: no bound.
    #[arg(long, value_name = "SIZE")]
    pub(super) max_cache_size: Option<String>,
    /// With `grpcs://`: the CA certificate (PEM) the server's certificate is checked against (default:
    /// the system's roots). With `--tls-cert` and `--tls-key`, also the CA that must have signed a
    /// build's secret endpoint: the identity this worker receives secrets with, over mutual TLS (without
    /// all three it refuses steps that mount secrets).
    #[arg(long, value_name = "PATH")]
    pub(super) tls_ca: Option<PathBuf>,
    /// With `grpcs://`: this worker's client certificate (PEM), for a server that requires mutual TLS.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub(super) tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub(super) tls_key: Option<PathBuf>,
    /// A header sent on every call, `NAME=VALUE` (for example `authorization=Bearer TOKEN`); repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    pub(super) header: Vec<String>,
    /// A credential helper (Bazel's protocol: run with `get`, `{"uri": ...}` on stdin, headers as JSON
    /// on stdout) whose headers are sent on every call.
    #[arg(long, value_name = "PATH")]
    pub(super) credential_helper: Option<PathBuf>,
}

/// How `kiln build` authenticates to and encrypts its link with a REAPI server.
#[derive(Args)]
pub(super) struct RemoteAuthArgs {
    /// With a `grpcs://` remote: the CA certificate (PEM) the server's certificate is checked against
    /// (default: the system's roots). With `--remote-secrets=allow`, also the CA that must have signed
    /// a worker's certificate.
    #[arg(long, value_name = "PATH")]
    pub(super) remote_tls_ca: Option<PathBuf>,
    /// With a `grpcs://` remote: a client certificate (PEM), for a server that requires mutual TLS.
    /// With `--remote-secrets=allow`, also the certificate workers check the secret endpoint against.
    #[arg(long, value_name = "PATH", requires = "remote_tls_key")]
    pub(super) remote_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--remote-tls-cert`.
    #[arg(long, value_name = "PATH", requires = "remote_tls_cert")]
    pub(super) remote_tls_key: Option<PathBuf>,
    /// A header sent on every remote call, `NAME=VALUE` (for example `authorization=Bearer TOKEN`);
    /// repeatable. Its value is never shown.
    #[arg(long, value_name = "NAME=VALUE")]
    pub(super) remote_header: Vec<String>,
    /// A credential helper for the remote (Bazel's protocol: run with `get`, `{"uri": ...}` on stdin,
    /// headers as JSON on stdout) whose headers are sent on every call.
    #[arg(long, value_name = "PATH")]
    pub(super) remote_credential_helper: Option<PathBuf>,
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

/// Counted when a build needs it, not for every command line parsed (it reads cgroup files).
pub(super) fn default_jobs() -> usize {
    crate::layer::cores(0).max(4)
}
