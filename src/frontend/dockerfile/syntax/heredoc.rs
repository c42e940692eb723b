//! Heredoc words (`<<EOF`, `<<-'EOF'`, `3<<EOF`) as BuildKit recognises them in RUN, COPY and ADD.
//!
//! BuildKit splits the whole instruction line into shell words (quotes and escapes kept, unset
//! variables left as written) and tests each word against `^(\d*)<<(-?)\s*([^<]*)$`. The rest of
//! the word is the delimiter; it is lexed twice, with and without quote removal, and any quote that
//! disappears means part of the delimiter was quoted, so the body is not expanded.

use crate::frontend::shell::{LexOptions, split_words_with};

/// A recognised heredoc word: how its body is read and used (the body itself lives in the AST).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeredocWord {
    /// The delimiter with quotes removed.
    pub name: String,
    /// The optional leading file descriptor (`3<<EOF`); 0 when absent.
    pub fd: u64,
    /// False when any part of the delimiter was quoted: the body is then taken literally.
    pub expand: bool,
    /// True for `<<-`: leading tabs are stripped from the body (and the terminator) when used.
    pub chomp: bool,
}

/// Recognises one already-split word. `Ok(None)`: not a heredoc; `Err`: unbalanced quotes.
pub fn parse_heredoc(word: &str) -> Result<Option<HeredocWord>, String> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(after) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, after) = match after.strip_prefix('-') {
        Some(a) => (true, a),
        None => (false, after),
    };
    // `\s` of Go's regexp: ASCII space, tab, newline, form feed, carriage return.
    let rest = after.trim_start_matches([' ', '\t', '\n', '\x0c', '\r']);
    if rest.contains('<') || rest.is_empty() {
        return Ok(None);
    }
    // Go's ParseUint saturates on overflow (and the error is ignored).
    let fd = word[..digits].bytes().fold(0u64, |acc, d| {
        acc.checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .unwrap_or(u64::MAX)
    });
    let opts = LexOptions {
        skip_unset: true,
        ..LexOptions::default()
    };
    let words = split_words_with(rest, '\\', opts)?;
    let [name] = words.as_slice() else {
        return Ok(None);
    };
    let raw = split_words_with(
        rest,
        '\\',
        LexOptions {
            raw_quotes: true,
            ..opts
        },
    )?;
    let [raw_name] = raw.as_slice() else {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    };
    let quotes = |s: &str| s.chars().filter(|c| matches!(c, '\'' | '"')).count();
    Ok(Some(HeredocWord {
        name: name.clone(),
        fd,
        expand: quotes(name) == quotes(raw_name),
        chomp,
    }))
}

/// The heredocs a whole instruction line opens, in order. The line is split with `\` as the escape
/// character whatever the file's escape directive says, as BuildKit does.
pub fn heredocs_from_line(line: &str) -> Result<Vec<HeredocWord>, String> {
    let opts = LexOptions {
        raw_quotes: true,
        raw_escapes: true,
        skip_unset: true,
    };
    // BuildKit ignores a lexing error here: the line then opens no heredoc.
    let words = split_words_with(line, '\\', opts).unwrap_or_default();
    let mut out = Vec::new();
    for w in words {
        if let Some(h) = parse_heredoc(&w)? {
            out.push(h);
        }
    }
    Ok(out)
}

/// The body as used with `<<-`: leading tabs removed from every line.
pub fn chomp(body: &str) -> String {
    body.split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &str) -> Vec<String> {
        heredocs_from_line(line)
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect()
    }

    #[test]
    fn words() {
        let h = parse_heredoc("<<-'EOF'").unwrap().unwrap();
        assert_eq!(
            (h.name.as_str(), h.expand, h.chomp, h.fd),
            ("EOF", false, true, 0)
        );
        let h = parse_heredoc("3<<EO\"F\"").unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.fd), ("EOF", false, 3));
        assert_eq!(parse_heredoc("<<EOF sh").unwrap(), None);
        assert_eq!(parse_heredoc("<<<EOF").unwrap(), None);
        assert_eq!(parse_heredoc("<<-").unwrap(), None);
        assert!(parse_heredoc("<<'EOF").is_err());
        assert_eq!(
            parse_heredoc("99999999999999999999999<<E")
                .unwrap()
                .unwrap()
                .fd,
            u64::MAX
        );
    }

    #[test]
    fn lines() {
        assert_eq!(names("RUN <<EOF <<EOF2"), ["EOF", "EOF2"]);
        assert_eq!(names("RUN <<  EOF  > foo"), ["EOF"]);
        assert_eq!(names("RUN <<$EOF"), ["$EOF"]);
        assert!(names("RUN '<<EOF'").is_empty());
        assert!(names("RUN <<- EOF").is_empty());
        assert_eq!(chomp("\ta\n\t\tb\nc"), "a\nb\nc");
    }
}
