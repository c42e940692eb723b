//! patternmatcher's pattern → regexp translation, and the subset of Go's regexp that it can produce.

use super::Kind;

/// `Pattern.compile` with `/` as separator.
pub(super) fn compile(cleaned: &str) -> Result<Kind, String> {
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
pub(super) enum Assert {
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
pub(super) struct Class {
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
pub(super) enum Inst {
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
pub(super) fn run(prog: &[Inst], text: &str) -> bool {
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
