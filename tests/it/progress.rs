//! `--progress json`: every line is a JSON event, every step is covered from start to finish (or cached),
//! each with its digest and source location, and a secret printed by a step shows as `***`. A stderr
//! nobody reads stops nothing.

use std::collections::BTreeSet;

use crate::support::{Kiln, context};

#[test]
fn json_progress_covers_every_step_and_scrubs_secrets() {
    let value = "json-progress-secret-9d1e";
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM base\nRUN --mount=type=secret,id=tok cat /run/secrets/tok; echo\nRUN echo second\n",
        ),
        ("tok.txt", value),
    ]);
    let kiln = Kiln::new();
    let run = || {
        kiln.clone()
            .with_base()
            .args(["--progress", "json", "--secret"])
            .arg(format!(
                "id=tok,src={}",
                ctx.path().join("tok.txt").display()
            ))
            .arg(ctx.path())
            .run()
    };
    // `Kiln` passes `--progress plain` first; the later flag wins.
    let out = run();
    out.success();
    assert!(
        !out.stderr.contains(value),
        "the secret is in the progress:\n{}",
        out.stderr
    );
    let events: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let ids = |kind: &str| -> BTreeSet<u64> {
        events
            .iter()
            .filter(|e| e["event"] == kind)
            .map(|e| {
                e["id"]
                    .as_u64()
                    .or_else(|| e["step"]["id"].as_u64())
                    .expect("an id")
            })
            .collect()
    };
    let started = ids("started");
    assert_eq!(started.len(), 3, "FROM and two RUNs: {events:#?}");
    assert_eq!(started, ids("finished"), "every started step finishes");
    for e in events.iter().filter(|e| e["event"] == "started") {
        assert!(
            e["step"]["digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:")),
            "{e}"
        );
        assert!(
            e["step"]["at"]
                .as_str()
                .is_some_and(|a| a.contains("Dockerfile:")),
            "{e}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "log" && e["text"].as_str().is_some_and(|t| t.contains("***"))),
        "the step's output shows the secret as ***: {events:#?}"
    );

    let again = run();
    again.success();
    let cached = again
        .stderr
        .lines()
        .filter(|l| l.contains("\"event\":\"cached\""))
        .count();
    assert_eq!(cached, 3, "{}", again.stderr);
}

/// `--progress plain` is stable enough to snapshot: with times blanked out, a linear build prints exactly
/// this, first fresh, then cached, and, with no output asked for, says so as buildx does.
#[test]
fn plain_progress_snapshot() {
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM base\nWORKDIR /app\nCOPY hello.txt .\nRUN cat hello.txt\n",
        ),
        ("hello.txt", "hello"),
    ]);
    let kiln = Kiln::new();
    let run = || {
        let out = kiln.clone().with_base().arg(ctx.path()).run();
        out.success();
        normalize(&out.stderr)
    };
    assert_eq!(
        run(),
        "#1 FROM oci-layout://BASE
#1 DONE Ts
#2 [stage-0 2/4] WORKDIR /app
#2 DONE Ts
#3 [stage-0 3/4] COPY hello.txt .
#3 DONE Ts
#4 [stage-0 4/4] RUN cat hello.txt
#4 T hello
#4 DONE Ts
4 steps run, 0 cached, in Ts
warning: no output specified: the result stays in kiln's build cache only; write it with `-o`, `--load` or `--push`, or keep it in the store with `-t NAME`
"
    );
    assert_eq!(
        run(),
        "#1 FROM oci-layout://BASE
#1 CACHED
#2 [stage-0 2/4] WORKDIR /app
#2 CACHED
#3 [stage-0 3/4] COPY hello.txt .
#3 CACHED
#4 [stage-0 4/4] RUN cat hello.txt
#4 CACHED
0 steps run, 4 cached, in Ts
warning: no output specified: the result stays in kiln's build cache only; write it with `-o`, `--load` or `--push`, or keep it in the store with `-t NAME`
"
    );
}

/// Times become `T`, the base image's path `BASE`.
fn normalize(stderr: &str) -> String {
    let base = crate::support::base_image().display().to_string();
    stderr
        .replace(&base, "BASE")
        .split_inclusive('\n')
        .map(|line| {
            line.split(' ')
                .map(|w| {
                    let digits = w.trim_end_matches(['s', '\n']);
                    let is_time = digits.chars().any(|c| c.is_ascii_digit())
                        && digits.contains('.')
                        && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
                    if is_time {
                        w.replacen(digits, "T", 1)
                    } else {
                        w.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// A step that prints 30 lines and fails: its last 20 lines, in the order they came, between `------`
/// rules headed by the step's name, as BuildKit boxes them.
const FAILING: &str = "FROM base\nRUN --mount=type=secret,id=tok for i in $(seq 1 30); do echo line $i; done; \
cat /run/secrets/tok; echo; echo oops >&2; exit 3\n";
const FAILING_STEP: &str = "[stage-0 2/2] RUN --mount=type=secret,id=tok for i in $(seq 1 30)";
const SECRET: &str = "box-secret-5c7a1e";

fn failing_build(mode: &str) -> (tempfile::TempDir, crate::support::Output) {
    let ctx = context(&[("Dockerfile", FAILING), ("tok.txt", SECRET)]);
    let out = Kiln::new()
        .with_base()
        .args(["--progress", mode, "--secret"])
        .arg(format!(
            "id=tok,src={}",
            ctx.path().join("tok.txt").display()
        ))
        .arg(ctx.path())
        .run();
    out.expect_code(1);
    assert!(!out.stderr.contains(SECRET), "{}", out.stderr);
    (ctx, out)
}

/// The box's lines without their `#N time ` prefix, from the `------` before `header` to the next one.
fn boxed(text: &str, header: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with(" > ") && l.contains(header))
        .unwrap_or_else(|| panic!("no box for {header}:\n{text}"));
    // On a terminal the rule may follow the escapes that cleared the live view.
    assert!(lines[start - 1].ends_with("------"), "{text}");
    assert!(lines[start].ends_with(':'), "{text}");
    let end = start
        + lines[start..]
            .iter()
            .position(|l| *l == "------")
            .unwrap_or_else(|| panic!("the box never closes:\n{text}"));
    lines[start + 1..end]
        .iter()
        .map(|l| {
            let mut words = l.splitn(3, ' ');
            let (id, time, rest) = (words.next(), words.next(), words.next());
            assert!(id.is_some_and(|i| i.starts_with('#')), "{l}");
            assert!(time.is_some_and(|t| t.parse::<f64>().is_ok()), "{l}");
            rest.unwrap_or("").to_string()
        })
        .collect()
}

/// The last 20 of 32 lines: `line 13` to `line 30`, then the secret (scrubbed) and stderr's `oops`.
fn assert_last_lines(lines: &[String], text: &str) {
    let mut expected: Vec<String> = (13..=30).map(|i| format!("line {i}")).collect();
    expected.push("***".into());
    expected.push("oops".into());
    assert_eq!(lines, expected, "{text}");
}

#[test]
fn a_failed_steps_last_lines_are_boxed_above_the_error_in_plain_and_quiet() {
    for mode in ["plain", "quiet"] {
        let (_ctx, out) = failing_build(mode);
        assert_last_lines(&boxed(&out.stderr, FAILING_STEP), &out.stderr);
        let box_at = out.stderr.find(" > [stage-0 2/2]").expect("a box");
        // The driver's error, after the progress (whose ERROR line says it too).
        let error_at = out
            .stderr
            .rfind("did not complete successfully: exit code: 3")
            .expect("the error");
        assert!(
            box_at < error_at,
            "{mode}: the box comes first:\n{}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("process \"/bin/sh -c for i in $(seq 1 30); do echo line $i; done;"),
            "{}",
            out.stderr
        );
        if mode == "quiet" {
            assert!(
                !out.stderr.contains("#1 "),
                "quiet shows no progress:\n{}",
                out.stderr
            );
        }
    }
}

#[test]
fn a_json_failure_event_carries_the_last_lines() {
    let (_ctx, out) = failing_build("json");
    let failed: serde_json::Value = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "failed")
        .unwrap_or_else(|| panic!("no failed event:\n{}", out.stderr));
    let texts: Vec<String> = failed["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| {
            assert!(l["seconds"].as_f64().is_some(), "{l}");
            l["text"].as_str().expect("text").to_string()
        })
        .collect();
    assert_last_lines(&texts, &out.stderr);
}

/// On a terminal (a real pty, `script` as the judge), the live view shows only a status line per step;
/// after the build ends the failed step's last lines are on screen, boxed, above the error.
#[test]
fn on_a_terminal_the_box_remains_after_the_build() {
    let ctx = context(&[("Dockerfile", FAILING), ("tok.txt", SECRET)]);
    let store = crate::support::tempdir("store-");
    let command = format!(
        "{} build --store {} --build-context base=oci-layout://{} --secret id=tok,src={} {}",
        env!("CARGO_BIN_EXE_kiln"),
        store.path().display(),
        crate::support::base_image().display(),
        ctx.path().join("tok.txt").display(),
        ctx.path().display()
    );
    let out = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .output()
        .expect("script (util-linux) runs");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{screen}");
    assert!(!screen.contains(SECRET), "{screen}");
    assert_last_lines(&boxed(&screen, FAILING_STEP), &screen);
}

/// Plain output times each log line from its own step's start, and DONE is the step's duration.
#[test]
fn plain_times_count_from_each_steps_start() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN sleep 1; echo warm\nRUN echo before; sleep 1; echo after\n",
    )]);
    let out = Kiln::new().with_base().arg(ctx.path()).run();
    out.success();
    let time_of = |text: &str| -> f64 {
        let line = out
            .stderr
            .lines()
            .find(|l| {
                l.starts_with("#3 ") && l.ends_with(&format!(" {text}")) && !l.contains("RUN")
            })
            .unwrap_or_else(|| panic!("no `{text}` line:\n{}", out.stderr));
        line.split(' ').nth(1).unwrap().parse().expect("a time")
    };
    let (before, after) = (time_of("before"), time_of("after"));
    // The first step's second is not counted: the clock is this step's.
    assert!(before < 0.9, "{}", out.stderr);
    assert!(after - before >= 0.95 && after < 5.0, "{}", out.stderr);
    let done: f64 = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("#3 DONE "))
        .and_then(|d| d.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no DONE for #3:\n{}", out.stderr));
    assert!(
        done >= 1.0,
        "DONE {done}s for a step that slept 1s:\n{}",
        out.stderr
    );
}

/// Steps are numbered per stage as BuildKit numbers them (checked against BuildKit v0.8's plain output):
/// ADD counts; a FROM is step 1 only when it pulls an image, not from `scratch` or an earlier stage.
#[test]
fn step_counts_match_buildkit() {
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM base AS build\nADD a.txt /a\nRUN echo hi > /b\nCOPY a.txt /c\nWORKDIR /w\n\
             FROM build AS second\nRUN echo two\nCOPY --from=build /a /a2\n\
             FROM scratch\nCOPY --from=second /a2 /x\nADD a.txt /y\n",
        ),
        ("a.txt", "a"),
    ]);
    let out = Kiln::new().with_base().arg(ctx.path()).run();
    out.success();
    let names: Vec<String> = out
        .steps()
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n.starts_with('['))
        .collect();
    let expected = [
        "[build 2/5] ADD a.txt /a",
        "[build 3/5] RUN echo hi > /b",
        "[build 4/5] COPY a.txt /c",
        "[build 5/5] WORKDIR /w",
        "[second 1/2] RUN echo two",
        "[second 2/2] COPY --from=build /a /a2",
        "[stage-2 1/2] COPY --from=second /a2 /x",
        "[stage-2 2/2] ADD a.txt /y",
    ];
    for name in expected {
        assert!(names.iter().any(|n| n == name), "no `{name}` in {names:#?}");
    }
    assert_eq!(names.len(), expected.len(), "{names:#?}");
}

/// A parent stage's ONBUILD triggers are steps of the child, counted in its total (BuildKit's own count
/// leaves them out and can show `3/2`); a heredoc COPY is one step.
#[test]
fn onbuild_triggers_and_heredocs_keep_each_count_within_its_total() {
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM base AS parent\nONBUILD RUN echo trig\nONBUILD ADD a.txt /t\nRUN echo p\n\
             FROM parent AS child\nRUN echo c\nCOPY <<EOF /h\nhello\nEOF\n",
        ),
        ("a.txt", "a"),
    ]);
    let out = Kiln::new().with_base().arg(ctx.path()).run();
    out.success();
    let prefixes: Vec<String> = out
        .steps()
        .into_iter()
        .filter_map(|s| Some(s.name.split_once(']')?.0.to_string() + "]"))
        .collect();
    assert_eq!(
        prefixes,
        [
            "[parent 2/2]",
            "[child 1/4]",
            "[child 2/4]",
            "[child 3/4]",
            "[child 4/4]"
        ],
        "{}",
        out.stderr
    );
}

/// Ctrl-C on a terminal: kiln exits 130 and the live view is cleared, so no frozen spinner is left above
/// the `interrupted` error.
#[test]
fn ctrl_c_on_a_terminal_clears_the_live_view() {
    use std::io::{Read as _, Write as _};
    let ctx = context(&[("Dockerfile", "FROM base\nRUN echo hi; sleep 321\n")]);
    let store = crate::support::tempdir("store-");
    let command = format!(
        "{} build --store {} --build-context base=oci-layout://{} {}",
        env!("CARGO_BIN_EXE_kiln"),
        store.path().display(),
        crate::support::base_image().display(),
        ctx.path().display()
    );
    let mut script = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    let mut stdout = script.stdout.take().expect("piped");
    let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let screen = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // The spinner shows the step's last line once it runs.
    while !String::from_utf8_lossy(&screen.lock().unwrap()).contains("hi\x1b[0m") {
        assert!(std::time::Instant::now() < deadline, "the step never ran");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A real Ctrl-C: the byte goes through the pty, whose line discipline sends SIGINT to the foreground
    // process group. (Signalling script's first child would hit `sh -c` where SHELL is dash, not kiln.)
    let sent = std::time::Instant::now();
    let mut keyboard = script.stdin.take().expect("piped");
    keyboard.write_all(b"\x03").expect("type Ctrl-C");
    keyboard.flush().expect("flush");
    let status = script.wait().expect("script ends");
    reader.join().expect("reader");
    crate::support::assert_did_not_wait(sent, 321);
    let screen = String::from_utf8_lossy(&screen.lock().unwrap()).into_owned();
    assert_eq!(status.code(), Some(130), "{screen}");
    let last_frame = screen.rfind("sleep 321").expect("a spinner frame");
    let after = &screen[last_frame..];
    let cleared = after.find("\x1b[2K").expect("the live view is cleared");
    let error = after.find("interrupted").expect("the error");
    assert!(cleared < error, "{after:?}");
}

/// `kiln build . 2>&1 | head -1`: the reader goes, the build goes on to the end (a write to stderr that
/// fails, here the warning about an unused build arg and every progress line, is dropped, never a
/// panic), and its image is kept.
#[test]
fn a_build_whose_stderr_reader_went_away_still_finishes() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN echo one && echo two\nRUN printf '%s\\n' $(seq 1 2000)\n",
    )]);
    let kiln = Kiln::new();
    let mut cmd = kiln
        .clone()
        .with_base()
        .args(["-t", "gone/reader", "--build-arg", "NOT_USED=1"])
        .arg(ctx.path())
        .command();
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let images = Kiln::bare()
        .args(["images", "--store"])
        .arg(kiln.store())
        .run();
    images.success();
    assert!(images.stdout.contains("gone/reader"), "{}", images.stdout);
}
