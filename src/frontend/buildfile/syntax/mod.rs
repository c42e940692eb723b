//! The `.build` language's syntax: its tree (every node keeps its span), the pest parser over
//! `grammar/build.pest`, and the formatter (`kiln fmt`), which prints a tree back with its comments.

pub mod fmt;
pub mod parse;

use std::sync::Arc;

use crate::diag::{SourceFile, Span};

pub use parse::parse;

/// One parsed `.build` file.
#[derive(Clone, Debug)]
pub struct Module {
    pub file: Arc<SourceFile>,
    pub items: Vec<Item>,
    /// Every `#` comment with its span, in order; the formatter puts each back before the node that
    /// follows it.
    pub comments: Vec<Comment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comment {
    pub span: Span,
    /// The text after `#`, as written.
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Item {
    pub kind: ItemKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum ItemKind {
    /// `import "//lib/apt.build" as apt`
    Import {
        path: Expr,
        alias: Ident,
    },
    /// `param version: String = "1.0"`: settable with `--param`/`--build-arg`.
    Param {
        name: Ident,
        ty: TypeExpr,
        default: Option<Expr>,
    },
    /// `secret token` or `secret token = "npm-token"`: a handle to the secret given with `--secret id=...`.
    Secret {
        name: Ident,
        id: Option<Expr>,
    },
    /// `ssh agent` or `ssh agent = "default"`: a handle to the agent given with `--ssh ID=...`.
    Ssh {
        name: Ident,
        id: Option<Expr>,
    },
    Let(Let),
    Fn(FnDef),
    /// `target image: Image = ...`: a name that `kiln build` can select; `... tagged [...]` names the
    /// image (the list of references it is pushed, loaded and written as); `... for [...]` the
    /// platforms it is built for unless the command line names some.
    Target {
        name: Ident,
        ty: TypeExpr,
        value: Expr,
        tags: Option<Expr>,
        platforms: Option<Expr>,
    },
}

#[derive(Clone, Debug)]
pub struct Let {
    pub name: Ident,
    pub ty: Option<TypeExpr>,
    pub value: Expr,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct FnDef {
    pub name: Ident,
    pub params: Vec<FnParam>,
    pub ret: TypeExpr,
    pub lets: Vec<Let>,
    pub body: Expr,
    /// The `{ ... }` block.
    pub block: Span,
}

#[derive(Clone, Debug)]
pub struct FnParam {
    pub name: Ident,
    pub ty: TypeExpr,
    pub default: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeExpr {
    pub kind: TypeKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TypeKind {
    Named(String),
    List(Box<TypeExpr>),
    Map(Box<TypeExpr>),
    Optional(Box<TypeExpr>),
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Eq,
    Ne,
}

impl BinOp {
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
        }
    }
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    /// A string literal; `triple` for `"""` strings.
    Str {
        parts: Vec<StrPart>,
        triple: bool,
    },
    /// An integer literal with its text as written (`0o755` stays octal when formatted).
    Int {
        value: u64,
        text: String,
    },
    Bool(bool),
    None,
    List(Vec<Expr>),
    /// `{"KEY": value, ...}`: keys are string literals.
    Map(Vec<(Expr, Expr)>),
    Name(String),
    /// `a.b`: a module's member or, when called, a method.
    Member(Box<Expr>, Ident),
    Call {
        callee: Box<Expr>,
        args: Vec<Arg>,
    },
    Binary(BinOp, Box<Expr>, Box<Expr>),
    If {
        cond: Box<Expr>,
        then: Box<Expr>,
        other: Box<Expr>,
    },
    Paren(Box<Expr>),
}

#[derive(Clone, Debug)]
pub enum StrPart {
    /// Literal text: `raw` as written (escapes and all), `text` what it means.
    Text {
        raw: String,
        text: String,
    },
    Interp(Expr),
}

#[derive(Clone, Debug)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

impl Expr {
    pub fn new(kind: ExprKind) -> Expr {
        Expr {
            kind,
            span: Span::default(),
        }
    }

    /// A string literal meaning exactly `text`, escaped so that it parses back to `text` (for code that
    /// writes source, like `kiln convert`). Multi-line texts become `"""` strings when that reads better.
    pub fn string(text: &str) -> Expr {
        // `"""` strings read better for scripts and for text full of double quotes.
        let triple = (text.contains('\n') || text.contains('"'))
            && !text.contains("\"\"\"")
            && !text.starts_with('\n');
        Expr::string_as(text, triple)
    }

    /// A one-line `"..."` string literal (map keys must be one).
    pub fn plain_string(text: &str) -> Expr {
        Expr::string_as(text, false)
    }

    fn string_as(text: &str, triple: bool) -> Expr {
        let mut raw = String::new();
        for c in text.chars() {
            match c {
                '\\' => raw.push_str("\\\\"),
                '"' if !triple => raw.push_str("\\\""),
                '\n' if !triple => raw.push_str("\\n"),
                '\t' if !triple => raw.push_str("\\t"),
                '\r' => raw.push_str("\\r"),
                '$' => raw.push_str("\\$"),
                c if c.is_control() && c != '\n' && c != '\t' => {
                    raw.push_str(&format!("\\u{{{:x}}}", c as u32))
                }
                c => raw.push(c),
            }
        }
        // `$` only needs escaping before `{`; keep `$HOME` readable.
        let raw = unescape_plain_dollars(&raw);
        // A `"` right before the closing `"""` would end the string early.
        let raw = if triple && raw.ends_with('"') {
            format!("{}\\\"", &raw[..raw.len() - 1])
        } else {
            raw
        };
        Expr::new(ExprKind::Str {
            parts: vec![StrPart::Text {
                raw,
                text: text.to_string(),
            }],
            triple,
        })
    }

    pub fn int(value: u64) -> Expr {
        Expr::new(ExprKind::Int {
            value,
            text: value.to_string(),
        })
    }

    pub fn octal(value: u64) -> Expr {
        Expr::new(ExprKind::Int {
            value,
            text: format!("0o{value:o}"),
        })
    }

    pub fn name(name: &str) -> Expr {
        Expr::new(ExprKind::Name(name.to_string()))
    }

    pub fn list(items: Vec<Expr>) -> Expr {
        Expr::new(ExprKind::List(items))
    }

    pub fn map(entries: Vec<(String, Expr)>) -> Expr {
        Expr::new(ExprKind::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Expr::plain_string(&k), v))
                .collect(),
        ))
    }

    /// `callee(args...)` with positional then named arguments.
    pub fn call(callee: Expr, args: Vec<Expr>, named: Vec<(&str, Expr)>) -> Expr {
        let mut all: Vec<Arg> = args
            .into_iter()
            .map(|value| Arg { name: None, value })
            .collect();
        all.extend(named.into_iter().map(|(n, value)| Arg {
            name: Some(Ident {
                name: n.to_string(),
                span: Span::default(),
            }),
            value,
        }));
        Expr::new(ExprKind::Call {
            callee: Box::new(callee),
            args: all,
        })
    }

    /// `self.method(args...)`.
    pub fn method(self, method: &str, args: Vec<Expr>, named: Vec<(&str, Expr)>) -> Expr {
        let callee = Expr::new(ExprKind::Member(
            Box::new(self),
            Ident {
                name: method.to_string(),
                span: Span::default(),
            },
        ));
        Expr::call(callee, args, named)
    }

    /// The literal text of a string literal without interpolation.
    pub fn as_plain_str(&self) -> Option<String> {
        match &self.kind {
            ExprKind::Str { parts, .. } => {
                let mut s = String::new();
                for p in parts {
                    match p {
                        StrPart::Text { text, .. } => s.push_str(text),
                        StrPart::Interp(_) => return None,
                    }
                }
                Some(s)
            }
            _ => None,
        }
    }
}

/// `\$` is needed only where `${` would start an interpolation; elsewhere a bare `$` reads better.
fn unescape_plain_dollars(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' && bytes.get(i + 2) != Some(&b'{') {
                out.push('$');
            } else {
                out.push_str(&raw[i..i + 2]);
            }
            i += 2;
            continue;
        }
        let ch = raw[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

impl TypeExpr {
    pub fn named(name: &str) -> TypeExpr {
        TypeExpr {
            kind: TypeKind::Named(name.to_string()),
            span: Span::default(),
        }
    }
}

impl std::fmt::Display for TypeExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            TypeKind::Named(n) => f.write_str(n),
            TypeKind::List(t) => write!(f, "[{t}]"),
            TypeKind::Map(t) => write!(f, "{{{t}}}"),
            TypeKind::Optional(t) => write!(f, "{t}?"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_literals_round_trip() {
        for text in [
            "plain",
            "echo $HOME ${HOME} \\$ \"q\"",
            "line1\nline2\n",
            "ends with quote\"\nx\"",
            "tab\tand \u{1} control",
            "\nleading newline",
            "a\"\"\"b\nc",
        ] {
            let e = Expr::string(text);
            let src = format!("let x = {}\n", fmt::expr_to_string(&e));
            let m = parse(&SourceFile::new("t.build", src.as_str())).expect(&src);
            let ItemKind::Let(l) = &m.items[0].kind else {
                panic!()
            };
            assert_eq!(l.value.as_plain_str().as_deref(), Some(text), "{src}");
        }
    }
}
