//! What image-state operations mean, the same in both front ends: BuildKit's variable scoping (ENV, the
//! base image's ENV, ARG), the environment a RUN sees, and the history text, exposed ports and durations
//! an instruction (or the `.build` method of the same name) records. Sharing them is what lets a
//! Dockerfile and its `kiln convert` output compile to the same root digest.

use crate::graph::NodeId;
use crate::graph::op::{ConfigOp, Healthcheck, HistoryEntry, Inherit};

/// An image under construction: the state a Dockerfile stage and a `.build` `Image` value both carry.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ImageState {
    pub(crate) fs: NodeId,
    /// ENV set so far (or inherited from a parent stage), in order of first setting.
    pub(crate) env: Vec<(String, String)>,
    /// The base image's environment, when it could be resolved: what `$VAR` falls back to after ENV.
    pub(crate) base_env: Vec<(String, String)>,
    /// The base image's WorkingDir, when it could be resolved: what a relative path is under until a
    /// WORKDIR. Not written to the config, which inherits it anyway.
    pub(crate) base_cwd: Option<String>,
    /// ARGs declared so far: name → value (None: declared without any value).
    pub(crate) args: Vec<(String, Option<String>)>,
    /// The variables as BuildKit's build state holds them on top of the base image's: ENV and every ARG
    /// with a value write here, the later write winning. So `ENV D=a` then `ARG D` with `--build-arg
    /// D=b` makes `$D` and a RUN's `D` `b`, while the image config keeps `D=a` (`env`).
    pub(crate) vars: Vec<(String, String)>,
    /// The last WORKDIR's directory, clean: what RUN steps start in and relative paths are under.
    pub(crate) cwd: Option<String>,
    /// The last WORKDIR as the image config records it (see `workdir`).
    pub(crate) config_cwd: Option<String>,
    pub(crate) user: Option<String>,
    /// `SHELL` in effect for shell-form commands (`None`: `/bin/sh -c`).
    pub(crate) shell: Option<Vec<String>>,
    pub(crate) config: ConfigOp,
    /// Whether this stage itself set CMD (a parent stage's CMD does not count, as in BuildKit).
    pub(crate) cmd_set: bool,
    /// The platform its steps run as and its config names, as the graph records it (`None`:
    /// linux/amd64).
    pub(crate) platform: Option<String>,
}

impl ImageState {
    /// A fresh image on `fs`, with the base image's config when it is known.
    pub(crate) fn new(fs: NodeId, base: crate::frontend::BaseConfig) -> ImageState {
        ImageState {
            fs,
            env: Vec::new(),
            base_env: base.env,
            base_cwd: base.working_dir,
            args: Vec::new(),
            vars: Vec::new(),
            cwd: None,
            config_cwd: None,
            user: None,
            shell: None,
            config: ConfigOp::default(),
            cmd_set: false,
            platform: None,
        }
    }

    /// Makes the image one for `platform`: its steps run as it, its config names it.
    pub(crate) fn set_platform(&mut self, platform: &crate::platform::Platform) {
        self.platform = platform.in_graph();
        self.config.platform = self.platform.clone();
    }

    /// What `$name` means here: the build state's variables, then the base image's ENV.
    pub(crate) fn lookup(&self, name: &str) -> Option<String> {
        lookup(&self.vars, &self.base_env, name)
    }

    /// WORKDIR `requested` (already expanded): makes it the working directory and returns the value the
    /// config and history record. BuildKit (v0.8's `dispatchWorkdir` and today's `NormalizeWorkdir`
    /// alike) records an absolute path as written, so `WORKDIR /usr/src/` keeps its trailing slash in
    /// `WorkingDir`, and cleans only a relative one joined onto the current directory; the directory
    /// itself is the same either way.
    pub(crate) fn workdir(&mut self, requested: &str) -> String {
        let path = crate::frontend::join_path(self.dir(), requested);
        let recorded = if requested.starts_with('/') {
            requested.to_string()
        } else {
            path.clone()
        };
        self.cwd = Some(path);
        self.config_cwd = Some(recorded.clone());
        recorded
    }

    /// The working directory relative paths are under: the last WORKDIR, else the base image's.
    pub(crate) fn dir(&self) -> &str {
        self.cwd
            .as_deref()
            .or(self.base_cwd.as_deref())
            .unwrap_or("/")
    }

    /// Variables a RUN sees beyond the base image's env.
    pub(crate) fn run_env(&self) -> Vec<(String, String)> {
        self.vars.clone()
    }

    /// Each ARG with the value a RUN's history shows for it: what the variable holds now (an ENV set
    /// after the ARG wins), else the ARG's own value, as BuildKit's `runCommandString` does.
    pub(crate) fn arg_values(&self) -> Vec<(String, String)> {
        self.args
            .iter()
            .map(|(k, v)| {
                let now = self.lookup(k).or_else(|| v.clone()).unwrap_or_default();
                (k.clone(), now)
            })
            .collect()
    }

    /// `ENV k=v`: into the image config and the build state.
    pub(crate) fn set_env(&mut self, key: &str, value: &str) {
        set(&mut self.env, key, value);
        set(&mut self.vars, key, value);
    }

    /// `ARG k[=v]`: declared (a name declared again keeps its place, as in BuildKit's history); with a
    /// value it is a variable of the build state too, over an ENV of the same name.
    pub(crate) fn set_arg(&mut self, key: &str, value: Option<String>) {
        if let Some(v) = &value {
            set(&mut self.vars, key, v);
        }
        match self.args.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.args.push((key.to_string(), value)),
        }
    }

    /// A new stage on this image. As in BuildKit, it starts from the parent's build state, so an ARG
    /// value the parent set stays a variable (`$X` and a RUN's environment), but the image config's env
    /// (the base image's and the parent's ENV) is written over it again, so `ENV D=a` then `ARG D` with
    /// `--build-arg D=b` gives the child `a`. ARG declarations are per stage: a RUN's history lists only
    /// the ones this stage declares.
    pub(crate) fn begin_stage(&mut self) {
        self.args.clear();
        let base = &self.base_env;
        self.vars.retain(|(k, _)| !base.iter().any(|(b, _)| b == k));
        for (k, v) in &self.env {
            set(&mut self.vars, k, v);
        }
        self.cmd_set = false;
    }

    pub(crate) fn set_cmd(&mut self, argv: Vec<String>) {
        self.config.cmd = Inherit::Set(argv);
        self.config.args_escaped = true;
        self.cmd_set = true;
    }

    /// ENTRYPOINT drops a CMD unless this stage set one: one inherited from the base image or from a
    /// parent stage was written for another entrypoint.
    pub(crate) fn set_entrypoint(&mut self, argv: Vec<String>) {
        self.config.entrypoint = Inherit::Set(argv);
        if !self.cmd_set {
            self.config.cmd = Inherit::Clear;
        }
    }

    pub(crate) fn history(&mut self, created_by: String, layer: bool) {
        self.config.history.push(HistoryEntry { created_by, layer });
    }
}

/// What `$name` means: the build state's variables (ENV and ARG values, the later write winning), then
/// the base image's ENV.
pub fn lookup(
    vars: &[(String, String)],
    base_env: &[(String, String)],
    name: &str,
) -> Option<String> {
    vars.iter()
        .chain(base_env)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

pub fn set(list: &mut Vec<(String, String)>, key: &str, value: &str) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value.to_string(),
        None => list.push((key.to_string(), value.to_string())),
    }
}

/// BuildKit's automatic platform args (TARGETPLATFORM and friends) for linux/amd64: kiln builds for
/// linux/amd64 on linux/amd64.
pub fn builtin_arg(name: &str) -> Option<&'static str> {
    Some(match name {
        "TARGETPLATFORM" | "BUILDPLATFORM" => "linux/amd64",
        "TARGETOS" | "BUILDOS" => "linux",
        "TARGETARCH" | "BUILDARCH" => "amd64",
        "TARGETVARIANT" | "BUILDVARIANT" => "",
        _ => return None,
    })
}

/// BuildKit's automatic platform args for a build for `target` on `build`: `TARGETARCH` is the
/// platform asked for with `--platform`, whatever platform the stage reading it is for.
pub fn platform_arg(
    name: &str,
    target: &crate::platform::Platform,
    build: &crate::platform::Platform,
) -> Option<String> {
    let (p, field) = name
        .strip_prefix("TARGET")
        .map(|f| (target, f))
        .or_else(|| name.strip_prefix("BUILD").map(|f| (build, f)))?;
    Some(match field {
        "PLATFORM" => p.to_string(),
        "OS" => p.os.clone(),
        "ARCH" => p.arch.clone(),
        "VARIANT" => p.variant.clone(),
        _ => return None,
    })
}

/// Build args BuildKit knows without an ARG (proxies, platforms, its own `BUILDKIT_*` switches): a
/// `--build-arg` of one is never reported unused.
pub fn predefined_arg(name: &str) -> bool {
    const PROXIES: [&str; 5] = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "FTP_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    ];
    PROXIES.contains(&name.to_ascii_uppercase().as_str())
        || name.starts_with("BUILDKIT_")
        || name == "SOURCE_DATE_EPOCH"
        || builtin_arg(name).is_some()
}

/// `EXPOSE` words as config keys: `80` → `80/tcp`, `53/UDP` → `53/udp`, `8000-8002` → each port.
pub fn expose_ports(word: &str) -> Option<Vec<String>> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return None;
    }
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?),
        None => {
            let p = ports.parse::<u16>().ok()?;
            (p, p)
        }
    };
    (lo <= hi).then(|| (lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// A Go duration (`1h2m3s`, `1.5s`, `300ms`, `10us`, `0`) in nanoseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Some(total as u64)
}

pub fn json_list(args: &[String]) -> String {
    serde_json::to_string(args).unwrap_or_default()
}

// History entries are made from what an instruction means, never from how it was spelled, so that a
// `.build` file that means the same (`kiln convert`'s output) gives the same node digests.

/// `RUN |N K=V ... cmd # buildkit`, as BuildKit writes it, without the mount flags. A secret can never
/// appear here: secrets are not variables, and their values never reach lowering.
pub fn run_history(arg_values: &[(String, String)], args: &[String]) -> String {
    let mut created_by = String::from("RUN ");
    if !arg_values.is_empty() {
        created_by.push_str(&format!("|{} ", arg_values.len()));
        for (k, v) in arg_values {
            created_by.push_str(&format!("{k}={v} "));
        }
    }
    created_by.push_str(&args.join(" "));
    created_by.push_str(" # buildkit");
    created_by
}

/// `COPY src... dest # buildkit` (BuildKit leaves `--from` and the other flags out too).
pub fn copy_history(add: bool, sources: &[String], dest: &str) -> String {
    let what = if add { "ADD" } else { "COPY" };
    format!("{what} {} {dest} # buildkit", sources.join(" "))
}

/// `ARG K=V K2`: each declared name with the value it took.
pub fn arg_history(decls: &[(String, Option<String>)]) -> String {
    let shown: Vec<String> = decls
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .collect();
    format!("ARG {}", shown.join(" "))
}

pub fn healthcheck_history(h: &Healthcheck) -> String {
    match h.test.first().map(String::as_str) {
        Some("NONE") => "HEALTHCHECK NONE".to_string(),
        _ => format!("HEALTHCHECK {}", json_list(&h.test)),
    }
}
