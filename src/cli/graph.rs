//! `kiln graph`: compile only and print the build graph.

use super::args::{GraphArgs, GraphFormat};
use super::command_line::CommandLine;
use super::compile::compile;
use crate::diag::Result;
use crate::progress;

pub(super) fn run(args: GraphArgs) -> Result<()> {
    let cl = CommandLine::capture();
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
    Ok(())
}
