//! `--platform`: a build for linux/arm64 on an amd64 machine takes the arm64 entry of its base's index,
//! runs its steps under binfmt_misc emulation (Debian's qemu-user-static), gives BuildKit's automatic
//! platform args their meaning, runs a `FROM --platform=$BUILDPLATFORM` stage natively, and writes an
//! arm64 image; a step for one platform is never a cache hit for another.

use std::path::Path;

use crate::support::{Kiln, Layout, context, multi_platform_base, tempdir, unpack};

/// The cross-compilation pattern: a build stage on the machine building, a final stage per target.
const CROSS: &str = "FROM --platform=$BUILDPLATFORM base AS build\n\
                     RUN uname -m > /native\n\
                     FROM base AS final\n\
                     ARG TARGETARCH\n\
                     ARG BUILDARCH\n\
                     ARG TARGETPLATFORM\n\
                     COPY --from=build /native /\n\
                     RUN echo \"$TARGETPLATFORM $TARGETARCH $BUILDARCH $(uname -m)\" > /seen\n";

fn build(
    store: &Path,
    base: &Path,
    platform: &str,
    ctx: &Path,
    dest: &Path,
) -> crate::support::Output {
    let out = Kiln::build_in(store)
        .args(["--platform", platform, "--build-context"])
        .arg(format!("base=oci-layout://{}", base.display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx)
        .run();
    out.success();
    out
}

fn read(root: &Path, file: &str) -> String {
    std::fs::read_to_string(root.join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .trim()
        .to_string()
}

#[test]
fn an_arm64_build_runs_under_emulation_with_a_native_build_stage() {
    let base = multi_platform_base();
    let ctx = context(&[("Dockerfile", CROSS)]);
    let store = tempdir("store-");
    let out_dir = tempdir("platform-out-");

    let amd64 = out_dir.path().join("amd64");
    build(store.path(), base.path(), "linux/amd64", ctx.path(), &amd64);
    let arm64 = out_dir.path().join("arm64");
    let out = build(store.path(), base.path(), "aarch64", ctx.path(), &arm64);

    // The build stage runs on the machine building, so the arm64 build finds it cached from the amd64
    // one; the final stage is arm64's own and runs.
    let run = out.step("uname -m > /native");
    assert_eq!(
        run.state,
        crate::support::StepState::Cached,
        "{}",
        out.stderr
    );
    let seen = out.step("/seen");
    assert_eq!(
        seen.state,
        crate::support::StepState::Done,
        "{}",
        out.stderr
    );

    let image = unpack(&arm64);
    assert_eq!(read(&image.rootfs, "native"), "x86_64");
    assert_eq!(
        read(&image.rootfs, "seen"),
        "linux/arm64 arm64 amd64 aarch64"
    );
    // The image holds the arm64 busybox: an ELF whose e_machine is EM_AARCH64 (183).
    let elf = std::fs::read(image.rootfs.join("bin/busybox")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 183);

    let layout = Layout::new(&arm64);
    let config = layout.config();
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["os"], "linux");
    assert_eq!(
        layout.index()["manifests"][0]["platform"],
        serde_json::json!({"architecture": "arm64", "os": "linux"})
    );
    // The amd64 image from the same Dockerfile is the amd64 one throughout.
    let image = unpack(&amd64);
    assert_eq!(
        read(&image.rootfs, "seen"),
        "linux/amd64 amd64 amd64 x86_64"
    );
    assert_eq!(Layout::new(&amd64).config()["architecture"], "amd64");
}

#[test]
fn graph_digests_differ_by_platform_except_for_the_build_stage() {
    let ctx = context(&[("Dockerfile", CROSS)]);
    let digest = |platform: &str, target: &str| {
        let out = Kiln::graph()
            .with_base()
            .args(["--digest", "--target", target, "--platform", platform])
            .arg(ctx.path())
            .run();
        out.success();
        out.stdout.trim().to_string()
    };
    assert_ne!(
        digest("linux/amd64", "final"),
        digest("linux/arm64", "final")
    );
    // linux/amd64 said or not is one build, and so is arm64 however it is spelled.
    let plain = Kiln::graph()
        .with_base()
        .args(["--digest", "--target", "final"])
        .arg(ctx.path())
        .run();
    assert_eq!(plain.stdout.trim(), digest("x86_64", "final"));
    assert_eq!(digest("arm64", "final"), digest("linux/arm64/v8", "final"));
    assert_eq!(
        digest("linux/amd64", "build"),
        digest("linux/arm64", "build")
    );
}

#[test]
fn a_base_without_the_platform_is_refused_with_a_hint() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN true\n")]);
    // The amd64-only busybox base, asked for as arm64.
    let out = Kiln::new()
        .with_base()
        .args(["--platform", "linux/arm64"])
        .arg(ctx.path())
        .run();
    out.expect_code(2);
    assert!(
        crate::support::unwrapped(&out.stderr)
            .contains("is for platform \"linux/amd64\", expected \"linux/arm64\""),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("help:"), "{}", out.stderr);
}

#[test]
fn bad_platforms_are_located_errors() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN true\n")]);
    let out = Kiln::new()
        .with_base()
        .args(["--platform", "linux/arm65"])
        .arg(ctx.path())
        .run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("invalid platform `linux/arm65`") && out.stderr.contains("^^^"),
        "{}",
        out.stderr
    );
    let ctx = context(&[("Dockerfile", "FROM --platform=linux/nope base\nRUN true\n")]);
    let out = Kiln::new().with_base().arg(ctx.path()).run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("invalid platform `linux/nope`") && out.stderr.contains("Dockerfile:1"),
        "{}",
        out.stderr
    );
}

const PROGRAM: &str = "target tool: Image = image(\"base\", platform: build_platform())\n  \
                       .run(\"uname -m > /native\")\n\n\
                       target app: Image = image(\"base\")\n  \
                       .arg({\"TARGETARCH\": none})\n  \
                       .copy(tool, [\"/native\"], \"/\")\n  \
                       .run(\"echo ${platform()} ${build_platform()} $TARGETARCH $(uname -m) > /seen\")\n";

#[test]
fn a_build_program_for_two_platforms_makes_an_index_with_one_tool_stage() {
    let base = multi_platform_base();
    let ctx = context(&[("app.build", PROGRAM)]);
    let out_dir = tempdir("platform-out-");
    let dest = out_dir.path().join("oci");
    let out = Kiln::new()
        .args([
            "--platform",
            "linux/amd64,linux/arm64",
            "--target",
            "app",
            "-f",
        ])
        .arg(ctx.path().join("app.build"))
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base.path().display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run();
    out.success();
    let count = |needle: &str| {
        out.steps()
            .iter()
            .filter(|s| s.name.contains(needle))
            .count()
    };
    assert_eq!(
        count("[linux/amd64] run uname -m > /native"),
        1,
        "{}",
        out.stderr
    );
    assert_eq!(count("[linux/arm64] run echo"), 1, "{}", out.stderr);
    assert_eq!(count("> /seen"), 2, "{}", out.stderr);
    let raw = crate::support::tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:latest", dest.display()),
        ],
    );
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let arches: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"]);
    // An index is of one target: two selected is an error, not two indexes over each other.
    let out = Kiln::new()
        .args([
            "--platform",
            "linux/amd64,linux/arm64",
            "--target",
            "tool,app",
            "-f",
        ])
        .arg(ctx.path().join("app.build"))
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base.path().display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("2 targets are selected"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_build_program_takes_its_platform_and_the_build_machine_s() {
    let base = multi_platform_base();
    let program = PROGRAM;
    let ctx = context(&[("app.build", program)]);
    let out_dir = tempdir("platform-out-");
    let dest = out_dir.path().join("app");
    let out = Kiln::new()
        .args(["--platform", "linux/arm64", "--target", "app", "-f"])
        .arg(ctx.path().join("app.build"))
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base.path().display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run();
    out.success();
    let image = unpack(&dest);
    assert_eq!(read(&image.rootfs, "native"), "x86_64");
    assert_eq!(
        read(&image.rootfs, "seen"),
        "linux/arm64 linux/amd64 arm64 aarch64"
    );
    assert_eq!(Layout::new(&dest).config()["architecture"], "arm64");
}

/// `--platform linux/amd64,linux/arm64` of the cross pattern, written as an OCI layout: one index.
fn build_both(base: &Path, ctx: &Path, extra: &[&str]) -> crate::support::Output {
    Kiln::new()
        .args(["--platform", "linux/amd64,linux/arm64", "--build-context"])
        .arg(format!("base=oci-layout://{}", base.display()))
        .args(extra)
        .arg(ctx)
        .run()
}

#[test]
fn two_platforms_make_one_index_and_run_the_build_stage_once() {
    let base = multi_platform_base();
    let ctx = context(&[("Dockerfile", CROSS)]);
    let out_dir = tempdir("platform-out-");
    let dest = out_dir.path().join("oci");
    let tar = out_dir.path().join("oci.tar");
    let out = build_both(
        base.path(),
        ctx.path(),
        &[
            "-o",
            &format!("type=oci,dest={}", dest.display()),
            "-o",
            &format!("type=oci,dest={}", tar.display()),
        ],
    );
    out.success();
    // The tar holds the same index as the directory.
    let in_tar = crate::support::tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci-archive:{}:latest", tar.display()),
        ],
    );
    let count = |needle: &str| {
        out.steps()
            .iter()
            .filter(|s| s.name.contains(needle))
            .count()
    };
    // The build stage is one node for both platforms; the final stage is one per platform.
    assert_eq!(count("uname -m > /native"), 1, "{}", out.stderr);
    assert_eq!(count("> /seen"), 2, "{}", out.stderr);
    // Named as BuildKit names them when several platforms are built.
    assert_eq!(
        count("[linux/amd64 build 2/2] RUN uname -m"),
        1,
        "{}",
        out.stderr
    );
    assert_eq!(
        count("[linux/arm64 final 3/3] RUN echo"),
        1,
        "{}",
        out.stderr
    );

    let raw = crate::support::tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:latest", dest.display()),
        ],
    );
    assert_eq!(raw, in_tar);
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("{}/{}", m["platform"]["os"], m["platform"]["architecture"]))
        .collect();
    assert_eq!(platforms, ["\"linux\"/\"amd64\"", "\"linux\"/\"arm64\""]);
    // umoci cannot choose a platform from an index: skopeo picks the arm64 image first.
    let single = out_dir.path().join("arm64");
    crate::support::tool(
        "skopeo",
        &[
            "copy",
            "--override-arch",
            "arm64",
            &format!("oci:{}:latest", dest.display()),
            &format!("oci:{}:latest", single.display()),
        ],
    );
    let image = unpack(&single);
    assert_eq!(
        read(&image.rootfs, "seen"),
        "linux/arm64 arm64 amd64 aarch64"
    );
    assert_eq!(read(&image.rootfs, "native"), "x86_64");
    let elf = std::fs::read(image.rootfs.join("bin/busybox")).unwrap();
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 183);
}

#[test]
fn two_platforms_push_an_index_and_refuse_a_docker_archive() {
    let base = multi_platform_base();
    let ctx = context(&[("Dockerfile", CROSS)]);
    let out_dir = tempdir("platform-out-");
    let archive = out_dir.path().join("image.tar");
    let out = build_both(
        base.path(),
        ctx.path(),
        &["-o", &format!("type=docker,dest={}", archive.display())],
    );
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("docker exporter does not currently support exporting manifest lists"),
        "{}",
        out.stderr
    );
    assert!(!archive.exists());
    // The store keeps one image under a name, so `-t` alone is refused before anything is built.
    let out = build_both(base.path(), ctx.path(), &["-t", "app:multi"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("keeps one image under a name"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("steps run"), "{}", out.stderr);

    let Some((_, addrs)) = crate::support::start_registries("platform tests", &[], &["open"])
    else {
        return;
    };
    let name = format!("{}/kiln/multi:1", addrs[0]);
    let out = build_both(base.path(), ctx.path(), &["--push", "-t", &name]);
    out.success();
    let raw = crate::support::tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{name}"),
        ],
    );
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let arches: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(arches, ["amd64", "arm64"]);
    // Each platform's image is there in full: skopeo fetches the arm64 one and its config says so.
    let config = crate::support::tool(
        "skopeo",
        &[
            "inspect",
            "--config",
            "--tls-verify=false",
            "--override-arch",
            "arm64",
            &format!("docker://{name}"),
        ],
    );
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["architecture"], "arm64");
}

/// `kiln convert` carries `FROM --platform=$BUILDPLATFORM` as `image(..., platform: build_platform())`:
/// the converted program and the Dockerfile are one graph for every platform.
#[test]
fn a_converted_cross_dockerfile_is_the_same_graph() {
    let ctx = context(&[("Dockerfile", CROSS)]);
    let converted = ctx.path().join("app.build");
    Kiln::bare()
        .args(["convert", "-f"])
        .arg(ctx.path().join("Dockerfile"))
        .arg("-o")
        .arg(&converted)
        .run()
        .success();
    let source = std::fs::read_to_string(&converted).unwrap();
    assert!(source.contains("platform: build_platform()"), "{source}");
    let digest = |extra: &[&str], platform: &str| {
        let out = Kiln::graph()
            .with_base()
            .args(["--digest", "--target", "final", "--platform", platform])
            .args(extra)
            .arg(ctx.path())
            .run();
        out.success();
        out.stdout.trim().to_string()
    };
    let file = converted.to_str().unwrap();
    for platform in ["linux/amd64", "linux/arm64"] {
        assert_eq!(digest(&[], platform), digest(&["-f", file], platform));
    }
}

/// Step names as BuildKit gives them when several platforms are built: the stage's platform, and the
/// target's architecture after `->` in a stage that reads it for another architecture than its own.
#[test]
fn a_cross_compiling_stage_is_named_for_both_platforms() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM --platform=$BUILDPLATFORM base AS build\nARG TARGETARCH\nRUN echo $TARGETARCH\n",
    )]);
    let out = Kiln::graph()
        .with_base()
        .args(["--platform", "linux/amd64,linux/arm64"])
        .arg(ctx.path())
        .run();
    out.success();
    assert!(
        out.stdout
            .contains("[linux/amd64 build 2/2] RUN echo $TARGETARCH"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("[linux/amd64->arm64 build 2/2] RUN echo $TARGETARCH"),
        "{}",
        out.stdout
    );
}

/// A target's own platforms (`for [...]`): with no `--platform` it is built for them, each platform's
/// step run for its architecture, into one index; `--platform` replaces them.
#[test]
fn a_build_target_declaring_two_platforms_makes_their_index() {
    let base = multi_platform_base();
    let program = "target app: Image = image(\"base\")\n  \
                   .run(\"echo ${platform()} $(uname -m) > /seen\")\n  \
                   for [\"linux/amd64\", \"linux/arm64\"]\n";
    let ctx = context(&[("app.build", program)]);
    let out_dir = tempdir("platform-out-");
    let dest = out_dir.path().join("oci");
    let build = |extra: &[&str]| {
        Kiln::new()
            .args(extra)
            .arg("-f")
            .arg(ctx.path().join("app.build"))
            .arg("--build-context")
            .arg(format!("base=oci-layout://{}", base.path().display()))
            .arg("-o")
            .arg(format!("type=oci,dest={}", dest.display()))
            .arg(ctx.path())
            .run()
    };
    let out = build(&[]);
    out.success();
    for step in ["[linux/amd64] run echo", "[linux/arm64] run echo"] {
        assert!(
            out.steps().iter().any(|s| s.name.contains(step)),
            "{step}: {}",
            out.stderr
        );
    }
    let arches = |dest: &Path| -> Vec<String> {
        let raw = crate::support::tool(
            "skopeo",
            &[
                "inspect",
                "--raw",
                &format!("oci:{}:latest", dest.display()),
            ],
        );
        let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
        match index["manifests"].as_array() {
            Some(ms) => ms
                .iter()
                .map(|m| m["platform"]["architecture"].as_str().unwrap().to_string())
                .collect(),
            None => Vec::new(),
        }
    };
    assert_eq!(arches(&dest), ["amd64", "arm64"]);
    // The arm64 image is arm64 through and through: its step ran as one.
    let arm = out_dir.path().join("arm");
    crate::support::tool(
        "skopeo",
        &[
            "copy",
            "--override-arch",
            "arm64",
            &format!("oci:{}:latest", dest.display()),
            &format!("oci:{}:latest", arm.display()),
        ],
    );
    assert_eq!(read(&unpack(&arm).rootfs, "seen"), "linux/arm64 aarch64");
    // The command line wins: one platform asked for is one image, no index.
    std::fs::remove_dir_all(&dest).unwrap();
    build(&["--platform", "linux/amd64"]).success();
    assert_eq!(arches(&dest), Vec::<String>::new());
}

/// Monorepo labels are built for one platform at a time: a label whose target declares others is a
/// located error, and `--platform` builds it for the one named.
#[test]
fn a_label_declaring_other_platforms_is_refused_unless_the_command_line_names_one() {
    let repo = context(&[
        ("kiln.toml", ""),
        (
            "app/BUILD.build",
            "target app: Image = scratch() for [\"linux/amd64\", \"linux/arm64\"]\n",
        ),
    ]);
    let out = Kiln::graph()
        .arg("//app:app")
        .current_dir(repo.path())
        .run();
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("monorepo labels are built for one platform at a time")
            && out.stderr.contains("BUILD.build:1:35")
            && out.stderr.contains("--platform"),
        "{}",
        out.stderr
    );
    Kiln::graph()
        .args(["--platform", "linux/arm64", "//app:app"])
        .current_dir(repo.path())
        .run()
        .success();
}

/// A target's platforms are read before any base is pulled: a registry base with only an arm64 image
/// builds for a target declaring `linux/arm64`, and the default platform is never asked for.
#[test]
fn a_target_declaring_arm64_pulls_only_the_arm64_base() {
    let Some((_, addrs)) =
        crate::support::start_registries("declared platform pulls", &[], &["open"])
    else {
        return;
    };
    let image = format!("{}/arm/only:1", addrs[0]);
    crate::support::tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!(
                "oci:{}:latest",
                crate::support::arm64_base_image().display()
            ),
            &format!("docker://{image}"),
        ],
    );
    let program = format!(
        "target app: Image = image(\"{image}\").run(\"uname -m > /m\") for [\"linux/arm64\"]\n"
    );
    let ctx = context(&[("app.build", program.as_str())]);
    let out_dir = tempdir("platform-out-");
    let dest = out_dir.path().join("oci");
    let out = Kiln::new()
        .arg("-f")
        .arg(ctx.path().join("app.build"))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run();
    out.success();
    assert_eq!(read(&unpack(&dest).rootfs, "m"), "aarch64");
}
