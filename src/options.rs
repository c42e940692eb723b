//! `key=value[,key=value...]` option lists (`--secret`, `--mount`, `--output`), lexed by the pest grammar
//! in `grammar/options.pest` with the quoting rules of Go's CSV reader that docker and BuildKit use.

use pest::Parser as _;

use crate::diag::Span;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/options.pest"]
struct OptionsParser;

/// One field: `key=value`, or a bare `key` (`value` is `None`). Spans are relative to the list text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    pub key: String,
    pub value: Option<String>,
    pub span: Span,
}

impl Field {
    /// Span of the value (or of the key when there is no value), for pointing carets at it.
    pub(crate) fn value_span(&self) -> Span {
        match &self.value {
            Some(v) => Span::new(self.span.end.saturating_sub(v.len()), self.span.end),
            None => self.span,
        }
    }
}

/// Why an option list could not be read, with the offending span (relative to the list text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Error {
    pub span: Span,
    pub message: String,
    pub help: &'static str,
}

/// Splits an option list into fields.
pub(crate) fn parse(text: &str) -> Result<Vec<Field>, Error> {
    let pairs = OptionsParser::parse(Rule::list, text).map_err(|e| {
        let pos = match e.location {
            pest::error::InputLocation::Pos(p) => p,
            pest::error::InputLocation::Span((s, _)) => s,
        };
        Error {
            span: Span::new(pos, text.len().max(pos + 1)),
            message: "unterminated quote in option list".to_string(),
            help: "close the quote; a quoted field looks like `\"src=a,b\"`",
        }
    })?;
    let mut fields = Vec::new();
    for pair in pairs.flatten().filter(|p| p.as_rule() == Rule::field) {
        let s = pair.as_span();
        let span = Span::new(s.start(), s.end());
        let inner = pair.into_inner().next();
        let raw = match inner {
            Some(p) if p.as_rule() == Rule::quoted => {
                let t = p.as_str();
                t[1..t.len() - 1].replace("\"\"", "\"")
            }
            Some(p) => p.as_str().to_string(),
            None => String::new(),
        };
        if raw.trim().is_empty() {
            if text.trim().is_empty() {
                continue;
            }
            return Err(Error {
                span,
                message: "empty field in option list".to_string(),
                help: "remove the extra comma",
            });
        }
        let (key, value) = match raw.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), Some(v.to_string())),
            None => (raw.trim().to_string(), None),
        };
        fields.push(Field { key, value, span });
    }
    Ok(fields)
}

/// Parses a boolean option value the way BuildKit does (`true`/`false`, a bare key meaning true).
pub(crate) fn parse_bool(value: Option<&str>) -> Option<bool> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("true") | Some("1") => Some(true),
        Some("false") | Some("0") => Some(false),
        _ => None,
    }
}

/// `1024`, `64k`, `64m`, `1g`, `2GB` (case-insensitive, trailing `b` optional), as docker's
/// `units.RAMInBytes` reads sizes.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_fields_and_quotes() {
        let f = parse(r#"type=secret,id=a,"target=/x,y",required"#).unwrap();
        let kv: Vec<_> = f
            .iter()
            .map(|f| (f.key.as_str(), f.value.as_deref()))
            .collect();
        assert_eq!(
            kv,
            [
                ("type", Some("secret")),
                ("id", Some("a")),
                ("target", Some("/x,y")),
                ("required", None)
            ]
        );
        assert_eq!(f[1].span, Span::new(12, 16));
    }

    #[test]
    fn rejects_bad_lists() {
        assert_eq!(parse(r#"id=a,"src=b"#).unwrap_err().span.start, 5);
        assert!(parse("id=a,,src=b").is_err());
    }
}
