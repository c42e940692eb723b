//! `.dockerignore`: excluded files are not in the context at all — not copied, not bind-mounted, not part
//! of any cache key — with Docker's pattern rules (re-inclusion with `!`, `<Dockerfile>.dockerignore`).

use crate::support::{Kiln, StepState, context, tempdir, unpack, write};

#[test]
fn excluded_files_never_reach_the_image_or_the_cache_key() {
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM base\nCOPY . /ctx/\nRUN --mount=type=bind,target=/b test ! -e /b/secrets.json && test -e /b/sub/keep/k.txt\n",
        ),
        (".dockerignore", "secrets.json\n*.log\nsub\n!sub/keep\n"),
        ("secrets.json", "{\"password\": \"ignored-secret-value\"}"),
        ("debug.log", "noise"),
        ("a.txt", "a"),
        ("sub/x.txt", "x"),
        ("sub/keep/k.txt", "k"),
    ]);
    let store = tempdir("store-");
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
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
    let root = image.rootfs.join("ctx");
    assert!(root.join("a.txt").is_file());
    assert!(
        root.join("sub/keep/k.txt").is_file(),
        "re-included by `!sub/keep`"
    );
    for gone in ["secrets.json", "debug.log", "sub/x.txt"] {
        assert!(
            !root.join(gone).exists(),
            "{gone} is excluded and must not be copied"
        );
    }

    // Changing an excluded file changes nothing the build can see.
    write(
        &ctx.path().join("secrets.json"),
        "{\"password\": \"rotated\"}",
    );
    let again = build();
    again.success();
    assert_eq!(
        again.step("COPY . /ctx/").state,
        StepState::Cached,
        "{}",
        again.stderr
    );

    // Changing an included one re-runs the COPY.
    write(&ctx.path().join("a.txt"), "a2");
    let edited = build();
    edited.success();
    assert_eq!(
        edited.step("COPY . /ctx/").state,
        StepState::Done,
        "{}",
        edited.stderr
    );
}

#[test]
fn copying_an_excluded_file_is_an_error_and_the_dockerfile_specific_ignore_file_wins() {
    let ctx = context(&[
        ("Dockerfile", "FROM base\nCOPY notes.txt /n\n"),
        ("build.Dockerfile", "FROM base\nCOPY notes.txt /n\n"),
        // Beside `build.Dockerfile`, this one replaces the context's .dockerignore for it.
        ("build.Dockerfile.dockerignore", "other.txt\n"),
        (".dockerignore", "notes.txt\n"),
        ("notes.txt", "n"),
    ]);
    let out = Kiln::new().with_base().arg(ctx.path()).run();
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("`notes.txt` is excluded by .dockerignore"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Dockerfile:2:1"), "{}", out.stderr);

    let specific = Kiln::new()
        .with_base()
        .arg("-f")
        .arg(ctx.path().join("build.Dockerfile"))
        .arg(ctx.path())
        .run();
    specific.success();
}

#[test]
fn a_bad_pattern_points_at_its_line() {
    let ctx = context(&[
        ("Dockerfile", "FROM base\n"),
        (".dockerignore", "ok\n[z-a]\n"),
    ]);
    let out = Kiln::graph().arg(ctx.path()).run();
    out.expect_code(2);
    assert!(out.stderr.contains(".dockerignore:2:1"), "{}", out.stderr);
    assert!(out.stderr.contains("[z-a]"), "{}", out.stderr);
}
