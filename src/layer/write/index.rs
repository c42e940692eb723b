//! A layer tar's index: SHA-256's state at the start of each of its entries and what each entry was
//! made of, so that the digest of a later tar whose first entries are the same resumes where they end
//! instead of reading their files again (a rebuilt COPY layer whose changed file comes late in it is
//! hashed from that file on).
//!
//! An entry is the same when its header bytes and PAX records are and, for a file with content, when
//! that content is the very same inode: kiln's snapshots hard-link immutable file objects
//! (`store/files/`), and an index is only used while the snapshot it was made from exists, so its
//! inodes cannot have been reused for other content. Every entry starts on a 512-byte boundary, so
//! SHA-256 is between blocks there and its state alone goes on from it.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use crate::digest::Resumable;

const MAGIC: &[u8; 8] = b"kiln-ti1";
/// Key, offset and state, as `to_bytes` writes them.
const MARK_LEN: usize = 16 + 8 + 32;
/// The key of the mark at the tar's end (before its closing zero blocks). Entry keys are truncated
/// SHA-256 digests, which this one is not likely to be.
const END: [u8; 16] = *b"\0kiln-tar-end\0\0\0";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    key: [u8; 16],
    offset: u64,
    state: [u32; 8],
}

/// The index of one layer tar: a mark per entry, in order, then the end's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TarIndex {
    marks: Vec<Mark>,
}

impl TarIndex {
    /// Its bytes, with a CRC-32 trailer (`from_bytes` refuses a torn or altered index).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.marks.len() * MARK_LEN + 4);
        out.extend_from_slice(MAGIC);
        for m in &self.marks {
            out.extend_from_slice(&m.key);
            out.extend_from_slice(&m.offset.to_le_bytes());
            out.extend(m.state.iter().flat_map(|w| w.to_le_bytes()));
        }
        out.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
        out
    }

    /// The index `to_bytes` wrote; `None` for anything else: a bad trailer, offsets that do not grow
    /// in whole tar blocks, or no end mark last.
    pub fn from_bytes(bytes: &[u8]) -> Option<TarIndex> {
        let (body, crc) = bytes.split_last_chunk::<4>()?;
        let marks = body.strip_prefix(MAGIC)?;
        if crc32fast::hash(body) != u32::from_le_bytes(*crc)
            || !marks.len().is_multiple_of(MARK_LEN)
        {
            return None;
        }
        let marks: Vec<Mark> = marks.chunks_exact(MARK_LEN).map(mark_of).collect();
        let grows = marks.windows(2).all(|w| w[0].offset < w[1].offset);
        let aligned = marks.iter().all(|m| m.offset.is_multiple_of(512));
        let ended = marks.last().is_some_and(|m| m.key == END);
        (grows && aligned && ended).then_some(TarIndex { marks })
    }
}

fn mark_of(bytes: &[u8]) -> Mark {
    let (key, rest) = bytes.split_at(16);
    let (offset, state) = rest.split_at(8);
    let mut words = [0u32; 8];
    for (w, b) in words.iter_mut().zip(state.chunks_exact(4)) {
        *w = u32::from_le_bytes(b.try_into().expect("four bytes"));
    }
    Mark {
        key: key.try_into().expect("16 bytes"),
        offset: u64::from_le_bytes(offset.try_into().expect("eight bytes")),
        state: words,
    }
}

/// The key of one entry: its header, its PAX records and its content's inode (`None`: no content).
pub(super) fn entry_key(
    header: &[u8],
    pax: &[(Vec<u8>, Vec<u8>)],
    inode: Option<(u64, u64)>,
) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(header);
    for (key, value) in pax {
        h.update((key.len() as u64).to_le_bytes());
        h.update(key);
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    }
    match inode {
        Some((dev, ino)) => {
            h.update([1]);
            h.update(dev.to_le_bytes());
            h.update(ino.to_le_bytes());
        }
        None => h.update([0]),
    }
    let digest = h.finalize();
    digest[..16].try_into().expect("16 bytes")
}

/// The tar's bytes into SHA-256, whose state an indexed walk reads and sets at entry starts.
#[derive(Default)]
pub(super) struct Hashing(pub(super) Resumable);

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What an indexed walk keeps: the earlier tar's index while every entry so far matched it (and so
/// nothing was hashed yet), and the new tar's own.
pub(super) struct Indexer<'a> {
    earlier: Option<&'a TarIndex>,
    matching: bool,
    offset: u64,
    made: TarIndex,
}

impl<'a> Indexer<'a> {
    pub(super) fn new(earlier: Option<&'a TarIndex>) -> Indexer<'a> {
        Indexer {
            earlier,
            matching: earlier.is_some(),
            offset: 0,
            made: TarIndex::default(),
        }
    }

    /// Whether it resumes from an earlier tar (whose shared entries are then not read at all).
    pub(super) fn resumes(&self) -> bool {
        self.earlier.is_some()
    }

    /// At the start of an entry of `len` bytes: `true` when the earlier tar holds it at this very
    /// offset (it is neither read nor hashed); else the hasher is made ready for it, resumed from the
    /// earlier tar's state here if every entry before matched.
    pub(super) fn entry(&mut self, key: [u8; 16], len: u64, hasher: &mut Resumable) -> bool {
        if self.matching {
            let i = self.made.marks.len();
            let held = self.earlier.and_then(|e| e.marks.get(i));
            if let Some(m) = held.filter(|m| m.key == key && m.offset == self.offset) {
                self.made.marks.push(*m);
                self.offset += len;
                return true;
            }
            self.resume(hasher);
        }
        self.mark(key, hasher);
        self.offset += len;
        false
    }

    /// The new tar's index, once every entry is written (before the closing zero blocks).
    pub(super) fn finish(mut self, hasher: &mut Resumable) -> TarIndex {
        if self.matching {
            self.resume(hasher);
        }
        self.mark(END, hasher);
        self.made
    }

    /// Hashing starts: from the earlier tar's state after the entries that matched.
    fn resume(&mut self, hasher: &mut Resumable) {
        self.matching = false;
        let i = self.made.marks.len();
        if let Some(m) = self.earlier.and_then(|e| e.marks.get(i))
            && i > 0
        {
            // The earlier index ends with a mark, so one is there for every count of matched entries,
            // at the offset they end at.
            debug_assert_eq!(m.offset, self.offset);
            *hasher = Resumable::resumed(m.state, m.offset);
        }
    }

    fn mark(&mut self, key: [u8; 16], hasher: &Resumable) {
        debug_assert_eq!(hasher.hashed(), self.offset, "an entry's offset");
        let state = hasher
            .state()
            .expect("entries start between SHA-256 blocks");
        self.made.marks.push(Mark {
            key,
            offset: self.offset,
            state,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_survives_its_bytes_and_refuses_damage() {
        let mut hasher = Resumable::default();
        let mut ix = Indexer::new(None);
        for (n, len) in [(1u8, 1024u64), (2, 512)] {
            assert!(!ix.entry([n; 16], len, &mut hasher));
            hasher.update(&vec![n; len as usize]);
        }
        let index = ix.finish(&mut hasher);
        let bytes = index.to_bytes();
        assert_eq!(TarIndex::from_bytes(&bytes), Some(index));
        for cut in [0, 4, 12, bytes.len() - 1] {
            assert_eq!(TarIndex::from_bytes(&bytes[..cut]), None, "{cut}");
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert_eq!(TarIndex::from_bytes(&flipped), None);
    }
}
