//! Snapshots that hold nothing: a step that changed no file (`RUN true`, a `RUN` that only prints) leaves
//! an empty upper dir, which is a layer of the image like any other but adds nothing to a merged view.
//! A step's overlay leaves such lowers out, so a chain of them does not make every later mount longer
//! (overlayfs looks a path up in every lower layer, and mounting resolves each one).

use super::Store;

impl Store {
    /// Whether snapshot `id` holds no entry at all and its root is not an opaque directory (which would
    /// hide the layers below it). Looked at once per snapshot per open store.
    pub fn snapshot_is_empty(&self, id: &str) -> bool {
        if let Some(empty) = self.empty.lock().expect("empty set lock").get(id) {
            return *empty;
        }
        let path = self.snapshot_path(id);
        let empty = std::fs::read_dir(&path).is_ok_and(|mut d| d.next().is_none())
            && crate::layer::is_opaque(&path).is_ok_and(|o| !o);
        self.empty
            .lock()
            .expect("empty set lock")
            .insert(id.to_owned(), empty);
        empty
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Access, Store};

    /// Empty means no entry at all and no opaque root; the answer is kept per snapshot.
    #[test]
    fn only_a_snapshot_with_nothing_in_it_is_empty() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path(), Access::Shared).unwrap();
        let snapshots = root.path().join("snapshots");
        for id in ["nothing", "a-file", "a-dir", "opaque"] {
            std::fs::create_dir(snapshots.join(id)).unwrap();
        }
        std::fs::write(snapshots.join("a-file/f"), b"").unwrap();
        std::fs::create_dir(snapshots.join("a-dir/d")).unwrap();
        // Root marks opaque dirs with trusted.*; without the capability (rootless) user.* stands in.
        let opaque = &snapshots.join("opaque");
        if xattr::set(opaque, "trusted.overlay.opaque", b"y").is_err() {
            xattr::set(opaque, "user.overlay.opaque", b"y").unwrap();
        }
        assert!(store.snapshot_is_empty("nothing"));
        for id in ["a-file", "a-dir", "opaque", "missing"] {
            assert!(!store.snapshot_is_empty(id), "{id}");
        }
        std::fs::write(snapshots.join("nothing/late"), b"").unwrap();
        assert!(store.snapshot_is_empty("nothing"), "looked at once");
    }
}
