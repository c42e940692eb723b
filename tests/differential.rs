//! The differential corpus, kiln's side: every case under `tests/differential/cases/` is built by kiln and
//! listed by `tests/differential/listing.py` (an independent reader of the image), and the listing must be
//! the one the reference builder gave (`tests/differential/expected/`, recorded by
//! `scripts/differential.sh --record` from BuildKit, or from buildah where the case says so), except for
//! the cases `tests/differential/KNOWN_DIFFERENCES.md` names. No dockerd is needed here.
//!
//! `KILN_DIFF_CASES="001 017-foo"` runs only the cases whose names start with one of those words.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "common/diff.rs"]
mod diff;

/// The harness's own files in a case directory; the rest of the directory is the build context.
const CASE_FILES: &[&str] = &["build-args", "prepare.sh", "target", "reference"];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/differential")
}

/// What one case came to.
enum Verdict {
    Identical,
    KnownDifference,
    /// A difference nobody listed, or a listed one that is gone, or a build that failed: the report.
    Unexpected(String),
}

#[test]
fn every_case_gives_the_reference_builders_image() {
    let work = tempfile::Builder::new()
        .prefix("differential-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let bases = make_bases(work.path());
    let known = known_differences();
    let cases = selected_cases();
    assert!(
        !cases.is_empty(),
        "no case selected under tests/differential/cases/"
    );
    for name in &known {
        assert!(
            corpus().join("cases").join(name).is_dir(),
            "KNOWN_DIFFERENCES.md names `{name}`, which is not a case in tests/differential/cases/"
        );
    }
    for listing in std::fs::read_dir(corpus().join("expected")).unwrap() {
        let name = listing.unwrap().file_name().to_string_lossy().into_owned();
        let case = name.strip_suffix(".txt").unwrap_or(&name);
        assert!(
            corpus().join("cases").join(case).is_dir(),
            "tests/differential/expected/{name} belongs to no case; remove it"
        );
    }
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    // Builds are short and mostly IO and process start-up; three at a time keeps two cores busy.
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let verdict = judge(case, work.path(), &bases, known.contains(case), None);
                    results.lock().unwrap().push((case.clone(), verdict));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut same, mut listed, mut reports) = (0, 0, Vec::new());
    for (case, verdict) in results {
        match verdict {
            Verdict::Identical => same += 1,
            Verdict::KnownDifference => listed += 1,
            Verdict::Unexpected(report) => reports.push(format!("{case}: {report}")),
        }
    }
    let summary = format!(
        "differential: {} cases, {same} identical, {listed} known differences (KNOWN_DIFFERENCES.md), {} unexpected",
        cases.len(),
        reports.len()
    );
    println!("{summary}");
    assert!(reports.is_empty(), "{summary}\n\n{}", reports.join("\n\n"));
}

/// runc gives every step umask 022, whoever started BuildKit: kiln's image must not depend on the umask
/// of the user who runs it either (what a RUN creates, directories a COPY or ADD makes on its own).
#[test]
fn the_callers_umask_does_not_reach_the_image() {
    let work = tempfile::Builder::new()
        .prefix("differential-umask-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let bases = make_bases(work.path());
    let cases = [
        "085-run-mkdir-empty",
        "089-dockerignore-exception-in-ignored-dir",
        "121-copy-from-stage-file",
        "180-add-tar-implicit-parent-dirs",
    ];
    for case in cases {
        for mask in ["077", "002"] {
            if let Verdict::Unexpected(report) = judge(case, work.path(), &bases, false, Some(mask))
            {
                panic!("under umask {mask}, {case}: {report}");
            }
        }
    }
}

/// The case names, sorted, narrowed by `KILN_DIFF_CASES` when it is set.
fn selected_cases() -> Vec<String> {
    let filter: Vec<String> = std::env::var("KILN_DIFF_CASES")
        .map(|v| v.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut cases: Vec<String> = std::fs::read_dir(corpus().join("cases"))
        .expect("tests/differential/cases/ is missing")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| filter.is_empty() || filter.iter().any(|f| n.starts_with(f.as_str())))
        .collect();
    cases.sort();
    cases
}

/// The cases KNOWN_DIFFERENCES.md lists: one `## <case>` heading each.
fn known_differences() -> Vec<String> {
    let text = std::fs::read_to_string(corpus().join("KNOWN_DIFFERENCES.md")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|l| l.trim().to_owned())
        .collect()
}

/// The bases a case may build FROM, as OCI layouts: busybox (the tests' fixture) and what each script in
/// `tests/differential/bases/` makes from it. Returns (name, layout).
fn make_bases(work: &Path) -> Vec<(String, PathBuf)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let busybox = work.join("bases/busybox");
    run(Command::new("bash")
        .arg(repo.join("tests/fixtures/make-base-image.sh"))
        .arg(&busybox));
    let mut bases = vec![("busybox".to_owned(), busybox.clone())];
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(corpus().join("bases"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    scripts.retain(|p| p.extension().is_some_and(|e| e == "sh"));
    scripts.sort();
    for script in scripts {
        let name = script.file_stem().unwrap().to_string_lossy().into_owned();
        let dest = work.join("bases").join(&name);
        run(Command::new("bash").arg(&script).arg(&dest).arg(&busybox));
        bases.push((name, dest));
    }
    bases
}

/// Runs a helper command that must succeed; its output is the panic message when it does not.
fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Builds one case with kiln (under `umask`, when given), lists the image and compares the listing with
/// the expected one.
fn judge(
    case: &str,
    work: &Path,
    bases: &[(String, PathBuf)],
    known: bool,
    umask: Option<&str>,
) -> Verdict {
    let dir = corpus().join("cases").join(case);
    let Ok(expected) =
        std::fs::read_to_string(corpus().join("expected").join(format!("{case}.txt")))
    else {
        return Verdict::Unexpected(format!(
            "no expected listing; record it with `scripts/differential.sh --record {case}`"
        ));
    };
    let ctx = work.join("ctx").join(case);
    prepare_context(&dir, &ctx);
    let out = work.join("out").join(case);
    let mut kiln = match umask {
        Some(mask) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("umask {mask} && exec \"$0\" \"$@\""))
                .arg(env!("CARGO_BIN_EXE_kiln"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_kiln")),
    };
    kiln.arg("build")
        .arg("--store")
        .arg(work.join("store"))
        .args(["--progress", "plain"]);
    for (name, layout) in bases {
        kiln.arg("--build-context")
            .arg(format!("{name}=oci-layout://{}", layout.display()));
    }
    kiln.args(build_flags(&dir))
        .arg("-f")
        .arg(ctx.join("Dockerfile"))
        .arg("-o")
        .arg(format!("type=oci,dest={}", out.display()))
        .arg(&ctx);
    let built = kiln.output().expect("cannot run kiln");
    if !built.status.success() && known {
        // kiln refusing what BuildKit builds is a difference too, and the list says why.
        return Verdict::KnownDifference;
    }
    if !built.status.success() {
        let log = String::from_utf8_lossy(&built.stderr);
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Verdict::Unexpected(format!("kiln build failed:\n{}", tail.join("\n")));
    }
    let mut lister = Command::new("python3");
    lister.arg(corpus().join("listing.py")).arg(&out);
    for (name, layout) in bases {
        lister
            .arg("--base")
            .arg(format!("{name}={}", layout.display()));
    }
    let actual = String::from_utf8(run(&mut lister)).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&ctx);
    match (actual == expected, known) {
        (true, false) => Verdict::Identical,
        (false, true) => Verdict::KnownDifference,
        (true, true) => Verdict::Unexpected(
            "kiln now gives the reference's image; remove the case from KNOWN_DIFFERENCES.md"
                .into(),
        ),
        (false, false) => Verdict::Unexpected(format!(
            "kiln's image differs from the reference's (- expected, + kiln):\n{}",
            diff::diff(&expected, &actual)
        )),
    }
}

/// `--build-arg` for each line of `build-args`, `--target` from `target`.
fn build_flags(dir: &Path) -> Vec<String> {
    let mut flags = Vec::new();
    if let Ok(args) = std::fs::read_to_string(dir.join("build-args")) {
        for line in args.lines().filter(|l| !l.is_empty()) {
            flags.extend(["--build-arg".to_owned(), line.to_owned()]);
        }
    }
    if let Ok(target) = std::fs::read_to_string(dir.join("target")) {
        flags.extend(["--target".to_owned(), target.trim().to_owned()]);
    }
    flags
}

/// The context kiln sees, as scripts/differential.sh makes it for the reference: the case directory
/// without the harness's files, with the modes git gives whatever the checkout's umask, finished by the
/// case's `prepare.sh` under umask 022.
fn prepare_context(dir: &Path, ctx: &Path) {
    let _ = std::fs::remove_dir_all(ctx);
    copy_tree(dir, ctx, true);
    let prepare = dir.join("prepare.sh");
    if prepare.is_file() {
        run(Command::new("sh")
            .arg("-c")
            .arg("umask 022 && exec sh \"$0\"")
            .arg(&prepare)
            .current_dir(ctx));
    }
}

/// Copies files, directories and symlinks (as links), which is all a checkout holds: directories and
/// executables 0755, other files 0644, as git checks them out under umask 022.
fn copy_tree(from: &Path, to: &Path, top: bool) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |m: u32| std::fs::Permissions::from_mode(m);
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, mode(0o755)).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if top && CASE_FILES.iter().any(|f| name == *f) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if kind.is_dir() {
            copy_tree(&src, &dst, false);
        } else {
            std::fs::copy(&src, &dst).unwrap();
            let executable = std::fs::metadata(&src).unwrap().permissions().mode() & 0o111 != 0;
            std::fs::set_permissions(&dst, mode(if executable { 0o755 } else { 0o644 })).unwrap();
        }
    }
}
