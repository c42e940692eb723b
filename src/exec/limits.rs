//! What `kiln build`'s command line sets for every RUN step, applied in the helper: extra `/etc/hosts`
//! lines (`--add-host`), the size of `/dev/shm` (`--shm-size`) and resource limits (`--ulimit`, set
//! with setrlimit before the step's init forks, so every process of the step inherits them).

use nix::sys::resource::{Resource, setrlimit};

use crate::solve::{Sandbox, Ulimit};

/// Docker's default size of `/dev/shm`.
const DEFAULT_SHM: u64 = 64 * 1024 * 1024;

/// The step's `/etc/hosts`: kiln's own lines, then each `--add-host` as `IP<tab>HOST`, as BuildKit
/// writes extra hosts.
pub(super) fn hosts(sandbox: &Sandbox) -> String {
    let mut text = super::net::hosts();
    for (host, ip) in &sandbox.hosts {
        text.push_str(&format!("{ip}\t{host}\n"));
    }
    text
}

/// The mount options of `/dev/shm`.
pub(super) fn shm_options(sandbox: &Sandbox) -> String {
    format!("mode=1777,size={}", sandbox.shm_size.unwrap_or(DEFAULT_SHM))
}

/// The resource of a docker `--ulimit` name.
pub fn resource(name: &str) -> Option<Resource> {
    Some(match name {
        "core" => Resource::RLIMIT_CORE,
        "cpu" => Resource::RLIMIT_CPU,
        "data" => Resource::RLIMIT_DATA,
        "fsize" => Resource::RLIMIT_FSIZE,
        "locks" => Resource::RLIMIT_LOCKS,
        "memlock" => Resource::RLIMIT_MEMLOCK,
        "msgqueue" => Resource::RLIMIT_MSGQUEUE,
        "nice" => Resource::RLIMIT_NICE,
        "nofile" => Resource::RLIMIT_NOFILE,
        "nproc" => Resource::RLIMIT_NPROC,
        "rss" => Resource::RLIMIT_RSS,
        "rtprio" => Resource::RLIMIT_RTPRIO,
        "rttime" => Resource::RLIMIT_RTTIME,
        "sigpending" => Resource::RLIMIT_SIGPENDING,
        "stack" => Resource::RLIMIT_STACK,
        "as" => Resource::RLIMIT_AS,
        _ => return None,
    })
}

/// docker's `--ulimit` names, for messages.
pub const ULIMIT_NAMES: [&str; 16] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
    "as",
];

/// Sets every `--ulimit` on this process (the helper, just before it forks the step's init).
pub(super) fn apply_ulimits(ulimits: &[Ulimit]) -> Result<(), String> {
    for u in ulimits {
        let resource = resource(&u.name).ok_or_else(|| format!("unknown ulimit `{}`", u.name))?;
        setrlimit(resource, u.soft, u.hard)
            .map_err(|e| format!("cannot set ulimit {}={}:{}: {e}", u.name, u.soft, u.hard))?;
    }
    Ok(())
}
