//! `kiln check`: lint a Dockerfile (or check a `.build` file) without building it.

use super::args::{CheckArgs, CheckFormat, CompileArgs};
use super::command_line::CommandLine;
use super::compile::{compile, lint_build_args, read_dockerfile};
use crate::diag::{Diagnostic, Result, Span};
use crate::progress;

/// `kiln check`: parse, then run the lints; exit 1 when a finding is an error.
pub(super) fn run(args: CheckArgs) -> Result<()> {
    let cl = CommandLine::capture();
    let context = &args.context;
    if args
        .file
        .as_ref()
        .is_some_and(|f| f.extension().is_some_and(|e| e == "build"))
    {
        let compile_args = CompileArgs {
            inputs: vec![context.display().to_string()],
            file: args.file.clone(),
            target: args.target.clone(),
            params: Vec::new(),
            build_args: args.build_args.clone(),
            build_contexts: Vec::new(),
        };
        // A `.build` file's checks are its type checker's and the secret rules, which evaluation
        // applies to each step's final command and sources.
        let report = compile(&compile_args, &cl, &super::compile::Mode::Lenient)?.secret_findings;
        return print_check_report(&report, &args.format);
    }
    if !context.is_dir() {
        let shown = context.display().to_string();
        return Err(cl.error(
            &shown,
            Span::default(),
            format!("build context `{shown}` is not a directory"),
        ));
    }
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let df = read_dockerfile(&path)?;
    let build_args = lint_build_args(&cl, &args.build_args)?;
    let (patterns, _) = crate::ignore::load(context, &path)?;
    let ignored = crate::frontend::dockerfile::lints::ignored_by(&patterns);
    let opts = crate::frontend::dockerfile::lints::Options {
        build_args,
        target: args.target.clone(),
        target_at: args
            .target
            .as_ref()
            .map(|t| crate::diag::Located::new(&cl.file, cl.span_of(t))),
        ignored: ignored.as_ref().map(|f| f as &dyn Fn(&str) -> bool),
    };
    let report = crate::frontend::dockerfile::lints::run(&df, &opts)?;
    print_check_report(&report, &args.format)
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
