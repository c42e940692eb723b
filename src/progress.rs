//! Build progress: the solver emits events, a renderer shows them (a live view on a terminal, BuildKit-style
//! plain lines otherwise). Progress goes to stderr; stdout stays for results.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Clone, Debug)]
pub enum Event {
    /// A step starts running. `id` numbers steps in the order they are first reported.
    Started {
        id: usize,
        name: String,
    },
    /// A step's result came from the store; it did not run.
    Cached {
        id: usize,
        name: String,
    },
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
}

pub fn reporter(mode: Mode) -> Box<dyn Reporter> {
    let tty = match mode {
        Mode::Tty => true,
        Mode::Plain => false,
        Mode::Auto => std::io::stderr().is_terminal(),
    };
    if tty {
        Box::new(Live::new())
    } else {
        Box::new(Plain::new())
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
            Event::Started { id, name } => writeln!(out, "#{id} {name}"),
            Event::Cached { id, name } => writeln!(out, "#{id} {name}\n#{id} CACHED"),
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
            Event::Started { id, name } => {
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
            Event::Cached { id, name } => {
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
