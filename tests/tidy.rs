//! Keeps the architecture honest (see ARCHITECTURE.md): stages depend only on earlier stages, foundations on
//! no stage, nothing after the IR uses a front end, `unsafe` and process/mount syscalls live only in the
//! executor, every module says what it is.
//!
//! Test code (from `#[cfg(test)]` on) is exempt: tests may cross layers to check round trips.

use std::fs;
use std::path::{Path, PathBuf};

/// The stages, in dependency order. A stage may use the ones before it, never the ones after. `graph` holds
/// the IR every front end lowers to, so it comes before the front ends it follows in the pipeline.
const STAGES: [&str; 7] = [
    "graph", "frontend", "load", "solve", "exec", "export", "remote",
];
/// The front ends: source text to IR.
const FRONT_ENDS: [&str; 1] = ["frontend"];
/// The stages from the IR on, which must not know which front end a program came from.
const AFTER_FRONT_ENDS: [&str; 5] = ["graph", "solve", "exec", "export", "remote"];
/// Shared foundations: usable by every stage, and using no stage themselves.
const FOUNDATIONS: [&str; 11] = [
    "diag", "digest", "options", "secret", "store", "oci", "registry", "progress", "layer",
    "ignore", "paths",
];
/// The driver wires stages together and may use all of them.
const DRIVER: [&str; 4] = ["cli", "monorepo", "lib", "main"];
/// What counts as a process or mount syscall.
const SYSCALLS: [&str; 10] = [
    "std::process::Command",
    "tokio::process",
    "nix::mount",
    "nix::sched",
    "fork(",
    "pivot_root",
    "unshare(",
    "execve",
    "pre_exec",
    "setuid(",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/solve/context.rs` → `solve`; `src/store.rs` → `store`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The product code of a file: everything before its test module, without comment lines.
fn product_code(text: &str) -> String {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names through `crate::`, as `crate::name` or inside a
/// `crate::{...}` group.
fn crate_modules(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for used in code.split("crate::").skip(1) {
        let Some(group) = used.strip_prefix('{') else {
            names.push(ident(used));
            continue;
        };
        // The group's top-level items: split at commas outside nested braces, up to the closing one.
        let (mut depth, mut item_start) = (0, 0);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    names.push(ident(&group[item_start..i]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    names.push(ident(&group[item_start..i]));
                    item_start = i + 1;
                }
                _ => {}
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// Invariant "the IR knows no front end": the front ends `module` (a stage from `graph` on) uses.
fn front_ends_used(module: &str, code: &str) -> Vec<String> {
    if !AFTER_FRONT_ENDS.contains(&module) {
        return Vec::new();
    }
    let mut used: Vec<String> = crate_modules(code)
        .into_iter()
        .filter(|m| FRONT_ENDS.contains(&m.as_str()))
        .collect();
    used.dedup();
    used
}

fn sources() -> Vec<(String, PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            (
                module_of(&src, &f),
                f.clone(),
                fs::read_to_string(&f).unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_module_starts_with_a_doc_line() {
    let bad: Vec<String> = sources()
        .into_iter()
        .filter(|(_, _, text)| !text.starts_with("//!"))
        .map(|(_, f, _)| f.display().to_string())
        .collect();
    assert!(
        bad.is_empty(),
        "files without a leading `//!` doc line: {bad:?}"
    );
}

#[test]
fn stages_only_use_earlier_stages() {
    let mut bad = Vec::new();
    for (module, file, text) in sources() {
        let code = product_code(&text);
        let allowed: Vec<&str> = if let Some(pos) = STAGES.iter().position(|s| *s == module) {
            STAGES[..=pos]
                .iter()
                .chain(FOUNDATIONS.iter())
                .copied()
                .collect()
        } else if FOUNDATIONS.contains(&module.as_str()) {
            FOUNDATIONS.to_vec()
        } else if DRIVER.contains(&module.as_str()) {
            continue;
        } else {
            panic!(
                "{}: module `{module}` is in no layer; add it to tests/tidy.rs and ARCHITECTURE.md",
                file.display()
            );
        };
        for name in crate_modules(&code) {
            if !allowed.contains(&name.as_str()) {
                bad.push(format!(
                    "{} (`{module}`) uses `crate::{name}`",
                    file.display()
                ));
            }
        }
        if code.contains("kiln::") && !DRIVER.contains(&module.as_str()) {
            bad.push(format!("{} refers to the crate by name", file.display()));
        }
    }
    bad.sort();
    bad.dedup();
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn the_ir_knows_no_front_end() {
    let mut bad = Vec::new();
    for (module, file, text) in sources() {
        for front_end in front_ends_used(&module, &product_code(&text)) {
            bad.push(format!(
                "{} (`{module}`) uses the front end `crate::{front_end}`; use the IR in `crate::graph`",
                file.display()
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_front_end_rule_catches_planted_violations() {
    let planted = [
        ("exec", "use crate::frontend::op::Network;"),
        (
            "graph",
            "use crate::frontend::dockerfile::syntax::ast::Word;",
        ),
        (
            "solve",
            "fn f() { crate::frontend::dockerfile::lints::run(); }",
        ),
        (
            "remote",
            "use crate::{diag::Span, frontend::{LowerOptions, dockerfile}};",
        ),
        (
            "export",
            "use crate::{\n    frontend::Rules,\n    digest::Digest,\n};",
        ),
    ];
    for (module, code) in planted {
        assert_eq!(
            front_ends_used(module, &product_code(code)).len(),
            1,
            "`{module}`: {code}"
        );
    }
    let allowed = [
        ("exec", "use crate::graph::op::Network;"),
        ("solve", "use crate::{diag::Span, graph::{Op, op::RunOp}};"),
        (
            "frontend",
            "use crate::frontend::dockerfile::syntax::ast::Word;",
        ),
        ("cli", "use crate::frontend::LowerOptions;"),
        ("exec", "// see crate::frontend::dockerfile::lower"),
        (
            "graph",
            "fn f() {}\n#[cfg(test)]\nmod tests { use crate::frontend::dockerfile::lower; }",
        ),
    ];
    for (module, code) in allowed {
        assert!(
            front_ends_used(module, &product_code(code)).is_empty(),
            "`{module}`: {code}"
        );
    }
}

#[test]
fn unsafe_and_syscalls_only_in_the_executor() {
    let mut bad = Vec::new();
    for (module, file, text) in sources() {
        if module == "exec" {
            continue;
        }
        let code = product_code(&text);
        if code.contains("unsafe ") || code.contains("unsafe{") {
            bad.push(format!("{}: `unsafe` outside src/exec", file.display()));
        }
        for call in SYSCALLS {
            if code.contains(call) {
                bad.push(format!("{}: `{call}` outside src/exec", file.display()));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn architecture_md_names_every_module() {
    let arch =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md")).unwrap();
    let mut missing: Vec<String> = sources()
        .into_iter()
        .map(|(m, _, _)| m)
        .filter(|m| !["lib", "main"].contains(&m.as_str()))
        .filter(|m| !arch.contains(&format!("`src/{m}")))
        .collect();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not describe: {missing:?}"
    );
}
