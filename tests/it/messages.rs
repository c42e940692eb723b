//! Errors compared as whole rendered text: a target cycle across monorepo packages (its path, every
//! edge at its source line, in each package's file) and `kiln fmt` given a Dockerfile.

use crate::support::{Kiln, context};

#[test]
fn a_target_cycle_across_packages_shows_its_path() {
    let repo = context(&[
        ("kiln.toml", ""),
        (
            "lib/BUILD.build",
            "target lib: Image = image(\"//app:app\").run(\"make lib\")\n",
        ),
        (
            "app/BUILD.build",
            "target base: Image = scratch()\n\ntarget app: Image = image(\"//lib:lib\").run(\"make app\")\n",
        ),
    ]);
    let out = Kiln::graph()
        .arg("//app:app")
        .current_dir(repo.path())
        .run();
    out.expect_code(2);
    let expected = "  error: cycle: //app:app → //lib:lib → //app:app
   ,-[app/BUILD.build:3:27]
 2 | 
 3 | target app: Image = image(\"//lib:lib\").run(\"make app\")
   :                           ^^^^^|^^^^^
   :                                `-- `//app:app` uses `//lib:lib`
   `----
  help: targets and lets must not refer to themselves, directly or through others: break the cycle
        at one of these uses

  note: in lib/BUILD.build
   ,-[lib/BUILD.build:1:27]
 1 | target lib: Image = image(\"//app:app\").run(\"make lib\")
   :                           ^^^^^|^^^^^
   :                                `-- `//lib:lib` uses `//app:app`
   `----

";
    assert_eq!(out.stderr, expected);
}

#[test]
fn fmt_of_a_dockerfile_points_at_convert() {
    let dir = context(&[("Dockerfile", "FROM base\nRUN true\n")]);
    let out = Kiln::bare()
        .args(["fmt", "Dockerfile"])
        .current_dir(dir.path())
        .run();
    out.expect_code(2);
    let expected = "  error: unexpected `FROM`
   ,-[Dockerfile:1:1]
 1 | FROM base
   : ^
 2 | RUN true
   `----
  help: this looks like a Dockerfile: `kiln convert -f Dockerfile` writes it as .build source,
        where `FROM` becomes `image(\"REF\")`

";
    assert_eq!(out.stderr, expected);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("Dockerfile")).unwrap(),
        "FROM base\nRUN true\n",
        "fmt rewrote the Dockerfile"
    );
}
