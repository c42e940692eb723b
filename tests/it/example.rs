//! The example in `examples/secrets`, built exactly as the README shows, checked by skopeo and umoci.

use std::os::unix::fs::PermissionsExt as _;

use crate::support::{Kiln, build_example, tempdir, tool, unpack};

#[test]
fn example_builds_into_an_image_skopeo_and_umoci_accept() {
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let out = build_example(Kiln::new(), &dest);
    out.success();

    let layout = format!("oci:{}:latest", dest.display());
    let inspect: serde_json::Value =
        serde_json::from_str(&tool("skopeo", &["inspect", &layout])).expect("skopeo prints JSON");
    // stdout carries the manifest digest, and skopeo must agree on it.
    assert_eq!(inspect["Digest"].as_str(), Some(out.stdout.trim()));
    assert_eq!(
        inspect["Labels"]["org.opencontainers.image.title"],
        "kiln secrets example"
    );
    let env: Vec<&str> = inspect["Env"]
        .as_array()
        .expect("an Env list")
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(env.contains(&"APP_HOME=/app"), "{env:?}");
    assert!(
        env.iter().any(|e| e.starts_with("PATH=")),
        "the base image's PATH is kept: {env:?}"
    );

    let config: serde_json::Value =
        serde_json::from_str(&tool("skopeo", &["inspect", "--config", &layout]))
            .expect("skopeo prints JSON");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/app/app.sh"]));
    assert_eq!(config["config"]["WorkingDir"], "/app");

    let image = unpack(&dest);
    let app = image.rootfs.join("app");
    assert_eq!(
        std::fs::read_to_string(app.join("account.txt")).expect("account.txt"),
        "user=deploy-bot\n"
    );
    let session = std::fs::read_to_string(app.join("session-id")).expect("session-id");
    let token = session
        .strip_suffix('\n')
        .expect("session-id ends in a newline");
    assert!(
        token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "session-id is 16 hex digits: {session:?}"
    );
    let mode = std::fs::metadata(app.join("app.sh"))
        .expect("app.sh")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "app.sh is executable: {mode:o}");
}

#[test]
fn example_builds_into_an_oci_archive() {
    let out_dir = tempdir("out-");
    let tar = out_dir.path().join("image.tar");
    let out = build_example(Kiln::new(), &tar);
    out.success();
    assert!(tar.is_file(), "a dest ending in .tar makes a file");
    let archive = format!("oci-archive:{}", tar.display());
    let inspect: serde_json::Value =
        serde_json::from_str(&tool("skopeo", &["inspect", &archive])).expect("skopeo prints JSON");
    assert_eq!(inspect["Digest"].as_str(), Some(out.stdout.trim()));
}
