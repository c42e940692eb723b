//! `--progress json`: every line is a JSON event, every step is covered from start to finish (or cached),
//! each with its digest and source location, and a secret printed by a step shows as `***`.

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
