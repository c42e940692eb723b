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

use crate::paths::clean as go_clean;
use glob::go_match;
use regex::{Inst, compile, run};

mod glob;
mod regex;

use crate::diag::{self, Diagnostic, SourceFile, Span};

/// A `.dockerignore` line that Docker would refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PatternError {
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
pub(crate) struct Patterns {
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
pub(crate) struct MatchInfo {
    parent_matched: Vec<bool>,
}

impl Patterns {
    /// Parses `.dockerignore` text with BuildKit's `ReadAll` rules: a UTF-8 BOM on the first line is
    /// dropped; a line whose *first* character is `#` is a comment (an indented `#` is a pattern);
    /// surrounding whitespace is trimmed; blank lines are skipped; `!` is split off and the rest trimmed,
    /// `filepath.Clean`ed and stripped of one leading `/`. The results then go through [`from_patterns`].
    ///
    /// [`from_patterns`]: Patterns::from_patterns
    pub(crate) fn parse(text: &str) -> Result<Patterns, PatternError> {
        Patterns::build(read_all(text)?)
    }

    /// Builds a matcher from already-read patterns with patternmatcher's `New` rules: trim, skip empty,
    /// `filepath.Clean` the whole string (the `!` included, as Go does), then split off `!`.
    pub(crate) fn from_patterns(p: &[&str]) -> Result<Patterns, PatternError> {
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
    pub(crate) fn excluded(&self, path: &str) -> bool {
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
    pub(crate) fn excluded_with_parent(&self, path: &str, parent: &MatchInfo) -> (bool, MatchInfo) {
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
    pub(crate) fn matches_or_parent_matches(&self, path: &str) -> bool {
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
    pub(crate) fn may_reinclude_under(&self, dir: &str) -> bool {
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
    pub(crate) fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns as cleaned (`!` kept), in file order, for hashing into a definition digest.
    pub(crate) fn canonical(&self) -> Vec<String> {
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
pub(crate) fn load(context: &Path, dockerfile: &Path) -> diag::Result<(Patterns, Option<PathBuf>)> {
    let mut specific = dockerfile.as_os_str().to_owned();
    specific.push(".dockerignore");
    // A Dockerfile read from stdin (`-f -`) has no file beside which to look.
    let specific = (dockerfile != Path::new("-")).then(|| PathBuf::from(specific));
    for candidate in specific.into_iter().chain([context.join(".dockerignore")]) {
        crate::inputs::file(&candidate);
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
#[cfg(test)]
pub(crate) fn walk(root: &Path, patterns: &Patterns) -> io::Result<Vec<PathBuf>> {
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

#[cfg(test)]
struct Walker<'a> {
    root: &'a Path,
    patterns: &'a Patterns,
    /// Excluded ancestors we descended into, as (match key, path); emitted once a descendant is.
    pending: Vec<(String, PathBuf)>,
    out: Vec<PathBuf>,
}

#[cfg(test)]
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
// Go's path/filepath helpers (Unix flavour); `filepath.Clean` is `crate::paths::clean`.

/// `filepath.Dir`.
fn go_dir(path: &str) -> String {
    match path.rfind('/') {
        Some(i) => go_clean(&path[..=i]),
        None => ".".into(),
    }
}

#[cfg(test)]
mod tests;
