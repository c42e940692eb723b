//! The `.build` language built for real: the secrets example gives the Dockerfile's image, the monorepo
//! example builds everything once and rebuilds only what a change affects, and `kiln affected` and
//! `kiln query` name exactly the right targets.

use std::path::Path;
use std::process::Command;

use crate::support::{
    EXAMPLE_PASSWORD, Kiln, base_image, context, copy_dir, encodings, files_under, leaks, repo,
    tempdir, tool, unpack,
};

/// The same build, written both ways, is one graph: the `.build` build after the Dockerfile build runs
/// nothing, exports the same image, and holds no trace of the secret.
#[test]
fn secrets_example_in_build_language_is_the_dockerfile_image() {
    let store = tempdir("store-");
    let out = tempdir("out-");
    let build = |file: Option<&str>, dest: &Path| {
        let mut k = Kiln::build_in(store.path()).current_dir(repo()).with_base();
        if let Some(f) = file {
            k = k.args(["-f", f]);
        }
        k.args([
            "--secret",
            "id=mysecret,src=examples/secrets/secrets.json",
            "-o",
        ])
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg("examples/secrets")
        .run()
    };
    let from_dockerfile = out.path().join("dockerfile");
    let from_build = out.path().join("build");
    let first = build(None, &from_dockerfile);
    first.success();
    let second = build(Some("examples/secrets/app.build"), &from_build);
    second.success();
    assert_eq!(second.summary().0, 0, "nothing runs:\n{}", second.stderr);
    assert_eq!(
        first.stdout.trim(),
        second.stdout.trim(),
        "one manifest digest"
    );

    let layout = format!("oci:{}:latest", from_build.display());
    let inspect: serde_json::Value =
        serde_json::from_str(&tool("skopeo", &["inspect", &layout])).expect("skopeo prints JSON");
    assert_eq!(inspect["Digest"].as_str(), Some(second.stdout.trim()));
    let image = unpack(&from_build);
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("app/account.txt")).expect("account.txt"),
        "user=deploy-bot\n"
    );
    let found = leaks(&files_under(&from_build), EXAMPLE_PASSWORD.as_bytes());
    assert!(found.is_empty(), "the password leaked: {found:?}");
    assert!(!encodings(EXAMPLE_PASSWORD.as_bytes()).is_empty());

    let digest = |args: &[&str]| {
        let out = Kiln::graph()
            .current_dir(repo())
            .args(["--digest"])
            .args(args)
            .arg("examples/secrets")
            .run();
        out.success();
        out.stdout
    };
    assert_eq!(digest(&[]), digest(&["-f", "examples/secrets/app.build"]));
}

/// A copy of the monorepo example, and the command line that builds its targets from the fixture base.
fn monorepo() -> tempfile::TempDir {
    copy_dir(&repo().join("examples/monorepo"))
}

fn build_all(dir: &Path, store: &Path) -> crate::support::Output {
    Kiln::build_in(store)
        .current_dir(dir)
        .arg("//...")
        .arg("--build-context")
        .arg(format!("busybox=oci-layout://{}", base_image().display()))
        .run()
}

fn kiln_in(dir: &Path, args: &[&str]) -> Vec<String> {
    let out = Kiln::bare().current_dir(dir).args(args).run();
    out.success();
    out.stdout.lines().map(String::from).collect()
}

const SERVICES: [&str; 3] = [
    "//services/api:image",
    "//services/web:image",
    "//services/worker:image",
];

#[test]
fn monorepo_builds_shared_nodes_once_and_rebuilds_only_the_changed_service() {
    let repo_dir = monorepo();
    let dir = repo_dir.path();
    let store = tempdir("store-");

    let first = build_all(dir, store.path());
    first.success();
    let steps = first.steps();
    // The base and the library are shared by all three services and built once.
    let base_runs = steps
        .iter()
        .filter(|s| s.name.contains("/etc/passwd"))
        .count();
    assert_eq!(base_runs, 1, "{}", first.stderr);
    let lib_tests = steps
        .iter()
        .filter(|s| s.name.contains("sh /app/lib/test.sh"))
        .count();
    assert_eq!(lib_tests, 1, "{}", first.stderr);
    for s in SERVICES {
        assert!(
            steps
                .iter()
                .any(|st| st.name.starts_with(&format!("[{s}]"))),
            "{s} was built:\n{}",
            first.stderr
        );
    }
    let (ran, _) = first.summary();

    let again = build_all(dir, store.path());
    again.success();
    assert_eq!(again.summary(), (0, ran), "{}", again.stderr);

    // One file of one service: its copy and its check step run again, nothing else.
    std::fs::write(
        dir.join("services/api/main.sh"),
        "#!/bin/sh\n. /app/lib/greet.sh\ngreet api\necho api v2\n",
    )
    .unwrap();
    let edited = build_all(dir, store.path());
    edited.success();
    assert_eq!(edited.summary().0, 2, "{}", edited.stderr);
    for step in edited.steps() {
        if step.state == crate::support::StepState::Done && !step.name.starts_with("FROM") {
            assert!(
                step.name.starts_with("[//services/api:image]"),
                "only the api service re-ran: {step:?}\n{}",
                edited.stderr
            );
        }
    }
}

#[test]
fn affected_and_query_name_exactly_the_right_targets() {
    let repo_dir = monorepo();
    let dir = repo_dir.path();
    assert_eq!(
        kiln_in(dir, &["affected", "--files", "services/api/main.sh"]),
        ["//services/api:image"]
    );
    let mut everything_on_lib = vec!["//lib/greet:lib".to_string()];
    everything_on_lib.extend(SERVICES.iter().map(|s| s.to_string()));
    assert_eq!(
        kiln_in(dir, &["affected", "--files", "lib/greet/greet.sh"]),
        everything_on_lib
    );
    // The shared function every service imports: the three services, not the library.
    assert_eq!(
        kiln_in(dir, &["affected", "--files", "services/common.build"]),
        SERVICES
    );
    // A file no step reads affects nothing.
    assert!(kiln_in(dir, &["affected", "--files", "README.md"]).is_empty());
    assert_eq!(
        kiln_in(dir, &["query", "rdeps", "//lib/greet:lib"]),
        SERVICES
    );
    assert_eq!(
        kiln_in(dir, &["query", "deps", "//services/web:image"]),
        ["//base:base", "//lib/greet:lib"]
    );

    // --since: the digests of every target at a git revision against the working tree.
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .current_dir(dir)
            .args(["-c", "user.name=kiln", "-c", "user.email=kiln@example.com"])
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "monorepo"]);
    assert!(kiln_in(dir, &["affected", "--since", "HEAD"]).is_empty());
    std::fs::write(
        dir.join("services/web/main.sh"),
        "#!/bin/sh\necho changed\n",
    )
    .unwrap();
    assert_eq!(
        kiln_in(dir, &["affected", "--since", "HEAD"]),
        ["//services/web:image"]
    );
    // Touching a file without changing it affects nothing; changing the base affects everything.
    git(&["checkout", "-q", "--", "services/web/main.sh"]);
    let base = dir.join("base/BUILD.build");
    let text = std::fs::read_to_string(&base).unwrap();
    std::fs::write(&base, text.replace("/app/bin:", "/app/bin:/opt/bin:")).unwrap();
    let mut all = vec!["//base:base".to_string()];
    all.extend(everything_on_lib);
    assert_eq!(kiln_in(dir, &["affected", "--since", "HEAD"]), all);
}

/// Runs git (the judge that makes the history kiln reads) in `dir`; returns its trimmed stdout.
fn git_in(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=kiln", "-c", "user.email=kiln@example.com"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `affected --since` reads the revision itself: with no `git` on PATH, in a monorepo below the work
/// tree's top, any revision git accepts names the tree, written as `git archive` gives it (the executable
/// bit and a symlink compare equal to the work tree's; a submodule is an empty directory).
#[test]
fn affected_since_reads_the_revision_without_git() {
    let top = tempdir("git-top-");
    let mono = top.path().join("mono");
    std::fs::rename(monorepo().keep(), &mono).unwrap();
    let api = mono.join("services/api/main.sh");
    std::fs::set_permissions(&api, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let web = mono.join("services/web/main.sh");
    std::fs::remove_file(&web).unwrap();
    std::os::unix::fs::symlink("../api/main.sh", &web).unwrap();
    git_in(top.path(), &["init", "-q"]);
    git_in(top.path(), &["add", "-A"]);
    git_in(top.path(), &["commit", "-qm", "one"]);
    let first = git_in(top.path(), &["rev-parse", "HEAD"]);
    // A submodule (a gitlink to a commit of another repository), which `git archive` writes empty.
    let gitlink = format!("160000,{first},mono/vendor/sub");
    git_in(
        top.path(),
        &["update-index", "--add", "--cacheinfo", &gitlink],
    );
    git_in(top.path(), &["commit", "-qm", "submodule"]);
    git_in(top.path(), &["tag", "-a", "v1", "-m", "v1"]);
    git_in(top.path(), &["branch", "before"]);
    std::fs::set_permissions(&api, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    git_in(top.path(), &["commit", "-qam", "not executable"]);

    let no_git = tempdir("no-git-");
    let since = |rev: &str| {
        let out = Kiln::bare()
            .current_dir(&mono)
            .env("PATH", no_git.path())
            .args(["affected", "--since", rev])
            .run();
        out.success();
        out.stdout.lines().map(String::from).collect::<Vec<_>>()
    };
    assert!(since("HEAD").is_empty());
    for rev in ["HEAD~1", "v1", "before", &first[..7], "HEAD^^{tree}"] {
        assert_eq!(since(rev), ["//services/api:image"], "--since {rev}");
    }
    // The symlink's target is what is compared: pointing it elsewhere affects its service.
    std::fs::remove_file(&web).unwrap();
    std::os::unix::fs::symlink("../worker/main.sh", &web).unwrap();
    assert_eq!(since("HEAD"), ["//services/web:image"]);
}

/// `affected --since` outside a git repository, and with a revision the repository does not have: input
/// errors (exit 2) pointing at the revision on the command line, each with a hint.
#[test]
fn affected_since_errors_name_the_revision() {
    // Outside the suite's temp dir, which is inside kiln's own repository.
    let outside = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("examples/monorepo/kiln.toml"),
        outside.path().join("kiln.toml"),
    )
    .unwrap();
    let out = Kiln::bare()
        .current_dir(outside.path())
        .args(["affected", "--since", "HEAD~1"])
        .run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("is not in a git repository")
            && out.stderr.contains("kiln affected --since HEAD~1")
            && out.stderr.contains("--files"),
        "{}",
        out.stderr
    );

    let repo_dir = monorepo();
    let dir = repo_dir.path();
    git_in(dir, &["init", "-q"]);
    git_in(dir, &["add", "-A"]);
    git_in(dir, &["commit", "-qm", "monorepo"]);
    for rev in ["no-such-branch", "HEAD~5", "HEAD:kiln.toml"] {
        let out = Kiln::bare()
            .current_dir(dir)
            .args(["affected", "--since", rev])
            .run();
        out.expect_code(2);
        assert!(
            out.stderr.contains(&format!("revision `{rev}`"))
                && out.stderr.contains(&format!("kiln affected --since {rev}"))
                && out.stderr.contains(&"^".repeat(rev.len()))
                && out.stderr.contains(
                    "give a revision git knows, such as HEAD~1, a branch, a tag or a commit"
                ),
            "--since {rev}:\n{}",
            out.stderr
        );
    }
}

#[test]
fn converted_examples_and_std_are_formatted() {
    let out = Kiln::bare()
        .current_dir(repo())
        .args(["fmt", "--check", "examples", "std"])
        .run();
    out.success();
}

/// A `Dir` target is a directory of an image: `-o type=local` writes just its files.
#[test]
fn a_dir_target_exports_just_its_files() {
    let ctx = crate::support::context(&[(
        "app.build",
        "let built: Image = image(\"base\").run(\"mkdir -p /out && echo hi > /out/a.txt\")\n\ntarget out: Dir = built.dir(\"/out\")\n",
    )]);
    let dest = tempdir("out-");
    let out = Kiln::new()
        .with_base()
        .arg("-f")
        .arg(ctx.path().join("app.build"))
        .arg("-o")
        .arg(format!(
            "type=local,dest={}",
            dest.path().join("out").display()
        ))
        .arg(ctx.path())
        .run();
    out.success();
    let names: Vec<String> = std::fs::read_dir(dest.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a.txt"]);
    assert_eq!(
        std::fs::read_to_string(dest.path().join("out/a.txt")).unwrap(),
        "hi\n"
    );
}

/// Several targets cannot share one output: refused before anything runs, naming them.
#[test]
fn several_targets_and_one_output_are_refused() {
    let repo_dir = monorepo();
    let out = Kiln::new()
        .current_dir(repo_dir.path())
        .args(["//services/...", "-o", "type=oci,dest=out"])
        .run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("3 targets are selected")
            && out.stderr.contains("//services/web:image"),
        "{}",
        out.stderr
    );
    assert!(out.steps().is_empty(), "{}", out.stderr);
}

/// Lexical scoping, built for real: the imported helper of `tests/cases/build/accept/` mounts its own
/// module's secret (`lib-token`) and names its own `tag`, though the module calling it has a secret
/// `token` (`main-token`), a `tag`, and passes locals of those names. The step gets exactly the secret
/// the checker resolved: it runs (`lib-token` is there) and counts the bytes of `lib-token`'s value.
#[test]
fn an_imported_helper_mounts_its_own_modules_secret() {
    let cases = repo().join("tests/cases/build/accept");
    let dir = tempdir("scope-");
    for f in ["_scope_lib.build", "scope-imported-helper-own-secret.build"] {
        std::fs::copy(cases.join(f), dir.path().join(f)).expect("copy case");
    }
    let app = dir.path().join("scope-imported-helper-own-secret.build");
    let text = std::fs::read_to_string(&app)
        .unwrap()
        .replace("image(\"alpine:3.20\")", "image(\"base\")");
    std::fs::write(&app, text).unwrap();
    let lib = dir.path().join("_scope_lib.build");
    let text = std::fs::read_to_string(&lib).unwrap().replace(
        "img.run(\"publish ${tag}\"",
        "img.run(\"wc -c < /run/secrets/lib-token > /lib-token-size && echo ${tag} > /tag\"",
    );
    std::fs::write(&lib, text).unwrap();
    let secrets = tempdir("secrets-");
    let (lib_token, main_token) = (secrets.path().join("lib"), secrets.path().join("main"));
    std::fs::write(&lib_token, "the library's token").unwrap();
    std::fs::write(&main_token, "main").unwrap();
    let out = tempdir("out-");
    let layout = out.path().join("image");
    Kiln::new()
        .with_base()
        .current_dir(dir.path())
        .args(["-f", "scope-imported-helper-own-secret.build", "--secret"])
        .arg(format!("id=lib-token,src={}", lib_token.display()))
        .arg("--secret")
        .arg(format!("id=main-token,src={}", main_token.display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg(".")
        .run()
        .success();
    let image = unpack(&layout);
    let read = |f: &str| std::fs::read_to_string(image.rootfs.join(f)).expect(f);
    assert_eq!(read("lib-token-size").trim(), "19", "lib-token's 19 bytes");
    assert_eq!(read("tag").trim(), "lib-tag");
}

/// A cache mount seeded `from` a stage (or an image) has a `.build` form, `cache(..., from:, source:)`:
/// `kiln convert` writes it, the converted program has the Dockerfile's root digest, and built, its new
/// cache starts as the stage's directory.
#[test]
fn a_seeded_cache_mount_converts_and_builds_as_the_dockerfile() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base AS s\nRUN mkdir /d && echo seeded > /d/a\nFROM base\n\
         RUN --mount=type=cache,target=/c,from=s,source=/d --mount=type=bind,from=s,target=/b cat /c/a /b/d/a > /seen\n",
    )]);
    let (converted, source) = convert_dockerfile(ctx.path());
    assert!(
        source.contains("cache(\"/c\", from: s, source: \"/d\")"),
        "{source}"
    );
    let digest = |file: &Path| {
        let out = Kiln::graph()
            .with_base()
            .arg("--digest")
            .arg("-f")
            .arg(file)
            .arg(ctx.path())
            .run();
        out.success();
        out.stdout.trim().to_string()
    };
    assert_eq!(digest(&ctx.path().join("Dockerfile")), digest(&converted));

    let out = tempdir("out-");
    Kiln::new()
        .with_base()
        .arg("-f")
        .arg(&converted)
        .arg("-o")
        .arg(format!("type=oci,dest={}", out.path().display()))
        .arg(ctx.path())
        .run()
        .success();
    let image = unpack(out.path());
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("seen")).unwrap(),
        "seeded\nseeded\n"
    );
}

/// Converts `dir/Dockerfile` into `dir/app.build` with `kiln convert`; returns the file and its text.
fn convert_dockerfile(dir: &Path) -> (std::path::PathBuf, String) {
    let converted = dir.join("app.build");
    Kiln::bare()
        .args(["convert", "-f"])
        .arg(dir.join("Dockerfile"))
        .arg("-o")
        .arg(&converted)
        .run()
        .success();
    let source = std::fs::read_to_string(&converted).unwrap();
    (converted, source)
}

/// Builds the conversion and the Dockerfile of `ctx` with `BASE` the busybox base and `arg`, into
/// `build` and `docker` under the returned directory, in one store (the second build is the first's
/// graph, so it runs nothing); what each printed.
fn build_both(ctx: &Path, converted: &Path, arg: &str) -> (tempfile::TempDir, String, String) {
    let out = tempdir("out-");
    let store = tempdir("store-");
    let build = |file: &Path, dest: &Path| {
        Kiln::build_in(store.path())
            .arg("--build-arg")
            .arg(format!("BASE=oci-layout://{}", base_image().display()))
            .args(["--build-arg", arg, "-f"])
            .arg(file)
            .arg("-o")
            .arg(format!("type=oci,dest={}", dest.display()))
            .arg(ctx)
            .run()
            .success()
            .stdout
            .clone()
    };
    let from_build = build(converted, &out.path().join("build"));
    let from_dockerfile = build(&ctx.join("Dockerfile"), &out.path().join("docker"));
    (out, from_build, from_dockerfile)
}

/// `kiln convert` keeps the build args a FROM reads as params: `ARG BASE`, `ARG V=16`,
/// `FROM "${BASE}:${V}"` once converted to `image("${BASE}:${V}")` takes `--build-arg BASE=...` and
/// `V=...` and builds on the busybox base, giving the Dockerfile's own image (it used to fold into
/// `image(":16")`, which names no image).
#[test]
fn converted_from_keeps_its_build_args_and_builds() {
    let ctx = context(&[(
        "Dockerfile",
        "ARG BASE\nARG V=16\nFROM \"${BASE}:${V}\"\nRUN echo built > /v\n",
    )]);
    let (converted, source) = convert_dockerfile(ctx.path());
    assert!(
        source.contains("image(\"${BASE}:${V}\")"),
        "the FROM stays an expression of the params:\n{source}"
    );
    let (out, from_build, from_dockerfile) = build_both(ctx.path(), &converted, "V=latest");
    assert_eq!(from_build, from_dockerfile, "one image both ways");
    let image = unpack(&out.path().join("build"));
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("v")).unwrap(),
        "built\n",
        "the RUN ran on the base"
    );
    assert!(
        image.rootfs.join("bin/busybox").exists(),
        "the image is built on the base BASE and V name (`V=16` would name none)"
    );
}

/// `${TAG#v}` and `${SUFFIX:+...}` in a FROM convert to `trim_prefix` and a choice on the param, so
/// `--build-arg TAG=vlatest` still picks the image: the conversion and the Dockerfile build the same
/// image on the base (the conversion used to fold both into their defaults).
#[test]
fn converted_from_trims_build_args_as_the_dockerfile_does() {
    let ctx = context(&[(
        "Dockerfile",
        "ARG BASE\nARG TAG=v0\nARG SUFFIX\nFROM ${BASE}:${TAG#v}${SUFFIX:+-$SUFFIX}\nRUN echo built > /v\n",
    )]);
    let (converted, source) = convert_dockerfile(ctx.path());
    assert!(
        source.contains("trim_prefix(\"${TAG}\", \"v\")") && source.contains("SUFFIX"),
        "the FROM stays an expression of the params:\n{source}"
    );
    let (out, from_build, from_dockerfile) = build_both(ctx.path(), &converted, "TAG=vlatest");
    assert_eq!(from_build, from_dockerfile, "one image both ways");
    let image = unpack(&out.path().join("build"));
    assert!(
        image.rootfs.join("bin/busybox").exists(),
        "built on the base `TAG=vlatest` names once trimmed"
    );
}
