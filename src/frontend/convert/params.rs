//! Params in words: a pre-FROM word (a FROM's image, a global ARG's default) as a `.build`
//! expression of the params it reads, so a `--build-arg` still changes what the conversion builds.

use super::{Converter, ident_for, literal_parts, s};
use crate::frontend::buildfile::syntax::{BinOp, Expr, ExprKind, StrPart};
use crate::frontend::shell;

impl Converter<'_> {
    /// A pre-FROM word as an expression of the params, or None when it uses a `${}` form of a param
    /// that has no `.build` equivalent here.
    pub(super) fn param_expr(&self, text: &str) -> Option<Expr> {
        const MARK: char = '\u{1}';
        let param = |n: &str| self.params.iter().any(|(k, _)| k == n);
        // `${NAME:-word}` and `${NAME-word}` with a plain word become markers first, so the lexer
        // below resolves only quotes, escapes and plain references.
        let mut defaults: Vec<(String, bool, String)> = Vec::new();
        let mut marked = String::new();
        let mut rest = text;
        while let Some(at) = rest.find("${") {
            marked.push_str(&rest[..at]);
            let after = &rest[at + 2..];
            let n = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let (name, tail) = after.split_at(n);
            let close = tail.find('}')?;
            let modifier = &tail[..close];
            if modifier.is_empty() || !param(name) {
                marked.push_str(&rest[at..at + 2 + n + close + 1]);
            } else {
                let (colon, word) = match modifier.strip_prefix(":-") {
                    Some(w) => (true, w),
                    None => (false, modifier.strip_prefix('-')?),
                };
                if word.contains(['$', '\'', '"', self.df.escape]) {
                    return None;
                }
                marked.push_str(&format!("{MARK}{}{MARK}", defaults.len()));
                defaults.push((name.to_string(), colon, word.to_string()));
            }
            rest = &tail[close + 1..];
        }
        marked.push_str(rest);
        // Single quotes would keep a `${NAME-word}` literal, which the markers no longer are.
        if !defaults.is_empty() && text.contains('\'') {
            return None;
        }
        let lookup = |n: &str| -> Option<String> {
            if param(n) {
                return Some(format!("{MARK}={n}{MARK}"));
            }
            crate::frontend::dockerfile::syntax::ast::builtin_arg(n).map(String::from)
        };
        let expanded = shell::expand_word(&marked, self.df.escape, &lookup).ok()?;
        if !expanded.contains(MARK) {
            return None;
        }
        let mut pieces: Vec<Expr> = Vec::new();
        let mut parts: Vec<StrPart> = Vec::new();
        for (i, piece) in expanded.split(MARK).enumerate() {
            if i % 2 == 0 {
                if !piece.is_empty() {
                    parts.extend(literal_parts(piece));
                }
            } else if let Some(name) = piece.strip_prefix('=') {
                parts.push(StrPart::Interp(Expr::name(&ident_for(name))));
            } else {
                let (name, colon, word) = &defaults[piece.parse::<usize>().ok()?];
                let value = Expr::name(&ident_for(name));
                let unset = if *colon {
                    binary(BinOp::Eq, interpolated(value.clone()), s(""))
                } else {
                    binary(BinOp::Eq, value.clone(), Expr::new(ExprKind::None))
                };
                if !parts.is_empty() {
                    pieces.push(string_of(std::mem::take(&mut parts)));
                }
                pieces.push(Expr::new(ExprKind::Paren(Box::new(Expr::new(
                    ExprKind::If {
                        cond: Box::new(unset),
                        then: Box::new(s(word)),
                        other: Box::new(interpolated(value)),
                    },
                )))));
            }
        }
        if !parts.is_empty() || pieces.is_empty() {
            pieces.push(string_of(parts));
        }
        if let [only] = pieces.as_mut_slice()
            && let ExprKind::Paren(inner) = &mut only.kind
        {
            return Some(std::mem::replace(&mut **inner, Expr::new(ExprKind::None)));
        }
        pieces.into_iter().reduce(|a, b| binary(BinOp::Add, a, b))
    }
}

/// `"${value}"`: a `String?` read as BuildKit reads an unset variable, as empty.
fn interpolated(value: Expr) -> Expr {
    string_of(vec![StrPart::Interp(value)])
}

/// `word == alias`, read as `PARAM == "middle"` when the word is one param between fixed text
/// (`build-${VARIANT}` names stage `build-arm` when `VARIANT == "arm"`).
pub(super) fn choice(word: &Expr, alias: &str) -> Expr {
    if let ExprKind::Str { parts, .. } = &word.kind {
        fn text(p: Option<&StrPart>) -> Option<&str> {
            match p {
                Some(StrPart::Text { text, .. }) => Some(text.as_str()),
                None => Some(""),
                Some(StrPart::Interp(_)) => None,
            }
        }
        let at = parts.iter().position(|p| matches!(p, StrPart::Interp(_)));
        if let Some(at) = at
            && at <= 1
            && parts.len() - at <= 2
            && let StrPart::Interp(param) = &parts[at]
            && matches!(param.kind, ExprKind::Name(_))
            && let (Some(prefix), Some(suffix)) = (
                text(at.checked_sub(1).map(|i| &parts[i])),
                text(parts.get(at + 1)),
            )
            && let Some(middle) = alias
                .strip_prefix(prefix)
                .and_then(|m| m.strip_suffix(suffix))
        {
            return binary(BinOp::Eq, param.clone(), s(middle));
        }
    }
    binary(BinOp::Eq, word.clone(), s(alias))
}

pub(super) fn binary(op: BinOp, l: Expr, r: Expr) -> Expr {
    Expr::new(ExprKind::Binary(op, Box::new(l), Box::new(r)))
}

fn string_of(parts: Vec<StrPart>) -> Expr {
    Expr::new(ExprKind::Str {
        parts,
        triple: false,
    })
}
