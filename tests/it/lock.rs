//! `kiln lock` pins each registry base image's tag to the manifest digest it names, each `ADD <url>` to
//! its content's SHA-256 and each `ADD <git>` ref to its commit, and `kiln build --locked` builds only
//! with those: a tag moved to another image, a changed download, a moved ref, or an input the lock lacks
//! is an error at its line until `kiln lock --update` takes the new one. The registry's own answer
//! (skopeo), sha2 over the served bytes and git's `rev-parse` judge what each input resolves to, umoci
//! what the image holds.

use std::path::Path;

use serde_json::{Value, json};

use crate::add_git::{GitServer, git};
use crate::add_url::Server;
use crate::support::{
    Kiln, arm64_base_image, base_image, base_image_with, context, multi_platform_base,
    start_registries, tempdir, tool, unpack,
};

/// Pushes the busybox base with `GREETING=greeting` in its Env to `image`; returns the manifest digest
/// the registry now serves for it.
pub(crate) fn push_base(image: &str, greeting: &str) -> String {
    let base = base_image_with(|c| c["Env"] = json!(["PATH=/bin", format!("GREETING={greeting}")]));
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:latest", base.path().display()),
            &format!("docker://{image}"),
        ],
    );
    let seen: Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ],
    ))
    .unwrap();
    seen["Digest"].as_str().unwrap().to_string()
}

/// The lock's entries (its header comments left out).
pub(crate) fn lock_of(ctx: &Path) -> Vec<String> {
    std::fs::read_to_string(ctx.join("kiln.lock"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(String::from)
        .collect()
}

/// The error's words on one line: the renderer wraps long messages (`  | ` before each continued line).
fn words(err: &str) -> String {
    let words: Vec<&str> = err.split_whitespace().filter(|w| *w != "|").collect();
    words.join(" ")
}

/// `kiln lock`: it asks registries only, so it needs no store.
fn kiln_lock() -> Kiln {
    Kiln::bare().arg("lock")
}

/// Builds `ctx` with `--locked` into a layout; returns the image's /g and /tool.txt.
fn locked_build(store: &Path, ctx: &Path) -> (String, String) {
    let oci = tempdir("oci-");
    Kiln::build_in(store)
        .arg("--locked")
        .arg("-o")
        .arg(format!("type=oci,dest={}", oci.path().display()))
        .arg(ctx)
        .run()
        .success();
    let image = unpack(oci.path());
    let read = |p: &str| std::fs::read_to_string(image.rootfs.join(p)).unwrap();
    (read("g"), read("tool.txt"))
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

#[test]
fn a_locked_build_follows_the_lock_until_it_is_updated() {
    let Some((_dir, addrs)) = start_registries("lock tests", &[], &["open"]) else {
        return;
    };
    let image = format!("{}/lock/base:1", addrs[0]);
    let first = push_base(&image, "one");
    let server = Server::start();
    server.put("tool.txt", b"v1", 1_000);
    // As the lock shows it: a signed URL's query value is a credential, never written.
    let url = server.url("/files/tool.txt?sig=***");
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "ARG TAG=1\nFROM {}/lock/base:$TAG\nARG FILE=tool.txt\nADD {} /tool.txt\nRUN echo \"$GREETING\" > /g\n",
            addrs[0],
            server.url("/files/$FILE?sig=s3cr3t-sig"),
        ),
    )]);
    let store = tempdir("store-");
    let run_locked = |extra: &[&str]| {
        Kiln::build_in(store.path())
            .arg("--locked")
            .args(extra)
            .arg(ctx.path())
            .run()
    };

    kiln_lock().arg(ctx.path()).run().success();
    assert_eq!(
        lock_of(ctx.path()),
        [
            format!("image {image} linux/amd64 {first}  # Dockerfile:2"),
            format!("url {url} {}  # Dockerfile:4", sha256(b"v1")),
        ]
    );
    assert!(
        !std::fs::read_to_string(ctx.path().join("kiln.lock"))
            .unwrap()
            .contains("s3cr3t")
    );
    let built = locked_build(store.path(), ctx.path());
    assert_eq!(built, ("one\n".into(), "v1".into()));

    // The tag moves and the file changes: a locked build refuses the image, at the FROM, and says how
    // to take it.
    let second = push_base(&image, "two");
    assert_ne!(first, second);
    server.put("tool.txt", b"v2", 2_000);
    let out = run_locked(&[]);
    let err = &words(&out.expect_code(2).stderr);
    assert!(err.contains(&format!("base image `{image}` (linux/amd64) now resolves to {second}, but kiln.lock pins {first}")), "{err}");
    assert!(err.contains("Dockerfile:2"), "{err}");
    assert!(
        err.contains(&format!("FROM {}/lock/base:$TAG", addrs[0])),
        "{err}"
    );
    assert!(
        err.contains(&format!("kiln lock --update {image}")),
        "{err}"
    );

    // `kiln lock` keeps what the lock holds; `--update NAME` asks again for that input only.
    kiln_lock().arg(ctx.path()).run().success();
    assert!(lock_of(ctx.path())[0].contains(&first));
    kiln_lock()
        .arg("--update")
        .arg(&image)
        .arg(ctx.path())
        .run()
        .success();
    assert_eq!(
        lock_of(ctx.path()),
        [
            format!("image {image} linux/amd64 {second}  # Dockerfile:2"),
            format!("url {url} {}  # Dockerfile:4", sha256(b"v1")),
        ]
    );

    // The download still pins the old content: a store that fetched it before builds with it (a
    // matched checksum is never fetched again); on another store the fetch refuses the new content, at
    // the ADD.
    let built = locked_build(store.path(), ctx.path());
    assert_eq!(built, ("two\n".into(), "v1".into()));
    let out = Kiln::new().arg("--locked").arg(ctx.path()).run();
    let err = &words(&out.expect_code(1).stderr);
    assert!(
        err.contains(&format!(
            "checksum mismatch for `{url}`: expected {}, got {}",
            sha256(b"v1"),
            sha256(b"v2")
        )),
        "{err}"
    );
    assert!(err.contains("Dockerfile:4"), "{err}");
    assert!(err.contains("kiln lock --update URL"), "{err}");

    kiln_lock()
        .arg("--update")
        .arg(&url)
        .arg(ctx.path())
        .run()
        .success();
    assert!(lock_of(ctx.path())[1].contains(&sha256(b"v2")));
    let built = locked_build(store.path(), ctx.path());
    assert_eq!(built, ("two\n".into(), "v2".into()));

    // A download the lock lacks (another file through the ARG) is refused at its ADD, before anything
    // is fetched.
    server.put("other.txt", b"o", 1_000);
    let out = run_locked(&["--build-arg", "FILE=other.txt"]);
    let err = &words(&out.expect_code(2).stderr);
    assert!(
        err.contains(&format!(
            "`{}` is not in kiln.lock",
            server.url("/files/other.txt?sig=***")
        )),
        "{err}"
    );
    assert!(err.contains("Dockerfile:4"), "{err}");

    // A base the lock lacks (another tag through the ARG) is refused at its FROM.
    let out = run_locked(&["--build-arg", "TAG=2"]);
    let err = &words(&out.expect_code(2).stderr);
    assert!(
        err.contains(&format!(
            "base image `{}/lock/base:2` (linux/amd64) is not in kiln.lock",
            addrs[0]
        )),
        "{err}"
    );
    assert!(err.contains("Dockerfile:2"), "{err}");

    // `--update` of a name the build does not use is a mistake on the command line.
    let out = kiln_lock()
        .args(["--update", "busybox:9"])
        .arg(ctx.path())
        .run();
    let err = &words(&out.expect_code(2).stderr);
    assert!(
        err.contains("`busybox:9` is no input of this build"),
        "{err}"
    );

    // Every input is asked again with a bare `--update`; the lock is unchanged when the tag is.
    kiln_lock().arg(ctx.path()).arg("--update").run().success();
    assert!(lock_of(ctx.path())[0].contains(&second));
}

#[test]
fn locked_without_a_lock_is_an_error() {
    let ctx = context(&[("Dockerfile", "FROM scratch\nCOPY Dockerfile /\n")]);
    let out = Kiln::new().arg("--locked").arg(ctx.path()).run();
    let err = &words(&out.expect_code(2).stderr);
    assert!(err.contains("--locked, but there is no"), "{err}");
    assert!(err.contains("kiln.lock"), "{err}");
    assert!(err.contains("run `kiln lock`"), "{err}");
}

/// The digest of the one image a layout's `index.json` names.
fn manifest_digest(layout: &Path) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A multi-platform tag is pinned per platform: each platform's own image manifest, and a locked build
/// for a platform the lock does not cover is refused.
#[test]
fn each_platform_of_a_multi_platform_tag_is_pinned_on_its_own_line() {
    let Some((_dir, addrs)) = start_registries("lock platform tests", &[], &["open"]) else {
        return;
    };
    let image = format!("{}/lock/multi:1", addrs[0]);
    let multi = multi_platform_base();
    tool(
        "skopeo",
        &[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:latest", multi.path().display()),
            &format!("docker://{image}"),
        ],
    );
    let ctx = context(&[
        ("Dockerfile", &format!("FROM {image}\nCOPY f /f\n")),
        ("f", "x"),
    ]);
    let (amd64, arm64) = (
        manifest_digest(base_image()),
        manifest_digest(arm64_base_image()),
    );

    kiln_lock().arg(ctx.path()).run().success();
    assert_eq!(
        lock_of(ctx.path()),
        [format!("image {image} linux/amd64 {amd64}  # Dockerfile:1")]
    );
    let arm_build = || {
        Kiln::new()
            .args(["--locked", "--platform", "linux/arm64"])
            .arg(ctx.path())
            .run()
    };
    let out = arm_build();
    let err = words(&out.expect_code(2).stderr);
    assert!(
        err.contains(&format!(
            "base image `{image}` (linux/arm64) is not in kiln.lock"
        )),
        "{err}"
    );

    kiln_lock()
        .args(["--platform", "linux/amd64,linux/arm64"])
        .arg(ctx.path())
        .run()
        .success();
    assert_eq!(
        lock_of(ctx.path()),
        [
            format!("image {image} linux/amd64 {amd64}  # Dockerfile:1"),
            format!("image {image} linux/arm64 {arm64}  # Dockerfile:1"),
        ]
    );
    arm_build().success();
}

/// A registry that cannot be reached is an error at the FROM that names the image, and no lock is
/// written.
#[test]
fn an_unreachable_registry_is_an_error_at_the_from() {
    // Port 9 (discard) on loopback: nothing answers.
    let ctx = context(&[(
        "Dockerfile",
        "FROM scratch AS empty\nFROM 127.0.0.1:9/kiln/offline:1\nCOPY --from=empty / /\n",
    )]);
    let out = kiln_lock().arg(ctx.path()).run();
    assert_ne!(out.code, Some(0), "{}", out.stderr);
    for want in [
        "cannot pull `127.0.0.1:9/kiln/offline:1`",
        "Dockerfile:2:6",
        "FROM 127.0.0.1:9/kiln/offline:1",
    ] {
        assert!(out.stderr.contains(want), "{want:?} in\n{}", out.stderr);
    }
    assert!(!ctx.path().join("kiln.lock").exists());
}

/// A git source's ref is pinned to its commit: a locked build checks out that commit and refuses, at the
/// ADD, a ref that has moved; `kiln lock --update URL` takes the new commit. The commits are git's own
/// (`rev-parse`).
#[test]
fn a_git_ref_is_locked_to_its_commit() {
    let server = GitServer::start();
    let url = server.url("#other");
    let ctx = context(&[("Dockerfile", &format!("FROM scratch\nADD {url} /src\n"))]);
    kiln_lock().arg(ctx.path()).run().success();
    assert_eq!(
        lock_of(ctx.path()),
        [format!("git {url} {}  # Dockerfile:2", server.main)]
    );
    let a_txt = |kiln: Kiln| {
        let oci = tempdir("oci-");
        kiln.arg("--locked")
            .arg("-o")
            .arg(format!("type=oci,dest={}", oci.path().display()))
            .arg(ctx.path())
            .run()
            .success();
        let image = unpack(oci.path());
        std::fs::read_to_string(image.rootfs.join("src/a.txt")).unwrap()
    };
    assert_eq!(a_txt(Kiln::new()), "two\n");

    // The branch moves back to the first commit.
    let bare = server.root.path().join("repo.git");
    git(&bare, &["update-ref", "refs/heads/other", &server.v1]);
    let out = Kiln::new().arg("--locked").arg(ctx.path()).run();
    let err = &words(&out.expect_code(1).stderr);
    assert!(
        err.contains(&format!(
            "checksum mismatch for `{url}`: expected commit {}, got {}",
            server.main, server.v1
        )),
        "{err}"
    );
    assert!(err.contains("Dockerfile:2"), "{err}");
    assert!(err.contains("kiln lock --update URL"), "{err}");

    kiln_lock()
        .arg("--update")
        .arg(&url)
        .arg(ctx.path())
        .run()
        .success();
    assert_eq!(
        lock_of(ctx.path()),
        [format!("git {url} {}  # Dockerfile:2", server.v1)]
    );
    assert_eq!(a_txt(Kiln::new()), "one\n");

    // A repository the lock lacks is refused at its ADD; a commit as the ref needs no entry.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM scratch\nADD {url} /src\nADD {} /v1\nADD {} /main\n",
            server.url("#v1"),
            server.url(&format!("#{}", server.main))
        ),
    )
    .unwrap();
    let out = Kiln::new().arg("--locked").arg(ctx.path()).run();
    let err = &words(&out.expect_code(2).stderr);
    assert!(
        err.contains(&format!("`{}` is not in kiln.lock", server.url("#v1"))),
        "{err}"
    );
    assert!(err.contains("Dockerfile:3"), "{err}");
    kiln_lock().arg(ctx.path()).run().success();
    assert_eq!(
        lock_of(ctx.path()),
        [
            format!("git {url} {}  # Dockerfile:2", server.v1),
            format!("git {} {}  # Dockerfile:3", server.url("#v1"), server.v1),
        ]
    );
}

/// A `.build` target's inputs are locked as a Dockerfile's: its `git(...)` source here, used where the
/// file says.
#[test]
fn a_build_file_target_is_locked_too() {
    let server = GitServer::start();
    let url = server.url("#other");
    let ctx = context(&[(
        "app.build",
        &format!("target app: Image = image(\"scratch\").add(git(\"{url}\"), [], \"/src\")\n"),
    )]);
    let file = ctx.path().join("app.build");
    kiln_lock()
        .arg("-f")
        .arg(&file)
        .arg(ctx.path())
        .run()
        .success();
    assert_eq!(
        lock_of(ctx.path()),
        [format!("git {url} {}  # app.build:1", server.main)]
    );
    let bare = server.root.path().join("repo.git");
    git(&bare, &["update-ref", "refs/heads/other", &server.v1]);
    let out = Kiln::new()
        .args(["--locked", "-f"])
        .arg(&file)
        .arg(ctx.path())
        .run();
    let err = &words(&out.expect_code(1).stderr);
    assert!(
        err.contains(&format!(
            "expected commit {}, got {}",
            server.main, server.v1
        )),
        "{err}"
    );
    assert!(err.contains("app.build:1"), "{err}");
}

/// `--hermetic`: locked, every step without network, and the same image from two empty stores without
/// SOURCE_DATE_EPOCH (the digests are umoci's layouts' own). A flag asking for network contradicts it.
#[test]
fn two_hermetic_builds_on_two_stores_give_one_image() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN echo hi > /f && cat /proc/net/dev > /net\n",
    )]);
    kiln_lock().with_base().arg(ctx.path()).run().success();
    let build = || {
        let oci = tempdir("oci-");
        Kiln::new()
            .with_base()
            .arg("--hermetic")
            .arg("-o")
            .arg(format!("type=oci,dest={}", oci.path().display()))
            .arg(ctx.path())
            .run()
            .success();
        let image = unpack(oci.path());
        let net = std::fs::read_to_string(image.rootfs.join("net")).unwrap();
        let interfaces: Vec<&str> = net
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        assert_eq!(interfaces, ["lo"], "{net}");
        manifest_digest(oci.path())
    };
    let first = build();
    // Seconds apart: an image that carried its build time (as without --hermetic) would differ.
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    assert_eq!(build(), first);

    for flags in [["--network", "host"], ["--allow", "network.host"]] {
        let out = Kiln::new()
            .with_base()
            .arg("--hermetic")
            .args(flags)
            .arg(ctx.path())
            .run();
        let err = &words(&out.expect_code(2).stderr);
        assert!(
            err.contains(&format!("--hermetic, but {}", flags.join(" "))),
            "{err}"
        );
    }
}
