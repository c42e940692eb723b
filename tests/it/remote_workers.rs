//! `kiln worker` in production: a real BuildGrid running the configuration docs/remote-execution.md
//! documents (tests/fixtures/buildgrid-production.yml, checked to be the one in the docs) and several
//! workers on loopback. A worker killed mid-step, a worker stopped while idle, `--concurrency`,
//! `--max-cache-size` and the worker's log. Skipped, with a note, when BuildGrid is not installed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::remote::manifest;
use crate::support::{Kiln, context, repo, tempdir, tool};

const EPOCH: &str = "1700000000";
/// The configuration's `bot-session-keepalive-timeout`.
const KEEPALIVE: Duration = Duration::from_secs(20);
const CONFIG: &str = "tests/fixtures/buildgrid-production.yml";

fn bgd() -> PathBuf {
    crate::remote::buildgrid_venv().join("bin/bgd")
}

/// BuildGrid with the documented configuration; its workers are started by the test.
struct Grid {
    dir: tempfile::TempDir,
    addr: String,
    /// BuildGrid as `restart` started it again.
    restarted: std::sync::Mutex<Vec<Child>>,
}

struct Worker {
    child: Child,
    log: PathBuf,
    work: PathBuf,
}

impl Grid {
    fn start() -> Option<Grid> {
        if !bgd().exists() {
            crate::support::skip_without("worker tests", "BuildGrid is not installed");
            return None;
        }
        let dir = tempdir("grid-");
        let out = tool(
            "bash",
            &[
                repo().join("tests/fixtures/start-buildgrid.sh").to_str()?,
                dir.path().join("bg").to_str()?,
                "--owner",
                &std::process::id().to_string(),
                "--config",
                repo().join(CONFIG).to_str()?,
            ],
        );
        let addr = out
            .lines()
            .find_map(|l| l.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("start-buildgrid.sh printed no address:\n{out}"))
            .to_string();
        Some(Grid {
            dir,
            addr,
            restarted: Default::default(),
        })
    }

    fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// Starts `kiln worker NAME` and waits for its connection line.
    fn worker(&self, name: &str, extra: &[&str]) -> Worker {
        let work = self.dir.path().join(name);
        self.worker_as(Command::new(env!("CARGO_BIN_EXE_kiln")), name, &work, extra)
    }

    /// Starts `kiln worker` through `cmd` (kiln, or a wrapper that runs it as another user).
    fn worker_as(&self, mut cmd: Command, name: &str, work: &Path, extra: &[&str]) -> Worker {
        let log = self.dir.path().join(format!("{name}.log"));
        let work = work.to_path_buf();
        let started = Instant::now();
        let child = cmd
            .args(["worker", "--server", &self.url(), "--work-dir"])
            .arg(&work)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start kiln worker");
        let w = Worker { child, log, work };
        // Announced when the session exists, not at the first job (BuildGrid holds CreateBotSession
        // until there is one, up to 80 % of the keep-alive timeout).
        wait_for(
            || w.text().contains("kiln worker: connected to"),
            Duration::from_secs(10),
            || format!("{name} did not announce its connection:\n{}", w.text()),
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        w
    }

    /// Stops BuildGrid (SIGKILL, as a crash) and starts it again on the same address, database and
    /// CAS, as a service manager would.
    fn restart(&self) {
        let bg = self.dir.path().join("bg");
        let pid = std::fs::read_to_string(bg.join("bgd.pid")).unwrap();
        tool("kill", &["-KILL", pid.trim()]);
        let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
        wait_for(
            || {
                !proc.exists()
                    || std::fs::read_to_string(proc.join("stat")).is_ok_and(|s| s.contains(") Z "))
            },
            Duration::from_secs(10),
            || "BuildGrid did not stop".into(),
        );
        let pg = std::fs::read_to_string(bg.join("pgdir")).unwrap();
        let db = format!(
            "postgresql+psycopg2://postgres@/bgd?host={}/sock",
            pg.trim()
        );
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(bg.join("bgd.log"))
            .unwrap();
        let child = Command::new(bgd())
            .args(["server", "start"])
            .arg(bg.join("buildgrid.yml"))
            .env("BGD_ADDRESS", &self.addr)
            .env("BGD_DB", db)
            .env("BGD_CAS", bg.join("cas"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        // The fixture's stop finds it by this file.
        std::fs::write(bg.join("bgd.pid"), child.id().to_string()).unwrap();
        self.restarted.lock().unwrap().push(child);
    }

    /// Operations BuildGrid has not completed (`bgd operation list` lists only those).
    fn incomplete_operations(&self) -> String {
        let out = Command::new(bgd())
            .args(["operation", "--remote", &format!("http://{}", self.addr)])
            .args(["list", "--json"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if text.contains("No operations to list") {
            String::new()
        } else {
            text
        }
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("tests/fixtures/start-buildgrid.sh"))
            .arg(self.dir.path().join("bg"))
            .arg("stop")
            .output();
        for mut c in self.restarted.lock().unwrap().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Worker {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The commands of the actions it started.
    fn ran(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter_map(|l| l.split_once("kiln worker: running action ").map(|(_, r)| r))
            .map(|l| l.split_once(": ").map_or(l, |(_, c)| c).to_string())
            .collect()
    }

    fn signal(&self, sig: &str) {
        tool("kill", &[&format!("-{sig}"), &self.child.id().to_string()]);
    }

    /// Waits for it to exit, at most `limit`.
    fn exits_within(&mut self, limit: Duration) {
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < limit,
                "the worker did not exit:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(mut ok: impl FnMut() -> bool, limit: Duration, why: impl Fn() -> String) {
    let started = Instant::now();
    while !ok() {
        assert!(started.elapsed() < limit, "{}", why());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn build(ctx: &Path, extra: &[&str]) -> crate::support::Output {
    let out = tempdir("workers-out-");
    Kiln::new()
        .with_base()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(extra)
        .arg("-o")
        .arg(format!(
            "type=oci,dest={}",
            out.path().join("img").display()
        ))
        .arg(ctx)
        .run()
}

/// A Dockerfile of `n` trivial RUN steps, one after the other, unlike any other test's.
fn chain(tag: &str, n: usize) -> tempfile::TempDir {
    let mut df = String::from("FROM base\n");
    for i in 0..n {
        df.push_str(&format!("RUN echo {tag}-{i} > /{tag}-{i}\n"));
    }
    context(&[("Dockerfile", &df)])
}

/// The documented configuration is the one these tests run.
#[test]
fn the_documented_buildgrid_configuration_is_the_tested_one() {
    let docs = std::fs::read_to_string(repo().join("docs/remote-execution.md")).unwrap();
    let config = std::fs::read_to_string(repo().join(CONFIG)).unwrap();
    assert!(
        docs.contains(&format!("```yaml\n{config}```")),
        "docs/remote-execution.md must show {CONFIG} verbatim"
    );
}

/// Two workers: the log's timestamps and connection line, a chain of 10 remote steps, a worker
/// SIGKILLed mid-step, then a worker stopped with SIGTERM while idle.
#[test]
fn workers_fail_over_and_leave_cleanly() {
    let Some(grid) = Grid::start() else { return };
    let mut a = grid.worker("a", &[]);
    let mut b = grid.worker("b", &[]);
    for w in [&a, &b] {
        let line = w.text().lines().next().unwrap_or_default().to_string();
        let (time, rest) = line.split_once(' ').unwrap_or_default();
        // RFC 3339, UTC, milliseconds: 2024-01-02T03:04:05.678Z
        let shape = time.len() == 24
            && time.ends_with('Z')
            && time.char_indices().all(|(i, c)| match i {
                4 | 7 => c == '-',
                10 => c == 'T',
                13 | 16 => c == ':',
                19 => c == '.',
                23 => c == 'Z',
                _ => c.is_ascii_digit(),
            });
        assert!(shape, "not an RFC 3339 UTC time: {line}");
        let connected = format!(
            "kiln worker: connected to {} (instance \"\") as ",
            grid.url()
        );
        assert!(
            rest.starts_with(&connected) && rest.contains("capacity 1"),
            "{line}"
        );
    }

    // The figure in the docs: a chain of 10 trivial remote steps.
    let ten = chain("ten", 10);
    let started = Instant::now();
    build(ten.path(), &["--remote-executor", &grid.url()]).success();
    let took = started.elapsed();
    eprintln!(
        "note: 10 chained remote steps took {:.1} s",
        took.as_secs_f64()
    );
    assert_eq!(a.ran().len() + b.ran().len(), 10);

    // SIGKILL of the worker running a step: the job goes to the other one once the dead session
    // times out, and the image is the one a local build gives.
    let slow = context(&[(
        "Dockerfile",
        "FROM base\nRUN sleep 3 && echo survived > /survived\n",
    )]);
    let local = build(slow.path(), &[]);
    local.success();
    let url = grid.url();
    let ctx = slow.path().to_path_buf();
    let remote = std::thread::spawn(move || build(&ctx, &["--remote-executor", &url]));
    let is_slow = |w: &Worker| w.ran().iter().any(|c| c.contains("echo survived"));
    wait_for(
        || is_slow(&a) || is_slow(&b),
        Duration::from_secs(60),
        || format!("no worker took the step:\n{}\n{}", a.text(), b.text()),
    );
    let (victim, survivor) = if is_slow(&a) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let killed = Instant::now();
    let remote = remote.join().unwrap();
    remote.success();
    assert_eq!(
        manifest(&remote.stdout),
        manifest(&local.stdout),
        "{}",
        remote.stderr
    );
    assert!(is_slow(survivor), "{}", survivor.text());
    eprintln!(
        "note: the killed worker's step (3 s) came back from the other one {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    // The keep-alive timeout, the reaper's interval, the step and some slack on a loaded machine.
    assert!(
        killed.elapsed() < KEEPALIVE + Duration::from_secs(20),
        "the step came back after {:?}",
        killed.elapsed()
    );
    assert_eq!(grid.incomplete_operations(), "", "no orphaned operation");

    // SIGTERM of an idle worker: it closes its session, so no step waits for it to time out.
    let mut idle = grid.worker("idle", &[]);
    idle.signal("TERM");
    idle.exits_within(Duration::from_secs(10));
    assert!(idle.text().contains("session closed"), "{}", idle.text());
    let three = chain("three", 3);
    let started = Instant::now();
    build(three.path(), &["--remote-executor", &grid.url()]).success();
    assert!(
        started.elapsed() < KEEPALIVE,
        "a step went to the stopped worker: {:?}",
        started.elapsed()
    );
    assert_eq!(
        survivor
            .ran()
            .iter()
            .filter(|c| c.contains("three-"))
            .count(),
        3,
        "{}",
        survivor.text()
    );
    assert!(idle.ran().is_empty());
}

/// The worker that runs the step `needle`, once one has started it, and the other one.
fn runner<'a>(
    a: &'a mut Worker,
    b: &'a mut Worker,
    needle: &str,
) -> (&'a mut Worker, &'a mut Worker) {
    let runs = |w: &Worker| w.ran().iter().any(|c| c.contains(needle));
    wait_for(
        || runs(a) || runs(b),
        Duration::from_secs(60),
        || format!("no worker took the step:\n{}\n{}", a.text(), b.text()),
    );
    if runs(a) { (a, b) } else { (b, a) }
}

/// SIGTERM of a busy worker: its step finishes there and is reported, then it leaves. A second SIGTERM
/// hands the step back, and BuildGrid gives it to another worker at once, not after the keep-alive.
#[test]
fn a_busy_worker_drains_or_hands_back() {
    let Some(grid) = Grid::start() else { return };
    let mut a = grid.worker("a", &[]);
    let mut b = grid.worker("b", &[]);
    let drained = context(&[(
        "Dockerfile",
        "FROM base\nRUN sleep 3 && echo drained > /drained\n",
    )]);
    let (url, ctx) = (grid.url(), drained.path().to_path_buf());
    let remote = std::thread::spawn(move || build(&ctx, &["--remote-executor", &url]));
    let (victim, other) = runner(&mut a, &mut b, "echo drained");
    victim.signal("TERM");
    let remote = remote.join().unwrap();
    remote.success();
    victim.exits_within(Duration::from_secs(10));
    let log = victim.text();
    assert!(
        log.contains("finished action") && log.contains("session closed"),
        "{log}"
    );
    assert!(other.ran().is_empty(), "{}", other.text());

    // Twice: the step stops and goes to another worker.
    let mut c = grid.worker("c", &[]);
    let other: &mut Worker = other;
    let abandoned = context(&[(
        "Dockerfile",
        "FROM base\nRUN sleep 5 && echo abandoned > /abandoned\n",
    )]);
    let local = build(abandoned.path(), &[]);
    local.success();
    let (url, ctx) = (grid.url(), abandoned.path().to_path_buf());
    let remote = std::thread::spawn(move || build(&ctx, &["--remote-executor", &url]));
    let (victim, next) = runner(other, &mut c, "echo abandoned");
    victim.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    victim.signal("TERM");
    let handed = Instant::now();
    victim.exits_within(Duration::from_secs(10));
    assert!(victim.text().contains("handed back"), "{}", victim.text());
    wait_for(
        || next.ran().iter().any(|c| c.contains("echo abandoned")),
        KEEPALIVE / 2,
        || format!("the step was not requeued at once:\n{}", next.text()),
    );
    assert!(handed.elapsed() < KEEPALIVE / 2);
    let remote = remote.join().unwrap();
    remote.success();
    assert_eq!(manifest(&remote.stdout), manifest(&local.stdout));
    assert_eq!(grid.incomplete_operations(), "", "no orphaned operation");
}

/// BuildGrid restarted (after a crash) while a worker runs a step: the worker keeps trying until the
/// server is back (with a new session, or its old one, which BuildGrid kept in its database) and runs the
/// next build's steps.
#[test]
fn a_worker_reconnects_after_buildgrid_restarts() {
    let Some(grid) = Grid::start() else { return };
    let w = grid.worker("w", &[]);
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN sleep 15 && echo interrupted > /interrupted\n",
    )]);
    let (url, path) = (grid.url(), ctx.path().to_path_buf());
    // Whether this build survives the restart is the client's business; the worker's is to recover.
    let interrupted = std::thread::spawn(move || build(&path, &["--remote-executor", &url]));
    wait_for(
        || w.ran().iter().any(|c| c.contains("echo interrupted")),
        Duration::from_secs(60),
        || w.text(),
    );
    grid.restart();
    // The server is back once it answers a call (it accepts connections a while before).
    wait_for(
        || {
            Command::new(bgd())
                .args(["operation", "--remote", &format!("http://{}", grid.addr)])
                .args(["list", "--json"])
                .output()
                .is_ok_and(|o| o.status.success())
        },
        Duration::from_secs(90),
        || "BuildGrid did not come back".into(),
    );
    // Which of two things happens depends on when the worker next calls: a call the crash broke loses
    // the session ("session lost", then a new one), while a call that reaches the restarted server finds
    // the session in its database and goes on. Either way the worker serves the next build.
    let after = chain("after", 2);
    // A worker that never came back fails the step instead of hanging the test.
    let url = grid.url();
    build(
        after.path(),
        &["--remote-executor", &url, "--remote-timeout", "180s"],
    )
    .success();
    assert_eq!(
        w.ran().iter().filter(|c| c.contains("after-")).count(),
        2,
        "{}",
        w.text()
    );
    drop(interrupted);
}

/// One worker with `--concurrency 2` runs two steps at once; `--max-cache-size` prunes its snapshots
/// after each job, but never one a running step stands on, and a later job still works.
#[test]
fn concurrent_leases_and_a_bounded_cache() {
    let Some(grid) = Grid::start() else { return };
    let bound: u64 = 64 * 1024;
    let w = grid.worker(
        "w",
        &["--concurrency", "2", "--max-cache-size", &bound.to_string()],
    );
    assert!(w.text().contains("capacity 2"), "{}", w.text());
    // Two independent stages: the short step ends (and prunes) while the long one still reads the
    // base image's files.
    let ctx = context(&[(
        "Dockerfile",
        "FROM base AS short\nRUN sleep 1 && echo short > /short\n\
         FROM base AS long\nRUN sleep 4 && ls /bin > /long\n\
         FROM base\nCOPY --from=short /short /short\nCOPY --from=long /long /long\n",
    )]);
    let local = build(ctx.path(), &[]);
    local.success();
    let remote = build(ctx.path(), &["--remote-executor", &grid.url()]);
    remote.success();
    assert_eq!(manifest(&remote.stdout), manifest(&local.stdout));
    let log = w.text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("running action") || l.contains("finished action"))
        .collect();
    assert!(
        lines.len() == 4 && lines[0].contains("running") && lines[1].contains("running"),
        "both steps must start before either ends:\n{log}"
    );
    // Pruning follows the report of the job's result.
    wait_for(
        || w.text().contains("pruned"),
        Duration::from_secs(10),
        || w.text(),
    );
    let size = tree_size(&w.work.join("layers"));
    assert!(
        size <= bound,
        "{size} bytes kept, over {bound}:\n{}",
        w.text()
    );

    // A later job unpacks again what was pruned.
    let later = chain("later", 1);
    build(later.path(), &["--remote-executor", &grid.url()]).success();
    assert!(w.ran().iter().any(|c| c.contains("later-0")), "{log}");
}

/// A worker run by an unprivileged user with a subordinate id range (in a user namespace, as rootless
/// `kiln build`) gives the image a local root build gives, ownership included.
#[test]
fn a_rootless_worker_runs_steps() {
    let Some(grid) = Grid::start() else { return };
    let user = crate::rootless::user(crate::rootless::RANGED, true);
    let home = tempfile::Builder::new()
        .prefix("kiln-worker-it-")
        .tempdir_in(user.home())
        .unwrap();
    user.own(home.path());
    let wrapper = user.wrapper();
    let mut cmd = Command::new(&wrapper[0]);
    cmd.args(&wrapper[1..])
        .arg(user.kiln_binary())
        .env("HOME", user.home());
    let w = grid.worker_as(cmd, "rootless", &home.path().join("work"), &[]);
    let ctx = context(&[(
        "Dockerfile",
        "FROM base
RUN mkdir /app && echo hi > /app/x && chown 1000:1000 /app/x && chmod 4755 /app/x
",
    )]);
    let local = build(ctx.path(), &[]);
    local.success();
    let remote = build(ctx.path(), &["--remote-executor", &grid.url()]);
    remote.success();
    assert_eq!(
        manifest(&remote.stdout),
        manifest(&local.stdout),
        "{}",
        remote.stderr
    );
    assert!(
        w.ran().iter().any(|c| c.contains("chown 1000:1000")),
        "{}",
        w.text()
    );
}

fn tree_size(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

#[test]
fn bad_worker_options_are_clear_errors() {
    let out = Kiln::bare()
        .args(["worker", "--server", "grpc://127.0.0.1:1"])
        .args(["--max-cache-size", "lots"])
        .run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("`lots` is not a size") && out.stderr.contains("10GB"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("^^^^"), "{}", out.stderr);
    let out = Kiln::bare()
        .args([
            "worker",
            "--server",
            "grpc://127.0.0.1:1",
            "--concurrency",
            "0",
        ])
        .run();
    out.expect_code(2);
    assert!(out.stderr.contains("--concurrency"), "{}", out.stderr);
}
