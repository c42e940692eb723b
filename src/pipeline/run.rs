//! A validated build run in named steps: preflight, solve (here or on a REAPI server), the leak guard over
//! every image, commit, export and push, cache export.

use std::sync::Arc;

use super::BuildRequest;
use super::leak::leak_error;
use crate::diag::{Diagnostic, Result};
use crate::graph::Dag;
use crate::progress::{self, Event};
use crate::secret::SecretStore;
use crate::solve::shared_cache::Imported;
use crate::store::Store;

/// What the steps of one build share.
struct Build {
    graph: Arc<Dag>,
    store: Arc<Store>,
    secrets: Arc<SecretStore>,
    reporter: Arc<dyn progress::Reporter>,
    /// The records of `--cache-from`, when given.
    imported: Option<Arc<Imported>>,
    executor: Arc<crate::exec::Namespaces>,
    registry: crate::registry::Options,
    settings: crate::export::Settings,
}

/// Runs a validated build: see [`crate::build`].
pub(crate) fn execute(req: BuildRequest) -> Result<crate::solve::Summary> {
    let BuildRequest {
        graph,
        contexts,
        secrets,
        ssh,
        allow,
        outputs,
        pushes,
        tags,
        keep_named,
        cache_to,
        cache_from,
        registry,
        settings,
        no_cache,
        progress,
        store,
        remote,
    } = req;
    let graph = Arc::new(graph);
    let secrets = Arc::new(secrets);
    crate::solve::preflight(&graph, &secrets, &ssh, &allow)?;
    let store = Arc::new(Store::open(&store, crate::store::Access::Shared)?);
    // A build given secrets is a transaction: what its steps make is staged and kept only once every
    // leak check has passed (`store::Txn`).
    let given_secrets = secrets.ids().next().is_some();
    if given_secrets {
        store.begin()?;
    }
    let reporter: Arc<dyn progress::Reporter> = Arc::from(progress::reporter(progress));
    if let Some(note) = crate::exec::userns::note() {
        reporter.event(Event::Note(note.to_string()));
    }
    for warning in secrets.warnings() {
        reporter.event(Event::Note(format!("warning: {warning}")));
    }
    let imported = import_caches(&store, &cache_from, &registry, &*reporter);
    let b = Build {
        graph,
        store,
        secrets,
        reporter,
        imported,
        executor: Arc::new(crate::exec::Namespaces::new()),
        registry,
        settings,
    };
    let solve_opts = crate::solve::SolveOptions {
        jobs: b.settings.jobs,
        no_cache,
        contexts,
        epoch: b.settings.epoch,
        ssh,
        registry: b.registry.clone(),
        cache_from: b.imported.clone(),
        allow,
    };
    let remote = remote.as_ref().map(|r| {
        // A build given secrets only reads the remote: uploading would publish its steps' results
        // before its leak checks have passed (the inputs of a remote step included).
        let mode = match r.execute {
            _ if given_secrets => crate::remote::Mode::Read,
            true => crate::remote::Mode::Execute,
            false => crate::remote::Mode::Cache,
        };
        (r, mode)
    });
    let summary = b.solve(solve_opts, remote)?;
    let scanner = crate::solve::all_secrets(&b.secrets).inspect_err(|_| b.store.abort())?;
    b.guard(&summary, &scanner)?;
    b.store.commit()?;
    let names: Vec<&str> = tags.iter().map(String::as_str).collect();
    b.export(&summary, &outputs, &pushes, &names)?;
    if keep_named {
        b.keep_named(&summary, &names)?;
    } else if outputs.is_empty() && pushes.is_empty() {
        // As buildx warns: a result that went nowhere is easy to mistake for an image somewhere.
        b.reporter.event(Event::Note(
            "warning: no output specified: the result stays in kiln's build cache only; write it with `-o`, `--load` or `--push`, or keep it in the store with `-t NAME`".into(),
        ));
    }
    if let Some(imported) = &b.imported {
        imported.keep_hits(&b.store)?;
    }
    b.export_caches(&summary, &cache_to, &scanner)?;
    Ok(summary)
}

/// `--cache-from`: only manifests and configs are read here; layers come when a step or the export
/// needs them.
fn import_caches(
    store: &Store,
    cache_from: &[crate::solve::shared_cache::Source],
    registry: &crate::registry::Options,
    reporter: &dyn progress::Reporter,
) -> Option<Arc<Imported>> {
    (!cache_from.is_empty()).then(|| {
        let warn = |w: String| reporter.event(Event::Note(format!("warning: {w}")));
        let imported = Imported::load(store, cache_from, registry, &warn);
        reporter.event(Event::Note(format!(
            "imported {} cache records from {} caches",
            imported.len(),
            cache_from.len()
        )));
        Arc::new(imported)
    })
}

impl Build {
    /// Runs the graph's steps, here or on a REAPI server, until done, failed or interrupted.
    fn solve(
        &self,
        solve_opts: crate::solve::SolveOptions,
        remote: Option<(&super::Remote, crate::remote::Mode)>,
    ) -> Result<crate::solve::Summary> {
        let (graph, store, reporter) = (&self.graph, &self.store, &self.reporter);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Diagnostic::io("cannot start the scheduler", e))?;
        let started = std::time::Instant::now();
        type Solving<'a> = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<crate::solve::Summary>> + 'a>,
        >;
        let solve: Solving = match remote {
            Some((remote, mode)) => {
                let url = &remote.url;
                crate::remote::parse_url(url).map_err(|m| {
                    let message = format!("bad remote address `{url}`: {m}");
                    match &remote.at {
                        Some(at) => Diagnostic::at(&at.file, at.span, message),
                        None => Diagnostic::input(message),
                    }
                    .help("for example `--remote-executor grpc://127.0.0.1:50051`")
                })?;
                let instance = remote.instance.clone();
                let (graph, store, reporter, secrets) = (
                    graph.clone(),
                    store.clone(),
                    reporter.clone(),
                    self.secrets.clone(),
                );
                Box::pin(async move {
                    // The channel needs the runtime, so it is made inside it.
                    let server = crate::remote::Server::new(url, &instance)?;
                    server.check().await?;
                    let executor = Arc::new(crate::remote::Remote::new(
                        server,
                        mode,
                        crate::exec::Namespaces::new(),
                        crate::exec::userns::layer_ids(),
                    ));
                    crate::solve::solve(graph, store, executor, reporter, secrets, solve_opts).await
                })
            }
            None => Box::pin(crate::solve::solve(
                graph.clone(),
                store.clone(),
                self.executor.clone(),
                reporter.clone(),
                self.secrets.clone(),
                solve_opts,
            )),
        };
        let summary = runtime.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| Diagnostic::io("cannot watch for SIGTERM", e))?;
            tokio::select! {
                r = solve => r,
                _ = tokio::signal::ctrl_c() => Err(Diagnostic::build("interrupted")),
                _ = term.recv() => Err(Diagnostic::build("terminated")),
            }
        });
        // Dropping the runtime cancels every running step; the executor kills what they started.
        drop(runtime);
        // A failed build given secrets keeps nothing: its staged steps were never checked as a whole.
        let summary = summary.inspect_err(|_| store.abort())?;
        reporter.event(Event::Note(format!(
            "{} steps run, {} cached, in {:.1}s",
            summary.executed,
            summary.cached,
            started.elapsed().as_secs_f64()
        )));
        Ok(summary)
    }

    /// Every image is checked before anything is kept or written: the build's transaction is committed
    /// only when the steps' scans and every image's guard have passed.
    fn guard(
        &self,
        summary: &crate::solve::Summary,
        scanner: &crate::secret::LeakScanner,
    ) -> Result<()> {
        let (graph, store, executor) = (&*self.graph, &*self.store, &*self.executor);
        for (_, root) in &graph.roots {
            let Some(crate::solve::Output::Image { layers, config }) = summary.outputs.get(root)
            else {
                continue;
            };
            // The image's layers are in the store from here on, as after any build (the guard reads them);
            // other stages' layers that came from a cache stay where they are until a step needs them.
            if let Some(imported) = &self.imported {
                imported
                    .materialize(store, executor, layers)
                    .inspect_err(|_| store.abort())?;
            }
            match crate::export::guard(store, layers, config, scanner) {
                Ok(None) => {}
                Ok(Some(found)) => {
                    store.abort();
                    return Err(leak_error(graph, summary, *root, config, found));
                }
                Err(e) => {
                    store.abort();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Writes every image to each `-o` output and pushes it to each name.
    fn export(
        &self,
        summary: &crate::solve::Summary,
        outputs: &[crate::export::Output],
        pushes: &[String],
        names: &[&str],
    ) -> Result<()> {
        let (graph, store, reporter) = (&*self.graph, &*self.store, &*self.reporter);
        let (registry, settings) = (&self.registry, &self.settings);
        for (name, root) in &graph.roots {
            let Some(crate::solve::Output::Image { layers, config }) = summary.outputs.get(root)
            else {
                continue;
            };
            for out in outputs {
                let exported = crate::export::export(store, layers, config, out, names, settings)?;
                let dest = out.destination();
                let note = match &exported.manifest {
                    Some(m) if exported.unchanged => format!(
                        "{dest} already holds {name} ({} layers), manifest {m}: nothing written",
                        exported.layers
                    ),
                    None if exported.unchanged => {
                        format!("{dest} already holds the filesystem of {name}: nothing written")
                    }
                    Some(m) if !exported.loaded.is_empty() => format!(
                        "loaded {name} into {dest} ({} layers), manifest {m}: {}",
                        exported.layers,
                        exported.loaded.join("; ")
                    ),
                    Some(m) => format!(
                        "exported {name} to {dest} ({} layers), manifest {m}",
                        exported.layers
                    ),
                    None => format!("exported the filesystem of {name} to {dest}"),
                };
                reporter.event(Event::Note(note));
                // A tar on stdout (`dest=-`) is stdout's whole content.
                if let Some(m) = exported
                    .manifest
                    .filter(|_| !crate::export::is_stdout(std::path::Path::new(&dest)))
                {
                    progress::stdout(&format!("{m}\n"));
                }
            }
            if !pushes.is_empty() {
                push(
                    store, layers, config, pushes, registry, settings, reporter, name,
                )?;
            }
        }
        Ok(())
    }

    /// `-t` without an output: the image is kept in the store under every name, with buildx's warning
    /// that it went nowhere else.
    fn keep_named(&self, summary: &crate::solve::Summary, names: &[&str]) -> Result<()> {
        let (graph, store, reporter) = (&*self.graph, &*self.store, &*self.reporter);
        for (_, root) in &graph.roots {
            let Some(crate::solve::Output::Image { layers, config }) = summary.outputs.get(root)
            else {
                continue;
            };
            let image = crate::export::image(store, layers, config, &self.settings)?;
            for name in names {
                let record = crate::export::named(&image, name, self.settings.epoch);
                store.put_name(&record)?;
                reporter.event(Event::Note(format!(
                    "warning: no output specified (--load, --push or -o); the image is kept in kiln's store as {name}, manifest {}: see `kiln images`, `kiln image export {name} -o ...`",
                    record.manifest
                )));
            }
        }
        Ok(())
    }

    /// `--cache-to`: each destination gets the records of the build's steps.
    fn export_caches(
        &self,
        summary: &crate::solve::Summary,
        cache_to: &[(crate::export::cache::CacheTo, bool)],
        scanner: &crate::secret::LeakScanner,
    ) -> Result<()> {
        let (graph, store, reporter) = (&*self.graph, &*self.store, &*self.reporter);
        let (registry, settings) = (&self.registry, &self.settings);
        for (to, ignore_error) in cache_to {
            let written = crate::export::cache::export(
                store,
                graph,
                summary,
                self.imported.as_deref(),
                to,
                scanner,
                settings,
                registry,
            );
            match written {
                Ok(w) => {
                    let mut note = format!(
                        "exported cache to {} ({} records, {} layers), manifest {}",
                        to.dest, w.records, w.layers, w.manifest
                    );
                    if w.withheld > 0 {
                        note.push_str(&format!(
                            "; {} records withheld (a layer without the leak guard's verdict)",
                            w.withheld
                        ));
                    }
                    reporter.event(Event::Note(note));
                }
                // As buildx: a cache that cannot be written fails the build unless `ignore-error=true`.
                Err(e) if *ignore_error => reporter.event(Event::Note(format!(
                    "warning: cache not exported to {}: {}",
                    to.dest, e.message
                ))),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Pushes one built image to every name: written once as an OCI layout in the store, then uploaded.
#[allow(clippy::too_many_arguments)]
fn push(
    store: &crate::store::Store,
    layers: &[String],
    config: &serde_json::Value,
    names: &[String],
    registry: &crate::registry::Options,
    settings: &crate::export::Settings,
    reporter: &dyn progress::Reporter,
    stage: &str,
) -> Result<()> {
    let tmp = store.temp_dir("push-")?;
    let dir = tmp.path().join("layout");
    crate::export::export_for_push(store, layers, config, &dir, settings)?;
    for name in names {
        let pushed = crate::registry::push(&dir, Some("latest"), name, registry)?;
        let digest = pushed.digest;
        reporter.event(Event::Note(if pushed.unchanged {
            format!("{name} already holds {stage}, manifest {digest}: nothing pushed")
        } else {
            format!("pushed {stage} to {name}, manifest {digest}")
        }));
        progress::stdout(&format!("{digest}\n"));
    }
    Ok(())
}
