//! `--network`, `--add-host`, `--shm-size` and `--ulimit` of `kiln build`: what every RUN step gets,
//! in docker's spellings, each bad value located on the command line.

use super::command_line::CommandLine;
use crate::diag::{Result, Span, suggest};
use crate::graph::entitlement::Entitlement;
use crate::graph::op::Network;
use crate::solve::{Sandbox, Ulimit};

/// The four flags' values, as `kiln build` was given them.
pub(super) struct StepFlags<'a> {
    pub(super) network: Option<&'a str>,
    pub(super) add_hosts: &'a [String],
    pub(super) shm_size: Option<&'a str>,
    pub(super) ulimits: &'a [String],
}

pub(super) fn parse(cl: &CommandLine, flags: &StepFlags, allow: &[Entitlement]) -> Result<Sandbox> {
    Ok(Sandbox {
        network: flags.network.map(|n| network(cl, n, allow)).transpose()?,
        hosts: flags
            .add_hosts
            .iter()
            .map(|h| add_host(cl, h))
            .collect::<Result<_>>()?,
        shm_size: flags.shm_size.map(|s| shm_size(cl, s)).transpose()?,
        ulimits: flags
            .ulimits
            .iter()
            .map(|u| ulimit(cl, u))
            .collect::<Result<_>>()?,
    })
}

/// `--network default|none|host`; `host` is an entitlement the build must be allowed.
fn network(cl: &CommandLine, value: &str, allow: &[Entitlement]) -> Result<Network> {
    let Some(n) = Network::parse(value) else {
        let d = cl.error(
            value,
            Span::default(),
            format!("unknown network mode `{value}`"),
        );
        return Err(match suggest(value, ["default", "none", "host"]) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help("--network takes default, none or host"),
        });
    };
    if n == Network::Host && !allow.contains(&Entitlement::NetworkHost) {
        return Err(cl
            .error(
                value,
                Span::default(),
                "--network host needs the network.host entitlement",
            )
            .help("add `--allow network.host`: steps then share this machine's network"));
    }
    Ok(n)
}

/// `--add-host HOST:IP` (also `HOST=IP`, buildx's newer spelling, which lets an IPv6 address through
/// unambiguously).
fn add_host(cl: &CommandLine, value: &str) -> Result<(String, String)> {
    let split = value.split_once('=').or_else(|| value.split_once(':'));
    let Some((host, ip)) = split.filter(|(h, i)| !h.is_empty() && !i.is_empty()) else {
        return Err(cl
            .error(value, Span::default(), "--add-host needs HOST:IP")
            .help("for example `--add-host db.internal:10.0.0.5`"));
    };
    // Brackets around an IPv6 address are docker's too.
    let bare = ip.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_err() {
        let at = Span::new(value.len() - ip.len(), value.len());
        let d = cl.error(value, at, format!("`{ip}` is not an IP address"));
        return Err(if ip == "host-gateway" {
            d.help("kiln's steps have no host gateway: give the address itself")
        } else {
            d.help("give an IPv4 or IPv6 address, e.g. `--add-host db.internal:10.0.0.5`")
        });
    }
    Ok((host.to_string(), bare.to_string()))
}

/// `--shm-size` in docker's units: bytes, or a number with `k`, `m`, `g`, `t`, `p` (powers of 1024,
/// an optional `b`/`ib` after them), as docker's RAMInBytes reads it.
fn shm_size(cl: &CommandLine, value: &str) -> Result<u64> {
    let bad = || {
        cl.error(value, Span::default(), format!("`{value}` is not a size"))
            .help("give bytes or a size such as `512m` or `2g`")
    };
    let lower = value.trim().to_ascii_lowercase();
    let rest = lower.strip_suffix('b').unwrap_or(&lower);
    let (rest, binary) = match rest.strip_suffix('i') {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (number, scale): (&str, u64) = match rest.chars().last() {
        Some('k') => (&rest[..rest.len() - 1], 1 << 10),
        Some('m') => (&rest[..rest.len() - 1], 1 << 20),
        Some('g') => (&rest[..rest.len() - 1], 1 << 30),
        Some('t') => (&rest[..rest.len() - 1], 1 << 40),
        Some('p') => (&rest[..rest.len() - 1], 1 << 50),
        _ if binary => return Err(bad()),
        _ => (rest, 1),
    };
    let n: f64 = number.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 {
        return Err(bad());
    }
    Ok((n * scale as f64) as u64)
}

/// `--ulimit NAME=SOFT[:HARD]` (docker's names; -1 for unlimited); the hard limit is the soft one
/// when not given.
fn ulimit(cl: &CommandLine, value: &str) -> Result<Ulimit> {
    let Some((name, limits)) = value.split_once('=') else {
        return Err(cl
            .error(value, Span::default(), "--ulimit needs NAME=SOFT[:HARD]")
            .help("for example `--ulimit nofile=1024:2048`"));
    };
    if crate::exec::limits::resource(name).is_none() {
        let d = cl.error(
            value,
            Span::new(0, name.len()),
            format!("unknown ulimit `{name}`"),
        );
        let names = crate::exec::limits::ULIMIT_NAMES;
        return Err(match suggest(name, names) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help(format!("ulimits are {}", names.join(", "))),
        });
    }
    let at = Span::new(name.len() + 1, value.len());
    let number = |s: &str| -> Option<u64> {
        match s {
            "-1" => Some(u64::MAX),
            _ => s.parse().ok(),
        }
    };
    let (soft, hard) = match limits.split_once(':') {
        Some((s, h)) => (number(s), number(h)),
        None => (number(limits), number(limits)),
    };
    let (Some(soft), Some(hard)) = (soft, hard) else {
        return Err(cl
            .error(value, at, format!("`{limits}` is not SOFT[:HARD]"))
            .help("give numbers (-1 for unlimited), e.g. `--ulimit nofile=1024:2048`"));
    };
    if soft > hard {
        return Err(cl
            .error(
                value,
                at,
                format!("the soft limit {soft} is above the hard limit {hard}"),
            )
            .help("the soft limit must not exceed the hard one"));
    }
    Ok(Ulimit {
        name: name.to_string(),
        soft,
        hard,
    })
}
