//! pest parse tree of `grammar/build.pest` → the `.build` syntax tree, and pest's errors → diagnostics.

use std::sync::Arc;

use pest::Parser;
use pest::iterators::Pair;

use super::{
    Arg, BinOp, Comment, Expr, ExprKind, FnDef, FnParam, Ident, Item, ItemKind, Let, Module,
    StrPart, TypeExpr, TypeKind,
};
use crate::diag::{Diagnostic, Result, SourceFile, Span};

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/build.pest"]
struct BuildParser;

/// Parses one `.build` file. Syntax errors point at the first character that does not fit, with what
/// the grammar expected there.
pub fn parse(file: &Arc<SourceFile>) -> Result<Module> {
    let mut pairs =
        BuildParser::parse(Rule::file, &file.text).map_err(|e| syntax_error(file, e))?;
    let root = pairs.next().expect("the file rule matched");
    let cx = Cx {
        file,
        comments: comments(&file.text),
    };
    let mut items = Vec::new();
    for pair in root.into_inner() {
        if pair.as_rule() == Rule::EOI {
            break;
        }
        items.push(item(&cx, pair)?);
    }
    Ok(Module {
        file: file.clone(),
        items,
        comments: cx.comments,
    })
}

struct Cx<'a> {
    file: &'a Arc<SourceFile>,
    comments: Vec<Comment>,
}

impl Cx<'_> {
    /// A node's span without the whitespace and comments pest's implicit skipping leaves at its end.
    fn span(&self, p: &Pair<Rule>) -> Span {
        let start = p.as_span().start();
        let mut end = p.as_span().end();
        let text = self.file.text.as_bytes();
        while end > start {
            if text[end - 1].is_ascii_whitespace() {
                end -= 1;
            } else if let Some(c) = self.comments.iter().find(|c| c.span.end == end) {
                end = c.span.start.max(start);
            } else {
                break;
            }
        }
        Span::new(start, end)
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident {
            name: p.as_str().to_string(),
            span: self.span(&p),
        }
    }
}

fn item(cx: &Cx, p: Pair<Rule>) -> Result<Item> {
    let at = cx.span(&p);
    let rule = p.as_rule();
    let mut inner = p.into_inner();
    let kind = match rule {
        Rule::import => {
            let path = expr_primary(cx, inner.next().expect("path"))?;
            let alias = cx.ident(inner.next().expect("alias"));
            ItemKind::Import { path, alias }
        }
        Rule::param => {
            let name = cx.ident(inner.next().expect("name"));
            let ty = ty(cx, inner.next().expect("type"));
            let default = inner.next().map(|e| expr(cx, e)).transpose()?;
            ItemKind::Param { name, ty, default }
        }
        Rule::secret | Rule::ssh => {
            let name = cx.ident(inner.next().expect("name"));
            let id = inner.next().map(|e| expr_primary(cx, e)).transpose()?;
            if rule == Rule::secret {
                ItemKind::Secret { name, id }
            } else {
                ItemKind::Ssh { name, id }
            }
        }
        Rule::let_item => ItemKind::Let(let_item(cx, at, inner)?),
        Rule::func => {
            let name = cx.ident(inner.next().expect("name"));
            let mut params = Vec::new();
            let mut ret = None;
            let mut lets = Vec::new();
            let mut body = None;
            let mut block = Span::default();
            for p in inner {
                match p.as_rule() {
                    Rule::fparam => {
                        let at = cx.span(&p);
                        let mut i = p.into_inner();
                        let name = cx.ident(i.next().expect("name"));
                        let ty = ty(cx, i.next().expect("type"));
                        let default = i.next().map(|e| expr(cx, e)).transpose()?;
                        params.push(FnParam {
                            name,
                            ty,
                            default,
                            span: at,
                        });
                    }
                    Rule::ty => ret = Some(ty(cx, p)),
                    Rule::block => {
                        block = cx.span(&p);
                        for b in p.into_inner() {
                            match b.as_rule() {
                                Rule::let_item => {
                                    let at = cx.span(&b);
                                    lets.push(let_item(cx, at, b.into_inner())?);
                                }
                                _ => body = Some(expr(cx, b)?),
                            }
                        }
                    }
                    r => unreachable!("fn part {r:?}"),
                }
            }
            ItemKind::Fn(FnDef {
                name,
                params,
                ret: ret.expect("return type"),
                lets,
                body: body.expect("body"),
                block,
            })
        }
        Rule::target => {
            let name = cx.ident(inner.next().expect("name"));
            let ty = ty(cx, inner.next().expect("type"));
            let value = expr(cx, inner.next().expect("value"))?;
            // `tagged` and `for` are tokens of their own, each followed by its list.
            let (mut tags, mut platforms) = (None, None);
            while let Some(keyword) = inner.next() {
                let list = Some(expr(cx, inner.next().expect("a clause's list"))?);
                match keyword.as_rule() {
                    Rule::tagged => tags = list,
                    _ => platforms = list,
                }
            }
            ItemKind::Target {
                name,
                ty,
                value,
                tags,
                platforms,
            }
        }
        r => unreachable!("item {r:?}"),
    };
    Ok(Item { kind, span: at })
}

fn let_item(cx: &Cx, at: Span, mut inner: pest::iterators::Pairs<Rule>) -> Result<Let> {
    let name = cx.ident(inner.next().expect("name"));
    let mut next = inner.next().expect("value");
    let mut annotated = None;
    if next.as_rule() == Rule::ty {
        annotated = Some(ty(cx, next));
        next = inner.next().expect("value");
    }
    Ok(Let {
        name,
        ty: annotated,
        value: expr(cx, next)?,
        span: at,
    })
}

fn ty(cx: &Cx, p: Pair<Rule>) -> TypeExpr {
    let at = cx.span(&p);
    let mut inner = p.into_inner();
    let base = inner.next().expect("type");
    let base_at = cx.span(&base);
    let kind = match base.as_rule() {
        Rule::type_name => TypeKind::Named(base.as_str().to_string()),
        Rule::list_ty => TypeKind::List(Box::new(ty(cx, base.into_inner().next().expect("elem")))),
        Rule::map_ty => TypeKind::Map(Box::new(ty(cx, base.into_inner().next().expect("value")))),
        r => unreachable!("type {r:?}"),
    };
    let base = TypeExpr {
        kind,
        span: base_at,
    };
    match inner.next() {
        Some(_) => TypeExpr {
            kind: TypeKind::Optional(Box::new(base)),
            span: at,
        },
        None => base,
    }
}

fn expr(cx: &Cx, p: Pair<Rule>) -> Result<Expr> {
    match p.as_rule() {
        Rule::expr => {
            let at = cx.span(&p);
            let mut inner = p.into_inner();
            let left = expr(cx, inner.next().expect("sum"))?;
            match inner.next() {
                None => Ok(left),
                Some(op) => {
                    let op = if op.as_str() == "==" {
                        BinOp::Eq
                    } else {
                        BinOp::Ne
                    };
                    let right = expr(cx, inner.next().expect("right"))?;
                    Ok(Expr {
                        kind: ExprKind::Binary(op, Box::new(left), Box::new(right)),
                        span: at,
                    })
                }
            }
        }
        Rule::sum => {
            let mut inner = p.into_inner();
            let mut left = expr(cx, inner.next().expect("operand"))?;
            while let Some(_plus) = inner.next() {
                let right = expr(cx, inner.next().expect("operand"))?;
                let at = left.span.to(right.span);
                left = Expr {
                    kind: ExprKind::Binary(BinOp::Add, Box::new(left), Box::new(right)),
                    span: at,
                };
            }
            Ok(left)
        }
        Rule::postfix => {
            let mut inner = p.into_inner();
            let mut e = expr_primary(cx, inner.next().expect("primary"))?;
            for suffix in inner {
                let end = cx.span(&suffix).end;
                let at = Span::new(e.span.start, end);
                e = match suffix.as_rule() {
                    Rule::member => Expr {
                        kind: ExprKind::Member(
                            Box::new(e),
                            cx.ident(suffix.into_inner().next().expect("name")),
                        ),
                        span: at,
                    },
                    Rule::call => {
                        let mut args = Vec::new();
                        for a in suffix.into_inner() {
                            let mut ai = a.into_inner();
                            let first = ai.next().expect("arg");
                            if first.as_rule() == Rule::arg_name {
                                let value = expr(cx, ai.next().expect("value"))?;
                                args.push(Arg {
                                    name: Some(cx.ident(first)),
                                    value,
                                });
                            } else {
                                args.push(Arg {
                                    name: None,
                                    value: expr(cx, first)?,
                                });
                            }
                        }
                        Expr {
                            kind: ExprKind::Call {
                                callee: Box::new(e),
                                args,
                            },
                            span: at,
                        }
                    }
                    r => unreachable!("suffix {r:?}"),
                };
            }
            Ok(e)
        }
        _ => expr_primary(cx, p),
    }
}

fn expr_primary(cx: &Cx, p: Pair<Rule>) -> Result<Expr> {
    let at = cx.span(&p);
    let kind = match p.as_rule() {
        Rule::paren => ExprKind::Paren(Box::new(expr(cx, p.into_inner().next().expect("inner"))?)),
        Rule::if_expr => {
            let mut i = p.into_inner();
            let cond = expr(cx, i.next().expect("cond"))?;
            let then = expr(cx, i.next().expect("then"))?;
            let other = expr(cx, i.next().expect("else"))?;
            ExprKind::If {
                cond: Box::new(cond),
                then: Box::new(then),
                other: Box::new(other),
            }
        }
        Rule::list => ExprKind::List(p.into_inner().map(|e| expr(cx, e)).collect::<Result<_>>()?),
        Rule::map => {
            let mut entries = Vec::new();
            for e in p.into_inner() {
                let mut i = e.into_inner();
                let key = expr_primary(cx, i.next().expect("key"))?;
                let value = expr(cx, i.next().expect("value"))?;
                entries.push((key, value));
            }
            ExprKind::Map(entries)
        }
        Rule::string | Rule::triple => {
            let triple = p.as_rule() == Rule::triple;
            let mut parts: Vec<StrPart> = Vec::new();
            for part in p.into_inner() {
                match part.as_rule() {
                    Rule::chars | Rule::tchars => {
                        push_text(&mut parts, part.as_str(), part.as_str());
                    }
                    Rule::escape => {
                        let raw = part.as_str();
                        let text = unescape(cx, &part)?;
                        push_text(&mut parts, raw, &text);
                    }
                    Rule::interp => {
                        let e = expr(cx, part.into_inner().next().expect("expr"))?;
                        parts.push(StrPart::Interp(e));
                    }
                    r => unreachable!("string part {r:?}"),
                }
            }
            ExprKind::Str { parts, triple }
        }
        Rule::int => {
            let text = p.as_str();
            let parsed = if let Some(o) = text.strip_prefix("0o") {
                u64::from_str_radix(o, 8)
            } else if let Some(h) = text.strip_prefix("0x") {
                u64::from_str_radix(h, 16)
            } else {
                text.parse()
            };
            let value = parsed.map_err(|_| {
                Diagnostic::at(cx.file, at, format!("the number `{text}` is too large"))
                    .help("numbers are unsigned and fit in 64 bits")
            })?;
            ExprKind::Int {
                value,
                text: text.to_string(),
            }
        }
        Rule::boolean => ExprKind::Bool(p.as_str() == "true"),
        Rule::none => ExprKind::None,
        Rule::ident => ExprKind::Name(p.as_str().to_string()),
        _ => return expr(cx, p),
    };
    Ok(Expr { kind, span: at })
}

fn push_text(parts: &mut Vec<StrPart>, raw: &str, text: &str) {
    if let Some(StrPart::Text { raw: r, text: t }) = parts.last_mut() {
        r.push_str(raw);
        t.push_str(text);
    } else {
        parts.push(StrPart::Text {
            raw: raw.to_string(),
            text: text.to_string(),
        });
    }
}

fn unescape(cx: &Cx, p: &Pair<Rule>) -> Result<String> {
    let s = p.as_str();
    Ok(match &s[1..] {
        "n" => "\n".into(),
        "t" => "\t".into(),
        "r" => "\r".into(),
        "\"" => "\"".into(),
        "\\" => "\\".into(),
        "$" => "$".into(),
        u => {
            let hex = &u[2..u.len() - 1];
            let c = u32::from_str_radix(hex, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| {
                    Diagnostic::at(cx.file, cx.span(p), format!("`{s}` is not a character"))
                        .help("write a Unicode scalar value in hex, like `\\u{e9}`")
                })?;
            c.to_string()
        }
    })
}

/// The comments of a file, found by a scan that knows where strings are (a `#` inside a string is text).
fn comments(text: &str) -> Vec<Comment> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    // Inside strings, interpolations can nest strings: a stack of open string kinds (true = `"""`).
    let mut stack: Vec<(bool, usize)> = Vec::new();
    while i < b.len() {
        match stack.last().copied() {
            None | Some((_, 1..)) => {
                // Code (top level or inside `${ }`, counting braces).
                match b[i] {
                    b'#' => {
                        let end = text[i..].find('\n').map_or(text.len(), |n| i + n);
                        out.push(Comment {
                            span: Span::new(i, end),
                            text: text[i + 1..end].to_string(),
                        });
                        i = end;
                        continue;
                    }
                    b'"' => {
                        let triple = b[i..].starts_with(b"\"\"\"");
                        stack.push((triple, 0));
                        i += if triple { 3 } else { 1 };
                        continue;
                    }
                    b'{' => {
                        if let Some((_, depth)) = stack.last_mut() {
                            *depth += 1;
                        }
                    }
                    b'}' => {
                        if let Some((_, depth)) = stack.last_mut() {
                            *depth -= 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            // Inside a string, compared byte by byte: `i` may stop inside a multi-byte character.
            Some((triple, 0)) => {
                if b[i] == b'\\' {
                    i += 2;
                } else if b[i..].starts_with(b"${") {
                    stack.last_mut().expect("in a string").1 = 1;
                    i += 2;
                } else if triple && b[i..].starts_with(b"\"\"\"") {
                    stack.pop();
                    i += 3;
                } else if !triple && b[i] == b'"' {
                    stack.pop();
                    i += 1;
                } else {
                    i += 1;
                }
            }
        }
    }
    out
}

/// pest's error, in kiln's words: where, what was expected, and a hint for the common slips.
fn syntax_error(file: &Arc<SourceFile>, e: pest::error::Error<Rule>) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let end = file.text[pos..]
        .char_indices()
        .nth(1)
        .map_or(file.text.len(), |(i, _)| pos + i);
    let found = file.text[pos..]
        .split(|c: char| c.is_whitespace())
        .next()
        .filter(|w| !w.is_empty());
    let expected = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(|r| rule_name(*r)).collect();
            names.sort();
            names.dedup();
            names
        }
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let what = match found {
        Some(w) => format!("unexpected `{}`", w.chars().take(20).collect::<String>()),
        None if pos >= file.text.trim_end().len() => "unexpected end of file".to_string(),
        None => "unexpected input".to_string(),
    };
    let message = if expected.is_empty() {
        what
    } else {
        format!("{what}; expected {}", one_of(&expected))
    };
    let mut d = Diagnostic::at(file, Span::new(pos, end), message);
    d = d.help(hint(file, pos, found, &expected));
    d
}

fn one_of(names: &[&str]) -> String {
    match names {
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
        [] => String::new(),
    }
}

fn rule_name(r: Rule) -> Option<&'static str> {
    Some(match r {
        Rule::item | Rule::import | Rule::param | Rule::secret | Rule::ssh | Rule::let_item => {
            "an item (`import`, `param`, `secret`, `ssh`, `let`, `fn` or `target`)"
        }
        Rule::func | Rule::target => {
            "an item (`import`, `param`, `secret`, `ssh`, `let`, `fn` or `target`)"
        }
        Rule::EOI => "the end of the file",
        Rule::ident => "a name",
        Rule::ty | Rule::type_name | Rule::list_ty | Rule::map_ty => "a type",
        Rule::expr | Rule::sum | Rule::postfix | Rule::primary => "an expression",
        Rule::string | Rule::triple => "a string",
        Rule::fparam => "a parameter",
        Rule::block => "`{`",
        Rule::arg => "an argument",
        Rule::entry => "a `\"key\": value` entry",
        Rule::cmp_op | Rule::plus => "an operator",
        Rule::call | Rule::member => "`.` or `(`",
        _ => return None,
    })
}

fn hint(file: &SourceFile, pos: usize, found: Option<&str>, expected: &[&str]) -> String {
    let line_start = file.text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let before = file.text[line_start..pos].trim();
    if let Some(w) = found {
        if w.starts_with('\'') {
            return "strings use double quotes: \"...\"".into();
        }
        if w.starts_with("//") {
            return "comments start with `#`".into();
        }
        if w.starts_with('\\') {
            return "`\\` starts an escape (`\\n`, `\\t`, `\\r`, `\\\"`, `\\\\`, `\\$`, `\\u{...}`); write `\\\\` for a backslash, also for a shell line continuation".into();
        }
        if w.starts_with(';') {
            return "no `;` is needed: items and chained calls are separated by whitespace".into();
        }
        // What each instruction is in .build, as `kiln convert` writes it.
        for (kw, there) in [
            ("FROM", "`image(\"REF\")`"),
            ("RUN", "the method `.run(\"...\")`"),
            ("COPY", "the method `.copy(...)`"),
            ("ENV", "the method `.env({...})`"),
            ("ARG", "a `param` or the method `.arg({...})`"),
            ("WORKDIR", "the method `.workdir(\"...\")`"),
        ] {
            if w == kw {
                return format!(
                    "this looks like a Dockerfile: `kiln convert -f {}` writes it as .build source, where `{kw}` becomes {there}",
                    file.name
                );
            }
        }
    }
    if before.ends_with(':') || before.ends_with("->") {
        return "types are `String`, `Int`, `Bool`, `Path`, `File`, `Dir`, `Image`, `Secret`, `Ssh`, `Cache`, `Mount`, `[T]`, `{T}` or `T?`".into();
    }
    if expected.iter().any(|e| e.starts_with("an item")) {
        return "a file is a list of `import`, `param`, `secret`, `ssh`, `let`, `fn` and `target` items".into();
    }
    // A user of the binary has no documentation file to be sent to: show the shape of a target instead.
    "a target reads `target app: Image = image(\"alpine:3.20\").run(\"make\")`; `kiln convert` shows any Dockerfile written as .build".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Module> {
        parse(&SourceFile::new("t.build", s))
    }

    #[test]
    fn parses_the_illustration() {
        let m = parse_str(
            r#"
import "//lib/node.build" as node
param version: String = "1.0"
secret npm_token            # given with --secret
ssh agent
target deps: Image = image("//base:debian")
  .run("apt-get update", mounts: [cache("/var/cache/apt", sharing: "locked")])
fn f(a: [String], b: Int = 3) -> String { let x = "${a}" x + "y" }
target image: Image = scratch().copy(deps.dir("/src"), ["."], "/app").label({"v": version})
"#,
        )
        .unwrap();
        assert_eq!(m.items.len(), 7);
        assert_eq!(m.comments.len(), 1);
        assert_eq!(m.comments[0].text, " given with --secret");
    }

    #[test]
    fn comments_inside_strings_are_text() {
        let m = parse_str("let a = \"# not a comment ${ \"}#\" }\" # yes\n").unwrap();
        assert_eq!(m.comments.len(), 1);
        assert_eq!(m.comments[0].text, " yes");
    }

    #[test]
    fn non_ascii_text_in_strings_parses() {
        // Found by fuzzing: the comment scanner sliced the text inside a multi-byte character.
        let m = parse_str("let a = \"José ${\"ы\"} 🦀\" # é\nlet b = \"\"\"\nü\n\"\"\"\n").unwrap();
        assert_eq!(m.items.len(), 2);
        assert_eq!(m.comments.len(), 1);
        assert_eq!(m.comments[0].text, " é");
    }

    #[test]
    fn errors_point_at_the_offending_text() {
        let e = parse_str("let a = 'x'\n").unwrap_err();
        let text = crate::diag::render(&e, false);
        assert!(text.contains("t.build:1:9"), "{text}");
        assert!(text.contains("double quotes"), "{text}");
    }

    #[test]
    fn a_bad_escape_says_how_to_write_a_backslash() {
        let e = parse_str("let a = \"\"\"\napt-get update && \\\n  apt-get install\n\"\"\"\n")
            .unwrap_err();
        let text = crate::diag::render(&e, false);
        assert!(text.contains("t.build:2:19"), "{text}");
        assert!(
            e.help
                .as_deref()
                .is_some_and(|h| h.contains("write `\\\\` for a backslash")),
            "{text}"
        );
    }
}
