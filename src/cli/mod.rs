//! The driver: parses the command line (flag spelling follows `docker build`), wires the stages together
//! and turns every failure into one rendered diagnostic and an exit code.
//!
//! `args` holds the clap types, `command_line` the command line as a source text (for carets),
//! `flags` the parsers of the values `kiln build` takes, `request` those made into a
//! [`crate::BuildRequest`] that `crate::build` runs;
//! each subcommand has its own file.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use clap::Parser;

mod args;
mod attest;
mod buildx;
mod call;
mod check;
mod command_line;
mod compile;
mod convert;
mod flags;
mod fmt;
mod graph;
mod images;
mod last_graph;
mod lock;
mod memo;
mod outputs;
mod query;
mod remote_auth;
mod request;
mod sign;
mod stdin;
mod step_flags;
mod store;
mod watch;
mod worker;

use args::{Cli, Command};

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let color = std::io::stderr().is_terminal();
    let argv: Vec<String> = std::env::args().collect();
    if let Err(d) = buildx::refuse_unsupported(&argv) {
        crate::progress::stderr(&crate::diag::render(&d, color));
        return d.category.exit_code();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let result = match cli.command {
        Command::Build(args) => request::run(*args),
        Command::Graph(args) => graph::run(args),
        Command::Check(args) => check::run(args),
        Command::Fmt(args) => fmt::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Query(args) => query::query(args),
        Command::Affected(args) => query::affected(args),
        Command::Images(args) => images::list(args),
        Command::Image(args) => images::run(args),
        Command::Du(args) => store::du(args),
        Command::Prune(args) => store::prune(args),
        Command::Lock(args) => lock::run(args),
        Command::Worker(args) => worker::run(args),
    };
    let result = result.and_then(|()| match crate::progress::stdout_error() {
        Some(e) => Err(crate::diag::Diagnostic::io(
            "cannot write the result to stdout",
            e,
        )),
        None => Ok(()),
    });
    match result {
        Ok(()) => 0,
        Err(d) => {
            crate::progress::stderr(&crate::diag::render(&d, color));
            d.category.exit_code()
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
