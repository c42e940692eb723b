//! The secret invariants (SPEC §3): a secret's value reaches the one RUN that mounts it and nothing else —
//! not a layer, the config, the history, the store or the progress output — and mounts leave no trace.

use crate::support::{
    EXAMPLE_PASSWORD, Kiln, Layout, build_example, contains, context, files_under, leaks, repo,
    tar_paths, tempdir, unpack,
};

/// The value the hand-written Dockerfiles below mount as secret `tok`.
const TOKEN: &str = "tok-value-5f1c9a";

/// A shell expression comparing a value with the expected one by digest: a Dockerfile that spelled the
/// value out would itself put the secret into the history, which the export guard rightly refuses.
fn is_secret(expr: &str, value: &str) -> String {
    use sha2::Digest as _;
    let want = hex::encode(sha2::Sha256::digest(value.as_bytes()));
    format!("test \"$(printf %s \"{expr}\" | sha256sum | cut -d' ' -f1)\" = {want}")
}

/// Builds `dockerfile` (with the base image and secret `tok`) into a fresh OCI layout.
fn build(dockerfile: &str) -> (crate::support::Output, tempfile::TempDir) {
    let ctx = context(&[("Dockerfile", dockerfile), ("tok.txt", TOKEN)]);
    let out_dir = tempdir("out-");
    let out = Kiln::new()
        .with_base()
        .arg("--secret")
        .arg(format!(
            "id=tok,src={}",
            ctx.path().join("tok.txt").display()
        ))
        .arg("-o")
        .arg(format!(
            "type=oci,dest={}",
            out_dir.path().join("image").display()
        ))
        .arg(ctx.path())
        .run();
    (out, out_dir)
}

#[test]
fn example_leaves_no_trace_of_the_secret() {
    let kiln = Kiln::new();
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let out = build_example(kiln.clone(), &dest);
    out.success();
    let whole = std::fs::read(repo().join("examples/secrets/secrets.json")).expect("secrets.json");
    assert!(
        contains(&whole, EXAMPLE_PASSWORD.as_bytes()),
        "the fixture holds the password"
    );

    let image = unpack(&dest);
    let mut found = Vec::new();
    for (what, files) in [
        ("the OCI layout", files_under(&dest)),
        ("the unpacked rootfs", files_under(&image.rootfs)),
        ("the store", files_under(kiln.store())),
    ] {
        for hit in leaks(&files, EXAMPLE_PASSWORD.as_bytes()) {
            found.push(format!("{what}: password in {hit}"));
        }
        for (path, bytes) in &files {
            if contains(bytes, &whole) {
                found.push(format!("{what}: secrets.json in {}", path.display()));
            }
        }
    }
    for (stream, text) in [("stderr", &out.stderr), ("stdout", &out.stdout)] {
        if text.contains(EXAMPLE_PASSWORD) {
            found.push(format!("the progress output ({stream})"));
        }
    }
    assert!(
        found.is_empty(),
        "the secret leaked into:\n{}",
        found.join("\n")
    );
}

#[test]
fn secret_file_is_0400_read_only_and_on_tmpfs() {
    let (out, _dir) = build(&format!(
        "FROM base
RUN --mount=type=secret,id=tok {}
RUN --mount=type=secret,id=tok test \"$(stat -c %a /run/secrets/tok)\" = 400
# Root ignores file modes, so only a read-only mount stops this write.
RUN --mount=type=secret,id=tok if echo x > /run/secrets/tok; then echo writable; exit 1; fi
RUN --mount=type=secret,id=tok awk '$2 == \"/run/secrets/tok\" {{ print $3, $4 }}' /proc/mounts | grep -q '^tmpfs ro'
",
        is_secret("$(cat /run/secrets/tok)", TOKEN)
    ));
    out.success();
}

#[test]
fn secret_mount_target_env_and_ownership() {
    let (out, _dir) = build(&format!(
        "FROM base
RUN --mount=type=secret,id=tok,target=/custom/path {} && test ! -e /run/secrets/tok
RUN --mount=type=secret,id=tok,env=MY_VAR {}
RUN --mount=type=secret,id=tok,mode=0440,uid=1000,gid=1000 test \"$(stat -c '%a %u %g' /run/secrets/tok)\" = '440 1000 1000'
",
        is_secret("$(cat /custom/path)", TOKEN),
        is_secret("$MY_VAR", TOKEN)
    ));
    out.success();
}

#[test]
fn secret_is_gone_after_its_run() {
    let (out, _dir) = build(
        "FROM base
RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null
RUN --mount=type=secret,id=tok,env=MY_VAR test -n \"$MY_VAR\"
RUN test ! -e /run/secrets/tok && test ! -e /run/secrets && test -z \"$MY_VAR\"
",
    );
    out.success();
}

#[test]
fn mount_points_do_not_remain_in_the_image() {
    let (out, dir) = build(
        "FROM base
RUN --mount=type=secret,id=tok echo one > /made-by-run-1
RUN --mount=type=secret,id=tok,target=/custom/path echo two > /made-by-run-2
",
    );
    out.success();
    let layout = dir.path().join("image");
    let image = unpack(&layout);
    assert!(
        image.rootfs.join("made-by-run-2").is_file(),
        "the RUNs' own files are kept"
    );
    for stub in ["run/secrets", "custom"] {
        assert!(
            !image.rootfs.join(stub).exists(),
            "/{stub} was made only for a mount, yet it is in the image"
        );
    }
    // umoci could hide a whiteout or an odd entry; the layer tars themselves must not name the stubs.
    let tars = Layout::new(&layout).layer_tars();
    for (i, tar) in tars.iter().enumerate().skip(1) {
        for path in tar_paths(tar) {
            assert!(
                !path.starts_with("run/secrets") && !path.starts_with("custom"),
                "layer {i} holds the mount stub `{path}`"
            );
        }
    }
}

#[test]
fn missing_required_secret_fails_before_any_step_runs() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base
RUN echo first
RUN --mount=type=secret,id=apitoken,required=true cat /run/secrets/apitoken
",
    )]);
    let out = Kiln::new().with_base().arg(ctx.path()).run();
    out.expect_code(2);
    let started: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with('#')).collect();
    assert!(
        started.is_empty(),
        "steps ran before the check: {started:?}"
    );
    assert!(
        out.stderr.contains("`apitoken`"),
        "the message names the id:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("Dockerfile:3:"),
        "and the line that needs it:\n{}",
        out.stderr
    );
}

#[test]
fn missing_optional_secret_leaves_no_file() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base
RUN --mount=type=secret,id=opt test ! -e /run/secrets/opt
",
    )]);
    Kiln::new().with_base().arg(ctx.path()).run().success();
}

#[test]
fn history_shows_the_command_but_never_the_value() {
    let (out, dir) = build(
        "FROM base
RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null && echo read-it > /read
",
    );
    out.success();
    let layout = Layout::new(&dir.path().join("image"));
    let config = layout.config();
    let created_by: Vec<&str> = config["history"]
        .as_array()
        .expect("a history")
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .collect();
    assert!(
        created_by
            .iter()
            .any(|c| c.contains("cat /run/secrets/tok > /dev/null")),
        "the RUN is in the history: {created_by:?}"
    );
    let config_text = serde_json::to_string(&config).expect("JSON");
    assert!(
        !config_text.contains(TOKEN),
        "the config holds the value: {config_text}"
    );
}

#[test]
fn secrets_from_the_environment() {
    let dockerfile = format!(
        "FROM base\nRUN --mount=type=secret,id=a {}\nRUN --mount=type=secret,id=b {}\nRUN --mount=type=secret,id=KILN_IT_C {}\n",
        is_secret("$(cat /run/secrets/a)", "value-of-a"),
        is_secret("$(cat /run/secrets/b)", "value-of-b"),
        is_secret("$(cat /run/secrets/KILN_IT_C)", "value-of-c"),
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    Kiln::new()
        .with_base()
        .args(["--secret", "id=a,env=KILN_IT_A"])
        // docker's spelling: `type=env` with the variable in `src`.
        .args(["--secret", "id=b,type=env,src=KILN_IT_B"])
        // buildx's rule: with no source, the variable named like the id.
        .args(["--secret", "id=KILN_IT_C"])
        .env("KILN_IT_A", "value-of-a")
        .env("KILN_IT_B", "value-of-b")
        .env("KILN_IT_C", "value-of-c")
        .arg(ctx.path())
        .run()
        .success();
}

/// SPEC §3.6: a step that prints its secret shows `***` in the progress output, never the value.
#[test]
fn step_output_is_scrubbed() {
    let (out, _dir) = build(
        "FROM base
RUN --mount=type=secret,id=tok echo \"token is $(cat /run/secrets/tok)\"
",
    );
    out.success();
    assert!(
        !out.stderr.contains(TOKEN),
        "the secret's value is in the progress output:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("token is ***"),
        "shown as ***:\n{}",
        out.stderr
    );
}

/// SPEC §3.6's leak guard: a step that writes its secret into its filesystem (raw, encoded, as a file
/// name or a link target) fails the build, naming the secret, the step and the file but never the value,
/// and nothing of the step reaches the store.
#[test]
fn leak_guard_fails_a_step_that_keeps_its_secret() {
    let cases = [
        ("cp /run/secrets/tok /kept", "/kept"),
        ("base64 /run/secrets/tok > /kept", "/kept"),
        (
            "od -An -tx1 /run/secrets/tok | tr -d ' \\n' > /kept",
            "/kept",
        ),
        ("mkdir -p /d && touch \"/d/$(cat /run/secrets/tok)\"", "/d/"),
        ("ln -s \"/x/$(cat /run/secrets/tok)\" /kept", "/kept"),
    ];
    for (run, file) in cases {
        let store = tempdir("store-");
        let ctx = context(&[
            (
                "Dockerfile",
                // Deliberately leaking, to test the runtime guard: the lint would refuse it first.
                &format!(
                    "# check=skip=SecretCopiedToFile\nFROM base\nRUN --mount=type=secret,id=tok {run}\n"
                ),
            ),
            ("tok.txt", TOKEN),
        ]);
        let out = Kiln::build_in(store.path())
            .with_base()
            .arg("--secret")
            .arg(format!(
                "id=tok,src={}",
                ctx.path().join("tok.txt").display()
            ))
            .arg(ctx.path())
            .run();
        out.expect_code(1);
        for needle in ["secret `tok` leaked", file, "Dockerfile:3:1"] {
            assert!(
                out.stderr.contains(needle),
                "`{run}`: stderr names {needle}:\n{}",
                out.stderr
            );
        }
        assert!(
            !out.stderr.contains(TOKEN),
            "`{run}`: never the value:\n{}",
            out.stderr
        );
        let stored = leaks(&files_under(store.path()), TOKEN.as_bytes());
        assert!(
            stored.is_empty(),
            "`{run}`: the store holds the secret: {stored:?}"
        );
    }
}

/// A secret's value passed the wrong way, as a build arg, lands in the history; the export guard notices
/// because the same value was also given as a secret, and exports nothing.
#[test]
fn export_guard_refuses_a_secret_in_the_history() {
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM base\nARG TOKEN\nRUN test -n \"$TOKEN\"\n",
        ),
        ("tok.txt", TOKEN),
    ]);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let out = Kiln::new()
        .with_base()
        .arg("--build-arg")
        .arg(format!("TOKEN={TOKEN}"))
        .arg("--secret")
        .arg(format!(
            "id=tok,src={}",
            ctx.path().join("tok.txt").display()
        ))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run();
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("secret `tok` is in the image config or history"),
        "{}",
        out.stderr
    );
    assert!(!dest.exists(), "nothing may be written to the output");
}
