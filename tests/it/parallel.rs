//! Independent stages run at the same time under `--jobs`. Timing is printed, not asserted: CI machines are
//! too noisy for a wall-clock bound, but a human reading the log sees ~2 s rather than ~4 s.

use crate::support::{Kiln, StepState, context};

#[test]
fn independent_stages_both_run() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base AS left
RUN sleep 2 && echo left > /left

FROM base AS right
RUN sleep 2 && echo right > /right

FROM base
COPY --from=left /left /
COPY --from=right /right /
",
    )]);
    let started = std::time::Instant::now();
    let out = Kiln::new()
        .with_base()
        .args(["--jobs", "4"])
        .arg(ctx.path())
        .run();
    eprintln!(
        "two 2 s stages with --jobs 4 took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    out.success();
    for run in ["echo left", "echo right"] {
        assert_eq!(out.step(run).state, StepState::Done, "{}", out.stderr);
    }
}

/// A step that mounts the stage it builds on (one input twice) and a slower stage as well waits for both:
/// the scheduler counts each input node once, however many times the step names it.
#[test]
fn a_step_waits_for_every_input_even_with_one_named_twice() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base AS a
RUN echo a > /a

FROM base AS slow
RUN sleep 1 && echo slow > /slow

FROM a
RUN --mount=type=bind,from=a,target=/m --mount=type=bind,from=slow,target=/s cat /m/a /s/slow > /both
",
    )]);
    let out = Kiln::new()
        .with_base()
        .args(["--jobs", "4"])
        .arg(ctx.path())
        .run();
    out.success();
    assert_eq!(
        out.step("cat /m/a").state,
        StepState::Done,
        "{}",
        out.stderr
    );
}
