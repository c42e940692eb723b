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
pub fn parse(file: Arc<SourceFile>) -> Result<Dockerfile, Diagnostic> {
    let ast = raw::parse(file.clone())?;
    let instructions = ast
        .children
        .iter()
        .map(|node| instruction(&file, node, node.span, &node.heredocs))
        .collect::<Result<Vec<_>, _>>()?;
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

/// Converts one raw node. `span` is the instruction's span; `heredocs` the bodies it owns.
fn instruction(
    file: &Arc<SourceFile>,
    node: &raw::Node,
    span: Span,
    heredocs: &[raw::Heredoc],
) -> Result<Instruction, Diagnostic> {
    let joined: &Joined = &node.pos.line;
    let s = joined.text.as_str();
    let word = |a: usize, b: usize| Word {
        text: s.get(a..b).unwrap_or_default().to_string(),
        span: joined.span(a, b),
    };
    let (kw_start, kw_end) = node.pos.keyword;
    let keyword = word(kw_start, kw_end);
    let upper = keyword.text.to_ascii_uppercase();
    let err = |a: usize, b: usize, msg: String| Diagnostic::at(file, joined.span(a, b), msg);
    let kw_err = |msg: String| Diagnostic::at(file, keyword.span, msg);

    let Some(name) = ALL_INSTRUCTIONS.iter().copied().find(|n| *n == upper) else {
        let d = kw_err(format!("unknown instruction `{}`", keyword.text));
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

    let flags: Vec<Flag> = node
        .pos
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
        .collect();

    let (args_start, body_end) = (boundary(s, node.pos.args.0), boundary(s, node.pos.args.1));
    let rest = &s[args_start..body_end.max(args_start)];
    let need_args = |what: &str| kw_err(format!("{name} requires {what}")).help(usage(name));
    let word_at = |(a, b): (usize, usize)| word(args_start + a, args_start + b);
    // JSON arrays of strings (COPY, ADD, VOLUME), else whitespace-separated words.
    let list = || -> Result<Vec<Word>, Diagnostic> {
        Ok(match json_array(rest) {
            Json::Array(items) => items
                .into_iter()
                .map(|(text, (a, b))| Word {
                    text,
                    span: joined.span(args_start + a, args_start + b),
                })
                .collect(),
            Json::Mixed(bad) => return Err(non_string(file, joined, args_start, bad)),
            Json::Text => split_blank(rest).into_iter().map(word_at).collect(),
        })
    };
    let command = |text: &str, base: usize| -> Result<Command, Diagnostic> {
        Ok(match json_array(text) {
            Json::Array(items) => {
                let open = text.len() - text.trim_start().len();
                Command::Exec {
                    args: items.into_iter().map(|(s, _)| s).collect(),
                    span: joined.span(base + open, base + text.len()),
                }
            }
            Json::Mixed(bad) => return Err(non_string(file, joined, base, bad)),
            Json::Text => Command::Shell(word(base, base + text.len())),
        })
    };

    let kind = match name {
        "FROM" => {
            let fields: Vec<Word> = split_blank(rest).into_iter().map(word_at).collect();
            match fields.as_slice() {
                [] => return Err(need_args("at least one argument")),
                [image] => InstructionKind::From {
                    image: image.clone(),
                    alias: None,
                },
                [image, as_kw, alias] if as_kw.text.eq_ignore_ascii_case("as") => {
                    InstructionKind::From {
                        image: image.clone(),
                        alias: Some(alias.clone()),
                    }
                }
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
                        .unwrap_or(keyword.span);
                    return Err(Diagnostic::at(
                        file,
                        span,
                        "FROM takes an image and an optional `AS <name>`; unexpected extra arguments",
                    )
                    .help(usage(name)));
                }
                _ => return Err(need_args("at least one argument")),
            }
        }
        "ARG" => {
            let words = parse_words(rest, node_escape(node));
            if words.is_empty() {
                return Err(need_args("at least one argument"));
            }
            let mut pairs = Vec::new();
            for (w, (a, b)) in words {
                let (a, b) = (args_start + a, args_start + b);
                match w.find('=') {
                    Some(0) => {
                        return Err(err(a, b, "ARG names can not be blank".into())
                            .help("write `ARG <name>` or `ARG <name>=<default>`"));
                    }
                    Some(_) => {
                        // Offsets in the raw text: the word's text is the source text here.
                        let eq = s[a..b].find('=').unwrap_or(b - a);
                        pairs.push(KeyValue {
                            key: word(a, a + eq),
                            value: Some(word(a + eq + 1, b)),
                        })
                    }
                    None => pairs.push(KeyValue {
                        key: word(a, b),
                        value: None,
                    }),
                }
            }
            InstructionKind::Arg(pairs)
        }
        "ENV" | "LABEL" => {
            let words = parse_words(rest, node_escape(node));
            let Some((first, _)) = words.first() else {
                return Err(need_args("at least one argument"));
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
                    key: word_at((0, ws)),
                    value: Some(word_at((vstart, rest.len()))),
                });
            } else {
                for (_, (a, b)) in words {
                    let (a, b) = (args_start + a, args_start + b);
                    match s[a..b].find('=') {
                        Some(0) | None => {
                            return Err(err(a, b, format!("{name} names can not be blank"))
                                .help(usage(name)));
                        }
                        Some(eq) => pairs.push(KeyValue {
                            key: word(a, a + eq),
                            value: Some(word(a + eq + 1, b)),
                        }),
                    }
                }
            }
            if name == "ENV" {
                InstructionKind::Env(pairs)
            } else {
                InstructionKind::Label(pairs)
            }
        }
        "WORKDIR" | "USER" | "STOPSIGNAL" | "MAINTAINER" => {
            if rest.is_empty() {
                return Err(need_args("exactly one argument"));
            }
            let w = word_at((0, rest.len()));
            match name {
                "WORKDIR" => InstructionKind::Workdir(w),
                "USER" => InstructionKind::User(w),
                "STOPSIGNAL" => InstructionKind::StopSignal(w),
                _ => InstructionKind::Maintainer(w),
            }
        }
        "RUN" | "CMD" | "ENTRYPOINT" => {
            if rest.is_empty() {
                return Err(need_args("at least one argument"));
            }
            let cmd = command(rest, args_start)?;
            match name {
                "RUN" => InstructionKind::Run(cmd),
                "CMD" => InstructionKind::Cmd(cmd),
                _ => InstructionKind::Entrypoint(cmd),
            }
        }
        "COPY" | "ADD" => {
            let mut args = list()?;
            match args.len() {
                0 => return Err(need_args("at least one argument")),
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
            let dest = args.pop().unwrap_or_else(|| word_at((0, 0)));
            if let Ok(Some(_)) = parse_heredoc(&dest.text) {
                return Err(Diagnostic::at(
                    file,
                    dest.span,
                    format!("{name} cannot accept a heredoc as a destination"),
                )
                .help("put the heredoc before the destination: `COPY <<EOF /dest`"));
            }
            if name == "COPY" {
                InstructionKind::Copy {
                    sources: args,
                    dest,
                }
            } else {
                InstructionKind::Add {
                    sources: args,
                    dest,
                }
            }
        }
        "EXPOSE" => {
            let ports: Vec<Word> = split_blank(rest).into_iter().map(word_at).collect();
            if ports.is_empty() {
                return Err(need_args("at least one argument"));
            }
            InstructionKind::Expose(ports)
        }
        "VOLUME" => {
            let paths = list()?;
            if paths.is_empty() {
                return Err(need_args("at least one argument"));
            }
            if let Some(blank) = paths.iter().find(|p| p.text.trim().is_empty()) {
                return Err(Diagnostic::at(
                    file,
                    blank.span,
                    "VOLUME specified can not be an empty string",
                )
                .help(usage(name)));
            }
            InstructionKind::Volume(paths)
        }
        "SHELL" => match json_array(rest) {
            Json::Array(items) if !items.is_empty() => {
                let open = rest.len() - rest.trim_start().len();
                InstructionKind::Shell {
                    args: items.into_iter().map(|(s, _)| s).collect(),
                    span: joined.span(args_start + open, body_end),
                }
            }
            Json::Mixed(bad) => return Err(non_string(file, joined, args_start, bad)),
            _ if rest.is_empty() || rest.trim() == "[]" => {
                return Err(need_args("at least one argument"));
            }
            _ => {
                return Err(err(
                    args_start,
                    body_end,
                    "SHELL requires the arguments to be in JSON form".into(),
                )
                .help("write e.g. SHELL [\"/bin/bash\", \"-c\"]"));
            }
        },
        "HEALTHCHECK" => {
            let typ_len = rest.find(char::is_whitespace).unwrap_or(rest.len());
            if typ_len == 0 {
                return Err(need_args("at least one argument"));
            }
            let typ = word_at((0, typ_len));
            let after = typ_len
                + rest[typ_len..]
                    .find(|c: char| !c.is_whitespace())
                    .unwrap_or(rest.len() - typ_len);
            let remainder = &rest[after..];
            match typ.text.to_ascii_uppercase().as_str() {
                "NONE" => {
                    if !remainder.is_empty() {
                        return Err(err(
                            args_start + after,
                            body_end,
                            "HEALTHCHECK NONE takes no arguments".into(),
                        )
                        .help(usage(name)));
                    }
                    InstructionKind::Healthcheck(Healthcheck::None(typ.span))
                }
                "CMD" => {
                    let cmd = command(remainder, args_start + after)?;
                    if remainder.is_empty()
                        || matches!(&cmd, Command::Exec { args, .. } if args.is_empty())
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
            }
        }
        "ONBUILD" => {
            let Some(nested) = node.nested() else {
                return Err(need_args("at least one argument"));
            };
            let trigger = nested.value.to_ascii_uppercase();
            let (a, b) = nested.pos.keyword;
            match trigger.as_str() {
                "ONBUILD" => {
                    return Err(err(
                        a,
                        b,
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into(),
                    ));
                }
                "FROM" | "MAINTAINER" => {
                    return Err(err(
                        a,
                        b,
                        format!("{trigger} isn't allowed as an ONBUILD trigger"),
                    ));
                }
                _ => {}
            }
            let inner_span = Span::new(joined.map(a), span.end);
            let inner = instruction(file, nested, inner_span, heredocs)?;
            InstructionKind::Onbuild(Box::new(inner))
        }
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
        keyword,
        flags,
        kind,
        heredocs,
    })
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
mod tests {
    use super::*;
    use crate::diag::render;

    fn parse_str(text: &str) -> Result<Dockerfile, Diagnostic> {
        parse(SourceFile::new("Dockerfile", text))
    }

    fn at(df: &Dockerfile, span: Span) -> (usize, usize) {
        df.file.line_col(span.start)
    }

    fn src(df: &Dockerfile, span: Span) -> &str {
        &df.file.text[span.start..span.end]
    }

    fn err_at(text: &str, line_col: &str) -> String {
        let d = parse_str(text).expect_err("should fail");
        let out = render(&d, false);
        assert!(out.contains(&format!("Dockerfile:{line_col}")), "{out}");
        assert!(out.contains('^'), "{out}");
        out
    }

    const MULTI: &str = "\
# syntax=docker/dockerfile:1
# ESCAPE = \\

ARG BASE=alpine:3.20
# a comment
FROM --platform=$BUILDPLATFORM ${BASE} AS build
RUN --mount=type=secret,id=x,target=/a cat /a
RUN apk add \\
    # a comment inside the continuation
    curl \\

    git
COPY --from=0 --chown=1:1 --chmod=644 a b /dst/
ENV A=1 B=\"two words\" C='x y'
ENV LEGACY some value here
LABEL org.opencontainers.image.title=\"kiln\" \"quoted key\"=v
  from scratch as final
COPY [\"src dir/\", \"/app/\"]
WORKDIR /app
USER 1000:1000
ENTRYPOINT [\"/bin/kiln\", \"--flag\"]
CMD echo \"hi\"
";

    #[test]
    fn parses_multi_stage_dockerfile() {
        let df = parse_str(MULTI).unwrap();
        assert_eq!(
            df.directives,
            vec![
                ("syntax".to_string(), "docker/dockerfile:1".to_string()),
                ("escape".to_string(), "\\".to_string())
            ]
        );
        assert_eq!(df.escape, '\\');
        let names: Vec<&str> = df.instructions.iter().map(|i| i.kind.name()).collect();
        assert_eq!(
            names,
            [
                "ARG",
                "FROM",
                "RUN",
                "RUN",
                "COPY",
                "ENV",
                "ENV",
                "LABEL",
                "FROM",
                "COPY",
                "WORKDIR",
                "USER",
                "ENTRYPOINT",
                "CMD"
            ]
        );
        let ins = &df.instructions;

        // ARG before FROM.
        let InstructionKind::Arg(args) = &ins[0].kind else {
            panic!()
        };
        assert_eq!(args[0].key.text, "BASE");
        assert_eq!(args[0].value.as_ref().unwrap().text, "alpine:3.20");
        assert_eq!(at(&df, args[0].key.span), (4, 5));

        // FROM with flag and alias.
        let from = &ins[1];
        assert_eq!(at(&df, from.span), (6, 1));
        let InstructionKind::From { image, alias } = &from.kind else {
            panic!()
        };
        assert_eq!(image.text, "${BASE}");
        assert_eq!(at(&df, image.span), (6, 32));
        assert_eq!(alias.as_ref().unwrap().text, "build");
        let platform = from.flag("platform").unwrap();
        assert_eq!(platform.value.as_deref(), Some("$BUILDPLATFORM"));
        assert_eq!(src(&df, platform.span), "--platform=$BUILDPLATFORM");
        assert_eq!(src(&df, platform.value_span), "$BUILDPLATFORM");

        // RUN --mount.
        let run = &ins[2];
        let mount = run.flag("mount").unwrap();
        assert_eq!(mount.value.as_deref(), Some("type=secret,id=x,target=/a"));
        assert_eq!(at(&df, mount.value_span), (7, 13));
        let InstructionKind::Run(Command::Shell(cmd)) = &run.kind else {
            panic!()
        };
        assert_eq!(cmd.text, "cat /a");

        // Continuation with a comment line and an empty line inside.
        let run2 = &ins[3];
        let InstructionKind::Run(Command::Shell(cmd)) = &run2.kind else {
            panic!()
        };
        assert_eq!(cmd.text, "apk add     curl     git");
        assert_eq!(at(&df, cmd.span), (8, 5));
        assert_eq!(df.file.line_col(cmd.span.end), (12, 8));
        assert_eq!(df.file.line_col(run2.span.end), (12, 8));

        // COPY with three flags.
        let copy = &ins[4];
        let flags: Vec<(&str, Option<&str>)> = copy
            .flags
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_deref()))
            .collect();
        assert_eq!(
            flags,
            [
                ("from", Some("0")),
                ("chown", Some("1:1")),
                ("chmod", Some("644"))
            ]
        );
        let InstructionKind::Copy { sources, dest } = &copy.kind else {
            panic!()
        };
        let srcs: Vec<&str> = sources.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(srcs, ["a", "b"]);
        assert_eq!(dest.text, "/dst/");
        assert_eq!(at(&df, dest.span), (13, 43));

        // ENV new form keeps quotes.
        let InstructionKind::Env(pairs) = &ins[5].kind else {
            panic!()
        };
        let kv: Vec<(&str, &str)> = pairs
            .iter()
            .map(|p| (p.key.text.as_str(), p.value.as_ref().unwrap().text.as_str()))
            .collect();
        assert_eq!(kv, [("A", "1"), ("B", "\"two words\""), ("C", "'x y'")]);
        assert_eq!(
            src(&df, pairs[1].value.as_ref().unwrap().span),
            "\"two words\""
        );

        // ENV legacy form: one pair, the rest of the line.
        let InstructionKind::Env(pairs) = &ins[6].kind else {
            panic!()
        };
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].key.text, "LEGACY");
        assert_eq!(pairs[0].value.as_ref().unwrap().text, "some value here");

        // LABEL with quotes.
        let InstructionKind::Label(pairs) = &ins[7].kind else {
            panic!()
        };
        assert_eq!(pairs[0].value.as_ref().unwrap().text, "\"kiln\"");
        assert_eq!(pairs[1].key.text, "\"quoted key\"");

        // Lower-case keyword, leading whitespace, lower-case `as`.
        let from2 = &ins[8];
        assert_eq!(from2.keyword.text, "from");
        assert_eq!(at(&df, from2.keyword.span), (17, 3));
        let InstructionKind::From { alias, .. } = &from2.kind else {
            panic!()
        };
        assert_eq!(alias.as_ref().unwrap().text, "final");

        // COPY JSON form: decoded strings, spans on the literals.
        let InstructionKind::Copy { sources, dest } = &ins[9].kind else {
            panic!()
        };
        assert_eq!(sources[0].text, "src dir/");
        assert_eq!(src(&df, sources[0].span), "\"src dir/\"");
        assert_eq!(dest.text, "/app/");

        let InstructionKind::Workdir(w) = &ins[10].kind else {
            panic!()
        };
        assert_eq!(w.text, "/app");
        let InstructionKind::User(u) = &ins[11].kind else {
            panic!()
        };
        assert_eq!(u.text, "1000:1000");

        // Exec and shell forms.
        let InstructionKind::Entrypoint(Command::Exec { args, span }) = &ins[12].kind else {
            panic!()
        };
        assert_eq!(args, &["/bin/kiln", "--flag"]);
        assert_eq!(src(&df, *span), "[\"/bin/kiln\", \"--flag\"]");
        let InstructionKind::Cmd(Command::Shell(w)) = &ins[13].kind else {
            panic!()
        };
        assert_eq!(w.text, "echo \"hi\"");
    }

    #[test]
    fn word_across_continuation_spans_both_lines() {
        let df = parse_str("FROM a\nRUN echo ab\\\ncd\n").unwrap();
        let InstructionKind::Run(Command::Shell(w)) = &df.instructions[1].kind else {
            panic!()
        };
        assert_eq!(w.text, "echo abcd");
        assert_eq!(src(&df, w.span), "echo ab\\\ncd");
        let df = parse_str("ENV A=x\\\ny B=2\n").unwrap();
        let InstructionKind::Env(p) = &df.instructions[0].kind else {
            panic!()
        };
        assert_eq!(p[0].value.as_ref().unwrap().text, "xy");
        assert_eq!(src(&df, p[0].value.as_ref().unwrap().span), "x\\\ny");
        assert_eq!(p[1].key.text, "B");
    }

    #[test]
    fn backtick_escape_and_crlf() {
        let text = "# escape=`\r\nFROM mcr.microsoft.com/windows\r\nRUN dir C:\\ `\r\n  && echo hi\r\nWORKDIR C:\\app\r\n";
        let df = parse_str(text).unwrap();
        assert_eq!(df.escape, '`');
        let InstructionKind::Run(Command::Shell(w)) = &df.instructions[1].kind else {
            panic!()
        };
        assert_eq!(w.text, "dir C:\\   && echo hi");
        let InstructionKind::Workdir(w) = &df.instructions[2].kind else {
            panic!()
        };
        assert_eq!(w.text, "C:\\app");
        assert_eq!(df.file.line_col(df.instructions[2].span.end), (5, 15));
    }

    #[test]
    fn directives_only_at_the_top() {
        let df = parse_str("# hello\n# escape=`\nFROM a\n").unwrap();
        assert!(df.directives.is_empty());
        assert_eq!(df.escape, '\\');
        let df = parse_str("\n# syntax=x\nFROM a\n").unwrap();
        assert!(df.directives.is_empty());
        let df = parse_str("# Check=skip=all\n# unknown=1\n# escape=`\nFROM a\n").unwrap();
        assert_eq!(df.directives, vec![("check".into(), "skip=all".into())]);
        err_at("# escape=x\nFROM a\n", "1:1");
        err_at("# escape=`\n# escape=`\nFROM a\n", "2:1");
    }

    #[test]
    fn empty_and_comment_only_files() {
        // Like BuildKit: a file without instructions is an error.
        for text in ["", "\n\n", "# just a comment\n", "\u{feff}", "   \n\t\n"] {
            let d = parse_str(text).expect_err(text);
            assert!(d.message.contains("file with no instructions"), "{text:?}");
        }
        let df = parse_str("FROM a\nRUN something \\").unwrap();
        assert_eq!(df.instructions.len(), 2);
    }

    #[test]
    fn flags_and_double_dash() {
        let df = parse_str("COPY --link --from=\"st\" -- --weird /x\n").unwrap();
        let ins = &df.instructions[0];
        assert_eq!(ins.flags.len(), 2);
        assert_eq!(ins.flags[0].name, "link");
        assert_eq!(ins.flags[0].value, None);
        assert_eq!(ins.flags[1].value.as_deref(), Some("\"st\""));
        assert_eq!(src(&df, ins.flags[1].value_span), "\"st\"");
        let InstructionKind::Copy { sources, .. } = &ins.kind else {
            panic!()
        };
        assert_eq!(sources[0].text, "--weird");
        let df = parse_str("RUN --network=none\\\n --mount=x true\n").unwrap();
        assert_eq!(df.instructions[0].flags.len(), 2);
        let df = parse_str("RUN --x= true\n").unwrap();
        let f = &df.instructions[0].flags[0];
        assert_eq!(f.value.as_deref(), Some(""));
        assert_eq!(f.value_span.start, f.value_span.end);
        assert_eq!(f.value_span.start, 8);
    }

    #[test]
    fn exec_form_edge_cases() {
        let cases = [
            ("CMD []", Some(vec![])),
            ("CMD [\"a\",\"b\"]", Some(vec!["a", "b"])),
            ("CMD [ \"\\u00e9\\n\" ]", Some(vec!["é\n"])),
            ("CMD ['a']", None),
            ("CMD [\"a\"", None),
            ("CMD [\"a\"] x", None),
            ("CMD [\"echo\", \"[\"]", Some(vec!["echo", "["])),
        ];
        for (text, want) in cases {
            let df = parse_str(text).unwrap();
            let InstructionKind::Cmd(cmd) = &df.instructions[0].kind else {
                panic!()
            };
            match (cmd, want) {
                (Command::Exec { args, .. }, Some(w)) => assert_eq!(args, &w, "{text}"),
                (Command::Shell(s), None) => assert_eq!(s.text, text[4..], "{text}"),
                (c, w) => panic!("{text}: {c:?} vs {w:?}"),
            }
        }
        let out = err_at("FROM a\nCMD [ \"echo\", [ \"nested\" ] ]\n", "2:15");
        assert!(out.contains("strings only"), "{out}");
    }

    #[test]
    fn errors_point_at_the_problem() {
        let out = err_at("FROM scratch\nFORM x\n", "2:1");
        assert!(out.contains("unknown instruction `FORM`"), "{out}");
        assert!(out.contains("did you mean `FROM`?"), "{out}");
        let out = err_at("FROM a\nADD x\n", "2:5");
        assert!(out.contains("ADD requires at least two arguments"), "{out}");
        let out = err_at("FROM a\nCOPY /foo <<EOF\nEOF\n", "2:11");
        assert!(out.contains("heredoc as a destination"), "{out}");
        let out = err_at("FROM a\nRUN <<EOF\nnever ends\n", "2:5");
        assert!(out.contains("unterminated heredoc"), "{out}");
        let out = err_at("FROM a\nONBUILD ONBUILD RUN x\n", "2:9");
        assert!(out.contains("Chaining ONBUILD"), "{out}");
        let out = err_at("FROM a\nONBUILD from x\n", "2:9");
        assert!(
            out.contains("FROM isn't allowed as an ONBUILD trigger"),
            "{out}"
        );
        let out = err_at("FROM a\nHEALTHCHECK CONNECT x\n", "2:13");
        assert!(out.contains("Unknown type \"CONNECT\""), "{out}");
        err_at("FROM a\nHEALTHCHECK NONE x\n", "2:18");
        err_at("FROM a\nHEALTHCHECK CMD\n", "2:13");
        err_at("FROM a\nHEALTHCHECK CMD []\n", "2:13");
        let out = err_at("FROM a\nSHELL /bin/sh -c\n", "2:7");
        assert!(out.contains("JSON form"), "{out}");
        err_at("FROM a\nSHELL []\n", "2:1");
        err_at("FROM a\nVOLUME [\" \"]\n", "2:9");
        err_at("FROM a\nSTOPSIGNAL\n", "2:1");
        err_at("FROM a\nEXPOSE\n", "2:1");
        let out = err_at("FROM a\n  RUN\n", "2:3");
        assert!(out.contains("RUN requires at least one argument"), "{out}");
        err_at("FROM\n", "1:1");
        err_at("FROM --platform=x\n", "1:1");
        let out = err_at("FROM a AS\n", "1:8");
        assert!(out.contains("stage name"), "{out}");
        let out = err_at("FROM a B c\n", "1:8");
        assert!(out.contains("expected `AS`"), "{out}");
        err_at("FROM a AS b c\n", "1:13");
        let out = err_at("FROM a\nCOPY onlyone\n", "2:6");
        assert!(out.contains("at least two arguments"), "{out}");
        err_at("FROM a\nCOPY\n", "2:1");
        let out = err_at("FROM a\nENV A=1 B\n", "2:9");
        assert!(out.contains("missing `=`"), "{out}");
        let out = err_at("FROM a\nENV PATH\n", "2:5");
        assert!(out.contains("no value"), "{out}");
        err_at("FROM a\nENV =x\n", "2:5");
        err_at("FROM a\nLABEL\n", "2:1");
        err_at("ARG =x\n", "1:5");
        err_at("FROM a\nWORKDIR\n", "2:1");
    }

    #[test]
    fn never_panics_on_odd_input() {
        let inputs = [
            "\\",
            "`",
            "FROM a\\",
            "RUN [\"\\ud800\"]",
            "RUN [\"\\ud83d\\ude00\", 1e5, {\"a\":[true,null]}]",
            "COPY [\"a\",",
            "ENV a=\"b",
            "ENV a='b \\",
            "LABEL \"a=b",
            "RUN --\"a=b\" x",
            "RUN --",
            "RUN --m=é x",
            "FROM é AS ü",
            "COPY é ü\n# escape=`",
            "ENV é ü\\\n\n\n",
            "\r\r\n\r",
            "RUN a \\\n# c\n",
            "ＲＵＮ x",
            "RUN [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        ];
        for input in inputs {
            let _ = parse_str(input);
        }
        let deep = format!("RUN {}", "[".repeat(60_000));
        assert!(parse_str(&deep).is_ok());
        // Go's line scanner stops at 64 KiB, and BuildKit fails.
        let long = format!("FROM a\nRUN {}\n", "x".repeat(70_000));
        let d = parse_str(&long).unwrap_err();
        assert!(d.message.contains("max allowed size"), "{}", d.message);
    }

    /// Deterministic pseudo-random Dockerfiles built from tricky pieces: nothing may panic.
    #[test]
    fn random_inputs_do_not_panic() {
        let pieces = [
            "FROM ",
            "RUN ",
            "COPY ",
            "ENV ",
            "ARG ",
            "LABEL ",
            "CMD ",
            "as ",
            "--",
            "=",
            "\\",
            "`",
            "\"",
            "'",
            "[",
            "]",
            ",",
            "\n",
            "\r\n",
            " ",
            "\t",
            "#",
            "# escape=`\n",
            "$",
            "${",
            "}",
            ":-",
            "é",
            "한",
            "\u{feff}",
            "<<EOF",
            "x",
            "/",
            "{",
            "1",
            "\\u",
            "*",
            "?",
            "%",
            "/",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..4000 {
            let mut text = String::new();
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
            }
            if let Ok(df) = parse_str(&text) {
                for ins in &df.instructions {
                    assert!(ins.span.start <= ins.span.end && ins.span.end <= text.len());
                    assert!(text.is_char_boundary(ins.keyword.span.start));
                    assert!(text.is_char_boundary(ins.keyword.span.end));
                }
            }
            let _ = crate::frontend::shell::expand_words(&text, '\\', &|_| Some("v a".into()));
            let _ = crate::frontend::shell::expand_word(&text, '`', &|_| None);
        }
    }

    #[test]
    fn every_instruction_kind() {
        let text = "FROM a\nADD --chmod=644 x y /d/\nONBUILD RUN echo hi\nHEALTHCHECK --interval=5s CMD curl -f x\nHEALTHCHECK none\nSHELL [\"/bin/bash\", \"-c\"]\nSTOPSIGNAL SIGTERM\nEXPOSE 80/tcp 443\nVOLUME [\"/a\", \"/b\"]\nVOLUME /c\nMAINTAINER me <me@x>\n";
        let df = parse_str(text).unwrap();
        let ins = &df.instructions;
        let InstructionKind::Add { sources, dest } = &ins[1].kind else {
            panic!()
        };
        assert_eq!((sources.len(), dest.text.as_str()), (2, "/d/"));
        assert_eq!(ins[1].flag("chmod").unwrap().value.as_deref(), Some("644"));
        let InstructionKind::Onbuild(inner) = &ins[2].kind else {
            panic!()
        };
        assert!(
            matches!(&inner.kind, InstructionKind::Run(Command::Shell(w)) if w.text == "echo hi")
        );
        assert_eq!(at(&df, inner.keyword.span), (3, 9));
        let InstructionKind::Healthcheck(Healthcheck::Cmd(Command::Shell(w))) = &ins[3].kind else {
            panic!()
        };
        assert_eq!(w.text, "curl -f x");
        assert_eq!(
            ins[3].flag("interval").unwrap().value.as_deref(),
            Some("5s")
        );
        assert!(matches!(
            ins[4].kind,
            InstructionKind::Healthcheck(Healthcheck::None(_))
        ));
        let InstructionKind::Shell { args, .. } = &ins[5].kind else {
            panic!()
        };
        assert_eq!(args, &["/bin/bash", "-c"]);
        assert!(matches!(&ins[6].kind, InstructionKind::StopSignal(w) if w.text == "SIGTERM"));
        let InstructionKind::Expose(ports) = &ins[7].kind else {
            panic!()
        };
        assert_eq!(
            ports.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(),
            ["80/tcp", "443"]
        );
        let InstructionKind::Volume(v) = &ins[8].kind else {
            panic!()
        };
        assert_eq!(src(&df, v[1].span), "\"/b\"");
        assert!(matches!(&ins[9].kind, InstructionKind::Volume(v) if v[0].text == "/c"));
        assert!(matches!(&ins[10].kind, InstructionKind::Maintainer(w) if w.text == "me <me@x>"));
    }

    #[test]
    fn heredocs_in_the_ast() {
        let text = "FROM a\nCOPY <<one <<-'two' /dst/\nfirst\none\n\tsecond $X\n\ttwo\nRUN <<EOF python3\nprint(1)\nEOF\nONBUILD RUN <<X\nx\nX\n";
        let df = parse_str(text).unwrap();
        let copy = &df.instructions[1];
        assert_eq!(copy.heredocs.len(), 2);
        let (one, two) = (&copy.heredocs[0], &copy.heredocs[1]);
        assert_eq!(
            (one.name.text.as_str(), one.expand, one.chomp),
            ("one", true, false)
        );
        assert_eq!(src(&df, one.name.span), "<<one");
        assert_eq!(one.body.text, "first\n");
        assert_eq!(
            (two.name.text.as_str(), two.expand, two.chomp),
            ("two", false, true)
        );
        assert_eq!(src(&df, two.name.span), "<<-'two'");
        assert_eq!(two.body.text, "\tsecond $X\n");
        assert_eq!(two.text(), "second $X\n");
        assert_eq!(src(&df, two.body.span), "\tsecond $X\n");
        // The instruction span runs to the end of the last terminator line.
        assert_eq!(df.file.line_col(copy.span.end), (6, 5));
        let run = &df.instructions[2];
        assert!(
            matches!(&run.kind, InstructionKind::Run(Command::Shell(w)) if w.text == "<<EOF python3")
        );
        assert_eq!(run.heredocs[0].body.text, "print(1)\n");
        let InstructionKind::Onbuild(inner) = &df.instructions[3].kind else {
            panic!()
        };
        assert_eq!(inner.heredocs[0].body.text, "x\n");
        assert!(df.instructions[3].heredocs.is_empty());
        // The JSON form never has heredocs.
        let df = parse_str("RUN [\"<<EOF\"]\n").unwrap();
        assert!(df.instructions[0].heredocs.is_empty());
    }

    #[test]
    fn raw_dump_and_warnings() {
        let ast = raw::parse(SourceFile::new(
            "Dockerfile",
            "FROM a\nRUN a \\\n\n b\nONBUILD COPY [\"x\", \"y\"]\nfoo bar\n",
        ))
        .unwrap();
        assert_eq!(
            raw::dump(&ast),
            "(from \"a\")\n(run \"a  b\")\n(onbuild (copy \"x\" \"y\"))\n(foo \"\")\n"
        );
        assert_eq!(ast.warnings.len(), 1);
        assert_eq!(
            ast.warnings[0].message,
            "Empty continuation line found in: RUN a  b"
        );
        assert_eq!(
            (ast.children[1].start_line, ast.children[1].end_line),
            (2, 4)
        );
    }
}
