//! Dockerfile compile throughput: parse + lower + digest, on one core, in Dockerfiles per second.
//!
//! "Compile" is what `kiln graph` does with a Dockerfile before it prints: BuildKit's raw parse and the
//! typed AST (`kiln::compile` parses), lowering to a `Program` (ARG/ENV expansion, stages, mounts, image
//! configs), and the content-addressed petgraph DAG with every node's SHA-256 (`kiln::plan`). One thread
//! does all of it (compiling starts none; the bench checks), so the figures are one core's.
//!
//! `cargo bench --bench compile` first prints one plain line per corpus, the headline figures: over
//! `KILN_BENCH_SAMPLES` (default 200) passes over the whole corpus, after a warm-up, the median pass in
//! Dockerfiles per second of wall time and per second of the thread's own CPU time (which a loaded
//! machine distorts less), e.g.
//!
//! ```text
//! compile realworld: 131 Dockerfiles (339 KB), 200 passes: median 10,480 Dockerfiles/s (12.50 ms a pass), 10,710/s of CPU time; digests 0123456789ab
//! ```
//!
//! `digests` is a fingerprint of every node digest of the corpus: a change that makes compiling faster must
//! leave it as it was.
//!
//! Then divan's tables: each phase alone per corpus (`parse`, `parse_lower`, `parse_lower_digest`), and
//! a generated 2,000-target monorepo.
//!
//! Corpora: `realworld`, the shared set of real-world Dockerfiles (every `*.Dockerfile` in
//! `../shared/conformance/realworld/`, or in the directory `KILN_COMPILE_CORPUS` names), when present;
//! `differential`, this repository's `tests/differential/cases/*/Dockerfile` (small files, each about one
//! feature), always. The goal (issue 19) is ≥ 10,000 Dockerfiles/s on the real-world set.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use divan::counter::{BytesCount, ItemsCount};

fn main() {
    headline();
    divan::main();
}

/// The corpora present, by name: each a list of (file name, text).
fn corpora() -> Vec<(&'static str, Vec<(String, String)>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = std::env::var_os("KILN_COMPILE_CORPUS").map_or_else(
        || root.join("../shared/conformance/realworld"),
        PathBuf::from,
    );
    let mut out = Vec::new();
    if shared.is_dir() {
        out.push(("realworld", read_all(files_in(&shared))));
    }
    let cases = root.join("tests/differential/cases");
    let differential = std::fs::read_dir(&cases)
        .expect("tests/differential/cases")
        .flatten()
        .map(|e| e.path().join("Dockerfile"))
        .filter(|p| p.is_file());
    out.push(("differential", read_all(differential.collect())));
    out
}

fn corpus(name: &str) -> Vec<(String, String)> {
    corpora()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, files)| files)
        .unwrap_or_default()
}

/// Every `*.Dockerfile` (or `Dockerfile`) directly in `dir`.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && (p.extension().is_some_and(|e| e == "Dockerfile")
                            || p.ends_with("Dockerfile"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn read_all(mut paths: Vec<PathBuf>) -> Vec<(String, String)> {
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("utf-8");
            (p.display().to_string(), text)
        })
        .collect()
}

fn options() -> kiln::frontend::LowerOptions {
    kiln::frontend::LowerOptions {
        lenient: true,
        ..Default::default()
    }
}

fn source(name: &str, text: &str) -> kiln::Source<'static> {
    kiln::Source::Dockerfile(kiln::diag::SourceFile::new(name, text))
}

/// Parse + lower + digest of one Dockerfile: the number of nodes of its graph.
fn compile(name: &str, text: &str, opts: &kiln::frontend::LowerOptions) -> usize {
    let compiled = kiln::compile(source(name, text), opts).expect("compiles");
    kiln::plan(&compiled.program).dag.node_count()
}

fn pass(files: &[(String, String)], opts: &kiln::frontend::LowerOptions) -> usize {
    files
        .iter()
        .map(|(n, t)| compile(divan::black_box(n), divan::black_box(t), opts))
        .sum()
}

/// The calling thread's CPU time (user + system).
fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec() as u64) + Duration::from_micros(t.tv_usec() as u64)
    };
    micros(u.user_time()) + micros(u.system_time())
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One plain line per corpus: the median pass over the corpus, in Dockerfiles/s of wall and CPU time.
fn headline() {
    let samples: usize = std::env::var("KILN_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let opts = options();
    let before = threads();
    for (name, files) in corpora() {
        let warm_until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < warm_until {
            divan::black_box(pass(&files, &opts));
        }
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        for _ in 0..samples.max(1) {
            let (t, c) = (Instant::now(), thread_cpu());
            divan::black_box(pass(&files, &opts));
            wall.push(t.elapsed());
            cpu.push(thread_cpu().saturating_sub(c));
        }
        let (wall, cpu) = (median(wall), median(cpu));
        let print = fingerprint(&files, &opts);
        let rate = |d: Duration| files.len() as f64 / d.as_secs_f64().max(1e-9);
        let bytes: usize = files.iter().map(|(_, t)| t.len()).sum();
        println!(
            "compile {name}: {} Dockerfiles ({} KB), {samples} passes: median {} Dockerfiles/s ({:.2} ms a pass), {}/s of CPU time; digests {print}",
            files.len(),
            bytes / 1000,
            thousands(rate(wall)),
            wall.as_secs_f64() * 1e3,
            thousands(rate(cpu)),
        );
    }
    assert_eq!(threads(), before, "compiling started a thread");
}

/// The SHA-256 of every node digest of every file's graph, in order (the first 12 hex digits): equal
/// before and after a change to compiling means the change kept every digest of the corpus.
fn fingerprint(files: &[(String, String)], opts: &kiln::frontend::LowerOptions) -> String {
    let mut all = String::new();
    for (name, text) in files {
        let compiled = kiln::compile(source(name, text), opts).expect("compiles");
        let dag = kiln::plan(&compiled.program);
        for n in dag.topo_order() {
            all.push_str(dag.dag[n].digest.as_str());
        }
    }
    kiln::digest::Digest::of(all.as_bytes()).short().to_string()
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    match n {
        0..1000 => n.to_string(),
        _ => format!("{},{:03}", n / 1000, n % 1000),
    }
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

const CORPORA: [&str; 2] = ["realworld", "differential"];

/// Parsing alone: BuildKit's raw tree and the typed AST.
#[divan::bench(args = CORPORA)]
fn parse(bencher: divan::Bencher, corpus_name: &str) {
    let files = corpus(corpus_name);
    counted(bencher, &files).bench(|| {
        files
            .iter()
            .filter_map(|(n, t)| {
                let file = kiln::diag::SourceFile::new(divan::black_box(n), t.as_str());
                kiln::frontend::dockerfile::syntax::parse(file).ok()
            })
            .count()
    });
}

/// Parse and lower to a `Program`, no graph.
#[divan::bench(args = CORPORA)]
fn parse_lower(bencher: divan::Bencher, corpus_name: &str) {
    let files = corpus(corpus_name);
    let opts = options();
    counted(bencher, &files).bench(|| {
        files
            .iter()
            .map(|(n, t)| {
                let compiled = kiln::compile(source(divan::black_box(n), t), &opts);
                compiled.expect("compiles").program.nodes.len()
            })
            .sum::<usize>()
    });
}

/// The whole path the headline line measures: parse + lower + digest.
#[divan::bench(args = CORPORA)]
fn parse_lower_digest(bencher: divan::Bencher, corpus_name: &str) {
    let files = corpus(corpus_name);
    let opts = options();
    counted(bencher, &files).bench(|| pass(&files, &opts));
}

/// A generated monorepo (bench/gen-monorepo.py) of 2,000 targets: load and check every package, evaluate
/// every target, build the graph and print it, as `kiln graph //...` does; with no evaluation cache
/// (`cached: false`), and with one a previous run filled (every unit replayed).
#[divan::bench(sample_count = 10, args = [false, true])]
fn monorepo_2000_targets(bencher: divan::Bencher, cached: bool) {
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
    let cache = dir.path().join("evalcache");
    let run = || {
        let mut notes = Vec::new();
        let source = kiln::Source::Labels {
            root: &root,
            cwd: &root,
            labels: &all,
            params: &params,
            notes: &mut notes,
            eval_cache: cached.then(|| cache.clone()),
            trace: false,
        };
        let compiled = kiln::compile(source, &opts).expect("compiles");
        let graph = kiln::plan(&compiled.program);
        graph.render_text().len()
    };
    run();
    bencher.counter(ItemsCount::new(2000usize)).bench(run);
}
