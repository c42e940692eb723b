//! The checker proper: scopes, names and their uses, and the type of every expression, handles
//! followed from where they are declared to where they flow.

use std::collections::HashMap;
use std::sync::Arc;

use crate::diag::{Diagnostic, Located, Result, SourceFile, Span, suggest};
use crate::frontend::buildfile::syntax::{
    Arg, BinOp, Expr, ExprKind, FnDef, Ident, Item, ItemKind, Module, StrPart, TypeExpr,
};

use super::{
    Binding, Builtin, FUNCTIONS, FnSig, Interface, Ty, Use, Want, bind_args, hint_for, methods_of,
    resolve_type,
};

/// Checks `module`, whose imports (by alias) are already-checked `deps` with their index.
pub fn check(module: &Module, deps: &[(String, usize, &Interface)]) -> Result<Interface> {
    let mut c = Checker {
        file: module.file.clone(),
        globals: HashMap::new(),
        defined: HashMap::new(),
        ordered: HashMap::new(),
        scopes: Vec::new(),
        uses: HashMap::new(),
        deps: deps.iter().map(|(a, i, f)| (a.clone(), (*i, *f))).collect(),
    };
    for item in &module.items {
        let name = match &item.kind {
            ItemKind::Let(l) => &l.name,
            ItemKind::Param { name, .. }
            | ItemKind::Secret { name, .. }
            | ItemKind::Ssh { name, .. }
            | ItemKind::Import { alias: name, .. } => name,
            ItemKind::Fn(_) | ItemKind::Target { .. } => continue,
        };
        c.ordered.entry(name.name.clone()).or_insert(name.span);
    }
    c.signatures(module)?;
    for item in &module.items {
        c.item(item)?;
    }
    Ok(Interface {
        names: c.globals,
        uses: c.uses,
    })
}

struct Checker<'a> {
    file: Arc<SourceFile>,
    globals: HashMap<String, Binding>,
    /// Where each global was defined.
    defined: HashMap<String, Span>,
    /// Where each name that may only be used after its definition (lets, params, handles, imports) is
    /// defined, known from the start: a use before it gets a better error than "unknown name".
    ordered: HashMap<String, Span>,
    /// The enclosing function's parameters and lets: name → (defining span, binding).
    scopes: Vec<HashMap<String, (Span, Binding)>>,
    uses: HashMap<Span, Use>,
    deps: HashMap<String, (usize, &'a Interface)>,
}

type Typed = (Ty, Option<Located>);

impl Checker<'_> {
    /// Declares the functions and targets: they carry their types, so they may be used before they appear.
    fn signatures(&mut self, module: &Module) -> Result<()> {
        for item in &module.items {
            match &item.kind {
                ItemKind::Fn(f) => {
                    let mut params = Vec::new();
                    for p in &f.params {
                        params.push((
                            p.name.name.clone(),
                            resolve_type(&self.file, &p.ty)?,
                            p.default.is_some(),
                        ));
                    }
                    let sig = FnSig {
                        params,
                        ret: resolve_type(&self.file, &f.ret)?,
                        at: self.at(f.name.span),
                        ret_at: self.at(f.ret.span),
                    };
                    self.define(&f.name.name, f.name.span, Binding::Fn(sig))?;
                }
                ItemKind::Target { name, ty, .. } => {
                    let t = resolve_type(&self.file, ty)?;
                    // A handle-typed target is reported with its value's origin in the second pass.
                    if !matches!(t, Ty::Image | Ty::Dir) && !t.is_handle() {
                        return Err(Diagnostic::at(
                            &self.file,
                            ty.span,
                            format!("a target is an Image or a Dir, not {t}"),
                        )
                        .help(
                            "targets are what `kiln build` produces: write `target name: Image = ...`",
                        ));
                    }
                    // (Its origin is the target, for a use that comes before that report.)
                    let origin = t.is_handle().then(|| self.at(name.span));
                    self.define(&name.name, name.span, Binding::Value { ty: t, origin })?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks one item, in order: what it uses must be defined above it (functions and targets anywhere).
    /// A param: a plain value from the command line, checked against its default.
    fn param(&mut self, name: &Ident, ty: &TypeExpr, default: Option<&Expr>) -> Result<()> {
        let t = resolve_type(&self.file, ty)?;
        if t.is_handle() {
            let instead = match t.handle_name() {
                "an Ssh handle" => format!(
                    "declare `ssh {0}` and build with `--ssh {0}` (or `--ssh {0}=SOCKET`)",
                    name.name
                ),
                _ => format!(
                    "declare `secret {0}` and build with `--secret id={0},src=FILE`",
                    name.name
                ),
            };
            return Err(Diagnostic::at(
                &self.file,
                ty.span,
                format!("a param cannot be {}", t.handle_name()),
            )
            .help(format!(
                "params are plain values from the command line; {instead}"
            )));
        }
        if !matches!(t, Ty::String | Ty::Path | Ty::Int | Ty::Bool)
            && !t.fits(&Ty::List(Box::new(Ty::String)))
            && !t.fits(&Ty::Opt(Box::new(Ty::String)))
        {
            return Err(Diagnostic::at(
                &self.file,
                ty.span,
                format!("a param cannot be of type {t}"),
            )
            .help(
                "params are String, Int, Bool, [String] or String? (the command line gives text)",
            ));
        }
        if let Some(d) = default {
            let (dt, origin) = self.expr(d)?;
            self.expect(&dt, &origin, &t, d.span, "the param's default")?;
        }
        // A param without a default must come from the command line: evaluation checks that.
        self.define(
            &name.name,
            name.span,
            Binding::Value {
                ty: t,
                origin: None,
            },
        )?;
        Ok(())
    }

    /// A function's body, in a scope of its parameters and lets.
    fn function(&mut self, f: &FnDef) -> Result<()> {
        self.scopes.push(HashMap::new());
        for p in &f.params {
            let t = resolve_type(&self.file, &p.ty)?;
            if let Some(d) = &p.default {
                let (dt, origin) = self.expr(d)?;
                self.expect(&dt, &origin, &t, d.span, "the parameter's default")?;
            }
            let origin = t.is_handle().then(|| self.at(p.name.span));
            self.scopes.last_mut().expect("pushed").insert(
                p.name.name.clone(),
                (p.name.span, Binding::Value { ty: t, origin }),
            );
        }
        for l in &f.lets {
            let (t, origin) = self.expr(&l.value)?;
            let t = match &l.ty {
                Some(want) => {
                    let w = resolve_type(&self.file, want)?;
                    self.expect(&t, &origin, &w, l.value.span, "the annotated type")?;
                    w
                }
                None => t,
            };
            self.scopes.last_mut().expect("pushed").insert(
                l.name.name.clone(),
                (l.name.span, Binding::Value { ty: t, origin }),
            );
        }
        let (t, origin) = self.expr(&f.body)?;
        let ret = resolve_type(&self.file, &f.ret)?;
        self.expect(&t, &origin, &ret, f.body.span, "the function's result")?;
        self.scopes.pop();
        Ok(())
    }

    fn item(&mut self, item: &Item) -> Result<()> {
        match &item.kind {
            ItemKind::Import { path, alias } => {
                if !self.deps.contains_key(&alias.name) {
                    return Err(Diagnostic::at(&self.file, path.span, "import not loaded"));
                }
                let idx = self.deps[&alias.name].0;
                self.define(&alias.name, alias.span, Binding::Module(idx))?;
            }
            ItemKind::Param { name, ty, default } => self.param(name, ty, default.as_ref())?,
            ItemKind::Secret { name, id } | ItemKind::Ssh { name, id } => {
                let ty = if matches!(item.kind, ItemKind::Secret { .. }) {
                    Ty::Secret
                } else {
                    Ty::Ssh
                };
                if let Some(id) = id
                    && id.as_plain_str().is_none_or(|s| s.is_empty())
                {
                    return Err(Diagnostic::at(
                        &self.file,
                        id.span,
                        "the id must be a plain, non-empty string",
                    )
                    .help("ids are fixed names given with `--secret id=ID` or `--ssh ID=...`"));
                }
                let origin = Some(self.at(name.span));
                self.define(&name.name, name.span, Binding::Value { ty, origin })?;
            }
            ItemKind::Let(l) => {
                let (t, origin) = self.expr(&l.value)?;
                let t = match &l.ty {
                    Some(want) => {
                        let w = resolve_type(&self.file, want)?;
                        self.expect(&t, &origin, &w, l.value.span, "the annotated type")?;
                        w
                    }
                    None => t,
                };
                self.define(&l.name.name, l.name.span, Binding::Value { ty: t, origin })?;
            }
            ItemKind::Fn(f) => self.function(f)?,
            ItemKind::Target {
                name,
                ty,
                value,
                tags,
                platforms,
            } => {
                let want = resolve_type(&self.file, ty)?;
                let (t, origin) = self.expr(value)?;
                if t.is_handle() || want.is_handle() {
                    return Err(self.leak(&t, &origin, value.span, &format!("target `{}`'s output", name.name))
                        .help("targets are Images or Dirs; a secret can only be mounted into a step that builds one"));
                }
                self.expect(
                    &t,
                    &origin,
                    &want,
                    value.span,
                    &format!("target `{}`", name.name),
                )?;
                if let Some(tags) = tags {
                    self.tags(&name.name, &want, tags)?;
                }
                if let Some(platforms) = platforms {
                    self.platforms(&name.name, &want, platforms)?;
                }
            }
        }
        Ok(())
    }

    /// `tagged [...]`: names only an Image has, each a string (lowering checks that it is a reference).
    fn tags(&mut self, target: &str, ty: &Ty, tags: &Expr) -> Result<()> {
        if *ty != Ty::Image {
            return Err(Diagnostic::at(
                &self.file,
                tags.span,
                format!("target `{target}` is a {ty}, and only an Image has tags"),
            )
            .help("a Dir is written with `-o type=local`; tag the Image target that copies it"));
        }
        let (t, origin) = self.expr(tags)?;
        self.expect(
            &t,
            &origin,
            &Ty::List(Box::new(Ty::String)),
            tags.span,
            &format!("the tags of target `{target}`"),
        )
    }

    /// `for [...]`: the platforms only an Image is built for, each a string (lowering normalizes it).
    fn platforms(&mut self, target: &str, ty: &Ty, platforms: &Expr) -> Result<()> {
        if *ty != Ty::Image {
            // kiln writes one platform's files to a directory, so a Dir for several has no output.
            return Err(Diagnostic::at(
                &self.file,
                platforms.span,
                format!("target `{target}` is a {ty}, and only an Image declares its platforms"),
            )
            .help("build the Dir with `--platform`, or declare the platforms of the Image that copies it"));
        }
        let (t, origin) = self.expr(platforms)?;
        self.expect(
            &t,
            &origin,
            &Ty::List(Box::new(Ty::String)),
            platforms.span,
            &format!("the platforms of target `{target}`"),
        )
    }

    fn at(&self, span: Span) -> Located {
        Located::new(&self.file, span)
    }

    fn define(&mut self, name: &str, span: Span, b: Binding) -> Result<()> {
        if let Some(&other) = self.defined.get(name) {
            // Functions and targets are defined before the rest: point at the later one in the text.
            let (first, again) = if other.start <= span.start {
                (other, span)
            } else {
                (span, other)
            };
            return Err(
                Diagnostic::at(&self.file, again, format!("`{name}` is defined twice"))
                    .label(self.at(first), "first defined here")
                    .help("each top-level name is defined once; rename one of them"),
            );
        }
        self.defined.insert(name.to_string(), span);
        self.globals.insert(name.to_string(), b);
        Ok(())
    }

    fn lookup(&self, name: &str) -> Option<&Binding> {
        self.resolve(name).map(|(_, b)| b)
    }

    fn resolve(&self, name: &str) -> Option<(Use, &Binding)> {
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.get(name))
            .map(|(def, b)| (Use::Local(*def), b))
            .or_else(|| self.globals.get(name).map(|b| (Use::Global, b)))
    }

    /// Looks `name` up and records what its use at `span` refers to.
    fn lookup_at(&mut self, name: &str, span: Span) -> Option<Binding> {
        let (u, b) = self.resolve(name)?;
        let b = b.clone();
        let u = match b {
            Binding::Module(i) => Use::Module(i),
            _ => u,
        };
        self.uses.insert(span, u);
        Some(b)
    }

    /// The error for a handle flowing somewhere it may not: at the sink, with the origin beside it.
    fn leak(&self, t: &Ty, origin: &Option<Located>, sink: Span, what: &str) -> Diagnostic {
        // The help names the handle as the user wrote it, when the origin is a name in this file.
        let mut name = None;
        let mut d = Diagnostic::input(format!("{} cannot flow into {what}", t.handle_name()))
            .label(
                self.at(sink),
                format!("{} would flow into {what} here", t.handle_name()),
            );
        if let Some(o) = origin {
            // (A label in another file is drawn as a note after the error.)
            if Arc::ptr_eq(&o.file, &self.file) {
                let written = o.file.text.get(o.span.start..o.span.end).unwrap_or("");
                name = written
                    .starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    .then_some(written);
            }
            d = d.label(o.clone(), "it comes from here");
        }
        d.help(match t.handle_name() {
            "an Ssh handle" => {
                let n = name.unwrap_or("agent");
                format!("an Ssh handle can only be mounted into a step: `.run(cmd, mounts: [{n}.mount()])`")
            }
            _ => {
                let n = name.unwrap_or("token");
                format!("a Secret can only be mounted into a step: `.run(cmd, mounts: [{n}.file()])` or `{n}.env(\"NAME\")`")
            }
        })
    }

    /// `got` must fit `want`; a handle that does not is a leak, anything else a type error.
    fn expect(
        &self,
        got: &Ty,
        origin: &Option<Located>,
        want: &Ty,
        at: Span,
        what: &str,
    ) -> Result<()> {
        if got.fits(want) {
            return Ok(());
        }
        if got.is_handle() && !want.is_handle() {
            return Err(self.leak(got, origin, at, what));
        }
        Err(Diagnostic::at(
            &self.file,
            at,
            format!("{what} must be {want}, but this is {got}"),
        )
        .help(hint_for(got, want)))
    }

    /// A string: every interpolation must be text-like, and no handle.
    fn string(&mut self, parts: &[StrPart]) -> Result<Typed> {
        for p in parts {
            if let StrPart::Interp(inner) = p {
                let (t, origin) = self.expr(inner)?;
                if t.is_handle() {
                    return Err(self.leak(&t, &origin, inner.span, "a string interpolation"));
                }
                let text_like = |t: &Ty| matches!(t, Ty::String | Ty::Path | Ty::Int | Ty::Bool);
                // An optional value interpolates as empty text when it is `none`.
                if !text_like(&t) && !matches!(&t, Ty::Opt(inner) if text_like(inner)) {
                    return Err(Diagnostic::at(
                        &self.file,
                        inner.span,
                        format!("a {t} cannot be interpolated into a string"),
                    )
                    .help("only String, Path, Int and Bool values can be written into text"));
                }
            }
        }
        Ok((Ty::String, None))
    }

    /// A list: its element type is the widest of its items'.
    fn list(&mut self, items: &[Expr]) -> Result<Typed> {
        let mut elem = Ty::Nothing;
        let mut origin = None;
        for item in items {
            let (t, o) = self.expr(item)?;
            if elem == Ty::Nothing {
                elem = t;
                origin = o;
            } else if t.fits(&elem) {
            } else if elem.fits(&t) {
                elem = t;
            } else if t.is_handle() {
                return Err(self.leak(&t, &o, item.span, &format!("a list of {elem}")));
            } else if elem.is_handle() {
                return Err(self.leak(&elem, &origin, item.span, &format!("a list with {t}")));
            } else {
                return Err(Diagnostic::at(
                    &self.file,
                    item.span,
                    format!("a list holds one type: this is {t}, the list holds {elem}"),
                ));
            }
        }
        Ok((Ty::List(Box::new(elem)), origin))
    }

    fn map(&mut self, entries: &[(Expr, Expr)]) -> Result<Typed> {
        let mut elem = Ty::Nothing;
        for (_, v) in entries {
            let (t, o) = self.expr(v)?;
            if t.is_handle() {
                return Err(self.leak(
                    &t,
                    &o,
                    v.span,
                    "a map of values (env, labels, args or file contents)",
                ));
            }
            if elem == Ty::Nothing || elem.fits(&t) {
                elem = t;
            } else if !t.fits(&elem) {
                return Err(Diagnostic::at(
                    &self.file,
                    v.span,
                    format!("a map holds one type: this is {t}, the map holds {elem}"),
                ));
            }
        }
        for (k, _) in entries {
            if k.as_plain_str().is_none() {
                self.expr(k)?;
            }
        }
        Ok((Ty::Map(Box::new(elem)), None))
    }

    /// `+`, `==` and `!=`.
    fn binary(&mut self, e: &Expr, op: &BinOp, l: &Expr, r: &Expr) -> Result<Typed> {
        let (lt, lo) = self.expr(l)?;
        let (rt, ro) = self.expr(r)?;
        let what = match op {
            BinOp::Add => "a concatenation",
            _ => "a comparison",
        };
        if lt.is_handle() {
            return Err(self.leak(&lt, &lo, l.span, what));
        }
        if rt.is_handle() {
            return Err(self.leak(&rt, &ro, r.span, what));
        }
        match op {
            BinOp::Add => {
                let ok = (lt.stringy() && rt.stringy())
                    || (lt == Ty::Int && rt == Ty::Int)
                    || matches!(
                        (&lt, &rt),
                        (Ty::List(_), Ty::List(_)) | (Ty::Map(_), Ty::Map(_))
                    ) && (rt.fits(&lt) || lt.fits(&rt));
                if !ok {
                    return Err(Diagnostic::at(
                        &self.file,
                        e.span,
                        format!("cannot add {lt} and {rt}"),
                    )
                    .help("`+` joins two strings, two lists or two maps, or adds two Ints; use \"${a}${b}\" to mix"));
                }
                Ok((
                    if lt == Ty::Nothing
                        || matches!(&lt, Ty::List(x) | Ty::Map(x) if **x == Ty::Nothing)
                    {
                        rt
                    } else {
                        lt
                    },
                    None,
                ))
            }
            _ => {
                if !matches!(
                    lt,
                    Ty::String | Ty::Path | Ty::Int | Ty::Bool | Ty::Nothing | Ty::Opt(_)
                ) || !(lt.fits(&rt) || rt.fits(&lt) || rt == Ty::Nothing)
                {
                    return Err(Diagnostic::at(
                        &self.file,
                        e.span,
                        format!("cannot compare {lt} with {rt}"),
                    )
                    .help("`==` and `!=` compare strings, numbers and booleans of the same type"));
                }
                Ok((Ty::Bool, None))
            }
        }
    }

    fn expr(&mut self, e: &Expr) -> Result<Typed> {
        match &e.kind {
            ExprKind::Str { parts, .. } => self.string(parts),
            ExprKind::Int { .. } => Ok((Ty::Int, None)),
            ExprKind::Bool(_) => Ok((Ty::Bool, None)),
            ExprKind::None => Ok((Ty::Nothing, None)),
            ExprKind::Paren(inner) => self.expr(inner),
            ExprKind::List(items) => self.list(items),
            ExprKind::Map(entries) => self.map(entries),
            ExprKind::Name(n) => match self.lookup_at(n, e.span) {
                Some(Binding::Value { ty, origin }) => Ok((ty, origin)),
                Some(Binding::Fn(_)) => Err(Diagnostic::at(
                    &self.file,
                    e.span,
                    format!("`{n}` is a function; call it: `{n}(...)`"),
                )),
                Some(Binding::Module(_)) => Err(Diagnostic::at(
                    &self.file,
                    e.span,
                    format!("`{n}` is a module; use one of its names: `{n}.name`"),
                )),
                None => Err(self.unknown(n, e.span)),
            },
            ExprKind::Binary(op, l, r) => self.binary(e, op, l, r),
            ExprKind::If { cond, then, other } => {
                let (ct, co) = self.expr(cond)?;
                self.expect(&ct, &co, &Ty::Bool, cond.span, "an `if` condition")?;
                let (tt, to) = self.expr(then)?;
                let (ot, oo) = self.expr(other)?;
                if ot.fits(&tt) {
                    Ok((tt, to.or(oo)))
                } else if tt.fits(&ot) {
                    Ok((ot, oo.or(to)))
                } else {
                    Err(Diagnostic::at(
                        &self.file,
                        other.span,
                        format!("both branches must have one type: {tt} and {ot}"),
                    ))
                }
            }
            ExprKind::Member(base, name) => {
                if let ExprKind::Name(m) = &base.kind
                    && let Some(Binding::Module(_)) = self.lookup(m)
                {
                    self.lookup_at(m, base.span);
                    return match self.module_member(m, name)? {
                        Binding::Value { ty, origin } => Ok((ty, origin)),
                        _ => Err(Diagnostic::at(
                            &self.file,
                            name.span,
                            format!("`{m}.{}` is a function; call it", name.name),
                        )),
                    };
                }
                let (bt, bo) = self.expr(base)?;
                if bt.is_handle() {
                    return Err(self.leak(
                        &bt,
                        &bo,
                        e.span,
                        &format!("a field read (`.{}`)", name.name),
                    ));
                }
                Err(Diagnostic::at(
                    &self.file,
                    name.span,
                    format!("{bt} has no field `{}`", name.name),
                )
                .help("call a method: `value.method(...)`"))
            }
            ExprKind::Call { callee, args } => self.call(e, callee, args),
        }
    }

    fn module_member(
        &self,
        module: &str,
        name: &crate::frontend::buildfile::syntax::Ident,
    ) -> Result<Binding> {
        let (_, iface) = self.deps[module];
        iface.names.get(&name.name).cloned().ok_or_else(|| {
            let d = Diagnostic::at(
                &self.file,
                name.span,
                format!("module `{module}` has no `{}`", name.name),
            );
            match suggest(&name.name, iface.names.keys().map(String::as_str)) {
                Some(s) => d.help(format!("did you mean `{module}.{s}`?")),
                None => d,
            }
        })
    }

    fn unknown(&self, n: &str, span: Span) -> Diagnostic {
        let mut names: Vec<&str> = self.globals.keys().map(String::as_str).collect();
        for s in &self.scopes {
            names.extend(s.keys().map(String::as_str));
        }
        names.extend(FUNCTIONS.iter().map(|b| b.name));
        if let Some(&def) = self.ordered.get(n) {
            let d = Diagnostic::at(&self.file, span, "").label(self.at(def), "defined here");
            return if def.start < span.start {
                Diagnostic {
                    message: format!("`{n}` is used in its own definition"),
                    ..d
                }
                .help("a value cannot refer to itself; names are defined once, so build it from a value with another name")
            } else {
                Diagnostic {
                    message: format!("`{n}` is used before it is defined"),
                    ..d
                }
                .help("a let, param, secret, ssh or import can be used only after the line that defines it (functions and targets anywhere); move the definition up")
            };
        }
        let d = Diagnostic::at(&self.file, span, format!("unknown name `{n}`"));
        match suggest(n, names) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None if n.chars().all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()) => d.help(format!(
                "for a shell or image variable inside a string, write `${n}` or `\\${{{n}}}`: `${{...}}` interpolates a .build value"
            )),
            None => d.help("names must be defined (with let, param, secret, ssh, fn, target or import) before use"),
        }
    }

    fn call(&mut self, e: &Expr, callee: &Expr, args: &[Arg]) -> Result<Typed> {
        match &callee.kind {
            ExprKind::Name(n) => {
                // Calls name functions: a value that happens to share a built-in's name (a target called
                // `image`) does not hide the built-in.
                let builtin = FUNCTIONS.iter().any(|b| b.name == n);
                if let Some(b) = self.lookup(n).cloned() {
                    match b {
                        Binding::Fn(sig) => {
                            self.uses.insert(callee.span, Use::Global);
                            return self.user_call(&sig, n, e.span, args);
                        }
                        _ if builtin => {}
                        _ => {
                            return Err(Diagnostic::at(
                                &self.file,
                                callee.span,
                                format!("`{n}` is not a function"),
                            ));
                        }
                    }
                }
                match FUNCTIONS.iter().find(|b| b.name == n) {
                    Some(b) => {
                        self.uses.insert(callee.span, Use::Builtin);
                        if b.name == "print" {
                            return self
                                .builtin_call(b, e.span, args, "`print`")
                                .map(|_| (Ty::String, None));
                        }
                        self.builtin_call(b, e.span, args, &format!("`{n}`"))
                    }
                    None => Err(self.unknown(n, callee.span)),
                }
            }
            ExprKind::Member(base, name) => {
                if let ExprKind::Name(m) = &base.kind
                    && let Some(Binding::Module(_)) = self.lookup(m)
                {
                    self.lookup_at(m, base.span);
                    return match self.module_member(m, name)? {
                        Binding::Fn(sig) => {
                            self.user_call(&sig, &format!("{m}.{}", name.name), e.span, args)
                        }
                        _ => Err(Diagnostic::at(
                            &self.file,
                            name.span,
                            format!("`{m}.{}` is not a function", name.name),
                        )),
                    };
                }
                let (bt, bo) = self.expr(base)?;
                let methods = methods_of(&bt);
                match methods.iter().find(|b| b.name == name.name) {
                    Some(b) => {
                        let r = self.builtin_call(b, e.span, args, &format!("`.{}`", name.name))?;
                        // A mount made from a handle is still that handle's; it can only go to `mounts:`.
                        Ok((r.0, if bt.is_handle() { bo } else { None }))
                    }
                    None if bt.is_handle() => Err(self.leak(
                        &bt,
                        &bo,
                        name.span,
                        &format!("a method call (`.{}`)", name.name),
                    )),
                    None => {
                        let d = Diagnostic::at(
                            &self.file,
                            name.span,
                            format!("{bt} has no method `{}`", name.name),
                        );
                        Err(match suggest(&name.name, methods.iter().map(|b| b.name)) {
                            Some(s) => d.help(format!("did you mean `.{s}`?")),
                            None if methods.is_empty() => {
                                d.help(format!("{bt} values have no methods"))
                            }
                            None => d.help(format!(
                                "{bt} methods: {}",
                                methods
                                    .iter()
                                    .map(|b| b.name)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )),
                        })
                    }
                }
            }
            _ => Err(Diagnostic::at(
                &self.file,
                callee.span,
                "this cannot be called",
            )),
        }
    }

    fn builtin_call(&mut self, b: &Builtin, at: Span, args: &[Arg], what: &str) -> Result<Typed> {
        let bound = bind_args(
            &self.file,
            b.params.iter().map(|p| (p.name, p.optional)),
            args,
            at,
            what,
        )?;
        for (i, arg) in bound.iter().enumerate() {
            let Some(arg) = arg else { continue };
            let p = &b.params[i];
            let (t, origin) = self.expr(&arg.value)?;
            if !p.want.accepts(&t) {
                let sink = format!("{what}'s `{}`", p.name);
                if t.is_handle() {
                    return Err(self.leak(&t, &origin, arg.value.span, &sink));
                }
                return Err(Diagnostic::at(
                    &self.file,
                    arg.value.span,
                    format!("{sink} must be {}, but this is {t}", p.want),
                )
                .help(match p.want {
                    Want::Command | Want::Source => format!("{what} takes {}", p.want),
                    w => hint_for(&t, &w.ty()),
                }));
            }
        }
        Ok((b.ret.clone(), None))
    }

    fn user_call(&mut self, sig: &FnSig, name: &str, at: Span, args: &[Arg]) -> Result<Typed> {
        let names: Vec<(&str, bool)> = sig
            .params
            .iter()
            .map(|(n, _, d)| (n.as_str(), *d))
            .collect();
        let bound = bind_args(
            &self.file,
            names.iter().copied(),
            args,
            at,
            &format!("`{name}`"),
        )?;
        // A handle a function returns comes from a handle it was given (the first one), or else from
        // the function's result type: either way a later leak of the result can say where it came from.
        let mut given = None;
        for (i, arg) in bound.iter().enumerate() {
            let Some(arg) = arg else { continue };
            let (pn, pt, _) = &sig.params[i];
            let (t, origin) = self.expr(&arg.value)?;
            self.expect(
                &t,
                &origin,
                pt,
                arg.value.span,
                &format!("`{name}`'s `{pn}`"),
            )?;
            if given.is_none() && t.is_handle() {
                given = origin;
            }
        }
        let origin = sig
            .ret
            .is_handle()
            .then(|| given.unwrap_or_else(|| sig.ret_at.clone()));
        Ok((sig.ret.clone(), origin))
    }
}
