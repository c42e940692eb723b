//! `kiln convert`: a Dockerfile's syntax tree → `.build` source that means the same build.
//!
//! Each stage becomes a binding (a `target` when it is named or last, a `let` otherwise) whose value is
//! a method chain, one method per instruction. Words are carried over as written, not expanded: the
//! `.build` methods expand `$NAME` exactly as the instructions do, so the two compile to the same graph.
//! Pre-FROM ARGs become `param`s; the ids of secret and SSH mounts become `secret`/`ssh` handles.

use std::collections::BTreeMap;

mod params;
use params::{binary, choice};

use super::buildfile::syntax::{
    BinOp, Expr, ExprKind, Ident, Item, ItemKind, Let, Module, StrPart, TypeExpr,
};
use super::dockerfile::syntax::ast::{
    Command, Dockerfile, Flag, Healthcheck, Instruction, InstructionKind, Word,
};
use super::mount::Spec;
use super::shell;
use crate::diag::{Diagnostic, Result, SourceFile, Span};

/// Converts a parsed Dockerfile into formatted `.build` source. The caller has run `check::dockerfile`
/// (a FROM comes first).
pub fn dockerfile(df: &Dockerfile) -> Result<String> {
    let mut c = Converter {
        df,
        params: Vec::new(),
        param_defaults: BTreeMap::new(),
        handles: BTreeMap::new(),
        stages: Vec::new(),
    };
    let module = c.module()?;
    Ok(super::buildfile::syntax::fmt::module(&module))
}

struct Stage<'a> {
    from: &'a Instruction,
    body: Vec<&'a Instruction>,
    /// The name as written after AS (lower-cased, as Dockerfiles compare them).
    alias: Option<String>,
    binding: String,
}

struct Converter<'a> {
    df: &'a Dockerfile,
    /// Pre-FROM ARGs: name → default (None: declared without one).
    params: Vec<(String, Option<String>)>,
    /// Defaults of params that read earlier params, as expressions of them.
    param_defaults: BTreeMap<String, Expr>,
    /// Secret and SSH ids used by mounts → (binding name, is ssh).
    handles: BTreeMap<(bool, String), String>,
    stages: Vec<Stage<'a>>,
}

const KEYWORDS: [&str; 13] = [
    "import", "as", "param", "secret", "ssh", "let", "fn", "target", "if", "else", "true", "false",
    "none",
];

/// The built-in functions of `.build`: a binding of the same name would hide one.
const BUILTINS: [&str; 12] = [
    "image", "scratch", "from", "context", "files", "url", "git", "cache", "bind", "tmpfs", "join",
    "print",
];

/// A `.build` identifier for an arbitrary name: other characters become `_`.
fn ident_for(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    if KEYWORDS.contains(&s.as_str()) || BUILTINS.contains(&s.as_str()) {
        s.push('_');
    }
    s
}

fn ident(name: &str) -> Ident {
    Ident {
        name: name.to_string(),
        span: Span::default(),
    }
}

fn item(kind: ItemKind) -> Item {
    Item {
        kind,
        span: Span::default(),
    }
}

fn s(text: &str) -> Expr {
    Expr::string(text)
}

fn strings(items: &[String]) -> Expr {
    Expr::list(items.iter().map(|i| s(i)).collect())
}

impl<'a> Converter<'a> {
    fn error(&self, span: Span, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::at(&self.df.file, span, msg)
    }

    fn module(&mut self) -> Result<Module> {
        let df = self.df;
        for ins in &df.instructions {
            match &ins.kind {
                InstructionKind::From { alias, .. } => {
                    let alias = alias.as_ref().map(|a| a.text.to_ascii_lowercase());
                    self.stages.push(Stage {
                        from: ins,
                        body: Vec::new(),
                        alias,
                        binding: String::new(),
                    });
                }
                InstructionKind::Arg(decls) if self.stages.is_empty() => {
                    for d in decls {
                        let value = d.value.as_ref().map(|w| self.meta_expand(&w.text));
                        // A default read from earlier params stays an expression of them, so a
                        // `--build-arg` of those still changes it; one reading itself is folded.
                        let reads_itself = |w: &Word| {
                            w.text.contains(&format!("${}", d.key.text))
                                || w.text.contains(&format!("${{{}", d.key.text))
                        };
                        match d.value.as_ref().filter(|w| !reads_itself(w)) {
                            Some(w) => match self.param_expr(&w.text) {
                                Some(e) => self.param_defaults.insert(d.key.text.clone(), e),
                                None => self.param_defaults.remove(&d.key.text),
                            },
                            None => self.param_defaults.remove(&d.key.text),
                        };
                        self.params.retain(|(k, _)| *k != d.key.text);
                        self.params.push((d.key.text.clone(), value));
                    }
                }
                _ => {
                    if let Some(st) = self.stages.last_mut() {
                        st.body.push(ins);
                    }
                }
            }
        }
        // Binding names: the stage's own name where it has one, else `stage<N>`; the last unnamed
        // stage is the `image` target.
        let last = self.stages.len().saturating_sub(1);
        let mut taken: Vec<String> = self.params.iter().map(|(k, _)| ident_for(k)).collect();
        for (i, st) in self.stages.iter_mut().enumerate() {
            let base = match &st.alias {
                Some(a) => ident_for(a),
                None if i == last => "final".to_string(),
                None => format!("stage{i}"),
            };
            let mut name = base.clone();
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{base}_{n}");
                n += 1;
            }
            taken.push(name.clone());
            st.binding = name;
        }
        let mut bodies = Vec::new();
        for i in 0..self.stages.len() {
            bodies.push(self.stage(i)?);
        }
        let mut items = Vec::new();
        for (k, v) in &self.params {
            let (ty, default) = match v {
                Some(v) => (
                    TypeExpr::named("String"),
                    Some(self.param_defaults.get(k).cloned().unwrap_or_else(|| s(v))),
                ),
                None => (
                    TypeExpr {
                        kind: super::buildfile::syntax::TypeKind::Optional(Box::new(
                            TypeExpr::named("String"),
                        )),
                        span: Span::default(),
                    },
                    None,
                ),
            };
            items.push(item(ItemKind::Param {
                name: ident(&ident_for(k)),
                ty,
                default,
            }));
        }
        for ((ssh, id), name) in &self.handles {
            let id_expr = (ident_for(id) != *id).then(|| s(id));
            items.push(item(if *ssh {
                ItemKind::Ssh {
                    name: ident(name),
                    id: id_expr,
                }
            } else {
                ItemKind::Secret {
                    name: ident(name),
                    id: id_expr,
                }
            }));
        }
        for (i, value) in bodies.into_iter().enumerate() {
            let st = &self.stages[i];
            let name = ident(&st.binding);
            items.push(item(if st.alias.is_some() || i == last {
                ItemKind::Target {
                    name,
                    ty: TypeExpr::named("Image"),
                    value,
                    // A Dockerfile's names and platforms come from the command line, never the file.
                    tags: None,
                    platforms: None,
                }
            } else {
                ItemKind::Let(Let {
                    name,
                    ty: None,
                    value,
                    span: Span::default(),
                })
            }));
        }
        let file = SourceFile::new(format!("{}.build", self.df.file.name), "");
        Ok(Module {
            file,
            items,
            comments: Vec::new(),
        })
    }

    /// A pre-FROM word expanded with the params' defaults (and BuildKit's platform args), as the
    /// Dockerfile's FROM would see it without `--build-arg`.
    fn meta_expand(&self, text: &str) -> String {
        let lookup = |n: &str| -> Option<String> {
            if let Some((_, v)) = self.params.iter().rev().find(|(k, _)| k == n) {
                return v.clone();
            }
            super::dockerfile::syntax::ast::builtin_arg(n).map(String::from)
        };
        shell::expand_word(text, self.df.escape, &lookup).unwrap_or_else(|_| text.to_string())
    }

    /// A FROM word as a `.build` expression that the params still feed: quotes and escapes resolved
    /// now, `$NAME`/`${NAME}` of a param an interpolation, `${NAME:-word}`/`${NAME-word}` an `if`. A
    /// word the translation cannot keep (another `${}` form on a param) is expanded now with the
    /// defaults.
    fn image_ref(&self, text: &str) -> Expr {
        self.param_expr(text)
            .unwrap_or_else(|| s(&self.meta_expand(text)))
    }

    fn stage_index(&self, name: &str) -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        self.stages
            .iter()
            .position(|s| s.alias.as_deref() == Some(lower.as_str()))
            .or_else(|| {
                name.parse::<usize>()
                    .ok()
                    .filter(|i| *i < self.stages.len())
            })
    }

    fn stage(&mut self, i: usize) -> Result<Expr> {
        let from = self.stages[i].from;
        let InstructionKind::From { image, .. } = &from.kind else {
            unreachable!("stages start with FROM")
        };
        let reference = self.meta_expand(&image.text);
        let platform = self.stage_platform(from)?;
        let mut e = if let Some(j) = self
            .stages
            .iter()
            .take(self.stages.len())
            .position(|s| s.alias.as_deref() == Some(reference.to_ascii_lowercase().as_str()))
        {
            if let (Some(_), Some(f)) = (&platform, from.flag("platform")) {
                return Err(self
                    .error(f.value_span, "`.build` has no platform for a stage built on another stage")
                    .help("drop --platform here (the stage keeps its parent's platform), or give it to the parent's FROM"));
            }
            let from = |k: usize| {
                Expr::call(
                    Expr::name("from"),
                    vec![Expr::name(&self.stages[k].binding)],
                    vec![],
                )
            };
            match self.param_expr(&image.text) {
                // The params choose the stage (`FROM build-${VARIANT}`): each stage the word could
                // name is tried in turn, and any other value is an image, as in the Dockerfile.
                Some(word) => {
                    let prefix = image.text[..image.text.find('$').unwrap_or(0)]
                        .trim_start_matches(['"', '\''])
                        .to_ascii_lowercase();
                    let mut e = Expr::call(Expr::name("image"), vec![word.clone()], vec![]);
                    for (k, st) in self.stages[..i].iter().enumerate().rev() {
                        if let Some(alias) = st.alias.as_deref().filter(|a| a.starts_with(&prefix))
                        {
                            e = Expr::new(ExprKind::If {
                                cond: Box::new(choice(&word, alias)),
                                then: Box::new(from(k)),
                                other: Box::new(e),
                            });
                        }
                    }
                    e
                }
                None => from(j),
            }
        } else if reference == "scratch" {
            Expr::call(Expr::name("scratch"), vec![], vec![])
        } else if reference.is_empty() {
            // Compile-only Dockerfile lowering keeps a reference that expands to nothing as written;
            // the params still choose the image when given.
            let written = s(&image.text);
            let arg = match self.param_expr(&image.text) {
                Some(e) => Expr::new(ExprKind::If {
                    cond: Box::new(binary(BinOp::Eq, e.clone(), s(""))),
                    then: Box::new(written),
                    other: Box::new(e),
                }),
                None => written,
            };
            Expr::call(Expr::name("image"), vec![arg], vec![])
        } else {
            Expr::call(
                Expr::name("image"),
                vec![self.image_ref(&image.text)],
                platform.map(|p| ("platform", p)).into_iter().collect(),
            )
        };
        let body = self.stages[i].body.clone();
        for ins in body {
            e = self.instruction(e, ins)?;
        }
        Ok(e)
    }

    /// A word as a `.build` string that expands to what the word expands to: as written when it holds
    /// a variable, otherwise with its quotes already removed (what reads naturally).
    fn word(&self, raw: &str) -> Expr {
        let none = |_: &str| None;
        if !raw.contains('$')
            && let Ok(plain) = shell::expand_word(raw, self.df.escape, &none)
        {
            if shell::expand_word(&plain, '\\', &none).as_deref() == Ok(plain.as_str()) {
                return s(&plain);
            }
            // `.build` expands with `\` as the escape character: protect what it would change.
            let mut escaped = String::new();
            for c in plain.chars() {
                if matches!(c, '\\' | '"' | '\'' | '$') {
                    escaped.push('\\');
                }
                escaped.push(c);
            }
            return s(&escaped);
        }
        s(raw)
    }

    fn words(&self, raws: &[String]) -> Expr {
        Expr::list(raws.iter().map(|r| self.word(r)).collect())
    }

    /// `FROM --platform=`: `$BUILDPLATFORM` is `build_platform()`, `$TARGETPLATFORM` (or nothing) the
    /// default, anything else the words as written (`$PLATFORM` through the params).
    fn stage_platform(&self, from: &Instruction) -> Result<Option<Expr>> {
        let Some(f) = from.flag("platform") else {
            return Ok(None);
        };
        let value = f.value.clone().unwrap_or_default();
        Ok(match value.trim_matches(['"', '\'']) {
            "" | "$TARGETPLATFORM" | "${TARGETPLATFORM}" => None,
            "$BUILDPLATFORM" | "${BUILDPLATFORM}" => {
                Some(Expr::call(Expr::name("build_platform"), vec![], vec![]))
            }
            _ => Some(self.image_ref(&value)),
        })
    }

    fn flag(&self, ins: &Instruction, name: &str) -> Option<String> {
        ins.flag(name).map(|f| f.value.clone().unwrap_or_default())
    }

    fn instruction(&mut self, e: Expr, ins: &Instruction) -> Result<Expr> {
        Ok(match &ins.kind {
            InstructionKind::From { .. } => unreachable!("split into stages"),
            InstructionKind::Arg(decls) => {
                let entries = decls
                    .iter()
                    .map(|d| {
                        let v = match &d.value {
                            Some(w) => self.word(&w.text),
                            None if self.params.iter().any(|(k, _)| *k == d.key.text) => {
                                Expr::name(&ident_for(&d.key.text))
                            }
                            None => Expr::new(ExprKind::None),
                        };
                        (d.key.text.clone(), v)
                    })
                    .collect();
                e.method("arg", vec![Expr::map(entries)], vec![])
            }
            InstructionKind::Env(pairs) | InstructionKind::Label(pairs) => {
                let entries = pairs
                    .iter()
                    .map(|kv| {
                        (
                            kv.key.text.clone(),
                            self.word(kv.value.as_ref().map_or("", |w| w.text.as_str())),
                        )
                    })
                    .collect();
                let m = if matches!(ins.kind, InstructionKind::Env(_)) {
                    "env"
                } else {
                    "label"
                };
                e.method(m, vec![Expr::map(entries)], vec![])
            }
            InstructionKind::Workdir(w) => e.method("workdir", vec![self.word(&w.text)], vec![]),
            InstructionKind::User(w) => e.method("user", vec![self.word(&w.text)], vec![]),
            InstructionKind::StopSignal(w) => {
                e.method("stop_signal", vec![self.word(&w.text)], vec![])
            }
            InstructionKind::Maintainer(w) => {
                e.method("maintainer", vec![self.word(&w.text)], vec![])
            }
            InstructionKind::Cmd(c) => e.method("cmd", vec![command(c)], vec![]),
            InstructionKind::Entrypoint(c) => e.method("entrypoint", vec![command(c)], vec![]),
            InstructionKind::Shell { args, .. } => e.method("shell", vec![strings(args)], vec![]),
            InstructionKind::Expose(words) => e.method(
                "expose",
                vec![self.words(&words.iter().map(|w| w.text.clone()).collect::<Vec<_>>())],
                vec![],
            ),
            InstructionKind::Volume(words) => e.method(
                "volume",
                vec![self.words(&words.iter().map(|w| w.text.clone()).collect::<Vec<_>>())],
                vec![],
            ),
            InstructionKind::Onbuild(trigger) => {
                e.method("onbuild", vec![s(&trigger.text(&self.df.file))], vec![])
            }
            InstructionKind::Healthcheck(Healthcheck::None(_)) => {
                e.method("no_healthcheck", vec![], vec![])
            }
            InstructionKind::Healthcheck(Healthcheck::Cmd(c)) => {
                let mut named = Vec::new();
                for (flag, param) in [
                    ("interval", "interval"),
                    ("timeout", "timeout"),
                    ("start-period", "start_period"),
                    ("start-interval", "start_interval"),
                ] {
                    if let Some(v) = self.flag(ins, flag) {
                        named.push((param, s(&v)));
                    }
                }
                if let Some(f) = ins.flag("retries") {
                    let v = f.value.clone().unwrap_or_default();
                    let n = v.parse::<u64>().map_err(|_| {
                        self.error(f.value_span, format!("invalid number `{v}` for --retries"))
                    })?;
                    named.push(("retries", Expr::int(n)));
                }
                let cmd = match c {
                    Command::Shell(w) => s(&w.text),
                    Command::Exec { args, .. } => strings(args),
                };
                e.method("healthcheck", vec![cmd], named)
            }
            InstructionKind::Run(c) => self.run(e, ins, c)?,
            InstructionKind::Copy { sources, dest } => self.copy(e, ins, sources, dest, false)?,
            InstructionKind::Add { sources, dest } => self.copy(e, ins, sources, dest, true)?,
        })
    }

    fn run(&mut self, e: Expr, ins: &Instruction, c: &Command) -> Result<Expr> {
        let cmd = match c {
            Command::Exec { args, .. } => strings(args),
            Command::Shell(w) if ins.heredocs.is_empty() => s(&w.text),
            Command::Shell(w) => s(&ins.shell_script(w)),
        };
        let mut mounts = Vec::new();
        let mut named = Vec::new();
        for f in &ins.flags {
            match f.name.as_str() {
                "mount" => mounts.push(self.mount(f)?),
                "network" => named.push(("network", s(f.value.as_deref().unwrap_or("")))),
                "security" => named.push(("security", s(f.value.as_deref().unwrap_or("")))),
                other => {
                    return Err(self
                        .error(f.span, format!("unknown flag `--{other}` for RUN"))
                        .help("RUN accepts: --mount, --network, --security"));
                }
            }
        }
        if !mounts.is_empty() {
            named.insert(0, ("mounts", Expr::list(mounts)));
        }
        Ok(e.method("run", vec![cmd], named))
    }

    /// A `--mount` option list as a mount expression, values as written.
    fn mount(&mut self, f: &Flag) -> Result<Expr> {
        let text = f.value.clone().unwrap_or_default();
        let spec = Spec::read(&text)
            .map_err(|err| self.error(f.value_span, err.message).help(err.help))?;
        let o = MountOptions {
            spec: &spec,
            file: self.df.file.clone(),
            span: f.value_span,
        };
        // The last `type=`, as convert has always read it (lowering checks the first).
        let kind = o.get(&["type"]).unwrap_or_else(|| "bind".into());
        let target = o
            .get(&["target", "dst", "destination"])
            .filter(|t| !t.is_empty());
        let mut named: Vec<(&str, Expr)> = Vec::new();
        Ok(match kind.as_str() {
            "secret" => self.secret_mount(&o, target)?,
            "ssh" => {
                let id = o
                    .get(&["id"])
                    .filter(|i| !i.is_empty())
                    .unwrap_or_else(|| "default".into());
                let handle = self.handle(true, &id);
                if let Some(t) = &target {
                    named.push(("target", s(t)));
                }
                if let Some(r) = o.boolean(&["required"])? {
                    named.push(("required", bool_expr(r)));
                }
                named.extend(o.ownership()?);
                Expr::name(&handle).method("mount", vec![], named)
            }
            "cache" => {
                let Some(t) = target else {
                    return Err(self
                        .error(f.value_span, "cache mount needs a `target`")
                        .help("add `target=/path`"));
                };
                if let Some(id) = o.get(&["id"]).filter(|i| !i.is_empty()) {
                    named.push(("id", s(&id)));
                }
                if let Some(sh) = o.get(&["sharing"]) {
                    named.push(("sharing", s(&sh)));
                }
                named.extend(o.ownership()?);
                if o.readonly(false)? {
                    named.push(("readonly", bool_expr(true)));
                }
                // The seed: lowering refuses `source` without `from` in both languages alike.
                if let Some(from) = o.get(&["from"]) {
                    named.push(("from", self.source(&from)));
                }
                if let Some(src) = o.get(&["source", "src"]) {
                    named.push(("source", s(&src)));
                }
                if let Some(export) = o.boolean(&["export"])? {
                    named.push(("export", bool_expr(export)));
                }
                Expr::call(Expr::name("cache"), vec![s(&t)], named)
            }
            "tmpfs" => {
                let Some(t) = target else {
                    return Err(self
                        .error(f.value_span, "tmpfs mount needs a `target`")
                        .help("add `target=/path`"));
                };
                if let Some(size) = o.get(&["size"]) {
                    let n =
                        crate::options::parse_size(&size).ok_or_else(|| o.bad("size", &size))?;
                    named.push(("size", Expr::int(n)));
                }
                Expr::call(Expr::name("tmpfs"), vec![s(&t)], named)
            }
            "bind" => {
                let from = match o.get(&["from"]) {
                    Some(v) => self.source(&v),
                    None => context(),
                };
                if let Some(t) = &target {
                    named.push(("target", s(t)));
                }
                if let Some(src) = o.get(&["source", "src"]) {
                    named.push(("source", s(&src)));
                }
                if !o.readonly(true)? {
                    named.push(("rw", bool_expr(true)));
                }
                Expr::call(Expr::name("bind"), vec![from], named)
            }
            other => {
                return Err(self
                    .error(f.value_span, format!("unknown mount type `{other}`"))
                    .help("mount types are: bind, cache, tmpfs, secret, ssh"));
            }
        })
    }

    /// A secret mount: the handle's `env`, `file` or `mount` method, whichever says it shortest.
    fn secret_mount(&mut self, o: &MountOptions, target: Option<String>) -> Result<Expr> {
        let id = o.get(&["id"]).filter(|i| !i.is_empty()).unwrap_or_else(|| {
            target
                .as_deref()
                .and_then(|t| t.rsplit('/').find(|p| !p.is_empty()))
                .unwrap_or_default()
                .to_string()
        });
        if id.is_empty() {
            return Err(self
                .error(o.span, "secret mount needs an `id`")
                .help("write `--mount=type=secret,id=NAME`"));
        }
        let handle = self.handle(false, &id);
        let env = o.get(&["env"]).filter(|e| !e.is_empty());
        let mut named: Vec<(&str, Expr)> = Vec::new();
        if let Some(r) = o.boolean(&["required"])? {
            named.push(("required", bool_expr(r)));
        }
        named.extend(o.ownership()?);
        Ok(match (&target, &env) {
            (None, Some(env)) if named.iter().all(|(k, _)| *k == "required") => {
                Expr::name(&handle).method("env", vec![s(env)], named)
            }
            (t, None) => {
                let args = t.iter().map(|t| s(t)).collect();
                Expr::name(&handle).method("file", args, named)
            }
            (t, env) => {
                let mut all = Vec::new();
                if let Some(t) = t {
                    all.push(("target", s(t)));
                }
                if let Some(env) = env {
                    all.push(("env", s(env)));
                }
                all.extend(named);
                Expr::name(&handle).method("mount", vec![], all)
            }
        })
    }

    /// The binding of a secret or SSH id, declared once.
    fn handle(&mut self, ssh: bool, id: &str) -> String {
        if let Some(n) = self.handles.get(&(ssh, id.to_string())) {
            return n.clone();
        }
        let mut name = ident_for(id);
        let clash = |n: &str, c: &Converter| {
            c.handles.values().any(|v| v == n)
                || c.params.iter().any(|(k, _)| ident_for(k) == n)
                || c.stages.iter().any(|s| s.binding == n)
        };
        while clash(&name, self) {
            name.push('_');
        }
        self.handles.insert((ssh, id.to_string()), name.clone());
        name
    }

    /// `--from=` of COPY or a bind mount: a stage, or an image.
    fn source(&self, value: &str) -> Expr {
        match self.stage_index(value) {
            Some(i) => Expr::name(&self.stages[i].binding),
            None => Expr::call(Expr::name("image"), vec![s(value)], vec![]),
        }
    }

    fn copy(
        &mut self,
        e: Expr,
        ins: &Instruction,
        sources: &[Word],
        dest: &Word,
        add: bool,
    ) -> Result<Expr> {
        let method = if add { "add" } else { "copy" };
        let heredoc = |w: &Word| {
            ins.heredocs.iter().find(|h| {
                w.text.starts_with("<<")
                    && w.text
                        .trim_start_matches('<')
                        .trim_start_matches('-')
                        .trim_matches(['"', '\''])
                        == h.name.text
            })
        };
        let docs: Vec<_> = sources.iter().filter_map(heredoc).collect();
        let mut named: Vec<(&str, Expr)> = Vec::new();
        let from = if !docs.is_empty() {
            if docs.len() != sources.len() {
                return Err(self
                    .error(
                        ins.keyword.span,
                        format!(
                            "{} mixing heredocs and files is not supported yet",
                            ins.kind.name()
                        ),
                    )
                    .help("split it into one instruction for the heredocs and one for the files"));
            }
            let files = docs
                .iter()
                .map(|h| (h.name.text.clone(), s(&h.text())))
                .collect();
            // Unquoted heredocs expand variables, as BuildKit does.
            let named = if docs.iter().any(|h| h.expand) {
                vec![("expand", Expr::new(ExprKind::Bool(true)))]
            } else {
                vec![]
            };
            Expr::call(Expr::name("files"), vec![Expr::map(files)], named)
        } else if add
            && sources.len() == 1
            && (sources[0].text.contains("://") || sources[0].text.starts_with("git@"))
        {
            let url = &sources[0].text;
            let is_git = url.starts_with("git@") || url.ends_with(".git") || url.contains(".git#");
            if is_git {
                let keep = self
                    .flag(ins, "keep-git-dir")
                    .map(|v| crate::options::parse_bool(Some(&v)).unwrap_or(true))
                    .unwrap_or(false);
                let named_git = if keep {
                    vec![("keep_git_dir", Expr::new(ExprKind::Bool(true)))]
                } else {
                    vec![]
                };
                Expr::call(Expr::name("git"), vec![self.word(url)], named_git)
            } else {
                let mut n = Vec::new();
                if let Some(c) = self.flag(ins, "checksum") {
                    n.push(("checksum", self.word(&c)));
                }
                Expr::call(Expr::name("url"), vec![self.word(url)], n)
            }
        } else {
            match self.flag(ins, "from") {
                Some(v) => self.source(&v),
                None => context(),
            }
        };
        let srcs: Vec<String> = if !docs.is_empty() {
            docs.iter().map(|h| h.name.text.clone()).collect()
        } else if matches!(from.kind, ExprKind::Call { ref callee, .. } if matches!(&callee.kind, ExprKind::Name(n) if n == "url" || n == "git"))
        {
            // `add` names the fetched file after the URL itself.
            Vec::new()
        } else {
            sources.iter().map(|w| w.text.clone()).collect()
        };
        if let Some(v) = self.flag(ins, "chown") {
            named.push(("chown", self.word(&v)));
        }
        if let Some(f) = ins.flag("chmod") {
            let v = f.value.clone().unwrap_or_default();
            let m = u64::from_str_radix(&v, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| {
                    self.error(f.value_span, format!("invalid --chmod value `{v}`"))
                        .help("give an octal mode such as `644` or `0755`")
                })?;
            named.push(("chmod", Expr::octal(m)));
        }
        let excludes: Vec<String> = ins
            .flags
            .iter()
            .filter(|f| f.name == "exclude")
            .map(|f| f.value.clone().unwrap_or_default())
            .collect();
        if !excludes.is_empty() {
            named.push(("exclude", strings(&excludes)));
        }
        if let Some(v) = self.flag(ins, "parents") {
            let b =
                crate::options::parse_bool(Some(&v).filter(|v| !v.is_empty()).map(|v| v.as_str()))
                    .unwrap_or(false);
            if b {
                named.push(("parents", Expr::new(ExprKind::Bool(true))));
            }
        }
        if ins.flag("link").is_some() {
            named.push(("link", Expr::new(ExprKind::Bool(true))));
        }
        for f in &ins.flags {
            let known = [
                "from",
                "chown",
                "chmod",
                "link",
                "parents",
                "exclude",
                "checksum",
                "keep-git-dir",
            ];
            if !known.contains(&f.name.as_str())
                || (!add && ["checksum", "keep-git-dir"].contains(&f.name.as_str()))
            {
                return Err(self
                    .error(
                        f.span,
                        format!("unknown flag `--{}` for {}", f.name, ins.kind.name()),
                    )
                    .help("see `kiln build` for the flags each instruction takes"));
            }
        }
        let srcs = if docs.is_empty()
            && !matches!(from.kind, ExprKind::Call { ref callee, .. } if matches!(&callee.kind, ExprKind::Name(n) if n == "url" || n == "git"))
        {
            self.words(&srcs)
        } else {
            strings(&srcs)
        };
        Ok(e.method(method, vec![from, srcs, self.word(&dest.text)], named))
    }
}

fn context() -> Expr {
    Expr::call(Expr::name("context"), vec![s(".")], vec![])
}

fn bool_expr(b: bool) -> Expr {
    Expr::new(ExprKind::Bool(b))
}

/// One `--mount` list as convert reads it: values as written; a bad number, size or flag is reported
/// at the whole list.
struct MountOptions<'a> {
    spec: &'a Spec,
    file: std::sync::Arc<SourceFile>,
    span: Span,
}

impl MountOptions<'_> {
    fn get(&self, keys: &[&str]) -> Option<String> {
        self.spec.value(keys)
    }

    fn bad(&self, what: &str, v: &str) -> Diagnostic {
        Diagnostic::at(
            &self.file,
            self.span,
            format!("invalid {what} `{v}` in --mount"),
        )
    }

    fn octal(&self, key: &str) -> Result<Option<Expr>> {
        match self.get(&[key]) {
            None => Ok(None),
            Some(v) => u64::from_str_radix(&v, 8)
                .map(|n| Some(Expr::octal(n)))
                .map_err(|_| self.bad(key, &v)),
        }
    }

    fn number(&self, key: &str) -> Result<Option<Expr>> {
        match self.get(&[key]) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .map(|n| Some(Expr::int(n)))
                .map_err(|_| self.bad(key, &v)),
        }
    }

    fn boolean(&self, keys: &[&str]) -> Result<Option<bool>> {
        match self.spec.get(keys) {
            None => Ok(None),
            Some(x) => crate::options::parse_bool(x.value.as_deref())
                .map(Some)
                .ok_or_else(|| self.bad(&x.key, x.value.as_deref().unwrap_or(""))),
        }
    }

    /// `mode` (octal), `uid`, `gid`: the same options on secret, ssh and cache mounts.
    fn ownership(&self) -> Result<Vec<(&'static str, Expr)>> {
        let mut out = Vec::new();
        for k in ["mode", "uid", "gid"] {
            let v = if k == "mode" {
                self.octal(k)?
            } else {
                self.number(k)?
            };
            if let Some(v) = v {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// Whether the mount is read-only: `readonly`/`ro` wins over `rw`/`readwrite`; `default` otherwise.
    fn readonly(&self, default: bool) -> Result<bool> {
        Ok(
            match (
                self.boolean(&["readonly", "ro"])?,
                self.boolean(&["rw", "readwrite"])?,
            ) {
                (Some(ro), _) => ro,
                (None, Some(rw)) => !rw,
                (None, None) => default,
            },
        )
    }
}

fn command(c: &Command) -> Expr {
    match c {
        Command::Shell(w) => s(&w.text),
        Command::Exec { args, .. } => strings(args),
    }
}

/// The parts of a string literal meaning `text`.
fn literal_parts(text: &str) -> Vec<StrPart> {
    match Expr::string(text).kind {
        ExprKind::Str { parts, .. } => parts,
        _ => unreachable!("a string"),
    }
}
