//! Tests of the typed Dockerfile parser: instructions, spans, and the errors it reports.

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
    assert!(matches!(&inner.kind, InstructionKind::Run(Command::Shell(w)) if w.text == "echo hi"));
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

/// Every line with an error is reported, raw and typed errors together, in file order.
#[test]
fn reports_one_error_per_bad_line() {
    let d = parse_str("FROM a\nFORM b\nRUN [\"x\", 1]\nRUN ok\nCOPY only\n").unwrap_err();
    let all: Vec<String> = std::iter::once(&d)
        .chain(&d.more)
        .map(|d| d.to_string())
        .collect();
    assert_eq!(
        all,
        [
            "Dockerfile:2:1: unknown instruction `FORM`",
            "Dockerfile:3:11: when using JSON array syntax, arrays must be comprised of strings only",
            "Dockerfile:5:6: COPY requires at least two arguments (sources and a destination), but only one was provided",
        ]
    );
    let out = render(&d, false);
    for at in ["Dockerfile:2:1", "Dockerfile:3:11", "Dockerfile:5:6"] {
        assert!(out.contains(at), "{out}");
    }
}

/// An unterminated heredoc swallows the rest of the file: nothing after it is reported.
#[test]
fn unterminated_heredoc_stops() {
    let d = parse_str("FROM a\nFORM b\nRUN <<EOF\nFORM c\n").unwrap_err();
    assert_eq!(d.to_string(), "Dockerfile:2:1: unknown instruction `FORM`");
    let more: Vec<String> = d.more.iter().map(|d| d.to_string()).collect();
    assert_eq!(more, ["Dockerfile:3:5: unterminated heredoc"]);
}

/// A line error on a line that may open a heredoc stops too: its body would read as instructions.
#[test]
fn line_error_with_heredoc_marker_stops() {
    let d = parse_str("FROM a\nENV <<EOF\nFORM c\nEOF\n").unwrap_err();
    assert!(d.more.is_empty(), "{:?}", d.more);
}
