//! `kiln check`: BuildKit's Dockerfile build checks (same names, messages and configuration) and kiln's
//! own secret checks, run over the parsed file without building anything.
//!
//! Configuration follows BuildKit: `# check=skip=A,B|all;error=true;experimental=C|all` as a parser
//! directive, replaced entirely by the `BUILDKIT_DOCKERFILE_CHECK` build argument when that is given,
//! and merged with a `# check=` comment directly above an instruction for that instruction only (skip
//! and experimental parts; `error=` is file-wide, and an unreadable comment is ignored, as in BuildKit).

mod buildkit;
pub mod secrets;
pub(crate) mod words;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::diag::{Diagnostic, Located, Result, SourceFile, Span};
use crate::frontend::dockerfile::syntax::ast::Dockerfile;
use crate::frontend::dockerfile::syntax::raw;
use crate::frontend::lint::{Config, HELP_OPTIONS, rule};
pub use crate::frontend::lint::{Finding, Level, NOT_APPLICABLE, RULES, Rule, program_finding};
use crate::ignore::Patterns;

/// A `--build-arg` as given on the command line, and where (for pointing at it).
#[derive(Clone, Debug)]
pub struct BuildArg {
    pub key: String,
    pub value: String,
    pub at: Option<Located>,
}

/// What the driver knows beyond the Dockerfile.
#[derive(Default)]
pub struct Options<'a> {
    pub build_args: Vec<BuildArg>,
    /// `--target`: only the stages it needs are checked at dispatch level (all stages without it,
    /// as BuildKit's lint does).
    pub target: Option<String>,
    pub target_at: Option<Located>,
    /// The `.dockerignore` verdict for a cleaned context path (`.` is the context root): `None` when
    /// there is no ignore file or it re-includes anything (BuildKit then skips `CopyIgnoredFile`).
    /// `ignored_by` makes it from the patterns.
    pub ignored: Option<&'a dyn Fn(&str) -> bool>,
}

/// BuildKit's `.dockerignore` verdict for `CopyIgnoredFile`, for [`Options::ignored`]: `None` when
/// there are no patterns or some pattern re-includes (`!`), as BuildKit then skips the check. A path
/// is ignored if a pattern matches it or a parent; the context root only if a pattern is `*`, `**` or
/// `**/*`.
pub(crate) fn ignored_by(patterns: &Patterns) -> Option<impl Fn(&str) -> bool + '_> {
    if patterns.is_empty() || patterns.has_exclusions() {
        return None;
    }
    let root_ignored = patterns
        .canonical()
        .iter()
        .any(|p| matches!(p.as_str(), "*" | "**" | "**/*"));
    Some(move |p: &str| {
        if p == "." {
            root_ignored
        } else {
            patterns.matches_or_parent_matches(p)
        }
    })
}

/// Collects findings under the configuration in effect.
struct Linter {
    file: Arc<SourceFile>,
    base: Config,
    /// Per instruction (index into `Dockerfile::instructions`): the config with its comments merged.
    per_instruction: Vec<Config>,
    findings: Vec<Finding>,
    /// ARG/ENV names `SecretsUsedInArgOrEnv` looked at and found secret-like (whether or not skipped),
    /// so `SecretInBuildArg` does not report the same name again.
    secret_keys: BTreeSet<String>,
}

impl Linter {
    /// Records a finding of `name` at `span`, under the config of instruction `ins` (or the file's).
    fn emit(&mut self, name: &str, ins: Option<usize>, span: Span, message: String) -> bool {
        let at = Located::new(&self.file, span);
        self.emit_at(name, ins, at, message)
    }

    fn emit_at(&mut self, name: &str, ins: Option<usize>, at: Located, message: String) -> bool {
        let r = rule(name);
        let config = ins
            .and_then(|i| self.per_instruction.get(i))
            .unwrap_or(&self.base);
        if !config.enabled(r) {
            return false;
        }
        let level = if r.error || self.base.error {
            Level::Error
        } else {
            Level::Warning
        };
        self.findings.push(Finding {
            rule: r.name,
            level,
            message,
            url: r
                .slug
                .map(|s| format!("https://docs.docker.com/go/dockerfile/rule/{s}/")),
            at,
        });
        true
    }
}

/// The result of a check.
#[derive(Clone, Debug)]
pub struct Report {
    pub findings: Vec<Finding>,
}

/// Runs every check over a parsed Dockerfile. Errors are input errors: a file BuildKit would refuse
/// (no FROM, an instruction before it, a bad stage name, an unknown target) or bad check options.
pub fn run(df: &Dockerfile, opts: &Options) -> Result<Report> {
    super::check::structure(df, false)?;
    let ast = raw::parse(df.file.clone())?;
    let base = match opts
        .build_args
        .iter()
        .rev()
        .find(|a| a.key == "BUILDKIT_DOCKERFILE_CHECK")
    {
        Some(a) => Config::parse(&a.value).map_err(|e| {
            let mut d =
                Diagnostic::input(format!("failed to parse BUILDKIT_DOCKERFILE_CHECK: {e}"));
            if let Some(at) = &a.at {
                d = d.label(at.clone(), "");
            }
            d.help(HELP_OPTIONS)
        })?,
        None => match ast.directives.iter().find(|d| d.name == "check") {
            Some(d) => Config::parse(&d.value).map_err(|e| {
                Diagnostic::at(
                    &df.file,
                    d.span,
                    format!("failed to parse check options: {e}"),
                )
                .help(HELP_OPTIONS)
            })?,
            None => Config::default(),
        },
    };
    let per_instruction = ast
        .children
        .iter()
        .map(|n| base.with_comments(&n.prev_comment))
        .collect();
    let mut lint = Linter {
        file: df.file.clone(),
        base,
        per_instruction,
        findings: Vec::new(),
        secret_keys: BTreeSet::new(),
    };
    let comments: Vec<Vec<String>> = ast
        .children
        .iter()
        .map(|n| n.prev_comment.clone())
        .collect();
    buildkit::run(&mut lint, df, &comments, opts)?;
    secrets::build_args(&mut lint, opts);
    let mut findings = lint.findings;
    // File order; command-line findings (another file) last; emission order within one place.
    findings.sort_by_key(|f| (!Arc::ptr_eq(&f.at.file, &df.file), f.at.span.start));
    Ok(Report { findings })
}

/// The findings of kiln's own secret rules only: what `kiln build` runs before any step.
pub fn secret_checks(df: &Dockerfile, build_args: Vec<BuildArg>) -> Result<Report> {
    let opts = Options {
        build_args,
        ..Options::default()
    };
    let mut report = run(df, &opts)?;
    report.findings.retain(|f| is_secret_rule(f.rule));
    Ok(report)
}

/// kiln's secret rules (its own, not BuildKit's).
pub fn is_secret_rule(name: &str) -> bool {
    RULES.iter().any(|r| r.name == name && r.slug.is_none())
}

/// The JSON shape of `kiln check --format json`.
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    findings: Vec<JsonFinding<'a>>,
    errors: usize,
    warnings: usize,
}

#[derive(serde::Serialize)]
struct JsonFinding<'a> {
    rule: &'a str,
    level: Level,
    message: &'a str,
    url: Option<&'a str>,
    location: JsonLocation<'a>,
}

/// 1-based; the end is exclusive (the column just after the last character).
#[derive(serde::Serialize)]
struct JsonLocation<'a> {
    file: &'a str,
    line: usize,
    column: usize,
    end_line: usize,
    end_column: usize,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.findings.len() - self.errors()
    }

    /// What `kiln build` prints before it goes on or refuses: every warning, and every error when
    /// there are several (one error is the refusal's own message), each as `render_text` draws it.
    pub fn render_for_build(&self) -> String {
        let several = self.errors() > 1;
        self.findings
            .iter()
            .filter(|f| f.level == Level::Warning || several)
            .map(render_finding)
            .collect()
    }

    /// Why `kiln build` refuses, when any finding is an error: each one located, with the opt-out.
    pub fn refusal(&self) -> Option<Diagnostic> {
        let errors: Vec<&Finding> = self
            .findings
            .iter()
            .filter(|f| f.level == Level::Error)
            .collect();
        let first = errors.first()?;
        let mut rules: Vec<&str> = errors.iter().map(|f| f.rule).collect();
        rules.sort_unstable();
        rules.dedup();
        let message = match errors.len() {
            1 => format!("{}: {}", first.rule, first.message),
            n => format!(
                "{n} secret checks fail ({}), so kiln does not build this",
                rules.join(", ")
            ),
        };
        let mut d = Diagnostic::input(message);
        for f in &errors {
            d = d.label(f.at.clone(), f.rule);
        }
        Some(d.help(format!(
            "this would put a secret into the image, so the build stops before any step runs; if \
             it is intended, opt out with `# check=skip={}` at the top of the file (or on the line \
             above this one)",
            rules.join(",")
        )))
    }

    /// The stable JSON form, pretty-printed, with a final newline.
    pub fn render_json(&self) -> String {
        let findings = self
            .findings
            .iter()
            .map(|f| {
                let (line, column) = f.at.file.line_col(f.at.span.start);
                let (end_line, end_column) = f.at.file.line_col(f.at.span.end);
                JsonFinding {
                    rule: f.rule,
                    level: f.level,
                    message: &f.message,
                    url: f.url.as_deref(),
                    location: JsonLocation {
                        file: &f.at.file.name,
                        line,
                        column,
                        end_line,
                        end_column,
                    },
                }
            })
            .collect();
        let report = JsonReport {
            findings,
            errors: self.errors(),
            warnings: self.warnings(),
        };
        let mut s = serde_json::to_string_pretty(&report).unwrap_or_default();
        s.push('\n');
        s
    }

    /// One block per finding, like kiln's error diagnostics: the rule and message, `file:line:col`,
    /// the source line with carets under the finding, and the docs URL; then a summary line.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&render_finding(f));
        }
        let (e, w) = (self.errors(), self.warnings());
        if e + w == 0 {
            out.push_str("no problems found\n");
        } else {
            let _ = writeln!(
                out,
                "{e} error{}, {w} warning{}",
                if e == 1 { "" } else { "s" },
                if w == 1 { "" } else { "s" }
            );
        }
        out
    }
}

fn render_finding(f: &Finding) -> String {
    let level = match f.level {
        Level::Warning => "warning",
        Level::Error => "error",
    };
    let mut out = format!("{level}: {}: {}\n", f.rule, f.message);
    out.push_str(&snippet(&f.at, f.url.as_deref()));
    out.push('\n');
    out
}

/// `  --> file:line:col`, the first line of the span, carets under it, and the docs URL.
fn snippet(at: &Located, url: Option<&str>) -> String {
    let text: &str = &at.file.text;
    let start = at.span.start.min(text.len());
    let (line, col) = at.file.line_col(start);
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let source = text[line_start..line_end].trim_end_matches('\r');
    let end = at.span.end.clamp(start, line_start + source.len());
    let width = line.to_string().len();
    let pad = " ".repeat(width);
    let lead: String = text[line_start..start]
        .chars()
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let carets = "^".repeat(text[start..end].chars().count().max(1));
    let mut out = format!(
        "{pad}--> {}:{line}:{col}\n{pad} |\n{line} | {source}\n{pad} | {lead}{carets}\n",
        at.file.name
    );
    if let Some(url) = url {
        let _ = writeln!(out, "{pad} = see {url}");
    }
    out
}
