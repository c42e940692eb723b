//! `kiln build --call=check|outline|targets[,format=json]` (and `--check`): what buildx's subrequests
//! answer, without building. `check` is `kiln check`, failing on any finding as buildx does; `outline`
//! lists the build args (with defaults and descriptions), secrets and SSH ids the target needs;
//! `targets` lists the stages or `.build` targets. Text is BuildKit's tables, JSON its field names.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::args::BuildCmd;
use super::command_line::CommandLine;
use crate::diag::{Diagnostic, Result, Span, suggest};
use crate::frontend::dockerfile::syntax::ast::{Dockerfile, Instruction, InstructionKind};
use crate::progress;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Method {
    Build,
    Check,
    Outline,
    Targets,
}

/// A `--call` value.
pub(super) struct Call {
    pub(super) method: Method,
    json: bool,
}

/// `--call METHOD[,format=text|json]`, with `--check` as `--call=check`.
pub(super) fn parse(cl: &CommandLine, call: Option<&str>, check: bool) -> Result<Call> {
    let Some(value) = call else {
        let method = if check { Method::Check } else { Method::Build };
        return Ok(Call {
            method,
            json: false,
        });
    };
    let fields = crate::options::parse(value)
        .map_err(|e| cl.error(value, e.span, e.message).help(e.help))?;
    let mut method = None;
    let mut json = false;
    for f in &fields {
        match (f.key.as_str(), f.value.as_deref()) {
            (name, None) if method.is_none() => {
                let methods = ["build", "check", "outline", "targets"];
                method = Some(match name {
                    "build" => Method::Build,
                    "check" => Method::Check,
                    "outline" => Method::Outline,
                    "targets" => Method::Targets,
                    _ => {
                        let d = cl.error(value, f.span, format!("unknown --call method `{name}`"));
                        return Err(match suggest(name, methods) {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None => d.help("--call takes build, check, outline or targets"),
                        });
                    }
                });
            }
            ("format", Some("json")) => json = true,
            ("format", Some("text")) => json = false,
            ("format", Some(other)) => {
                return Err(cl
                    .error(value, f.value_span(), format!("unknown format `{other}`"))
                    .help("--call takes `format=text` or `format=json`"));
            }
            (key, _) => {
                return Err(cl
                    .error(value, f.span, format!("unexpected `{key}` in --call"))
                    .help("write `--call METHOD` or `--call METHOD,format=json`"));
            }
        }
    }
    let method = method.unwrap_or(Method::Build);
    if check && method != Method::Check {
        return Err(cl
            .error(
                value,
                Span::default(),
                "--check is `--call=check`, and this --call asks for another method",
            )
            .help("drop --check or --call"));
    }
    Ok(Call { method, json })
}

/// Answers a `--call` other than `build`.
pub(super) fn run(cmd: &BuildCmd, cl: &CommandLine, call: &Call) -> Result<()> {
    let args = &cmd.compile;
    if let Some(label) = args
        .inputs
        .iter()
        .find(|i| i.starts_with("//") || i.starts_with(':'))
    {
        return Err(cl
            .error(label, Span::default(), "--call answers for one Dockerfile or `.build` file, not for monorepo labels")
            .help("give the package's file with -f, or ask `kiln query deps LABEL` what a target is built from"));
    }
    let context = PathBuf::from(args.inputs.first().map_or(".", String::as_str));
    let is_build_file = args
        .file
        .as_ref()
        .is_some_and(|f| f.extension().is_some_and(|e| e == "build"));
    match call.method {
        Method::Build => Ok(()),
        Method::Check => check(cmd, cl, &context, call.json),
        Method::Targets if is_build_file => print(
            &build_file_targets(args.file.as_deref().expect("a file"))?,
            call.json,
        ),
        Method::Targets => print(
            &dockerfile_targets(&read(args.file.as_deref(), &context)?),
            call.json,
        ),
        Method::Outline => outline(cmd, cl, &context, is_build_file, call.json),
    }
}

fn read(file: Option<&Path>, context: &Path) -> Result<Dockerfile> {
    let path = file.map_or_else(|| context.join("Dockerfile"), Path::to_path_buf);
    super::compile::read_dockerfile(&path)
}

/// `--call=check`: `kiln check`'s findings; any finding fails the command, as buildx's check does.
fn check(cmd: &BuildCmd, cl: &CommandLine, context: &Path, json: bool) -> Result<()> {
    let args = &cmd.compile;
    let report = super::check::report(
        cl,
        context,
        args.file.as_deref(),
        &args.build_args,
        args.target.as_deref(),
    )?;
    if json {
        progress::stdout(&report.render_json());
    } else if !report.findings.is_empty() {
        progress::stdout(&report.render_text());
    }
    match report.findings.len() {
        0 => {
            if !json {
                progress::stdout("Check complete, no warnings found.\n");
            }
            Ok(())
        }
        1 => Err(Diagnostic::build(
            "Check complete, 1 warning has been found!",
        )),
        n => Err(Diagnostic::build(format!(
            "Check complete, {n} warnings have been found!"
        ))),
    }
}

/// Prints a subrequest's answer: the JSON as BuildKit shapes it, or its text table.
fn print(answer: &(Value, String), json: bool) -> Result<()> {
    if json {
        let text = serde_json::to_string_pretty(&answer.0)
            .map_err(|e| Diagnostic::env(format!("cannot write JSON: {e}")))?;
        progress::stdout(&format!("{text}\n"));
    } else {
        progress::stdout(&answer.1);
    }
    Ok(())
}

/// The comment lines directly above `at` (no blank line between), without their `#`.
fn comments_above(text: &str, at: usize) -> Vec<String> {
    let before = &text[..at];
    let mut lines: Vec<&str> = before.lines().collect();
    // The instruction's own line, as far as it goes before `at`.
    if !before.ends_with('\n') {
        lines.pop();
    }
    let mut out = Vec::new();
    for line in lines.iter().rev() {
        let Some(c) = line.trim_start().strip_prefix('#') else {
            break;
        };
        out.push(c.strip_prefix(' ').unwrap_or(c).to_string());
    }
    out.reverse();
    out
}

/// BuildKit's description of `name`: a comment line above it that starts with the name and a space.
fn description(text: &str, at: usize, name: &str) -> String {
    comments_above(text, at)
        .iter()
        .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
        .unwrap_or_default()
}

/// A Dockerfile's stages: the FROM, its name, and its instructions.
struct Stage<'a> {
    from: &'a Instruction,
    name: Option<String>,
    base: String,
    body: Vec<&'a Instruction>,
}

fn stages(df: &Dockerfile) -> (Vec<&Instruction>, Vec<Stage<'_>>) {
    let mut global = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for i in &df.instructions {
        match (&i.kind, stages.last_mut()) {
            (InstructionKind::From { image, alias }, _) => stages.push(Stage {
                from: i,
                name: alias.as_ref().map(|a| a.text.to_ascii_lowercase()),
                base: image.text.to_ascii_lowercase(),
                body: Vec::new(),
            }),
            (_, Some(stage)) => stage.body.push(i),
            (_, None) => global.push(i),
        }
    }
    (global, stages)
}

/// `--call=targets` for a Dockerfile: every stage, the last one the default.
fn dockerfile_targets(df: &Dockerfile) -> (Value, String) {
    let (_, stages) = stages(df);
    let text = &df.file.text;
    let last = stages.len().saturating_sub(1);
    let mut targets = Vec::new();
    let mut rows = vec![vec!["TARGET".to_string(), "DESCRIPTION".to_string()]];
    for (n, s) in stages.iter().enumerate() {
        let name = s.name.clone().unwrap_or_default();
        let desc = s
            .name
            .as_ref()
            .map(|name| description(text, s.from.span.start, name))
            .unwrap_or_default();
        let mut t = json!({ "name": name, "base": s.base });
        if n == last {
            t["default"] = json!(true);
        }
        if !desc.is_empty() {
            t["description"] = json!(desc);
        }
        targets.push(t);
        let shown = match (name.is_empty(), n == last) {
            (true, true) => "(default)".to_string(),
            (false, true) => format!("{name} (default)"),
            _ => name,
        };
        rows.push(vec![shown, desc]);
    }
    (json!({ "targets": targets }), table(&rows, 1))
}

/// `--call=targets` for a `.build` file: its targets, the last one the default (what `kiln build`
/// selects without `--target`).
fn build_file_targets(path: &Path) -> Result<(Value, String)> {
    let module = read_build_file(path)?;
    let text = &module.file.text;
    let names: Vec<(String, usize)> = module
        .items
        .iter()
        .filter_map(|i| match &i.kind {
            crate::frontend::buildfile::syntax::ItemKind::Target { name, .. } => {
                Some((name.name.clone(), i.span.start))
            }
            _ => None,
        })
        .collect();
    let last = names.len().saturating_sub(1);
    let mut targets = Vec::new();
    let mut rows = vec![vec!["TARGET".to_string(), "DESCRIPTION".to_string()]];
    for (n, (name, at)) in names.iter().enumerate() {
        let desc = description(text, *at, name);
        let mut t = json!({ "name": name });
        if n == last {
            t["default"] = json!(true);
        }
        if !desc.is_empty() {
            t["description"] = json!(desc);
        }
        targets.push(t);
        let shown = if n == last {
            format!("{name} (default)")
        } else {
            name.clone()
        };
        rows.push(vec![shown, desc]);
    }
    Ok((json!({ "targets": targets }), table(&rows, 1)))
}

fn read_build_file(path: &Path) -> Result<crate::frontend::buildfile::syntax::Module> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Diagnostic::input(format!("cannot read {}: {e}", path.display())))?;
    crate::frontend::buildfile::syntax::parse::parse(&crate::diag::SourceFile::new(
        path.display().to_string(),
        text,
    ))
}

/// Rows as Go's tabwriter lays out BuildKit's tables: every cell but the last padded to its column's
/// width plus `padding`.
fn table(rows: &[Vec<String>], padding: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns.saturating_sub(1))
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        for (c, cell) in row.iter().enumerate() {
            match widths.get(c) {
                Some(w) if c + 1 < row.len() => {
                    out.push_str(&format!("{cell:<width$}", width = w + padding));
                }
                _ => out.push_str(cell),
            }
        }
        out.push('\n');
    }
    out
}

/// `--call=outline`: the target's name and description, its build args, secrets and SSH ids.
fn outline(
    cmd: &BuildCmd,
    cl: &CommandLine,
    context: &Path,
    is_build_file: bool,
    json: bool,
) -> Result<()> {
    let args = &cmd.compile;
    let (name, desc, build_args) = if is_build_file {
        build_file_outline(args.file.as_deref().expect("a file"), &args.params)?
    } else {
        dockerfile_outline(&read(args.file.as_deref(), context)?, args)
    };
    let compiled = super::compile::compile(args, cl, &super::compile::Mode::Lenient)?;
    let graph = &compiled.graph;
    let needs = |ssh: bool| -> Vec<Value> {
        let mut all: Vec<crate::graph::SecretNeed> = Vec::new();
        for (_, root) in &graph.roots {
            for need in graph.needs_of(*root, ssh) {
                if !all.iter().any(|n| n.id == need.id) {
                    all.push(need);
                }
            }
        }
        all.iter()
            .map(|n| {
                let mut v = json!({ "name": n.id });
                if n.required {
                    v["required"] = json!(true);
                }
                v
            })
            .collect()
    };
    let (secrets, ssh) = (needs(false), needs(true));
    let mut o = json!({});
    if !name.is_empty() {
        o["name"] = json!(name);
    }
    if !desc.is_empty() {
        o["description"] = json!(desc);
    }
    for (key, list) in [("args", &build_args), ("secrets", &secrets), ("ssh", &ssh)] {
        if !list.is_empty() {
            o[key] = json!(list);
        }
    }
    let text = outline_text(&o);
    print(&(o, text), json)
}

/// BuildKit's text form of an outline.
fn outline_text(o: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut out = String::new();
    if o.get("name").is_some() || o.get("description").is_some() {
        let name = o.get("name").map_or_else(|| "(default)".to_string(), s);
        let mut rows = vec![vec!["TARGET:".to_string(), name]];
        if let Some(d) = o.get("description") {
            rows.push(vec!["DESCRIPTION:".to_string(), s(d)]);
        }
        out.push_str(&table(&rows, 1));
        out.push('\n');
    }
    let list = |key: &str| {
        o.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let args = list("args");
    if !args.is_empty() {
        let mut rows = vec![vec![
            "BUILD ARG".into(),
            "VALUE".into(),
            "DESCRIPTION".into(),
        ]];
        rows.extend(
            args.iter()
                .map(|a| vec![s(&a["name"]), s(&a["value"]), s(&a["description"])]),
        );
        out.push_str(&table(&rows, 3));
        out.push('\n');
    }
    for (key, head) in [("secrets", "SECRET"), ("ssh", "SSH")] {
        let items = list(key);
        if items.is_empty() {
            continue;
        }
        let mut rows = vec![vec![head.to_string(), "REQUIRED".to_string()]];
        rows.extend(items.iter().map(|i| {
            let required = if i["required"] == json!(true) {
                "true"
            } else {
                ""
            };
            vec![s(&i["name"]), required.to_string()]
        }));
        out.push_str(&table(&rows, 3));
        out.push('\n');
    }
    out
}

/// A Dockerfile target's name, description and build args: the global ARGs and those of every stage
/// the target builds on (its FROM chain, `COPY --from`), each with its default or the `--build-arg`
/// given, and its description.
fn dockerfile_outline(
    df: &Dockerfile,
    args: &super::args::CompileArgs,
) -> (String, String, Vec<Value>) {
    let (global, stages) = stages(df);
    let text = &df.file.text;
    let wanted = args.target.as_ref().map(|t| t.to_ascii_lowercase());
    let target = wanted
        .as_ref()
        .and_then(|t| stages.iter().position(|s| s.name.as_ref() == Some(t)))
        .unwrap_or(stages.len().saturating_sub(1));
    let find = |r: &str| {
        stages
            .iter()
            .position(|s| s.name.as_deref() == Some(r))
            .or_else(|| r.parse::<usize>().ok().filter(|n| *n < stages.len()))
    };
    let mut reached = vec![false; stages.len()];
    let mut todo = vec![target];
    while let Some(n) = todo.pop() {
        if n >= stages.len() || std::mem::replace(&mut reached[n], true) {
            continue;
        }
        let stage = &stages[n];
        todo.extend(find(&stage.base));
        for i in &stage.body {
            let from = i.flags.iter().filter(|f| f.name == "from");
            todo.extend(
                from.filter_map(|f| f.value.as_deref())
                    .filter_map(|v| find(&v.to_ascii_lowercase())),
            );
        }
    }
    let given: std::collections::BTreeMap<&str, &str> = args
        .build_args
        .iter()
        .filter_map(|a| a.split_once('='))
        .collect();
    let mut out: Vec<Value> = Vec::new();
    let instructions = global.into_iter().chain(
        stages
            .iter()
            .zip(&reached)
            .filter(|(_, r)| **r)
            .flat_map(|(s, _)| s.body.iter().copied()),
    );
    for i in instructions {
        let InstructionKind::Arg(decls) = &i.kind else {
            continue;
        };
        for d in decls {
            let name = &d.key.text;
            if out.iter().any(|a| a["name"] == json!(name)) {
                continue;
            }
            let mut a = json!({ "name": name });
            let value = given
                .get(name.as_str())
                .map(|v| v.to_string())
                .or_else(|| d.value.as_ref().map(|v| unquote(&v.text)));
            if let Some(v) = value.filter(|v| !v.is_empty()) {
                a["value"] = json!(v);
            }
            let desc = description(text, i.span.start, name);
            if !desc.is_empty() {
                a["description"] = json!(desc);
            }
            out.push(a);
        }
    }
    let stage = stages.get(target);
    let name = stage.and_then(|s| s.name.clone()).unwrap_or_default();
    let desc = stage
        .map(|s| description(text, s.from.span.start, &name))
        .filter(|_| !name.is_empty())
        .unwrap_or_default();
    (name, desc, out)
}

/// An ARG default as written, outer quotes taken off (nothing is expanded: the outline shows the
/// default, not what a build would make of it).
fn unquote(v: &str) -> String {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    v.to_string()
}

/// A `.build` file's outline: its params (defaults as written, `--param` values when given).
fn build_file_outline(path: &Path, params: &[String]) -> Result<(String, String, Vec<Value>)> {
    let module = read_build_file(path)?;
    let text = &module.file.text;
    let given: std::collections::BTreeMap<&str, &str> =
        params.iter().filter_map(|p| p.split_once('=')).collect();
    let mut out = Vec::new();
    for item in &module.items {
        let crate::frontend::buildfile::syntax::ItemKind::Param { name, default, .. } = &item.kind
        else {
            continue;
        };
        let mut a = json!({ "name": name.name });
        let value = given
            .get(name.name.as_str())
            .map(|v| v.to_string())
            .or_else(|| {
                default
                    .as_ref()
                    .map(crate::frontend::buildfile::syntax::fmt::expr_to_string)
            });
        if let Some(v) = value {
            a["value"] = json!(v);
        }
        let desc = description(text, item.span.start, &name.name);
        if !desc.is_empty() {
            a["description"] = json!(desc);
        }
        out.push(a);
    }
    Ok((String::new(), String::new(), out))
}
