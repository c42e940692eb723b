//! Nothing outlives a build (SPEC §4): no mount that names the store, no process a failed step started.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Kiln, context};

/// The lines of this process's mountinfo that name `store`.
fn mounts_under(store: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let store = store.to_string_lossy();
    info.lines()
        .filter(|l| l.contains(&*store))
        .map(str::to_string)
        .collect()
}

/// Pids of live processes whose command line holds `needle` (arguments joined by spaces).
fn processes_with(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c: Vec<u8> = c.iter().map(|b| if *b == 0 { b' ' } else { *b }).collect();
                String::from_utf8_lossy(&c).contains(needle)
            })
        })
        .collect()
}

#[test]
fn successful_build_leaves_no_mounts() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base
RUN --mount=type=secret,id=s echo ran > /ran
",
    )]);
    let kiln = Kiln::new();
    kiln.clone()
        .with_base()
        .args(["--secret", "id=s,env=KILN_IT_S"])
        .env("KILN_IT_S", "value")
        .arg(ctx.path())
        .run()
        .success();
    let left = mounts_under(kiln.store());
    assert!(
        left.is_empty(),
        "mounts outlived the build:\n{}",
        left.join("\n")
    );
}

#[test]
fn failed_step_leaves_no_mounts_or_processes() {
    // The background sleep is the step's own child; the shell exits 3 while it still runs.
    let marker = "sleep 313";
    let ctx = context(&[(
        "Dockerfile",
        "FROM base
RUN sleep 313 & echo started; exit 3
",
    )]);
    let kiln = Kiln::new();
    let out = kiln.clone().with_base().arg(ctx.path()).run();
    out.expect_code(1);
    assert!(out.stderr.contains("exit code 3"), "{}", out.stderr);

    let left = mounts_under(kiln.store());
    assert!(
        left.is_empty(),
        "mounts outlived the build:\n{}",
        left.join("\n")
    );

    let deadline = Instant::now() + Duration::from_secs(2);
    let mut alive = processes_with(marker);
    while !alive.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        alive = processes_with(marker);
    }
    for pid in &alive {
        // Ours (started by the build under test): end it so it does not outlive the test run either.
        let pid = nix::unistd::Pid::from_raw(i32::try_from(*pid).expect("a pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    assert!(
        alive.is_empty(),
        "`{marker}` outlived the build: pids {alive:?}"
    );
}
