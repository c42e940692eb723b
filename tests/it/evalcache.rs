//! The `.build` evaluation cache of a monorepo: a second `kiln graph` replays every unit and prints the
//! same graph; an edit re-evaluates only the edited package and what its change reaches; whatever the
//! cache holds (a changed directory, a corrupt file), the output is the one a cold run prints, and a URL's
//! token is never written to it. `KILN_EVAL_STATS=1` makes kiln say how many units it replayed.

use std::path::Path;

use crate::support::{
    Output, chain, copy_dir, graph_refused, graph_with_stats as graph, repo, tempdir,
};

/// What a run with an empty cache prints.
fn cold(dir: &Path, args: &[&str]) -> Output {
    graph(dir, tempdir("cold-store-").path(), args)
}

/// (units replayed, units evaluated), from the `KILN_EVAL_STATS` line.
fn stats(out: &Output) -> (usize, usize) {
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("evaluation: "))
        .unwrap_or_else(|| panic!("no evaluation line:\n{}", out.stderr));
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// What kiln prints besides the statistics lines.
fn shown(out: &Output) -> (String, String) {
    let stderr: String = out
        .stderr
        .lines()
        .filter(|l| !l.starts_with("evaluation: ") && !l.starts_with("graph: "))
        .map(|l| format!("{l}\n"))
        .collect();
    (out.stdout.clone(), stderr)
}

/// Rewrites the file at `path` through `f`.
fn rewrite(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

#[test]
fn a_second_graph_replays_every_unit_and_prints_the_same_graph() {
    let copy = copy_dir(&repo().join("examples/monorepo"));
    let store = tempdir("store-");
    for format in ["text", "json"] {
        let args = ["--format", format, "//..."];
        let first = graph(copy.path(), store.path(), &args);
        let second = graph(copy.path(), store.path(), &args);
        let (replayed, evaluated) = stats(&second);
        assert!(replayed > 0, "{}", second.stderr);
        assert_eq!(evaluated, 0, "{}", second.stderr);
        assert_eq!(shown(&first), shown(&second), "{format}");
        assert_eq!(shown(&second), shown(&cold(copy.path(), &args)), "{format}");
    }
    // One target: only what it reaches, replayed, the graph a cold run prints.
    let one = ["//services/api:image"];
    let out = graph(copy.path(), store.path(), &one);
    assert_eq!(stats(&out).1, 0, "{}", out.stderr);
    assert_eq!(shown(&out), shown(&cold(copy.path(), &one)));
}

#[test]
fn an_edit_reevaluates_the_package_and_only_what_its_change_reaches() {
    let repo_dir = chain(60);
    let dir = repo_dir.path();
    let store = tempdir("store-");
    let all = graph(dir, store.path(), &["//..."]);
    let total = stats(&all).1;
    let build = dir.join("pkg/p6/BUILD.build");
    let original = std::fs::read_to_string(&build).unwrap();
    // The package's globals: its param and five targets.
    let own = 6;

    // A comment: the package is evaluated again, and comes out the same, so nothing else is.
    std::fs::write(&build, format!("# a comment\n{original}")).unwrap();
    let out = graph(dir, store.path(), &["//..."]);
    assert_eq!(stats(&out), (total - own, own), "{}", out.stderr);
    assert_eq!(shown(&out), shown(&cold(dir, &["//..."])));

    // A changed command: its targets change, and the next package's target that copies from them is
    // evaluated again; that one's value is the same as before, so the chain stops there. (This run
    // and the next redo them on the graph the last run kept: `last_graph.rs`.)
    let changed = original.replace("echo deps 6 ", "echo deps 6 again ");
    assert_ne!(changed, original);
    std::fs::write(&build, &changed).unwrap();
    let out = graph(dir, store.path(), &["//..."]);
    assert_eq!(stats(&out).1, own + 1, "{}", out.stderr);
    assert_eq!(shown(&out), shown(&cold(dir, &["//..."])));

    // The library every package but //base imports: all else is evaluated again.
    let lib = dir.join("lib/common.build");
    let text = std::fs::read_to_string(&lib).unwrap();
    rewrite(&lib, |t| t.replace("cat *.txt", "cat *.txt | sort"));
    let out = graph(dir, store.path(), &["//..."]);
    assert_eq!(stats(&out).1, total - 1, "{}", out.stderr);
    assert_eq!(shown(&out), shown(&cold(dir, &["//..."])));

    // Back as it was: the first records are still there.
    std::fs::write(&lib, text).unwrap();
    std::fs::write(&build, original).unwrap();
    let out = graph(dir, store.path(), &["//..."]);
    assert_eq!(shown(&out), shown(&all));
    assert!(stats(&out).1 <= 1, "{}", out.stderr);
}

/// What a record read is checked again: a package directory that went away is the error a cold run
/// reports, and a param given on the command line is a different evaluation.
#[test]
fn what_evaluation_read_is_checked_before_a_record_is_replayed() {
    let repo_dir = chain(20);
    let dir = repo_dir.path();
    let store = tempdir("store-");
    let plain = graph(dir, store.path(), &["//..."]);

    let with_param = graph(dir, store.path(), &["--param", "level=7", "//..."]);
    assert_eq!(
        shown(&with_param),
        shown(&cold(dir, &["--param", "level=7", "//..."]))
    );
    assert_ne!(with_param.stdout, plain.stdout);

    std::fs::rename(dir.join("pkg/p2/src"), dir.join("pkg/p2/moved")).unwrap();
    let run = |store: &Path| graph_refused(dir, store, &["//..."]);
    let warm = run(store.path());
    assert!(warm.contains("is not a directory"), "{warm}");
    assert_eq!(warm, run(tempdir("cold-store-").path()));
}

/// `print(...)` notes are shown again, in the same order, when their units are replayed.
#[test]
fn notes_are_shown_when_their_units_are_replayed() {
    let repo_dir = chain(10);
    let dir = repo_dir.path();
    rewrite(&dir.join("pkg/p1/BUILD.build"), |text| {
        text.replace(
            "target deps: Image = ",
            "let shown = print(\"level ${level}\")\n\ntarget deps: Image = ",
        )
        .replace("{\"LEVEL\": level}", "{\"LEVEL\": shown}")
    });
    let store = tempdir("store-");
    let first = graph(dir, store.path(), &["//..."]);
    assert!(first.stderr.contains("level 1"), "{}", first.stderr);
    let second = graph(dir, store.path(), &["//..."]);
    assert_eq!(stats(&second).1, 0, "{}", second.stderr);
    assert_eq!(shown(&first), shown(&second));
}

/// A torn or foreign cache file is an empty cache, and is replaced.
#[test]
fn a_corrupt_cache_file_is_ignored_and_replaced() {
    let repo_dir = chain(10);
    let dir = repo_dir.path();
    let store = tempdir("store-");
    let first = graph(dir, store.path(), &["//..."]);
    let files: Vec<_> = std::fs::read_dir(store.path().join("evalcache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &bytes[..bytes.len() / 2]).unwrap();
    let torn = graph(dir, store.path(), &["//..."]);
    assert_eq!(stats(&torn).0, 0, "{}", torn.stderr);
    assert_eq!(shown(&torn), shown(&first));
    let again = graph(dir, store.path(), &["//..."]);
    assert_eq!(stats(&again).1, 0, "{}", again.stderr);
}

/// A download's URL may carry a token: the unit that holds it is never written to the cache.
#[test]
fn a_url_token_is_never_written_to_the_cache() {
    let repo_dir = chain(10);
    let dir = repo_dir.path();
    rewrite(&dir.join("pkg/p1/BUILD.build"), |text| {
        format!(
            "{text}\ntarget fetched: Image = scratch().add(url(\"https://deploy:s3cr3t-t0ken@example.com/a.tgz\"), [], \"/a.tgz\")\n"
        )
    });
    let store = tempdir("store-");
    let first = graph(dir, store.path(), &["//..."]);
    let second = graph(dir, store.path(), &["//..."]);
    assert_eq!(shown(&first), shown(&second));
    assert_eq!(stats(&second).1, 1, "{}", second.stderr);
    // An edit elsewhere: what it adds goes to the cache's journal, which holds no token either.
    rewrite(&dir.join("pkg/p0/BUILD.build"), |text| {
        format!("{text}# edited\n")
    });
    graph(dir, store.path(), &["//..."]);
    let journals = walkdir::WalkDir::new(store.path().join("evalcache")).into_iter();
    let journaled = journals
        .flatten()
        .any(|e| e.path().extension().is_some_and(|x| x == "log"));
    assert!(journaled, "the edit was not journaled");
    for entry in walkdir::WalkDir::new(store.path()) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                !bytes.windows(11).any(|w| w == b"s3cr3t-t0ke"),
                "{} holds the token",
                entry.path().display()
            );
        }
    }
}

/// Edits in several packages at once, and selections that reach them in different orders: every warm
/// graph is the cold one, node for node.
#[test]
fn any_mix_of_edits_and_selections_gives_the_cold_graph() {
    let repo_dir = chain(50);
    let dir = repo_dir.path();
    let store = tempdir("store-");
    let selections: [&[&str]; 4] = [
        &["//..."],
        &["//pkg/p9:final"],
        &["//pkg/p4:build", "//pkg/p9:test"],
        &["//pkg/..."],
    ];
    let edit = |rel: &str, from: &str, to: &str| {
        let path = dir.join(rel);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    };
    for round in 0..4 {
        for sel in selections {
            let warm = graph(dir, store.path(), sel);
            assert_eq!(
                shown(&warm),
                shown(&cold(dir, sel)),
                "round {round}, {sel:?}"
            );
        }
        match round {
            0 => {
                edit("base/BUILD.build", "target", "# a comment\ntarget");
                edit("pkg/p8/BUILD.build", "import", "# a comment\nimport");
            }
            1 => edit("pkg/p5/BUILD.build", "echo deps 5", "echo deps five"),
            2 => {
                edit(
                    "base/BUILD.build",
                    "mkdir -p /app /out",
                    "mkdir -p /app /out /tmp",
                );
                edit("pkg/p7/BUILD.build", "ls -a /prev", "ls -al /prev");
            }
            _ => {}
        }
    }
}
