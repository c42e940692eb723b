//! Build progress: the solver emits events, a renderer shows them (a live view on a terminal, BuildKit-style
//! plain lines otherwise, JSON lines for machines, nothing but failures when quiet). Progress goes to
//! stderr; stdout stays for results. Every renderer keeps each step's last lines (`tail.rs`) and, when the
//! build ends, shows those of a failed step in a box, as BuildKit does.

use std::io::IsTerminal as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod live;
mod plain;
mod tail;

pub use live::Live;
pub use plain::{Json, Plain, Quiet};

/// A step as progress shows it. `id` numbers steps in the order they are first reported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Vertex {
    pub id: usize,
    pub name: String,
    /// The node's definition digest.
    pub digest: String,
    /// `file:line:col` of the instruction that made it.
    pub at: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Event {
    /// A step starts running (its log lines are timed from here).
    Started(Vertex),
    /// A step's result came from the store; it did not run.
    Cached(Vertex),
    /// Output of a running step (already scrubbed of secret values by the caller).
    Log {
        id: usize,
        text: String,
    },
    Done {
        id: usize,
        elapsed: Duration,
    },
    /// Where a running step is carried out, as its executor learns it (a remote step moves from
    /// queued to running on a worker, or is answered by the remote cache).
    Status {
        id: usize,
        placement: Placement,
    },
    Failed {
        id: usize,
        elapsed: Duration,
        message: String,
    },
    /// A line about the build as a whole (exporting, summary).
    Note(String),
    /// What each target of a multi-target build became: `text` for people, `targets` for machines.
    Summary {
        text: String,
        targets: serde_json::Value,
    },
}

/// Where a step ran: here, on a remote executor (queued, then on a worker), or not at all because a
/// remote cache had its result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Placement {
    Local,
    Queued,
    Remote { worker: Option<String> },
    RemoteCached,
}

impl Placement {
    /// The `where` field of the JSON step events.
    pub fn name(&self) -> &'static str {
        match self {
            Placement::Local => "local",
            Placement::Queued | Placement::Remote { .. } => "remote",
            Placement::RemoteCached => "remote-cache",
        }
    }

    /// The step's status line.
    pub fn describe(&self) -> String {
        match self {
            Placement::Local => "running locally".into(),
            Placement::Queued => "queued on the remote executor".into(),
            Placement::Remote { worker: Some(w) } => format!("running on {w}"),
            Placement::Remote { worker: None } => "running on the remote executor".into(),
            Placement::RemoteCached => "remote cache hit".into(),
        }
    }
}

pub trait Reporter: Send + Sync {
    fn event(&self, e: Event);
    /// The steps are over (done, failed or interrupted): the live view is cleared and the last lines of
    /// each failed step are shown, before the driver prints the error. No default: a reporter that
    /// wraps another must pass it on.
    fn finish(&self);
    /// Stops drawing (and resumes): a debug shell has the terminal meanwhile.
    fn pause(&self, _paused: bool) {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Tty,
    Plain,
    Json,
    Quiet,
}

/// Writes a command's result to stdout (a digest, a rendered graph, a file name): the driver prints only
/// through here and [`stderr`], so what reaches each stream is decided in one module. A write that fails
/// is not retried, nor is anything written after it; the command ends as it would have, then the failure
/// is reported (`stdout_error`).
pub fn stdout(text: &str) {
    use std::io::Write as _;
    let mut failed = STDOUT_FAILED.lock().unwrap_or_else(|p| p.into_inner());
    if failed.is_some() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        *failed = Some(e);
    }
}

static STDOUT_FAILED: std::sync::Mutex<Option<std::io::Error>> = std::sync::Mutex::new(None);

/// Flushes what was written to stdout and stderr, before the process ends without `exit`'s flushing
/// (`exec::end_process`).
pub fn flush() {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

/// Why writing to stdout failed, if it did. A reader that went away (`kiln graph //... | head`) is
/// no failure: it wanted no more, as with the tools that die of `SIGPIPE` there, but quietly.
pub fn stdout_error() -> Option<std::io::Error> {
    let failed = STDOUT_FAILED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    failed.filter(|e| e.kind() != std::io::ErrorKind::BrokenPipe)
}

/// Copies a command's binary result to stdout (a tar for `-o -`), flushed, for a pipe to read.
pub fn stdout_copy(from: &mut impl std::io::Read) -> std::io::Result<u64> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let n = std::io::copy(from, &mut out)?;
    out.flush()?;
    Ok(n)
}

/// Writes text for the user to stderr outside a build's progress view (a rendered diagnostic, a lint
/// report's warnings, a program's `print(...)` notes). A stderr nobody reads any more (`2>&1 | head`)
/// is no reason to stop a build: what cannot be written is dropped, as the progress views drop it.
pub fn stderr(text: &str) {
    use std::io::Write as _;
    if let Some(kept) = KEPT_STDERR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
    {
        kept.push_str(text);
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// What [`stderr`] wrote since [`keep_stderr`], for a build's memo to show again.
static KEPT_STDERR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Starts keeping a copy of what [`stderr`] writes (`true`), or stops and returns it (`false`).
pub fn keep_stderr(on: bool) -> Option<String> {
    let mut kept = KEPT_STDERR.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::replace(&mut *kept, on.then(String::new))
}

/// The events a build reported, in order: a fully cached build's, which its memo replays when nothing
/// changed (`cli/memo.rs`).
pub type Transcript = std::sync::Arc<std::sync::Mutex<Vec<Event>>>;

pub fn reporter(mode: Mode) -> Box<dyn Reporter> {
    match mode {
        Mode::Tty => Box::new(Live::new()),
        Mode::Auto if std::io::stderr().is_terminal() => Box::new(Live::new()),
        Mode::Auto | Mode::Plain => Box::new(Plain::new()),
        Mode::Json => Box::new(Json::new()),
        Mode::Quiet => Box::new(Quiet::default()),
    }
}

/// One line on stderr beside any build's progress view: `kiln worker`'s log of the actions it runs.
pub(crate) fn line(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// A unit test's note on stdout, about a check it skips on this machine.
#[cfg(test)]
pub(crate) fn test_note(text: &str) {
    println!("{text}");
}
