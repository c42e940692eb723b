//! BuildKit's raw parse tree (`parser.Node`): logical lines split into a keyword, flags and
//! argument nodes by per-instruction rules, heredoc bodies attached, and the AST dump BuildKit's
//! parser tests compare against.
//!
//! This layer mirrors BuildKit's parser rule for rule, quirks included (flags are read byte by byte,
//! unknown instructions keep one empty argument, `ENV` values keep their quotes), so its dump can be
//! compared byte for byte with BuildKit's. The typed AST in `ast.rs` is built from it.

use std::sync::Arc;

use super::json::{Json, json_array};
use super::quote::{go_quote, go_quote_list};
use crate::diag::{SourceFile, Span};

mod scan;

pub use scan::parse;
pub(super) use scan::parse_all;

/// The result of parsing a whole file (BuildKit's `parser.Result`).
#[derive(Clone, Debug)]
pub struct Ast {
    pub file: Arc<SourceFile>,
    /// Recognised parser directives from the leading comment block, in order.
    pub directives: Vec<Directive>,
    /// The escape character in effect (`\` unless `# escape=` says otherwise).
    pub escape: char,
    /// One node per instruction, in file order.
    pub children: Vec<Node>,
    pub warnings: Vec<Warning>,
}

/// A parser directive such as `# syntax=docker/dockerfile:1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased name: `syntax`, `escape` or `check`.
    pub name: String,
    pub value: String,
    /// 1-based line.
    pub line: usize,
    pub span: Span,
}

/// A non-fatal finding, e.g. an empty line inside a continuation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// BuildKit's short text, e.g. `Empty continuation line found in: RUN a b`.
    pub message: String,
    /// 1-based line BuildKit reports (the instruction's last line).
    pub line: usize,
    pub span: Span,
}

/// One instruction (BuildKit's child of the root `Node`).
#[derive(Clone, Debug)]
pub struct Node {
    /// The keyword as written.
    pub value: String,
    /// The logical line: continuations joined, comment and blank lines inside them dropped.
    pub original: String,
    /// Leading `--flag` words with quotes removed and escapes applied (BuildKit's `Flags`).
    pub flags: Vec<String>,
    /// The argument nodes (BuildKit's `Next` chain).
    pub args: Vec<Arg>,
    /// The arguments were a JSON array (BuildKit's `json` attribute).
    pub json: bool,
    pub heredocs: Vec<Heredoc>,
    /// 1-based first and last physical line, continuations and heredoc bodies included.
    pub start_line: usize,
    pub end_line: usize,
    /// The comment lines directly above, without `#` (BuildKit's `PrevComment`).
    pub prev_comment: Vec<String>,
    /// From the keyword to the end of the last line (heredoc terminator included), no newline.
    pub span: Span,
    /// The escape character in effect for this node.
    pub escape: char,
    pub(super) pos: Positions,
}

/// Where the parts of a node are in its logical line (`Positions::line`), for the typed AST's spans.
#[derive(Clone, Debug)]
pub(super) struct Positions {
    pub line: Arc<Joined>,
    pub keyword: (usize, usize),
    /// The raw text of each flag word (quotes intact).
    pub flags: Vec<(usize, usize)>,
    /// The argument text after the flags, trimmed.
    pub args: (usize, usize),
}

/// An argument node: a string, or (for ONBUILD) a nested instruction.
#[derive(Clone, Debug)]
pub enum Arg {
    Value(String),
    Node(Box<Node>),
}

impl Arg {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Arg::Value(s) => Some(s),
            Arg::Node(_) => None,
        }
    }
}

/// A here-document attached to an instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter, quotes removed.
    pub name: String,
    /// The file descriptor before `<<` (`3<<EOF`), 0 when absent.
    pub fd: u64,
    /// False when the delimiter was (partly) quoted: no variable expansion in the body.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from body lines when the body is used.
    pub chomp: bool,
    /// The body exactly as in the file (line endings and leading tabs kept).
    pub content: String,
    /// The `<<EOF` word in the instruction line (best effort: the n-th `<<` of the line).
    pub marker: Span,
    /// The body lines, newline of the last one included.
    pub body: Span,
    /// The terminator line, without its newline.
    pub terminator: Span,
}

impl Node {
    /// BuildKit's `Node.Dump()` for one instruction: `run ["--flag"] "arg"` (no parentheses).
    pub fn dump(&self) -> String {
        let mut s = go_lower(&self.value);
        if !self.flags.is_empty() {
            s.push(' ');
            s.push_str(&go_quote_list(&self.flags));
        }
        for a in &self.args {
            s.push(' ');
            match a {
                Arg::Value(v) => s.push_str(&go_quote(v.as_bytes())),
                Arg::Node(n) => {
                    s.push('(');
                    s.push_str(&n.dump());
                    s.push(')');
                }
            }
        }
        s.trim_matches(char::is_whitespace).to_string()
    }

    /// The nested instruction of `ONBUILD`, if any.
    pub fn nested(&self) -> Option<&Node> {
        match self.args.first() {
            Some(Arg::Node(n)) => Some(n),
            _ => None,
        }
    }
}

/// The whole AST dump, exactly as BuildKit's parser tests expect it (its `result` files): one
/// `(instruction ...)` line per instruction, each ending in a newline.
pub fn dump(ast: &Ast) -> String {
    let mut s = String::new();
    for n in &ast.children {
        s.push('(');
        s.push_str(&n.dump());
        s.push_str(")\n");
    }
    let mut out = s.trim_matches(char::is_whitespace).to_string();
    out.push('\n');
    out
}

/// Go's `strings.ToLower`: one character at a time, each mapped to one character.
pub fn go_lower(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    s.chars()
        .map(|c| match c {
            // Rust lower-cases U+0130 to two characters; Go's simple mapping gives `i`.
            '\u{130}' => 'i',
            c => c.to_lowercase().next().unwrap_or(c),
        })
        .collect()
}

/// A logical line: the joined text and where each piece came from in the file.
#[derive(Clone, Debug, Default)]
pub(super) struct Joined {
    pub text: String,
    /// (offset in `text`, offset in the file) for each non-empty piece, in order.
    segs: Vec<(usize, usize)>,
}

impl Joined {
    pub(super) fn push(&mut self, file_offset: usize, piece: &str) {
        if !piece.is_empty() {
            self.segs.push((self.text.len(), file_offset));
            self.text.push_str(piece);
        }
    }

    /// File offset of the byte at `j` in the joined text.
    pub(crate) fn map(&self, j: usize) -> usize {
        let i = self.segs.partition_point(|&(js, _)| js <= j);
        match i.checked_sub(1).and_then(|i| self.segs.get(i)) {
            Some(&(js, fo)) => fo + (j - js),
            None => 0,
        }
    }

    /// The file span of the joined range `a..b`, first byte to last byte.
    pub(crate) fn span(&self, a: usize, b: usize) -> Span {
        if b > a {
            Span::new(self.map(a), self.map(b - 1) + 1)
        } else if a > 0 {
            let at = self.map(a - 1) + 1;
            Span::new(at, at)
        } else {
            let at = self.map(0);
            Span::new(at, at)
        }
    }
}

/// BuildKit's `reWhitespace`: keywords and FROM/COPY arguments split on this set only.
pub(super) fn is_ascii_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0b' | '\x0c' | '\r')
}

/// Go's `unicode.IsSpace` applied to a single byte taken as a Latin-1 character, as BuildKit's
/// byte-wise flag and HEALTHCHECK scanners do.
fn is_space_byte(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | b' ' | 0x85 | 0xa0)
}

/// Byte ranges of the runs of non-blank characters in `s` (quotes are not special).
pub(super) fn split_blank(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in s.char_indices() {
        match (is_ascii_blank(c), start) {
            (true, Some(st)) => {
                out.push((st, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(st) = start {
        out.push((st, s.len()));
    }
    out
}

/// BuildKit's `parseWords`: whitespace-separated words where quotes and the escape character keep
/// whitespace inside a word. The words keep their quotes and escapes; each comes with its range.
pub(super) fn parse_words(s: &str, escape: char) -> Vec<(String, (usize, usize))> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let mut out = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut start = 0;
    let mut quote = '\0';
    let mut blank_ok = false;
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut i = 0;
    while i <= chars.len() {
        let at_end = i == chars.len();
        let (pos, mut ch) = chars.get(i).copied().unwrap_or((s.len(), '\0'));
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                i += 1;
                continue;
            }
            phase = Phase::Word;
            start = pos;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                out.push((std::mem::take(&mut word), (start, s.len())));
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    out.push((std::mem::take(&mut word), (start, pos)));
                }
                word.clear();
                blank_ok = false;
                i += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if i + 1 == chars.len() {
                    // An escape at the very end is dropped.
                    i += 1;
                    continue;
                }
                word.push(ch);
                i += 1;
                ch = chars[i].1;
            }
            word.push(ch);
            i += 1;
            continue;
        }
        // In quotes.
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if i + 1 == chars.len() {
                phase = Phase::Word;
                i += 1;
                continue;
            }
            i += 1;
            word.push(ch);
            ch = chars[i].1;
        }
        word.push(ch);
        i += 1;
    }
    out
}

/// BuildKit's `extractBuilderFlags`, byte by byte like the original (so a non-ASCII byte becomes the
/// Latin-1 character of the same value). Returns the processed flag words, their raw ranges, and
/// where the rest of the line starts (`None`: nothing is left).
fn extract_flags(line: &str, escape: char) -> (Vec<String>, Vec<(usize, usize)>, Option<usize>) {
    let b = line.as_bytes();
    let esc = u8::try_from(escape).unwrap_or(b'\\');
    let mut words = Vec::new();
    let mut ranges = Vec::new();
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut start = 0;
    let mut quote = 0u8;
    let mut blank_ok = false;
    let mut pos = 0;
    while pos <= b.len() {
        let mut ch = b.get(pos).copied().unwrap_or(0);
        if phase == Phase::Spaces {
            if pos == b.len() {
                break;
            }
            if is_space_byte(ch) {
                pos += 1;
                continue;
            }
            if ch != b'-' || b.get(pos + 1) != Some(&b'-') {
                return (words, ranges, Some(pos));
            }
            phase = Phase::Word;
            start = pos;
        }
        if pos == b.len() {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
                ranges.push((start, pos));
            }
            break;
        }
        if phase == Phase::Word {
            if is_space_byte(ch) {
                phase = Phase::Spaces;
                if word == "--" {
                    return (words, ranges, Some(pos));
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                    ranges.push((start, pos));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == b'\'' || ch == b'"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            if ch == esc {
                if pos + 1 == b.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = b[pos];
            }
            word.push(char::from(ch));
            pos += 1;
            continue;
        }
        // In quotes.
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        if ch == esc {
            if pos + 1 == b.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = b[pos];
        }
        word.push(char::from(ch));
        pos += 1;
    }
    (words, ranges, None)
}

/// The text of `line` from byte `at`, which BuildKit's byte-wise scanners may leave inside a
/// character: then the position moves to the next character boundary (the dump of such a line can
/// differ from Go's only in how the broken character is shown).
fn char_floor(line: &str, mut at: usize) -> usize {
    while at < line.len() && !line.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// Trims Unicode whitespace on both sides (Go's `strings.TrimSpace`), returning the range.
fn trim_range(s: &str, a: usize, b: usize) -> (usize, usize) {
    let t = &s[a..b];
    let lead = t.len() - t.trim_start().len();
    let trail = t.trim_start().len() - t.trim().len();
    (a + lead, b - trail)
}

/// A parse error: the message, the range of the logical line it concerns (the whole instruction
/// when `None`) and a hint.
struct NodeError {
    msg: String,
    range: Option<(usize, usize)>,
    help: Option<String>,
}

impl NodeError {
    fn new(msg: impl Into<String>) -> NodeError {
        NodeError {
            msg: msg.into(),
            range: None,
            help: None,
        }
    }
    fn at(mut self, a: usize, b: usize) -> NodeError {
        self.range = Some((a, b));
        self
    }
    fn help(mut self, help: impl Into<String>) -> NodeError {
        self.help = Some(help.into());
        self
    }
}

fn not_strings(base: usize, bad: (usize, usize)) -> NodeError {
    NodeError::new("when using JSON array syntax, arrays must be comprised of strings only")
        .at(base + bad.0, base + bad.1)
        .help(
            "quote every element, e.g. [\"echo\", \"1\"]; or drop the brackets for the shell form",
        )
}

/// BuildKit's `newNodeFromLine` for the text `joined.text[a..b]`.
fn node_from_line(
    joined: &Arc<Joined>,
    a: usize,
    b: usize,
    escape: char,
    depth: usize,
) -> Result<Node, NodeError> {
    let text = joined.text.as_str();
    let (ta, tb) = trim_range(text, a, b);
    let trimmed = &text[ta..tb];
    // The keyword ends at the first run of ASCII blanks.
    let (kw_end, rest_start) = match trimmed.find(is_ascii_blank) {
        Some(i) => {
            let after = trimmed[i..]
                .find(|c: char| !is_ascii_blank(c))
                .map_or(trimmed.len(), |j| i + j);
            (ta + i, Some(ta + after))
        }
        None => (tb, None),
    };
    let keyword = text[ta..kw_end].to_string();
    let (mut flags, mut flag_ranges, mut args) = (Vec::new(), Vec::new(), (tb, tb));
    if let Some(rs) = rest_start {
        let (f, r, after) = extract_flags(&text[rs..tb], escape);
        flags = f;
        flag_ranges = r.into_iter().map(|(x, y)| (rs + x, rs + y)).collect();
        if let Some(after) = after {
            let after = char_floor(text, rs + after);
            args = trim_range(text, after, tb);
        }
    }
    let rest = &text[args.0..args.1];
    let lower = go_lower(&keyword);
    let mut json = false;
    let values =
        |v: Vec<&str>| -> Vec<Arg> { v.into_iter().map(|s| Arg::Value(s.to_string())).collect() };
    let blank_split = |s: &str| -> Vec<Arg> {
        if s.is_empty() {
            return Vec::new();
        }
        values(split_blank(s).into_iter().map(|(x, y)| &s[x..y]).collect())
    };
    let args_nodes: Vec<Arg> = match lower.as_str() {
        "add" | "copy" | "volume" => match json_array(rest) {
            Json::Array(items) => {
                json = true;
                items.into_iter().map(|(s, _)| Arg::Value(s)).collect()
            }
            Json::Mixed(bad) => return Err(not_strings(args.0, bad)),
            Json::Text => blank_split(rest),
        },
        "run" | "cmd" | "entrypoint" | "shell" => maybe_json(rest, args.0, &mut json)?,
        "arg" => parse_words(rest, escape)
            .into_iter()
            .map(|(w, _)| Arg::Value(w))
            .collect(),
        "env" | "label" => env_args(&lower, rest, args, escape)?,
        "from" | "expose" => blank_split(rest),
        "maintainer" | "user" | "workdir" | "stopsignal" => {
            if rest.is_empty() {
                Vec::new()
            } else {
                values(vec![rest])
            }
        }
        "healthcheck" => healthcheck_args(rest, args.0, &mut json)?,
        "onbuild" => {
            if rest.is_empty() {
                Vec::new()
            } else if depth > 64 {
                // BuildKit recurses without limit; nesting this deep is no real Dockerfile.
                return Err(NodeError::new("ONBUILD nested too deeply"));
            } else {
                let child = node_from_line(joined, args.0, args.1, escape, depth + 1)?;
                vec![Arg::Node(Box::new(child))]
            }
        }
        // Unknown instructions keep one empty argument; the typed step rejects them.
        _ => vec![Arg::Value(String::new())],
    };
    Ok(Node {
        value: keyword,
        original: text[a..b].to_string(),
        flags,
        args: args_nodes,
        json,
        heredocs: Vec::new(),
        start_line: 0,
        end_line: 0,
        prev_comment: Vec::new(),
        span: Span::default(),
        escape,
        pos: Positions {
            line: joined.clone(),
            keyword: (ta, kw_end),
            flags: flag_ranges,
            args,
        },
    })
}

/// The arguments of `ENV` and `LABEL` (`lower` is the keyword): key, value and `=` for each pair;
/// the old form `ENV key the rest` keeps the rest as written.
fn env_args(
    lower: &str,
    rest: &str,
    args: (usize, usize),
    escape: char,
) -> Result<Vec<Arg>, NodeError> {
    let values =
        |v: Vec<&str>| -> Vec<Arg> { v.into_iter().map(|s| Arg::Value(s.to_string())).collect() };
    let words = parse_words(rest, escape);
    Ok(match words.first() {
        None => Vec::new(),
        Some((first, _)) if !first.contains('=') => {
            // Old form: the key, then the rest of the line as it is.
            let Some(i) = rest.find(is_ascii_blank) else {
                let key = if lower == "env" { "ENV" } else { "LABEL" };
                return Err(NodeError::new(format!(
                    "{key} must have two arguments: `{rest}` has no value"
                ))
                .at(args.0, args.1)
                .help(format!("write `{key} {rest}=<value>`")));
            };
            let value_start = rest[i..]
                .find(|c: char| !is_ascii_blank(c))
                .map_or(rest.len(), |j| i + j);
            values(vec![&rest[..i], &rest[value_start..], ""])
        }
        Some(_) => {
            let mut out = Vec::new();
            for (w, (x, y)) in &words {
                let Some((k, v)) = w.split_once('=') else {
                    let key = if lower == "env" { "ENV" } else { "LABEL" };
                    return Err(NodeError::new(format!(
                        "missing `=` in `{w}`: {key} expects <key>=<value> pairs"
                    ))
                    .at(args.0 + x, args.0 + y)
                    .help(format!(
                        "quote a value that contains spaces, e.g. {key} key=\"a b\""
                    )));
                };
                out.extend([k, v, "="].map(|s| Arg::Value(s.to_string())));
            }
            out
        }
    })
}

/// The arguments of `HEALTHCHECK`; `base` is where `rest` starts in the logical line.
fn healthcheck_args(rest: &str, base: usize, json: &mut bool) -> Result<Vec<Arg>, NodeError> {
    // Byte-wise like BuildKit: the type word, then the rest as for CMD.
    let bytes = rest.as_bytes();
    let sep = bytes
        .iter()
        .position(|&c| is_space_byte(c))
        .unwrap_or(bytes.len());
    Ok(if sep == 0 {
        Vec::new()
    } else {
        let next = bytes[sep..]
            .iter()
            .position(|&c| !is_space_byte(c))
            .map_or(bytes.len(), |j| sep + j);
        let typ = String::from_utf8_lossy(&bytes[..sep]).into_owned();
        let next = char_floor(rest, next);
        let mut out = vec![Arg::Value(typ)];
        out.extend(maybe_json(&rest[next..], base + next, json)?);
        out
    })
}

/// BuildKit's `parseMaybeJSON`: a JSON array of strings, or the whole text as one argument.
/// `base` is where `rest` starts in the logical line.
fn maybe_json(rest: &str, base: usize, json: &mut bool) -> Result<Vec<Arg>, NodeError> {
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    match json_array(rest) {
        Json::Array(items) => {
            *json = true;
            Ok(items.into_iter().map(|(s, _)| Arg::Value(s)).collect())
        }
        Json::Mixed(bad) => Err(not_strings(base, bad)),
        Json::Text => Ok(vec![Arg::Value(rest.to_string())]),
    }
}
