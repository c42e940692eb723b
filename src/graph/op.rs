//! The operations every front end lowers to: what a graph node does, with its parameters, and their
//! canonical encoding (the part of a node digest that is not its inputs).

use serde::{Deserialize, Serialize};

use crate::digest::Encoder;

/// The domain of every definition digest. Bump when the meaning of an encoded field changes: every
/// definition digest changes with it.
pub const DEF_DOMAIN: &str = "kiln/def/v1";

/// What a node does. Inputs are not part of the op: the graph keeps them as ordered edges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Op {
    /// The empty filesystem. No inputs.
    Scratch,
    /// A base image by reference, as written (`busybox:1.36`, `oci-layout://dir:tag`). No inputs.
    /// Compiling never resolves it; building pins it to a manifest digest.
    Image {
        reference: String,
        /// The platform whose entry of an image index is taken (`None`: linux/amd64).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        platform: Option<String>,
    },
    /// A local directory given to the build (`context` for the main one, or a `--build-context` name).
    /// Its contents are never read at compile time; only the files a step selects enter that step's key.
    Context {
        name: String,
        /// `.dockerignore` patterns (cleaned, in file order): which files the context offers at all.
        excludes: Vec<String>,
    },
    /// A file or git repository fetched from the network (`ADD URL`), pinned by `checksum` when given.
    /// No inputs. Compiling never fetches it.
    Remote {
        /// Shown redacted wherever the op is serialized (`kiln graph --format json`): it may carry a token.
        #[serde(serialize_with = "serialize_redacted")]
        url: String,
        checksum: Option<String>,
        keep_git_dir: bool,
    },
    /// Files written in the build definition itself (a `COPY <<EOF` heredoc): name → content. No inputs.
    Inline { files: Vec<(String, String)> },
    /// A command over the rootfs input. Inputs: `[rootfs]`.
    Run(RunOp),
    /// Copy paths from a source into the rootfs. Inputs: `[rootfs, source]`.
    Copy(CopyOp),
    /// Create a directory (WORKDIR) and its missing parents, owned by `user` (the `USER` in effect,
    /// resolved in the rootfs as a `--chown` is) when there is one. Inputs: `[rootfs]`.
    Mkdir { path: String, user: Option<String> },
    /// The finished image of a stage: its rootfs plus image config. Inputs: `[rootfs]`.
    Config(Box<ConfigOp>),
}

fn serialize_redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::remote::redacted(url))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    Default,
    None,
    Host,
}

impl Network {
    pub fn parse(s: &str) -> Option<Network> {
        match s {
            "default" => Some(Network::Default),
            "none" => Some(Network::None),
            "host" => Some(Network::Host),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Default => "default",
            Network::None => "none",
            Network::Host => "host",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOp {
    pub args: Vec<String>,
    /// Variables set on top of the base image's environment (ENV, then build args in scope).
    pub env: Vec<(String, String)>,
    /// `None`: the base image's working directory.
    pub cwd: Option<String>,
    /// `None`: the base image's user.
    pub user: Option<String>,
    pub network: Network,
    /// `--security=insecure` asks for a privileged step; kiln refuses it when building.
    #[serde(default)]
    pub insecure: bool,
    pub secrets: Vec<SecretMount>,
    /// Cache, bind and tmpfs mounts, in the order written.
    pub mounts: Vec<RunMount>,
    /// The platform the command runs as (`None`: linux/amd64); a foreign one runs under emulation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

/// `RUN --mount` kinds other than secrets. `input` fields index the Run node's inputs (0 is the rootfs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunMount {
    /// A directory kept in the store across builds; its contents never enter a cache key.
    Cache {
        target: String,
        id: String,
        sharing: Sharing,
        mode: u32,
        uid: u32,
        gid: u32,
        readonly: bool,
        /// `from=`/`source=`: what a new cache starts with (BuildKit keeps one cache per id and seed).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<CacheSeed>,
        /// `export=true`: `--cache-to` carries its contents (as `cache-mounts=true` does for every
        /// cache mount). Not in the definition: it changes what leaves the machine, not what the step does.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        export: bool,
    },
    /// A path of another filesystem (a stage, an image or a context); writes are discarded.
    Bind {
        target: String,
        input: usize,
        source: String,
        readwrite: bool,
    },
    Tmpfs {
        target: String,
        size: Option<u64>,
    },
    /// An SSH agent socket (`--ssh ID=...`); only the socket enters the step, never a key.
    /// `target: None` means BuildKit's default, `/run/buildkit/ssh_agent.N`.
    Ssh {
        id: String,
        target: Option<String>,
        required: bool,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// A cache mount's seed: the directory `source` of the Run node's input `input`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSeed {
    pub input: usize,
    pub source: String,
}

impl RunMount {
    pub fn target(&self) -> &str {
        match self {
            RunMount::Cache { target, .. }
            | RunMount::Bind { target, .. }
            | RunMount::Tmpfs { target, .. } => target,
            RunMount::Ssh { target, .. } => target.as_deref().unwrap_or("/run/buildkit/ssh_agent"),
        }
    }
}

/// How concurrent steps share a cache mount (BuildKit's `sharing=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    /// Everyone uses the same directory at once.
    Shared,
    /// A step that finds the cache in use gets a directory of its own.
    Private,
    /// Steps take turns.
    Locked,
}

impl Sharing {
    pub fn parse(s: &str) -> Option<Sharing> {
        match s {
            "shared" => Some(Sharing::Shared),
            "private" => Some(Sharing::Private),
            "locked" => Some(Sharing::Locked),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Sharing::Shared => "shared",
            Sharing::Private => "private",
            Sharing::Locked => "locked",
        }
    }
}

/// How a secret is mounted: everything about it except its value, which never enters a digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMount {
    pub id: String,
    /// A file at this path (`None` when only `env` was asked for).
    pub target: Option<String>,
    pub env: Option<String>,
    pub required: bool,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOp {
    /// Paths (wildcards allowed) relative to the source's root.
    pub sources: Vec<String>,
    /// Absolute destination; a trailing `/` means "into this directory".
    pub dest: String,
    /// `user[:group]` as written (names are resolved in the destination's /etc/passwd at build time).
    pub chown: Option<String>,
    pub chmod: Option<u32>,
    /// ADD: a local tar archive (plain or gzip) is unpacked into the destination instead of copied.
    #[serde(default)]
    pub extract: bool,
    /// `--exclude`: patterns (`.dockerignore` rules, relative to the source root) left out of the copy.
    #[serde(default)]
    pub excludes: Vec<String>,
    /// `--parents`: keep each source's path (below a `/./` pivot, if any) under the destination.
    #[serde(default)]
    pub parents: bool,
    /// Heredoc files (name, content) written into the destination directory after the sources, when a
    /// COPY mixes them with files of its source (one layer, as in BuildKit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<(String, String)>,
}

/// The image config a stage sets on top of its base image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigOp {
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub cmd: Inherit<Vec<String>>,
    pub entrypoint: Inherit<Vec<String>>,
    pub labels: Vec<(String, String)>,
    /// `EXPOSE`: `port/proto` keys added to the base image's.
    pub exposed: Vec<String>,
    pub volumes: Vec<String>,
    pub stop_signal: Option<String>,
    pub healthcheck: Inherit<Healthcheck>,
    /// `SHELL`: the default shell recorded in the config.
    pub shell: Option<Vec<String>>,
    /// `ONBUILD` triggers, as written.
    pub onbuild: Vec<String>,
    /// The base image's `OnBuild` triggers as they were when compiling, which the stage ran first: the
    /// build checks that the image it imports has these and no others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base_onbuild: Vec<String>,
    /// `MAINTAINER`: the config's `author`.
    pub author: Option<String>,
    /// One entry per instruction after FROM, in order; `layer` says whether it made a filesystem node.
    pub history: Vec<HistoryEntry>,
    /// A CMD was set here or in a parent stage: BuildKit then marks the config with Docker's
    /// `ArgsEscaped`, which stays even when a later ENTRYPOINT drops the CMD.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_escaped: bool,
    /// The stage's platform (`None`: linux/amd64): the config's `os`, `architecture` and `variant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl ConfigOp {
    /// The config op's part of [`Op::encode`].
    fn encode(&self, e: &mut Encoder) {
        let c = self;
        e.pairs(&c.env)
            .opt_str(c.cwd.as_deref())
            .opt_str(c.user.as_deref());
        for field in [&c.cmd, &c.entrypoint] {
            match field {
                Inherit::Base => e.str("base"),
                Inherit::Clear => e.str("clear"),
                Inherit::Set(v) => e.str("set").strs(v),
            };
        }
        e.pairs(&c.labels).strs(&c.exposed).strs(&c.volumes);
        e.opt_str(c.stop_signal.as_deref());
        match &c.healthcheck {
            Inherit::Base => e.str("base"),
            Inherit::Clear => e.str("clear"),
            Inherit::Set(h) => e
                .str("set")
                .strs(&h.test)
                .u64(h.interval)
                .u64(h.timeout)
                .u64(h.start_period)
                .u64(h.start_interval)
                .u64(h.retries),
        };
        match &c.shell {
            Some(s) => e.bool(true).strs(s),
            None => e.bool(false),
        };
        e.strs(&c.onbuild).opt_str(c.author.as_deref());
        e.list(c.history.len());
        for h in &c.history {
            e.str(&h.created_by).bool(h.layer);
        }
        // Only a stage on a base image with triggers has them, which keeps every earlier digest.
        if !c.base_onbuild.is_empty() {
            e.str("base-onbuild").strs(&c.base_onbuild);
        }
        // Only configs that set a CMD have it, which keeps every other digest.
        if c.args_escaped {
            e.str("args_escaped");
        }
        // Only a stage for another platform than linux/amd64 says so, which keeps every earlier digest.
        if let Some(p) = &c.platform {
            e.str("platform").str(p);
        }
    }
}

/// `HEALTHCHECK CMD ...`: the OCI/Docker `Healthcheck` config. Durations in nanoseconds, 0 = default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// `["CMD", args...]`, `["CMD-SHELL", command]` or `["NONE"]`.
    pub test: Vec<String>,
    pub interval: u64,
    pub timeout: u64,
    pub start_period: u64,
    pub start_interval: u64,
    pub retries: u64,
}

/// A config field that is either taken from the base image, cleared, or set by this stage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inherit<T> {
    #[default]
    Base,
    Clear,
    Set(T),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub created_by: String,
    pub layer: bool,
}

impl Op {
    /// The short name shown in graph listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Scratch => "scratch",
            Op::Image { .. } => "image",
            Op::Context { .. } => "context",
            Op::Inline { .. } => "inline",
            Op::Remote { .. } => "remote",
            Op::Run(_) => "run",
            Op::Copy(_) => "copy",
            Op::Mkdir { .. } => "mkdir",
            Op::Config(_) => "config",
        }
    }

    /// Feeds the op's parameters into a canonical encoder. Adding a field means adding it here, in order;
    /// changing the meaning of an existing one means bumping `DEF_DOMAIN`.
    pub fn encode(&self, e: &mut Encoder) {
        e.str(self.kind());
        match self {
            Op::Scratch => {}
            Op::Image {
                reference,
                platform,
            } => {
                e.str(reference);
                // Only another platform than linux/amd64 says so, which keeps every earlier digest.
                if let Some(p) = platform {
                    e.str("platform").str(p);
                }
            }
            Op::Context { name, excludes } => {
                e.str(name).strs(excludes);
            }
            Op::Inline { files } => {
                e.pairs(files);
            }
            Op::Remote {
                url,
                checksum,
                keep_git_dir,
            } => {
                e.str(&super::remote::keyed(url))
                    .opt_str(checksum.as_deref())
                    .bool(*keep_git_dir);
            }
            Op::Run(r) => {
                e.strs(&r.args).pairs(&r.env);
                e.opt_str(r.cwd.as_deref()).opt_str(r.user.as_deref());
                e.str(r.network.as_str()).bool(r.insecure);
                e.list(r.secrets.len());
                for s in &r.secrets {
                    e.str(&s.id)
                        .opt_str(s.target.as_deref())
                        .opt_str(s.env.as_deref())
                        .bool(s.required)
                        .u64(s.mode.into())
                        .u64(s.uid.into())
                        .u64(s.gid.into());
                }
                e.list(r.mounts.len());
                for m in &r.mounts {
                    match m {
                        RunMount::Cache {
                            target,
                            id,
                            sharing,
                            mode,
                            uid,
                            gid,
                            readonly,
                            seed,
                            ..
                        } => {
                            e.str("cache").str(target).str(id).str(sharing.as_str());
                            e.u64((*mode).into())
                                .u64((*uid).into())
                                .u64((*gid).into())
                                .bool(*readonly);
                            // Only seeded caches say so, which keeps every earlier digest.
                            if let Some(s) = seed {
                                e.str("seed").u64(s.input as u64).str(&s.source);
                            }
                        }
                        RunMount::Bind {
                            target,
                            input,
                            source,
                            readwrite,
                        } => {
                            e.str("bind")
                                .str(target)
                                .u64(*input as u64)
                                .str(source)
                                .bool(*readwrite);
                        }
                        RunMount::Tmpfs { target, size } => {
                            e.str("tmpfs").str(target).u64(size.unwrap_or(0));
                        }
                        RunMount::Ssh {
                            id,
                            target,
                            required,
                            mode,
                            uid,
                            gid,
                        } => {
                            e.str("ssh")
                                .str(id)
                                .opt_str(target.as_deref())
                                .bool(*required);
                            e.u64((*mode).into()).u64((*uid).into()).u64((*gid).into());
                        }
                    };
                }
                if let Some(p) = &r.platform {
                    e.str("platform").str(p);
                }
            }
            Op::Copy(c) => {
                e.strs(&c.sources)
                    .str(&c.dest)
                    .opt_str(c.chown.as_deref())
                    .bool(c.extract)
                    .strs(&c.excludes)
                    .bool(c.parents);
                match c.chmod {
                    Some(m) => e.bool(true).u64(m.into()),
                    None => e.bool(false),
                };
                // Only a COPY mixing heredocs and files has them, which keeps every earlier digest.
                if !c.files.is_empty() {
                    e.str("files").pairs(&c.files);
                }
            }
            Op::Mkdir { path, user } => {
                e.str(path).opt_str(user.as_deref());
            }
            Op::Config(c) => c.encode(e),
        }
    }

    /// Whether the node produces a filesystem layer of its own when it runs.
    pub fn makes_layer(&self) -> bool {
        matches!(self, Op::Run(_) | Op::Copy(_) | Op::Mkdir { .. })
    }
}
