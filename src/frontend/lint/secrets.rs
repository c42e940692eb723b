//! The language-neutral cores of kiln's secret checks, shared by the Dockerfile checks and the `.build`
//! evaluator: secret-looking files copied into a layer (`SecretFileCopied`), secret files read by a RUN
//! that does not mount them (`SecretReadWithoutMount`), a mounted secret written to a file the same RUN
//! leaves behind (`SecretCopiedToFile`), and secret-looking values (`SecretInBuildArg`). The RUN checks
//! read the shell text with a small tokenizer (quotes, `$(...)`, operators, redirections); it is a
//! heuristic tuned to keep false positives low.

use crate::frontend::clean_path;

/// Whether a file's base name says it holds a secret.
fn secret_file(base: &str) -> bool {
    let b = base.to_ascii_lowercase();
    if b.ends_with(".pub") {
        return false;
    }
    b.ends_with(".pem")
        || b.ends_with(".key")
        || b.starts_with("id_rsa")
        || b.starts_with("id_ed25519")
        || b.starts_with("secrets.")
        || b.starts_with("credentials")
        || matches!(
            b.as_str(),
            ".env" | ".npmrc" | ".pypirc" | ".netrc" | ".git-credentials"
        )
}

/// The `SecretFileCopied` message for one COPY/ADD source, if its base name looks like a secret.
pub fn copied_file(kw: &str, value: &str) -> Option<String> {
    if value.starts_with("<<") {
        return None;
    }
    let trimmed = value.trim_end_matches('/');
    let base = trimmed.rsplit('/').next().unwrap_or(trimmed);
    secret_file(base).then(|| {
        format!(
            "{kw} puts `{value}` into an image layer, and its name says it holds a secret; \
             deleting it in a later step does not take it out of this layer: \
             pass it with `--secret` and read it in `RUN --mount=type=secret` instead"
        )
    })
}

/// A `--mount=type=secret` as written: where its file is (if it has one) and its env variable.
pub struct SecretMount {
    pub id: String,
    /// The absolute path of its file, if it has one.
    pub target: Option<String>,
    pub env: Option<String>,
}

/// A finding of the RUN checks, placed by the text it is about (`needle`, found in the step's source).
pub struct RunFinding {
    pub rule: &'static str,
    pub needle: String,
    pub message: String,
}

pub fn join(cwd: &str, p: &str) -> String {
    if p.starts_with('/') {
        clean_path(p)
    } else {
        clean_path(&format!("{cwd}/{p}"))
    }
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// Where `path` occurs in `text` as a whole path (not as a prefix of a longer one).
fn mentions(text: &str, path: &str) -> bool {
    text.match_indices(path).any(|(at, _)| {
        let before_ok = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !is_path_char(c));
        let after = text[at + path.len()..].chars().next();
        before_ok && after.is_none_or(|c| !is_path_char(c))
    })
}

/// The RUN checks over the shell text of a step, given its secret and tmpfs mounts (absolute targets)
/// and the secret file targets mounted anywhere in the program.
pub fn run_findings(
    text: &str,
    secrets: &[SecretMount],
    tmpfs: &[String],
    cwd: &str,
    file_targets: &[String],
) -> Vec<RunFinding> {
    let mut out = Vec::new();
    let mounted: Vec<&str> = secrets.iter().filter_map(|s| s.target.as_deref()).collect();
    // Reads of secret files this RUN does not mount.
    let mut read: Vec<String> = Vec::new();
    for (at, _) in text.match_indices("/run/secrets/") {
        let name: String = text[at + 13..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .collect();
        let before_ok = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !is_path_char(c));
        if !name.is_empty() && before_ok {
            read.push(format!("/run/secrets/{name}"));
        }
    }
    for t in file_targets {
        if mentions(text, t) {
            read.push(t.clone());
        }
    }
    let mut reported: Vec<String> = Vec::new();
    for path in read {
        if mounted.contains(&path.as_str()) || reported.contains(&path) {
            continue;
        }
        let hint = match path.strip_prefix("/run/secrets/") {
            Some(id) => format!("add `--mount=type=secret,id={id}` to this RUN"),
            None => format!("add `--mount=type=secret,id=...,target={path}` to this RUN"),
        };
        out.push(RunFinding {
            rule: "SecretReadWithoutMount",
            needle: path.clone(),
            message: format!(
                "RUN reads the secret file `{path}` but does not mount it; a secret is only there \
                 in the RUN that mounts it: {hint}"
            ),
        });
        reported.push(path);
    }
    // Mounted secrets written to files that stay in the layer.
    if secrets.is_empty() {
        return out;
    }
    let segments = segments(text);
    let reads = |s: &Segment| {
        secrets.iter().any(|m| {
            m.target.as_deref().is_some_and(|t| mentions(&s.raw, t))
                || m.env.as_deref().is_some_and(|e| {
                    s.raw.contains(&format!("${{{e}}}"))
                        || s.raw.match_indices(&format!("${e}")).any(|(at, _)| {
                            !s.raw[at + e.len() + 1..]
                                .chars()
                                .next()
                                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                        })
                })
        })
    };
    let secret_of = |s: &Segment| -> String {
        secrets
            .iter()
            .find(|m| m.target.as_deref().is_some_and(|t| mentions(&s.raw, t)))
            .or(secrets.first())
            .map(|m| m.id.clone())
            .unwrap_or_default()
    };
    let mut tainted: Option<String> = None;
    let mut flagged: Vec<String> = Vec::new();
    for (k, seg) in segments.iter().enumerate() {
        // A count or a digest of a secret is not the secret.
        let own = reads(seg) && !SUMMARIES.contains(&command(seg).0.as_str());
        // Piped output stays the secret only through filters; a program it is piped into consumes it.
        let passed = tainted
            .take()
            .filter(|_| FILTERS.contains(&command(seg).0.as_str()));
        let id = if own { Some(secret_of(seg)) } else { passed };
        tainted = if seg.piped { id.clone() } else { None };
        let Some(id) = id else { continue };
        for dest in writes(seg) {
            let full = join(cwd, &dest);
            let harmless = full.starts_with("/dev/")
                || mounted.contains(&full.as_str())
                || tmpfs
                    .iter()
                    .any(|t| full == *t || full.starts_with(&format!("{t}/")));
            if harmless || flagged.contains(&full) || removed(&segments[k + 1..], &full, cwd) {
                continue;
            }
            out.push(RunFinding {
                rule: "SecretCopiedToFile",
                message: format!(
                    "RUN writes secret `{id}` to `{dest}` and does not remove it, so it is committed \
                     with this layer: remove it in the same RUN (`rm {dest}`) or read the secret \
                     where it is mounted"
                ),
                needle: dest,
            });
            flagged.push(full);
        }
    }
    out
}

/// Commands whose output is (a transformation of) their input: a secret piped into them stays a
/// secret on the other side. Anything else it is piped into (a login, an installer) consumes it.
const FILTERS: [&str; 26] = [
    "cat", "tee", "base64", "base32", "basenc", "tr", "sed", "awk", "cut", "head", "tail", "xxd",
    "od", "hexdump", "jq", "yq", "sort", "uniq", "gzip", "bzip2", "xz", "rev", "fold", "envsubst",
    "dd", "sponge",
];

/// Commands whose output says something about their input without holding it.
const SUMMARIES: [&str; 11] = [
    "wc",
    "cksum",
    "md5sum",
    "sha1sum",
    "sha224sum",
    "sha256sum",
    "sha384sum",
    "sha512sum",
    "b2sum",
    "test",
    "[",
];

/// One simple command: its words (quotes removed), its output redirection targets, its raw text, and
/// whether its output is piped into the next one.
#[derive(Debug, Default)]
struct Segment {
    words: Vec<String>,
    redirects: Vec<String>,
    raw: String,
    piped: bool,
}

/// Splits shell text into simple commands at `&&`, `||`, `;`, `|`, `&` and newlines, keeping quoted
/// text and `$(...)`/backquotes inside words.
fn segments(text: &str) -> Vec<Segment> {
    #[derive(PartialEq)]
    enum Next {
        Word,
        Redirect,
        Skip,
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut seg = Segment::default();
    let mut word = String::new();
    let mut in_word = false;
    let mut next = Next::Word;
    let mut i = 0;
    let finish_word =
        |seg: &mut Segment, word: &mut String, in_word: &mut bool, next: &mut Next| {
            if *in_word {
                match next {
                    Next::Word => seg.words.push(std::mem::take(word)),
                    Next::Redirect => seg.redirects.push(std::mem::take(word)),
                    Next::Skip => word.clear(),
                }
                *next = Next::Word;
                *in_word = false;
            }
        };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                word.push(chars[i + 1]);
                seg.raw.push(c);
                seg.raw.push(chars[i + 1]);
                in_word = true;
                i += 2;
                continue;
            }
            '\'' | '"' => {
                seg.raw.push(c);
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if c == '"' && chars[i] == '\\' && i + 1 < chars.len() {
                        seg.raw.push(chars[i]);
                        i += 1;
                    }
                    word.push(chars[i]);
                    seg.raw.push(chars[i]);
                    i += 1;
                }
                seg.raw.push(c);
                in_word = true;
            }
            '$' if chars.get(i + 1) == Some(&'(') || chars.get(i + 1) == Some(&'{') => {
                let (open, close) = if chars[i + 1] == '(' {
                    ('(', ')')
                } else {
                    ('{', '}')
                };
                let mut depth = 0;
                while i < chars.len() {
                    let ch = chars[i];
                    word.push(ch);
                    seg.raw.push(ch);
                    if ch == open {
                        depth += 1;
                    } else if ch == close {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    i += 1;
                }
                in_word = true;
            }
            '`' => {
                word.push(c);
                seg.raw.push(c);
                i += 1;
                while i < chars.len() && chars[i] != '`' {
                    word.push(chars[i]);
                    seg.raw.push(chars[i]);
                    i += 1;
                }
                word.push('`');
                seg.raw.push('`');
                in_word = true;
            }
            '>' => {
                // `N>` and `&>` name a descriptor, not a word.
                if in_word && (word.chars().all(|d| d.is_ascii_digit()) || word == "&") {
                    word.clear();
                    in_word = false;
                } else {
                    finish_word(&mut seg, &mut word, &mut in_word, &mut next);
                }
                seg.raw.push(c);
                i += 1;
                while i < chars.len() && matches!(chars[i], '>' | '|') {
                    seg.raw.push(chars[i]);
                    i += 1;
                }
                if chars.get(i) == Some(&'&') {
                    seg.raw.push('&');
                    i += 1;
                    next = Next::Skip;
                } else {
                    next = Next::Redirect;
                }
                continue;
            }
            '<' => {
                finish_word(&mut seg, &mut word, &mut in_word, &mut next);
                seg.raw.push(c);
            }
            ';' | '|' | '&' | '\n' | '(' | ')' => {
                finish_word(&mut seg, &mut word, &mut in_word, &mut next);
                let double = chars.get(i + 1) == Some(&c) && matches!(c, '|' | '&');
                if c == '(' || c == ')' {
                    i += 1;
                    continue;
                }
                seg.piped = c == '|' && !double;
                if !seg.words.is_empty() || !seg.redirects.is_empty() {
                    out.push(std::mem::take(&mut seg));
                } else {
                    seg = Segment::default();
                }
                i += if double { 2 } else { 1 };
                continue;
            }
            c if c.is_whitespace() => {
                finish_word(&mut seg, &mut word, &mut in_word, &mut next);
                seg.raw.push(c);
            }
            c => {
                word.push(c);
                seg.raw.push(c);
                in_word = true;
            }
        }
        i += 1;
    }
    finish_word(&mut seg, &mut word, &mut in_word, &mut next);
    if !seg.words.is_empty() || !seg.redirects.is_empty() {
        out.push(seg);
    }
    out
}

/// The command name of a segment: the first word after assignments and `sudo`/`env`/`exec`.
fn command(seg: &Segment) -> (String, &[String]) {
    let mut k = 0;
    while k < seg.words.len() {
        let w = &seg.words[k];
        let assignment = w.split_once('=').is_some_and(|(n, _)| {
            !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if assignment || matches!(w.as_str(), "sudo" | "env" | "exec" | "command") {
            k += 1;
            continue;
        }
        let base = w.rsplit('/').next().unwrap_or(w).to_string();
        return (base, &seg.words[k + 1..]);
    }
    (String::new(), &[])
}

/// The files a segment writes: output redirections, `tee` files, the destination of `cp`/`install`/
/// `mv`/`rsync`, and `dd of=`.
fn writes(seg: &Segment) -> Vec<String> {
    let mut out: Vec<String> = seg.redirects.clone();
    let (cmd, args) = command(seg);
    let operands: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    match cmd.as_str() {
        "tee" => out.extend(operands.into_iter().cloned()),
        "cp" | "install" | "mv" | "rsync" if operands.len() >= 2 => {
            out.extend(operands.last().map(|s| (*s).clone()))
        }
        "dd" => out.extend(
            args.iter()
                .filter_map(|a| a.strip_prefix("of="))
                .map(String::from),
        ),
        _ => {}
    }
    out.retain(|d| !d.is_empty() && !d.starts_with('&'));
    out
}

/// Whether a later segment removes `full` (the file, a directory holding it, or a glob matching it).
fn removed(later: &[Segment], full: &str, cwd: &str) -> bool {
    later.iter().any(|seg| {
        let (cmd, args) = command(seg);
        if !matches!(cmd.as_str(), "rm" | "shred" | "unlink") {
            return false;
        }
        args.iter().filter(|a| !a.starts_with('-')).any(|a| {
            let r = join(cwd, a);
            r == full
                || full.starts_with(&format!("{r}/"))
                || r.starts_with(&format!("{full}/"))
                || (r.contains('*') && glob(&r, full))
        })
    })
}

/// `*` matches any run of characters, `?` one.
fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// What a value that looks like a secret looks like, if it does.
pub(crate) fn secret_value(v: &str) -> Option<&'static str> {
    if v.contains("-----BEGIN") && v.contains("PRIVATE KEY") {
        return Some("a private key");
    }
    for token in v.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=_-".contains(c))) {
        let upper_digits = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        };
        if (token.starts_with("AKIA") || token.starts_with("ASIA"))
            && token.len() >= 20
            && upper_digits(&token[..20])
        {
            return Some("an AWS access key id");
        }
        if ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]
            .iter()
            .any(|p| token.starts_with(p))
            && token.len() >= 40
            || token.starts_with("github_pat_") && token.len() >= 30
        {
            return Some("a GitHub token");
        }
        if (token.starts_with("xoxb-") || token.starts_with("xoxp-")) && token.len() >= 15 {
            return Some("a Slack token");
        }
        if high_entropy(token) {
            return Some("a high-entropy token");
        }
    }
    None
}

/// At least 24 characters mixing upper case, lower case and digits, with at least 4 bits of Shannon
/// entropy per character (words, versions, paths and hex digests stay below).
fn high_entropy(t: &str) -> bool {
    if t.len() < 24
        || !t.chars().any(|c| c.is_ascii_uppercase())
        || !t.chars().any(|c| c.is_ascii_lowercase())
        || !t.chars().any(|c| c.is_ascii_digit())
    {
        return false;
    }
    let mut counts = std::collections::BTreeMap::new();
    for c in t.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = t.chars().count() as f64;
    let h: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n;
            -p * p.log2()
        })
        .sum();
    h >= 4.0
}

pub(crate) fn unquote(s: &str) -> &str {
    let t = s.trim();
    for q in ['"', '\''] {
        if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
            return &t[1..t.len() - 1];
        }
    }
    t
}

/// The `SecretInBuildArg` message for an ARG default or ENV value written in the file, if it looks like
/// a secret.
pub fn value_message(kind: &str, key: &str, value: &str) -> Option<String> {
    secret_value(value).map(|what| {
        format!(
            "the value of {kind} `{key}` looks like {what}; ARG and ENV values are kept in the \
             image's history and config: pass it with `--secret` and use `RUN --mount=type=secret`"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_names() {
        for n in [
            "id_rsa",
            "server.pem",
            ".env",
            "secrets.txt",
            "credentials.json",
            "tls.key",
            ".git-credentials",
        ] {
            assert!(secret_file(n), "{n}");
        }
        for n in [
            "id_rsa.pub",
            "main.go",
            "env",
            "keys.txt",
            "secret-santa.md",
        ] {
            assert!(!secret_file(n), "{n}");
        }
    }

    #[test]
    fn segments_and_writes() {
        let s = segments(
            "cat /run/secrets/x > /app/f && use | tee -a /b 2>&1; echo 'a > b' >/dev/null",
        );
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].redirects, ["/app/f"]);
        assert!(s[1].piped);
        assert_eq!(writes(&s[2]), ["/b"]);
        assert_eq!(s[3].words, ["echo", "a > b"]);
        assert_eq!(s[3].redirects, ["/dev/null"]);
    }

    #[test]
    fn secret_values() {
        assert_eq!(
            secret_value("AKIAIOSFODNN7EXAMPLE"),
            Some("an AWS access key id")
        );
        assert_eq!(
            secret_value("ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
            Some("a GitHub token")
        );
        assert!(secret_value("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY").is_some());
        for v in [
            "1.2.3",
            "/usr/local/bin",
            "production",
            "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "https://example.com/path/to/file.tar.gz",
        ] {
            assert_eq!(secret_value(v), None, "{v}");
        }
        assert!(glob("/tmp/*.json", "/tmp/a.json"));
    }
}
