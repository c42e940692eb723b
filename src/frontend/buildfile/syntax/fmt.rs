//! `kiln fmt`: prints a `.build` tree in the one canonical layout, keeping every comment.
//!
//! Layout rules: two-space indents; a method chain with two or more calls puts each call on its own line;
//! anything wider than `WIDTH` breaks its arguments or elements one per line with a trailing comma; blank
//! lines between items are kept (at most one), and `fn`/`target` items always have one before them.
//! Comments are found by offset: each is printed before the first node that starts after it, or at the
//! end of the line it trailed. Formatting a formatted file changes nothing.

use super::{Arg, Expr, ExprKind, Item, ItemKind, Let, Module, StrPart};
use crate::diag::Span;

const WIDTH: usize = 100;
const INDENT: &str = "  ";

/// The canonical text of a module.
pub fn module(m: &Module) -> String {
    let modules: Vec<&str> = m
        .items
        .iter()
        .filter_map(|i| match &i.kind {
            ItemKind::Import { alias, .. } => Some(alias.name.as_str()),
            _ => None,
        })
        .collect();
    let mut p = Printer {
        out: String::new(),
        text: &m.file.text,
        comments: &m.comments,
        next: 0,
        modules,
        reserve: 0,
    };
    let mut prev: Option<&Item> = None;
    for item in &m.items {
        if let Some(prev) = prev {
            let blank = matches!(item.kind, ItemKind::Fn(_) | ItemKind::Target { .. })
                || matches!(prev.kind, ItemKind::Fn(_) | ItemKind::Target { .. })
                || std::mem::discriminant(&prev.kind) != std::mem::discriminant(&item.kind)
                || p.blank_line_between(prev.span.end, p.first_start(item.span));
            if blank {
                p.out.push('\n');
            }
        }
        p.comments_before(item.span.start, 0);
        p.item(item);
        p.trailing(item.span.end);
        p.out.push('\n');
        prev = Some(item);
    }
    // Comments after the last item.
    if p.next < p.comments.len() && !m.items.is_empty() {
        p.out.push('\n');
    }
    p.comments_before(usize::MAX, 0);
    p.out
}

/// One expression on one line, as the formatter would print it inline (used by code that writes source).
pub fn expr_to_string(e: &Expr) -> String {
    flat(e)
}

struct Printer<'a> {
    out: String,
    text: &'a str,
    comments: &'a [super::Comment],
    /// The first comment not yet printed.
    next: usize,
    /// Import aliases: `alias.f(...)` is a function call, kept whole at the head of a chain.
    modules: Vec<&'a str>,
    /// How many characters will follow the expression being printed on its last line (the `,` after
    /// an element of a broken list, the ` {` after an `if` condition), so that it counts against WIDTH.
    reserve: usize,
}

impl Printer<'_> {
    /// Runs `f` with `reserve` characters following what it prints.
    fn reserving<R>(&mut self, reserve: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        let saved = std::mem::replace(&mut self.reserve, reserve);
        let r = f(self);
        self.reserve = saved;
        r
    }

    /// The width `text` takes on the current line, with what follows it when it is one line.
    fn width_of(&self, text: &str) -> usize {
        match text.split_once('\n') {
            Some((first, _)) => first.chars().count(),
            None => text.chars().count() + self.reserve,
        }
    }

    fn indent(&mut self, level: usize) {
        for _ in 0..level {
            self.out.push_str(INDENT);
        }
    }

    /// Where an item's text starts, counting comments right above it (for the blank-line rule).
    fn first_start(&self, item: Span) -> usize {
        self.comments[self.next..]
            .iter()
            .find(|c| c.span.start < item.start)
            .map_or(item.start, |c| c.span.start)
    }

    fn blank_line_between(&self, from: usize, to: usize) -> bool {
        if from >= to || to > self.text.len() {
            return false;
        }
        // Skip the rest of `from`'s line (a trailing comment lives there).
        let gap = &self.text[from..to];
        let gap = gap.split_once('\n').map_or("", |(_, rest)| rest);
        gap.lines().any(|l| l.trim().is_empty())
    }

    /// Prints, on their own lines, the comments that start before `pos`.
    /// Blank lines between comments, and between the last of them and the node, are kept (one at most).
    fn comments_before(&mut self, pos: usize, level: usize) {
        let mut prev_end: Option<usize> = None;
        while let Some(c) = self.comments.get(self.next) {
            if c.span.start >= pos {
                break;
            }
            if !self.out.is_empty() && !self.out.ends_with('\n') {
                self.out.push('\n');
            }
            if let Some(end) = prev_end
                && self.blank_line_between(end, c.span.start)
            {
                self.out.push('\n');
            }
            prev_end = Some(c.span.end);
            self.indent(level);
            self.out.push('#');
            self.out.push_str(c.text.trim_end());
            self.out.push('\n');
            self.next += 1;
        }
        if let Some(end) = prev_end
            && pos != usize::MAX
            && self.blank_line_between(end, pos)
        {
            self.out.push('\n');
        }
    }

    /// A comment on the same source line as the end of a node stays at the end of its printed line.
    fn trailing(&mut self, end: usize) {
        let Some(c) = self.comments.get(self.next) else {
            return;
        };
        if end == 0 || c.span.start < end || self.text.get(end..c.span.start).is_none() {
            return;
        }
        if !self.text[end..c.span.start].contains('\n') {
            self.out.push_str(" #");
            self.out.push_str(c.text.trim_end());
            self.next += 1;
        }
    }

    fn has_comment_in(&self, span: Span) -> bool {
        span.end > span.start
            && self.comments[self.next..]
                .iter()
                .any(|c| c.span.start >= span.start && c.span.start < span.end)
    }

    fn column(&self) -> usize {
        let line = self.out.rsplit('\n').next().unwrap_or("");
        line.chars().count()
    }

    fn item(&mut self, item: &Item) {
        match &item.kind {
            ItemKind::Import { path, alias } => {
                self.out
                    .push_str(&format!("import {} as {}", flat(path), alias.name));
            }
            ItemKind::Param { name, ty, default } => {
                self.out.push_str(&format!("param {}: {}", name.name, ty));
                if let Some(d) = default {
                    self.out.push_str(" = ");
                    self.expr(d, 0);
                }
            }
            ItemKind::Secret { name, id } | ItemKind::Ssh { name, id } => {
                let kw = if matches!(item.kind, ItemKind::Secret { .. }) {
                    "secret"
                } else {
                    "ssh"
                };
                self.out.push_str(&format!("{kw} {}", name.name));
                if let Some(id) = id {
                    self.out.push_str(&format!(" = {}", flat(id)));
                }
            }
            ItemKind::Let(l) => self.let_(l, 0),
            ItemKind::Fn(f) => {
                let params: Vec<String> = f
                    .params
                    .iter()
                    .map(|p| {
                        let mut s = format!("{}: {}", p.name.name, p.ty);
                        if let Some(d) = &p.default {
                            s.push_str(&format!(" = {}", flat(d)));
                        }
                        s
                    })
                    .collect();
                let head = format!("fn {}({}) -> {} {{", f.name.name, params.join(", "), f.ret);
                if head.len() <= WIDTH {
                    self.out.push_str(&head);
                } else {
                    self.out.push_str(&format!("fn {}(\n", f.name.name));
                    for p in &params {
                        self.out.push_str(&format!("{INDENT}{p},\n"));
                    }
                    self.out.push_str(&format!(") -> {} {{", f.ret));
                }
                self.out.push('\n');
                for l in &f.lets {
                    self.comments_before(l.span.start, 1);
                    self.indent(1);
                    self.let_(l, 1);
                    self.trailing(l.span.end);
                    self.out.push('\n');
                }
                self.comments_before(f.body.span.start, 1);
                self.indent(1);
                self.expr(&f.body, 1);
                self.trailing(f.body.span.end);
                self.out.push('\n');
                self.comments_before(f.block.end, 1);
                self.out.push('}');
            }
            ItemKind::Target {
                name,
                ty,
                value,
                tags,
                platforms,
            } => {
                let start = self.out.len();
                self.out
                    .push_str(&format!("target {}: {} = ", name.name, ty));
                self.expr(value, 0);
                let mut before = value.span.end;
                for (keyword, list) in [("tagged", tags), ("for", platforms)] {
                    if let Some(list) = list {
                        self.clause(start, before, keyword, list);
                        before = list.span.end;
                    }
                }
            }
        }
    }

    /// A target's `tagged [...]` or `for [...]`, after the text from `before`. Under a value that took
    /// several lines, after a comment, or when it does not fit beside the value, the clause gets a
    /// line of its own (and so does any clause after it).
    fn clause(&mut self, start: usize, before: usize, keyword: &str, list: &Expr) {
        let commented = self.has_comment_in(Span::new(before, list.span.start));
        let beside = keyword.len() + 2 + self.width_of(&flat(list));
        if commented || self.out[start..].contains('\n') || self.column() + beside > WIDTH {
            self.comments_before(list.span.start, 1);
            if !self.out.ends_with('\n') {
                self.out.push('\n');
            }
            self.indent(1);
            self.out.push_str(keyword);
            self.out.push(' ');
            self.expr(list, 1);
        } else {
            self.out.push(' ');
            self.out.push_str(keyword);
            self.out.push(' ');
            self.expr(list, 0);
        }
    }

    fn let_(&mut self, l: &Let, level: usize) {
        self.out.push_str(&format!("let {}", l.name.name));
        if let Some(t) = &l.ty {
            self.out.push_str(&format!(": {t}"));
        }
        self.out.push_str(" = ");
        self.expr(&l.value, level);
    }

    /// Whether `e` may be printed on the current line as is.
    fn fits_flat(&self, e: &Expr) -> bool {
        if self.has_comment_in(e.span) {
            return false;
        }
        self.column() + self.width_of(&flat(e)) <= WIDTH && chain_calls(e) < 2
    }

    fn expr(&mut self, e: &Expr, level: usize) {
        if self.fits_flat(e) {
            self.out.push_str(&flat(e));
            return;
        }
        match &e.kind {
            ExprKind::Call { callee, args } => {
                if chain_calls(e) >= 2 {
                    return self.chain(e, level);
                }
                self.reserving(0, |p| p.expr(callee, level));
                self.args(args, e.span, level);
            }
            ExprKind::List(items) => {
                self.out.push('[');
                self.out.push('\n');
                for item in items {
                    self.element(item.span, level + 1, |p| p.expr(item, level + 1));
                }
                self.comments_before(e.span.end, level + 1);
                self.indent(level);
                self.out.push(']');
            }
            ExprKind::Map(entries) => {
                self.out.push('{');
                self.out.push('\n');
                for (k, v) in entries {
                    self.element(k.span.to(v.span), level + 1, |p| {
                        p.out.push_str(&flat(k));
                        p.out.push_str(": ");
                        p.expr(v, level + 1);
                    });
                }
                self.comments_before(e.span.end, level + 1);
                self.indent(level);
                self.out.push('}');
            }
            ExprKind::Binary(op, l, r) => {
                let tail = op.as_str().len() + 2;
                self.reserving(tail, |p| p.expr(l, level));
                self.out.push_str(&format!(" {} ", op.as_str()));
                self.expr(r, level);
            }
            ExprKind::If { cond, then, other } => {
                self.out.push_str("if ");
                self.reserving(2, |p| p.expr(cond, level));
                self.out.push_str(" {\n");
                self.indent(level + 1);
                self.reserving(0, |p| p.expr(then, level + 1));
                self.out.push('\n');
                self.indent(level);
                self.out.push_str("} else {\n");
                self.indent(level + 1);
                self.reserving(0, |p| p.expr(other, level + 1));
                self.out.push('\n');
                self.indent(level);
                self.out.push('}');
            }
            ExprKind::Paren(inner) => {
                self.out.push('(');
                self.reserving(self.reserve + 1, |p| p.expr(inner, level));
                self.out.push(')');
            }
            ExprKind::Member(base, name) => {
                let tail = self.reserve + 1 + name.name.len();
                self.reserving(tail, |p| p.expr(base, level));
                self.out.push('.');
                self.out.push_str(&name.name);
            }
            _ => self.out.push_str(&flat(e)),
        }
    }

    /// One element of a broken list: comments before it, the element, a comma, a trailing comment.
    fn element(&mut self, span: Span, level: usize, print: impl FnOnce(&mut Self)) {
        self.comments_before(span.start, level);
        self.indent(level);
        self.reserving(1, print);
        self.out.push(',');
        self.trailing(span.end);
        self.out.push('\n');
    }

    fn args(&mut self, args: &[Arg], call: Span, level: usize) {
        let inline = format!("({})", flat_args(args));
        if !self.has_comment_in(call) && self.column() + self.width_of(&inline) <= WIDTH {
            self.out.push_str(&inline);
            return;
        }
        self.out.push_str("(\n");
        for a in args {
            let span = match &a.name {
                Some(n) => n.span.to(a.value.span),
                None => a.value.span,
            };
            self.element(span, level + 1, |p| {
                if let Some(n) = &a.name {
                    p.out.push_str(&n.name);
                    p.out.push_str(": ");
                }
                p.expr(&a.value, level + 1);
            });
        }
        self.comments_before(call.end, level + 1);
        self.indent(level);
        self.out.push(')');
    }

    /// `base\n  .a(...)\n  .b(...)`: one call per line.
    fn chain(&mut self, e: &Expr, level: usize) {
        let mut links: Vec<Link> = Vec::new();
        let mut cur = e;
        loop {
            match &cur.kind {
                ExprKind::Call { callee, args } => match &callee.kind {
                    ExprKind::Member(base, name) => {
                        links.push((name, Some((args, cur.span))));
                        cur = base;
                    }
                    _ => break,
                },
                ExprKind::Member(base, name) if chain_calls(base) > 0 => {
                    links.push((name, None));
                    cur = base;
                }
                _ => break,
            }
        }
        links.reverse();
        self.reserving(0, |p| p.expr(cur, level));
        let mut links = links.into_iter().peekable();
        if let ExprKind::Name(root) = &cur.kind
            && self.modules.contains(&root.as_str())
            && let Some((name, Some((args, span)))) = links.peek().copied()
        {
            self.out.push('.');
            self.out.push_str(&name.name);
            self.args(args, Span::new(name.span.end, span.end), level);
            links.next();
        }
        let links: Vec<Link> = links.collect();
        let last = links.len().saturating_sub(1);
        let reserve = self.reserve;
        for (i, (name, call)) in links.into_iter().enumerate() {
            self.out.push('\n');
            self.comments_before(name.span.start, level + 1);
            self.indent(level + 1);
            self.out.push('.');
            self.out.push_str(&name.name);
            if let Some((args, span)) = call {
                let tail = if i == last { reserve } else { 0 };
                self.reserving(tail, |p| {
                    p.args(args, Span::new(name.span.end, span.end), level + 1)
                });
                self.trailing(span.end);
            }
        }
    }
}

/// One `.name` or `.name(args)` of a chain, with the call's span.
type Link<'a> = (&'a super::Ident, Option<(&'a [Arg], Span)>);

/// How many method calls a chain ends with (`a.b().c()` → 2).
fn chain_calls(e: &Expr) -> usize {
    match &e.kind {
        ExprKind::Call { callee, .. } => match &callee.kind {
            ExprKind::Member(base, _) => 1 + chain_calls(base),
            _ => 0,
        },
        ExprKind::Member(base, _) => chain_calls(base),
        _ => 0,
    }
}

fn flat_args(args: &[Arg]) -> String {
    args.iter()
        .map(|a| match &a.name {
            Some(n) => format!("{}: {}", n.name, flat(&a.value)),
            None => flat(&a.value),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn flat(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Str { parts, triple } => {
            let q = if *triple { "\"\"\"" } else { "\"" };
            let mut s = String::from(q);
            // A newline right after `"""` is not part of the text, so a multi-line text starts on the
            // next line, where it reads as it runs (and a leading `\r` is not taken for that newline).
            if *triple
                && parts
                    .iter()
                    .any(|p| matches!(p, StrPart::Text { raw, .. } if raw.contains(['\n', '\r'])))
            {
                s.push('\n');
            }
            for p in parts {
                match p {
                    StrPart::Text { raw, .. } => s.push_str(raw),
                    StrPart::Interp(e) => {
                        s.push_str("${");
                        s.push_str(&flat(e));
                        s.push('}');
                    }
                }
            }
            s.push_str(q);
            s
        }
        ExprKind::Int { text, .. } => text.clone(),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::None => "none".into(),
        ExprKind::List(items) => format!(
            "[{}]",
            items.iter().map(flat).collect::<Vec<_>>().join(", ")
        ),
        ExprKind::Map(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{}: {}", flat(k), flat(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        ExprKind::Name(n) => n.clone(),
        ExprKind::Member(base, name) => format!("{}.{}", flat(base), name.name),
        ExprKind::Call { callee, args } => format!("{}({})", flat(callee), flat_args(args)),
        ExprKind::Binary(op, l, r) => format!("{} {} {}", flat(l), op.as_str(), flat(r)),
        ExprKind::If { cond, then, other } => format!(
            "if {} {{ {} }} else {{ {} }}",
            flat(cond),
            flat(then),
            flat(other)
        ),
        ExprKind::Paren(inner) => format!("({})", flat(inner)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceFile;

    fn format(s: &str) -> String {
        module(&super::super::parse(&SourceFile::new("t.build", s)).expect(s))
    }

    #[test]
    fn formats_and_is_idempotent() {
        let src = r#"# top comment
import   "//lib/apt.build"   as apt
param version : String="1.0"
secret npm_token   # trailing
ssh agent
fn install(img: Image, pkgs: [String]) -> Image {
  # why
  let cmd = "apt-get install -y ${pkgs}"
  img.run(cmd, mounts: [cache("/var/cache/apt", sharing: "locked")])
}
target deps: Image = image("debian").run("apt-get update").workdir("/src") # end
target image: Image = scratch()

  # copy the app
  .copy(deps.dir("/src/dist"), ["."], "/app")
  .entrypoint(["/app/server", "--listen", "0.0.0.0:8080", "--verbose", "--config", "/etc/app/config.toml"])
  .label({"version": version, "org.opencontainers.image.source": "https://example.com/repo"})
# the end
"#;
        let once = format(src);
        let twice = format(&once);
        assert_eq!(once, twice, "\n{once}");
        assert!(once.contains("secret npm_token # trailing"), "{once}");
        assert!(once.contains("  # copy the app\n  .copy("), "{once}");
        assert!(once.contains("# the end"), "{once}");
        assert!(once.contains("# why"), "{once}");
        assert!(
            once.starts_with("# top comment\nimport \"//lib/apt.build\" as apt\n"),
            "{once}"
        );
    }

    #[test]
    fn tags_follow_a_flat_value_and_get_their_own_line_under_a_chain_or_a_comment() {
        let src = r#"target a: Image = scratch() tagged ["r.example/a:1"]
target b: Image = scratch().workdir("/app").run("make all && make install && make check").user("app") tagged ["r.example/b:${v}", "r.example/b:latest"]
target c: Image = scratch()
  # the release names
  tagged ["r.example/c:1"]
"#;
        let once = format(src);
        assert_eq!(once, format(&once), "\n{once}");
        assert_eq!(
            once,
            r#"target a: Image = scratch() tagged ["r.example/a:1"]

target b: Image = scratch()
  .workdir("/app")
  .run("make all && make install && make check")
  .user("app")
  tagged ["r.example/b:${v}", "r.example/b:latest"]

target c: Image = scratch()
  # the release names
  tagged ["r.example/c:1"]
"#
        );
    }

    #[test]
    fn platforms_follow_the_tags_and_take_a_line_of_their_own_when_the_tags_did() {
        let src = r#"target a: Image = scratch()   for [ "linux/amd64","linux/arm64" ]
target b: Image = scratch() tagged ["r.example/b:1"] for ["linux/arm64"]
target c: Image = scratch().workdir("/app").run("make all && make install && make check").user("app") tagged ["r.example/c:1"] for ["linux/amd64", "linux/arm64"]
"#;
        let once = format(src);
        assert_eq!(once, format(&once), "\n{once}");
        assert_eq!(
            once,
            r#"target a: Image = scratch() for ["linux/amd64", "linux/arm64"]

target b: Image = scratch() tagged ["r.example/b:1"] for ["linux/arm64"]

target c: Image = scratch()
  .workdir("/app")
  .run("make all && make install && make check")
  .user("app")
  tagged ["r.example/c:1"]
  for ["linux/amd64", "linux/arm64"]
"#
        );
    }

    #[test]
    fn a_multi_line_string_starts_on_the_line_after_its_quotes() {
        // The newline after `"""` is not part of the text; it used to be dropped, pulling the first
        // line up beside the quotes.
        let src = "target app: Image = image(\"a\").run(\"\"\"\n    echo hi\n  \"\"\")\n";
        let once = format(src);
        assert_eq!(once, src);
        // A text starting with a carriage return keeps it.
        let src = "let a = \"\"\"\r\rx\"\"\"\n";
        let once = format(src);
        assert_eq!(once, format(&once), "{once:?}");
        let m = super::super::parse(&SourceFile::new("t.build", once.as_str())).unwrap();
        let ItemKind::Let(l) = &m.items[0].kind else {
            panic!()
        };
        assert_eq!(l.value.as_plain_str().as_deref(), Some("\rx"));
    }

    #[test]
    fn the_comma_after_an_element_counts_against_the_width() {
        // Flat, the `mounts:` argument is exactly 100 columns; its trailing comma made it 101.
        let src = r#"target app: Image = image("alpine/git:2.45").run(
  "git clone git@github.com:example/private.git /src",
  mounts: [deploy.mount(target: "/run/ssh.sock", required: true, mode: 0o660, uid: 1000, gid: 1000)],
)
"#;
        let once = format(src);
        assert_eq!(once, format(&once), "\n{once}");
        for line in once.lines() {
            assert!(
                line.chars().count() <= WIDTH,
                "{line:?} is too wide in\n{once}"
            );
        }
        assert!(once.contains("    deploy.mount("), "{once}");
    }
}
