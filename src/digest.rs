//! SHA-256 digests and the canonical, versioned byte encoding that node digests and cache keys hash.
//!
//! The encoding is hand-written rather than derived from serde so that a field rename, a map ordering or a
//! serde upgrade can never change a digest silently: every value is tagged and length-prefixed.

use sha2::{Digest as _, Sha256};
use std::fmt;

/// A `sha256:<hex>` content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Digest(String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }
    pub fn from_hasher(h: Sha256) -> Digest {
        // By hand rather than `format!` and `hex::encode`: graph building makes one per node.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = Vec::with_capacity(71);
        s.extend_from_slice(b"sha256:");
        for b in h.finalize() {
            s.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
        Digest(String::from_utf8(s).expect("hex digits are ASCII"))
    }
    /// Accepts only `sha256:` followed by 64 lower-case hex digits.
    pub fn parse(s: &str) -> Option<Digest> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Digest(s.to_string()))
    }
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds the canonical encoding. Each call appends a one-byte tag and, for variable data, a length.
pub struct Encoder {
    hasher: Sha256,
    /// Small fields are gathered here and hashed in one call: hashing many few-byte slices one call
    /// each costs more than the hashing itself (the same bytes reach the hasher either way).
    buf: Vec<u8>,
}

/// Fields longer than this are hashed straight from the caller's slice (file contents), never copied.
const BUFFERED: usize = 1024;

impl Encoder {
    /// `domain` names both what is hashed and the encoding version, e.g. `kiln/def/v1`.
    pub fn new(domain: &str) -> Encoder {
        let mut e = Encoder {
            hasher: Sha256::new(),
            buf: Vec::with_capacity(512),
        };
        e.str(domain);
        e
    }
    fn raw(&mut self, tag: u8, bytes: &[u8]) -> &mut Self {
        self.buf.push(tag);
        self.buf
            .extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        if bytes.len() > BUFFERED {
            self.hasher.update(&self.buf);
            self.buf.clear();
            self.hasher.update(bytes);
        } else {
            self.buf.extend_from_slice(bytes);
        }
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.raw(b's', s.as_bytes())
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.raw(b'b', b)
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(b'u', &v.to_le_bytes())
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.raw(b'?', &[u8::from(v)])
    }
    pub fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(s) => self.raw(b'o', &[1]).str(s),
            None => self.raw(b'o', &[0]),
        }
    }
    /// Starts a list of `len` items; the items follow.
    pub fn list(&mut self, len: usize) -> &mut Self {
        self.raw(b'l', &(len as u64).to_le_bytes())
    }
    pub fn strs<S: AsRef<str>>(&mut self, items: &[S]) -> &mut Self {
        self.list(items.len());
        for s in items {
            self.str(s.as_ref());
        }
        self
    }
    pub fn pairs(&mut self, items: &[(String, String)]) -> &mut Self {
        self.list(items.len());
        for (k, v) in items {
            self.str(k).str(v);
        }
        self
    }
    pub fn digest(&mut self, d: &Digest) -> &mut Self {
        self.raw(b'd', d.as_str().as_bytes())
    }
    pub fn finish(mut self) -> Digest {
        self.hasher.update(&self.buf);
        Digest::from_hasher(self.hasher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_keep_fields_apart() {
        let a = {
            let mut e = Encoder::new("t");
            e.str("ab").str("c");
            e.finish()
        };
        let b = {
            let mut e = Encoder::new("t");
            e.str("a").str("bc");
            e.finish()
        };
        assert_ne!(a, b);
    }

    #[test]
    fn long_fields_hash_as_short_ones_do() {
        let long = vec![7u8; BUFFERED * 3];
        let mut e = Encoder::new("t");
        e.str("a").bytes(&long).str("b");
        let mut h = Sha256::new();
        for (tag, field) in [(b's', &b"t"[..]), (b's', b"a"), (b'b', &long), (b's', b"b")] {
            h.update([tag]);
            h.update((field.len() as u64).to_le_bytes());
            h.update(field);
        }
        assert_eq!(e.finish(), Digest::from_hasher(h));
    }

    #[test]
    fn parse_is_strict() {
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(64))).is_some());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(Digest::parse("sha256:../../etc").is_none());
    }
}
