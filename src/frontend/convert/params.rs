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
        // `${NAME<modifier>word}` with a plain word becomes a marker first, so the lexer below
        // resolves only quotes, escapes and plain references.
        let mut defaults: Vec<(String, Modifier, Expr)> = Vec::new();
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
                let (how, word) = Modifier::read(modifier)?;
                // The word may read params itself (`${S:+-$S}`), but not through braces: the brace
                // found above would not be its own.
                if word.contains(['\'', '"', self.df.escape])
                    || (word.contains('$') && word.contains('{'))
                {
                    return None;
                }
                let word = if word.contains('$') {
                    self.param_expr(word)?
                } else {
                    s(word)
                };
                marked.push_str(&format!("{MARK}{}{MARK}", defaults.len()));
                defaults.push((name.to_string(), how, word));
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
                let (name, how, word) = &defaults[piece.parse::<usize>().ok()?];
                if !parts.is_empty() {
                    pieces.push(string_of(std::mem::take(&mut parts)));
                }
                pieces.push(how.apply(Expr::name(&ident_for(name)), word.clone()));
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

/// What a `${NAME<modifier>word}` does with the variable's value, BuildKit's lexer's forms.
enum Modifier {
    /// `:-` (`colon`: an empty value counts as unset) and `-`: the word when unset.
    Default { colon: bool },
    /// `:+` and `+`: the word when set, else empty.
    Alternative { colon: bool },
    /// `#`/`##` (`suffix: false`) and `%`/`%%`: the value without a prefix/suffix matching the word.
    Trim { suffix: bool, longest: bool },
}

impl Modifier {
    /// The modifier and its word, from the text between the name and the closing brace.
    fn read(modifier: &str) -> Option<(Modifier, &str)> {
        let forms: [(&str, Modifier); 8] = [
            (":-", Modifier::Default { colon: true }),
            ("-", Modifier::Default { colon: false }),
            (":+", Modifier::Alternative { colon: true }),
            ("+", Modifier::Alternative { colon: false }),
            (
                "##",
                Modifier::Trim {
                    suffix: false,
                    longest: true,
                },
            ),
            (
                "#",
                Modifier::Trim {
                    suffix: false,
                    longest: false,
                },
            ),
            (
                "%%",
                Modifier::Trim {
                    suffix: true,
                    longest: true,
                },
            ),
            (
                "%",
                Modifier::Trim {
                    suffix: true,
                    longest: false,
                },
            ),
        ];
        forms
            .into_iter()
            .find_map(|(prefix, how)| modifier.strip_prefix(prefix).map(|word| (how, word)))
    }

    /// The `.build` expression of the modified value (a `String?` param, as BuildKit's lexer reads it).
    fn apply(&self, value: Expr, word: Expr) -> Expr {
        let unset = |colon: bool| {
            if colon {
                binary(BinOp::Eq, interpolated(value.clone()), s(""))
            } else {
                binary(BinOp::Eq, value.clone(), Expr::new(ExprKind::None))
            }
        };
        let choose = |cond: Expr, then: Expr, other: Expr| {
            Expr::new(ExprKind::Paren(Box::new(Expr::new(ExprKind::If {
                cond: Box::new(cond),
                then: Box::new(then),
                other: Box::new(other),
            }))))
        };
        match *self {
            Modifier::Default { colon } => choose(unset(colon), word, interpolated(value)),
            Modifier::Alternative { colon } => choose(unset(colon), s(""), word),
            Modifier::Trim { suffix, longest } => {
                let function = if suffix { "trim_suffix" } else { "trim_prefix" };
                let named = if longest {
                    vec![("longest", Expr::new(ExprKind::Bool(true)))]
                } else {
                    Vec::new()
                };
                Expr::call(
                    Expr::name(function),
                    vec![interpolated(value.clone()), word],
                    named,
                )
            }
        }
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
