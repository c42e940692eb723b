//! What may leave the machine, snapshots through their tars, addresses and key actions.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
use std::path::PathBuf;

use super::connect::{Address, Header, parse_url};
use super::executor::remotable;
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
        sandbox: Default::default(),
        more_runs: false,
    };
    assert!(remotable(&step(Network::Default, false)));
    assert!(remotable(&step(Network::None, false)));
    assert!(!remotable(&step(Network::Host, false)));
    assert!(!remotable(&step(Network::Default, true)));

    // An SSH agent goes to a worker only under `--remote-secrets=allow`, and only with no other mount.
    let ssh = || crate::solve::StepMount::Ssh {
        id: "default".into(),
        target: "/run/buildkit/ssh_agent.0".into(),
        agent: crate::secret::SshSource::Socket(PathBuf::from("/agent.sock")),
        mode: 0o600,
        uid: 0,
        gid: 0,
    };
    let mut with_agent = step(Network::Default, false);
    with_agent.mounts.push(ssh());
    assert!(!remotable(&with_agent));
    assert!(super::executor::remotable_with_secrets(&with_agent));
    with_agent.mounts.push(crate::solve::StepMount::Tmpfs {
        target: "/tmp".into(),
        size: None,
    });
    assert!(!super::executor::remotable_with_secrets(&with_agent));
    assert!(!super::executor::remotable_with_secrets(&step(
        Network::Default,
        false
    )));
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
        parse_url("grpc://10.0.0.1:8980").unwrap().uri,
        "http://10.0.0.1:8980"
    );
    assert_eq!(
        parse_url("grpcs://reapi.example.com:443").unwrap(),
        Address {
            uri: "https://reapi.example.com:443".into(),
            tls: true
        }
    );
    assert_eq!(
        parse_url("grpc://[::1]:8980/").unwrap().uri,
        "http://[::1]:8980"
    );
    for bad in [
        "10.0.0.1:8980",
        "grpc://host",
        "grpc://:1",
        "grpc://h:99999",
        "grpc://h:1/x",
        "grpcs://host",
        "https://h:1",
    ] {
        assert!(parse_url(bad).is_err(), "{bad}");
    }
    let k1 = crate::digest::Digest::of(b"one");
    let k2 = crate::digest::Digest::of(b"two");
    assert_eq!(key_action(&k1).0, key_action(&k1).0);
    assert_ne!(key_action(&k1).0, key_action(&k2).0);
}

/// A header's value is a credential: no Debug of it, or of what holds it, shows the value, and a bad
/// header's error does not quote it.
#[test]
fn header_values_never_show() {
    let h = Header::parse("Authorization=Bearer tok-5ecret").unwrap();
    assert_eq!(format!("{h:?}"), "authorization: <redacted>");
    let connect = super::Connect {
        headers: vec![h],
        ..Default::default()
    };
    assert!(!format!("{connect:?}").contains("tok-5ecret"));
    for bad in [
        "novalue",
        "=tok-5ecret",
        "grpc-timeout=tok-5ecret",
        "x=tok-5ecret\n",
        "a b=tok-5ecret",
    ] {
        let (range, message) = Header::parse(bad).unwrap_err();
        assert!(!message.contains("tok-5ecret"), "{message}");
        assert!(!bad[range].contains("tok-5ecret"), "{bad}");
    }
}

/// The secret channel hands an execution's values once, to a worker the CA vouches for, and only for
/// its nonce; refusals are final (not retried elsewhere), and nothing is sent to a stranger.
#[tokio::test]
async fn the_secret_channel_sends_each_execution_once_to_a_vouched_worker() {
    use super::secrets::{Endpoint, TlsFiles, agent, client_config, fetch};
    use crate::diag::Category;
    use crate::secret::SecretValue;
    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

    let dir = tempfile::tempdir().unwrap();
    let made = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/remote-secrets-certs.sh"
        ))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(made.success());
    let p = |n: &str| dir.path().join(n);
    let files = |who: &str| {
        (
            p("ca.pem"),
            p(&format!("{who}.pem")),
            p(&format!("{who}.key")),
        )
    };
    let config = |who: &str| {
        let (ca, cert, key) = files(who);
        client_config(&TlsFiles {
            ca: &ca,
            cert: &cert,
            key: &key,
        })
        .unwrap()
    };
    let (ca, cert, key) = files("build");
    let endpoint = Endpoint::start(
        "127.0.0.1:0",
        &TlsFiles {
            ca: &ca,
            cert: &cert,
            key: &key,
        },
    )
    .await
    .unwrap();
    let value = || SecretValue::new(zeroize::Zeroizing::new(b"s3cr3t-value".to_vec()));
    let addr = endpoint.addr();

    // A stranger gets nothing, and the execution's values stay for the right worker.
    let registration = endpoint
        .register(vec![("tok".into(), value())], Vec::new())
        .unwrap();
    let e = fetch(config("stranger"), &addr, &registration.nonce)
        .await
        .err()
        .expect("a stranger is refused");
    assert_eq!(e.category, Category::Build, "{}", e.message);
    assert!(!endpoint.taken(&registration));
    assert!(endpoint.refusals()[0].contains("TLS handshake refused"));

    let got = fetch(config("worker"), &addr, &registration.nonce)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "tok");
    assert_eq!(got[0].1.expose(), b"s3cr3t-value");
    assert!(endpoint.taken(&registration));
    // Once only.
    let e = fetch(config("worker"), &addr, &registration.nonce)
        .await
        .err()
        .expect("a nonce works once");
    assert_eq!(e.category, Category::Build, "{}", e.message);

    // A withdrawn registration (its step ended) serves nothing.
    let withdrawn = endpoint
        .register(vec![("tok".into(), value())], Vec::new())
        .unwrap();
    let nonce = withdrawn.nonce.clone();
    drop(withdrawn);
    assert!(fetch(config("worker"), &addr, &nonce).await.is_err());

    // An agent is relayed for every connection while its execution is registered, then no more.
    let key = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[7; 32]));
    let keys = crate::secret::SshSource::Keys(std::sync::Arc::new(vec![key]));
    let lent = endpoint
        .register(Vec::new(), vec![("default".into(), keys)])
        .unwrap();
    async fn ask(tls: &mut (impl AsyncRead + AsyncWrite + Unpin), msg: &[u8]) -> Vec<u8> {
        tls.write_u32(msg.len() as u32).await.unwrap();
        tls.write_all(msg).await.unwrap();
        tls.flush().await.unwrap();
        let mut reply = vec![0; tls.read_u32().await.unwrap() as usize];
        tls.read_exact(&mut reply).await.unwrap();
        reply
    }
    for _ in 0..2 {
        let mut tls = agent(config("worker"), &addr, &lent.nonce, "default")
            .await
            .unwrap();
        // Identities answered (one key); adding one refused.
        assert_eq!(ask(&mut tls, &[11]).await[..5], [12, 0, 0, 0, 1]);
        assert_eq!(ask(&mut tls, &[17]).await, [5]);
    }
    let closed = async |id: &str, nonce: &str| {
        let mut tls = agent(config("worker"), &addr, nonce, id).await.unwrap();
        tls.write_all(&[0, 0, 0, 1, 11]).await.unwrap();
        tls.flush().await.unwrap();
        tls.read_u32().await.is_err()
    };
    assert!(
        closed("deploy", &lent.nonce).await,
        "an agent it does not forward"
    );
    let nonce = lent.nonce.clone();
    drop(lent);
    assert!(closed("default", &nonce).await, "a withdrawn execution");
    // Nothing listening: a connection failure, which another worker may retry.
    drop(endpoint);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let e = fetch(config("worker"), &addr, &nonce).await.err().unwrap();
    assert_eq!(e.category, Category::Environment, "{}", e.message);
}
