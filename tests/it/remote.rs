//! Remote execution over REAPI: a real BuildGrid (CAS on disk, ActionCache, Execution and Bots with its
//! PostgreSQL scheduler) and a real `kiln worker` on loopback. RUN steps run on the worker (its log and
//! BuildGrid's operations say so) and give the image a local build gives; an empty store is then served
//! from the ActionCache; a secret never reaches the CAS, an Action, a Command or BuildGrid's database.
//! Skipped, with a note, when BuildGrid is not installed (scripts/setup.sh installs it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Kiln, context, leaks_under, repo, tempdir, tool, write};

const EPOCH: &str = "1700000000";
const TOKEN: &str = "remote-s3cr3t-Token-9c41d7e2aa";

/// Where scripts/setup.sh installed BuildGrid ($KILN_BUILDGRID overrides).
pub(crate) fn buildgrid_venv() -> PathBuf {
    match std::env::var_os("KILN_BUILDGRID") {
        Some(v) => PathBuf::from(v),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            cache.join("kiln-tests/buildgrid-0.4.4")
        }
    }
}

/// BuildGrid and one kiln worker, stopped when dropped.
pub(crate) struct Farm {
    dir: tempfile::TempDir,
    addr: String,
    /// The socket directory of BuildGrid's PostgreSQL.
    pgsock: PathBuf,
    worker: Child,
    worker_log: PathBuf,
}

impl Farm {
    pub(crate) fn start() -> Option<Farm> {
        if !buildgrid_venv().join("bin/bgd").exists() {
            crate::support::skip_without("remote execution tests", "BuildGrid is not installed");
            return None;
        }
        let dir = tempdir("buildgrid-");
        let out = tool(
            "bash",
            &[
                repo().join("tests/fixtures/start-buildgrid.sh").to_str()?,
                dir.path().join("bg").to_str()?,
                "--owner",
                &std::process::id().to_string(),
            ],
        );
        let addr = out
            .lines()
            .find_map(|l| l.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("start-buildgrid.sh printed no address:\n{out}"))
            .to_string();
        let pgsock = out
            .lines()
            .find_map(|l| l.strip_prefix("pgsock="))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("start-buildgrid.sh printed no database socket:\n{out}"));
        let worker_log = dir.path().join("worker.log");
        let worker = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args([
                "worker",
                "--server",
                &format!("grpc://{addr}"),
                "--work-dir",
            ])
            .arg(dir.path().join("worker"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&worker_log).unwrap())
            .spawn()
            .expect("cannot start kiln worker");
        let farm = Farm {
            dir,
            addr,
            pgsock,
            worker,
            worker_log,
        };
        let started = Instant::now();
        while !farm.log().contains("connected to") {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the worker did not connect:\n{}",
                farm.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(farm)
    }

    pub(crate) fn url(&self) -> String {
        format!("grpc://{}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.worker_log).unwrap_or_default()
    }

    /// The actions the worker ran, by digest, in order.
    fn ran(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("kiln worker: running action ").map(|(_, r)| r))
            .map(|l| l.split(':').next().unwrap().to_string())
            .collect()
    }

    /// BuildGrid's own list of finished operations (`bgd operation list`), as text.
    fn operations(&self) -> String {
        tool(
            buildgrid_venv().join("bin/bgd").to_str().unwrap(),
            &[
                "operation",
                "--remote",
                &format!("http://{}", self.addr),
                "list",
                "--filter",
                "stage=COMPLETED",
                "--json",
            ],
        )
    }

    /// Where BuildGrid keeps blobs (Actions, Commands, Directories, inputs, outputs).
    fn cas(&self) -> PathBuf {
        self.dir.path().join("bg/cas")
    }

    /// A plain-text dump of BuildGrid's database (jobs, operations, leases, bots).
    fn dump_database(&self, dest: &Path) {
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--", "pg_dump", "-h"])
            .arg(&self.pgsock)
            .args(["-U", "postgres", "bgd"])
            .output()
            .expect("cannot run pg_dump");
        assert!(
            out.status.success(),
            "pg_dump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        write(dest, &out.stdout);
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        let _ = self.worker.kill();
        let _ = self.worker.wait();
        let _ = Command::new("bash")
            .arg(repo().join("tests/fixtures/start-buildgrid.sh"))
            .arg(self.dir.path().join("bg"))
            .arg("stop")
            .output();
    }
}

/// The manifest digest kiln printed for an OCI output.
/// The manifest digest a build prints on stdout.
pub(crate) fn manifest(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no manifest digest in:\n{stdout}"))
        .to_string()
}

fn build(ctx: &Path, extra: &[&str]) -> crate::support::Output {
    let out = tempdir("remote-out-");
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

/// Acceptance 2 and 3 (remote half) on one farm, in order: the worker's log is the judge of what ran
/// where, so these builds must not overlap.
#[test]
fn remote_execution_on_buildgrid() {
    let Some(farm) = Farm::start() else { return };

    // Two RUN steps, their output depending on the filesystem they start from: mode bits, a setuid file,
    // a symlink, a deleted file (a whiteout), a deleted directory's contents, ownership.
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\n\
         RUN mkdir -p /app/bin && echo one > /app/one && chmod 4755 /app/one && ln -s one /app/link \
             && chown 1000:1000 /app/bin && rm -f /bin/vi && stat -c '%n %a %u %g %F' /app/* > /app/listing\n\
         RUN cat /app/one /app/listing && echo two >> /app/one && rm /app/link && test ! -e /bin/vi\n",
    )]);
    let local = build(ctx.path(), &[]);
    local.success();
    let remote = build(ctx.path(), &["--remote-executor", &farm.url()]);
    remote.success();
    assert_eq!(
        manifest(&remote.stdout),
        manifest(&local.stdout),
        "a remote build must give the local build's image\n{}",
        remote.stderr
    );
    let ran = farm.ran();
    assert_eq!(
        ran.len(),
        2,
        "both RUN steps run on the worker:\n{}",
        farm.log()
    );
    let log = farm.log();
    assert!(
        log.contains("mkdir -p /app/bin") && log.contains("cat /app/one"),
        "{log}"
    );
    // The step's output comes back to the build's progress.
    assert!(
        remote.stderr.contains("one\n") || remote.stderr.contains(" one"),
        "{}",
        remote.stderr
    );
    let ops = farm.operations();
    for action in &ran {
        let hash = action.split('/').next().unwrap();
        assert!(
            ops.contains(hash),
            "BuildGrid lists no operation for {action}:\n{ops}"
        );
    }

    // A failing step fails the build as a local one does, with its output and exit code.
    let failing = context(&[(
        "Dockerfile",
        "FROM base\nRUN echo about to fail && exit 3\n",
    )]);
    let out = build(failing.path(), &["--remote-executor", &farm.url()]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("about to fail") && out.stderr.contains("exit code: 3"),
        "{}",
        out.stderr
    );
    let ran = farm.ran();
    assert_eq!(ran.len(), 3, "{}", farm.log());
    let ops = farm.operations();

    // An empty store: every step is answered by the ActionCache, nothing runs anywhere.
    let again = build(ctx.path(), &["--remote-executor", &farm.url()]);
    again.success();
    assert_eq!(manifest(&again.stdout), manifest(&local.stdout));
    assert_eq!(
        farm.ran(),
        ran,
        "the ActionCache must serve the second build:\n{}",
        farm.log()
    );
    assert_eq!(farm.operations(), ops, "no new operation on BuildGrid");

    // A step whose result differs on every run proves which answer came from the cache: with
    // `--remote-cache` it runs here and is uploaded; a second machine gets the same bytes back.
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN cat /proc/sys/kernel/random/uuid > /id\n",
    )]);
    let first = build(ctx.path(), &["--remote-cache", &farm.url()]);
    first.success();
    let second = build(ctx.path(), &["--remote-cache", &farm.url()]);
    second.success();
    assert_eq!(manifest(&first.stdout), manifest(&second.stdout));
    let third = build(ctx.path(), &["--remote-executor", &farm.url()]);
    third.success();
    assert_eq!(manifest(&first.stdout), manifest(&third.stdout));
    assert_eq!(farm.ran(), ran, "cached results never reach the worker");

    // Secrets: a build given one only reads the remote side, so every step runs here; its results may
    // not leave before all of its leak checks have passed (a step without the secret mount may still
    // hold the value in a form no scan finds, undone later).
    // The step checks the value by its hash: the value itself in the Dockerfile would be in the history.
    let sum = tool(
        "sh",
        &[
            "-c",
            &format!("printf %s '{TOKEN}' | sha256sum | cut -c1-64"),
        ],
    );
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM base\n\
             RUN --mount=type=secret,id=tok test \"$(sha256sum < /run/secrets/tok | cut -c1-64)\" = {} && echo checked > /checked\n\
             RUN --mount=type=secret,id=tok,env=TOK test -n \"$TOK\" && echo env > /env\n\
             RUN cat /checked /env > /both\n",
            sum.trim()
        ),
    )]);
    let secret_file = tempdir("remote-secret-");
    let src = secret_file.path().join("tok");
    write(&src, TOKEN);
    let before = farm.ran().len();
    let out = build(
        ctx.path(),
        &[
            "--remote-executor",
            &farm.url(),
            "--secret",
            &format!("id=tok,src={}", src.display()),
        ],
    );
    out.success();
    let log = farm.log();
    assert_eq!(
        farm.ran().len(),
        before,
        "a build given a secret runs nothing remotely:\n{log}"
    );
    assert!(
        !log.contains("/run/secrets") && !log.contains("TOK"),
        "{log}"
    );
    // The benchmark's multistage workload (four stages in parallel, then one collecting them) on the
    // farm: every RUN runs remotely; its output is random, so the equal digest of a second build from an
    // empty store shows that every step came from the ActionCache.
    let ctx = context(&[
        (
            "Dockerfile",
            &std::fs::read_to_string(repo().join("bench/peers/dockerfiles/multistage.Dockerfile"))
                .unwrap(),
        ),
        ("stamp.txt", "stamp\n"),
    ]);
    let args = [
        "--remote-executor",
        &farm.url(),
        "--build-arg",
        "BASE=base",
        "--build-arg",
        "MB=1",
    ];
    let before = farm.ran().len();
    let first = build(ctx.path(), &args);
    first.success();
    assert_eq!(farm.ran().len(), before + 5, "{}", farm.log());
    let second = build(ctx.path(), &args);
    second.success();
    assert_eq!(manifest(&first.stdout), manifest(&second.stdout));
    assert_eq!(farm.ran().len(), before + 5, "{}", farm.log());

    let dump = farm.dir.path().join("database.sql");
    farm.dump_database(&dump);
    let mut found = leaks_under(&farm.cas(), &[TOKEN.as_bytes()]);
    found.extend(leaks_under(&dump, &[TOKEN.as_bytes()]));
    found.extend(leaks_under(
        &farm.dir.path().join("worker"),
        &[TOKEN.as_bytes()],
    ));
    assert!(
        found.is_empty(),
        "the secret reached the remote side:\n{}",
        found.join("\n")
    );
    // The search is real: the CAS does hold the blobs of the remote step.
    assert!(walkdir::WalkDir::new(farm.cas()).into_iter().count() > 10);

    // The server goes away: the worker says so and keeps trying, rather than exiting.
    tool(
        "bash",
        &[
            repo()
                .join("tests/fixtures/start-buildgrid.sh")
                .to_str()
                .unwrap(),
            farm.dir.path().join("bg").to_str().unwrap(),
            "stop",
        ],
    );
    let started = Instant::now();
    while !farm.log().contains("session lost") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the worker did not notice:\n{}",
            farm.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut farm = farm;
    assert!(
        farm.worker.try_wait().unwrap().is_none(),
        "the worker must keep running:\n{}",
        farm.log()
    );
}

#[test]
fn bad_remote_addresses_are_clear_errors() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN true\n")]);
    for (url, says) in [
        ("http://127.0.0.1:50051", "must look like"),
        ("grpc://127.0.0.1", "needs a port"),
        ("grpcs://cache.example", "needs a port"),
    ] {
        let out = build(ctx.path(), &["--remote-executor", url]);
        out.expect_code(2);
        assert!(out.stderr.contains(says), "{url}: {}", out.stderr);
    }
    // Nothing listens on port 1: the build stops before running anything, naming the server.
    let out = build(ctx.path(), &["--remote-cache", "grpc://127.0.0.1:1"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("grpc://127.0.0.1:1") && out.stderr.contains("is running"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("RUN true"), "{}", out.stderr);
    let out = Kiln::bare()
        .args(["worker", "--server", "127.0.0.1:50051"])
        .run();
    out.expect_code(2);
    assert!(out.stderr.contains("bad server address"), "{}", out.stderr);
    let out = Kiln::bare()
        .args(["worker", "--server", "grpc://127.0.0.1:1"])
        .run();
    out.expect_code(1);
    assert!(out.stderr.contains("is running"), "{}", out.stderr);
}
