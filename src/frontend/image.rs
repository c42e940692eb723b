//! What image-state operations mean, the same in both front ends: BuildKit's variable scoping (ENV, the
//! base image's ENV, ARG), the environment a RUN sees, and the history text, exposed ports and durations
//! an instruction (or the `.build` method of the same name) records. Sharing them is what lets a
//! Dockerfile and its `kiln convert` output compile to the same root digest.

use crate::graph::NodeId;
use crate::graph::op::{ConfigOp, Healthcheck, HistoryEntry};

/// An image under construction: the state a Dockerfile stage and a `.build` `Image` value both carry.
#[derive(Clone, Debug)]
pub(crate) struct ImageState {
    pub(crate) fs: NodeId,
    /// ENV set so far (or inherited from a parent stage), in order of first setting.
    pub(crate) env: Vec<(String, String)>,
    /// The base image's environment, when it could be resolved: what `$VAR` falls back to after ENV.
    pub(crate) base_env: Vec<(String, String)>,
    /// ARGs declared so far: name → value (None: declared without any value).
    pub(crate) args: Vec<(String, Option<String>)>,
    pub(crate) cwd: Option<String>,
    pub(crate) user: Option<String>,
    /// `SHELL` in effect for shell-form commands (`None`: `/bin/sh -c`).
    pub(crate) shell: Option<Vec<String>>,
    pub(crate) config: ConfigOp,
}

impl ImageState {
    /// A fresh image on `fs`, with the base image's environment when it is known.
    pub(crate) fn new(fs: NodeId, base_env: Vec<(String, String)>) -> ImageState {
        ImageState {
            fs,
            env: Vec::new(),
            base_env,
            args: Vec::new(),
            cwd: None,
            user: None,
            shell: None,
            config: ConfigOp::default(),
        }
    }

    pub(crate) fn lookup(&self, name: &str) -> Option<String> {
        lookup(&self.env, &self.base_env, &self.args, name)
    }

    pub(crate) fn run_env(&self) -> Vec<(String, String)> {
        run_env(&self.env, &self.args)
    }

    pub(crate) fn arg_values(&self) -> Vec<(String, String)> {
        arg_values(&self.env, &self.args)
    }

    pub(crate) fn history(&mut self, created_by: String, layer: bool) {
        self.config.history.push(HistoryEntry { created_by, layer });
    }
}

// BuildKit's variable scoping, shared by every front end (a `.build` image has the same state).

/// What `$name` means in a stage: its ENV (last setting wins), then the base image's ENV, then its ARGs.
pub fn lookup(
    env: &[(String, String)],
    base_env: &[(String, String)],
    args: &[(String, Option<String>)],
    name: &str,
) -> Option<String> {
    if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) {
        return Some(v.clone());
    }
    // The image's ENV is ENV too, and ENV wins over ARG.
    if let Some((_, v)) = base_env.iter().find(|(k, _)| k == name) {
        return Some(v.clone());
    }
    args.iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.clone())
}

/// Variables a RUN sees beyond the image env: ENV, then ARGs with a value that ENV does not shadow.
pub fn run_env(
    env: &[(String, String)],
    args: &[(String, Option<String>)],
) -> Vec<(String, String)> {
    let mut out = env.to_vec();
    for (k, v) in args {
        if let Some(v) = v
            && !out.iter().any(|(ek, _)| ek == k)
        {
            set(&mut out, k, v);
        }
    }
    out
}

/// Each ARG with the value a RUN's history shows for it (an ENV of the same name wins).
pub fn arg_values(
    env: &[(String, String)],
    args: &[(String, Option<String>)],
) -> Vec<(String, String)> {
    args.iter()
        .map(|(k, v)| {
            let value = env.iter().rev().find(|(ek, _)| ek == k).map(|(_, v)| v);
            (k.clone(), value.or(v.as_ref()).cloned().unwrap_or_default())
        })
        .collect()
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
