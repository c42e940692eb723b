//! The check machinery both front ends share: the rule table, a finding, BuildKit's `check=` options
//! (`# check=skip=A,B|all;error=true;experimental=C|all`), and the secret rules' language-neutral cores
//! (`secrets`). The Dockerfile checks (`dockerfile::lints`) and the `.build` evaluator both report
//! through them.

pub mod secrets;

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::diag::{Diagnostic, Located, Result, SourceFile, Span};
use crate::frontend::quote::go_quote;

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Warning,
    Error,
}

/// One rule: its name, the slug of its BuildKit docs page, and how it is enabled.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    pub name: &'static str,
    /// `https://docs.docker.com/go/dockerfile/rule/<slug>/`; `None` for kiln's own rules.
    pub slug: Option<&'static str>,
    /// Off unless enabled with `experimental=`.
    pub experimental: bool,
    /// An error even without `error=true` (kiln's checks that show a secret leaking).
    pub error: bool,
}

const fn bk(name: &'static str, slug: &'static str) -> Rule {
    Rule {
        name,
        slug: Some(slug),
        experimental: false,
        error: false,
    }
}

const fn kiln(name: &'static str, error: bool) -> Rule {
    Rule {
        name,
        slug: None,
        experimental: false,
        error,
    }
}

/// Every rule `kiln check` runs, BuildKit's first (in the order of its ruleset), then kiln's.
pub const RULES: [Rule; 25] = [
    bk("StageNameCasing", "stage-name-casing"),
    bk("FromAsCasing", "from-as-casing"),
    bk("NoEmptyContinuation", "no-empty-continuation"),
    bk(
        "ConsistentInstructionCasing",
        "consistent-instruction-casing",
    ),
    bk("DuplicateStageName", "duplicate-stage-name"),
    bk("ReservedStageName", "reserved-stage-name"),
    bk("JSONArgsRecommended", "json-args-recommended"),
    bk("MaintainerDeprecated", "maintainer-deprecated"),
    bk("UndefinedArgInFrom", "undefined-arg-in-from"),
    bk("WorkdirRelativePath", "workdir-relative-path"),
    bk("UndefinedVar", "undefined-var"),
    bk(
        "MultipleInstructionsDisallowed",
        "multiple-instructions-disallowed",
    ),
    bk("LegacyKeyValueFormat", "legacy-key-value-format"),
    bk("RedundantTargetPlatform", "redundant-target-platform"),
    bk("SecretsUsedInArgOrEnv", "secrets-used-in-arg-or-env"),
    bk("InvalidDefaultArgInFrom", "invalid-default-arg-in-from"),
    bk(
        "FromPlatformFlagConstDisallowed",
        "from-platform-flag-const-disallowed",
    ),
    bk("CopyIgnoredFile", "copy-ignored-file"),
    Rule {
        experimental: true,
        ..bk(
            "InvalidDefinitionDescription",
            "invalid-definition-description",
        )
    },
    bk("ExposeProtoCasing", "expose-proto-casing"),
    bk("ExposeInvalidFormat", "expose-invalid-format"),
    kiln("SecretFileCopied", true),
    kiln("SecretReadWithoutMount", false),
    kiln("SecretCopiedToFile", true),
    kiln("SecretInBuildArg", false),
];

/// BuildKit checks `kiln check` cannot run: they need the base image's metadata.
pub const NOT_APPLICABLE: [&str; 1] = ["InvalidBaseImagePlatform"];

pub(crate) fn rule(name: &str) -> &'static Rule {
    RULES
        .iter()
        .find(|r| r.name == name)
        .expect("every emitted rule is in RULES")
}

/// One problem found, with where it is.
#[derive(Clone, Debug)]
pub struct Finding {
    pub rule: &'static str,
    pub level: Level,
    pub message: String,
    pub url: Option<String>,
    pub at: Located,
}

/// The parsed `check` options (BuildKit's `linter.Config`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Config {
    pub(crate) skip_all: bool,
    pub(crate) skip: BTreeSet<String>,
    pub(crate) experimental_all: bool,
    pub(crate) experimental: BTreeSet<String>,
    pub(crate) error: bool,
}

impl Config {
    /// BuildKit's `ParseLintOptions`.
    pub(crate) fn parse(text: &str) -> std::result::Result<Config, String> {
        let text = text.trim();
        let mut c = Config::default();
        if text.is_empty() {
            return Ok(c);
        }
        for part in text.splitn(3, ';') {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!(
                    "invalid check option {}",
                    go_quote(part.as_bytes())
                ));
            };
            let list = |v: &str| -> (bool, BTreeSet<String>) {
                let v = v.trim();
                if v == "all" {
                    (true, BTreeSet::new())
                } else {
                    (false, v.split(',').map(|r| r.trim().to_string()).collect())
                }
            };
            match k.trim() {
                "skip" => (c.skip_all, c.skip) = list(v),
                "experimental" => (c.experimental_all, c.experimental) = list(v),
                "error" => {
                    c.error = match v.trim() {
                        "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                        "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                        other => {
                            return Err(format!(
                                "failed to parse check option {}: strconv.ParseBool: parsing {}: invalid syntax",
                                go_quote(part.as_bytes()),
                                go_quote(other.as_bytes())
                            ));
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "invalid check option {}",
                        go_quote(other.as_bytes())
                    ));
                }
            }
        }
        Ok(c)
    }

    /// BuildKit's `WithMergedConfig`: skip and experimental sets grow; `error` stays.
    pub(crate) fn merged(&self, other: &Config) -> Config {
        let mut c = self.clone();
        c.skip_all |= other.skip_all;
        c.experimental_all |= other.experimental_all;
        c.skip.extend(other.skip.iter().cloned());
        c.experimental.extend(other.experimental.iter().cloned());
        c
    }

    pub(crate) fn enabled(&self, rule: &Rule) -> bool {
        if rule.experimental {
            self.experimental_all || self.experimental.contains(rule.name)
        } else {
            !(self.skip_all || self.skip.contains(rule.name))
        }
    }

    /// The config a `# check=` comment above an instruction gives it (BuildKit's
    /// `WithMergedConfigFromComments`: the first `check` comment counts; a bad one is ignored).
    pub(crate) fn with_comments(&self, comments: &[String]) -> Config {
        for c in comments {
            let Some((name, value)) = c.split_once('=') else {
                continue;
            };
            let name = name.trim();
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && name.chars().all(|c| c.is_ascii_alphanumeric());
            if !valid || !name.eq_ignore_ascii_case("check") {
                continue;
            }
            let value = value.trim();
            let value = value.split(' ').next().unwrap_or("");
            return match Config::parse(value) {
                Ok(other) => self.merged(&other),
                Err(_) => self.clone(),
            };
        }
        self.clone()
    }
}

/// A finding of a secret rule at `span` of a `.build` file, unless a `# check=` comment turns the rule
/// off: one in the file's leading comments for the whole file, or one on the lines just above the
/// finding's line for that place only (BuildKit's syntax: `# check=skip=Rule1,Rule2` or `skip=all`).
pub fn program_finding(
    file: &Arc<SourceFile>,
    span: Span,
    rule_name: &str,
    message: String,
) -> Result<Option<Finding>> {
    let r = rule(rule_name);
    let lines: Vec<&str> = file.text.lines().collect();
    let check_of = |line: &str| {
        let c = line.trim().strip_prefix('#')?.trim_start();
        let (name, value) = c.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("check")
            .then(|| value.trim().to_string())
    };
    let mut config = Config::default();
    let mut offset = 0;
    for line in &lines {
        if !line.trim().is_empty() && !line.trim_start().starts_with('#') {
            break;
        }
        if let Some(value) = check_of(line) {
            let parsed = Config::parse(&value).map_err(|e| {
                let at = Span::new(offset, offset + line.len());
                Diagnostic::at(file, at, format!("failed to parse check options: {e}"))
                    .help(HELP_OPTIONS)
            })?;
            config = config.merged(&parsed);
        }
        offset += line.len() + 1;
    }
    let (line, _) = file.line_col(span.start);
    let above: Vec<String> = lines[..line.saturating_sub(1)]
        .iter()
        .rev()
        .take_while(|l| l.trim_start().starts_with('#'))
        .filter_map(|l| check_of(l).map(|v| format!("check={v}")))
        .collect();
    let config = config.with_comments(&above);
    if !config.enabled(r) {
        return Ok(None);
    }
    Ok(Some(Finding {
        rule: r.name,
        level: if r.error || config.error {
            Level::Error
        } else {
            Level::Warning
        },
        message,
        url: None,
        at: Located::new(file, span),
    }))
}

pub(crate) const HELP_OPTIONS: &str = "write `check=skip=Rule1,Rule2` (or `skip=all`), `error=true|false`, `experimental=Rule|all`, separated by `;`";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_like_buildkit() {
        let c = Config::parse("skip=A, B;error=true").unwrap();
        assert!(c.error && c.skip.contains("A") && c.skip.contains("B"));
        assert!(Config::parse("skip=all").unwrap().skip_all);
        assert!(Config::parse("experimental=all").unwrap().experimental_all);
        assert_eq!(
            Config::parse("foo=bar").unwrap_err(),
            "invalid check option \"foo\""
        );
        assert_eq!(
            Config::parse("skip").unwrap_err(),
            "invalid check option \"skip\""
        );
        assert!(Config::parse("error=maybe").is_err());
        assert!(!Config::parse("").unwrap().error);
    }

    #[test]
    fn comments_merge_skips_but_not_error() {
        let base = Config::parse("error=true").unwrap();
        let c = base.with_comments(&["check=skip=A;error=false".to_string()]);
        assert!(c.error && c.skip.contains("A"));
        let bad = base.with_comments(&["check=nonsense".to_string()]);
        assert!(bad.skip.is_empty());
    }
}
