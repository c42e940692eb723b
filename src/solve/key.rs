//! Cache keys: a node's definition and its inputs' keys, with the content of the host files a step selects
//! mixed in (never a whole context, never a secret's value); and the lookups a key answers (the store, then
//! a shared cache).

use std::path::Path;
use std::sync::Arc;

use petgraph::stable_graph::NodeIndex;

use super::context::{self, HostDir};
use super::schedule::{Output, Shared};
use super::{Executor, statcache};
use crate::diag::{Diagnostic, Result};
use crate::digest::{Digest, Encoder};
use crate::graph::Op;
use crate::graph::op::RunMount;
use crate::store::CacheRecord;

/// Bump when what a cache key covers changes, or what a cached result holds (v2: COPY --from keeps
/// owners, `FROM scratch` has WorkingDir `/`): every cached result is then rebuilt.
pub const CACHE_DOMAIN: &str = "kiln/cache/v2";

/// A node's key so far: its definition and its inputs' keys.
pub(super) fn node_key(op: &Op, inputs: &[(Digest, Output)]) -> Encoder {
    let mut key = Encoder::new(CACHE_DOMAIN);
    op.encode(&mut key);
    key.list(inputs.len());
    for (k, _) in inputs {
        key.digest(k);
    }
    key
}

/// The ids of the secrets a step mounts.
pub(super) fn mounted_ids(op: &Op) -> Vec<&str> {
    match op {
        Op::Run(r) => r.secrets.iter().map(|s| s.id.as_str()).collect(),
        _ => Vec::new(),
    }
}

impl<E: Executor> Shared<E> {
    /// Mixes into a step's key the content of the files it takes from a host directory (COPY sources,
    /// bind mount sources): only the selected files' content, never the whole context.
    pub(super) async fn key_sources(
        &self,
        n: NodeIndex,
        key: &mut Encoder,
        inputs: &[(Digest, Output)],
    ) -> Result<()> {
        let node = &self.graph.dag[n];
        type Selection<'a> = (usize, HostDir, Vec<String>, Vec<String>, &'a str);
        let selections: Vec<Selection<'_>> = match &node.op {
            Op::Copy(c) => match inputs.get(1) {
                Some((_, Output::Dir(dir))) => {
                    vec![(
                        1,
                        dir.clone(),
                        c.sources.clone(),
                        c.excludes.clone(),
                        "COPY",
                    )]
                }
                _ => vec![],
            },
            Op::Run(r) => r
                .mounts
                .iter()
                .filter_map(|m| match m {
                    RunMount::Bind { input, source, .. } => match inputs.get(*input) {
                        Some((_, Output::Dir(dir))) => Some((
                            *input,
                            dir.clone(),
                            vec![source.clone()],
                            Vec::new(),
                            "bind mount",
                        )),
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
            _ => vec![],
        };
        for (position, dir, sources, excludes, what) in selections {
            let cache = self.stat_cache(&dir.path);
            let digest = tokio::task::spawn_blocking(move || {
                let d =
                    context::selection_digest(&dir.tree()?.excluding(&excludes)?, &sources, &cache);
                cache.save();
                d
            })
            .await
            .map_err(|e| Diagnostic::env(format!("context hashing failed: {e}")))?
            .map_err(|e| {
                self.located(
                    n,
                    Diagnostic::input(format!("{what} failed: {e} in the build context"))
                        .help("check the path; it is relative to the build context directory"),
                )
            })?;
            if let Some(context) = self.context_input(n, position) {
                self.resolve(
                    n,
                    super::Resolved::Files {
                        context,
                        digest: digest.clone(),
                    },
                );
            }
            key.str(&digest);
        }
        Ok(())
    }

    /// The name of the context directory that is input `position` of node `n`, if it is one (not a
    /// download, a clone or a heredoc, which are inputs of their own).
    fn context_input(&self, n: NodeIndex, position: usize) -> Option<String> {
        use petgraph::visit::EdgeRef as _;
        let dag = &self.graph.dag;
        let edge = dag
            .edges_directed(n, petgraph::Direction::Incoming)
            .find(|e| *e.weight() == position)?;
        match &dag[edge.source()].op {
            Op::Context { name, .. } => Some(name.clone()),
            _ => None,
        }
    }

    /// The cached result of a step's key: from the store, else from a shared cache (`None` under
    /// `--no-cache`).
    pub(super) fn cached(&self, key: &Digest, op: &Op) -> Option<CacheRecord> {
        if self.opts.no_cache {
            return None;
        }
        if let Some(rec) = self.store.cache_get(key) {
            return Some(rec);
        }
        let mounted = mounted_ids(op);
        self.opts
            .cache_from
            .as_ref()
            .and_then(|r| r.get(key, &mounted))
    }

    /// The stat cache of a context directory (one per directory, shared by every step of the build).
    pub(super) fn stat_cache(&self, dir: &Path) -> Arc<statcache::StatCache> {
        self.stat_caches
            .lock()
            .expect("stat caches lock")
            .entry(dir.to_path_buf())
            .or_insert_with(|| {
                Arc::new(statcache::StatCache::load(self.store.stat_cache_path(dir)))
            })
            .clone()
    }
}
