//! The cache: a rebuild runs nothing; rotating a secret's value rebuilds nothing (SPEC §3.2); editing a RUN
//! reruns exactly that step and what depends on it; `--no-cache` runs everything.

use std::path::Path;

use crate::support::{EXAMPLE_PASSWORD, Kiln, Output, StepState, copy_dir, repo, tempdir, write};

/// The example's build, with the context and the secret file given, into `store`.
fn build(store: &Path, ctx: &Path, secret: &Path) -> Output {
    let out = Kiln::build_in(store)
        .with_base()
        .arg("--secret")
        .arg(format!("id=mysecret,src={}", secret.display()))
        .arg(ctx)
        .run();
    out.success();
    out
}

/// `(run, cached)` counted from the per-step markers, for comparing with the summary line. The `FROM` of an
/// image is shown as a step but counted in neither number, so it is left out here too.
fn counted(out: &Output) -> (usize, usize) {
    let steps = out.steps();
    let count = |state| steps.iter().filter(|s| s.state == state).count();
    (count(StepState::Done), count(StepState::Cached))
}

#[track_caller]
fn assert_all(out: &Output, state: StepState) {
    let steps = out.steps();
    assert!(!steps.is_empty(), "no steps reported:\n{}", out.stderr);
    let wrong: Vec<_> = steps.iter().filter(|s| s.state != state).collect();
    assert!(
        wrong.is_empty(),
        "not {state:?}: {wrong:#?}\n{}",
        out.stderr
    );
}

#[test]
fn second_build_runs_nothing() {
    let store = tempdir("store-");
    let example = repo().join("examples/secrets");
    let secret = example.join("secrets.json");
    let first = build(store.path(), &example, &secret);
    let (ran, cached) = first.summary();
    assert!(
        ran > 0 && cached == 0,
        "a fresh store runs every step:\n{}",
        first.stderr
    );

    assert_eq!(first.summary(), counted(&first), "{}", first.stderr);

    let second = build(store.path(), &example, &secret);
    assert_eq!(second.summary(), (0, ran), "{}", second.stderr);
    assert_all(&second, StepState::Cached);
}

#[test]
fn rotating_the_secret_does_not_rebuild() {
    let store = tempdir("store-");
    let example = repo().join("examples/secrets");
    let first = build(store.path(), &example, &example.join("secrets.json"));

    let rotated = tempdir("secret-");
    let original = std::fs::read_to_string(example.join("secrets.json")).expect("secrets.json");
    let new = original.replace(EXAMPLE_PASSWORD, "an-entirely-new-password-42");
    assert_ne!(new, original);
    let path = rotated.path().join("secrets.json");
    write(&path, new);

    let second = build(store.path(), &example, &path);
    assert_eq!(
        second.summary(),
        (0, first.summary().0),
        "{}",
        second.stderr
    );
    assert_all(&second, StepState::Cached);
}

#[test]
fn editing_a_run_reruns_it_and_its_dependents_only() {
    let store = tempdir("store-");
    let ctx = copy_dir(&repo().join("examples/secrets"));
    let secret = ctx.path().join("secrets.json");
    build(store.path(), ctx.path(), &secret);

    let dockerfile = ctx.path().join("Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).expect("Dockerfile");
    // Changes the RUN's text and its output, so dependents rerun whether keys follow definitions or content.
    let edited = text.replace(r#"echo "user=$user""#, r#"echo "account=$user""#);
    assert_ne!(
        edited, text,
        "the example's RUN has the text this test edits"
    );
    write(&dockerfile, edited);

    let out = build(store.path(), ctx.path(), &secret);
    for (needle, state) in [
        ("FROM ", StepState::Cached),
        ("WORKDIR /work", StepState::Cached),
        // The final stage's WORKDIR does not depend on the fetch stage.
        ("WORKDIR /app", StepState::Cached),
        ("RUN --mount=type=secret", StepState::Done),
        ("COPY --from=fetch", StepState::Done),
        ("COPY app.sh", StepState::Done),
        ("RUN chmod", StepState::Done),
    ] {
        assert_eq!(
            out.step(needle).state,
            state,
            "step `{needle}`:\n{}",
            out.stderr
        );
    }
    assert_eq!(out.summary(), counted(&out), "{}", out.stderr);
}

#[test]
fn no_cache_runs_everything() {
    let store = tempdir("store-");
    let example = repo().join("examples/secrets");
    let secret = example.join("secrets.json");
    let first = build(store.path(), &example, &secret);

    let out = Kiln::build_in(store.path())
        .with_base()
        .arg("--no-cache")
        .arg("--secret")
        .arg(format!("id=mysecret,src={}", secret.display()))
        .arg(&example)
        .run();
    out.success();
    assert_eq!(out.summary(), first.summary(), "{}", out.stderr);
    let cached: Vec<_> = out
        .steps()
        .into_iter()
        .filter(|s| s.state != StepState::Done)
        .collect();
    assert!(cached.is_empty(), "not run: {cached:#?}\n{}", out.stderr);
}

/// `--no-cache` runs the steps again and their new output is the build's result, as BuildKit's: a step that
/// reads the clock or the network is how one refreshes an image. A `COPY --from` copies the stage's new
/// output, the steps after stand on it, and the next cached build returns that newest output.
#[test]
fn no_cache_output_is_the_new_run_and_the_cache_keeps_it() {
    let ctx = crate::support::context(&[(
        "Dockerfile",
        "FROM base AS gen\nRUN head -c 16 /dev/urandom | od -A n -x > /stamp\n\
         FROM base\nCOPY --from=gen /stamp /stamp\nRUN cp /stamp /copy\n",
    )]);
    let store = tempdir("store-");
    let dest = tempdir("out-");
    let build = |name: &str, flags: &[&str]| {
        let out = dest.path().join(name);
        Kiln::build_in(store.path())
            .with_base()
            .args(flags)
            .arg("-o")
            .arg(format!("type=local,dest={}", out.display()))
            .arg(ctx.path())
            .run()
            .success();
        let stamp = std::fs::read_to_string(out.join("stamp")).unwrap();
        let copy = std::fs::read_to_string(out.join("copy")).unwrap();
        assert_eq!(stamp, copy, "the second step stands on the first's output");
        stamp
    };
    let first = build("first", &[]);
    let second = build("second", &["--no-cache"]);
    let third = build("third", &["--no-cache"]);
    assert_ne!(first, second, "--no-cache gave the cached output");
    assert_ne!(second, third, "--no-cache gave the cached output");
    assert_eq!(build("cached", &[]), third);
}

/// A base image layout is input: a layer blob whose bytes do not match its digest is refused before any
/// step runs. Once a layer is in the store (unpacked from bytes that did match), later builds use the
/// store's verified copy and never read the layout's blob again, so damage to it afterwards changes nothing.
#[test]
fn a_corrupt_base_layer_is_refused_and_a_stored_one_is_not_read_again() {
    let ctx = crate::support::context(&[("Dockerfile", "FROM base\nRUN echo hi > /hi\n")]);
    let layout = copy_dir(crate::support::base_image());
    let corrupt = |layout: &Path| {
        let blobs = layout.join("blobs/sha256");
        let biggest = std::fs::read_dir(&blobs)
            .unwrap()
            .flatten()
            .max_by_key(|e| e.metadata().unwrap().len())
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&biggest).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&biggest, bytes).unwrap();
    };
    let build = |store: &Path, layout: &Path, extra: &[&str]| {
        Kiln::build_in(store)
            .arg("--build-context")
            .arg(format!("base=oci-layout://{}", layout.display()))
            .args(extra)
            .arg(ctx.path())
            .run()
    };

    let damaged = copy_dir(layout.path());
    corrupt(damaged.path());
    let fresh = tempdir("store");
    let out = build(fresh.path(), damaged.path(), &[]);
    out.expect_code(2);
    assert!(out.stderr.contains("is corrupt"), "{}", out.stderr);
    assert!(
        out.steps().iter().all(|s| s.state != StepState::Done),
        "{}",
        out.stderr
    );

    let store = tempdir("store");
    build(store.path(), layout.path(), &[]).success();
    corrupt(layout.path());
    let again = build(store.path(), layout.path(), &["--no-cache"]);
    again.success();
    assert_eq!(
        again.step("echo hi").state,
        StepState::Done,
        "{}",
        again.stderr
    );
}

/// Steps that miss are put off until something needs them, then run each in a task of its own: a long
/// chain of them (one stage's steps) must not nest a poll per step on one stack (400 nested RUNs
/// overflowed a worker's stack before).
#[test]
fn a_long_chain_of_missing_steps_runs() {
    let mut dockerfile = String::from("FROM base\n");
    for i in 0..300 {
        dockerfile.push_str(&format!("COPY f /d{i}/\n"));
    }
    let ctx = crate::support::context(&[("Dockerfile", &dockerfile), ("f", "x\n")]);
    let out = Kiln::new().with_base().arg(ctx.path()).run();
    out.success();
    assert_eq!(out.summary().0, 301, "{}", out.stderr);
}

/// A put-off step that fails, needed by two steps at once: the build reports the step's own failure, with
/// its place in the Dockerfile, whichever consumer asked first.
#[test]
fn a_failing_step_two_steps_need_reports_itself() {
    let ctx = crate::support::context(&[(
        "Dockerfile",
        "FROM base AS bad\nRUN echo broken-on-purpose; exit 3\nFROM base AS one\nCOPY --from=bad /etc /one\nFROM base\nCOPY --from=bad /etc /two\nCOPY --from=one /one /one\n",
    )]);
    let out = Kiln::new().with_base().arg(ctx.path()).run();
    out.expect_code(1);
    assert!(out.stderr.contains("Dockerfile:2"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("a step this one needs failed"),
        "{}",
        out.stderr
    );
    assert_eq!(out.step("exit 3").state, StepState::Error);
}
