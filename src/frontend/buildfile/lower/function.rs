//! `.build` evaluation: the builtin functions (`image`, `context`, mounts, `print`, ...) and the source nodes they make.

use super::{
    Arg, Evaluator, MountValue, NamedContext, NodeId, Note, Op, Result, SecretMount, Span, Value,
    opt_int,
};

impl Evaluator<'_> {
    pub(super) fn function(
        &mut self,
        name: &str,
        span: Span,
        v: Vec<Value>,
        args: &[Arg],
    ) -> Result<Value> {
        let arg_span = |i: usize| args.get(i).map_or(span, |a| a.value.span);
        Ok(match name {
            "platform" => Value::Str(self.opts.lower.platform.to_string()),
            "build_platform" => Value::Str(self.opts.lower.build_platform.to_string()),
            "image" => return self.image_function(&v, arg_span(0), arg_span(1)),
            "dir" => return self.label_dir(v[0].str(), arg_span(0)),
            "scratch" => {
                let platform = self.opts.lower.platform.clone();
                let leaf = self.image_leaf("scratch", span, &platform);
                let base = crate::frontend::BaseConfig::scratch();
                Value::Image(std::sync::Arc::new(self.new_image(leaf, base, &platform)))
            }
            "from" => match &v[0] {
                Value::Image(img) => {
                    let mut img = img.clone();
                    std::sync::Arc::make_mut(&mut img).begin_stage();
                    Value::Image(img)
                }
                _ => unreachable!("checked"),
            },
            "context" => {
                let path = match &v[0] {
                    Value::Str(s) => s.clone(),
                    _ => ".".to_string(),
                };
                Value::Dir(self.context(&path, arg_span(0))?)
            }
            "files" => {
                let files: Vec<(String, String)> = match &v[0] {
                    Value::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.text())).collect(),
                    _ => Vec::new(),
                };
                Value::Inline {
                    files,
                    expand: v[1].bool(),
                    span,
                }
            }
            "url" | "git" => {
                let url = v[0].str().to_string();
                let (checksum, keep_git_dir) = if name == "url" {
                    (v[1].opt_str(), false)
                } else {
                    (None, v[1].bool())
                };
                Value::Remote {
                    url,
                    checksum,
                    keep_git_dir,
                    span,
                }
            }
            "cache" => {
                let seed = match (&v[7], v[8].opt_str()) {
                    (Value::None, None) => None,
                    (Value::None, Some(_)) => {
                        // The Dockerfile's rule (`source` needs `from`), located at the argument.
                        return Err(self
                            .err(arg_span(8), "a cache mount's `source` needs `from`")
                            .help("`source` names the directory of `from` that a new cache starts with: add `from: some_image`"));
                    }
                    (from, source) => {
                        Some((self.source_node(from), source.unwrap_or_else(|| "/".into())))
                    }
                };
                Value::Mount(
                    Box::new(MountValue::Cache {
                        target: v[0].str().to_string(),
                        id: v[1].opt_str(),
                        sharing: v[2].opt_str().unwrap_or_else(|| "shared".into()),
                        mode: opt_int(&v[3], 0o755),
                        uid: opt_int(&v[4], 0),
                        gid: opt_int(&v[5], 0),
                        readonly: v[6].bool(),
                        seed,
                        export: v[9].bool(),
                    }),
                    span,
                )
            }
            "bind" => {
                let from = self.source_node(&v[0]);
                Value::Mount(
                    Box::new(MountValue::Bind {
                        from,
                        target: v[1].opt_str(),
                        source: v[2].opt_str().unwrap_or_else(|| "/".into()),
                        rw: v[3].bool(),
                    }),
                    span,
                )
            }
            "tmpfs" => Value::Mount(
                Box::new(MountValue::Tmpfs {
                    target: v[0].str().to_string(),
                    size: match v[1] {
                        Value::Int(i) => Some(i),
                        _ => None,
                    },
                }),
                span,
            ),
            "join" | "trim_prefix" | "trim_suffix" | "print" => {
                return self.text_function(name, span, &v, arg_span(1));
            }
            other => unreachable!("builtin {other} is checked"),
        })
    }

    /// The text helpers: `join`, `print`, and the shell-pattern trims a converted `${X#p}`/`${X%p}` calls.
    /// `image(reference)`: a base image (its config resolved when building), or a target's by label.
    fn image_function(&mut self, v: &[Value], span: Span, platform_span: Span) -> Result<Value> {
        let r = v[0].str().to_string();
        let platform = self.image_platform(v.get(1), platform_span)?;
        if r.starts_with("//") || r.starts_with(':') {
            return self.label_image(&r, span);
        }
        if r.is_empty() {
            return Err(self
                .err(span, "image() names an empty reference")
                .help("give a reference such as `debian:bookworm`, or `scratch()`"));
        }
        let (leaf, resolved) = match self.opts.lower.contexts.get(&r) {
            Some(NamedContext::Image(to)) => {
                let to = to.clone();
                (self.image_leaf(&to, span, &platform), to)
            }
            _ => (self.image_leaf(&r, span, &platform), r.clone()),
        };
        let at = crate::diag::Located::new(&self.file(), span);
        let env = self
            .opts
            .lower
            .image_env
            .get(&resolved, &platform, at.clone())?;
        self.record_base(&resolved, &platform, &at, &env);
        if !env.onbuild.is_empty() {
            // A Dockerfile built on it would run them first; `.build` has no instructions to
            // run them as, and building without them would give another image.
            return Err(self
                .err(
                    span,
                    format!(
                        "`{r}` has ONBUILD triggers ({}), which a `.build` program cannot run",
                        env.onbuild.join("; ")
                    ),
                )
                .help("build on it from a Dockerfile, which runs them, or write what they do as methods of the image"));
        }
        Ok(Value::Image(std::sync::Arc::new(
            self.new_image(leaf, env, &platform),
        )))
    }

    fn text_function(
        &mut self,
        name: &str,
        span: Span,
        v: &[Value],
        pattern_span: Span,
    ) -> Result<Value> {
        match name {
            "join" => return Ok(Value::Str(v[0].strs().join(v[1].str()))),
            "print" => {
                let at = self.at(span).expect("located");
                let note = Note {
                    at,
                    message: v[0].str().to_string(),
                };
                self.record_note(&note);
                self.loader.notes().push(note);
                return Ok(v[0].clone());
            }
            _ => {}
        }
        let suffix = name == "trim_suffix";
        crate::frontend::shell::trim_pattern(v[0].str(), v[1].str(), suffix, v[2].bool())
            .map(Value::Str)
            .map_err(|e| {
                self.err(pattern_span, e).help(
                    "a pattern is text with `*` (any run of characters), `?` (one character) and `\\` escapes",
                )
            })
    }

    /// `context(".")`: the build context (or, in a monorepo package, the package's directory);
    /// another name: a `--build-context`, or a directory of the package.
    fn context(&mut self, path: &str, span: Span) -> Result<NodeId> {
        let Some(package) = self.loader.package(self.module).map(String::from) else {
            if path == "." || path.is_empty() {
                return Ok(self.context_leaf("context"));
            }
            if self.opts.lower.contexts.contains_key(path) {
                return Ok(self.context_leaf(path));
            }
            return Err(self
                .err(span, format!("no build context named `{path}`"))
                .help(format!(
                    "`.` is the build context; give others with `--build-context {path}=DIR`"
                )));
        };
        let (dir, name) = match path.trim_end_matches('/') {
            "." | "" => (self.loader.dir(self.module).to_path_buf(), package),
            p => (
                self.loader.dir(self.module).join(p),
                format!("{package}/{}", p.trim_start_matches("./")),
            ),
        };
        let is_dir = self.loader.is_dir(&dir);
        self.record_is_dir(&dir, is_dir);
        if !is_dir {
            return Err(self
                .err(span, format!("`{}` is not a directory", dir.display()))
                .help("context() names a directory relative to the package"));
        }
        self.record_context(&name, &dir);
        self.contexts.insert(name.clone(), dir);
        Ok(self.context_leaf(&name))
    }

    /// `dir("//pkg:name")`: the value of a Dir target, in this package or another.
    fn label_dir(&mut self, label: &str, span: Span) -> Result<Value> {
        if !(label.starts_with("//") || label.starts_with(':')) {
            return Err(self
                .err(span, format!("dir() takes a target label, not `{label}`"))
                .help("name a Dir target: `dir(\"//pkg:name\")` or `dir(\":name\")`; a local directory is `context(...)`"));
        }
        match self.label_value(label, span)? {
            (module, v @ (Value::Dir(_) | Value::Inline { .. } | Value::Remote { .. })) => {
                // Inline files and downloads are made where they are used; these belong to the
                // target's file, whose spans they carry.
                let saved = std::mem::replace(&mut self.module, module);
                let node = self.source_node(&v);
                self.module = saved;
                Ok(Value::Dir(node))
            }
            _ => Err(self
                .err(span, format!("`{label}` is an Image, not a Dir"))
                .help(format!("use `image(\"{label}\")`, or one of its directories: `image(\"{label}\").dir(\"/path\")`"))),
        }
    }

    fn label_image(&mut self, label: &str, span: Span) -> Result<Value> {
        match self.label_value(label, span)?.1 {
            v @ Value::Image(_) => Ok(v),
            _ => Err(self
                .err(span, format!("`{label}` is a Dir, not an Image"))
                .help(format!("name it with `dir(\"{label}\")`, and copy from it: `.copy(dir(\"{label}\"), [\".\"], \"/dest\")`"))),
        }
    }

    /// The value of the target a label names (and its module), its package loaded first.
    fn label_value(&mut self, label: &str, span: Span) -> Result<(usize, Value)> {
        let (package, target) = label
            .rsplit_once(':')
            .ok_or_else(|| self.err(span, format!("`{label}` is not a label")))?;
        let module = if package.is_empty() {
            self.module
        } else {
            let at = self.at(span);
            self.loader.load_package(package, at)?
        };
        if !self.is_target(module, target) {
            let at = self.at(span);
            self.target_node(module, target, at)?;
        }
        Ok((module, self.global(module, target, span)?))
    }

    pub(super) fn source_node(&mut self, v: &Value) -> NodeId {
        match v {
            Value::Image(img) => img.fs,
            Value::Dir(n) => *n,
            Value::File { node, .. } => *node,
            Value::Remote {
                url,
                checksum,
                keep_git_dir,
                span,
            } => self.remote_node(url.clone(), checksum.clone(), *keep_git_dir, *span),
            Value::Inline { files, span, .. } => self.inline_node(files.clone(), *span),
            _ => unreachable!("checked"),
        }
    }

    pub(super) fn inline_node(&mut self, files: Vec<(String, String)>, span: Span) -> NodeId {
        let at = self.at(span);
        self.push(Op::Inline { files }, vec![], "inline files".into(), at)
    }

    pub(super) fn remote_node(
        &mut self,
        url: String,
        checksum: Option<String>,
        keep_git_dir: bool,
        span: Span,
    ) -> NodeId {
        let at = self.at(span);
        let name = format!("fetch {}", crate::graph::remote::redacted(&url));
        self.push(
            Op::Remote {
                url,
                checksum,
                keep_git_dir,
            },
            vec![],
            name,
            at,
        )
    }

    pub(super) fn secret_mount(&self, id: String, method: &str, v: &[Value], span: Span) -> Value {
        let m = match method {
            "file" => SecretMount {
                id,
                target: v[0].opt_str(),
                env: None,
                required: v[1].bool(),
                mode: opt_int(&v[2], 0o400),
                uid: opt_int(&v[3], 0),
                gid: opt_int(&v[4], 0),
            },
            "env" => SecretMount {
                id,
                target: None,
                env: v[0].opt_str(),
                required: v[1].bool(),
                mode: 0o400,
                uid: 0,
                gid: 0,
            },
            _ => SecretMount {
                id,
                target: v[0].opt_str(),
                env: v[1].opt_str(),
                required: v[2].bool(),
                mode: opt_int(&v[3], 0o400),
                uid: opt_int(&v[4], 0),
                gid: opt_int(&v[5], 0),
            },
        };
        Value::Mount(Box::new(MountValue::Secret(m)), span)
    }

    /// `image(..., platform: P)`: P normalized, else the platform built for.
    fn image_platform(&self, given: Option<&Value>, at: Span) -> Result<crate::platform::Platform> {
        match given.and_then(Value::opt_str) {
            Some(p) => crate::platform::Platform::parse(&p).map_err(|e| {
                self.err(at, format!("invalid platform `{p}`: {e}")).help(
                    "write os/arch[/variant], such as `linux/arm64`, or `platform()` for the one built for",
                )
            }),
            None => Ok(self.opts.lower.platform.clone()),
        }
    }
}
