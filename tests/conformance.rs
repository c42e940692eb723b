//! BuildKit conformance: our raw AST dump, spans, heredocs and directives against BuildKit's own
//! test data in `../shared/conformance` (see its README). Skips with a note when that folder is
//! absent, as in CI clones.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln::diag::SourceFile;
use kiln::frontend::dockerfile::syntax::ast::{Command, InstructionKind};
use kiln::frontend::dockerfile::syntax::{directive, heredoc, parse::instruction_from_node, raw};
use serde_json::Value;

/// Real-world files whose dump matches BuildKit's, at least (see `realworld_dumps`).
const REALWORLD_MIN_PASS: usize = 131;

fn dir() -> Option<PathBuf> {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance");
    if d.is_dir() {
        Some(d)
    } else {
        eprintln!("note: {} absent, skipping", d.display());
        None
    }
}

fn file(name: &str, text: &str) -> Arc<SourceFile> {
    SourceFile::new(name, text)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A line diff good enough to spot the difference.
fn diff(want: &str, got: &str) -> String {
    let mut out = String::new();
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    for i in 0..w.len().max(g.len()) {
        let (a, b) = (w.get(i), g.get(i));
        if a != b {
            let _ = writeln!(out, "  line {}:\n    want {:?}\n    got  {:?}", i + 1, a, b);
        }
    }
    if want.ends_with('\n') != got.ends_with('\n') {
        let _ = writeln!(out, "  final newline differs");
    }
    out
}

fn dump_of(name: &str, text: &str) -> Result<String, String> {
    raw::parse(file(name, text))
        .map(|ast| raw::dump(&ast))
        .map_err(|d| d.to_string())
}

fn sorted_dirs(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// (a) Every positive parser case dumps exactly as BuildKit's `result`.
#[test]
fn testfiles_dump_byte_for_byte() {
    let Some(dir) = dir() else { return };
    let cases = sorted_dirs(&dir.join("buildkit/parser/testfiles"));
    let mut failures = Vec::new();
    for case in &cases {
        let text = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
        let want = std::fs::read_to_string(case.join("result")).unwrap();
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        match dump_of(&name, &text) {
            Ok(got) if got == want => {}
            Ok(got) => failures.push(format!("{name}:\n{}", diff(&want, &got))),
            Err(e) => failures.push(format!("{name}: parse failed: {e}")),
        }
        // The typed AST must accept them too, except for what BuildKit's instruction step also
        // rejects (HEALTHCHECK CONNECT in `health`).
        if name != "health"
            && let Err(e) = kiln::frontend::dockerfile::syntax::parse(file(&name, &text))
        {
            failures.push(format!("{name}: typed parse failed: {e}"));
        }
    }
    eprintln!(
        "testfiles: {}/{} dumps match",
        cases.len() - failures.len(),
        cases.len()
    );
    assert_eq!(cases.len(), 33, "expected 33 cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// (b) The negative cases fail to parse.
#[test]
fn negative_testfiles_fail() {
    let Some(dir) = dir() else { return };
    let cases = sorted_dirs(&dir.join("buildkit/parser/testfiles-negative"));
    assert_eq!(cases.len(), 4);
    for case in cases {
        let text = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
        let name = case.display().to_string();
        assert!(raw::parse(file(&name, &text)).is_err(), "{name} parsed");
        assert!(
            kiln::frontend::dockerfile::syntax::parse(file(&name, &text)).is_err(),
            "{name} parsed"
        );
    }
}

/// (c) Line spans of `testfile-line`: 5–5, 11–12 and 17–31, the file 5–31.
#[test]
fn testfile_line_spans() {
    let Some(dir) = dir() else { return };
    let text =
        std::fs::read_to_string(dir.join("buildkit/parser/testfile-line/Dockerfile")).unwrap();
    let ast = raw::parse(file("Dockerfile", &text)).unwrap();
    let lines: Vec<(usize, usize)> = ast
        .children
        .iter()
        .map(|n| (n.start_line, n.end_line))
        .collect();
    assert_eq!(lines, [(5, 5), (11, 12), (17, 31)]);
    let df = kiln::frontend::dockerfile::syntax::parse(file("Dockerfile", &text)).unwrap();
    let spans: Vec<(usize, usize)> = df
        .instructions
        .iter()
        .map(|i| {
            (
                df.file.line_col(i.span.start).0,
                df.file.line_col(i.span.end).0,
            )
        })
        .collect();
    assert_eq!(spans, lines);
    let first = spans.first().unwrap().0;
    let last = spans.last().unwrap().1;
    assert_eq!((first, last), (5, 31));
}

/// (d) Real-world files: the dump equals BuildKit's, and the per-instruction facts of
/// `expected/<file>.json` (keyword, flags, lines, logical line, heredocs, JSON form, comments).
#[test]
fn realworld_dumps() {
    let Some(dir) = dir() else { return };
    let mut files: Vec<PathBuf> = sorted_dirs(&dir.join("realworld"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
        .collect();
    files.sort();
    let (mut total, mut pass, mut json_total, mut json_pass) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let expected = dir
            .join("realworld/expected")
            .join(format!("{name}.result"));
        let Ok(want) = std::fs::read_to_string(&expected) else {
            continue;
        };
        total += 1;
        let bytes = std::fs::read(&path).unwrap();
        let Ok(text) = String::from_utf8(bytes) else {
            failures.push(format!("{name}: not UTF-8"));
            continue;
        };
        match dump_of(&name, &text) {
            Ok(got) if got == want => pass += 1,
            Ok(got) => failures.push(format!("{name}:\n{}", diff(&want, &got))),
            Err(e) => failures.push(format!("{name}: parse failed: {e}")),
        }
        let json_path = dir.join("realworld/expected").join(format!("{name}.json"));
        if json_path.exists() {
            json_total += 1;
            match check_children(&name, &text, &read_json(&json_path)) {
                Ok(()) => json_pass += 1,
                Err(e) => failures.push(format!("{name} (json): {e}")),
            }
        }
    }
    eprintln!(
        "realworld: {pass}/{total} dumps match; {json_pass}/{json_total} node summaries match"
    );
    if !failures.is_empty() {
        eprintln!("realworld failures:\n{}", failures.join("\n"));
    }
    assert!(
        pass >= REALWORLD_MIN_PASS,
        "only {pass}/{total} real-world dumps match:\n{}",
        failures.join("\n")
    );
    assert_eq!(json_pass, json_total, "{}", failures.join("\n"));
}

/// Compares the raw nodes with BuildKit's `children[]` summary.
fn check_children(name: &str, text: &str, want: &Value) -> Result<(), String> {
    let ast = raw::parse(file(name, text)).map_err(|e| e.to_string())?;
    let empty = Vec::new();
    let children = want["children"].as_array().unwrap_or(&empty);
    if children.len() != ast.children.len() {
        return Err(format!(
            "{} instructions, BuildKit has {}",
            ast.children.len(),
            children.len()
        ));
    }
    for (i, (node, w)) in ast.children.iter().zip(children).enumerate() {
        let got = serde_json::json!({
            "instruction": node.value,
            "flags": node.flags,
            "start_line": node.start_line,
            "end_line": node.end_line,
            "original": node.original,
            "json_form": node.json,
            "prev_comment": node.prev_comment,
            "heredocs": heredocs_json(&node.heredocs),
        });
        for key in got.as_object().unwrap().keys() {
            let expected = normalize(&w[key]);
            if normalize(&got[key]) != expected {
                return Err(format!(
                    "instruction {} `{key}`: got {}, want {}",
                    i + 1,
                    got[key],
                    w[key]
                ));
            }
        }
    }
    let escape = want["escape_token"].as_str().unwrap_or("\\");
    if escape != ast.escape.to_string() {
        return Err(format!("escape {:?}, want {escape:?}", ast.escape));
    }
    let warnings: Vec<String> = ast.warnings.iter().map(|w| w.message.clone()).collect();
    if normalize(&serde_json::json!(warnings)) != normalize(&want["parse_warnings"]) {
        return Err(format!(
            "warnings {warnings:?}, want {}",
            want["parse_warnings"]
        ));
    }
    Ok(())
}

/// `null` and `[]` (and `false`-less absent fields) mean the same in the Go-produced JSON.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Null => Value::Array(vec![]),
        v => v.clone(),
    }
}

fn heredocs_json(h: &[raw::Heredoc]) -> Value {
    Value::Array(
        h.iter()
            .map(|h| {
                serde_json::json!({
                    "name": h.name, "fd": h.fd, "expand": h.expand, "chomp": h.chomp,
                    "content": h.content,
                })
            })
            .collect(),
    )
}

/// (e) `vectors/parser-directives.json`.
#[test]
fn vectors_directives() {
    let Some(dir) = dir() else { return };
    let v = read_json(&dir.join("buildkit/vectors/parser-directives.json"));
    let mut n = 0;
    for c in v["cases"].as_array().unwrap() {
        let input = c["input"].as_str().unwrap();
        let ds = &c["detect_syntax"];
        let got = directive::detect_syntax(input);
        match got {
            Some(d) => {
                assert!(ds["found"].as_bool().unwrap(), "{input:?}: found {d:?}");
                assert_eq!(d.value, ds["ref"].as_str().unwrap(), "{input:?}");
                assert_eq!(d.cmdline, ds["cmdline"].as_str().unwrap(), "{input:?}");
                assert_eq!(d.line as u64, ds["line"].as_u64().unwrap(), "{input:?}");
            }
            None => assert!(!ds["found"].as_bool().unwrap(), "{input:?}: not found"),
        }
        let pc = &c["parse_directive_check"];
        match directive::parse_directive(input, "check") {
            Some(d) => {
                assert!(pc["found"].as_bool().unwrap(), "{input:?}: check {d:?}");
                assert_eq!(d.value, pc["value"].as_str().unwrap(), "{input:?}");
                assert_eq!(d.cmdline, pc["cmdline"].as_str().unwrap(), "{input:?}");
                assert_eq!(d.line as u64, pc["line"].as_u64().unwrap(), "{input:?}");
            }
            None => assert!(!pc["found"].as_bool().unwrap(), "{input:?}: no check"),
        }
        let all: Vec<Value> = directive::DirectiveParser::new("#")
            .parse_all(input)
            .into_iter()
            .map(|d| serde_json::json!({"name": d.name, "value": d.value}))
            .collect();
        assert_eq!(Value::Array(all), normalize(&c["parse_all"]), "{input:?}");
        n += 1;
    }
    eprintln!("parser-directives: {n} cases pass");
}

/// (e) `vectors/parser-heredoc-words.json` and `vectors/parser-heredocs-from-line.json`.
#[test]
fn vectors_heredoc_words_and_lines() {
    let Some(dir) = dir() else { return };
    let v = read_json(&dir.join("buildkit/vectors/parser-heredoc-words.json"));
    let mut n = 0;
    for group in ["valid", "invalid", "not_heredoc"] {
        for c in v["cases"][group].as_array().unwrap() {
            let input = c["input"].as_str().unwrap();
            match heredoc::parse_heredoc(input) {
                Ok(Some(h)) => {
                    let w = &c["heredoc"];
                    assert_eq!(h.name, w["name"].as_str().unwrap(), "{input:?}");
                    assert_eq!(h.fd, w["fd"].as_u64().unwrap(), "{input:?}");
                    assert_eq!(h.expand, w["expand"].as_bool().unwrap(), "{input:?}");
                    assert_eq!(h.chomp, w["chomp"].as_bool().unwrap(), "{input:?}");
                }
                Ok(None) => assert!(c["heredoc"].is_null() && c["error"].is_null(), "{input:?}"),
                Err(e) => assert_eq!(Some(e.as_str()), c["error"].as_str(), "{input:?}"),
            }
            n += 1;
        }
    }
    let v = read_json(&dir.join("buildkit/vectors/parser-heredocs-from-line.json"));
    for c in v["cases"].as_array().unwrap() {
        let line = c["line"].as_str().unwrap();
        let names: Vec<String> = heredoc::heredocs_from_line(line)
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(serde_json::json!(names), c["names"], "{line:?}");
        n += 1;
    }
    eprintln!("heredoc vectors: {n} cases pass");
}

/// (e) `vectors/parser-snippets.json`: dumps or errors, warnings, lines, logical lines, heredocs.
#[test]
fn vectors_snippets() {
    let Some(dir) = dir() else { return };
    let v = read_json(&dir.join("buildkit/vectors/parser-snippets.json"));
    let mut failures = Vec::new();
    let cases = v["cases"].as_array().unwrap();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let text = c["dockerfile"].as_str().unwrap();
        let ast = match raw::parse(file(name, text)) {
            Ok(ast) => ast,
            Err(e) => {
                if c["parse_error"].is_null() {
                    failures.push(format!("{name}: parse failed: {e}"));
                }
                continue;
            }
        };
        if !c["parse_error"].is_null() {
            failures.push(format!(
                "{name}: parsed, BuildKit fails: {}",
                c["parse_error"]
            ));
            continue;
        }
        let got = raw::dump(&ast);
        let want = c["dump"].as_str().unwrap();
        if got != want {
            failures.push(format!("{name}:\n{}", diff(want, &got)));
        }
        let warnings: Vec<&str> = ast.warnings.iter().map(|w| w.message.as_str()).collect();
        if normalize(&serde_json::json!(warnings)) != normalize(&c["warnings"]) {
            failures.push(format!(
                "{name}: warnings {warnings:?}, want {}",
                c["warnings"]
            ));
        }
        let children = c["children"].as_array().unwrap();
        if children.len() != ast.children.len() {
            failures.push(format!("{name}: {} children", ast.children.len()));
            continue;
        }
        for (node, w) in ast.children.iter().zip(children) {
            let got = serde_json::json!({
                "original": node.original,
                "start_line": node.start_line,
                "end_line": node.end_line,
                "heredocs": heredocs_json(&node.heredocs),
            });
            for key in ["original", "start_line", "end_line", "heredocs"] {
                if normalize(&got[key]) != normalize(&w[key]) {
                    failures.push(format!(
                        "{name}: {:?} `{key}`: got {}, want {}",
                        node.original, got[key], w[key]
                    ));
                }
            }
        }
    }
    eprintln!(
        "parser-snippets: {} cases, {} failures",
        cases.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Errors BuildKit's instruction step reports that kiln reports later, in lowering (flags are
/// checked there), so the typed parse accepts them.
const LOWERING_ERRORS: [&str; 1] = ["unknown flag: --boo"];

/// (e) `vectors/instructions-snippets.json`: each node converted on its own fails exactly when
/// BuildKit's does, and the typed fields agree where both succeed.
#[test]
fn vectors_instruction_snippets() {
    let Some(dir) = dir() else { return };
    let v = read_json(&dir.join("buildkit/vectors/instructions-snippets.json"));
    // The Dockerfiles themselves are in parser-snippets.json, under the same names (some twice).
    let snippets = read_json(&dir.join("buildkit/vectors/parser-snippets.json"));
    let mut sources: Vec<(String, String)> = snippets["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let get = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (get("name"), get("dockerfile"))
        })
        .collect();
    let mut failures = Vec::new();
    let mut n = 0;
    for c in v["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let Some(i) = sources.iter().position(|(n, _)| n == name) else {
            failures.push(format!("{name}: no Dockerfile in parser-snippets.json"));
            continue;
        };
        let (_, text) = sources.remove(i);
        let text = text.as_str();
        let f = file(name, text);
        let Ok(ast) = raw::parse(f.clone()) else {
            continue;
        };
        let empty = Vec::new();
        let each = c["each_instruction"].as_array().unwrap_or(&empty);
        for (node, w) in ast.children.iter().zip(each) {
            n += 1;
            let got = instruction_from_node(&f, node);
            match (got, w["error"].as_str()) {
                (Err(_), Some(_)) => {}
                (Ok(_), Some(e)) if LOWERING_ERRORS.contains(&e) => {}
                (Ok(_), Some(e)) => {
                    failures.push(format!("{name}: {:?} parsed, BuildKit: {e}", node.original))
                }
                (Err(e), None) => failures.push(format!("{name}: {:?}: {e}", node.original)),
                (Ok(ins), None) => {
                    if let Err(e) = compare_fields(&ins, w) {
                        failures.push(format!("{name}: {:?}: {e}", node.original));
                    }
                }
            }
        }
    }
    eprintln!(
        "instructions-snippets: {n} nodes, {} failures",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Checks the typed instruction against the fields of BuildKit's Go struct.
fn compare_fields(
    ins: &kiln::frontend::dockerfile::syntax::ast::Instruction,
    w: &Value,
) -> Result<(), String> {
    let fields = &w["fields"];
    let go_type = w["go_type"].as_str().unwrap_or_default();
    let want_type = match &ins.kind {
        InstructionKind::From { .. } => "Stage",
        InstructionKind::Run(_) => "RunCommand",
        InstructionKind::Copy { .. } => "CopyCommand",
        InstructionKind::Env(_) => "EnvCommand",
        InstructionKind::User(_) => "UserCommand",
        InstructionKind::Arg(_) => "ArgCommand",
        other => other.name(),
    };
    if go_type != want_type {
        return Err(format!("type {want_type}, BuildKit {go_type}"));
    }
    let same = |what: &str, got: Value, want: &Value| {
        if normalize(&got) == normalize(want) {
            Ok(())
        } else {
            Err(format!("{what}: got {got}, want {want}"))
        }
    };
    match &ins.kind {
        InstructionKind::From { image, alias } => {
            same("BaseName", image.text.clone().into(), &fields["BaseName"])?;
            let alias = alias
                .as_ref()
                .map(|a| a.text.to_ascii_lowercase())
                .unwrap_or_default();
            same("Name", alias.into(), &fields["Name"])
        }
        InstructionKind::Run(cmd) => {
            let (line, shell) = match cmd {
                Command::Shell(w) => (vec![w.text.clone()], true),
                Command::Exec { args, .. } => (args.clone(), false),
            };
            same("CmdLine", serde_json::json!(line), &fields["CmdLine"])?;
            same("PrependShell", shell.into(), &fields["PrependShell"])?;
            let files: Vec<Value> = ins
                .heredocs
                .iter()
                .map(|h| serde_json::json!({"Name": h.name.text, "Data": h.body.text, "Chomp": h.chomp}))
                .collect();
            same("Files", Value::Array(files), &fields["Files"])
        }
        InstructionKind::Copy { sources, dest } => {
            same("DestPath", dest.text.clone().into(), &fields["DestPath"])?;
            let mut paths = Vec::new();
            let mut contents = Vec::new();
            for s in sources {
                match heredoc::parse_heredoc(&s.text) {
                    Ok(Some(h)) => {
                        let body = ins.heredocs.iter().find(|d| d.name.text == h.name);
                        let data = body.map(|b| {
                            if h.chomp {
                                heredoc::chomp(&b.body.text)
                            } else {
                                b.body.text.clone()
                            }
                        });
                        contents.push(serde_json::json!({"Path": h.name, "Data": data.unwrap_or_default(), "Expand": h.expand}));
                    }
                    _ => paths.push(Value::from(s.text.clone())),
                }
            }
            same("SourcePaths", Value::Array(paths), &fields["SourcePaths"])?;
            same(
                "SourceContents",
                Value::Array(contents),
                &fields["SourceContents"],
            )
        }
        InstructionKind::Env(pairs) => {
            let env: Vec<Value> = pairs
                .iter()
                .map(|p| {
                    let v = p.value.as_ref().map(|v| v.text.clone()).unwrap_or_default();
                    serde_json::json!({"Key": p.key.text, "Value": v, "NoDelim": false})
                })
                .collect();
            same("Env", Value::Array(env), &fields["Env"])
        }
        InstructionKind::User(u) => same("User", u.text.clone().into(), &fields["User"]),
        InstructionKind::Arg(args) => {
            let got: Vec<Value> = args
                .iter()
                .map(|a| serde_json::json!([a.key.text, a.value.as_ref().map(|v| v.text.clone())]))
                .collect();
            let want: Vec<Value> = fields["Args"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| serde_json::json!([x["Key"], x["Value"]]))
                        .collect()
                })
                .unwrap_or_default();
            same("Args", Value::Array(got), &Value::Array(want))
        }
        _ => Ok(()),
    }
}

/// Every prefix of every conformance Dockerfile (and of the snippet files) parses or fails
/// cleanly: no panic, and spans stay inside the text on character boundaries.
#[test]
fn prefixes_never_panic() {
    let Some(dir) = dir() else { return };
    let mut texts: Vec<String> = Vec::new();
    let mut paths = Vec::new();
    for sub in [
        "buildkit/parser/testfiles",
        "buildkit/parser/testfiles-negative",
    ] {
        for case in sorted_dirs(&dir.join(sub)) {
            paths.push(case.join("Dockerfile"));
        }
    }
    paths.push(dir.join("buildkit/parser/testfile-line/Dockerfile"));
    paths.extend(
        sorted_dirs(&dir.join("realworld"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile")),
    );
    for p in paths {
        if let Ok(t) = std::fs::read_to_string(&p) {
            texts.push(t);
        }
    }
    for name in ["parser-snippets.json", "instructions-snippets.json"] {
        let v = read_json(&dir.join("buildkit/vectors").join(name));
        for c in v["cases"].as_array().unwrap() {
            texts.push(c["dockerfile"].as_str().unwrap_or_default().to_string());
        }
    }
    let mut parsed = 0usize;
    for text in &texts {
        // Long files are sampled so the test stays fast in debug builds.
        let step = (text.len() / 300).max(1);
        let mut cut = 0;
        while cut <= text.len() {
            let mut end = cut;
            while !text.is_char_boundary(end) {
                end += 1;
            }
            let prefix = &text[..end];
            let f = file("Dockerfile", prefix);
            if let Ok(ast) = raw::parse(f.clone()) {
                let _ = raw::dump(&ast);
            }
            if let Ok(df) = kiln::frontend::dockerfile::syntax::parse(f) {
                for ins in &df.instructions {
                    assert!(ins.span.start <= ins.span.end && ins.span.end <= prefix.len());
                    assert!(prefix.is_char_boundary(ins.span.start));
                    assert!(prefix.is_char_boundary(ins.keyword.span.end));
                }
            }
            parsed += 1;
            cut += step;
        }
    }
    eprintln!("prefixes: {parsed} parsed without panic");
}

/// `kiln graph` of any Dockerfile works offline: every real-world Dockerfile lowers to a graph in
/// compile-only mode (what only build-time input could settle stays as written).
#[test]
fn realworld_dockerfiles_lower_to_graphs() {
    let Some(root) = dir() else { return };
    let opts = kiln::frontend::LowerOptions {
        lenient: true,
        ..Default::default()
    };
    let mut problems = Vec::new();
    let mut lowered = 0;
    for path in std::fs::read_dir(root.join("realworld"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
    {
        if path.extension().is_none_or(|e| e != "Dockerfile") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        match kiln::compile(kiln::Source::Dockerfile(file(&name, &text)), &opts) {
            Ok(compiled) => {
                assert_eq!(kiln::plan(&compiled.program).roots.len(), 1);
                midstates_finish_as_digests(compiled.program);
                lowered += 1;
            }
            Err(e) => problems.push(format!("{name}: {}", e.message)),
        }
    }
    println!("{lowered} real-world Dockerfiles lowered to graphs");
    // And through the command line, as a user runs it: `kiln graph --digest -f FILE EMPTY_CONTEXT`.
    let empty = tempfile::tempdir().unwrap();
    for path in std::fs::read_dir(root.join("realworld"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
    {
        if path.extension().is_none_or(|e| e != "Dockerfile") {
            continue;
        }
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["graph", "--digest", "-f"])
            .arg(&path)
            .arg(empty.path())
            .output()
            .unwrap();
        if !out.status.success() || !String::from_utf8_lossy(&out.stdout).starts_with("sha256:") {
            problems.push(format!(
                "kiln graph {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(lowered >= 131, "only {lowered} lowered");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Runs the kiln binary: its exit code, stdout and stderr.
fn run(args: &[&std::ffi::OsStr]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kiln convert` on every real-world Dockerfile: the `.build` source compiles to the same root digest
/// as the Dockerfile, and `kiln fmt` leaves it unchanged.
#[test]
fn realworld_converts_to_the_same_graph() {
    let Some(dir) = dir() else { return };
    let work = tempfile::tempdir().unwrap();
    let context = work.path().join("context");
    std::fs::create_dir(&context).unwrap();
    let mut files: Vec<PathBuf> = sorted_dirs(&dir.join("realworld"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let out = work.path().join(format!("{name}.build"));
        let (code, _, err) = run(&[
            "convert".as_ref(),
            "-f".as_ref(),
            path.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ]);
        if code != Some(0) {
            failures.push(format!("{name}: convert failed: {err}"));
            continue;
        }
        let digest = |file: &Path| {
            run(&[
                "graph".as_ref(),
                "--digest".as_ref(),
                "-f".as_ref(),
                file.as_os_str(),
                context.as_os_str(),
            ])
        };
        let (c1, want, e1) = digest(path);
        let (c2, got, e2) = digest(&out);
        if c1 != Some(0) || c2 != Some(0) || want != got || want.is_empty() {
            failures.push(format!(
                "{name}: digests differ: {want:?} vs {got:?}\n{e1}{e2}"
            ));
        }
        let (c3, listed, e3) = run(&["fmt".as_ref(), "--check".as_ref(), out.as_os_str()]);
        if c3 != Some(0) {
            failures.push(format!("{name}: not formatted: {listed}{e3}"));
        }
    }
    eprintln!(
        "convert: {}/{} real-world Dockerfiles give the same digest",
        files.len() - failures.len(),
        files.len()
    );
    assert!(files.len() >= REALWORLD_MIN_PASS);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The global ARGs of a Dockerfile (those before its first FROM), without BuildKit's platform args
/// and without those whose default reads another (so that the default is what is checked).
fn global_args(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines().map(str::trim_start) {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("FROM ") {
            break;
        }
        if let Some(decls) = upper.starts_with("ARG ").then(|| &line[4..]) {
            for decl in decls.split_whitespace() {
                let name = decl.split('=').next().unwrap_or_default().to_string();
                let platform = name.contains("PLATFORM")
                    || ["TARGET", "BUILDOS", "BUILDARCH", "BUILDVARIANT"]
                        .iter()
                        .any(|p| name.starts_with(p));
                let derived = decl.split_once('=').is_some_and(|(_, v)| v.contains('$'));
                if !platform && !derived && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// `kiln convert` keeps build args as params: with a `--build-arg NAME=v1` for every global ARG (but
/// those derived from others, which must follow), a real-world Dockerfile and its conversion still
/// have one root digest (a param folded into a constant at conversion would ignore the value).
#[test]
fn realworld_conversions_keep_build_args_as_params() {
    let Some(dir) = dir() else { return };
    let work = tempfile::tempdir().unwrap();
    let context = work.path().join("context");
    std::fs::create_dir(&context).unwrap();
    let (mut same, mut invalid, mut failures) = (0, 0, Vec::new());
    for path in sorted_dirs(&dir.join("realworld"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
    {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let args = global_args(&std::fs::read_to_string(&path).unwrap());
        if args.is_empty() {
            continue;
        }
        let out = work.path().join(format!("{name}.build"));
        let (code, _, err) = run(&[
            "convert".as_ref(),
            "-f".as_ref(),
            path.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ]);
        if code != Some(0) {
            failures.push(format!("{name}: convert failed: {err}"));
            continue;
        }
        let build_args: Vec<String> = args.iter().map(|a| format!("{a}=v1")).collect();
        let digest = |file: &Path| {
            let mut argv: Vec<&std::ffi::OsStr> = vec!["graph".as_ref(), "--digest".as_ref()];
            for a in &build_args {
                argv.push("--build-arg".as_ref());
                argv.push(a.as_ref());
            }
            argv.extend(["-f".as_ref(), file.as_os_str(), context.as_os_str()]);
            run(&argv)
        };
        let (c1, want, e1) = digest(&path);
        if c1 == Some(2) {
            // `v1` is no valid value here (a platform, say): the Dockerfile refuses it too.
            invalid += 1;
            continue;
        }
        let (c2, got, e2) = digest(&out);
        if c1 != Some(0) || c2 != Some(0) || want != got || want.is_empty() {
            failures.push(format!(
                "{name} {build_args:?}: digests differ: {want:?} vs {got:?}\n{e1}{e2}"
            ));
        } else {
            same += 1;
        }
    }
    eprintln!(
        "convert with build args: {same} real-world Dockerfiles give the same digest, {invalid} refuse the values, {} differ",
        failures.len()
    );
    assert!(same >= 43, "only {same}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What `kiln graph` keeps of a node to hash it again (its digest's state after its op, `Dag::
/// from_program_kept`) gives the node's digest once finished with its inputs' digests.
fn midstates_finish_as_digests(program: kiln::graph::Program) {
    use kiln::graph::Dag;
    let (dag, _, midstates) = Dag::from_program_kept(program);
    for n in dag.dag.node_indices() {
        let inputs: Vec<&str> = (dag.inputs(n).iter())
            .map(|&i| dag.dag[i].digest.as_str())
            .collect();
        let digest = Dag::node_digest(midstates[n.index()].as_bytes(), &inputs);
        assert_eq!(digest.as_ref(), Some(&dag.dag[n].digest));
    }
}
