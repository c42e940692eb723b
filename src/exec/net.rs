//! A step's network. By default a step gets a network namespace of its own: loopback, and one interface
//! whose outbound traffic slirp4netns (the user-mode TCP/IP stack rootless podman uses) turns into ordinary
//! sockets of the host's network namespace. Nothing on the host's loopback is reachable from there: the
//! stack's gateway address does not lead to it (`--disable-host-loopback`), and the step's own 127.0.0.1
//! is its own. `--network=none` has only the loopback; `--network=host` keeps the host's namespace.
//!
//! Why slirp4netns rather than pasta: it starts in about 3 ms (sandboxed and under its own seccomp
//! filter), runs as root as it does unprivileged, reports readiness on one pipe and exits when another
//! closes, and does nothing with the host's loopback unless asked; pasta drops root to `nobody` (which
//! then cannot open the step's namespace) and by default forwards the host's bound loopback ports into the
//! namespace unless told not to for each protocol and direction.
//!
//! Every mode gets a generated `/etc/resolv.conf` and `/etc/hosts`, bind-mounted read-only over the
//! image's own (or over a stub that is removed from the layer), as BuildKit does.

use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork};
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
    /// A namespace of its own with outbound connectivity through the stack at this path.
    Own { stack: PathBuf },
}

impl Net {
    /// Whether the step leaves the host's network namespace.
    pub fn unshares(&self) -> bool {
        !matches!(self, Net::Host)
    }
}

/// Finds slirp4netns on kiln's PATH (kiln's side: the helper runs with an empty environment).
pub fn find_stack() -> Result<PathBuf> {
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

/// slirp4netns forked while the helper is still in the host's (or kiln's) network namespace, waiting for
/// the helper to make its own. Dropped unstarted, it exits without running the stack (`go` closes first).
pub struct Pending {
    go: OwnedFd,
    stack: Stack,
}

/// The running stack of one step; dropping it ends the stack.
pub struct Stack {
    child: Pid,
    ready: Option<OwnedFd>,
    /// Its closing (also when the helper is killed) tells the stack to exit.
    _exit: OwnedFd,
    log: PathBuf,
}

fn pipe(what: &str) -> std::result::Result<(OwnedFd, OwnedFd), String> {
    // Close-on-exec: the step's own processes must hold none of them.
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("{what}: cannot create a pipe: {e}"))
}

impl Pending {
    /// Forks the stack's process. It targets this process's network namespace, so it must be let go
    /// (`start`) only after this process has unshared one.
    pub fn fork(stack: &Path, log: &Path) -> std::result::Result<Pending, String> {
        let (go_r, go_w) = pipe(STACK)?;
        let (ready_r, ready_w) = pipe(STACK)?;
        let (exit_r, exit_w) = pipe(STACK)?;
        let log_file =
            std::fs::File::create(log).map_err(|e| format!("cannot create {STACK}'s log: {e}"))?;
        let helper = nix::unistd::getpid();
        let args: Vec<std::ffi::CString> = [
            stack.as_os_str().to_string_lossy().into_owned(),
            "--configure".into(),
            "--mtu=65520".into(),
            "--disable-host-loopback".into(),
            "--enable-sandbox".into(),
            "--enable-seccomp".into(),
            format!("--ready-fd={}", ready_w.as_raw_fd()),
            format!("--exit-fd={}", exit_r.as_raw_fd()),
            helper.to_string(),
            "eth0".into(),
        ]
        .into_iter()
        .map(|a| std::ffi::CString::new(a).map_err(|_| format!("{STACK}: a NUL in its path")))
        .collect::<std::result::Result<_, _>>()?;
        // SAFETY: the helper is single-threaded, so the child may run ordinary code until it execs.
        match unsafe { fork() }.map_err(|e| format!("cannot fork {STACK}: {e}"))? {
            ForkResult::Child => {
                drop((go_w, ready_r, exit_w));
                let code = exec_stack(helper, go_r, &log_file, &[&ready_w, &exit_r], &args);
                // SAFETY: always sound; it ends this process without running the helper's exit paths.
                unsafe { nix::libc::_exit(code) }
            }
            ForkResult::Parent { child } => Ok(Pending {
                go: go_w,
                stack: Stack {
                    child,
                    ready: Some(ready_r),
                    _exit: exit_w,
                    log: log.to_path_buf(),
                },
            }),
        }
    }

    /// Lets the stack attach to the namespace this process now has.
    pub fn start(self) -> std::result::Result<Stack, String> {
        let Pending { go, stack } = self;
        std::fs::File::from(go)
            .write_all(b"g")
            .map_err(|e| format!("cannot start {STACK}: {e}"))?;
        Ok(stack)
    }
}

/// The forked child: dies with the helper, waits for the go, then becomes the stack with its output in
/// `log` and only `keep` inherited. Returns only on failure.
fn exec_stack(
    helper: Pid,
    go: OwnedFd,
    log: &std::fs::File,
    keep: &[&OwnedFd],
    args: &[std::ffi::CString],
) -> i32 {
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != helper
    {
        return 1;
    }
    let mut byte = [0u8; 1];
    if std::fs::File::from(go).read_exact(&mut byte).is_err() {
        return 1;
    }
    let Ok(null) = std::fs::File::open("/dev/null") else {
        return 1;
    };
    if nix::unistd::dup2_stdin(&null).is_err()
        || nix::unistd::dup2_stdout(log).is_err()
        || nix::unistd::dup2_stderr(log).is_err()
    {
        return 1;
    }
    for fd in keep {
        if nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .is_err()
        {
            return 1;
        }
    }
    let _ = nix::unistd::execv(&args[0], args);
    127
}

impl Stack {
    /// Waits until the stack has configured the namespace's interface and route.
    pub fn ready(&mut self) -> std::result::Result<(), String> {
        let Some(fd) = self.ready.take() else {
            return Ok(());
        };
        let mut byte = [0u8; 1];
        if std::fs::File::from(fd).read_exact(&mut byte).is_ok() {
            return Ok(());
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let log = log.trim();
        let mut message = format!("the step's network did not start: {STACK} failed");
        if !log.is_empty() {
            message.push_str(&format!(": {log}"));
        }
        if log.contains("/dev/net/tun") {
            message.push_str(
                "\nhelp: /dev/net/tun must be readable and writable by the user running kiln (mode \
                 0666, udev's default), or give steps that need no network `RUN --network=none`",
            );
        }
        Err(message)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // The step is over: nothing may keep its network alive.
        let _ = kill(self.child, Signal::SIGKILL);
        let _ = waitpid(self.child, None);
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
            Net::Own { .. } => &[STACK_DNS],
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
        Net::Own {
            stack: "/usr/bin/slirp4netns".into(),
        }
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
