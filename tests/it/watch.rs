//! `kiln build --watch`: a change to a file the build selects (a context file a COPY reads, the Dockerfile)
//! rebuilds, and the output shows it; a change to a file `.dockerignore` leaves out, or that no step reads,
//! does not; Ctrl-C ends the session with 130.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{Kiln, context, write};

/// Polls `done` until it holds, or panics after a generous while, showing kiln's log.
fn eventually(log: &Path, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} never happened; kiln said:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ends kiln if the test fails before it has: a watch never ends by itself.
struct Watching(std::process::Child);

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn watch_rebuilds_on_selected_changes_only_and_ctrl_c_ends_it() {
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM base\nCOPY . /src/\nRUN cat /src/app.txt > /copy.txt\n",
        ),
        (".dockerignore", "ignored.txt\nDockerfile\n"),
        ("app.txt", "one"),
        ("ignored.txt", "left out"),
    ]);
    let other = crate::support::tempdir("unread-");
    let out = crate::support::tempdir("out-");
    let dest = out.path().join("fs");
    let log = out.path().join("kiln.log");
    let (_kiln, mut watching) = watch(ctx.path(), &dest, &log);
    let child = &mut watching.0;
    let copy = dest.join("copy.txt");
    let rebuilds = || read(&log).matches("changed: rebuilding").count();
    eventually(&log, "the first build", || read(&copy) == "one");
    eventually(&log, "watching", || read(&log).contains("Ctrl-C ends"));

    write(&ctx.path().join("app.txt"), "two");
    eventually(&log, "a rebuild for app.txt", || read(&copy) == "two");
    eventually(&log, "the second build", || {
        read(&log).matches("Ctrl-C ends").count() == 2
    });

    // Neither an ignored file nor a file outside the context may start a build; the change after them
    // does, and its line names it, not them.
    write(&ctx.path().join("ignored.txt"), "still left out");
    write(&other.path().join("x"), "x");
    write(
        &ctx.path().join("Dockerfile"),
        "FROM base\nCOPY . /src/\nRUN cat /src/app.txt > /copy.txt; echo edited > /edited.txt\n",
    );
    eventually(&log, "a rebuild for the Dockerfile", || {
        read(&dest.join("edited.txt")) == "edited\n"
    });
    let text = read(&log);
    assert_eq!(rebuilds(), 2, "{text}");
    assert!(
        !text.contains("ignored.txt changed") && text.contains("Dockerfile changed: rebuilding"),
        "{text}"
    );
    // The unchanged COPY came from the cache.
    let last = text.rsplit("Dockerfile changed").next().unwrap_or_default();
    let lines: Vec<&str> = last.lines().collect();
    let copy_at = lines
        .iter()
        .position(|l| l.contains("COPY . /src/"))
        .expect("the COPY step is reported");
    assert!(
        lines
            .get(copy_at + 1)
            .is_some_and(|l| l.ends_with("CACHED")),
        "{last}"
    );

    eventually(&log, "the third build", || {
        read(&log).matches("Ctrl-C ends").count() == 3
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    assert_eq!(ended(child, &log), Some(130), "{}", read(&log));
}

/// Starts `kiln build --watch -o type=local,dest=DEST CTX`, its output into `log`. The `Kiln` is returned
/// to be kept for the whole session: its private store is removed when it is dropped.
fn watch(ctx: &Path, dest: &Path, log: &Path) -> (Kiln, Watching) {
    let log_file = std::fs::File::create(log).expect("log");
    let kiln = Kiln::new()
        .with_base()
        .arg("-o")
        .arg(format!("type=local,dest={}", dest.display()))
        .arg("--watch")
        .arg(ctx);
    let child = kiln
        .command()
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .spawn()
        .expect("cannot start kiln");
    (kiln, Watching(child))
}

/// A build that fails to compile is watched through the files the command line names: fixing the
/// Dockerfile builds again.
#[test]
fn watch_rebuilds_a_broken_dockerfile_once_fixed() {
    let ctx = context(&[("Dockerfile", "FROM base\nNOSUCH instruction\n")]);
    let out = crate::support::tempdir("out-");
    let dest = out.path().join("fs");
    let log = out.path().join("kiln.log");
    let (_kiln, mut watching) = watch(ctx.path(), &dest, &log);
    eventually(&log, "the failed first build", || {
        read(&log).contains("watch: build 1 failed") && read(&log).contains("Ctrl-C ends")
    });
    write(
        &ctx.path().join("Dockerfile"),
        "FROM base\nRUN echo fixed > /fixed.txt\n",
    );
    eventually(&log, "the build of the fixed Dockerfile", || {
        read(&dest.join("fixed.txt")) == "fixed\n"
    });
    eventually(&log, "watching again", || {
        read(&log).matches("Ctrl-C ends").count() == 2
    });
    // SIGTERM ends it too, between builds (where the build's own listener is not).
    let child = &mut watching.0;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert_eq!(ended(child, &log), Some(143), "{}", read(&log));
}

/// kiln's exit code once it has ended, within a generous while.
fn ended(child: &mut std::process::Child, log: &Path) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s.code();
        }
        assert!(
            Instant::now() < deadline,
            "kiln --watch did not end:\n{}",
            read(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
