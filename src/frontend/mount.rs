//! `RUN --mount=...` option lists: every mount type and option of BuildKit, checked and turned into
//! operation parameters. Pure: the caller maps spans to the source and resolves `from=` references.

use super::join_path;
use crate::diag::{Span, suggest};
use crate::graph::op::{RunMount, SecretMount, Sharing};
use crate::options::{self, Field};

pub const MOUNT_TYPES: [&str; 5] = ["bind", "cache", "tmpfs", "secret", "ssh"];

/// A mount as written, before `from=` is resolved to a graph input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Secret(SecretMount),
    /// A bind mount; `from` is `None` for the build context.
    Bind {
        target: String,
        source: String,
        from: Option<(String, Span)>,
        readwrite: bool,
    },
    /// A cache mount with `from=`: `from` is resolved, then the mount's seed is set.
    SeededCache {
        mount: RunMount,
        from: (String, Span),
        source: String,
    },
    /// Cache and tmpfs mounts need nothing resolved.
    Other(RunMount),
}

/// A problem in a mount option list; `span` is relative to the list text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub span: Span,
    pub message: String,
    pub help: String,
}

fn err(span: Span, message: impl Into<String>, help: impl Into<String>) -> Error {
    Error {
        span,
        message: message.into(),
        help: help.into(),
    }
}

/// The options each type takes (aliases included), for unknown-option errors.
fn options_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "secret" => &[
            "type",
            "id",
            "target",
            "dst",
            "destination",
            "env",
            "required",
            "mode",
            "uid",
            "gid",
        ],
        "cache" => &[
            "type",
            "id",
            "target",
            "dst",
            "destination",
            "sharing",
            "from",
            "source",
            "src",
            "mode",
            "uid",
            "gid",
            "readonly",
            "ro",
            "rw",
            "readwrite",
            // kiln's own: `--cache-to` carries this cache's contents.
            "export",
        ],
        "bind" => &[
            "type",
            "target",
            "dst",
            "destination",
            "source",
            "src",
            "from",
            "readonly",
            "ro",
            "rw",
            "readwrite",
        ],
        "tmpfs" => &["type", "target", "dst", "destination", "size"],
        "ssh" => &[
            "type",
            "id",
            "target",
            "dst",
            "destination",
            "required",
            "mode",
            "uid",
            "gid",
        ],
        _ => &["type"],
    }
}

/// A `--mount` option list as written: its type and every option with its span, values neither
/// expanded nor checked. Both readers of `RUN --mount` start here: `convert` carries the values as
/// written, lowering expands the list first and then checks it with [`parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    /// The type lowering reads: the first `type=` (`bind` when there is none).
    pub(crate) kind: String,
    /// The span of that `type=` option (the whole list when there is none).
    pub(crate) kind_span: Span,
    /// Every option, in order.
    pub(crate) fields: Vec<Field>,
}

impl Spec {
    /// Reads the option list; fails only on its syntax (an unterminated quote).
    pub(crate) fn read(text: &str) -> Result<Spec, Error> {
        let fields = options::parse(text).map_err(|e| err(e.span, e.message, e.help))?;
        let (kind, kind_span) = fields
            .iter()
            .find(|f| f.key == "type")
            .map(|f| (f.value.clone().unwrap_or_default(), f.span))
            .unwrap_or_else(|| ("bind".to_string(), Span::new(0, text.len())));
        Ok(Spec {
            kind,
            kind_span,
            fields,
        })
    }

    /// The last option named by one of `keys`: a later option wins.
    pub(crate) fn get(&self, keys: &[&str]) -> Option<&Field> {
        self.fields
            .iter()
            .rev()
            .find(|f| keys.contains(&f.key.as_str()))
    }

    /// The value of [`Spec::get`] as written; empty for an option without a value.
    pub(crate) fn value(&self, keys: &[&str]) -> Option<String> {
        self.get(keys).map(|f| f.value.clone().unwrap_or_default())
    }

    /// Fails on a type or an option BuildKit does not know.
    fn check_known(&self) -> Result<(), Error> {
        let kind = self.kind.as_str();
        if !MOUNT_TYPES.contains(&kind) {
            let help = match suggest(kind, MOUNT_TYPES) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("mount types are: {}", MOUNT_TYPES.join(", ")),
            };
            return Err(err(
                self.kind_span,
                format!("unknown mount type `{kind}`"),
                help,
            ));
        }
        let known = options_of(kind);
        for f in &self.fields {
            if !known.contains(&f.key.as_str()) {
                let help = match suggest(&f.key, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("{kind} mounts take: {}", known[1..].join(", ")),
                };
                return Err(err(
                    f.span,
                    format!("unknown {kind} mount option `{}`", f.key),
                    help,
                ));
            }
        }
        Ok(())
    }
}

/// A checked reading of one [`Spec`]: its option values as typed values.
struct Reader<'a> {
    spec: &'a Spec,
    /// The whole list, for errors about what is missing.
    text: &'a str,
    cwd: &'a str,
}

impl Reader<'_> {
    fn kind(&self) -> &str {
        &self.spec.kind
    }

    fn flag(&self, keys: &[&str]) -> Result<Option<bool>, Error> {
        match self.spec.get(keys) {
            None => Ok(None),
            Some(f) => options::parse_bool(f.value.as_deref())
                .map(Some)
                .ok_or_else(|| {
                    err(
                        f.value_span(),
                        format!("invalid value for `{}`", f.key),
                        "use `true` or `false`",
                    )
                }),
        }
    }

    fn number(&self, key: &str, default: u32, radix: u32) -> Result<u32, Error> {
        match self.spec.get(&[key]) {
            None => Ok(default),
            Some(f) => {
                let v = f.value.clone().unwrap_or_default();
                u32::from_str_radix(&v, radix)
                    .ok()
                    .filter(|n| radix != 8 || *n <= 0o7777)
                    .ok_or_else(|| {
                        let help = if radix == 8 {
                            "give an octal mode such as `0755`"
                        } else {
                            "give a number"
                        };
                        err(
                            f.value_span(),
                            format!("invalid {key} `{v}` in {} mount", self.kind()),
                            help,
                        )
                    })
            }
        }
    }

    /// The value of the first of `keys` present, cloned (`None` also for an option without a value).
    fn string(&self, keys: &[&str]) -> Option<String> {
        self.spec.get(keys).and_then(|f| f.value.clone())
    }

    fn need_target(&self, target: Option<String>) -> Result<String, Error> {
        let kind = self.kind();
        target.ok_or_else(|| {
            err(
                Span::new(0, self.text.len()),
                format!("{kind} mount needs a `target`"),
                format!("add `target=/path`, e.g. `--mount=type={kind},target=/path`"),
            )
        })
    }
}

/// Parses one `--mount` value. `cwd` makes relative targets absolute, as BuildKit does.
pub fn parse(text: &str, cwd: &str) -> Result<Parsed, Error> {
    let spec = Spec::read(text)?;
    spec.check_known()?;
    let r = Reader {
        spec: &spec,
        text,
        cwd,
    };
    let kind = spec.kind.as_str();
    // An empty target is missing; `.` and relative paths are relative to the working directory.
    let target = spec
        .get(&["target", "dst", "destination"])
        .and_then(|f| f.value.as_deref().filter(|v| !v.is_empty()))
        .map(|v| join_path(cwd, v));
    let readonly = match (r.flag(&["readonly", "ro"])?, r.flag(&["rw", "readwrite"])?) {
        (Some(ro), _) => ro,
        (None, Some(rw)) => !rw,
        (None, None) => kind == "bind",
    };
    match kind {
        "secret" => secret(&r, target, r.flag(&["required"])?.unwrap_or(false)),
        "ssh" => Ok(Parsed::Other(RunMount::Ssh {
            id: r
                .string(&["id"])
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "default".to_string()),
            target,
            required: r.flag(&["required"])?.unwrap_or(false),
            mode: r.number("mode", 0o600, 8)?,
            uid: r.number("uid", 0, 10)?,
            gid: r.number("gid", 0, 10)?,
        })),
        "cache" => cache(&r, r.need_target(target)?, readonly),
        "bind" => {
            // BuildKit mounts a bind without a target at the working directory.
            let target = target.unwrap_or_else(|| join_path(cwd, "."));
            let source = r
                .string(&["source", "src"])
                .unwrap_or_else(|| "/".to_string());
            let from = spec
                .get(&["from"])
                .map(|f| (f.value.clone().unwrap_or_default(), f.value_span()));
            Ok(Parsed::Bind {
                target,
                source,
                from,
                readwrite: !readonly,
            })
        }
        _ => {
            let target = r.need_target(target)?;
            let size = match spec.get(&["size"]) {
                None => None,
                Some(f) => Some(
                    options::parse_size(f.value.as_deref().unwrap_or("")).ok_or_else(|| {
                        err(
                            f.value_span(),
                            "invalid tmpfs size",
                            "give bytes, or a size such as `64m` or `1g`",
                        )
                    })?,
                ),
            };
            Ok(Parsed::Other(RunMount::Tmpfs { target, size }))
        }
    }
}

fn cache(r: &Reader, target: String, readonly: bool) -> Result<Parsed, Error> {
    let seed = r
        .spec
        .get(&["from"])
        .map(|f| (f.value.clone().unwrap_or_default(), f.value_span()));
    let source = r.spec.get(&["source", "src"]);
    if let (Some(f), None) = (source, &seed) {
        return Err(err(
            f.span,
            format!("cache mount option `{}` needs `from`", f.key),
            "`source` names the directory of `from` that a new cache starts with",
        ));
    }
    let source = source
        .and_then(|f| f.value.clone())
        .unwrap_or_else(|| "/".into());
    let sharing = match r.spec.get(&["sharing"]) {
        None => Sharing::Shared,
        Some(f) => {
            let v = f.value.clone().unwrap_or_default();
            Sharing::parse(&v).ok_or_else(|| {
                let help = match suggest(&v, ["shared", "private", "locked"]) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => "sharing is one of: shared, private, locked".to_string(),
                };
                err(f.value_span(), format!("invalid sharing mode `{v}`"), help)
            })?
        }
    };
    let id = r
        .string(&["id"])
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| target.clone());
    let mount = RunMount::Cache {
        target,
        id,
        sharing,
        mode: r.number("mode", 0o755, 8)?,
        uid: r.number("uid", 0, 10)?,
        gid: r.number("gid", 0, 10)?,
        readonly,
        seed: None,
        export: r.flag(&["export"])?.unwrap_or(false),
    };
    Ok(match seed {
        Some(from) => Parsed::SeededCache {
            mount,
            from,
            source,
        },
        None => Parsed::Other(mount),
    })
}

fn secret(r: &Reader, target: Option<String>, required: bool) -> Result<Parsed, Error> {
    let get = |key: &str| r.string(&[key]);
    let mut m = SecretMount {
        id: get("id").unwrap_or_default(),
        target,
        env: get("env").filter(|e| !e.is_empty()),
        required,
        mode: r.number("mode", 0o400, 8)?,
        uid: r.number("uid", 0, 10)?,
        gid: r.number("gid", 0, 10)?,
    };
    if m.id.is_empty() {
        // BuildKit's rule: the id defaults to the target's file name.
        m.id = m
            .target
            .as_deref()
            .and_then(|t| t.rsplit('/').find(|s| !s.is_empty()))
            .unwrap_or_default()
            .to_string();
    }
    if m.id.is_empty() {
        return Err(err(
            Span::new(0, r.text.len()),
            "secret mount needs an `id`",
            "write `--mount=type=secret,id=NAME` and build with `--secret id=NAME,src=FILE`",
        ));
    }
    if m.target.is_none() && m.env.is_none() {
        m.target = Some(join_path(r.cwd, &format!("/run/secrets/{}", m.id)));
    }
    Ok(Parsed::Secret(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_defaults_follow_buildkit() {
        let Parsed::Other(RunMount::Cache {
            id,
            sharing,
            mode,
            readonly,
            ..
        }) = parse("type=cache,target=/root/.cache", "/").unwrap()
        else {
            panic!("a cache mount")
        };
        assert_eq!(
            (id.as_str(), sharing, mode, readonly),
            ("/root/.cache", Sharing::Shared, 0o755, false)
        );
    }

    #[test]
    fn cache_export_is_a_flag() {
        let export = |text: &str| match parse(text, "/").unwrap() {
            Parsed::Other(RunMount::Cache { export, .. }) => export,
            other => panic!("a cache mount, not {other:?}"),
        };
        assert!(!export("type=cache,target=/c"));
        assert!(export("type=cache,target=/c,export=true"));
        assert!(export("type=cache,target=/c,export"));
        let text = "type=cache,target=/c,export=yes";
        let e = parse(text, "/").unwrap_err();
        assert_eq!(&text[e.span.start..e.span.end], "yes");
        assert_eq!(e.help, "use `true` or `false`");
    }

    #[test]
    fn bind_defaults_to_read_only_from_the_context() {
        let p = parse("type=bind,source=src,target=app", "/work").unwrap();
        assert_eq!(
            p,
            Parsed::Bind {
                target: "/work/app".into(),
                source: "src".into(),
                from: None,
                readwrite: false
            }
        );
        assert!(matches!(
            parse("target=/x,rw", "/").unwrap(),
            Parsed::Bind {
                readwrite: true,
                ..
            }
        ));
    }

    #[test]
    fn errors_point_at_the_option() {
        let e = parse("type=cache,target=/c,sharing=lockd", "/").unwrap_err();
        assert_eq!(e.help, "did you mean `locked`?");
        assert_eq!(
            &"type=cache,target=/c,sharing=lockd"[e.span.start..e.span.end],
            "lockd"
        );
        assert!(
            parse("type=tmpfs", "/")
                .unwrap_err()
                .message
                .contains("needs a `target`")
        );
        assert_eq!(options::parse_size("64m"), Some(64 << 20));
    }
}
