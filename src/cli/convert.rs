//! `kiln convert`: a Dockerfile translated to `.build` source.

use super::args::ConvertArgs;
use crate::diag::{Diagnostic, Result, SourceFile};
use crate::progress;

/// `kiln convert`: a Dockerfile as `.build` source.
pub(super) fn run(args: ConvertArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file).map_err(|e| {
        Diagnostic::input(format!(
            "cannot read Dockerfile {}: {e}",
            args.file.display()
        ))
        .help("name it with `-f PATH`")
    })?;
    let df = crate::frontend::dockerfile::syntax::parse(SourceFile::new(
        args.file.display().to_string(),
        text,
    ))?;
    crate::frontend::dockerfile::check::dockerfile(&df)?;
    let source = crate::frontend::convert::dockerfile(&df)?;
    match &args.output {
        Some(out) => crate::store::atomic_write(out, source.as_bytes())?,
        None => progress::stdout(&source),
    }
    Ok(())
}
