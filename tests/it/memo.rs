//! `kiln build`'s memo of a no-op build: a build that ran no step and wrote nothing outside the store is
//! shown again, without compiling or looking anything up, while nothing it read has changed; every kind
//! of change (a source file, a context's files, a new package, the command line, a kept name, a prune)
//! is a full build again, and builds with outputs, stdin or build args from the environment are never
//! answered from a memo. A build given a secret is, and its images are searched again for the secret
//! as it is each time.

use std::path::Path;
use std::time::Duration;

use crate::support::{
    Kiln, Output, base_image, context, copy_dir, files_under, leaks, repo, tempdir, write,
};

/// The note a build answered from its memo ends with.
const MEMO: &str = "its steps were not looked up again";

/// Inputs changed within the second a build starts are not trusted (they could change again unseen):
/// a memo is written only once they are older.
fn settle() {
    std::thread::sleep(Duration::from_millis(2100));
}

fn from_memo(out: &Output) -> bool {
    out.success();
    out.stderr.contains(MEMO)
}

fn build_all(dir: &Path, store: &Path, extra: &[&str]) -> Output {
    Kiln::build_in(store)
        .current_dir(dir)
        .arg("//...")
        .arg("--build-context")
        .arg(format!("busybox=oci-layout://{}", base_image().display()))
        .args(extra)
        .run()
}

/// Builds until a build is answered from the memo: the first cached build writes it, the next uses it.
#[track_caller]
fn memoised(build: impl Fn() -> Output) -> (Output, Output) {
    settle();
    let cached = build();
    assert!(!from_memo(&cached), "{}", cached.stderr);
    assert_eq!(cached.summary().0, 0, "{}", cached.stderr);
    let again = build();
    assert!(from_memo(&again), "{}", again.stderr);
    (cached, again)
}

#[test]
fn a_monorepo_build_is_shown_from_its_memo_until_anything_it_reads_changes() {
    let copy = copy_dir(&repo().join("examples/monorepo"));
    let dir = copy.path();
    let store = tempdir("store-");
    let build = || build_all(dir, store.path(), &[]);
    build().success();
    let (cached, again) = memoised(build);
    // The same steps, all cached, the same summary.
    assert_eq!(again.steps(), cached.steps());
    assert_eq!(again.summary(), cached.summary());

    // A comment in a BUILD file.
    let api = dir.join("services/api/BUILD.build");
    let text = std::fs::read_to_string(&api).unwrap();
    write(&api, format!("{text}# a comment\n"));
    assert!(!from_memo(&build()));

    // A new file in a package's context (no step copies it, so none runs).
    memoised(build);
    write(&dir.join("services/api/extra.sh"), "echo extra\n");
    let added = build();
    assert!(!from_memo(&added));
    assert_eq!(added.summary().0, 0, "{}", added.stderr);

    // A file a step copies, edited: that step runs.
    memoised(build);
    let main = dir.join("services/api/main.sh");
    let text = std::fs::read_to_string(&main).unwrap();
    write(&main, format!("{text}echo edited\n"));
    let edited = build();
    assert!(!from_memo(&edited));
    assert!(edited.summary().0 > 0, "{}", edited.stderr);

    // A name the build keeps its image under, taken by something else: given back.
    memoised(build);
    let names = Kiln::bare()
        .args(["images", "--store"])
        .arg(store.path())
        .run();
    names.success();
    let api_latest = "registry.example.com/kiln-example/api:latest";
    assert!(names.stdout.contains(api_latest), "{}", names.stdout);
    Kiln::bare()
        .args(["image", "rm", "--store"])
        .arg(store.path())
        .arg(api_latest)
        .run()
        .success();
    let renamed = build();
    assert!(!from_memo(&renamed));
    assert!(
        renamed
            .stderr
            .contains(&format!("kept in kiln's store as {api_latest}"))
    );

    // A new package: its target is built.
    memoised(build);
    write(
        &dir.join("services/new/BUILD.build"),
        "target image: Image = image(\"//base:base\").run(\"echo new > /new\")\n",
    );
    let grown = build();
    assert!(!from_memo(&grown));
    assert!(
        grown.stderr.contains("[//services/new:image]"),
        "{}",
        grown.stderr
    );

    // Another command line is another memo.
    memoised(build);
    let one = Kiln::build_in(store.path())
        .current_dir(dir)
        .arg("//services/api:image")
        .arg("--build-context")
        .arg(format!("busybox=oci-layout://{}", base_image().display()))
        .run();
    assert!(!from_memo(&one));

    // A prune removes the results and every memo: everything is built again.
    Kiln::bare()
        .args(["prune", "-f", "--keep-storage", "0", "--store"])
        .arg(store.path())
        .run()
        .success();
    let rebuilt = build();
    assert!(!from_memo(&rebuilt));
    assert!(rebuilt.summary().0 > 0, "{}", rebuilt.stderr);
}

fn dockerfile_build(ctx: &Path, store: &Path, extra: &[&str]) -> Output {
    Kiln::build_in(store)
        .env("KILN_MEMO_TEST", "1")
        .with_base()
        .args(extra)
        .arg(ctx)
        .run()
}

const DOCKERFILE: &str = "FROM base\nCOPY app.txt /app.txt\nRUN cat /app.txt > /copy.txt\n";

#[test]
fn a_dockerfile_build_is_memoised_per_context_and_dockerfile() {
    let ctx = context(&[("Dockerfile", DOCKERFILE), ("app.txt", "one\n")]);
    let store = tempdir("store-");
    // The context is named through a link: its files are still what the memo checks.
    let links = tempdir("links-");
    let link = links.path().join("ctx");
    std::os::unix::fs::symlink(ctx.path(), &link).unwrap();
    let build = || dockerfile_build(&link, store.path(), &[]);
    build().success();
    memoised(build);

    // The context's file: the COPY and the RUN after it run again.
    write(&ctx.path().join("app.txt"), "two\n");
    let edited = build();
    assert!(!from_memo(&edited));
    assert_eq!(edited.summary().0, 2, "{}", edited.stderr);

    // The Dockerfile itself.
    memoised(build);
    write(
        &ctx.path().join("Dockerfile"),
        format!("{DOCKERFILE}RUN echo more\n"),
    );
    let longer = build();
    assert!(!from_memo(&longer));
    assert_eq!(longer.summary().0, 1, "{}", longer.stderr);

    // A .dockerignore appears: what the context offers changed.
    memoised(build);
    write(&ctx.path().join(".dockerignore"), "*.md\n");
    assert!(!from_memo(&build()));
}

/// `COPY .` walks the whole context for its cache key, and that walk is what the memo records of it
/// (it is not walked again): an entry edited, added or chmodded anywhere in it still means a build; one
/// only touched does not.
#[test]
fn a_context_copied_whole_is_memoised_until_any_entry_changes() {
    let ctx = context(&[
        ("Dockerfile", "FROM base\nCOPY . /src/\n"),
        ("a.txt", "one\n"),
        ("sub/b.txt", "two\n"),
    ]);
    let store = tempdir("store-");
    let build = || dockerfile_build(ctx.path(), store.path(), &[]);
    build().success();
    memoised(build);

    write(&ctx.path().join("sub/b.txt"), "three\n");
    let edited = build();
    assert!(!from_memo(&edited));
    assert_eq!(edited.summary().0, 1, "{}", edited.stderr);

    memoised(build);
    write(&ctx.path().join("sub/c.txt"), "new\n");
    let added = build();
    assert!(!from_memo(&added));
    assert_eq!(added.summary().0, 1, "{}", added.stderr);

    // Touched, or rewritten with what it held: what COPY read (its cache key holds contents, not
    // times) is unchanged, and the memo, reading the file again, still answers.
    memoised(build);
    let a = ctx.path().join("a.txt");
    let file = std::fs::File::options().write(true).open(&a).unwrap();
    file.set_modified(std::time::SystemTime::now()).unwrap();
    let touched = build();
    assert!(from_memo(&touched), "{}", touched.stderr);
    write(&a, "one\n");
    assert!(from_memo(&build()));
    // The same size and mode, other bytes: a build.
    write(&a, "uno\n");
    let rewritten = build();
    assert!(!from_memo(&rewritten));
    assert_eq!(rewritten.summary().0, 1, "{}", rewritten.stderr);
    // A file made executable: a build, which finds its step cached no more.
    memoised(build);
    let mut mode = std::fs::metadata(&a).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o755);
    std::fs::set_permissions(&a, mode).unwrap();
    let chmodded = build();
    assert!(!from_memo(&chmodded));
    assert_eq!(chmodded.summary().0, 1, "{}", chmodded.stderr);
}

/// No cache key holds a secret's value, so a build given one is memoised without it (nor its file's
/// stat data): a touched or edited secret is still answered from the memo. What depends on the value is
/// done again each time: the images are searched for it (a value one of them now holds is a full build,
/// which refuses it) and a value too short to search for is warned about.
#[test]
fn a_build_given_a_secret_is_memoised_and_its_images_searched_for_the_secret_each_time() {
    // Written by a step, not in its command (which the image's history would hold).
    const PUBLIC: &str = "words-any-layer-may-hold";
    let dockerfile = "FROM base\nRUN --mount=type=secret,id=token wc -c < /run/secrets/token > /len\n\
         RUN echo words-any-layer-may-$(echo hold) > /public.txt\n";
    let ctx = context(&[("Dockerfile", dockerfile)]);
    let store = tempdir("store-");
    let out = tempdir("out-");
    let secret = out.path().join("token");
    write(&secret, "first-token-value");
    let arg = format!("id=token,src={}", secret.display());
    let build = || dockerfile_build(ctx.path(), store.path(), &["--secret", &arg]);
    build().success();
    memoised(build);

    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&secret)
        .unwrap();
    file.set_modified(std::time::SystemTime::now()).unwrap();
    assert!(from_memo(&build()), "a touched secret");
    write(&secret, "second-token-value");
    let edited = build();
    assert!(from_memo(&edited), "an edited secret: {}", edited.stderr);
    assert!(!edited.stderr.contains("too short"), "{}", edited.stderr);
    write(&secret, "ab");
    let short = build();
    assert!(from_memo(&short), "{}", short.stderr);
    assert!(
        short.stderr.contains("secret `token` is shorter than"),
        "{}",
        short.stderr
    );
    // No memo, nor anything else in the store, holds a value the build was given.
    for value in ["first-token-value", "second-token-value"] {
        let found = leaks(&files_under(store.path()), value.as_bytes());
        assert!(found.is_empty(), "{value} in {found:?}");
    }

    // A value an image now holds: the build, not its memo, refuses the image, every time.
    write(&secret, PUBLIC);
    for _ in 0..2 {
        let refused = build();
        refused.expect_code(1);
        assert!(!refused.stderr.contains(MEMO), "{}", refused.stderr);
        assert!(
            refused
                .stderr
                .contains("secret `token` is in the image (raw) at /public.txt"),
            "{}",
            refused.stderr
        );
    }
}

#[test]
fn builds_that_write_outputs_or_read_stdin_are_never_memoised() {
    let ctx = context(&[("Dockerfile", DOCKERFILE), ("app.txt", "one\n")]);
    let store = tempdir("store-");
    let out = tempdir("out-");
    let dest = out.path().join("image.tar");
    let dest_arg = format!("type=oci,dest={}", dest.display());
    // `--build-arg NAME` takes its value from the environment, which a memo does not record.
    let from_env: &[&str] = &["--build-arg", "KILN_MEMO_TEST"];
    let runs: [&[&str]; 2] = [&["-o", &dest_arg], from_env];
    for extra in runs {
        dockerfile_build(ctx.path(), store.path(), extra).success();
        settle();
        for _ in 0..2 {
            // An output removed is written again: the build ran, not its memo.
            let _ = std::fs::remove_file(&dest);
            let again = dockerfile_build(ctx.path(), store.path(), extra);
            assert!(!from_memo(&again), "{}", again.stderr);
        }
        assert_eq!(dest.exists(), extra[0] == "-o");
    }

    // A Dockerfile read from stdin is not a file a memo could check.
    let piped = || {
        let mut cmd = Kiln::build_in(store.path())
            .with_base()
            .args(["-f", "-"])
            .arg(ctx.path())
            .command();
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(DOCKERFILE.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    piped();
    settle();
    for _ in 0..2 {
        assert!(!piped().contains(MEMO));
    }
}
