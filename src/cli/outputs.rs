//! `-o`/`--output` values as buildx reads them: every key checked against what the output type takes,
//! so a misspelt or unsupported key is a located error instead of being dropped.

use std::path::PathBuf;

use super::command_line::CommandLine;
use crate::diag::{Diagnostic, Result, Span, suggest};
use crate::export::Output;
use crate::layer::Codec;
use crate::options::Field;

/// What one `-o` asks for.
pub(super) enum Target {
    /// A file or directory written by `export`.
    File(Output),
    /// A registry push to these names (`type=registry`, or `type=image,push=true`).
    Push(Vec<String>),
    /// `type=image` without a push: the image stays in kiln's store, where every build keeps it.
    Store,
}

/// How an `-o` wants its layers compressed (buildx's `compression`, `compression-level`,
/// `force-compression`); unset fields leave the `--compression` default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Layers {
    pub(super) codec: Option<Codec>,
    pub(super) level: Option<i32>,
    pub(super) force: Option<bool>,
}

/// One `-o` value, read.
pub(super) struct Parsed {
    pub(super) target: Target,
    pub(super) layers: Layers,
}

/// The keys each output type takes in kiln.
fn keys_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "local" | "tar" => &["type", "dest"],
        "docker" => &["type", "dest", "name"],
        "oci" => &[
            "type",
            "dest",
            "tar",
            "name",
            "compression",
            "compression-level",
            "force-compression",
            "oci-mediatypes",
        ],
        _ => &[
            "type",
            "name",
            "push",
            "compression",
            "compression-level",
            "force-compression",
            "oci-mediatypes",
        ],
    }
}

/// Keys BuildKit's exporters take that kiln does not, so they are named as unsupported rather than
/// unknown (and never suggested).
const BUILDKIT_ONLY: &[&str] = &[
    "push-by-digest",
    "insecure",
    "registry.insecure",
    "dangling-name-prefix",
    "name-canonical",
    "unpack",
    "store",
    "buildinfo",
    "buildinfo-attrs",
    "attestation-prefix",
    "rewrite-timestamp",
    "platform-split",
    "context",
    "tar",
    "dest",
    "name",
    "push",
    "compression",
    "compression-level",
    "force-compression",
    "oci-mediatypes",
    "oci-artifact",
    "store-unpack",
];

/// The caret for a field's key.
fn key_span(f: &Field) -> Span {
    Span::new(f.span.start, (f.span.start + f.key.len()).min(f.span.end))
}

fn list(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses one `-o` value: `type=TYPE,key=value...`, a bare path (`type=local,dest=PATH`), or `-` (a tar
/// of the filesystem on stdout), as buildx reads them. `tags` are the `-t` names a push defaults to.
pub(super) fn parse(cl: &CommandLine, value: &str, tags: &[String]) -> Result<Parsed> {
    let plain = |target| Parsed {
        target,
        layers: Layers::default(),
    };
    if value == "-" {
        return Ok(plain(Target::File(Output::Tar {
            dest: PathBuf::from("-"),
        })));
    }
    if !value.contains('=') {
        return Ok(plain(Target::File(Output::Local {
            dest: PathBuf::from(value),
        })));
    }
    let mut fields = crate::options::parse(value)
        .map_err(|e| cl.error(value, e.span, e.message).help(e.help))?;
    // buildx reads keys case-insensitively (`Type=oci`).
    for f in &mut fields {
        f.key.make_ascii_lowercase();
    }
    let kind = output_type(cl, value, &fields)?;
    check_keys(cl, value, &fields, &kind)?;
    let get = |k: &str| fields.iter().find(|f| f.key == k);
    let bool_of = |k: &str| -> Result<Option<bool>> {
        let Some(f) = get(k) else { return Ok(None) };
        crate::options::parse_bool(f.value.as_deref())
            .map(Some)
            .ok_or_else(|| {
                cl.error(
                    value,
                    f.value_span(),
                    format!("`{k}` must be true or false"),
                )
                .help(format!("write `{k}=true` or `{k}=false`"))
            })
    };
    if bool_of("oci-mediatypes")? == Some(false) {
        let f = get("oci-mediatypes").expect("read above");
        return Err(cl
            .error(value, f.span, "kiln writes OCI media types only")
            .help("drop `oci-mediatypes=false`; Docker's media types are not supported"));
    }
    let layers = Layers {
        codec: codec(cl, value, get("compression"))?,
        level: None,
        force: bool_of("force-compression")?,
    };
    let layers = Layers {
        level: level(cl, value, get("compression-level"), layers.codec)?,
        ..layers
    };
    let name = name(cl, value, get("name"))?;
    let target = match kind.as_str() {
        "registry" | "image" => {
            let push = bool_of("push")?.unwrap_or(kind == "registry");
            if !push {
                Target::Store
            } else {
                let names = name
                    .map(|n| n.split(',').map(str::to_string).collect())
                    .unwrap_or_else(|| tags.to_vec());
                if names.is_empty() {
                    return Err(cl
                        .error(value, Span::default(), "a registry output needs a name")
                        .help("write `-o type=registry,name=HOST/NAME:TAG` (or give `-t HOST/NAME:TAG`)"));
                }
                Target::Push(names)
            }
        }
        _ => Target::File(file_output(
            cl,
            value,
            &kind,
            &fields,
            name,
            bool_of("tar")?,
        )?),
    };
    Ok(Parsed { target, layers })
}

/// The `type=` of an output, which must be one kiln writes.
fn output_type(cl: &CommandLine, value: &str, fields: &[Field]) -> Result<String> {
    let types = ["oci", "docker", "local", "tar", "registry", "image"];
    let Some(f) = fields.iter().find(|f| f.key == "type") else {
        return Err(cl
            .error(value, Span::default(), "output needs a `type`")
            .help(
                "write `-o type=oci,dest=DIR` (types: oci, docker, local, tar, registry, image)",
            ));
    };
    let kind = f.value.clone().unwrap_or_default();
    if types.contains(&kind.as_str()) {
        return Ok(kind);
    }
    let d = cl.error(
        value,
        f.value_span(),
        format!("unknown output type `{kind}`"),
    );
    Err(match suggest(&kind, types) {
        Some(s) => d.help(format!("did you mean `{s}`?")),
        None => d.help(
            "output types are `oci`, `docker`, `local`, `tar`, `registry` and `image`, e.g. `-o type=oci,dest=DIR`",
        ),
    })
}

/// Refuses a key the type does not take: unknown ones with a did-you-mean, BuildKit's own as unsupported.
fn check_keys(cl: &CommandLine, value: &str, fields: &[Field], kind: &str) -> Result<()> {
    let keys = keys_of(kind);
    let mut seen: Vec<&str> = Vec::new();
    for f in fields {
        if seen.contains(&f.key.as_str()) {
            return Err(cl
                .error(value, key_span(f), format!("`{}` is given twice", f.key))
                .help("give each key once"));
        }
        seen.push(&f.key);
        if keys.contains(&f.key.as_str()) {
            continue;
        }
        let buildkit = BUILDKIT_ONLY.contains(&f.key.as_str()) || f.key.starts_with("annotation");
        let d = if buildkit {
            cl.error(
                value,
                key_span(f),
                format!("`{}` is not supported by `type={kind}`", f.key),
            )
        } else {
            cl.error(
                value,
                key_span(f),
                format!("unknown key `{}` for `type={kind}`", f.key),
            )
        };
        let takes = format!("`type={kind}` takes {}", list(keys));
        return Err(
            match suggest(&f.key, keys.iter().copied()).filter(|_| !buildkit) {
                Some(s) => d.help(format!("did you mean `{s}`? ({takes})")),
                None => d.help(takes),
            },
        );
    }
    Ok(())
}

/// `compression=`: gzip, zstd or uncompressed (BuildKit also knows `estargz`, which kiln does not write).
fn codec(cl: &CommandLine, value: &str, f: Option<&Field>) -> Result<Option<Codec>> {
    let Some(f) = f else { return Ok(None) };
    let kinds = "compression types are `gzip`, `zstd` and `uncompressed`";
    match f.value.as_deref().unwrap_or("") {
        "gzip" => Ok(Some(Codec::Gzip)),
        "zstd" => Ok(Some(Codec::Zstd)),
        "uncompressed" => Ok(Some(Codec::Uncompressed)),
        "estargz" => Err(cl
            .error(
                value,
                f.value_span(),
                "kiln does not write `estargz` layers",
            )
            .help(kinds)),
        v => {
            let d = cl.error(value, f.value_span(), format!("unknown compression `{v}`"));
            Err(match suggest(v, ["gzip", "zstd", "uncompressed"]) {
                Some(s) => d.help(format!("did you mean `{s}`?")),
                None => d.help(kinds),
            })
        }
    }
}

/// `compression-level=`: the range BuildKit accepts for the codec (gzip 0-9, zstd 0-22).
fn level(
    cl: &CommandLine,
    value: &str,
    f: Option<&Field>,
    codec: Option<Codec>,
) -> Result<Option<i32>> {
    let Some(f) = f else { return Ok(None) };
    if codec == Some(Codec::Uncompressed) {
        return Err(cl
            .error(
                value,
                f.value_span(),
                "an uncompressed layer has no compression level",
            )
            .help("leave out `compression-level=`, or choose `compression=gzip` or `zstd`"));
    }
    let max = if codec == Some(Codec::Zstd) { 22 } else { 9 };
    let text = f.value.as_deref().unwrap_or("");
    match text.parse::<i32>() {
        Ok(n) if (0..=max).contains(&n) => Ok(Some(n)),
        _ => Err(cl
            .error(
                value,
                f.value_span(),
                format!("`{text}` is not a compression level"),
            )
            .help(format!(
                "{} levels are 0 to {max}",
                if max == 22 { "zstd" } else { "gzip" }
            ))),
    }
}

/// `name=`: the image name written into an OCI index or docker archive (instead of the first `-t`).
fn name(cl: &CommandLine, value: &str, f: Option<&Field>) -> Result<Option<String>> {
    let Some(f) = f else { return Ok(None) };
    let text = f.value.clone().unwrap_or_default();
    for n in text.split(',') {
        crate::registry::ImageName::parse(n).map_err(|d| {
            cl.error(value, f.value_span(), d.message)
                .help(d.help.unwrap_or_default())
        })?;
    }
    Ok(Some(text))
}

/// A file or directory output, with its `dest` (`-` for stdout, which only a tar can go to).
fn file_output(
    cl: &CommandLine,
    value: &str,
    kind: &str,
    fields: &[Field],
    name: Option<String>,
    tar: Option<bool>,
) -> Result<Output> {
    let dest_field = fields.iter().find(|f| f.key == "dest");
    let dest = dest_field
        .and_then(|f| f.value.clone())
        .filter(|d| !d.is_empty());
    if kind == "docker" && dest.is_none() {
        // As buildx: a docker output without a file goes into the Docker Engine (`--load`).
        if let Some(f) = fields.iter().find(|f| f.key == "name") {
            return Err(cl
                .error(value, f.value_span(), "a load takes its names from `-t`")
                .help("drop `name=` and give the names with `-t NAME`"));
        }
        return Ok(Output::Load {
            endpoint: crate::export::daemon::endpoint()?,
        });
    }
    let Some(dest) = dest else {
        return Err(cl
            .error(
                value,
                Span::default(),
                format!("output type `{kind}` needs `dest`"),
            )
            .help(format!("write `-o type={kind},dest=PATH`")));
    };
    let stdout = dest == "-";
    let dest = PathBuf::from(dest);
    let one_name = |name: Option<String>| -> Result<Option<String>> {
        match name {
            Some(n) if n.contains(',') => {
                let f = fields.iter().find(|f| f.key == "name").expect("given");
                Err(cl
                    .error(value, f.value_span(), "a file output takes one name")
                    .help("give one `name=`; several names are for registry outputs"))
            }
            n => Ok(n),
        }
    };
    Ok(match kind {
        "oci" => {
            let tar = tar.unwrap_or(stdout || dest.extension().is_some_and(|e| e == "tar"));
            if stdout && !tar {
                return Err(stdout_dir(cl, value, dest_field, "an OCI layout directory"));
            }
            Output::Oci {
                dest,
                tar,
                name: one_name(name)?,
            }
        }
        "docker" => Output::Docker {
            dest,
            name: one_name(name)?,
        },
        "local" if stdout => {
            return Err(stdout_dir(cl, value, dest_field, "a directory"));
        }
        "local" => Output::Local { dest },
        _ => Output::Tar { dest },
    })
}

fn stdout_dir(cl: &CommandLine, value: &str, dest: Option<&Field>, what: &str) -> Diagnostic {
    let span = dest.map_or(Span::default(), Field::value_span);
    cl.error(
        value,
        span,
        format!("`dest=-` writes to stdout, which cannot hold {what}"),
    )
    .help("write a tar to stdout instead: `-o type=tar,dest=-` (or `-o -`), or `type=oci,tar=true,dest=-`")
}
