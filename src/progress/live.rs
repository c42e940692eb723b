//! The live view on a terminal: one spinner line per running step with its timer and last log line,
//! finished steps marked with their time or CACHED, and, when the build ends, failed steps' last lines.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::tail::Tails;
use super::{Event, Reporter, Vertex};

pub struct Live {
    multi: MultiProgress,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bars: HashMap<usize, (ProgressBar, String)>,
    tails: Tails,
    /// Where each step of a remote build is carried out, for its finished line.
    placed: HashMap<usize, super::Placement>,
}

impl Live {
    pub fn new() -> Live {
        Live {
            multi: MultiProgress::new(),
            state: Mutex::new(State::default()),
        }
    }
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

impl Reporter for Live {
    fn pause(&self, paused: bool) {
        self.multi.set_draw_target(if paused {
            indicatif::ProgressDrawTarget::hidden()
        } else {
            indicatif::ProgressDrawTarget::stderr()
        });
    }

    fn event(&self, e: Event) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State {
            bars,
            tails,
            placed,
        } = &mut *state;
        match e {
            Event::Started(Vertex { id, name, .. }) => {
                tails.started(id, &name);
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
                let lines = tails.log(id, &text);
                // The last complete line, else what came of an unfinished one (a progress meter).
                let shown = lines.last().map(|l| l.text.clone()).or_else(|| {
                    text.rsplit(['\n', '\r'])
                        .find(|l| !l.trim().is_empty())
                        .map(str::to_string)
                });
                if let (Some((bar, _)), Some(shown)) = (bars.get(&id), shown) {
                    bar.set_message(shown);
                }
            }
            // The spinner's message until the step's output says more.
            Event::Status { id, placement } => {
                if let Some((bar, _)) = bars.get(&id) {
                    bar.set_message(placement.describe());
                }
                placed.insert(id, placement);
            }
            Event::Done { id, elapsed } => {
                tails.done(id);
                if let Some((bar, name)) = bars.remove(&id) {
                    bar.finish_and_clear();
                    let place = match placed.remove(&id) {
                        Some(super::Placement::RemoteCached) => "  (remote cache hit)".to_string(),
                        Some(super::Placement::Remote { worker: Some(w) }) => format!("  (on {w})"),
                        Some(
                            super::Placement::Remote { worker: None } | super::Placement::Queued,
                        ) => "  (remote)".to_string(),
                        Some(super::Placement::Local) | None => String::new(),
                    };
                    let _ = self.multi.println(format!(
                        "=> #{id} {name}  {:.1}s{place}",
                        elapsed.as_secs_f64()
                    ));
                }
            }
            Event::Failed {
                id,
                elapsed,
                message,
            } => {
                tails.ended(id);
                tails.failed(id);
                if let Some((bar, name)) = bars.remove(&id) {
                    bar.finish_and_clear();
                    let _ = self.multi.println(format!(
                        "=> ERROR #{id} {name}  {:.1}s: {message}",
                        elapsed.as_secs_f64()
                    ));
                }
            }
            Event::Note(text) | Event::Summary { text, .. } => {
                let _ = self.multi.println(text);
            }
        }
    }

    fn finish(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Steps still shown were cut short (interrupted, or siblings of a failure): their spinners go,
        // so no frozen line is left on the terminal.
        for (_, (bar, _)) in state.bars.drain() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{}", state.tails.boxes());
        let _ = err.flush();
    }
}
