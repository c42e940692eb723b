//! Docker's shell-word lexer: quote removal, escapes and `$VAR`/`${VAR…}` expansion, as BuildKit does it.
//!
//! This follows the behaviour of BuildKit's `frontend/dockerfile/shell` lexer (its `ProcessWord` and
//! `ProcessWords`), not a real shell: there is no command substitution, no globbing of file names, and
//! unset variables expand to the empty string. Errors are plain strings in BuildKit's wording
//! (`failed to process "<word>": <reason>`); the caller attaches a span.

/// Expands one word: removes quotes, applies escapes and substitutes variables. No field splitting.
///
/// `lookup` returns the value of a variable, or `None` when it is unset (an empty value is set).
pub fn expand_word(
    word: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if plain(word, escape) {
        return Ok(word.to_string());
    }
    Lexer::new(word, escape, lookup).run(word).map(|(s, _)| s)
}

/// Whether the lexer would hand `word` back unchanged: no variable, quote or escape in it. Most words of
/// a real Dockerfile are such (paths, image names, `KEY=value` parts), and this saves lexing them.
fn plain(word: &str, escape: char) -> bool {
    !word.contains(['$', '\'', '"', escape])
}

/// Expands variables but keeps quotes and escapes as written: how BuildKit expands the body of a COPY
/// heredoc, which is file content, not a shell word.
pub fn expand_raw(
    word: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut lexer = Lexer::new(word, escape, lookup);
    lexer.raw_quotes = true;
    lexer.raw_escapes = true;
    lexer.run(word).map(|(s, _)| s)
}

/// `${VAR#pattern}` (`suffix: false`) or `${VAR%pattern}` (`suffix: true`) applied to `value`; `longest`
/// is the doubled form (`##`, `%%`). The `.build` functions `trim_prefix`/`trim_suffix` are this, so a
/// converted Dockerfile trims exactly as BuildKit does.
pub fn trim_pattern(
    value: &str,
    pattern: &str,
    suffix: bool,
    longest: bool,
) -> Result<String, String> {
    let glob = Glob::compile(pattern).map_err(|e| format!("invalid pattern `{pattern}`: {e}"))?;
    Ok(if suffix {
        glob.trim_suffix(value, longest)
    } else {
        glob.trim_prefix(value, longest)
    })
}

/// The switches of BuildKit's lexer that its heredoc detection uses (`RawQuotes`, `RawEscapes`,
/// `SkipUnsetEnv`); all off is the ordinary behaviour of [`expand_word`] and [`expand_words`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LexOptions {
    /// Keep quote characters in the output (quoted text is still not split or expanded).
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Leave references to unset variables as written (`$X`, `${X:-y}`) instead of expanding them.
    pub skip_unset: bool,
}

/// Splits `word` into fields like [`expand_words`] with the given switches and no variables set.
pub fn split_words_with(word: &str, escape: char, opts: LexOptions) -> Result<Vec<String>, String> {
    let none = |_: &str| None;
    let mut lexer = Lexer::new(word, escape, &none);
    lexer.raw_quotes = opts.raw_quotes;
    lexer.raw_escapes = opts.raw_escapes;
    lexer.skip_unset = opts.skip_unset;
    lexer.run(word).map(|(_, w)| w)
}

/// Expands a word like [`expand_word`], then splits the result into fields on whitespace that is
/// neither quoted nor escaped (whitespace produced by an unquoted expansion splits too).
pub fn expand_words(
    word: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, String> {
    // `<<` keeps the blanks after it in its field, so only a word without `<` splits as plain text does.
    if plain(word, escape) && !word.contains('<') {
        return Ok(word
            .split(char::is_whitespace)
            .filter(|f| !f.is_empty())
            .map(String::from)
            .collect());
    }
    Lexer::new(word, escape, lookup).run(word).map(|(_, w)| w)
}

/// Collects fields while the word is expanded.
#[derive(Default)]
struct Fields {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Fields {
    /// An unquoted character: whitespace ends the current field.
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }
    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }
    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }
    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    raw_escapes: bool,
    raw_quotes: bool,
    skip_unset: bool,
    /// How many `${` are open; bounded so hostile input cannot exhaust the stack.
    depth: usize,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

/// The deepest `${...${...}}` nesting accepted.
const MAX_DEPTH: usize = 200;

impl<'a> Lexer<'a> {
    fn new(word: &str, escape: char, lookup: &'a dyn Fn(&str) -> Option<String>) -> Lexer<'a> {
        Lexer {
            chars: word.chars().collect(),
            pos: 0,
            escape,
            raw_escapes: false,
            raw_quotes: false,
            skip_unset: false,
            depth: 0,
            lookup,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if ch.is_some() {
            self.pos += 1;
        }
        ch
    }

    fn at_eof(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn run(&mut self, source: &str) -> Result<(String, Vec<String>), String> {
        self.process_until(None, self.raw_escapes)
            .map_err(|e| format!("failed to process {source:?}: {e}"))
    }

    /// Processes characters up to `stop` (consumed) or the end of input when `stop` is `None`.
    /// `raw_escapes` keeps escape characters in the output (pattern operands need them).
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), String> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let out = self.process_until_inner(stop);
        self.raw_escapes = saved;
        out
    }

    fn process_until_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        let mut fields = Fields::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((result, fields.finish()));
            }
            match ch {
                '$' => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                    fields.add_string(&value);
                }
                '\'' => {
                    let value = self.process_single_quote()?;
                    result.push_str(&value);
                    fields.add_raw_string(&value);
                }
                '"' => {
                    let value = self.process_double_quote()?;
                    result.push_str(&value);
                    fields.add_raw_string(&value);
                }
                '<' => {
                    // BuildKit keeps `<<` and the blanks after it in one field, so that
                    // `<<  EOF` stays a single heredoc word.
                    let value = self.process_possible_heredoc();
                    result.push_str(&value);
                    fields.add_raw_string(&value);
                }
                _ => {
                    self.pos += 1;
                    if ch == self.escape {
                        if self.raw_escapes {
                            fields.add_raw_char(ch);
                            result.push(ch);
                        }
                        // The escape character escapes the next one; at the very end it is dropped.
                        let Some(escaped) = self.next() else { break };
                        fields.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        fields.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok((result, fields.finish()))
    }

    /// `<` or `<<` followed by any spaces, tabs and carriage returns.
    fn process_possible_heredoc(&mut self) -> String {
        self.pos += 1;
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.pos += 1;
        let mut out = String::from("<<");
        while let Some(c @ (' ' | '\t' | '\r')) = self.peek() {
            out.push(c);
            self.pos += 1;
        }
        out
    }

    /// `'...'`: everything literal, no escapes at all.
    fn process_single_quote(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut result = String::new();
        if self.raw_quotes {
            result.push('\'');
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    );
                }
                Some('\'') => {
                    if self.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(ch) => result.push(ch),
            }
        }
    }

    /// `"..."`: `$` expands; the escape character only escapes `"`, `$` and itself.
    fn process_double_quote(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut result = String::new();
        if self.raw_quotes {
            result.push('"');
        }
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    );
                }
                Some('"') => {
                    self.pos += 1;
                    if self.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(mut ch) => {
                    self.pos += 1;
                    if ch == self.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(next) if next == '"' || next == '$' || next == self.escape => {
                                self.pos += 1;
                                ch = next;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn get_env(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
    }

    /// `$name`, `${name}` and `${name<op>word}`; positioned on the `$`.
    fn process_dollar(&mut self) -> Result<String, String> {
        if self.depth >= MAX_DEPTH {
            return Err("substitutions nested too deeply".into());
        }
        self.depth += 1;
        let out = self.process_dollar_inner();
        self.depth -= 1;
        out
    }

    fn process_dollar_inner(&mut self) -> Result<String, String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1;
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(first) = self.next() else {
            return Err("syntax error: missing '}'".into());
        };
        match first {
            '}' => Ok(match self.get_env(&name) {
                Some(v) => v,
                None if self.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let null_is_unset = first == ':';
                let op = if null_is_unset {
                    match self.next() {
                        Some(op) => op,
                        None => return Err("syntax error: missing '}'".into()),
                    }
                } else {
                    first
                };
                let modifier: String = if null_is_unset {
                    [':', op].iter().collect()
                } else {
                    op.to_string()
                };
                let raw = op == '#' || op == '%';
                if null_is_unset && raw {
                    return Err(format!("unsupported modifier ({modifier}) in substitution"));
                }
                let word = match self.process_until(Some('}'), raw) {
                    Ok((word, _)) => word,
                    Err(_) if self.at_eof() => return Err("syntax error: missing '}'".into()),
                    Err(e) => return Err(e),
                };
                let value = self.get_env(&name);
                if value.is_none() && self.skip_unset {
                    return Ok(format!("${{{name}{modifier}{word}}}"));
                }
                match (op, null_is_unset) {
                    ('-', _) => match value {
                        Some(v) if !(null_is_unset && v.is_empty()) => Ok(v),
                        _ => Ok(word),
                    },
                    ('+', _) => match value {
                        Some(v) if !(null_is_unset && v.is_empty()) => Ok(word),
                        _ => Ok(String::new()),
                    },
                    ('?', _) => match value {
                        None => Err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be unset"
                            } else {
                                &word
                            }
                        )),
                        Some(v) if null_is_unset && v.is_empty() => Err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be empty"
                            } else {
                                &word
                            }
                        )),
                        Some(v) => Ok(v),
                    },
                    ('#' | '%', false) => {
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest),
                            None => (false, word.as_str()),
                        };
                        let value = value.unwrap_or_default();
                        let glob = Glob::compile(pattern).map_err(|e| {
                            format!("invalid pattern ({pattern}) in substitution: {e}")
                        })?;
                        Ok(if op == '#' {
                            glob.trim_prefix(&value, greedy)
                        } else {
                            glob.trim_suffix(&value, greedy)
                        })
                    }
                    _ => Err(format!("unsupported modifier ({modifier}) in substitution")),
                }
            }
            '/' => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.pos += 1;
                }
                let pattern = match self.process_until(Some('/'), true) {
                    Ok((p, _)) => p,
                    Err(_) if self.at_eof() => {
                        return Err("syntax error: missing '/' in ${}".into());
                    }
                    Err(e) => return Err(e),
                };
                let replacement = match self.process_until(Some('}'), true) {
                    Ok((r, _)) => r,
                    Err(_) if self.at_eof() => return Err("syntax error: missing '}'".into()),
                    Err(e) => return Err(e),
                };
                let Some(value) = self
                    .get_env(&name)
                    .or_else(|| (!self.skip_unset).then(String::new))
                else {
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                };
                let glob = Glob::compile(&pattern)
                    .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
                Ok(glob.replace(&value, &replacement, replace_all))
            }
            other => Err(format!("unsupported modifier ({other}) in substitution")),
        }
    }

    /// A variable name: letters, digits and `_`; or a run of digits (positional); or one special
    /// parameter character. Empty when none of these follows.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.pos += 1;
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                name.push(ch);
                return name;
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            self.pos += 1;
            name.push(ch);
        }
        name
    }
}

/// One element of a shell pattern (`*`, `?`, literal). Like Go's regexp `.`, wildcards skip `\n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Any,
    Star,
}

/// A shell pattern as used by `${VAR#p}`, `${VAR%p}` and `${VAR/p/r}`: `*`, `?` and `\`-escapes,
/// no bracket expressions.
struct Glob {
    toks: Vec<Tok>,
}

impl Glob {
    fn compile(pattern: &str) -> Result<Glob, String> {
        let mut toks = Vec::new();
        let mut it = pattern.chars().peekable();
        while let Some(ch) = it.next() {
            match ch {
                '*' => toks.push(Tok::Star),
                '?' => toks.push(Tok::Any),
                '\\' => match it.peek().copied() {
                    // `}` and `/` had to be escaped inside `${}`; the escape is not part of the pattern.
                    Some('}' | '/') => {}
                    Some(c @ ('*' | '?' | '\\')) => {
                        it.next();
                        toks.push(Tok::Lit(c));
                    }
                    Some(c) => return Err(format!("invalid escape '\\{c}'")),
                    None => return Err("invalid escape at end of pattern".into()),
                },
                c => toks.push(Tok::Lit(c)),
            }
        }
        Ok(Glob { toks })
    }

    /// Adds the states reachable without consuming input (a `*` may match nothing).
    fn close(toks: &[Tok], states: &mut [bool]) {
        for k in 0..toks.len() {
            if states[k] && toks[k] == Tok::Star {
                states[k + 1] = true;
            }
        }
    }

    /// Lengths (in chars) of the prefixes of `chars` that the pattern matches completely, ascending.
    fn prefix_matches(toks: &[Tok], chars: &[char]) -> Vec<usize> {
        let m = toks.len();
        let mut states = vec![false; m + 1];
        states[0] = true;
        Self::close(toks, &mut states);
        let mut out = Vec::new();
        if states[m] {
            out.push(0);
        }
        for (i, &c) in chars.iter().enumerate() {
            let mut next = vec![false; m + 1];
            let mut any = false;
            for k in 0..m {
                if !states[k] {
                    continue;
                }
                match toks[k] {
                    Tok::Lit(l) if l == c => next[k + 1] = true,
                    Tok::Any if c != '\n' => next[k + 1] = true,
                    Tok::Star if c != '\n' => next[k] = true,
                    _ => continue,
                }
                any = true;
            }
            if !any {
                break;
            }
            Self::close(toks, &mut next);
            if next[m] {
                out.push(i + 1);
            }
            states = next;
        }
        out
    }

    fn pick(matches: &[usize], greedy: bool) -> Option<usize> {
        if greedy {
            matches.last().copied()
        } else {
            matches.first().copied()
        }
    }

    fn trim_prefix(&self, value: &str, greedy: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        match Self::pick(&Self::prefix_matches(&self.toks, &chars), greedy) {
            Some(n) => chars[n..].iter().collect(),
            None => value.to_string(),
        }
    }

    fn trim_suffix(&self, value: &str, greedy: bool) -> String {
        let rev_toks: Vec<Tok> = self.toks.iter().rev().copied().collect();
        let rev_chars: Vec<char> = value.chars().rev().collect();
        match Self::pick(&Self::prefix_matches(&rev_toks, &rev_chars), greedy) {
            Some(n) => rev_chars[n..].iter().rev().collect(),
            None => value.to_string(),
        }
    }

    /// Replaces the leftmost (longest) match, or all non-overlapping matches; an empty match right
    /// after a previous match is ignored, as Go's `ReplaceAllString` does.
    fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let chars: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut copied = 0;
        let mut prev_end: Option<usize> = None;
        let mut i = 0;
        while i <= chars.len() {
            let found = Self::pick(&Self::prefix_matches(&self.toks, &chars[i..]), true);
            if let Some(len) = found
                && !(len == 0 && prev_end == Some(i))
            {
                out.extend(&chars[copied..i]);
                out.push_str(&expand_template(replacement, &chars[i..i + len]));
                copied = i + len;
                prev_end = Some(copied);
                if !all {
                    break;
                }
                if len > 0 {
                    i += len;
                    continue;
                }
            }
            i += 1;
        }
        out.extend(&chars[copied.min(chars.len())..]);
        out
    }
}

/// Go's regexp replacement template: `$$` is `$`, `$0`/`${0}` the match, other `$name` references
/// are empty (the pattern has no groups), a malformed `$` is literal.
fn expand_template(template: &str, matched: &[char]) -> String {
    let chars: Vec<char> = template.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let is_name = |c: &char| c.is_alphanumeric() || *c == '_';
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if c != '$' {
            out.push(c);
            continue;
        }
        let name: String;
        match chars.get(i) {
            Some('$') => {
                out.push('$');
                i += 1;
                continue;
            }
            Some('{') => {
                let start = i + 1;
                let mut j = start;
                while chars.get(j).is_some_and(is_name) {
                    j += 1;
                }
                if j == start || chars.get(j) != Some(&'}') {
                    out.push('$');
                    continue;
                }
                name = chars[start..j].iter().collect();
                i = j + 1;
            }
            Some(c) if is_name(c) => {
                let start = i;
                while chars.get(i).is_some_and(is_name) {
                    i += 1;
                }
                name = chars[start..i].iter().collect();
            }
            _ => {
                out.push('$');
                continue;
            }
        }
        if name.parse::<usize>() == Ok(0) {
            out.extend(matched);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The shortcut for plain words gives what the lexer gives, and is not taken for any other word.
    #[test]
    fn plain_words_expand_as_the_lexer_does() {
        let none = |_: &str| None;
        let lexed = |w: &str, e: char| Lexer::new(w, e, &none).run(w);
        let words = ["/usr/local/bin", "  a b\tc\u{a0}d  ", "key=value", ""];
        for (w, e) in words
            .map(|w| (w, '\\'))
            .into_iter()
            .chain([("C:\\dir", '`')])
        {
            assert!(plain(w, e), "{w:?}");
            assert_eq!(expand_word(w, e, &none), lexed(w, e).map(|(s, _)| s));
            assert_eq!(expand_words(w, e, &none), lexed(w, e).map(|(_, f)| f));
        }
        for w in ["$X", "'a'", "\"a\"", "a\\ b"] {
            assert!(!plain(w, '\\'), "{w:?}");
        }
        assert!(!plain("a` b", '`'));
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn word(input: &str, escape: char, vars: &HashMap<String, String>) -> Result<String, String> {
        expand_word(input, escape, &|n| vars.get(n).cloned())
    }

    #[test]
    fn expands_single_words() {
        let vars = env(&[
            ("PWD", "/home"),
            ("EMPTY", ""),
            ("FOO", "/tmp/foo.tar.gz"),
            ("SPACE", "a  b"),
        ]);
        let ok = [
            ("plain", "plain"),
            ("he'll'o", "hello"),
            ("'$PWD'", "$PWD"),
            ("\"$PWD\"", "/home"),
            ("\"a\\\"b\"", "a\"b"),
            ("\"a\\tb\"", "a\\tb"),
            ("a\\tb", "atb"),
            ("\\$PWD", "$PWD"),
            ("$PWD/x", "/home/x"),
            ("${PWD}x", "/homex"),
            ("$UNSET.", "."),
            ("$", "$"),
            ("$.", "$."),
            ("${UNSET:-def}", "def"),
            ("${EMPTY:-def}", "def"),
            ("${EMPTY-def}", ""),
            ("${UNSET-def}", "def"),
            ("${PWD:+alt}", "alt"),
            ("${EMPTY:+alt}", ""),
            ("${EMPTY+alt}", "alt"),
            ("${UNSET+alt}", ""),
            ("${PWD:?oops}", "/home"),
            ("${EMPTY?oops}", ""),
            ("${FOO#*/}", "tmp/foo.tar.gz"),
            ("${FOO##*/}", "foo.tar.gz"),
            ("${FOO%.*}", "/tmp/foo.tar"),
            ("${FOO%%.*}", "/tmp/foo"),
            ("${FOO#/tmp/???}", ".tar.gz"),
            ("${FOO/o/0}", "/tmp/f0o.tar.gz"),
            ("${FOO//o/0}", "/tmp/f00.tar.gz"),
            ("${FOO//\\//_}", "_tmp_foo.tar.gz"),
            ("${FOO/#/x}", "/tmp/foo.tar.gz"),
            ("${UNSET:-${PWD}}", "/home"),
            ("${SPACE}", "a  b"),
            ("안녕$PWD", "안녕/home"),
        ];
        for (input, want) in ok {
            assert_eq!(word(input, '\\', &vars).as_deref(), Ok(want), "{input}");
        }
        let bad = [
            "'open",
            "\"open",
            "${PWD",
            "${}",
            "${:-x}",
            "${PWD:=x}",
            "${UNSET?}",
            "${EMPTY:?}",
            "${FOO//x}",
        ];
        for input in bad {
            assert!(word(input, '\\', &vars).is_err(), "{input}");
        }
        let err = word("${UNSET:?need it}", '\\', &vars).unwrap_err();
        assert!(err.ends_with("UNSET: need it"), "{err}");
    }

    #[test]
    fn backtick_escape() {
        let vars = env(&[("PWD", "/home")]);
        let cases = [
            ("C:\\dir", "C:\\dir"),
            ("`$PWD", "$PWD"),
            ("a` b", "a b"),
            ("\"a`\"b\"", "a\"b"),
            ("\"a\\b\"", "a\\b"),
            ("x`", "x"),
        ];
        for (input, want) in cases {
            assert_eq!(word(input, '`', &vars).as_deref(), Ok(want), "{input}");
        }
        assert_eq!(
            expand_words("a` b c", '`', &|_| None),
            Ok(vec!["a b".to_string(), "c".to_string()])
        );
    }

    #[test]
    fn splits_words() {
        let vars = env(&[("SPACE", " a  b "), ("EMPTY", "")]);
        let lookup = |n: &str| vars.get(n).cloned();
        let cases: [(&str, &[&str]); 7] = [
            ("a b  c", &["a", "b", "c"]),
            ("x${SPACE}y", &["x", "a", "b", "y"]),
            ("\"${SPACE}\"", &[" a  b "]),
            ("a\\ b", &["a b"]),
            ("'a b' c", &["a b", "c"]),
            ("$EMPTY", &[]),
            ("\"\" a", &["a"]),
        ];
        for (input, want) in cases {
            assert_eq!(expand_words(input, '\\', &lookup).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for input in [
            "${", "${#", "${a:", "${a/", "${a//", "${a#\\", "\\", "\"\\", "$${", "${a:-'",
        ] {
            let _ = word(input, '\\', &HashMap::new());
            let _ = expand_words(input, '`', &|_| Some("x".into()));
        }
        let deep = "${a:-".repeat(50_000);
        assert!(word(&deep, '\\', &HashMap::new()).is_err());
    }

    fn conformance_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance/buildkit")
    }

    /// Runs BuildKit's shell tables (`shell/envVarTest`, `shell/wordsTest`,
    /// `vectors/shell-process-word-with-matches.json`) when the conformance folder is present.
    #[test]
    fn buildkit_conformance() {
        let dir = conformance_dir();
        if !dir.is_dir() {
            eprintln!("note: {} absent, skipping shell conformance", dir.display());
            return;
        }
        let mut failures = Vec::new();

        // envVarTest: PLATFORM|INPUT|EXPECTED, fixed environment, single-word expansion.
        if let Ok(text) = std::fs::read_to_string(dir.join("shell/envVarTest")) {
            let vars = env(&[
                ("PWD", "/home"),
                ("SHELL", "bash"),
                ("KOREAN", "한국어"),
                ("NULL", ""),
            ]);
            let (mut pass, mut skip, mut total) = (0, 0, 0);
            for line in text.lines() {
                if line.starts_with('#') || line.trim().is_empty() {
                    continue;
                }
                let parts: Vec<&str> = line.split('|').map(str::trim).collect();
                let [platform, input, expected] = parts[..] else {
                    failures.push(format!("envVarTest: malformed line {line:?}"));
                    continue;
                };
                if platform == "W" {
                    skip += 1;
                    continue;
                }
                total += 1;
                let got = word(input, '\\', &vars);
                let ok = match (&got, expected) {
                    (Err(_), "error") => true,
                    (Ok(s), e) => s == e,
                    _ => false,
                };
                if ok {
                    pass += 1;
                } else {
                    failures.push(format!(
                        "envVarTest {input:?}: got {got:?}, want {expected:?}"
                    ));
                }
            }
            eprintln!("envVarTest: {pass}/{total} pass, {skip} Windows-only skipped");
        }

        // wordsTest: `ENV k=v` lines accumulate, then INPUT|a,b,c cases.
        if let Ok(text) = std::fs::read_to_string(dir.join("shell/wordsTest")) {
            let mut vars: HashMap<String, String> = HashMap::new();
            let (mut pass, mut total) = (0, 0);
            for line in text.lines() {
                if line.starts_with('#') {
                    continue;
                }
                if let Some(def) = line.strip_prefix("ENV ") {
                    let def = def.trim_start();
                    let (k, v) = def.split_once('=').unwrap_or((def, ""));
                    vars.insert(k.to_string(), v.to_string());
                    continue;
                }
                let Some((input, expected)) = line.split_once('|') else {
                    failures.push(format!("wordsTest: malformed line {line:?}"));
                    continue;
                };
                total += 1;
                let input = input.trim();
                let expected: Vec<&str> = expected.trim_start().split(',').collect();
                let got = expand_words(input, '\\', &|n| vars.get(n).cloned())
                    .unwrap_or_else(|_| vec!["error".to_string()]);
                if got == expected {
                    pass += 1;
                } else {
                    failures.push(format!(
                        "wordsTest {input:?}: got {got:?}, want {expected:?}"
                    ));
                }
            }
            eprintln!("wordsTest: {pass}/{total} pass");
        }

        // ProcessWordWithMatches vectors: result or error (messages compared exactly).
        if let Ok(text) =
            std::fs::read_to_string(dir.join("vectors/shell-process-word-with-matches.json"))
        {
            let doc: serde_json::Value = serde_json::from_str(&text).expect("valid JSON vectors");
            let cases = doc["cases"].as_array().cloned().unwrap_or_default();
            let (mut pass, mut total) = (0, 0);
            for case in cases {
                total += 1;
                let input = case["input"].as_str().unwrap_or_default();
                let vars: HashMap<String, String> = case["envs"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let got = word(input, '\\', &vars);
                let ok = match (&got, case["result"].as_str(), case["error"].as_str()) {
                    (Ok(s), Some(want), _) => s == want,
                    (Err(e), None, Some(want)) => e == want,
                    _ => false,
                };
                if ok {
                    pass += 1;
                } else {
                    failures.push(format!("with-matches {input:?}: got {got:?}, want {case}"));
                }
            }
            eprintln!("shell-process-word-with-matches: {pass}/{total} pass");
        }

        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
