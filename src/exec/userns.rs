//! Rootless mode: an unprivileged kiln makes itself root of a new user namespace before it touches the
//! store, so namespaces, overlayfs, tmpfs and chown to image owners work without host privileges.
//!
//! How: kiln forks a small mapper, then `unshare(CLONE_NEWUSER)`s *itself*; the mapper, still outside,
//! installs the id maps on kiln's pid (`newuidmap`/`newgidmap` with the user's `/etc/subuid` and
//! `/etc/subgid` ranges, or a single-id map written directly) and exits. kiln stays the same process, so
//! whoever started it keeps signalling and waiting on the real kiln: no signal forwarding, no exit-status
//! translation, and SIGKILL has the same effect as in root mode. The mapper must be a separate process
//! because a process cannot map itself with more than its own id, and the setuid `newuidmap` only works
//! from outside the namespace it writes.

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::sync::OnceLock;

use nix::sched::{CloneFlags, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, User, fork};

use crate::diag::{Diagnostic, Result};

/// What the mapper installed, as a note for the progress output.
static NOTE: OnceLock<String> = OnceLock::new();

/// Makes this process root of its own user namespace when it is not root already; a no-op for root.
/// Must run before any thread starts (the kernel refuses `CLONE_NEWUSER` to a multi-threaded process).
pub fn enter() -> Result<()> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return Ok(());
    }
    let gid = nix::unistd::getegid();
    let me = nix::unistd::getpid();
    let (go_read, go_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Diagnostic::env(format!("cannot create a pipe: {e}")))?;
    let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Diagnostic::env(format!("cannot create a pipe: {e}")))?;
    // SAFETY: kiln is single-threaded here (unshare below would fail otherwise), so the child may
    // allocate and run ordinary code, including spawning newuidmap.
    match unsafe { fork() }.map_err(|e| Diagnostic::env(format!("cannot fork: {e}")))? {
        ForkResult::Child => {
            drop(go_write);
            drop(report_read);
            let code = mapper(me, uid, gid, go_read, report_write);
            // _exit: the child must not run the parent's atexit handlers or flush its buffers twice.
            // SAFETY: always sound; it ends this process.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(go_read);
            drop(report_write);
            let unshared = unshare(CloneFlags::CLONE_NEWUSER);
            if unshared.is_ok() {
                // The mapper starts only once the namespace exists; a closed pipe tells it to give up.
                let _ = std::fs::File::from(go_write).write_all(b"g");
            } else {
                drop(go_write);
            }
            let mut report = String::new();
            let _ = std::fs::File::from(report_read).read_to_string(&mut report);
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::Error::EINTR) => continue,
                    other => break other,
                }
            };
            if let Err(e) = unshared {
                return Err(Diagnostic::env(format!(
                    "kiln is not root and cannot create a user namespace: {e}"
                ))
                .help(
                    "rootless mode needs unprivileged user namespaces (sysctls `user.max_user_namespaces` > 0, \
                     `kernel.unprivileged_userns_clone=1` where it exists, and no AppArmor \
                     `restrict_unprivileged_userns`); or run kiln as root",
                ));
            }
            match (status, report.split_once(':')) {
                (Ok(WaitStatus::Exited(_, 0)), Some(("ok", note))) => {
                    let _ = NOTE.set(note.to_string());
                    Ok(())
                }
                (_, Some(("error", message))) => Err(Diagnostic::env(message.to_string()).help(
                    "check that the `uidmap` package (newuidmap, newgidmap) is installed setuid root \
                     and that /etc/subuid and /etc/subgid give this user a range, e.g. \
                     `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER`",
                )),
                (status, _) => Err(Diagnostic::env(format!(
                    "cannot map ids into kiln's user namespace (mapper: {status:?})"
                ))),
            }
        }
    }
}

/// The note for the progress output when kiln entered a user namespace (`None` as real root).
pub fn note() -> Option<&'static str> {
    NOTE.get().map(String::as_str)
}

/// Whether this process runs in a user namespace other than the initial one (rootless mode, for kiln and
/// for its helpers, which inherit the namespace): there overlayfs needs `userxattr`, marks opaque
/// directories with `user.overlay.opaque`, and device nodes cannot be created. Cached, so it must not be
/// asked before `enter` has run; kiln's namespace does not change after that.
pub fn rootless() -> bool {
    static ROOTLESS: OnceLock<bool> = OnceLock::new();
    *ROOTLESS.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map")
            .map(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
            .unwrap_or(false)
    })
}

/// This namespace as the layer reader needs it: which overlay xattrs and owners it can write.
pub fn layer_ids() -> crate::layer::Ids {
    if rootless() {
        crate::layer::Ids::Rootless {
            mapped: mapped_ids(),
        }
    } else {
        crate::layer::Ids::Host
    }
}

/// How many ids this namespace maps (inside view), for error messages about unmapped owners.
pub fn mapped_ids() -> u64 {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| {
            m.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0)
}

/// The forked mapper: waits until kiln has unshared, installs the maps on `target`, and reports
/// `ok:NOTE` or `error:MESSAGE` on `report`. Returns the exit code.
fn mapper(target: Pid, uid: Uid, gid: Gid, go: OwnedFd, report: OwnedFd) -> i32 {
    let mut report = std::fs::File::from(report);
    let mut byte = [0u8; 1];
    if std::fs::File::from(go).read_exact(&mut byte).is_err() {
        // kiln could not unshare; it reports that itself.
        return 1;
    }
    let name = User::from_uid(uid).ok().flatten().map(|u| u.name);
    let result = install(target, uid, gid, name.as_deref());
    let (code, text) = match result {
        Ok(note) => (0, format!("ok:{note}")),
        Err(e) => (1, format!("error:{e}")),
    };
    let _ = report.write_all(text.as_bytes());
    code
}

/// Which kind of id a map is for: its file names and helper differ.
#[derive(Clone, Copy)]
enum Kind {
    User,
    Group,
}

impl Kind {
    fn subid_file(self) -> &'static str {
        match self {
            Kind::User => "/etc/subuid",
            Kind::Group => "/etc/subgid",
        }
    }
    fn helper(self) -> &'static str {
        match self {
            Kind::User => "newuidmap",
            Kind::Group => "newgidmap",
        }
    }
    fn map_file(self) -> &'static str {
        match self {
            Kind::User => "uid_map",
            Kind::Group => "gid_map",
        }
    }
}

fn install(
    target: Pid,
    uid: Uid,
    gid: Gid,
    name: Option<&str>,
) -> std::result::Result<String, String> {
    let shown = name.map_or_else(|| uid.to_string(), str::to_string);
    let uid_ranges = subordinate(Kind::User, name, uid.as_raw());
    let gid_ranges = subordinate(Kind::Group, name, uid.as_raw());
    let have_helpers = [Kind::User, Kind::Group]
        .iter()
        .all(|k| helper_path(*k).is_some());
    if !uid_ranges.is_empty() && !gid_ranges.is_empty() && have_helpers {
        map_ranges(Kind::User, target, uid.as_raw(), &uid_ranges)?;
        map_ranges(Kind::Group, target, gid.as_raw(), &gid_ranges)?;
        let count: u64 = uid_ranges.iter().map(|r| r.1).sum();
        return Ok(format!(
            "rootless: uid 0 is {shown}, uids 1-{count} come from /etc/subuid"
        ));
    }
    // Without both ranges and both helpers only this user's own ids can be mapped, and writing a gid map
    // unprivileged requires giving up setgroups.
    let proc = format!("/proc/{target}");
    let write = |file: &str, text: String| {
        std::fs::write(format!("{proc}/{file}"), text)
            .map_err(|e| format!("cannot write {proc}/{file}: {e}"))
    };
    write("setgroups", "deny".into())?;
    write(Kind::User.map_file(), format!("0 {uid} 1"))?;
    write(Kind::Group.map_file(), format!("0 {gid} 1"))?;
    let why = if !have_helpers {
        "newuidmap/newgidmap are not installed (Debian package `uidmap`)".to_string()
    } else {
        format!("/etc/subuid and /etc/subgid give {shown} no range")
    };
    Ok(format!(
        "rootless: only one id is mapped ({why}): images with files owned by other users cannot be used"
    ))
}

/// The `(start, count)` ranges `/etc/subuid` or `/etc/subgid` gives this user, by name or by uid.
fn subordinate(kind: Kind, name: Option<&str>, uid: u32) -> Vec<(u64, u64)> {
    let Ok(text) = std::fs::read_to_string(kind.subid_file()) else {
        return Vec::new();
    };
    let uid = uid.to_string();
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim().split(':');
            let (owner, start, count) = (f.next()?, f.next()?, f.next()?);
            if owner != uid && Some(owner) != name {
                return None;
            }
            let (start, count) = (start.parse().ok()?, count.parse().ok()?);
            (count > 0).then_some((start, count))
        })
        .collect()
}

fn helper_path(kind: Kind) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|d| d.join(kind.helper()))
        .find(|p| p.is_file())
}

/// Runs the setuid helper: inside id 0 is the user's own id, 1.. the subordinate ranges in order.
fn map_ranges(
    kind: Kind,
    target: Pid,
    own: u32,
    ranges: &[(u64, u64)],
) -> std::result::Result<(), String> {
    let helper = helper_path(kind).ok_or_else(|| format!("{} is not installed", kind.helper()))?;
    let mut args = vec![target.to_string(), "0".into(), own.to_string(), "1".into()];
    let mut inside = 1u64;
    for (start, count) in ranges {
        args.extend([inside.to_string(), start.to_string(), count.to_string()]);
        inside += count;
    }
    let out = std::process::Command::new(&helper)
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", helper.display()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{} {}` failed ({}): {}",
        kind.helper(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_initial_namespace_is_not_rootless() {
        // Tests run as real root in CI; inside an unshared namespace this would be true instead.
        if nix::unistd::geteuid().is_root()
            && std::fs::read_to_string("/proc/self/uid_map")
                .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        {
            assert!(!super::rootless());
            assert_eq!(super::mapped_ids(), 4_294_967_295);
        }
    }
}
