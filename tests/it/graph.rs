//! `kiln graph`: compile only, never run or fetch. Its text, JSON, dot and digest forms, and what the root
//! digest depends on (the definition) and does not (comments, file contents, secret values).

use std::path::Path;

use crate::support::{Kiln, Output, base_image, context, copy_dir, repo, tempdir, write};

/// `kiln graph [extra...] CTX` with the base image as a named context.
fn graph(ctx: &Path, extra: &[&str]) -> Output {
    let out = Kiln::graph()
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base_image().display()))
        .args(extra)
        .arg(ctx)
        .run();
    out.success();
    out
}

fn json(ctx: &Path) -> serde_json::Value {
    serde_json::from_str(&graph(ctx, &["--format", "json"]).stdout).expect("--format json is JSON")
}

fn digest(ctx: &Path) -> String {
    let out = graph(ctx, &["--digest"]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one root, one line: {:?}", out.stdout);
    let hex = lines[0].strip_prefix("sha256:").expect("a sha256: line");
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{}",
        lines[0]
    );
    lines[0].to_string()
}

#[test]
fn text_has_one_line_per_node() {
    let example = repo().join("examples/secrets");
    let nodes = json(&example)["nodes"].as_array().expect("nodes").len();
    let text = graph(&example, &[]).stdout;
    // Besides the nodes, the text names each root.
    let node_lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("root ")).collect();
    assert_eq!(node_lines.len(), nodes, "{text}");
    for line in &node_lines {
        let prefix = line.split_whitespace().next().unwrap_or("");
        assert!(
            prefix.bytes().all(|b| b.is_ascii_hexdigit()),
            "a digest prefix first: {line}"
        );
    }
    assert!(
        text.contains("RUN --mount=type=secret,id=mysecret"),
        "{text}"
    );
}

#[test]
fn json_lists_the_secrets_each_root_needs() {
    let g = json(&repo().join("examples/secrets"));
    let roots = g["roots"].as_array().expect("roots");
    assert_eq!(roots.len(), 1, "{g:#}");
    let secrets = roots[0]["secrets"].as_array().expect("a secrets list");
    assert_eq!(secrets.len(), 1, "{secrets:#?}");
    assert_eq!(secrets[0]["id"], "mysecret");
    assert_eq!(secrets[0]["required"], true);
    assert!(
        roots[0]["digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{g:#}"
    );
}

#[test]
fn dot_is_a_digraph() {
    let out = graph(&repo().join("examples/secrets"), &["--format", "dot"]);
    assert!(out.stdout.starts_with("digraph"), "{}", out.stdout);
    assert!(out.stdout.trim_end().ends_with('}'), "{}", out.stdout);
}

#[test]
fn digest_follows_the_definition_only() {
    let ctx = copy_dir(&repo().join("examples/secrets"));
    let before = digest(ctx.path());
    assert_eq!(digest(ctx.path()), before, "stable across runs");

    let dockerfile = ctx.path().join("Dockerfile");
    let text = std::fs::read_to_string(&dockerfile).expect("Dockerfile");
    let commented = text.replacen("# The secret is", "# Edited comment. The secret is", 1);
    assert_ne!(commented, text);
    write(&dockerfile, &commented);
    assert_eq!(digest(ctx.path()), before, "comments are not hashed");

    // Compiling never reads context files, secrets.json included.
    write(
        &ctx.path().join("secrets.json"),
        r#"{"username": "x", "password": "rotated"}"#,
    );
    assert_eq!(digest(ctx.path()), before, "file contents are not hashed");

    let edited = commented.replace("RUN chmod 0755 app.sh", "RUN chmod 0750 app.sh");
    assert_ne!(edited, commented);
    write(&dockerfile, edited);
    assert_ne!(digest(ctx.path()), before, "the RUN text is hashed");
}

#[test]
fn works_offline_without_a_store() {
    let ctx = context(&[("Dockerfile", "FROM busybox:latest\nRUN echo hi\n")]);
    let home = tempdir("home-");
    let nowhere = home.path().join("nowhere");
    let mut kiln = Kiln::graph()
        .env("HOME", &nowhere)
        .env("XDG_CACHE_HOME", &nowhere)
        .env("KILN_STORE", &nowhere)
        .args(["--format", "json"])
        .arg(ctx.path());
    // An empty network namespace proves "no network"; without one (unshare needs root) the rest still holds.
    let can_unshare = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if can_unshare {
        kiln = kiln.wrapped(&["unshare", "-n"]);
    } else {
        eprintln!("unshare -n is not permitted here; running kiln graph with the network present");
    }
    let out = kiln.run();
    out.success();
    assert!(
        !nowhere.exists(),
        "kiln graph made a store at {}",
        nowhere.display()
    );
    let g: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let image = g["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["op"]["kind"] == "image")
        .unwrap_or_else(|| panic!("an image node: {g:#}"));
    assert_eq!(
        image["op"]["reference"], "busybox:latest",
        "unresolved: {image:#}"
    );
    assert_eq!(image["inputs"], serde_json::json!([]), "a leaf: {image:#}");
}

/// A reader that stops early (`kiln graph | head`) ends the command quietly, with its own status; a
/// stdout that cannot be written (a full disk) is an error that says so.
#[test]
fn a_reader_that_stops_early_is_no_error_and_a_full_stdout_is_one() {
    use std::io::Read as _;
    // Far more than a pipe holds, so kiln is still writing when the reader goes.
    let runs: String = (0..3000).map(|i| format!("RUN echo {i}\n")).collect();
    let ctx = context(&[("Dockerfile", &format!("FROM scratch\n{runs}"))]);
    let mut cmd = Kiln::graph().arg(ctx.path()).command();
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut head = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");

    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut cmd = Kiln::graph().arg(ctx.path()).command();
    let out = cmd.stdout(full).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write the result to stdout: No space left on device"),
        "{stderr}"
    );
}
