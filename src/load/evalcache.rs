//! The `.build` evaluation cache of a monorepo: what a run learnt, kept for the next one, so an unchanged
//! package is neither parsed nor evaluated again (`frontend::buildfile::lower::unit` records and replays
//! the evaluation). No daemon: one file per workspace in the store, `evalcache/<digest of the root
//! path>`, read at the start of a command and written back at its end when something was added.
//!
//! It holds, by content digest: each file's summary (its imports, targets and params), which modules
//! (a file with its imports' digests) passed the type checker, and each unit's record. A record holds
//! what a `.build` program computes (commands, paths, image config), never a secret's value, which is
//! not known when compiling.
//!
//! Reading it costs a command less than it looks: the file is read and decoded on a thread of its own
//! while the command finds its BUILD files, and that thread then decodes the unit records ahead of the
//! evaluation, in the order the last run asked for them (the file keeps them in that order). The
//! evaluation takes a record the thread has decoded, or decodes it itself when it got there first.
//!
//! The file is written through a temp file and a rename, and ends with a CRC-32 of everything before
//! it: a torn or corrupt file reads as an empty cache, never as wrong records (the store is the
//! user's own; the check is against accidents, not tampering). Entries not used by the last
//! `KEEP_RUNS` runs that wrote the file are dropped then.
//!
//! A run that adds a few entries to a big file (an edit in a monorepo: a package's units against tens
//! of thousands) appends them to a journal beside it (`<cache>.log`, frames each with their own CRC-32
//! and the generation of the file they extend) instead of rewriting the file, which cost a `graph` after
//! an edit more than the rest of its work. The file is rewritten, and the journal removed, once the
//! journal grows past an eighth of it. Entries a journal added are kept then only if that run used
//! them (an edited package's earlier units are not carried forward), and `KEEP_RUNS` counts rewrites.

use foldhash::{HashMap, HashMapExt as _};
use std::borrow::Cow;
use std::cell::{Cell, OnceCell, RefCell};
use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use serde::{Deserialize, Serialize};

use crate::diag::Span;
use crate::digest::Digest;
use crate::frontend::buildfile::lower::UnitRecord;
use crate::inputs::Stat;

const MAGIC: &[u8] = b"kiln-evalcache-v3\n";
/// An entry no run used in this many writes of the file is dropped.
const KEEP_RUNS: u64 = 16;
/// The journal is folded into the file once it is this fraction of it (and past `JOURNAL_MIN`).
const JOURNAL_SHARE: u64 = 8;
const JOURNAL_MIN: u64 = 256 << 10;
/// When an entry a journal added was last used, until this run uses it: never (generations start at 1).
const JOURNALED: u64 = 0;

/// What loading a module needs of its file without parsing it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FileSummary {
    /// Each import: alias, path as written, where it is written.
    pub imports: Vec<(String, String, Span)>,
    /// Each target's name, and whether it has a `tagged` or `for` clause.
    pub targets: Vec<(String, bool)>,
    pub params: Vec<String>,
}

/// The file's layout. Unit records stay encoded (borrowed from the file's bytes when read), and come in
/// the order the writing run asked for them.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    /// The kiln that wrote them (`kiln_identity`): another kiln may check or evaluate differently, so
    /// its entries are not used.
    kiln: String,
    /// How many times the file was written; each entry says the last write whose run used it.
    generation: u64,
    files: Vec<(Cow<'a, Digest>, Arc<FileSummary>, u64)>,
    checked: Vec<(Cow<'a, Digest>, u64)>,
    #[serde(borrow)]
    units: Vec<WireUnit<'a>>,
}

/// The directory listings, in a file of their own (`<cache>.dirs`): the walk that finds the packages
/// needs them first, before the rest of the cache is read.
#[derive(Default, Serialize, Deserialize)]
struct DirsWire<'a> {
    kiln: Cow<'a, str>,
    generation: u64,
    #[serde(borrow)]
    dirs: Vec<(Cow<'a, str>, Cow<'a, Listed>, u64)>,
}

/// What a directory holds for `load::walk`: subdirectories to enter (`true`) and `.build` files, sorted
/// by name.
pub(crate) type Listing = Vec<(std::ffi::OsString, bool)>;

/// A directory's listing for `load::walk`, with the stat data it had when listed. Only directories
/// and names that are UTF-8 are kept.
#[derive(Clone, Serialize, Deserialize)]
struct Listed {
    stat: Stat,
    entries: Vec<(String, bool)>,
}

#[derive(Serialize, Deserialize)]
struct WireUnit<'a> {
    key: Cow<'a, Digest>,
    #[serde(with = "serde_bytes", borrow)]
    record: &'a [u8],
    used: u64,
}

/// The cache as a command holds it (written by this kiln: `read` refuses another's).
#[derive(Default)]
struct Entries {
    generation: u64,
    files: HashMap<Digest, (Arc<FileSummary>, Cell<u64>)>,
    checked: HashMap<Digest, Cell<u64>>,
    units: HashMap<Digest, Unit>,
    /// The bytes of the file read, which unit records point into.
    read: Arc<Vec<u8>>,
    /// How many units this run asked for so far.
    asked: Cell<u32>,
    /// The sizes of the file and of its journal as read (none: no file of this kiln's was read).
    sizes: Option<(u64, u64)>,
    /// What this run added, for the journal.
    added: Added,
}

/// The keys of the entries a run added.
#[derive(Default)]
struct Added {
    files: Vec<Digest>,
    checked: Vec<Digest>,
    units: Vec<Digest>,
}

/// A unit's record, encoded: decoded only when a run replays it (or ahead of that).
struct Unit {
    record: Encoded,
    used: Cell<u64>,
    /// When this run first asked for it (`u32::MAX`: not yet), which orders the file written.
    asked: Cell<u32>,
    ahead: Option<Arc<Mutex<Ahead>>>,
}

enum Encoded {
    /// Bytes of the file read.
    Read(Range<usize>),
    /// Added by this run.
    New(Vec<u8>),
}

/// A record the reading thread decodes ahead of the evaluation.
enum Ahead {
    Pending,
    /// Decoded (none: it does not decode, written by another version of kiln).
    Decoded(Option<UnitRecord>),
    /// The evaluation took it, or decoded it itself.
    Taken,
}

/// A workspace's evaluation cache, open for one command.
pub struct EvalCache {
    path: PathBuf,
    kiln: String,
    entries: OnceCell<Entries>,
    reading: RefCell<Option<mpsc::Receiver<Entries>>>,
    /// Tells the reading thread to stop decoding ahead.
    done: Arc<AtomicBool>,
    dirty: bool,
    dirs: OnceCell<Dirs>,
    /// Whether a save may append to the journal (tests turn it off).
    journal: bool,
}

/// The directory listings as a command holds them.
#[derive(Default)]
struct Dirs {
    generation: u64,
    listed: HashMap<String, (Listed, Cell<u64>)>,
    dirty: bool,
}

impl EvalCache {
    /// The cache of the workspace at `root`, in the store at `store`.
    pub fn path_in(store: &Path, root: &Path) -> PathBuf {
        let name = Digest::of(root.as_os_str().as_encoded_bytes());
        store.join("evalcache").join(name.hex())
    }

    /// Starts reading the cache at `path`; a missing, torn or corrupt file is an empty cache.
    pub fn open(path: PathBuf) -> EvalCache {
        EvalCache::open_as(path, kiln_identity())
    }

    /// Starts reading the cache at `path` for the kiln identified by `kiln`.
    fn open_as(path: PathBuf, kiln: String) -> EvalCache {
        let (tx, rx) = mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let (p, k, d) = (path.clone(), kiln.clone(), done.clone());
        // Should no thread start, the sender is dropped with the closure and the cache reads as empty.
        let _ = std::thread::Builder::new()
            .name("evalcache".into())
            .spawn(move || read_ahead(&p, &k, &tx, &d));
        EvalCache {
            path,
            kiln,
            entries: OnceCell::new(),
            reading: RefCell::new(Some(rx)),
            done,
            dirty: false,
            dirs: OnceCell::new(),
            journal: true,
        }
    }

    /// Tells the reading thread not to decode records ahead: a run that replays few of them (`kiln
    /// graph` after an edit, redoing only what it reached) decodes those itself.
    pub fn few(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    fn dirs_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".dirs");
        name.into()
    }

    /// The directory listings, read now (a small file) if not yet.
    fn dirs(&self) -> &Dirs {
        self.dirs.get_or_init(|| {
            let bytes = std::fs::read(self.dirs_path()).unwrap_or_default();
            let wire = checked(&bytes).and_then(|p| rmp_serde::from_slice::<DirsWire>(p).ok());
            let Some(wire) = wire.filter(|w| w.kiln == self.kiln) else {
                return Dirs::default();
            };
            let listed = (wire.dirs.into_iter())
                .map(|(d, l, used)| (d.into_owned(), (l.into_owned(), Cell::new(used))))
                .collect();
            Dirs {
                generation: wire.generation,
                listed,
                dirty: false,
            }
        })
    }

    /// The entries, once the reading thread has them.
    fn entries(&self) -> &Entries {
        self.entries.get_or_init(|| {
            let read = self.reading.take().and_then(|rx| rx.recv().ok());
            read.unwrap_or_default()
        })
    }

    fn entries_mut(&mut self) -> &mut Entries {
        self.entries();
        self.entries.get_mut().expect("initialised just above")
    }

    fn now(&self) -> u64 {
        self.entries().generation + 1
    }

    pub fn summary(&self, text: &Digest) -> Option<Arc<FileSummary>> {
        let (s, used) = self.entries().files.get(text)?;
        used.set(self.now());
        Some(s.clone())
    }

    /// Whether the module `key` (a file and its imports) passed the type checker before.
    pub fn checked(&self, key: &Digest) -> bool {
        let Some(used) = self.entries().checked.get(key) else {
            return false;
        };
        used.set(self.now());
        true
    }

    /// Remembers a file's summary and that module `key` passed the checker.
    pub fn add_module(&mut self, text: Digest, summary: Arc<FileSummary>, key: Digest) {
        let now = Cell::new(self.now());
        let e = self.entries_mut();
        // Only a run that read a file may journal what it adds (`sizes`).
        let journaled = e.sizes.is_some();
        if !e.files.contains_key(&text) {
            e.files.insert(text.clone(), (summary, now.clone()));
            e.added.files.extend(journaled.then_some(text));
        }
        if e.checked.insert(key.clone(), now).is_none() {
            e.added.checked.extend(journaled.then_some(key));
        }
        self.dirty = true;
    }

    /// The record of unit `key`; one that does not decode (written by another version of kiln) is
    /// none.
    pub fn unit(&self, key: &Digest) -> Option<UnitRecord> {
        let e = self.entries();
        let unit = e.units.get(key)?;
        let ahead = unit.ahead.as_ref().map(|slot| {
            let mut slot = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::replace(&mut *slot, Ahead::Taken)
        });
        let record = match ahead {
            Some(Ahead::Decoded(record)) => record,
            _ => decode_unit(e.bytes(&unit.record)),
        }?;
        unit.used.set(self.now());
        if unit.asked.get() == u32::MAX {
            unit.asked.set(e.ask());
        }
        Some(record)
    }

    pub fn keep_unit(&mut self, key: Digest, record: &UnitRecord) {
        let Ok(bytes) = rmp_serde::to_vec_named(record) else {
            return;
        };
        let now = self.now();
        let e = self.entries_mut();
        let unit = Unit {
            record: Encoded::New(bytes),
            used: Cell::new(now),
            asked: Cell::new(e.ask()),
            ahead: None,
        };
        // A record replacing one that no longer replays is journaled too.
        let journaled = e.sizes.is_some();
        if e.units.insert(key.clone(), unit).is_none() || !e.added.units.contains(&key) {
            e.added.units.extend(journaled.then_some(key));
        }
        self.dirty = true;
    }

    /// The listing of directory `dir` if it was kept with stat data `stat`.
    pub(crate) fn listing(&self, dir: &Path, stat: &Stat) -> Option<Listing> {
        let dirs = self.dirs();
        let (listed, used) = dirs.listed.get(dir.to_str()?)?;
        if listed.stat != *stat {
            return None;
        }
        used.set(dirs.generation + 1);
        let entries = listed.entries.iter();
        Some(entries.map(|(n, d)| (n.into(), *d)).collect())
    }

    pub(crate) fn keep_listing(&mut self, dir: &Path, stat: Stat, listing: &Listing) {
        let entries: Option<Vec<(String, bool)>> = (listing.iter())
            .map(|(n, d)| Some((n.to_str()?.to_string(), *d)))
            .collect();
        let (Some(dir), Some(entries)) = (dir.to_str(), entries) else {
            return;
        };
        self.dirs();
        let dirs = self.dirs.get_mut().expect("read just above");
        let now = Cell::new(dirs.generation + 1);
        let listed = Listed { stat, entries };
        dirs.listed.insert(dir.to_string(), (listed, now));
        dirs.dirty = true;
    }

    /// Whether anything was added since it was read.
    pub fn dirty(&self) -> bool {
        self.dirty || self.dirs.get().is_some_and(|d| d.dirty)
    }

    /// Writes the cache back if anything was added. Failures are ignored: the cache only saves work.
    pub fn save(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(dirs) = self.dirs.take().filter(|d| d.dirty) {
            save_dirs(&self.dirs_path(), &self.kiln, dirs);
        }
        if !self.dirty {
            return;
        }
        let now = self.now();
        let Some(e) = self.entries.take() else {
            return;
        };
        if self.journal && journal(&journal_of(&self.path), &self.kiln, &e) {
            return;
        }
        let keep = |used: u64| used != JOURNALED && used + KEEP_RUNS > now;
        let mut units: Vec<_> = e.units.iter().filter(|(_, u)| keep(u.used.get())).collect();
        units.sort_by(|(ka, a), (kb, b)| (a.asked.get(), ka).cmp(&(b.asked.get(), kb)));
        let wire = Wire {
            kiln: self.kiln.clone(),
            generation: now,
            files: (e.files.iter())
                .filter(|(_, (_, used))| keep(used.get()))
                .map(|(d, (s, used))| (Cow::Borrowed(d), s.clone(), used.get()))
                .collect(),
            checked: (e.checked.iter())
                .filter(|(_, used)| keep(used.get()))
                .map(|(d, used)| (Cow::Borrowed(d), used.get()))
                .collect(),
            units: (units.into_iter())
                .map(|(key, u)| WireUnit {
                    key: Cow::Borrowed(key),
                    record: e.bytes(&u.record),
                    used: u.used.get(),
                })
                .collect(),
        };
        if write(&self.path, &wire) {
            // Its frames extend the file just replaced: they would be skipped, and need not be read.
            let _ = std::fs::remove_file(journal_of(&self.path));
        }
    }
}

impl Drop for EvalCache {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

impl Entries {
    fn bytes<'a>(&'a self, record: &'a Encoded) -> &'a [u8] {
        match record {
            Encoded::Read(range) => self.read.get(range.clone()).unwrap_or_default(),
            Encoded::New(bytes) => bytes,
        }
    }

    /// The next place in the order this run asks for units.
    fn ask(&self) -> u32 {
        let n = self.asked.get();
        self.asked.set(n + 1);
        n
    }
}

/// The reading thread: reads the file, hands its entries over, then decodes the unit records in the
/// file's order until done or told to stop.
fn read_ahead(path: &Path, kiln: &str, tx: &mpsc::Sender<Entries>, done: &AtomicBool) {
    let Some((entries, queue)) = read(path, kiln) else {
        return;
    };
    let read = entries.read.clone();
    if tx.send(entries).is_err() {
        return;
    }
    for (range, slot) in queue {
        if done.load(Ordering::Relaxed) {
            return;
        }
        let mut slot = slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(*slot, Ahead::Pending) {
            *slot = Ahead::Decoded(decode_unit(&read[range]));
        }
    }
}

/// The entries of the file at `path` if it is whole and `kiln` wrote it, and the records to decode
/// ahead, in order.
type Queue = Vec<(Range<usize>, Arc<Mutex<Ahead>>)>;

fn read(path: &Path, kiln: &str) -> Option<(Entries, Queue)> {
    let bytes = std::fs::read(path).ok()?;
    let payload = checked(&bytes)?;
    let wire: Wire = rmp_serde::from_slice(payload).ok()?;
    if wire.kiln != kiln {
        return None;
    }
    let base = bytes.as_ptr() as usize;
    let mut queue = Vec::with_capacity(wire.units.len());
    let mut units = HashMap::with_capacity(wire.units.len());
    for u in wire.units {
        // Borrowed from `bytes` by the decoder, so the offset is in range; checked all the same.
        let start = (u.record.as_ptr() as usize).checked_sub(base)?;
        let range = start..start + u.record.len();
        bytes.get(range.clone())?;
        let slot = Arc::new(Mutex::new(Ahead::Pending));
        queue.push((range.clone(), slot.clone()));
        let unit = Unit {
            record: Encoded::Read(range),
            used: Cell::new(u.used),
            asked: Cell::new(u32::MAX),
            ahead: Some(slot),
        };
        units.insert(u.key.into_owned(), unit);
    }
    let mut entries = Entries {
        generation: wire.generation,
        files: (wire.files.into_iter())
            .map(|(d, s, used)| (d.into_owned(), (s, Cell::new(used))))
            .collect(),
        checked: (wire.checked.into_iter())
            .map(|(d, used)| (d.into_owned(), Cell::new(used)))
            .collect(),
        units,
        sizes: Some((bytes.len() as u64, 0)),
        read: Arc::new(bytes),
        asked: Cell::new(0),
        added: Added::default(),
    };
    read_journal(&journal_of(path), kiln, &mut entries);
    Some((entries, queue))
}

/// The journal beside the cache file at `path`.
fn journal_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".log");
    name.into()
}

/// Adds the entries of the journal's frames that extend the file read: a frame another kiln wrote, or
/// one that extends an earlier file, is skipped; a torn one ends the journal (and the next save
/// rewrites the file). Its entries count as never used (`JOURNALED`): a rewrite keeps those its own
/// run used.
fn read_journal(path: &Path, kiln: &str, e: &mut Entries) {
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    let mut rest = &bytes[..];
    let mut torn = false;
    while !rest.is_empty() {
        let Some((body, after)) = frame(rest) else {
            torn = true;
            break;
        };
        rest = after;
        let Ok(wire) = rmp_serde::from_slice::<Wire>(body) else {
            continue;
        };
        if wire.kiln != kiln || wire.generation != e.generation {
            continue;
        }
        for (d, summary, _) in wire.files {
            (e.files.entry(d.into_owned())).or_insert((summary, Cell::new(JOURNALED)));
        }
        for (d, _) in wire.checked {
            e.checked
                .entry(d.into_owned())
                .or_insert(Cell::new(JOURNALED));
        }
        // A later record of a unit replaces an earlier one (it was made when that one no longer replayed).
        for u in wire.units {
            let unit = Unit {
                record: Encoded::New(u.record.to_vec()),
                used: Cell::new(JOURNALED),
                asked: Cell::new(u32::MAX),
                ahead: None,
            };
            e.units.insert(u.key.into_owned(), unit);
        }
    }
    let journal = if torn { u64::MAX } else { bytes.len() as u64 };
    e.sizes = e.sizes.map(|(file, _)| (file, journal));
}

/// The body of the frame `bytes` starts with (its length, the body, the body's CRC-32) and what
/// follows it; `None` when it is torn or corrupt.
fn frame(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = usize::try_from(len).ok()?.checked_add(8)?;
    let body = bytes.get(8..end)?;
    let sum = bytes.get(end..end.checked_add(4)?)?;
    (crc32fast::hash(body).to_le_bytes() == sum).then(|| (body, &bytes[end + 4..]))
}

/// Appends what this run added to the journal of the file it read, unless the journal would then
/// outgrow its share of the file; whether it did.
fn journal(path: &Path, kiln: &str, e: &Entries) -> bool {
    let Some((file, journal)) = e.sizes else {
        return false;
    };
    let a = &e.added;
    let wire = Wire {
        kiln: kiln.to_string(),
        generation: e.generation,
        files: (a.files.iter())
            .filter_map(|d| {
                e.files
                    .get(d)
                    .map(|(s, _)| (Cow::Borrowed(d), s.clone(), 0))
            })
            .collect(),
        checked: a.checked.iter().map(|d| (Cow::Borrowed(d), 0)).collect(),
        units: (a.units.iter())
            .filter_map(|k| {
                let u = e.units.get(k)?;
                let record = e.bytes(&u.record);
                Some(WireUnit {
                    key: Cow::Borrowed(k),
                    record,
                    used: 0,
                })
            })
            .collect(),
    };
    let Ok(body) = rmp_serde::to_vec_named(&wire) else {
        return false;
    };
    let framed = body.len() as u64 + 12;
    if journal.saturating_add(framed) > (file / JOURNAL_SHARE).max(JOURNAL_MIN) {
        return false;
    }
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    // One write with O_APPEND: frames of runs that save at once do not interleave.
    // Private, as the file is (a temp file's mode).
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(&out));
    appended.is_ok()
}

fn decode_unit(bytes: &[u8]) -> Option<UnitRecord> {
    rmp_serde::from_slice(bytes).ok()
}

/// The payload of a whole file: after the magic, before the CRC-32 of everything before it.
fn checked(bytes: &[u8]) -> Option<&[u8]> {
    let split = bytes.len().checked_sub(4)?;
    let (body, sum) = bytes.split_at(split);
    let payload = body.strip_prefix(MAGIC)?;
    (crc32fast::hash(body).to_le_bytes() == sum).then_some(payload)
}

fn save_dirs(path: &Path, kiln: &str, dirs: Dirs) {
    let now = dirs.generation + 1;
    let wire = DirsWire {
        kiln: Cow::Borrowed(kiln),
        generation: now,
        dirs: (dirs.listed.iter())
            .filter(|(_, (_, used))| used.get() + KEEP_RUNS > now)
            .map(|(d, (l, used))| (Cow::Borrowed(d.as_str()), Cow::Borrowed(l), used.get()))
            .collect(),
    };
    write(path, &wire);
}

/// Writes `wire` to `path` through a temp file and a rename, streamed through the checksum: no copy of
/// the whole cache in memory. Whether it was written.
fn write(path: &Path, wire: &impl Serialize) -> bool {
    let Some(dir) = path.parent() else {
        return false;
    };
    let _ = std::fs::create_dir_all(dir);
    let Ok(tmp) = tempfile::NamedTempFile::new_in(dir) else {
        return false;
    };
    let mut out = Summed {
        inner: std::io::BufWriter::new(tmp),
        sum: crc32fast::Hasher::new(),
    };
    let written =
        out.write_all(MAGIC).is_ok() && rmp_serde::encode::write_named(&mut out, wire).is_ok();
    let sum = out.sum.finalize();
    // A rename without fsync: after a crash the file is old, new or torn, and a torn one fails its
    // checksum and reads as empty.
    written
        && out.inner.write_all(&sum.to_le_bytes()).is_ok()
        && out
            .inner
            .into_inner()
            .is_ok_and(|tmp| tmp.persist(path).is_ok())
}

/// Writes through, summing what it writes.
struct Summed<W> {
    inner: W,
    sum: crc32fast::Hasher,
}

impl<W: std::io::Write> std::io::Write for Summed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sum.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// This kiln binary: its version and the file's identity (size, modification time, inode), so that
/// rebuilding or upgrading kiln starts an empty cache rather than trusting what another build of the
/// checker and evaluator wrote.
pub fn kiln_identity() -> String {
    use std::os::unix::fs::MetadataExt as _;
    let exe = std::env::current_exe().and_then(std::fs::metadata);
    match exe {
        Ok(m) => format!(
            "{} {} {}.{} {}",
            env!("CARGO_PKG_VERSION"),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino()
        ),
        // Unknown: a value no other run has, so nothing is trusted.
        Err(_) => format!("unknown {:?}", std::time::SystemTime::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_or_corrupt_file_is_an_empty_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut c = EvalCache::open(path.clone());
        let summary = Arc::new(FileSummary {
            params: vec!["level".into()],
            ..FileSummary::default()
        });
        c.add_module(Digest::of(b"text"), summary, Digest::of(b"key"));
        c.save();
        let c = EvalCache::open(path.clone());
        assert!(c.checked(&Digest::of(b"key")));
        assert_eq!(c.summary(&Digest::of(b"text")).unwrap().params, ["level"]);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        assert!(!EvalCache::open(path.clone()).checked(&Digest::of(b"key")));
        let mut flipped = bytes.clone();
        flipped[MAGIC.len() + 3] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(!EvalCache::open(path).checked(&Digest::of(b"key")));
    }

    #[test]
    fn another_kilns_entries_are_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut c = EvalCache::open_as(path.clone(), "kiln a".into());
        c.add_module(Digest::of(b"text"), Arc::default(), Digest::of(b"key"));
        c.save();
        assert!(!EvalCache::open_as(path.clone(), "kiln b".into()).checked(&Digest::of(b"key")));
        assert!(EvalCache::open_as(path, "kiln a".into()).checked(&Digest::of(b"key")));
    }

    /// The cache at `path`, rewritten by every save (no journal).
    fn rewritten(path: &Path) -> EvalCache {
        let mut c = EvalCache::open(path.to_path_buf());
        c.journal = false;
        c
    }

    #[test]
    fn entries_no_run_uses_age_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let mut c = EvalCache::open(path.clone());
        c.add_module(Digest::of(b"old"), Arc::default(), Digest::of(b"old-key"));
        c.save();
        for i in 0..KEEP_RUNS {
            let mut c = rewritten(&path);
            let text = format!("new {i}");
            c.add_module(
                Digest::of(text.as_bytes()),
                Arc::default(),
                Digest::of(b"k"),
            );
            c.save();
        }
        let c = EvalCache::open(path);
        assert!(!c.checked(&Digest::of(b"old-key")));
        assert!(c.checked(&Digest::of(b"k")));
    }

    fn add(c: &mut EvalCache, name: &str) {
        let text = Digest::of(name.as_bytes());
        c.add_module(
            text,
            Arc::default(),
            Digest::of(format!("{name} key").as_bytes()),
        );
    }

    fn has(c: &EvalCache, name: &str) -> bool {
        c.checked(&Digest::of(format!("{name} key").as_bytes()))
    }

    #[test]
    fn a_few_additions_are_journaled_and_folded_in_when_the_file_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let log = journal_of(&path);
        let mut c = EvalCache::open(path.clone());
        add(&mut c, "a");
        c.save();
        assert!(!log.exists());
        let file = std::fs::read(&path).unwrap();
        let mut c = EvalCache::open(path.clone());
        add(&mut c, "b");
        c.save();
        // The file is as it was; the addition is in the journal, and read with it.
        assert_eq!(std::fs::read(&path).unwrap(), file);
        assert!(log.exists());
        let c = EvalCache::open(path.clone());
        assert!(has(&c, "a") && has(&c, "b"));
        drop(c);

        // A torn frame ends the journal (what it held is not read) and the next save rewrites the file.
        let bytes = std::fs::read(&log).unwrap();
        std::fs::write(&log, &bytes[..bytes.len() - 3]).unwrap();
        let mut c = EvalCache::open(path.clone());
        assert!(has(&c, "a") && !has(&c, "b"));
        add(&mut c, "c");
        c.save();
        assert!(!log.exists());
        let c = EvalCache::open(path.clone());
        assert!(has(&c, "a") && has(&c, "c"));
        drop(c);

        // A rewrite keeps what the journal added only if its own run used it.
        let mut c = EvalCache::open(path.clone());
        add(&mut c, "d");
        add(&mut c, "e");
        c.save();
        let mut c = rewritten(&path);
        assert!(has(&c, "d"));
        add(&mut c, "f");
        c.save();
        assert!(!log.exists());
        let c = EvalCache::open(path);
        assert!(has(&c, "a") && has(&c, "d") && has(&c, "f"));
        assert!(!has(&c, "e"));
    }
}
