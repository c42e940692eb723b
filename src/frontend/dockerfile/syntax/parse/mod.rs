//! The typed Dockerfile parser: BuildKit's raw tree (`raw.rs`) turned into instructions with their
//! arguments checked (per-instruction argument rules, as BuildKit's instruction step has them) and
//! byte spans into the original text.
//!
//! Every logical line keeps a map back to the original byte offsets, so a word that crosses a
//! continuation gets a span from its first to its last byte in the file. Nothing is expanded here:
//! words keep their quotes and `$VAR`s; flags are kept raw and checked in lowering.

use std::sync::Arc;

use super::ast::{
    Command, Dockerfile, Flag, Healthcheck, Heredoc, Instruction, InstructionKind, KeyValue, Word,
};
use super::heredoc::parse_heredoc;
use super::json::{Json, json_array};
use super::raw::{self, Joined, is_ascii_blank, parse_words, split_blank};
use crate::diag::{Diagnostic, SourceFile, Span, suggest};

/// Every instruction BuildKit knows, for "did you mean" hints.
const ALL_INSTRUCTIONS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Parses a Dockerfile. Words stay raw (quotes and `$VAR` intact); only the syntax is checked here.
/// Like BuildKit, a file without any instruction is an error; a missing `FROM` is for `check`.
/// Every instruction is checked even after one fails (see `raw::parse_all` for what stops parsing):
/// the `Err` holds every error, in file order.
pub fn parse(file: Arc<SourceFile>) -> Result<Dockerfile, Diagnostic> {
    let (ast, mut errors) = raw::parse_all(file.clone());
    let mut instructions = Vec::new();
    for node in &ast.children {
        match instruction(&file, node, node.span, &node.heredocs) {
            Ok(ins) => instructions.push(ins),
            Err(d) => errors.push(d),
        }
    }
    // Raw errors come first and typed ones after; the user reads them top to bottom (a stable sort
    // keeps two errors at one place in the order they were found).
    errors.sort_by_key(|d| d.location().map(|at| at.span.start));
    if let Some(d) = Diagnostic::several(errors) {
        return Err(d);
    }
    Ok(Dockerfile {
        file,
        directives: ast
            .directives
            .iter()
            .map(|d| (d.name.clone(), d.value.clone()))
            .collect(),
        escape: ast.escape,
        instructions,
        warnings: ast.warnings,
    })
}

/// Converts one node of BuildKit's raw tree on its own (as BuildKit's instruction step does per
/// node); [`parse`] does this for every node of a file.
pub fn instruction_from_node(
    file: &Arc<SourceFile>,
    node: &raw::Node,
) -> Result<Instruction, Diagnostic> {
    instruction(file, node, node.span, &node.heredocs)
}

/// An instruction that `word` (upper-cased) spells with two adjacent letters swapped (`FORM`).
fn transposed(word: &str) -> Option<&'static str> {
    let w: Vec<char> = word.chars().collect();
    ALL_INSTRUCTIONS.into_iter().find(|cand| {
        let c: Vec<char> = cand.chars().collect();
        if c.len() != w.len() {
            return false;
        }
        let diff: Vec<usize> = (0..c.len()).filter(|&i| c[i] != w[i]).collect();
        matches!(diff[..], [i, j] if j == i + 1 && c[i] == w[j] && c[j] == w[i])
    })
}

fn usage(name: &str) -> &'static str {
    match name {
        "FROM" => "usage: FROM [--platform=<platform>] <image> [AS <name>]",
        "ARG" => "usage: ARG <name>[=<default>] ...",
        "ENV" => "usage: ENV <key>=<value> ...",
        "LABEL" => "usage: LABEL <key>=<value> ...",
        "WORKDIR" => "usage: WORKDIR <path>",
        "USER" => "usage: USER <user>[:<group>]",
        "RUN" => "usage: RUN <command> or RUN [\"executable\", \"arg\", ...]",
        "CMD" => "usage: CMD <command> or CMD [\"executable\", \"arg\", ...]",
        "ENTRYPOINT" => "usage: ENTRYPOINT <command> or ENTRYPOINT [\"executable\", \"arg\", ...]",
        "COPY" => "usage: COPY [--from=<stage>] [--chown=<user>] [--chmod=<mode>] <src>... <dest>",
        "ADD" => {
            "usage: ADD [--chown=<user>] [--chmod=<mode>] [--checksum=<digest>] <src>... <dest>"
        }
        "ONBUILD" => "usage: ONBUILD <instruction>",
        "HEALTHCHECK" => {
            "usage: HEALTHCHECK NONE or HEALTHCHECK [--interval=<d>] [--timeout=<d>] [--start-period=<d>] [--start-interval=<d>] [--retries=<n>] CMD <command>"
        }
        "SHELL" => "usage: SHELL [\"executable\", \"parameters\"]",
        "STOPSIGNAL" => "usage: STOPSIGNAL <signal>",
        "EXPOSE" => "usage: EXPOSE <port>[/<protocol>] ...",
        "VOLUME" => "usage: VOLUME <path> ... or VOLUME [\"<path>\", ...]",
        "MAINTAINER" => "usage: MAINTAINER <name> (deprecated: use LABEL maintainer=<name>)",
        _ => "",
    }
}

/// Moves `at` forward to a character boundary (BuildKit's byte-wise flag scanner can stop inside
/// a character).
fn boundary(s: &str, mut at: usize) -> usize {
    at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// One raw node being converted: its logical line, its keyword, and where its arguments are.
struct Cx<'a> {
    file: &'a Arc<SourceFile>,
    node: &'a raw::Node,
    joined: &'a Joined,
    /// The instruction's name, upper-case.
    name: &'static str,
    keyword: Word,
    /// The argument text after the flags, and where it starts and ends in the logical line.
    rest: &'a str,
    args_start: usize,
    body_end: usize,
}

impl Cx<'_> {
    fn word(&self, a: usize, b: usize) -> Word {
        Word {
            text: self.joined.text.get(a..b).unwrap_or_default().to_string(),
            span: self.joined.span(a, b),
        }
    }
    /// A word at a range of the argument text.
    fn word_at(&self, (a, b): (usize, usize)) -> Word {
        self.word(self.args_start + a, self.args_start + b)
    }
    fn err(&self, a: usize, b: usize, msg: String) -> Diagnostic {
        Diagnostic::at(self.file, self.joined.span(a, b), msg)
    }
    fn need_args(&self, what: &str) -> Diagnostic {
        Diagnostic::at(
            self.file,
            self.keyword.span,
            format!("{} requires {what}", self.name),
        )
        .help(usage(self.name))
    }
    /// JSON arrays of strings (COPY, ADD, VOLUME), else whitespace-separated words.
    fn list(&self) -> Result<Vec<Word>, Diagnostic> {
        Ok(match json_array(self.rest) {
            Json::Array(items) => items
                .into_iter()
                .map(|(text, (a, b))| Word {
                    text,
                    span: self.joined.span(self.args_start + a, self.args_start + b),
                })
                .collect(),
            Json::Mixed(bad) => {
                return Err(non_string(self.file, self.joined, self.args_start, bad));
            }
            Json::Text => split_blank(self.rest)
                .into_iter()
                .map(|r| self.word_at(r))
                .collect(),
        })
    }
    fn command(&self, text: &str, base: usize) -> Result<Command, Diagnostic> {
        Ok(match json_array(text) {
            Json::Array(items) => {
                let open = text.len() - text.trim_start().len();
                Command::Exec {
                    args: items.into_iter().map(|(s, _)| s).collect(),
                    span: self.joined.span(base + open, base + text.len()),
                }
            }
            Json::Mixed(bad) => return Err(non_string(self.file, self.joined, base, bad)),
            Json::Text => Command::Shell(self.word(base, base + text.len())),
        })
    }
}

/// Converts one raw node. `span` is the instruction's span; `heredocs` the bodies it owns.
fn instruction(
    file: &Arc<SourceFile>,
    node: &raw::Node,
    span: Span,
    heredocs: &[raw::Heredoc],
) -> Result<Instruction, Diagnostic> {
    let joined: &Joined = &node.pos.line;
    let s = joined.text.as_str();
    let (kw_start, kw_end) = node.pos.keyword;
    let keyword = Word {
        text: s.get(kw_start..kw_end).unwrap_or_default().to_string(),
        span: joined.span(kw_start, kw_end),
    };
    let upper = keyword.text.to_ascii_uppercase();

    let Some(name) = ALL_INSTRUCTIONS.iter().copied().find(|n| *n == upper) else {
        let d = Diagnostic::at(
            file,
            keyword.span,
            format!("unknown instruction `{}`", keyword.text),
        );
        return Err(
            match suggest(&keyword.text, ALL_INSTRUCTIONS).or_else(|| transposed(&upper)) {
                Some(s) => d.help(format!("did you mean `{s}`?")),
                None => d.help(format!(
                    "Dockerfile instructions are: {}",
                    ALL_INSTRUCTIONS.join(", ")
                )),
            },
        );
    };

    let flags = flags(node, joined);
    let (args_start, body_end) = (boundary(s, node.pos.args.0), boundary(s, node.pos.args.1));
    let cx = Cx {
        file,
        node,
        joined,
        name,
        keyword,
        rest: &s[args_start..body_end.max(args_start)],
        args_start,
        body_end,
    };
    let kind = match name {
        "FROM" => from(&cx)?,
        "ARG" => arg(&cx)?,
        "ENV" | "LABEL" => env_or_label(&cx)?,
        "WORKDIR" | "USER" | "STOPSIGNAL" | "MAINTAINER" => {
            if cx.rest.is_empty() {
                return Err(cx.need_args("exactly one argument"));
            }
            let w = cx.word_at((0, cx.rest.len()));
            match name {
                "WORKDIR" => InstructionKind::Workdir(w),
                "USER" => InstructionKind::User(w),
                "STOPSIGNAL" => InstructionKind::StopSignal(w),
                _ => InstructionKind::Maintainer(w),
            }
        }
        "RUN" | "CMD" | "ENTRYPOINT" => {
            if cx.rest.is_empty() {
                return Err(cx.need_args("at least one argument"));
            }
            let cmd = cx.command(cx.rest, args_start)?;
            match name {
                "RUN" => InstructionKind::Run(cmd),
                "CMD" => InstructionKind::Cmd(cmd),
                _ => InstructionKind::Entrypoint(cmd),
            }
        }
        "COPY" | "ADD" => copy_or_add(&cx)?,
        "EXPOSE" => {
            let ports: Vec<Word> = split_blank(cx.rest)
                .into_iter()
                .map(|r| cx.word_at(r))
                .collect();
            if ports.is_empty() {
                return Err(cx.need_args("at least one argument"));
            }
            InstructionKind::Expose(ports)
        }
        "VOLUME" => volume(&cx)?,
        "SHELL" => shell(&cx)?,
        "HEALTHCHECK" => healthcheck(&cx)?,
        "ONBUILD" => onbuild(&cx, span, heredocs)?,
        _ => unreachable!("every name in ALL_INSTRUCTIONS has a rule"),
    };

    // ONBUILD hands its heredocs to the nested instruction, where they are used.
    let heredocs = if name == "ONBUILD" {
        Vec::new()
    } else {
        heredocs
            .iter()
            .map(|h| Heredoc {
                name: Word {
                    text: h.name.clone(),
                    span: h.marker,
                },
                fd: h.fd,
                expand: h.expand,
                chomp: h.chomp,
                body: Word {
                    text: h.content.clone(),
                    span: h.body,
                },
            })
            .collect()
    };
    Ok(Instruction {
        span,
        keyword: cx.keyword,
        flags,
        kind,
        heredocs,
    })
}

/// The node's flags, raw, with spans.
fn flags(node: &raw::Node, joined: &Joined) -> Vec<Flag> {
    let s = joined.text.as_str();
    node.pos
        .flags
        .iter()
        .map(|&(a, b)| {
            let (a, b) = (boundary(s, a), boundary(s, b));
            let raw = &s[a..b];
            let body = raw.strip_prefix("--").unwrap_or(raw);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            let value_span = match raw.find('=') {
                Some(eq) => joined.span(a + eq + 1, b),
                None => joined.span(b, b),
            };
            Flag {
                name,
                value,
                span: joined.span(a, b),
                value_span,
            }
        })
        .collect()
}

fn from(cx: &Cx) -> Result<InstructionKind, Diagnostic> {
    let (file, name) = (cx.file, cx.name);
    let fields: Vec<Word> = split_blank(cx.rest)
        .into_iter()
        .map(|r| cx.word_at(r))
        .collect();
    Ok(match fields.as_slice() {
        [] => return Err(cx.need_args("at least one argument")),
        [image] => InstructionKind::From {
            image: image.clone(),
            alias: None,
        },
        [image, as_kw, alias] if as_kw.text.eq_ignore_ascii_case("as") => InstructionKind::From {
            image: image.clone(),
            alias: Some(alias.clone()),
        },
        [_, as_kw] if as_kw.text.eq_ignore_ascii_case("as") => {
            return Err(Diagnostic::at(
                file,
                as_kw.span,
                "FROM ... AS needs a stage name after `AS`",
            )
            .help(usage(name)));
        }
        [_, second, ..] if !second.text.eq_ignore_ascii_case("as") => {
            return Err(Diagnostic::at(
                file,
                second.span,
                format!(
                    "expected `AS` after the image in FROM, found `{}`",
                    second.text
                ),
            )
            .help(usage(name)));
        }
        [_, _, _, extra @ ..] => {
            let span = extra
                .iter()
                .map(|w| w.span)
                .reduce(Span::to)
                .unwrap_or(cx.keyword.span);
            return Err(Diagnostic::at(
                file,
                span,
                "FROM takes an image and an optional `AS <name>`; unexpected extra arguments",
            )
            .help(usage(name)));
        }
        _ => return Err(cx.need_args("at least one argument")),
    })
}

fn arg(cx: &Cx) -> Result<InstructionKind, Diagnostic> {
    let s = cx.joined.text.as_str();
    let words = parse_words(cx.rest, node_escape(cx.node));
    if words.is_empty() {
        return Err(cx.need_args("at least one argument"));
    }
    let mut pairs = Vec::new();
    for (w, (a, b)) in words {
        let (a, b) = (cx.args_start + a, cx.args_start + b);
        match w.find('=') {
            Some(0) => {
                return Err(cx
                    .err(a, b, "ARG names can not be blank".into())
                    .help("write `ARG <name>` or `ARG <name>=<default>`"));
            }
            Some(_) => {
                // Offsets in the raw text: the word's text is the source text here.
                let eq = s[a..b].find('=').unwrap_or(b - a);
                pairs.push(KeyValue {
                    key: cx.word(a, a + eq),
                    value: Some(cx.word(a + eq + 1, b)),
                })
            }
            None => pairs.push(KeyValue {
                key: cx.word(a, b),
                value: None,
            }),
        }
    }
    Ok(InstructionKind::Arg(pairs))
}

fn env_or_label(cx: &Cx) -> Result<InstructionKind, Diagnostic> {
    let (s, rest, name) = (cx.joined.text.as_str(), cx.rest, cx.name);
    let words = parse_words(rest, node_escape(cx.node));
    let Some((first, _)) = words.first() else {
        return Err(cx.need_args("at least one argument"));
    };
    let mut pairs = Vec::new();
    if !first.contains('=') {
        // Legacy form: `ENV key rest of the line` (the raw layer checked there is a value).
        let ws = rest.find(is_ascii_blank).unwrap_or(rest.len());
        let vstart = ws
            + rest[ws..]
                .find(|c: char| !is_ascii_blank(c))
                .unwrap_or(rest.len() - ws);
        pairs.push(KeyValue {
            key: cx.word_at((0, ws)),
            value: Some(cx.word_at((vstart, rest.len()))),
        });
    } else {
        for (_, (a, b)) in words {
            let (a, b) = (cx.args_start + a, cx.args_start + b);
            match s[a..b].find('=') {
                Some(0) | None => {
                    return Err(cx
                        .err(a, b, format!("{name} names can not be blank"))
                        .help(usage(name)));
                }
                Some(eq) => pairs.push(KeyValue {
                    key: cx.word(a, a + eq),
                    value: Some(cx.word(a + eq + 1, b)),
                }),
            }
        }
    }
    Ok(if name == "ENV" {
        InstructionKind::Env(pairs)
    } else {
        InstructionKind::Label(pairs)
    })
}

fn copy_or_add(cx: &Cx) -> Result<InstructionKind, Diagnostic> {
    let (file, name) = (cx.file, cx.name);
    let mut args = cx.list()?;
    match args.len() {
        0 => return Err(cx.need_args("at least one argument")),
        1 => {
            return Err(Diagnostic::at(
                file,
                args[0].span,
                format!("{name} requires at least two arguments (sources and a destination), but only one was provided"),
            )
            .help(usage(name)));
        }
        _ => {}
    }
    let dest = args.pop().unwrap_or_else(|| cx.word_at((0, 0)));
    if let Ok(Some(_)) = parse_heredoc(&dest.text) {
        return Err(Diagnostic::at(
            file,
            dest.span,
            format!("{name} cannot accept a heredoc as a destination"),
        )
        .help("put the heredoc before the destination: `COPY <<EOF /dest`"));
    }
    Ok(if name == "COPY" {
        InstructionKind::Copy {
            sources: args,
            dest,
        }
    } else {
        InstructionKind::Add {
            sources: args,
            dest,
        }
    })
}

fn volume(cx: &Cx) -> Result<InstructionKind, Diagnostic> {
    let paths = cx.list()?;
    if paths.is_empty() {
        return Err(cx.need_args("at least one argument"));
    }
    if let Some(blank) = paths.iter().find(|p| p.text.trim().is_empty()) {
        return Err(Diagnostic::at(
            cx.file,
            blank.span,
            "VOLUME specified can not be an empty string",
        )
        .help(usage(cx.name)));
    }
    Ok(InstructionKind::Volume(paths))
}

fn shell(cx: &Cx) -> Result<InstructionKind, Diagnostic> {
    let rest = cx.rest;
    Ok(match json_array(rest) {
        Json::Array(items) if !items.is_empty() => {
            let open = rest.len() - rest.trim_start().len();
            InstructionKind::Shell {
                args: items.into_iter().map(|(s, _)| s).collect(),
                span: cx.joined.span(cx.args_start + open, cx.body_end),
            }
        }
        Json::Mixed(bad) => return Err(non_string(cx.file, cx.joined, cx.args_start, bad)),
        _ if rest.is_empty() || rest.trim() == "[]" => {
            return Err(cx.need_args("at least one argument"));
        }
        _ => {
            return Err(cx
                .err(
                    cx.args_start,
                    cx.body_end,
                    "SHELL requires the arguments to be in JSON form".into(),
                )
                .help("write e.g. SHELL [\"/bin/bash\", \"-c\"]"));
        }
    })
}

fn healthcheck(cx: &Cx) -> Result<InstructionKind, Diagnostic> {
    let (file, rest, name) = (cx.file, cx.rest, cx.name);
    let typ_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if typ_len == 0 {
        return Err(cx.need_args("at least one argument"));
    }
    let typ = cx.word_at((0, typ_len));
    let after = typ_len
        + rest[typ_len..]
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(rest.len() - typ_len);
    let remainder = &rest[after..];
    Ok(match typ.text.to_ascii_uppercase().as_str() {
        "NONE" => {
            if !remainder.is_empty() {
                return Err(cx
                    .err(
                        cx.args_start + after,
                        cx.body_end,
                        "HEALTHCHECK NONE takes no arguments".into(),
                    )
                    .help(usage(name)));
            }
            InstructionKind::Healthcheck(Healthcheck::None(typ.span))
        }
        "CMD" => {
            let cmd = cx.command(remainder, cx.args_start + after)?;
            if remainder.is_empty() || matches!(&cmd, Command::Exec { args, .. } if args.is_empty())
            {
                return Err(Diagnostic::at(
                    file,
                    typ.span,
                    "Missing command after HEALTHCHECK CMD",
                )
                .help(usage(name)));
            }
            InstructionKind::Healthcheck(Healthcheck::Cmd(cmd))
        }
        _ => {
            return Err(Diagnostic::at(
                file,
                typ.span,
                format!(
                    "Unknown type {:?} in HEALTHCHECK (try CMD)",
                    typ.text.to_ascii_uppercase()
                ),
            )
            .help(usage(name)));
        }
    })
}

fn onbuild(cx: &Cx, span: Span, heredocs: &[raw::Heredoc]) -> Result<InstructionKind, Diagnostic> {
    let Some(nested) = cx.node.nested() else {
        return Err(cx.need_args("at least one argument"));
    };
    let trigger = nested.value.to_ascii_uppercase();
    let (a, b) = nested.pos.keyword;
    match trigger.as_str() {
        "ONBUILD" => {
            return Err(cx.err(
                a,
                b,
                "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into(),
            ));
        }
        "FROM" | "MAINTAINER" => {
            return Err(cx.err(
                a,
                b,
                format!("{trigger} isn't allowed as an ONBUILD trigger"),
            ));
        }
        _ => {}
    }
    let inner_span = Span::new(cx.joined.map(a), span.end);
    let inner = instruction(cx.file, nested, inner_span, heredocs)?;
    Ok(InstructionKind::Onbuild(Box::new(inner)))
}

/// The escape character the node was parsed with (only `\` and `` ` `` exist).
fn node_escape(node: &raw::Node) -> char {
    node.escape
}

fn non_string(
    file: &Arc<SourceFile>,
    joined: &Joined,
    base: usize,
    bad: (usize, usize),
) -> Diagnostic {
    Diagnostic::at(
        file,
        joined.span(base + bad.0, base + bad.1),
        "when using JSON array syntax, arrays must be comprised of strings only",
    )
    .help("quote every element, e.g. [\"echo\", \"1\"]; or drop the brackets for the shell form")
}

#[cfg(test)]
mod tests;
