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

/// Where an `--ssh` id is served from: an agent already running on the host, or private keys that kiln
/// serves itself. Keys stay in kiln's memory (ssh-key wipes them when dropped); the step only ever gets
/// an agent socket.
#[derive(Clone)]
pub enum SshSource {
    Socket(PathBuf),
    Keys(std::sync::Arc<Vec<ssh_key::PrivateKey>>),
}

impl std::fmt::Debug for SshSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SshSource::Socket(p) => write!(f, "Socket({})", p.display()),
            SshSource::Keys(k) => write!(f, "Keys({} keys)", k.len()),
        }
    }
}

/// One way a secret can appear in bytes: as itself, or encoded so that a naive search would miss it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Raw,
    Base64,
    Hex,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Base64 => "base64-encoded",
            Encoding::Hex => "hex-encoded",
        }
    }
}

/// Where a secret was found; carries the id and the place, never the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leak {
    pub id: String,
    pub encoding: Encoding,
}

/// Searches bytes for secret values, raw and base64/hex encoded: the leak guard of `SPEC.md` §3.6.
///
/// Values shorter than `MIN_LEN` bytes are not searched: they would match everywhere and prove nothing.
pub struct LeakScanner {
    needles: Vec<(String, Encoding, Zeroizing<Vec<u8>>)>,
    longest: usize,
}

impl LeakScanner {
    pub const MIN_LEN: usize = 4;

    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a SecretValue)>) -> LeakScanner {
        use base64::Engine as _;
        let mut needles = Vec::new();
        for (id, value) in secrets {
            let raw = value.expose().trim_ascii();
            if raw.len() < Self::MIN_LEN {
                continue;
            }
            needles.push((id.to_string(), Encoding::Raw, Zeroizing::new(raw.to_vec())));
            // A step may keep one line of a multi-line secret (`grep password creds.json > f`): each line
            // long enough to mean something is a secret of its own.
            for line in raw.split(|&b| b == b'\n').map(<[u8]>::trim_ascii) {
                let meaningful = line.iter().filter(|b| b.is_ascii_alphanumeric()).count() >= 6;
                if line.len() >= 8 && line.len() < raw.len() && meaningful {
                    needles.push((id.to_string(), Encoding::Raw, Zeroizing::new(line.to_vec())));
                }
            }
            needles.push((
                id.to_string(),
                Encoding::Hex,
                Zeroizing::new(hex::encode(raw).into_bytes()),
            ));
            needles.push((
                id.to_string(),
                Encoding::Hex,
                Zeroizing::new(hex::encode_upper(raw).into_bytes()),
            ));
            // In a longer base64 stream the value starts at one of three byte offsets; encode it at each and
            // keep only the characters that depend on the value alone.
            for shift in 0..3usize {
                let mut padded = Zeroizing::new(vec![0u8; shift]);
                padded.extend_from_slice(raw);
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
                    needles.push((
                        id.to_string(),
                        Encoding::Base64,
                        Zeroizing::new(encoded[skip..full].to_vec()),
                    ));
                }
            }
        }
        let longest = needles.iter().map(|(_, _, n)| n.len()).max().unwrap_or(0);
        LeakScanner { needles, longest }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// The first secret found in `bytes`.
    pub fn scan(&self, bytes: &[u8]) -> Option<Leak> {
        self.needles.iter().find_map(|(id, encoding, needle)| {
            memchr::memmem::find(bytes, needle).map(|_| Leak {
                id: id.clone(),
                encoding: *encoding,
            })
        })
    }

    /// Scans a stream in chunks, overlapping by the longest needle so no match straddles a boundary.
    /// The stream is also scanned with all whitespace removed, since `base64` and `xxd -p` wrap their
    /// output in lines.
    pub fn scan_reader(&self, mut r: impl std::io::Read) -> std::io::Result<Option<Leak>> {
        let mut buf = vec![0u8; 1 << 20];
        let mut kept = 0;
        let mut squeezed: Vec<u8> = Vec::new();
        let overlap = self.longest.saturating_sub(1);
        loop {
            let n = r.read(&mut buf[kept..])?;
            if n == 0 {
                return Ok(None);
            }
            let end = kept + n;
            if let Some(leak) = self.scan(&buf[..end]) {
                return Ok(Some(leak));
            }
            squeezed.extend(buf[kept..end].iter().filter(|b| !b.is_ascii_whitespace()));
            if let Some(leak) = self.scan(&squeezed).filter(|l| l.encoding != Encoding::Raw) {
                return Ok(Some(leak));
            }
            let keep = overlap.min(squeezed.len());
            squeezed.drain(..squeezed.len() - keep);
            kept = overlap.min(end);
            buf.copy_within(end - kept..end, 0);
        }
    }

    /// The path with every component that holds a secret replaced by `***`, so it can be shown.
    pub fn redact(&self, path: &std::path::Path) -> PathBuf {
        path.components()
            .map(|c| {
                let name = c.as_os_str();
                if self.scan(name.as_encoded_bytes()).is_some() {
                    std::ffi::OsStr::new("***")
                } else {
                    name
                }
            })
            .collect()
    }

    /// Scans a directory tree: file contents, file names, symlink targets and extended attributes.
    /// Returns the leak and the path (relative to `root`) where it was found.
    pub fn scan_tree(&self, root: &std::path::Path) -> std::io::Result<Option<(Leak, PathBuf)>> {
        if self.is_empty() {
            return Ok(None);
        }
        for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
            let entry = entry.map_err(std::io::Error::other)?;
            let rel = self.redact(entry.path().strip_prefix(root).unwrap_or(entry.path()));
            let hit = |leak: Option<Leak>| leak.map(|l| (l, rel.clone()));
            if let Some(found) = hit(self.scan(entry.file_name().as_encoded_bytes())) {
                return Ok(Some(found));
            }
            let ft = entry.file_type();
            if ft.is_file() {
                let f = std::fs::File::open(entry.path())?;
                if let Some(found) = hit(self.scan_reader(f)?) {
                    return Ok(Some(found));
                }
            } else if ft.is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                if let Some(found) = hit(self.scan(target.as_os_str().as_encoded_bytes())) {
                    return Ok(Some(found));
                }
            }
            if let Ok(names) = xattr::list(entry.path()) {
                for name in names {
                    if let Some(found) = hit(self.scan(name.as_encoded_bytes())) {
                        return Ok(Some(found));
                    }
                    let value = xattr::get(entry.path(), &name)
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    if let Some(found) = hit(self.scan(&value)) {
                        return Ok(Some(found));
                    }
                }
            }
        }
        Ok(None)
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

    #[test]
    fn leaks_are_found_raw_and_encoded_at_any_alignment() {
        use base64::Engine as _;
        let v = value("s3cr3t-Pa55w0rd");
        let scanner = LeakScanner::new([("pw", &v)]);
        for prefix in ["", "x", "xy", "xyz"] {
            let text = format!("{prefix}s3cr3t-Pa55w0rd-tail");
            let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
            let leak = scanner.scan(b64.as_bytes()).expect("base64 found");
            assert_eq!(
                leak,
                Leak {
                    id: "pw".into(),
                    encoding: Encoding::Base64
                }
            );
        }
        let hexed = hex::encode(b"..s3cr3t-Pa55w0rd..");
        assert_eq!(
            scanner.scan(hexed.as_bytes()).unwrap().encoding,
            Encoding::Hex
        );
        assert_eq!(
            scanner.scan(b"a s3cr3t-Pa55w0rd b").unwrap().encoding,
            Encoding::Raw
        );
        assert!(scanner.scan(b"nothing to see").is_none());
    }

    #[test]
    fn streams_are_scanned_across_chunk_boundaries() {
        let v = value("boundary-secret");
        let scanner = LeakScanner::new([("b", &v)]);
        let mut data = vec![b'.'; (1 << 20) - 5];
        data.extend_from_slice(b"boundary-secret");
        assert!(scanner.scan_reader(&data[..]).unwrap().is_some());
    }

    #[test]
    fn wrapped_encodings_and_single_lines_are_found() {
        use base64::Engine as _;
        let long = value("a-long-secret-value-that-base64-will-wrap-over-two-lines-of-output-x");
        let scanner = LeakScanner::new([("l", &long)]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(long.expose());
        let wrapped: Vec<u8> = b64
            .as_bytes()
            .chunks(76)
            .flat_map(|c| c.iter().copied().chain(std::iter::once(b'\n')))
            .collect();
        assert_eq!(
            scanner.scan_reader(&wrapped[..]).unwrap().unwrap().encoding,
            Encoding::Base64
        );
        let hexed = hex::encode(long.expose());
        let wrapped: Vec<u8> = hexed
            .as_bytes()
            .chunks(60)
            .flat_map(|c| c.iter().copied().chain(std::iter::once(b'\n')))
            .collect();
        assert_eq!(
            scanner.scan_reader(&wrapped[..]).unwrap().unwrap().encoding,
            Encoding::Hex
        );

        let json = value("{\n  \"user\": \"bot\",\n  \"password\": \"hunter2-long-pass\"\n}\n");
        let scanner = LeakScanner::new([("j", &json)]);
        assert!(
            scanner
                .scan(b"x \"password\": \"hunter2-long-pass\" y")
                .is_some()
        );
        assert!(
            scanner.scan(b"{\n}").is_none(),
            "punctuation lines are not secrets"
        );
    }
}
