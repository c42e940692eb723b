//! Differential: generated `.build` programs (two modules, globals, functions with parameters, defaults
//! and lets that shadow globals and each other, calls within a module and through an import) against a
//! small reference model with lexical scoping.
//!
//! - What the type checker recorded for every use of a name (`Interface::uses`) must be exactly the
//!   definition the model resolves it to (a global, a parameter or let by its defining span, the module).
//! - What the evaluator computes for every target must be the model's value of it.
//!
//! Every value is a string and every definition's literal is unique, so a use that reaches the wrong
//! definition shows up as a different value.
#![no_main]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln::frontend::buildfile::check::Use;
use kiln::diag::Span;
use kiln::graph::Op;
use kiln::frontend::buildfile::lower::EvalOptions;
use kiln::load::{Session, lower_file};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Value names: shared by globals, parameters and lets, so that they shadow each other.
const NAMES: &[&str] = &["a", "b", "c", "d"];
/// The import alias, which a local in the main module may shadow too.
const ALIAS: &str = "m";
const LIB: usize = 0;
const MAIN: usize = 1;

/// A model expression, with every name already resolved the way lexical scoping resolves it.
#[derive(Clone)]
enum M {
    Lit(String),
    Local(usize),
    Global(String),
    /// A global of the imported module.
    Member(String),
    Cat(Box<M>, Box<M>),
    /// A function of this module (or of the import), with one argument per parameter (`None`: default).
    Call(usize, Vec<Option<M>>),
    MemberCall(usize, Vec<Option<M>>),
}

struct Func {
    /// Per parameter: its name, and whether it has a default.
    params: Vec<(String, bool)>,
    /// Per parameter: its default.
    defaults: Vec<Option<M>>,
    lets: Vec<M>,
    body: M,
}

#[derive(Default)]
struct Module {
    text: String,
    uses: HashMap<Span, Use>,
    /// Top-level values in order of definition.
    globals: Vec<(String, M)>,
    funcs: Vec<Func>,
    targets: Vec<(String, M)>,
}

/// The scope generation is in: the visible locals (name, slot, defining span), innermost last.
struct Scope {
    module: usize,
    locals: Vec<(String, usize, Span)>,
    slots: usize,
    depth: u32,
    /// Functions of this module that may be called (those defined before, so nothing recurses).
    callable: usize,
}

struct Gen<'a, 'b> {
    u: &'a mut Unstructured<'b>,
    lib: Option<&'a Module>,
    m: Module,
    tag: usize,
}

impl Gen<'_, '_> {
    fn lit(&mut self, module: usize) -> M {
        self.tag += 1;
        let t = format!("{}{}", if module == LIB { "L" } else { "M" }, self.tag);
        self.m.text.push_str(&format!("\"{t}\""));
        M::Lit(t)
    }

    fn name_use(&mut self, name: &str, u: Use) {
        let start = self.m.text.len();
        self.m.text.push_str(name);
        self.m.uses.insert(Span::new(start, self.m.text.len()), u);
    }

    fn alias_visible(&self, s: &Scope) -> bool {
        s.module == MAIN && self.lib.is_some() && !s.locals.iter().any(|(n, _, _)| n == ALIAS)
    }

    fn expr(&mut self, s: &mut Scope) -> Result<M> {
        let kind = if s.depth > 3 {
            0
        } else {
            self.u.int_in_range(0..=6)?
        };
        match kind {
            1 | 2 => {
                let mut visible: Vec<String> = s.locals.iter().map(|(n, _, _)| n.clone()).collect();
                visible.extend(self.m.globals.iter().map(|(n, _)| n.clone()));
                visible.retain(|n| n != ALIAS);
                if visible.is_empty() {
                    return Ok(self.lit(s.module));
                }
                let n = self.u.choose(&visible)?.clone();
                Ok(match s.locals.iter().rev().find(|(l, _, _)| *l == n) {
                    Some(&(_, slot, def)) => {
                        self.name_use(&n, Use::Local(def));
                        M::Local(slot)
                    }
                    None => {
                        self.name_use(&n, Use::Global);
                        M::Global(n)
                    }
                })
            }
            3 => {
                s.depth += 1;
                self.m.text.push_str("\"${");
                let a = self.expr(s)?;
                self.m.text.push_str("}|${");
                let b = self.expr(s)?;
                self.m.text.push_str("}\"");
                s.depth -= 1;
                Ok(M::Cat(Box::new(a), Box::new(b)))
            }
            4 if s.callable > 0 => {
                let f = self.u.int_in_range(0..=s.callable - 1)?;
                self.name_use(&format!("f{f}"), Use::Global);
                let params = self.m.funcs[f].params.clone();
                let args = self.args(s, &params)?;
                Ok(M::Call(f, args))
            }
            5 if self.alias_visible(s) => {
                let lib = self.lib.expect("visible");
                if !lib.funcs.is_empty() && self.u.arbitrary()? {
                    let f = self.u.int_in_range(0..=lib.funcs.len() - 1)?;
                    self.name_use(ALIAS, Use::Module(LIB));
                    self.m.text.push_str(&format!(".f{f}"));
                    let args = self.args(s, &lib.funcs[f].params)?;
                    Ok(M::MemberCall(f, args))
                } else if !lib.globals.is_empty() {
                    let (n, _) = self.u.choose(&lib.globals)?;
                    let n = n.clone();
                    self.name_use(ALIAS, Use::Module(LIB));
                    self.m.text.push_str(&format!(".{n}"));
                    Ok(M::Member(n))
                } else {
                    Ok(self.lit(s.module))
                }
            }
            _ => Ok(self.lit(s.module)),
        }
    }

    /// `(x, y, name: z)`: by position until a default is left out, by name after that.
    fn args(&mut self, s: &mut Scope, params: &[(String, bool)]) -> Result<Vec<Option<M>>> {
        s.depth += 1;
        self.m.text.push('(');
        let mut out = Vec::new();
        let mut named = false;
        for (name, has_default) in params {
            if *has_default && self.u.arbitrary()? {
                out.push(None);
                named = true;
                continue;
            }
            if named {
                self.m.text.push_str(&format!("{name}: "));
            }
            out.push(Some(self.expr(s)?));
            self.m.text.push_str(", ");
        }
        self.m.text.push(')');
        s.depth -= 1;
        Ok(out)
    }

    fn top(&self, module: usize) -> Scope {
        Scope {
            module,
            locals: Vec::new(),
            slots: 0,
            depth: 0,
            callable: self.m.funcs.len(),
        }
    }

    fn local_name(&mut self, module: usize) -> Result<String> {
        let mut pool: Vec<&str> = NAMES.to_vec();
        if module == MAIN {
            pool.push(ALIAS);
        }
        Ok(self.u.choose(&pool)?.to_string())
    }

    /// `fn fN(p0 ..., a: String = ...) -> String { let ... body }`; parameter names are `pI` when they
    /// have a default (so calls can name them), else a shadowing name.
    fn func(&mut self, module: usize) -> Result<()> {
        let idx = self.m.funcs.len();
        let mut s = self.top(module);
        self.m.text.push_str(&format!("fn f{idx}("));
        let mut defaults = Vec::new();
        let mut params: Vec<(String, bool)> = Vec::new();
        for _ in 0..self.u.int_in_range(0..=3)? {
            let with_default = self.u.arbitrary()?;
            // Parameters are named apart (a call may name them); each may shadow a global.
            let name = self.local_name(module)?;
            if params.iter().any(|(p, _)| *p == name) {
                continue;
            }
            params.push((name.clone(), with_default));
            let start = self.m.text.len();
            self.m.text.push_str(&name);
            let def = Span::new(start, self.m.text.len());
            self.m.text.push_str(": String");
            let default = if with_default {
                self.m.text.push_str(" = ");
                Some(self.expr(&mut s)?)
            } else {
                None
            };
            self.m.text.push_str(", ");
            defaults.push(default);
            s.locals.push((name, s.slots, def));
            s.slots += 1;
        }
        self.m.text.push_str(") -> String {\n");
        let mut lets = Vec::new();
        for _ in 0..self.u.int_in_range(0..=2)? {
            let name = self.local_name(module)?;
            self.m.text.push_str("  let ");
            let start = self.m.text.len();
            self.m.text.push_str(&name);
            let def = Span::new(start, self.m.text.len());
            self.m.text.push_str(" = ");
            lets.push(self.expr(&mut s)?);
            self.m.text.push('\n');
            s.locals.push((name, s.slots, def));
            s.slots += 1;
        }
        self.m.text.push_str("  ");
        let body = self.expr(&mut s)?;
        self.m.text.push_str("\n}\n\n");
        self.m.funcs.push(Func {
            params,
            defaults,
            lets,
            body,
        });
        Ok(())
    }

    fn global(&mut self, module: usize) -> Result<()> {
        let free: Vec<&str> = NAMES
            .iter()
            .copied()
            .filter(|n| !self.m.globals.iter().any(|(g, _)| g == n))
            .collect();
        if free.is_empty() {
            return Ok(());
        }
        let name = self.u.choose(&free)?.to_string();
        let param = self.u.arbitrary()?;
        let kw = if param { "param" } else { "let" };
        let ty = if param { ": String" } else { "" };
        self.m.text.push_str(&format!("{kw} {name}{ty} = "));
        let mut s = self.top(module);
        let v = self.expr(&mut s)?;
        self.m.text.push_str("\n\n");
        self.m.globals.push((name, v));
        Ok(())
    }

    fn module(mut self, module: usize) -> Result<Module> {
        if module == MAIN && self.lib.is_some() {
            self.m
                .text
                .push_str(&format!("import \"./lib.build\" as {ALIAS}\n\n"));
        }
        for _ in 0..self.u.int_in_range(1..=8)? {
            if self.u.arbitrary()? {
                self.func(module)?;
            } else {
                self.global(module)?;
            }
        }
        if module == MAIN {
            for t in 0..self.u.int_in_range(1..=3)? {
                self.m.text.push_str(&format!("target t{t}: Image = "));
                self.name_use("scratch", Use::Builtin);
                self.m.text.push_str("().env({\"OUT\": ");
                let mut s = self.top(module);
                let v = self.expr(&mut s)?;
                self.m.text.push_str("})\n\n");
                self.m.targets.push((format!("t{t}"), v));
            }
        }
        Ok(self.m)
    }
}

/// The reference evaluator: lexical scoping by construction (names were resolved when generated).
struct Model<'a> {
    modules: [&'a Module; 2],
    globals: [HashMap<String, String>; 2],
}

impl Model<'_> {
    fn eval(&self, module: usize, e: &M, frame: &[String]) -> String {
        match e {
            M::Lit(t) => t.clone(),
            M::Local(slot) => frame[*slot].clone(),
            M::Global(n) => self.globals[module][n].clone(),
            M::Member(n) => self.globals[LIB][n].clone(),
            M::Cat(a, b) => format!(
                "{}|{}",
                self.eval(module, a, frame),
                self.eval(module, b, frame)
            ),
            M::Call(f, args) => self.call(module, module, *f, args, frame),
            M::MemberCall(f, args) => self.call(module, LIB, *f, args, frame),
        }
    }

    fn call(
        &self,
        from: usize,
        to: usize,
        f: usize,
        args: &[Option<M>],
        frame: &[String],
    ) -> String {
        let given: Vec<Option<String>> = args
            .iter()
            .map(|a| a.as_ref().map(|a| self.eval(from, a, frame)))
            .collect();
        let func = &self.modules[to].funcs[f];
        let mut inner = Vec::new();
        for (g, d) in given.into_iter().zip(&func.defaults) {
            let v = g.unwrap_or_else(|| self.eval(to, d.as_ref().expect("a default"), &inner));
            inner.push(v);
        }
        for l in &func.lets {
            let v = self.eval(to, l, &inner);
            inner.push(v);
        }
        self.eval(to, &func.body, &inner)
    }
}

/// Where this process writes the two modules (kiln loads modules from files).
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("kiln-fuzz-scope-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    })
}

fn generate(u: &mut Unstructured) -> Result<(Module, Module)> {
    let lib = Gen {
        u: &mut *u,
        lib: None,
        m: Module::default(),
        tag: 0,
    }
    .module(LIB)?;
    let main = Gen {
        u: &mut *u,
        lib: Some(&lib),
        m: Module::default(),
        tag: 1000,
    }
    .module(MAIN)?;
    Ok((lib, main))
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((lib, main)) = generate(&mut u) else {
        return;
    };
    let dir = dir();
    std::fs::write(dir.join("lib.build"), &lib.text).expect("write");
    std::fs::write(dir.join("main.build"), &main.text).expect("write");
    let mut session = Session::new(None);
    let opts = EvalOptions::default();
    let program = match lower_file(
        &mut session,
        &dir.join("main.build"),
        Some(&[]),
        &opts,
        None,
    ) {
        Ok((p, _)) => p,
        Err(d) => panic!(
            "a generated program is valid, kiln says: {d}\n--- lib\n{}\n--- main\n{}",
            lib.text, main.text
        ),
    };
    for (idx, m) in [(LIB, &lib), (MAIN, &main)] {
        let recorded = &session.modules[idx].iface.uses;
        assert_eq!(
            recorded, &m.uses,
            "module {idx}: the checker's resolution differs from lexical scoping\n--- lib\n{}\n--- main\n{}",
            lib.text, main.text
        );
    }
    let mut model = Model {
        modules: [&lib, &main],
        globals: [HashMap::new(), HashMap::new()],
    };
    for idx in [LIB, MAIN] {
        for (n, e) in &model.modules[idx].globals {
            let v = model.eval(idx, e, &[]);
            model.globals[idx].insert(n.clone(), v);
        }
    }
    for (root, (name, e)) in program.roots.iter().zip(&main.targets) {
        let want = model.eval(MAIN, e, &[]);
        let Op::Config(cfg) = &program.nodes[root.node].op else {
            panic!("target {name} is not an image config");
        };
        let got = cfg
            .env
            .iter()
            .find(|(k, _)| k == "OUT")
            .map(|(_, v)| v.as_str());
        assert_eq!(
            got,
            Some(want.as_str()),
            "target {name}: the evaluator differs from the model\n--- lib\n{}\n--- main\n{}",
            lib.text,
            main.text
        );
    }
});
