//! `--from=` of COPY and of a bind mount that names no stage is an image reference, as in BuildKit: a
//! bare name (`--from=composer`) as much as one with a registry, tag or digest, pulled like a FROM base.
//! Stage names and stage indexes keep winning over images of the same name. The same holds for a cache
//! mount's `from=`, its seed.

use std::sync::OnceLock;

use serde_json::Value;

use crate::support::{Kiln, base_image, context, start_registries, tempdir, tool, unpack, write};

/// One loopback registry holding the offline busybox image as `tools/composer:2`.
fn registry() -> Option<&'static str> {
    static REG: OnceLock<Option<String>> = OnceLock::new();
    REG.get_or_init(|| {
        let (_, addrs) = start_registries("--from image tests", &[], &["open"])?;
        tool(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                &format!("oci:{}:latest", base_image().display()),
                &format!("docker://{}/tools/composer:2", addrs[0]),
            ],
        );
        Some(addrs[0].clone())
    })
    .as_deref()
}

#[test]
fn a_bare_from_name_that_is_no_stage_is_an_image_like_a_from_base() {
    // Offline: `kiln graph` resolves nothing, so `composer` (docker.io/library/composer) is never pulled.
    let ctx = context(&[(
        "Dockerfile",
        "FROM base AS build\nRUN true\nFROM base\n\
         COPY --from=composer /usr/bin/composer /usr/bin/composer\n\
         RUN --mount=type=bind,from=composer,target=/c true\n",
    )]);
    let out = Kiln::graph().with_base().arg(ctx.path()).run();
    out.success();
    let leaves = out
        .stdout
        .lines()
        .filter(|l| l.contains("FROM composer"))
        .count();
    assert_eq!(
        leaves, 1,
        "one image leaf shared by COPY and the mount:\n{}",
        out.stdout
    );

    // The same program in `.build`, where `image("composer")` is the image: one root digest.
    let build = "target app: Image = image(\"base\")\n  \
                 .copy(image(\"composer\"), [\"/usr/bin/composer\"], \"/usr/bin/composer\")\n  \
                 .run(\"true\", mounts: [bind(image(\"composer\"), target: \"/c\")])\n";
    write(&ctx.path().join("app.build"), build);
    let digest = |args: &[&str]| {
        let out = Kiln::graph()
            .with_base()
            .arg("--digest")
            .args(args)
            .arg(ctx.path())
            .run();
        out.success();
        out.stdout.trim().to_string()
    };
    let app = ctx.path().join("app.build");
    assert_eq!(digest(&[]), digest(&["-f", app.to_str().unwrap()]));
}

#[test]
fn copy_and_bind_mounts_pull_images_by_tag_and_digest_while_stages_win() {
    let Some(reg) = registry() else { return };
    let image = format!("{reg}/tools/composer:2");
    let seen: Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ],
    ))
    .unwrap();
    let by_digest = format!("{reg}/tools/composer@{}", seen["Digest"].as_str().unwrap());
    // A stage named like an image, and stage 0, are the stages, never the image.
    let dockerfile = format!(
        "FROM base AS busybox\nRUN echo from-the-stage > /marker\n\
         FROM base\n\
         COPY --from={image} /bin/busybox /usr/bin/composer\n\
         COPY --from={by_digest} /etc/passwd /passwd-by-digest\n\
         COPY --from=busybox /marker /by-name\n\
         COPY --from=0 /marker /by-index\n\
         RUN --mount=type=bind,from={image},target=/img cmp /img/bin/busybox /usr/bin/composer && echo mounted > /bound\n\
         RUN --mount=type=cache,target=/c,from={image},source=/etc cp /c/group /seeded-group\n"
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let oci = tempdir("oci-");
    Kiln::new()
        .with_base()
        .arg("-o")
        .arg(format!("type=oci,dest={}", oci.path().display()))
        .arg(ctx.path())
        .run()
        .success();
    let unpacked = unpack(oci.path());
    let read = |p: &str| std::fs::read(unpacked.rootfs.join(p)).unwrap();
    assert_eq!(
        read("usr/bin/composer"),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert!(
        String::from_utf8(read("passwd-by-digest"))
            .unwrap()
            .starts_with("root:")
    );
    assert_eq!(read("by-name"), b"from-the-stage\n");
    assert_eq!(read("by-index"), b"from-the-stage\n");
    assert_eq!(read("bound"), b"mounted\n");
    assert!(
        String::from_utf8(read("seeded-group"))
            .unwrap()
            .starts_with("root:")
    );
}
