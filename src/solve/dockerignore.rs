//! `.dockerignore` exactly as BuildKit applies it: the file is read with moby/patternmatcher's
//! `ignorefile.ReadAll`, patterns are matched with patternmatcher v0.6.1, and the context is walked the way
//! tonistiigi/fsutil's filtered walk sends it (parent match info carried down, excluded directories pruned
//! unless an exception could re-include something below them).
//!
//! patternmatcher turns each pattern into a Go regular expression and runs it with Go's `regexp`. Rather
//! than approximate that with a glob library, this module produces the *same regular-expression text*
//! and interprets it with a small parser and NFA that follow Go's RE2 syntax for every construct the
//! translation can emit (classes with ranges, POSIX and Perl classes, escapes, `^`/`$` assertions,
//! `*`/`+`/`?`). That is what makes odd inputs such as `[*]`, `a^b*` or `a\d` behave as in Docker.
//!
//! Two deliberate differences, both only for patterns Docker itself treats as broken:
//! * A pattern that Go's `filepath.Match` accepts but Go's `regexp` rejects (e.g. `[z-a]`, `[Local-Only]`)
//!   makes BuildKit fail *lazily*, only if the walk ever consults it; here it is rejected when parsed.
//! * `\p{…}`/`\P…` Unicode classes (reachable only by writing `\p` in a pattern) are rejected rather than
//!   carrying Unicode tables.
//!
//! File names that are not UTF-8 are matched by their lossy UTF-8 form; [`walk`] still returns the real
//! names.
//!
//! The Dockerfile and `.dockerignore` get no special treatment: BuildKit reads the Dockerfile (and
//! `<Dockerfile>.dockerignore`) through a separate local source, so excluding them only removes them from
//! what `COPY`/`ADD` can see — exactly what [`walk`] returns. (The legacy builder's CLI re-added them to
//! the upload, but then the daemon removed them from the context again, so the visible effect is the same.)

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::diag::{self, Diagnostic, SourceFile, Span};

/// A `.dockerignore` line that Docker would refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// 1-based line in the ignore file (or position in the list given to [`Patterns::from_patterns`]).
    pub line: usize,
    /// The pattern as written.
    pub pattern: String,
    pub message: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: invalid .dockerignore pattern {:?}: {}",
            self.line, self.pattern, self.message
        )
    }
}

impl std::error::Error for PatternError {}

/// A parsed `.dockerignore`: patterns in file order, last match wins.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    patterns: Vec<Pattern>,
    /// Some pattern starts with `!`.
    exclusions: bool,
    /// fsutil's `onlyPrefixExcludeExceptions`: every `!` pattern, minus a trailing `/**` or `/*`, is a
    /// literal path, so a textual prefix test decides whether an excluded directory can hold exceptions.
    only_prefix_exceptions: bool,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// After `filepath.Clean`, without the `!`.
    cleaned: String,
    exclusion: bool,
    kind: Kind,
}

/// patternmatcher's four match types; only the last one runs a regular expression.
#[derive(Debug, Clone)]
enum Kind {
    Exact,
    /// `abc/**`: a plain string prefix (`cleaned` minus the trailing `**`).
    Prefix,
    /// `**/abc` or `**abc`: a plain string suffix (`cleaned` minus the leading `**`).
    Suffix,
    Regex(Vec<Inst>),
}

/// Per-pattern results for a directory, handed to its children during a walk
/// (patternmatcher's `MatchInfo`). The default value means "no information about the parent".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

impl Patterns {
    /// Parses `.dockerignore` text with BuildKit's `ReadAll` rules: a UTF-8 BOM on the first line is
    /// dropped; a line whose *first* character is `#` is a comment (an indented `#` is a pattern);
    /// surrounding whitespace is trimmed; blank lines are skipped; `!` is split off and the rest trimmed,
    /// `filepath.Clean`ed and stripped of one leading `/`. The results then go through [`from_patterns`].
    ///
    /// [`from_patterns`]: Patterns::from_patterns
    pub fn parse(text: &str) -> Result<Patterns, PatternError> {
        Patterns::build(read_all(text)?)
    }

    /// Builds a matcher from already-read patterns with patternmatcher's `New` rules: trim, skip empty,
    /// `filepath.Clean` the whole string (the `!` included, as Go does), then split off `!`.
    pub fn from_patterns(p: &[&str]) -> Result<Patterns, PatternError> {
        Patterns::build(
            p.iter()
                .enumerate()
                .map(|(i, s)| (i + 1, s.to_string()))
                .collect(),
        )
    }

    fn build(lines: Vec<(usize, String)>) -> Result<Patterns, PatternError> {
        let mut out = Patterns {
            only_prefix_exceptions: true,
            ..Patterns::default()
        };
        for (line, written) in lines {
            let err = |message: &str| PatternError {
                line,
                pattern: written.clone(),
                message: message.to_string(),
            };
            let trimmed = written.trim();
            if trimmed.is_empty() {
                continue;
            }
            let mut p = go_clean(trimmed);
            let exclusion = p.starts_with('!');
            if exclusion {
                if p.len() == 1 {
                    return Err(err("illegal exclusion pattern: \"!\""));
                }
                p.remove(0);
                out.exclusions = true;
            }
            // patternmatcher validates with filepath.Match only; the regexp is compiled on first use and
            // fails the walk then. We compile now so a broken pattern is reported against its line.
            if go_match(p.as_bytes(), b".").is_err() {
                return Err(err("syntax error in pattern"));
            }
            let kind = compile(&p).map_err(|m| err(&format!("syntax error in pattern ({m})")))?;
            if exclusion && without_trailing_glob(&p).contains(['*', '[', ']', '?', '^', '\\']) {
                out.only_prefix_exceptions = false;
            }
            out.patterns.push(Pattern {
                cleaned: p,
                exclusion,
                kind,
            });
        }
        Ok(out)
    }

    /// Whether BuildKit leaves this context-relative path (forward slashes, no leading `./`) out of the
    /// context. This is the walk's verdict — patternmatcher's `MatchesUsingParentResults` applied from the
    /// top directory down — so it agrees with [`walk`]. The context root (`""` or `.`) is never excluded.
    pub fn excluded(&self, path: &str) -> bool {
        if path.is_empty() || path == "." {
            return false;
        }
        let mut info = MatchInfo::default();
        let parent = go_dir(path);
        if parent != "." {
            let dirs: Vec<&str> = parent.split('/').collect();
            for i in 1..=dirs.len() {
                info = self.excluded_with_parent(&dirs[..i].join("/"), &info).1;
            }
        }
        self.excluded_with_parent(path, &info).0
    }

    /// patternmatcher's `MatchesUsingParentResults`: the verdict for `path` given the match info of its
    /// parent directory (default for a top-level entry), and the info to hand to `path`'s children.
    /// A pattern skipped for the parent (because it could not change the verdict there) is later checked
    /// against the child alone, so this can differ from [`matches_or_parent_matches`] for patterns like
    /// `a`, `!a/b`, `a`; BuildKit's context walk uses this one.
    ///
    /// [`matches_or_parent_matches`]: Patterns::matches_or_parent_matches
    pub fn excluded_with_parent(&self, path: &str, parent: &MatchInfo) -> (bool, MatchInfo) {
        // A MatchInfo from another matcher carries no usable information (Go returns an error here).
        let parent_matched: &[bool] = if parent.parent_matched.len() == self.patterns.len() {
            &parent.parent_matched
        } else {
            &[]
        };
        let mut matched = false;
        let mut info = vec![false; self.patterns.len()];
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut m = parent_matched.get(i).copied().unwrap_or(false);
            if !m {
                // Only evaluate a pattern that can change the verdict.
                if pattern.exclusion != matched {
                    continue;
                }
                m = pattern.matches(path);
                if !m && parent_matched.is_empty() {
                    m = pattern.matches_a_parent(path);
                }
            }
            info[i] = m;
            if m {
                matched = !pattern.exclusion;
            }
        }
        (
            matched,
            MatchInfo {
                parent_matched: info,
            },
        )
    }

    /// patternmatcher's `MatchesOrParentMatches`: each pattern is tried against the path and each of its
    /// parents. BuildKit uses it to check single paths (e.g. the "COPY of an ignored file" lint).
    pub fn matches_or_parent_matches(&self, path: &str) -> bool {
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            if pattern.matches(path) || pattern.matches_a_parent(path) {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// Whether a walker must descend into `dir` (context-relative) even though it is excluded, because a
    /// `!` exception could re-include something below it. fsutil's rule: never without exceptions; always
    /// if any exception has wildcards (other than a trailing `/*` or `/**`); otherwise only if an
    /// exception, as text, lies under `dir`.
    pub fn may_reinclude_under(&self, dir: &str) -> bool {
        if !self.exclusions {
            return false;
        }
        if !self.only_prefix_exceptions {
            return true;
        }
        let dir_slash = format!("{dir}/");
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| format!("{}/", without_trailing_glob(&p.cleaned)).starts_with(&dir_slash))
    }

    /// Whether any pattern starts with `!`.
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns as cleaned (`!` kept), in file order, for hashing into a definition digest.
    pub fn canonical(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| {
                if p.exclusion {
                    format!("!{}", p.cleaned)
                } else {
                    p.cleaned.clone()
                }
            })
            .collect()
    }
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        // Byte-wise like Go: a pattern starting with a BOM makes `cleaned[2..]` split a character.
        let (p, c) = (path.as_bytes(), self.cleaned.as_bytes());
        match &self.kind {
            Kind::Exact => p == c,
            Kind::Prefix => p.starts_with(&c[..c.len() - 2]),
            Kind::Suffix => {
                let suffix = &c[2..];
                // `**/foo` also matches `foo` itself.
                p.ends_with(suffix) || (suffix.first() == Some(&b'/') && p == &suffix[1..])
            }
            Kind::Regex(prog) => run(prog, path),
        }
    }

    /// Whether the pattern matches one of `path`'s parent directories (shortest first).
    fn matches_a_parent(&self, path: &str) -> bool {
        let parent = go_dir(path);
        if parent == "." {
            return false;
        }
        let dirs: Vec<&str> = parent.split('/').collect();
        (1..=dirs.len()).any(|i| self.matches(&dirs[..i].join("/")))
    }
}

/// BuildKit's `ignorefile.ReadAll`: the patterns of a `.dockerignore`, each with its 1-based line.
fn read_all(text: &str) -> Result<Vec<(usize, String)>, PatternError> {
    let mut lines = Vec::new();
    for (index, raw) in text.split('\n').enumerate() {
        // bufio.Scanner gives up on lines that do not fit its 64 KiB buffer; BuildKit fails the build.
        if raw.len() >= 64 * 1024 {
            return Err(PatternError {
                line: index + 1,
                pattern: raw.chars().take(40).collect(),
                message: "bufio.Scanner: token too long".into(),
            });
        }
        let mut line = raw.strip_suffix('\r').unwrap_or(raw);
        if index == 0 {
            line = line.strip_prefix('\u{FEFF}').unwrap_or(line);
        }
        if line.starts_with('#') {
            continue;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (invert, rest) = match line.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        let mut pattern = String::new();
        if !rest.is_empty() {
            let cleaned = go_clean(rest);
            pattern = match cleaned.strip_prefix('/') {
                Some(stripped) if cleaned.len() > 1 => stripped.to_string(),
                _ => cleaned,
            };
        }
        if invert {
            pattern.insert(0, '!');
        }
        lines.push((index + 1, pattern));
    }
    Ok(lines)
}

/// fsutil's `patternWithoutTrailingGlob`.
fn without_trailing_glob(p: &str) -> &str {
    let p = p.strip_suffix("/**").unwrap_or(p);
    p.strip_suffix("/*").unwrap_or(p)
}

/// Finds the ignore file BuildKit would use: `<dockerfile>.dockerignore` beside the Dockerfile wins over
/// `<context>/.dockerignore`. Returns empty patterns and `None` when neither exists.
/// A file that cannot be read, or a pattern Docker would refuse (pointed at on its line), is an error.
pub fn load(context: &Path, dockerfile: &Path) -> diag::Result<(Patterns, Option<PathBuf>)> {
    let mut specific = dockerfile.as_os_str().to_owned();
    specific.push(".dockerignore");
    for candidate in [PathBuf::from(specific), context.join(".dockerignore")] {
        let bytes = match fs::read(&candidate) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Diagnostic::input(format!("cannot read .dockerignore: {e}")));
            }
        };
        // Go reads bytes; invalid UTF-8 only ever lands in patterns, where lossy text is harmless.
        let text = String::from_utf8_lossy(&bytes);
        let patterns = Patterns::parse(&text).map_err(|e| pattern_error(&candidate, &text, e))?;
        return Ok((patterns, Some(candidate)));
    }
    Ok((Patterns::default(), None))
}

/// A bad pattern, pointed at on its line in the ignore file.
fn pattern_error(file: &Path, text: &str, e: PatternError) -> Diagnostic {
    let source = SourceFile::new(file.display().to_string(), text.to_string());
    let start: usize = text
        .lines()
        .take(e.line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    let len = text
        .lines()
        .nth(e.line.saturating_sub(1))
        .map_or(1, str::len);
    Diagnostic::at(&source, Span::new(start, start + len), e.message).help(
        "patterns follow Docker's .dockerignore rules: `*`, `?`, `[...]`, `**`, and `!` to re-include",
    )
}

/// The context as BuildKit would send it: every included path relative to `root`, sorted, directories
/// included as entries. Symlinks are entries, never followed. An excluded directory is descended into only
/// when [`Patterns::may_reinclude_under`] says so, and is then listed only if something under it is.
pub fn walk(root: &Path, patterns: &Patterns) -> io::Result<Vec<PathBuf>> {
    let mut walker = Walker {
        root,
        patterns,
        pending: Vec::new(),
        out: Vec::new(),
    };
    walker.dir("", Path::new(""), &MatchInfo::default())?;
    let mut out = walker.out;
    out.sort();
    Ok(out)
}

struct Walker<'a> {
    root: &'a Path,
    patterns: &'a Patterns,
    /// Excluded ancestors we descended into, as (match key, path); emitted once a descendant is.
    pending: Vec<(String, PathBuf)>,
    out: Vec<PathBuf>,
}

impl Walker<'_> {
    /// Walks the directory `rel`; `key` is its slash-separated UTF-8 form that patterns see.
    fn dir(&mut self, key: &str, rel: &Path, info: &MatchInfo) -> io::Result<()> {
        let dir = match fs::read_dir(self.root.join(rel)) {
            Ok(dir) => dir,
            // fsutil ignores permission errors on excluded paths: an unreadable excluded directory is
            // simply not sent. A directory is pending exactly when it is excluded.
            Err(e)
                if e.kind() == io::ErrorKind::PermissionDenied
                    && self.pending.last().is_some_and(|(k, _)| k == key) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut entries = Vec::new();
        for entry in dir {
            let entry = entry?;
            // Symlinks are entries, never followed (file_type does not follow them).
            entries.push((entry.file_name(), entry.file_type()?.is_dir()));
        }
        entries.sort();
        for (name, is_dir) in entries {
            let lossy = name.to_string_lossy();
            let child_key = if key.is_empty() {
                lossy.into_owned()
            } else {
                format!("{key}/{lossy}")
            };
            let child = rel.join(&name);
            let (excluded, child_info) = self.patterns.excluded_with_parent(&child_key, info);
            if excluded {
                if is_dir && self.patterns.may_reinclude_under(&child_key) {
                    self.pending.push((child_key.clone(), child.clone()));
                    self.dir(&child_key, &child, &child_info)?;
                    // Still pending means nothing below was included: the directory stays out.
                    if self.pending.last().is_some_and(|(k, _)| *k == child_key) {
                        self.pending.pop();
                    }
                }
                continue;
            }
            self.out.extend(self.pending.drain(..).map(|(_, p)| p));
            self.out.push(child.clone());
            if is_dir {
                self.dir(&child_key, &child, &child_info)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------
// Go's path/filepath helpers (Unix flavour).

/// `filepath.Clean`.
fn go_clean(path: &str) -> String {
    if path.is_empty() {
        return ".".into();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for elem in path.split('/') {
        match elem {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            e => parts.push(e),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

/// `filepath.Dir`.
fn go_dir(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => go_clean(&path[..=i]),
        None => ".".into(),
    }
}

/// `utf8.DecodeRune`: invalid or truncated input decodes as U+FFFD of width 1.
fn decode_rune(b: &[u8]) -> (u32, usize) {
    let width = match b.first() {
        None => return (0xFFFD, 0),
        Some(&c) if c < 0x80 => return (c as u32, 1),
        Some(&c) if c >= 0xF0 => 4,
        Some(&c) if c >= 0xE0 => 3,
        Some(_) => 2,
    };
    match b.get(..width).and_then(|s| std::str::from_utf8(s).ok()) {
        Some(s) => (s.chars().next().map_or(0xFFFD, |c| c as u32), width),
        None => (0xFFFD, 1),
    }
}

/// `filepath.Match`; `Err` is `ErrBadPattern`. patternmatcher only uses it to validate patterns.
fn go_match(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, ()> {
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains(&b'/'));
        }
        let (t, ok, err) = match_chunk(chunk, name);
        if ok && (t.is_empty() || !pattern.is_empty()) {
            name = t;
            continue;
        }
        if err {
            return Err(());
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                let (t, ok, err) = match_chunk(chunk, &name[i + 1..]);
                if ok {
                    if pattern.is_empty() && !t.is_empty() {
                        i += 1;
                        continue;
                    }
                    name = t;
                    continue 'pattern;
                }
                if err {
                    return Err(());
                }
                i += 1;
            }
        }
        // Before failing, make sure the rest of the pattern is well formed.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            if match_chunk(chunk, b"").2 {
                return Err(());
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

fn scan_chunk(mut pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while pattern.first() == Some(&b'*') {
        pattern = &pattern[1..];
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pattern[..i], &pattern[i..])
}

/// Returns (rest of name, matched, bad pattern).
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> (&'a [u8], bool, bool) {
    // After a mismatch Go keeps scanning the chunk, only to detect a malformed pattern.
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match chunk[0] {
            b'[' => {
                let mut r = 0;
                if !failed {
                    let (c, n) = decode_rune(s);
                    r = c;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut nrange = 0;
                loop {
                    if chunk.first() == Some(&b']') && nrange > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let Some((lo, rest)) = get_esc(chunk) else {
                        return (b"", false, true);
                    };
                    chunk = rest;
                    let mut hi = lo;
                    if chunk[0] == b'-' {
                        let Some((h, rest)) = get_esc(&chunk[1..]) else {
                            return (b"", false, true);
                        };
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    nrange += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    s = &s[decode_rune(s).1..];
                }
                chunk = &chunk[1..];
            }
            c => {
                let c = if c == b'\\' {
                    chunk = &chunk[1..];
                    match chunk.first() {
                        Some(&c) => c,
                        None => return (b"", false, true),
                    }
                } else {
                    c
                };
                if !failed {
                    if c != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed {
        (b"", false, false)
    } else {
        (s, true, false)
    }
}

/// `getEsc`: one (possibly escaped) character of a `[...]` class; `None` is `ErrBadPattern`.
fn get_esc(mut chunk: &[u8]) -> Option<(u32, &[u8])> {
    if chunk.is_empty() || chunk[0] == b'-' || chunk[0] == b']' {
        return None;
    }
    if chunk[0] == b'\\' {
        chunk = &chunk[1..];
        if chunk.is_empty() {
            return None;
        }
    }
    let (r, n) = decode_rune(chunk);
    if r == 0xFFFD && n == 1 {
        return None;
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return None;
    }
    Some((r, rest))
}

// ---------------------------------------------------------------------------------------------------
// patternmatcher's pattern → regexp translation, and the subset of Go's regexp that it can produce.

/// `Pattern.compile` with `/` as separator.
fn compile(cleaned: &str) -> Result<Kind, String> {
    let chars: Vec<char> = cleaned.chars().collect();
    // text/scanner drops a leading BOM.
    let mut at = usize::from(chars.first() == Some(&'\u{FEFF}'));
    #[derive(PartialEq)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut detected = Detected::Exact;
    let mut re = String::from("^");
    let mut iteration = 0;
    while at < chars.len() {
        let ch = chars[at];
        at += 1;
        match ch {
            '*' if chars.get(at) == Some(&'*') => {
                at += 1;
                // `**/` is treated as `**`.
                if chars.get(at) == Some(&'/') {
                    at += 1;
                }
                if at == chars.len() {
                    // Trailing `**` accepts everything, like .gitignore.
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        re.push_str(".*");
                        detected = Detected::Regex;
                    }
                } else {
                    // Any number of directories, even none.
                    re.push_str("(.*/)?");
                    detected = Detected::Regex;
                }
                if iteration == 0 {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                detected = Detected::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                detected = Detected::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => {
                if let Some(&next) = chars.get(at) {
                    at += 1;
                    re.push('\\');
                    re.push(next);
                    detected = Detected::Regex;
                } else {
                    re.push('\\');
                }
            }
            '[' | ']' => {
                re.push(ch);
                detected = Detected::Regex;
            }
            c => re.push(c),
        }
        iteration += 1;
    }
    Ok(match detected {
        Detected::Exact => Kind::Exact,
        Detected::Prefix => Kind::Prefix,
        Detected::Suffix => Kind::Suffix,
        Detected::Regex => {
            re.push('$');
            let chars: Vec<char> = re.chars().collect();
            let mut parser = ReParser { s: &chars, i: 0 };
            let nodes = parser.seq(0)?;
            let mut prog = Vec::new();
            emit_all(&nodes, &mut prog);
            prog.push(Inst::Match);
            Kind::Regex(prog)
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Assert {
    BeginText,
    EndText,
    WordBoundary,
    NotWordBoundary,
}

/// One member of a character class.
#[derive(Debug, Clone)]
enum ClassItem {
    Range(u32, u32),
    /// A named group (`\d`, `[:alpha:]`), possibly negated (`\D`, `[:^alpha:]`).
    Group(bool, &'static [(u32, u32)]),
}

#[derive(Debug, Clone)]
struct Class {
    negated: bool,
    items: Vec<ClassItem>,
}

impl Class {
    fn contains(&self, c: u32) -> bool {
        let hit = self.items.iter().any(|item| match item {
            ClassItem::Range(lo, hi) => (*lo..=*hi).contains(&c),
            ClassItem::Group(neg, ranges) => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *neg
            }
        });
        // Go's Perl flags include ClassNL, so a negated class matches `\n` too.
        hit != self.negated
    }
}

#[derive(Debug, Clone)]
enum Node {
    Char(u32),
    /// `.`: Go's default flags leave out DotNL, so it does not match `\n`.
    AnyNotNl,
    Class(Class),
    Assert(Assert),
    Group(Vec<Node>),
    Repeat(Box<Node>, char),
}

const DIGIT: &[(u32, u32)] = &[(0x30, 0x39)];
const SPACE_PERL: &[(u32, u32)] = &[(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)];
const WORD: &[(u32, u32)] = &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)];

fn posix_group(name: &str) -> Option<&'static [(u32, u32)]> {
    Some(match name {
        "alnum" => &[(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
        "alpha" => &[(0x41, 0x5A), (0x61, 0x7A)],
        "ascii" => &[(0x00, 0x7F)],
        "blank" => &[(0x09, 0x09), (0x20, 0x20)],
        "cntrl" => &[(0x00, 0x1F), (0x7F, 0x7F)],
        "digit" => DIGIT,
        "graph" => &[(0x21, 0x7E)],
        "lower" => &[(0x61, 0x7A)],
        "print" => &[(0x20, 0x7E)],
        "punct" => &[(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
        "space" => &[(0x09, 0x0D), (0x20, 0x20)],
        "upper" => &[(0x41, 0x5A)],
        "word" => WORD,
        "xdigit" => &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
        _ => return None,
    })
}

/// `\d \D \s \S \w \W` (ASCII only, as in Go).
fn perl_group(c: char) -> Option<ClassItem> {
    Some(match c {
        'd' => ClassItem::Group(false, DIGIT),
        'D' => ClassItem::Group(true, DIGIT),
        's' => ClassItem::Group(false, SPACE_PERL),
        'S' => ClassItem::Group(true, SPACE_PERL),
        'w' => ClassItem::Group(false, WORD),
        'W' => ClassItem::Group(true, WORD),
        _ => return None,
    })
}

/// A parser for Go's regexp syntax (Perl flags), limited to what the translation can emit; errors carry
/// Go's wording.
struct ReParser<'a> {
    s: &'a [char],
    i: usize,
}

impl ReParser<'_> {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.s.get(self.i + ahead).copied()
    }

    fn seq(&mut self, depth: usize) -> Result<Vec<Node>, String> {
        let mut out: Vec<Node> = Vec::new();
        let mut last_was_repeat = false;
        while let Some(c) = self.peek(0) {
            let node = match c {
                '(' => {
                    if self.peek(1) == Some('?') {
                        return Err("unsupported group flags".into());
                    }
                    self.i += 1;
                    let inner = self.seq(depth + 1)?;
                    if self.peek(0) != Some(')') {
                        return Err("missing closing )".into());
                    }
                    self.i += 1;
                    Node::Group(inner)
                }
                ')' if depth > 0 => return Ok(out),
                ')' => return Err("unexpected )".into()),
                '|' => return Err("alternation is not supported".into()),
                '*' | '+' | '?' => {
                    if last_was_repeat {
                        return Err("invalid nested repetition operator".into());
                    }
                    let Some(atom) = out.pop() else {
                        return Err("missing argument to repetition operator".into());
                    };
                    self.i += 1;
                    // A lazy quantifier matches the same strings.
                    if self.peek(0) == Some('?') {
                        self.i += 1;
                    }
                    out.push(Node::Repeat(Box::new(atom), c));
                    last_was_repeat = true;
                    continue;
                }
                '^' => {
                    self.i += 1;
                    Node::Assert(Assert::BeginText)
                }
                '$' => {
                    self.i += 1;
                    Node::Assert(Assert::EndText)
                }
                '.' => {
                    self.i += 1;
                    Node::AnyNotNl
                }
                '[' => Node::Class(self.class()?),
                '\\' => match self.peek(1) {
                    Some('A') => self.skip(2, Node::Assert(Assert::BeginText)),
                    Some('z') => self.skip(2, Node::Assert(Assert::EndText)),
                    Some('b') => self.skip(2, Node::Assert(Assert::WordBoundary)),
                    Some('B') => self.skip(2, Node::Assert(Assert::NotWordBoundary)),
                    Some('C') => return Err("invalid escape sequence: `\\C`".into()),
                    Some('p' | 'P') => return Err("Unicode classes are not supported".into()),
                    Some('Q') => {
                        // `\Q...\E`: everything in between is literal.
                        self.i += 2;
                        let mut group = Vec::new();
                        while let Some(c) = self.peek(0) {
                            if c == '\\' && self.peek(1) == Some('E') {
                                self.i += 2;
                                break;
                            }
                            group.push(Node::Char(c as u32));
                            self.i += 1;
                        }
                        Node::Group(group)
                    }
                    Some(p) if perl_group(p).is_some() => {
                        let item = perl_group(p).expect("checked");
                        self.skip(
                            2,
                            Node::Class(Class {
                                negated: false,
                                items: vec![item],
                            }),
                        )
                    }
                    _ => Node::Char(self.escape()?),
                },
                c => {
                    self.i += 1;
                    Node::Char(c as u32)
                }
            };
            out.push(node);
            last_was_repeat = false;
        }
        if depth > 0 {
            return Err("missing closing )".into());
        }
        Ok(out)
    }

    fn skip(&mut self, n: usize, node: Node) -> Node {
        self.i += n;
        node
    }

    /// Go's `parseEscape`, positioned at the backslash.
    fn escape(&mut self) -> Result<u32, String> {
        let Some(c) = self.peek(1) else {
            return Err("trailing backslash at end of expression".into());
        };
        self.i += 2;
        let invalid = || Err(format!("invalid escape sequence: `\\{c}`"));
        let octal = |c: Option<char>| c.filter(|c| ('0'..='7').contains(c));
        match c {
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(c as u32),
            '1'..='7' if octal(self.peek(0)).is_none() => invalid(),
            '0'..='7' => {
                // Up to three octal digits in all.
                let mut r = c as u32 - '0' as u32;
                for _ in 1..3 {
                    match octal(self.peek(0)) {
                        Some(d) => {
                            r = r * 8 + (d as u32 - '0' as u32);
                            self.i += 1;
                        }
                        None => break,
                    }
                }
                Ok(r)
            }
            'x' => {
                let Some(first) = self.peek(0) else {
                    return invalid();
                };
                self.i += 1;
                if first == '{' {
                    let mut r: u32 = 0;
                    let mut digits = 0;
                    loop {
                        let Some(d) = self.peek(0) else {
                            return invalid();
                        };
                        self.i += 1;
                        if d == '}' {
                            break;
                        }
                        let Some(v) = d.to_digit(16) else {
                            return invalid();
                        };
                        r = r * 16 + v;
                        if r > 0x10FFFF {
                            return invalid();
                        }
                        digits += 1;
                    }
                    if digits == 0 {
                        return invalid();
                    }
                    return Ok(r);
                }
                let Some(second) = self.peek(0) else {
                    return invalid();
                };
                self.i += 1;
                match (first.to_digit(16), second.to_digit(16)) {
                    (Some(x), Some(y)) => Ok(x * 16 + y),
                    _ => invalid(),
                }
            }
            'a' => Ok(0x07),
            'f' => Ok(0x0C),
            'n' => Ok(0x0A),
            'r' => Ok(0x0D),
            't' => Ok(0x09),
            'v' => Ok(0x0B),
            _ => invalid(),
        }
    }

    /// Go's `parseClass`, positioned at `[`.
    fn class(&mut self) -> Result<Class, String> {
        self.i += 1;
        let negated = self.peek(0) == Some('^');
        if negated {
            self.i += 1;
        }
        let mut items = Vec::new();
        // `]` right after `[` or `[^` is a literal.
        let mut first = true;
        loop {
            let Some(c) = self.peek(0) else {
                return Err("missing closing ]".into());
            };
            if c == ']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            // `[:alpha:]`; Go looks for the closing `:]` anywhere in the rest of the expression.
            if c == '[' && self.peek(1) == Some(':') && self.s.len() - self.i > 2 {
                let rest = &self.s[self.i + 2..];
                if let Some(end) = rest.windows(2).position(|w| w == [':', ']']) {
                    let name: String = rest[..end].iter().collect();
                    let (neg, bare) = match name.strip_prefix('^') {
                        Some(b) => (true, b),
                        None => (false, name.as_str()),
                    };
                    let Some(group) = posix_group(bare) else {
                        return Err(format!("invalid character class range: `[:{name}:]`"));
                    };
                    items.push(ClassItem::Group(neg, group));
                    self.i += 2 + end + 2;
                    continue;
                }
            }
            if c == '\\' {
                match self.peek(1) {
                    Some('p' | 'P') => return Err("Unicode classes are not supported".into()),
                    Some(p) if perl_group(p).is_some() => {
                        items.push(perl_group(p).expect("checked"));
                        self.i += 2;
                        continue;
                    }
                    _ => {}
                }
            }
            let lo = self.class_char()?;
            let mut hi = lo;
            // `[a-]` is `a` or `-`.
            if self.peek(0) == Some('-') && self.peek(1).is_some_and(|n| n != ']') {
                self.i += 1;
                hi = self.class_char()?;
                if hi < lo {
                    return Err("invalid character class range".into());
                }
            }
            items.push(ClassItem::Range(lo, hi));
        }
        Ok(Class { negated, items })
    }

    fn class_char(&mut self) -> Result<u32, String> {
        match self.peek(0) {
            None => Err("missing closing ]".into()),
            Some('\\') => self.escape(),
            Some(c) => {
                self.i += 1;
                Ok(c as u32)
            }
        }
    }
}

/// Instructions of a Thompson NFA; simulated breadth-first, so no pattern can backtrack exponentially.
#[derive(Debug, Clone)]
enum Inst {
    Char(u32),
    AnyNotNl,
    Class(Class),
    Assert(Assert),
    Split(usize, usize),
    Jmp(usize),
    Match,
}

fn emit_all(nodes: &[Node], prog: &mut Vec<Inst>) {
    for node in nodes {
        emit(node, prog);
    }
}

fn emit(node: &Node, prog: &mut Vec<Inst>) {
    match node {
        Node::Char(c) => prog.push(Inst::Char(*c)),
        Node::AnyNotNl => prog.push(Inst::AnyNotNl),
        Node::Class(c) => prog.push(Inst::Class(c.clone())),
        Node::Assert(a) => prog.push(Inst::Assert(*a)),
        Node::Group(nodes) => emit_all(nodes, prog),
        Node::Repeat(atom, op) => {
            let start = prog.len();
            match op {
                '+' => {
                    emit(atom, prog);
                    let end = prog.len() + 1;
                    prog.push(Inst::Split(start, end));
                }
                _ => {
                    prog.push(Inst::Split(start + 1, 0));
                    emit(atom, prog);
                    if *op == '*' {
                        prog.push(Inst::Jmp(start));
                    }
                    let end = prog.len();
                    prog[start] = Inst::Split(start + 1, end);
                }
            }
        }
    }
}

fn is_word(c: Option<&u32>) -> bool {
    c.is_some_and(|&c| WORD.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)))
}

/// Whether the program matches `text`. Every translated expression starts with `^`, so trying only
/// position 0 gives the same answer as Go's unanchored `MatchString`.
fn run(prog: &[Inst], text: &str) -> bool {
    let text: Vec<u32> = text.chars().map(|c| c as u32).collect();
    let mut seen = vec![usize::MAX; prog.len()];
    let mut current = Vec::new();
    let mut next = Vec::new();
    add(prog, &text, 0, 0, &mut seen, &mut current);
    for pos in 0..=text.len() {
        if current.is_empty() {
            return false;
        }
        for &pc in &current {
            let step = match &prog[pc] {
                Inst::Match => return true,
                Inst::Char(c) => text.get(pos) == Some(c),
                Inst::AnyNotNl => text.get(pos).is_some_and(|&c| c != '\n' as u32),
                Inst::Class(class) => text.get(pos).is_some_and(|&c| class.contains(c)),
                _ => false,
            };
            if step {
                add(prog, &text, pc + 1, pos + 1, &mut seen, &mut next);
            }
        }
        std::mem::swap(&mut current, &mut next);
        next.clear();
    }
    false
}

/// Adds `pc` and everything reachable from it without consuming input; `seen` is stamped with the
/// position so each state enters a list once.
fn add(
    prog: &[Inst],
    text: &[u32],
    pc: usize,
    pos: usize,
    seen: &mut [usize],
    list: &mut Vec<usize>,
) {
    if seen[pc] == pos {
        return;
    }
    seen[pc] = pos;
    match &prog[pc] {
        Inst::Jmp(to) => add(prog, text, *to, pos, seen, list),
        Inst::Split(a, b) => {
            add(prog, text, *a, pos, seen, list);
            add(prog, text, *b, pos, seen, list);
        }
        Inst::Assert(a) => {
            let holds = match a {
                Assert::BeginText => pos == 0,
                Assert::EndText => pos == text.len(),
                Assert::WordBoundary | Assert::NotWordBoundary => {
                    let before = pos.checked_sub(1).and_then(|p| text.get(p));
                    let boundary = is_word(before) != is_word(text.get(pos));
                    boundary == (*a == Assert::WordBoundary)
                }
            };
            if holds {
                add(prog, text, pc + 1, pos, seen, list);
            }
        }
        _ => list.push(pc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(p: &[&str]) -> Patterns {
        Patterns::from_patterns(p).unwrap_or_else(|e| panic!("{p:?}: {e}"))
    }

    /// patternmatcher's package-level `Matches`: the path is cleaned and `.` is never matched.
    fn package_matches(p: &Patterns, path: &str) -> bool {
        let path = go_clean(path);
        path != "." && p.matches_or_parent_matches(&path)
    }

    #[test]
    fn patternmatcher_vectors() {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/conformance/dockerignore/patternmatcher-vectors.json"
        );
        let Ok(text) = fs::read_to_string(file) else {
            eprintln!("note: {file} is absent; skipping the patternmatcher vectors");
            return;
        };
        let v: serde_json::Value = serde_json::from_str(&text).expect("vectors are JSON");
        let strs = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .expect("array")
                .iter()
                .map(|s| s.as_str().expect("string").to_string())
                .collect()
        };
        let mut failures = Vec::new();
        let mut total = 0;

        for case in v["pattern_list_cases"]
            .as_array()
            .expect("pattern_list_cases")
        {
            total += 1;
            let patterns = strs(&case["patterns"]);
            let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
            let path = case["path"].as_str().expect("path");
            let want = case["matched"].as_bool().expect("matched");
            match Patterns::from_patterns(&refs) {
                Err(e) => failures.push(format!("list {refs:?}: unexpected error {e}")),
                Ok(p) => {
                    let direct = p.matches_or_parent_matches(path);
                    let walked = p.excluded(path);
                    if direct != want || walked != want {
                        failures.push(format!(
                            "list {refs:?} on {path:?}: want {want}, parent-matches {direct}, walk {walked}"
                        ));
                    }
                }
            }
        }

        for case in v["single_pattern_glob_cases"]
            .as_array()
            .expect("single_pattern_glob_cases")
        {
            total += 1;
            let pattern = case["pattern"].as_str().expect("pattern");
            let path = case["path"].as_str().expect("path");
            let want = case["matched"].as_bool().expect("matched");
            let bad = case["bad_pattern"].as_bool().expect("bad_pattern");
            match (Patterns::from_patterns(&[pattern]), bad) {
                (Err(_), true) => {}
                (Ok(_), true) => failures.push(format!("glob {pattern:?}: accepted a bad pattern")),
                (Err(e), false) => failures.push(format!("glob {pattern:?}: unexpected error {e}")),
                (Ok(p), false) => {
                    let got = package_matches(&p, path);
                    if got != want {
                        failures.push(format!(
                            "glob {pattern:?} on {path:?}: want {want}, got {got}"
                        ));
                    }
                }
            }
        }

        for case in v["whole_list_cases"].as_array().expect("whole_list_cases") {
            total += 1;
            let patterns = strs(&case["patterns"]);
            let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
            let path = case["path"].as_str().expect("path");
            match (Patterns::from_patterns(&refs), case.get("error")) {
                (Err(_), Some(_)) => {}
                (Ok(_), Some(_)) => failures.push(format!("whole {refs:?}: accepted")),
                (Err(e), None) => failures.push(format!("whole {refs:?}: unexpected error {e}")),
                (Ok(p), None) => {
                    let want = case["matched"].as_bool().expect("matched");
                    let got = package_matches(&p, &go_clean(path));
                    let walked = p.excluded(&go_clean(path));
                    if got != want || walked != want {
                        failures.push(format!(
                            "whole {refs:?} on {path:?}: want {want}, got {got}, walk {walked}"
                        ));
                    }
                }
            }
        }

        let ignorefile = &v["ignorefile"];
        total += 1;
        let content = ignorefile["content"].as_str().expect("content");
        let got: Vec<String> = read_all(content)
            .expect("readable")
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        if got != strs(&ignorefile["lines"]) {
            failures.push(format!("ignorefile: got {got:?}"));
        }
        total += 1;
        if !read_all("").expect("empty").is_empty() {
            failures.push("ignorefile: empty input gave patterns".into());
        }

        eprintln!(
            "patternmatcher vectors: {}/{total} pass",
            total - failures.len()
        );
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    /// (patterns, path, excluded) from the `.dockerignore` section of Docker's documentation.
    #[test]
    fn documented_examples() {
        let table: &[(&[&str], &str, bool)] = &[
            // `*/temp*`: names starting with temp in any immediate subdirectory of the root.
            (&["*/temp*"], "somedir/temporary.txt", true),
            (&["*/temp*"], "somedir/temp", true),
            (&["*/temp*"], "somedir/temp/inner.txt", true),
            (&["*/temp*"], "temporary.txt", false),
            (&["*/temp*"], "a/b/temp", false),
            // `*/*/temp*`: two levels below the root.
            (&["*/*/temp*"], "somedir/subdir/temporary.txt", true),
            (&["*/*/temp*"], "somedir/temporary.txt", false),
            // `temp?`: one character after temp, in the root only.
            (&["temp?"], "tempa", true),
            (&["temp?"], "tempb", true),
            (&["temp?"], "temp", false),
            (&["temp?"], "tempab", false),
            (&["temp?"], "dir/tempa", false),
            // `**` matches any number of directories, including none.
            (&["**/*.go"], "main.go", true),
            (&["**/*.go"], "cmd/kiln/main.go", true),
            (&["**/*.go"], "main.rs", false),
            // Exceptions: last match wins.
            (&["*.md", "!README.md"], "README.md", false),
            (&["*.md", "!README.md"], "CHANGES.md", true),
            (
                &["*.md", "!README*.md", "README-secret.md"],
                "README-secret.md",
                true,
            ),
            (
                &["*.md", "!README*.md", "README-secret.md"],
                "README-public.md",
                false,
            ),
            (
                &["*.md", "README-secret.md", "!README*.md"],
                "README-secret.md",
                false,
            ),
            // A matched directory excludes everything under it.
            (&["docs"], "docs/a/b.txt", true),
            (&["docs/"], "docs/a/b.txt", true),
            // Patterns are relative to the root, not matched anywhere like .gitignore.
            (&["foo"], "sub/foo", false),
            (&["foo"], "foo", true),
            // Cleaned: `.`, `..` and doubled slashes.
            (&["./a//b/../c"], "a/c", true),
            (&["a/./b"], "a/b", true),
            // A `..` that climbs out of the context matches nothing.
            (&["../x"], "x", false),
            // `**file` is a plain suffix test, so it also matches `myfile`.
            (&["**file"], "dir/myfile", true),
            (&["**/file"], "dir/myfile", false),
            (&["**/file"], "file", true),
            // `abc/**` needs something below abc.
            (&["abc/**"], "abc", false),
            (&["abc/**"], "abc/x", true),
        ];
        let mut failures = Vec::new();
        for (p, path, want) in table {
            let got = pats(p).excluded(path);
            if got != *want {
                failures.push(format!("{p:?} on {path:?}: want {want}, got {got}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Consequences of patternmatcher handing its translation to Go's regexp.
    #[test]
    fn go_regexp_quirks() {
        // `*` inside brackets becomes `[^/]*`, so `[*]` is the class `[[^/]` repeated, then `]`.
        let p = pats(&["[*]"]);
        assert!(p.excluded("]"));
        assert!(p.excluded("[^]"));
        assert!(!p.excluded("*"));
        // `^` is not escaped: in an exact pattern it is literal, in a regexp it anchors to the start.
        assert!(pats(&["a^b"]).excluded("a^b"));
        assert!(!pats(&["a^b*"]).excluded("a^bc"));
        // `\d` is Go's digit class, not an escaped `d`.
        assert!(pats(&["a\\d"]).excluded("a5"));
        assert!(!pats(&["a\\d"]).excluded("ad"));
        // POSIX classes work inside brackets.
        assert!(pats(&["[[:digit:]]x"]).excluded("7x"));
        // Go's `.` stops at a newline, so `**` in the middle cannot cross one.
        assert!(!pats(&["x/**/y"]).excluded("x/a\nb/y"));
        assert!(pats(&["x/**/y"]).excluded("x/ab/y"));
        // Accepted by filepath.Match but not by Go's regexp: BuildKit fails on first use, we fail now.
        for bad in ["[z-a]", "[Local-Only]/", "a\\q", "[a-*]"] {
            assert!(Patterns::from_patterns(&[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_follows_readall() {
        let text =
            "\u{FEFF}/foo\r\n  # indented is a pattern\n# comment\n\n! /bar/../baz\n\tqux/  \n/\n";
        let p = Patterns::parse(text).unwrap();
        assert_eq!(
            p.canonical(),
            ["foo", "# indented is a pattern", "!baz", "qux", "/"]
        );
        assert!(p.has_exclusions());
        assert!(Patterns::parse("").unwrap().is_empty());
        assert!(Patterns::parse("# only\n\n   \n").unwrap().is_empty());

        let err = Patterns::parse("foo\n# c\n!\n").unwrap_err();
        assert_eq!((err.line, err.pattern.as_str()), (3, "!"));
        let err = Patterns::parse("ok\nbad[\n").unwrap_err();
        assert_eq!(err.line, 2);
        let long = "x".repeat(64 * 1024);
        assert!(Patterns::parse(&long).is_err());
        assert!(Patterns::parse(&long[1..]).is_ok());

        // New() cleans the whole string, `!` included, so `!a/../b` loses its `!` there...
        assert_eq!(pats(&["!a/../b"]).canonical(), ["b"]);
        // ...while ReadAll splits the `!` off first.
        assert_eq!(Patterns::parse("!a/../b").unwrap().canonical(), ["!b"]);
        // The root is never excluded.
        assert!(!pats(&["**"]).excluded("."));
        assert!(!pats(&["*"]).excluded(""));
    }

    #[test]
    fn walk_and_parent_results_can_disagree_with_parent_matches() {
        // `a` is skipped for the directory `a` (already excluded), so for `a/b` it is only checked against
        // `a/b` itself: BuildKit's walk sends a/b, while MatchesOrParentMatches says excluded.
        let p = pats(&["a", "!a/b", "a"]);
        assert!(!p.excluded("a/b"));
        assert!(p.matches_or_parent_matches("a/b"));
        assert!(p.excluded("a"));
        assert!(p.may_reinclude_under("a"));
    }

    #[test]
    fn may_reinclude_under_follows_fsutil() {
        assert!(!pats(&["vendor"]).may_reinclude_under("vendor"));
        let p = pats(&["vendor", "node_modules", "!vendor/keep/**"]);
        assert!(p.may_reinclude_under("vendor"));
        assert!(p.may_reinclude_under("vendor/keep"));
        assert!(!p.may_reinclude_under("node_modules"));
        assert!(!p.may_reinclude_under("vendor/other"));
        // Any wildcard in an exception means every excluded directory must be walked.
        let p = pats(&["vendor", "node_modules", "!**/keep.txt"]);
        assert!(p.may_reinclude_under("node_modules"));
    }

    fn tree(files: &[&str], dirs: &[&str]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for d in dirs {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in files {
            let path = t.path().join(f);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, f.as_bytes()).unwrap();
        }
        t
    }

    fn names(v: Vec<PathBuf>) -> Vec<String> {
        v.into_iter().map(|p| p.display().to_string()).collect()
    }

    #[test]
    fn walk_descends_only_where_exceptions_can_apply() {
        let t = tree(
            &[
                "Dockerfile",
                ".dockerignore",
                "a.txt",
                "docs/README.md",
                "docs/other.md",
                "vendor/drop.txt",
                "vendor/keep.txt",
                "vendor/sub/x.txt",
                "node_modules/pkg/index.js",
                "build/out/bin",
            ],
            &["empty"],
        );
        let ignore = "vendor\n!vendor/keep.txt\nnode_modules\n*/other.md\nbuild\n!build/nothing-here\n\
                      Dockerfile\n.dockerignore\n";
        let p = Patterns::parse(ignore).unwrap();
        let got = names(walk(t.path(), &p).unwrap());
        // The Dockerfile and .dockerignore are excluded like any file: BuildKit reads the Dockerfile
        // through its own source. `build` is walked (an exception names a path under it) but nothing
        // there is included, so it is not listed.
        assert_eq!(
            got,
            [
                "a.txt",
                "docs",
                "docs/README.md",
                "empty",
                "vendor",
                "vendor/keep.txt"
            ]
        );
        // With no patterns, everything is listed, directories included.
        let all = names(walk(t.path(), &Patterns::default()).unwrap());
        assert!(all.contains(&"node_modules/pkg".to_string()));
        assert_eq!(all.len(), 18);
    }

    #[test]
    fn walk_agrees_with_excluded() {
        let t = tree(
            &[
                "a/b",
                "a/c/d",
                "x/y/keep.txt",
                "x/y/z.txt",
                "keep.txt",
                "q.go",
                "r/s.go",
            ],
            &[],
        );
        for list in [
            &["a", "!a/b", "a"][..],
            &["**", "!**/keep.txt"],
            &["x", "!x/y", "x/y/z.txt"],
            &["*.go", "!r"],
        ] {
            let p = pats(list);
            let walked = names(walk(t.path(), &p).unwrap());
            for path in [
                "a",
                "a/b",
                "a/c",
                "a/c/d",
                "x",
                "x/y",
                "x/y/keep.txt",
                "x/y/z.txt",
                "keep.txt",
                "q.go",
                "r",
                "r/s.go",
            ] {
                let listed = walked.iter().any(|w| w == path);
                // A directory is listed when it is included or something below it is.
                let below = walked.iter().any(|w| w.starts_with(&format!("{path}/")));
                assert_eq!(
                    listed,
                    !p.excluded(path) || below,
                    "{list:?}: {path} (walk gave {walked:?})"
                );
            }
        }
    }

    #[test]
    fn load_prefers_the_dockerfile_specific_ignore_file() {
        let t = tree(&["Dockerfile", "sub/app.Dockerfile", "foo", "bar"], &[]);
        let (p, from) = load(t.path(), &t.path().join("Dockerfile")).unwrap();
        assert!(p.is_empty() && from.is_none());

        fs::write(t.path().join(".dockerignore"), "foo\n").unwrap();
        let (p, from) = load(t.path(), &t.path().join("Dockerfile")).unwrap();
        assert_eq!(
            (p.canonical(), from),
            (
                vec!["foo".to_string()],
                Some(t.path().join(".dockerignore"))
            )
        );

        let specific = t.path().join("sub/app.Dockerfile.dockerignore");
        fs::write(&specific, "bar\n").unwrap();
        let (p, from) = load(t.path(), &t.path().join("sub/app.Dockerfile")).unwrap();
        assert_eq!(
            (p.canonical(), from),
            (vec!["bar".to_string()], Some(specific))
        );

        // Even an empty Dockerfile-specific file wins.
        fs::write(t.path().join("Dockerfile.dockerignore"), "").unwrap();
        let (p, from) = load(t.path(), &t.path().join("Dockerfile")).unwrap();
        assert!(p.is_empty() && from.is_some());

        fs::write(t.path().join(".dockerignore"), "!\n").unwrap();
        assert!(load(t.path(), &t.path().join("foo")).is_err());
    }
}
