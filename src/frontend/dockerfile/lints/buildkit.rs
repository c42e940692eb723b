//! BuildKit's build checks, each where BuildKit runs it: the parser's warnings, the instruction step
//! (casing, MAINTAINER, descriptions), the stage list (names, casing majority), the global ARGs and
//! `FROM` lines, and the dispatch of each stage (expansion, ENV/ARG, WORKDIR, CMD, EXPOSE, COPY).
//!
//! The base image is never resolved, so its environment is taken to be only `PATH` (which BuildKit
//! always sets): a variable is `UndefinedVar` when nothing in the Dockerfile declares it in scope.
//! A stage built `FROM` an earlier stage inherits that stage's ENV, SHELL and working directory.

use std::collections::BTreeSet;

use super::words::{self, Expanded};
use super::{Linter, Options, secrets};
use crate::diag::{Diagnostic, Result, Span, suggest};
use crate::frontend::dockerfile::syntax::ast::{
    Command, Dockerfile, Healthcheck, Instruction, InstructionKind, KeyValue, Word,
};

/// Build arguments BuildKit never turns into environment variables.
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// A stage: its FROM instruction, the instructions after it, and its (lower-cased) name.
struct StageRef {
    from: usize,
    end: usize,
    name: Option<String>,
}

/// What a finished stage passes on to a stage built `FROM` it.
#[derive(Clone, Default)]
struct Inherited {
    env: Vec<(String, String)>,
    shell: bool,
    cwd: Option<String>,
}

pub(super) fn run(
    l: &mut Linter,
    df: &Dockerfile,
    comments: &[Vec<String>],
    opts: &Options,
) -> Result<()> {
    // The parser's warnings.
    for w in &df.warnings {
        l.emit(
            "NoEmptyContinuation",
            None,
            w.span,
            "Empty continuation line".into(),
        );
    }
    instruction_step(l, df, comments);
    let stages = stage_list(l, df);
    casing(l, df, stages.first().map_or(0, |s| s.from));
    let globals = global_args(df, opts, &stages);
    invalid_default_bases(l, df, &stages, &globals.defaults_env);
    let bases = from_lines(l, df, &stages, &globals);
    let dispatch = dispatched(df, opts, &stages, &bases)?;
    dispatch_stages(l, df, opts, &stages, &bases, &dispatch, &globals.global_env);
    Ok(())
}

/// The checks of BuildKit's instruction step.
fn instruction_step(l: &mut Linter, df: &Dockerfile, comments: &[Vec<String>]) {
    let text: &str = &df.file.text;
    for (i, ins) in df.instructions.iter().enumerate() {
        match &ins.kind {
            InstructionKind::Maintainer(_) => {
                l.emit(
                    "MaintainerDeprecated",
                    Some(i),
                    ins.span,
                    "Maintainer instruction is deprecated in favor of using label".into(),
                );
            }
            InstructionKind::From {
                image,
                alias: Some(alias),
            } => {
                if alias.text.to_lowercase() != alias.text {
                    l.emit(
                        "StageNameCasing",
                        Some(i),
                        alias.span,
                        format!("Stage name '{}' should be lowercase", alias.text),
                    );
                }
                let as_start = image.span.end;
                let between = &text[as_start..alias.span.start];
                let as_word = between.trim();
                let offset = as_start + between.find(as_word).unwrap_or(0);
                let kw = &ins.keyword.text;
                let from_lower = kw.to_lowercase() == *kw;
                let from_upper = kw.to_uppercase() == *kw;
                let mismatch = (from_lower && as_word.to_lowercase() != as_word)
                    || (!from_lower && from_upper && as_word.to_uppercase() != as_word);
                if mismatch {
                    l.emit(
                        "FromAsCasing",
                        Some(i),
                        Span::new(offset, offset + as_word.len()),
                        format!("'{as_word}' and '{kw}' keywords' casing do not match"),
                    );
                }
                description(
                    l,
                    i,
                    ins,
                    "FROM",
                    &[alias.text.to_lowercase()],
                    &comments[i],
                );
            }
            InstructionKind::Arg(decls) => {
                let keys: Vec<String> = decls.iter().map(|d| d.key.text.clone()).collect();
                description(l, i, ins, "ARG", &keys, &comments[i]);
            }
            _ => {}
        }
    }
}

/// The stages, and the checks on their names.
fn stage_list(l: &mut Linter, df: &Dockerfile) -> Vec<StageRef> {
    let mut stages: Vec<StageRef> = Vec::new();
    for (i, ins) in df.instructions.iter().enumerate() {
        if let InstructionKind::From { alias, .. } = &ins.kind {
            if let Some(last) = stages.last_mut() {
                last.end = i;
            }
            stages.push(StageRef {
                from: i,
                end: df.instructions.len(),
                name: alias.as_ref().map(|a| a.text.to_lowercase()),
            });
        }
    }
    let mut seen = BTreeSet::new();
    for st in &stages {
        let Some(name) = &st.name else { continue };
        let InstructionKind::From {
            alias: Some(alias), ..
        } = &df.instructions[st.from].kind
        else {
            continue;
        };
        if name == "scratch" || name == "context" {
            l.emit(
                "ReservedStageName",
                None,
                alias.span,
                format!("Stage name should not use the same name as reserved stage \"{name}\""),
            );
        }
        if !seen.insert(name.clone()) {
            l.emit(
                "DuplicateStageName",
                None,
                alias.span,
                format!("Duplicate stage name \"{name}\", stage names should be unique"),
            );
        }
    }
    stages
}

/// The global ARGs, as `buildMetaArgs` computes them.
struct Globals {
    /// With only their defaults.
    defaults_env: Vec<(String, String)>,
    /// With --build-arg.
    global_env: Vec<(String, String)>,
    /// Every name a FROM line may use, sorted.
    arg_keys: Vec<String>,
}

fn global_args(df: &Dockerfile, opts: &Options, stages: &[StageRef]) -> Globals {
    let target_name = opts
        .target
        .clone()
        .or_else(|| stages.last().and_then(|s| s.name.clone()))
        .unwrap_or_default();
    let platform_defaults = default_args(opts, &target_name);
    let first_from = stages.first().map_or(df.instructions.len(), |s| s.from);
    let meta: Vec<&KeyValue> = df.instructions[..first_from]
        .iter()
        .filter_map(|ins| match &ins.kind {
            InstructionKind::Arg(d) => Some(d.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    let meta_env = |with_build_args: bool| -> Vec<(String, String)> {
        let mut env = platform_defaults.clone();
        for d in &meta {
            let given = opts
                .build_args
                .iter()
                .rev()
                .find(|a| with_build_args && a.key == d.key.text);
            let value = match (given, &d.value) {
                (Some(a), _) => Some(a.value.clone()),
                (None, Some(w)) => words::expand(&w.text, df.escape, &env).value,
                (None, None) => None,
            };
            if let Some(v) = value {
                set(&mut env, &d.key.text, &v);
            }
        }
        env
    };
    let defaults_env = meta_env(false);
    let global_env = meta_env(true);
    let mut arg_keys: Vec<String> = meta.iter().map(|d| d.key.text.clone()).collect();
    arg_keys.extend(global_env.iter().map(|(k, _)| k.clone()));
    arg_keys.sort();
    arg_keys.dedup();
    Globals {
        defaults_env,
        global_env,
        arg_keys,
    }
}

/// `InvalidDefaultArgInFrom`: base images that the ARG defaults alone leave empty or invalid.
fn invalid_default_bases(
    l: &mut Linter,
    df: &Dockerfile,
    stages: &[StageRef],
    defaults_env: &[(String, String)],
) {
    for st in stages {
        let InstructionKind::From { image, .. } = &df.instructions[st.from].kind else {
            continue;
        };
        let e = words::expand(&image.text, df.escape, defaults_env);
        let Some(v) = e.value else { break };
        if !words::valid_reference(&v) {
            l.emit(
                "InvalidDefaultArgInFrom",
                None,
                image.span,
                format!(
                    "Default value for ARG {} results in empty or invalid base image name",
                    image.text
                ),
            );
        }
    }
}

/// Each FROM line with the build's global args; returns each stage's base, lower-cased.
fn from_lines(l: &mut Linter, df: &Dockerfile, stages: &[StageRef], g: &Globals) -> Vec<String> {
    let (global_env, arg_keys) = (&g.global_env, &g.arg_keys);
    let mut bases: Vec<String> = Vec::new();
    for st in stages {
        let ins = &df.instructions[st.from];
        let InstructionKind::From { image, .. } = &ins.kind else {
            continue;
        };
        let e = words::expand(&image.text, df.escape, global_env);
        undefined_in_from(l, st.from, image.span, &e, arg_keys);
        bases.push(e.value.unwrap_or_default().to_lowercase());
        if let Some(flag) = ins.flag("platform") {
            let raw = flag.value.clone().unwrap_or_default();
            let e = words::expand(&raw, df.escape, global_env);
            undefined_in_from(l, st.from, flag.value_span, &e, arg_keys);
            let result = e.value.clone().unwrap_or_default();
            if e.matched.len() == 1 && e.unmatched.is_empty() && e.matched[0] == "TARGETPLATFORM" {
                let tp = global_env
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "TARGETPLATFORM")
                    .map(|(_, v)| v.as_str());
                if tp == Some(result.as_str()) {
                    l.emit(
                        "RedundantTargetPlatform",
                        Some(st.from),
                        flag.value_span,
                        format!("Setting platform to predefined {raw} in FROM is redundant as this is the default behavior"),
                    );
                }
            }
            if e.matched.is_empty()
                && e.unmatched.is_empty()
                && let Some((os, arch)) = words::parse_platform(&result)
            {
                let name = st.name.clone().unwrap_or_default();
                if !name.contains(&os) && !name.contains(&arch) {
                    l.emit(
                        "FromPlatformFlagConstDisallowed",
                        Some(st.from),
                        flag.value_span,
                        format!("FROM --platform flag should not use constant value \"{result}\""),
                    );
                }
            }
        }
    }
    bases
}

/// Which stages are dispatched: all of them without --target (BuildKit's lint), else what the
/// target needs.
fn dispatched(
    df: &Dockerfile,
    opts: &Options,
    stages: &[StageRef],
    bases: &[String],
) -> Result<Vec<bool>> {
    let index_of = |name: &str, before: usize| -> Option<usize> {
        let lower = name.to_lowercase();
        stages[..before]
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| name.parse::<usize>().ok().filter(|i| *i < before))
    };
    Ok(match &opts.target {
        None => vec![true; stages.len()],
        Some(t) => {
            let lower = t.to_lowercase();
            let Some(target) = stages
                .iter()
                .position(|s| s.name.as_deref() == Some(lower.as_str()))
            else {
                let names: Vec<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
                let mut d =
                    Diagnostic::input(format!("target stage `{t}` not found in {}", df.file.name));
                if let Some(at) = &opts.target_at {
                    d = d.label(at.clone(), "");
                }
                if let Some(s) = suggest(t, names.iter().copied()) {
                    d = d.help(format!("did you mean `{s}`?"));
                } else if !names.is_empty() {
                    d = d.help(format!("the stages are: {}", names.join(", ")));
                }
                return Err(d);
            };
            let mut needed = vec![false; stages.len()];
            let mut todo = vec![target];
            while let Some(s) = todo.pop() {
                if std::mem::replace(&mut needed[s], true) {
                    continue;
                }
                let mut deps: Vec<usize> = Vec::new();
                if let Some(b) = stages[..s]
                    .iter()
                    .position(|x| x.name.as_deref() == Some(bases[s].as_str()))
                {
                    deps.push(b);
                }
                for ins in &df.instructions[stages[s].from + 1..stages[s].end] {
                    for name in stage_refs(ins, df.escape) {
                        if let Some(d) = index_of(&name, s) {
                            deps.push(d);
                        }
                    }
                }
                todo.extend(deps);
            }
            needed
        }
    })
}

/// Dispatches each stage `dispatch` selects, in order, each starting from what its base stage left.
fn dispatch_stages(
    l: &mut Linter,
    df: &Dockerfile,
    opts: &Options,
    stages: &[StageRef],
    bases: &[String],
    dispatch: &[bool],
    global_env: &[(String, String)],
) {
    let targets = secrets::file_targets(df);
    let mut finished: Vec<Inherited> = Vec::new();
    for (s, st) in stages.iter().enumerate() {
        let parent = stages[..s]
            .iter()
            .position(|x| x.name.as_deref() == Some(bases[s].as_str()))
            .and_then(|p| finished.get(p).cloned());
        let mut d = Dispatch {
            df,
            opts,
            global_env,
            env: parent.as_ref().map_or_else(
                || vec![("PATH".into(), DEFAULT_PATH.into())],
                |p| p.env.clone(),
            ),
            args: Vec::new(),
            shell: parent.as_ref().is_some_and(|p| p.shell),
            cwd: parent.as_ref().and_then(|p| p.cwd.clone()),
            workdir_set: false,
            cmd: None,
            entrypoint: None,
            healthcheck: None,
            secret_targets: &targets,
        };
        if dispatch[s] {
            for i in st.from + 1..st.end {
                d.instruction(l, i);
            }
        }
        finished.push(Inherited {
            env: d.env,
            shell: d.shell,
            cwd: d.cwd,
        });
    }
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// BuildKit's `defaultArgs`: the platform arguments (overridable with --build-arg) and TARGETSTAGE.
fn default_args(opts: &Options, target: &str) -> Vec<(String, String)> {
    let arch = words::host_arch();
    let platform = format!("linux/{arch}");
    let target = if target.is_empty() { "default" } else { target };
    let list = [
        ("BUILDPLATFORM", platform.as_str()),
        ("BUILDOS", "linux"),
        ("BUILDOSVERSION", ""),
        ("BUILDARCH", arch),
        ("BUILDVARIANT", ""),
        ("TARGETPLATFORM", platform.as_str()),
        ("TARGETOS", "linux"),
        ("TARGETOSVERSION", ""),
        ("TARGETARCH", arch),
        ("TARGETVARIANT", ""),
        ("TARGETSTAGE", target),
    ];
    list.iter()
        .map(|(k, v)| {
            let v = opts
                .build_args
                .iter()
                .rev()
                .find(|a| a.key == *k)
                .map_or(v.to_string(), |a| a.value.clone());
            (k.to_string(), v)
        })
        .collect()
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(e) => e.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}

/// `InvalidDefinitionDescription`: the last comment line above must start with one of the names.
fn description(
    l: &mut Linter,
    i: usize,
    ins: &Instruction,
    kind: &str,
    keys: &[String],
    comments: &[String],
) {
    let (Some(last), Some(first_key)) = (comments.last(), keys.first()) else {
        return;
    };
    let word = last.split(' ').next().unwrap_or("");
    if keys.iter().any(|k| k == word) {
        return;
    }
    let example = if keys.len() > 1 {
        "<arg_key>"
    } else {
        first_key.as_str()
    };
    l.emit(
        "InvalidDefinitionDescription",
        Some(i),
        ins.span,
        format!("Comment for {kind} should follow the format: `# {example} <description>`"),
    );
}

/// `ConsistentInstructionCasing`: the majority casing of the stages' keywords (ties go to upper
/// case), every keyword that differs flagged, mixed-case ones included.
fn casing(l: &mut Linter, df: &Dockerfile, first_from: usize) {
    let keywords: Vec<&Word> = df.instructions[first_from..]
        .iter()
        .map(|i| &i.keyword)
        .collect();
    let (mut lower, mut upper) = (0, 0);
    for k in &keywords {
        let t = &k.text;
        if t.to_lowercase() == *t {
            lower += 1;
        } else if t.to_uppercase() == *t {
            upper += 1;
        }
    }
    let majority_lower = lower > upper;
    for k in keywords {
        let t = &k.text;
        let wrong = if majority_lower {
            (t.to_lowercase() != *t).then_some("lowercase")
        } else {
            (t.to_uppercase() != *t).then_some("uppercase")
        };
        if let Some(casing) = wrong {
            l.emit(
                "ConsistentInstructionCasing",
                None,
                k.span,
                format!("Command '{t}' should match the case of the command majority ({casing})"),
            );
        }
    }
}

fn undefined_in_from(l: &mut Linter, i: usize, span: Span, e: &Expanded, keys: &[String]) {
    for name in &e.unmatched {
        if keys.contains(name) {
            continue;
        }
        let mut msg = format!("FROM argument '{name}' is not declared");
        if let Some(s) = words::suggest(name, keys.iter().map(String::as_str)) {
            msg.push_str(&format!(" (did you mean {s}?)"));
        }
        l.emit("UndefinedArgInFrom", Some(i), span, msg);
    }
}

/// The stages an instruction reads from: `COPY --from=` (expanded with no variables, as BuildKit
/// does) and `RUN --mount=...,from=`.
fn stage_refs(ins: &Instruction, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    match &ins.kind {
        InstructionKind::Copy { .. } => {
            if let Some(f) = ins.flag("from") {
                let raw = f.value.clone().unwrap_or_default();
                if let Some(v) = words::expand(&raw, escape, &[]).value {
                    out.push(v);
                }
            }
        }
        InstructionKind::Run(_) => {
            for f in ins.flags.iter().filter(|f| f.name == "mount") {
                let raw = f.value.clone().unwrap_or_default();
                if let Ok(fields) = crate::options::parse(&raw) {
                    out.extend(
                        fields
                            .into_iter()
                            .filter(|f| f.key == "from")
                            .filter_map(|f| f.value),
                    );
                }
            }
        }
        _ => {}
    }
    out
}

/// One stage's dispatch: the variable scope as BuildKit keeps it, and the per-stage trackers.
struct Dispatch<'a> {
    df: &'a Dockerfile,
    opts: &'a Options<'a>,
    global_env: &'a [(String, String)],
    /// ENV and ARG values in scope (the base image's env is only PATH).
    env: Vec<(String, String)>,
    /// ARG names declared in the stage (with or without a value).
    args: Vec<String>,
    shell: bool,
    cwd: Option<String>,
    workdir_set: bool,
    cmd: Option<Span>,
    entrypoint: Option<Span>,
    healthcheck: Option<Span>,
    secret_targets: &'a [String],
}

impl Dispatch<'_> {
    /// Expands a word for an instruction, reporting `UndefinedVar` for what the scope lacks.
    fn word(&self, l: &mut Linter, i: usize, text: &str, span: Span) -> Option<String> {
        let e = words::expand(text, self.df.escape, &self.env);
        self.unmatched(l, i, span, &e.unmatched);
        e.value
    }

    fn unmatched(&self, l: &mut Linter, i: usize, span: Span, names: &[String]) {
        for name in names {
            if self.args.contains(name) || NON_ENV_ARGS.contains(&name.as_str()) {
                continue;
            }
            let mut msg = format!("Usage of undefined variable '${name}'");
            if let Some(s) = words::suggest(name, self.env.iter().map(|(k, _)| k.as_str())) {
                msg.push_str(&format!(" (did you mean ${s}?)"));
            }
            l.emit("UndefinedVar", Some(i), span, msg);
        }
    }

    fn used_once(l: &mut Linter, i: usize, tracker: &mut Option<Span>, span: Span, name: &str) {
        if let Some(prev) = tracker.replace(span) {
            l.emit(
                "MultipleInstructionsDisallowed",
                Some(i),
                prev,
                format!("Multiple {name} instructions should not be used in the same stage because only the last one will be used"),
            );
        }
    }

    fn legacy(&self, l: &mut Linter, i: usize, ins: &Instruction, kv: &KeyValue) {
        let text: &str = &self.df.file.text;
        if text.as_bytes().get(kv.key.span.end) != Some(&b'=') {
            let end = kv.value.as_ref().map_or(kv.key.span.end, |v| v.span.end);
            let name = &ins.keyword.text;
            l.emit(
                "LegacyKeyValueFormat",
                Some(i),
                Span::new(kv.key.span.start, end),
                format!("\"{name} key=value\" should be used instead of legacy \"{name} key value\" format"),
            );
        }
    }

    /// ENV: every pair expanded before any is set, as BuildKit does.
    fn env(&mut self, l: &mut Linter, i: usize, ins: &Instruction, pairs: &[KeyValue]) {
        // BuildKit expands every pair before setting any.
        let mut set_now = Vec::new();
        for kv in pairs {
            let key = self
                .word(l, i, &kv.key.text, kv.key.span)
                .unwrap_or_else(|| kv.key.text.clone());
            let value = match &kv.value {
                Some(v) => self.word(l, i, &v.text, v.span).unwrap_or_default(),
                None => String::new(),
            };
            set_now.push((kv, key, value));
        }
        for (kv, key, value) in set_now {
            self.legacy(l, i, ins, kv);
            secret_key(l, i, "ENV", &key, kv.key.span);
            secrets::value(l, i, "ENV", &key, kv.value.as_ref());
            set(&mut self.env, &key, &value);
        }
    }

    fn arg(&mut self, l: &mut Linter, i: usize, decls: &[KeyValue]) {
        for d in decls {
            let key = d.key.text.clone();
            secret_key(l, i, "ARG", &key, d.key.span);
            secrets::value(l, i, "ARG", &key, d.value.as_ref());
            let given = self.opts.build_args.iter().rev().find(|a| a.key == key);
            let value = match (given, &d.value) {
                (Some(a), _) => Some(a.value.clone()),
                (None, Some(w)) => self.word(l, i, &w.text, w.span),
                (None, None) => self
                    .global_env
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone()),
            };
            if let Some(v) = value
                && !NON_ENV_ARGS.contains(&key.as_str())
            {
                set(&mut self.env, &key, &v);
            }
            self.args.push(key);
        }
    }

    fn workdir(&mut self, l: &mut Linter, i: usize, w: &Word) {
        let path = self.word(l, i, &w.text, w.span).unwrap_or_default();
        if !self.workdir_set && !path.starts_with('/') {
            l.emit(
                "WorkdirRelativePath",
                Some(i),
                w.span,
                format!(
                    "Relative workdir {} can have unexpected results if the base image changes",
                    crate::frontend::dockerfile::syntax::quote::go_quote(path.as_bytes())
                ),
            );
        }
        self.workdir_set = true;
        let base = self.cwd.clone().unwrap_or_else(|| "/".into());
        let joined = if path.starts_with('/') {
            path
        } else {
            format!("{base}/{path}")
        };
        self.cwd = Some(words::clean_path(&joined));
    }

    fn expose(&self, l: &mut Linter, i: usize, ports: &[Word]) {
        let df = self.df;
        for w in ports {
            let Ok(fields) =
                crate::frontend::shell::expand_words(&w.text, df.escape, &|n: &str| {
                    self.env
                        .iter()
                        .rev()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.clone())
                })
            else {
                continue;
            };
            for raw in fields {
                let parts: Vec<&str> = raw.split(':').collect();
                let container = parts.last().copied().unwrap_or("");
                let proto = container.split_once('/').map_or("", |(_, p)| p);
                if proto.to_lowercase() != proto {
                    l.emit(
                        "ExposeProtoCasing",
                        Some(i),
                        w.span,
                        format!(
                            "Defined protocol '{raw}' in EXPOSE instruction should be lowercase"
                        ),
                    );
                }
                if parts.len() > 1 {
                    l.emit(
                        "ExposeInvalidFormat",
                        Some(i),
                        w.span,
                        format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{raw}'"),
                    );
                }
            }
        }
    }

    /// COPY and ADD: their flags and words expanded, the .dockerignore and secret checks.
    fn copy(&self, l: &mut Linter, i: usize, ins: &Instruction, sources: &[Word], dest: &Word) {
        let is_add = matches!(ins.kind, InstructionKind::Add { .. });
        for flag in ["chown", "chmod", "checksum"] {
            if let Some(f) = ins.flag(flag) {
                let raw = f.value.clone().unwrap_or_default();
                self.word(l, i, &raw, f.value_span);
            }
        }
        let mut expanded = Vec::new();
        for s in sources {
            let v = self
                .word(l, i, &s.text, s.span)
                .unwrap_or_else(|| s.text.clone());
            expanded.push((s, v));
        }
        self.word(l, i, &dest.text, dest.span);
        let from_context = is_add || ins.flag("from").is_none();
        if let (Some(ignored), true) = (self.opts.ignored, from_context) {
            for (s, v) in &expanded {
                if v.starts_with("http://") || v.starts_with("https://") {
                    continue;
                }
                let path = words::clean_path(v);
                let root = path == "." || path == "/";
                if ignored(if root { "." } else { &path }) {
                    l.emit(
                        "CopyIgnoredFile",
                        Some(i),
                        s.span,
                        format!(
                            "Attempting to {} file {} that is excluded by .dockerignore",
                            if is_add { "Add" } else { "Copy" },
                            crate::frontend::dockerfile::syntax::quote::go_quote(path.as_bytes())
                        ),
                    );
                }
            }
        }
        let values: Vec<(&Word, String)> = expanded.iter().map(|(w, v)| (*w, v.clone())).collect();
        secrets::copy(l, i, ins, &values);
    }

    fn instruction(&mut self, l: &mut Linter, i: usize) {
        let df = self.df;
        let ins = &df.instructions[i];
        let name = ins.keyword.text.as_str();
        match &ins.kind {
            InstructionKind::Env(pairs) => self.env(l, i, ins, pairs),
            InstructionKind::Label(pairs) => {
                for kv in pairs {
                    self.word(l, i, &kv.key.text, kv.key.span);
                    if let Some(v) = &kv.value {
                        self.word(l, i, &v.text, v.span);
                    }
                }
                for kv in pairs {
                    self.legacy(l, i, ins, kv);
                }
            }
            InstructionKind::Arg(decls) => self.arg(l, i, decls),
            InstructionKind::Workdir(w) => self.workdir(l, i, w),
            InstructionKind::User(w) | InstructionKind::StopSignal(w) => {
                self.word(l, i, &w.text, w.span);
            }
            InstructionKind::Volume(ws) => {
                for w in ws {
                    self.word(l, i, &w.text, w.span);
                }
            }
            InstructionKind::Cmd(c) | InstructionKind::Entrypoint(c) => {
                let tracker = if matches!(ins.kind, InstructionKind::Cmd(_)) {
                    &mut self.cmd
                } else {
                    &mut self.entrypoint
                };
                Self::used_once(l, i, tracker, ins.span, name);
                if matches!(c, Command::Shell(_)) && !self.shell {
                    l.emit(
                        "JSONArgsRecommended",
                        Some(i),
                        c.span(),
                        format!("JSON arguments recommended for {name} to prevent unintended behavior related to OS signals"),
                    );
                }
            }
            InstructionKind::Healthcheck(h) => {
                let _: &Healthcheck = h;
                Self::used_once(l, i, &mut self.healthcheck, ins.span, name);
            }
            InstructionKind::Shell { .. } => self.shell = true,
            InstructionKind::Expose(ports) => self.expose(l, i, ports),
            InstructionKind::Copy { sources, dest } | InstructionKind::Add { sources, dest } => {
                self.copy(l, i, ins, sources, dest)
            }
            InstructionKind::Run(cmd) => {
                let mut mounts = Vec::new();
                for f in ins.flags.iter().filter(|f| f.name == "mount") {
                    let raw = f.value.clone().unwrap_or_default();
                    let v = self.word(l, i, &raw, f.value_span).unwrap_or(raw);
                    mounts.push(v);
                }
                let cwd = self.cwd.clone().unwrap_or_else(|| "/".into());
                secrets::run(l, i, ins, cmd, &mounts, &cwd, self.secret_targets);
            }
            _ => {}
        }
    }
}

/// `SecretsUsedInArgOrEnv`.
fn secret_key(l: &mut Linter, i: usize, kind: &str, key: &str, span: Span) {
    if words::secret_name(key) {
        l.secret_keys.insert(key.to_string());
        l.emit(
            "SecretsUsedInArgOrEnv",
            Some(i),
            span,
            format!(
                "Do not use ARG or ENV instructions for sensitive data ({kind} {})",
                crate::frontend::dockerfile::syntax::quote::go_quote(key.as_bytes())
            ),
        );
    }
}
