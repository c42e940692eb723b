//! Errors as values: every user-facing failure is a `Diagnostic` carrying a source span, rendered in one place.
//!
//! Stages return `Diagnostic`s; only `render` turns them into text, so every error a user can reach looks
//! the same: a message, `file:line:col`, the source line with a caret under the offending part, and a hint.

use std::fmt;
use std::sync::Arc;

/// Where an error comes from decides the exit code (`SPEC.md` §1): input mistakes exit 2, failed builds 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// Bad flag, parse error, missing file, unknown stage: the user must change the input.
    Input,
    /// A step failed, a lint error, the leak guard fired: the input is well-formed but the build is not.
    Build,
    /// The machine failed us: I/O, a kernel refusal, a corrupt store entry.
    Environment,
    /// The user stopped the build with this signal (SIGINT, SIGTERM): exits 128 + its number, as a
    /// shell reports a process the signal killed.
    Interrupted(i32),
}

impl Category {
    pub fn exit_code(self) -> i32 {
        match self {
            Category::Input => 2,
            Category::Build | Category::Environment => 1,
            Category::Interrupted(signal) => 128 + signal,
        }
    }
}

/// A named text that spans point into: a Dockerfile, a `.build` file, or the command line itself.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub name: String,
    pub text: Arc<str>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> Arc<SourceFile> {
        Arc::new(SourceFile {
            name: name.into(),
            text: text.into(),
        })
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }
}

/// A half-open byte range into a `SourceFile`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// A span together with the file it points into: what errors and graph metadata carry around.
#[derive(Clone, Debug)]
pub struct Located {
    pub file: Arc<SourceFile>,
    pub span: Span,
}

impl Located {
    pub fn new(file: &Arc<SourceFile>, span: Span) -> Located {
        Located {
            file: file.clone(),
            span,
        }
    }
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (line, col) = self.file.line_col(self.span.start);
        write!(f, "{}:{}:{}", self.file.name, line, col)
    }
}

/// A message a program asks to show while it is evaluated (`print(...)` in a `.build` file), with where
/// it asked: not an error, so not a `Diagnostic`.
#[derive(Clone, Debug)]
pub struct Note {
    pub at: Located,
    pub message: String,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Shows a note on stderr, one line: `file:line:col: message`.
pub fn print_note(note: &Note) {
    crate::progress::stderr(&format!("{note}\n"));
}

#[derive(Clone, Debug)]
pub struct Label {
    pub at: Located,
    pub text: String,
}

/// One user-facing error. Never holds secret bytes: callers name secrets by id only.
#[derive(Clone, Debug)]
pub struct Diagnostic {
    pub category: Category,
    pub message: String,
    pub labels: Vec<Label>,
    pub help: Option<String>,
    /// Further errors from the same run (a parser that goes on after an error), in source order; each is
    /// rendered after this one as a diagnostic of its own. This one decides the category and exit code.
    pub more: Vec<Diagnostic>,
}

pub type Result<T, E = Diagnostic> = std::result::Result<T, E>;

impl Diagnostic {
    pub fn new(category: Category, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            category,
            message: message.into(),
            labels: Vec::new(),
            help: None,
            more: Vec::new(),
        }
    }
    /// Several errors as one: the first, with the others (flattened) following it. `None` when there are none.
    pub fn several(all: impl IntoIterator<Item = Diagnostic>) -> Option<Diagnostic> {
        let mut all = all.into_iter().flat_map(Diagnostic::into_all);
        let mut first = all.next()?;
        first.more.extend(all);
        Some(first)
    }
    /// This diagnostic and the ones following it, each on its own.
    fn into_all(mut self) -> Vec<Diagnostic> {
        let more = std::mem::take(&mut self.more);
        let mut all = vec![self];
        all.extend(more.into_iter().flat_map(Diagnostic::into_all));
        all
    }
    pub fn input(message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Category::Input, message)
    }
    pub fn build(message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Category::Build, message)
    }
    pub fn env(message: impl Into<String>) -> Diagnostic {
        Diagnostic::new(Category::Environment, message)
    }
    /// An input error pointing at `span` of `file`.
    pub fn at(file: &Arc<SourceFile>, span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic::input(message).label(Located::new(file, span), "")
    }
    pub fn label(mut self, at: Located, text: impl Into<String>) -> Diagnostic {
        self.labels.push(Label {
            at,
            text: text.into(),
        });
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Diagnostic {
        self.help = Some(help.into());
        self
    }
    pub fn category(mut self, category: Category) -> Diagnostic {
        self.category = category;
        self
    }
    /// Adds what the operation was doing to an I/O error, keeping the category.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Diagnostic {
        Diagnostic::env(format!("{context}: {err}"))
    }
    pub fn location(&self) -> Option<&Located> {
        self.labels.first().map(|l| &l.at)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location() {
            Some(at) => write!(f, "{at}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Diagnostic {}

/// Adapter so miette draws the snippet; kept private so the renderer stays the one place that knows miette.
struct MietteView<'a>(&'a Diagnostic);

impl fmt::Debug for MietteView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
impl fmt::Display for MietteView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}
impl std::error::Error for MietteView<'_> {}

impl miette::Diagnostic for MietteView<'_> {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.0
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.0
            .location()
            .map(|at| &*at.file as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let first = self.0.location()?;
        let labels = self
            .0
            .labels
            .iter()
            .filter(|l| Arc::ptr_eq(&l.at.file, &first.file))
            .enumerate()
            .map(|(i, l)| {
                let len = l.at.span.end.saturating_sub(l.at.span.start).max(1);
                let text = (!l.text.is_empty()).then(|| l.text.clone());
                // The first label is where the error is: the header's file:line:col must name it even
                // when a secondary label (say, a first definition) comes earlier in the file.
                if i == 0 {
                    miette::LabeledSpan::new_primary_with_span(text, (l.at.span.start, len))
                } else {
                    miette::LabeledSpan::new(text, l.at.span.start, len)
                }
            });
        Some(Box::new(labels))
    }
}

impl miette::SourceCode for SourceFile {
    fn read_span<'a>(
        &'a self,
        span: &miette::SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> std::result::Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let inner = self
            .text
            .read_span(span, context_lines_before, context_lines_after)?;
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            *inner.span(),
            inner.line(),
            inner.column(),
            inner.line_count(),
        )))
    }
}

/// Renders a diagnostic, and those following it, for a human. `color` is decided by the caller (a
/// terminal or not).
pub fn render(diag: &Diagnostic, color: bool) -> String {
    let mut out = render_one(diag, color);
    for next in &diag.more {
        out.push_str(&render(next, color));
    }
    out
}

fn render_one(diag: &Diagnostic, color: bool) -> String {
    let mut out = String::new();
    if diag.location().is_none() {
        out.push_str(&format!("  error: {}\n", diag.message));
        if let Some(help) = &diag.help {
            out.push_str(&format!("  help: {help}\n"));
        }
        return out;
    }
    let mut theme = handler_theme(color);
    theme.characters.error = "error:".into();
    let handler = miette::GraphicalReportHandler::new_themed(theme)
        .with_links(false)
        .with_context_lines(1)
        .with_width(100);
    if handler.render_report(&mut out, &MietteView(diag)).is_err() {
        out.push_str(&diag.to_string());
    }
    out.push('\n');
    // miette draws one file: labels in other files (a secret declared in an imported module) follow as
    // notes, one per file, each with its snippet.
    let first = &diag.labels[0].at.file;
    let mut files: Vec<&Arc<SourceFile>> = Vec::new();
    for l in &diag.labels {
        if !Arc::ptr_eq(&l.at.file, first) && !files.iter().any(|f| Arc::ptr_eq(f, &l.at.file)) {
            files.push(&l.at.file);
        }
    }
    for file in files {
        let note = Diagnostic {
            category: diag.category,
            message: format!("in {}", file.name),
            labels: diag
                .labels
                .iter()
                .filter(|l| Arc::ptr_eq(&l.at.file, file))
                .cloned()
                .collect(),
            help: None,
            more: Vec::new(),
        };
        let mut theme = handler_theme(color);
        theme.characters.error = "note:".into();
        let notes = miette::GraphicalReportHandler::new_themed(theme)
            .with_links(false)
            .with_context_lines(1)
            .with_width(100);
        if notes.render_report(&mut out, &MietteView(&note)).is_err() {
            out.push_str(&note.to_string());
        }
        out.push('\n');
    }
    out
}

fn handler_theme(color: bool) -> miette::GraphicalTheme {
    if color {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::none()
    }
}

/// The closest candidate by edit distance (a swap of two neighbours counts as one edit), for "did you mean" hints.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (levenshtein(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev2: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            let mut d = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && *ca == b[j - 1] && a[i - 1] == *cb {
                d = d.min(prev2[j - 1] + 1);
            }
            cur.push(d);
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_col_and_caret() {
        let file = SourceFile::new("Dockerfile", "FROM scratch\nFORM x\n");
        let d = Diagnostic::at(&file, Span::new(13, 17), "unknown instruction `FORM`")
            .help("did you mean `FROM`?");
        let text = render(&d, false);
        assert!(text.contains("Dockerfile:2:1"), "{text}");
        assert!(text.contains("FORM x"), "{text}");
        assert!(text.contains('^'), "{text}");
        assert!(text.contains("did you mean `FROM`?"), "{text}");
    }

    #[test]
    fn renders_several_in_order() {
        let file = SourceFile::new("Dockerfile", "FORM x\nRUN\n");
        let first = Diagnostic::at(&file, Span::new(0, 4), "unknown instruction `FORM`");
        let second = Diagnostic::at(
            &file,
            Span::new(7, 10),
            "RUN requires at least one argument",
        );
        let both = Diagnostic::several([first.clone(), second.clone()]).unwrap();
        assert_eq!(both.to_string(), first.to_string());
        assert_eq!(
            render(&both, false),
            render(&first, false) + &render(&second, false)
        );
        assert!(Diagnostic::several([]).is_none());
    }

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(suggest("FORM", ["FROM", "RUN", "COPY"]), Some("FROM"));
        assert_eq!(suggest("XYZZY", ["FROM", "RUN", "COPY"]), None);
    }
}
