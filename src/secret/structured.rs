//! The fields of a structured secret: a credentials file (JSON, YAML, dotenv, `.netrc`, `.npmrc`,
//! `.pypirc`, docker's `config.json`) rather than a token. A step that keeps one field (`jq -r .password`,
//! `cut -d= -f2`) keeps a secret without keeping the file, so each field is a needle of its own.
//!
//! The parsers are tried from the strictest to the loosest and the first that accepts the whole value
//! wins; one that fails halfway contributes nothing. A plain token is accepted by none of them (or only as
//! a `KEY=value` line, whose value is then part of the token anyway). Values that name rather than
//! authenticate (URLs without credentials, lowercase identifiers such as `service_account`, `${VAR}`
//! references) are left out unless their key says secret: they occur in public software too, and a needle
//! that matches a library's source would refuse builds that leak nothing.

use std::borrow::Cow;

use base64::Engine as _;
use zeroize::{Zeroize as _, Zeroizing};

/// Shorter fields are not searched alone: too likely to occur by chance.
pub(super) const MIN_FIELD: usize = 8;

/// The field values of `value` worth searching for on their own, in the order found; empty when `value`
/// is not structured.
pub(super) fn fields(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    let Ok(text) = std::str::from_utf8(value) else {
        return Vec::new();
    };
    [json, netrc, key_values, yaml]
        .iter()
        .find_map(|parse| parse(text))
        .map(|f| f.0)
        .unwrap_or_default()
}

/// What one parser found.
#[derive(Default)]
struct Fields(Vec<Zeroizing<Vec<u8>>>);

impl Fields {
    /// A value found under `key` (its own name, not its path; empty in a list at the top).
    fn add(&mut self, key: &str, value: &str) {
        // An `.npmrc` key is scoped by registry: `//registry.example/:_authToken`.
        let name = key.rsplit(':').next().unwrap_or(key).to_ascii_lowercase();
        match name.as_str() {
            // docker's `config.json` and `.npmrc`: base64 of `user:password`.
            "auth" | "_auth" => {
                if let Some(plain) = decode_base64(value) {
                    if let Some(at) = plain.iter().position(|&b| b == b':') {
                        self.push(&plain[at + 1..]);
                    }
                    self.push(&plain);
                }
            }
            // `.npmrc`: the password alone, base64.
            "_password" => {
                if let Some(plain) = decode_base64(value) {
                    self.push(&plain);
                }
            }
            _ => {}
        }
        // Public text is public whatever its key (`token_uri`); a word is a credential under `password`.
        if !reference(value) && !public_line(value) && (secret_name(&name) || !identifier(value)) {
            self.push(value.as_bytes());
        }
    }

    fn push(&mut self, v: &[u8]) {
        if v.len() >= MIN_FIELD && !self.0.iter().any(|f| f[..] == *v) {
            self.0.push(Zeroizing::new(v.to_vec()));
        }
    }
}

fn decode_base64(value: &str) -> Option<Zeroizing<Vec<u8>>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    let v = value.trim();
    let mut out = Zeroizing::new(Vec::new());
    (STANDARD.decode_vec(v, &mut out).is_ok() || {
        out.clear();
        STANDARD_NO_PAD.decode_vec(v, &mut out).is_ok()
    })
    .then_some(out)
}

/// Key names whose values are credentials even when they look like plain words.
fn secret_name(name: &str) -> bool {
    [
        "pass", "pwd", "secret", "token", "auth", "key", "cred", "priv", "session", "cookie",
        "sig", "salt",
    ]
    .iter()
    .any(|w| name.contains(w))
}

/// `${VAR}`: a placeholder filled in elsewhere, the same in every copy of the file.
fn reference(v: &str) -> bool {
    v.strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// A lowercase identifier (`service_account`, `__token__`): names a kind of thing, proves nothing.
fn identifier(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_lowercase() || b"_-.".contains(&b))
}

/// Lines of a secret that are public text: PEM armor (`-----BEGIN PRIVATE KEY-----` is in every TLS
/// library) and URLs without credentials.
pub(super) fn public_line(v: &str) -> bool {
    let armor = (v.starts_with("-----BEGIN ") || v.starts_with("-----END "))
        && v.ends_with("-----")
        && !v.contains('\n');
    armor || plain_url(v)
}

fn plain_url(v: &str) -> bool {
    let Some((scheme, rest)) = v.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
        && !authority.contains('@')
        && !v.contains(['?', '#'])
        && !v.bytes().any(|b| b.is_ascii_whitespace())
}

/// A JSON object or array (docker's `config.json`, a cloud service account key).
fn json(text: &str) -> Option<Fields> {
    if !text.trim_start().starts_with(['{', '[']) {
        return None;
    }
    let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
    let mut found = Fields::default();
    walk_json(&value, "", &mut found);
    wipe_json(&mut value);
    Some(found)
}

// serde_json limits nesting to 128 levels, so these recursions are bounded.
fn walk_json(v: &serde_json::Value, key: &str, found: &mut Fields) {
    use serde_json::Value;
    match v {
        Value::String(s) => found.add(key, s),
        Value::Number(n) => found.add(key, &Zeroizing::new(n.to_string())),
        Value::Array(items) => items.iter().for_each(|i| walk_json(i, key, found)),
        Value::Object(map) => map.iter().for_each(|(k, i)| walk_json(i, k, found)),
        Value::Bool(_) | Value::Null => {}
    }
}

fn wipe_json(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe_json),
        Value::Object(map) => map.values_mut().for_each(wipe_json),
        _ => {}
    }
}

/// `.netrc`: `machine HOST login USER password PASS` tokens, any layout.
fn netrc(text: &str) -> Option<Fields> {
    let uncommented: Zeroizing<String> = Zeroizing::new(
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let mut tokens = NetrcTokens(&uncommented);
    let first = tokens.next()?;
    if !matches!(&*first, "machine" | "default") {
        return None;
    }
    let mut found = Fields::default();
    let mut credentials = 0;
    let mut keyword = Some(first);
    while let Some(k) = keyword.take().or_else(|| tokens.next()) {
        match &*k {
            "default" => {}
            "machine" | "port" => {
                tokens.next()?;
            }
            "login" | "password" | "account" => {
                let mut value = tokens.next()?;
                found.add(&k, &value);
                if let Cow::Owned(v) = &mut value {
                    v.zeroize();
                }
                credentials += 1;
            }
            // A macro runs to the end of its paragraph; nothing after it is credentials we know.
            "macdef" => break,
            _ => return None,
        }
    }
    (credentials > 0).then_some(found)
}

/// Whitespace-separated tokens, double quotes and backslash escapes honoured (as curl reads `.netrc`).
struct NetrcTokens<'a>(&'a str);

impl<'a> Iterator for NetrcTokens<'a> {
    type Item = Cow<'a, str>;
    fn next(&mut self) -> Option<Cow<'a, str>> {
        let s = self.0.trim_start();
        if s.is_empty() {
            return None;
        }
        if let Some(quoted) = s.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        self.0 = &quoted[i + 1..];
                        return Some(Cow::Owned(out));
                    }
                    '\\' => out.extend(chars.next().map(|(_, c)| c)),
                    c => out.push(c),
                }
            }
            out.zeroize();
            self.0 = "";
            return None;
        }
        let end = s.find(|c: char| c.is_ascii_whitespace()).unwrap_or(s.len());
        self.0 = &s[end..];
        Some(Cow::Borrowed(&s[..end]))
    }
}

/// `KEY=value` lines: dotenv (`export`, quotes), `.npmrc` (`//host/:_authToken=`), INI with sections
/// (`.pypirc`, also `key: value` and indented continuation lines). Every line must be one of these.
fn key_values(text: &str) -> Option<Fields> {
    let mut found = Fields::default();
    let mut pairs = 0;
    let mut section = false;
    let mut last_key: Option<&str> = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t.is_empty() || t.starts_with(['#', ';']) {
            continue;
        }
        if t.len() > 2 && t.starts_with('[') && t.ends_with(']') {
            (section, last_key) = (true, None);
            continue;
        }
        if let (true, true, Some(key)) = (section, line.starts_with([' ', '\t']), last_key) {
            found.add(key, t);
            continue;
        }
        let t = t.strip_prefix("export ").map_or(t, str::trim_start);
        let (key, value) = t
            .split_once('=')
            .or_else(|| section.then(|| t.split_once(':')).flatten())?;
        let key = key.trim();
        if !valid_key(key) {
            return None;
        }
        let value = unquote(value.trim(), &mut lines)?;
        found.add(key, &value);
        (pairs, last_key) = (pairs + 1, Some(key));
    }
    (pairs > 0).then_some(found)
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && !k.contains("://")
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-@/:".contains(&b))
}

/// A dotenv value: `"..."` with escapes (and lines up to the closing quote), `'...'` as written, or bare
/// up to a ` #` comment. `None` for a quote never closed.
fn unquote(v: &str, more: &mut std::str::Lines<'_>) -> Option<Zeroizing<String>> {
    if let Some(inner) = v.strip_prefix('\'') {
        return inner
            .strip_suffix('\'')
            .map(|s| Zeroizing::new(s.to_string()));
    }
    let Some(mut rest) = v.strip_prefix('"') else {
        let bare = v.split(" #").next().unwrap_or(v).trim_end();
        return Some(Zeroizing::new(bare.to_string()));
    };
    let mut out = Zeroizing::new(String::new());
    loop {
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return Some(out),
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some(c) => out.push(c),
                    None => {}
                },
                c => out.push(c),
            }
        }
        out.push('\n');
        rest = more.next()?;
    }
}

/// A YAML mapping or sequence. Aliases are not expanded (what they repeat was seen where it was
/// anchored), so a "billion laughs" document costs what its text costs.
fn yaml(text: &str) -> Option<Fields> {
    use saphyr_parser::Event;
    enum Node {
        Map {
            key: Zeroizing<String>,
            want_key: bool,
        },
        Seq {
            key: Zeroizing<String>,
        },
    }
    fn flip(stack: &mut [Node]) {
        if let Some(Node::Map { want_key, .. }) = stack.last_mut() {
            *want_key = !*want_key;
        }
    }
    let mut found = Fields::default();
    let mut stack: Vec<Node> = Vec::new();
    let mut seen_node = false;
    for event in saphyr_parser::Parser::new_from_str(text) {
        let (event, _) = event.ok()?;
        let container = matches!(event, Event::MappingStart(..) | Event::SequenceStart(..));
        if !seen_node && matches!(event, Event::Scalar(..) | Event::Alias(..)) {
            return None;
        }
        seen_node |= container;
        match event {
            Event::Scalar(v, ..) => {
                match stack.last_mut() {
                    Some(Node::Map {
                        key,
                        want_key: want @ true,
                    }) => {
                        **key = v.to_string();
                        *want = false;
                    }
                    Some(Node::Map { key, want_key }) => {
                        found.add(key, &v);
                        *want_key = true;
                    }
                    Some(Node::Seq { key }) => found.add(key, &v),
                    None => {}
                }
                if let Cow::Owned(mut v) = v {
                    v.zeroize();
                }
            }
            Event::Alias(_) => flip(&mut stack),
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let key = match stack.last() {
                    Some(Node::Map {
                        key,
                        want_key: false,
                    })
                    | Some(Node::Seq { key }) => key.clone(),
                    _ => Zeroizing::new(String::new()),
                };
                stack.push(match event {
                    Event::MappingStart(..) => Node::Map {
                        key,
                        want_key: true,
                    },
                    _ => Node::Seq { key },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                flip(&mut stack);
            }
            _ => {}
        }
    }
    seen_node.then_some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(value: &str) -> Vec<String> {
        fields(value.as_bytes())
            .iter()
            .map(|f| String::from_utf8(f.to_vec()).expect("utf-8 fields"))
            .collect()
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    #[test]
    fn json_leaves_long_numbers_and_docker_auth() {
        let auth = base64::engine::general_purpose::STANDARD.encode("robot:docker-pass-1234");
        let config = format!(
            r#"{{"auths": {{"registry.example.com": {{"auth": "{auth}"}}}},
                "credsStore": "desktop", "pin": 1234, "account": 123456789012,
                "token_uri": "https://oauth2.example.com/token", "type": "service_account",
                "key": "-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----\n"}}"#
        );
        // serde_json's objects are sorted by key, so the order says nothing.
        assert_eq!(
            sorted(strings(&config)),
            sorted(
                [
                    "docker-pass-1234",
                    "robot:docker-pass-1234",
                    auth.as_str(),
                    "123456789012",
                    "-----BEGIN PRIVATE KEY-----\nMIIEv\n-----END PRIVATE KEY-----\n",
                ]
                .map(String::from)
                .to_vec()
            )
        );
    }

    #[test]
    fn yaml_mappings_sequences_and_anchors() {
        let doc = "registry:\n  user: deploy\n  password: yaml-pw-0123\n  tokens:\n    - first-token-1\n    - &t second-token-2\n  again: *t\n  ? [complex, key]\n  : complex-value-9\n";
        assert_eq!(
            strings(doc),
            [
                "yaml-pw-0123",
                "first-token-1",
                "second-token-2",
                "complex-value-9"
            ]
        );
        let laughs = "a: &a [\"lol-lol-lol-1\",\"lol-lol-lol-1\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n";
        assert_eq!(strings(laughs), ["lol-lol-lol-1"]);
    }

    #[test]
    fn dotenv_with_export_quotes_comments_and_multiline_values() {
        let env = "# app\nexport DB_USER=app\nDB_PASSWORD=\"dotenv \\\"pw\\\" 1\" # the db\nAPI_KEY='single-quoted-1'\nPLAIN=bare-value-123 # comment\nPEM=\"-----BEGIN X-----\nline-of-key-material\n-----END X-----\"\nREF=${OTHER_SECRET}\n";
        assert_eq!(
            strings(env),
            [
                "dotenv \"pw\" 1",
                "single-quoted-1",
                "bare-value-123",
                "-----BEGIN X-----\nline-of-key-material\n-----END X-----",
            ]
        );
    }

    #[test]
    fn netrc_tokens_on_one_line_or_many() {
        let one = "machine api.example.com login robot-user-1 password netrc-pw-1234";
        assert_eq!(strings(one), ["robot-user-1", "netrc-pw-1234"]);
        let many = "# creds\nmachine a.example\n  login bot\n  password \"quoted pw 42\"\n\ndefault\n  login anonymous\n  password fallback-pw-9\nmacdef init\n  cd /pub\n";
        assert_eq!(strings(many), ["quoted pw 42", "fallback-pw-9"]);
    }

    #[test]
    fn npmrc_tokens_and_base64_auth_and_password() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let npmrc = format!(
            "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken=npm_TOKEN0123456789\n//npm.example.com/:_auth={}\n//npm.example.com/:_password={}\n//other.example/:_authToken=${{NPM_TOKEN}}\nalways-auth=true\n",
            b64("ci:npm-basic-pass-1"),
            b64("npm-password-2")
        );
        let f = strings(&npmrc);
        assert_eq!(
            f,
            [
                "npm_TOKEN0123456789",
                "npm-basic-pass-1",
                "ci:npm-basic-pass-1",
                &b64("ci:npm-basic-pass-1"),
                "npm-password-2",
                &b64("npm-password-2"),
            ]
        );
    }

    #[test]
    fn pypirc_sections_colons_and_continuations() {
        let pypirc = "[distutils]\nindex-servers =\n    pypi\n    private-index\n\n[pypi]\nusername = __token__\npassword = pypi-AgEIcHlwaS5vcmc\n\n[private-index]\nrepository: https://pypi.example.com/simple\nusername: someone\npassword: private-pw-77\n";
        assert_eq!(strings(pypirc), ["pypi-AgEIcHlwaS5vcmc", "private-pw-77"]);
    }

    #[test]
    fn plain_tokens_have_no_fields() {
        for token in [
            "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
            "dG9rZW4tdmFsdWUtd2l0aC1wYWRkaW5n==",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----",
            "correct horse battery staple",
            "12345678901234567890",
            "\"a quoted string token\"",
            "postgres://user:pw@db.example/app",
        ] {
            assert!(strings(token).is_empty(), "{token}: {:?}", strings(token));
        }
    }

    /// Nothing panics, whatever the bytes; deep nesting and broken syntax of every format included.
    #[test]
    fn odd_inputs_never_panic() {
        let deep_json = "[".repeat(10_000);
        let deep_yaml = format!("{}x{}", "[".repeat(5_000), "]".repeat(5_000));
        let deep_map = (0..2_000)
            .map(|i| format!("{}k: \n", " ".repeat(i)))
            .collect::<String>();
        let odd: Vec<Vec<u8>> = [
            "",
            "{",
            "}",
            "[]",
            "{}",
            "\"",
            "=",
            "==",
            "a=",
            "=b",
            "a=\"",
            "a='",
            "a=\"\\",
            "[",
            "[]\n",
            "[x]\n y",
            "machine",
            "machine h login",
            "default password",
            "macdef",
            "- ",
            ": ",
            "? ",
            "*a",
            "&a",
            "!!binary x",
            "%YAML 1.2\n---\n",
            "---\n...\n---",
            "a: *unknown",
            "\t",
            "{\"auth\": \"%%%\"}",
            "{\"auth\": \"\"}",
            "{\"_auth\": \"Og==\"}",
            "k: [a, {b: c}]",
            "é=ü",
            "\u{feff}{\"a\":\"b\"}",
            "machine \"unterminated",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .chain([
            deep_json.into_bytes(),
            deep_yaml.into_bytes(),
            deep_map.into_bytes(),
            vec![0xff, 0xfe, b'=', 0x80],
            (0..=255u8).collect(),
        ])
        .collect();
        for input in &odd {
            let _ = fields(input);
        }
    }
}
