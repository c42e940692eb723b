//! Dockerfile lowering: one instruction of a stage at a time (the config-only ones here; RUN, COPY, ADD and HEALTHCHECK in their own files).

use super::{
    Instruction, InstructionKind, KeyValue, Lowerer, Op, Result, Stage, Word, arg_history,
    command_args, expose_ports, instruction_text, json_list, set, shell,
};

impl Lowerer<'_> {
    pub(super) fn instruction(&mut self, stage: &mut Stage, ins: &Instruction) -> Result<()> {
        match &ins.kind {
            InstructionKind::From { .. } => unreachable!("FROM handled by the caller"),
            InstructionKind::Arg(decls) => self.arg(stage, ins, decls)?,
            InstructionKind::Env(pairs) => self.env(stage, ins, pairs)?,
            InstructionKind::Label(pairs) => self.label(stage, ins, pairs)?,
            InstructionKind::Workdir(w) => {
                self.reject_flags(ins, &[])?;
                let dir = self.expand(w, &|n| stage.lookup(n))?;
                let recorded = stage.image.workdir(&dir);
                if recorded == "/" {
                    // The root exists: BuildKit makes no directory and no layer for it. The step's
                    // number is used up all the same, so later steps keep theirs.
                    stage.step += 1;
                    Self::config_history(stage, format!("WORKDIR {recorded}"));
                } else {
                    let path = stage.image.dir().to_string();
                    let user = stage.image.user.clone();
                    self.push_fs(
                        stage,
                        ins,
                        Op::Mkdir { path, user },
                        vec![],
                        format!("WORKDIR {recorded}"),
                    );
                }
            }
            InstructionKind::User(w) => {
                self.reject_flags(ins, &[])?;
                let user = self.expand(w, &|n| stage.lookup(n))?;
                Self::config_history(stage, format!("USER {user}"));
                stage.image.user = Some(user);
            }
            InstructionKind::Cmd(c) => {
                self.reject_flags(ins, &[])?;
                let args = command_args(c, stage.image.shell.as_deref());
                Self::config_history(stage, format!("CMD {}", json_list(&args)));
                stage.image.set_cmd(args);
            }
            InstructionKind::Entrypoint(c) => {
                self.reject_flags(ins, &[])?;
                let args = command_args(c, stage.image.shell.as_deref());
                Self::config_history(stage, format!("ENTRYPOINT {}", json_list(&args)));
                stage.image.set_entrypoint(args);
            }
            InstructionKind::Run(c) => self.run(stage, ins, c)?,
            InstructionKind::Copy { sources, dest } => {
                self.copy(stage, ins, sources, dest, false)?
            }
            InstructionKind::Add { sources, dest } => self.copy(stage, ins, sources, dest, true)?,
            InstructionKind::Onbuild(trigger) => {
                self.reject_flags(ins, &[])?;
                let text = instruction_text(self.file(), trigger);
                // No history entry: BuildKit's ONBUILD only adds to the config (v0.8 and since).
                stage.image.config.onbuild.push(text);
                stage.triggers.push(trigger.span);
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
                stage.image.shell = Some(args.clone());
                stage.image.config.shell = Some(args.clone());
            }
            InstructionKind::StopSignal(w) => {
                self.reject_flags(ins, &[])?;
                let sig = self.expand(w, &|n| stage.lookup(n))?;
                Self::config_history(stage, format!("STOPSIGNAL {sig}"));
                stage.image.config.stop_signal = Some(sig);
            }
            InstructionKind::Expose(words) => self.expose(stage, ins, words)?,
            InstructionKind::Volume(words) => self.volume(stage, ins, words)?,
            InstructionKind::Maintainer(w) => {
                self.reject_flags(ins, &[])?;
                let who = self.expand(w, &|n| stage.lookup(n))?;
                Self::config_history(stage, format!("MAINTAINER {who}"));
                stage.image.config.author = Some(who);
            }
        }
        Ok(())
    }

    /// ARG: each name takes its value (a bare `ARG x` brings the pre-FROM value into scope). A default
    /// sees the names declared before it on the same line, as in current BuildKit (v0.8 expanded the
    /// whole line first).
    fn arg(&self, stage: &mut Stage, ins: &Instruction, decls: &[KeyValue]) -> Result<()> {
        self.reject_flags(ins, &[])?;
        let mut shown = Vec::new();
        for d in decls {
            let value = match self.arg_value(d, &|n| stage.lookup(n))? {
                Some(v) => Some(v),
                // A bare `ARG x` in a stage brings the pre-FROM value into scope.
                None => self.meta_lookup(&d.key.text),
            };
            stage.image.set_arg(&d.key.text, value.clone());
            shown.push((d.key.text.clone(), value));
        }
        Self::config_history(stage, arg_history(&shown));
        Ok(())
    }

    /// ENV: every pair expanded against the variables as they were before the instruction (as BuildKit
    /// expands a whole line before dispatching it: `ENV X=new Y=$X` gives `Y` the old `X`), then set.
    fn env(&self, stage: &mut Stage, ins: &Instruction, pairs: &[KeyValue]) -> Result<()> {
        self.reject_flags(ins, &[])?;
        let pairs = self.expand_pairs(stage, pairs)?;
        for (key, value) in &pairs {
            stage.image.set_env(key, value);
        }
        Self::config_history(stage, format!("ENV {}", pair_text(&pairs)));
        Ok(())
    }

    /// LABEL: every pair expanded against the variables before the instruction, then set.
    fn label(&self, stage: &mut Stage, ins: &Instruction, pairs: &[KeyValue]) -> Result<()> {
        self.reject_flags(ins, &[])?;
        let pairs = self.expand_pairs(stage, pairs)?;
        for (key, value) in &pairs {
            set(&mut stage.image.config.labels, key, value);
        }
        Self::config_history(stage, format!("LABEL {}", pair_text(&pairs)));
        Ok(())
    }

    fn expand_pairs(&self, stage: &Stage, pairs: &[KeyValue]) -> Result<Vec<(String, String)>> {
        let lookup = |n: &str| stage.lookup(n);
        pairs
            .iter()
            .map(|kv| {
                let key = self.expand(&kv.key, &lookup)?;
                let value = match &kv.value {
                    Some(v) => self.expand(v, &lookup)?,
                    None => String::new(),
                };
                Ok((key, value))
            })
            .collect()
    }

    /// EXPOSE: each word expanded into ports (a range into each port), added once each.
    fn expose(&self, stage: &mut Stage, ins: &Instruction, words: &[Word]) -> Result<()> {
        self.reject_flags(ins, &[])?;
        let mut ports = Vec::new();
        for w in words {
            for p in shell::expand_words(&w.text, self.escape(), &|n| stage.lookup(n))
                .map_err(|e| self.error(w.span, format!("cannot expand `{}`: {e}", w.text)))?
            {
                ports.extend(expose_ports(&p).ok_or_else(|| {
                    self.error(w.span, format!("invalid port `{p}`"))
                        .help("write a port or range with an optional protocol: `80`, `53/udp`, `8000-8010/tcp`")
                })?);
            }
        }
        Self::config_history(stage, format!("EXPOSE {}", ports.join(" ")));
        for p in ports {
            if !stage.image.config.exposed.contains(&p) {
                stage.image.config.exposed.push(p);
            }
        }
        Ok(())
    }

    /// VOLUME: each path expanded, added once each.
    fn volume(&self, stage: &mut Stage, ins: &Instruction, words: &[Word]) -> Result<()> {
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
            if !stage.image.config.volumes.contains(&v) {
                stage.image.config.volumes.push(v);
            }
        }
        Ok(())
    }
}

fn pair_text(pairs: &[(String, String)]) -> String {
    let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    shown.join(" ")
}
