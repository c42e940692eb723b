//! `--attest`, `--sbom` and `--provenance` as buildx reads them: `--sbom=VALUE` is `--attest
//! type=sbom` when VALUE is a boolean (`false`: disabled) and `--attest type=sbom,VALUE` otherwise, and
//! so for `--provenance`; a type given twice is an error, as in buildx.

use super::command_line::CommandLine;
use crate::attest::{Mode, Request};
use crate::diag::{Result, Span, suggest};

/// What the flags ask for, and the provenance's `builder-id=` when given.
pub(super) struct Attest {
    pub(super) request: Request,
    pub(super) builder_id: Option<String>,
}

/// Go's `strconv.ParseBool`, which buildx uses on `--sbom`/`--provenance`.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

pub(super) fn parse(
    cl: &CommandLine,
    attest: &[String],
    sbom: Option<&str>,
    provenance: Option<&str>,
) -> Result<Attest> {
    let mut out = Attest {
        request: Request::default(),
        builder_id: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    // The shorthands as buildx spells them out: (flag value, attest value or a bool).
    let mut values: Vec<(&str, Option<&str>, Option<bool>)> =
        attest.iter().map(|a| (a.as_str(), None, None)).collect();
    for (kind, flag) in [("sbom", sbom), ("provenance", provenance)] {
        if let Some(v) = flag {
            values.push((v, Some(kind), go_bool(v)));
        }
    }
    for (value, shorthand, boolean) in values {
        let (kind, on, fields) = match (shorthand, boolean) {
            (Some(kind), Some(on)) => (kind, on, Vec::new()),
            _ => one(cl, value, shorthand)?,
        };
        if seen.contains(&kind) {
            return Err(cl
                .error(value, Span::default(), format!("duplicate attestation field {kind}"))
                .help("ask for each attestation type once (`--attest`, `--sbom` and `--provenance` name the same two)"));
        }
        seen.push(kind);
        if !on {
            continue;
        }
        match kind {
            "sbom" => out.request.sbom = true,
            _ => {
                let mut mode = Mode::Min;
                for (key, v, span) in fields {
                    match key.as_str() {
                        "mode" => {
                            mode = match v.as_str() {
                                "min" => Mode::Min,
                                "max" => Mode::Max,
                                _ => {
                                    return Err(cl
                                        .error(
                                            value,
                                            span,
                                            format!("unknown provenance mode `{v}`"),
                                        )
                                        .help("mode is `min` (the default) or `max`"));
                                }
                            }
                        }
                        "builder-id" => out.builder_id = Some(v),
                        _ => {}
                    }
                }
                out.request.provenance = Some(mode);
            }
        }
    }
    Ok(out)
}

type Fields = Vec<(String, String, Span)>;

/// One `--attest` value (or a shorthand's that is not a boolean): its type, whether it is enabled, and
/// the type's own keys, each checked.
fn one<'a>(
    cl: &CommandLine,
    value: &str,
    shorthand: Option<&'a str>,
) -> Result<(&'a str, bool, Fields)> {
    let parsed = crate::options::parse(value)
        .map_err(|e| cl.error(value, e.span, e.message).help(e.help))?;
    let mut kind: Option<&'a str> = shorthand;
    let mut on = true;
    let mut fields = Vec::new();
    for f in &parsed {
        let Some(v) = f.value.clone() else {
            return Err(cl
                .error(
                    value,
                    f.span,
                    format!("`{}` must be a key=value pair", f.key),
                )
                .help("write `--attest type=sbom` or `--attest type=provenance,mode=max`"));
        };
        // Keys are case-insensitive, as buildx lower-cases them.
        let key = f.key.trim().to_ascii_lowercase();
        match key.as_str() {
            "type" if shorthand.is_none() => {
                kind = Some(match v.as_str() {
                    "sbom" => "sbom",
                    "provenance" => "provenance",
                    _ => {
                        let d = cl.error(
                            value,
                            f.value_span(),
                            format!("unknown attestation type `{v}`"),
                        );
                        return Err(match suggest(&v, ["sbom", "provenance"]) {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None => d.help("kiln makes `sbom` and `provenance` attestations"),
                        });
                    }
                });
            }
            "disabled" => {
                on = !go_bool(&v).ok_or_else(|| {
                    cl.error(
                        value,
                        f.value_span(),
                        format!("`disabled={v}` is not a boolean"),
                    )
                    .help("write `disabled=true` or `disabled=false`")
                })?;
            }
            _ => fields.push((key, v, f.span)),
        }
    }
    let Some(kind) = kind else {
        return Err(cl
            .error(value, Span::default(), "--attest needs a `type`")
            .help("write `--attest type=sbom` or `--attest type=provenance[,mode=max]`"));
    };
    let known: &[&str] = match kind {
        "sbom" => &[],
        _ => &["mode", "builder-id", "version"],
    };
    for (key, v, span) in &fields {
        if kind == "sbom" && key == "generator" {
            return Err(cl
                .error(value, *span, "kiln makes SBOMs itself: `generator=` (a scanner image) is not supported")
                .help("drop `generator=`: kiln reads the image's package databases without running anything"));
        }
        if key == "version" && v != "v1" {
            return Err(cl
                .error(
                    value,
                    *span,
                    format!("provenance version `{v}` is not supported"),
                )
                .help("kiln writes SLSA provenance v1 (`version=v1`)"));
        }
        if !known.contains(&key.as_str()) {
            let d = cl.error(
                value,
                *span,
                format!("unknown key `{key}` for a {kind} attestation"),
            );
            return Err(match suggest(key, known.iter().copied()) {
                Some(s) => d.help(format!("did you mean `{s}`?")),
                None if known.is_empty() => {
                    d.help("a sbom attestation takes only `type` and `disabled`")
                }
                None => d.help(format!(
                    "a {kind} attestation takes {}, and `disabled`",
                    known.join(", ")
                )),
            });
        }
    }
    Ok((kind, on, fields))
}
