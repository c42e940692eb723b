//! Build progress: the solver emits events, a renderer shows them (a live view on a terminal, BuildKit-style
//! plain lines otherwise). Progress goes to stderr; stdout stays for results.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::json;

/// A step as progress shows it. `id` numbers steps in the order they are first reported.
#[derive(Clone, Debug, Serialize)]
pub struct Vertex {
    pub id: usize,
    pub name: String,
    /// The node's definition digest.
    pub digest: String,
    /// `file:line:col` of the instruction that made it.
    pub at: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// A step starts running.
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
    Failed {
        id: usize,
        elapsed: Duration,
        message: String,
    },
    /// A line about the build as a whole (exporting, summary).
    Note(String),
}

pub trait Reporter: Send + Sync {
    fn event(&self, e: Event);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Tty,
    Plain,
    Json,
    Quiet,
}

/// Writes a command's result to stdout (a digest, a rendered graph, a file name), as `print!` does: the
/// driver prints only through here and [`stderr`], so what reaches each stream is decided in one module.
pub fn stdout(text: &str) {
    print!("{text}");
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
/// report's warnings), as `eprint!` does.
pub fn stderr(text: &str) {
    eprint!("{text}");
}

pub fn reporter(mode: Mode) -> Box<dyn Reporter> {
    match mode {
        Mode::Tty => Box::new(Live::new()),
        Mode::Auto if std::io::stderr().is_terminal() => Box::new(Live::new()),
        Mode::Auto | Mode::Plain => Box::new(Plain::new()),
        Mode::Json => Box::new(Json::new()),
        Mode::Quiet => Box::new(Quiet),
    }
}

/// `--progress quiet`: nothing but errors (which the driver prints).
pub struct Quiet;

impl Reporter for Quiet {
    fn event(&self, _: Event) {}
}

/// `--progress json`: one JSON object per line on stderr, for machines.
pub struct Json {
    start: Instant,
    out: Mutex<std::io::Stderr>,
}

impl Json {
    pub fn new() -> Json {
        Json {
            start: Instant::now(),
            out: Mutex::new(std::io::stderr()),
        }
    }
}

impl Default for Json {
    fn default() -> Self {
        Json::new()
    }
}

impl Reporter for Json {
    fn event(&self, e: Event) {
        let t = self.start.elapsed().as_secs_f64();
        let line = match e {
            Event::Started(v) => json!({"event": "started", "time": t, "step": v}),
            Event::Cached(v) => json!({"event": "cached", "time": t, "step": v}),
            Event::Log { id, text } => json!({"event": "log", "time": t, "id": id, "text": text}),
            Event::Done { id, elapsed } => {
                json!({"event": "finished", "time": t, "id": id, "seconds": elapsed.as_secs_f64()})
            }
            Event::Failed {
                id,
                elapsed,
                message,
            } => json!({
                "event": "failed", "time": t, "id": id, "seconds": elapsed.as_secs_f64(), "error": message
            }),
            Event::Note(text) => json!({"event": "note", "time": t, "text": text}),
        };
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "{line}");
    }
}

/// `#N name`, `#N 0.123 log line`, `#N DONE 0.3s`, `#N CACHED`: the shape of BuildKit's plain output.
pub struct Plain {
    start: Instant,
    out: Mutex<std::io::Stderr>,
}

impl Plain {
    pub fn new() -> Plain {
        Plain {
            start: Instant::now(),
            out: Mutex::new(std::io::stderr()),
        }
    }
}

impl Default for Plain {
    fn default() -> Self {
        Plain::new()
    }
}

impl Reporter for Plain {
    fn event(&self, e: Event) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = match e {
            Event::Started(v) => writeln!(out, "#{} {}", v.id, v.name),
            Event::Cached(v) => writeln!(out, "#{} {}\n#{} CACHED", v.id, v.name, v.id),
            Event::Log { id, text } => {
                let t = self.start.elapsed().as_secs_f64();
                text.lines()
                    .try_for_each(|l| writeln!(out, "#{id} {t:.3} {l}"))
            }
            Event::Done { id, elapsed } => {
                writeln!(out, "#{id} DONE {:.1}s", elapsed.as_secs_f64())
            }
            Event::Failed {
                id,
                elapsed,
                message,
            } => {
                writeln!(out, "#{id} ERROR {:.1}s: {message}", elapsed.as_secs_f64())
            }
            Event::Note(text) => writeln!(out, "{text}"),
        };
    }
}

/// A live view: one spinner line per running step with its timer, finished steps marked DONE or CACHED,
/// and the last log line of each running step.
pub struct Live {
    multi: MultiProgress,
    bars: Mutex<HashMap<usize, (ProgressBar, String)>>,
}

impl Live {
    pub fn new() -> Live {
        Live {
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

impl Reporter for Live {
    fn event(&self, e: Event) {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            Event::Started(Vertex { id, name, .. }) => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix} {elapsed_precise:.dim} {msg:.dim}",
                    )
                    .expect("valid template"),
                );
                bar.set_prefix(format!("#{id} {name}"));
                bar.enable_steady_tick(Duration::from_millis(100));
                bars.insert(id, (bar, name));
            }
            Event::Cached(Vertex { id, name, .. }) => {
                let _ = self.multi.println(format!("=> #{id} {name}  CACHED"));
            }
            Event::Log { id, text } => {
                if let Some((bar, _)) = bars.get(&id)
                    && let Some(last) = text.lines().last()
                {
                    bar.set_message(last.to_string());
                }
            }
            Event::Done { id, elapsed } => {
                if let Some((bar, name)) = bars.remove(&id) {
                    bar.finish_and_clear();
                    let _ = self
                        .multi
                        .println(format!("=> #{id} {name}  {:.1}s", elapsed.as_secs_f64()));
                }
            }
            Event::Failed {
                id,
                elapsed,
                message,
            } => {
                if let Some((bar, name)) = bars.remove(&id) {
                    bar.finish_and_clear();
                    let _ = self.multi.println(format!(
                        "=> ERROR #{id} {name}  {:.1}s: {message}",
                        elapsed.as_secs_f64()
                    ));
                }
            }
            Event::Note(text) => {
                let _ = self.multi.println(text);
            }
        }
    }
}

/// One line on stderr beside any build's progress view: `kiln worker`'s log of the actions it runs.
pub(crate) fn line(text: &str) {
    eprintln!("{text}");
}

/// A unit test's note on stdout, about a check it skips on this machine.
#[cfg(test)]
pub(crate) fn test_note(text: &str) {
    println!("{text}");
}
