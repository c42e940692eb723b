//! Reading a Dockerfile's physical lines into BuildKit's raw nodes: parser directives, comments,
//! continuation lines, heredoc bodies, and where parsing goes on after an error.

use std::sync::Arc;

use super::super::directive::DirectiveParser;
use super::super::heredoc::{HeredocWord, heredocs_from_line};
use super::{Ast, Directive, Heredoc, Joined, Node, Warning, go_lower, node_from_line};
use crate::diag::{Diagnostic, SourceFile, Span};

/// A physical line as Go's scanner hands it over.
#[derive(Clone, Copy, Debug)]
struct Line {
    start: usize,
    /// End of the content: trailing `\r` and `\n` removed (BuildKit's `trimNewline`).
    end: usize,
    /// Start of the next line (after the `\n`).
    next: usize,
}

/// Go's `bufio.Scanner` refuses longer tokens; BuildKit reports it as an error.
const MAX_TOKEN: usize = 64 * 1024;

/// Splits into lines at `\n`, keeping the newline out of the content. A UTF-8 byte-order mark at
/// the very start is skipped. Also says whether a line was too long for Go's scanner (which then
/// stops before it).
fn physical_lines(text: &str) -> (Vec<Line>, bool) {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let rest = &text[start..];
        let (token_len, next) = match rest.find('\n') {
            Some(i) => (i + 1, start + i + 1),
            None => (rest.len(), text.len()),
        };
        // A final line without newline must leave the scanner one spare byte.
        let limit = if rest.contains('\n') {
            MAX_TOKEN
        } else {
            MAX_TOKEN - 1
        };
        if token_len > limit {
            return (out, true);
        }
        let content = text[start..next].trim_end_matches(['\r', '\n']);
        let mut line = Line {
            start,
            end: start + content.len(),
            next,
        };
        if start == 0 && text.starts_with('\u{feff}') {
            line.start = 3;
        }
        out.push(line);
        start = next;
    }
    (out, false)
}

fn is_comment(s: &str) -> bool {
    s.trim_start().starts_with('#')
}

/// Strips a trailing escape character and the blanks after it; says whether the line continues.
/// BuildKit's pattern `([^E])E[ \t]*$|^E[ \t]*$`: an escape preceded by another escape does not
/// continue the line (`C:\\` stays as written).
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    match t.strip_suffix(escape) {
        Some(content) if !content.ends_with(escape) => (content, true),
        _ => (line, false),
    }
}

const HEREDOC_KEYWORDS: [&str; 3] = ["add", "copy", "run"];

/// Whether BuildKit reads heredoc bodies after this node (RUN, COPY, ADD, also inside ONBUILD;
/// never for the JSON form).
fn can_contain_heredoc(node: &Node) -> bool {
    let node = if go_lower(&node.value) == "onbuild" {
        node.nested().unwrap_or(node)
    } else {
        node
    };
    HEREDOC_KEYWORDS.contains(&go_lower(&node.value).as_str()) && !node.json
}

/// Parses a Dockerfile into BuildKit's raw tree. Fails like BuildKit: on a bad or repeated
/// directive, a JSON array with a non-string, an old-form `ENV`/`LABEL` without a value, an
/// unterminated heredoc, or a file with no instructions. Every error found is reported (see
/// `parse_all`), the first in the file deciding the message of the `Err`.
pub fn parse(file: Arc<SourceFile>) -> Result<Ast, Diagnostic> {
    let (ast, errors) = parse_all(file);
    match Diagnostic::several(errors) {
        Some(d) => Err(d),
        None => Ok(ast),
    }
}

/// An error while scanning: `Line` leaves the rest of the file readable, `File` does not.
enum Stop {
    Line(Diagnostic),
    File(Diagnostic),
}

/// Parses a Dockerfile, going on after errors that concern one instruction only: the tree of the
/// instructions that parsed, and every error in file order.
pub(in crate::frontend::dockerfile::syntax) fn parse_all(
    file: Arc<SourceFile>,
) -> (Ast, Vec<Diagnostic>) {
    let mut scan = Scanner::new(file);
    let mut errors = Vec::new();
    while scan.idx < scan.lines.len() {
        // Recovery, decided from BuildKit's parser (`parser.Parse`, `newNodeFromLine`) and its
        // instruction step (`instructions.Parse`): an error inside one logical line (a JSON array with
        // a non-string, an old-form ENV without a value; in the typed step an unknown instruction or bad
        // arguments) leaves where the following lines start and end as it was, so parsing goes on with
        // the next line and each such error is reported. An error that changes how the rest of the file
        // reads stops everything: a bad or repeated directive or escape token (the escape character
        // decides where lines continue), a malformed heredoc word or an unterminated heredoc (where the
        // body ends is unknown), and a line error on a line with `<<` (its heredoc bodies, unread, would
        // be parsed as instructions).
        match scan.node() {
            Ok(Some(node)) => scan.children.push(node),
            Ok(None) => {}
            Err(Stop::Line(d)) => errors.push(d),
            Err(Stop::File(d)) => {
                errors.push(d);
                return (scan.into_ast(), errors);
            }
        }
    }
    errors.extend(scan.end_of_file(errors.is_empty()));
    (scan.into_ast(), errors)
}

/// The state of one pass over a file's physical lines.
struct Scanner {
    file: Arc<SourceFile>,
    lines: Vec<Line>,
    too_long: bool,
    /// The next physical line to read.
    idx: usize,
    directives: DirectiveParser,
    found: Vec<Directive>,
    escape: char,
    children: Vec<Node>,
    warnings: Vec<Warning>,
    comments: Vec<String>,
}

impl Scanner {
    fn new(file: Arc<SourceFile>) -> Scanner {
        let (lines, too_long) = physical_lines(&file.text);
        Scanner {
            file,
            lines,
            too_long,
            idx: 0,
            directives: DirectiveParser::new("#"),
            found: Vec::new(),
            escape: '\\',
            children: Vec::new(),
            warnings: Vec::new(),
            comments: Vec::new(),
        }
    }

    fn into_ast(self) -> Ast {
        Ast {
            file: self.file,
            directives: self.found,
            escape: self.escape,
            children: self.children,
            warnings: self.warnings,
        }
    }

    /// Reads from the next physical line: the instruction starting there, if any, with its
    /// continuation lines and heredoc bodies.
    fn node(&mut self) -> Result<Option<Node>, Stop> {
        let file = self.file.clone();
        let text: &str = &file.text;
        let line = self.lines[self.idx];
        self.idx += 1;
        let raw = &text[line.start..line.end];
        if is_comment(raw) {
            // Like BuildKit: the first byte of the untrimmed line is dropped, then it is trimmed.
            let full = &text.as_bytes()[line.start..line.next];
            let comment = String::from_utf8_lossy(&full[1..]).trim().to_string();
            if comment.is_empty() {
                self.comments.clear();
            } else {
                self.comments.push(comment);
            }
        }
        let trimmed = raw.trim_start();
        let first_start = line.end - trimmed.len();
        self.directive(line, trimmed).map_err(Stop::File)?;
        let content = if is_comment(trimmed) { "" } else { trimmed };
        let start_line = self.idx;
        let Some((joined, mut last_end)) = self.logical_line(text, content, first_start, line.end)
        else {
            return Ok(None);
        };
        let logical = joined.text.as_str();
        let first_span = Span::new(first_start, last_end);
        let prev_comment = std::mem::take(&mut self.comments);
        let mut node = node_from_line(&joined, 0, logical.len(), self.escape, 0).map_err(|e| {
            let span = e.range.map_or(first_span, |(a, b)| joined.span(a, b));
            let d = Diagnostic::at(&file, span, e.msg);
            let d = match e.help {
                Some(h) => d.help(h),
                None => d,
            };
            if logical.contains("<<") {
                Stop::File(d)
            } else {
                Stop::Line(d)
            }
        })?;
        if can_contain_heredoc(&node) && logical.contains("<<") {
            self.heredocs(&mut node, &joined, first_span, &mut last_end)
                .map_err(Stop::File)?;
        }
        node.start_line = start_line;
        node.end_line = self.idx;
        node.prev_comment = prev_comment;
        node.span = Span::new(joined.map(node.pos.keyword.0), last_end);
        Ok(Some(node))
    }

    /// Records a parser directive on `line` (whose text from the first non-blank is `trimmed`).
    fn directive(&mut self, line: Line, trimmed: &str) -> Result<(), Diagnostic> {
        let line_span = Span::new(line.start, line.end);
        match self.directives.parse_line(trimmed) {
            Err(msg) => return Err(Diagnostic::at(&self.file, line_span, msg)),
            Ok(Some(d)) => {
                self.comments.pop();
                if d.name == "escape" {
                    self.escape = match d.value.as_str() {
                        "\\" => '\\',
                        "`" => '`',
                        v => {
                            return Err(Diagnostic::at(
                                &self.file,
                                line_span,
                                format!("invalid escape token '{v}' does not match ` or \\"),
                            )
                            .help("write `# escape=\\` (the default) or `# escape=``"));
                        }
                    };
                }
                self.found.push(Directive {
                    name: d.name,
                    value: d.value,
                    line: self.idx,
                    span: line_span,
                });
            }
            Ok(None) => {}
        }
        Ok(())
    }

    /// Joins `content` (the first line's text, at `first_start`; the line ends at `end`) with its
    /// continuation lines: the logical line and where its last physical line ends, or `None` when
    /// there is nothing to parse.
    fn logical_line(
        &mut self,
        text: &str,
        content: &str,
        first_start: usize,
        end: usize,
    ) -> Option<(Arc<Joined>, usize)> {
        let (piece, mut continued) = trim_continuation(content, self.escape);
        if !continued && piece.is_empty() {
            return None;
        }
        let mut joined = Joined::default();
        joined.push(first_start, piece);
        let mut last_end = end;
        let mut empty_continuation = false;
        while continued && self.idx < self.lines.len() {
            let next = self.lines[self.idx];
            self.idx += 1;
            last_end = next.end;
            let raw = &text[next.start..next.end];
            if is_comment(raw) {
                continue;
            }
            if raw.trim_start().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (piece, more) = trim_continuation(raw, self.escape);
            joined.push(next.start, piece);
            continued = more;
        }
        if empty_continuation {
            self.warnings.push(Warning {
                message: format!("Empty continuation line found in: {}", joined.text),
                line: self.idx,
                span: Span::new(first_start, last_end),
            });
        }
        Some((Arc::new(joined), last_end))
    }

    /// Reads the bodies of the heredocs `node`'s line opens, moving `last_end` to the last
    /// terminator.
    fn heredocs(
        &mut self,
        node: &mut Node,
        joined: &Joined,
        first_span: Span,
        last_end: &mut usize,
    ) -> Result<(), Diagnostic> {
        let file = self.file.clone();
        let text: &str = &file.text;
        let words = heredocs_from_line(&joined.text)
            .map_err(|msg| Diagnostic::at(&file, first_span, msg))?;
        let mut search = 0;
        for HeredocWord {
            name,
            fd,
            expand,
            chomp,
        } in words
        {
            let marker = marker_span(joined, &mut search);
            let body_start = self.lines.get(self.idx).map_or(text.len(), |l| l.start);
            let mut terminator = None;
            while self.idx < self.lines.len() {
                let l = self.lines[self.idx];
                self.idx += 1;
                let mut candidate = &text[l.start..l.end];
                if chomp {
                    candidate = candidate.trim_start_matches('\t');
                }
                if candidate == name {
                    terminator = Some(l);
                    break;
                }
            }
            let Some(term) = terminator else {
                return Err(
                    Diagnostic::at(&file, marker, "unterminated heredoc").help(format!(
                        "end the heredoc with a line that holds only `{name}`"
                    )),
                );
            };
            *last_end = term.end;
            node.heredocs.push(Heredoc {
                content: text[body_start..term.start].to_string(),
                name,
                fd,
                expand,
                chomp,
                marker,
                body: Span::new(body_start, term.start),
                terminator: Span::new(term.start, term.end),
            });
        }
        Ok(())
    }

    /// The errors of the file as a whole, once every line is read; `clean` says no line failed (a
    /// file whose every instruction failed is not also reported as empty).
    fn end_of_file(&self, clean: bool) -> Option<Diagnostic> {
        let text: &str = &self.file.text;
        if self.children.is_empty() && clean {
            return Some(
                Diagnostic::at(
                    &self.file,
                    Span::new(text.len(), text.len()),
                    "file with no instructions",
                )
                .help("a Dockerfile starts with `FROM <image>` (or `FROM scratch`)"),
            );
        }
        if self.too_long {
            let at = self.lines.last().map_or(0, |l| l.next);
            return Some(Diagnostic::at(
                &self.file,
                Span::new(at, at),
                format!(
                    "dockerfile line greater than max allowed size of {}",
                    MAX_TOKEN - 1
                ),
            ));
        }
        None
    }
}

/// The span of the next `<<` word in the logical line at or after `*search` (digits before it
/// included, up to the next unquoted blank), advancing `*search`.
fn marker_span(joined: &Joined, search: &mut usize) -> Span {
    let text = joined.text.as_str();
    let Some(rel) = text.get(*search..).and_then(|t| t.find("<<")) else {
        return joined.span(text.len(), text.len());
    };
    let at = *search + rel;
    let start = at
        - (text[..at].len()
            - text[..at]
                .trim_end_matches(|c: char| c.is_ascii_digit())
                .len());
    let mut end = at + 2;
    let bytes = text.as_bytes();
    if bytes.get(end) == Some(&b'-') {
        end += 1;
    }
    while matches!(bytes.get(end), Some(b' ' | b'\t')) {
        end += 1;
    }
    let mut quote = None;
    for (i, c) in text[end..].char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c.is_whitespace() => {
                end += i;
                *search = end;
                return joined.span(start, end);
            }
            None => {}
        }
    }
    end = text.len();
    *search = end;
    joined.span(start, end)
}
