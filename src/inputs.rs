//! The host files and directories a command read, each with the stat data it had just before it was
//! read: what lets `kiln build` answer a build whose inputs are all unchanged from its memo of the last
//! one (`cli/memo.rs`) without compiling or solving anything.
//!
//! Recording is off unless a build that may leave a memo turns it on; the readers (`load`, the monorepo
//! walk, `.dockerignore`, OCI layouts, COPY's walk of a whole context) report every path they look at,
//! found or not, before reading it. A file changed while or after it was read then no longer has the
//! recorded stat data, so the memo is not used. The contexts no COPY walked whole are walked for the
//! memo after the build: a file changed after the build read it is then newer than the build's start,
//! and no memo is written (`settled`). Whatever cannot be recorded (standard input) taints the
//! recording: no memo.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

static ON: AtomicBool = AtomicBool::new(false);
static RECORDED: Mutex<Recording> = Mutex::new(Recording {
    inputs: Vec::new(),
    contents: Vec::new(),
    tainted: false,
    trees: None,
});

struct Recording {
    inputs: Vec<Input>,
    /// The content digests of the context files COPY read (`content`).
    contents: Vec<(PathBuf, [u8; 32])>,
    tainted: bool,
    /// Trees (a root and the `.dockerignore` patterns that hide parts of it) the recording wants every
    /// entry of, and whether a reader's walk recorded them already (`tree`). A monorepo has thousands.
    trees: Option<HashMap<(PathBuf, Vec<String>), bool>>,
}

/// A path as it was seen: absent, or its stat data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Input {
    pub(crate) path: PathBuf,
    /// Through a final symbolic link (a file read), or of the link itself (an entry of a walk).
    pub(crate) follow: bool,
    pub(crate) seen: Option<Stat>,
}

/// What changes when a file or directory does: a content edit (size, times), a replacement (inode), an
/// entry added to or removed from a directory (its times), a `chmod` (mode, ctime). The ctime cannot
/// be set back by a user, so an edit that keeps size and mtime is still seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stat {
    dev: u64,
    ino: u64,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stat {
    pub(crate) fn of(m: &std::fs::Metadata) -> Stat {
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// The later of its modification and change times, in seconds.
    pub(crate) fn newest(&self) -> i64 {
        self.mtime.0.max(self.ctime.0)
    }
}

impl Input {
    /// `path` as it is now.
    pub(crate) fn now(path: &Path, follow: bool) -> Input {
        let meta = if follow {
            std::fs::metadata(path)
        } else {
            std::fs::symlink_metadata(path)
        };
        Input {
            path: path.to_path_buf(),
            follow,
            seen: meta.ok().map(|m| Stat::of(&m)),
        }
    }

    /// Whether the path still looks as it did.
    pub(crate) fn unchanged(&self) -> bool {
        Input::now(&self.path, self.follow).seen == self.seen
    }

    /// Whether it is an entry of a walk (links not followed) that was a regular file.
    pub(crate) fn walked_file(&self) -> bool {
        // `S_IFMT` and `S_IFREG`: the type bits of a mode, and those of a regular file.
        const TYPE: u32 = 0o170000;
        const REGULAR: u32 = 0o100000;
        !self.follow && (self.seen).is_some_and(|s| s.mode & TYPE == REGULAR)
    }

    /// Whether it was, and `now` is, a regular file of the same mode and size: what a file only touched,
    /// or rewritten with what it held, keeps.
    pub(crate) fn same_kind(&self, now: &std::fs::Metadata) -> bool {
        // The mode holds the file's type: the same mode is a regular file then too.
        (self.seen).is_some_and(|s| now.is_file() && (s.mode, s.size) == (now.mode(), now.size()))
    }
}

/// Now, in seconds since the epoch (the unit `settled` compares in).
pub(crate) fn epoch_secs() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| d.as_secs() as i64)
}

/// Starts recording (what an earlier recording held is dropped).
pub(crate) fn start() {
    let mut r = RECORDED.lock().unwrap_or_else(|p| p.into_inner());
    r.inputs.clear();
    r.contents.clear();
    r.tainted = false;
    r.trees = None;
    ON.store(true, Ordering::Release);
}

/// Stops recording: what was read, each path as it was seen once (a path seen changed stays twice),
/// or `None` when something could not be recorded.
pub(crate) fn stop() -> Option<Vec<Input>> {
    ON.store(false, Ordering::Release);
    let mut r = RECORDED.lock().unwrap_or_else(|p| p.into_inner());
    let mut inputs = std::mem::take(&mut r.inputs);
    // By bytes, not by components: the order only has to bring a path's records together.
    fn bytes(i: &Input) -> (&[u8], bool) {
        (i.path.as_os_str().as_encoded_bytes(), i.follow)
    }
    inputs.sort_unstable_by(|a, b| bytes(a).cmp(&bytes(b)));
    inputs.dedup();
    r.trees = None;
    (!std::mem::take(&mut r.tainted)).then_some(inputs)
}

/// Stops recording and drops what was recorded (no memo will come of it).
pub(crate) fn abandon() {
    ON.store(false, Ordering::Release);
    let mut r = RECORDED.lock().unwrap_or_else(|p| p.into_inner());
    let dropped = (
        std::mem::take(&mut r.inputs),
        std::mem::take(&mut r.contents),
    );
    r.trees = None;
    r.tainted = false;
    drop(r);
    drop(dropped);
}

/// The inputs that no longer look as they did (their indices), or `None` when more than `most` do or
/// one is not `excusable`: checked on every core, stopping at once then.
pub(crate) fn changed(
    inputs: &[Input],
    most: usize,
    excusable: impl Fn(&Input) -> bool + Sync,
) -> Option<Vec<usize>> {
    let found = Mutex::new(Vec::new());
    let too_many = AtomicBool::new(false);
    let threads = crate::layer::cores(0)
        .min(inputs.len().div_ceil(256))
        .max(1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (found, too_many, excusable) = (&found, &too_many, &excusable);
            s.spawn(move || {
                for (i, input) in inputs.iter().enumerate().skip(t).step_by(threads) {
                    if too_many.load(Ordering::Relaxed) {
                        return;
                    }
                    if !input.unchanged() {
                        let mut found = found.lock().unwrap_or_else(|p| p.into_inner());
                        found.push(i);
                        if found.len() > most || !excusable(input) {
                            too_many.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let found = found.into_inner().unwrap_or_else(|p| p.into_inner());
    (!too_many.into_inner()).then_some(found)
}

fn push(input: Input) {
    RECORDED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .inputs
        .push(input);
}

/// Whether a recording is on (for a reader whose stat data would cost something to get).
pub(crate) fn on() -> bool {
    ON.load(Ordering::Acquire)
}

/// A file about to be read, or looked for (links followed).
pub(crate) fn file(path: &Path) {
    if ON.load(Ordering::Acquire) {
        push(Input::now(path, true));
    }
}

/// The content digest of a context file COPY read (what its cache key holds): a file whose stat data
/// changed with its content still this is no change to the build (`cli/memo.rs`).
pub(crate) fn content(path: &Path, digest: [u8; 32]) {
    if ON.load(Ordering::Acquire) {
        (RECORDED.lock().unwrap_or_else(|p| p.into_inner()).contents)
            .push((path.to_path_buf(), digest));
    }
}

/// Takes the content digests recorded so far.
pub(crate) fn take_contents() -> Vec<(PathBuf, [u8; 32])> {
    std::mem::take(&mut RECORDED.lock().unwrap_or_else(|p| p.into_inner()).contents)
}

/// A directory about to be listed, or an entry a walk found (links not followed).
pub(crate) fn entry(path: &Path, meta: &std::fs::Metadata) {
    if ON.load(Ordering::Acquire) {
        push(Input {
            path: path.to_path_buf(),
            follow: false,
            seen: Some(Stat::of(meta)),
        });
    }
}

/// The recording wants every entry of these trees (`root`, less what its `.dockerignore` patterns hide).
pub(crate) fn want_trees(trees: &[(PathBuf, Vec<String>)]) {
    let mut r = RECORDED.lock().unwrap_or_else(|p| p.into_inner());
    r.trees = Some(trees.iter().map(|t| (t.clone(), false)).collect());
}

/// Every entry of the tree at `root` (less what `excludes` hides), each with the stat data a walk found
/// before anything was read: recorded if the recording wants that tree, which is then not walked again
/// for it (COPY's selection of a whole context walks just what the memo would).
pub(crate) fn tree<'a>(
    root: &Path,
    excludes: &[String],
    entries: impl IntoIterator<Item = (&'a Path, &'a std::fs::Metadata)>,
) {
    if !ON.load(Ordering::Acquire) {
        return;
    }
    let mut r = RECORDED.lock().unwrap_or_else(|p| p.into_inner());
    let key = (root.to_path_buf(), excludes.to_vec());
    match r.trees.as_mut().and_then(|t| t.get_mut(&key)) {
        Some(done) if !*done => *done = true,
        _ => return,
    }
    for (path, meta) in entries {
        r.inputs.push(Input {
            path: path.to_path_buf(),
            follow: false,
            seen: Some(Stat::of(meta)),
        });
    }
}

/// Whether a reader's walk recorded every entry of the tree at `root` less `excludes`.
pub(crate) fn tree_recorded(root: &Path, excludes: &[String]) -> bool {
    let r = RECORDED.lock().unwrap_or_else(|p| p.into_inner());
    let key = (root.to_path_buf(), excludes.to_vec());
    r.trees.as_ref().and_then(|t| t.get(&key)) == Some(&true)
}

/// Whether everything recorded so far was last changed before `before` (see `settled`), and nothing
/// tainted the recording.
pub(crate) fn settled_so_far(before: i64) -> bool {
    let r = RECORDED.lock().unwrap_or_else(|p| p.into_inner());
    !r.tainted && settled(&r.inputs, before)
}

/// An input that has no path (standard input): the command's result depends on something no memo
/// can check.
pub(crate) fn taint() {
    if ON.load(Ordering::Acquire) {
        RECORDED.lock().unwrap_or_else(|p| p.into_inner()).tainted = true;
    }
}

/// Whether every input was last changed before `before` (seconds since the epoch). One changed in the
/// same tick as it was recorded could change again within that tick and keep its times, so inputs
/// that young are not trusted (git's "racily clean" files).
pub(crate) fn settled(inputs: &[Input], before: i64) -> bool {
    inputs
        .iter()
        .filter_map(|i| i.seen.as_ref())
        .all(|s| s.newest() < before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_changes_with_an_edit_a_replacement_or_its_appearance() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        let absent = Input::now(&f, true);
        assert_eq!(absent.seen, None);
        std::fs::write(&f, "a").unwrap();
        assert!(!absent.unchanged());
        let seen = Input::now(&f, true);
        assert!(seen.unchanged());
        // Same size, mtime put back: the ctime still moves.
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, "b").unwrap();
        std::fs::File::open(&f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(!seen.unchanged());
        let dir_seen = Input::now(dir.path(), false);
        std::fs::write(dir.path().join("g"), "").unwrap();
        assert!(
            !dir_seen.unchanged(),
            "an entry added changes its directory"
        );
    }

    #[test]
    fn changes_are_listed_until_one_cannot_be_excused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let walked = |p: &Path| {
            let meta = std::fs::symlink_metadata(p).unwrap();
            Input {
                path: p.to_path_buf(),
                follow: false,
                seen: Some(Stat::of(&meta)),
            }
        };
        let inputs = [walked(&a), Input::now(&b, true), walked(dir.path())];
        assert!(inputs[0].walked_file() && !inputs[1].walked_file() && !inputs[2].walked_file());
        assert_eq!(changed(&inputs, 8, Input::walked_file), Some(vec![]));
        std::fs::write(&a, "A").unwrap();
        assert_eq!(changed(&inputs, 8, Input::walked_file), Some(vec![0]));
        assert_eq!(
            changed(&inputs, 0, Input::walked_file),
            None,
            "more than `most`"
        );
        std::fs::write(&b, "B").unwrap();
        assert_eq!(
            changed(&inputs, 8, Input::walked_file),
            None,
            "a file read changed"
        );
    }

    // The one test that records (the recording is the process's): others only read inputs.
    #[test]
    fn a_recording_is_tainted_by_what_has_no_path() {
        let probe = Path::new("/nonexistent/kiln-inputs-test");
        start();
        file(probe);
        taint();
        assert_eq!(stop(), None);
        start();
        file(probe);
        let got = stop().unwrap();
        assert!(got.iter().any(|i| i.path == probe && i.seen.is_none()));
        // Off: nothing is kept.
        file(probe);
        start();
        assert!(stop().unwrap().iter().all(|i| i.path != probe));
    }
}
