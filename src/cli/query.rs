//! `kiln query` and `kiln affected`: questions about a monorepo's targets, answered without building.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::args::{AffectedArgs, QueryArgs, QueryKind};
use super::compile::monorepo_root;
use crate::diag::Result;
use crate::frontend::LowerOptions;
use crate::progress;

pub(super) fn query(args: QueryArgs) -> Result<()> {
    let root = monorepo_root()?;
    let mut opts = crate::frontend::buildfile::lower::EvalOptions {
        lower: LowerOptions {
            lenient: true,
            ..LowerOptions::default()
        },
        params: BTreeMap::new(),
    };
    for p in &args.params {
        if let Some((k, v)) = p.split_once('=') {
            opts.params.insert(k.to_string(), v.to_string());
        }
    }
    let kind = match args.kind {
        QueryKind::Deps => "deps",
        QueryKind::Rdeps => "rdeps",
    };
    for l in crate::monorepo::query(&root, kind, &args.labels, &opts)? {
        progress::stdout(&format!("{l}\n"));
    }
    Ok(())
}

pub(super) fn affected(args: AffectedArgs) -> Result<()> {
    let root = monorepo_root()?;
    let opts = crate::frontend::buildfile::lower::EvalOptions {
        lower: LowerOptions {
            lenient: true,
            ..LowerOptions::default()
        },
        params: BTreeMap::new(),
    };
    let labels = match &args.since {
        Some(rev) => {
            // git runs here, in the driver: the monorepo compares two trees, wherever they come from.
            let old = crate::exec::git_checkout(&root, rev)?;
            let old_root = old.path().join(old_prefix(&root)?);
            crate::monorepo::affected_since(&old_root, &root, &opts)?
        }
        None => crate::monorepo::affected_by_files(&root, &args.files, &opts)?,
    };
    for l in labels {
        progress::stdout(&format!("{l}\n"));
    }
    Ok(())
}

/// Where the monorepo root sits inside its git work tree.
fn old_prefix(root: &Path) -> Result<PathBuf> {
    let top = crate::exec::git_toplevel(root)?;
    Ok(root
        .strip_prefix(&top)
        .unwrap_or(Path::new(""))
        .to_path_buf())
}
