//! ONBUILD, as BuildKit runs it: a parent's triggers (an earlier stage's, or a base image's `OnBuild`)
//! run at the start of a stage built `FROM` it, as that stage's own instructions (expanded in its scope),
//! and its image config keeps only its own ONBUILD lines, so a grandchild runs the child's triggers and
//! never the parent's again.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::{Kiln, Layout, base_image_with, context, tempdir, unpack};

const DOCKERFILE: &str = "FROM base AS parent
ARG WHO=parent
ONBUILD ARG WHO=child
ONBUILD RUN echo \"built by $WHO\" >> /trigger
ONBUILD WORKDIR /app
FROM parent AS child
ONBUILD RUN pwd >> /own
RUN echo \"after in $(pwd)\" > /after
FROM child
RUN cat /own /trigger > /seen
";

#[test]
fn a_parent_stages_triggers_run_in_the_child_and_are_not_inherited() {
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let build = |target: Option<&str>| {
        let oci = tempdir("oci-");
        let mut kiln = Kiln::new().with_base();
        if let Some(t) = target {
            kiln = kiln.args(["--target", t]);
        }
        kiln.arg("-o")
            .arg(format!("type=oci,dest={}", oci.path().display()))
            .arg(ctx.path())
            .run()
            .success();
        oci
    };

    let child = build(Some("child"));
    let unpacked = unpack(child.path());
    let read = |p: &str| std::fs::read_to_string(unpacked.rootfs.join(p)).unwrap();
    assert_eq!(
        read("trigger"),
        "built by child\n",
        "the trigger's ARG, in the child"
    );
    assert_eq!(
        read("after"),
        "after in /app\n",
        "the trigger's WORKDIR came first"
    );
    assert!(!unpacked.rootfs.join("own").exists());
    let config = Layout::new(child.path()).config();
    assert_eq!(
        config["config"]["OnBuild"],
        serde_json::json!(["RUN pwd >> /own"])
    );
    assert_eq!(config["config"]["WorkingDir"], "/app");

    let last = build(None);
    let unpacked = unpack(last.path());
    assert_eq!(
        std::fs::read_to_string(unpacked.rootfs.join("seen")).unwrap(),
        "/app\nbuilt by child\n",
        "the child's trigger ran once; the parent's did not run again"
    );
    let onbuild = &Layout::new(last.path()).config()["config"]["OnBuild"];
    assert!(
        matches!(onbuild, Value::Null) || onbuild == &serde_json::json!([]),
        "{onbuild}"
    );
}

/// `kiln build` of `ctx` with `base` as the `base` build context, into a fresh OCI layout.
fn build_on(
    base: &Path,
    ctx: &Path,
    extra: &[&str],
) -> (crate::support::Output, tempfile::TempDir) {
    let oci = tempdir("oci-");
    let out = Kiln::new()
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base.display()))
        .args(extra)
        .arg("-o")
        .arg(format!("type=oci,dest={}", oci.path().display()))
        .arg(ctx)
        .run();
    (out, oci)
}

fn onbuild_base(triggers: &[&str]) -> tempfile::TempDir {
    let triggers = json!(triggers);
    base_image_with(|c| c["OnBuild"] = triggers)
}

/// A base image's triggers run first in the child, in order, in its scope (a trigger's ENV is seen by
/// the Dockerfile's RUN, its COPY reads the child's context); the child's OnBuild is only its own. Built
/// the same way by BuildKit v0.8 (dockerd 20.10, the base loaded with `docker load`): /f, /app/hello.txt,
/// /seen and the config's Env and OnBuild agree.
#[test]
fn a_base_images_triggers_run_first_and_the_childs_onbuild_is_its_own() {
    let base = onbuild_base(&[
        "RUN echo x > /f",
        "COPY hello.txt /app/",
        "ENV FROM_TRIGGER=yes",
        "WORKDIR /app",
    ]);
    let ctx = context(&[
        ("hello.txt", "hello from the context\n"),
        (
            "Dockerfile",
            "FROM base\nRUN echo \"$FROM_TRIGGER $(pwd) $(cat hello.txt)\" > /seen\nONBUILD RUN echo own\n",
        ),
    ]);
    let (out, oci) = build_on(base.path(), ctx.path(), &[]);
    out.success();
    let unpacked = unpack(oci.path());
    let read = |p: &str| std::fs::read_to_string(unpacked.rootfs.join(p)).unwrap();
    assert_eq!(read("f"), "x\n");
    assert_eq!(read("app/hello.txt"), "hello from the context\n");
    assert_eq!(read("seen"), "yes /app hello from the context\n");
    let config = Layout::new(oci.path()).config();
    assert_eq!(config["config"]["OnBuild"], json!(["RUN echo own"]));
    let env = config["config"]["Env"].as_array().unwrap();
    assert!(env.contains(&json!("FROM_TRIGGER=yes")), "{env:?}");
    assert_eq!(config["config"]["WorkingDir"], "/app");
    // The history BuildKit v0.8 wrote for the same build: the triggers' entries first, none for ONBUILD.
    let created: Vec<&str> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert_eq!(
        created,
        [
            "RUN /bin/sh -c echo x > /f # buildkit",
            "COPY hello.txt /app/ # buildkit",
            "ENV FROM_TRIGGER=yes",
            "WORKDIR /app",
            "RUN /bin/sh -c echo \"$FROM_TRIGGER $(pwd) $(cat hello.txt)\" > /seen # buildkit",
        ]
    );
}

/// A trigger that is no instruction a trigger may be is refused before anything runs, pointing into the
/// trigger's text (a source named after the image and the trigger's place in its config) and at the FROM
/// that brought it in. The words are BuildKit's parser's for `ONBUILD ONBUILD`/`FROM`/`MAINTAINER`, which
/// Docker's builder also says when an image's trigger is one; BuildKit v0.8 runs such hand-made triggers
/// (or fails on FROM with "*instructions.Stage is not a command type"), and says "Unknown flag: bogus".
#[test]
fn a_bad_base_image_trigger_is_a_located_error() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN true\n")]);
    for (trigger, message) in [
        ("FROM busybox", "FROM isn't allowed as an ONBUILD trigger"),
        (
            "MAINTAINER me",
            "MAINTAINER isn't allowed as an ONBUILD trigger",
        ),
        (
            "ONBUILD RUN true",
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        ),
        ("COPY --bogus a /b", "unknown flag"),
        (
            "RUN true\nRUN false",
            "onbuild trigger should be a single expression",
        ),
    ] {
        let base = onbuild_base(&["RUN true", trigger]);
        let (out, _oci) = build_on(base.path(), ctx.path(), &[]);
        out.expect_code(2);
        for want in [
            message,
            "OnBuild[1]:1:",
            "Dockerfile:1:6",
            "has ONBUILD triggers, which run here",
        ] {
            assert!(
                out.stderr.contains(want),
                "{trigger:?}: {want:?} in\n{}",
                out.stderr
            );
        }
        assert!(
            !out.stderr.contains("#2 RUN"),
            "nothing ran:\n{}",
            out.stderr
        );
    }
}

/// `.build` has no instructions to run a base image's triggers as: building on such an image is refused,
/// at the `image(...)` that names it, rather than quietly giving another image than a Dockerfile would.
#[test]
fn a_build_file_on_a_base_image_with_triggers_is_refused() {
    let base = onbuild_base(&["RUN echo x > /f"]);
    let ctx = context(&[(
        "app.build",
        "target app: Image = image(\"base\").run(\"true\")\n",
    )]);
    let file = ctx.path().join("app.build");
    let (out, _oci) = build_on(base.path(), ctx.path(), &["-f", file.to_str().unwrap()]);
    out.expect_code(2);
    for want in [
        "`base` has ONBUILD triggers (RUN echo x > /f), which a `.build` program cannot run",
        "app.build:1:27",
        "help: build on it from a Dockerfile",
    ] {
        assert!(out.stderr.contains(want), "{want:?} in\n{}", out.stderr);
    }
}

/// A trigger's `COPY --from` may name a stage of the child's Dockerfile that nothing else needs: that stage
/// is built first, lowered from the Dockerfile's own text, not the trigger's. Current BuildKit (Dockerfile
/// frontend 1.11, BuildKit v0.17, moby/buildkit#5357); v0.8 copies from the stage without running it
/// ("/tool" not found, moby/buildkit#816).
#[test]
fn a_trigger_may_copy_from_a_stage_of_the_child_dockerfile_as_since_buildkit_0_17() {
    let onb = onbuild_base(&["COPY --from=tools /tool /from-trigger"]);
    let plain = onbuild_base(&[]);
    let ctx = context(&[(
        "Dockerfile",
        "FROM base AS tools\nRUN echo tool > /tool\nFROM onb\nRUN cat /from-trigger > /seen\n",
    )]);
    let onb_ctx = format!("onb=oci-layout://{}", onb.path().display());
    let (out, oci) = build_on(plain.path(), ctx.path(), &["--build-context", &onb_ctx]);
    out.success();
    let unpacked = unpack(oci.path());
    assert_eq!(
        std::fs::read_to_string(unpacked.rootfs.join("seen")).unwrap(),
        "tool\n"
    );
    let history = &Layout::new(oci.path()).config()["history"];
    let created: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert!(
        created.contains(&"COPY /tool /from-trigger # buildkit"),
        "{created:?}"
    );
}
