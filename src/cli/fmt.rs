//! `kiln fmt`: `.build` files in their canonical layout.

use super::args::FmtArgs;
use crate::diag::{Diagnostic, Result, SourceFile};
use crate::progress;

/// `kiln fmt`: rewrites `.build` files in the canonical layout.
pub(super) fn run(args: FmtArgs) -> Result<()> {
    let mut files = Vec::new();
    for p in &args.paths {
        if p.is_dir() {
            files.extend(crate::monorepo::build_files_under(p)?);
        } else {
            files.push(p.clone());
        }
    }
    let mut unformatted = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Diagnostic::input(format!("cannot read {}: {e}", f.display())))?;
        let module = crate::frontend::buildfile::syntax::parse(&SourceFile::new(
            f.display().to_string(),
            text.as_str(),
        ))?;
        let formatted = crate::frontend::buildfile::syntax::fmt::module(&module);
        if formatted != text {
            if args.check {
                progress::stdout(&format!("{}\n", f.display()));
            } else {
                crate::store::atomic_write(f, formatted.as_bytes())?;
            }
            unformatted.push(f);
        }
    }
    if args.check && !unformatted.is_empty() {
        return Err(Diagnostic::build(format!(
            "{} file(s) not formatted; run `kiln fmt`",
            unformatted.len()
        )));
    }
    Ok(())
}
