//! What may leave the machine, snapshots through their tars, addresses and key actions.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
use std::path::PathBuf;

use super::executor::remotable;
use super::server::parse_url;
use super::{key_action, tar_snapshot};
use crate::graph::op::Network;
use crate::solve::RunStep;
use nix::sys::stat::{Mode, SFlag, mknod};

/// A step that needs an entitlement was allowed for this machine only: it never becomes an Action.
#[test]
fn steps_with_an_entitlement_run_locally() {
    let step = |network, insecure| RunStep {
        fs: crate::solve::Layers {
            lowers: Vec::new(),
            upper: PathBuf::from("/step/upper"),
            work: PathBuf::from("/step/scratch"),
        },
        args: vec!["true".into()],
        env: Vec::new(),
        cwd: "/".into(),
        user: String::new(),
        network,
        insecure,
        secrets: Vec::new(),
        mounts: Vec::new(),
        key: None,
    };
    assert!(remotable(&step(Network::Default, false)));
    assert!(remotable(&step(Network::None, false)));
    assert!(!remotable(&step(Network::Host, false)));
    assert!(!remotable(&step(Network::Default, true)));
}

/// What a worker sends back is what the client commits: a snapshot survives the trip through its
/// tar (the step's upper dir → `upper.tar` → the client's upper dir) with every kind of entry an
/// upper dir holds, and tars again to the same bytes.
#[test]
fn a_snapshot_round_trips_through_its_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::create_dir_all(a.join("app/bin")).unwrap();
    std::fs::write(a.join("app/tool"), b"#!/bin/sh\n").unwrap();
    // chown clears setuid, so it goes first.
    std::os::unix::fs::lchown(a.join("app/tool"), Some(1000), Some(1001)).unwrap();
    std::fs::set_permissions(a.join("app/tool"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    xattr::set(a.join("app/tool"), "user.note", b"kept").unwrap();
    std::fs::hard_link(a.join("app/tool"), a.join("app/bin/same")).unwrap();
    symlink("tool", a.join("app/link")).unwrap();
    mknod(&a.join("gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
    std::fs::create_dir(a.join("opaque")).unwrap();
    xattr::set(a.join("opaque"), "trusted.overlay.opaque", b"y").unwrap();
    let first = tar_snapshot(&a, &tmp.path().join("a.tar")).unwrap();
    crate::layer::unpack_layer(
        std::fs::File::open(tmp.path().join("a.tar")).unwrap(),
        &b,
        crate::exec::userns::layer_ids(),
    )
    .unwrap();
    let second = tar_snapshot(&b, &tmp.path().join("b.tar")).unwrap();
    assert_eq!(first, second);
    let meta = std::fs::symlink_metadata(b.join("app/tool")).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o4755, 1000, 1001)
    );
    assert_eq!(
        meta.ino(),
        std::fs::metadata(b.join("app/bin/same")).unwrap().ino()
    );
    assert_eq!(
        std::fs::symlink_metadata(b.join("gone")).unwrap().rdev(),
        0,
        "the whiteout is a 0/0 device again"
    );
    assert!(crate::layer::is_opaque(&b.join("opaque")).unwrap());
    assert_eq!(
        std::fs::symlink_metadata(a.join("app")).unwrap().mtime(),
        std::fs::symlink_metadata(b.join("app")).unwrap().mtime()
    );
}

#[test]
fn addresses_and_key_actions() {
    assert_eq!(
        parse_url("grpc://10.0.0.1:8980").unwrap(),
        "http://10.0.0.1:8980"
    );
    assert_eq!(
        parse_url("grpc://[::1]:8980/").unwrap(),
        "http://[::1]:8980"
    );
    for bad in [
        "10.0.0.1:8980",
        "grpc://host",
        "grpc://:1",
        "grpc://h:99999",
        "grpc://h:1/x",
    ] {
        assert!(parse_url(bad).is_err(), "{bad}");
    }
    let k1 = crate::digest::Digest::of(b"one");
    let k2 = crate::digest::Digest::of(b"two");
    assert_eq!(key_action(&k1).0, key_action(&k1).0);
    assert_ne!(key_action(&k1).0, key_action(&k2).0);
}
