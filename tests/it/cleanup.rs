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
    assert!(out.stderr.contains("exit code: 3"), "{}", out.stderr);

    let left = mounts_under(kiln.store());
    assert!(
        left.is_empty(),
        "mounts outlived the build:\n{}",
        left.join("\n")
    );

    assert_gone(marker);
}

/// Waits up to 2 s for every process holding `marker` to end; kills (so they do not outlive the test run)
/// and reports any that do not.
fn assert_gone(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut alive = processes_with(marker);
    while !alive.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        alive = processes_with(marker);
    }
    for pid in &alive {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(*pid).expect("a pid"));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    assert!(
        alive.is_empty(),
        "`{marker}` outlived the build: pids {alive:?}"
    );
    let stacks = crate::isolation::stray_network_stacks();
    assert!(
        stacks.is_empty(),
        "slirp4netns outlived the build: {stacks:?}"
    );
}

/// SIGTERM to kiln while a step runs: kiln stops, exits 143 as a shell reports SIGTERM, and the step's
/// processes and mounts go with it.
#[test]
fn sigterm_kills_running_steps() {
    interrupt(
        nix::sys::signal::Signal::SIGTERM,
        "terminated",
        143,
        "sleep 314",
    );
}

/// Ctrl-C (SIGINT) while a step runs: exit 130 without waiting for the step, no sandbox process left, nothing in the
/// store's work area.
#[test]
fn sigint_exits_130_and_leaves_nothing_running() {
    interrupt(
        nix::sys::signal::Signal::SIGINT,
        "interrupted",
        130,
        "sleep 319",
    );
}

fn interrupt(signal: nix::sys::signal::Signal, says: &str, code: i32, sleep: &str) {
    use std::io::{BufRead as _, BufReader};
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM base\nRUN echo started && {sleep}\n"),
    )]);
    let store = crate::support::tempdir("store-");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "--progress", "plain", "--store"])
        .arg(store.path())
        .arg("--build-context")
        .arg(format!(
            "base=oci-layout://{}",
            crate::support::base_image().display()
        ))
        .arg(ctx.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln starts");
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.expect("utf-8");
        seen.push_str(&line);
        seen.push('\n');
        if line.ends_with(" started") {
            break;
        }
    }
    assert!(seen.contains("started"), "the step never started:\n{seen}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
    let sent = Instant::now();
    nix::sys::signal::kill(pid, signal).expect("signal kiln");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("kiln exits");
    let secs = sleep
        .trim_start_matches("sleep ")
        .parse()
        .expect("`sleep N`");
    crate::support::assert_did_not_wait(sent, secs);
    assert_eq!(status.code(), Some(code), "{}", rest.join("\n"));
    assert!(rest.join("\n").contains(says), "{}", rest.join("\n"));
    assert_gone(sleep);
    let left = mounts_under(store.path());
    assert!(
        left.is_empty(),
        "mounts outlived the build:\n{}",
        left.join("\n")
    );
    let tmp: Vec<_> = std::fs::read_dir(store.path().join("tmp"))
        .expect("the store's tmp")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(tmp.is_empty(), "left in the store's tmp: {tmp:?}");
}

/// A failing step cancels its running siblings: their processes end with the build.
#[test]
fn a_failing_sibling_cancels_the_others() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base AS slow
RUN sleep 315

FROM base AS broken
RUN sleep 0.3; exit 4

FROM base
COPY --from=slow /etc/passwd /a
COPY --from=broken /etc/passwd /b
",
    )]);
    let started = Instant::now();
    let out = Kiln::new()
        .with_base()
        .args(["--jobs", "4"])
        .arg(ctx.path())
        .run();
    out.expect_code(1);
    assert!(out.stderr.contains("exit code: 4"), "{}", out.stderr);
    crate::support::assert_did_not_wait(started, 315);
    assert_gone("sleep 315");
}
