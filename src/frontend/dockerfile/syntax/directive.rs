//! Parser directives (`# syntax=`, `# escape=`, `# check=`) as BuildKit recognises them: only in the
//! leading comment block, names case-insensitive, each at most once; plus BuildKit's looser
//! `syntax` detection (`//syntax=`, a `{"syntax": ...}` JSON document, a leading `#!` line).

use super::json::json_object_string;

const VALID: [&str; 3] = ["syntax", "escape", "check"];

/// A recognised directive: lower-cased name, value, and its 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// BuildKit's `DirectiveParser`: fed one line at a time, it stops for good at the first line that
/// is not a known directive.
#[derive(Clone, Debug)]
pub struct DirectiveParser {
    comment: &'static str,
    line: usize,
    seen: Vec<String>,
    done: bool,
}

/// `\s` of Go's regexp.
fn is_re_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0c' | '\r')
}

impl DirectiveParser {
    /// A parser for directives behind `comment` (`#`, or `//` in BuildKit's syntax detection).
    pub fn new(comment: &'static str) -> DirectiveParser {
        DirectiveParser {
            comment,
            line: 0,
            seen: Vec::new(),
            done: false,
        }
    }

    /// One line (without its newline). `Err` for a repeated directive.
    pub fn parse_line(&mut self, line: &str) -> Result<Option<Found>, String> {
        self.line += 1;
        if self.done {
            return Ok(None);
        }
        let Some((name, value)) = line
            .strip_prefix(self.comment)
            .and_then(|rest| split_directive(rest.trim_start()))
        else {
            self.done = true;
            return Ok(None);
        };
        let name = name.to_ascii_lowercase();
        if !VALID.contains(&name.as_str()) {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&name) {
            return Err(format!("only one {name} parser directive can be used"));
        }
        self.seen.push(name.clone());
        Ok(Some(Found {
            name,
            value,
            line: self.line,
        }))
    }

    /// Every directive at the top of `text` (BuildKit's `ParseAll`); stops at the first error.
    pub fn parse_all(&mut self, text: &str) -> Vec<Found> {
        let mut out = Vec::new();
        for line in text.lines() {
            if self.done {
                break;
            }
            match self.parse_line(line) {
                Ok(Some(d)) => out.push(d),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        out
    }
}

/// `^([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`: the name and the value.
fn split_directive(rest: &str) -> Option<(String, String)> {
    let name_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map_or(rest.len(), |(i, _)| i);
    if name_len == 0 {
        return None;
    }
    let after = rest[name_len..]
        .trim_start_matches(is_re_space)
        .strip_prefix('=')?;
    if after.contains('\n') {
        return None;
    }
    let value = after.trim_matches(is_re_space);
    if !value.is_empty() {
        return Some((rest[..name_len].to_string(), value.to_string()));
    }
    // `(.+?)` needs one character: with only blanks after `=`, it takes the last blank.
    after
        .chars()
        .last()
        .map(|c| (rest[..name_len].to_string(), c.to_string()))
}

/// What BuildKit's `DetectSyntax`/`ParseDirective` report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detected {
    /// The value up to the first space (for `syntax`, the frontend image reference).
    pub value: String,
    /// The whole value.
    pub cmdline: String,
    /// 1-based line; 0 for the JSON form (1 when a `#!` line precedes it).
    pub line: usize,
}

/// BuildKit's `DetectSyntax`: `# syntax=`, then `//syntax=`, then a JSON document's `"syntax"`.
pub fn detect_syntax(text: &str) -> Option<Detected> {
    detect(text, "syntax", true)
}

/// BuildKit's `ParseDirective(key)`: only the `#` form (used for `check`).
pub fn parse_directive(text: &str, key: &str) -> Option<Detected> {
    detect(text, key, false)
}

fn detect(text: &str, key: &str, any_format: bool) -> Option<Detected> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let (text, line) = if first.starts_with("#!") {
        (rest, 1)
    } else {
        (text, 0)
    };
    let prefixes: &[&'static str] = if any_format { &["#", "//"] } else { &["#"] };
    for prefix in prefixes {
        let mut p = DirectiveParser::new(prefix);
        p.line = line;
        if let Some(d) = p.parse_all(text).into_iter().find(|d| d.name == key) {
            let value = d.value.split(' ').next().unwrap_or_default().to_string();
            return Some(Detected {
                value,
                cmdline: d.value,
                line: d.line,
            });
        }
    }
    if any_format {
        let v = json_object_string(text, key)?;
        return Some(Detected {
            value: v.clone(),
            cmdline: v,
            line,
        });
    }
    None
}
