//! The image config of a finished stage: the base image's config with the stage's settings on top, its
//! history, and the times in it (from the records or `SOURCE_DATE_EPOCH`, never "now").

use std::sync::Arc;

use petgraph::stable_graph::NodeIndex;
use serde_json::{Value, json};

use crate::graph::op::{ConfigOp, Inherit};
use crate::store::CacheRecord;

pub(super) const DEFAULT_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An image's config, made when something first reads it: a build that exports nothing (`kiln build
/// //...` over a monorepo's 10,000 cached targets) never makes one, and that was a tenth of its time.
#[derive(Clone)]
pub struct ImageConfig {
    made: std::sync::OnceLock<Value>,
    recipe: Arc<Recipe>,
}

/// What an image's config is made of: its stage's filesystem record and its config node.
struct Recipe {
    rec: CacheRecord,
    graph: Arc<crate::graph::Dag>,
    node: NodeIndex,
    epoch: Option<i64>,
}

impl ImageConfig {
    /// The config of the image that config node `node` makes of the filesystem `rec`.
    pub(super) fn later(
        rec: CacheRecord,
        graph: Arc<crate::graph::Dag>,
        node: NodeIndex,
        epoch: Option<i64>,
    ) -> ImageConfig {
        ImageConfig {
            made: std::sync::OnceLock::new(),
            recipe: Arc::new(Recipe {
                rec,
                graph,
                node,
                epoch,
            }),
        }
    }

    pub fn get(&self) -> &Value {
        self.made.get_or_init(|| {
            let r = &self.recipe;
            let crate::graph::Op::Config(op) = &r.graph.dag[r.node].op else {
                unreachable!("an image's config comes from a config node")
            };
            image_config(&r.rec, op, r.epoch)
        })
    }

    pub fn get_mut(&mut self) -> &mut Value {
        self.get();
        self.made.get_mut().expect("made above")
    }
}

impl std::fmt::Debug for ImageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.made.get() {
            Some(config) => config.fmt(f),
            None => f.write_str("ImageConfig(not made yet)"),
        }
    }
}

/// The image config of a finished stage: the base image's config with the stage's settings on top, and the
/// base history followed by the stage's. `rootfs` is filled in by the exporter, which knows the diff ids.
///
/// Times come from the records (when each layer was built) or `SOURCE_DATE_EPOCH`, never from "now", so
/// the same cached result always gives the same config digest.
pub(super) fn image_config(rec: &CacheRecord, op: &ConfigOp, epoch: Option<i64>) -> Value {
    let base = &rec.base;
    let own = op.history.iter().filter(|h| h.layer).count();
    let first_own = rec.layers.len().saturating_sub(own);
    let layer_times: Vec<String> = (first_own..rec.layers.len())
        .map(|i| timestamp(epoch.or(rec.times.get(i).copied()).unwrap_or(0)))
        .collect();
    let base_created = match epoch {
        Some(e) => timestamp(e),
        None => base["created"]
            .as_str()
            .map_or_else(|| timestamp(0), String::from),
    };
    let mut created = layer_times.first().cloned().unwrap_or(base_created);
    let mut cfg = base["config"].as_object().cloned().unwrap_or_default();
    let mut env: Vec<String> = cfg
        .get("Env")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in &op.env {
        set_env(&mut env, k, v);
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    cfg.insert("Env".into(), json!(env));
    if let Some(cwd) = &op.cwd {
        cfg.insert("WorkingDir".into(), json!(cwd));
    }
    if let Some(user) = &op.user {
        cfg.insert("User".into(), json!(user));
    }
    for (field, value) in [("Cmd", &op.cmd), ("Entrypoint", &op.entrypoint)] {
        match value {
            Inherit::Base => {}
            Inherit::Clear => {
                cfg.remove(field);
            }
            Inherit::Set(v) => {
                cfg.insert(field.into(), json!(v));
            }
        }
    }
    // BuildKit marks every config whose stage (or a parent stage) set CMD, exec form or shell, on every
    // OS, with Docker's `ArgsEscaped`; a base image's mark is kept as it is.
    if op.args_escaped {
        cfg.insert("ArgsEscaped".into(), json!(true));
    }
    let mut add_keys = |field: &str, keys: &[String]| {
        if keys.is_empty() {
            return;
        }
        let mut set = cfg
            .get(field)
            .and_then(|v| v.as_object())
            .cloned()
            .unwrap_or_default();
        for k in keys {
            set.insert(k.clone(), json!({}));
        }
        cfg.insert(field.into(), Value::Object(set));
    };
    add_keys("ExposedPorts", &op.exposed);
    add_keys("Volumes", &op.volumes);
    if let Some(s) = &op.stop_signal {
        cfg.insert("StopSignal".into(), json!(s));
    }
    if let Some(s) = &op.shell {
        cfg.insert("Shell".into(), json!(s));
    }
    match &op.healthcheck {
        Inherit::Base => {}
        Inherit::Clear => {
            cfg.remove("Healthcheck");
        }
        Inherit::Set(h) => {
            let mut hc = serde_json::Map::new();
            hc.insert("Test".into(), json!(h.test));
            for (k, v) in [
                ("Interval", h.interval),
                ("Timeout", h.timeout),
                ("StartPeriod", h.start_period),
                ("StartInterval", h.start_interval),
                ("Retries", h.retries),
            ] {
                if v != 0 {
                    hc.insert(k.into(), json!(v));
                }
            }
            cfg.insert("Healthcheck".into(), Value::Object(hc));
        }
    }
    // A base image's triggers belong to the stage built FROM it, never to this image.
    cfg.remove("OnBuild");
    if !op.onbuild.is_empty() {
        cfg.insert("OnBuild".into(), json!(op.onbuild));
    }
    if !op.labels.is_empty() {
        let mut labels = cfg
            .get("Labels")
            .and_then(|l| l.as_object())
            .cloned()
            .unwrap_or_default();
        for (k, v) in &op.labels {
            labels.insert(k.clone(), json!(v));
        }
        cfg.insert("Labels".into(), Value::Object(labels));
    }
    let mut history: Vec<Value> = base["history"].as_array().cloned().unwrap_or_default();
    let mut next = 0;
    for h in &op.history {
        if h.layer {
            if let Some(t) = layer_times.get(next) {
                created = t.clone();
            }
            next += 1;
        }
        let mut entry = json!({"created": created, "created_by": h.created_by, "comment": "kiln"});
        if !h.layer {
            entry["empty_layer"] = json!(true);
        }
        history.push(entry);
    }
    let mut image = json!({
        "created": created,
        "architecture": base["architecture"].as_str().unwrap_or("amd64"),
        "os": base["os"].as_str().unwrap_or("linux"),
        "config": Value::Object(cfg),
        "history": history,
    });
    set_platform(&mut image, op, base);
    match (&op.author, base["author"].as_str()) {
        (Some(a), _) => image["author"] = json!(a),
        (None, Some(a)) => image["author"] = json!(a),
        (None, None) => {}
    }
    image
}

/// A stage for another platform than linux/amd64 names it (a scratch stage has no base to say so);
/// otherwise the config keeps the base image's, which the import checked is the platform built for.
fn set_platform(image: &mut Value, op: &ConfigOp, base: &Value) {
    let Some(p) = &op.platform else {
        if let Some(v) = base["variant"].as_str() {
            image["variant"] = json!(v);
        }
        return;
    };
    let p = crate::platform::Platform::from_graph(Some(p));
    image["architecture"] = json!(p.arch);
    image["os"] = json!(p.os);
    if !p.variant.is_empty() {
        image["variant"] = json!(p.variant);
    }
}

pub(super) fn set_env(env: &mut Vec<String>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match env
        .iter_mut()
        .find(|e| e.split_once('=').map(|(k, _)| k) == Some(key))
    {
        Some(e) => *e = entry,
        None => env.push(entry),
    }
}

/// RFC 3339 UTC time of Unix seconds.
fn timestamp(secs: i64) -> String {
    let t = jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
