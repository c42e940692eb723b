//! Remounting a bind mount with more flags (read-only, nodev, ...), shared by the helper's mounts and the
//! sandbox's read-only paths.

use std::path::Path;

use nix::mount::{MsFlags, mount};

/// Remounts a bind mount read-only, adding `extra`.
pub(super) fn remount_readonly(target: &Path, extra: MsFlags) -> nix::Result<()> {
    remount(target, MsFlags::MS_RDONLY | extra)
}

/// Remounts a bind mount with `extra` added. The flags the mount already has (nosuid, nodev, ...) are
/// kept: in a user namespace the kernel refuses to drop flags inherited from the host's mount.
pub(super) fn remount(target: &Path, extra: MsFlags) -> nix::Result<()> {
    use nix::sys::statvfs::FsFlags;
    let current = nix::sys::statvfs::statvfs(target)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra;
    for (have, keep) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(have) {
            flags |= keep;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
}
