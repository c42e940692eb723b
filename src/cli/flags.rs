//! The parsers of `kiln build`'s structured flag values (`--secret`, `--ssh`, `--allow`, `--cache-to`,
//! `--cache-from`; `-o` is `outputs`), each error pointing at the value on the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::absolute;
use super::command_line::CommandLine;
use crate::diag::{Result, Span, suggest};
use crate::graph::entitlement::Entitlement;
use crate::secret::{SecretSource, SshSource};

/// `--secret id=ID[,src=PATH|,env=VAR]` (also docker's `type=file|env`).
pub(super) fn parse_secret(cl: &CommandLine, value: &str) -> Result<(String, SecretSource)> {
    let fields = crate::options::parse(value)
        .map_err(|e| cl.error(value, e.span, e.message).help(e.help))?;
    let (mut id, mut src, mut env, mut kind) = (None, None, None, None);
    for f in &fields {
        let Some(v) = f.value.clone() else {
            return Err(cl
                .error(
                    value,
                    f.span,
                    format!("`{}` must be a key=value pair", f.key),
                )
                .help("write `--secret id=ID,src=PATH` or `--secret id=ID,env=VAR`"));
        };
        match f.key.to_ascii_lowercase().as_str() {
            "id" => id = Some(v),
            "src" | "source" => src = Some(v),
            "env" => env = Some(v),
            "type" if v == "file" || v == "env" => kind = Some(v),
            "type" => {
                return Err(cl
                    .error(
                        value,
                        f.value_span(),
                        format!("unsupported secret type `{v}`"),
                    )
                    .help("secret types are `file` and `env`"));
            }
            other => {
                let d = cl.error(value, f.span, format!("unknown key `{other}` in --secret"));
                return Err(
                    match suggest(other, ["id", "src", "source", "env", "type"]) {
                        Some(s) => d.help(format!("did you mean `{s}`?")),
                        None => d.help("--secret takes id, src (or source), env and type"),
                    },
                );
            }
        }
    }
    // buildx's rule: a file secret without an id is named after the file.
    let from_file = || {
        src.as_deref()
            .filter(|_| kind.as_deref() != Some("env"))
            .and_then(|s| Path::new(s).file_name())
            .map(|n| n.to_string_lossy().into_owned())
    };
    let Some(id) = id.filter(|i| !i.is_empty()).or_else(from_file) else {
        return Err(cl
            .error(value, Span::default(), "--secret needs an `id`")
            .help(
                "write `--secret id=ID,src=PATH` (or `--secret src=PATH`, named after the file)",
            ));
    };
    if kind.as_deref() == Some("env") && env.is_none() {
        env = src.take();
    }
    let source = match (src, env) {
        (Some(_), Some(_)) => {
            return Err(cl
                .error(
                    value,
                    Span::default(),
                    "--secret takes either `src` or `env`, not both",
                )
                .help("drop one of them"));
        }
        (Some(path), None) => SecretSource::File(absolute(Path::new(&path))),
        (None, Some(var)) => SecretSource::Env(var),
        // buildx's rule: with no source, the secret comes from the environment variable named like it.
        (None, None) => SecretSource::Env(id.clone()),
    };
    if let SecretSource::File(p) = &source
        && !p.is_file()
    {
        let shown = p.display().to_string();
        return Err(cl
            .error(
                value,
                Span::default(),
                if p.is_dir() {
                    format!("secret `{id}`: {shown} is a directory, not a file")
                } else {
                    format!("secret `{id}`: file {shown} does not exist")
                },
            )
            .help("check the `src=` path; it is relative to the current directory"));
    }
    Ok((id, source))
}

/// `--allow NAME[,NAME...]`, each repeatable, as buildx takes them.
pub(super) fn parse_allow(cl: &CommandLine, values: &[String]) -> Result<Vec<Entitlement>> {
    let mut allow = Vec::new();
    for value in values {
        let mut start = 0;
        for name in value.split(',') {
            let span = Span::new(start, start + name.len());
            start += name.len() + 1;
            let Some(e) = Entitlement::parse(name.trim()) else {
                let names = Entitlement::ALL.map(Entitlement::name);
                let d = cl.error(value, span, format!("unknown entitlement `{name}`"));
                return Err(match suggest(name.trim(), names) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help(format!("entitlements are {}", names.join(" and "))),
                });
            };
            allow.push(e);
        }
    }
    Ok(allow)
}

/// `--ssh default`, `--ssh ID`, `--ssh ID=SOCKET` (an agent to forward), `--ssh ID=KEYFILE[,KEYFILE]`
/// (keys kiln serves itself from an in-process agent).
pub(super) fn parse_ssh(cl: &CommandLine, value: &str) -> Result<(String, SshSource)> {
    let (id, paths) = match value.split_once('=') {
        Some((id, paths)) => (id, Some(paths)),
        None => (value, None),
    };
    if id.is_empty() {
        return Err(cl
            .error(value, Span::default(), "--ssh needs an id")
            .help("write `--ssh default`, `--ssh ID=SOCKET` or `--ssh ID=KEYFILE`"));
    }
    let paths: Vec<PathBuf> = match paths {
        Some(p) => p.split(',').map(PathBuf::from).collect(),
        None => match std::env::var_os("SSH_AUTH_SOCK") {
            Some(s) => vec![PathBuf::from(s)],
            None => {
                return Err(cl
                    .error(value, Span::default(), "SSH_AUTH_SOCK is not set, so there is no agent to forward")
                    .help("start an agent (`eval $(ssh-agent)`, `ssh-add`), or pass `--ssh ID=SOCKET` or `--ssh ID=KEYFILE`"));
            }
        },
    };
    use std::os::unix::fs::FileTypeExt as _;
    if let [socket] = paths.as_slice()
        && std::fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket())
    {
        return Ok((id.to_string(), SshSource::Socket(absolute(socket))));
    }
    let mut keys = Vec::new();
    for path in &paths {
        let shown = path.display().to_string();
        let key = ssh_key::PrivateKey::read_openssh_file(path).map_err(|e| {
            cl.error(value, Span::default(), format!("cannot use `{shown}` as an ssh agent socket or key file: {e}"))
                .help("give an agent socket, or an OpenSSH private key file (ed25519, without a passphrase)")
        })?;
        if key.is_encrypted() {
            return Err(cl
                .error(
                    value,
                    Span::default(),
                    format!("the ssh key `{shown}` is protected by a passphrase"),
                )
                .help("load it into an agent with `ssh-add` and pass `--ssh ID=$SSH_AUTH_SOCK`"));
        }
        keys.push(key);
    }
    Ok((id.to_string(), SshSource::Keys(Arc::new(keys))))
}

/// What a `--cache-to`/`--cache-from` value says, checked field by field (buildx's spelling).
struct CacheSpec {
    kind: String,
    fields: BTreeMap<String, String>,
    /// Where each field's value is in the flag's value, for errors about it.
    spans: BTreeMap<String, Span>,
}

impl CacheSpec {
    /// A local cache's tag inside its layout (`tag=`), `latest` by default.
    fn tag(&self) -> String {
        self.fields
            .get("tag")
            .cloned()
            .unwrap_or_else(|| "latest".into())
    }
}

/// Parses `--cache-to`/`--cache-from`: `type=...,key=value...`, or a bare reference meaning
/// `type=registry,ref=...` (as buildx reads it). `allowed` lists the keys each type takes.
fn parse_cache_spec(
    cl: &CommandLine,
    flag: &str,
    value: &str,
    allowed: &[(&str, &[&str])],
) -> Result<CacheSpec> {
    let example = format!("`{flag} type=registry,ref=HOST/REPO:TAG`");
    if !value.contains('=') {
        if value.is_empty() {
            return Err(cl
                .error(value, Span::default(), format!("{flag} needs a value"))
                .help(format!("write {example}")));
        }
        return Ok(CacheSpec {
            kind: "registry".into(),
            fields: BTreeMap::from([("ref".to_string(), value.to_string())]),
            spans: BTreeMap::new(),
        });
    }
    let parsed = crate::options::parse(value)
        .map_err(|e| cl.error(value, e.span, e.message).help(e.help))?;
    let mut kind = None;
    let mut fields = BTreeMap::new();
    let mut spans = BTreeMap::new();
    for f in &parsed {
        let v = f.value.clone().unwrap_or_default();
        if f.key == "type" {
            kind = Some((v, f.span));
        } else {
            fields.insert(f.key.clone(), v);
            spans.insert(f.key.clone(), f.value_span());
        }
    }
    // buildx reads a spec without a type as a registry cache.
    let (kind, span) = kind.unwrap_or_else(|| ("registry".to_string(), Span::default()));
    let types: Vec<&str> = allowed.iter().map(|(t, _)| *t).collect();
    let Some((_, keys)) = allowed.iter().find(|(t, _)| *t == kind) else {
        let later = ["inline", "gha", "s3", "azblob"];
        let d = if later.contains(&kind.as_str()) {
            cl.error(
                value,
                span,
                format!("cache type `{kind}` is not supported yet"),
            )
        } else if kind.is_empty() {
            cl.error(value, span, format!("{flag} needs a `type`"))
        } else {
            cl.error(value, span, format!("unknown cache type `{kind}`"))
        };
        return Err(
            match suggest(&kind, types.iter().copied()).filter(|s| *s != kind) {
                Some(s) => d.help(format!("did you mean `type={s}`?")),
                None => d.help(format!(
                    "cache types are `registry` and `local`, e.g. {example}"
                )),
            },
        );
    };
    for f in &parsed {
        if f.key != "type" && !keys.contains(&f.key.as_str()) {
            let takes = format!(
                "a {kind} cache takes {}",
                keys.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let key = Span::new(f.span.start, (f.span.start + f.key.len()).min(f.span.end));
            let d = cl.error(
                value,
                key,
                format!("unsupported key `{}` for a {kind} cache in {flag}", f.key),
            );
            return Err(match suggest(&f.key, keys.iter().copied()) {
                Some(s) => d.help(format!("did you mean `{s}`? ({takes})")),
                None => d.help(takes),
            });
        }
    }
    Ok(CacheSpec {
        kind,
        fields,
        spans,
    })
}

/// The `ref` of a registry cache, checked as an image name.
fn cache_ref(cl: &CommandLine, flag: &str, value: &str, spec: &CacheSpec) -> Result<String> {
    let Some(r) = spec.fields.get("ref").filter(|r| !r.is_empty()) else {
        return Err(cl
            .error(
                value,
                Span::default(),
                format!("a registry cache in {flag} needs `ref`"),
            )
            .help(format!("write `{flag} type=registry,ref=HOST/REPO:TAG`")));
    };
    crate::registry::ImageName::parse(r).map_err(|d| {
        cl.error(value, Span::default(), d.message)
            .help(d.help.unwrap_or_default())
    })?;
    Ok(r.clone())
}

/// The directory of a local cache (`dest` for --cache-to, `src` for --cache-from).
fn cache_dir(
    cl: &CommandLine,
    flag: &str,
    value: &str,
    spec: &CacheSpec,
    key: &str,
) -> Result<PathBuf> {
    match spec.fields.get(key).filter(|d| !d.is_empty()) {
        Some(d) => Ok(PathBuf::from(d)),
        None => Err(cl
            .error(
                value,
                Span::default(),
                format!("a local cache in {flag} needs `{key}`"),
            )
            .help(format!("write `{flag} type=local,{key}=DIR`"))),
    }
}

/// `--cache-to` (buildx's spelling). Returns the destination and whether a failure is only a warning
/// (`ignore-error=true`).
pub(super) fn parse_cache_to(
    cl: &CommandLine,
    value: &str,
) -> Result<(crate::export::cache::CacheTo, bool)> {
    use crate::export::cache::{CacheTo, Dest, Mode};
    let flag = "--cache-to";
    let spec = parse_cache_spec(
        cl,
        flag,
        value,
        &[
            ("registry", &["ref", "mode", "ignore-error", "cache-mounts"]),
            (
                "local",
                &["dest", "mode", "tag", "ignore-error", "cache-mounts"],
            ),
        ],
    )?;
    let mode = match spec.fields.get("mode").map(String::as_str) {
        None | Some("min") => Mode::Min,
        Some("max") => Mode::Max,
        Some(m) => {
            return Err(cl
                .error(value, Span::default(), format!("unknown cache mode `{m}`"))
                .help("`mode=min` exports the final image's steps, `mode=max` every stage's"));
        }
    };
    let ignore = match spec.fields.get("ignore-error") {
        None => false,
        Some(v) => crate::options::parse_bool(Some(v)).ok_or_else(|| {
            cl.error(
                value,
                Span::default(),
                "`ignore-error` must be true or false",
            )
        })?,
    };
    let dest = match spec.kind.as_str() {
        "registry" => Dest::Registry(cache_ref(cl, flag, value, &spec)?),
        _ => Dest::Local {
            dir: cache_dir(cl, flag, value, &spec, "dest")?,
            tag: spec.tag(),
        },
    };
    // kiln's own key: every cache mount's contents go with the cache (`export=true` picks single mounts).
    let mounts = match spec.fields.get("cache-mounts") {
        None => false,
        Some(v) => crate::options::parse_bool(Some(v)).ok_or_else(|| {
            cl.error(
                value,
                spec.spans["cache-mounts"],
                format!("invalid value `{v}` for `cache-mounts`"),
            )
            .help("`cache-mounts=true` exports the contents of every cache mount the build uses; use `true` or `false`")
        })?,
    };
    Ok((CacheTo { dest, mode, mounts }, ignore))
}

/// `--cache-from` (buildx's spelling).
pub(super) fn parse_cache_from(
    cl: &CommandLine,
    value: &str,
) -> Result<crate::solve::shared_cache::Source> {
    use crate::solve::shared_cache::Source;
    let flag = "--cache-from";
    let spec = parse_cache_spec(
        cl,
        flag,
        value,
        &[("registry", &["ref"]), ("local", &["src", "tag", "digest"])],
    )?;
    Ok(match spec.kind.as_str() {
        "registry" => Source::Registry(cache_ref(cl, flag, value, &spec)?),
        _ => Source::Local {
            dir: cache_dir(cl, flag, value, &spec, "src")?,
            tag: spec.tag(),
        },
    })
}

/// `--registry-mirror REGISTRY=HOST[:PORT]` (repeatable) and `--registry-mirror-only`.
fn parse_mirrors(
    cl: &CommandLine,
    args: &super::args::MirrorArgs,
) -> Result<crate::registry::Mirrors> {
    let mut mirrors = crate::registry::Mirrors::default();
    mirrors.only = args.mirror_only;
    for spec in &args.mirrors {
        mirrors.add(spec).map_err(|e| {
            let at = Span::new(e.at.start, e.at.end);
            cl.error(spec, at, format!("bad --registry-mirror: {}", e.why))
                .help(e.hint)
        })?;
    }
    Ok(mirrors)
}

/// How to reach registries: `--insecure-registry`, the mirror flags, then `registries.toml`.
pub(super) fn registry_options(
    cl: &CommandLine,
    insecure: &[String],
    mirrors: &super::args::MirrorArgs,
) -> Result<crate::registry::Options> {
    let mut opts = crate::registry::Options {
        insecure: insecure.to_vec(),
        mirrors: parse_mirrors(cl, mirrors)?,
        ..crate::registry::Options::default()
    };
    opts.read_config()?;
    if mirrors.mirror_only && opts.mirrors.is_empty() {
        let paths: Vec<String> = crate::registry::config_paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(cl
            .error(
                "--registry-mirror-only",
                Span::default(),
                "--registry-mirror-only, but no registry has a mirror",
            )
            .help(format!(
                "give `--registry-mirror REGISTRY=HOST[:PORT]`, or list mirrors in {}",
                paths.join(" or ")
            )));
    }
    Ok(opts)
}
