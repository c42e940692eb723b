//! Solving one node: its cache key's start, then by kind: the nodes that are not steps (scratch, inline
//! files, contexts, a stage's image with its config to be made) answer here; imported images and steps
//! go to their own files.

use std::sync::Arc;

use petgraph::stable_graph::NodeIndex;
use serde_json::json;
use tokio::sync::Semaphore;

use super::Executor;
use super::config::ImageConfig;
use super::context::{self, HostDir};
use super::schedule::{Output, Shared};
use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;
use crate::graph::{NamedContext, Op};
use crate::store::{CacheRecord, Store};

impl<E: Executor> Shared<E> {
    /// Solves one node. Returns its cache key, its output, and whether it ran (`Some(true)`), came from the
    /// store (`Some(false)`), or is not a step at all (`None`).
    pub(super) async fn node(
        self: &Arc<Self>,
        n: NodeIndex,
        inputs: Vec<(Digest, Output)>,
        jobs: Arc<Semaphore>,
    ) -> Result<(Digest, Output, Option<bool>)> {
        let node = &self.graph.dag[n];
        let mut key = super::key::node_key(&node.op, &inputs);
        if let Op::Run(r) = &node.op {
            self.opts.sandbox.key(r.network, &mut key);
        }
        match &node.op {
            Op::Scratch => {
                let key = key.finish();
                Ok((key.clone(), Output::Fs(scratch(key)), None))
            }
            Op::Remote {
                url,
                checksum,
                keep_git_dir,
            } => match crate::graph::remote::kind(url) {
                Some(crate::graph::remote::RemoteKind::Git) => {
                    self.git_node(n, url, checksum.as_deref(), *keep_git_dir)
                        .await
                }
                _ => self.remote_node(n, url, checksum.as_deref()).await,
            },
            Op::Inline { files } => {
                let key = key.finish();
                let dir = write_inline(&self.store, &node.digest, files)?;
                Ok((
                    key,
                    Output::Dir(HostDir {
                        path: dir,
                        excludes: Vec::new(),
                    }),
                    None,
                ))
            }
            Op::Context { name, excludes } => {
                let dir = match self.opts.contexts.get(name) {
                    Some(NamedContext::Dir(d)) => HostDir {
                        path: d.clone(),
                        excludes: excludes.clone(),
                    },
                    _ => {
                        return Err(Diagnostic::input(format!(
                            "build context `{name}` was not given"
                        )));
                    }
                };
                Ok((key.finish(), Output::Dir(dir), None))
            }
            Op::Image {
                reference,
                platform,
            } => {
                let platform = crate::platform::Platform::from_graph(platform.as_deref());
                self.image_node(n, reference, platform, jobs).await
            }
            Op::Config(c) => self.config_node(n, key.finish(), inputs, c).await,
            Op::Run(_) | Op::Copy(_) | Op::Mkdir { .. } => {
                let (key, out, ran) = self.step(n, key, inputs, jobs).await?;
                // `--no-cache-filter`: a step of a stage named runs now, not only once something needs
                // it, so the stage runs again even where every consumer of it hits the cache. (Counted
                // as a late run, like any put-off step that ran.)
                if ran.is_none()
                    && self.opts.no_cache_for.contains(&n)
                    && let Some(out) = self.demand(&key).await?
                {
                    return Ok((key, out, None));
                }
                Ok((key, out, ran))
            }
        }
    }
}

/// The empty filesystem of `FROM scratch`, with BuildKit's config of an empty image: WorkingDir `/` (the
/// default PATH is added to every config without one).
fn scratch(key: Digest) -> CacheRecord {
    let base = json!({"architecture": "amd64", "os": "linux", "config": {"WorkingDir": "/"}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []});
    CacheRecord {
        key,
        layers: vec![],
        times: vec![],
        base: base.into(),
        secrets: vec![],
    }
}

/// Writes the files of a heredoc into a directory of the store's `tmp` and returns it.
fn write_inline(
    store: &Store,
    digest: &Digest,
    files: &[(String, String)],
) -> Result<std::path::PathBuf> {
    // Written afresh on each build (it is small); the name keeps concurrent builds apart.
    let dir = store
        .root()
        .join("tmp")
        .join(format!("inline-{}", digest.hex()));
    let write = || -> std::io::Result<()> {
        let staging = tempfile::Builder::new()
            .prefix("inline-")
            .tempdir_in(store.root().join("tmp"))?;
        for (name, content) in files {
            let path = staging
                .path()
                .join(context::clean_relative(name).map_err(std::io::Error::other)?);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, content)?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        }
        let staging = staging.keep();
        if std::fs::rename(&staging, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        Ok(())
    };
    write().map_err(|e| Diagnostic::io("cannot write a heredoc file", e))?;
    Ok(dir)
}

impl<E: Executor> Shared<E> {
    /// A stage's image: its filesystem (run now if it was put off) with the config of `op` on top.
    pub(super) async fn config_node(
        self: &Arc<Self>,
        n: NodeIndex,
        key: Digest,
        mut inputs: Vec<(Digest, Output)>,
        c: &crate::graph::op::ConfigOp,
    ) -> Result<(Digest, Output, Option<bool>)> {
        if let Some(real) = self.demand(&inputs[0].0).await? {
            inputs[0].1 = real;
        }
        let Output::Fs(rec) = &inputs[0].1 else {
            unreachable!("config consumes a filesystem")
        };
        // The stage ran the triggers its base image had when compiling (a `.build` image with triggers
        // is refused then); an image with others now, a layout rewritten meanwhile, would quietly give
        // a different image.
        let triggers: Vec<&str> = rec.base["config"]["OnBuild"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .collect();
        if !triggers.is_empty() && triggers != c.base_onbuild {
            return Err(Diagnostic::input(format!(
                "the base image of stage `{}` has ONBUILD triggers ({}) that the stage did not run",
                self.graph.dag[n]
                    .name
                    .trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or(""),
                triggers.join("; ")
            ))
            .help("the image changed after the build read its config; build again"));
        }
        let layers = rec.layers.clone();
        let Output::Fs(rec) = inputs.swap_remove(0).1 else {
            unreachable!("matched above")
        };
        let config = ImageConfig::later(rec, self.graph.clone(), n, self.opts.epoch);
        Ok((key, Output::Image { layers, config }, None))
    }
}
