//! What a RUN step may touch: Docker's default OCI spec as runc applies it (BuildKit's sandbox), for the
//! step's init after the helper has set up its mounts.
//!
//! - `/proc` with Docker's masked paths (an empty view) and read-only paths; `/sys` a read-only sysfs.
//! - Docker's default capability set in the bounding, permitted and effective sets; inheritable and
//!   ambient empty, as containerd and moby have set them since CVE-2022-24769. A non-root `USER` keeps
//!   the bounding set and gets the kernel's setuid rules for the rest (permitted and effective cleared),
//!   so a setuid program such as `su` still works within the bounding set.
//! - Docker's default seccomp profile (`seccomp`).
//! - No `no_new_privs`: BuildKit sets `oci.WithNewPrivileges` (runc's default spec does too).
//!
//! `RUN --security=insecure` (allowed with `--allow security.insecure`) skips all of it, as BuildKit's
//! insecure mode does: every capability, no filter, nothing masked, `/sys` writable.

use std::collections::HashSet;
use std::path::Path;

use caps::{CapSet, Capability};
use nix::mount::{MsFlags, mount};

use super::remount::remount_readonly;

/// moby's `oci/caps/defaults.go`, the same as containerd's `defaultUnixCaps`.
pub const DEFAULT_CAPS: [Capability; 14] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Docker's masked paths: a file gets /dev/null over it, a directory an empty read-only tmpfs.
const MASKED: &[&str] = &[
    "proc/asound",
    "proc/acpi",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Docker's read-only paths: bound onto themselves read-only.
const READ_ONLY: &[&str] = &[
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

fn errno(what: &str) -> impl Fn(nix::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Mounts `/proc` and `/sys` under `root` (the step's init runs this in its own pid namespace), masked and
/// read-only as Docker's default spec has them unless `insecure`.
pub fn mount_proc_sys(root: &Path, insecure: bool) -> Result<(), String> {
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        hidden,
        None::<&str>,
    )
    .map_err(errno("cannot mount /proc"))?;
    mount_sys(root, insecure)?;
    if insecure {
        return Ok(());
    }
    for path in MASKED {
        mask(root, path)?;
    }
    for path in READ_ONLY {
        let target = root.join(path);
        if std::fs::symlink_metadata(&target).is_err() {
            continue;
        }
        mount(
            Some(&target),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(errno("cannot bind a read-only path"))?;
        remount_readonly(&target, hidden).map_err(errno("cannot make a path read-only"))?;
    }
    Ok(())
}

/// A fresh sysfs, read-only unless `insecure`. A user namespace that does not own the network namespace
/// may not mount sysfs (rootless mode sharing the host's network): then the host's /sys, bound
/// recursively and made read-only all the way down.
fn mount_sys(root: &Path, insecure: bool) -> Result<(), String> {
    let target = root.join("sys");
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if !insecure {
        flags |= MsFlags::MS_RDONLY;
    }
    match mount(Some("sysfs"), &target, Some("sysfs"), flags, None::<&str>) {
        Ok(()) => Ok(()),
        Err(nix::Error::EPERM) if super::userns::rootless() => {
            mount(
                Some("/sys"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(errno("cannot bind /sys"))?;
            if insecure {
                return Ok(());
            }
            read_only_recursively(&target)
        }
        Err(e) => Err(format!("cannot mount /sys: {e}")),
    }
}

/// `mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)`: a plain remount would leave the submounts of a
/// recursive bind (cgroups, securityfs, ...) writable.
fn read_only_recursively(target: &Path) -> Result<(), String> {
    /// `struct mount_attr` of linux/mount.h.
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    let path = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| "a path with a NUL byte".to_string())?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid NUL-terminated path and a `mount_attr` of the size passed, both alive for the call.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            nix::libc::AT_FDCWD,
            path.as_ptr(),
            nix::libc::AT_RECURSIVE as nix::libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(nix::libc::ENOSYS) {
        // Before Linux 5.12: at least /sys itself is read-only.
        return remount_readonly(target, MsFlags::empty())
            .map_err(errno("cannot make /sys read-only"));
    }
    Err(format!("cannot make /sys read-only: {err}"))
}

fn mask(root: &Path, path: &str) -> Result<(), String> {
    let target = root.join(path);
    let Ok(meta) = std::fs::symlink_metadata(&target) else {
        return Ok(());
    };
    let masked = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some(&root.join("dev/null")),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    masked.map_err(|e| format!("cannot mask /{path}: {e}"))
}

/// The confinement the step's init applies to itself last, while still root: built first (it
/// allocates), applied just before the switch to the step's user.
pub struct Confinement {
    filters: Vec<super::seccomp::Filter>,
}

impl Confinement {
    /// `None` for an insecure step, which keeps everything.
    pub fn new(insecure: bool) -> Result<Option<Confinement>, String> {
        if insecure {
            return Ok(None);
        }
        Ok(Some(Confinement {
            filters: super::seccomp::filters()?,
        }))
    }

    /// Bounding set, then the filter (which needs CAP_SYS_ADMIN without `no_new_privs`), then the
    /// permitted, effective, inheritable and ambient sets. The filter allows what follows (capset,
    /// setgroups, setuid, execve).
    pub fn apply(&self) -> Result<(), String> {
        let keep: HashSet<Capability> = DEFAULT_CAPS.into_iter().collect();
        let err = |what: &'static str| move |e: caps::errors::CapsError| format!("{what}: {e}");
        for cap in caps::all() {
            // A capability newer than the kernel is not in its bounding set and cannot be dropped.
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(err("cannot drop a capability"))?;
            }
        }
        super::seccomp::install(&self.filters)?;
        caps::clear(None, CapSet::Ambient).map_err(err("cannot clear ambient capabilities"))?;
        caps::set(None, CapSet::Effective, &keep).map_err(err("cannot set capabilities"))?;
        caps::set(None, CapSet::Permitted, &keep).map_err(err("cannot set capabilities"))?;
        caps::clear(None, CapSet::Inheritable).map_err(err("cannot set capabilities"))
    }
}
