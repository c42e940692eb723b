//! Input errors, data-driven from `tests/cases/errors/<case>/`: each case's `args` (one argument per line,
//! after `kiln build --progress plain`; `{base}` is the base image layout, `{ctx}` the case directory, which
//! is also the context and the working directory) must make kiln exit 2 (or the number in `exit`) and print
//! every line of `expected` somewhere in stderr. All cases run; every failing one is reported at once.

use std::path::Path;

use crate::support::{Kiln, base_image, repo, tempdir};

fn substitute(text: &str, ctx: &Path) -> String {
    text.replace("{base}", &base_image().display().to_string())
        .replace("{ctx}", &ctx.display().to_string())
}

/// Runs one case; returns what went wrong, if anything.
fn check(case: &Path) -> Option<String> {
    let read = |name: &str| std::fs::read_to_string(case.join(name));
    let args = read("args").unwrap_or_else(|e| panic!("{}: no args file: {e}", case.display()));
    let expected =
        read("expected").unwrap_or_else(|e| panic!("{}: no expected file: {e}", case.display()));
    let exit: i32 = read("exit").map_or(2, |t| t.trim().parse().expect("`exit` holds a number"));

    // KILN_STORE, not --store, keeps the rendered command line exactly `kiln build --progress plain ARGS`.
    let store = tempdir("store-");
    let out = Kiln::bare()
        .args(["build", "--progress", "plain"])
        .args(args.lines().map(|a| substitute(a, case)))
        .env("KILN_STORE", store.path())
        .current_dir(case)
        .run();

    let mut problems = Vec::new();
    if out.code != Some(exit) {
        problems.push(format!("exit code {:?}, expected {exit}", out.code));
    }
    let joined = crate::support::unwrapped(&out.stderr);
    for want in expected.lines().filter(|l| !l.is_empty()) {
        let want = substitute(want, case);
        if !out.stderr.contains(&want) && !joined.contains(&want) {
            problems.push(format!("stderr lacks {want:?}"));
        }
    }
    (!problems.is_empty()).then(|| {
        format!(
            "{}:\n  {}\n--- stderr\n{}",
            case.file_name().unwrap_or_default().to_string_lossy(),
            problems.join("\n  "),
            out.stderr
        )
    })
}

#[test]
fn error_cases() {
    let root = repo().join("tests/cases/errors");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.expect("a readable dir").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases under {}", root.display());
    let failures: Vec<String> = cases.iter().filter_map(|c| check(c)).collect();
    assert!(
        failures.is_empty(),
        "{} of {} error cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}
