//! A step's network. By default a step gets a network namespace of its own: loopback, and one interface
//! whose outbound traffic slirp4netns (the user-mode TCP/IP stack rootless podman uses) turns into ordinary
//! sockets of the host's network namespace. Nothing on the host's loopback is reachable from there: the
//! stack's gateway address does not lead to it (`--disable-host-loopback`), and the step's own 127.0.0.1
//! is its own. `--network=none` has only the loopback; `--network=host` keeps the host's namespace.
//!
//! How: the helper joins a new network namespace first thing (`helper::join_parent`), and kiln starts slirp4netns on
//! it at once, from kiln's own namespace (the host's, also in rootless mode, where kiln only has a user
//! namespace of its own). The helper mounts the step meanwhile and waits for the stack only just before
//! the step runs. The stack is kiln's child, not the helper's: killing it closes its tap device, which
//! waits for an RCU grace period (10-40 ms on a busy machine); as kiln's child it is killed and reaped by
//! tokio in the background, and it dies with kiln through a parent-death signal.
//!
//! Why slirp4netns rather than pasta: it starts in about 3 ms (sandboxed and under its own seccomp
//! filter), runs as root as it does unprivileged, reports readiness on a pipe, and does nothing with the
//! host's loopback unless asked; pasta drops root to `nobody` (which
//! then cannot open the step's namespace) and by default forwards the host's bound loopback ports into the
//! namespace unless told not to for each protocol and direction.
//!
//! Every mode gets a generated `/etc/resolv.conf` and `/etc/hosts`, bind-mounted read-only over the
//! image's own (or over a stub that is removed from the layer), as BuildKit does.

use std::io::Read as _;
use std::net::IpAddr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Result};

/// The binary kiln runs for a step's outbound path.
pub const STACK: &str = "slirp4netns";

/// The step's hostname, also named in its `/etc/hosts`.
pub const HOSTNAME: &str = "kiln";

/// slirp4netns's built-in DNS forwarder, used when the host only has resolvers on its loopback.
const STACK_DNS: &str = "10.0.2.3";

/// BuildKit's fallback when the host's resolvers are all on its loopback.
const DEFAULT_DNS: [&str; 4] = [
    "8.8.8.8",
    "8.8.4.4",
    "2001:4860:4860::8888",
    "2001:4860:4860::8844",
];

/// A step's network mode, as the helper receives it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Net {
    /// A namespace of its own with only the loopback (`--network=none`).
    None,
    /// The host's namespace (`--network=host`).
    Host,
    /// A namespace of its own (made as the helper starts) with outbound connectivity through the stack.
    Own,
}

impl Net {
    /// Whether the step has a network namespace of its own.
    pub fn own_namespace(&self) -> bool {
        !matches!(self, Net::Host)
    }
}

/// Finds slirp4netns on kiln's PATH (kiln's side: the helper runs with an empty environment), and checks
/// that it will be able to open the tun device as the user running kiln.
pub fn find_stack() -> Result<PathBuf> {
    let stack = on_path()?;
    let tun = "/dev/net/tun";
    let access = nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK;
    if let Err(e) = nix::unistd::access(tun, access) {
        return Err(Diagnostic::env(format!(
            "cannot give the step a network: {STACK} needs {tun}: {e}"
        ))
        .help(format!(
            "{tun} must exist (kernel module `tun`) and be readable and writable by the user running \
             kiln (mode 0666, udev's default: `chmod 0666 {tun}`); or give steps that need no network \
             `RUN --network=none`"
        )));
    }
    Ok(stack)
}

fn on_path() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(STACK))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Diagnostic::env(format!(
                "cannot give the step a network: `{STACK}` is not on PATH"
            ))
            .help(format!(
                "a RUN step's default network goes out through {STACK}: install it (Debian package \
                 `{STACK}`), or give steps that need no network `RUN --network=none`"
            ))
        })
}

/// What kiln needs to start a step's stack: the binary.
#[derive(Clone)]
pub struct Launch {
    pub stack: PathBuf,
}

/// A step's running stack, kiln's child (so tokio reaps it, also after it is dropped and killed: the
/// machine's init need not). Dropping it kills the stack.
pub struct Running {
    child: tokio::process::Child,
    ready: Option<OwnedFd>,
    /// The stack's output (an unlinked temp file), quoted when it fails.
    log: std::fs::File,
}

/// A network namespace made for one step, with its stack starting on it: made before the step needs it
/// (see `Spare`), so that the stack's start-up (exec, its own sandbox and seccomp filter, the tap
/// device: 10-60 ms on a busy machine) runs while the previous step does, not before this one.
pub struct Prepared {
    /// The namespace, which the step's helper joins as it starts (through kiln's descriptor).
    pub ns: OwnedFd,
    pub running: Running,
}

/// How long a stack may take to come up before the step fails.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Launch {
    /// A new network namespace, and the stack started on it from kiln's own. The namespace is made by a
    /// thread of its own, because `unshare` moves only the calling thread into it; the thread then ends,
    /// and the descriptor keeps the namespace alive until the helper has joined it.
    pub fn prepare(&self) -> Result<Prepared> {
        let ns = std::thread::spawn(|| -> nix::Result<OwnedFd> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            nix::fcntl::open(
                "/proc/thread-self/ns/net",
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
        })
        .join()
        .map_err(|_| Diagnostic::env("the network namespace thread panicked"))?
        .map_err(|e| Diagnostic::env(format!("cannot create the step's network namespace: {e}")))?;
        let running = self.start(&ns)?;
        Ok(Prepared { ns, running })
    }

    /// Starts the stack on the network namespace `ns`, which it opens through kiln's descriptor.
    fn start(&self, ns: &OwnedFd) -> Result<Running> {
        let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| Diagnostic::env(format!("cannot create a pipe: {e}")))?;
        let cannot = |e| Diagnostic::io(format!("cannot create {STACK}'s log"), e);
        let log = tempfile::tempfile().map_err(cannot)?;
        let (out, err) = (
            log.try_clone().map_err(cannot)?,
            log.try_clone().map_err(cannot)?,
        );
        let mut cmd = tokio::process::Command::new(&self.stack);
        cmd.args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-sandbox",
            "--enable-seccomp",
            "--ready-fd=3",
            "--netns-type=path",
        ])
        .arg(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            ns.as_raw_fd()
        ))
        .arg("eth0")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .env_clear()
        .kill_on_drop(true)
        // Out of kiln's process group, as the helper is: a Ctrl-C on the terminal is kiln's to handle.
        .process_group(0);
        let fd = ready_w.as_raw_fd();
        // SAFETY: only async-signal-safe calls between fork and exec: prctl, dup2, fcntl. The stack dies
        // with kiln, and gets the ready pipe as fd 3 (dup2 clears close-on-exec; fcntl when it is 3 already).
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                let ok = if fd == 3 {
                    nix::libc::fcntl(3, nix::libc::F_SETFD, 0) == 0
                } else {
                    nix::libc::dup2(fd, 3) == 3
                };
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd.spawn().map_err(|e| {
            Diagnostic::io(format!("cannot start {}", self.stack.display()), e).help(format!(
                "a RUN step's default network goes out through {STACK} (Debian package `{STACK}`); \
                 give steps that need no network `RUN --network=none`"
            ))
        })?;
        drop(ready_w);
        Ok(Running {
            child,
            ready: Some(ready_r),
            log,
        })
    }
}

impl Running {
    /// Whether the stack is still running (an idle one may have died meanwhile).
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until the stack has configured the namespace's interface and route; a stack that exits
    /// first (or hangs) is an error that quotes its output.
    pub async fn ready(&mut self) -> Result<()> {
        let Some(fd) = self.ready.take() else {
            return Ok(());
        };
        let read_byte = |fd: OwnedFd| {
            let mut byte = [0u8; 1];
            std::fs::File::from(fd).read_exact(&mut byte).is_ok()
        };
        // A stack made ahead has long said its word (or died): read it here, without a thread's
        // round trip on the step's path.
        let said = {
            let mut polled = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&fd),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut polled, nix::poll::PollTimeout::ZERO).is_ok_and(|n| n > 0)
        };
        let up = if said {
            read_byte(fd)
        } else {
            let read = tokio::task::spawn_blocking(move || read_byte(fd));
            matches!(
                tokio::time::timeout(READY_TIMEOUT, read).await,
                Ok(Ok(true))
            )
        };
        if up {
            return Ok(());
        }
        let mut log = String::new();
        let _ = std::io::Seek::rewind(&mut self.log);
        let _ = self.log.read_to_string(&mut log);
        let log = log.trim();
        let mut message = format!("cannot give the step a network: {STACK} did not start");
        if !log.is_empty() {
            message.push_str(&format!(": {log}"));
        }
        Err(Diagnostic::env(message).help(format!(
            "{STACK} needs /dev/net/tun, readable and writable by the user running kiln; give steps \
             that need no network `RUN --network=none`"
        )))
    }
}

/// The network namespaces (each with its stack) of the steps that get a network of their own. A step
/// takes an idle one, or else the one made ahead for it (the first step makes its own) and, when the
/// scheduler says another RUN may still run (`RunStep::more_runs`), starts the next one's, so parallel
/// and chained steps never wait for a stack, and the build's last step makes none for nothing. A step that ends cleanly gives its namespace back
/// for a later step, as BuildKit's pool of network namespaces does: nothing a confined step can do
/// outlives it there. Its processes die with its pid namespace (and with them its sockets), and changing
/// addresses, routes, filters or the namespace's sysctls needs `CAP_NET_ADMIN` (and a writable
/// `/proc/sys`), which a confined step never has; `insecure` steps do, and their namespaces are not given
/// back. A chain of steps then starts two stacks, not one per step (a stack's exec, sandbox, seccomp filter
/// and tap device, and a namespace's set-up and teardown, cost ~3 ms of CPU each time). Everything left is
/// killed when the executor is dropped.
#[derive(Default)]
pub struct Spare {
    ahead: std::sync::Mutex<Option<tokio::task::JoinHandle<Result<Prepared>>>>,
    idle: std::sync::Mutex<Vec<Prepared>>,
}

impl Spare {
    /// A namespace and stack for a step: an idle one whose stack still runs, else a fresh one (and, when
    /// `more` steps may come, the next one's started).
    pub async fn take(&self, launch: &Launch, more: bool) -> Result<Prepared> {
        while let Some(mut idle) = self.idle.lock().expect("idle lock").pop() {
            if idle.running.alive() {
                return Ok(idle);
            }
        }
        let made = |launch: &Launch| {
            let launch = launch.clone();
            tokio::task::spawn_blocking(move || launch.prepare())
        };
        let ours = self.ahead.lock().expect("spare lock").take();
        let ours = ours.unwrap_or_else(|| made(launch));
        if more {
            *self.ahead.lock().expect("spare lock") = Some(made(launch));
        }
        ours.await
            .map_err(|e| Diagnostic::env(format!("network set-up task failed: {e}")))?
    }

    /// Keeps the namespace of a confined step that has ended, every process of it gone, for a later step.
    pub fn give_back(&self, prepared: Prepared) {
        self.idle.lock().expect("idle lock").push(prepared);
    }
}

/// The helper's side: waits for kiln's word that the stack is up (one byte after the request).
pub fn wait_for_stack() -> std::result::Result<(), String> {
    let mut byte = [0u8; 1];
    match std::io::stdin().lock().read_exact(&mut byte) {
        Ok(()) if byte[0] == b'1' => Ok(()),
        _ => Err(format!("the step's network did not start ({STACK})")),
    }
}

/// The step's `/etc/resolv.conf`, from the host's: for the host's network, the host's own file; otherwise
/// its resolvers that are not on its loopback (which the step cannot reach), with `search` and `options`,
/// and when none is left, the stack's DNS forwarder (own network) or BuildKit's public fallback (none).
pub fn resolv_conf(host: &str, net: &Net) -> String {
    if *net == Net::Host {
        return host.to_string();
    }
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                let addr = words.next().unwrap_or("");
                let ip = addr.split('%').next().unwrap_or("").parse::<IpAddr>();
                if ip.is_ok_and(|ip| !ip.is_loopback()) {
                    out.push_str(&format!("nameserver {addr}\n"));
                    servers += 1;
                }
            }
            Some("search" | "domain" | "options") => {
                out.push_str(line.trim());
                out.push('\n');
            }
            _ => {}
        }
    }
    if servers == 0 {
        let fallback: &[&str] = match net {
            Net::Own => &[STACK_DNS],
            _ => &DEFAULT_DNS,
        };
        let mut lines: String = fallback
            .iter()
            .map(|a| format!("nameserver {a}\n"))
            .collect();
        lines.push_str(&out);
        out = lines;
    }
    out
}

/// The step's `/etc/hosts`: localhost both ways, and the step's hostname.
pub fn hosts() -> String {
    format!("127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

/// A new network namespace has `lo` down; bring it up so every step has localhost.
pub fn loopback_up() {
    // SAFETY: plain ioctls on a socket we own, with a zeroed, NUL-terminated ifreq.
    unsafe {
        let fd = nix::libc::socket(nix::libc::AF_INET, nix::libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return;
        }
        let mut req: nix::libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as nix::libc::c_char;
        }
        if nix::libc::ioctl(fd, nix::libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= nix::libc::IFF_UP as i16;
            nix::libc::ioctl(fd, nix::libc::SIOCSIFFLAGS, &req);
        }
        nix::libc::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::{Net, hosts, resolv_conf};

    fn own() -> Net {
        Net::Own
    }

    #[test]
    fn resolv_conf_cases() {
        let systemd = "# stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch example.org\n";
        let mixed =
            "nameserver 127.0.0.1\nnameserver 192.0.2.53\nnameserver ::1\nnameserver fd00::53\n";
        let cases: [(&str, Net, &str); 6] = [
            (
                systemd,
                own(),
                "nameserver 10.0.2.3\noptions edns0 trust-ad\nsearch example.org\n",
            ),
            (
                systemd,
                Net::None,
                "nameserver 8.8.8.8\nnameserver 8.8.4.4\nnameserver 2001:4860:4860::8888\n\
                 nameserver 2001:4860:4860::8844\noptions edns0 trust-ad\nsearch example.org\n",
            ),
            (systemd, Net::Host, systemd),
            (mixed, own(), "nameserver 192.0.2.53\nnameserver fd00::53\n"),
            (
                mixed,
                Net::None,
                "nameserver 192.0.2.53\nnameserver fd00::53\n",
            ),
            ("", own(), "nameserver 10.0.2.3\n"),
        ];
        for (host, net, want) in cases {
            assert_eq!(resolv_conf(host, &net), want, "{host:?} with {net:?}");
        }
    }

    #[test]
    fn hosts_names_localhost_and_the_step() {
        let h = hosts();
        assert!(h.contains("127.0.0.1\tlocalhost kiln\n"), "{h}");
        assert!(
            h.contains("::1\tlocalhost ip6-localhost ip6-loopback\n"),
            "{h}"
        );
    }
}
