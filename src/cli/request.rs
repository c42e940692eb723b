//! `kiln build`'s flags made into a [`BuildRequest`]: everything it validates before it runs a step, so
//! that running the build ([`crate::build`]) starts from values, not flag text.

use std::collections::BTreeMap;

use super::args::{BuildCmd, CompressionArg, OnError, ProgressMode};
use super::command_line::CommandLine;
use super::compile::{Compiled, Mode, compile};
use super::flags::{parse_allow, parse_cache_from, parse_cache_to, parse_secret, parse_ssh};
use super::outputs::{self, Layers, Target};
use crate::diag::{Diagnostic, Located, Result, Span};
use crate::export::Output;
use crate::pipeline::{BuildRequest, Remote};

use crate::progress;
use crate::secret::SecretStore;

/// The flags that need nothing but themselves, parsed in the order their errors are reported.
struct Flags {
    secrets: SecretStore,
    outputs: Vec<crate::export::Output>,
    pushes: Vec<String>,
    /// What the `-o` values say about layer compression (over `--compression`).
    layers: Layers,
    cache_to: Vec<(crate::export::cache::CacheTo, bool)>,
    cache_from: Vec<crate::solve::shared_cache::Source>,
    epoch: Option<i64>,
    labels: BTreeMap<String, String>,
    attest: super::attest::Attest,
    sign: Option<crate::sign::SigningKey>,
}

/// `kiln build`: the command line made into a request, then run.
pub(super) fn run(cmd: BuildCmd) -> Result<()> {
    if cmd.watch {
        return super::watch::run(&cmd);
    }
    let cl = CommandLine::capture();
    let call = super::call::parse(&cl, cmd.buildx.call.as_deref(), cmd.buildx.check)?;
    if call.method != super::call::Method::Build {
        return super::call::run(&cmd, &cl, &call);
    }
    let memo = super::memo::path(&cmd);
    if let Some(path) = &memo
        && super::memo::replay(path, &cmd, &cl, progress_mode(cmd.progress))
    {
        return Ok(());
    }
    // Dropped on any error: the recording stops with no memo.
    let recording = memo.map(super::memo::Recording::start);
    let mut request = BuildRequest::from_command(&cmd, &cl)?;
    let recording = recording.and_then(|r| r.keep_for(&mut request));
    let summary = crate::build(request)?;
    if let Some(r) = recording {
        r.finish(&summary);
    }
    Ok(())
}

impl BuildRequest {
    /// Validates `kiln build`'s command line and compiles what it names. Enters the user namespace on
    /// the way (an unprivileged kiln must, before any thread starts).
    pub(super) fn from_command(cmd: &BuildCmd, cl: &CommandLine) -> Result<BuildRequest> {
        let flags = Flags::parse(cmd, cl)?;
        let debug = debug_shell(cmd, cl)?;
        let remote = remote(cmd, cl)?;
        let mut registry =
            super::flags::registry_options(cl, &cmd.insecure_registries, &cmd.mirrors)?;
        // A build's pulls unpack each layer as it arrives, as the executor would have later.
        registry.unpack = Some(crate::exec::userns::layer_ids);
        // Before any thread starts: an unprivileged kiln becomes root of its own user namespace here.
        crate::exec::userns::enter()?;
        let (manifest_annotations, descriptor_annotations) =
            super::buildx::parse_annotations(cl, &cmd.buildx.annotations)?;
        let settings = crate::export::Settings {
            epoch: flags.epoch,
            codec: flags.layers.codec.unwrap_or(match cmd.compression {
                CompressionArg::Gzip => crate::layer::Codec::Gzip,
                CompressionArg::Zstd => crate::layer::Codec::Zstd,
            }),
            jobs: cmd.jobs.unwrap_or_else(super::args::default_jobs),
            level: flags.layers.level,
            force: flags.layers.force.unwrap_or(false),
            manifest_annotations,
            descriptor_annotations,
            unwritten: false,
        };
        let store_root = cmd
            .store
            .clone()
            .unwrap_or_else(crate::store::Store::default_root);
        let store = crate::load::open_store(&store_root)?;
        let mut pulls = crate::load::Pulls::new(store.clone(), registry.clone());
        if cmd.locked || cmd.hermetic {
            let flag = if cmd.hermetic {
                "--hermetic"
            } else {
                "--locked"
            };
            pulls = pulls.locked(super::lock::read_for_build(&cmd.compile, cl, flag)?);
        }
        let compiled = compile_checked(cmd, cl, &pulls, &store_root)?;
        let mut ssh = BTreeMap::new();
        for s in &cmd.ssh {
            let (id, socket) = parse_ssh(cl, s)?;
            ssh.insert(id, socket);
        }
        let allow = parse_allow(cl, &cmd.allow)?;
        if cmd.hermetic {
            hermetic_network(cmd, cl)?;
        }
        let sandbox = super::step_flags::parse(
            cl,
            &super::step_flags::StepFlags {
                network: if cmd.hermetic {
                    Some("none")
                } else {
                    cmd.buildx.network.as_deref()
                },
                add_hosts: &cmd.buildx.add_hosts,
                shm_size: cmd.buildx.shm_size.as_deref(),
                ulimits: &cmd.buildx.ulimits,
            },
            &allow,
        )?;
        // A base image that could not be pulled comes after every mistake in the input: those need no
        // network to find, nor to fix.
        if let Some(failure) = pulls.failure(&compiled.graph) {
            return Err(failure);
        }
        // Several platforms make one image, their index, whose digest is its ID.
        if compiled.platforms.is_empty() {
            super::buildx::check_iidfile(cl, &cmd.buildx, &compiled.graph.roots)?;
        }
        let no_cache_for = super::buildx::no_cache_filter(
            cl,
            &cmd.buildx.no_cache_filter,
            cmd.no_cache,
            &compiled.graph,
        )?;
        let keep_named = flags.outputs.is_empty() && flags.pushes.is_empty() && !cmd.push;
        let invocation = invocation(cmd, &compiled, flags.attest.builder_id.clone());
        let named = !cmd.tags.is_empty() || !compiled.graph.tags.is_empty();
        if keep_named && named && !compiled.platforms.is_empty() {
            return Err(Diagnostic::input(format!(
                "{} platforms are built, and kiln's store keeps one image under a name",
                compiled.platforms.len()
            ))
            .help(
                "write the index with `-o type=oci,dest=PATH` or `--push`, or build one --platform",
            ));
        }
        Ok(BuildRequest {
            platforms: compiled.platforms,
            graph: compiled.graph,
            contexts: compiled.contexts,
            secrets: flags.secrets,
            ssh,
            allow,
            outputs: flags.outputs,
            pushes: flags.pushes,
            push_declared: cmd.push && cmd.tags.is_empty(),
            tags: cmd.tags.clone(),
            keep_named,
            cache_to: flags.cache_to,
            cache_from: flags.cache_from,
            registry,
            settings,
            no_cache: cmd.no_cache,
            progress: match cmd.buildx.quiet {
                true => progress::Mode::Quiet,
                false => progress_mode(cmd.progress),
            },
            store,
            remote: remote_secrets(cmd, cl, remote)?,
            labels: flags.labels,
            no_cache_for,
            sandbox,
            report: crate::pipeline::Report {
                iidfile: cmd.buildx.iidfile.clone(),
                metadata_file: cmd.buildx.metadata_file.clone(),
                print_id: cmd.buildx.quiet,
            },
            attest: flags.attest.request,
            invocation,
            sign: flags.sign,
            debug,
            transcript: None,
        })
    }
}

/// What the provenance says the build was asked to do. Build args whose name or value looks like a
/// secret (`kiln check`'s rules) are left out: the provenance travels with the image.
fn invocation(
    cmd: &BuildCmd,
    compiled: &Compiled,
    builder_id: Option<String>,
) -> crate::attest::provenance::Invocation {
    use crate::frontend::dockerfile::lints::{secrets, words};
    let args = cmd
        .compile
        .build_args
        .iter()
        .filter_map(|a| a.split_once('='))
        .filter(|(k, v)| !words::secret_name(k) && secrets::value_message("ARG", k, v).is_none())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    crate::attest::provenance::Invocation {
        frontend: compiled.source.0.to_string(),
        source: compiled.source.1.clone(),
        target: cmd.compile.target.clone(),
        args,
        platform: "linux/amd64".to_string(),
        builder_id: builder_id
            .unwrap_or_else(|| format!("urn:kiln:builder:kiln@{}", env!("CARGO_PKG_VERSION"))),
        started: 0,
        finished: 0,
    }
}

impl Flags {
    fn parse(cmd: &BuildCmd, cl: &CommandLine) -> Result<Flags> {
        check_quiet(cl, &cmd.buildx, cmd.progress)?;
        let mut secrets = SecretStore::default();
        for s in &cmd.secrets {
            let (id, source) = parse_secret(cl, s)?;
            secrets.insert(id, source);
        }
        let (outputs, pushes, layers) = outputs_and_pushes(cmd, cl)?;
        let cache_to = cmd
            .cache_to
            .iter()
            .map(|v| parse_cache_to(cl, v))
            .collect::<Result<Vec<_>>>()?;
        let cache_from = cmd
            .cache_from
            .iter()
            .map(|v| parse_cache_from(cl, v))
            .collect::<Result<Vec<_>>>()?;
        // A name goes into an OCI index, a docker-archive, a daemon or the store: it must be one.
        for p in pushes.iter().chain(&cmd.tags) {
            crate::registry::ImageName::parse(p).map_err(|d| {
                cl.error(p, Span::default(), d.message)
                    .help(d.help.unwrap_or_default())
            })?;
        }
        let attest = super::attest::parse(
            cl,
            &cmd.attest,
            cmd.sbom.as_deref(),
            cmd.provenance.as_deref(),
        )?;
        let sign =
            super::sign::parse_sign(cl, cmd.sign.as_deref(), !pushes.is_empty() || cmd.push)?;
        // The key must stay out of the images and the logs as a secret's value does.
        if let Some(key) = &sign {
            secrets.guard("--sign key".to_string(), key.guard_value());
        }
        Ok(Flags {
            secrets,
            outputs,
            pushes,
            layers,
            cache_to,
            cache_from,
            // A hermetic image must not carry the time it was built.
            epoch: source_date_epoch()?.or(cmd.hermetic.then_some(0)),
            labels: super::buildx::parse_labels(cl, &cmd.buildx.labels)?,
            attest,
            sign,
        })
    }
}

/// `-o` values: registry outputs are pushes, not files, so they are collected apart from the others;
/// `--push` adds the `-t` names. One build makes one set of layer blobs, so outputs that ask for
/// different compressions are refused rather than one of them quietly losing.
fn outputs_and_pushes(
    cmd: &BuildCmd,
    cl: &CommandLine,
) -> Result<(Vec<crate::export::Output>, Vec<String>, Layers)> {
    let mut outputs = Vec::new();
    let mut pushes = Vec::new();
    let mut layers: Option<(Layers, &str)> = None;
    for o in &cmd.outputs {
        let parsed = outputs::parse(cl, o, &cmd.tags)?;
        if parsed.layers != Layers::default() {
            match layers {
                Some((l, first)) if l != parsed.layers => {
                    return Err(cl
                        .error(o, Span::default(), "this output compresses its layers otherwise than another")
                        .help(format!("kiln makes one set of layers per build; give this output the compression keys of `-o {first}`")));
                }
                _ => layers = Some((parsed.layers, o)),
            }
        }
        match parsed.target {
            Target::Push(names) => pushes.extend(names),
            Target::File(out) => {
                if to_stdout(&out) && outputs.iter().any(to_stdout) {
                    return Err(cl
                        .error(o, Span::default(), "a second output to stdout (`dest=-`)")
                        .help("stdout holds one tar: send the other outputs to files"));
                }
                // buildx: `--load` is `-o type=docker`, so it goes with docker outputs only.
                if cmd.load && !matches!(out, Output::Docker { .. } | Output::Load { .. }) {
                    return Err(cl
                        .error(o, Span::default(), "--load and this output can't be used together")
                        .help("--load is shorthand for `-o type=docker`: drop one of them, or write the image with `-o type=docker,dest=FILE` beside --load"));
                }
                outputs.push(out);
            }
            Target::Store => {}
        }
    }
    if cmd.load && !outputs.iter().any(|o| matches!(o, Output::Load { .. })) {
        outputs.push(Output::Load {
            endpoint: crate::export::daemon::endpoint()?,
        });
    }
    for o in &outputs {
        if let Output::Load { endpoint } = o {
            crate::export::daemon::check(endpoint)?;
        }
    }
    let layers = layers.map(|(l, _)| l).unwrap_or_default();
    // `--push` without `-t` pushes to the tags the targets declare, checked once they are compiled.
    if cmd.push {
        pushes.extend(cmd.tags.iter().cloned());
    }
    pushes.sort();
    pushes.dedup();
    Ok((outputs, pushes, layers))
}

fn to_stdout(out: &Output) -> bool {
    match out {
        Output::Oci { dest, .. }
        | Output::Docker { dest, .. }
        | Output::Local { dest }
        | Output::Tar { dest } => crate::export::is_stdout(dest),
        Output::Load { .. } => false,
    }
}

/// `--hermetic` runs every step without network: a flag that asks for one contradicts it.
fn hermetic_network(cmd: &BuildCmd, cl: &CommandLine) -> Result<()> {
    if let Some(n) = cmd.buildx.network.as_deref().filter(|n| *n != "none") {
        return Err(cl
            .error(n, Span::default(), format!("--hermetic, but --network {n}"))
            .help("--hermetic runs every step with network none; drop --network"));
    }
    if let Some(a) = cmd.allow.iter().find(|a| a.contains("network.host")) {
        return Err(cl
            .error(a, Span::default(), "--hermetic, but --allow network.host")
            .help("--hermetic runs every step with network none, `RUN --network=host` included; drop the entitlement"));
    }
    Ok(())
}

fn source_date_epoch() -> Result<Option<i64>> {
    Ok(match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => Some(v.parse::<i64>().map_err(|_| {
            Diagnostic::input(format!(
                "SOURCE_DATE_EPOCH=`{v}` is not a number of seconds"
            ))
        })?),
        _ => None,
    })
}

/// Compiles strictly; refuses what the secret checks find, and destinations the images cannot go to.
fn compile_checked(
    cmd: &BuildCmd,
    cl: &CommandLine,
    pulls: &crate::load::Pulls,
    store: &std::path::Path,
) -> Result<Compiled> {
    let stdin = super::stdin::stdin_context(&cmd.compile, cl, store)?;
    let args = stdin.as_ref().unwrap_or(&cmd.compile);
    let compiled = compile(args, cl, &Mode::Build(Box::new(pulls.clone())))?;
    // What `kiln check` knows, the build enforces, before any step runs (`# check=skip=` opts out).
    progress::stderr(&compiled.secret_findings.render_for_build());
    if let Some(refusal) = compiled.secret_findings.refusal() {
        return Err(refusal);
    }
    // Several platforms make one image index of their roots.
    check_destinations(cmd, cl, &compiled.graph, !compiled.platforms.is_empty())?;
    Ok(compiled)
}

/// Where the images go must be able to hold them: `--push` without `-t` needs declared tags; with
/// several targets, a `-t` name or a registry output (one image each) is refused, and a file output
/// must put `{target}` in its `dest` to get one per target. A destination that held only the last
/// image would lose the others without a word.
/// `one_index`: the roots are one image per platform, made one index (`--platform a,b`).
fn check_destinations(
    cmd: &BuildCmd,
    cl: &CommandLine,
    graph: &crate::graph::Dag,
    one_index: bool,
) -> Result<()> {
    let labels: Vec<&str> = graph.roots.iter().map(|(n, _)| n.as_str()).collect();
    if cmd.push && cmd.tags.is_empty() && graph.tags.is_empty() {
        return Err(Diagnostic::input(format!(
            "--push needs a name to push to, and no target declares one ({})",
            labels.join(", ")
        ))
        .help("name the image: `--push -t HOST/NAME:TAG`, or declare a .build target's names: `target app: Image = ... tagged [\"HOST/NAME:TAG\"]`"));
    }
    if labels.len() < 2 || one_index {
        return Ok(());
    }
    let several = format!(
        "{} targets are selected ({})",
        labels.len(),
        labels.join(", ")
    );
    let declare = "declare each target's names in .build (`target app: Image = ... tagged [\"HOST/NAME:TAG\"]`) and use --push, or select one target";
    if let Some(tag) = cmd.tags.first() {
        return Err(cl
            .error(
                tag,
                Span::default(),
                format!("{several}, but a -t name takes one image"),
            )
            .help(declare));
    }
    for o in &cmd.outputs {
        let per_target = match outputs::parse(cl, o, &cmd.tags)?.target {
            Target::Push(_) => {
                return Err(cl
                    .error(
                        o,
                        Span::default(),
                        format!("{several}, but a registry output takes one image"),
                    )
                    .help(declare));
            }
            Target::File(out) => matches!(out, Output::Load { .. }) || out.per_target(),
            Target::Store => true,
        };
        if !per_target {
            return Err(cl
                .error(
                    o,
                    Span::default(),
                    format!("{several}, but this output takes one image"),
                )
                .help(format!(
                    "put `{}` in dest to write one per target: `-o type=oci,dest=out/{}`",
                    crate::export::TARGET_PLACEHOLDER,
                    crate::export::TARGET_PLACEHOLDER
                )));
        }
    }
    Ok(())
}

fn progress_mode(mode: ProgressMode) -> progress::Mode {
    match mode {
        ProgressMode::Auto => progress::Mode::Auto,
        ProgressMode::Tty => progress::Mode::Tty,
        ProgressMode::Plain => progress::Mode::Plain,
        ProgressMode::Json => progress::Mode::Json,
        ProgressMode::Quiet => progress::Mode::Quiet,
    }
}

/// `--on-error=shell` and `--debug-secrets`: the shell needs this terminal, and the machine that ran the
/// step.
fn debug_shell(cmd: &BuildCmd, cl: &CommandLine) -> Result<Option<crate::solve::DebugShell>> {
    use std::io::IsTerminal as _;
    if cmd.on_error == OnError::Fail {
        if cmd.debug_secrets {
            return Err(cl
                .error(
                    "--debug-secrets",
                    Span::default(),
                    "--debug-secrets without a debug shell",
                )
                .help(
                    "it mounts secrets in the shell `--on-error=shell` opens: add that, or drop it",
                ));
        }
        return Ok(None);
    }
    let flag = |why: &str, hint: &str| {
        cl.error("shell", Span::default(), why)
            .help(hint.to_string())
    };
    if cmd.remote_executor.is_some() {
        return Err(flag(
            "a debug shell opens where the step ran: not with --remote-executor",
            "debug the failing step with a local build: drop --remote-executor (--remote-cache still serves hits)",
        ));
    }
    if !std::io::stdin().is_terminal() {
        return Err(flag(
            "--on-error=shell needs a terminal, and stdin is not one",
            "run the build from a terminal, or drop --on-error=shell: the step's error and last lines are shown either way",
        ));
    }
    Ok(Some(crate::solve::DebugShell::new(
        vec!["/bin/sh".to_string()],
        cmd.debug_secrets,
    )))
}

/// `--remote-executor`/`--remote-cache` (they conflict; the address is checked when the build reaches
/// it), with how to connect (`--remote-tls-*`, `--remote-header`, `--remote-credential-helper`) and
/// `--remote-timeout` and `--remote-accept-cached`, which need a remote.
fn remote(cmd: &BuildCmd, cl: &CommandLine) -> Result<Option<Remote>> {
    let (url, execute) = match (&cmd.remote_executor, &cmd.remote_cache) {
        (Some(url), _) => (Some(url), true),
        (None, Some(url)) => (Some(url), false),
        (None, None) => (None, false),
    };
    let a = &cmd.remote_auth;
    let (connect, credential_helper) = super::remote_auth::AuthFlags {
        prefix: "--remote-",
        tls_ca: &a.remote_tls_ca,
        tls_cert: &a.remote_tls_cert,
        tls_key: &a.remote_tls_key,
        headers: &a.remote_header,
        credential_helper: &a.remote_credential_helper,
        secret_channel: cmd.remote_secrets == super::args::RemoteSecrets::Allow,
    }
    .connect(
        cl,
        url.map(String::as_str),
        "--remote-executor or --remote-cache",
    )?;
    let Some(url) = url else {
        if let Some(t) = &cmd.remote_timeout {
            return Err(cl
                .error(
                    t,
                    Span::new(0, 0),
                    "--remote-timeout needs a remote executor",
                )
                .help("add `--remote-executor grpc://HOST:PORT`, or drop --remote-timeout"));
        }
        if let Some(v) = cmd.remote_accept_cached {
            return Err(cl
                .error(
                    &v.to_string(),
                    Span::new(0, 0),
                    "--remote-accept-cached needs --remote-executor or --remote-cache",
                )
                .help("drop --remote-accept-cached: a local build has no remote ActionCache"));
        }
        return Ok(None);
    };
    let timeout = match &cmd.remote_timeout {
        None => None,
        Some(t) if !execute => {
            return Err(cl
                .error(t, Span::new(0, 0), "--remote-timeout bounds remote steps: with --remote-cache every step runs here")
                .help("use --remote-executor, or drop --remote-timeout"));
        }
        Some(t) => Some(parse_duration(t).map_err(|(span, m)| {
            cl.error(t, span, m)
                .help("write a positive duration such as `90s`, `5m`, `1h30m` or `500ms`")
        })?),
    };
    Ok(Some(Remote {
        url: url.clone(),
        at: Some(Located::new(&cl.file, cl.span_of(url))),
        instance: cmd.remote_instance_name.clone(),
        execute,
        timeout,
        accept_cached: cmd.remote_accept_cached.unwrap_or(true),
        connect,
        credential_helper,
        secrets: None,
    }))
}

/// A duration as Go writes one (`90s`, `1m30s`, `500ms`, `2h`): numbers each followed by a unit. The
/// error locates the part that is wrong within `text`.
fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, (Span, String)> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    if text.is_empty() {
        return Err((Span::new(0, 0), "an empty duration".into()));
    }
    while !rest.is_empty() {
        let at = text.len() - rest.len();
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_len = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len() - digits);
        let (number, unit) = (&rest[..digits], &rest[digits..digits + unit_len]);
        let span = Span::new(at, at + digits + unit_len);
        let n: u64 = number.parse().map_err(|_| {
            (
                span,
                format!(
                    "`{}` is not a number with a unit",
                    &rest[..digits + unit_len]
                ),
            )
        })?;
        let unit = match unit {
            "ms" => std::time::Duration::from_millis(1),
            "s" => std::time::Duration::from_secs(1),
            "m" => std::time::Duration::from_secs(60),
            "h" => std::time::Duration::from_secs(3600),
            "" => return Err((span, format!("`{number}` needs a unit: ms, s, m or h"))),
            u => return Err((span, format!("`{u}` is not a unit of time: ms, s, m or h"))),
        };
        total += unit.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
        rest = &rest[digits + unit_len..];
    }
    if total.is_zero() {
        return Err((
            Span::new(0, text.len()),
            "the duration must be more than zero".into(),
        ));
    }
    Ok(total)
}

/// `--remote-secrets` and the TLS identity of its channel: `allow` only with `--remote-executor` and
/// all three TLS files; the channel's flags only with `allow` (they would do nothing otherwise).
fn remote_secrets(
    cmd: &BuildCmd,
    cl: &CommandLine,
    remote: Option<Remote>,
) -> crate::diag::Result<Option<Remote>> {
    let a = &cmd.remote_auth;
    let tls = [
        ("--remote-tls-ca", &a.remote_tls_ca),
        ("--remote-tls-cert", &a.remote_tls_cert),
        ("--remote-tls-key", &a.remote_tls_key),
    ];
    if cmd.remote_secrets == super::args::RemoteSecrets::Deny {
        // The TLS files are the REAPI connection's too (checked there); the listen address is only
        // the secret channel's.
        if cmd.remote_secrets_listen.is_some() {
            let flag = "--remote-secrets-listen";
            return Err(cl
                .error(flag, Span::default(), format!("{flag} without --remote-secrets=allow"))
                .help("it configures the channel that hands remote steps their secrets: add --remote-secrets=allow, or drop it"));
        }
        return Ok(remote);
    }
    let Some(mut remote) = remote.filter(|r| r.execute) else {
        return Err(cl
            .error("allow", Span::default(), "--remote-secrets=allow without --remote-executor")
            .help("secrets go to the workers of a remote executor: add --remote-executor grpc://HOST:PORT, or drop --remote-secrets"));
    };
    let missing: Vec<&str> = tls
        .iter()
        .filter(|(_, p)| p.is_none())
        .map(|(f, _)| *f)
        .collect();
    if !missing.is_empty() {
        return Err(cl
            .error(
                "allow",
                Span::default(),
                format!("--remote-secrets=allow without a TLS identity: {} missing", missing.join(", ")),
            )
            .help("a secret goes only to a worker whose certificate your CA signed, over mutual TLS: give --remote-tls-ca, --remote-tls-cert and --remote-tls-key (PEM files)"));
    }
    let path = |p: &Option<std::path::PathBuf>| p.clone().unwrap_or_default();
    let (ca, cert, key) = (
        path(&a.remote_tls_ca),
        path(&a.remote_tls_cert),
        path(&a.remote_tls_key),
    );
    let files = crate::remote::secrets::TlsFiles {
        ca: &ca,
        cert: &cert,
        key: &key,
    };
    if let Err(bad) = crate::remote::secrets::check_endpoint_files(&files) {
        let (at, e) = *bad;
        let mut located = cl.error(&at.display().to_string(), Span::default(), e.message);
        located.help = e.help;
        return Err(located);
    }
    remote.secrets = Some(crate::pipeline::SecretChannel {
        listen: cmd
            .remote_secrets_listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:0".to_string()),
        ca: path(&a.remote_tls_ca),
        cert: path(&a.remote_tls_cert),
        key: path(&a.remote_tls_key),
    });
    Ok(Some(remote))
}

/// `-q` with a `--progress` other than `auto` or `quiet`: refused, as buildx refuses it.
fn check_quiet(
    cl: &CommandLine,
    args: &super::buildx::BuildxArgs,
    progress: super::args::ProgressMode,
) -> crate::diag::Result<()> {
    use super::args::ProgressMode;
    let name = match progress {
        ProgressMode::Auto | ProgressMode::Quiet => return Ok(()),
        ProgressMode::Tty => "tty",
        ProgressMode::Plain => "plain",
        ProgressMode::Json => "json",
    };
    if !args.quiet {
        return Ok(());
    }
    Err(cl
        .error(
            name,
            Span::default(),
            format!("--progress {name} and -q cannot be used together"),
        )
        .help("-q is `--progress quiet` with the image ID printed at the end: drop one of them"))
}
