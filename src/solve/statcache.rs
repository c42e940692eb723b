//! The context stat cache, like git's index: for each file of a build context it remembers (size, mtime,
//! ctime, inode, device, mode) → SHA-256 of the content, so a rebuild re-reads only files whose stat
//! changed. A touched file is re-hashed once; its digest (and so the COPY's cache key) stays the same.
//!
//! Must never be wrong, so every field of the stat must match to reuse a digest, and ctime is part of it:
//! rewriting a file and setting its mtime back (`touch -d`) still changes the ctime, which only the kernel
//! sets. A file changed within the timestamp granularity of its last hashing would keep its stat ("racily
//! clean", in git's words), so entries younger than `RACY` are never stored: they are hashed every time
//! until they age.
//!
//! The file lives in the store (`statcache/<hash of the context path>`), written through a temp file and a
//! rename, and ends with a SHA-256 of everything before it: a torn or corrupt file reads as empty, never as
//! wrong digests. It holds paths, stats and digests of context files, never their content.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

const MAGIC: &[u8] = b"kiln-statcache-v1\n";
/// Entries whose mtime or ctime is this close to the moment they were hashed are not stored: the kernel's
/// file timestamps are coarser than its clock, so a write in the same tick would leave the stat unchanged.
const RACY: Duration = Duration::from_secs(2);

/// The SHA-256 of what is left to read of `f`: a context file's digest, as COPY's cache key holds it.
pub fn content_digest(f: &mut fs::File) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// What must be unchanged for a stored digest to be reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
    mode: u32,
}

impl Stat {
    pub fn of(m: &fs::Metadata) -> Stat {
        Stat {
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
            dev: m.dev(),
            mode: m.mode(),
        }
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<OsString, (Stat, [u8; 32])>,
    dirty: bool,
}

/// The stat cache of one context directory. Shared by the COPY steps of a build (hashing runs on
/// blocking threads in parallel), saved with `save`.
pub struct StatCache {
    /// Where it is persisted; `None` keeps it in memory only.
    file: Option<PathBuf>,
    state: Mutex<State>,
    racy: Duration,
}

impl std::fmt::Debug for StatCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StatCache({:?}, {} files)", self.file, self.len())
    }
}

impl StatCache {
    /// An empty cache kept in memory only.
    pub fn memory() -> StatCache {
        StatCache {
            file: None,
            state: Mutex::default(),
            racy: RACY,
        }
    }

    /// Loads the cache at `file`; a missing, torn or foreign file gives an empty cache.
    pub fn load(file: PathBuf) -> StatCache {
        let entries = fs::read(&file)
            .ok()
            .and_then(|b| decode(&b))
            .unwrap_or_default();
        StatCache {
            file: Some(file),
            state: Mutex::new(State {
                entries,
                dirty: false,
            }),
            racy: RACY,
        }
    }

    /// The SHA-256 of the regular file at `path` (`rel` to the context root), whose metadata `meta` the
    /// caller just read: from the cache when nothing in its stat changed, else read and remembered.
    pub fn digest(
        &self,
        path: &Path,
        rel: &Path,
        meta: &fs::Metadata,
    ) -> std::io::Result<[u8; 32]> {
        let stat = Stat::of(meta);
        if let Some((s, d)) = self
            .state
            .lock()
            .expect("stat cache lock")
            .entries
            .get(rel.as_os_str())
            && *s == stat
        {
            return Ok(*d);
        }
        let mut f = fs::File::open(path)?;
        let digest = content_digest(&mut f)?;
        // Remembered only if the file stood still while it was read and is old enough not to be racy.
        let after = Stat::of(&f.metadata()?);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as i64;
        let young = now - self.racy.as_nanos() as i64;
        if after == stat && stat.mtime_ns < young && stat.ctime_ns < young {
            let mut st = self.state.lock().expect("stat cache lock");
            st.entries
                .insert(rel.as_os_str().to_os_string(), (stat, digest));
            st.dirty = true;
        }
        Ok(digest)
    }

    /// The stored digest of a file whose stat is unchanged, without reading it. `None` for files not in
    /// the cache or too young to be stored: callers that must trust a digest blindly (file objects) then
    /// fall back to copying.
    pub fn known(&self, rel: &Path, meta: &fs::Metadata) -> Option<[u8; 32]> {
        let st = self.state.lock().expect("stat cache lock");
        st.entries
            .get(rel.as_os_str())
            .filter(|(s, _)| *s == Stat::of(meta))
            .map(|(_, d)| *d)
    }

    /// Writes the cache back if anything was added. Failures are ignored: the cache only saves work.
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        let bytes = {
            let mut st = self.state.lock().expect("stat cache lock");
            if !st.dirty {
                return;
            }
            st.dirty = false;
            encode(&st.entries)
        };
        let Some(dir) = file.parent() else { return };
        let _ = fs::create_dir_all(dir);
        // A rename without fsync: after a crash the file is old, new or torn, and a torn one fails its
        // checksum and reads as empty.
        if let Ok(mut tmp) = tempfile::NamedTempFile::new_in(dir)
            && tmp.write_all(&bytes).is_ok()
        {
            let _ = tmp.persist(file);
        }
    }

    /// The same cache with another racy window (tests use none, to store what they just wrote).
    pub fn with_racy_window(mut self, racy: Duration) -> StatCache {
        self.racy = racy;
        self
    }

    /// How many files it knows (for tests and benchmarks).
    pub fn len(&self) -> usize {
        self.state.lock().expect("stat cache lock").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn encode(entries: &HashMap<OsString, (Stat, [u8; 32])>) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + entries.len() * 100 + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (rel, (s, d)) in entries {
        let name = rel.as_os_str().as_encoded_bytes();
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name);
        for v in [s.size, s.mtime_ns as u64, s.ctime_ns as u64, s.ino, s.dev] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&s.mode.to_le_bytes());
        out.extend_from_slice(d);
    }
    let sum: [u8; 32] = Sha256::digest(&out).into();
    out.extend_from_slice(&sum);
    out
}

fn decode(bytes: &[u8]) -> Option<HashMap<OsString, (Stat, [u8; 32])>> {
    let (body, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if Sha256::digest(body).as_slice() != sum {
        return None;
    }
    let mut r = body.strip_prefix(MAGIC)?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = r.split_at_checked(n)?;
        r = b;
        Some(a)
    };
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let count = u64_of(take(8)?);
    let mut entries = HashMap::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let name = take(len)?;
        // SAFETY-free round trip: the bytes came from `as_encoded_bytes` of a Unix path, i.e. raw bytes.
        let rel =
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name).to_os_string();
        let mut v = [0u64; 5];
        for x in &mut v {
            *x = u64_of(take(8)?);
        }
        let mode = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let digest: [u8; 32] = take(32)?.try_into().ok()?;
        let stat = Stat {
            size: v[0],
            mtime_ns: v[1] as i64,
            ctime_ns: v[2] as i64,
            ino: v[3],
            dev: v[4],
            mode,
        };
        entries.insert(rel, (stat, digest));
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(cache: &StatCache, p: &Path) -> [u8; 32] {
        cache
            .digest(p, Path::new("f"), &fs::symlink_metadata(p).unwrap())
            .unwrap()
    }

    #[test]
    fn round_trips_and_rejects_torn_files() {
        let mut m = HashMap::new();
        let stat = Stat {
            size: 1,
            mtime_ns: 2,
            ctime_ns: 3,
            ino: 4,
            dev: 5,
            mode: 0o100644,
        };
        m.insert(OsString::from("a/b"), (stat, [7u8; 32]));
        let bytes = encode(&m);
        assert_eq!(decode(&bytes).unwrap(), m);
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        let mut bad = bytes.clone();
        bad[MAGIC.len() + 10] ^= 1;
        assert!(decode(&bad).is_none());
    }

    #[test]
    fn a_young_file_is_hashed_but_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"hello").unwrap();
        let cache = StatCache::memory();
        assert_eq!(
            digest(&cache, &p),
            <[u8; 32]>::from(Sha256::digest(b"hello"))
        );
        // Its ctime is now: a same-tick rewrite could keep the stat, so nothing is stored.
        assert!(cache.is_empty());
    }

    #[test]
    fn persisted_digests_are_reused_and_touch_keeps_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (p, file) = (dir.path().join("f"), dir.path().join("cache"));
        fs::write(&p, b"hello").unwrap();
        let cache = StatCache::load(file.clone()).with_racy_window(Duration::ZERO);
        let first = digest(&cache, &p);
        cache.save();
        let cache = StatCache::load(file.clone()).with_racy_window(Duration::ZERO);
        assert_eq!(cache.len(), 1);
        assert_eq!(digest(&cache, &p), first);
        // A touch changes the stat: the file is read again and gives the same digest.
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(SystemTime::now())
            .unwrap();
        assert_eq!(digest(&cache, &p), first);
    }

    /// An edit that keeps the size and puts the mtime back (`touch -d`) is still seen: the kernel moved
    /// the ctime, which nobody can set back.
    #[test]
    fn an_edit_hidden_from_size_and_mtime_is_caught_by_ctime() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"hello").unwrap();
        let old = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let set = |t| {
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap()
        };
        set(old);
        let cache = StatCache::memory().with_racy_window(Duration::ZERO);
        let before = digest(&cache, &p);
        assert_eq!(cache.len(), 1);
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&p, b"HELLO").unwrap();
        set(old);
        let after = digest(&cache, &p);
        assert_ne!(before, after);
        assert_eq!(after, <[u8; 32]>::from(Sha256::digest(b"HELLO")));
    }
}
