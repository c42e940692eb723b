//! References, plain-HTTP rules, credentials and retry classification.

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;

use super::auth::{Options, credentials};
use super::client::transient;
use super::reference::ImageName;

fn parsed(s: &str) -> String {
    ImageName::parse(s).unwrap().to_string()
}

#[test]
fn normalises_like_docker() {
    assert_eq!(parsed("busybox"), "docker.io/library/busybox:latest");
    assert_eq!(parsed("busybox:1.36"), "docker.io/library/busybox:1.36");
    assert_eq!(
        parsed("library/busybox"),
        "docker.io/library/busybox:latest"
    );
    assert_eq!(parsed("user/app"), "docker.io/user/app:latest");
    assert_eq!(
        parsed("index.docker.io/user/app"),
        "docker.io/user/app:latest"
    );
    assert_eq!(
        parsed("docker.io/busybox"),
        "docker.io/library/busybox:latest"
    );
    assert_eq!(parsed("localhost/app"), "localhost/app:latest");
    assert_eq!(parsed("localhost:5000/a/b:v1"), "localhost:5000/a/b:v1");
    assert_eq!(
        parsed("127.0.0.1:5000/busybox"),
        "127.0.0.1:5000/busybox:latest"
    );
    assert_eq!(parsed("ghcr.io/o/r/x:1.0-rc_2"), "ghcr.io/o/r/x:1.0-rc_2");
    assert_eq!(parsed("[::1]:5000/app"), "[::1]:5000/app:latest");
    let d = format!("sha256:{}", "a".repeat(64));
    assert_eq!(
        parsed(&format!("busybox@{d}")),
        format!("docker.io/library/busybox@{d}")
    );
    assert_eq!(parsed(&format!("h.io/x:t@{d}")), format!("h.io/x:t@{d}"));
    // `foo:5000` alone is a name and a tag, not a host: docker reads it the same way.
    assert_eq!(parsed("foo:5000"), "docker.io/library/foo:5000");
    assert_eq!(
        parsed("ab/c.d-e__f/g---h"),
        "docker.io/ab/c.d-e__f/g---h:latest"
    );
}

/// The build-context name BuildKit's `NamedContext` looks up: docker's familiar form without `:latest`.
#[test]
fn context_keys_are_familiar_names_without_latest() {
    let key = |r: &str| ImageName::parse(r).unwrap().context_key();
    for (reference, want) in [
        ("busybox", "busybox"),
        ("busybox:latest", "busybox"),
        ("docker.io/library/busybox:latest", "busybox"),
        ("busybox:1.36", "busybox:1.36"),
        ("team/app", "team/app"),
        ("docker.io/team/app:2", "team/app:2"),
        ("127.0.0.1:5000/app:latest", "127.0.0.1:5000/app"),
    ] {
        assert_eq!(key(reference), want, "{reference}");
    }
}

#[test]
fn malformed_references_are_refused_with_reasons() {
    for (bad, why) in [
        ("", "empty"),
        ("Busybox", "lower-case"),
        ("busybox:", "not a valid tag"),
        ("busybox:-x", "not a valid tag"),
        ("busybox@sha256:abc", "not a digest"),
        ("busybox@md5:abc", "not a digest"),
        ("a//b", "name component"),
        ("a/-b", "name component"),
        ("a/b_", "name component"),
        ("a/b...c", "name component"),
        ("host:port/app", "registry host"),
        ("-h.io/app", "registry host"),
        (":tag", "name is empty"),
        ("h.io/a b", "name component"),
    ] {
        let e = ImageName::parse(bad).expect_err(bad);
        assert!(e.message.contains(why), "{bad}: {}", e.message);
        assert!(e.message.contains(&format!("`{bad}`")), "{}", e.message);
    }
    assert!(ImageName::parse(&format!("h.io/{}", "a".repeat(260))).is_err());
}

#[test]
fn loopback_and_listed_registries_speak_plain_http() {
    let opts = Options {
        insecure: vec!["reg.lan".into(), "other.lan:5000".into()],
        ..Options::default()
    };
    for r in [
        "localhost",
        "localhost:5000",
        "127.0.0.1:41234",
        "[::1]:5000",
        "reg.lan",
        "reg.lan:443",
        "other.lan:5000",
    ] {
        assert!(opts.plain_http(r), "{r}");
    }
    for r in [
        "docker.io",
        "other.lan",
        "other.lan:5001",
        "ghcr.io",
        "127.0.0.2:5000",
    ] {
        assert!(!opts.plain_http(r), "{r}");
    }
}

fn config(json: &str) -> (tempfile::TempDir, Options) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), json).unwrap();
    let opts = Options {
        docker_config: Some(dir.path().to_path_buf()),
        ..Options::default()
    };
    (dir, opts)
}

#[test]
fn credentials_come_from_config_json() {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:pa55");
    let hub = base64::engine::general_purpose::STANDARD.encode("bob:hub");
    let (_d, opts) = config(&format!(
        r#"{{"auths": {{"127.0.0.1:5001": {{"auth": "{auth}"}}, "https://index.docker.io/v1/": {{"auth": "{hub}"}}}}}}"#
    ));
    let c = credentials(&ImageName::parse("127.0.0.1:5001/x").unwrap(), &opts).unwrap();
    assert!(matches!(&c.auth, RegistryAuth::Basic(u, p) if u == "alice" && p == "pa55"));
    let c = credentials(&ImageName::parse("busybox").unwrap(), &opts).unwrap();
    assert!(matches!(&c.auth, RegistryAuth::Basic(u, p) if u == "bob" && p == "hub"));
    let c = credentials(&ImageName::parse("127.0.0.1:5000/x").unwrap(), &opts).unwrap();
    assert!(matches!(c.auth, RegistryAuth::Anonymous));
}

#[test]
fn no_config_means_anonymous_and_a_broken_one_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        docker_config: Some(dir.path().join("nothing-here")),
        ..Options::default()
    };
    let c = credentials(&ImageName::parse("h.io/x").unwrap(), &opts).unwrap();
    assert!(matches!(c.auth, RegistryAuth::Anonymous));
    let (_d, opts) = config(r#"{"auths": {"h.io": {"auth": "!!!"}}}"#);
    let e = credentials(&ImageName::parse("h.io/x").unwrap(), &opts)
        .err()
        .unwrap();
    assert!(e.message.contains("config.json"), "{}", e.message);
    let (_d, opts) = config(r#"{"credHelpers": {"h.io": "kiln-test-no-such-helper"}}"#);
    let e = credentials(&ImageName::parse("h.io/x").unwrap(), &opts)
        .err()
        .unwrap();
    assert!(e.message.contains("h.io"), "{}", e.message);
}

#[test]
fn transient_errors_are_the_retryable_ones() {
    let server = |code| OciDistributionError::ServerError {
        code,
        url: "u".into(),
        message: "m".into(),
    };
    assert!(transient(&server(503)));
    assert!(transient(&server(429)));
    assert!(!transient(&server(400)));
    assert!(!transient(&OciDistributionError::UnauthorizedError {
        url: "u".into()
    }));
    let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
    assert!(transient(&OciDistributionError::IoError(reset)));
}

/// Mirrors are asked in the order given, then the registry, unless mirrors only; a registry without a
/// mirror is asked alone, and Docker Hub's other spellings mirror the same registry.
#[test]
fn mirrors_come_first_and_the_registry_last() {
    use super::Mirrors;
    let mut m = Mirrors::default();
    m.add("docker.io=m1.lan:5000").unwrap();
    m.add("index.docker.io=m2.lan").unwrap();
    m.add("docker.io=m1.lan:5000").unwrap();
    let hub = ImageName::parse("busybox").unwrap();
    let other = ImageName::parse("ghcr.io/o/x").unwrap();
    assert_eq!(
        m.hosts(&hub),
        [
            Some("m1.lan:5000".to_string()),
            Some("m2.lan".to_string()),
            None
        ]
    );
    assert_eq!(m.hosts(&other), [None]);
    m.only = true;
    assert_eq!(
        m.hosts(&hub),
        [Some("m1.lan:5000".to_string()), Some("m2.lan".to_string())]
    );
    assert_eq!(m.hosts(&other), [None]);
    let at = |spec: &str| {
        let e = Mirrors::default().add(spec).unwrap_err();
        (spec[e.at.clone()].to_string(), e.why)
    };
    assert_eq!(at("docker.io=https://m.lan").0, "https://m.lan");
    assert_eq!(at("bad_host=m.lan").0, "bad_host");
    assert!(at("m.lan").1.contains("names no registry"));
    assert!(at("docker.io=").1.contains("names no mirror"));
}

/// registries.toml in buildkitd.toml's shape: mirrors, `http`, `insecure`, kiln's `mirror-only`; a key
/// kiln does not read is an error located in the file.
#[test]
fn registries_toml_reads_buildkitd_s_registry_tables() {
    let mut opts = Options::default();
    opts.apply_config(
        std::path::Path::new("registries.toml"),
        "[registry.\"docker.io\"]\nmirrors = [\"m.lan:5000\"]\nmirror-only = true\n\n[registry.\"m.lan:5000\"]\nhttp = true\n\n[registry.\"tls.lan\"]\ninsecure = true\n",
    )
    .unwrap();
    let hub = ImageName::parse("busybox").unwrap();
    assert_eq!(opts.mirrors.hosts(&hub), [Some("m.lan:5000".to_string())]);
    assert!(opts.plain_http("m.lan:5000"));
    assert_eq!(opts.skip_verify, ["tls.lan"]);

    let text = "[registry.\"docker.io\"]\nmirrors = [\"m.lan\"]\nca = []\nkeypair = []\n";
    let e = Options::default()
        .apply_config(std::path::Path::new("registries.toml"), text)
        .unwrap_err();
    assert!(
        e.message.contains("unknown field `keypair`"),
        "{}",
        e.message
    );
    let at = e.location().unwrap();
    assert_eq!(&text[at.span.start..at.span.end], "keypair");

    let e = Options::default()
        .apply_config(
            std::path::Path::new("registries.toml"),
            "[registry.\"docker.io\"]\nmirror-only = true\n",
        )
        .unwrap_err();
    assert!(e.message.contains("names no mirrors"), "{}", e.message);
    let e = Options::default()
        .apply_config(
            std::path::Path::new("registries.toml"),
            "[registry.\"docker.io\"]\nmirrors = [\"http://m.lan\"]\n",
        )
        .unwrap_err();
    assert!(e.message.contains("not a URL"), "{}", e.message);
    let e = Options::default()
        .apply_config(
            std::path::Path::new("registries.toml"),
            "[registry.\"r.lan\"]\nca = [\"/nonexistent/ca.pem\"]\n",
        )
        .unwrap_err();
    assert!(
        e.message.contains(
            "cannot read the CA /nonexistent/ca.pem that registries.toml names for r.lan"
        ),
        "{}",
        e.message
    );
}
