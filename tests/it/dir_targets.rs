//! `.build` `Dir` targets built end to end: from inline files, the context, the empty image and an
//! image's directory, each written by `-o type=local` as the tree it holds (and by `-o type=tar`, read
//! back by tar).

use std::path::Path;

use crate::support::{Kiln, context, tempdir, tool};

const PROGRAM: &str = r#"target config: Dir = files({"app.conf": "port = 8080\n", "sub/motd": "hello\n"})

target sources: Dir = context(".")

target empty: Dir = scratch().dir("/")

target site: Dir = image("base")
  .run("mkdir -p /srv/site && echo hi > /srv/site/index.html")
  .dir("/srv/site")
"#;

/// Builds target `name` of `PROGRAM` with one `-o`; returns what kiln said.
fn build(ctx: &Path, name: &str, output: &str) -> crate::support::Output {
    let out = Kiln::new()
        .with_base()
        .args(["-f", "app.build", "--target", name, "-o", output, "."])
        .current_dir(ctx)
        .run();
    out.success();
    out
}

/// The files under `dir`, relative, sorted, with their contents.
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            (rel, std::fs::read_to_string(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn dir_targets_are_written_as_their_trees() {
    let ctx = context(&[("app.build", PROGRAM), ("src/main.c", "int main;\n")]);
    let out = tempdir("dirs-");
    let dest = |n: &str| out.path().join(n);
    let local = |n: &str| format!("type=local,dest={}", dest(n).display());

    build(ctx.path(), "config", &local("config"));
    assert_eq!(
        tree(&dest("config")),
        [
            ("app.conf".to_string(), "port = 8080\n".to_string()),
            ("sub/motd".to_string(), "hello\n".to_string())
        ]
    );

    build(ctx.path(), "sources", &local("sources"));
    let sources = tree(&dest("sources"));
    assert!(
        sources.contains(&("src/main.c".to_string(), "int main;\n".to_string())),
        "{sources:?}"
    );
    assert!(sources.iter().any(|(n, _)| n == "app.build"), "{sources:?}");

    build(ctx.path(), "empty", &local("empty"));
    assert!(dest("empty").is_dir());
    assert_eq!(std::fs::read_dir(dest("empty")).unwrap().count(), 0);

    build(ctx.path(), "site", &local("site"));
    assert_eq!(
        tree(&dest("site")),
        [("index.html".to_string(), "hi\n".to_string())]
    );

    // The same tree as a tar, read back by tar.
    let tar = dest("site.tar");
    build(
        ctx.path(),
        "site",
        &format!("type=tar,dest={}", tar.display()),
    );
    assert_eq!(
        tool("tar", &["-xOf", tar.to_str().unwrap(), "index.html"]),
        "hi\n"
    );
}

#[test]
fn a_files_dir_target_shows_in_the_graph() {
    let ctx = context(&[("app.build", PROGRAM)]);
    let out = Kiln::graph()
        .args(["-f", "app.build", "--target", "config", "."])
        .current_dir(ctx.path())
        .run();
    out.success();
    assert!(out.stdout.contains("root config:"), "{}", out.stdout);
}

/// A Dir target of one package copied into an image of another (`dir("//pkg:name")`); the image's
/// filesystem, written as a tar, is read back by tar.
#[test]
fn a_dir_target_of_one_package_is_copied_into_an_image_of_another() {
    let repo = context(&[
        ("kiln.toml", ""),
        (
            "lib/BUILD.build",
            "target config: Dir = files({\"app.conf\": \"port = 8080\\n\"})\n",
        ),
        (
            "app/BUILD.build",
            "target app: Image = image(\"base\").copy(dir(\"//lib:config\"), [\".\"], \"/etc/app/\")\n",
        ),
    ]);
    let out = tempdir("mono-");
    let tar = out.path().join("app.tar");
    Kiln::new()
        .with_base()
        .arg("-o")
        .arg(format!("type=tar,dest={}", tar.display()))
        .arg("//app:app")
        .current_dir(repo.path())
        .run()
        .success();
    assert_eq!(
        tool("tar", &["-xOf", tar.to_str().unwrap(), "etc/app/app.conf"]),
        "port = 8080\n"
    );
    // The inline files belong to the package that declares them.
    let graph = Kiln::graph()
        .arg("//app:app")
        .current_dir(repo.path())
        .run();
    graph.success();
    assert!(
        graph.stdout.contains("inline files  (lib/BUILD.build:1:"),
        "{}",
        graph.stdout
    );
}
