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
