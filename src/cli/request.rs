//! `kiln build`'s flags made into a [`BuildRequest`]: everything it validates before it runs a step, so
//! that running the build ([`crate::build`]) starts from values, not flag text.

use std::collections::BTreeMap;

use super::args::{BuildCmd, CompressionArg, ProgressMode};
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
}

/// `kiln build`: the command line made into a request, then run.
pub(super) fn run(cmd: BuildCmd) -> Result<()> {
    let cl = CommandLine::capture();
    let request = BuildRequest::from_command(&cmd, &cl)?;
    crate::build(request).map(drop)
}

impl BuildRequest {
    /// Validates `kiln build`'s command line and compiles what it names. Enters the user namespace on
    /// the way (an unprivileged kiln must, before any thread starts).
    pub(super) fn from_command(cmd: &BuildCmd, cl: &CommandLine) -> Result<BuildRequest> {
        let flags = Flags::parse(cmd, cl)?;
        let registry = crate::registry::Options {
            insecure: cmd.insecure_registries.clone(),
            ..crate::registry::Options::default()
        };
        // Before any thread starts: an unprivileged kiln becomes root of its own user namespace here.
        crate::exec::userns::enter()?;
        let settings = crate::export::Settings {
            epoch: flags.epoch,
            codec: flags.layers.codec.unwrap_or(match cmd.compression {
                CompressionArg::Gzip => crate::layer::Codec::Gzip,
                CompressionArg::Zstd => crate::layer::Codec::Zstd,
            }),
            jobs: cmd.jobs,
            level: flags.layers.level,
            force: flags.layers.force.unwrap_or(false),
        };
        let store = cmd
            .store
            .clone()
            .unwrap_or_else(crate::store::Store::default_root);
        let pulls = crate::load::Pulls::new(crate::load::open_store(&store)?, registry.clone());
        let compiled = compile_checked(cmd, cl, &flags, &pulls)?;
        let mut ssh = BTreeMap::new();
        for s in &cmd.ssh {
            let (id, socket) = parse_ssh(cl, s)?;
            ssh.insert(id, socket);
        }
        let allow = parse_allow(cl, &cmd.allow)?;
        // A base image that could not be pulled comes after every mistake in the input: those need no
        // network to find, nor to fix.
        if let Some(failure) = pulls.failure(&compiled.graph) {
            return Err(failure);
        }
        let keep_named =
            !cmd.tags.is_empty() && flags.outputs.is_empty() && flags.pushes.is_empty();
        Ok(BuildRequest {
            graph: compiled.graph,
            contexts: compiled.contexts,
            secrets: flags.secrets,
            ssh,
            allow,
            outputs: flags.outputs,
            pushes: flags.pushes,
            tags: cmd.tags.clone(),
            keep_named,
            cache_to: flags.cache_to,
            cache_from: flags.cache_from,
            registry,
            settings,
            no_cache: cmd.no_cache,
            progress: progress_mode(cmd.progress),
            store,
            remote: remote(cmd, cl),
        })
    }
}

impl Flags {
    fn parse(cmd: &BuildCmd, cl: &CommandLine) -> Result<Flags> {
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
        Ok(Flags {
            secrets,
            outputs,
            pushes,
            layers,
            cache_to,
            cache_from,
            epoch: source_date_epoch()?,
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
    if cmd.push {
        if cmd.tags.is_empty() {
            return Err(Diagnostic::input("--push needs a name to push to")
                .help("name the image: `--push -t HOST/NAME:TAG`"));
        }
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

/// Compiles strictly; refuses what the secret checks find, and several images for one destination.
fn compile_checked(
    cmd: &BuildCmd,
    cl: &CommandLine,
    flags: &Flags,
    pulls: &crate::load::Pulls,
) -> Result<Compiled> {
    let compiled = compile(&cmd.compile, cl, &Mode::Build(pulls.clone()))?;
    // What `kiln check` knows, the build enforces, before any step runs (`# check=skip=` opts out).
    progress::stderr(&compiled.secret_findings.render_for_build());
    if let Some(refusal) = compiled.secret_findings.refusal() {
        return Err(refusal);
    }
    let names_one = !cmd.tags.is_empty();
    if compiled.graph.roots.len() > 1
        && (!flags.outputs.is_empty() || !flags.pushes.is_empty() || names_one)
    {
        // One destination cannot hold several images; exporting each over the last would lose all
        // but one without a word.
        let names: Vec<&str> = compiled
            .graph
            .roots
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        return Err(Diagnostic::input(format!(
            "{} targets are selected ({}), but an output, a push or a -t name takes one image",
            names.len(),
            names.join(", ")
        ))
        .help(
            "build them into the store without -o/--push/-t, or select one target for the output",
        ));
    }
    Ok(compiled)
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

/// `--remote-executor`/`--remote-cache` (they conflict), checked when the build reaches them.
fn remote(cmd: &BuildCmd, cl: &CommandLine) -> Option<Remote> {
    let (url, execute) = match (&cmd.remote_executor, &cmd.remote_cache) {
        (Some(url), _) => (url, true),
        (None, Some(url)) => (url, false),
        (None, None) => return None,
    };
    Some(Remote {
        url: url.clone(),
        at: Some(Located::new(&cl.file, cl.span_of(url))),
        instance: cmd.remote_instance_name.clone(),
        execute,
    })
}
