//! Shared caches of multi-platform builds: machine A builds linux/amd64 and linux/arm64 (the arm64 steps
//! under emulation) and exports one cache; machine B, with an empty store and copies of the context and
//! base elsewhere, imports it and runs nothing, and its index is A's, byte for byte, judged by skopeo. Every
//! RUN reads /dev/urandom, so a step that ran again on B could not give A's index. A cache of one
//! platform's build answers that platform's steps and the build machine's stage, never another
//! platform's. A machine without an emulator (kiln run where it sees no binfmt_misc handler) builds from
//! the cache, and fails at the foreign step that must run without it. Registry cases are skipped, with a
//! note, when Debian's `docker-registry` is not installed.

use std::path::Path;

use serde_json::Value;

use crate::support::{
    Kiln, Output, context, copy_dir, multi_platform_base, start_registries, tempdir, tool, unpack,
};

/// The cross pattern: a stage on the machine building, whose result a final stage per platform copies.
const CROSS: &str = "FROM --platform=$BUILDPLATFORM base AS build
RUN dd if=/dev/urandom bs=1k count=16 2>/dev/null | sha256sum > /native
FROM base
ARG TARGETARCH
COPY --from=build /native /
RUN echo \"$TARGETARCH $(uname -m)\" > /seen && dd if=/dev/urandom bs=1k count=16 2>/dev/null | sha256sum > /rand
";

const BOTH: &str = "linux/amd64,linux/arm64";

/// Runs kiln where it sees no binfmt_misc handler: an empty tmpfs over their directory, in a mount
/// namespace of its own, as on a machine without qemu-user-static.
const NO_EMULATOR: [&str; 5] = [
    "unshare",
    "-m",
    "sh",
    "-c",
    "mount -t tmpfs none /proc/sys/fs/binfmt_misc && exec \"$0\" \"$@\"",
];

/// A build from a fresh store of `platforms`, with `--progress json`, writing an OCI layout to `dest`.
fn build(ctx: &Path, base: &Path, platforms: &str, args: &[String], dest: &Path) -> Output {
    build_with(&[], ctx, base, platforms, args, dest)
}

/// `build`, with kiln run under `wrapper`.
fn build_with(
    wrapper: &[&str],
    ctx: &Path,
    base: &Path,
    platforms: &str,
    args: &[String],
    dest: &Path,
) -> Output {
    Kiln::new()
        .wrapped(wrapper)
        .args([
            "--platform",
            platforms,
            "--progress",
            "json",
            "--build-context",
        ])
        .arg(format!("base=oci-layout://{}", base.display()))
        .args(args)
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx)
        .run()
}

/// The progress events of a `--progress json` build (a failed build's error is rendered after them).
fn events(out: &Output) -> Vec<Value> {
    out.stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The names of the steps reported as `kind` (`started`, `cached`), sorted, a base image's path left out
/// (B's is elsewhere).
fn steps(out: &Output, kind: &str) -> Vec<String> {
    let mut names: Vec<String> = events(out)
        .iter()
        .filter(|e| e["event"] == kind)
        .map(|e| {
            let name = e["step"]["name"].as_str().expect("a step name");
            match name.strip_prefix("FROM oci-layout://") {
                Some(rest) => format!("FROM base{}", rest.split_once(' ').map_or("", |(_, p)| p)),
                None => name.to_string(),
            }
        })
        .collect();
    names.sort();
    names
}

/// The index of the layout at `dest` as skopeo reads it, and its digest.
fn index(dest: &Path) -> (Value, String) {
    use sha2::Digest as _;
    let raw = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:latest", dest.display()),
        ],
    );
    let digest = format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(raw.as_bytes()))
    );
    (serde_json::from_str(&raw).unwrap(), digest)
}

/// The digest of each platform's manifest in an index, by architecture.
fn manifests(index: &Value) -> Vec<(String, String)> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].as_str().unwrap().to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_two_platform_cache_makes_a_second_machine_run_nothing() {
    let base = multi_platform_base();
    let ctx = context(&[("Dockerfile", CROSS)]);
    let dir = tempdir("mp-cache-");
    let mut caches: Vec<(String, String)> = ["min", "max"]
        .iter()
        .map(|mode| {
            let path = dir.path().join(mode);
            (
                format!("type=local,dest={},mode={mode}", path.display()),
                format!("type=local,src={}", path.display()),
            )
        })
        .collect();
    if let Some((_, addrs)) = start_registries("multi-platform cache tests", &[], &["open"]) {
        for mode in ["min", "max"] {
            let reference = format!("{}/cache/multi:{mode}", addrs[0]);
            caches.push((
                format!("type=registry,ref={reference},mode={mode}"),
                format!("type=registry,ref={reference}"),
            ));
        }
    }
    let to: Vec<String> = caches
        .iter()
        .flat_map(|(to, _)| ["--cache-to".to_string(), to.clone()])
        .collect();
    let a_dest = dir.path().join("a");
    let a = build(ctx.path(), base.path(), BOTH, &to, &a_dest);
    a.success();
    let ran = steps(&a, "started");
    // Both bases, the build stage's RUN once, each platform's COPY and RUN.
    assert_eq!(ran.len(), 7, "{ran:#?}");
    assert!(steps(&a, "cached").is_empty(), "{}", a.stderr);
    let (a_index, a_digest) = index(&a_dest);
    assert!(a.stdout.contains(&a_digest), "{}", a.stdout);
    let arches: Vec<String> = manifests(&a_index).into_iter().map(|(a, _)| a).collect();
    assert_eq!(arches, ["amd64", "arm64"]);
    // The build's summary gives each platform's image its manifest in the index and where it went.
    let summary = events(&a)
        .into_iter()
        .find(|e| e["event"] == "summary")
        .expect("a summary of the two platforms");
    for (target, (arch, manifest)) in summary["targets"]
        .as_array()
        .unwrap()
        .iter()
        .zip(manifests(&a_index))
    {
        assert_eq!(target["target"], format!("stage-1 (linux/{arch})"));
        assert_eq!(target["digest"], manifest.as_str());
        assert_eq!(
            target["written"],
            serde_json::json!([a_dest.display().to_string()])
        );
    }
    // One cache per destination, holding both platforms' records.
    let exported = a
        .stderr
        .lines()
        .filter(|l| l.contains("exported cache to"))
        .count();
    assert_eq!(exported, caches.len(), "{}", a.stderr);

    for (to, from) in &caches {
        let (ctx_b, base_b) = (copy_dir(ctx.path()), copy_dir(base.path()));
        let b_out = tempdir("mp-cache-b-");
        let b_dest = b_out.path().join("oci");
        let b = build(
            ctx_b.path(),
            base_b.path(),
            BOTH,
            &["--cache-from".to_string(), from.clone()],
            &b_dest,
        );
        b.success();
        assert!(
            steps(&b, "started").is_empty(),
            "machine B ran steps with {to}:\n{}",
            b.stderr
        );
        assert!(
            !events(&b).iter().any(|e| e["event"] == "finished"),
            "{}",
            b.stderr
        );
        let cached = steps(&b, "cached");
        // mode=min holds each platform's final stage, down to its base: the build stage's RUN, whose
        // only consumers hit, is not needed. mode=max holds every step.
        let expected: Vec<&String> = ran
            .iter()
            .filter(|s| to.ends_with("mode=max") || !s.contains("build 2/2"))
            .collect();
        assert_eq!(
            cached.iter().collect::<Vec<_>>(),
            expected,
            "with {to}:\n{}",
            b.stderr
        );
        assert!(b.stderr.contains("0 steps run"), "{}", b.stderr);
        // One cache holding both platforms' records: exactly the steps answered.
        let imported = format!("imported {} cache records from 1 caches", expected.len());
        assert!(b.stderr.contains(&imported), "{imported}:\n{}", b.stderr);
        let (b_index, b_digest) = index(&b_dest);
        assert_eq!(b_digest, a_digest, "with {to}: the indexes differ");
        assert_eq!(b_index, a_index);
    }

    // A machine without emulation: no arm64 step runs, so none needs an emulator, as in BuildKit, which
    // looks for one when a step executes. Both platforms, and arm64 alone, whose image is A's arm64 one.
    let (_, min) = &caches[0];
    let (_, max) = &caches[1];
    let b_dest = dir.path().join("b");
    let from = |c: &String| vec!["--cache-from".to_string(), c.clone()];
    let b = build_with(
        &NO_EMULATOR,
        ctx.path(),
        base.path(),
        BOTH,
        &from(min),
        &b_dest,
    );
    b.success();
    assert!(steps(&b, "started").is_empty(), "{}", b.stderr);
    assert_eq!(index(&b_dest).1, a_digest);
    let arm64 = dir.path().join("arm64");
    let b = build_with(
        &NO_EMULATOR,
        ctx.path(),
        base.path(),
        "linux/arm64",
        &from(max),
        &arm64,
    );
    b.success();
    assert!(steps(&b, "started").is_empty(), "{}", b.stderr);
    assert_eq!(index(&arm64).1, manifests(&a_index)[1].1);
    // Without the cache, the arm64 RUN must run, and is refused where it is written, with the package.
    let out = build_with(&NO_EMULATOR, ctx.path(), base.path(), BOTH, &[], &b_dest);
    out.expect_code(1);
    for needle in [
        "binfmt_misc is not mounted",
        "Dockerfile:6",
        "this step runs as linux/arm64",
        "qemu-user-static",
    ] {
        assert!(out.stderr.contains(needle), "{needle}:\n{}", out.stderr);
    }
    // Reported as that step's failure, as any step's.
    let events = events(&out);
    let failed: Vec<&Value> = events.iter().filter(|e| e["event"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{}", out.stderr);
    let step = events
        .iter()
        .find(|e| e["event"] == "started" && e["step"]["id"] == failed[0]["id"])
        .expect("the failed step started");
    assert!(
        step["step"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("[linux/arm64 stage-1 3/3] RUN")),
        "{step}"
    );
    assert!(
        failed[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot run steps for linux/arm64")),
        "{}",
        failed[0]
    );
}

#[test]
fn a_cache_of_one_platform_answers_only_that_platform() {
    let base = multi_platform_base();
    let ctx = context(&[("Dockerfile", CROSS)]);
    let dir = tempdir("mp-cache-one-");
    let cache = dir.path().join("cache");
    let a_dest = dir.path().join("a");
    let a = build(
        ctx.path(),
        base.path(),
        "linux/amd64",
        &[
            "--cache-to".to_string(),
            format!("type=local,dest={},mode=max", cache.display()),
        ],
        &a_dest,
    );
    a.success();
    // One platform: the layout holds a manifest, not an index.
    let (_, a_manifest) = index(&a_dest);

    // Machine B builds both platforms from the amd64 cache: the amd64 image and the build machine's
    // stage are answered, every step of the arm64 image runs.
    let b_dest = dir.path().join("b");
    let b = build(
        ctx.path(),
        base.path(),
        BOTH,
        &[
            "--cache-from".to_string(),
            format!("type=local,src={}", cache.display()),
        ],
        &b_dest,
    );
    b.success();
    let started = steps(&b, "started");
    assert_eq!(started.len(), 3, "{}", b.stderr);
    for name in &started {
        assert!(name.contains("arm64"), "{name}: {}", b.stderr);
    }
    assert!(
        started
            .iter()
            .any(|s| s.contains("[linux/arm64 stage-1 3/3] RUN")),
        "{started:#?}"
    );
    let cached = steps(&b, "cached");
    assert!(
        cached
            .iter()
            .any(|s| s.contains("[linux/amd64 build 2/2] RUN")),
        "{cached:#?}"
    );
    assert!(cached.iter().all(|s| !s.contains("arm64")), "{cached:#?}");
    let (b_index, _) = index(&b_dest);
    let b_manifests = manifests(&b_index);
    assert_eq!(b_manifests[0].0, "amd64");
    assert_eq!(b_manifests[0].1, a_manifest);
    // The arm64 image is arm64's own: its RUN ran under emulation, not amd64's result.
    let single = dir.path().join("arm64");
    tool(
        "skopeo",
        &[
            "copy",
            "--override-arch",
            "arm64",
            &format!("oci:{}:latest", b_dest.display()),
            &format!("oci:{}:latest", single.display()),
        ],
    );
    let image = unpack(&single);
    let seen = std::fs::read_to_string(image.rootfs.join("seen")).unwrap();
    assert_eq!(seen.trim(), "arm64 aarch64");
}
