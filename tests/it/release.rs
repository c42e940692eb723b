//! Monorepo releases: the example monorepo's images declare their tags (`tagged [...]`), and one
//! `kiln build //... --push` pushes every one of them to a loopback registry (judged by skopeo), each
//! shared layer uploaded once (judged by the registry's access log); `-o type=oci,dest=out/{target}`
//! writes a layout per target; a multi-target build ends with a summary per target.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::support::{Kiln, base_image, copy_dir, repo, start_registries, tempdir, tool};

const SERVICES: [&str; 3] = ["api", "web", "worker"];

fn inspect_digest(reference: &str) -> String {
    let out = tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    );
    let v: Value = serde_json::from_str(&out).expect("skopeo inspect prints JSON");
    v["Digest"].as_str().expect("a digest").to_string()
}

/// The config digest (docker's image ID) of the image at `reference` in a registry, as skopeo reads it.
fn inspect_config_digest(reference: &str) -> String {
    let raw = crate::support::registry_raw(reference);
    let v: Value = serde_json::from_str(&raw).expect("skopeo inspect --raw prints the manifest");
    v["config"]["digest"]
        .as_str()
        .expect("a config")
        .to_string()
}

/// The manifest skopeo finds in an OCI layout, and the ref name the layout's index gives it.
fn layout_image(dir: &Path) -> (String, String) {
    let out = tool("skopeo", &["inspect", &format!("oci:{}", dir.display())]);
    let v: Value = serde_json::from_str(&out).expect("skopeo inspect prints JSON");
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let name = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (v["Digest"].as_str().unwrap().to_string(), name)
}

/// How many times the registry's access log shows each blob's upload completed (the `PUT` that ends
/// an upload names the digest), and how many cross-repository mounts it was asked for.
fn uploads_and_mounts(log: &Path) -> (BTreeMap<String, usize>, usize) {
    let log = std::fs::read_to_string(log).unwrap();
    let mut uploads = BTreeMap::new();
    let mut mounts = 0;
    for line in log.lines() {
        let Some(request) = line.split('"').find(|p| p.contains("/blobs/uploads/")) else {
            continue;
        };
        let request = request.replace("%3A", ":").replace("%3a", ":");
        if request.starts_with("PUT ") {
            let digest = request
                .split(['?', '&', ' '])
                .find_map(|p| p.strip_prefix("digest="))
                .expect("a completed upload names its digest")
                .to_string();
            *uploads.entry(digest).or_default() += 1;
        } else if request.starts_with("POST ") && request.contains("mount=") {
            mounts += 1;
        }
    }
    (uploads, mounts)
}

/// `kiln build //... --push`: every service goes to both its tags in one command, with the digest its
/// per-target OCI layout has; the base and the library, which declare no tags, are built and named in
/// a warning; no blob is uploaded twice though the three services share the base's layers.
#[test]
fn the_monorepo_pushes_every_tagged_image_in_one_command() {
    let Some((regs, addrs)) = start_registries("monorepo release", &[], &["open"]) else {
        return;
    };
    let registry = format!("{}/kiln-example", addrs[0]);
    let mono = copy_dir(&repo().join("examples/monorepo"));
    let out_dir = tempdir("release-out-");
    let store = tempdir("store-");
    let build = |extra: &[&str]| {
        Kiln::build_in(store.path())
            .current_dir(mono.path())
            .args(["//...", "--push"])
            .args(["--param", &format!("registry={registry}")])
            .args(["--param", "version=1.0"])
            .arg("--build-context")
            .arg(format!("busybox=oci-layout://{}", base_image().display()))
            .arg("-o")
            .arg(format!(
                "type=oci,dest={}/{{target}}",
                out_dir.path().display()
            ))
            .args(extra)
            .run()
    };
    let out = build(&[]);
    out.success();
    for untagged in ["//base:base", "//lib/greet:lib"] {
        assert!(
            out.stderr
                .contains(&format!("warning: {untagged} declares no tags")),
            "{}",
            out.stderr
        );
    }
    for service in SERVICES {
        let layout = out_dir.path().join(format!("services/{service}/image"));
        let (written, ref_name) = layout_image(&layout);
        assert_eq!(ref_name, format!("{registry}/{service}:1.0"));
        for tag in ["1.0", "latest"] {
            let pushed = inspect_digest(&format!("{registry}/{service}:{tag}"));
            assert_eq!(pushed, written, "{service}:{tag}\n{}", out.stderr);
        }
        assert!(
            out.stderr.contains(&format!(
                "//services/{service}:image  {written}  pushed {registry}/{service}:1.0, {registry}/{service}:latest; written to {}",
                layout.display()
            )),
            "the summary names where {service} went:\n{}",
            out.stderr
        );
    }
    // The untagged targets get their layouts too, and nothing of theirs is pushed.
    for label_path in ["base/base", "lib/greet/lib"] {
        assert!(out_dir.path().join(label_path).join("index.json").is_file());
    }
    assert!(out.stderr.contains("built 5 targets:"), "{}", out.stderr);
    let (uploads, mounts) = uploads_and_mounts(&regs.join("open.log"));
    let twice: Vec<_> = uploads.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "uploaded more than once: {twice:?}\n{}",
        out.stderr
    );
    assert!(
        mounts >= 2,
        "web and worker mount the layers api sent ({mounts} mounts)"
    );

    // Again, with the summary as JSON: everything cached, every target listed with its digest.
    let again = build(&["--progress", "json"]);
    again.success();
    let summary: Value = again
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary event in\n{}", again.stderr));
    let targets = summary["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 5, "{summary}");
    for t in targets {
        assert_eq!(t["run"], 0, "{t}");
        assert!(t["cached"].as_u64().unwrap() > 0, "{t}");
        assert!(t["digest"].as_str().unwrap().starts_with("sha256:"), "{t}");
    }
    let api = targets
        .iter()
        .find(|t| t["target"] == "//services/api:image")
        .unwrap();
    assert_eq!(
        api["pushed"],
        serde_json::json!([
            format!("{registry}/api:1.0"),
            format!("{registry}/api:latest")
        ])
    );
    let base = targets
        .iter()
        .find(|t| t["target"] == "//base:base")
        .unwrap();
    assert_eq!(base["skipped"], "not pushed: no tags declared", "{base}");

    // With no output and no push, each tagged image is kept in the store under its tags, as `-t` keeps
    // one, with the image ID (config digest) it was pushed with.
    let kept = Kiln::build_in(store.path())
        .current_dir(mono.path())
        .args(["//...", "--param", &format!("registry={registry}")])
        .args(["--param", "version=1.0", "--build-context"])
        .arg(format!("busybox=oci-layout://{}", base_image().display()))
        .run();
    kept.success();
    let listed = Kiln::bare()
        .args(["images", "--store"])
        .arg(store.path())
        .run();
    listed.success();
    for service in SERVICES {
        // `kiln images` shows an image ID's first 12 hex digits.
        let digest =
            inspect_config_digest(&format!("{registry}/{service}:latest"))[..19].to_string();
        for tag in ["1.0", "latest"] {
            let name = format!("{registry}/{service}:{tag}");
            assert!(
                listed
                    .stdout
                    .lines()
                    .any(|l| l.contains(&name) && l.contains(&digest)),
                "{name} {digest}:\n{}",
                listed.stdout
            );
        }
    }
    // The store keeps the build's own layers uncompressed; pushed by name, the kept image leaves with
    // them compressed as the build's push compressed them: the very manifest `--push` sent.
    let api = format!("{registry}/api:1.0");
    let again = format!("{registry}/api:again");
    let pushed = Kiln::bare()
        .args(["image", "push", &api, &again, "--store"])
        .arg(store.path())
        .run();
    pushed.success();
    assert_eq!(pushed.stdout.trim(), inspect_digest(&api));
    assert_eq!(inspect_digest(&again), inspect_digest(&api));
    assert!(
        !kept
            .stderr
            .contains("no output specified: the result stays"),
        "{}",
        kept.stderr
    );
}

/// Several targets and a destination that holds one image: refused before anything runs, at the
/// argument, with the spelling that works; `--push` when nothing selected declares a name.
#[test]
fn several_targets_need_a_destination_per_target() {
    let mono = copy_dir(&repo().join("examples/monorepo"));
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["//services/...", "-o", "type=oci,dest=out"],
            &[
                "3 targets are selected (//services/api:image, //services/web:image, //services/worker:image), but this output takes one image",
                "put `{target}` in dest to write one per target: `-o type=oci,dest=out/{target}`",
            ],
        ),
        (
            &["//services/...", "-t", "example.com/app:1"],
            &[
                "but a -t name takes one image",
                "declare each target's names in .build",
            ],
        ),
        (
            &[
                "//services/...",
                "-o",
                "type=registry,name=example.com/app:1",
            ],
            &["but a registry output takes one image"],
        ),
        (
            &["//base:base", "//lib/greet:lib", "--push"],
            &[
                "--push needs a name to push to, and no target declares one (//base:base, //lib/greet:lib)",
                "tagged [\"HOST/NAME:TAG\"]",
            ],
        ),
    ];
    for (args, wanted) in cases {
        let out = Kiln::new().current_dir(mono.path()).args(args).run();
        out.expect_code(2);
        // The renderer wraps long messages; compare without the whitespace it moves.
        let squeezed = |s: &str| s.replace("\n  | ", "").replace(char::is_whitespace, "");
        for w in wanted {
            assert!(
                squeezed(&out.stderr).contains(&squeezed(w)),
                "{args:?}: want {w:?} in\n{}",
                out.stderr
            );
        }
        assert!(out.steps().is_empty(), "{}", out.stderr);
    }
}

/// `--load` of several targets: each service lands in the Docker Engine under its own two tags
/// (`docker image inspect` shows the tags and the service's own title label).
#[test]
fn several_targets_load_each_under_its_tags() {
    let Some(dockerd) = crate::load::Dockerd::start() else {
        return;
    };
    let mono = copy_dir(&repo().join("examples/monorepo"));
    let out = Kiln::new()
        .current_dir(mono.path())
        .env("DOCKER_HOST", dockerd.host())
        .args(["//services/...", "--load"])
        .args(["--param", "registry=kiln-release", "--param", "version=2.0"])
        .arg("--build-context")
        .arg(format!("busybox=oci-layout://{}", base_image().display()))
        .run();
    out.success();
    for service in SERVICES {
        let inspect = dockerd.docker(&["image", "inspect", &format!("kiln-release/{service}:2.0")]);
        let image = &serde_json::from_str::<Value>(&inspect).expect("inspect JSON")[0];
        let mut tags: Vec<&str> = image["RepoTags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        tags.sort();
        assert_eq!(
            tags,
            [
                format!("kiln-release/{service}:2.0"),
                format!("kiln-release/{service}:latest")
            ]
        );
        assert_eq!(
            image["Config"]["Labels"]["org.opencontainers.image.title"], service,
            "{inspect}"
        );
    }
}

/// One target, two registries, the second refusing (it wants a login): the push fails, and the first
/// registry, which got every blob, gets no manifest either, so no tag names a half-released batch.
#[test]
fn a_batch_that_fails_while_uploading_tags_nothing() {
    let Some((_regs, addrs)) = start_registries("release all-or-nothing", &[], &["open", "auth"])
    else {
        return;
    };
    let ctx = crate::support::context(&[(
        "app.build",
        "param open: String\nparam auth: String\n\ntarget app: Image = scratch().copy(files({\"hello\": \"hi\\n\"}), [\".\"], \"/\")\n  tagged [\"${open}/release/app:1\", \"${auth}/release/app:1\"]\n",
    )]);
    let out = Kiln::new()
        .args(["-f", "app.build", "--push"])
        .args(["--param", &format!("open={}", addrs[0])])
        .args(["--param", &format!("auth={}", addrs[1])])
        .arg(ctx.path())
        .current_dir(ctx.path())
        .run();
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains(&addrs[1]), "{}", out.stderr);
    let inspect = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{}/release/app:1", addrs[0]))
        .output()
        .expect("cannot run skopeo");
    assert!(
        !inspect.status.success(),
        "the open registry got a tag: {}",
        String::from_utf8_lossy(&inspect.stdout)
    );
}

/// `kiln graph` shows each root's declared tags, params applied (text: beside the root; JSON: the
/// root's `tags`, absent for a root that declares none), for release tooling to read without building.
#[test]
fn graph_shows_the_declared_tags() {
    let mono = copy_dir(&repo().join("examples/monorepo"));
    let graph = |format: &str| {
        let out = Kiln::graph()
            .current_dir(mono.path())
            .args(["--format", format, "//services/api:image", "//base:base"])
            .args([
                "--param",
                "registry=r.example/team",
                "--param",
                "version=3.1",
            ])
            .run();
        out.success();
        out.stdout
    };
    let text = graph("text");
    assert!(
        text.lines()
            .any(|l| l.starts_with("root //services/api:image: sha256:")
                && l.ends_with("  tagged r.example/team/api:3.1, r.example/team/api:latest")),
        "{text}"
    );
    let json: Value = serde_json::from_str(&graph("json")).unwrap();
    let roots = json["roots"].as_array().unwrap();
    assert_eq!(
        roots[0]["tags"],
        serde_json::json!(["r.example/team/api:3.1", "r.example/team/api:latest"])
    );
    assert!(roots[1].get("tags").is_none(), "{}", roots[1]);
}
