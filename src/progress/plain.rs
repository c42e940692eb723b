//! The line renderers: BuildKit's plain lines, JSON lines, and quiet (failures only).

use std::io::Write as _;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::json;

use super::tail::Tails;
use super::{Event, Reporter};

/// `#N name`, `#N 0.123 log line` (seconds since that step started), `#N DONE 0.3s`, `#N CACHED`: the shape
/// of BuildKit's plain output; failed steps' last lines in a box at the end.
#[derive(Default)]
pub struct Plain {
    tails: Mutex<Tails>,
}

impl Plain {
    pub fn new() -> Plain {
        Plain::default()
    }
}

impl Reporter for Plain {
    fn event(&self, e: Event) {
        let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::io::stderr().lock();
        let _ = match e {
            Event::Started(v) => {
                tails.started(v.id, &v.name);
                writeln!(out, "#{} {}", v.id, v.name)
            }
            Event::Cached(v) => writeln!(out, "#{} {}\n#{} CACHED", v.id, v.name, v.id),
            Event::Log { id, text } => tails
                .log(id, &text)
                .iter()
                .try_for_each(|l| writeln!(out, "{}", l.render(id))),
            Event::Status { id, placement } => writeln!(out, "#{id} {}", placement.describe()),
            Event::Done { id, elapsed } => {
                if let Some(l) = tails.done(id) {
                    let _ = writeln!(out, "{}", l.render(id));
                }
                writeln!(out, "#{id} DONE {:.1}s", elapsed.as_secs_f64())
            }
            Event::Failed {
                id,
                elapsed,
                message,
            } => {
                if let Some(l) = tails.ended(id) {
                    let _ = writeln!(out, "{}", l.render(id));
                }
                tails.failed(id);
                writeln!(out, "#{id} ERROR {:.1}s: {message}", elapsed.as_secs_f64())
            }
            Event::Note(text) | Event::Summary { text, .. } => writeln!(out, "{text}"),
        };
    }

    fn finish(&self) {
        let tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        let _ = write!(std::io::stderr().lock(), "{}", tails.boxes());
    }
}

/// `--progress json`: one JSON object per line on stderr, for machines. A failure event carries the
/// step's last lines (`logs`: each line's text and its seconds since the step started).
pub struct Json {
    start: Instant,
    tails: Mutex<Tails>,
    /// Each step's last placement, for the `where` of its `finished` event.
    placed: Mutex<std::collections::HashMap<usize, super::Placement>>,
}

impl Json {
    pub fn new() -> Json {
        Json {
            start: Instant::now(),
            tails: Mutex::new(Tails::default()),
            placed: Mutex::default(),
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
        let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        let line = match e {
            Event::Started(v) => {
                tails.started(v.id, &v.name);
                json!({"event": "started", "time": t, "step": v})
            }
            Event::Cached(v) => json!({"event": "cached", "time": t, "step": v, "where": "cache"}),
            Event::Status { id, placement } => {
                let worker = match &placement {
                    super::Placement::Remote { worker } => worker.clone(),
                    _ => None,
                };
                let line = json!({
                    "event": "status", "time": t, "id": id, "where": placement.name(),
                    "status": placement.describe(), "worker": worker
                });
                self.placed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, placement);
                line
            }
            Event::Log { id, text } => {
                // Kept for a failure's `logs`; the event itself carries the chunk as it came.
                tails.log(id, &text);
                json!({"event": "log", "time": t, "id": id, "text": text})
            }
            Event::Done { id, elapsed } => {
                tails.done(id);
                let placed = self.placed.lock().unwrap_or_else(|p| p.into_inner());
                // A step no executor placed ran here (COPY, a local build's RUN).
                let place = placed.get(&id).map_or("local", super::Placement::name);
                json!({
                    "event": "finished", "time": t, "id": id, "seconds": elapsed.as_secs_f64(),
                    "where": place
                })
            }
            Event::Failed {
                id,
                elapsed,
                message,
            } => {
                tails.ended(id);
                tails.failed(id);
                let logs: Vec<_> = tails
                    .last_lines(id)
                    .into_iter()
                    .map(|l| json!({"seconds": l.seconds, "text": l.text}))
                    .collect();
                json!({
                    "event": "failed", "time": t, "id": id, "seconds": elapsed.as_secs_f64(),
                    "error": message, "logs": logs
                })
            }
            Event::Note(text) => json!({"event": "note", "time": t, "text": text}),
            Event::Summary { targets, .. } => {
                json!({"event": "summary", "time": t, "targets": targets})
            }
        };
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    /// Nothing to add: each `failed` event carries its step's last lines.
    fn finish(&self) {}
}

/// `--progress quiet`: nothing while the build runs; a failed step's last lines in a box at the end, as
/// buildx prints them with `--quiet` (the driver prints the error itself).
#[derive(Default)]
pub struct Quiet {
    tails: Mutex<Tails>,
}

impl Reporter for Quiet {
    fn event(&self, e: Event) {
        let mut tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            Event::Started(v) => tails.started(v.id, &v.name),
            Event::Log { id, text } => {
                tails.log(id, &text);
            }
            Event::Failed { id, .. } => {
                tails.ended(id);
                tails.failed(id);
            }
            Event::Done { id, .. } => {
                tails.done(id);
            }
            Event::Cached(_) | Event::Status { .. } | Event::Note(_) | Event::Summary { .. } => {}
        }
    }

    fn finish(&self) {
        let tails = self.tails.lock().unwrap_or_else(|p| p.into_inner());
        let _ = write!(std::io::stderr().lock(), "{}", tails.boxes());
    }
}
