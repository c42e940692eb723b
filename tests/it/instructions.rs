//! The instructions beyond the basics, end to end: ADD (local files, archives unpacked), heredocs in RUN
//! and COPY (expanded or literal), SHELL, and the config-only ones (EXPOSE, VOLUME, STOPSIGNAL,
//! HEALTHCHECK, ONBUILD, MAINTAINER), each checked in the built image.

use crate::support::{Kiln, Layout, context, tempdir, tool, unpack, write};

const DOCKERFILE: &str = r#"FROM base
MAINTAINER someone@example.com
ARG NAME=world
SHELL ["/bin/sh", "-ec"]
ADD pkg.tar.gz /opt/
ADD --chmod=0600 notes.txt /opt/plain.txt
COPY <<EOF /etc/greeting
hello ${NAME}
EOF
COPY <<-'RAW' /etc/raw
	keep $NAME literal
	RAW
RUN <<SCRIPT
test "$(cat /etc/greeting)" = "hello world"
test "$(cat /etc/raw)" = 'keep $NAME literal'
echo "script ran for $NAME" > /opt/script.txt
SCRIPT
RUN cat <<A > /opt/from-heredoc
line from a heredoc
A
EXPOSE 80 53/UDP 8000-8001
VOLUME ["/data"]
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD wget -q -O- http://localhost/ || exit 1
ONBUILD RUN echo triggered
"#;

#[test]
fn every_instruction_lands_in_the_image() {
    let ctx = context(&[
        ("Dockerfile", DOCKERFILE),
        ("notes.txt", "notes\n"),
        ("pkg/a.txt", "from the archive\n"),
    ]);
    let root = ctx.path().to_str().unwrap();
    tool(
        "tar",
        &["-czf", &format!("{root}/pkg.tar.gz"), "-C", root, "pkg"],
    );
    std::fs::remove_dir_all(ctx.path().join("pkg")).unwrap();
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    Kiln::new()
        .with_base()
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run()
        .success();

    let image = unpack(&dest);
    let read = |p: &str| {
        std::fs::read_to_string(image.rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    assert_eq!(
        read("opt/pkg/a.txt"),
        "from the archive\n",
        "ADD unpacks archives"
    );
    assert_eq!(read("opt/plain.txt"), "notes\n");
    assert_eq!(
        read("etc/greeting"),
        "hello world\n",
        "an unquoted heredoc expands"
    );
    assert_eq!(
        read("etc/raw"),
        "keep $NAME literal\n",
        "a quoted one does not"
    );
    assert_eq!(read("opt/script.txt"), "script ran for world\n");
    assert_eq!(read("opt/from-heredoc"), "line from a heredoc\n");

    let config = Layout::new(&dest).config();
    let c = &config["config"];
    for port in ["80/tcp", "53/udp", "8000/tcp", "8001/tcp"] {
        assert!(c["ExposedPorts"][port].is_object(), "{port}: {c}");
    }
    assert!(c["Volumes"]["/data"].is_object(), "{c}");
    assert_eq!(c["StopSignal"], "SIGQUIT");
    assert_eq!(c["Shell"], serde_json::json!(["/bin/sh", "-ec"]));
    assert_eq!(c["OnBuild"], serde_json::json!(["RUN echo triggered"]));
    assert_eq!(c["Healthcheck"]["Test"][0], "CMD-SHELL");
    assert_eq!(c["Healthcheck"]["Interval"], 30_000_000_000u64);
    assert_eq!(c["Healthcheck"]["Retries"], 3);
    assert_eq!(config["author"], "someone@example.com");

    // A child of the image runs its trigger first, and keeps no OnBuild of its own (tests/it/onbuild.rs).
    let child = context(&[("Dockerfile", "FROM parent\nRUN true\n")]);
    let child_dest = out_dir.path().join("child");
    let built = Kiln::new()
        .arg("--build-context")
        .arg(format!("parent=oci-layout://{}", dest.display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", child_dest.display()))
        .arg(child.path())
        .run();
    built.success();
    assert!(
        built.stderr.contains("RUN echo triggered"),
        "{}",
        built.stderr
    );
    let onbuild = &Layout::new(&child_dest).config()["config"]["OnBuild"];
    assert!(
        onbuild.is_null() || onbuild == &serde_json::json!([]),
        "{onbuild}"
    );
}

#[test]
fn unsupported_forms_are_clear_errors() {
    for (dockerfile, expected) in [
        ("FROM base\nEXPOSE 80/tcpx\n", "invalid port `80/tcpx`"),
        (
            "FROM base\nHEALTHCHECK --interval=soon CMD true\n",
            "invalid duration `soon`",
        ),
    ] {
        let ctx = context(&[("Dockerfile", dockerfile)]);
        write(&ctx.path().join("a/b"), "b");
        let out = Kiln::graph().arg(ctx.path()).run();
        out.expect_code(2);
        assert!(
            out.stderr.contains(expected) && out.stderr.contains("Dockerfile:2:"),
            "{dockerfile:?}: expected `{expected}` with a location:\n{}",
            out.stderr
        );
    }
}

/// `RUN --security=insecure` compiles (it is valid Dockerfile) but is not run without
/// `--allow security.insecure`: the build refuses it before anything runs.
#[test]
fn insecure_steps_compile_and_are_refused() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN --security=insecure true\n")]);
    Kiln::graph().arg(ctx.path()).run().success();
    let build = Kiln::new().with_base().arg(ctx.path()).run();
    build.expect_code(2);
    assert!(
        build.stderr.contains("security.insecure is not allowed")
            && build.stderr.contains("Dockerfile:2:5"),
        "{}",
        build.stderr
    );
}

/// `kiln graph` works on any Dockerfile offline: an ADD of a git repository is a leaf of the graph.
/// Over SSH, building it without the `default` agent is refused before anything runs (with one, it is
/// cloned: `add_git_ssh.rs`); over HTTP(S) it is cloned (`add_git.rs`), and HTTP(S) files are fetched
/// (`add_url.rs`).
#[test]
fn add_from_a_git_url_over_ssh_compiles_and_needs_the_default_agent() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nARG CRED\nADD ssh://user:${CRED}@example.com/repo.git#main /src\n",
    )]);
    let graph = Kiln::graph().arg(ctx.path()).run();
    graph.success();
    assert!(graph.stdout.contains("remote"), "{}", graph.stdout);
    let build = Kiln::new()
        .with_base()
        .args(["--build-arg", "CRED=hunter2-tok"])
        .arg(ctx.path())
        .run();
    build.expect_code(2);
    assert!(
        build
            .stderr
            .contains("`ssh://example.com/repo.git#main` is fetched over SSH")
            && build.stderr.contains("--ssh default")
            && build.stderr.contains("Dockerfile:3:")
            && !build.stderr.contains("hunter2-tok"),
        "{}",
        build.stderr
    );
}

/// `COPY --exclude` leaves matching files out (and out of the cache key); `--parents` keeps source paths,
/// below a `/./` pivot when there is one.
#[test]
fn copy_exclude_and_parents() {
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM base
COPY --exclude=*.log --exclude=secret* src/ /excluded/
COPY --parents src/a/one.txt src/./b/two.txt /kept/
",
        ),
        ("src/keep.txt", "keep"),
        ("src/debug.log", "noise"),
        ("src/secret.env", "s"),
        ("src/a/one.txt", "1"),
        ("src/b/two.txt", "2"),
    ]);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let store = tempdir("store-");
    let build = || {
        Kiln::build_in(store.path())
            .with_base()
            .arg("-o")
            .arg(format!("type=oci,dest={}", dest.display()))
            .arg(ctx.path())
            .run()
    };
    build().success();
    let image = unpack(&dest);
    let root = &image.rootfs;
    assert!(root.join("excluded/keep.txt").is_file());
    assert!(root.join("excluded/a/one.txt").is_file());
    assert!(!root.join("excluded/debug.log").exists(), "--exclude=*.log");
    assert!(
        !root.join("excluded/secret.env").exists(),
        "--exclude=secret*"
    );
    assert!(
        root.join("kept/src/a/one.txt").is_file(),
        "--parents keeps the path"
    );
    assert!(
        root.join("kept/b/two.txt").is_file(),
        "a /./ pivot cuts the path"
    );
    // An excluded file is not part of the step's cache key.
    write(&ctx.path().join("src/debug.log"), "more noise");
    let again = build();
    again.success();
    assert_eq!(
        again.step("--exclude").state,
        crate::support::StepState::Cached,
        "{}",
        again.stderr
    );
}

/// `$VAR` in ENV sees the base image's environment, as in BuildKit: `ENV PATH=/opt/bin:$PATH` extends the
/// image's PATH instead of replacing it with `/opt/bin:`.
#[test]
fn env_expands_the_base_images_variables() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nENV PATH=/opt/bin:$PATH\nRUN test \"$PATH\" = /opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin && ls / >/dev/null\n",
    )]);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    Kiln::new()
        .with_base()
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run()
        .success();
    let env = Layout::new(&dest).config()["config"]["Env"].clone();
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e
                == "PATH=/opt/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "{env}"
    );
}

/// A stage of 70 layers: the overlay's lower dirs no longer fit in one page of mount options as absolute
/// store paths (that failed with EINVAL past about 45), in a step, a `COPY --from` and a bind mount of it.
#[test]
fn a_stage_of_seventy_layers_builds() {
    let mut dockerfile = String::from("FROM base AS deep\n");
    for i in 0..70 {
        dockerfile.push_str(&format!("RUN echo {i} > /f{i}\n"));
    }
    dockerfile.push_str("RUN cat /f* | wc -l > /count\n");
    dockerfile.push_str("FROM base\nCOPY --from=deep /count /copied\n");
    dockerfile.push_str(
        "RUN --mount=type=bind,from=deep,target=/d test \"$(cat /d/f69)\" = 69 && cat /copied > /seen\n",
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let out_dir = tempdir("out-");
    let out = Kiln::new()
        .with_base()
        .arg("-o")
        .arg(out_dir.path())
        .arg(ctx.path())
        .run();
    out.success();
    let seen = std::fs::read_to_string(out_dir.path().join("seen")).unwrap();
    assert_eq!(seen.trim(), "70");
}

#[test]
fn from_platform_meaning_the_build_platform_builds_what_no_platform_builds() {
    // kiln builds for linux/amd64; every spelling of that platform is honoured, so the graph is the
    // flagless one. Other platforms are refused (tests/cases/errors/from-platform-*).
    let with = "ARG P=linux/x86_64\n\
                FROM --platform=$BUILDPLATFORM base AS a\nRUN echo a > /a\n\
                FROM --platform=$P base AS b\nCOPY --from=a /a /a\n\
                FROM --platform=$TARGETPLATFORM base AS c\nCOPY --from=b /a /b\n\
                FROM --platform=linux/amd64 base\nCOPY --from=c /b /c\n";
    let without: String = with
        .lines()
        .map(|l| match l.split_once(" base") {
            Some((from, rest)) if from.starts_with("FROM --platform=") => {
                format!("FROM base{rest}")
            }
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let digest = |dockerfile: &str| {
        let ctx = context(&[("Dockerfile", dockerfile)]);
        let out = Kiln::graph()
            .with_base()
            .arg("--digest")
            .arg(ctx.path())
            .run();
        out.success();
        out.stdout.trim().to_string()
    };
    assert_ne!(with, without);
    assert_eq!(digest(with), digest(&without));

    let ctx = context(&[("Dockerfile", with)]);
    let oci = tempdir("oci-");
    Kiln::new()
        .with_base()
        .arg("-o")
        .arg(format!("type=oci,dest={}", oci.path().display()))
        .arg(ctx.path())
        .run()
        .success();
    let unpacked = unpack(oci.path());
    assert_eq!(std::fs::read(unpacked.rootfs.join("c")).unwrap(), b"a\n");
}

#[test]
fn copy_mixes_heredocs_with_files_of_the_context_in_one_layer() {
    let dockerfile = "FROM base\nARG V=expanded\n\
                      COPY <<a.txt file <<\"b.txt\" dir /dst/\na is $V\na.txt\nb is $V\nb.txt\n\
                      COPY --chmod=600 file <<c.txt /dst2/\nc\nc.txt\n";
    let ctx = context(&[
        ("Dockerfile", dockerfile),
        ("file", "ctx\n"),
        ("dir/x", "indir\n"),
    ]);
    let oci = tempdir("oci-");
    Kiln::new()
        .with_base()
        .arg("-o")
        .arg(format!("type=oci,dest={}", oci.path().display()))
        .arg(ctx.path())
        .run()
        .success();
    assert_eq!(
        Layout::new(oci.path()).manifest()["layers"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "the base and one layer per COPY"
    );
    let unpacked = unpack(oci.path());
    let file = |p: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        let path = unpacked.rootfs.join(p);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        (std::fs::read_to_string(&path).unwrap(), mode)
    };
    assert_eq!(file("dst/a.txt"), ("a is expanded\n".into(), 0o644));
    assert_eq!(
        file("dst/b.txt"),
        ("b is $V\n".into(), 0o644),
        "a quoted name expands nothing"
    );
    assert_eq!(file("dst/file"), ("ctx\n".into(), 0o644));
    assert_eq!(file("dst/x"), ("indir\n".into(), 0o644));
    assert_eq!(file("dst2/file"), ("ctx\n".into(), 0o600));
    assert_eq!(file("dst2/c.txt"), ("c\n".into(), 0o600));
}
