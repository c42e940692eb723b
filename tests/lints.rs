//! `kiln check` end to end, data-driven from `tests/cases/check/<case>/`: each case directory is the build
//! context (its `Dockerfile`, any other files, an optional `.dockerignore`), with an optional `args` file
//! (extra arguments, one per line) and either `expected.json` (the exact `--format json` output) or
//! `expected.txt` (the exact text output). The exit code must be 1 when the JSON counts an error, else 0,
//! unless an `exit` file says otherwise; for input errors, `expected.stderr` lists lines that must appear
//! in stderr. Every case runs and every mismatch is reported at once; `UPDATE_EXPECT=1` rewrites the
//! expectations from what kiln prints.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "common/diff.rs"]
mod text_diff;
use text_diff::diff;

fn cases_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases/check")
}

/// Runs one case; `Some(report)` when it does not match.
fn run_case(dir: &Path, update: bool) -> Option<String> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let text_mode = dir.join("expected.txt").is_file();
    let mut args: Vec<String> = vec!["check".into()];
    if let Ok(extra) = fs::read_to_string(dir.join("args")) {
        args.extend(extra.lines().filter(|l| !l.is_empty()).map(String::from));
    }
    if !text_mode {
        args.extend(["--format".into(), "json".into()]);
    }
    args.push(".".into());
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(&args)
        .current_dir(dir)
        .env_remove("KILN_STORE")
        .output()
        .expect("run kiln");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or(-1);
    let expected_file = dir.join(if text_mode {
        "expected.txt"
    } else {
        "expected.json"
    });
    let stderr_file = dir.join("expected.stderr");
    let exit_file = dir.join("exit");
    let default_exit = |stdout: &str| -> i32 {
        let errors = serde_json::from_str::<serde_json::Value>(stdout)
            .ok()
            .and_then(|v| v["errors"].as_u64())
            .unwrap_or(0);
        i32::from(errors > 0)
    };
    if update {
        if stderr_file.is_file() {
            // Input-error cases keep their hand-written stderr lines.
        } else {
            fs::write(&expected_file, &stdout).unwrap();
        }
        let default = if text_mode { 0 } else { default_exit(&stdout) };
        if code != default || exit_file.is_file() {
            fs::write(&exit_file, format!("{code}\n")).unwrap();
        }
        return None;
    }
    let mut problems = Vec::new();
    let expected_exit = match fs::read_to_string(&exit_file) {
        Ok(s) => s.trim().parse::<i32>().expect("exit file holds a number"),
        Err(_) if text_mode => 0,
        Err(_) => default_exit(&stdout),
    };
    if code != expected_exit {
        problems.push(format!("exit code {code}, expected {expected_exit}"));
    }
    if let Ok(lines) = fs::read_to_string(&stderr_file) {
        for line in lines.lines().filter(|l| !l.is_empty()) {
            if !stderr.contains(line) {
                problems.push(format!("stderr lacks `{line}`"));
            }
        }
    } else {
        match fs::read_to_string(&expected_file) {
            Ok(expected) if expected == stdout => {}
            Ok(expected) => problems.push(format!(
                "output differs from {}:\n{}",
                expected_file.file_name().unwrap().to_string_lossy(),
                diff(&expected, &stdout)
            )),
            Err(_) => problems.push(format!(
                "no {} (run with UPDATE_EXPECT=1 to create it); kiln printed:\n{stdout}",
                expected_file.display()
            )),
        }
    }
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "case `{name}` (kiln {}):\n  {}\n  stderr: {}",
            args.join(" "),
            problems.join("\n  "),
            stderr.trim()
        ))
    }
}

#[test]
fn check_cases() {
    let root = cases_root();
    let mut cases: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases under {}", root.display());
    let update = std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1");
    let failures: Vec<String> = cases.iter().filter_map(|c| run_case(c, update)).collect();
    assert!(
        failures.is_empty(),
        "{} of {} check cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// Every rule `kiln check` knows has a case that fires it and one where it stays quiet.
#[test]
fn every_rule_has_cases() {
    let root = cases_root();
    let mut names: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut missing = Vec::new();
    for rule in kiln::frontend::dockerfile::lints::RULES {
        let kebab = kebab(rule.name);
        for suffix in ["fires", "quiet"] {
            let want = format!("{kebab}-{suffix}");
            if !names.iter().any(|n| n.starts_with(&want)) {
                missing.push(want);
            }
        }
    }
    assert!(missing.is_empty(), "missing cases: {missing:?}");
}

/// `JSONArgsRecommended` → `json-args-recommended`.
fn kebab(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        let boundary = i > 0
            && c.is_ascii_uppercase()
            && (chars[i - 1].is_ascii_lowercase()
                || chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase()));
        if boundary {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
