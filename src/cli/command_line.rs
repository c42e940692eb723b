//! The command line as a source text, so a bad flag value is shown with a caret like a bad line in a file.

use std::sync::Arc;

use crate::diag::{Diagnostic, SourceFile, Span};

/// The command line as a source text, so flag errors get a caret like file errors do.
pub(super) struct CommandLine {
    pub(super) file: Arc<SourceFile>,
    args: Vec<(usize, String)>,
}

impl CommandLine {
    pub(super) fn capture() -> CommandLine {
        let mut text = String::from("kiln");
        let mut args = Vec::new();
        for a in std::env::args().skip(1) {
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
