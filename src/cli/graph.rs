//! `kiln graph`: compile only and print the build graph.

use super::args::{GraphArgs, GraphFormat};
use super::command_line::CommandLine;
use super::compile::{Compiled, compile};
use super::last_graph;
use crate::diag::Result;
use crate::progress;

pub(super) fn run(args: GraphArgs) -> Result<()> {
    let started = crate::inputs::epoch_secs();
    let cl = CommandLine::capture();
    let asked = match (args.format, args.digest) {
        (GraphFormat::Text, _) | (_, true) => super::compile::last_graph(&args.compile, &cl)?,
        _ => None,
    };
    if let Some((cache, key, root, opts)) = &asked {
        let ask = last_graph::Ask {
            started,
            cache,
            key: key.clone(),
            root,
            opts,
        };
        let mut show = |text: &str| match args.digest {
            true => progress::stdout(&digests(text)),
            false => progress::stdout(text),
        };
        if last_graph::reuse(&ask, &mut show) {
            return Ok(());
        }
    }
    let compiled = compile(&args.compile, &cl, &super::compile::Mode::Lenient)?;
    let g = &compiled.graph;
    let out = if args.digest {
        g.render_digests()
    } else {
        match args.format {
            GraphFormat::Text => g.render_text(),
            GraphFormat::Dot => g.render_dot(),
            GraphFormat::Json => g.render_json(),
        }
    };
    progress::stdout(&out);
    // The process ends next: freeing a monorepo's graph node by node (about 8 ms for 26,000 nodes)
    // is left to a thread the end does not wait for. The evaluation cache's save is waited for here.
    let Compiled {
        graph,
        _saving,
        traced,
        ..
    } = compiled;
    let keeping = match (asked, traced) {
        (Some((cache, key, ..)), Some((traced, index_of, ops))) => {
            Some(std::thread::spawn(move || {
                last_graph::keep(started, &cache, &key, &graph, &traced, (&index_of, &ops));
                drop((graph, traced, index_of, ops));
            }))
        }
        (asked, _) => {
            if let Some((cache, ..)) = asked {
                last_graph::forget(&cache);
            }
            std::thread::spawn(move || drop(graph));
            None
        }
    };
    drop(_saving);
    if let Some(k) = keeping {
        let _ = k.join();
    }
    Ok(())
}

/// The root digests of a graph's text (its `root NAME: DIGEST` lines), as `--digest` prints them.
fn digests(text: &str) -> String {
    let roots = text.lines().filter_map(|l| l.strip_prefix("root "));
    let digests = roots.filter_map(|r| r.split(": ").nth(1)?.split("  ").next());
    digests.map(|d| format!("{d}\n")).collect()
}
