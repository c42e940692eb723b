//! `RUN --mount` kinds besides secrets: cache (persistent, never in a cache key), bind (from the context or
//! a stage, read-only unless `rw`, writes discarded), tmpfs; none of them leaves a trace in the layer.

use crate::support::{Kiln, StepState, context, tempdir, unpack, write};

const DOCKERFILE: &str = "FROM base AS tools
RUN mkdir -p /opt/tool && echo tool-v1 > /opt/tool/version

FROM base
RUN --mount=type=cache,target=/var/cache/app,id=appcache echo run >> /var/cache/app/runs && echo \"runs=$(wc -l < /var/cache/app/runs)\"
RUN --mount=type=bind,source=src,target=/src grep -q hello /src/a.txt && ! touch /src/new 2>/dev/null
RUN --mount=type=bind,from=tools,source=/opt/tool,target=/tool,rw grep -q tool-v1 /tool/version && touch /tool/scratch
RUN --mount=type=tmpfs,target=/scratch,size=1m echo data > /scratch/x && df /scratch | grep -q tmpfs
RUN test ! -e /tool/scratch && test ! -e /scratch/x && test ! -e /src/new
";

#[test]
fn every_mount_kind_works_and_leaves_nothing_in_the_image() {
    let ctx = context(&[("Dockerfile", DOCKERFILE), ("src/a.txt", "hello\n")]);
    let store = tempdir("store-");
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let build = |extra: &[&str]| {
        Kiln::build_in(store.path())
            .with_base()
            .args(extra.iter().copied())
            .arg("-o")
            .arg(format!("type=oci,dest={}", dest.display()))
            .arg(ctx.path())
            .run()
    };
    let first = build(&[]);
    first.success();
    assert!(first.stderr.contains("runs=1"), "{}", first.stderr);
    let image = unpack(&dest);
    for stub in ["src", "tool", "scratch", "var/cache/app"] {
        assert!(
            !image.rootfs.join(stub).exists(),
            "mount point /{stub} stayed in the image"
        );
    }

    // The cache survives across builds (here forced to run again) and its contents key nothing.
    let again = build(&["--no-cache"]);
    again.success();
    assert!(again.stderr.contains("runs=2"), "{}", again.stderr);

    // Editing a bind-mounted context file re-runs that step and what follows, nothing before it.
    write(&ctx.path().join("src/a.txt"), "hello again\n");
    let edited = build(&[]);
    edited.success();
    assert_eq!(
        edited.step("type=cache").state,
        StepState::Cached,
        "{}",
        edited.stderr
    );
    assert_eq!(
        edited.step("source=src").state,
        StepState::Done,
        "{}",
        edited.stderr
    );
    assert_eq!(
        edited.step("test ! -e").state,
        StepState::Done,
        "{}",
        edited.stderr
    );
}

#[test]
fn bad_mounts_are_input_errors_with_a_location() {
    for (mount, expected) in [
        (
            "type=cache,target=/c,sharing=lockd",
            "did you mean `locked`?",
        ),
        ("type=tmpfs", "tmpfs mount needs a `target`"),
        (
            "type=bind,target=/x,source=../../etc",
            "points outside the source",
        ),
        (
            "type=bind,from=NoSuchStage,target=/x",
            "no stage named `NoSuchStage`",
        ),
    ] {
        let dockerfile = format!("FROM base\nRUN --mount={mount} true\n");
        let ctx = context(&[("Dockerfile", &dockerfile)]);
        let out = Kiln::new().with_base().arg(ctx.path()).run();
        assert!(
            out.stderr.contains(expected) && out.stderr.contains("Dockerfile:2:"),
            "`{mount}`: expected `{expected}` with a location:\n{}",
            out.stderr
        );
    }
}

/// `type=cache,from=STAGE,source=DIR`, as BuildKit: a new cache starts as a copy of the stage's directory
/// (owners, modes and links kept), later steps with the same id and seed share it, and the same id without
/// the seed is another cache. Checked against BuildKit v0.8 (dockerd 20.10), which gives these files.
#[test]
fn a_cache_mount_is_seeded_from_a_stage_directory_when_new() {
    let dockerfile = "FROM base AS seed
RUN mkdir -p /deps/sub && echo seeded > /deps/a && echo deep > /deps/sub/b && chown -R 1000:1000 /deps/sub && ln -s a /deps/link
FROM base
RUN --mount=type=cache,id=c1,target=/cache,from=seed,source=/deps cat /cache/a /cache/sub/b > /first && stat -c '%u %N' /cache/sub/b /cache/link >> /first && echo added > /cache/new
RUN --mount=type=cache,id=c1,target=/cache,from=seed,source=/deps ls /cache > /second
RUN --mount=type=cache,id=c1,target=/cache ls /cache > /unseeded
";
    let ctx = context(&[("Dockerfile", dockerfile)]);
    let oci = tempdir("oci-");
    Kiln::new()
        .with_base()
        .arg("-o")
        .arg(format!("type=oci,dest={}", oci.path().display()))
        .arg(ctx.path())
        .run()
        .success();
    let unpacked = unpack(oci.path());
    let read = |p: &str| std::fs::read_to_string(unpacked.rootfs.join(p)).unwrap();
    assert_eq!(
        read("first"),
        "seeded\ndeep\n1000 /cache/sub/b\n0 '/cache/link' -> 'a'\n"
    );
    assert_eq!(read("second"), "a\nlink\nnew\nsub\n");
    assert_eq!(read("unseeded"), "");
}
