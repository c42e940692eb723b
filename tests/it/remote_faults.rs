//! The REAPI client under faults, against a real BuildGrid (PostgreSQL scheduler) and real `kiln worker`s
//! on loopback: no worker at all with `--remote-timeout` (a clear error in time, the operation cancelled
//! in BuildGrid's database, no stale job for a worker that comes later), Ctrl-C of a remote build and a
//! failing sibling step (the operation cancelled), BuildGrid restarted in the middle of a step (the build
//! resumes the operation, or submits the Action again when the server lost its database, and gives the
//! local build's image), `--no-cache` and `--remote-accept-cached=false` (the worker runs the
//! step again), and the per-step status and summary counts in plain and JSON progress. Skipped, with a
//! note, when BuildGrid is not installed (scripts/setup.sh installs it).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::remote::{buildgrid_venv, manifest};
use crate::support::{Kiln, context, repo, tempdir, tool};

const EPOCH: &str = "1700000000";

/// A BuildGrid and the kiln workers a test starts on it, all stopped when dropped.
struct Grid {
    dir: tempfile::TempDir,
    addr: String,
    pgsock: PathBuf,
    workers: Vec<(Child, PathBuf)>,
    /// BuildGrid's server once a test restarted it.
    restarted: Option<Child>,
}

impl Grid {
    fn start() -> Option<Grid> {
        if !buildgrid_venv().join("bin/bgd").exists() {
            crate::support::skip_without("remote fault tests", "BuildGrid is not installed");
            return None;
        }
        let dir = tempdir("buildgrid-faults-");
        let out = tool(
            "bash",
            &[
                repo().join("tests/fixtures/start-buildgrid.sh").to_str()?,
                dir.path().join("bg").to_str()?,
                "--owner",
                &std::process::id().to_string(),
            ],
        );
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("start-buildgrid.sh printed no {name}\n{out}"))
                .to_string()
        };
        Some(Grid {
            addr: field("addr="),
            pgsock: PathBuf::from(field("pgsock=")),
            dir,
            workers: Vec::new(),
            restarted: None,
        })
    }

    fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    /// Starts a kiln worker and waits until it has a bot session.
    fn add_worker(&mut self) {
        let n = self.workers.len();
        let log = self.dir.path().join(format!("worker{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["worker", "--server", &self.url(), "--work-dir"])
            .arg(self.dir.path().join(format!("worker{n}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cannot start kiln worker");
        self.workers.push((child, log.clone()));
        wait_for(60, "the worker to connect", || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("connected to")
        });
    }

    /// Every worker's log, one after the other.
    fn logs(&self) -> String {
        self.workers
            .iter()
            .map(|(_, log)| std::fs::read_to_string(log).unwrap_or_default())
            .collect()
    }

    /// How many actions the workers started.
    fn ran(&self) -> usize {
        self.logs().matches("kiln worker: running action ").count()
    }

    /// One query on BuildGrid's scheduler database, its rows as `a|b` lines.
    fn sql(&self, query: &str) -> String {
        self.sql_on("bgd", query)
    }

    fn sql_on(&self, database: &str, query: &str) -> String {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--", "psql", "-h"])
            .arg(&self.pgsock)
            .args(["-U", "postgres", "-d", database, "-tAc", query])
            .output()
            .expect("cannot run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Jobs BuildGrid still means to run or is running (stage below COMPLETED, not cancelled).
    fn live_jobs(&self) -> usize {
        self.sql("select count(*) from jobs where stage < 4 and not cancelled")
            .parse()
            .expect("a count")
    }

    fn cancelled_jobs(&self) -> usize {
        self.sql("select count(*) from jobs where cancelled")
            .parse()
            .expect("a count")
    }

    /// Kills BuildGrid's server process (its database stays).
    fn kill_server(&self) {
        let bg = self.dir.path().join("bg");
        let pid: i32 = std::fs::read_to_string(bg.join("bgd.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        wait_for(30, "BuildGrid to stop", || {
            nix::sys::signal::kill(pid, None).is_err()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        });
    }

    /// Stops BuildGrid's server process and starts it again on the same port, as a deploy does, with
    /// its database kept or (`fresh_database`) emptied, so that it knows no earlier operation; the
    /// workers and clients stay.
    fn restart_server(&mut self, fresh_database: bool) {
        let bg = self.dir.path().join("bg");
        self.kill_server();
        std::thread::sleep(Duration::from_secs(2));
        if fresh_database {
            self.sql_on("postgres", "drop database bgd with (force)");
            self.sql_on("postgres", "create database bgd");
            let db = format!(
                "postgresql+psycopg2://postgres@/bgd?host={}",
                self.pgsock.display()
            );
            tool(
                buildgrid_venv().join("bin/bgd").to_str().unwrap(),
                &["migrate", "apply", &db],
            );
        }
        let child = Command::new(buildgrid_venv().join("bin/bgd"))
            .args(["server", "start"])
            .arg(bg.join("buildgrid.yml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(bg.join("bgd-restarted.log")).unwrap())
            .spawn()
            .expect("cannot restart bgd");
        std::fs::write(bg.join("bgd.pid"), child.id().to_string()).unwrap();
        self.restarted = Some(child);
        let bgd = buildgrid_venv().join("bin/bgd");
        wait_for(60, "BuildGrid to answer again", || {
            Command::new(&bgd)
                .args(["capabilities", "--remote", &format!("http://{}", self.addr)])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        for child in self
            .workers
            .iter_mut()
            .map(|(c, _)| c)
            .chain(&mut self.restarted)
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("bash")
            .arg(repo().join("tests/fixtures/start-buildgrid.sh"))
            .arg(self.dir.path().join("bg"))
            .arg("stop")
            .output();
    }
}

#[track_caller]
fn wait_for(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kiln(extra: &[&str]) -> Kiln {
    Kiln::new()
        .with_base()
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .args(extra)
}

fn build(ctx: &Path, out: &Path, extra: &[&str]) -> crate::support::Output {
    kiln(extra)
        .arg("-o")
        .arg(format!("type=oci,dest={}", out.display()))
        .arg(ctx)
        .run()
}

/// No worker connected: the step waits in BuildGrid's queue, `--remote-timeout 10s` ends it with a clear
/// error within the time, its job is cancelled, and a worker that connects later runs nothing.
#[test]
fn no_worker_fails_within_the_remote_timeout_and_cancels_the_job() {
    let Some(mut grid) = Grid::start() else {
        return;
    };
    let ctx = context(&[("Dockerfile", "FROM base\nRUN echo queued-step > /x\n")]);
    let out = tempdir("faults-out-");
    let started = Instant::now();
    let failed = build(
        ctx.path(),
        &out.path().join("img"),
        &["--remote-executor", &grid.url(), "--remote-timeout", "10s"],
    );
    let took = started.elapsed();
    failed.expect_code(1);
    assert!(
        failed
            .stderr
            .contains("did not finish within 10s (--remote-timeout)")
            && failed.stderr.contains("still queued: no worker took it")
            && failed.stderr.contains("cancelled"),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("queued on the remote executor"),
        "the step's status says where it waits:\n{}",
        failed.stderr
    );
    // 10 s, plus the build's own start and the cancellation, on a loaded machine.
    assert!(took < Duration::from_secs(40), "took {took:?}");
    assert_eq!(grid.live_jobs(), 0, "no job is left to run");
    assert!(grid.cancelled_jobs() >= 1, "the job was cancelled");
    // A worker that connects now finds nothing to run.
    grid.add_worker();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(grid.ran(), 0, "a stale job ran:\n{}", grid.logs());
}

/// Ctrl-C of a build whose step runs on a worker: kiln exits 130 and BuildGrid's job is cancelled.
#[test]
fn ctrl_c_cancels_the_remote_operation() {
    let Some(mut grid) = Grid::start() else {
        return;
    };
    grid.add_worker();
    let ctx = context(&[("Dockerfile", "FROM base\nRUN echo started && sleep 301\n")]);
    let mut child = kiln(&["--remote-executor", &grid.url()])
        .arg(ctx.path())
        .command()
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.expect("utf-8");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(" running on ") {
            break;
        }
    }
    assert!(
        seen.contains("queued on the remote executor") && seen.contains(" running on "),
        "the step's status shows queueing, then its worker:\n{seen}"
    );
    assert_eq!(grid.live_jobs(), 1, "{seen}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{}", rest.join("\n"));
    assert_eq!(
        grid.live_jobs(),
        0,
        "the job must not run on with nobody waiting"
    );
    assert_eq!(grid.cancelled_jobs(), 1);
}

/// A local step fails while a sibling stage's step runs on a worker: the build fails with the local
/// step's error and the remote step's job is cancelled, not left to run with nobody waiting.
#[test]
fn a_failing_sibling_cancels_the_remote_operation() {
    let Some(mut grid) = Grid::start() else {
        return;
    };
    grid.add_worker();
    let ctx = context(&[(
        "Dockerfile",
        "FROM base AS slow
RUN sleep 302 && echo slow > /slow
         FROM base AS failing
RUN --mount=type=tmpfs,target=/t sleep 8 && echo sibling-fails && exit 4
         FROM base
COPY --from=slow /slow /slow
COPY --from=failing /etc/hostname /f
",
    )]);
    let out = kiln(&["--remote-executor", &grid.url()])
        .arg(ctx.path())
        .run();
    out.expect_code(1);
    assert!(
        out.stderr.contains("exit code: 4") && out.stderr.contains(" running on kiln-"),
        "{}",
        out.stderr
    );
    assert_eq!(grid.ran(), 1, "{}", grid.logs());
    assert_eq!(grid.live_jobs(), 0, "the remote step's job must not run on");
    assert_eq!(grid.cancelled_jobs(), 1);
}

/// BuildGrid restarted (same port and database) while a worker runs the step: the client retries,
/// resumes the operation and gets the local build's image; nothing is left running.
#[test]
fn buildgrid_restart_mid_step_resumes_the_operation() {
    restart_mid_step(false);
}

/// BuildGrid restarted with an empty database: it no longer knows the operation, so the client submits
/// the same Action again, and the build still gives the local build's image.
#[test]
fn buildgrid_restart_without_its_database_resubmits_the_action() {
    restart_mid_step(true);
}

fn restart_mid_step(fresh_database: bool) {
    let Some(mut grid) = Grid::start() else {
        return;
    };
    grid.add_worker();
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN echo started && sleep 6 && echo survived > /x\n",
    )]);
    let local_out = tempdir("faults-local-");
    let local = build(ctx.path(), &local_out.path().join("img"), &[]);
    local.success();
    let out = tempdir("faults-out-");
    let child = kiln(&["--remote-executor", &grid.url()])
        .arg("-o")
        .arg(format!(
            "type=oci,dest={}",
            out.path().join("img").display()
        ))
        .arg(ctx.path())
        .command()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    wait_for(60, "the worker to take the step", || grid.ran() == 1);
    grid.restart_server(fresh_database);
    let output = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(0), "{stderr}\n{}", grid.logs());
    assert_eq!(
        manifest(&stdout),
        manifest(&local.stdout),
        "the resumed remote step gives the local image\n{stderr}"
    );
    assert_eq!(grid.live_jobs(), 0, "{}", grid.logs());
    if fresh_database {
        // The server forgot the first run: the worker ran the same Action again.
        assert_eq!(grid.ran(), 2, "{stderr}\n{}", grid.logs());
    }
}

/// BuildGrid gone for good in the middle of a step: kiln retries for about a minute, then fails the
/// step naming the server and the retries, rather than at the first broken stream or never.
#[test]
fn a_server_gone_for_good_fails_after_the_retries() {
    let Some(mut grid) = Grid::start() else {
        return;
    };
    grid.add_worker();
    let ctx = context(&[("Dockerfile", "FROM base\nRUN sleep 303\n")]);
    let child = kiln(&["--remote-executor", &grid.url()])
        .arg(ctx.path())
        .command()
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    wait_for(60, "the worker to take the step", || grid.ran() == 1);
    let killed = Instant::now();
    grid.kill_server();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&grid.url()) && stderr.contains("retried 10 times"),
        "{stderr}"
    );
    // Backoff from 250 ms doubling to 10 s, less up to a quarter: 42 to 56 s of waiting in all.
    let waited = killed.elapsed();
    assert!(
        waited > Duration::from_secs(30) && waited < Duration::from_secs(150),
        "{waited:?}"
    );
}

/// Where each step ran, in plain and JSON progress, and honest counts: a remote cache hit is cached;
/// `--no-cache` and `--remote-accept-cached=false` have the worker run the step again.
#[test]
fn step_status_counts_and_no_cache() {
    let Some(mut grid) = Grid::start() else {
        return;
    };
    grid.add_worker();
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN cat /proc/sys/kernel/random/uuid > /id\nRUN --mount=type=tmpfs,target=/t echo here > /local\n",
    )]);
    let out = tempdir("faults-out-");
    let img = out.path().join("img");
    let url = grid.url();
    let first = build(ctx.path(), &img, &["--remote-executor", &url]);
    first.success();
    assert_eq!(grid.ran(), 1, "{}", first.stderr);
    assert!(
        first
            .stderr
            .lines()
            .any(|l| l.contains(" running on kiln-")),
        "the remote step says where it runs:\n{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("running locally"),
        "the step with a mount runs here, and says so:\n{}",
        first.stderr
    );
    let (run, cached) = first.summary();
    assert!(run >= 2 && cached == 0, "{}", first.stderr);

    // An empty store: the remote step comes from the ActionCache and counts as cached.
    let second = build(ctx.path(), &img, &["--remote-executor", &url]);
    second.success();
    assert_eq!(grid.ran(), 1, "{}", grid.logs());
    assert!(
        second.stderr.contains("remote cache hit"),
        "{}",
        second.stderr
    );
    assert_eq!(second.summary(), (run - 1, 1), "{}", second.stderr);
    assert_eq!(manifest(&first.stdout), manifest(&second.stdout));

    // The same in JSON: a field in the step events.
    let json = kiln(&["--remote-executor", &url, "--progress", "json"])
        .arg(ctx.path())
        .run();
    json.success();
    let events: Vec<serde_json::Value> = json
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let finished: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "finished")
        .filter_map(|e| e["where"].as_str())
        .collect();
    assert!(
        finished.contains(&"remote-cache") && finished.contains(&"local"),
        "{}",
        json.stderr
    );
    assert!(events.iter().any(|e| e["event"] == "status"
        && e["where"] == "remote-cache"
        && e["status"] == "remote cache hit"));

    // `--no-cache`: the step runs on the worker again, with another result.
    let third = build(ctx.path(), &img, &["--remote-executor", &url, "--no-cache"]);
    third.success();
    assert_eq!(grid.ran(), 2, "{}", third.stderr);
    assert!(
        !third.stderr.contains("remote cache hit"),
        "{}",
        third.stderr
    );
    assert_ne!(manifest(&first.stdout), manifest(&third.stdout));
    let fourth = build(
        ctx.path(),
        &img,
        &["--remote-executor", &url, "--remote-accept-cached=false"],
    );
    fourth.success();
    assert_eq!(grid.ran(), 3, "{}", fourth.stderr);
    let json = kiln(&[
        "--remote-executor",
        &url,
        "--progress",
        "json",
        "--no-cache",
    ])
    .arg(ctx.path())
    .run();
    json.success();
    assert_eq!(grid.ran(), 4, "{}", json.stderr);
    assert!(
        json.stderr
            .lines()
            .any(|l| l.contains(r#""event":"status""#)
                && l.contains(r#""where":"remote""#)
                && l.contains(r#""worker":"#)),
        "{}",
        json.stderr
    );
}

/// The new flags' mistakes: located errors, exit 2, before anything runs.
#[test]
fn remote_flag_errors() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN true\n")]);
    let url = "grpc://127.0.0.1:1";
    for (args, says) in [
        (
            vec!["--remote-executor", url, "--remote-timeout", "10"],
            "`10` needs a unit",
        ),
        (
            vec!["--remote-executor", url, "--remote-timeout", "5x"],
            "`x` is not a unit of time",
        ),
        (
            vec!["--remote-executor", url, "--remote-timeout", "0s"],
            "more than zero",
        ),
        (
            vec!["--remote-timeout", "10s"],
            "--remote-timeout needs a remote executor",
        ),
        (
            vec!["--remote-cache", url, "--remote-timeout", "10s"],
            "with --remote-cache every step runs here",
        ),
        (
            vec!["--remote-accept-cached=false"],
            "--remote-accept-cached needs --remote-executor or --remote-cache",
        ),
    ] {
        let out = kiln(&args).arg(ctx.path()).run();
        out.expect_code(2);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("command line") && out.stderr.contains('^'),
            "{args:?}: located: {}",
            out.stderr
        );
    }
}
