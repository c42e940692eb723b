//! What every renderer keeps of a step: when it started, its output cut into lines (a chunk may end
//! mid-line), each stamped with the time since the step started, and its last lines, which a failed step
//! shows in a box at the end of the build as BuildKit does.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

/// How many of a failed step's last lines its box shows, as in BuildKit.
pub(super) const TAIL_LINES: usize = 20;

/// One line of a step's output and when it came, in seconds since the step started.
#[derive(Clone, Debug)]
pub(super) struct Line {
    pub(super) seconds: f64,
    pub(super) text: String,
}

impl Line {
    /// `#4 0.284 text`: BuildKit's log line, three decimals below 10s, two below 100s, one above.
    pub(super) fn render(&self, id: usize) -> String {
        format!("#{id} {} {}", seconds(self.seconds), self.text)
    }
}

/// A time as BuildKit prints a log line's: fewer decimals as it grows.
pub(super) fn seconds(s: f64) -> String {
    let prec = if s < 10.0 {
        3
    } else if s < 100.0 {
        2
    } else {
        1
    };
    format!("{s:.prec$}")
}

struct StepLog {
    name: String,
    started: Instant,
    /// The unfinished last line and when it began.
    partial: Option<Line>,
    tail: VecDeque<Line>,
}

/// The steps a renderer has seen, and the boxes of those that failed, in the order they failed.
#[derive(Default)]
pub(super) struct Tails {
    steps: HashMap<usize, StepLog>,
    failed: Vec<(usize, String, Vec<Line>)>,
}

impl Tails {
    pub(super) fn started(&mut self, id: usize, name: &str) {
        self.steps.insert(
            id,
            StepLog {
                name: name.to_string(),
                started: Instant::now(),
                partial: None,
                tail: VecDeque::new(),
            },
        );
    }

    /// The complete lines `text` ends, each with the time its first byte came.
    pub(super) fn log(&mut self, id: usize, text: &str) -> Vec<Line> {
        // Output of a step never reported started is timed from its first line.
        let step = self.steps.entry(id).or_insert_with(|| StepLog {
            name: String::new(),
            started: Instant::now(),
            partial: None,
            tail: VecDeque::new(),
        });
        let now = step.started.elapsed().as_secs_f64();
        let mut done = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let (piece, ends) = match rest.find('\n') {
                Some(i) => (&rest[..i], i + 1),
                None => (rest, rest.len()),
            };
            let line = step.partial.get_or_insert_with(|| Line {
                seconds: now,
                text: String::new(),
            });
            line.text.push_str(piece);
            if rest.as_bytes().get(ends - 1) == Some(&b'\n') {
                done.extend(step.partial.take());
            }
            rest = &rest[ends..];
        }
        for line in &done {
            if step.tail.len() == TAIL_LINES {
                step.tail.pop_front();
            }
            step.tail.push_back(line.clone());
        }
        done
    }

    /// The step is over: its unfinished line, if any, as a line of its own.
    pub(super) fn ended(&mut self, id: usize) -> Option<Line> {
        let step = self.steps.get_mut(&id)?;
        let last = step.partial.take()?;
        if step.tail.len() == TAIL_LINES {
            step.tail.pop_front();
        }
        step.tail.push_back(last.clone());
        Some(last)
    }

    /// The step finished: its unfinished line, if any, and nothing kept of it.
    pub(super) fn done(&mut self, id: usize) -> Option<Line> {
        self.steps.remove(&id)?.partial
    }

    /// The step failed: its box is kept for [`Tails::boxes`].
    pub(super) fn failed(&mut self, id: usize) {
        if let Some(step) = self.steps.remove(&id) {
            self.failed
                .push((id, step.name, step.tail.into_iter().collect()));
        }
    }

    /// The last lines of a failed step, for the JSON failure event.
    pub(super) fn last_lines(&self, id: usize) -> Vec<Line> {
        self.failed
            .iter()
            .find(|(i, ..)| *i == id)
            .map(|(_, _, lines)| lines.clone())
            .unwrap_or_default()
    }

    /// Every failed step's last lines between `------` rules, headed by its name, as BuildKit prints
    /// them when the build ends.
    pub(super) fn boxes(&self) -> String {
        let mut out = String::new();
        for (id, name, lines) in &self.failed {
            out.push_str(&format!("------\n > {name}:\n"));
            for line in lines {
                out.push_str(&line.render(*id));
                out.push('\n');
            }
            out.push_str("------\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_are_joined_and_the_box_keeps_the_last_twenty() {
        let mut t = Tails::default();
        t.started(3, "[stage-0 2/2] RUN x");
        assert!(t.log(3, "line 1\nli").len() == 1);
        let done = t.log(3, "ne 2\n");
        assert_eq!(done[0].text, "line 2");
        for i in 3..=30 {
            t.log(3, &format!("line {i}\n"));
        }
        t.log(3, "no newline");
        assert_eq!(t.ended(3).map(|l| l.text), Some("no newline".into()));
        t.failed(3);
        let boxed = t.boxes();
        let lines: Vec<&str> = boxed.lines().collect();
        assert_eq!(lines[0], "------");
        assert_eq!(lines[1], " > [stage-0 2/2] RUN x:");
        assert_eq!(lines.len(), 2 + TAIL_LINES + 1);
        assert!(lines[2].starts_with("#3 0.") && lines[2].ends_with(" line 12"));
        assert!(lines[21].ends_with(" no newline"));
        assert_eq!(lines[22], "------");
        assert_eq!(t.last_lines(3).len(), TAIL_LINES);
    }

    #[test]
    fn seconds_lose_decimals_as_they_grow() {
        assert_eq!(seconds(0.2844), "0.284");
        assert_eq!(seconds(12.345), "12.35");
        assert_eq!(seconds(123.45), "123.5");
    }
}
