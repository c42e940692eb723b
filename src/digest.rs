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
        short(&self.0)
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

/// The first 12 hex digits of a digest's text (`sha256:<hex>`), as a graph shows it.
pub fn short(text: &str) -> &str {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    hex.get(..12).unwrap_or(hex)
}

/// Builds the canonical encoding. Each call appends a one-byte tag and, for variable data, a length.
pub struct Encoder {
    hasher: Sha256,
    /// Small fields are gathered here and hashed in one call: hashing many few-byte slices one call
    /// each costs more than the hashing itself (the same bytes reach the hasher either way).
    buf: Vec<u8>,
    /// A copy of what is encoded since `keep` (`kept`), when asked.
    kept: Option<Vec<u8>>,
}

/// Fields longer than this are hashed straight from the caller's slice (file contents), never copied.
const BUFFERED: usize = 1024;

impl Encoder {
    /// `domain` names both what is hashed and the encoding version, e.g. `kiln/def/v1`.
    pub fn new(domain: &str) -> Encoder {
        let mut e = Encoder {
            hasher: Sha256::new(),
            buf: Vec::with_capacity(512),
            kept: None,
        };
        e.str(domain);
        e
    }
    fn raw(&mut self, tag: u8, bytes: &[u8]) -> &mut Self {
        if let Some(k) = &mut self.kept {
            k.push(tag);
            k.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            k.extend_from_slice(bytes);
        }
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
        self.digest_text(d.as_str())
    }
    /// `digest` of a digest kept as its text (`sha256:<hex>`).
    pub fn digest_text(&mut self, d: &str) -> &mut Self {
        self.raw(b'd', d.as_bytes())
    }
    /// `new`, keeping a copy of everything encoded, domain included (`kept`).
    pub fn new_kept(domain: &str) -> Encoder {
        let mut e = Encoder {
            hasher: Sha256::new(),
            buf: Vec::with_capacity(512),
            kept: Some(Vec::new()),
        };
        e.str(domain);
        e
    }
    /// The bytes `fill` encodes, without a domain: what follows a `Midstate`.
    pub fn bytes_of(fill: impl FnOnce(&mut Encoder)) -> Vec<u8> {
        let mut e = Encoder {
            hasher: Sha256::new(),
            buf: Vec::new(),
            kept: Some(Vec::new()),
        };
        fill(&mut e);
        e.kept()
    }
    /// What a `new_kept` encoder encoded so far: a `Midstate` of it hashes the rest later.
    pub fn kept(&mut self) -> Vec<u8> {
        self.kept.take().unwrap_or_default()
    }
    pub fn finish(mut self) -> Digest {
        self.hasher.update(&self.buf);
        Digest::from_hasher(self.hasher)
    }
}

/// SHA-256 part-way through a message: the state after its whole 64-byte blocks (32 bytes, big
/// endian), the length so far (8 bytes, little endian) and the bytes after those blocks, as one byte
/// string. What a digest keeps to be finished later with other inputs, without its message's start
/// (a graph node's op, then its inputs' digests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Midstate(Vec<u8>);

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

impl Midstate {
    /// The state after `prefix`.
    pub fn of(prefix: &[u8]) -> Midstate {
        let whole = prefix.len() / 64 * 64;
        let mut state = H0;
        compress(&mut state, &prefix[..whole]);
        let mut bytes = Vec::with_capacity(40 + prefix.len() - whole);
        bytes.extend(state.iter().flat_map(|w| w.to_be_bytes()));
        bytes.extend_from_slice(&(prefix.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&prefix[whole..]);
        Midstate(bytes)
    }

    /// Its byte string (`finish_bytes` takes it back).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `finish` of a midstate's byte string; `None` when it is not one.
    pub fn finish_bytes(bytes: &[u8], rest: &[u8]) -> Option<Digest> {
        let (state, more) = bytes.split_first_chunk::<32>()?;
        let (len, tail) = more.split_first_chunk::<8>()?;
        if tail.len() >= 64 {
            return None;
        }
        let mut words = [0u32; 8];
        for (w, b) in words.iter_mut().zip(state.chunks_exact(4)) {
            *w = u32::from_be_bytes(b.try_into().expect("four bytes"));
        }
        Some(finish(words, u64::from_le_bytes(*len), tail, rest))
    }

    /// The digest of the prefix followed by `rest`.
    pub fn finish(&self, rest: &[u8]) -> Digest {
        Midstate::finish_bytes(&self.0, rest).expect("made by `of`")
    }
}

/// SHA-256's last blocks: the bytes after the whole blocks so far, `rest`, and the padding (a 1 bit,
/// zeros, the length in bits).
fn finish(mut state: [u32; 8], len: u64, tail: &[u8], rest: &[u8]) -> Digest {
    let mut last = Vec::with_capacity(tail.len() + rest.len() + 72);
    last.extend_from_slice(tail);
    last.extend_from_slice(rest);
    let bits = (len + rest.len() as u64) * 8;
    last.push(0x80);
    while last.len() % 64 != 56 {
        last.push(0);
    }
    last.extend_from_slice(&bits.to_be_bytes());
    compress(&mut state, &last);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in state.iter().flat_map(|w| w.to_be_bytes()) {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    Digest(s)
}

/// Runs SHA-256's compression over `bytes`, whole 64-byte blocks.
fn compress(state: &mut [u32; 8], bytes: &[u8]) {
    let (blocks, rest) = bytes.as_chunks::<64>();
    debug_assert!(rest.is_empty(), "whole blocks only");
    sha2_blocks::block_api::compress256(state, blocks);
}

/// SHA-256 over a stream whose state can be taken wherever the bytes so far are whole 64-byte blocks,
/// and resumed there later: a layer tar's digest, resumed where an earlier tar sharing its first
/// entries left off (`layer::TarIndex`).
#[derive(Clone)]
pub struct Resumable {
    state: [u32; 8],
    /// Bytes hashed so far, `tail` included.
    len: u64,
    /// The bytes after the last whole block (fewer than 64).
    tail: Vec<u8>,
}

impl Default for Resumable {
    fn default() -> Resumable {
        Resumable::resumed(H0, 0)
    }
}

impl Resumable {
    /// Hashing goes on from `state`, the state after `len` bytes (a multiple of 64).
    pub fn resumed(state: [u32; 8], len: u64) -> Resumable {
        debug_assert!(len.is_multiple_of(64), "a state between blocks");
        Resumable {
            state,
            len,
            tail: Vec::with_capacity(64),
        }
    }

    /// The state after the bytes so far, when they are whole blocks.
    pub fn state(&self) -> Option<[u32; 8]> {
        self.tail.is_empty().then_some(self.state)
    }

    /// How many bytes were hashed (from the message's start, resumed ones included).
    pub fn hashed(&self) -> u64 {
        self.len
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if !self.tail.is_empty() {
            let take = (64 - self.tail.len()).min(bytes.len());
            self.tail.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.tail.len() < 64 {
                return;
            }
            compress(&mut self.state, &self.tail);
            self.tail.clear();
        }
        let whole = bytes.len() / 64 * 64;
        compress(&mut self.state, &bytes[..whole]);
        self.tail.extend_from_slice(&bytes[whole..]);
    }

    pub fn finish(self) -> Digest {
        finish(self.state, self.len, &self.tail, &[])
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
    fn a_midstate_finishes_as_the_whole_message_hashes() {
        let message: Vec<u8> = (0..300u32).map(|i| (i * 7 % 251) as u8).collect();
        for split in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 200, 300] {
            for end in [split, split + 1, split + 8, (split + 64).min(300), 300] {
                let end = end.min(300);
                let (prefix, rest) = message[..end].split_at(split.min(end));
                let mid = Midstate::of(prefix);
                assert_eq!(
                    mid.finish(rest),
                    Digest::of(&message[..end]),
                    "{split} {end}"
                );
            }
        }
    }

    /// Written in pieces of every size, and resumed from the state at any block boundary, the stream
    /// hashes as the whole message does.
    #[test]
    fn a_resumed_stream_hashes_as_the_whole_message() {
        let message: Vec<u8> = (0..1000u32).map(|i| (i * 13 % 251) as u8).collect();
        for piece in [1, 7, 63, 64, 65, 200, 1000] {
            let mut h = Resumable::default();
            let mut states = vec![(0, h.state().unwrap())];
            for chunk in message.chunks(piece) {
                h.update(chunk);
                if let Some(state) = h.state() {
                    states.push((h.hashed(), state));
                }
            }
            assert_eq!(h.hashed(), 1000);
            assert_eq!(h.clone().finish(), Digest::of(&message), "{piece}");
            for (len, state) in states {
                let mut resumed = Resumable::resumed(state, len);
                resumed.update(&message[len as usize..]);
                assert_eq!(resumed.finish(), Digest::of(&message), "{piece} {len}");
            }
        }
    }

    #[test]
    fn parse_is_strict() {
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(64))).is_some());
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(Digest::parse("sha256:../../etc").is_none());
    }
}
