//! `.build` evaluation: the methods of an `Image`, each doing what the Dockerfile instruction of the same name does.

use super::{
    Arg, CopyOp, Entitlement, Evaluator, Healthcheck, Img, Inherit, NodeId, Op, Result, Span,
    Value, arg_history, builtin_arg, command, expose_ports, healthcheck_history, join_path,
    json_list, parse_duration, platform_arg, set, shell, step_name,
};

impl Evaluator<'_> {
    pub(super) fn expand(&self, img: &Img, text: &str, span: Span) -> Result<String> {
        shell::expand_word(text, '\\', &|n| img.lookup(n)).map_err(|e| {
            self.err(span, format!("cannot expand `{text}`: {e}")).help(
                "image operations expand $NAME like a Dockerfile does; write \\\\$ for a literal $",
            )
        })
    }

    pub(super) fn push_fs(
        &mut self,
        img: &mut Img,
        op: Op,
        extra: Vec<NodeId>,
        created_by: String,
        span: Span,
    ) {
        let mut inputs = vec![img.fs];
        inputs.extend(extra);
        let at = self.at(span);
        let mut name = step_name(&op);
        if self.opts.lower.multi_platform {
            // Which platform each step is for, as a Dockerfile's steps say when several are built.
            let p = crate::platform::Platform::from_graph(img.platform.as_deref());
            name = format!("[{p}] {name}");
        }
        img.fs = self.push(op, inputs, name, at);
        img.history(created_by, true);
    }

    pub(super) fn image_method(
        &mut self,
        mut img: Img,
        method: &str,
        span: Span,
        v: Vec<Value>,
        args: &[Arg],
    ) -> Result<Value> {
        let arg_span = |i: usize| {
            args.iter()
                .filter(|a| a.name.is_none())
                .nth(i)
                .map_or(span, |a| a.value.span)
        };
        match method {
            "run" => {
                self.run(&mut img, &v, span, arg_span(0))?;
                self.program.nodes[img.fs].asks = self.asks(args, span);
            }
            "copy" | "add" => self.copy(&mut img, method == "add", &v, span, args)?,
            "env" | "label" => self.env_or_label(&mut img, method, &v, arg_span(0))?,
            "arg" => self.arg(&mut img, &v, arg_span(0))?,
            "workdir" => {
                let dir = self.expand(&img, v[0].str(), arg_span(0))?;
                let recorded = img.workdir(&dir);
                if recorded == "/" {
                    // The root exists: BuildKit makes no directory and no layer for it.
                    img.history(format!("WORKDIR {recorded}"), false);
                } else {
                    let path = img.dir().to_string();
                    let user = img.user.clone();
                    self.push_fs(
                        &mut img,
                        Op::Mkdir { path, user },
                        vec![],
                        format!("WORKDIR {recorded}"),
                        span,
                    );
                }
            }
            "user" => {
                let user = self.expand(&img, v[0].str(), arg_span(0))?;
                img.history(format!("USER {user}"), false);
                img.user = Some(user);
            }
            "cmd" | "entrypoint" => {
                let argv = command(&img, &v[0]);
                if method == "cmd" {
                    img.history(format!("CMD {}", json_list(&argv)), false);
                    img.set_cmd(argv);
                } else {
                    img.history(format!("ENTRYPOINT {}", json_list(&argv)), false);
                    img.set_entrypoint(argv);
                }
            }
            "expose" => self.expose(&mut img, &v, arg_span(0))?,
            "volume" => self.volume(&mut img, &v, arg_span(0))?,
            "stop_signal" => {
                let sig = self.expand(&img, v[0].str(), arg_span(0))?;
                img.history(format!("STOPSIGNAL {sig}"), false);
                img.config.stop_signal = Some(sig);
            }
            "maintainer" => {
                let who = self.expand(&img, v[0].str(), arg_span(0))?;
                img.history(format!("MAINTAINER {who}"), false);
                img.config.author = Some(who);
            }
            "onbuild" => {
                let t = v[0].str().to_string();
                // No history entry, as a Dockerfile's ONBUILD (BuildKit's) makes none.
                img.config.onbuild.push(t);
            }
            "shell" => {
                let sh = v[0].strs();
                if sh.is_empty() {
                    return Err(self
                        .err(arg_span(0), "shell() needs at least the shell program")
                        .help("write `.shell([\"/bin/bash\", \"-c\"])`"));
                }
                img.history(format!("SHELL {}", json_list(&sh)), false);
                img.shell = Some(sh.clone());
                img.config.shell = Some(sh);
            }
            "healthcheck" => self.healthcheck(&mut img, &v, span)?,
            "no_healthcheck" => {
                let none = Healthcheck {
                    test: vec!["NONE".into()],
                    ..Healthcheck::default()
                };
                img.history(healthcheck_history(&none), false);
                img.config.healthcheck = Inherit::Set(none);
            }
            "dir" | "file" => return Ok(self.dir_or_file(&img, method, &v, span)),
            other => unreachable!("method {other} is checked"),
        }
        Ok(Value::Image(std::sync::Arc::new(img)))
    }

    /// Where a `.run(...)` call asks for entitlements: its `network:` or `security:` argument (by name, or
    /// third and fourth by position), when the value needs one.
    fn asks(&self, args: &[Arg], span: Span) -> crate::graph::entitlement::Asks {
        let arg_at = |name: &str, position: usize| {
            args.iter()
                .find(|a| a.name.as_ref().is_some_and(|n| n.name == name))
                .or_else(|| args.iter().filter(|a| a.name.is_none()).nth(position))
                .map_or(span, |a| a.value.span)
        };
        let Some(Op::Run(r)) = self.program.nodes.last().map(|n| &n.op) else {
            return Vec::new();
        };
        r.entitlements()
            .into_iter()
            .filter_map(|e| {
                let at = match e {
                    Entitlement::NetworkHost => arg_at("network", 2),
                    Entitlement::SecurityInsecure => arg_at("security", 3),
                };
                Some((e, self.at(at)?))
            })
            .collect()
    }

    /// `.env({...})` and `.label({...})`: every pair expanded against the variables before the call,
    /// then set, as ENV and LABEL do.
    fn env_or_label(&mut self, img: &mut Img, method: &str, v: &[Value], at: Span) -> Result<()> {
        let mut pairs = Vec::new();
        if let Value::Map(m) = &v[0] {
            for (k, val) in m {
                let key = self.expand(img, k, at)?;
                let value = self.expand(img, val.str(), at)?;
                if method == "env" {
                    self.lint_value("ENV", &key, val.str(), at)?;
                }
                pairs.push((key, value));
            }
        }
        for (key, value) in &pairs {
            if method == "env" {
                img.set_env(key, value);
            } else {
                set(&mut img.config.labels, key, value);
            }
        }
        let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let what = if method == "env" { "ENV" } else { "LABEL" };
        img.history(format!("{what} {}", shown.join(" ")), false);
        Ok(())
    }

    /// `.arg({...})`: each name takes its `--build-arg`, else its default, as ARG does.
    fn arg(&mut self, img: &mut Img, v: &[Value], at: Span) -> Result<()> {
        let mut shown = Vec::new();
        if let Value::Map(m) = &v[0] {
            for (k, val) in m {
                let value = match self.opts.lower.build_args.get(k) {
                    Some(over) => Some(over.clone()),
                    None => match val {
                        Value::Str(s) => {
                            self.lint_value("ARG", k, s, at)?;
                            Some(self.expand(img, s, at)?)
                        }
                        _ => builtin_arg(k).and_then(|_| {
                            let o = &self.opts.lower;
                            platform_arg(k, &o.platform, &o.build_platform)
                        }),
                    },
                };
                img.set_arg(k, value.clone());
                shown.push((k.clone(), value));
            }
        }
        img.history(arg_history(&shown), false);
        Ok(())
    }

    /// `.expose([...])`: each word expanded into ports, added once each, as EXPOSE does.
    fn expose(&mut self, img: &mut Img, v: &[Value], at: Span) -> Result<()> {
        let mut ports = Vec::new();
        for w in v[0].strs() {
            for p in shell::expand_words(&w, '\\', &|n| img.lookup(n))
                .map_err(|err| self.err(at, format!("cannot expand `{w}`: {err}")))?
            {
                ports.extend(expose_ports(&p).ok_or_else(|| {
                    self.err(at, format!("invalid port `{p}`")).help(
                        "write a port or range with an optional protocol: `80`, `53/udp`, `8000-8010/tcp`",
                    )
                })?);
            }
        }
        img.history(format!("EXPOSE {}", ports.join(" ")), false);
        for p in ports {
            if !img.config.exposed.contains(&p) {
                img.config.exposed.push(p);
            }
        }
        Ok(())
    }

    /// `.volume([...])`: each path expanded, added once each, as VOLUME does.
    fn volume(&mut self, img: &mut Img, v: &[Value], at: Span) -> Result<()> {
        let mut vols = Vec::new();
        for w in v[0].strs() {
            let p = self.expand(img, &w, at)?;
            if p.trim().is_empty() {
                return Err(self.err(at, "volume() names an empty path"));
            }
            vols.push(p);
        }
        img.history(format!("VOLUME {}", json_list(&vols)), false);
        for p in vols {
            if !img.config.volumes.contains(&p) {
                img.config.volumes.push(p);
            }
        }
        Ok(())
    }

    /// `.healthcheck(...)`: the test command and its durations, as HEALTHCHECK does.
    fn healthcheck(&mut self, img: &mut Img, v: &[Value], span: Span) -> Result<()> {
        let test = match &v[0] {
            Value::Str(s) => vec!["CMD-SHELL".to_string(), s.clone()],
            other => {
                let mut t = vec!["CMD".to_string()];
                t.extend(other.strs());
                t
            }
        };
        let mut check = Healthcheck {
            test,
            ..Healthcheck::default()
        };
        let names = ["interval", "timeout", "start_period", "start_interval"];
        for (i, name) in names.iter().enumerate() {
            let Value::Str(s) = &v[i + 1] else { continue };
            let s = self.expand(img, s, span)?;
            let d = parse_duration(&s).ok_or_else(|| {
                self.err(span, format!("invalid duration `{s}` for {name}"))
                    .help("write a duration such as `30s`, `1m30s` or `500ms`")
            })?;
            if d != 0 && d < 1_000_000 {
                return Err(self
                    .err(span, format!("invalid duration `{s}` for {name}"))
                    .help("durations must be at least 1ms"));
            }
            match i {
                0 => check.interval = d,
                1 => check.timeout = d,
                2 => check.start_period = d,
                _ => check.start_interval = d,
            }
        }
        if let Value::Int(r) = v[5] {
            check.retries = r;
        }
        img.history(healthcheck_history(&check), false);
        img.config.healthcheck = Inherit::Set(check);
        Ok(())
    }

    /// `.dir(path)` and `.file(path)`: a path of the image as a source of its own.
    fn dir_or_file(&mut self, img: &Img, method: &str, v: &[Value], span: Span) -> Value {
        let path = join_path(img.dir(), v[0].str());
        if method == "file" {
            return Value::File { node: img.fs, path };
        }
        let scratch = self.image_leaf("scratch", span, &crate::platform::Platform::amd64());
        let at = self.at(span);
        let node = self.push(
            Op::Copy(CopyOp {
                sources: vec![path.clone()],
                dest: "/".into(),
                chown: None,
                chmod: None,
                extract: false,
                excludes: Vec::new(),
                parents: false,
                files: Vec::new(),
            }),
            vec![scratch, img.fs],
            format!("directory {path}"),
            at,
        );
        Value::Dir(node)
    }
}
