//! What a step can and cannot reach: the network (`--network=none` has only a loopback; the default has a
//! namespace of its own whose only way out is slirp4netns's outbound path, never the host's loopback; every
//! mode gets generated /etc/resolv.conf and /etc/hosts that stay out of the layer), host processes (a
//! private pid namespace), and what a SIGKILLed kiln leaves behind (nothing: no process, no network stack,
//! no mount, a store the next build uses); and `sharing=locked` cache mounts serialise the steps that share
//! them.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{Kiln, Layout, Output, base_image, context, tar_paths, tempdir, tool, unpack};

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
pub(crate) struct Server {
    pub port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    pub(crate) fn start(line: &'static str) -> Server {
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

    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A server on an address of the machine other than its loopback: the host end of a veth pair into a
/// network namespace held by a process the test starts (killing it on drop removes both), with one
/// address from the benchmarking range. A step reaches it only as slirp4netns's outbound connections do.
pub(crate) struct OtherAddress {
    holder: std::process::Child,
    pub addr: std::net::Ipv4Addr,
    pub port: u16,
    /// The peer address of every connection, as the server saw it.
    pub peers: std::sync::Arc<std::sync::Mutex<Vec<std::net::IpAddr>>>,
}

impl OtherAddress {
    pub(crate) fn start(line: &'static str) -> OtherAddress {
        static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Unique per test process and per server: test binaries may run side by side.
        let pid = std::process::id();
        let link = format!("kiln{pid:x}-{n}");
        let addr = std::net::Ipv4Addr::new(198, 18, (pid % 250) as u8, n);
        let holder = std::process::Command::new("unshare")
            .args(["--net", "sleep", "600"])
            .spawn()
            .expect("unshare starts");
        let netns = holder.id().to_string();
        let mut server = OtherAddress {
            holder,
            addr,
            port: 0,
            peers: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        // unshare forks nothing: once it has exec'd sleep, the namespace is the new one.
        while std::fs::read_link(format!("/proc/{netns}/exe"))
            .is_ok_and(|exe| !exe.to_string_lossy().contains("sleep"))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (link, netns) = (link.as_str(), netns.as_str());
        tool(
            "ip",
            &[
                "link", "add", link, "type", "veth", "peer", "name", "peer0", "netns", netns,
            ],
        );
        tool("ip", &["addr", "add", &format!("{addr}/32"), "dev", link]);
        tool("ip", &["link", "set", link, "up"]);
        tool(
            "nsenter",
            &["-t", netns, "-n", "ip", "link", "set", "peer0", "up"],
        );
        let listener = TcpListener::bind((addr, 0)).expect("bind the other address");
        server.port = listener.local_addr().expect("an address").port();
        let peers = server.peers.clone();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                if let Ok(peer) = stream.peer_addr() {
                    peers.lock().unwrap().push(peer.ip());
                }
                let _ = writeln!(stream, "{line}");
            }
        });
        server
    }

    pub(crate) fn peers(&self) -> Vec<std::net::IpAddr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for OtherAddress {
    fn drop(&mut self) {
        // The veth pair goes with the namespace.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Live slirp4netns processes whose kiln is gone (the namespace argument names it). Waits up to 2 s for
/// them to end, then kills (so they do not outlive the test run) and returns any left.
pub(crate) fn stray_network_stacks() -> Vec<i32> {
    let stray = || -> Vec<i32> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                    return false;
                };
                let args: Vec<String> = c
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                let stack = args.first().is_some_and(|a| a.ends_with("slirp4netns"));
                // `/proc/<kiln's pid>/fd/<n>`: the namespace, through the descriptor of the kiln that made it.
                let target = args.iter().rev().nth(1).and_then(|a| {
                    a.strip_prefix("/proc/")?
                        .split('/')
                        .next()?
                        .parse::<i32>()
                        .ok()
                });
                stack && target.is_some_and(|t| !Path::new(&format!("/proc/{t}")).exists())
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut left = stray();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        left = stray();
    }
    for pid in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    left
}

/// A step's network namespace serves later steps of the build once the step has ended (as BuildKit's pool
/// of namespaces does), so nothing a step does there may reach the next: a listener it leaves running dies
/// with its pid namespace, and it cannot add an address or a route (no `CAP_NET_ADMIN`).
#[test]
fn a_step_leaves_nothing_in_its_network_for_the_next() {
    let out = build(
        "FROM base
RUN echo netns=$(readlink /proc/self/ns/net) \\
 && (nc -ll -p 7070 -e echo left-behind &) && sleep 0.3 \\
 && timeout 3 nc 127.0.0.1 7070 </dev/null | grep -q left-behind \\
 && if ip addr add 10.9.9.9/32 dev lo; then echo 'added an address'; exit 1; fi \\
 && if ip route add 10.8.0.0/16 via 10.0.2.2; then echo 'added a route'; exit 1; fi
RUN echo netns=$(readlink /proc/self/ns/net) \\
 && if timeout 3 nc 127.0.0.1 7070 </dev/null | grep left-behind; then echo 'reached a listener'; exit 1; fi \\
 && ! ip -o addr | grep 10.9.9.9 && ! ip route | grep 10.8.0.0
",
    );
    out.success();
    let namespaces: Vec<String> = step_lines(&out)
        .into_iter()
        .filter(|l| l.starts_with("netns="))
        .collect();
    assert_eq!(namespaces.len(), 2, "{}", out.stderr);
    assert_eq!(
        namespaces[0], namespaces[1],
        "the second step did not get the first one's namespace back"
    );
}

/// The step has an interface of its own besides the loopback, and the server on the host's 127.0.0.1 sees
/// no connection: not to 127.0.0.1 (the step's own loopback), nor through slirp4netns's gateway (10.0.2.2)
/// or DNS address (10.0.2.3), which would lead to the host's loopback without `--disable-host-loopback`.
#[test]
fn default_network_cannot_reach_the_hosts_loopback() {
    let server = Server::start("kiln-isolation-loopback");
    let out = build(&format!(
        "FROM base
RUN ip -o addr && ip -o addr | grep -q 'eth0 *inet ' && ip -o link | grep -q 'lo:.*UP'
RUN for a in 127.0.0.1 10.0.2.2 10.0.2.3; do \
      if timeout 5 nc $a {port} </dev/null | grep kiln-isolation; then echo \"reached via $a\"; exit 1; fi; \
    done
",
        port = server.port
    ));
    out.success();
    assert_eq!(
        server.accepted(),
        0,
        "a default-network step connected to the host's loopback"
    );
}

/// The outbound path: a server on another address of the machine answers, and sees the connection come
/// from the host's own network stack (slirp4netns's socket), not from the step's address.
#[test]
fn default_network_reaches_another_address_through_the_outbound_path() {
    let server = OtherAddress::start("kiln-isolation-outbound");
    let out = build(&format!(
        "FROM base
RUN timeout 10 nc {addr} {port} </dev/null | grep -q kiln-isolation-outbound
",
        addr = server.addr,
        port = server.port
    ));
    out.success();
    let peers = server.peers();
    assert_eq!(peers.len(), 1, "the server saw {peers:?}");
    assert!(
        !peers[0].to_string().starts_with("10.0.2."),
        "the step's own address reached the server: {peers:?}"
    );
}

/// `--network=host` (allowed with `--allow network.host`) keeps the host's namespace.
#[test]
fn host_network_reaches_a_host_server() {
    let server = Server::start("kiln-isolation-hello");
    let out = build(&format!(
        "FROM base
RUN --network=host timeout 10 nc 127.0.0.1 {port} </dev/null | grep -q kiln-isolation-hello
",
        port = server.port
    ));
    out.success();
    assert_eq!(
        server.accepted(),
        1,
        "the host-network step did not connect"
    );
}

/// The base image has neither file: every network mode gets both, generated, read-only, and neither (nor
/// the stubs that held the mounts) ends up in the layer, which keeps only what the step wrote.
#[test]
fn resolv_conf_and_hosts_are_generated_and_stay_out_of_the_layer() {
    let dest = tempdir("net-etc-");
    let dest = dest.path().join("image");
    let check = "grep -q nameserver /etc/resolv.conf && grep -q '^127.0.0.1.*localhost' /etc/hosts \
 && grep -q '^::1.*localhost' /etc/hosts && grep -q kiln /etc/hosts && test \"$(hostname)\" = kiln \
 && ! echo x >> /etc/hosts && ! echo x >> /etc/resolv.conf";
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM base
RUN {check} && echo one > /one
RUN --network=none {check} && echo two > /etc/two
RUN --network=host {check} && echo three > /three
"
        ),
    )]);
    Kiln::new()
        .with_base()
        .args(["--allow", "network.host"])
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run()
        .success();
    let layers = Layout::new(&dest).layer_tars();
    let added: Vec<Vec<String>> = layers[1..].iter().map(|t| tar_paths(t)).collect();
    let trimmed: Vec<Vec<&str>> = added
        .iter()
        .map(|l| l.iter().map(|p| p.trim_end_matches('/')).collect())
        .collect();
    assert_eq!(
        trimmed,
        [vec!["one"], vec!["etc", "etc/two"], vec!["three"]],
        "the layers hold more than the steps wrote"
    );
    let image = unpack(&dest);
    for f in ["etc/resolv.conf", "etc/hosts"] {
        assert!(!image.rootfs.join(f).exists(), "{f} is in the image");
    }
}

/// Debian's mirror by name, from a debootstrap-made Debian base: DNS through the generated resolv.conf and
/// HTTP through the outbound path.
#[test]
fn apt_get_update_reaches_the_debian_mirror() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM debian
RUN cat /etc/resolv.conf && apt-get update && ls /var/lib/apt/lists | grep -q _Packages
",
    )]);
    let out = Kiln::new()
        .arg("--build-context")
        .arg(format!(
            "debian=oci-layout://{}",
            crate::ssh_clone::git_image().display()
        ))
        .arg(ctx.path())
        .run();
    out.success();
}

/// Without slirp4netns a default-network step cannot run: the error says what is missing and how to get
/// it; `--network=none` steps do not need it.
#[test]
fn a_missing_network_stack_is_a_clear_error() {
    let empty = tempdir("no-path-");
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN --network=none true\nRUN true\n",
    )]);
    let out = Kiln::new()
        .with_base()
        .env("PATH", empty.path())
        .arg(ctx.path())
        .run();
    out.expect_code(1);
    assert!(
        out.stderr.contains("`slirp4netns` is not on PATH")
            && out.stderr.contains("(Debian package")
            && out.stderr.contains("RUN --network=none"),
        "{}",
        out.stderr
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
    let stacks = stray_network_stacks();
    assert!(stacks.is_empty(), "slirp4netns outlived kiln: {stacks:?}");
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
