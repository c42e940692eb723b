//! The classic anti-pattern: COPY a secret in, use it, `rm` it. The build succeeds and the secret stays in
//! the COPY's layer for anyone who pulls the image. The first test proves that it does when kiln is not
//! told the file is a secret; the second, that once it is (`--secret`), the export guard refuses the image.

use crate::support::{Kiln, Layout, contains, context, tempdir, unpack};

const SECRET: &str = "password=hunter2-copied-into-a-layer";

#[test]
fn copied_then_deleted_secret_stays_in_a_layer() {
    let ctx = context(&[
        ("secrets.txt", SECRET),
        (
            "Dockerfile",
            "# check=skip=SecretFileCopied
FROM base
COPY secrets.txt /app/
RUN cat /app/secrets.txt > /dev/null && rm /app/secrets.txt
",
        ),
    ]);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    Kiln::new()
        .with_base()
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run()
        .success();

    // The final filesystem looks clean...
    let image = unpack(&dest);
    assert!(!image.rootfs.join("app/secrets.txt").exists());
    // ...but a layer still carries the bytes.
    let tars = Layout::new(&dest).layer_tars();
    let holding: Vec<usize> = tars
        .iter()
        .enumerate()
        .filter(|(_, t)| contains(t, SECRET.as_bytes()))
        .map(|(i, _)| i)
        .collect();
    assert!(
        !holding.is_empty(),
        "expected the COPY's layer to hold the secret; no layer of {} does",
        tars.len()
    );
}

/// Told that the file is a secret, kiln's leak guard finds it in the COPY's layer and exports nothing.
#[test]
fn export_guard_refuses_an_image_holding_a_given_secret() {
    let ctx = context(&[
        ("secrets.txt", SECRET),
        (
            "Dockerfile",
            "# check=skip=SecretFileCopied
FROM base
COPY secrets.txt /app/
RUN cat /app/secrets.txt > /dev/null && rm /app/secrets.txt
",
        ),
    ]);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let out = Kiln::new()
        .with_base()
        .arg("--secret")
        .arg(format!(
            "id=creds,src={}",
            ctx.path().join("secrets.txt").display()
        ))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run();
    out.expect_code(1);
    for needle in [
        // Refused at the COPY that brought it in: every step of a build given secrets is scanned.
        "secret `creds` leaked",
        "/app/secrets.txt",
        "Dockerfile:3:1",
        "nothing was exported",
    ] {
        assert!(
            out.stderr.contains(needle),
            "stderr names {needle}:\n{}",
            out.stderr
        );
    }
    assert!(
        !out.stderr.contains(SECRET),
        "never the value:\n{}",
        out.stderr
    );
    assert!(!dest.exists(), "nothing may be written to the output");
}
