//! `.build` evaluation: `.run(...)` (mounts, network, security) and the secret checks on the steps a program makes.

use crate::graph::op::CacheSeed;

use super::{
    Arc, Evaluator, Img, MountValue, Network, NodeId, Op, Result, RunMount, RunOp, SecretMount,
    Sharing, Span, Value, command, join_path, run_history, suggest,
};

impl Evaluator<'_> {
    pub(super) fn run(
        &mut self,
        img: &mut Img,
        v: &[Value],
        span: Span,
        cmd_span: Span,
    ) -> Result<()> {
        let args = command(img, &v[0]);
        if args.is_empty() || args.iter().all(|a| a.trim().is_empty()) {
            return Err(self
                .err(cmd_span, "run() needs a command")
                .help("give a shell command, or an argument list such as [\"make\", \"all\"]"));
        }
        let cwd = img.dir().to_string();
        let (secrets, mounts, extra) = self.run_mounts(img, &v[1], &cwd)?;
        let (network, insecure) = self.run_modes(img, v, span)?;
        self.lint_run(&v[0], &args, &secrets, &mounts, &cwd, span)?;
        let created_by = run_history(&img.arg_values(), &args);
        let op = Op::Run(RunOp {
            args,
            env: img.run_env(),
            cwd: img.cwd.clone(),
            user: img.user.clone(),
            network,
            insecure,
            secrets,
            mounts,
            platform: img.platform.clone(),
        });
        self.push_fs(img, op, extra, created_by, span);
        Ok(())
    }

    /// A run's mounts, expanded and placed against its working directory: its secrets, its other
    /// mounts, and the nodes bind mounts read (extra inputs of the step).
    fn run_mounts(
        &self,
        img: &Img,
        list: &Value,
        cwd: &str,
    ) -> Result<(Vec<SecretMount>, Vec<RunMount>, Vec<NodeId>)> {
        let mut secrets: Vec<SecretMount> = Vec::new();
        let mut mounts = Vec::new();
        let mut extra: Vec<NodeId> = Vec::new();
        let list = match list {
            Value::List(l) => l.clone(),
            _ => Vec::new(),
        };
        for m in list {
            let Value::Mount(m, mspan) = m else {
                unreachable!("checked")
            };
            let ex = |s: &str| self.expand(img, s, mspan);
            let target = |t: &Option<String>| -> Result<Option<String>> {
                match t.as_deref().filter(|t| !t.is_empty()) {
                    Some(t) => Ok(Some(join_path(cwd, &ex(t)?))),
                    None => Ok(None),
                }
            };
            match *m {
                MountValue::Secret(mut s) => {
                    s.target = target(&s.target)?;
                    if let Some(e) = &s.env {
                        s.env = Some(ex(e)?).filter(|e| !e.is_empty());
                    }
                    if s.target.is_none() && s.env.is_none() {
                        s.target = Some(join_path(cwd, &format!("/run/secrets/{}", s.id)));
                    }
                    if let Some(dup) = secrets
                        .iter()
                        .find(|o| o.target.is_some() && o.target == s.target)
                    {
                        return Err(self.err(
                            mspan,
                            format!(
                                "secret `{}` is mounted at the same target as secret `{}`",
                                s.id, dup.id
                            ),
                        ));
                    }
                    secrets.push(s);
                }
                MountValue::Ssh {
                    id,
                    target: t,
                    required,
                    mode,
                    uid,
                    gid,
                } => mounts.push(RunMount::Ssh {
                    id,
                    target: target(&t)?,
                    required,
                    mode,
                    uid,
                    gid,
                }),
                MountValue::Cache {
                    target: t,
                    id,
                    sharing,
                    mode,
                    uid,
                    gid,
                    readonly,
                    seed,
                    export,
                } => {
                    let t = target(&Some(t))?.ok_or_else(|| {
                        self.err(mspan, "a cache mount needs a target")
                            .help("write `cache(\"/var/cache/apt\")`")
                    })?;
                    let sharing = Sharing::parse(&ex(&sharing)?).ok_or_else(|| {
                        self.err(mspan, format!("invalid sharing mode `{sharing}`"))
                            .help("sharing is one of: shared, private, locked")
                    })?;
                    let id = match id {
                        Some(i) if !i.is_empty() => ex(&i)?,
                        _ => t.clone(),
                    };
                    // As a Dockerfile's `from=`: the seed's source is one more input of the step,
                    // shared with bind mounts of the same source.
                    let seed = match seed {
                        Some((from, source)) => Some(CacheSeed {
                            input: extra_input(&mut extra, from),
                            source: ex(&source)?,
                        }),
                        None => None,
                    };
                    mounts.push(RunMount::Cache {
                        target: t,
                        id,
                        sharing,
                        mode,
                        uid,
                        gid,
                        readonly,
                        seed,
                        export,
                    });
                }
                MountValue::Bind {
                    from,
                    target: t,
                    source,
                    rw,
                } => {
                    let t = target(&t)?.unwrap_or_else(|| join_path(cwd, "."));
                    let input = extra_input(&mut extra, from);
                    mounts.push(RunMount::Bind {
                        target: t,
                        input,
                        source: ex(&source)?,
                        readwrite: rw,
                    });
                }
                MountValue::Tmpfs { target: t, size } => {
                    let t = target(&Some(t))?.ok_or_else(|| {
                        self.err(mspan, "a tmpfs mount needs a target")
                            .help("write `tmpfs(\"/tmp\")`")
                    })?;
                    mounts.push(RunMount::Tmpfs { target: t, size });
                }
            }
        }
        Ok((secrets, mounts, extra))
    }

    /// A run's `network:` and `security:` modes (the latter as "insecure or not").
    fn run_modes(&self, img: &Img, v: &[Value], span: Span) -> Result<(Network, bool)> {
        let network = match &v[2] {
            Value::Str(s) => {
                let s = self.expand(img, s, span)?;
                Network::parse(&s).ok_or_else(|| {
                    let d = self.err(span, format!("unknown network mode `{s}`"));
                    match suggest(&s, ["default", "none", "host"]) {
                        Some(x) => d.help(format!("did you mean `{x}`?")),
                        None => d.help("network modes are: default, none, host"),
                    }
                })?
            }
            _ => Network::Default,
        };
        let insecure = match &v[3] {
            Value::Str(s) => match self.expand(img, s, span)?.as_str() {
                "sandbox" => false,
                "insecure" => true,
                other => {
                    return Err(self
                        .err(span, format!("unknown security mode `{other}`"))
                        .help("security modes are `sandbox` (the default) and `insecure`"));
                }
            },
            _ => false,
        };
        Ok((network, insecure))
    }

    /// The secret checks `kiln check` runs on a Dockerfile's RUN, on this step's command.
    fn lint_run(
        &mut self,
        cmd: &Value,
        args: &[String],
        secrets: &[SecretMount],
        mounts: &[RunMount],
        cwd: &str,
        span: Span,
    ) -> Result<()> {
        use crate::frontend::lint::secrets as lint;
        let text = match cmd {
            Value::Str(s) => s.clone(),
            _ => args.join(" "),
        };
        let mounted: Vec<lint::SecretMount> = secrets
            .iter()
            .map(|s| lint::SecretMount {
                id: s.id.clone(),
                target: s.target.clone(),
                env: s.env.clone(),
            })
            .collect();
        let tmpfs: Vec<String> = mounts
            .iter()
            .filter_map(|m| match m {
                RunMount::Tmpfs { target, .. } => Some(target.clone()),
                _ => None,
            })
            .collect();
        for f in lint::run_findings(&text, &mounted, &tmpfs, cwd, &[]) {
            let at = self.locate(span, &f.needle);
            self.lint(at, f.rule, f.message)?;
        }
        Ok(())
    }

    /// `SecretInBuildArg` for an `.env` or `.arg` value written in the program (at the value, when it is
    /// a plain string there).
    pub(super) fn lint_value(
        &mut self,
        kind: &str,
        key: &str,
        value: &str,
        span: Span,
    ) -> Result<()> {
        use crate::frontend::lint::secrets::value_message;
        match value_message(kind, key, value) {
            Some(message) => {
                let at = self.locate(span, &format!("\"{value}\""));
                self.lint(at, "SecretInBuildArg", message)
            }
            None => Ok(()),
        }
    }

    /// Where `needle` is written inside `span`, or `span`.
    pub(super) fn locate(&self, span: Span, needle: &str) -> Span {
        let file = self.file();
        match file
            .text
            .get(span.start..span.end)
            .and_then(|t| t.find(needle))
        {
            Some(i) if !needle.is_empty() => {
                Span::new(span.start + i, span.start + i + needle.len())
            }
            _ => span,
        }
    }

    /// Records a secret check's finding, unless the file's `# check=` comments skip it (once per place:
    /// a helper called twice makes one finding).
    pub(super) fn lint(&mut self, span: Span, rule: &str, message: String) -> Result<()> {
        let at = crate::diag::Located::new(&self.file(), span);
        self.record_lint(at.clone(), rule, &message);
        self.add_finding(&at, rule, message).map(|_| ())
    }

    /// Adds the finding `rule` at `at` unless one is there already; where it went in the list.
    pub(super) fn add_finding(
        &mut self,
        at: &crate::diag::Located,
        rule: &str,
        message: String,
    ) -> Result<Option<usize>> {
        let Some(f) = crate::frontend::lint::program_finding(&at.file, at.span, rule, message)?
        else {
            return Ok(None);
        };
        let findings = self.loader.findings();
        let seen = findings.iter().any(|o| {
            o.rule == f.rule && o.at.span == f.at.span && Arc::ptr_eq(&o.at.file, &f.at.file)
        });
        if seen {
            return Ok(None);
        }
        findings.push(f);
        Ok(Some(findings.len() - 1))
    }
}

/// A mount source's index among the Run node's inputs: 0 is the rootfs; each distinct source is added
/// once, in the order the mounts name them (as a Dockerfile's RUN does, so converted programs agree).
fn extra_input(extra: &mut Vec<NodeId>, node: NodeId) -> usize {
    match extra.iter().position(|&i| i == node) {
        Some(p) => p + 1,
        None => {
            extra.push(node);
            extra.len()
        }
    }
}
