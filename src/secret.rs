//! Secret values: bytes that live only in zeroizing memory and can never be printed.
//!
//! There is deliberately no `Debug`, `Display`, `Serialize` or `Clone` on `SecretValue`, so the compiler
//! refuses any attempt to log, format, serialize or casually copy one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use zeroize::Zeroizing;

/// A secret's bytes, wiped from memory when dropped.
///
/// It cannot be printed, formatted, serialized or cloned; each of these is a compile error:
///
/// ```compile_fail
/// let s = kiln::secret::SecretValue::new(zeroize::Zeroizing::new(b"pw".to_vec()));
/// println!("{s:?}");
/// ```
/// ```compile_fail
/// let s = kiln::secret::SecretValue::new(zeroize::Zeroizing::new(b"pw".to_vec()));
/// println!("{s}");
/// ```
/// ```compile_fail
/// let s = kiln::secret::SecretValue::new(zeroize::Zeroizing::new(b"pw".to_vec()));
/// let _ = serde_json::to_string(&s);
/// ```
/// ```compile_fail
/// let s = kiln::secret::SecretValue::new(zeroize::Zeroizing::new(b"pw".to_vec()));
/// let _t = s.clone();
/// ```
/// The only way to the bytes is `expose`, which the executor calls to hand them to the step:
/// ```
/// let s = kiln::secret::SecretValue::new(zeroize::Zeroizing::new(b"pw".to_vec()));
/// assert_eq!(s.expose(), b"pw");
/// ```
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> SecretValue {
        SecretValue(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// Where a `--secret` comes from; this (never the value) is what may be shown to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// The secrets given on the command line, loaded on demand by id.
#[derive(Default)]
pub struct SecretStore {
    sources: BTreeMap<String, SecretSource>,
}

impl SecretStore {
    pub fn insert(&mut self, id: String, source: SecretSource) {
        self.sources.insert(id, source);
    }
    pub fn contains(&self, id: &str) -> bool {
        self.sources.contains_key(id)
    }
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.sources.keys().map(String::as_str)
    }
    /// Reads the secret now. Errors name the id and the source, never the bytes.
    pub fn load(&self, id: &str) -> Result<Option<SecretValue>, String> {
        let Some(source) = self.sources.get(id) else {
            return Ok(None);
        };
        let bytes = match source {
            SecretSource::File(path) => std::fs::read(path)
                .map_err(|e| format!("secret `{id}`: cannot read {}: {e}", path.display()))?,
            SecretSource::Env(var) => std::env::var_os(var)
                .ok_or_else(|| format!("secret `{id}`: environment variable `{var}` is not set"))?
                .into_encoded_bytes(),
        };
        Ok(Some(SecretValue(Zeroizing::new(bytes))))
    }
}

/// Replaces secret values in a step's output with `***` before it reaches any progress view or log.
///
/// Besides each whole value, every line of a multi-line value (four bytes or more) is a pattern, since
/// a step may print only part of, say, a JSON credentials file.
pub struct Scrubber {
    needles: Vec<Zeroizing<Vec<u8>>>,
}

impl Scrubber {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a SecretValue>) -> Scrubber {
        let mut needles: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for v in values {
            let whole = v.expose().trim_ascii_end();
            if !whole.is_empty() {
                needles.push(Zeroizing::new(whole.to_vec()));
            }
            for line in whole.split(|&b| b == b'\n').map(<[u8]>::trim_ascii) {
                if line.len() >= 4 && line.len() < whole.len() {
                    needles.push(Zeroizing::new(line.to_vec()));
                }
            }
        }
        // Longest first, so a whole value is replaced before its fragments.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Scrubber { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    pub fn scrub(&self, text: &[u8]) -> Vec<u8> {
        let mut out = text.to_vec();
        for needle in &self.needles {
            let mut i = 0;
            let mut next = Vec::with_capacity(out.len());
            while i < out.len() {
                if out[i..].starts_with(needle) {
                    next.extend_from_slice(b"***");
                    i += needle.len();
                } else {
                    next.push(out[i]);
                    i += 1;
                }
            }
            out = next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> SecretValue {
        SecretValue::new(Zeroizing::new(s.as_bytes().to_vec()))
    }

    #[test]
    fn scrubs_whole_values_and_lines_of_multiline_ones() {
        let a = value("hunter2\n");
        let b = value("{\n  \"password\": \"pw-123456\"\n}\n");
        let s = Scrubber::new([&a, &b]);
        let out = s.scrub(b"token=hunter2 and \"password\": \"pw-123456\" end");
        assert_eq!(String::from_utf8(out).unwrap(), "token=*** and *** end");
    }
}
