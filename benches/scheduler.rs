//! Scheduler overhead: a graph of 10,001 nodes (5,000 images, each a WORKDIR over `scratch` and its
//! config) solved once into a temporary store, then solved again with every node cached. The second
//! solve is what a no-op rebuild pays per node: cache-key computation, a store lookup, the bookkeeping
//! of the tokio scheduler. Needs root (the executor), as builds do.
//! Run with `cargo bench --bench scheduler`.

use std::sync::Arc;

use divan::counter::ItemsCount;
use kiln::graph::{Op, Program, Root};

const IMAGES: usize = 5_000;

fn main() {
    // The executor re-executes the running program as its helper, as it does `kiln` itself.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == kiln::exec::helper::HELPER_ARG)
    {
        kiln::exec::helper::main();
    }
    divan::main();
}

fn program() -> Program {
    let mut p = Program::default();
    let scratch = p.push(Op::Scratch, vec![], "scratch".into(), None);
    for i in 0..IMAGES {
        let dir = p.push(
            Op::Mkdir {
                path: format!("/d{i}"),
                user: None,
            },
            vec![scratch],
            format!("workdir /d{i}"),
            None,
        );
        let config = p.push(
            Op::Config(Box::default()),
            vec![dir],
            format!("image {i}"),
            None,
        );
        p.roots.push(Root {
            name: format!("t{i}"),
            node: config,
            ..Default::default()
        });
    }
    p
}

fn solve(
    runtime: &tokio::runtime::Runtime,
    graph: &Arc<kiln::graph::Dag>,
    store: &Arc<kiln::store::Store>,
) -> kiln::solve::Summary {
    let reporter: Arc<dyn kiln::progress::Reporter> =
        Arc::from(kiln::progress::reporter(kiln::progress::Mode::Quiet));
    runtime
        .block_on(kiln::solve::solve(
            graph.clone(),
            store.clone(),
            Arc::new(kiln::exec::Namespaces::new()),
            reporter,
            Arc::new(kiln::secret::SecretStore::default()),
            kiln::solve::SolveOptions {
                jobs: 4,
                no_cache: false,
                no_cache_for: Default::default(),
                sandbox: Default::default(),
                contexts: Default::default(),
                epoch: None,
                ssh: Default::default(),
                registry: Default::default(),
                cache_from: None,
                allow: Vec::new(),
                debug: None,
                unrunnable: Default::default(),
                committed: None,
            },
        ))
        .expect("the graph solves")
}

#[divan::bench(sample_count = 10)]
fn cached_graph_of_10k_nodes(bencher: divan::Bencher) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(
        kiln::store::Store::open(dir.path(), kiln::store::Access::Shared).expect("a store"),
    );
    let graph = Arc::new(kiln::graph::Dag::new(&program()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let first = solve(&runtime, &graph, &store);
    assert_eq!(first.executed, IMAGES);
    let nodes = graph.dag.node_count();
    bencher.counter(ItemsCount::new(nodes)).bench(|| {
        let again = solve(&runtime, &graph, &store);
        assert_eq!(again.executed, 0);
        again.cached
    });
}
