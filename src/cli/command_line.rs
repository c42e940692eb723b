//! The command line as a source text, so a bad flag value is shown with a caret like a bad line in a file.

use std::sync::Arc;

use crate::diag::{Diagnostic, SourceFile, Span};

/// The command line as a source text, so flag errors get a caret like file errors do.
pub(super) struct CommandLine {
    pub(super) file: Arc<SourceFile>,
    args: Vec<(usize, String)>,
}

/// Flags whose value is `NAME=VALUE` with a credential for the value.
const HEADER_FLAGS: [&str; 2] = ["--remote-header", "--header"];

/// `NAME=VALUE` as the command line shows it: `NAME=***` (all of it `***` without a `=`: it may be a
/// bare token).
pub(super) fn redact_header(arg: &str) -> String {
    match arg.split_once('=') {
        Some((name, _)) => format!("{name}=***"),
        None => "***".to_string(),
    }
}

impl CommandLine {
    pub(super) fn capture() -> CommandLine {
        let mut text = String::from("kiln");
        let mut args = Vec::new();
        let mut header_next = false;
        for a in std::env::args().skip(1) {
            // A header's value is a credential: the text errors are shown against never holds it.
            let a = if header_next {
                redact_header(&a)
            } else {
                match HEADER_FLAGS
                    .iter()
                    .find_map(|f| a.strip_prefix(f)?.strip_prefix('='))
                {
                    Some(v) => format!("{}={}", &a[..a.len() - v.len() - 1], redact_header(v)),
                    None => a,
                }
            };
            header_next = HEADER_FLAGS.contains(&a.as_str());
            text.push(' ');
            args.push((text.len(), a.clone()));
            text.push_str(&a);
        }
        CommandLine {
            file: SourceFile::new("command line", text),
            args,
        }
    }

    /// The span of `value` where it appears as (the tail of) an argument.
    pub(super) fn span_of(&self, value: &str) -> Span {
        self.args
            .iter()
            .find_map(|(start, a)| {
                a.rfind(value)
                    .filter(|_| a.ends_with(value))
                    .map(|i| start + i)
            })
            .map_or(Span::new(0, 4), |s| Span::new(s, s + value.len()))
    }

    pub(super) fn error(&self, value: &str, inner: Span, msg: impl Into<String>) -> Diagnostic {
        let base = self.span_of(value);
        let span = if inner.end > inner.start && inner.end <= value.len() {
            Span::new(base.start + inner.start, base.start + inner.end)
        } else {
            base
        };
        Diagnostic::at(&self.file, span, msg)
    }
}
