//! Finding secrets in step output, also wrapped over lines and split between the chunks it arrives in.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use super::{Encoding, Scrubber};

/// A prefix of a secret at the end of a chunk is held back from this many bytes on: shorter ones are
/// common by chance (a line ending in a hex digit), and what follows them is still found (`ScrubStream`).
const HOLD_MIN: usize = 4;

/// Text and the same text without whitespace, where wrapped encodings are whole again.
pub(super) struct View<'a> {
    text: &'a [u8],
    squeezed: Zeroizing<Vec<u8>>,
    /// Where each byte of `squeezed` is in `text`.
    at: Vec<usize>,
}

impl<'a> View<'a> {
    pub(super) fn new(text: &'a [u8]) -> View<'a> {
        let mut squeezed = Zeroizing::new(Vec::with_capacity(text.len()));
        let mut at = Vec::with_capacity(text.len());
        for (i, &b) in text.iter().enumerate() {
            if !b.is_ascii_whitespace() {
                squeezed.push(b);
                at.push(i);
            }
        }
        View { text, squeezed, at }
    }
}

impl Scrubber {
    /// Which bytes of the text belong to a secret. In a wrapped encoding the line breaks stay, so the
    /// lines around it keep their shape.
    pub(super) fn mask(&self, view: &View) -> Vec<bool> {
        let text = view.text;
        let mut mask = vec![false; text.len()];
        for (encoding, needle) in &self.needles {
            for start in overlapping(text, needle) {
                mask[start..start + needle.len()].fill(true);
            }
            if *encoding == Encoding::Raw {
                continue;
            }
            for start in overlapping(&view.squeezed, needle) {
                let range = view.at[start]..view.at[start + needle.len() - 1] + 1;
                for i in range {
                    mask[i] |= text[i] != b'\n';
                }
            }
        }
        mask
    }

    /// Where the text could end in the first part of a secret whose rest is still to come: the start of
    /// the line holding the earliest such part, or the end of the text.
    fn hold_from(&self, view: &View, from: usize) -> usize {
        let text = view.text;
        let mut hold = text.len();
        for (encoding, needle) in &self.needles {
            let k = overlap(text, needle);
            if k >= HOLD_MIN {
                hold = hold.min(text.len() - k);
            }
            let k = overlap(&view.squeezed, needle);
            if *encoding != Encoding::Raw && k >= HOLD_MIN {
                hold = hold.min(view.at[view.squeezed.len() - k]);
            }
        }
        if hold == text.len() {
            return hold;
        }
        // What was shown already stays shown; the search with the next chunk covers it.
        let hold = hold.max(from);
        // Whole lines, so progress never shows one in two pieces, unless the line is beyond reason.
        let line = text[from..hold]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(from, |i| from + i + 1);
        if hold - line > (1 << 16) { hold } else { line }
    }
}

/// Every place `needle` starts in `text`, overlapping ones too: a needle that repeats itself (`abab`, a run
/// of one byte) found only where non-overlapping matches fall would leave a tail of the secret unmasked
/// next to `***`, and the next chunk's bytes could complete it.
fn overlapping<'t>(text: &'t [u8], needle: &'t [u8]) -> impl Iterator<Item = usize> + 't {
    let finder = memchr::memmem::Finder::new(needle);
    let mut from = 0;
    std::iter::from_fn(move || {
        let at = from + finder.find(text.get(from..)?)?;
        from = at + 1;
        Some(at)
    })
}

/// The length of the longest proper prefix of `needle` that `text` ends with.
fn overlap(text: &[u8], needle: &[u8]) -> usize {
    let (Some(&last), Some(max)) = (text.last(), needle.len().checked_sub(1)) else {
        return 0;
    };
    let max = max.min(text.len());
    memchr::memrchr_iter(last, &needle[..max])
        .map(|i| i + 1)
        .find(|&k| text.ends_with(&needle[..k]))
        .unwrap_or(0)
}

/// `text[range]` with each run of masked bytes replaced by `***`.
pub(super) fn render(text: &[u8], mask: &[bool], range: Range<usize>) -> Vec<u8> {
    let mut out = Vec::with_capacity(range.len());
    for i in range {
        if !mask[i] {
            out.push(text[i]);
        } else if i == 0 || !mask[i - 1] || out.is_empty() {
            out.extend_from_slice(b"***");
        }
    }
    out
}

/// A scrubber for output that arrives in chunks (a step's stdout as the executor reads it).
///
/// The end of a chunk that could be the first part of a secret (or of its encoding) is held back until
/// the next chunk shows whether it is, and the end of what was already shown is kept to search again
/// with the next chunk, so a secret split between chunks is found whole: what was shown of it is too
/// short to mean anything (under `HOLD_MIN` bytes) and the rest is replaced. `finish` gives what is
/// still held when the output ends.
pub struct ScrubStream {
    scrubber: Arc<Scrubber>,
    state: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// The end of what was shown, searched again with the next chunk.
    shown: Zeroizing<Vec<u8>>,
    /// Not shown yet.
    held: Zeroizing<Vec<u8>>,
}

impl ScrubStream {
    pub fn new(scrubber: Arc<Scrubber>) -> ScrubStream {
        ScrubStream {
            scrubber,
            state: Mutex::new(Pending::default()),
        }
    }

    /// The part of the output so far that can be shown now, scrubbed.
    pub fn push(&self, chunk: &[u8]) -> Vec<u8> {
        self.next(chunk, false)
    }

    /// The rest of the output, scrubbed.
    pub fn finish(&self) -> Vec<u8> {
        self.next(&[], true)
    }

    fn next(&self, chunk: &[u8], last: bool) -> Vec<u8> {
        let mut pending = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let from = pending.shown.len();
        let mut text = Zeroizing::new(Vec::with_capacity(from + pending.held.len() + chunk.len()));
        text.extend_from_slice(&pending.shown);
        text.extend_from_slice(&pending.held);
        text.extend_from_slice(chunk);
        let view = View::new(&text);
        let mask = self.scrubber.mask(&view);
        let hold = if last {
            text.len()
        } else {
            self.scrubber.hold_from(&view, from)
        };
        let out = render(&text, &mask, from..hold);
        pending.held = Zeroizing::new(text[hold..].to_vec());
        let keep = hold.min(2 * self.scrubber.longest + 16);
        pending.shown = Zeroizing::new(text[hold - keep..hold].to_vec());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretValue;
    use base64::Engine as _;

    fn scrubber(values: &[&str]) -> Arc<Scrubber> {
        let values: Vec<SecretValue> = values
            .iter()
            .map(|v| SecretValue::new(Zeroizing::new(v.as_bytes().to_vec())))
            .collect();
        Arc::new(Scrubber::new(&values))
    }

    fn wrap(s: &str, width: usize) -> String {
        s.as_bytes()
            .chunks(width)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect()
    }

    /// Feeds `text` in pieces cut at `cuts`, as the executor would, and returns what is shown.
    fn streamed(s: &Arc<Scrubber>, text: &str, cuts: &[usize]) -> String {
        let stream = ScrubStream::new(s.clone());
        let mut shown = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([text.len()].iter()) {
            shown.extend(stream.push(&text.as_bytes()[from..cut]));
            from = cut;
        }
        shown.extend(stream.finish());
        String::from_utf8(shown).unwrap()
    }

    const LONG: &str =
        "a-long-secret-value-that-base64-will-wrap-over-two-lines-of-output-0123456789x";

    #[test]
    fn encodings_are_scrubbed_raw_wrapped_and_at_every_alignment() {
        let s = scrubber(&[LONG]);
        let b64 = base64::engine::general_purpose::STANDARD;
        for prefix in ["", "x", "xy", "xyz"] {
            let text = format!("{prefix}{LONG}");
            for shown in [
                b64.encode(&text),
                wrap(&b64.encode(&text), 76),
                hex::encode(&text),
                hex::encode_upper(&text),
                wrap(&hex::encode(&text), 60),
            ] {
                let out = String::from_utf8(s.scrub(shown.as_bytes())).unwrap();
                assert!(out.contains("***"), "{out}");
                assert!(out.len() < 16 + 4 * out.lines().count(), "{out}");
            }
        }
        // Wrapped, the lines stay lines.
        let out = s.scrub(wrap(&b64.encode(LONG), 76).as_bytes());
        assert_eq!(String::from_utf8(out).unwrap(), "***\n***\n");
    }

    #[test]
    fn a_secret_split_between_chunks_is_still_scrubbed() {
        let s = scrubber(&[LONG, "short-pw1"]);
        let b64 = base64::engine::general_purpose::STANDARD;
        let texts = [
            format!("before\n{LONG}\nafter\n"),
            format!("before\n{}after\n", wrap(&b64.encode(LONG), 76)),
            format!("before\n{}after\n", wrap(&hex::encode(LONG), 60)),
            "x short-pw1 y\n".to_string(),
        ];
        for text in &texts {
            let whole = String::from_utf8(s.scrub(text.as_bytes())).unwrap();
            for cut in 1..text.len() {
                let out = streamed(&s, text, &[cut]);
                assert!(
                    !out.contains(LONG) && !out.contains("short-pw1"),
                    "cut at {cut}: {out}"
                );
                // Whatever the cut, no more than a few characters of the secret are ever shown.
                let visible = out.replace("***", "").replace(['\n'], "");
                let expected = whole.replace("***", "").replace(['\n'], "");
                assert!(
                    visible.len() <= expected.len() + HOLD_MIN,
                    "cut at {cut}: {out:?} against {whole:?}"
                );
            }
            // Cut at every line: exactly what scrubbing it whole shows.
            let lines: Vec<usize> = text.match_indices('\n').map(|(i, _)| i + 1).collect();
            assert_eq!(streamed(&s, text, &lines), whole);
        }
    }

    #[test]
    fn output_without_secrets_passes_unchanged_and_in_time() {
        let s = scrubber(&[LONG]);
        let stream = ScrubStream::new(s);
        for line in ["Setting up foo (1.2.3) ...\n", "deadbeef\n", "abc"] {
            assert_eq!(stream.push(line.as_bytes()), line.as_bytes());
        }
        assert!(stream.finish().is_empty());
    }

    #[test]
    fn the_start_of_a_secret_at_a_chunk_end_is_held_until_the_rest_comes() {
        let s = scrubber(&[LONG]);
        let stream = ScrubStream::new(s);
        let hexed = hex::encode(LONG);
        assert_eq!(stream.push(b"ok\n"), b"ok\n");
        assert_eq!(stream.push(&hexed.as_bytes()[..40]), b"");
        assert_eq!(
            stream.push(format!("{}\nnext\n", &hexed[40..]).as_bytes()),
            b"***\nnext\n"
        );
        assert_eq!(stream.push(b"tail 6162"), b"tail 6162");
        assert_eq!(stream.finish(), b"");
    }

    /// Random secrets and outputs over a small alphabet (so near-misses abound), cut at random: the
    /// whole secret is never shown, streamed or not. The fuzz target `secret` does the same on any bytes.
    #[test]
    fn no_cut_ever_shows_a_whole_secret() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let alphabet = b"ab=\n:YWJ6162 ";
        for _ in 0..500 {
            let secret: Vec<u8> = (0..4 + next(12))
                .map(|_| alphabet[next(alphabet.len())])
                .collect();
            let secret = secret.trim_ascii().to_vec();
            let s = scrubber(&[std::str::from_utf8(&secret).unwrap()]);
            let mut text: Vec<u8> = (0..next(200))
                .map(|_| alphabet[next(alphabet.len())])
                .collect();
            let at = next(text.len() + 1);
            let encoded = match next(3) {
                0 => secret.clone(),
                1 => hex::encode(&secret).into_bytes(),
                _ => base64::engine::general_purpose::STANDARD
                    .encode(&secret)
                    .into_bytes(),
            };
            text.splice(at..at, encoded);
            let text = String::from_utf8(text).unwrap();
            let mut cuts: Vec<usize> = (0..next(6)).map(|_| next(text.len() + 1)).collect();
            cuts.sort();
            let whole = String::from_utf8(s.scrub(text.as_bytes())).unwrap();
            let shown = streamed(&s, &text, &cuts);
            if secret.len() >= 4 {
                let secret = std::str::from_utf8(&secret).unwrap();
                for out in [&whole, &shown] {
                    assert!(
                        !out.contains(secret),
                        "{secret:?} in {text:?} cut at {cuts:?}: {out:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn overlap_finds_the_longest_prefix_at_the_end() {
        assert_eq!(overlap(b"xxabcab", b"abcabd"), 5);
        assert_eq!(overlap(b"xxab", b"abcabd"), 2);
        assert_eq!(overlap(b"abcabd", b"abcabd"), 0);
        assert_eq!(overlap(b"", b"abc"), 0);
        assert_eq!(overlap(b"a", b""), 0);
    }

    /// A secret that repeats itself is masked wherever it starts, so no piece of it is left beside `***`
    /// for the next chunk to complete (found by the `secret` fuzz target).
    #[test]
    fn a_self_overlapping_secret_is_masked_at_every_start() {
        let s = scrubber(&["abab"]);
        assert_eq!(s.scrub(b"x ababababa y"), b"x ***a y");
        let s = scrubber(&["zzzz"]);
        let text = format!("x{}pcs", "z".repeat(37));
        for cut in 1..text.len() {
            let shown = streamed(&s, &text, &[cut]);
            assert!(!shown.contains("zzzz"), "cut at {cut}: {shown}");
        }
    }
}
