//! Dockerfile → `Program`: ARG/ENV scoping and expansion as BuildKit does it, stages, `COPY --from`,
//! `RUN --mount=type=secret`, and the image config each stage ends with.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::diag::{Diagnostic, Located, Result, SourceFile, Span, suggest};
use crate::frontend::dockerfile::syntax::ast::{
    Command, Dockerfile, Flag, Instruction, InstructionKind, KeyValue, Word,
};
use crate::frontend::dockerfile::syntax::ast::{
    HEALTHCHECK_FLAGS, Healthcheck as SyntaxHealthcheck, Heredoc,
};
use crate::frontend::mount::{self, Parsed};
use crate::frontend::shell;
use crate::frontend::{LowerOptions, join_path};
use crate::graph::entitlement::Entitlement;
use crate::graph::op::{
    ConfigOp, CopyOp, Healthcheck, HistoryEntry, Inherit, Network, Op, RunMount, RunOp, SecretMount,
};
use crate::graph::{NamedContext, NodeId, Program, Root};

const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
/// The image-config and variable state of a stage while its instructions are lowered.
#[derive(Clone)]
struct Stage {
    name: String,
    alias: Option<String>,
    fs: NodeId,
    /// ENV set in this stage (or inherited from a parent stage), in order of first setting.
    env: Vec<(String, String)>,
    /// The base image's environment, when it could be resolved: what `$VAR` falls back to after ENV.
    base_env: Vec<(String, String)>,
    /// ARGs declared in this stage: name → value (None: declared without any value).
    args: Vec<(String, Option<String>)>,
    cwd: Option<String>,
    user: Option<String>,
    /// `SHELL` in effect for shell-form commands (`None`: `/bin/sh -c`).
    shell: Option<Vec<String>>,
    config: ConfigOp,
    step: usize,
    steps: usize,
}

impl Stage {
    fn lookup(&self, name: &str) -> Option<String> {
        lookup(&self.env, &self.base_env, &self.args, name)
    }

    fn run_env(&self) -> Vec<(String, String)> {
        run_env(&self.env, &self.args)
    }

    fn arg_values(&self) -> Vec<(String, String)> {
        arg_values(&self.env, &self.args)
    }
}

// BuildKit's variable scoping, shared by every front end (a `.build` image has the same state).

/// What `$name` means in a stage: its ENV (last setting wins), then the base image's ENV, then its ARGs.
pub fn lookup(
    env: &[(String, String)],
    base_env: &[(String, String)],
    args: &[(String, Option<String>)],
    name: &str,
) -> Option<String> {
    if let Some((_, v)) = env.iter().rev().find(|(k, _)| k == name) {
        return Some(v.clone());
    }
    // The image's ENV is ENV too, and ENV wins over ARG.
    if let Some((_, v)) = base_env.iter().find(|(k, _)| k == name) {
        return Some(v.clone());
    }
    args.iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.clone())
}

/// Variables a RUN sees beyond the image env: ENV, then ARGs with a value that ENV does not shadow.
pub fn run_env(
    env: &[(String, String)],
    args: &[(String, Option<String>)],
) -> Vec<(String, String)> {
    let mut out = env.to_vec();
    for (k, v) in args {
        if let Some(v) = v
            && !out.iter().any(|(ek, _)| ek == k)
        {
            set(&mut out, k, v);
        }
    }
    out
}

/// Each ARG with the value a RUN's history shows for it (an ENV of the same name wins).
pub fn arg_values(
    env: &[(String, String)],
    args: &[(String, Option<String>)],
) -> Vec<(String, String)> {
    args.iter()
        .map(|(k, v)| {
            let value = env.iter().rev().find(|(ek, _)| ek == k).map(|(_, v)| v);
            (k.clone(), value.or(v.as_ref()).cloned().unwrap_or_default())
        })
        .collect()
}

pub fn set(list: &mut Vec<(String, String)>, key: &str, value: &str) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value.to_string(),
        None => list.push((key.to_string(), value.to_string())),
    }
}

/// A completed stage: its final state (for `FROM stage` and `COPY --from`) and its image config node.
struct Finished {
    state: Stage,
    config: NodeId,
}

struct Lowerer<'a> {
    df: &'a Dockerfile,
    opts: &'a LowerOptions,
    program: Program,
    /// Pre-FROM ARGs: name → value after `--build-arg` overrides.
    meta_args: Vec<(String, Option<String>)>,
    /// Every stage in file order: its FROM, the instructions after it, and its name (lower-cased).
    decls: Vec<(&'a Instruction, Vec<&'a Instruction>, Option<String>)>,
    /// Lowered stages, in file order. A stage is lowered when first needed, so `COPY --from` may name a
    /// stage defined further down, as in BuildKit.
    stages: Vec<Option<Finished>>,
    /// Stages being lowered right now, to report a cycle instead of recursing forever.
    busy: Vec<bool>,
    /// Leaves shared across stages: one node per image reference or named context.
    leaves: BTreeMap<String, NodeId>,
}

/// Lowers a parsed Dockerfile. The program's single root is the `--target` stage, or the last stage.
pub fn lower(df: &Dockerfile, opts: &LowerOptions) -> Result<Program> {
    crate::frontend::dockerfile::check::dockerfile(df)?;
    let mut l = Lowerer {
        df,
        opts,
        program: Program::default(),
        meta_args: Vec::new(),
        decls: Vec::new(),
        stages: Vec::new(),
        busy: Vec::new(),
        leaves: BTreeMap::new(),
    };
    for ins in &df.instructions {
        match &ins.kind {
            InstructionKind::From { alias, .. } => {
                let alias = alias.as_ref().map(|a| a.text.to_ascii_lowercase());
                l.decls.push((ins, Vec::new(), alias));
            }
            InstructionKind::Arg(decls) if l.decls.is_empty() => {
                for d in decls {
                    let value = l.arg_value(d, &|name| l.meta_lookup(name))?;
                    l.meta_args.retain(|(k, _)| *k != d.key.text);
                    l.meta_args.push((d.key.text.clone(), value));
                }
            }
            _ => match l.decls.last_mut() {
                Some((_, body, _)) => body.push(ins),
                None => unreachable!("check::dockerfile puts FROM first"),
            },
        }
    }
    l.stages = l.decls.iter().map(|_| None).collect();
    l.busy = vec![false; l.decls.len()];
    let names: Vec<&str> = l
        .decls
        .iter()
        .filter_map(|(_, _, a)| a.as_deref())
        .collect();
    let target = match &opts.target {
        Some(t) => {
            let wanted = t.to_ascii_lowercase();
            l.decls
                .iter()
                .position(|(_, _, a)| a.as_deref() == Some(wanted.as_str()))
                .ok_or_else(|| {
                    let mut d = Diagnostic::input(format!(
                        "target stage `{t}` not found in {}",
                        df.file.name
                    ));
                    if let Some(at) = &opts.target_at {
                        d = d.label(at.clone(), "");
                    }
                    if let Some(s) = suggest(t, names.iter().copied()) {
                        d = d.help(format!("did you mean `{s}`?"));
                    } else if !names.is_empty() {
                        d = d.help(format!("the stages are: {}", names.join(", ")));
                    }
                    d
                })?
        }
        None => l.decls.len() - 1,
    };
    // As in BuildKit, only the target and what it needs are lowered: a stage nothing uses cannot fail the
    // build (its syntax was checked when parsing).
    l.lower_stage(target)?;
    let finished = l.stages[target].as_ref().expect("just lowered");
    let root = Root {
        name: finished.state.name.clone(),
        node: finished.config,
    };
    l.program.roots.push(root);
    Ok(l.program)
}

impl Lowerer<'_> {
    fn file(&self) -> &Arc<SourceFile> {
        &self.df.file
    }

    fn error(&self, span: Span, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::at(self.file(), span, msg)
    }

    fn at(&self, span: Span) -> Option<Located> {
        Some(Located::new(self.file(), span))
    }

    /// A global (pre-FROM) ARG, or one of BuildKit's automatic platform args, which are global without
    /// being declared. kiln builds for linux/amd64 on linux/amd64.
    fn meta_lookup(&self, name: &str) -> Option<String> {
        if let Some((_, v)) = self.meta_args.iter().rev().find(|(k, _)| k == name) {
            return v.clone();
        }
        if let Some(v) = self
            .opts
            .build_args
            .get(name)
            .filter(|_| builtin_arg(name).is_some())
        {
            return Some(v.clone());
        }
        builtin_arg(name).map(String::from)
    }

    fn expand(&self, word: &Word, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
        shell::expand_word(&word.text, self.df.escape, lookup)
            .map_err(|e| self.error(word.span, format!("cannot expand `{}`: {e}", word.text)))
    }

    fn expand_flag(&self, flag: &Flag, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
        let raw = flag.value.clone().unwrap_or_default();
        shell::expand_word(&raw, self.df.escape, lookup)
            .map_err(|e| self.error(flag.value_span, format!("cannot expand `{raw}`: {e}")))
    }

    /// An ARG's value: a `--build-arg` wins over the default; a bare `ARG x` in a stage takes the global.
    fn arg_value(
        &self,
        d: &KeyValue,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<String>> {
        if let Some(v) = self.opts.build_args.get(&d.key.text) {
            return Ok(Some(v.clone()));
        }
        match &d.value {
            Some(w) => Ok(Some(self.expand(w, lookup)?)),
            None => Ok(None),
        }
    }

    fn reject_flags(&self, ins: &Instruction, allowed: &[&str]) -> Result<()> {
        for f in &ins.flags {
            if !allowed.contains(&f.name.as_str()) {
                let mut d = self.error(
                    f.span,
                    format!("unknown flag `--{}` for {}", f.name, ins.kind.name()),
                );
                d = match suggest(&f.name, allowed.iter().copied()) {
                    Some(s) => d.help(format!("did you mean `--{s}`?")),
                    None if allowed.is_empty() => {
                        d.help(format!("{} takes no flags", ins.kind.name()))
                    }
                    None => d.help(format!(
                        "{} accepts: {}",
                        ins.kind.name(),
                        allowed
                            .iter()
                            .map(|a| format!("--{a}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                };
                return Err(d);
            }
        }
        Ok(())
    }

    /// Lowers stage `i` (its FROM and instructions) unless that is done already.
    fn lower_stage(&mut self, i: usize) -> Result<()> {
        if self.stages[i].is_some() {
            return Ok(());
        }
        let (from, body, _) = self.decls[i].clone();
        if std::mem::replace(&mut self.busy[i], true) {
            return Err(self
                .error(from.keyword.span, "this stage depends on itself")
                .help("a stage cannot use (through FROM or --from) a stage that uses it"));
        }
        let InstructionKind::From { image, alias } = &from.kind else {
            unreachable!("declarations start with FROM")
        };
        let mut stage = self.from(i, from, image, alias.as_ref())?;
        for ins in body {
            self.instruction(&mut stage, ins)?;
        }
        self.finish_stage(i, stage);
        self.busy[i] = false;
        Ok(())
    }

    /// The stage called `name` (or with index `name`), lowered if it was not yet.
    fn stage_by_name(&mut self, name: &str) -> Result<Option<&Finished>> {
        let lower = name.to_ascii_lowercase();
        let found = self
            .decls
            .iter()
            .position(|(_, _, alias)| alias.as_deref() == Some(lower.as_str()));
        match found {
            Some(i) => {
                self.lower_stage(i)?;
                Ok(self.stages[i].as_ref())
            }
            None => Ok(None),
        }
    }

    /// A leaf node for an image reference (or `scratch`), shared by every use.
    fn image_leaf(&mut self, reference: &str, at: Span) -> NodeId {
        let key = format!("image:{reference}");
        if let Some(&id) = self.leaves.get(&key) {
            return id;
        }
        let (op, name) = if reference == "scratch" {
            (Op::Scratch, "scratch".to_string())
        } else {
            (
                Op::Image {
                    reference: reference.to_string(),
                },
                format!("FROM {reference}"),
            )
        };
        let at = self.at(at);
        let id = self.program.push(op, vec![], name, at);
        self.leaves.insert(key, id);
        id
    }

    fn context_leaf(&mut self, name: &str) -> NodeId {
        let key = format!("context:{name}");
        if let Some(&id) = self.leaves.get(&key) {
            return id;
        }
        let id = self.program.push(
            Op::Context {
                name: name.to_string(),
                excludes: if name == "context" {
                    self.opts.excludes.clone()
                } else {
                    Vec::new()
                },
            },
            vec![],
            format!("context {name}"),
            None,
        );
        self.leaves.insert(key, id);
        id
    }

    fn from(
        &mut self,
        index: usize,
        ins: &Instruction,
        image: &Word,
        alias: Option<&Word>,
    ) -> Result<Stage> {
        self.reject_flags(ins, &["platform"])?;
        let mut reference = self.expand(image, &|n| self.meta_lookup(n))?;
        if reference.is_empty() && self.opts.lenient {
            // Compile-only: the reference stays as written, an unresolved leaf like any image.
            reference = image.text.clone();
        }
        if reference.is_empty() {
            return Err(self.error(image.span, "FROM names an empty image").help(
                "a build argument used here may be unset; give it a default or pass --build-arg",
            ));
        }
        let alias = alias.map(|a| a.text.to_ascii_lowercase());
        let name = alias.clone().unwrap_or_else(|| format!("stage-{index}"));
        let steps = 1 + self.steps_after(ins);
        let mut stage = if let Some(parent) = self.stage_by_name(&reference)? {
            // FROM an earlier stage continues from its filesystem and config.
            // Its history stays: the parent's layers are in this image, and each needs its entry.
            let mut s = parent.state.clone();
            s.args.clear();
            s
        } else {
            let resolved = match self.opts.contexts.get(&reference) {
                Some(NamedContext::Image(r)) => r.clone(),
                _ => reference.clone(),
            };
            let leaf = match self.opts.contexts.get(&reference) {
                Some(NamedContext::Image(r)) => {
                    let r = r.clone();
                    self.image_leaf(&r, image.span)
                }
                Some(NamedContext::Dir(_)) => {
                    return Err(self
                        .error(
                            image.span,
                            format!("build context `{reference}` is a directory, not an image"),
                        )
                        .help("use `--build-context NAME=oci-layout://DIR` for a base image"));
                }
                None => self.image_leaf(&reference, image.span),
            };
            Stage {
                name: String::new(),
                alias: None,
                fs: leaf,
                env: Vec::new(),
                base_env: self.opts.image_env.get(&resolved),
                args: Vec::new(),
                cwd: None,
                user: None,
                shell: None,
                config: ConfigOp::default(),
                step: 0,
                steps: 0,
            }
        };
        stage.name = name;
        stage.alias = alias;
        stage.step = 1;
        stage.steps = steps;
        Ok(stage)
    }

    /// How many instructions of this stage follow its FROM (for `[stage k/n]` names).
    fn steps_after(&self, from: &Instruction) -> usize {
        self.df
            .instructions
            .iter()
            .skip_while(|i| !std::ptr::eq(*i, from))
            .skip(1)
            .take_while(|i| !matches!(i.kind, InstructionKind::From { .. }))
            .filter(|i| {
                matches!(
                    i.kind,
                    InstructionKind::Run(_)
                        | InstructionKind::Copy { .. }
                        | InstructionKind::Workdir(_)
                )
            })
            .count()
    }

    fn finish_stage(&mut self, index: usize, stage: Stage) {
        let mut config = stage.config.clone();
        config.env = stage.env.clone();
        config.cwd = stage.cwd.clone();
        config.user = stage.user.clone();
        let name = format!("[{}] image config", stage.name);
        let config = self
            .program
            .push(Op::Config(Box::new(config)), vec![stage.fs], name, None);
        self.stages[index] = Some(Finished {
            state: stage,
            config,
        });
    }

    fn step_name(&self, stage: &mut Stage, ins: &Instruction) -> String {
        stage.step += 1;
        let text = instruction_text(self.file(), ins);
        format!("[{} {}/{}] {}", stage.name, stage.step, stage.steps, text)
    }

    fn push_fs(
        &mut self,
        stage: &mut Stage,
        ins: &Instruction,
        op: Op,
        extra_inputs: Vec<NodeId>,
        created_by: String,
    ) {
        let name = self.step_name(stage, ins);
        let mut inputs = vec![stage.fs];
        inputs.extend(extra_inputs);
        let at = self.at(ins.span);
        stage.fs = self.program.push(op, inputs, name, at);
        stage.config.history.push(HistoryEntry {
            created_by,
            layer: true,
        });
    }

    fn config_history(stage: &mut Stage, created_by: String) {
        stage.config.history.push(HistoryEntry {
            created_by,
            layer: false,
        });
    }

    fn instruction(&mut self, stage: &mut Stage, ins: &Instruction) -> Result<()> {
        match &ins.kind {
            InstructionKind::From { .. } => unreachable!("FROM handled by the caller"),
            InstructionKind::Arg(decls) => {
                self.reject_flags(ins, &[])?;
                let mut shown = Vec::new();
                for d in decls {
                    let value = match self.arg_value(d, &|n| stage.lookup(n))? {
                        Some(v) => Some(v),
                        // A bare `ARG x` in a stage brings the pre-FROM value into scope.
                        None => self.meta_lookup(&d.key.text),
                    };
                    stage.args.retain(|(k, _)| *k != d.key.text);
                    stage.args.push((d.key.text.clone(), value.clone()));
                    shown.push((d.key.text.clone(), value));
                }
                Self::config_history(stage, arg_history(&shown));
            }
            InstructionKind::Env(pairs) => {
                self.reject_flags(ins, &[])?;
                let mut shown = Vec::new();
                for kv in pairs {
                    let key = self.expand(&kv.key, &|n| stage.lookup(n))?;
                    let value = match &kv.value {
                        Some(v) => self.expand(v, &|n| stage.lookup(n))?,
                        None => String::new(),
                    };
                    shown.push(format!("{key}={value}"));
                    set(&mut stage.env, &key, &value);
                }
                Self::config_history(stage, format!("ENV {}", shown.join(" ")));
            }
            InstructionKind::Label(pairs) => {
                self.reject_flags(ins, &[])?;
                let mut shown = Vec::new();
                for kv in pairs {
                    let key = self.expand(&kv.key, &|n| stage.lookup(n))?;
                    let value = match &kv.value {
                        Some(v) => self.expand(v, &|n| stage.lookup(n))?,
                        None => String::new(),
                    };
                    shown.push(format!("{key}={value}"));
                    set(&mut stage.config.labels, &key, &value);
                }
                Self::config_history(stage, format!("LABEL {}", shown.join(" ")));
            }
            InstructionKind::Workdir(w) => {
                self.reject_flags(ins, &[])?;
                let dir = self.expand(w, &|n| stage.lookup(n))?;
                let path = join_path(stage.cwd.as_deref().unwrap_or("/"), &dir);
                stage.cwd = Some(path.clone());
                self.push_fs(
                    stage,
                    ins,
                    Op::Mkdir { path: path.clone() },
                    vec![],
                    format!("WORKDIR {path}"),
                );
            }
            InstructionKind::User(w) => {
                self.reject_flags(ins, &[])?;
                let user = self.expand(w, &|n| stage.lookup(n))?;
                Self::config_history(stage, format!("USER {user}"));
                stage.user = Some(user);
            }
            InstructionKind::Cmd(c) => {
                self.reject_flags(ins, &[])?;
                let args = command_args(c, stage.shell.as_deref());
                Self::config_history(stage, format!("CMD {}", json_list(&args)));
                stage.config.cmd = Inherit::Set(args);
            }
            InstructionKind::Entrypoint(c) => {
                self.reject_flags(ins, &[])?;
                let args = command_args(c, stage.shell.as_deref());
                Self::config_history(stage, format!("ENTRYPOINT {}", json_list(&args)));
                stage.config.entrypoint = Inherit::Set(args);
                // As in docker: a new ENTRYPOINT drops a CMD inherited from the base image.
                if stage.config.cmd == Inherit::Base {
                    stage.config.cmd = Inherit::Clear;
                }
            }
            InstructionKind::Run(c) => self.run(stage, ins, c)?,
            InstructionKind::Copy { sources, dest } => {
                self.copy(stage, ins, sources, dest, false)?
            }
            InstructionKind::Add { sources, dest } => self.copy(stage, ins, sources, dest, true)?,
            InstructionKind::Onbuild(trigger) => {
                self.reject_flags(ins, &[])?;
                let text = instruction_text(self.file(), trigger);
                Self::config_history(stage, format!("ONBUILD {text}"));
                stage.config.onbuild.push(text);
            }
            InstructionKind::Healthcheck(h) => self.healthcheck(stage, ins, h)?,
            InstructionKind::Shell { args, span } => {
                self.reject_flags(ins, &[])?;
                if args.is_empty() {
                    return Err(self
                        .error(*span, "SHELL needs at least the shell program")
                        .help("write `SHELL [\"/bin/bash\", \"-c\"]`"));
                }
                Self::config_history(stage, format!("SHELL {}", json_list(args)));
                stage.shell = Some(args.clone());
                stage.config.shell = Some(args.clone());
            }
            InstructionKind::StopSignal(w) => {
                self.reject_flags(ins, &[])?;
                let sig = self.expand(w, &|n| stage.lookup(n))?;
                Self::config_history(stage, format!("STOPSIGNAL {sig}"));
                stage.config.stop_signal = Some(sig);
            }
            InstructionKind::Expose(words) => {
                self.reject_flags(ins, &[])?;
                let mut ports = Vec::new();
                for w in words {
                    for p in shell::expand_words(&w.text, self.df.escape, &|n| stage.lookup(n))
                        .map_err(|e| {
                            self.error(w.span, format!("cannot expand `{}`: {e}", w.text))
                        })?
                    {
                        ports.extend(expose_ports(&p).ok_or_else(|| {
                            self.error(w.span, format!("invalid port `{p}`"))
                                .help("write a port or range with an optional protocol: `80`, `53/udp`, `8000-8010/tcp`")
                        })?);
                    }
                }
                Self::config_history(stage, format!("EXPOSE {}", ports.join(" ")));
                for p in ports {
                    if !stage.config.exposed.contains(&p) {
                        stage.config.exposed.push(p);
                    }
                }
            }
            InstructionKind::Volume(words) => {
                self.reject_flags(ins, &[])?;
                let mut vols = Vec::new();
                for w in words {
                    let v = self.expand(w, &|n| stage.lookup(n))?;
                    if v.trim().is_empty() {
                        return Err(self.error(w.span, "VOLUME names an empty path"));
                    }
                    vols.push(v);
                }
                Self::config_history(stage, format!("VOLUME {}", json_list(&vols)));
                for v in vols {
                    if !stage.config.volumes.contains(&v) {
                        stage.config.volumes.push(v);
                    }
                }
            }
            InstructionKind::Maintainer(w) => {
                self.reject_flags(ins, &[])?;
                let who = self.expand(w, &|n| stage.lookup(n))?;
                Self::config_history(stage, format!("MAINTAINER {who}"));
                stage.config.author = Some(who);
            }
        }
        Ok(())
    }

    /// A RUN's argv. Shell form runs through the stage's shell; heredocs follow BuildKit: a RUN that is
    /// only `<<EOF` runs the heredoc's body as the script, otherwise the bodies are appended to the command
    /// text for the shell to read.
    fn run_args(&self, stage: &Stage, ins: &Instruction, cmd: &Command) -> Vec<String> {
        let Command::Shell(w) = cmd else {
            return command_args(cmd, stage.shell.as_deref());
        };
        if ins.heredocs.is_empty() {
            return command_args(cmd, stage.shell.as_deref());
        }
        let mut shell: Vec<String> = stage
            .shell
            .clone()
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
        shell.push(ins.shell_script(w));
        shell
    }

    fn healthcheck(
        &mut self,
        stage: &mut Stage,
        ins: &Instruction,
        h: &SyntaxHealthcheck,
    ) -> Result<()> {
        self.reject_flags(ins, &HEALTHCHECK_FLAGS)?;
        let check = match h {
            SyntaxHealthcheck::None(_) => {
                if let Some(f) = ins.flags.first() {
                    return Err(self.error(f.span, "HEALTHCHECK NONE takes no flags"));
                }
                let none = Healthcheck {
                    test: vec!["NONE".into()],
                    ..Healthcheck::default()
                };
                Self::config_history(stage, healthcheck_history(&none));
                stage.config.healthcheck = Inherit::Set(none);
                return Ok(());
            }
            SyntaxHealthcheck::Cmd(c) => {
                let test = match c {
                    Command::Shell(w) => vec!["CMD-SHELL".to_string(), w.text.clone()],
                    Command::Exec { args, .. } => {
                        let mut t = vec!["CMD".to_string()];
                        t.extend(args.iter().cloned());
                        t
                    }
                };
                let mut check = Healthcheck {
                    test,
                    ..Healthcheck::default()
                };
                for f in &ins.flags {
                    let v = self.expand_flag(f, &|n| stage.lookup(n))?;
                    let bad = |what: &str| {
                        self.error(
                            f.value_span,
                            format!("invalid {what} `{v}` for --{}", f.name),
                        )
                    };
                    match f.name.as_str() {
                        "retries" => {
                            check.retries = v
                                .parse()
                                .map_err(|_| bad("number").help("give a whole number"))?
                        }
                        name => {
                            let d = parse_duration(&v).ok_or_else(|| {
                                bad("duration")
                                    .help("write a duration such as `30s`, `1m30s` or `500ms`")
                            })?;
                            // Docker's rule: durations, when given, must be at least 1ms.
                            if d != 0 && d < 1_000_000 {
                                return Err(bad("duration").help("durations must be at least 1ms"));
                            }
                            match name {
                                "interval" => check.interval = d,
                                "timeout" => check.timeout = d,
                                "start-period" => check.start_period = d,
                                _ => check.start_interval = d,
                            }
                        }
                    }
                }
                check
            }
        };
        Self::config_history(stage, healthcheck_history(&check));
        stage.config.healthcheck = Inherit::Set(check);
        Ok(())
    }

    fn run(&mut self, stage: &mut Stage, ins: &Instruction, cmd: &Command) -> Result<()> {
        self.reject_flags(ins, &["mount", "network", "security"])?;
        let insecure = match ins.flag("security") {
            None => false,
            Some(f) => match self.expand_flag(f, &|n| stage.lookup(n))?.as_str() {
                "sandbox" => false,
                "insecure" => true,
                other => {
                    return Err(self
                        .error(f.value_span, format!("unknown security mode `{other}`"))
                        .help("security modes are `sandbox` (the default) and `insecure`"));
                }
            },
        };
        let mut secrets = Vec::new();
        let mut mounts: Vec<RunMount> = Vec::new();
        let mut extra_inputs = Vec::new();
        let mut network = Network::Default;
        let mut asks = Vec::new();
        if insecure && let Some(f) = ins.flag("security") {
            asks.extend(
                self.at(f.span)
                    .map(|at| (Entitlement::SecurityInsecure, at)),
            );
        }
        for f in &ins.flags {
            match f.name.as_str() {
                "mount" => {
                    let m = match self.mount(f, stage, &mut extra_inputs)? {
                        Parsed::Secret(m) => m,
                        Parsed::Other(m) => {
                            mounts.push(m);
                            continue;
                        }
                        Parsed::Bind { .. } => unreachable!("binds are resolved by mount()"),
                    };
                    if let Some(dup) = secrets
                        .iter()
                        .find(|s: &&SecretMount| s.target.is_some() && s.target == m.target)
                    {
                        return Err(self.error(
                            f.value_span,
                            format!(
                                "secret `{}` is mounted at the same target as secret `{}`",
                                m.id, dup.id
                            ),
                        ));
                    }
                    secrets.push(m);
                }
                "network" => {
                    let v = self.expand_flag(f, &|n| stage.lookup(n))?;
                    network = Network::parse(&v).ok_or_else(|| {
                        let d = self.error(f.value_span, format!("unknown network mode `{v}`"));
                        match suggest(&v, ["default", "none", "host"]) {
                            Some(s) => d.help(format!("did you mean `{s}`?")),
                            None => d.help("network modes are: default, none, host"),
                        }
                    })?;
                    if network == Network::Host {
                        asks.extend(self.at(f.span).map(|at| (Entitlement::NetworkHost, at)));
                    }
                }
                // Read above, before the mounts.
                "security" => {}
                _ => unreachable!("flags were checked"),
            }
        }
        let args = self.run_args(stage, ins, cmd);
        let env = stage.run_env();
        // History reads as BuildKit's: `RUN |N K=V ... cmd # buildkit`, with every build arg of the stage
        // (an ENV of the same name wins) and without the mount flags. A secret can never appear here:
        // secrets are not variables, and their values never reach lowering.
        let created_by = run_history(&stage.arg_values(), &args);
        let op = Op::Run(RunOp {
            args,
            env,
            cwd: stage.cwd.clone(),
            user: stage.user.clone(),
            network,
            insecure,
            secrets,
            mounts,
        });
        self.push_fs(stage, ins, op, extra_inputs, created_by);
        self.program.nodes[stage.fs].asks = asks;
        Ok(())
    }

    /// One `--mount`: parsed by `mount::parse`, with `from=` resolved to an input of the Run node.
    fn mount(&mut self, flag: &Flag, stage: &Stage, inputs: &mut Vec<NodeId>) -> Result<Parsed> {
        let text = self.expand_flag(flag, &|n| stage.lookup(n))?;
        let base = flag.value_span.start;
        // Spans inside the expanded text are only exact when expansion changed nothing.
        let exact = flag.value.as_deref() == Some(text.as_str());
        let span_of = |s: Span| {
            if exact {
                Span::new(base + s.start, base + s.end)
            } else {
                flag.value_span
            }
        };
        let parsed = mount::parse(&text, stage.cwd.as_deref().unwrap_or("/"))
            .map_err(|e| self.error(span_of(e.span), e.message).help(e.help))?;
        Ok(match parsed {
            Parsed::Bind {
                target,
                source,
                from,
                readwrite,
            } => {
                let node = match &from {
                    Some((name, span)) => self.copy_from(span_of(*span), name)?,
                    None => self.context_leaf("context"),
                };
                // Inputs: 0 is the rootfs; each distinct source is added once.
                let input = match inputs.iter().position(|&i| i == node) {
                    Some(p) => p + 1,
                    None => {
                        inputs.push(node);
                        inputs.len()
                    }
                };
                Parsed::Other(RunMount::Bind {
                    target,
                    input,
                    source,
                    readwrite,
                })
            }
            other => other,
        })
    }

    fn copy(
        &mut self,
        stage: &mut Stage,
        ins: &Instruction,
        sources: &[Word],
        dest: &Word,
        add: bool,
    ) -> Result<()> {
        let what = if add { "ADD" } else { "COPY" };
        let flags: &[&str] = if add {
            &[
                "from",
                "chown",
                "chmod",
                "link",
                "checksum",
                "keep-git-dir",
                "parents",
                "exclude",
            ]
        } else {
            &["from", "chown", "chmod", "link", "parents", "exclude"]
        };
        self.reject_flags(ins, flags)?;
        let lookup = |n: &str| stage.lookup(n);
        let heredocs: Vec<&Heredoc> = sources
            .iter()
            .filter_map(|s| {
                ins.heredocs.iter().find(|h| {
                    s.text
                        .trim_start_matches('<')
                        .trim_start_matches('-')
                        .trim_matches(['"', '\''])
                        == h.name.text
                        && s.text.starts_with("<<")
                })
            })
            .collect();
        if !heredocs.is_empty() && heredocs.len() != sources.len() {
            return Err(self
                .error(
                    ins.keyword.span,
                    format!("{what} mixing heredocs and files is not supported yet"),
                )
                .help("split it into one instruction for the heredocs and one for the files"));
        }
        let mut srcs = Vec::new();
        let mut remote: Vec<(String, Span)> = Vec::new();
        for s in sources {
            if s.text.starts_with("<<") && !heredocs.is_empty() {
                continue;
            }
            let mut v = self.expand(s, &lookup)?;
            if v.is_empty() && self.opts.lenient {
                v = s.text.clone();
            }
            if v.is_empty() {
                return Err(self.error(s.span, format!("{what} source is empty after expansion")));
            }
            if add && (v.contains("://") || v.starts_with("git@")) {
                remote.push((v, s.span));
                continue;
            }
            srcs.push(v);
        }
        // Mixing URLs and files needs a source tree per origin; a build would refuse the URL anyway, so
        // compile-only mode keeps the first URL as the graph leaf.
        if !remote.is_empty() && sources.len() != 1 && !self.opts.lenient {
            return Err(self
                .error(remote[0].1, "ADD of a URL takes exactly one source")
                .help("use one ADD per URL"));
        }
        let mut inline = Vec::new();
        for h in &heredocs {
            let content = if h.expand {
                shell::expand_raw(&h.text(), self.df.escape, &lookup).map_err(|e| {
                    self.error(h.body.span, format!("cannot expand the heredoc: {e}"))
                })?
            } else {
                h.text()
            };
            srcs.push(h.name.text.clone());
            inline.push((h.name.text.clone(), content));
        }
        let raw_dest = self.expand(dest, &lookup)?;
        let mut dest_path = join_path(stage.cwd.as_deref().unwrap_or("/"), &raw_dest);
        if (raw_dest.ends_with('/') || raw_dest == "." || raw_dest.ends_with("/."))
            && !dest_path.ends_with('/')
        {
            dest_path.push('/');
        }
        if srcs.len() > 1 && !dest_path.ends_with('/') && !self.opts.lenient {
            return Err(self
                .error(
                    dest.span,
                    "when copying several sources, the destination must be a directory",
                )
                .help(format!("end it with a slash: `{raw_dest}/`")));
        }
        let mut chown = None;
        let mut chmod = None;
        let mut checksum = None;
        let mut keep_git_dir = false;
        let mut excludes = Vec::new();
        let mut parents = false;
        let mut source_node = None;
        for f in &ins.flags {
            let v = self.expand_flag(f, &lookup)?;
            match f.name.as_str() {
                "chown" => chown = Some(v),
                "chmod" => {
                    chmod = Some(
                        u32::from_str_radix(&v, 8)
                            .ok()
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(|| {
                                self.error(f.value_span, format!("invalid --chmod value `{v}`"))
                                    .help("give an octal mode such as `644` or `0755`")
                            })?,
                    )
                }
                "from" => source_node = Some(self.copy_from(f.value_span, &v)?),
                // Every kiln layer is already independent of what lies below it in the cache.
                "link" => {}
                "checksum" => checksum = Some(v),
                "keep-git-dir" => {
                    keep_git_dir = crate::options::parse_bool(Some(&v)).unwrap_or(true)
                }
                "exclude" => {
                    if v.is_empty() {
                        return Err(self.error(f.span, "--exclude needs a pattern"));
                    }
                    excludes.push(v)
                }
                "parents" => {
                    parents = crate::options::parse_bool(
                        Some(&v).filter(|v| !v.is_empty()).map(|v| v.as_str()),
                    )
                    .ok_or_else(|| self.error(f.value_span, "--parents takes true or false"))?
                }
                _ => unreachable!("flags were checked or refused"),
            }
        }
        let source = match source_node {
            _ if !remote.is_empty() => {
                let (url, span) = remote.remove(0);
                // The fetched file is the single entry of its source tree, named like the URL's end.
                let name = url
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or("download")
                    .to_string();
                srcs.push(name);
                let at = self.at(span);
                let op = Op::Remote {
                    url: url.clone(),
                    checksum: checksum.clone(),
                    keep_git_dir,
                };
                self.program.push(op, vec![], format!("ADD {url}"), at)
            }
            Some(_) if !inline.is_empty() => {
                return Err(self
                    .error(
                        ins.keyword.span,
                        format!("{what} --from cannot be used with heredocs"),
                    )
                    .help("heredocs are the source; drop --from"));
            }
            Some(n) => n,
            None if !inline.is_empty() => {
                let at = self.at(ins.span);
                self.program.push(
                    Op::Inline { files: inline },
                    vec![],
                    "heredoc files".into(),
                    at,
                )
            }
            None => self.context_leaf("context"),
        };
        let created_by = copy_history(add, &srcs, &dest_path);
        let op = Op::Copy(CopyOp {
            sources: srcs,
            dest: dest_path,
            chown,
            chmod,
            extract: add,
            excludes,
            parents,
        });
        self.push_fs(stage, ins, op, vec![source], created_by);
        Ok(())
    }

    /// `--from=` names an earlier stage (by name or index), a named build context, or an image.
    fn copy_from(&mut self, span: Span, value: &str) -> Result<NodeId> {
        if let Some(s) = self.stage_by_name(value)? {
            return Ok(s.state.fs);
        }
        if let Ok(index) = value.parse::<usize>() {
            if index >= self.decls.len() {
                return Err(self
                    .error(span, format!("stage index {index} does not exist"))
                    .help(format!(
                        "the Dockerfile has {} stage(s), numbered from 0",
                        self.decls.len()
                    )));
            }
            self.lower_stage(index)?;
            return Ok(self.stages[index].as_ref().expect("just lowered").state.fs);
        }
        match self.opts.contexts.get(value).cloned() {
            Some(NamedContext::Dir(_)) => return Ok(self.context_leaf(value)),
            Some(NamedContext::Image(r)) => return Ok(self.image_leaf(&r, span)),
            None => {}
        }
        if value.contains(['/', ':', '@']) {
            let r = value.to_string();
            return Ok(self.image_leaf(&r, span));
        }
        let names: Vec<&str> = self
            .decls
            .iter()
            .filter_map(|(_, _, a)| a.as_deref())
            .collect();
        let d = self.error(span, format!("no stage named `{value}`"));
        Err(match suggest(value, names.iter().copied()) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None if names.is_empty() => d.help(
                "name a stage with `FROM image AS name`, or write a full image reference such as `busybox:latest`",
            ),
            None => d.help(format!(
                "the stages are: {}; for an image write its full reference such as `busybox:latest`",
                names.join(", ")
            )),
        })
    }
}

pub use crate::frontend::dockerfile::syntax::ast::builtin_arg;

/// Shell form runs through `shell` (the stage's `SHELL`, else `/bin/sh -c`); exec form as written.
fn command_args(c: &Command, shell: Option<&[String]>) -> Vec<String> {
    match c {
        Command::Shell(w) => {
            let mut v: Vec<String> = match shell {
                Some(s) => s.to_vec(),
                None => DEFAULT_SHELL.iter().map(|s| s.to_string()).collect(),
            };
            v.push(w.text.clone());
            v
        }
        Command::Exec { args, .. } => args.clone(),
    }
}

/// `EXPOSE` words as config keys: `80` → `80/tcp`, `53/UDP` → `53/udp`, `8000-8002` → each port.
pub fn expose_ports(word: &str) -> Option<Vec<String>> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return None;
    }
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (a.parse::<u16>().ok()?, b.parse::<u16>().ok()?),
        None => {
            let p = ports.parse::<u16>().ok()?;
            (p, p)
        }
    };
    (lo <= hi).then(|| (lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// A Go duration (`1h2m3s`, `1.5s`, `300ms`, `10us`, `0`) in nanoseconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Some(total as u64)
}

pub fn json_list(args: &[String]) -> String {
    serde_json::to_string(args).unwrap_or_default()
}

// History entries are made from what an instruction means, never from how it was spelled, so that a
// `.build` file that means the same (`kiln convert`'s output) gives the same node digests.

/// `RUN |N K=V ... cmd # buildkit`, as BuildKit writes it, without the mount flags. A secret can never
/// appear here: secrets are not variables, and their values never reach lowering.
pub fn run_history(arg_values: &[(String, String)], args: &[String]) -> String {
    let mut created_by = String::from("RUN ");
    if !arg_values.is_empty() {
        created_by.push_str(&format!("|{} ", arg_values.len()));
        for (k, v) in arg_values {
            created_by.push_str(&format!("{k}={v} "));
        }
    }
    created_by.push_str(&args.join(" "));
    created_by.push_str(" # buildkit");
    created_by
}

/// `COPY src... dest # buildkit` (BuildKit leaves `--from` and the other flags out too).
pub fn copy_history(add: bool, sources: &[String], dest: &str) -> String {
    let what = if add { "ADD" } else { "COPY" };
    format!("{what} {} {dest} # buildkit", sources.join(" "))
}

/// `ARG K=V K2`: each declared name with the value it took.
pub fn arg_history(decls: &[(String, Option<String>)]) -> String {
    let shown: Vec<String> = decls
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .collect();
    format!("ARG {}", shown.join(" "))
}

pub fn healthcheck_history(h: &Healthcheck) -> String {
    match h.test.first().map(String::as_str) {
        Some("NONE") => "HEALTHCHECK NONE".to_string(),
        _ => format!("HEALTHCHECK {}", json_list(&h.test)),
    }
}

/// The instruction's source text on one line, for step names and history.
fn instruction_text(file: &SourceFile, ins: &Instruction) -> String {
    ins.text(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_path_normalises() {
        assert_eq!(join_path("/app", "src"), "/app/src");
        assert_eq!(join_path("/app", "/x/../y"), "/y");
        assert_eq!(join_path("/", "../../etc"), "/etc");
        assert_eq!(join_path("/a", "."), "/a");
    }
}
