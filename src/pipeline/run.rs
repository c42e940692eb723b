//! A validated build run in named steps: preflight, solve (here or on a REAPI server), the leak guard over
//! every image, commit, export and push, cache export.

use std::collections::HashMap;
use std::sync::Arc;

use petgraph::stable_graph::NodeIndex;

use super::BuildRequest;
use super::leak::leak_error;
use super::summary::{Recorder, Target};
use crate::diag::{Diagnostic, Result};
use crate::graph::Dag;
use crate::progress::{self, Event};
use crate::secret::SecretStore;
use crate::solve::shared_cache::Imported;
use crate::store::Store;

/// How many pushes of one build talk to registries at once.
const PUSHES_AT_ONCE: usize = 4;

/// Where a build's images go: its outputs, pushes and names.
struct Sent<'a> {
    outputs: &'a [crate::export::Output],
    pushes: &'a [String],
    /// `--push` without `-t`: to the tags the targets declare.
    push_declared: bool,
    tags: &'a [String],
}

/// The remote server and what the build does there. A build given secrets only reads it: uploading
/// would publish its steps' results before its leak checks have passed (the inputs of a remote step
/// included).
fn remote_mode(
    remote: Option<&super::Remote>,
    given_secrets: bool,
) -> Option<(&super::Remote, crate::remote::Mode)> {
    remote.map(|r| {
        let mode = match r.execute {
            _ if given_secrets => crate::remote::Mode::Read,
            true => crate::remote::Mode::Execute,
            false => crate::remote::Mode::Cache,
        };
        (r, mode)
    })
}

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
    /// `-q`: stdout holds the image ID only, so the digests each output prints stay off it.
    quiet: bool,
    /// `--sign`: the key each pushed image is signed with.
    sign: Option<crate::sign::SigningKey>,
}

/// Runs a validated build: see [`crate::build`].
pub(crate) fn execute(req: BuildRequest) -> Result<crate::solve::Summary> {
    let BuildRequest {
        graph,
        platforms,
        contexts,
        secrets,
        ssh,
        allow,
        outputs,
        pushes,
        push_declared,
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
        labels,
        report,
        no_cache_for,
        sandbox,
        attest,
        mut invocation,
        sign,
        debug,
        transcript,
    } = req;
    report.clear()?;
    invocation.started = super::attest::now();
    let graph = Arc::new(graph);
    let secrets = Arc::new(secrets);
    crate::solve::preflight(&graph, &secrets, &ssh, &allow)?;
    let unrunnable = crate::exec::binfmt::unrunnable(&graph);
    // A build given secrets is a transaction: what its steps make is staged and kept only once every
    // leak check has passed (`store::Txn`).
    // Values guarded like secrets (the `--sign` key) make one too.
    let given_secrets = secrets.ids().next().is_some() || secrets.guarded().next().is_some();
    if given_secrets {
        store.begin();
    }
    let recorder = Arc::new(Recorder::new(progress, transcript));
    let reporter: Arc<dyn progress::Reporter> = recorder.clone();
    if let Some(note) = crate::exec::userns::note() {
        reporter.event(Event::Note(note.to_string()));
    }
    for note in super::secret_notes(&secrets) {
        reporter.event(Event::Note(note));
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
        quiet: report.print_id,
        sign,
    };
    let early = keep_named.then(|| b.early(&tags)).flatten();
    let solve_opts = crate::solve::SolveOptions {
        jobs: b.settings.jobs,
        no_cache,
        no_cache_for,
        sandbox,
        contexts,
        epoch: b.settings.epoch,
        ssh,
        registry: b.registry.clone(),
        cache_from: b.imported.clone(),
        allow,
        debug,
        unrunnable,
        committed: early.as_ref().map(super::early::Early::hook),
    };
    let mut summary = b.solve(solve_opts, remote_mode(remote.as_ref(), given_secrets))?;
    super::report::label(&b.graph, &mut summary, &labels)?;
    let scanner = crate::solve::all_secrets(&b.secrets).inspect_err(|_| b.store.abort())?;
    b.guard(&summary, &scanner)?;
    b.store.commit()?;
    let attesting = super::attest::Attesting {
        request: attest,
        invocation: &invocation,
        epoch: b.settings.epoch,
        scanner: &scanner,
    };
    if !attest.is_empty() && outputs.is_empty() && pushes.is_empty() && !push_declared {
        b.reporter.event(Event::Note(
            "warning: attestations were asked for but there is no output to attach them to: write `-o type=oci` or push".into(),
        ));
    }
    let mut targets = HashMap::new();
    let attested = b.attest(&summary, &tags, &attesting)?;
    let mut index = None;
    if platforms.is_empty() {
        b.export(&summary, &outputs, &tags, &attested, &mut targets)?;
        b.push(&summary, &pushes, push_declared, &attested, &mut targets)?;
    } else {
        let sent = Sent {
            outputs: &outputs,
            pushes: &pushes,
            push_declared,
            tags: &tags,
        };
        index = Some(b.export_index(&summary, &platforms, &sent, attested, &mut targets)?);
    }
    if report.wanted() {
        let mut given: Vec<String> = tags.iter().chain(&pushes).cloned().collect();
        given.dedup();
        let described = match index {
            // buildx: a multi-platform build's image is its index (BuildKit gives no config digest).
            Some((digest, size)) => vec![(
                String::new(),
                super::report::Described::index(digest, size, given),
            )],
            None => super::report::describe(&b.graph, &b.store, &b.settings, &summary, &given)?,
        };
        report.write(&described)?;
    }
    if let Some(early) = &early {
        early.join();
    }
    let kept = keep_named && b.keep_named(&summary, &tags, &mut targets)?;
    if !kept && outputs.is_empty() && pushes.is_empty() && !push_declared {
        // As buildx warns: a result that went nowhere is easy to mistake for an image somewhere.
        b.reporter.event(Event::Note(
            "warning: no output specified: the result stays in kiln's build cache only; write it with `-o`, `--load` or `--push`, or keep it in the store with `-t NAME`".into(),
        ));
    }
    if let Some(imported) = &b.imported {
        imported.keep_hits(&b.store)?;
    }
    b.export_caches(&summary, &cache_to, &scanner)?;
    summary.settle()?;
    if b.graph.roots.len() > 1 {
        b.reporter.event(recorder.summary(&b.graph, &targets));
    }
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
            .worker_threads(crate::layer::cores(0))
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
                let options = crate::remote::Options {
                    timeout: remote.timeout,
                    accept_cached: remote.accept_cached && !solve_opts.no_cache,
                };
                let connect = remote.connect.clone();
                // The helper's headers are kept apart from `--remote-header`'s: a long build renews them.
                let helper = remote.credential_helper.clone();
                let (helped, expires) = match &helper {
                    Some(h) => super::helper_headers(h, url)?,
                    None => (Vec::new(), None),
                };
                let (graph, store, reporter, secrets) = (
                    graph.clone(),
                    store.clone(),
                    reporter.clone(),
                    self.secrets.clone(),
                );
                Box::pin(async move {
                    // The channel needs the runtime, so it is made inside it.
                    let server =
                        crate::remote::Server::new(url, &instance, &connect, "--remote-tls-")?;
                    server.renew_headers(helped);
                    server.check().await?;
                    if let Some(helper) = helper {
                        let renew =
                            super::renew_credentials(server.clone(), helper, url.clone(), expires);
                        tokio::spawn(renew);
                    }
                    let mut executor = crate::remote::Remote::new(
                        server,
                        mode,
                        options,
                        crate::exec::Namespaces::new(),
                        crate::exec::userns::layer_ids(),
                    );
                    if let Some(s) = &remote.secrets {
                        let files = crate::remote::secrets::TlsFiles {
                            ca: &s.ca,
                            cert: &s.cert,
                            key: &s.key,
                        };
                        let endpoint =
                            crate::remote::secrets::Endpoint::start(&s.listen, &files).await?;
                        executor = executor.with_secret_channel(endpoint);
                    }
                    let executor = Arc::new(executor);
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
        let signalled = super::interrupt::listen()?;
        let summary = runtime.block_on(async {
            tokio::select! {
                r = solve => r,
                Ok(signal) = signalled => Err(super::interrupt::interrupted(signal)),
            }
        });
        // Dropping the runtime cancels every running step; the executor kills what they started.
        drop(runtime);
        super::interrupt::stop();
        reporter.finish();
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
            if scanner.is_empty() {
                // Nothing to look for: the config need not even be made.
                continue;
            }
            match crate::export::guard(store, layers, config.get(), scanner) {
                Ok(None) => {}
                Ok(Some(found)) => {
                    store.abort();
                    return Err(leak_error(graph, summary, *root, config.get(), found));
                }
                Err(e) => {
                    store.abort();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// An image kept under a name has its own layers hashed as their steps commit (`early.rs`).
    fn early(&self, tags: &[String]) -> Option<Arc<super::early::Early>> {
        let names = |label: &str| {
            self.names(tags, label)
                .into_iter()
                .map(String::from)
                .collect()
        };
        super::early::Early::new(&self.graph, &self.store, &self.settings, names)
    }

    /// The names of the image of root `label`: the `-t` names, else the ones it declares.
    fn names<'a>(&'a self, tags: &'a [String], label: &str) -> Vec<&'a str> {
        let names = if tags.is_empty() {
            self.graph.tags.get(label).map_or(&[][..], Vec::as_slice)
        } else {
            tags
        };
        names.iter().map(String::as_str).collect()
    }

    /// Each image's attestations, made once for all its outputs and pushes (a provenance records the
    /// build's times, so making it twice would give two).
    fn attest(
        &self,
        summary: &crate::solve::Summary,
        tags: &[String],
        attesting: &super::attest::Attesting<'_>,
    ) -> Result<HashMap<NodeIndex, crate::export::Image>> {
        let (graph, store, reporter) = (&*self.graph, &*self.store, &*self.reporter);
        let mut attested = HashMap::new();
        if attesting.request.is_empty() {
            return Ok(attested);
        }
        for (name, root) in &graph.roots {
            let Some(crate::solve::Output::Image { layers, config }) = summary.outputs.get(root)
            else {
                continue;
            };
            let names = self.names(tags, name);
            let mut image = crate::export::image(store, layers, config.get(), &self.settings)?;
            let subject = super::attest::Subject {
                root: *root,
                name: names.first().copied().unwrap_or(name),
                layers,
                config: config.get(),
            };
            attesting.attach(store, graph, summary, &subject, &mut image, reporter)?;
            attested.insert(*root, image);
        }
        Ok(attested)
    }

    /// Writes every image to each `-o` output (one per target where `dest` says `{target}`), with its
    /// attestations where the output can carry them.
    fn export(
        &self,
        summary: &crate::solve::Summary,
        outputs: &[crate::export::Output],
        tags: &[String],
        attested: &HashMap<NodeIndex, crate::export::Image>,
        targets: &mut HashMap<NodeIndex, Target>,
    ) -> Result<()> {
        let (graph, reporter) = (&*self.graph, &*self.reporter);
        for (name, root) in &graph.roots {
            let Some(crate::solve::Output::Image { layers, config }) = summary.outputs.get(root)
            else {
                continue;
            };
            let names = self.names(tags, name);
            for out in outputs {
                let out = &out.for_target(name);
                let exported =
                    self.export_one(attested.get(root), out, layers, config.get(), &names)?;
                report_export(reporter, name, out, &exported, self.quiet);
                let target = targets.entry(*root).or_default();
                target.written.push(out.destination());
                // A docker-archive's manifest (its layers as tars) is nowhere a user can read it
                // back; an OCI layout's is the digest to report.
                let oci = matches!(out, crate::export::Output::Oci { .. });
                if let Some(m) = exported.manifest.filter(|_| oci || target.digest.is_none()) {
                    target.digest = Some(m.to_string());
                }
            }
        }
        Ok(())
    }

    /// Writes one image to one output: the attested image where there is one (an OCI layout carries
    /// its attestations; a docker archive or daemon cannot, which a warning says).
    fn export_one(
        &self,
        attested: Option<&crate::export::Image>,
        out: &crate::export::Output,
        layers: &[String],
        config: &serde_json::Value,
        names: &[&str],
    ) -> Result<crate::export::Exported> {
        let (store, settings) = (&*self.store, &self.settings);
        let Some(image) = attested else {
            return crate::export::export(store, layers, config, out, names, settings);
        };
        if !matches!(out, crate::export::Output::Oci { .. }) {
            self.reporter.event(Event::Note(format!(
                "warning: attestations are not carried by {} ({}): write `-o type=oci` or push to keep them",
                out.destination(),
                out.kind()
            )));
        }
        match out {
            crate::export::Output::Oci { .. }
            | crate::export::Output::Docker { .. }
            | crate::export::Output::Load { .. } => {
                crate::export::export_image(store, image, out, names, settings.epoch)
            }
            _ => crate::export::export(store, layers, config, out, names, settings),
        }
    }

    /// Several platforms: their images (the graph's roots, in the order of `platforms`), with their
    /// attestations, as one image index, written to each output and pushed to each name (with
    /// `push_declared`, to the tags the one target declares), signed with `--sign`. The index's digest
    /// and size; each platform's row of the build summary gets its manifest and the index's destinations.
    fn export_index(
        &self,
        summary: &crate::solve::Summary,
        platforms: &[crate::platform::Platform],
        sent: &Sent<'_>,
        mut attested: HashMap<NodeIndex, crate::export::Image>,
        targets: &mut HashMap<NodeIndex, Target>,
    ) -> Result<(crate::digest::Digest, usize)> {
        let (graph, store, reporter) = (&*self.graph, &*self.store, &*self.reporter);
        let mut images = Vec::new();
        for ((_, root), platform) in graph.roots.iter().zip(platforms) {
            let Some(crate::solve::Output::Image { layers, config }) = summary.outputs.get(root)
            else {
                return Err(Diagnostic::input(
                    "only images can be built for several platforms",
                ));
            };
            let image = match attested.remove(root) {
                Some(image) => image,
                None => crate::export::image(store, layers, config.get(), &self.settings)?,
            };
            targets.entry(*root).or_default().digest =
                Some(crate::digest::Digest::of(&image.manifest).to_string());
            images.push((image, platform.clone()));
        }
        let roots: Vec<NodeIndex> = graph.roots.iter().map(|(_, r)| *r).collect();
        // Each platform's root declares the one target's tags.
        let declared: Vec<String> = graph
            .tags
            .values()
            .flatten()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let names: Vec<&str> = if sent.tags.is_empty() {
            &declared
        } else {
            sent.tags
        }
        .iter()
        .map(String::as_str)
        .collect();
        for out in sent.outputs {
            let digest = crate::export::index::export(store, &images, out, &names)?;
            reporter.event(Event::Note(format!(
                "exported an index of {} platforms to {}, index {digest}",
                images.len(),
                out.destination()
            )));
            for root in &roots {
                targets
                    .entry(*root)
                    .or_default()
                    .written
                    .push(out.destination());
            }
            if !self.quiet {
                progress::stdout(&format!("{digest}\n"));
            }
        }
        let mut refs = sent.pushes.to_vec();
        if sent.push_declared {
            refs.extend(declared.iter().cloned());
        }
        if !refs.is_empty() {
            let (digest, notes) = crate::export::index::push(
                store,
                &images,
                &refs,
                &self.registry,
                self.sign.as_ref(),
            )?;
            for name in &refs {
                reporter.event(Event::Note(format!(
                    "pushed an index of {} platforms to {name}, index {digest}",
                    images.len()
                )));
            }
            notes
                .into_iter()
                .for_each(|n| reporter.event(Event::Note(n)));
            for root in &roots {
                targets
                    .entry(*root)
                    .or_default()
                    .pushed
                    .extend(refs.clone());
            }
            if !self.quiet {
                progress::stdout(&format!("{digest}\n"));
            }
        }
        let index = crate::export::index::index(&images);
        Ok((crate::digest::Digest::of(&index), index.len()))
    }

    /// Pushes every image to each name in `pushes` and, with `push_declared` (`--push` without `-t`),
    /// to the tags its target declares; a target that declares none is built, not pushed, with a
    /// warning. Each image is laid out once in the store, then all are uploaded together, a few at a
    /// time, each blob sent once (`registry::push_all`).
    fn push(
        &self,
        summary: &crate::solve::Summary,
        pushes: &[String],
        push_declared: bool,
        attested: &HashMap<NodeIndex, crate::export::Image>,
        targets: &mut HashMap<NodeIndex, Target>,
    ) -> Result<()> {
        if pushes.is_empty() && !push_declared {
            return Ok(());
        }
        let (graph, store, reporter) = (&*self.graph, &*self.store, &*self.reporter);
        let tmp = store.temp_dir("push-")?;
        let mut jobs = Vec::new();
        let mut whose = Vec::new();
        for (i, (label, root)) in graph.roots.iter().enumerate() {
            let Some(crate::solve::Output::Image { layers, config }) = summary.outputs.get(root)
            else {
                continue;
            };
            let mut refs = pushes.to_vec();
            if push_declared {
                match graph.tags.get(label) {
                    Some(declared) => refs.extend(declared.iter().cloned()),
                    None => {
                        reporter.event(Event::Note(format!(
                            "warning: {label} declares no tags (`tagged [...]`): built, not pushed"
                        )));
                        targets.entry(*root).or_default().skipped =
                            Some("not pushed: no tags declared".into());
                    }
                }
            }
            if refs.is_empty() {
                continue;
            }
            let dir = tmp.path().join(i.to_string());
            match attested.get(root) {
                Some(image) => {
                    crate::export::push_layout(store, image, &dir)?;
                    let subject = crate::digest::Digest::of(&image.manifest);
                    crate::export::attach::add_to_layout(&dir, &subject, &image.referrers)?;
                }
                None => crate::export::export_for_push(
                    store,
                    layers,
                    config.get(),
                    &dir,
                    &self.settings,
                )?,
            }
            for r in refs {
                jobs.push((dir.clone(), r));
                whose.push((*root, label));
            }
        }
        if jobs.is_empty() {
            return Ok(());
        }
        let registry = crate::registry::Options {
            sources: Some(crate::registry::sources_dir(store.root())),
            ..self.registry.clone()
        };
        let pushed = crate::registry::push_all(&jobs, &registry, PUSHES_AT_ONCE)?;
        for (((root, label), (dir, name)), p) in whose.into_iter().zip(&jobs).zip(pushed) {
            let digest = p.digest;
            reporter.event(Event::Note(if p.unchanged {
                format!("{name} already holds {label}, manifest {digest}: nothing pushed")
            } else {
                let blobs = match (p.uploaded, p.mounted) {
                    (0, 0) => "every blob was there already".to_string(),
                    (u, m) => format!("{u} blobs uploaded, {m} mounted from another repository"),
                };
                format!("pushed {label} to {name}, manifest {digest} ({blobs})")
            }));
            if !self.quiet {
                progress::stdout(&format!("{digest}\n"));
            }
            let mut signed = vec![digest.clone()];
            if let Some(image) = attested.get(&root) {
                signed.extend(push_referrers(dir, image, name, &self.registry, reporter)?);
            }
            // `--sign`: the image and each of its attestations, once all are in the registry.
            if let Some(key) = &self.sign {
                for d in &signed {
                    for note in crate::sign::sign_pushed(key, dir, name, d, &self.registry)? {
                        reporter.event(Event::Note(note));
                    }
                }
            }
            let target = targets.entry(root).or_default();
            target.pushed.push(name.clone());
            target.digest = Some(digest);
        }
        Ok(())
    }

    /// No output and no push: each image is kept in the store under its names (`-t`, or the tags its
    /// target declares), with buildx's warning that it went nowhere else. Whether any was kept.
    fn keep_named(
        &self,
        summary: &crate::solve::Summary,
        tags: &[String],
        targets: &mut HashMap<NodeIndex, Target>,
    ) -> Result<bool> {
        let (graph, store, reporter) = (&*self.graph, &*self.store, &*self.reporter);
        let mut kept = false;
        for (label, root) in &graph.roots {
            let Some(crate::solve::Output::Image { layers, config }) = summary.outputs.get(root)
            else {
                continue;
            };
            let names = self.names(tags, label);
            if names.is_empty() {
                continue;
            }
            // A layer rebuilt for the same name is hashed from where it first differs.
            let earlier = store
                .named(names[0])
                .map(|n| n.snapshots)
                .unwrap_or_default();
            let made =
                crate::export::kept::keep(store, layers, config.get(), &self.settings, &earlier)?;
            let image = &made.image;
            for name in names {
                let mut record = crate::export::named(image, name, self.settings.epoch);
                record.leaves = made.leaves.clone();
                record.snapshots = made.snapshots.clone();
                store.put_name(&record)?;
                reporter.event(Event::Note(format!(
                    "warning: no output specified (--load, --push or -o); the image is kept in kiln's store as {name}, image ID {}: see `kiln images`, `kiln image export {name} -o ...`",
                    image.config_digest
                )));
                let target = targets.entry(*root).or_default();
                target.kept.push(name.to_string());
                target.digest = Some(record.manifest.to_string());
                kept = true;
            }
        }
        Ok(kept)
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
                    if w.mounts > 0 {
                        note.push_str(&format!("; {} cache mounts", w.mounts));
                    }
                    for warning in &w.mount_warnings {
                        reporter.event(Event::Note(format!("warning: {warning}")));
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

/// What an output holds now, as a note (and its manifest digest on stdout, unless `-q` keeps stdout
/// for the image ID).
fn report_export(
    reporter: &dyn progress::Reporter,
    name: &str,
    out: &crate::export::Output,
    exported: &crate::export::Exported,
    quiet: bool,
) {
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
        .as_ref()
        .filter(|_| !quiet && !crate::export::is_stdout(std::path::Path::new(&dest)))
    {
        progress::stdout(&format!("{m}\n"));
    }
}

/// Pushes the attestations of an image just pushed to `name`, by digest, each as a referrer of it.
/// Their manifest digests.
fn push_referrers(
    dir: &std::path::Path,
    image: &crate::export::Image,
    name: &str,
    registry: &crate::registry::Options,
    reporter: &dyn progress::Reporter,
) -> Result<Vec<String>> {
    let pushed = crate::export::attach::push(dir, &image.referrers, name, registry)?;
    Ok(pushed
        .into_iter()
        .map(|(digest, note)| {
            reporter.event(Event::Note(note));
            digest
        })
        .collect())
}
