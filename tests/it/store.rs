//! The store under stress (SPEC §5): `kiln du`/`kiln prune`, pruning never touching a running build, a
//! build killed with SIGKILL at random moments leaving a store the next build uses, and concurrent builds
//! sharing one store.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Kiln, StepState, base_image, repo, tempdir};

const EPOCH: &str = "1700000000";

/// `kiln build` of examples/secrets into `dest`, with a fixed epoch so digests are comparable.
fn example(store: &std::path::Path, dest: &std::path::Path, extra: &[&str]) -> Command {
    let secret = repo().join("examples/secrets/secrets.json");
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(["build", "--progress", "plain", "--store"])
        .arg(store)
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base_image().display()))
        .arg("--secret")
        .arg(format!("id=mysecret,src={}", secret.display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .args(extra)
        .arg(repo().join("examples/secrets"))
        .env("SOURCE_DATE_EPOCH", EPOCH);
    c
}

fn digest_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn du_and_prune() {
    let store = tempdir("store-");
    let dest = tempdir("out-");
    let first = digest_of(
        &example(store.path(), &dest.path().join("a"), &[])
            .output()
            .unwrap(),
    );
    let du = Kiln::bare().args(["du", "--store"]).arg(store.path()).run();
    du.success();
    assert!(du.stdout.contains("cached results"), "{}", du.stdout);
    // Without a terminal to ask on, pruning everything needs --force, as `docker builder prune` does.
    let refused = Kiln::bare()
        .args(["prune", "--store"])
        .arg(store.path())
        .run();
    refused.expect_code(2);
    assert!(
        refused
            .stderr
            .contains("no terminal to ask for confirmation")
            && refused.stderr.contains("pass `-f` (`--force`)"),
        "{}",
        refused.stderr
    );
    let pruned = Kiln::bare()
        .args(["prune", "--force", "--store"])
        .arg(store.path())
        .run();
    pruned.success();
    assert!(pruned.stdout.contains("0 B left"), "{}", pruned.stdout);
    // Everything is gone, so the steps run again, and the result is the same image.
    let again = example(store.path(), &dest.path().join("b"), &[])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("7 steps run, 0 cached"));
    assert_eq!(digest_of(&again), first);

    let bad = Kiln::bare()
        .args(["prune", "--keep-storage", "lots", "--store"])
        .arg(store.path())
        .run();
    bad.expect_code(2);
    assert!(
        bad.stderr.contains("`lots` is not a size"),
        "{}",
        bad.stderr
    );
}

#[test]
fn prune_refuses_while_a_build_runs() {
    let store = tempdir("store-");
    let ctx = crate::support::context(&[("Dockerfile", "FROM base\nRUN sleep 2\n")]);
    let mut build = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "--progress", "plain", "--store"])
        .arg(store.path())
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base_image().display()))
        .arg(ctx.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let prune = Kiln::bare()
        .args(["prune", "--store"])
        .arg(store.path())
        .run();
    prune.expect_code(2);
    assert!(
        prune.stderr.contains("in use by a running build"),
        "{}",
        prune.stderr
    );
    assert!(
        build.wait().unwrap().success(),
        "the build must be unharmed"
    );
}

#[test]
fn sigkill_at_random_moments_leaves_a_usable_store() {
    let store = tempdir("store-");
    let dest = tempdir("out-");
    let reference = {
        let clean = tempdir("store-");
        digest_of(
            &example(clean.path(), &dest.path().join("reference"), &[])
                .output()
                .unwrap(),
        )
    };
    // A fixed pseudo-random sequence, so a failure can be replayed.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for round in 0..30 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % 450);
        let mut child = example(
            store.path(),
            &dest.path().join(format!("k{round}")),
            &["--no-cache"],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        let next = example(store.path(), &dest.path().join(format!("r{round}")), &[])
            .output()
            .unwrap();
        assert_eq!(
            digest_of(&next),
            reference,
            "round {round} (killed after {delay:?}): the next build differs"
        );
    }
}

#[test]
fn four_concurrent_builds_share_one_store() {
    let store = tempdir("store-");
    let dest = tempdir("out-");
    let children: Vec<_> = (0..4)
        .map(|i| {
            example(store.path(), &dest.path().join(format!("c{i}")), &[])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let digests: Vec<String> = children
        .into_iter()
        .map(|c| digest_of(&c.wait_with_output().unwrap()))
        .collect();
    assert!(digests.iter().all(|d| d == &digests[0]), "{digests:?}");
}

/// `kiln prune` on a terminal (a pty made by util-linux `script`) asks docker's question: `n` keeps the
/// store, `y` empties it.
#[test]
fn prune_asks_on_a_terminal() {
    let store = tempdir("store-");
    let dest = tempdir("out-");
    digest_of(
        &example(store.path(), &dest.path().join("a"), &[])
            .output()
            .unwrap(),
    );
    let kiln = env!("CARGO_BIN_EXE_kiln");
    let on_tty = |answer: &str| {
        let cmd = format!("{kiln} prune --store {}", store.path().display());
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf '{answer}\\n' | script -qec \"$0\" /dev/null"
            ))
            .arg(cmd)
            .output()
            .expect("script from util-linux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let total = || {
        let du = Kiln::bare().args(["du", "--store"]).arg(store.path()).run();
        du.success();
        du.stdout.lines().last().unwrap_or_default().to_string()
    };
    let before = total();
    let no = on_tty("n");
    assert!(
        no.contains("WARNING! This will remove all build cache.")
            && no.contains("Are you sure you want to continue? [y/N]")
            && no.contains("nothing pruned"),
        "{no}"
    );
    assert_eq!(total(), before, "answering n pruned");
    let yes = on_tty("y");
    assert!(yes.contains("0 B left"), "{yes}");
}

/// `du` and `prune` only read or shrink a store: a mistyped `--store` is an error, never a new store.
#[test]
fn read_only_commands_do_not_create_a_store() {
    let dir = tempdir("nostore-");
    let typo = dir.path().join("typo");
    for args in [&["du"][..], &["prune", "-f"][..]] {
        let out = Kiln::bare().args(args).arg("--store").arg(&typo).run();
        out.expect_code(2);
        assert!(
            out.stderr
                .contains(&format!("there is no kiln store at `{}`", typo.display())),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("command line:1:"), "{}", out.stderr);
        assert!(!typo.exists(), "`kiln {}` made {}", args[0], typo.display());
    }
    // KILN_STORE names a store as --store does.
    let out = Kiln::bare().arg("du").env("KILN_STORE", &typo).run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("(from KILN_STORE)") && !typo.exists(),
        "{}",
        out.stderr
    );
    // The default store not existing yet is no mistake: nothing to show.
    let out = Kiln::bare()
        .arg("du")
        .env("HOME", dir.path())
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .run();
    out.success();
    assert!(out.stdout.contains("total"), "{}", out.stdout);
    assert!(!dir.path().join("cache/kiln").exists());
}

/// A step's snapshot is placed before its files are known to be on disk: a mark says so until the
/// `syncfs` kiln starts as the build ends removes it (`store::unsynced`). A mark of an earlier boot (the
/// machine went down before that sync) makes the next build run the step again, also where the build was
/// memoised, and the image it keeps then leaves the store whole (umoci unpacks it).
#[test]
fn a_step_a_crash_may_have_cut_runs_again() {
    let ctx = crate::support::context(&[("Dockerfile", "FROM base\nRUN seq 1000 > /numbers\n")]);
    let store = tempdir("store-");
    let marks = store.path().join("unsynced");
    let build = || {
        Kiln::build_in(store.path())
            .with_base()
            .args(["-t", "crash/cut:latest"])
            .arg(ctx.path())
            .run()
    };
    let first = build();
    first.success();
    assert_eq!(first.step("seq 1000").state, StepState::Done);
    let confirmed = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::fs::read_dir(&marks).is_ok_and(|mut d| d.next().is_none())
    });
    assert!(confirmed, "the marks outlived the build by a minute");

    // Memoised: a cached build writes the memo (once its inputs are two seconds old), the next uses it.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(build().summary().0, 0);
    assert!(
        build()
            .stderr
            .contains("its steps were not looked up again")
    );

    let step = std::fs::read_dir(store.path().join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .find(|n| n.starts_with("step-"))
        .expect("the step's snapshot");
    std::fs::write(marks.join(&step), "an-earlier-boot").unwrap();
    let again = build();
    again.success();
    assert_eq!(
        again.step("seq 1000").state,
        StepState::Done,
        "{}",
        again.stderr
    );

    let out = tempdir("out-");
    let layout = out.path().join("layout");
    Kiln::bare()
        .args(["image", "export", "crash/cut:latest", "-o"])
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg("--store")
        .arg(store.path())
        .run()
        .success();
    let image = crate::support::unpack_ref(&layout, "crash/cut:latest");
    let numbers = std::fs::read_to_string(image.rootfs.join("numbers")).unwrap();
    assert_eq!(numbers.lines().count(), 1000);
}
