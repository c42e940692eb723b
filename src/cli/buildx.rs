//! The `docker buildx build` flags: those kiln takes beyond docker's classic ones (their clap shape,
//! `BuildxArgs`), and one table of replies for those it does not have, so a buildx user learns what to
//! type instead of reading clap's generic "unexpected argument".

use std::path::PathBuf;

use clap::Args;

use super::command_line::CommandLine;
use crate::diag::{Diagnostic, Span, suggest};

/// buildx's flags of `kiln build` (flattened into `BuildCmd`).
#[derive(Args, Default)]
pub(super) struct BuildxArgs {
    /// Write the image ID (the config digest, as buildx writes it) to FILE.
    #[arg(long, value_name = "FILE")]
    pub(super) iidfile: Option<PathBuf>,
    /// Write the build's result as buildx's JSON (`containerimage.digest`,
    /// `containerimage.config.digest`, `containerimage.descriptor`, `image.name`) to FILE.
    #[arg(long, value_name = "FILE")]
    pub(super) metadata_file: Option<PathBuf>,
    /// Set an image config label `KEY=VALUE` (over the Dockerfile's LABEL of the same key).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub(super) labels: Vec<String>,
    /// The network of every RUN that does not choose one: `default`, `none` or `host` (which needs
    /// `--allow network.host`).
    #[arg(long, value_name = "default|none|host")]
    pub(super) network: Option<String>,
    /// Add a line to every RUN step's /etc/hosts: `HOST:IP` (or `HOST=IP`).
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub(super) add_hosts: Vec<String>,
    /// The size of /dev/shm in RUN steps, in docker's units (`512m`, `2g`); 64m otherwise.
    #[arg(long, value_name = "SIZE")]
    pub(super) shm_size: Option<String>,
    /// A resource limit of RUN steps, in docker's syntax: `nofile=1024:2048`.
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    pub(super) ulimits: Vec<String>,
    /// Do not use the cache for the steps of these stages (`.build`: targets); comma-separated or
    /// repeated.
    #[arg(long, value_name = "STAGE[,STAGE...]")]
    pub(super) no_cache_filter: Vec<String>,
    /// Do not build; answer a question about the build instead: `check` (`kiln check`, failing on
    /// any finding), `outline` (the build args, secrets and SSH ids the target needs), `targets`
    /// (the stages or targets); `,format=json` for JSON. `build` builds.
    #[arg(long, value_name = "METHOD[,format=json]")]
    pub(super) call: Option<String>,
    /// Shorthand for `--call=check`.
    #[arg(long)]
    pub(super) check: bool,
    /// Annotate the image: `KEY=VALUE` or `manifest:KEY=VALUE` (the image manifest's annotations).
    #[arg(long = "annotation", value_name = "[manifest:]KEY=VALUE")]
    pub(super) annotations: Vec<String>,
    /// Ask the registry for every base image's tag. kiln always does: a tag is resolved once per
    /// build, never taken from an earlier build's answer (an image pinned by digest is immutable and
    /// comes from the store when it has it).
    #[arg(long)]
    pub(super) pull: bool,
    /// No progress output; print the image ID at the end.
    #[arg(short = 'q', long)]
    pub(super) quiet: bool,
}

/// What kiln says to a buildx (or classic `docker build`) flag it does not have: the flag, whether it
/// takes a value, and the reply. `--platform`, `--sbom`, `--provenance` and `--attest` are not here:
/// they are being added with multi-platform builds.
const UNSUPPORTED: &[(&str, bool, &str)] = &[
    (
        "--builder",
        true,
        "kiln has no builder instances: it builds in this process, so drop `--builder`",
    ),
    (
        "--cgroup-parent",
        true,
        "not supported: kiln does not place steps in a cgroup of your choice",
    ),
    (
        "--debug",
        false,
        "not supported: for a step's output use `--progress plain`",
    ),
    (
        "-D",
        false,
        "not supported: for a step's output use `--progress plain`",
    ),
    (
        "--detach",
        false,
        "not supported: kiln has no build server to detach from",
    ),
    (
        "--root",
        true,
        "not supported: kiln has no build server; `--store DIR` chooses where results are kept",
    ),
    (
        "--server-config",
        true,
        "not supported: kiln has no build server to configure",
    ),
    (
        "--invoke",
        true,
        "not supported: kiln has no interactive container after a build",
    ),
    (
        "--print",
        true,
        "buildx's old spelling of `--call`: use `--call outline|targets`",
    ),
    (
        "--squash",
        false,
        "not supported: kiln keeps one layer per step, as BuildKit does",
    ),
    (
        "--compress",
        false,
        "not needed: kiln sends no context to a daemon; layer compression is `-o type=oci,compression=gzip|zstd`",
    ),
    (
        "--stream",
        false,
        "not needed: kiln reads the context directly, without a daemon",
    ),
    (
        "--isolation",
        true,
        "not supported: steps always run in Linux namespaces",
    ),
    (
        "--security-opt",
        true,
        "not supported: steps get Docker's default seccomp profile; `RUN --security=insecure` with `--allow security.insecure` turns the sandbox off",
    ),
    (
        "--memory",
        true,
        "not supported: kiln puts no memory limit on steps",
    ),
    (
        "-m",
        true,
        "not supported: kiln puts no memory limit on steps",
    ),
    (
        "--memory-swap",
        true,
        "not supported: kiln puts no memory limit on steps",
    ),
    (
        "--cpu-shares",
        true,
        "not supported: kiln puts no CPU limit on steps; `--jobs N` limits how many run at once",
    ),
    (
        "-c",
        true,
        "not supported: kiln puts no CPU limit on steps; `--jobs N` limits how many run at once",
    ),
    (
        "--cpu-period",
        true,
        "not supported: kiln puts no CPU limit on steps; `--jobs N` limits how many run at once",
    ),
    (
        "--cpu-quota",
        true,
        "not supported: kiln puts no CPU limit on steps; `--jobs N` limits how many run at once",
    ),
    (
        "--cpuset-cpus",
        true,
        "not supported: kiln puts no CPU limit on steps; `--jobs N` limits how many run at once",
    ),
    (
        "--cpuset-mems",
        true,
        "not supported: kiln puts no CPU limit on steps",
    ),
    (
        "--disable-content-trust",
        false,
        "not supported: kiln does not verify Docker Content Trust signatures",
    ),
    (
        "--force-rm",
        false,
        "not needed: kiln removes every step's container, failed or not",
    ),
    (
        "--rm",
        false,
        "not needed: kiln removes every step's container, failed or not",
    ),
    (
        "--userns",
        true,
        "not supported: kiln runs rootless on its own when started unprivileged",
    ),
];

/// Refuses a `kiln build` flag that buildx or `docker build` has and kiln does not, located on the
/// command line with what to do instead. Arguments after `--` are not flags.
pub(super) fn refuse_unsupported(args: &[String]) -> Result<(), Diagnostic> {
    if args.get(1).map(String::as_str) != Some("build") {
        return Ok(());
    }
    for arg in args.iter().skip(2).take_while(|a| *a != "--") {
        let name = match arg.split_once('=') {
            Some((n, _)) if n.starts_with("--") => n,
            _ => arg.as_str(),
        };
        // `-c 512` and `-c512` alike; `-m` likewise.
        let short = (name.len() > 2 && name.starts_with('-') && !name.starts_with("--"))
            .then(|| &name[..2])
            .filter(|s| UNSUPPORTED.iter().any(|(f, takes, _)| f == s && *takes));
        let Some((flag, _, reply)) = UNSUPPORTED
            .iter()
            .find(|(f, _, _)| *f == name || Some(*f) == short)
        else {
            continue;
        };
        let cl = CommandLine::capture();
        let span = Span::new(0, flag.len());
        return Err(cl
            .error(arg, span, format!("kiln build has no `{flag}` flag"))
            .help(*reply));
    }
    Ok(())
}

/// `--label KEY=VALUE` (`KEY` alone: an empty value, as buildx reads it).
pub(super) fn parse_labels(
    cl: &CommandLine,
    values: &[String],
) -> crate::diag::Result<std::collections::BTreeMap<String, String>> {
    let mut labels = std::collections::BTreeMap::new();
    for value in values {
        let (key, v) = value.split_once('=').unwrap_or((value, ""));
        if key.is_empty() {
            return Err(cl
                .error(value, Span::default(), "--label needs a key")
                .help("write `--label KEY=VALUE`"));
        }
        labels.insert(key.to_string(), v.to_string());
    }
    Ok(labels)
}

/// `--no-cache-filter STAGE,...`: the nodes of each named stage (or `.build` target), known by the
/// `[NAME ...]` their names start with. A name no stage has is an error with the names there are.
pub(super) fn no_cache_filter(
    cl: &CommandLine,
    values: &[String],
    no_cache: bool,
    graph: &crate::graph::Dag,
) -> crate::diag::Result<std::collections::HashSet<petgraph::stable_graph::NodeIndex>> {
    let mut nodes = std::collections::HashSet::new();
    if values.is_empty() {
        return Ok(nodes);
    }
    if no_cache {
        return Err(cl
            .error(
                &values[0],
                Span::default(),
                "--no-cache and --no-cache-filter cannot be used together",
            )
            .help("--no-cache already runs every step: drop one of them"));
    }
    let stage_of = |name: &str| -> Option<String> {
        let rest = name.strip_prefix('[')?;
        let end = rest.find([' ', ']'])?;
        Some(rest[..end].to_ascii_lowercase())
    };
    let known: std::collections::BTreeSet<String> = graph
        .dag
        .node_weights()
        .filter_map(|n| stage_of(&n.name))
        .collect();
    for value in values {
        let mut start = 0;
        for name in value.split(',') {
            let span = Span::new(start, start + name.len());
            start += name.len() + 1;
            let wanted = name.trim().to_ascii_lowercase();
            if !known.contains(&wanted) {
                let d = cl.error(
                    value,
                    span,
                    format!("no stage or target `{name}` in this build"),
                );
                return Err(
                    match crate::diag::suggest(&wanted, known.iter().map(String::as_str)) {
                        Some(s) => d.help(format!("did you mean `{s}`?")),
                        None => d.help(format!(
                            "the build's stages are {}",
                            known
                                .iter()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                    },
                );
            }
            nodes.extend(
                graph
                    .dag
                    .node_indices()
                    .filter(|i| stage_of(&graph.dag[*i].name).as_deref() == Some(wanted.as_str())),
            );
        }
    }
    Ok(nodes)
}

type Annotations = std::collections::BTreeMap<String, String>;

/// `--annotation [TYPE:]KEY=VALUE`, as buildx reads it: no type or `manifest:` annotates the image
/// manifest (the first map returned), `manifest-descriptor:` the manifest's descriptor in an OCI
/// layout's index (the second). `index:` and `index-descriptor:` annotate an image index, which a
/// single-platform image does not have, and a `[PLATFORM]` qualifier likewise: refused as BuildKit
/// refuses them.
pub(super) fn parse_annotations(
    cl: &CommandLine,
    values: &[String],
) -> crate::diag::Result<(Annotations, Annotations)> {
    let mut annotations = std::collections::BTreeMap::new();
    let mut descriptors = std::collections::BTreeMap::new();
    for value in values {
        let Some((lhs, v)) = value.split_once('=') else {
            return Err(cl
                .error(value, Span::default(), "--annotation needs KEY=VALUE")
                .help("write `--annotation KEY=VALUE` or `--annotation manifest:KEY=VALUE`"));
        };
        let (kind, key) = match lhs.split_once(':') {
            // A type is a word, maybe with a `[platform]`; a key with a `:` in it is a key.
            Some((kind, key))
                if !kind
                    .split('[')
                    .next()
                    .is_some_and(|t| t.contains(['.', '/'])) =>
            {
                (Some(kind), key)
            }
            _ => (None, lhs),
        };
        let kind_span = Span::new(0, kind.map_or(0, str::len));
        let platform = kind.is_some_and(|k| k.contains('['));
        let mut descriptor = false;
        match kind.map(|k| k.split_once('[').map_or(k, |(t, _)| t)) {
            None => {}
            Some("manifest") if !platform => {}
            Some("manifest-descriptor") if !platform => descriptor = true,
            Some(k @ ("index" | "index-descriptor" | "manifest" | "manifest-descriptor")) => {
                return Err(cl
                    .error(value, kind_span, format!("`{}` annotations: index annotations not supported for single platform export", kind.unwrap_or(k)))
                    .help("this build makes one single-platform image: annotate its manifest (`--annotation KEY=VALUE`) or the manifest's descriptor (`manifest-descriptor:KEY=VALUE`)"));
            }
            Some(other) => {
                let d = cl.error(
                    value,
                    kind_span,
                    format!("unknown annotation type `{other}`"),
                );
                let types = [
                    "manifest",
                    "index",
                    "manifest-descriptor",
                    "index-descriptor",
                ];
                return Err(match suggest(other, types) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help("annotation types are manifest (the default), index, manifest-descriptor and index-descriptor"),
                });
            }
        }
        if key.is_empty() {
            return Err(cl
                .error(value, Span::default(), "--annotation needs a key")
                .help("write `--annotation KEY=VALUE`"));
        }
        let into = if descriptor {
            &mut descriptors
        } else {
            &mut annotations
        };
        into.insert(key.to_string(), v.to_string());
    }
    Ok((annotations, descriptors))
}

/// `--iidfile` names one image: a build of several targets has several IDs (their metadata goes into
/// `--metadata-file` by target, and `-q` prints each).
pub(super) fn check_iidfile(
    cl: &CommandLine,
    args: &BuildxArgs,
    roots: &[(String, petgraph::stable_graph::NodeIndex)],
) -> crate::diag::Result<()> {
    let Some(path) = args.iidfile.as_ref().filter(|_| roots.len() > 1) else {
        return Ok(());
    };
    let shown = path.display().to_string();
    let names: Vec<&str> = roots.iter().map(|(n, _)| n.as_str()).collect();
    Err(cl
        .error(
            &shown,
            Span::default(),
            format!(
                "--iidfile takes one image, and {} targets are selected ({})",
                names.len(),
                names.join(", ")
            ),
        )
        .help("select one target, or use --metadata-file, which holds each target's digests"))
}

#[cfg(test)]
mod tests {
    use super::{UNSUPPORTED, refuse_unsupported};

    fn argv(args: &[&str]) -> Vec<String> {
        ["kiln"].iter().chain(args).map(|a| a.to_string()).collect()
    }

    /// Every flag of the table gets its reply, spelled alone, with `=VALUE`, or (short ones) glued
    /// to their value; after `--`, or in another command, nothing is refused.
    #[test]
    fn every_unsupported_flag_gets_its_reply() {
        for (flag, takes, reply) in UNSUPPORTED {
            let d = refuse_unsupported(&argv(&["build", flag, "x", "."])).unwrap_err();
            assert!(d.message.contains(flag), "{flag}: {}", d.message);
            assert_eq!(d.help.as_deref(), Some(*reply));
            if *takes {
                let spelled = if flag.starts_with("--") {
                    format!("{flag}=1")
                } else {
                    format!("{flag}1")
                };
                assert!(refuse_unsupported(&argv(&["build", &spelled, "."])).is_err());
            }
        }
        assert!(refuse_unsupported(&argv(&["build", "--", "--builder"])).is_ok());
        assert!(refuse_unsupported(&argv(&["graph", "--builder", "x"])).is_ok());
        assert!(refuse_unsupported(&argv(&["build", "-t", "x", "."])).is_ok());
    }

    /// No flag of the table is one `kiln build` has: a reply must never shadow a real flag.
    #[test]
    fn the_table_names_no_flag_kiln_build_has() {
        use clap::CommandFactory as _;
        let cli = super::super::args::Cli::command();
        let build = cli.find_subcommand("build").expect("a build command");
        for arg in build.get_arguments() {
            let longs = arg.get_long().map(|l| format!("--{l}"));
            let shorts = arg.get_short().map(|s| format!("-{s}"));
            for name in longs.into_iter().chain(shorts) {
                assert!(
                    !UNSUPPORTED.iter().any(|(f, _, _)| *f == name),
                    "`{name}` is a kiln build flag and in the table of replies"
                );
            }
        }
    }
}
