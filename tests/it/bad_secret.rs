//! The classic anti-pattern: COPY a secret in, use it, `rm` it. The build succeeds and the secret stays in
//! the COPY's layer for anyone who pulls the image. This test proves that it does, so that the leak guard
//! kiln is to grow (SPEC §3.6) has a known-bad case to catch.

use crate::support::{Kiln, Layout, contains, context, tempdir, unpack};

const SECRET: &str = "password=hunter2-copied-into-a-layer";

#[test]
fn copied_then_deleted_secret_stays_in_a_layer() {
    let ctx = context(&[
        ("secrets.txt", SECRET),
        (
            "Dockerfile",
            "FROM base
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
