//! What a step can and cannot reach: the network (`--network=none` has only a loopback; the default can reach
//! a server on the host), host processes (a private pid namespace), and what a SIGKILLed kiln leaves behind
//! (nothing: no process, no mount, a store the next build uses); and `sharing=locked` cache mounts serialise
//! the steps that share them.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Kiln, Output, base_image, context, tempdir};

/// The lines a step printed (the text after `#N <time> `), from plain progress output.
fn step_lines(out: &Output) -> Vec<String> {
    out.stderr
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.splitn(3, ' ');
            let _step = words.next()?;
            let time = words.next()?;
            time.parse::<f64>().ok()?;
            Some(words.next().unwrap_or("").to_string())
        })
        .collect()
}

fn build(dockerfile: &str) -> Output {
    let ctx = context(&[("Dockerfile", dockerfile)]);
    Kiln::new()
        .with_base()
        .args(["--allow", "network.host"])
        .arg(ctx.path())
        .run()
}

#[test]
fn network_none_has_only_an_up_loopback() {
    let out = build(
        "FROM base
RUN --network=none cat /proc/net/dev && ip link \
 && test \"$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ')\" = lo \
 && ip link show lo | grep -q '[<,]UP[,>]'
",
    );
    out.success();
}

/// A TCP server on the host's loopback that answers every connection with one line, counting them.
struct Server {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    fn start(line: &'static str) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().expect("an address").port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        // Detached: it ends with the test process; it only ever answers.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut stream = stream;
                let _ = writeln!(stream, "{line}");
            }
        });
        Server { port, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn default_and_host_networks_reach_a_host_server() {
    let server = Server::start("kiln-isolation-hello");
    let out = build(&format!(
        "FROM base
RUN timeout 10 nc 127.0.0.1 {port} </dev/null | grep -q kiln-isolation-hello
RUN --network=host timeout 10 nc 127.0.0.1 {port} </dev/null | grep -q kiln-isolation-hello
",
        port = server.port
    ));
    out.success();
    assert!(
        server.accepted() >= 2,
        "the server saw {} connections",
        server.accepted()
    );
}

#[test]
fn network_none_cannot_reach_a_host_server() {
    let server = Server::start("kiln-isolation-unreachable");
    let out = build(&format!(
        "FROM base
RUN --network=none if timeout 5 nc 127.0.0.1 {port} </dev/null | grep kiln-isolation; then echo reached; exit 1; fi
",
        port = server.port
    ));
    out.success();
    assert_eq!(
        server.accepted(),
        0,
        "a --network=none step connected to the host"
    );
}

#[test]
fn a_step_sees_only_its_own_processes() {
    let me = std::process::id();
    let out = build(&format!(
        "FROM base
RUN echo \"pids: $(ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' ')\" && ps && test ! -e /proc/{me}/cmdline
"
    ));
    out.success();
    let pids: Vec<u32> = step_lines(&out)
        .iter()
        .find_map(|l| l.strip_prefix("pids: "))
        .expect("the step printed its pids")
        .split_whitespace()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    assert!(
        pids.len() <= 6,
        "the step sees {} processes: {pids:?}\n{}",
        pids.len(),
        out.stderr
    );
    assert!(pids.contains(&1), "the step's shell is pid 1: {pids:?}");
    assert!(
        !out.stderr.contains("cargo") && !out.stderr.contains("integration"),
        "host processes are listed:\n{}",
        out.stderr
    );
}

/// Pids of live processes whose command line holds `needle`.
fn processes_with(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c: Vec<u8> = c.iter().map(|b| if *b == 0 { b' ' } else { *b }).collect();
                String::from_utf8_lossy(&c).contains(needle)
            })
        })
        .collect()
}

fn mounts_naming(store: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let store = store.to_string_lossy();
    info.lines()
        .filter(|l| l.contains(&*store))
        .map(str::to_string)
        .collect()
}

/// SIGKILL gives kiln no chance to clean up: the step must still die (parent-death signal, pid namespace),
/// its mounts must go with its mount namespace, and the store must stay usable.
#[test]
fn sigkill_mid_step_leaves_nothing_and_the_store_works() {
    let marker = "sleep 316";
    let ctx = context(&[("Dockerfile", "FROM base\nRUN echo started && sleep 316\n")]);
    let store = tempdir("store-");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "--progress", "plain", "--store"])
        .arg(store.path())
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base_image().display()))
        .arg(ctx.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln starts");
    let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
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
    child.kill().expect("SIGKILL kiln");
    child.wait().expect("kiln is reaped");
    drop(lines);

    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut alive, mut mounted) = (processes_with(marker), mounts_naming(store.path()));
    while (!alive.is_empty() || !mounted.is_empty()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        alive = processes_with(marker);
        mounted = mounts_naming(store.path());
    }
    for pid in &alive {
        // Started by this test's build: end it so it does not outlive the test run.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(alive.is_empty(), "`{marker}` outlived kiln: pids {alive:?}");
    assert!(
        mounted.is_empty(),
        "mounts outlived kiln:\n{}",
        mounted.join("\n")
    );

    let next = context(&[(
        "Dockerfile",
        "FROM base\nRUN echo started && echo after > /after\n",
    )]);
    let out = Kiln::build_in(store.path())
        .with_base()
        .arg(next.path())
        .run();
    out.success();
    assert!(out.stderr.contains("started"), "{}", out.stderr);
}

/// `(start, end)` of each stage's step, read back from the shared cache by a later build.
fn intervals(store: &Path, id: &str) -> [(f64, f64); 2] {
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM base\nRUN --mount=type=cache,target=/c,id={id} for f in a-start a-end b-start b-end; do echo \"$f=$(cat /c/$f)\"; done\n"
        ),
    )]);
    let out = Kiln::build_in(store).with_base().arg(ctx.path()).run();
    out.success();
    let lines = step_lines(&out);
    let value = |key: &str| -> f64 {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{key}` in the cache:\n{}", out.stderr))
    };
    [
        (value("a-start"), value("a-end")),
        (value("b-start"), value("b-end")),
    ]
}

/// Two independent stages on one cache id, built with room to run in parallel.
fn two_stages(store: &Path, id: &str, sharing: &str) {
    let step = format!(
        "RUN --mount=type=cache,target=/c,id={id},sharing={sharing} sh -c 'cut -d\" \" -f1 /proc/uptime > /c/$STAGE-start; sleep 1; cut -d\" \" -f1 /proc/uptime > /c/$STAGE-end'"
    );
    let dockerfile = format!(
        "FROM base AS a\nENV STAGE=a\n{step}\n\nFROM base AS b\nENV STAGE=b\n{step}\n\nFROM base\nCOPY --from=a /etc/passwd /a\nCOPY --from=b /etc/passwd /b\n"
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    Kiln::build_in(store)
        .with_base()
        .args(["--jobs", "4"])
        .arg(ctx.path())
        .run()
        .success();
}

#[test]
fn sharing_locked_serialises_steps_on_one_cache() {
    let store = tempdir("store-");
    two_stages(store.path(), "shared", "locked");
    let [a, b] = intervals(store.path(), "shared");
    assert!(
        a.1 <= b.0 || b.1 <= a.0,
        "with sharing=locked the steps overlapped: a {a:?}, b {b:?}"
    );
}

/// Timing-dependent, so only reported: with `sharing=shared` the two steps may run at once.
#[test]
fn sharing_shared_may_overlap() {
    let store = tempdir("store-");
    two_stages(store.path(), "shared", "shared");
    let [a, b] = intervals(store.path(), "shared");
    let overlap = !(a.1 <= b.0 || b.1 <= a.0);
    println!("sharing=shared: a {a:?}, b {b:?}, overlapped: {overlap}");
}
