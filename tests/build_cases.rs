//! The `.build` type checker end to end, data-driven from `tests/cases/build/` (see its README): every
//! `NAME.build` there (files starting with `_` are helper modules the cases import) is compiled with
//! `kiln graph -f NAME.build .` from its folder, compile-only.
//!
//! - `reject/`: programs that try to leak a `Secret` or `Ssh` handle. kiln must exit 2 and print exactly
//!   `NAME.stderr`, which must name the sink (the case's `# sink: TEXT` line) and the handle's origin
//!   (`it comes from`), unless the case says `# no-origin: WHY`.
//! - `errors/`: other compile errors; exit 2 and exactly `NAME.stderr`.
//! - `accept/`: valid programs; exit 0, an empty stderr, a formatted source (`kiln fmt --check`), and
//!   `NAME.graph`: the text graph with digests numbered by first appearance (so a change in the digest
//!   scheme does not churn the corpus, while a change in the graph's shape does), then the secrets and SSH
//!   mounts from `--format json`, per root and per run.
//!
//! A `# args: ...` line in a case adds arguments (split on whitespace) after `-f NAME.build`. Every case
//! runs and every mismatch is reported at once; `UPDATE_EXPECT=1` (or `KILN_BLESS=1`) rewrites the
//! expected files from what kiln prints, and removes expected files whose case is gone.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

#[path = "common/diff.rs"]
mod text_diff;
use text_diff::diff;

/// Fewer cases than this means some went missing.
const MIN_CASES: [(&str, usize); 3] = [("reject", 45), ("accept", 22), ("errors", 10)];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/build")
}

fn update() -> bool {
    ["UPDATE_EXPECT", "KILN_BLESS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| v == "1"))
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn kiln(dir: &Path, args: &[String]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .env_remove("KILN_STORE")
        .env("NO_COLOR", "1")
        .output()
        .expect("run kiln");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The value of each `# key: value` line of a case.
fn directives(source: &str) -> HashMap<String, String> {
    source
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| ["sink", "no-origin", "args"].contains(k))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// The case files of one folder, sorted: `*.build` not starting with `_`.
fn cases(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('_'))
        .filter_map(|n| n.strip_suffix(".build").map(String::from))
        .collect();
    names.sort();
    names
}

/// Compares `actual` with the file `expected` (or writes it when updating); a report when they differ.
fn compare(expected: &Path, actual: &str, update: bool) -> Option<String> {
    if update {
        fs::write(expected, actual).unwrap();
        return None;
    }
    let name = expected.file_name().unwrap().to_string_lossy();
    match fs::read_to_string(expected) {
        Ok(want) if want == actual => None,
        Ok(want) => Some(format!("differs from {name}:\n{}", diff(&want, actual))),
        Err(_) => Some(format!(
            "no {name} (run with UPDATE_EXPECT=1 to create it); kiln printed:\n{actual}"
        )),
    }
}

/// Runs one case of `kind`; `Some(report)` when it does not match.
fn run_case(kind: &str, dir: &Path, name: &str, update: bool) -> Option<String> {
    let file = format!("{name}.build");
    let source = fs::read_to_string(dir.join(&file)).unwrap();
    let d = directives(&source);
    let mut args: Vec<String> = vec!["graph".into(), "-f".into(), file.clone()];
    if let Some(extra) = d.get("args") {
        args.extend(extra.split_whitespace().map(String::from));
    }
    args.push(".".into());
    let out = kiln(dir, &args);
    let mut problems = Vec::new();
    if kind == "accept" {
        if out.code != 0 {
            problems.push(format!("exit code {}, expected 0", out.code));
        }
        if !out.stderr.is_empty() {
            problems.push("stderr is not empty".into());
        }
        let fmt = kiln(dir, &["fmt".into(), "--check".into(), file.clone()]);
        if fmt.code != 0 {
            problems.push(format!(
                "the case is not formatted (run `kiln fmt` on it): {}",
                fmt.stderr.trim()
            ));
        }
        if out.code == 0 {
            let mut json_args = args.clone();
            json_args.insert(json_args.len() - 1, "--format".into());
            json_args.insert(json_args.len() - 1, "json".into());
            let json = kiln(dir, &json_args);
            let actual = format!(
                "{}\n# secrets and SSH mounts (kiln graph --format json)\n{}\n",
                numbered_digests(&out.stdout),
                mounts_summary(&json.stdout)
            );
            problems.extend(compare(&dir.join(format!("{name}.graph")), &actual, update));
        }
    } else {
        if out.code != 2 {
            problems.push(format!("exit code {}, expected 2", out.code));
        }
        if !out.stdout.is_empty() {
            problems.push(format!("stdout is not empty: {}", out.stdout));
        }
        problems.extend(compare(
            &dir.join(format!("{name}.stderr")),
            &out.stderr,
            update,
        ));
        if kind == "reject" {
            match d.get("sink") {
                None => problems.push("the case has no `# sink: TEXT` line".into()),
                Some(sink) if !out.stderr.contains(sink.as_str()) => {
                    problems.push(format!("stderr does not name the sink `{sink}`"))
                }
                Some(_) => {}
            }
            let origin = out.stderr.contains("it comes from");
            match (origin, d.contains_key("no-origin")) {
                (false, false) => problems.push("stderr does not name the origin".into()),
                (true, true) => {
                    problems.push("stderr names an origin, but the case says `no-origin`".into())
                }
                _ => {}
            }
        } else if out.stderr.contains("cannot flow into") {
            problems.push("a leak error in errors/: move the case to reject/".into());
        }
    }
    (!problems.is_empty()).then(|| {
        format!(
            "{kind}/{file} (kiln {}):\n  {}\n--- stderr\n{}",
            args.join(" "),
            problems.join("\n  "),
            out.stderr
        )
    })
}

/// The text graph with each digest (`sha256:<64 hex>` or its 12-hex short form) replaced by `@N`, N
/// counting distinct digests in order of first appearance.
fn numbered_digests(text: &str) -> String {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut number = |hex: &str| {
        let n = seen.len() + 1;
        format!("@{}", seen.entry(hex[..12].to_string()).or_insert(n))
    };
    let is_hex = |w: &str| {
        w.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut out = String::new();
    for line in text.lines() {
        let words: Vec<String> = line
            .split(' ')
            .map(|w| {
                let (core, tail) = w.split_at(w.trim_end_matches([',', ')']).len());
                let replaced = match core.strip_prefix("sha256:") {
                    Some(h) if h.len() == 64 && is_hex(h) => Some(number(h)),
                    None if core.len() == 12 && is_hex(core) => Some(number(core)),
                    _ => None,
                };
                replaced.map_or_else(|| w.to_string(), |r| format!("{r}{tail}"))
            })
            .collect();
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

/// Per root, the secrets and SSH agents it needs; per run step, its secret and SSH mounts.
fn mounts_summary(json: &str) -> String {
    let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let roots: Vec<Value> = v["roots"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| json!({"root": r["name"], "secrets": r["secrets"], "ssh": r["ssh"]}))
        .collect();
    let runs: Vec<Value> = v["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["op"]["kind"] == "run")
        .map(|n| {
            let ssh: Vec<&Value> = n["op"]["mounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["type"] == "ssh")
                .collect();
            json!({"run": n["name"], "secrets": n["op"]["secrets"], "ssh": ssh})
        })
        .collect();
    serde_json::to_string_pretty(&json!({"roots": roots, "runs": runs})).unwrap()
}

/// Expected files (`.stderr`, `.graph`) whose case is gone.
fn stale(dir: &Path, names: &[String], update: bool) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let (Some(stem), Some(ext)) = (p.file_stem(), p.extension()) else {
            continue;
        };
        if ext == "build" || names.iter().any(|n| *n == *stem.to_string_lossy()) {
            continue;
        }
        if update {
            fs::remove_file(&p).unwrap();
        } else {
            out.push(format!("{} has no case", p.display()));
        }
    }
    out
}

#[test]
fn build_cases() {
    let update = update();
    let mut failures = Vec::new();
    let mut total = 0;
    for (kind, min) in MIN_CASES {
        let dir = root().join(kind);
        let names = cases(&dir);
        if names.len() < min {
            failures.push(format!(
                "{kind}/ has {} cases, expected at least {min}",
                names.len()
            ));
        }
        total += names.len();
        failures.extend(stale(&dir, &names, update));
        failures.extend(names.iter().filter_map(|n| run_case(kind, &dir, n, update)));
    }
    assert!(
        failures.is_empty(),
        "{} of {total} .build cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
