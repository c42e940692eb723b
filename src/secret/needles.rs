//! What is searched for on behalf of one secret: the values that mean something alone, and each in the
//! forms a step may write it in. The leak guard and the log scrubber share these, so whatever one refuses
//! the other hides.

use zeroize::Zeroizing;

use super::{Encoding, structured};

/// The whole value (trimmed), each line of it that means something alone, and the fields of a
/// structured value with their own lines; empty when the value is too short to search.
pub(super) fn plain(value: &[u8]) -> Vec<Zeroizing<Vec<u8>>> {
    if !super::searchable(value) {
        return Vec::new();
    }
    let whole = value.trim_ascii();
    let mut out: Vec<Zeroizing<Vec<u8>>> = vec![Zeroizing::new(whole.to_vec())];
    // A step may keep one line of a multi-line secret (`grep password creds.json > f`).
    add_lines(&mut out, whole);
    for field in structured::fields(whole) {
        add(&mut out, &field);
        add_lines(&mut out, &field);
    }
    out
}

fn add(out: &mut Vec<Zeroizing<Vec<u8>>>, v: &[u8]) {
    if !out.iter().any(|o| o[..] == *v) {
        out.push(Zeroizing::new(v.to_vec()));
    }
}

/// Lines long enough and varied enough to mean something, except public text (PEM armor, URLs).
fn add_lines(out: &mut Vec<Zeroizing<Vec<u8>>>, v: &[u8]) {
    for line in v.split(|&b| b == b'\n').map(<[u8]>::trim_ascii) {
        let meaningful = line.iter().filter(|b| b.is_ascii_alphanumeric()).count() >= 6;
        let public = std::str::from_utf8(line).is_ok_and(structured::public_line);
        if line.len() >= 8 && line.len() < v.len() && meaningful && !public {
            add(out, line);
        }
    }
}

/// The values none of the others is part of. Each encoding of a value holds that encoding of every part
/// of it (base64 at some alignment), so a search for the parts finds everything the whole would: for the
/// leak guard, the whole of a JSON file is one search too many, and its lines that hold a field are too.
/// (The scrubber keeps them all, to hide the whole of what a step prints.)
pub(super) fn outermost_removed(plain: &[Zeroizing<Vec<u8>>]) -> impl Iterator<Item = &[u8]> {
    plain
        .iter()
        .filter(|p| {
            !plain
                .iter()
                .any(|q| q.len() < p.len() && memchr::memmem::find(p, q).is_some())
        })
        .map(|p| &p[..])
}

/// `plain` as itself, as hex in both cases, and as the characters of its base64 that depend on it alone
/// at each of the three byte offsets it can start at in a longer stream.
pub(super) fn encodings(plain: &[u8]) -> Vec<(Encoding, Zeroizing<Vec<u8>>)> {
    use base64::Engine as _;
    let mut out = vec![
        (Encoding::Raw, Zeroizing::new(plain.to_vec())),
        (
            Encoding::Hex,
            Zeroizing::new(hex::encode(plain).into_bytes()),
        ),
        (
            Encoding::Hex,
            Zeroizing::new(hex::encode_upper(plain).into_bytes()),
        ),
    ];
    for shift in 0..3usize {
        let mut padded = Zeroizing::new(vec![0u8; shift]);
        padded.extend_from_slice(plain);
        let encoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .encode(&*padded)
                .into_bytes(),
        );
        let skip = if shift == 0 {
            0
        } else {
            (shift * 8).div_ceil(6)
        };
        let full = (padded.len() / 3) * 4;
        if full > skip + 4 {
            out.push((
                Encoding::Base64,
                Zeroizing::new(encoded[skip..full].to_vec()),
            ));
        }
    }
    out
}
