//! Dockerfile checking: rules about a Dockerfile's structure that hold before any variable is expanded, so
//! lowering can assume a well-formed file (a FROM first, stage names valid and unique).

use crate::diag::{Diagnostic, Result};
use crate::frontend::dockerfile::syntax::ast::{Dockerfile, InstructionKind};

/// Checks a parsed Dockerfile; the first problem found is returned with its location.
pub fn dockerfile(df: &Dockerfile) -> Result<()> {
    structure(df, true)
}

/// The structural rules; `duplicates` makes a repeated stage name an error (the linter reports it as
/// BuildKit's `DuplicateStageName` warning instead).
pub(super) fn structure(df: &Dockerfile, duplicates: bool) -> Result<()> {
    let mut seen_from = false;
    let mut names: Vec<(String, crate::diag::Span)> = Vec::new();
    for ins in &df.instructions {
        match &ins.kind {
            InstructionKind::From { alias, .. } => {
                seen_from = true;
                let Some(a) = alias else { continue };
                let name = a.text.to_ascii_lowercase();
                if !valid_stage_name(&name) {
                    return Err(Diagnostic::at(&df.file, a.span, format!("invalid stage name `{}`", a.text))
                        .help("stage names start with a letter and contain letters, digits, `-`, `_` and `.`"));
                }
                if let Some((_, first)) = names.iter().find(|(n, _)| *n == name)
                    && duplicates
                {
                    return Err(Diagnostic::at(
                        &df.file,
                        a.span,
                        format!("duplicate stage name `{}`", a.text),
                    )
                    .label(
                        crate::diag::Located::new(&df.file, *first),
                        "first defined here",
                    )
                    .help("give each stage its own name"));
                }
                names.push((name, a.span));
            }
            InstructionKind::Arg(_) => {}
            _ if !seen_from => {
                return Err(Diagnostic::at(
                    &df.file,
                    ins.keyword.span,
                    format!("{} before the first FROM", ins.kind.name()),
                )
                .help("only ARG may come before FROM; start the stage with `FROM <image>`"));
            }
            _ => {}
        }
    }
    if !seen_from {
        return Err(Diagnostic::input(format!(
            "{}: the Dockerfile has no FROM instruction",
            df.file.name
        ))
        .help("a Dockerfile starts with `FROM <image>` (or `FROM scratch`)"));
    }
    Ok(())
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
