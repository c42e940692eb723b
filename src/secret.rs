//! Secret values: bytes that live only in zeroizing memory and can never be printed.
//!
//! There is deliberately no `Debug`, `Display`, `Serialize` or `Clone` on `SecretValue`, so the compiler
//! refuses any attempt to log, format, serialize or casually copy one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use zeroize::Zeroizing;

pub mod agent;
mod needles;
mod scrub;
mod structured;

pub use scrub::ScrubStream;

/// A secret's bytes, wiped from memory when dropped.
///
/// It cannot be printed, formatted, serialized or cloned; each of these is a compile error:
///
/// ```compile_fail
/// let s = kiln::secret::SecretValue::new(zeroize::Zeroizing::new(b"pw".to_vec()));
/// let _ = format!("{s:?}");
/// ```
/// ```compile_fail
/// let s = kiln::secret::SecretValue::new(zeroize::Zeroizing::new(b"pw".to_vec()));
/// let _ = format!("{s}");
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
    /// Values kiln holds that no step can mount but that the leak guard searches every step and image
    /// for, as it does secrets, each under an id of its own: the `--sign` key.
    guarded: Vec<(String, SecretValue)>,
}

impl SecretStore {
    /// Adds a value that is not a `--secret` but must stay out of images and logs like one.
    pub fn guard(&mut self, id: String, value: SecretValue) {
        self.guarded.push((id, value));
    }
    /// The values of `guard`, by id.
    pub fn guarded(&self) -> impl Iterator<Item = (&str, &SecretValue)> {
        self.guarded.iter().map(|(id, v)| (id.as_str(), v))
    }
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

    /// A warning for each secret too short to search for (under `LeakScanner::MIN_LEN` bytes once
    /// trimmed): the leak guard and the log scrubbing pass it by, and the user must know. It names the
    /// id, never the value or its length. A secret that cannot be read is left to the step that uses it.
    pub fn warnings(&self) -> Vec<String> {
        self.ids()
            .filter(|id| matches!(self.load(id), Ok(Some(v)) if !searchable(v.expose())))
            .map(|id| {
                format!(
                    "secret `{id}` is shorter than {} bytes, too short to search for: the leak guard and \
                     the log scrubbing cannot keep it out of the image or the build output",
                    LeakScanner::MIN_LEN
                )
            })
            .collect()
    }
}

/// Whether a value is long enough to search for without matching everywhere.
fn searchable(value: &[u8]) -> bool {
    value.trim_ascii().len() >= LeakScanner::MIN_LEN
}

/// Replaces secret values in a step's output with `***` before it reaches any progress view or log: each
/// value the leak guard searches for (the whole value, its meaningful lines, the fields of a structured
/// one), raw and in every encoding the guard knows (hex in either case, base64 at every alignment, also
/// wrapped over lines as `base64` and `xxd -p` print it), and besides every line of a multi-line value of
/// four bytes or more, since a step may print only part of, say, a JSON credentials file. Values shorter
/// than `LeakScanner::MIN_LEN` are not replaced (see `SecretStore::warnings`).
///
/// Output that arrives in chunks goes through a `ScrubStream`, so a value split between two chunks is
/// still found.
pub struct Scrubber {
    needles: Vec<(Encoding, Zeroizing<Vec<u8>>)>,
    longest: usize,
}

impl Scrubber {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a SecretValue>) -> Scrubber {
        let mut needles = Vec::new();
        for v in values {
            let plain = needles::plain(v.expose());
            if let Some(whole) = plain.first() {
                for line in whole.split(|&b| b == b'\n').map(<[u8]>::trim_ascii) {
                    let part = line.len() >= LeakScanner::MIN_LEN && line.len() < whole.len();
                    if part && !plain.iter().any(|p| p[..] == *line) {
                        needles.push((Encoding::Raw, Zeroizing::new(line.to_vec())));
                    }
                }
            }
            for p in &plain {
                needles.extend(needles::encodings(p));
            }
        }
        let longest = needles.iter().map(|(_, n)| n.len()).max().unwrap_or(0);
        Scrubber { needles, longest }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every secret in it replaced by `***`.
    pub fn scrub(&self, text: &[u8]) -> Vec<u8> {
        let view = scrub::View::new(text);
        scrub::render(text, &self.mask(&view), 0..text.len())
    }

    /// A message (a failing step's error) with every secret in it replaced by `***`.
    pub fn scrub_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.scrub(text.as_bytes())).into_owned()
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
/// Besides each whole value it searches for each line of a multi-line value that means something alone and
/// each field of a structured one (JSON, YAML, dotenv, `.netrc`, `.npmrc`, `.pypirc`, docker's
/// `config.json`, decoded `auth` fields included; see `structured`). Values shorter than `MIN_LEN` bytes
/// are not searched: they would match everywhere and prove nothing; `too_short` names them, so the build
/// can say so.
pub struct LeakScanner {
    needles: Vec<(String, Encoding, Zeroizing<Vec<u8>>)>,
    longest: usize,
    too_short: Vec<String>,
}

impl LeakScanner {
    pub const MIN_LEN: usize = 4;

    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a SecretValue)>) -> LeakScanner {
        let mut needles = Vec::new();
        let mut too_short = Vec::new();
        for (id, value) in secrets {
            let plain = needles::plain(value.expose());
            if plain.is_empty() {
                too_short.push(id.to_string());
            }
            for p in needles::outermost_removed(&plain) {
                needles.extend(
                    needles::encodings(p)
                        .into_iter()
                        .map(|(e, n)| (id.to_string(), e, n)),
                );
            }
        }
        let longest = needles.iter().map(|(_, _, n)| n.len()).max().unwrap_or(0);
        LeakScanner {
            needles,
            longest,
            too_short,
        }
    }

    /// The ids of the secrets too short to search for.
    pub fn too_short(&self) -> &[String] {
        &self.too_short
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

    #[test]
    fn fields_of_structured_secrets_are_found_and_scrubbed_in_every_encoding() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let auth = b64.encode("robot:docker-registry-pw");
        let docker = value(&format!(
            r#"{{"auths": {{"registry.example.com": {{"auth": "{auth}"}}}}}}"#
        ));
        let json = value("{\"user\": \"bot\", \"password\": \"json-field-pw-1\"}");
        let scanner = LeakScanner::new([("docker", &docker), ("json", &json)]);
        let scrubber = Scrubber::new([&docker, &json]);
        for (field, id) in [
            ("docker-registry-pw", "docker"),
            ("json-field-pw-1", "json"),
        ] {
            for (shown, encoding) in [
                (format!("x{field}y"), Encoding::Raw),
                (b64.encode(format!("..{field}..")), Encoding::Base64),
                (hex::encode_upper(field), Encoding::Hex),
            ] {
                let leak = scanner.scan(shown.as_bytes()).expect(&shown);
                assert_eq!((leak.id.as_str(), leak.encoding), (id, encoding));
                let out = String::from_utf8(scrubber.scrub(shown.as_bytes())).unwrap();
                assert!(
                    out.contains("***") && out.len() <= 3 + 16,
                    "{shown} -> {out}"
                );
            }
        }
        // A plain token gains nothing: its fragments are not needles.
        let token = value("plain-token-0123456789");
        let scanner = LeakScanner::new([("t", &token)]);
        assert!(scanner.scan(b"plain-token").is_none());
        assert!(scanner.scan(b"0123456789").is_none());
    }

    #[test]
    fn values_too_short_to_search_are_named_and_left_alone() {
        let short = value(" ab\n");
        let long = value("long-enough");
        let scanner = LeakScanner::new([("pin", &short), ("key", &long)]);
        assert_eq!(scanner.too_short(), ["pin"]);
        assert!(scanner.scan(b"ab").is_none());
        assert!(scanner.scan(b"long-enough").is_some());
        // Replacing two letters everywhere would only garble the log: the build warns instead.
        let scrubber = Scrubber::new([&short]);
        assert!(scrubber.is_empty());
        assert_eq!(scrubber.scrub(b"abc ab"), b"abc ab");

        let dir = tempfile::tempdir().unwrap();
        let mut store = SecretStore::default();
        for (id, v) in [
            ("pin", "Q7z"),
            ("empty", ""),
            ("fine", "four"),
            ("missing", ""),
        ] {
            let path = dir.path().join(id);
            if id != "missing" {
                std::fs::write(&path, v).unwrap();
            }
            store.insert(id.into(), SecretSource::File(path));
        }
        let warnings = store.warnings();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("secret `empty` is shorter than 4 bytes"));
        assert!(warnings[1].starts_with("secret `pin` is shorter than 4 bytes"));
        assert!(warnings.iter().all(|w| !w.contains("Q7z")));
    }

    #[test]
    fn messages_are_scrubbed_of_encoded_values() {
        let v = value("message-secret-99");
        let s = Scrubber::new([&v]);
        let msg = format!(
            "process `echo {}` failed: {}",
            hex::encode("message-secret-99"),
            "message-secret-99"
        );
        assert_eq!(s.scrub_str(&msg), "process `echo ***` failed: ***");
    }

    /// The public parts of a structured secret (a URL, a type name, a `${VAR}` placeholder) are not
    /// needles: an image that holds them (any Google SDK holds `service_account` and the token URL) is
    /// not refused; the credentials in the same secret are needles.
    #[test]
    fn public_parts_of_structured_secrets_refuse_nothing() {
        let sa = value(
            r#"{"type": "service_account", "token_uri": "https://oauth2.example.com/token",
                "username": "deploy-bot", "private_key_id": "5f0c1a2b3c4d5e6f7a8b9c0d"}"#,
        );
        let npmrc = value(
            "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken=${NPM_TOKEN}\n",
        );
        let scanner = LeakScanner::new([("sa", &sa), ("npmrc", &npmrc)]);
        for public in [
            "service_account",
            "https://oauth2.example.com/token",
            "deploy-bot",
            "https://registry.npmjs.org/",
            "${NPM_TOKEN}",
        ] {
            assert!(scanner.scan(public.as_bytes()).is_none(), "{public}");
        }
        assert!(scanner.scan(b"5f0c1a2b3c4d5e6f7a8b9c0d").is_some());
    }

    /// PEM armor lines are public text (every TLS library holds them): not needles of their own.
    #[test]
    fn armor_lines_of_a_key_are_not_needles() {
        let key = value(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n",
        );
        let scanner = LeakScanner::new([("k", &key)]);
        assert!(
            scanner
                .scan(b"x -----BEGIN OPENSSH PRIVATE KEY----- y")
                .is_none()
        );
        assert!(
            scanner
                .scan(b"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ")
                .is_some()
        );
    }
}
