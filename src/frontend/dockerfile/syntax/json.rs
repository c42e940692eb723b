//! Exec-form detection: whether an argument text is a JSON array of strings, decoded as Go's
//! `encoding/json` decodes it (BuildKit's `parseJSON`).

/// What a text is as a JSON array.
#[derive(Debug, PartialEq)]
pub enum Json {
    /// A valid array of strings: each decoded string with the byte range of its literal.
    Array(Vec<(String, (usize, usize))>),
    /// A valid JSON array with a non-string element (its byte range): an error in BuildKit.
    Mixed((usize, usize)),
    /// Not a JSON array: the shell form (or, for COPY and friends, whitespace-separated words).
    Text,
}

/// Go's decoder refuses documents nested deeper than this (`exceeded max depth`).
const MAX_DEPTH: usize = 10_000;

/// Leading Unicode whitespace is skipped (BuildKit trims it), trailing JSON whitespace allowed.
pub fn json_array(s: &str) -> Json {
    let start = s.len() - s.trim_start().len();
    if !s[start..].starts_with('[') {
        return Json::Text;
    }
    let mut p = JsonParser {
        b: s.as_bytes(),
        s,
        pos: start + 1,
    };
    let mut items = Vec::new();
    let mut bad = None;
    p.ws();
    if p.peek() == Some(b']') {
        p.pos += 1;
    } else {
        loop {
            p.ws();
            let at = p.pos;
            if p.peek() == Some(b'"') {
                match p.string() {
                    Some(v) => items.push((v, (at, p.pos))),
                    None => return Json::Text,
                }
            } else {
                // The outer array is one level already.
                if !p.value(1) {
                    return Json::Text;
                }
                bad.get_or_insert((at, p.pos));
            }
            p.ws();
            match p.peek() {
                Some(b',') => p.pos += 1,
                Some(b']') => {
                    p.pos += 1;
                    break;
                }
                _ => return Json::Text,
            }
        }
    }
    p.ws();
    if p.pos != s.len() {
        return Json::Text;
    }
    match bad {
        Some(r) => Json::Mixed(r),
        None => Json::Array(items),
    }
}

/// If `s` is exactly one JSON object (surrounding JSON whitespace allowed), the value of `key` when
/// it is a string (the last one wins, as in Go's map decoding). BuildKit's `{"syntax": "..."}` form.
pub fn json_object_string(s: &str, key: &str) -> Option<String> {
    let mut p = JsonParser {
        b: s.as_bytes(),
        s,
        pos: 0,
    };
    p.ws();
    if p.peek() != Some(b'{') {
        return None;
    }
    p.pos += 1;
    p.ws();
    let mut found = None;
    if p.peek() == Some(b'}') {
        p.pos += 1;
    } else {
        loop {
            p.ws();
            if p.peek() != Some(b'"') {
                return None;
            }
            let k = p.string()?;
            p.ws();
            if p.peek() != Some(b':') {
                return None;
            }
            p.pos += 1;
            p.ws();
            if p.peek() == Some(b'"') {
                let v = p.string()?;
                if k == key {
                    found = Some(Some(v));
                }
            } else {
                if !p.value(1) {
                    return None;
                }
                if k == key {
                    found = Some(None);
                }
            }
            p.ws();
            match p.peek() {
                Some(b',') => p.pos += 1,
                Some(b'}') => {
                    p.pos += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    p.ws();
    if p.pos != s.len() {
        return None;
    }
    found.flatten()
}

/// A small JSON validator/decoder: enough to tell an exec-form array from shell text.
struct JsonParser<'a> {
    b: &'a [u8],
    s: &'a str,
    pos: usize,
}

/// An open container while skipping a nested value.
#[derive(Clone, Copy, PartialEq)]
enum Open {
    Array,
    Object,
}

impl JsonParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }
    fn eat(&mut self, lit: &str) -> bool {
        if self.s.get(self.pos..).is_some_and(|r| r.starts_with(lit)) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }
    fn digits(&mut self) -> usize {
        let st = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - st
    }

    fn number(&mut self) -> bool {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return false;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }

    /// Skips one JSON value; false if it is not valid JSON. Iterative (an explicit stack of open
    /// containers), so hostile nesting cannot overflow the call stack; `depth` counts the
    /// containers already open around it, as Go's limit does.
    fn value(&mut self, depth: usize) -> bool {
        let mut stack: Vec<Open> = Vec::new();
        loop {
            // Expect a value here.
            self.ws();
            match self.peek() {
                Some(b'"') => {
                    if self.string().is_none() {
                        return false;
                    }
                }
                Some(b't') if self.eat("true") => {}
                Some(b'f') if self.eat("false") => {}
                Some(b'n') if self.eat("null") => {}
                Some(b'-' | b'0'..=b'9') => {
                    if !self.number() {
                        return false;
                    }
                }
                Some(open @ (b'[' | b'{')) => {
                    self.pos += 1;
                    if depth + stack.len() + 1 > MAX_DEPTH {
                        return false;
                    }
                    let kind = if open == b'[' {
                        Open::Array
                    } else {
                        Open::Object
                    };
                    self.ws();
                    let close = if kind == Open::Array { b']' } else { b'}' };
                    if self.peek() == Some(close) {
                        self.pos += 1;
                    } else {
                        stack.push(kind);
                        if kind == Open::Object && !self.key() {
                            return false;
                        }
                        continue;
                    }
                }
                _ => return false,
            }
            // After a value: close containers or move to the next element.
            loop {
                let Some(&top) = stack.last() else {
                    return true;
                };
                self.ws();
                match (self.peek(), top) {
                    (Some(b','), Open::Array) => {
                        self.pos += 1;
                        break;
                    }
                    (Some(b','), Open::Object) => {
                        self.pos += 1;
                        if !self.key() {
                            return false;
                        }
                        break;
                    }
                    (Some(b']'), Open::Array) | (Some(b'}'), Open::Object) => {
                        self.pos += 1;
                        stack.pop();
                    }
                    _ => return false,
                }
            }
        }
    }

    /// `"key":` inside an object.
    fn key(&mut self) -> bool {
        self.ws();
        if self.peek() != Some(b'"') || self.string().is_none() {
            return false;
        }
        self.ws();
        if self.peek() != Some(b':') {
            return false;
        }
        self.pos += 1;
        true
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.s.get(self.pos..self.pos + 4)?;
        if !h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let v = u32::from_str_radix(h, 16).ok()?;
        self.pos += 4;
        Some(v)
    }

    /// Decodes a string literal at `pos` (on the opening quote). Lone surrogates become U+FFFD.
    fn string(&mut self) -> Option<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let c = self.s.get(self.pos..)?.chars().next()?;
            self.pos += c.len_utf8();
            match c {
                '"' => return Some(out),
                '\\' => {
                    let e = self.peek()?;
                    self.pos += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let ch = if (0xD800..0xDC00).contains(&hi) {
                                let save = self.pos;
                                let lo = if self.eat("\\u") { self.hex4() } else { None };
                                match lo {
                                    Some(lo) if (0xDC00..0xE000).contains(&lo) => char::from_u32(
                                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00),
                                    ),
                                    _ => {
                                        // Like Go: U+FFFD, and the next escape is read on its own.
                                        self.pos = save;
                                        None
                                    }
                                }
                            } else {
                                char::from_u32(hi)
                            };
                            out.push(ch.unwrap_or('\u{fffd}'));
                        }
                        _ => return None,
                    }
                }
                c if (c as u32) < 0x20 => return None,
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_non_arrays() {
        assert_eq!(json_array("[]"), Json::Array(vec![]));
        assert!(matches!(json_array("  [\"a\" , \"b\"] "), Json::Array(v) if v.len() == 2));
        assert_eq!(json_array("[\"a\""), Json::Text);
        assert_eq!(json_array("['a']"), Json::Text);
        assert_eq!(json_array("[\"a\"] x"), Json::Text);
        assert!(matches!(
            json_array("[\"a\", [\"b\", {\"c\": [1, true, null]}]]"),
            Json::Mixed(_)
        ));
        assert_eq!(json_array("[1, ]"), Json::Text);
        assert_eq!(json_array("[{\"a\" 1}]"), Json::Text);
        // Go's nesting limit: 10000 levels are fine, one more is a syntax error.
        let ok = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(json_array(&ok), Json::Mixed(_)));
        let deep = format!("{}{}", "[".repeat(10_001), "]".repeat(10_001));
        assert_eq!(json_array(&deep), Json::Text);
        assert_eq!(json_array(&"[".repeat(100_000)), Json::Text);
    }

    #[test]
    fn surrogates_like_go() {
        let Json::Array(v) = json_array(r#"["\ud83d\ude00", "\ud800", "\ud800\u0041", "\udc00"]"#)
        else {
            panic!()
        };
        let got: Vec<&str> = v.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(got, ["\u{1f600}", "\u{fffd}", "\u{fffd}A", "\u{fffd}"]);
    }
}
