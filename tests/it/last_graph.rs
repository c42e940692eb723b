//! `kiln graph` of monorepo labels after an edit redoes only what the edit reaches on the graph the
//! last full run kept: whatever the edit (a comment that moves every line after it, a changed command
//! in the middle of the chain, one changed back, a package added or removed, a new target, a note),
//! what it prints is what a cold run prints, byte for byte; where it cannot say that, the full run
//! does. `KILN_EVAL_STATS=1` makes kiln say whether the last graph was reused.

use std::path::Path;

use crate::support::{Output, chain, graph_refused, graph_with_stats as graph, tempdir};

/// What a run on an empty store prints (stdout and stderr, the statistics left out).
fn cold(dir: &Path, args: &[&str]) -> (String, String) {
    shown(&graph(dir, tempdir("cold-store-").path(), args))
}

fn shown(out: &Output) -> (String, String) {
    let stderr: String = (out.stderr.lines())
        .filter(|l| !l.starts_with("evaluation: ") && !l.starts_with("graph: "))
        .map(|l| format!("{l}\n"))
        .collect();
    (out.stdout.clone(), stderr)
}

/// Whether the run reused the last graph, and if not, why (kiln's words).
fn reused(out: &Output) -> Result<(), String> {
    let line = (out.stderr.lines())
        .find(|l| l.starts_with("graph: "))
        .unwrap_or("graph: the last graph not reused: (no line)");
    match line.strip_prefix("graph: the last graph not reused: ") {
        Some(why) => Err(why.to_string()),
        None => Ok(()),
    }
}

/// Units evaluated, from the `KILN_EVAL_STATS` line.
fn evaluated(out: &Output) -> usize {
    let line = (out.stderr.lines())
        .find(|l| l.starts_with("evaluation: "))
        .unwrap_or_else(|| panic!("no evaluation line:\n{}", out.stderr));
    let numbers: Vec<usize> = (line.split(|c: char| !c.is_ascii_digit()))
        .filter_map(|n| n.parse().ok())
        .collect();
    numbers[1]
}

fn edit(dir: &Path, rel: &str, from: &str, to: &str) {
    let path = dir.join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{rel} has no `{from}`");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

fn new_package(dir: &Path, rel: &str) {
    std::fs::create_dir_all(dir.join(rel)).unwrap();
    let text = "target extra: Image = image(\"//base:base\").run(\"true\")\n";
    std::fs::write(dir.join(rel).join("BUILD.build"), text).unwrap();
}

/// `edit`, written as editors save: a new file renamed over the old one, which changes its
/// directory too.
fn saved_by_rename(dir: &Path, rel: &str, from: &str, to: &str) {
    let path = dir.join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{rel} has no `{from}`");
    let new = path.with_extension("swp");
    std::fs::write(&new, text.replacen(from, to, 1)).unwrap();
    std::fs::rename(&new, &path).unwrap();
}

/// Two runs: the first fills the evaluation cache, the second (which replays it) keeps its graph.
fn warmed(dir: &Path, store: &Path, args: &[&str]) {
    graph(dir, store, args);
    let second = graph(dir, store, args);
    assert_eq!(
        reused(&second),
        Err("none kept".into()),
        "{}",
        second.stderr
    );
}

#[test]
fn an_edit_is_redone_on_the_last_graph_as_a_cold_run_prints_it() {
    let repo_dir = chain(60);
    let dir = repo_dir.path();
    let store = tempdir("store-");
    warmed(dir, store.path(), &["//..."]);
    let p6 = "pkg/p6/BUILD.build";
    // (what the edit does, whether the last graph can take it)
    type Edit<'a> = (Box<dyn Fn() + 'a>, bool);
    let edits: Vec<Edit> = vec![
        (Box::new(|| ()), true),
        (
            Box::new(|| edit(dir, p6, "target deps", "# a comment\ntarget deps")),
            true,
        ),
        (
            Box::new(|| edit(dir, p6, "echo deps 6 ", "echo deps 6 again ")),
            true,
        ),
        (
            Box::new(|| saved_by_rename(dir, p6, "echo deps 6 again ", "echo deps 6 ")),
            true,
        ),
        (
            Box::new(|| std::fs::write(dir.join("pkg/p3/src/more.txt"), "x").unwrap()),
            true,
        ),
        (
            Box::new(|| edit(dir, "pkg/p3/BUILD.build", "ls -a /prev", "ls -al /prev")),
            true,
        ),
        (
            Box::new(|| edit(dir, p6, "\"p6\"}", "\"p6\", \"team\": \"infra\"}")),
            true,
        ),
        (
            Box::new(|| edit(dir, "base/BUILD.build", "/app /out", "/app /out /srv")),
            true,
        ),
        (
            Box::new(|| edit(dir, "lib/common.build", "cat *.txt", "cat *.txt | sort")),
            true,
        ),
        (
            Box::new(|| {
                edit(
                    dir,
                    p6,
                    "target test",
                    "target lint: Image = lib\n\ntarget test",
                )
            }),
            false,
        ),
        (
            Box::new(|| edit(dir, p6, "target lint: Image = lib\n\n", "")),
            false,
        ),
        (Box::new(|| new_package(dir, "pkg/extra")), false),
        (
            Box::new(|| std::fs::remove_dir_all(dir.join("pkg/extra")).unwrap()),
            false,
        ),
        (
            Box::new(|| edit(dir, p6, "\"LEVEL\": level", "\"LEVEL\": print(level)")),
            false,
        ),
    ];
    for (i, (change, takes)) in edits.iter().enumerate() {
        change();
        let out = graph(dir, store.path(), &["//..."]);
        assert_eq!(shown(&out), cold(dir, &["//..."]), "edit {i}");
        assert_eq!(reused(&out).is_ok(), *takes, "edit {i}: {}", out.stderr);
    }
    // After the full run an edit it could not take made, the next edit is taken again.
    edit(dir, p6, "print(level)", "level");
    graph(dir, store.path(), &["//..."]);
    edit(
        dir,
        "pkg/p10/BUILD.build",
        "echo deps 10 ",
        "echo deps ten ",
    );
    let out = graph(dir, store.path(), &["//..."]);
    assert_eq!(reused(&out), Ok(()), "{}", out.stderr);
    assert_eq!(shown(&out), cold(dir, &["//..."]));
    let digests = graph(dir, store.path(), &["--digest", "//..."]);
    assert_eq!(shown(&digests), cold(dir, &["--digest", "//..."]));
}

/// Only the edited package's units, and those its change reaches, are evaluated: a comment leaves
/// the package's values as they were, so nothing past it is.
#[test]
fn only_what_an_edit_reaches_is_evaluated() {
    let repo_dir = chain(60);
    let dir = repo_dir.path();
    let store = tempdir("store-");
    warmed(dir, store.path(), &["//..."]);
    let p6 = "pkg/p6/BUILD.build";
    edit(dir, p6, "target deps", "# a comment\ntarget deps");
    let out = graph(dir, store.path(), &["//..."]);
    assert_eq!(reused(&out), Ok(()), "{}", out.stderr);
    // The package's param and five targets.
    assert_eq!(evaluated(&out), 6, "{}", out.stderr);
    edit(dir, p6, "echo deps 6 ", "echo deps 6 again ");
    let out = graph(dir, store.path(), &["//..."]);
    assert_eq!(reused(&out), Ok(()), "{}", out.stderr);
    // Its changed targets and the next package's target that copies from them.
    assert_eq!(evaluated(&out), 7, "{}", out.stderr);
    assert_eq!(shown(&out), cold(dir, &["//..."]));
}

/// A kept graph that is torn, or one made for other labels or options, is not used.
#[test]
fn a_torn_or_foreign_last_graph_is_not_used() {
    let repo_dir = chain(20);
    let dir = repo_dir.path();
    let store = tempdir("store-");
    warmed(dir, store.path(), &["//..."]);
    let kept: Vec<_> = walkdir::WalkDir::new(store.path().join("evalcache"))
        .into_iter()
        .flatten()
        .map(|e| e.path().to_path_buf())
        .filter(|p| p.to_string_lossy().ends_with(".graph"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let bytes = std::fs::read(&kept[0]).unwrap();
    std::fs::write(&kept[0], &bytes[..bytes.len() - 9]).unwrap();
    edit(dir, "pkg/p2/BUILD.build", "echo deps 2 ", "echo deps two ");
    let out = graph(dir, store.path(), &["//..."]);
    assert_eq!(reused(&out), Err("torn".into()), "{}", out.stderr);
    assert_eq!(shown(&out), cold(dir, &["//..."]));
    // Kept again by that run; another param is another graph.
    let args = ["--param", "level=7", "//..."];
    let out = graph(dir, store.path(), &args);
    let foreign = "made by another kiln or for other labels or options";
    assert_eq!(reused(&out), Err(foreign.into()), "{}", out.stderr);
    assert_eq!(shown(&out), cold(dir, &args));
}

/// A directory a package names that went away is the error a cold run reports, though no module
/// changed; back in place, the last graph is used again.
#[test]
fn a_directory_a_package_names_is_checked_though_no_module_changed() {
    let repo_dir = chain(20);
    let dir = repo_dir.path();
    let store = tempdir("store-");
    warmed(dir, store.path(), &["//..."]);
    let run = |store: &Path| graph_refused(dir, store, &["//..."]);
    std::fs::rename(dir.join("pkg/p2/src"), dir.join("pkg/p2/moved")).unwrap();
    let warm = run(store.path());
    assert!(warm.contains("is not a directory"), "{warm}");
    assert_eq!(warm, run(tempdir("cold-store-").path()));
    std::fs::rename(dir.join("pkg/p2/moved"), dir.join("pkg/p2/src")).unwrap();
    let out = graph(dir, store.path(), &["//..."]);
    assert_eq!(reused(&out), Ok(()), "{}", out.stderr);
    assert_eq!(shown(&out), cold(dir, &["//..."]));
}
