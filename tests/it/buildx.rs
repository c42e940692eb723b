//! buildx's flags of `kiln build`: what each does to the image (judged by skopeo over the written
//! layout) or to what a step sees, and the replies to buildx flags kiln does not have.

use std::path::Path;

use serde_json::Value;

use crate::support::{Kiln, context, tempdir, tool};

const DOCKERFILE: &str = "FROM base\nLABEL a=dockerfile b=kept\nRUN echo hi > /hello\n";

fn skopeo_json(args: &[&str]) -> Value {
    let text = tool("skopeo", args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("skopeo said {text}: {e}"))
}

/// The config digest and the manifest digest of the image in an OCI layout, as skopeo reads them.
fn digests(layout: &Path) -> (String, String) {
    let at = format!("oci:{}", layout.display());
    let manifest = skopeo_json(&["inspect", "--raw", &at]);
    let inspect = skopeo_json(&["inspect", &at]);
    (
        manifest["config"]["digest"].as_str().unwrap().to_string(),
        inspect["Digest"].as_str().unwrap().to_string(),
    )
}

#[test]
fn label_iidfile_and_metadata_file_describe_the_image() {
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let out = tempdir("buildx-out-");
    let layout = out.path().join("oci");
    let iid = out.path().join("iid");
    let meta = out.path().join("meta.json");
    // A stale ID file from an earlier build is replaced, never left standing.
    std::fs::write(&iid, "stale").unwrap();
    Kiln::new()
        .with_base()
        .args(["--label", "a=flag", "--label", "c=new", "--label", "empty"])
        .args(["-t", "kiln/meta:1", "-o"])
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg("--iidfile")
        .arg(&iid)
        .arg("--metadata-file")
        .arg(&meta)
        .arg(ctx.path())
        .run()
        .success();

    let config = skopeo_json(&["inspect", "--config", &format!("oci:{}", layout.display())]);
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["a"], "flag", "--label wins over LABEL: {labels}");
    assert_eq!(labels["b"], "kept", "{labels}");
    assert_eq!(labels["c"], "new", "{labels}");
    assert_eq!(labels["empty"], "", "{labels}");

    let (config_digest, manifest_digest) = digests(&layout);
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), config_digest);
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    assert_eq!(
        m["containerimage.config.digest"],
        config_digest.as_str(),
        "{m}"
    );
    assert_eq!(m["containerimage.digest"], manifest_digest.as_str(), "{m}");
    let descriptor = &m["containerimage.descriptor"];
    assert_eq!(descriptor["digest"], manifest_digest.as_str(), "{m}");
    assert_eq!(
        descriptor["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let raw = tool(
        "skopeo",
        &["inspect", "--raw", &format!("oci:{}", layout.display())],
    );
    assert_eq!(descriptor["size"], raw.len(), "{m}");
    assert_eq!(m["image.name"], "kiln/meta:1", "{m}");
}

#[test]
fn quiet_prints_only_the_image_id() {
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let out = tempdir("buildx-quiet-");
    let layout = out.path().join("oci");
    let store = tempdir("store-");
    let run = Kiln::bare()
        .args(["build", "-q", "--store"])
        .arg(store.path())
        .with_base()
        .arg("-o")
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg(ctx.path())
        .run();
    run.success();
    let (config_digest, _) = digests(&layout);
    assert_eq!(run.stdout, format!("{config_digest}\n"));
    assert!(
        !run.stderr.contains("RUN"),
        "-q shows no progress: {}",
        run.stderr
    );
}

#[test]
fn label_applies_to_a_build_file_image_target() {
    let ctx = context(&[(
        "app.build",
        "target app: Image = image(\"base\").label({\"from\": \"build\"})\n",
    )]);
    let out = tempdir("buildx-label-");
    let layout = out.path().join("oci");
    Kiln::new()
        .with_base()
        .args(["-f"])
        .arg(ctx.path().join("app.build"))
        .args(["--label", "from=flag", "-o"])
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg(ctx.path())
        .run()
        .success();
    let config = skopeo_json(&["inspect", "--config", &format!("oci:{}", layout.display())]);
    assert_eq!(config["config"]["Labels"]["from"], "flag", "{config}");
}

/// Runs `kiln build ARGS` with `stdin` on standard input.
fn build_with_stdin(args: &[&str], stdin: &Path, cwd: &Path) -> crate::support::Output {
    Kiln::new()
        .with_base()
        .args(args)
        .current_dir(cwd)
        .wrapped(&[
            "sh",
            "-c",
            &format!("exec \"$@\" < {}", stdin.display()),
            "sh",
        ])
        .run()
}

#[test]
fn dockerfile_from_stdin_with_a_context_or_none() {
    // The context holds no Dockerfile: the one built can only have come from stdin.
    let ctx = context(&[("f", "from the context\n")]);
    let dir = tempdir("buildx-stdin-");
    let dockerfile = dir.path().join("df");
    std::fs::write(&dockerfile, "FROM base\nCOPY f /f\n").unwrap();
    let out = dir.path().join("fs");
    let dest = format!("type=local,dest={}", out.display());
    let ctx_path = ctx.path().to_str().unwrap();
    build_with_stdin(&["-f", "-", "-o", &dest, ctx_path], &dockerfile, ctx.path()).success();
    assert_eq!(
        std::fs::read_to_string(out.join("f")).unwrap(),
        "from the context\n"
    );

    // `-` as the context: the Dockerfile is stdin, and there is no context to copy from.
    std::fs::write(&dockerfile, "FROM base\nRUN echo made > /made\n").unwrap();
    let out2 = dir.path().join("fs2");
    let dest2 = format!("type=local,dest={}", out2.display());
    build_with_stdin(&["-o", &dest2, "-"], &dockerfile, ctx.path()).success();
    assert_eq!(
        std::fs::read_to_string(out2.join("made")).unwrap(),
        "made\n"
    );
    std::fs::write(&dockerfile, "FROM base\nCOPY f /f\n").unwrap();
    let run = build_with_stdin(&["-o", &dest2, "-"], &dockerfile, ctx.path());
    run.expect_code(2);
    assert!(
        run.stderr.contains("does not exist in the build context"),
        "{}",
        run.stderr
    );
}

const OUTLINED: &str = "\
# VERSION the version to build
ARG VERSION=1.0

# builder compiles the thing
FROM base AS builder
# GOFLAGS flags for the compiler
ARG GOFLAGS=\"-v\"
RUN --mount=type=secret,id=npmrc,required=true true

FROM base AS other
ARG OTHER=x

# final the shipped image
FROM base AS final
COPY --from=builder /x /x
RUN --mount=type=ssh true
";

fn call(args: &[&str], ctx: &Path) -> crate::support::Output {
    Kiln::bare()
        .args(["build", "--call"])
        .args(args)
        .arg(ctx)
        .current_dir(ctx)
        .run()
}

#[test]
fn call_targets_and_outline_print_buildkits_tables() {
    let ctx = context(&[("Dockerfile", OUTLINED)]);
    let targets = call(&["targets"], ctx.path());
    targets.success();
    assert_eq!(
        targets.stdout,
        "TARGET          DESCRIPTION\n\
         builder         compiles the thing\n\
         other           \n\
         final (default) the shipped image\n"
    );
    // The outline of `final`: the global arg, `builder`'s (reached through COPY --from), never
    // `other`'s; the secret and the agent its steps mount.
    let outline = call(&["outline"], ctx.path());
    outline.success();
    assert_eq!(
        outline.stdout,
        "TARGET:      final\n\
         DESCRIPTION: the shipped image\n\
         \n\
         BUILD ARG   VALUE   DESCRIPTION\n\
         VERSION     1.0     the version to build\n\
         GOFLAGS     -v      flags for the compiler\n\
         \n\
         SECRET   REQUIRED\n\
         npmrc    true\n\
         \n\
         SSH       REQUIRED\n\
         default   \n\
         \n"
    );
    let json = call(
        &["outline,format=json", "--build-arg", "VERSION=2"],
        ctx.path(),
    );
    json.success();
    let v: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(v["name"], "final");
    assert_eq!(v["args"][0]["name"], "VERSION");
    assert_eq!(v["args"][0]["value"], "2", "--build-arg is the value: {v}");
    assert_eq!(
        v["secrets"][0],
        serde_json::json!({"name": "npmrc", "required": true})
    );
    assert_eq!(v["ssh"][0], serde_json::json!({"name": "default"}));
    let json = call(&["targets,format=json"], ctx.path());
    let v: Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(v["targets"][2]["default"], true, "{v}");
    assert_eq!(v["targets"][0]["description"], "compiles the thing", "{v}");
}

#[test]
fn call_targets_and_outline_of_a_build_file() {
    let ctx = context(&[(
        "app.build",
        "# version what to stamp\nparam version: String = \"1.0\"\n\n# app the server\ntarget app: Image = image(\"base\").label({\"v\": version})\n\n# tools extra tools\ntarget tools: Image = image(\"base\")\n",
    )]);
    let file = ctx.path().join("app.build");
    let file = file.to_str().unwrap();
    let targets = call(&["targets", "-f", file], ctx.path());
    targets.success();
    assert_eq!(
        targets.stdout,
        "TARGET          DESCRIPTION\napp             the server\ntools (default) extra tools\n"
    );
    let outline = call(&["outline", "-f", file, "--target", "app"], ctx.path());
    outline.success();
    assert_eq!(
        outline.stdout,
        "BUILD ARG   VALUE   DESCRIPTION\nversion     \"1.0\"   what to stamp\n\n"
    );
}

#[test]
fn check_fails_on_any_finding_and_builds_nothing() {
    let ctx = context(&[("Dockerfile", "FROM base as x\nRUN true\n")]);
    let out = Kiln::bare()
        .args(["build", "--check"])
        .arg(ctx.path())
        .run();
    out.expect_code(1);
    assert!(out.stdout.contains("FromAsCasing"), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("Check complete, 1 warning has been found!"),
        "{}",
        out.stderr
    );
    let clean = context(&[("Dockerfile", "FROM base AS x\nRUN true\n")]);
    let out = Kiln::bare()
        .args(["build", "--call=check"])
        .arg(clean.path())
        .run();
    out.success();
    assert_eq!(out.stdout, "Check complete, no warnings found.\n");
}

#[test]
fn no_cache_filter_reruns_only_the_named_stages_steps() {
    use crate::support::StepState;
    let ctx = context(&[(
        "Dockerfile",
        "FROM base AS one\nRUN echo one > /one\nFROM base AS two\nRUN echo two > /two\nFROM base\nCOPY --from=one /one /one\nCOPY --from=two /two /two\n",
    )]);
    let kiln = Kiln::new().with_base().arg(ctx.path());
    kiln.run().success();
    let again = kiln.clone().args(["--no-cache-filter", "one"]).run();
    again.success();
    assert_eq!(
        again.step("RUN echo one").state,
        StepState::Done,
        "{}",
        again.stderr
    );
    assert_eq!(
        again.step("RUN echo two").state,
        StepState::Cached,
        "{}",
        again.stderr
    );
    // `.build` targets by name, as stages.
    let build = context(&[(
        "app.build",
        "target lib: Image = image(\"base\").run(\"echo lib > /lib\")\ntarget app: Image = image(\"base\").run(\"echo app > /app\").copy(from: lib, sources: [\"/lib\"], dest: \"/lib\")\n",
    )]);
    let kiln = Kiln::new()
        .with_base()
        .arg("-f")
        .arg(build.path().join("app.build"))
        .arg(build.path());
    kiln.run().success();
    let again = kiln.clone().args(["--no-cache-filter", "lib"]).run();
    again.success();
    assert_eq!(
        again.step("echo lib").state,
        StepState::Done,
        "{}",
        again.stderr
    );
    assert_eq!(
        again.step("echo app").state,
        StepState::Cached,
        "{}",
        again.stderr
    );
}

/// What a RUN step sees of its network, hosts, /dev/shm and limits, written into the image.
const SEES: &str = "FROM base\nRUN ls /sys/class/net > /nets; cat /etc/hosts > /hosts; grep ' /dev/shm ' /proc/mounts > /shm; ulimit -Sn > /soft; ulimit -Hn > /hard\n";

fn seen(args: &[&str]) -> std::collections::BTreeMap<String, String> {
    let ctx = context(&[("Dockerfile", SEES)]);
    let out = tempdir("buildx-sees-");
    Kiln::new()
        .with_base()
        .args(args)
        .arg("-o")
        .arg(format!("type=local,dest={}", out.path().display()))
        .arg(ctx.path())
        .run()
        .success();
    ["nets", "hosts", "shm", "soft", "hard"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(out.path().join(f)).unwrap();
            (f.to_string(), text)
        })
        .collect()
}

#[test]
fn network_hosts_shm_and_ulimit_reach_every_run_step() {
    let default = seen(&[]);
    assert_ne!(
        default["nets"].trim(),
        "lo",
        "a default step has a network: {default:?}"
    );
    assert!(default["shm"].contains("size=65536k"), "{default:?}");
    let set = seen(&[
        "--network",
        "none",
        "--add-host",
        "db.internal:10.1.2.3",
        "--add-host",
        "v6.internal=fd00::1",
        "--shm-size",
        "128m",
        "--ulimit",
        "nofile=1024:2048",
    ]);
    assert_eq!(set["nets"].trim(), "lo", "--network none: {set:?}");
    assert!(set["hosts"].contains("10.1.2.3\tdb.internal\n"), "{set:?}");
    assert!(set["hosts"].contains("fd00::1\tv6.internal\n"), "{set:?}");
    assert!(set["shm"].contains("size=131072k"), "{set:?}");
    assert_eq!(set["soft"].trim(), "1024", "{set:?}");
    assert_eq!(set["hard"].trim(), "2048", "{set:?}");
    // `host`, allowed: the step sees this machine's interfaces.
    let host = seen(&["--network", "host", "--allow", "network.host"]);
    let mut ours: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    ours.sort();
    let mut theirs: Vec<&str> = host["nets"].split_whitespace().collect();
    theirs.sort();
    assert_eq!(theirs, ours, "--network host");
}

/// The step's settings are part of its cache key: a build with other settings runs the step again.
#[test]
fn step_settings_change_the_cache_key() {
    let ctx = context(&[("Dockerfile", SEES)]);
    let kiln = Kiln::new().with_base().arg(ctx.path());
    kiln.run().success();
    let again = kiln.clone().args(["--add-host", "a:10.0.0.1"]).run();
    again.success();
    assert_eq!(again.summary().0, 1, "{}", again.stderr);
    let same = kiln.clone().args(["--add-host", "a:10.0.0.1"]).run();
    same.success();
    assert_eq!(same.summary().0, 0, "{}", same.stderr);
}

#[test]
fn annotations_go_into_the_image_manifest() {
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let out = tempdir("buildx-annotation-");
    let layout = out.path().join("oci");
    let meta = out.path().join("meta.json");
    Kiln::new()
        .with_base()
        .args(["--annotation", "org.example.plain=1"])
        .args([
            "--annotation",
            "manifest:org.opencontainers.image.title=kiln test",
        ])
        .args([
            "--annotation",
            "manifest-descriptor:org.example.described=3",
        ])
        .arg("-o")
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg("--metadata-file")
        .arg(&meta)
        .arg(ctx.path())
        .run()
        .success();
    let manifest = skopeo_json(&["inspect", "--raw", &format!("oci:{}", layout.display())]);
    let annotations = &manifest["annotations"];
    assert_eq!(annotations["org.example.plain"], "1", "{manifest}");
    assert_eq!(
        annotations["org.opencontainers.image.title"], "kiln test",
        "{manifest}"
    );
    assert!(
        annotations.get("org.example.described").is_none(),
        "{manifest}"
    );
    // `manifest-descriptor:` annotates the manifest's entry in the layout's index, beside its names.
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0]["annotations"];
    assert_eq!(entry["org.example.described"], "3", "{index}");
    // The digests reported are those of the annotated manifest.
    let (_, digest) = digests(&layout);
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.digest"], digest.as_str());
}

/// `--pull`: a tag is asked of its registry again, so a base image pushed anew under the same tag is
/// the one the next build starts from.
#[test]
fn pull_takes_the_tags_current_image() {
    use crate::support::{base_image_with, start_registries};
    let Some((_dir, addrs)) = start_registries("--pull test", &[], &["open"]) else {
        return;
    };
    let push = |layout: &Path| {
        tool(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                &format!("oci:{}:latest", layout.display()),
                &format!("docker://{}/pull/base:1", addrs[0]),
            ],
        );
    };
    let first = base_image_with(|c| c["Env"] = serde_json::json!(["WHICH=first"]));
    let second = base_image_with(|c| c["Env"] = serde_json::json!(["WHICH=second"]));
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM {}/pull/base:1\nRUN echo $WHICH > /which\n", addrs[0]),
    )]);
    let out = tempdir("buildx-pull-");
    let store = tempdir("store-");
    let build = |dest: &str| {
        Kiln::build_in(store.path())
            .arg("--pull")
            .arg("-o")
            .arg(format!(
                "type=local,dest={}",
                out.path().join(dest).display()
            ))
            .arg(ctx.path())
            .run()
            .success();
        std::fs::read_to_string(out.path().join(dest).join("which")).unwrap()
    };
    push(first.path());
    assert_eq!(build("one"), "first\n");
    push(second.path());
    assert_eq!(build("two"), "second\n");
}

/// Several targets: the metadata file holds each by name (as `buildx bake` writes it), `-q` prints
/// each ID.
#[test]
fn metadata_of_several_targets_is_by_target() {
    let ctx = context(&[(
        "app.build",
        "target a: Image = image(\"base\").label({\"t\": \"a\"})\ntarget b: Image = image(\"base\").label({\"t\": \"b\"})\n",
    )]);
    let meta = ctx.path().join("meta.json");
    let store = tempdir("store-");
    let run = Kiln::bare()
        .args(["build", "-q", "--store"])
        .arg(store.path())
        .with_base()
        .arg("-f")
        .arg(ctx.path().join("app.build"))
        .args(["--target", "a,b", "--metadata-file"])
        .arg(&meta)
        .arg(ctx.path())
        .run();
    run.success();
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    let (a, b) = (
        m["a"]["containerimage.config.digest"].as_str().unwrap(),
        m["b"]["containerimage.config.digest"].as_str().unwrap(),
    );
    assert_ne!(a, b, "{m}");
    assert_eq!(run.stdout, format!("{a}\n{b}\n"));
}
