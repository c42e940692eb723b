//! Dockerfile → `Program`: ARG/ENV scoping and expansion as BuildKit does it, stages, `COPY --from`,
//! `RUN --mount=type=secret`, and the image config each stage ends with.

mod copy;
mod instruction;
mod onbuild;
mod run;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::diag::{Diagnostic, Located, Result, SourceFile, Span, suggest};
use crate::frontend::dockerfile::syntax::ast::{
    Command, Dockerfile, Flag, Instruction, InstructionKind, KeyValue, Word,
};
use crate::frontend::dockerfile::syntax::ast::{
    HEALTHCHECK_FLAGS, Healthcheck as SyntaxHealthcheck, Heredoc,
};
use crate::frontend::image::{
    ImageState, arg_history, builtin_arg, copy_history, expose_ports, healthcheck_history,
    json_list, parse_duration, platform_arg, run_history, set,
};
use crate::frontend::mount::{self, Parsed};
use crate::frontend::shell;
use crate::frontend::{LowerOptions, join_path};
use crate::graph::entitlement::Entitlement;
use crate::graph::op::{
    CacheSeed, CopyOp, Healthcheck, HistoryEntry, Inherit, Network, Op, RunMount, RunOp,
    SecretMount,
};
use crate::graph::{NamedContext, NodeId, Program, Root};
use crate::platform::Platform;

const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
/// The image-config and variable state of a stage while its instructions are lowered.
#[derive(Clone)]
struct Stage {
    name: String,
    alias: Option<String>,
    image: ImageState,
    step: usize,
    steps: usize,
    /// This stage's own `ONBUILD` triggers (the spans of the instructions they hold), which a stage
    /// built `FROM` it runs first.
    triggers: Vec<Span>,
    /// The base image's reference and its `OnBuild` triggers, which this stage runs first.
    base_triggers: Option<(String, Vec<String>)>,
}

impl Stage {
    fn lookup(&self, name: &str) -> Option<String> {
        self.image.lookup(name)
    }

    fn run_env(&self) -> Vec<(String, String)> {
        self.image.run_env()
    }

    fn arg_values(&self) -> Vec<(String, String)> {
        self.image.arg_values()
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
    /// The text being lowered and its escape character: the Dockerfile's, or a base image's ONBUILD
    /// trigger's while one is lowered, so errors point into the text they are about.
    source: (Arc<SourceFile>, char),
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
        source: (df.file.clone(), df.escape),
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
        // A Dockerfile names its image and platforms only on the command line (`-t`, `--platform`).
        ..Default::default()
    };
    l.program.roots.push(root);
    Ok(l.program)
}

impl<'a> Lowerer<'a> {
    fn file(&self) -> &Arc<SourceFile> {
        &self.source.0
    }

    fn escape(&self) -> char {
        self.source.1
    }

    fn error(&self, span: Span, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::at(self.file(), span, msg)
    }

    fn at(&self, span: Span) -> Option<Located> {
        Some(Located::new(self.file(), span))
    }

    /// A global (pre-FROM) ARG, or one of BuildKit's automatic platform args, which are global without
    /// being declared: `TARGET*` the `--platform` built for, `BUILD*` the machine building.
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
        platform_arg(name, &self.opts.platform, &self.opts.build_platform)
    }

    fn expand(&self, word: &Word, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
        shell::expand_word(&word.text, self.escape(), lookup)
            .map_err(|e| self.error(word.span, format!("cannot expand `{}`: {e}", word.text)))
    }

    fn expand_flag(&self, flag: &Flag, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String> {
        let raw = flag.value.clone().unwrap_or_default();
        shell::expand_word(&raw, self.escape(), lookup)
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
        // A base image's trigger (`COPY --from=other`) may be what needs this stage: its instructions
        // are the Dockerfile's, whatever text was being lowered.
        let outer = std::mem::replace(&mut self.source, (self.df.file.clone(), self.df.escape));
        let done = self.lower_stage_now(i);
        self.source = outer;
        done
    }

    fn lower_stage_now(&mut self, i: usize) -> Result<()> {
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
        self.base_image_triggers(&mut stage, image.span)?;
        let triggers = self.inherited_triggers(&mut stage);
        stage.steps += triggers.iter().filter(|t| is_step(t)).count();
        for ins in triggers {
            self.instruction(&mut stage, ins)?;
        }
        for ins in body {
            self.instruction(&mut stage, ins)?;
        }
        self.finish_stage(i, stage);
        self.busy[i] = false;
        Ok(())
    }

    /// A parent stage's ONBUILD triggers, which BuildKit runs at the start of the child as its own
    /// instructions, expanded in the child's scope; the child's config keeps only its own ONBUILD lines.
    fn inherited_triggers(&self, stage: &mut Stage) -> Vec<&'a Instruction> {
        stage.image.config.onbuild.clear();
        std::mem::take(&mut stage.triggers)
            .into_iter()
            .filter_map(|span| {
                self.df.instructions.iter().find_map(|i| match &i.kind {
                    InstructionKind::Onbuild(t) if t.span == span => Some(&**t),
                    _ => None,
                })
            })
            .collect()
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
    /// The `--build-context` standing for an image reference: the one named as written, else, as in
    /// BuildKit, the one named by the reference's familiar form (`FROM busybox:latest` finds `busybox`).
    fn named_context(&self, reference: &str) -> Option<&NamedContext> {
        if self.opts.contexts.is_empty() {
            return None;
        }
        self.opts.contexts.get(reference).or_else(|| {
            let key = crate::registry::ImageName::parse(reference)
                .ok()?
                .context_key();
            self.opts.contexts.get(&key)
        })
    }

    fn image_leaf(&mut self, reference: &str, at: Span, platform: &Platform) -> NodeId {
        let platform = platform.in_graph();
        let key = format!("image:{reference} {platform:?}");
        if let Some(&id) = self.leaves.get(&key) {
            return id;
        }
        let (op, name) = if reference == "scratch" {
            (Op::Scratch, "scratch".to_string())
        } else {
            let name = match &platform {
                Some(p) => format!("FROM {reference} ({p})"),
                None => format!("FROM {reference}"),
            };
            (
                Op::Image {
                    reference: reference.to_string(),
                    platform,
                },
                name,
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
        let asked = self.stage_platform(ins)?;
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
        let steps = self.steps_after(ins);
        // As BuildKit counts: the FROM is step 1 only when it pulls an image (not `scratch`, not an
        // earlier stage); then each ADD, COPY, RUN and WORKDIR.
        let from_stage = self.stage_by_name(&reference)?.is_some();
        let numbered_from = usize::from(!from_stage && reference != "scratch");
        let mut stage = if let Some(parent) = self.stage_by_name(&reference)? {
            // FROM an earlier stage continues from its filesystem and config.
            // Its history stays: the parent's layers are in this image, and each needs its entry.
            let mut s = parent.state.clone();
            s.image.begin_stage();
            if let Some(p) = asked {
                s.image.set_platform(&p);
            }
            s
        } else {
            let platform = asked.unwrap_or_else(|| self.opts.platform.clone());
            let named = self.named_context(&reference);
            let resolved = match named {
                Some(NamedContext::Image(r)) => r.clone(),
                _ => reference.clone(),
            };
            let leaf = match named {
                Some(NamedContext::Image(r)) => {
                    let r = r.clone();
                    self.image_leaf(&r, image.span, &platform)
                }
                Some(NamedContext::Dir(_)) => {
                    return Err(self
                        .error(
                            image.span,
                            format!("build context `{reference}` is a directory, not an image"),
                        )
                        .help("use `--build-context NAME=oci-layout://DIR` for a base image"));
                }
                None => self.image_leaf(&reference, image.span, &platform),
            };
            let base = self.opts.image_env.get(
                &resolved,
                &platform,
                Located::new(self.file(), image.span),
            )?;
            let onbuild = base.onbuild.clone();
            let mut image_state = ImageState::new(leaf, base);
            image_state.set_platform(&platform);
            image_state.config.base_onbuild = onbuild.clone();
            Stage {
                name: String::new(),
                alias: None,
                image: image_state,
                step: 0,
                steps: 0,
                triggers: Vec::new(),
                base_triggers: (!onbuild.is_empty()).then(|| (resolved.clone(), onbuild)),
            }
        };
        stage.name = name;
        stage.alias = alias;
        stage.step = numbered_from;
        stage.steps = numbered_from + steps;
        Ok(stage)
    }

    /// `FROM --platform=`: the platform the stage is for, normalized as buildx does (`None`: not given,
    /// or empty, as an unset build arg leaves it, which BuildKit takes as the default).
    fn stage_platform(&self, ins: &Instruction) -> Result<Option<Platform>> {
        let Some(f) = ins.flags.iter().rfind(|f| f.name == "platform") else {
            return Ok(None);
        };
        let v = self.expand_flag(f, &|n| self.meta_lookup(n))?;
        if v.is_empty() {
            return Ok(None);
        }
        Platform::parse(&v).map(Some).map_err(|e| {
            self.error(f.value_span, format!("invalid platform `{v}`: {e}"))
                .help("write os/arch[/variant], such as `--platform=linux/arm64` or `--platform=$BUILDPLATFORM`")
        })
    }

    /// How many instructions of this stage follow its FROM (for `[stage k/n]` names).
    fn steps_after(&self, from: &Instruction) -> usize {
        self.df
            .instructions
            .iter()
            .skip_while(|i| !std::ptr::eq(*i, from))
            .skip(1)
            .take_while(|i| !matches!(i.kind, InstructionKind::From { .. }))
            .filter(|i| is_step(i))
            .count()
    }

    fn finish_stage(&mut self, index: usize, stage: Stage) {
        let mut config = stage.image.config.clone();
        config.env = stage.image.env.clone();
        config.cwd = stage.image.config_cwd.clone();
        config.user = stage.image.user.clone();
        let name = format!("[{}] image config", stage.name);
        let config = self.program.push(
            Op::Config(Box::new(config)),
            vec![stage.image.fs],
            name,
            None,
        );
        self.stages[index] = Some(Finished {
            state: stage,
            config,
        });
    }

    fn step_name(&self, stage: &mut Stage, ins: &Instruction) -> String {
        stage.step += 1;
        let text = instruction_text(self.file(), ins);
        // As BuildKit names steps when several platforms are built: each with its stage's platform.
        let platform = match self.opts.multi_platform {
            true => {
                let p = Platform::from_graph(stage.image.platform.as_deref());
                format!("{p}{} ", cross_suffix(&p, &stage.image))
            }
            false => String::new(),
        };
        format!(
            "[{platform}{} {}/{}] {}",
            stage.name, stage.step, stage.steps, text
        )
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
        let mut inputs = vec![stage.image.fs];
        inputs.extend(extra_inputs);
        let at = self.at(ins.span);
        stage.image.fs = self.program.push(op, inputs, name, at);
        stage.image.config.history.push(HistoryEntry {
            created_by,
            layer: true,
        });
    }

    fn config_history(stage: &mut Stage, created_by: String) {
        stage.image.config.history.push(HistoryEntry {
            created_by,
            layer: false,
        });
    }
}

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

/// BuildKit's `formatTargetPlatform`: a stage whose variables name a target platform (an `ARG
/// TARGETPLATFORM` or `TARGETARCH`, ...) of another architecture than its own is shown as
/// `linux/amd64->arm64`, a cross-compiling stage.
fn cross_suffix(base: &Platform, image: &crate::frontend::image::ImageState) -> String {
    let mut target = None::<Platform>;
    let mut field = |name: &str, set: &dyn Fn(&mut Platform, String)| {
        if let Some(v) = image.lookup(name) {
            let t = target.get_or_insert_with(|| Platform {
                os: String::new(),
                arch: String::new(),
                variant: String::new(),
            });
            set(t, v);
        }
    };
    field("TARGETPLATFORM", &|t, v| {
        if let Ok(p) = Platform::parse(&v) {
            *t = p;
        }
    });
    field("TARGETOS", &|t, v| t.os = v);
    field("TARGETARCH", &|t, v| t.arch = v);
    field("TARGETVARIANT", &|t, v| t.variant = v);
    let Some(mut t) = target else {
        return String::new();
    };
    if t.os.is_empty() {
        t.os.clone_from(&base.os);
    }
    if t.arch.is_empty() {
        t.arch.clone_from(&base.arch);
    }
    let Ok(t) = Platform::parse(&t.to_string()) else {
        return String::new();
    };
    if t.os != base.os {
        return format!("->{t}");
    }
    if t.arch == base.arch {
        return String::new();
    }
    match t.variant.is_empty() {
        true => format!("->{}", t.arch),
        false => format!("->{}/{}", t.arch, t.variant),
    }
}

/// Whether an instruction is a numbered step in progress names (`[stage k/n]`).
fn is_step(ins: &Instruction) -> bool {
    matches!(
        ins.kind,
        InstructionKind::Run(_)
            | InstructionKind::Copy { .. }
            | InstructionKind::Add { .. }
            | InstructionKind::Workdir(_)
    )
}

/// The instruction's source text on one line, for step names and history.
fn instruction_text(file: &SourceFile, ins: &Instruction) -> String {
    ins.text(file)
}

#[cfg(test)]
mod pinned;

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
