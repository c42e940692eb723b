//! Two builds on one store at once: a step both miss runs once. The second waits for the first's
//! in-flight step (a per-cache-key lock in the store) and takes its result as a cache hit; a lock left by
//! a killed build does not block the next.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::support::{Kiln, base_image, context, tempdir};

const DOCKERFILE: &str = "FROM base\nRUN echo ran; sleep 3\nRUN echo after\n";

fn spawn(store: &Path, ctx: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "--progress", "json", "--store"])
        .arg(store)
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base_image().display()))
        .arg(ctx)
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts")
}

/// Reads a build's JSON events until `stop` says enough (or the stream ends); returns them.
fn events_until(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    stop: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("utf-8");
        let event: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let done = stop(&event);
        seen.push(event);
        if done {
            break;
        }
    }
    seen
}

fn is_the_run(e: &serde_json::Value, kind: &str) -> bool {
    e["event"] == kind
        && e["step"]["name"]
            .as_str()
            .is_some_and(|n| n.contains("RUN echo ran"))
}

#[test]
fn two_identical_builds_at_once_run_the_step_once() {
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let store = tempdir("store-");
    let mut first = spawn(store.path(), ctx.path());
    let mut first_lines = BufReader::new(first.stderr.take().expect("piped")).lines();
    let mut first_events = events_until(&mut first_lines, |e| is_the_run(e, "started"));
    assert!(
        first_events.iter().any(|e| is_the_run(e, "started")),
        "{first_events:#?}"
    );
    // The first build is inside the step now; the second misses it too and must wait for it.
    let second = spawn(store.path(), ctx.path());
    let second_out = second.wait_with_output().expect("the second build ends");
    first_events.extend(events_until(&mut first_lines, |_| false));
    assert!(first.wait().expect("the first build ends").success());
    let second_stderr = String::from_utf8_lossy(&second_out.stderr);
    assert!(second_out.status.success(), "{second_stderr}");
    let second_events: Vec<serde_json::Value> = second_stderr
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let count = |events: &[serde_json::Value], kind: &str| {
        events.iter().filter(|e| is_the_run(e, kind)).count()
    };
    assert_eq!(count(&first_events, "started"), 1, "{first_events:#?}");
    assert_eq!(count(&second_events, "started"), 0, "{second_events:#?}");
    assert_eq!(count(&second_events, "cached"), 1, "{second_events:#?}");
    assert!(
        !store
            .path()
            .join("locks")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "no lock file is left behind"
    );
}

#[test]
fn a_lock_left_by_a_killed_build_does_not_block_the_next() {
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let store = tempdir("store-");
    let mut killed = spawn(store.path(), ctx.path());
    let mut lines = BufReader::new(killed.stderr.take().expect("piped")).lines();
    let events = events_until(&mut lines, |e| is_the_run(e, "started"));
    assert!(
        events.iter().any(|e| is_the_run(e, "started")),
        "{events:#?}"
    );
    killed.kill().expect("SIGKILL");
    killed.wait().expect("reaped");
    let out = Kiln::build_in(store.path())
        .wrapped(&["timeout", "120"])
        .with_base()
        .arg(ctx.path())
        .run();
    out.success();
    assert!(
        out.stderr.contains("ran"),
        "the step runs again:\n{}",
        out.stderr
    );
}
