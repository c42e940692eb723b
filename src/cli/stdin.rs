//! `kiln build -`: the Dockerfile comes from standard input and there is no context, as with
//! `docker build - < Dockerfile`; the context is an empty directory of the store's, which nothing writes.

use std::path::Path;

use super::args::CompileArgs;
use super::command_line::CommandLine;
use crate::diag::{Diagnostic, Result, Span};

/// The compile arguments with `-` as the context made into an empty context and `-f -`; `None` when
/// the context is not `-`.
pub(super) fn stdin_context(
    args: &CompileArgs,
    cl: &CommandLine,
    store: &Path,
) -> Result<Option<CompileArgs>> {
    if args.inputs.first().map(String::as_str) != Some("-") {
        return Ok(None);
    }
    if let Some(file) = &args.file {
        let shown = file.display().to_string();
        return Err(cl
            .error(&shown, Span::default(), "with `-` as the context, the Dockerfile is standard input")
            .help("drop -f (`kiln build - < Dockerfile`), or give a context directory with `-f -`; kiln takes no tar context on stdin"));
    }
    let empty = store.join("empty-context");
    std::fs::create_dir_all(&empty)
        .map_err(|e| Diagnostic::io(format!("cannot make {}", empty.display()), e))?;
    let entries = std::fs::read_dir(&empty)
        .map_err(|e| Diagnostic::io(format!("cannot read {}", empty.display()), e))?;
    if entries.count() > 0 {
        return Err(
            Diagnostic::env(format!("{} should be empty, and is not", empty.display()))
                .help("remove what is in it: kiln keeps it empty as the context of `kiln build -`"),
        );
    }
    Ok(Some(CompileArgs {
        inputs: vec![empty.display().to_string()],
        file: Some("-".into()),
        target: args.target.clone(),
        params: args.params.clone(),
        build_args: args.build_args.clone(),
        build_contexts: args.build_contexts.clone(),
        platforms: args.platforms.clone(),
    }))
}
