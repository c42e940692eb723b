//! The escape suite: each script in `tests/cases/escape/` is run as the `RUN` step of its own build in the
//! busybox base image and tries one way out of the sandbox (format: `tests/cases/escape/README.md`). A script
//! exits 0 when its attempt was denied, 1 when it reached something (after printing what), 3 when the
//! kernel lacks what it needs. The harness also checks the host itself: its loopback server saw no
//! connection, its hostname, network links and mount table are unchanged, and the marker file in the store
//! is untouched; after each case that aims at the host (`# host:`), and after the batch of the others. Every
//! case's verdict is reported in one failure message, not just the first.
//! `bench/escape.sh` runs the same files under BuildKit.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::support::{Kiln, Output, context, repo, tempdir};

/// What a case expects of kiln.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// The step runs and its attempt fails.
    Denied,
    /// The build is refused before the step runs (a RUN flag that needs an entitlement).
    Refused,
}

struct Case {
    name: String,
    tries: String,
    expect: Expect,
    /// RUN flags put before the command (`# flags:`).
    flags: String,
    /// The host checks the case aims at (`# host:`).
    host: Vec<String>,
    /// A shell command run on the host first (`# requires:`): when it fails, the host itself cannot do
    /// what the case tries (this kernel lacks it, or the machine forbids it even to root), and the case
    /// is not applicable here.
    requires: Option<String>,
    script: String,
}

/// Reads every `*.sh` in the case folder; a malformed header is a broken suite, so it panics.
fn cases() -> Vec<Case> {
    let dir = repo().join("tests/cases/escape");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/cases/escape")
        .map(|e| e.expect("a readable folder").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    paths.sort();
    paths.iter().map(|p| parse_case(p)).collect()
}

fn parse_case(path: &Path) -> Case {
    let script = std::fs::read_to_string(path).expect("a readable case");
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("a UTF-8 file name")
        .to_string();
    let (mut tries, mut expect, mut flags, mut requires) = (None, None, String::new(), None);
    let mut host = Vec::new();
    for line in script.lines().take_while(|l| l.starts_with("# ")) {
        let (key, value) = line[2..]
            .split_once(": ")
            .unwrap_or_else(|| panic!("{name}: header line `{line}` is not `# key: value`"));
        match key {
            "tries" => tries = Some(value.to_string()),
            "expect" => {
                expect = Some(match value {
                    "denied" => Expect::Denied,
                    "refused" => Expect::Refused,
                    other => panic!("{name}: `expect: {other}`: expected `denied` or `refused`"),
                })
            }
            "flags" => flags = value.to_string(),
            "requires" => requires = Some(value.to_string()),
            "host" => {
                for check in value.split_whitespace() {
                    assert!(
                        HOST_CHECKS.contains(&check),
                        "{name}: unknown host check `{check}` (known: {HOST_CHECKS:?})"
                    );
                    host.push(check.to_string());
                }
            }
            other => panic!("{name}: unknown header key `{other}`"),
        }
    }
    Case {
        tries: tries.unwrap_or_else(|| panic!("{name}: no `# tries:` line")),
        expect: expect.unwrap_or_else(|| panic!("{name}: no `# expect:` line")),
        name,
        flags,
        host,
        requires,
        script,
    }
}

/// The host checks a case may name in `# host:`. Cases that name one run one at a time, each followed by
/// every check, so a change on the host is pinned on exactly one case; the others run a few at a time and
/// every check follows the whole batch.
const HOST_CHECKS: [&str; 5] = ["server", "hostname", "links", "mounts", "marker"];

/// What a case came to.
enum Verdict {
    Denied(String),
    Refused(String),
    NotApplicable(String),
    Escaped(String),
    /// The attempt could not be judged (the step failed in a way the case does not know).
    Inconclusive(String),
}

impl Verdict {
    fn passed(&self) -> bool {
        matches!(
            self,
            Verdict::Denied(_) | Verdict::Refused(_) | Verdict::NotApplicable(_)
        )
    }

    fn word(&self) -> &'static str {
        match self {
            Verdict::Denied(_) => "denied",
            Verdict::Refused(_) => "refused",
            Verdict::NotApplicable(_) => "n/a",
            Verdict::Escaped(_) => "ESCAPED",
            Verdict::Inconclusive(_) => "INCONCLUSIVE",
        }
    }

    fn detail(&self) -> &str {
        match self {
            Verdict::Denied(d)
            | Verdict::Refused(d)
            | Verdict::NotApplicable(d)
            | Verdict::Escaped(d)
            | Verdict::Inconclusive(d) => d,
        }
    }
}

/// The host side: what the cases aim at, and what must be the same after each of them.
struct Host {
    store: PathBuf,
    marker: PathBuf,
    marker_text: String,
    tag: String,
    port: u16,
    accepted: Arc<AtomicUsize>,
    unix_name: String,
    _unix: UnixListener,
    namespaces: String,
    hostname: String,
    links: BTreeSet<String>,
    mounts: BTreeSet<String>,
}

impl Host {
    fn start(store: &Path) -> Host {
        let tag = format!("kesc{:04x}", std::process::id() & 0xffff);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("an address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        // Detached: it ends with the test process; it only ever answers.
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = writeln!(stream, "kiln-escape-server");
            }
        });
        let unix_name = format!("kiln-escape-{tag}");
        let addr = SocketAddr::from_abstract_name(&unix_name).expect("an abstract name");
        let unix = UnixListener::bind_addr(&addr).expect("bind an abstract unix socket");
        let marker = store.join("escape-marker");
        let marker_text = format!("kiln escape suite marker {tag}\n");
        std::fs::write(&marker, &marker_text).expect("write the marker");
        let namespaces = ["mnt", "net", "pid", "uts", "ipc"]
            .iter()
            .map(|ns| {
                std::fs::read_link(format!("/proc/self/ns/{ns}"))
                    .expect("a namespace link")
                    .to_string_lossy()
                    .into_owned()
            })
            .collect::<Vec<_>>()
            .join(" ");
        Host {
            store: store.to_path_buf(),
            marker,
            marker_text,
            port,
            accepted,
            unix_name,
            _unix: unix,
            namespaces,
            hostname: hostname(),
            links: links(),
            mounts: mounts(),
            tag,
        }
    }

    /// The build args every case gets (`ESCAPE_*` in its environment).
    fn build_args(&self) -> Vec<String> {
        [
            ("ESCAPE_PORT", self.port.to_string()),
            ("ESCAPE_MARKER", self.marker.display().to_string()),
            ("ESCAPE_HOSTPID", std::process::id().to_string()),
            ("ESCAPE_TAG", self.tag.clone()),
            ("ESCAPE_HOST_NS", self.namespaces.clone()),
            ("ESCAPE_UNIX", self.unix_name.clone()),
        ]
        .into_iter()
        .flat_map(|(k, v)| ["--build-arg".to_string(), format!("{k}={v}")])
        .collect()
    }

    /// What changed on the host since the suite started, put right again where the harness can (a
    /// hostname, a link named with this run's tag), so that one case's escape does not fail the next.
    fn changes(&self, connections_before: usize) -> Vec<String> {
        let mut found = Vec::new();
        let seen = self.accepted.load(Ordering::SeqCst) - connections_before;
        if seen > 0 {
            found.push(format!(
                "the host's server on 127.0.0.1:{} saw {seen} connection(s)",
                self.port
            ));
        }
        let now = hostname();
        if now != self.hostname {
            found.push(format!(
                "the host's hostname changed to `{now}` (put back to `{}`)",
                self.hostname
            ));
            let _ = std::fs::write("/proc/sys/kernel/hostname", &self.hostname);
        }
        for link in links().difference(&self.links) {
            if link.starts_with(&self.tag) {
                found.push(format!(
                    "the host has a new network link `{link}` (deleted)"
                ));
                let _ = std::process::Command::new("ip")
                    .args(["link", "del", link])
                    .status();
            }
        }
        let store = self.store.to_string_lossy();
        for m in mounts().difference(&self.mounts) {
            if m.starts_with(&*store) || SYSTEM_DIRS.contains(&m.as_str()) {
                found.push(format!("the host's mount table has a new mount on {m}"));
            }
        }
        match std::fs::read_to_string(&self.marker) {
            Ok(text) if text == self.marker_text => {}
            Ok(text) => {
                found.push(format!("the store's marker was changed to {text:?}"));
                let _ = std::fs::write(&self.marker, &self.marker_text);
            }
            Err(e) => found.push(format!("the store's marker is gone: {e}")),
        }
        found
    }
}

/// Host mount points that no step may cover (other processes on the machine may mount elsewhere).
const SYSTEM_DIRS: [&str; 9] = [
    "/", "/proc", "/sys", "/dev", "/tmp", "/run", "/mnt", "/var", "/etc",
];

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the host's hostname")
        .trim_end()
        .to_string()
}

fn links() -> BTreeSet<String> {
    std::fs::read_dir("/sys/class/net")
        .expect("/sys/class/net")
        .map(|e| {
            e.expect("a link")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Mount points in this process's mount namespace (the host's, where kiln runs).
fn mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match u8::from_str_radix(rest.get(i + 1..i + 4).unwrap_or(""), 8) {
            Ok(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            Err(_) => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The lines the step printed (the text after `#N <time> `).
fn step_lines(out: &Output) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.splitn(3, ' ');
            words.next()?;
            words.next()?.parse::<f64>().ok()?;
            words.next()
        })
        .collect()
}

/// The step's exit code from kiln's `... did not complete successfully: exit code: N`.
fn step_exit_code(out: &Output) -> Option<i32> {
    if out.code == Some(0) {
        return Some(0);
    }
    out.stderr.lines().find_map(|l| {
        l.split_once("exit code")
            .and_then(|(_, n)| n.trim_start_matches([':', ' ']).trim().parse().ok())
    })
}

fn run_case(case: &Case, host: &Host) -> Verdict {
    if let Some(command) = &case.requires {
        let host_can = std::process::Command::new("sh")
            .args(["-c", command])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !host_can {
            return Verdict::NotApplicable(format!(
                "not run: on the host itself `{command}` fails"
            ));
        }
    }
    let dockerfile = format!(
        "FROM base\n{}COPY case.sh /escape/case.sh\nRUN {} sh /escape/case.sh\n",
        ["PORT", "MARKER", "HOSTPID", "TAG", "HOST_NS", "UNIX"]
            .iter()
            .map(|a| format!("ARG ESCAPE_{a}\n"))
            .collect::<String>(),
        case.flags
    );
    let ctx = context(&[("Dockerfile", &dockerfile), ("case.sh", &case.script)]);
    let out = Kiln::build_in(&host.store)
        .wrapped(&["timeout", "60"])
        .with_base()
        .args(host.build_args())
        .arg(ctx.path())
        .run();
    judge(case, &out)
}

fn judge(case: &Case, out: &Output) -> Verdict {
    let lines = step_lines(out);
    let said = |prefix: &str| {
        lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
    };
    let story = || {
        lines
            .iter()
            .rev()
            .take(6)
            .rev()
            .copied()
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let Some(code) = step_exit_code(out) else {
        let error = out
            .stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or("no error line")
            .trim()
            .to_string();
        return match case.expect {
            Expect::Refused => Verdict::Refused(error),
            Expect::Denied => Verdict::Inconclusive(format!(
                "the build failed before the step ran (kiln exit {:?}): {error}",
                out.code
            )),
        };
    };
    // A verdict counts only when the case said it: a step that could not start also fails.
    match (code, case.expect) {
        (0, Expect::Denied) if said("denied: ").is_some() => {
            Verdict::Denied(said("denied: ").unwrap_or_default())
        }
        (1, _) if said("reached: ").is_some() => {
            Verdict::Escaped(said("reached: ").unwrap_or_default())
        }
        (3, _) if said("n/a: ").is_some() => {
            Verdict::NotApplicable(said("n/a: ").unwrap_or_default())
        }
        (code, Expect::Refused) => Verdict::Escaped(format!(
            "the step ran instead of being refused (exit {code}): {}",
            story()
        )),
        (code, Expect::Denied) => Verdict::Inconclusive(format!("exit {code}: {}", story())),
    }
}

/// Runs `cases` four at a time (a build spends much of its time waiting on the disk), in any order.
fn run_batch<'a>(cases: &[&'a Case], host: &Host) -> Vec<(&'a Case, Verdict)> {
    let next = AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while let Some(case) = cases.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let verdict = run_case(case, host);
                    done.lock()
                        .expect("no panic holds it")
                        .push((*case, verdict));
                }
            });
        }
    });
    done.into_inner().expect("no panic holds it")
}

#[test]
fn no_step_escapes_the_sandbox() {
    let cases = cases();
    assert!(
        cases.len() >= 30,
        "the suite has {} cases, fewer than 30",
        cases.len()
    );
    let store = tempdir("store-");
    let host = Host::start(store.path());
    let started = Instant::now();
    let (aimed, rest): (Vec<&Case>, Vec<&Case>) = cases.iter().partition(|c| !c.host.is_empty());
    let before = host.accepted.load(Ordering::SeqCst);
    let mut results: Vec<(&Case, Verdict, Vec<String>)> = run_batch(&rest, &host)
        .into_iter()
        .map(|(case, verdict)| (case, verdict, Vec::new()))
        .collect();
    let batch_changes = host.changes(before);
    for case in aimed {
        let before = host.accepted.load(Ordering::SeqCst);
        let verdict = run_case(case, &host);
        results.push((case, verdict, host.changes(before)));
    }
    results.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for (case, verdict, changes) in &results {
        let line = format!(
            "{:<24} {:<12} {}{}",
            case.name,
            verdict.word(),
            verdict.detail(),
            if changes.is_empty() {
                String::new()
            } else {
                format!(" [host: {}]", changes.join("; "))
            }
        );
        if !verdict.passed() || !changes.is_empty() {
            failures.push(format!("{line}\n{:>37}tries: {}", "", case.tries));
        }
        table.push(line);
    }
    if !batch_changes.is_empty() {
        failures.push(format!(
            "the host changed while the cases without a `# host:` line ran: {}",
            batch_changes.join("; ")
        ));
    }
    println!(
        "escape suite: {} cases in {:.1}s\n{}",
        cases.len(),
        started.elapsed().as_secs_f64(),
        table.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} of {} escape cases failed (a case exits 0 when denied, 1 when it reached something):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The suite's data on its own, without a build: at least 30 cases, each header complete (the parser
/// panics otherwise), each script valid shell for busybox and ending every path in a verdict line.
#[test]
fn escape_cases_are_well_formed() {
    let cases = cases();
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    let mut bad = Vec::new();
    for case in &cases {
        let path = repo().join(format!("tests/cases/escape/{}.sh", case.name));
        let syntax = std::process::Command::new("/bin/busybox")
            .args(["sh", "-n"])
            .arg(&path)
            .output()
            .expect("busybox sh -n");
        if !syntax.status.success() {
            bad.push(format!(
                "{}: {}",
                case.name,
                String::from_utf8_lossy(&syntax.stderr).trim()
            ));
        }
        let verdicts = match case.expect {
            Expect::Denied => ["denied() {", "reached() {"].as_slice(),
            Expect::Refused => ["reached() {"].as_slice(),
        };
        for helper in verdicts {
            if !case.script.contains(helper) {
                bad.push(format!("{}: no `{helper}` helper", case.name));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "malformed escape cases:\n{}",
        bad.join("\n")
    );
}
