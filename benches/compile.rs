//! Compile throughput: parse + lower + graph of real Dockerfiles (BuildKit's real-world corpus in
//! `../shared/conformance/realworld` when present, else kiln's examples), counted in Dockerfiles and bytes.
//! Run with `cargo bench --bench compile`.

use std::path::Path;

use divan::counter::{BytesCount, ItemsCount};

fn main() {
    divan::main();
}

fn corpus() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/conformance/realworld");
    let dir = if shared.is_dir() {
        shared
    } else {
        root.join("examples/secrets")
    };
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile") || p.ends_with("Dockerfile"))
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).expect("utf-8"),
            )
        })
        .collect();
    files.sort();
    files
}

fn compile(name: &str, text: &str) -> usize {
    let opts = kiln::frontend::LowerOptions {
        lenient: true,
        ..Default::default()
    };
    let source = kiln::Source::Dockerfile(kiln::diag::SourceFile::new(name, text));
    let compiled = kiln::compile(source, &opts).expect("compiles");
    kiln::plan(&compiled.program).dag.node_count()
}

/// A bencher that reports Dockerfiles/s and bytes/s for one pass over `files`.
fn counted<'a, 'b>(
    bencher: divan::Bencher<'a, 'b>,
    files: &[(String, String)],
) -> divan::Bencher<'a, 'b> {
    let bytes: usize = files.iter().map(|(_, t)| t.len()).sum();
    bencher
        .counter(ItemsCount::new(files.len()))
        .counter(BytesCount::new(bytes))
}

/// The whole corpus per iteration: Dockerfiles/s and MB/s of parse + lower + digest.
#[divan::bench]
fn parse_lower_graph(bencher: divan::Bencher) {
    let files = corpus();
    counted(bencher, &files).bench(|| {
        files
            .iter()
            .map(|(n, t)| compile(divan::black_box(n), divan::black_box(t)))
            .sum::<usize>()
    });
}

/// Parsing alone (raw tree and typed AST).
#[divan::bench]
fn parse_only(bencher: divan::Bencher) {
    let files = corpus();
    counted(bencher, &files).bench(|| {
        files
            .iter()
            .filter_map(|(n, t)| {
                kiln::frontend::dockerfile::syntax::parse(kiln::diag::SourceFile::new(
                    n,
                    t.as_str(),
                ))
                .ok()
            })
            .count()
    });
}

/// A generated monorepo (bench/gen-monorepo.py) of 2,000 targets: load and check every package, evaluate
/// every target, build the graph and print it, as `kiln graph //...` does.
#[divan::bench(sample_count = 10)]
fn monorepo_2000_targets(bencher: divan::Bencher) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("repo");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gen-monorepo.py");
    let ok = std::process::Command::new("python3")
        .arg(&script)
        .arg(&root)
        .arg("2000")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python3 runs")
        .success();
    assert!(ok, "gen-monorepo.py failed");
    let opts = kiln::frontend::LowerOptions {
        lenient: true,
        ..Default::default()
    };
    let params = Default::default();
    let all = vec!["//...".to_string()];
    bencher.counter(ItemsCount::new(2000usize)).bench(|| {
        let mut notes = Vec::new();
        let source = kiln::Source::Labels {
            root: &root,
            cwd: &root,
            labels: &all,
            params: &params,
            notes: &mut notes,
        };
        let compiled = kiln::compile(source, &opts).expect("compiles");
        let graph = kiln::plan(&compiled.program);
        graph.render_text().len()
    });
}
