//! Keeps the architecture honest: each invariant ARCHITECTURE.md states under "Invariants" is a
//! rule here, named as it is named there, checked on `src/` and shown to fail on planted code that
//! breaks it.
//!
//! The rules read Rust as text. Comments and the contents of string and character literals are
//! blanked first, so no rule fires on prose or test data. Test code (`#[cfg(test)]` items, and the
//! files of `#[cfg(test)] mod x;`) may cross layers to check round trips: only the size rules and
//! the doc-line rule look at it.
//!
//! Every check is a pure function from files (a path and its text) to findings, so the planted
//! tests run the very code that checks `src/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Stands, in a row of `TABLE`, for every foundation.
const FOUNDATIONS: &str = "<foundations>";
/// Stands, in a row of `TABLE`, for every module, and for naming the crate as `kiln::`.
const ANY: &str = "<any>";

/// The foundations: no stage owns them, every module may use them, they use only each other.
const FOUNDATION_MODULES: [&str; 15] = [
    "diag", "digest", "options", "secret", "store", "oci", "registry", "progress", "layer",
    "paths", "ignore", "sign", "platform", "lock", "inputs",
];

/// The parts of `src/frontend/` that are modules of their own: the two front ends, and `convert`,
/// which turns one into the other. Every other file there is shared by both front ends and belongs
/// to the module `frontend`.
const FRONTEND_PARTS: [&str; 3] = ["dockerfile", "buildfile", "convert"];

/// Invariant "imports follow the table": every module of `src/` and the modules it may use besides
/// itself. The module of a file is its top-level module, except under `src/frontend/` (see
/// `FRONTEND_PARTS`).
const TABLE: &[(&str, &[&str])] = &[
    ("diag", &[FOUNDATIONS]),
    ("digest", &[FOUNDATIONS]),
    ("options", &[FOUNDATIONS]),
    ("secret", &[FOUNDATIONS]),
    ("store", &[FOUNDATIONS]),
    ("oci", &[FOUNDATIONS]),
    ("registry", &[FOUNDATIONS]),
    // Image signatures: the key, the payload, the `.sig` manifest pushed through `registry`.
    ("sign", &[FOUNDATIONS]),
    ("progress", &[FOUNDATIONS]),
    ("layer", &[FOUNDATIONS]),
    // Go's `path` helpers, and `.dockerignore` matching.
    ("paths", &[FOUNDATIONS]),
    ("ignore", &[FOUNDATIONS]),
    // Target platforms, spelled and normalized as containerd does.
    ("platform", &[FOUNDATIONS]),
    // `kiln.lock`: the format of what a build's floating inputs resolved to.
    ("lock", &[FOUNDATIONS]),
    // The host paths a command read, with their stat data: what a build's memo checks.
    ("inputs", &[FOUNDATIONS]),
    // The IR, which every front end lowers to.
    ("graph", &[FOUNDATIONS]),
    // The front ends: source text to IR. They never use each other; what both mean lives in
    // `frontend`.
    ("frontend", &[FOUNDATIONS, "graph"]),
    ("frontend::dockerfile", &[FOUNDATIONS, "graph", "frontend"]),
    ("frontend::buildfile", &[FOUNDATIONS, "graph", "frontend"]),
    (
        "frontend::convert",
        &[
            FOUNDATIONS,
            "graph",
            "frontend",
            "frontend::dockerfile",
            "frontend::buildfile",
        ],
    ),
    // Reads source files (labels, imports, packages) and hands them to the front ends.
    (
        "load",
        &[
            FOUNDATIONS,
            "graph",
            "frontend",
            "frontend::dockerfile",
            "frontend::buildfile",
        ],
    ),
    // The scheduler and cache keys; owns the `Executor` trait.
    ("solve", &[FOUNDATIONS, "graph"]),
    // The two executors: siblings, neither uses the other.
    ("exec", &[FOUNDATIONS, "graph", "solve"]),
    ("remote", &[FOUNDATIONS, "graph", "solve"]),
    ("export", &[FOUNDATIONS, "graph", "solve"]),
    // SBOM and provenance of a built image, from its layers and the solved graph.
    ("attest", &[FOUNDATIONS, "graph", "solve"]),
    // A validated build run through the stages after the front ends; the driver makes the request.
    (
        "pipeline",
        &[
            FOUNDATIONS,
            "graph",
            "solve",
            "exec",
            "remote",
            "export",
            "attest",
        ],
    ),
    // The driver wires everything together.
    ("cli", &[ANY]),
    ("monorepo", &[ANY]),
    ("lib", &[ANY]),
    ("main", &[ANY]),
];

/// Invariant "the IR knows no front end": the modules from the IR on, which must not know which
/// front end a program came from.
const AFTER_FRONT_ENDS: [&str; 7] = [
    "graph", "solve", "exec", "remote", "export", "attest", "pipeline",
];

/// Invariant "front ends and graph do no IO": the modules it covers.
const NO_IO: [&str; 5] = [
    "graph",
    "frontend",
    "frontend::dockerfile",
    "frontend::buildfile",
    "frontend::convert",
];
/// Paths that reach the file system or stdin.
const IO_PATHS: [&[&str]; 6] = [
    &["std", "fs"],
    &["tokio", "fs"],
    &["std", "io", "stdin"],
    &["tokio", "io", "stdin"],
    &["walkdir"],
    &["tempfile"],
];
/// Calls and names that reach the file system or stdin, however they were imported.
const IO_WORDS: [&str; 14] = [
    "fs::",
    "File::",
    "OpenOptions",
    "read_to_string",
    "read_dir",
    "stdin()",
    ".exists()",
    ".try_exists(",
    ".is_file()",
    ".is_dir()",
    ".metadata()",
    "symlink_metadata",
    "canonicalize",
    "WalkDir",
];

/// Invariant "only diag and progress print": the modules that may write to the terminal.
const PRINTERS: [&str; 2] = ["diag", "progress"];
/// What counts as printing.
const PRINT_WORDS: [&str; 5] = ["println!", "eprintln!", "print!", "eprint!", "dbg!"];
/// The handles of the standard streams, which count as printing too, except where the streams are
/// no terminal. Asking whether one is a terminal (`stderr().is_terminal()`) writes nothing and is
/// not printing.
const STREAM_WORDS: [&str; 4] = ["stdout()", "stderr()", "Stdout", "Stderr"];
/// The files whose standard streams are pipes to another kiln process, not a terminal: they may use
/// the streams' handles (not the print macros). The step helper reports its status to the executor
/// on its stderr.
const PIPE_ENDS: [&str; 1] = ["src/exec/helper.rs"];

/// Invariant "unsafe and syscalls only in exec": paths that spawn processes, mount or enter
/// namespaces.
const SYSCALL_PATHS: [&[&str]; 5] = [
    &["std", "process", "Command"],
    &["tokio", "process"],
    &["nix", "mount"],
    &["nix", "sched"],
    &["libc"],
];
/// Calls that spawn processes, mount or enter namespaces, however they were imported.
const SYSCALL_WORDS: [&str; 9] = [
    "process::Command",
    "fork(",
    "pivot_root",
    "unshare(",
    "execve",
    "execvp",
    "pre_exec",
    "setuid(",
    "setns(",
];

/// Invariant "no file over 1,000 lines": lines per file in `src/`, tests included.
const MAX_FILE_LINES: usize = 1000;
/// Invariant "no function over 150 lines": lines per function in product code.
const MAX_FN_LINES: usize = 150;
/// The mark, on the line before an item (above its attributes and doc comment), of a data table:
/// its lines count toward neither limit.
const DATA_TABLE_MARK: &str = "// tidy: data table";
/// The only files that may mark data tables. Keep it short: a long function is split into named
/// steps, a long file into a folder (its unit tests in a sibling `tests.rs`).
const DATA_TABLE_FILES: &[&str] = &[];

/// A rule: the name ARCHITECTURE.md states it by, and its check over all of `src/`.
struct Rule {
    name: &'static str,
    check: fn(&[File]) -> Vec<String>,
}

const RULES: [Rule; 9] = [
    Rule {
        name: "imports follow the table",
        check: imports_follow_the_table,
    },
    Rule {
        name: "no import loop in src/",
        check: no_import_loop,
    },
    Rule {
        name: "the IR knows no front end",
        check: the_ir_knows_no_front_end,
    },
    Rule {
        name: "front ends and graph do no IO",
        check: front_ends_and_graph_do_no_io,
    },
    Rule {
        name: "only diag and progress print",
        check: only_diag_and_progress_print,
    },
    Rule {
        name: "unsafe and syscalls only in exec",
        check: unsafe_and_syscalls_only_in_exec,
    },
    Rule {
        name: "no file over 1,000 lines",
        check: no_file_over_1000_lines,
    },
    Rule {
        name: "no function over 150 lines",
        check: no_function_over_150_lines,
    },
    Rule {
        name: "every module starts with a doc line",
        check: every_module_starts_with_a_doc_line,
    },
];

// -------------------------------------------------------------------------------------------------
// Reading files

/// A file of `src/`: its path from the crate root (`src/solve/key.rs`), its text, and its product
/// code: the text with comments, literal contents and test code blanked, line for line.
struct File {
    path: String,
    text: String,
    product: String,
}

impl File {
    fn new(path: &str, text: &str) -> File {
        File {
            path: path.to_string(),
            text: text.to_string(),
            product: without_tests(&blank(text)).0,
        }
    }

    /// A file that is test code as a whole (the file of a `#[cfg(test)] mod tests;`).
    fn test_only(path: &str, text: &str) -> File {
        File {
            product: text.lines().map(|_| "\n").collect(),
            ..File::new(path, text)
        }
    }

    fn module(&self) -> String {
        module_of_path(&self.module_path())
    }

    /// The file's module path inside the crate: `src/solve/key.rs` → `[solve, key]`,
    /// `src/solve/mod.rs` → `[solve]`, `src/lib.rs` → `[]`.
    fn module_path(&self) -> Vec<String> {
        let rel = self.path.strip_prefix("src/").unwrap_or(&self.path);
        let rel = rel.strip_suffix(".rs").unwrap_or(rel);
        let mut path: Vec<String> = rel.split('/').map(String::from).collect();
        if matches!(
            path.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            path.pop();
        }
        path
    }

    fn product_lines(&self) -> Vec<&str> {
        self.product.lines().collect()
    }
}

/// The module of a path inside the crate, as `TABLE` names modules: `[solve, key]` → `solve`,
/// `[frontend, dockerfile, lower]` → `frontend::dockerfile`, `[frontend, shell]` → `frontend`.
fn module_of_path(path: &[String]) -> String {
    match path {
        [] => "lib".to_string(),
        [first, second, ..] if first == "frontend" && FRONTEND_PARTS.contains(&second.as_str()) => {
            format!("frontend::{second}")
        }
        [first, ..] => first.clone(),
    }
}

/// `text` with comments and the contents of string and character literals replaced by spaces,
/// keeping every line break and every delimiter, so line numbers and brackets stay as they were.
fn blank(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = String::with_capacity(text.len());
    let space = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        let after_ident = i > 0 && ident(c[i - 1]);
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    space(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if let Some((quote, hashes)) = raw_string_start(&c, i).filter(|_| !after_ident) {
            // r"..", r#".."#, br"..", cr"..": no escapes; ends at a quote followed by as many
            // hashes.
            out.extend(&c[i..=quote]);
            i = quote + 1;
            while i < c.len() {
                if c[i] == '"' && (1..=hashes).all(|h| c.get(i + h) == Some(&'#')) {
                    out.extend(&c[i..=i + hashes]);
                    i += hashes + 1;
                    break;
                }
                space(&mut out, c[i]);
                i += 1;
            }
        } else if ch == '"' {
            out.push('"');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' && i + 1 < c.len() {
                    space(&mut out, c[i]);
                    i += 1;
                }
                space(&mut out, c[i]);
                i += 1;
            }
            if i < c.len() {
                out.push('"');
                i += 1;
            }
        } else if ch == '\'' && next == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{1F600}'.
            out.push('\'');
            out.push(' ');
            i += 2;
            if i < c.len() {
                space(&mut out, c[i]);
                i += 1;
            }
            while i < c.len() && c[i] != '\'' && c[i] != '\n' {
                space(&mut out, c[i]);
                i += 1;
            }
            if i < c.len() && c[i] == '\'' {
                out.push('\'');
                i += 1;
            }
        } else if ch == '\'' && c.get(i + 2) == Some(&'\'') {
            out.push_str("' '");
            i += 3;
        } else {
            // Code, or the quote of a lifetime or label.
            out.push(ch);
            i += 1;
        }
    }
    out
}

/// If a raw string literal starts at `i`: the index of its opening quote and its number of hashes.
fn raw_string_start(c: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if matches!(c.get(j), Some('b' | 'c')) {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    let hashes = c[j..].iter().take_while(|&&ch| ch == '#').count();
    (c.get(j + hashes) == Some(&'"')).then_some((j + hashes, hashes))
}

/// The last line of the item whose first line (after its attributes) is `start`: where the `;` or
/// the `}` that ends it is. `lines` must be blanked (see `blank`), so that every bracket is code.
fn item_end(lines: &[&str], start: usize) -> usize {
    let mut depth = 0i32;
    for (n, line) in lines.iter().enumerate().skip(start) {
        for ch in line.chars() {
            match ch {
                '(' | '[' | '{' => depth += 1,
                ')' | ']' => depth -= 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return n;
                    }
                }
                ';' if depth == 0 => return n,
                _ => {}
            }
        }
    }
    lines.len().saturating_sub(1)
}

/// The first line of the item that the attribute or comment on line `n` belongs to.
fn item_start(lines: &[&str], n: usize) -> usize {
    let mut start = n + 1;
    while start < lines.len() {
        let line = lines[start].trim_start();
        if line.is_empty() || line.starts_with("#[") || line.starts_with("//") {
            start += 1;
        } else {
            break;
        }
    }
    start
}

/// Blanked code without its test items (each `#[cfg(test)]` item, blanked line for line), and the
/// names of the test modules that live in files of their own (`#[cfg(test)] mod tests;`).
fn without_tests(blanked: &str) -> (String, Vec<String>) {
    let lines: Vec<&str> = blanked.lines().collect();
    let mut test = vec![false; lines.len()];
    let mut files = Vec::new();
    for n in 0..lines.len() {
        let Some(rest) = lines[n].trim_start().strip_prefix("#[cfg(test)]") else {
            continue;
        };
        if test[n] {
            continue;
        }
        let start = if rest.trim().is_empty() {
            item_start(&lines, n)
        } else {
            n
        };
        let end = item_end(&lines, start.min(lines.len().saturating_sub(1)));
        let item = lines[start.min(end)..=end].join(" ");
        let words: Vec<&str> = item.split_whitespace().collect();
        if let Some(name) = words
            .windows(2)
            .find(|w| w[0] == "mod")
            .map(|w| w[1].trim_end_matches(';'))
            .filter(|_| item.trim_end().ends_with(';'))
        {
            files.push(name.to_string());
        }
        test[n..=end].iter_mut().for_each(|t| *t = true);
    }
    let product = lines
        .iter()
        .zip(&test)
        .map(|(line, t)| {
            if *t {
                "\n".to_string()
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    (product, files)
}

/// Every Rust file under `src/`, with the files of test modules marked as test code.
fn sources() -> Vec<File> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    rust_files(&root.join("src"), &mut paths);
    paths.sort();
    let texts: Vec<(String, String)> = paths
        .iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, fs::read_to_string(p).unwrap())
        })
        .collect();
    files(&texts)
}

/// Files from their paths and texts, the files of test modules (`#[cfg(test)] mod tests;` in
/// `src/a/b.rs` declares `src/a/b/tests.rs` or `src/a/b/tests/`) as test code.
fn files(texts: &[(String, String)]) -> Vec<File> {
    let mut test_dirs = Vec::new();
    for (path, text) in texts {
        let dir = match path.rsplit_once('/') {
            Some((dir, "mod.rs" | "lib.rs" | "main.rs")) => dir.to_string(),
            _ => path.trim_end_matches(".rs").to_string(),
        };
        for name in without_tests(&blank(text)).1 {
            test_dirs.push(format!("{dir}/{name}"));
        }
    }
    texts
        .iter()
        .map(|(path, text)| {
            let stem = path.trim_end_matches(".rs");
            let is_test = test_dirs
                .iter()
                .any(|d| stem == d || path.starts_with(&format!("{d}/")));
            if is_test {
                File::test_only(path, text)
            } else {
                File::new(path, text)
            }
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Paths and words in code

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every path written in blanked code, each `use` group expanded: `use std::{fs, io::{self,
/// Read}};` gives `std::fs`, `std::io::self` and `std::io::Read`. With the line (from 1) it is on.
fn paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let s = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    while i < s.len() {
        let starts_path = is_ident(s[i])
            && !s[i].is_ascii_digit()
            && (i == 0 || (!is_ident(s[i - 1]) && s[i - 1] != b':'));
        if !starts_path {
            if s[i] == b'\n' {
                line += 1;
            }
            i += 1;
            continue;
        }
        let mut p = PathParser { s, i };
        let mut found = Vec::new();
        p.tree(Vec::new(), &mut found, 0);
        for path in found.into_iter().filter(|path| path.len() > 1) {
            out.push((line, path));
        }
        line += s[i..p.i.max(i + 1)].iter().filter(|&&b| b == b'\n').count();
        i = p.i.max(i + 1);
    }
    out
}

struct PathParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl PathParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.s[self.i..].starts_with(token.as_bytes()) {
            self.i += token.len();
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.i;
        while self.i < self.s.len() && is_ident(self.s[self.i]) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// A path, or a tree of them, that extends `prefix`.
    fn tree(&mut self, mut path: Vec<String>, out: &mut Vec<Vec<String>>, depth: usize) {
        loop {
            if !path.is_empty() {
                self.ws();
            }
            if depth < 8 && self.eat("{") {
                self.group(&path, out, depth);
                return;
            }
            if self.eat("*") {
                path.push("*".to_string());
                out.push(path);
                return;
            }
            let Some(id) = self.ident() else {
                out.push(path);
                return;
            };
            path.push(id);
            let here = self.i;
            self.ws();
            if !self.eat("::") {
                self.i = here;
                out.push(path);
                return;
            }
        }
    }

    /// The items of a `{...}` group, after its opening brace.
    fn group(&mut self, path: &[String], out: &mut Vec<Vec<String>>, depth: usize) {
        loop {
            self.ws();
            if self.i >= self.s.len() || self.eat("}") {
                return;
            }
            self.tree(path.to_vec(), out, depth + 1);
            // Past what follows an item (`as name`) to the comma or brace after it.
            while self.i < self.s.len() && !matches!(self.s[self.i], b',' | b'}' | b'{' | b';') {
                self.i += 1;
            }
            if !self.eat(",") && !self.eat("}") {
                return;
            }
            if self.s[self.i - 1] == b'}' {
                return;
            }
        }
    }
}

/// The lines (from 1) on which `word` occurs in blanked code as a word of its own: not preceded by
/// an identifier character (so `print!` is not found in `eprint!`), nor followed by one when it
/// ends in one.
fn lines_with(code: &str, word: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let b = line.as_bytes();
        let found = line.match_indices(word).any(|(at, _)| {
            let before = at == 0 || !is_ident(b[at - 1]) || !is_ident(word.as_bytes()[0]);
            let end = at + word.len();
            let after =
                end >= b.len() || !is_ident(b[end]) || !is_ident(*word.as_bytes().last().unwrap());
            before && after
        });
        if found {
            lines.push(n + 1);
        }
    }
    lines
}

/// One use of a module by a file's product code.
struct Use {
    line: usize,
    /// As written, from its root: `crate::graph::op::Op`.
    path: String,
    /// The module used, as `TABLE` names it.
    module: String,
    /// Written as `kiln::...`.
    by_name: bool,
}

/// The modules a file's product code uses, through `crate::`, `kiln::`, `super::`, `self::` or a
/// path relative to the file's module (`dockerfile::lower` in `src/frontend/mod.rs`).
fn uses(file: &File) -> Vec<Use> {
    let own_path = file.module_path();
    let own = file.module();
    let mut out = Vec::new();
    for (line, path) in paths(&file.product) {
        let (absolute, relative) = match path[0].as_str() {
            "crate" | "kiln" => (path[1..].to_vec(), false),
            "self" | "super" => {
                let mut base = own_path.clone();
                let ups = path.iter().take_while(|s| *s == "super").count();
                base.truncate(base.len().saturating_sub(ups));
                let rest = path.iter().skip(ups).skip_while(|s| *s == "self");
                (base.into_iter().chain(rest.cloned()).collect(), false)
            }
            _ => (own_path.iter().chain(&path).cloned().collect(), true),
        };
        if absolute.is_empty() || absolute[0] == "*" {
            continue;
        }
        let mut module = module_of_path(&absolute);
        if relative && (module == own || row(&module).is_none()) {
            continue;
        }
        if row(&module).is_none() && !relative {
            // An item of the crate root (`crate::compile`), or a module without a row (reported on
            // its own files).
            module = format!("lib ({})", absolute[0]);
        }
        out.push(Use {
            line,
            path: path.join("::"),
            module,
            by_name: path[0] == "kiln",
        });
    }
    out
}

fn row(module: &str) -> Option<&'static [&'static str]> {
    TABLE
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, allowed)| *allowed)
}

fn may_use(allowed: &[&str], module: &str) -> bool {
    allowed.contains(&ANY)
        || allowed.contains(&module)
        || (allowed.contains(&FOUNDATIONS) && FOUNDATION_MODULES.contains(&module))
}

/// Findings, one per line of `file` on which one of `words` or a path starting with one of `paths`
/// occurs.
fn occurrences(file: &File, words: &[&str], paths_: &[&[&str]], what: &str) -> Vec<String> {
    let mut found: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for word in words {
        for line in lines_with(&file.product, word) {
            found.entry(line).or_default().insert(format!("`{word}`"));
        }
    }
    for (line, path) in paths(&file.product) {
        if let Some(p) = paths_
            .iter()
            .find(|p| path.starts_with(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()))
        {
            found
                .entry(line)
                .or_default()
                .insert(format!("`{}`", p.join("::")));
        }
    }
    found
        .into_iter()
        .map(|(line, w)| {
            let w: Vec<String> = w.into_iter().collect();
            format!(
                "{}:{line} (`{}`): {} {what}",
                file.path,
                file.module(),
                w.join(", ")
            )
        })
        .collect()
}

// -------------------------------------------------------------------------------------------------
// The rules

fn imports_follow_the_table(files: &[File]) -> Vec<String> {
    let mut bad = Vec::new();
    for file in files {
        let module = file.module();
        let Some(allowed) = row(&module) else {
            bad.push(format!(
                "{}: module `{module}` has no row in the import table; add one to `TABLE` in tests/tidy.rs, and \
                 describe the module in ARCHITECTURE.md",
                file.path
            ));
            continue;
        };
        for u in uses(file) {
            if u.by_name && !allowed.contains(&ANY) {
                bad.push(format!(
                    "{}:{} (`{module}`) names the crate: `{}`; only the driver may, the rest use `crate::`",
                    file.path, u.line, u.path
                ));
            }
            if u.module != module && !may_use(allowed, &u.module) {
                bad.push(format!(
                    "{}:{} (`{module}`) uses `{}` (`{}`), which its row in the import table does not allow",
                    file.path, u.line, u.path, u.module
                ));
            }
        }
    }
    bad
}

fn no_import_loop(files: &[File]) -> Vec<String> {
    // Module → module it uses → where, first.
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let module = file.module();
        for u in uses(file) {
            if u.module != module {
                edges
                    .entry(module.clone())
                    .or_default()
                    .entry(u.module)
                    .or_insert_with(|| format!("{}:{}", file.path, u.line));
            }
        }
    }
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for next in edges.get(&m).into_iter().flat_map(|e| e.keys()) {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        edges.keys().map(|m| (m, reach(m))).collect();
    let mut loops: BTreeSet<Vec<String>> = BTreeSet::new();
    for (m, r) in &reaches {
        if r.contains(*m) {
            let members: Vec<String> = r
                .iter()
                .filter(|o| reaches.get(o).is_some_and(|back| back.contains(*m)))
                .cloned()
                .collect();
            loops.insert(members);
        }
    }
    loops
        .into_iter()
        .map(|members| {
            let via: Vec<String> = members
                .iter()
                .flat_map(|a| {
                    edges[a]
                        .iter()
                        .filter(|(b, _)| members.contains(b))
                        .map(move |(b, at)| format!("`{a}` uses `{b}` at {at}"))
                })
                .collect();
            format!("import loop between {members:?}: {}", via.join("; "))
        })
        .collect()
}

fn the_ir_knows_no_front_end(files: &[File]) -> Vec<String> {
    let mut bad = Vec::new();
    for file in files {
        let module = file.module();
        if !AFTER_FRONT_ENDS.contains(&module.as_str()) {
            continue;
        }
        for u in uses(file) {
            if u.module == "frontend" || u.module.starts_with("frontend::") {
                bad.push(format!(
                    "{}:{} (`{module}`) uses the front end `{}`; use the IR in `crate::graph`",
                    file.path, u.line, u.path
                ));
            }
        }
    }
    bad
}

fn front_ends_and_graph_do_no_io(files: &[File]) -> Vec<String> {
    files
        .iter()
        .filter(|f| NO_IO.contains(&f.module().as_str()))
        .flat_map(|f| {
            occurrences(
                f,
                &IO_WORDS,
                &IO_PATHS,
                "reads or writes files or stdin; the front ends and the IR get their input as values (from `load`)",
            )
        })
        .collect()
}

fn only_diag_and_progress_print(files: &[File]) -> Vec<String> {
    let mut bad = Vec::new();
    for f in files
        .iter()
        .filter(|f| !PRINTERS.contains(&f.module().as_str()))
    {
        let mut words = PRINT_WORDS.to_vec();
        if !PIPE_ENDS.contains(&f.path.as_str()) {
            words.extend(STREAM_WORDS);
        }
        let mut product = f.product.clone();
        for check in ["stdout().is_terminal()", "stderr().is_terminal()"] {
            product = product.replace(check, &" ".repeat(check.len()));
        }
        let f = File {
            path: f.path.clone(),
            text: f.text.clone(),
            product,
        };
        bad.extend(occurrences(
            &f,
            &words,
            &[],
            "prints; report through `diag` (errors) or `progress` (everything else)",
        ));
    }
    bad
}

fn unsafe_and_syscalls_only_in_exec(files: &[File]) -> Vec<String> {
    let mut words = vec!["unsafe"];
    words.extend(SYSCALL_WORDS);
    files
        .iter()
        .filter(|f| f.module() != "exec")
        .flat_map(|f| occurrences(f, &words, &SYSCALL_PATHS, "outside src/exec"))
        .collect()
}

/// The line ranges (from 0, inclusive) of the data tables `file` marks, or a finding if it may not
/// mark any.
fn data_tables(file: &File, allowed_files: &[&str]) -> Result<Vec<(usize, usize)>, String> {
    let raw: Vec<&str> = file.text.lines().collect();
    let blanked = blank(&file.text);
    let code: Vec<&str> = blanked.lines().collect();
    let mut tables = Vec::new();
    for (n, line) in raw.iter().enumerate() {
        if line.trim() != DATA_TABLE_MARK {
            continue;
        }
        if !allowed_files.contains(&file.path.as_str()) {
            return Err(format!(
                "{}:{}: marks a data table, but the file is not in `DATA_TABLE_FILES` (tests/tidy.rs)",
                file.path,
                n + 1
            ));
        }
        let start = item_start(&code, n);
        if start < code.len() {
            tables.push((start, item_end(&code, start)));
        }
    }
    Ok(tables)
}

/// `no_file_over_1000_lines`, with the files allowed to mark data tables given.
fn file_sizes(files: &[File], allowed_tables: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for file in files {
        let tables = match data_tables(file, allowed_tables) {
            Ok(tables) => tables,
            Err(finding) => {
                bad.push(finding);
                continue;
            }
        };
        let table_lines: usize = tables.iter().map(|(a, b)| b - a + 1).sum();
        let lines = file.text.lines().count() - table_lines;
        if lines > MAX_FILE_LINES {
            bad.push(format!(
                "{}: {lines} lines (at most {MAX_FILE_LINES}; move unit tests to a sibling `tests.rs`, or split the \
                 module)",
                file.path
            ));
        }
    }
    bad
}

/// `no_function_over_150_lines`, with the files allowed to mark data tables given.
fn function_sizes(files: &[File], allowed_tables: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for file in files {
        let tables = match data_tables(file, allowed_tables) {
            Ok(tables) => tables,
            Err(finding) => {
                bad.push(finding);
                continue;
            }
        };
        let lines = file.product_lines();
        for (n, line) in lines.iter().enumerate() {
            let Some(name) = fn_name(line) else { continue };
            if tables.iter().any(|(a, _)| *a == n) {
                continue;
            }
            let len = item_end(&lines, n) - n + 1;
            if len > MAX_FN_LINES {
                bad.push(format!(
                    "{}:{}: fn `{name}` is {len} lines (at most {MAX_FN_LINES}; split it into named steps)",
                    file.path,
                    n + 1
                ));
            }
        }
    }
    bad
}

/// The name of the function a line of blanked code declares, if it declares one.
fn fn_name(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("pub(") {
            rest = r.split_once(')')?.1.trim_start();
        } else if let Some(r) = rest.strip_prefix('"') {
            // The ABI of `extern "C"`, its contents blanked.
            rest = r.split_once('"')?.1.trim_start();
        } else {
            let (word, r) = rest.split_once(char::is_whitespace)?;
            match word {
                "pub" | "const" | "async" | "unsafe" | "extern" | "default" | "safe" => {
                    rest = r.trim_start()
                }
                "fn" => {
                    let r = r.trim_start();
                    let end = r
                        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .unwrap_or(r.len());
                    return (end > 0).then(|| &r[..end]);
                }
                _ => return None,
            }
        }
    }
}

fn no_file_over_1000_lines(files: &[File]) -> Vec<String> {
    file_sizes(files, DATA_TABLE_FILES)
}

fn no_function_over_150_lines(files: &[File]) -> Vec<String> {
    function_sizes(files, DATA_TABLE_FILES)
}

fn every_module_starts_with_a_doc_line(files: &[File]) -> Vec<String> {
    files
        .iter()
        .filter(|f| !f.text.starts_with("//!"))
        .map(|f| {
            format!(
                "{}: no leading `//!` line saying what the module is",
                f.path
            )
        })
        .collect()
}

// -------------------------------------------------------------------------------------------------
// Checking `src/`

fn enforce(name: &str) {
    let rule = RULES.iter().find(|r| r.name == name).expect(name);
    let bad = (rule.check)(&sources());
    assert!(
        bad.is_empty(),
        "invariant \"{name}\" broken:\n{}",
        bad.join("\n")
    );
}

#[test]
fn imports_follow_the_table_in_src() {
    enforce("imports follow the table");
}

#[test]
fn no_import_loop_in_src() {
    enforce("no import loop in src/");
}

#[test]
fn the_ir_knows_no_front_end_in_src() {
    enforce("the IR knows no front end");
}

#[test]
fn front_ends_and_graph_do_no_io_in_src() {
    enforce("front ends and graph do no IO");
}

#[test]
fn only_diag_and_progress_print_in_src() {
    enforce("only diag and progress print");
}

#[test]
fn unsafe_and_syscalls_only_in_exec_in_src() {
    enforce("unsafe and syscalls only in exec");
}

#[test]
fn no_file_over_1000_lines_in_src() {
    enforce("no file over 1,000 lines");
}

#[test]
fn no_function_over_150_lines_in_src() {
    enforce("no function over 150 lines");
}

#[test]
fn every_module_starts_with_a_doc_line_in_src() {
    enforce("every module starts with a doc line");
}

#[test]
fn architecture_md_states_every_rule() {
    let arch =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md")).unwrap();
    // Stated under its heading, each as a bold name, not merely mentioned somewhere.
    let arch = arch
        .split_once("\n## Invariants\n")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or(rest))
        .expect("ARCHITECTURE.md has an `## Invariants` section");
    let missing: Vec<&str> = RULES
        .iter()
        .map(|r| r.name)
        .filter(|n| !arch.contains(&format!("- **{n}**")))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not state the invariants {missing:?}"
    );
}

#[test]
fn architecture_md_names_every_module() {
    let arch =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md")).unwrap();
    let mut missing: Vec<String> = sources()
        .iter()
        .filter_map(|f| f.module_path().first().cloned())
        .filter(|m| !arch.contains(&format!("`src/{m}")))
        .collect();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md does not describe: {missing:?}"
    );
}

#[test]
fn the_table_has_a_row_for_every_foundation_and_names_only_modules_it_has() {
    for f in FOUNDATION_MODULES {
        assert_eq!(row(f), Some(&[FOUNDATIONS][..]), "foundation `{f}`");
    }
    for (module, allowed) in TABLE {
        for a in *allowed {
            assert!(
                [FOUNDATIONS, ANY].contains(a) || row(a).is_some(),
                "`{module}` may use `{a}`, which has no row"
            );
        }
    }
}

// -------------------------------------------------------------------------------------------------
// Each rule fails on planted violations and passes planted allowed code

/// The findings of `check` on one planted file.
fn planted(check: fn(&[File]) -> Vec<String>, path: &str, code: &str) -> Vec<String> {
    check(&[File::new(path, code)])
}

fn assert_catches(check: fn(&[File]) -> Vec<String>, cases: &[(&str, &str)]) {
    for (path, code) in cases {
        assert!(
            !planted(check, path, code).is_empty(),
            "not caught in {path}: {code}"
        );
    }
}

fn assert_allows(check: fn(&[File]) -> Vec<String>, cases: &[(&str, &str)]) {
    for (path, code) in cases {
        let found = planted(check, path, code);
        assert!(
            found.is_empty(),
            "wrongly caught in {path}: {code}\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn modules_are_named_as_the_table_names_them() {
    let module = |path: &str| File::new(path, "").module();
    assert_eq!(module("src/solve/key.rs"), "solve");
    assert_eq!(module("src/store.rs"), "store");
    assert_eq!(module("src/lib.rs"), "lib");
    assert_eq!(module("src/cli/args.rs"), "cli");
    assert_eq!(module("src/frontend/mod.rs"), "frontend");
    assert_eq!(module("src/frontend/shell.rs"), "frontend");
    assert_eq!(module("src/frontend/mount/tests.rs"), "frontend");
    assert_eq!(
        module("src/frontend/dockerfile/mod.rs"),
        "frontend::dockerfile"
    );
    assert_eq!(
        module("src/frontend/dockerfile/syntax/parse.rs"),
        "frontend::dockerfile"
    );
    assert_eq!(
        module("src/frontend/buildfile/lower.rs"),
        "frontend::buildfile"
    );
    assert_eq!(module("src/frontend/convert.rs"), "frontend::convert");
}

#[test]
fn blanking_keeps_code_and_lines_and_drops_comments_and_literals() {
    let code = "let a = \"crate::x // y\"; // crate::z\n/* crate::\n /* nested */ w */ let b = 'c';\n\
                let r = r#\"a \" crate::q\"#; let l: &'static str = b\"\\\"x\"; let e = '\\'';\nfn f<'a>() {}";
    let b = blank(code);
    assert_eq!(b.lines().count(), code.lines().count());
    assert!(!b.contains("crate::"), "{b}");
    assert!(b.contains("let b = ' ';"), "{b}");
    assert!(b.contains("let e = '  ';"), "{b}");
    assert!(b.contains("fn f<'a>() {}"), "{b}");
    assert!(b.contains("&'static str"), "{b}");
}

#[test]
fn test_code_is_not_product_code() {
    let text = "//! m\nuse crate::graph::Op;\n#[cfg(test)]\nmod tests {\n    use crate::exec::x;\n}\n\
                #[cfg(test)]\nmod more;\nfn after() { crate::solve::y(); }\n";
    let (product, files) = without_tests(&blank(text));
    assert_eq!(product.lines().count(), text.lines().count());
    assert!(product.contains("crate::graph::Op") && product.contains("crate::solve::y"));
    assert!(!product.contains("crate::exec"));
    assert_eq!(files, ["more"]);
}

#[test]
fn the_files_of_test_modules_are_test_code() {
    let uses_exec = "//! t\nuse crate::exec::x;\n";
    let texts: Vec<(String, String)> = [
        ("src/solve/ignore.rs", "//! m\n#[cfg(test)]\nmod tests;\n"),
        ("src/solve/ignore/tests.rs", uses_exec),
        (
            "src/solve/mod.rs",
            "//! m\n#[cfg(test)]\nmod tests;\nmod ignore;\n",
        ),
        ("src/solve/tests/mod.rs", uses_exec),
        ("src/solve/tests/more.rs", uses_exec),
        ("src/solve/other.rs", uses_exec),
        ("src/solve/ignore/more.rs", uses_exec),
    ]
    .iter()
    .map(|(p, t)| (p.to_string(), t.to_string()))
    .collect();
    let found: Vec<String> = imports_follow_the_table(&files(&texts))
        .into_iter()
        .map(|f| f.split(':').next().unwrap().to_string())
        .collect();
    assert_eq!(found, ["src/solve/other.rs", "src/solve/ignore/more.rs"]);
}

#[test]
fn paths_expand_use_groups() {
    let found: Vec<String> = paths(
        "use crate::{diag::Span, frontend::{self, dockerfile::lower as l, LowerOptions}};\nlet x = kiln::graph::Op::Run;",
    )
    .into_iter()
    .map(|(line, p)| format!("{line}:{}", p.join("::")))
    .collect();
    assert_eq!(
        found,
        [
            "1:crate::diag::Span",
            "1:crate::frontend::self",
            "1:crate::frontend::dockerfile::lower",
            "1:crate::frontend::LowerOptions",
            "2:kiln::graph::Op::Run",
        ]
    );
}

#[test]
fn the_import_table_catches_planted_violations() {
    assert_catches(
        imports_follow_the_table,
        &[
            // The front ends never use each other, in any spelling.
            (
                "src/frontend/buildfile/lower.rs",
                "use crate::frontend::dockerfile::lower::lookup;",
            ),
            (
                "src/frontend/dockerfile/lower.rs",
                "use crate::frontend::{shell, buildfile::syntax};",
            ),
            (
                "src/frontend/buildfile/lower.rs",
                "use super::super::dockerfile::lower;",
            ),
            (
                "src/frontend/buildfile/mod.rs",
                "fn f() { super::dockerfile::lower::run(); }",
            ),
            // Nor does what they share.
            (
                "src/frontend/mount.rs",
                "use super::dockerfile::syntax::ast::Flag;",
            ),
            ("src/frontend/mod.rs", "pub use dockerfile::lower::lookup;"),
            // No stage uses a later one.
            ("src/frontend/shell.rs", "use crate::load::Loader;"),
            ("src/graph/op.rs", "use crate::solve::Executor;"),
            ("src/load/mod.rs", "use crate::solve::Executor;"),
            ("src/solve/schedule.rs", "use crate::load::Loader;"),
            ("src/solve/schedule.rs", "use crate::exec::Sandbox;"),
            ("src/solve/key.rs", "use crate::frontend::LowerOptions;"),
            ("src/export/mod.rs", "use crate::remote::Cache;"),
            ("src/export/mod.rs", "use crate::exec::unpack;"),
            // The executors are siblings.
            ("src/remote/worker.rs", "use crate::exec::sandbox::run;"),
            ("src/exec/mod.rs", "use crate::{diag::Span, remote::Mode};"),
            // Foundations use no stage, nor the driver.
            ("src/store.rs", "use crate::graph::NodeId;"),
            (
                "src/layer/write.rs",
                "fn f() { crate::exec::userns::ids(); }",
            ),
            ("src/diag.rs", "use crate::cli::Args;"),
            // Only the driver names the crate.
            ("src/solve/mod.rs", "use kiln::graph::Op;"),
            // A module without a row.
            ("src/gopath.rs", "//! Go's path.Clean\npub fn clean() {}"),
            ("src/exec/mod.rs", "use crate::gopath::clean;"),
        ],
    );
    assert_allows(
        imports_follow_the_table,
        &[
            (
                "src/frontend/buildfile/lower.rs",
                "use crate::frontend::{LowerOptions, join_path, shell};",
            ),
            (
                "src/frontend/buildfile/lower.rs",
                "use crate::frontend::buildfile::syntax::Expr;",
            ),
            (
                "src/frontend/dockerfile/lints/mod.rs",
                "use super::check; use crate::frontend::mount;",
            ),
            (
                "src/frontend/dockerfile/lower.rs",
                "use crate::graph::op::{Op, RunOp}; use crate::diag::Span;",
            ),
            (
                "src/frontend/mod.rs",
                "pub mod dockerfile;\nuse crate::graph::NamedContext; use std::fs::File;",
            ),
            (
                "src/frontend/convert.rs",
                "use super::{buildfile::syntax, dockerfile::syntax::ast, shell};",
            ),
            (
                "src/load/mod.rs",
                "use crate::frontend::{buildfile::lower::Session, dockerfile, LowerOptions};",
            ),
            (
                "src/solve/schedule.rs",
                "use crate::{graph::Program, store::Store, layer::write};",
            ),
            (
                "src/exec/mod.rs",
                "use crate::solve::Executor; use crate::secret::SecretValue;",
            ),
            (
                "src/remote/mod.rs",
                "impl crate::solve::Executor for Remote {}",
            ),
            (
                "src/export/docker.rs",
                "use crate::layer::read; use crate::solve::Snapshot;",
            ),
            (
                "src/store.rs",
                "use crate::{digest::Digest, secret::SecretValue};",
            ),
            (
                "src/cli/build.rs",
                "use crate::{exec, remote, load::Loader, frontend::dockerfile};",
            ),
            (
                "src/main.rs",
                "fn main() { std::process::exit(kiln::cli::main()); }",
            ),
            (
                "src/monorepo.rs",
                "use crate::frontend::buildfile::lower::Evaluator;",
            ),
            // Prose, literals and tests may say anything.
            (
                "src/solve/key.rs",
                "// crate::exec::x\nlet s = \"crate::exec::x kiln::x\";",
            ),
            (
                "src/graph/op.rs",
                "fn f() {}\n#[cfg(test)]\nmod tests { use crate::frontend::dockerfile::lower; }",
            ),
        ],
    );
}

#[test]
fn the_loop_rule_catches_planted_loops() {
    let files = |cases: &[(&str, &str)]| -> Vec<File> {
        cases.iter().map(|(p, c)| File::new(p, c)).collect()
    };
    let two = files(&[
        (
            "src/frontend/mount.rs",
            "use crate::frontend::dockerfile::syntax::ast::Flag;",
        ),
        (
            "src/frontend/dockerfile/lower.rs",
            "use crate::frontend::mount;",
        ),
    ]);
    assert_eq!(no_import_loop(&two).len(), 1, "{:?}", no_import_loop(&two));
    let three = files(&[
        ("src/solve/mod.rs", "use crate::exec::Sandbox;"),
        ("src/exec/mod.rs", "use crate::export::Layer;"),
        ("src/export/mod.rs", "fn f() { crate::solve::run(); }"),
        ("src/cli.rs", "use crate::{solve, exec, export};"),
    ]);
    let found = no_import_loop(&three);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("\"exec\", \"export\", \"solve\""),
        "{found:?}"
    );
    let through_super = files(&[
        (
            "src/frontend/buildfile/lower.rs",
            "use super::super::dockerfile::lower;",
        ),
        (
            "src/frontend/dockerfile/lower.rs",
            "use crate::frontend::buildfile::syntax;",
        ),
    ]);
    assert_eq!(no_import_loop(&through_super).len(), 1);
    let no_loop = files(&[
        (
            "src/frontend/dockerfile/lower.rs",
            "use crate::frontend::mount; use crate::graph::Op;",
        ),
        (
            "src/frontend/mount.rs",
            "use super::join_path; use crate::graph::op::RunMount;",
        ),
        ("src/solve/mod.rs", "use crate::graph::Op;"),
        ("src/exec/mod.rs", "use crate::solve::Executor;"),
        ("src/cli.rs", "use crate::{solve, exec, frontend};"),
        (
            "src/graph/op.rs",
            "#[cfg(test)]\nmod tests { use crate::frontend::mount; }",
        ),
    ]);
    assert!(
        no_import_loop(&no_loop).is_empty(),
        "{:?}",
        no_import_loop(&no_loop)
    );
}

#[test]
fn the_front_end_rule_catches_planted_violations() {
    assert_catches(
        the_ir_knows_no_front_end,
        &[
            ("src/exec/mod.rs", "use crate::frontend::op::Network;"),
            (
                "src/graph/op.rs",
                "use crate::frontend::dockerfile::syntax::ast::Word;",
            ),
            (
                "src/solve/mod.rs",
                "fn f() { crate::frontend::dockerfile::lints::run(); }",
            ),
            (
                "src/remote/mod.rs",
                "use crate::{diag::Span, frontend::{LowerOptions, dockerfile}};",
            ),
            (
                "src/export/mod.rs",
                "use crate::{\n    frontend::Rules,\n    digest::Digest,\n};",
            ),
            ("src/graph/mod.rs", "use super::frontend::buildfile;"),
        ],
    );
    assert_allows(
        the_ir_knows_no_front_end,
        &[
            ("src/exec/mod.rs", "use crate::graph::op::Network;"),
            (
                "src/solve/mod.rs",
                "use crate::{diag::Span, graph::{Op, op::RunOp}};",
            ),
            (
                "src/frontend/mod.rs",
                "use crate::frontend::dockerfile::syntax::ast::Word;",
            ),
            ("src/load/mod.rs", "use crate::frontend::dockerfile;"),
            ("src/cli.rs", "use crate::frontend::LowerOptions;"),
            (
                "src/exec/mod.rs",
                "// see crate::frontend::dockerfile::lower",
            ),
            (
                "src/graph/op.rs",
                "fn f() {}\n#[cfg(test)]\nmod tests { use crate::frontend::dockerfile::lower; }",
            ),
        ],
    );
}

#[test]
fn the_io_rule_catches_planted_violations() {
    assert_catches(
        front_ends_and_graph_do_no_io,
        &[
            (
                "src/frontend/buildfile/lower.rs",
                "let text = std::fs::read_to_string(&path)?;",
            ),
            ("src/frontend/buildfile/lower.rs", "use std::{fs, io};"),
            ("src/frontend/dockerfile/lower.rs", "use std::fs::File;"),
            ("src/frontend/mod.rs", "let f = File::open(p)?;"),
            ("src/frontend/shell.rs", "if path.exists() { }"),
            ("src/frontend/convert.rs", "for e in dir.read_dir()? {}"),
            (
                "src/frontend/dockerfile/syntax/raw.rs",
                "let mut s = String::new(); std::io::stdin().read_line(&mut s);",
            ),
            (
                "src/frontend/buildfile/check.rs",
                "use std::io::{Read, stdin};",
            ),
            ("src/graph/mod.rs", "let m = p.metadata()?;"),
            ("src/graph/program.rs", "tokio::fs::write(p, b).await?;"),
        ],
    );
    assert_allows(
        front_ends_and_graph_do_no_io,
        &[
            (
                "src/frontend/buildfile/lower.rs",
                "let text = source.text(); use std::path::Path;",
            ),
            (
                "src/frontend/mod.rs",
                "use std::io::Write as _; use std::fmt;",
            ),
            (
                "src/frontend/dockerfile/lower.rs",
                "// reads no file: std::fs::read is the loader's\nlet s = \"File::open\";",
            ),
            (
                "src/graph/op.rs",
                "fn f() {}\n#[cfg(test)]\nmod tests { use std::fs; }",
            ),
            (
                "src/load/mod.rs",
                "let text = std::fs::read_to_string(&path)?;",
            ),
            ("src/solve/context.rs", "use std::fs::File;"),
        ],
    );
}

#[test]
fn the_print_rule_catches_planted_violations() {
    assert_catches(
        only_diag_and_progress_print,
        &[
            ("src/cli.rs", "println!(\"{}\", digest);"),
            ("src/cli/build.rs", "eprintln!(\"warning: {w}\");"),
            ("src/frontend/buildfile/lower.rs", "eprint!(\"x\");"),
            ("src/solve/mod.rs", "print!(\"x\");"),
            ("src/exec/helper.rs", "dbg!(&state);"),
            ("src/monorepo.rs", "let mut out = std::io::stdout().lock();"),
            ("src/export/mod.rs", "writeln!(io::stderr(), \"x\")?;"),
            ("src/main.rs", "fn main() { println!(\"hi\"); }"),
            ("src/exec/helper.rs", "eprintln!(\"x\");"),
            (
                "src/exec/sandbox.rs",
                "let _ = writeln!(std::io::stderr(), \"{line}\");",
            ),
            (
                "src/cli.rs",
                "let color = std::io::stderr().is_terminal() && std::io::stdout().lock();",
            ),
        ],
    );
    assert_allows(
        only_diag_and_progress_print,
        &[
            ("src/diag.rs", "eprintln!(\"{report:?}\");"),
            (
                "src/exec/helper.rs",
                "let _ = writeln!(std::io::stderr(), \"{line}\");",
            ),
            ("src/cli.rs", "let color = std::io::stderr().is_terminal();"),
            (
                "src/progress.rs",
                "let mut out = std::io::stderr(); println!(\"x\");",
            ),
            (
                "src/exec/sandbox.rs",
                "cmd.stdout(Stdio::piped()).stderr(Stdio::null());",
            ),
            (
                "src/cli.rs",
                "// println! here would bypass diag\nlet s = \"println!\";",
            ),
            (
                "src/solve/mod.rs",
                "fn f() {}\n#[cfg(test)]\nmod tests { fn t() { println!(\"x\"); } }",
            ),
            (
                "src/cli.rs",
                "let s = format!(\"{x}\"); write!(f, \"x\")?; my_print!();",
            ),
        ],
    );
}

#[test]
fn the_unsafe_rule_catches_planted_violations() {
    assert_catches(
        unsafe_and_syscalls_only_in_exec,
        &[
            ("src/solve/mod.rs", "let p = unsafe { &*ptr };"),
            ("src/store.rs", "unsafe fn f() {}"),
            ("src/remote/worker.rs", "std::process::Command::new(\"sh\")"),
            (
                "src/remote/worker.rs",
                "use std::process::{Command, Stdio};",
            ),
            ("src/export/mod.rs", "use tokio::process::Command;"),
            ("src/cli.rs", "use nix::{mount::mount, unistd::Uid};"),
            ("src/solve/run.rs", "nix::sched::unshare(flags)?;"),
            ("src/layer/read.rs", "let r = libc::getuid();"),
            ("src/monorepo.rs", "cmd.pre_exec(|| Ok(()));"),
        ],
    );
    assert_allows(
        unsafe_and_syscalls_only_in_exec,
        &[
            (
                "src/exec/sandbox.rs",
                "unsafe { cmd.pre_exec(|| Ok(())) }; nix::mount::mount(); libc::getpid();",
            ),
            (
                "src/export/cache.rs",
                "let mut unsafe_layers = BTreeSet::new();",
            ),
            (
                "src/remote/mod.rs",
                "h.write_u32(std::process::id()); nix::sys::stat::mknod(p, k, m, d)?;",
            ),
            (
                "src/solve/mod.rs",
                "// unsafe { fork() } belongs in exec\nlet s = \"unsafe\";",
            ),
            (
                "src/store.rs",
                "fn f() {}\n#[cfg(test)]\nmod tests { fn t() { std::process::Command::new(\"ls\"); } }",
            ),
        ],
    );
}

#[test]
fn the_size_rules_catch_planted_violations() {
    let long_fn = |name: &str, lines: usize| {
        let body: String = (0..lines - 2)
            .map(|i| format!("    let x{i} = {i};\n"))
            .collect();
        format!("fn {name}() {{\n{body}}}\n")
    };
    let filler = |lines: usize| -> String {
        (0..lines)
            .map(|i| format!("const C{i}: u8 = 0;\n"))
            .collect()
    };
    let sizes = |path: &str, code: &str, tables: &[&str]| {
        let files = [File::new(path, code)];
        (function_sizes(&files, tables), file_sizes(&files, tables))
    };

    // Functions.
    for code in [
        long_fn("f", 151),
        format!(
            "impl X {{\n    pub(crate) async {}}}\n",
            long_fn("g", 151).replace('\n', "\n    ")
        ),
        format!("pub unsafe extern \"C\" {}", long_fn("h", 151)),
    ] {
        assert_eq!(sizes("src/solve/mod.rs", &code, &[]).0.len(), 1, "{code}");
    }
    assert!(
        sizes("src/solve/mod.rs", &long_fn("f", 150), &[])
            .0
            .is_empty()
    );
    let tested = format!(
        "fn f() {{}}\n#[cfg(test)]\nmod tests {{\n{}}}\n",
        long_fn("t", 400)
    );
    assert!(sizes("src/solve/mod.rs", &tested, &[]).0.is_empty());
    let braces_in_literals = format!(
        "{}fn g() {{ let s = \"}}}}\"; let c = '}}'; }}\n",
        long_fn("f", 100)
    );
    assert!(
        sizes("src/solve/mod.rs", &braces_in_literals, &[])
            .0
            .is_empty()
    );

    // Files, tests included.
    assert_eq!(sizes("src/store.rs", &filler(1001), &[]).1.len(), 1);
    assert!(sizes("src/store.rs", &filler(1000), &[]).1.is_empty());
    assert_eq!(
        sizes(
            "src/store.rs",
            &format!("{}#[cfg(test)]\nmod tests {{}}\n", filler(999)),
            &[]
        )
        .1
        .len(),
        1
    );

    // Data tables: marked in the file, and the file on the list.
    let table = format!(
        "{}\n// tidy: data table\n#[rustfmt::skip]\nconst T: &[&str] = &[\n{}];\n",
        filler(900),
        "    \"x\",\n".repeat(300)
    );
    assert!(
        sizes("src/exec/seccomp.rs", &table, &["src/exec/seccomp.rs"])
            .1
            .is_empty()
    );
    assert_eq!(sizes("src/exec/seccomp.rs", &table, &[]).1.len(), 1);
    assert_eq!(
        sizes(
            "src/exec/seccomp.rs",
            &table.replace("// tidy: data table\n", ""),
            &["src/exec/seccomp.rs"]
        )
        .1
        .len(),
        1
    );
    let table_fn = format!("// tidy: data table\n{}", long_fn("syscalls", 400));
    assert!(
        sizes("src/exec/seccomp.rs", &table_fn, &["src/exec/seccomp.rs"])
            .0
            .is_empty()
    );
    assert_eq!(sizes("src/exec/seccomp.rs", &table_fn, &[]).0.len(), 1);
    // The mark covers the item after it, not the rest of the file.
    let then_long = format!(
        "// tidy: data table\nconst T: [u8; 1] = [0];\n{}",
        long_fn("f", 151)
    );
    assert_eq!(
        sizes("src/exec/seccomp.rs", &then_long, &["src/exec/seccomp.rs"])
            .0
            .len(),
        1
    );
}

#[test]
fn the_doc_line_rule_catches_planted_violations() {
    assert_catches(
        every_module_starts_with_a_doc_line,
        &[
            ("src/solve/key.rs", "use crate::graph::Op;"),
            ("src/solve/key.rs", "/// An item's doc.\nfn f() {}"),
            ("src/solve/key.rs", "\n//! Too late."),
        ],
    );
    assert_allows(
        every_module_starts_with_a_doc_line,
        &[("src/solve/key.rs", "//! Cache keys.\nuse crate::graph::Op;")],
    );
}
