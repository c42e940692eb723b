//! Shared caches: `--cache-to`/`--cache-from` through a real Distribution registry on loopback and through
//! OCI layout directories. Machine A builds with an empty store and exports; machine B (another empty
//! store) imports and must execute nothing, and both must give the same image digest. The stages' RUN
//! steps read /dev/urandom, so a step that ran again on B could not give A's digest. Registry tests are
//! skipped, with a note, when Debian's `docker-registry` is not installed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

use crate::support::{
    Kiln, Output, StepState, base_image, context, copy_dir, leaks_under, start_registries, tempdir,
    tool, write,
};

/// The registry of this test process (the open one of `start-registry.sh`'s pair), and its storage.
struct Registry {
    addr: String,
    data: PathBuf,
}

fn registry() -> Option<&'static Registry> {
    static REG: OnceLock<Option<Registry>> = OnceLock::new();
    REG.get_or_init(|| {
        let (dir, addrs) = start_registries("cache registry tests", &[], &["open"])?;
        Some(Registry {
            addr: addrs[0].clone(),
            data: dir.join("open-data"),
        })
    })
    .as_ref()
}

/// Four independent stages and a final stage collecting them (the multistage benchmark, small). The
/// final RUN is `last`, so tests can change the final stage alone.
fn multistage(last: &str) -> tempfile::TempDir {
    let mut df = String::new();
    for i in 1..=4 {
        df.push_str(&format!(
            "FROM base AS s{i}\nRUN mkdir /out && dd if=/dev/urandom bs=1k count=64 2>/dev/null | sha256sum > /out/s{i}\n"
        ));
    }
    df.push_str("FROM base\n");
    for i in 1..=4 {
        df.push_str(&format!("COPY --from=s{i} /out/s{i} /out/\n"));
    }
    df.push_str(&format!("COPY stamp.txt /out/stamp.txt\nRUN {last}\n"));
    context(&[("Dockerfile", &df), ("stamp.txt", "stamp\n")])
}

const LAST: &str = "cat /out/s1 /out/s2 /out/s3 /out/s4 | wc -l > /out/lines";

/// The manifest digest kiln printed for its `-o type=oci` output.
fn digest(out: &Output) -> String {
    out.stdout
        .lines()
        .find(|l| l.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest printed:\n{}", out.stdout))
        .to_string()
}

fn snapshots(store: &Path) -> usize {
    std::fs::read_dir(store.join("snapshots")).unwrap().count()
}

/// A build with `args` from a fresh store, writing its image to a fresh OCI layout.
fn build(ctx: &Path, args: &[&str]) -> (Kiln, Output) {
    build_from(ctx, base_image(), args)
}

/// `build`, with the base image at `base`.
fn build_from(ctx: &Path, base: &Path, args: &[&str]) -> (Kiln, Output) {
    let kiln = Kiln::new();
    let oci = tempdir("oci-");
    let out = kiln
        .clone()
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base.display()))
        .args(args)
        .arg("-o")
        .arg(format!("type=oci,dest={}", oci.path().display()))
        .arg(ctx)
        .run();
    (kiln, out)
}

/// Machine A exports with `to`, machine B imports with `from`: B runs nothing and gives A's digest, and
/// B unpacks none of the four intermediate stages' layers (nothing ran on them). B's context and base
/// image are copies elsewhere, as on another machine: no path may be part of a cache key.
fn round_trip(to: &str, from: &str) {
    let ctx = multistage(LAST);
    let (a, out_a) = build(ctx.path(), &["--cache-to", to]);
    out_a.success();
    assert_eq!(out_a.summary(), (11, 0), "{}", out_a.stderr);
    assert!(
        out_a.stderr.contains("exported cache to"),
        "{}",
        out_a.stderr
    );
    let (ctx_b, base_b) = (copy_dir(ctx.path()), copy_dir(base_image()));
    let (b, out_b) = build_from(ctx_b.path(), base_b.path(), &["--cache-from", from]);
    out_b.success();
    assert_eq!(
        out_b.summary(),
        (0, 11),
        "machine B executed steps:\n{}",
        out_b.stderr
    );
    assert_eq!(digest(&out_a), digest(&out_b), "image digests differ");
    assert_eq!(
        snapshots(b.store()),
        snapshots(a.store()) - 4,
        "B unpacked layers of stages nothing ran on"
    );
    // The records B used are in its store now: without the cache, the final stage hits locally, and the
    // stages below it, which miss, are not needed.
    let again = Kiln::build_in(b.store())
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base_b.path().display()))
        .arg(ctx_b.path())
        .run();
    again.success();
    assert_eq!(again.summary(), (0, 7), "{}", again.stderr);
}

#[test]
fn a_registry_cache_makes_a_second_machine_run_nothing() {
    let Some(reg) = registry() else { return };
    let reference = format!("{}/cache/multistage:x", reg.addr);
    round_trip(
        &format!("type=registry,ref={reference},mode=max"),
        &format!("type=registry,ref={reference}"),
    );
    // An independent client sees a manifest whose config is a kiln cache config, not an image.
    let raw: Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    ))
    .unwrap();
    assert_eq!(
        raw["config"]["mediaType"],
        "application/vnd.kiln.cacheconfig.v0+json"
    );
    assert_eq!(raw["artifactType"], "application/vnd.kiln.cache.v0");
}

#[test]
fn a_local_cache_makes_a_second_machine_run_nothing() {
    let dir = tempdir("cache-dir-");
    let dest = dir.path().join("cache");
    round_trip(
        &format!("type=local,dest={},mode=max", dest.display()),
        &format!("type=local,src={}", dest.display()),
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(dest.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
}

/// The local cache's config blob.
fn cache_config(dir: &Path) -> Value {
    let blob =
        |d: &str| std::fs::read(dir.join("blobs/sha256").join(&d["sha256:".len()..])).unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap()
}

#[test]
fn mode_min_keeps_the_final_stage_and_mode_max_every_stage() {
    let ctx = multistage(LAST);
    let dir = tempdir("cache-modes-");
    let (min, max) = (dir.path().join("min"), dir.path().join("max"));
    let (_, out_a) = build(
        ctx.path(),
        &[
            "--cache-to",
            &format!("type=local,dest={}", min.display()),
            "--cache-to",
            &format!("type=local,dest={},mode=max", max.display()),
        ],
    );
    out_a.success();
    assert_eq!(cache_config(&min)["records"].as_array().unwrap().len(), 7);
    assert_eq!(cache_config(&max)["records"].as_array().unwrap().len(), 11);

    // An intermediate stage: only mode=max has its records.
    let s1 = |cache: &Path| {
        let (_, out) = build(
            ctx.path(),
            &[
                "--target",
                "s1",
                "--cache-from",
                &format!("type=local,src={}", cache.display()),
            ],
        );
        out.success();
        out.step("[s1 2/2] RUN").state
    };
    assert_eq!(s1(&min), StepState::Done);
    assert_eq!(s1(&max), StepState::Cached);

    // The whole build from mode=min: every step of the final stage is a hit, so the stages below it,
    // which miss, are never needed and never run (as in BuildKit); the image is A's.
    let (_, out) = build(
        ctx.path(),
        &["--cache-from", &format!("type=local,src={}", min.display())],
    );
    out.success();
    assert_eq!(out.summary(), (0, 7), "{}", out.stderr);
    for step in out.steps() {
        assert!(
            step.name.contains("[stage-4") || step.name.starts_with("FROM"),
            "{}",
            out.stderr
        );
        assert_eq!(
            step.state,
            StepState::Cached,
            "{}\n{}",
            step.name,
            out.stderr
        );
    }
    assert_eq!(digest(&out), digest(&out_a));

    // A change to the final stage's last step only: the COPY steps still hit, and the changed RUN runs
    // on their layers, fetched and unpacked from the cache.
    let changed = multistage("cat /out/s1 /out/s2 /out/s3 /out/s4 | wc -c > /out/bytes");
    let fs = tempdir("fs-");
    let out = Kiln::new()
        .with_base()
        .args(["--cache-from", &format!("type=local,src={}", min.display())])
        .arg("-o")
        .arg(format!("type=local,dest={}", fs.path().display()))
        .arg(changed.path())
        .run();
    out.success();
    assert_eq!(out.step("COPY --from=s3").state, StepState::Cached);
    assert_eq!(out.step("COPY stamp.txt").state, StepState::Cached);
    assert_eq!(out.step("wc -c").state, StepState::Done);
    assert_eq!(out.summary(), (1, 6), "{}", out.stderr);
    // Four `<64 hex>  -` lines.
    let bytes = std::fs::read_to_string(fs.path().join("out/bytes")).unwrap();
    assert_eq!(bytes.trim(), "272");
}

const SECRET_DOCKERFILE: &str = "FROM base AS tool
RUN --mount=type=secret,id=tok wc -c < /run/secrets/tok > /tok-size
FROM base
COPY --from=tool /tok-size /tok-size
RUN --mount=type=secret,id=tok,env=TOK sh -c 'test -n \"$TOK\" && echo used > /used'
";

#[test]
fn secrets_never_reach_a_cache_and_their_steps_carry_the_verdict() {
    let secret = b"cache-export-secret-Zq81xPLw0v9R";
    let ctx = context(&[("Dockerfile", SECRET_DOCKERFILE)]);
    let secret_dir = tempdir("secret-");
    let secret_file = secret_dir.path().join("tok");
    write(&secret_file, secret);
    let secret_arg = format!("id=tok,src={}", secret_file.display());
    let dir = tempdir("cache-secret-");
    let (gz, zst) = (dir.path().join("gzip"), dir.path().join("zstd"));
    let a = Kiln::new().with_base().args(["--secret", &secret_arg]);
    let mut to = vec![
        "--cache-to".to_string(),
        format!("type=local,dest={},mode=max", gz.display()),
    ];
    let reg = registry();
    if let Some(reg) = reg {
        to.push("--cache-to".into());
        to.push(format!(
            "type=registry,ref={}/cache/secret:1,mode=max",
            reg.addr
        ));
    }
    a.clone().args(&to).arg(ctx.path()).run().success();
    // The same cache with zstd layers (every step cached, the blobs made anew).
    a.clone()
        .args(["--compression", "zstd", "--cache-to"])
        .arg(format!("type=local,dest={},mode=max", zst.display()))
        .arg(ctx.path())
        .run()
        .success();

    // The searcher finds what it looks for, compressed either way.
    let control = tempdir("control-");
    let plain = [&b"prefix "[..], secret, b" suffix"].concat();
    write(
        &control.path().join("a.zst"),
        zstd::encode_all(&plain[..], 3).unwrap(),
    );
    let mut gz_file = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz_file, &plain).unwrap();
    write(&control.path().join("a.gz"), gz_file.finish().unwrap());
    let found = leaks_under(control.path(), &[secret]);
    for name in ["a.zst (raw)", "a.gz (raw)"] {
        assert!(
            found.iter().any(|f| f.ends_with(name)),
            "{name} not found: {found:?}"
        );
    }

    for place in [&gz, &zst] {
        let found = leaks_under(place, &[secret]);
        assert!(found.is_empty(), "secret in the cache: {found:?}");
    }
    if let Some(reg) = reg {
        let found = leaks_under(&reg.data, &[secret]);
        assert!(found.is_empty(), "secret in the registry: {found:?}");
    }
    // The zstd cache's layers really are zstd (so the search above looked inside them).
    let zstd_layers = cache_config(&zst)["layers"]
        .as_object()
        .unwrap()
        .values()
        .filter(|b| {
            b["media_type"]
                .as_str()
                .is_some_and(|m| m.ends_with("+zstd"))
        })
        .count();
    assert!(zstd_layers >= 3, "{zstd_layers}");

    // Both secret-mounting steps' records carry the verdict.
    let config = cache_config(&gz);
    let verdicts: Vec<&Value> = config["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.get("secrets"))
        .collect();
    assert_eq!(verdicts.len(), 2, "{config}");
    for v in verdicts {
        assert_eq!(v, &serde_json::json!([{"id": "tok", "verdict": "clean"}]));
    }
    // B, given the secret, takes them from the cache.
    let out = Kiln::new()
        .with_base()
        .args(["--secret", &secret_arg, "--cache-from"])
        .arg(format!("type=local,src={}", gz.display()))
        .arg(ctx.path())
        .run();
    out.success();
    assert_eq!(out.summary().0, 0, "{}", out.stderr);

    // A result without a verdict (as from a store older than verdicts) is never exported, nor anything
    // built on it.
    for e in std::fs::read_dir(a.store().join("cache")).unwrap() {
        let path = e.unwrap().path();
        let mut rec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if rec.as_object_mut().unwrap().remove("secrets").is_some() {
            std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
        }
    }
    let bare = dir.path().join("bare");
    let out = a
        .clone()
        .arg("--cache-to")
        .arg(format!("type=local,dest={},mode=max", bare.display()))
        .arg(ctx.path())
        .run();
    out.success();
    // Of the four records (the image, both secret steps, the COPY between them), the image's and the
    // COPY's go out.
    assert!(out.stderr.contains("2 records withheld"), "{}", out.stderr);
    let config = cache_config(&bare);
    assert_eq!(config["records"].as_array().unwrap().len(), 2, "{config}");
    let out = Kiln::new()
        .with_base()
        .args(["--secret", &secret_arg, "--cache-from"])
        .arg(format!("type=local,src={}", bare.display()))
        .arg(ctx.path())
        .run();
    out.success();
    // The withheld final step runs; the tool stage, whose only consumer (the COPY) hits, need not.
    assert_eq!(out.step("test -n").state, StepState::Done);
    assert_eq!(out.summary().0, 1, "{}", out.stderr);
}

#[test]
fn bad_cache_flags_are_refused_with_hints() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN true\n")]);
    for (flag, value, message, help) in [
        (
            "--cache-to",
            "type=regsitry,ref=h.io/c:x",
            "unknown cache type `regsitry`",
            "did you mean `type=registry`?",
        ),
        (
            "--cache-to",
            "type=gha",
            "cache type `gha` is not supported yet",
            "cache types are `registry` and `local`",
        ),
        (
            "--cache-to",
            "type=registry",
            "a registry cache in --cache-to needs `ref`",
            "type=registry,ref=HOST/REPO:TAG",
        ),
        (
            "--cache-to",
            "type=local",
            "a local cache in --cache-to needs `dest`",
            "type=local,dest=DIR",
        ),
        (
            "--cache-to",
            "type=registry,ref=h.io/c:x,mode=all",
            "unknown cache mode `all`",
            "mode=max",
        ),
        (
            "--cache-to",
            "type=registry,ref=h.io/c:x,compression=zstd",
            "unsupported key `compression`",
            "`ref`, `mode`",
        ),
        ("--cache-to", "type=registry,ref=Bad/Name", "lower-case", ""),
        (
            "--cache-from",
            "type=local",
            "a local cache in --cache-from needs `src`",
            "type=local,src=DIR",
        ),
        (
            "--cache-from",
            "type=local,dest=x",
            "unsupported key `dest`",
            "`src`",
        ),
        ("--cache-from", "type=registry,ref=", "needs `ref`", ""),
    ] {
        let out = Kiln::new()
            .with_base()
            .args([flag, value])
            .arg(ctx.path())
            .run();
        out.expect_code(2);
        assert!(out.stderr.contains(message), "{value}: {}", out.stderr);
        assert!(out.stderr.contains(help), "{value}: {}", out.stderr);
        assert!(
            out.stderr.contains("command line"),
            "{value}: {}",
            out.stderr
        );
    }
}

#[test]
fn a_cache_that_cannot_be_read_is_a_warning() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN echo x > /x\n")]);
    let missing = tempdir("no-cache-");
    let mut froms = vec![
        // Nothing listens on port 9 of loopback.
        "type=registry,ref=127.0.0.1:9/cache:x".to_string(),
        format!(
            "type=local,src={}",
            missing.path().join("nothing").display()
        ),
    ];
    let reg = registry();
    if let Some(reg) = reg {
        // A tag that does not exist, and an image that is not a cache.
        froms.push(format!("{}/cache/none:x", reg.addr));
        let pushed = Kiln::new()
            .with_base()
            .args(["--push", "-t", &format!("{}/cache/image:1", reg.addr)])
            .arg(ctx.path())
            .run();
        pushed.success();
        froms.push(format!("type=registry,ref={}/cache/image:1", reg.addr));
    }
    let mut kiln = Kiln::new().with_base();
    for f in &froms {
        kiln = kiln.args(["--cache-from", f]);
    }
    let out = kiln.arg(ctx.path()).run();
    out.success();
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning: cache "))
        .collect();
    assert_eq!(warnings.len(), froms.len(), "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot reach 127.0.0.1:9"),
        "{}",
        out.stderr
    );
    if reg.is_some() {
        assert!(out.stderr.contains("not found"), "{}", out.stderr);
        assert!(
            out.stderr.contains("it is not a kiln cache"),
            "{}",
            out.stderr
        );
    }
    // The base image's import and the RUN.
    assert_eq!(out.summary().0, 2);
}

#[test]
fn a_cache_that_cannot_be_written_fails_the_build_unless_ignored() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN echo x > /x\n")]);
    let oci = tempdir("oci-");
    let to = "type=registry,ref=127.0.0.1:9/cache:x";
    let kiln = Kiln::new()
        .with_base()
        .arg("-o")
        .arg(format!("type=oci,dest={}", oci.path().display()));
    let out = kiln.clone().args(["--cache-to", to]).arg(ctx.path()).run();
    out.expect_code(1);
    assert!(
        out.stderr.contains("cannot push `127.0.0.1:9/cache:x`"),
        "{}",
        out.stderr
    );
    // The build itself was done, and its image written, before the cache failed (as buildx does).
    assert!(oci.path().join("index.json").is_file());
    let out = kiln
        .args(["--cache-to", &format!("{to},ignore-error=true")])
        .arg(ctx.path())
        .run();
    out.success();
    assert!(
        out.stderr.contains("warning: cache not exported to"),
        "{}",
        out.stderr
    );
}
