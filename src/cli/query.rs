//! `kiln query` and `kiln affected`: questions about a monorepo's targets, answered without building.

use std::collections::BTreeMap;

use super::args::{AffectedArgs, QueryArgs, QueryKind};
use super::command_line::CommandLine;
use super::compile::monorepo_root;
use crate::diag::{Diagnostic, Located, Result, Span};
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
            // The older revision is read here, in the driver: the monorepo compares two trees, wherever
            // they come from.
            let cl = CommandLine::capture();
            let located = |d: Diagnostic| d.label(Located::new(&cl.file, cl.span_of(rev)), "");
            let repo = crate::load::GitRepo::discover(&root).map_err(located)?;
            let tree = repo.tree(rev).map_err(|e| {
                cl.error(rev, Span::default(), e)
                    .help("give a revision git knows, such as HEAD~1, a branch, a tag or a commit")
            })?;
            let old = repo.checkout(&tree)?;
            let old_root = old.path().join(repo.inside(&root)?);
            crate::monorepo::affected_since(&old_root, &root, &opts)?
        }
        None => crate::monorepo::affected_by_files(&root, &args.files, &opts)?,
    };
    for l in labels {
        progress::stdout(&format!("{l}\n"));
    }
    Ok(())
}
