//! `kiln check`: lint a Dockerfile (or check a `.build` file) without building it.

use std::path::Path;

use super::args::{CheckArgs, CheckFormat, CompileArgs};
use super::command_line::CommandLine;
use super::compile::{compile, lint_build_args, read_dockerfile};
use crate::diag::{Diagnostic, Result, Span};
use crate::progress;

/// `kiln check`: parse, then run the lints; exit 1 when a finding is an error.
pub(super) fn run(args: CheckArgs) -> Result<()> {
    let cl = CommandLine::capture();
    let report = report(
        &cl,
        &args.context,
        args.file.as_deref(),
        &args.build_args,
        args.target.as_deref(),
    )?;
    print_check_report(&report, &args.format)
}

/// What `kiln check` finds in a Dockerfile (the lints) or a `.build` file (its secret rules), for
/// `kiln check` and `kiln build --check`.
pub(super) fn report(
    cl: &CommandLine,
    context: &Path,
    file: Option<&Path>,
    build_args: &[String],
    target: Option<&str>,
) -> Result<crate::frontend::dockerfile::lints::Report> {
    if file.is_some_and(|f| f.extension().is_some_and(|e| e == "build")) {
        let compile_args = CompileArgs {
            inputs: vec![context.display().to_string()],
            file: file.map(Path::to_path_buf),
            target: target.map(str::to_string),
            params: Vec::new(),
            build_args: build_args.to_vec(),
            build_contexts: Vec::new(),
            platforms: Vec::new(),
        };
        // A `.build` file's checks are its type checker's and the secret rules, which evaluation
        // applies to each step's final command and sources.
        return Ok(compile(&compile_args, cl, &super::compile::Mode::Lenient)?.secret_findings);
    }
    if !context.is_dir() {
        let shown = context.display().to_string();
        return Err(cl.error(
            &shown,
            Span::default(),
            format!("build context `{shown}` is not a directory"),
        ));
    }
    let path = file.map_or_else(|| context.join("Dockerfile"), Path::to_path_buf);
    let df = read_dockerfile(&path)?;
    let build_args = lint_build_args(cl, build_args)?;
    let (patterns, _) = crate::ignore::load(context, &path)?;
    let ignored = crate::frontend::dockerfile::lints::ignored_by(&patterns);
    let opts = crate::frontend::dockerfile::lints::Options {
        build_args,
        target: target.map(str::to_string),
        target_at: target.map(|t| crate::diag::Located::new(&cl.file, cl.span_of(t))),
        ignored: ignored.as_ref().map(|f| f as &dyn Fn(&str) -> bool),
    };
    crate::frontend::dockerfile::lints::run(&df, &opts)
}

/// Prints a `kiln check` report; an error finding makes the command fail.
fn print_check_report(
    report: &crate::frontend::dockerfile::lints::Report,
    format: &CheckFormat,
) -> Result<()> {
    match format {
        CheckFormat::Text => progress::stdout(&report.render_text()),
        CheckFormat::Json => progress::stdout(&report.render_json()),
    }
    match report.errors() {
        0 => Ok(()),
        n => Err(Diagnostic::build(format!(
            "check failed: {n} error{}",
            if n == 1 { "" } else { "s" }
        ))),
    }
}
