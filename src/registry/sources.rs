//! Where pulled blobs came from: `<store>/blob-sources/<hex>` holds the `registry/repository` a blob was
//! last pulled from, so that a push to another repository of that registry mounts the blob there
//! instead of sending it (as containerd does from its distribution-source labels). Best effort both
//! ways: a lost record only means the blob is checked and sent as any other.

use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// The records' directory in the store at `root`.
pub(crate) fn dir(root: &Path) -> PathBuf {
    root.join("blob-sources")
}

/// Records that `digest` is in `repository` of `registry`.
pub(super) fn note(dir: &Path, digest: &Digest, registry: &str, repository: &str) {
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut tmp, format!("{registry}/{repository}").as_bytes())?;
        tmp.persist(dir.join(digest.hex()))?;
        Ok(())
    };
    let _ = write();
}

/// The repository of `registry` that `digest` was pulled from, if kiln remembers one.
pub(super) fn repository_on(dir: &Path, digest: &str, registry: &str) -> Option<String> {
    let hex = Digest::parse(digest)?.hex().to_string();
    let text = std::fs::read_to_string(dir.join(hex)).ok()?;
    let repository = text.strip_prefix(registry)?.strip_prefix('/')?;
    (!repository.is_empty()).then(|| repository.to_string())
}
