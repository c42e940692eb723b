//! The OCI layer codec, both ways: `write` turns a snapshot (overlayfs upperdir format) into a
//! reproducible layer tar and its compressed blob, `read` unpacks a layer tar into a snapshot. This file
//! holds what both directions agree on: how overlayfs and OCI each encode deletions and opaque
//! directories.
//!
//! overlayfs marks a deletion with a 0/0 character device and an opaque directory with
//! `trusted.overlay.opaque=y` (`user.overlay.opaque=y` when rootless kiln mounts it with `userxattr`);
//! an OCI layer says the same with `.wh.<name>` files and a `.wh..wh..opq` file in the directory.
//! A foundation: it uses no stage, so what it must know about the executor's user namespace (which
//! xattrs it may write, which owners exist) is handed to the reader by its caller.

mod read;
mod write;

use std::io;
use std::path::Path;

pub use read::{Ids, decompress, open_blob, unpack_layer};
pub use write::{
    Codec, LayerInfo, Part, TarIndex, compress_tar, cores, layer_digest_indexed, layer_digests,
    layer_digests_leveled, layer_digests_threaded, parallel_map, part_digests, write_layer,
    write_part,
};

/// Every xattr under these prefixes is overlayfs bookkeeping (root mode's and rootless mode's),
/// meaningless outside this host: never exported, and never taken from a layer, where it would let an
/// image forge opaque dirs or redirects on this host.
const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const USER_OPAQUE_XATTR: &str = "user.overlay.opaque";
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Whether overlayfs marked `dir` opaque, in either of its xattr namespaces.
pub fn is_opaque(dir: &Path) -> io::Result<bool> {
    for name in [OPAQUE_XATTR, USER_OPAQUE_XATTR] {
        if xattr::get(dir, name)?.as_deref() == Some(b"y") {
            return Ok(true);
        }
    }
    Ok(false)
}
