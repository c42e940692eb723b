//! `.build` evaluation: expressions, and calls of builtins and of the program's own functions.

use super::{
    Arg, BinOp, Evaluator, Expr, ExprKind, FnDef, HashMap, ItemKind, MountValue, Result, Span,
    StrPart, Use, Value, opt_int, same, types,
};

impl Evaluator<'_> {
    pub(super) fn eval(&mut self, e: &Expr) -> Result<Value> {
        Ok(match &e.kind {
            ExprKind::Str { parts, .. } => {
                let mut s = String::new();
                for p in parts {
                    match p {
                        StrPart::Text { text, .. } => s.push_str(text),
                        StrPart::Interp(inner) => s.push_str(&self.eval(inner)?.text()),
                    }
                }
                Value::Str(s)
            }
            ExprKind::Int { value, .. } => Value::Int(*value),
            ExprKind::Bool(b) => Value::Bool(*b),
            ExprKind::None => Value::None,
            ExprKind::Paren(inner) => self.eval(inner)?,
            ExprKind::List(items) => {
                Value::List(items.iter().map(|i| self.eval(i)).collect::<Result<_>>()?)
            }
            ExprKind::Map(entries) => {
                let mut out: Vec<(String, Value)> = Vec::new();
                for (k, v) in entries {
                    let key = self.eval(k)?.text();
                    let value = self.eval(v)?;
                    match out.iter_mut().find(|(ok, _)| *ok == key) {
                        Some(slot) => slot.1 = value,
                        None => out.push((key, value)),
                    }
                }
                Value::Map(out)
            }
            ExprKind::Name(n) => self.lookup(n, e.span)?,
            ExprKind::Binary(op, l, r) => {
                let lv = self.eval(l)?;
                let rv = self.eval(r)?;
                match op {
                    BinOp::Add => match (lv, rv) {
                        (Value::Int(a), Value::Int(b)) => {
                            Value::Int(a.checked_add(b).ok_or_else(|| {
                                self.err(e.span, "the sum does not fit in 64 bits")
                            })?)
                        }
                        (Value::List(mut a), Value::List(b)) => {
                            a.extend(b);
                            Value::List(a)
                        }
                        (Value::Map(mut a), Value::Map(b)) => {
                            for (k, v) in b {
                                match a.iter_mut().find(|(ak, _)| *ak == k) {
                                    Some(slot) => slot.1 = v,
                                    None => a.push((k, v)),
                                }
                            }
                            Value::Map(a)
                        }
                        (a, b) => Value::Str(a.text() + &b.text()),
                    },
                    BinOp::Eq => Value::Bool(same(&lv, &rv)),
                    BinOp::Ne => Value::Bool(!same(&lv, &rv)),
                }
            }
            ExprKind::If { cond, then, other } => {
                if self.eval(cond)?.bool() {
                    self.eval(then)?
                } else {
                    self.eval(other)?
                }
            }
            ExprKind::Member(base, name) => {
                let Some(idx) = self.module_named(base) else {
                    return Err(self.unresolved(base.span));
                };
                self.global(idx, &name.name, name.span)?
            }
            ExprKind::Call { callee, args } => self.call(e, callee, args)?,
        })
    }

    fn call(&mut self, e: &Expr, callee: &Expr, args: &[Arg]) -> Result<Value> {
        match &callee.kind {
            ExprKind::Name(n) => {
                if self.resolved(callee.span)? == Use::Global {
                    return self.user_call(self.module, n, e.span, args);
                }
                let Some(b) = types::FUNCTIONS.iter().find(|b| b.name == n) else {
                    return Err(self.unresolved(callee.span));
                };
                let vals = self.args(b, e.span, args)?;
                self.function(n, e.span, vals, args)
            }
            ExprKind::Member(base, name) => {
                if let Some(idx) = self.module_named(base) {
                    return self.user_call(idx, &name.name, e.span, args);
                }
                let recv = self.eval(base)?;
                let table = match &recv {
                    Value::Image(_) => types::IMAGE_METHODS,
                    Value::Secret(_) => types::SECRET_METHODS,
                    _ => types::SSH_METHODS,
                };
                let b = table.iter().find(|b| b.name == name.name).expect("checked");
                let vals = self.args(b, e.span, args)?;
                match recv {
                    Value::Image(img) => {
                        // A step's location is its own `.method(...)`, not the start of the chain.
                        let at = Span::new(name.span.start.saturating_sub(1), e.span.end);
                        self.image_method(
                            std::sync::Arc::unwrap_or_clone(img),
                            &name.name,
                            at,
                            vals,
                            args,
                        )
                    }
                    Value::Secret(id) => Ok(self.secret_mount(id, &name.name, &vals, e.span)),
                    Value::Ssh(id) => Ok(Value::Mount(
                        Box::new(MountValue::Ssh {
                            id,
                            target: vals[0].opt_str(),
                            required: vals[1].bool(),
                            mode: opt_int(&vals[2], 0o600),
                            uid: opt_int(&vals[3], 0),
                            gid: opt_int(&vals[4], 0),
                        }),
                        e.span,
                    )),
                    _ => unreachable!("checked"),
                }
            }
            _ => unreachable!("checked"),
        }
    }

    /// Evaluates a builtin's arguments into parameter order (`Value::None` where left out).
    fn args(&mut self, b: &types::Builtin, at: Span, args: &[Arg]) -> Result<Vec<Value>> {
        let file = self.file();
        let bound = types::bind_args(
            &file,
            b.params.iter().map(|p| (p.name, p.optional)),
            args,
            at,
            b.name,
        )?;
        bound
            .into_iter()
            .map(|a| match a {
                Some(a) => self.eval(&a.value),
                None => Ok(Value::None),
            })
            .collect()
    }

    fn user_call(&mut self, module: usize, name: &str, at: Span, args: &[Arg]) -> Result<Value> {
        // The module is shared: the function is evaluated in place, never copied.
        let source = self.loader.module(module).clone();
        let def: &FnDef = source
            .items
            .iter()
            .find_map(|i| match &i.kind {
                ItemKind::Fn(f) if f.name.name == name => Some(f),
                _ => None,
            })
            .expect("checked");
        if self.scopes.len() > 200 {
            return Err(self
                .err(at, format!("`{name}` calls itself too deeply"))
                .help("functions may not recurse without end"));
        }
        let file = self.file();
        let bound = types::bind_args(
            &file,
            def.params
                .iter()
                .map(|p| (p.name.name.as_str(), p.default.is_some())),
            args,
            at,
            name,
        )?;
        let mut vals = Vec::new();
        for a in &bound {
            vals.push(match a {
                Some(a) => Some(self.eval(&a.value)?),
                None => None,
            });
        }
        // The body, and the defaults (which see the parameters before them, as the checker does), are
        // evaluated in the function's own module and frame: never in the caller's.
        let saved = self.module;
        self.module = module;
        self.scopes.push(HashMap::default());
        let result = (|| {
            for (p, v) in def.params.iter().zip(vals) {
                let v = match (v, &p.default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => self.eval(d)?,
                    (None, None) => return Err(self.unresolved(p.name.span)),
                };
                self.bind(p.name.span, v);
            }
            for l in &def.lets {
                let v = self.eval(&l.value)?;
                self.bind(l.name.span, v);
            }
            self.eval(&def.body)
        })();
        self.scopes.pop();
        self.module = saved;
        result
    }
}
