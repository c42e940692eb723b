//! The leak guard's call sites in a step: its changes and its writable cache mounts are searched for the
//! value of every secret given to the build, and a leak becomes an error located at the step, with a hint
//! that fits how the value got there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use petgraph::stable_graph::NodeIndex;

use super::Executor;
use super::schedule::Shared;
use crate::diag::{Diagnostic, Result};
use crate::secret::{Leak, LeakScanner};

/// Searches the step's changes (`scan_dir`, its upper dir), then its writable cache mounts (deleting one that holds a
/// secret), for every secret of `guard`. Returns the first leak and where it went.
pub(super) async fn scan(
    guard: Arc<LeakScanner>,
    scan_dir: PathBuf,
    caches: Vec<(String, PathBuf)>,
) -> Result<Option<(Leak, String)>> {
    tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        if guard.is_empty() {
            return Ok(None);
        }
        if let Some((leak, path)) = guard.scan_tree(&scan_dir)? {
            return Ok(Some((
                leak,
                format!("into the image at /{}", path.display()),
            )));
        }
        for (target, dir) in &caches {
            if let Some((leak, path)) = guard.scan_tree(dir)? {
                // A cache outlives the step: drop it whole rather than keep a secret in the store.
                let _ = std::fs::remove_dir_all(dir);
                let at = Path::new(target).join(path);
                return Ok(Some((
                    leak,
                    format!(
                        "into cache mount {target} at {} (the cache was deleted)",
                        at.display()
                    ),
                )));
            }
        }
        Ok(None)
    })
    .await
    .map_err(|e| Diagnostic::env(format!("leak scan failed: {e}")))?
    .map_err(|e| Diagnostic::io("cannot scan the step's changes for secrets", e))
}

impl<E: Executor> Shared<E> {
    /// A step's leak: located at the step, with a hint that fits how the value got there.
    pub(super) fn leak_error(
        &self,
        n: NodeIndex,
        mounted: &[&str],
        id: &str,
        message: String,
    ) -> Diagnostic {
        let (label, help) = if mounted.contains(&id) {
            (
                "this step mounted the secret",
                "use the secret only inside the RUN that mounts it; write nothing derived from it to disk, or delete it in the same RUN",
            )
        } else {
            (
                "this step does not mount the secret, but wrote its value",
                "the value reached this step from a step that mounts it (an earlier layer, a cache mount, the network); no step may pass a secret on in any form",
            )
        };
        let mut d = Diagnostic::build(message).help(help);
        if let Some(at) = self.at(n) {
            d = d.label(at, label);
        }
        d
    }
}
