//! Dockerfile lowering: RUN (argv, heredocs, `--mount`, `--network`, `--security`) and HEALTHCHECK.

use super::{
    CacheSeed, Command, DEFAULT_SHELL, Entitlement, Flag, HEALTHCHECK_FLAGS, Healthcheck, Inherit,
    Instruction, Lowerer, Network, NodeId, Op, Parsed, Result, RunMount, RunOp, SecretMount, Span,
    Stage, SyntaxHealthcheck, command_args, healthcheck_history, mount, parse_duration,
    run_history, suggest,
};

impl Lowerer<'_> {
    /// A RUN's argv. Shell form runs through the stage's shell; heredocs follow BuildKit: a RUN that is
    /// only `<<EOF` runs the heredoc's body as the script, otherwise the bodies are appended to the command
    /// text for the shell to read.
    fn run_args(&self, stage: &Stage, ins: &Instruction, cmd: &Command) -> Vec<String> {
        let Command::Shell(w) = cmd else {
            return command_args(cmd, stage.image.shell.as_deref());
        };
        if ins.heredocs.is_empty() {
            return command_args(cmd, stage.image.shell.as_deref());
        }
        let mut shell: Vec<String> = stage
            .image
            .shell
            .clone()
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| s.to_string()).collect());
        shell.push(ins.shell_script(w));
        shell
    }

    pub(super) fn healthcheck(
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
                stage.image.config.healthcheck = Inherit::Set(none);
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
        stage.image.config.healthcheck = Inherit::Set(check);
        Ok(())
    }

    pub(super) fn run(
        &mut self,
        stage: &mut Stage,
        ins: &Instruction,
        cmd: &Command,
    ) -> Result<()> {
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
                        Parsed::Bind { .. } | Parsed::SeededCache { .. } => {
                            unreachable!("binds and seeds are resolved by mount()")
                        }
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
        let mut env = stage.run_env();
        self.add_proxy_env(&mut env);
        // History reads as BuildKit's: `RUN |N K=V ... cmd # buildkit`, with every build arg of the stage
        // (an ENV of the same name wins) and without the mount flags. A secret can never appear here:
        // secrets are not variables, and their values never reach lowering.
        let created_by = run_history(&stage.arg_values(), &args);
        let op = Op::Run(RunOp {
            args,
            env,
            cwd: stage.image.cwd.clone(),
            user: stage.image.user.clone(),
            network,
            insecure,
            secrets,
            mounts,
            platform: stage.image.platform.clone(),
        });
        self.push_fs(stage, ins, op, extra_inputs, created_by);
        self.program.nodes[stage.image.fs].asks = asks;
        Ok(())
    }

    /// BuildKit's predefined proxy ARGs: a `--build-arg` named like one of them (in any case) reaches
    /// every RUN, declared or not, under both its upper- and lower-case name (`ProxyEnv`), after the
    /// step's own variables; like an undeclared ARG it stays out of the history and the image config.
    fn add_proxy_env(&self, env: &mut Vec<(String, String)>) {
        const PROXIES: [&str; 5] = [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "FTP_PROXY",
            "NO_PROXY",
            "ALL_PROXY",
        ];
        for name in PROXIES {
            let given = self
                .opts
                .build_args
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name));
            let Some((_, value)) = given.filter(|(_, v)| !v.is_empty()) else {
                continue;
            };
            for key in [name.to_string(), name.to_ascii_lowercase()] {
                if !env.iter().any(|(k, _)| *k == key) {
                    env.push((key, value.clone()));
                }
            }
        }
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
        let parsed = mount::parse(&text, stage.image.dir())
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
                let input = mount_input(inputs, node);
                Parsed::Other(RunMount::Bind {
                    target,
                    input,
                    source,
                    readwrite,
                })
            }
            Parsed::SeededCache {
                mut mount,
                from: (name, span),
                source,
            } => {
                let node = self.copy_from(span_of(span), &name)?;
                let input = mount_input(inputs, node);
                if let RunMount::Cache { seed, .. } = &mut mount {
                    *seed = Some(CacheSeed { input, source });
                }
                Parsed::Other(mount)
            }
            other => other,
        })
    }
}

/// A mount source's index among the Run node's inputs: 0 is the rootfs; each distinct source is added
/// once.
fn mount_input(inputs: &mut Vec<NodeId>, node: NodeId) -> usize {
    match inputs.iter().position(|&i| i == node) {
        Some(p) => p + 1,
        None => {
            inputs.push(node);
            inputs.len()
        }
    }
}
