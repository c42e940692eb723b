//! The `.dockerignore` matcher against patternmatcher's and fsutil's behaviour.

use super::*;

fn pats(p: &[&str]) -> Patterns {
    Patterns::from_patterns(p).unwrap_or_else(|e| panic!("{p:?}: {e}"))
}

/// patternmatcher's package-level `Matches`: the path is cleaned and `.` is never matched.
fn package_matches(p: &Patterns, path: &str) -> bool {
    let path = go_clean(path);
    path != "." && p.matches_or_parent_matches(&path)
}

#[test]
fn patternmatcher_vectors() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/conformance/dockerignore/patternmatcher-vectors.json"
    );
    let Ok(text) = fs::read_to_string(file) else {
        crate::progress::line(&format!(
            "note: {file} is absent; skipping the patternmatcher vectors"
        ));
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&text).expect("vectors are JSON");
    let strs = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect()
    };
    let mut failures = Vec::new();
    let mut total = 0;

    for case in v["pattern_list_cases"]
        .as_array()
        .expect("pattern_list_cases")
    {
        total += 1;
        let patterns = strs(&case["patterns"]);
        let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let path = case["path"].as_str().expect("path");
        let want = case["matched"].as_bool().expect("matched");
        match Patterns::from_patterns(&refs) {
            Err(e) => failures.push(format!("list {refs:?}: unexpected error {e}")),
            Ok(p) => {
                let direct = p.matches_or_parent_matches(path);
                let walked = p.excluded(path);
                if direct != want || walked != want {
                    failures.push(format!(
                        "list {refs:?} on {path:?}: want {want}, parent-matches {direct}, walk {walked}"
                    ));
                }
            }
        }
    }

    for case in v["single_pattern_glob_cases"]
        .as_array()
        .expect("single_pattern_glob_cases")
    {
        total += 1;
        let pattern = case["pattern"].as_str().expect("pattern");
        let path = case["path"].as_str().expect("path");
        let want = case["matched"].as_bool().expect("matched");
        let bad = case["bad_pattern"].as_bool().expect("bad_pattern");
        match (Patterns::from_patterns(&[pattern]), bad) {
            (Err(_), true) => {}
            (Ok(_), true) => failures.push(format!("glob {pattern:?}: accepted a bad pattern")),
            (Err(e), false) => failures.push(format!("glob {pattern:?}: unexpected error {e}")),
            (Ok(p), false) => {
                let got = package_matches(&p, path);
                if got != want {
                    failures.push(format!(
                        "glob {pattern:?} on {path:?}: want {want}, got {got}"
                    ));
                }
            }
        }
    }

    for case in v["whole_list_cases"].as_array().expect("whole_list_cases") {
        total += 1;
        let patterns = strs(&case["patterns"]);
        let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let path = case["path"].as_str().expect("path");
        match (Patterns::from_patterns(&refs), case.get("error")) {
            (Err(_), Some(_)) => {}
            (Ok(_), Some(_)) => failures.push(format!("whole {refs:?}: accepted")),
            (Err(e), None) => failures.push(format!("whole {refs:?}: unexpected error {e}")),
            (Ok(p), None) => {
                let want = case["matched"].as_bool().expect("matched");
                let got = package_matches(&p, &go_clean(path));
                let walked = p.excluded(&go_clean(path));
                if got != want || walked != want {
                    failures.push(format!(
                        "whole {refs:?} on {path:?}: want {want}, got {got}, walk {walked}"
                    ));
                }
            }
        }
    }

    let ignorefile = &v["ignorefile"];
    total += 1;
    let content = ignorefile["content"].as_str().expect("content");
    let got: Vec<String> = read_all(content)
        .expect("readable")
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if got != strs(&ignorefile["lines"]) {
        failures.push(format!("ignorefile: got {got:?}"));
    }
    total += 1;
    if !read_all("").expect("empty").is_empty() {
        failures.push("ignorefile: empty input gave patterns".into());
    }

    crate::progress::line(&format!(
        "patternmatcher vectors: {}/{total} pass",
        total - failures.len()
    ));
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// (patterns, path, excluded) from the `.dockerignore` section of Docker's documentation.
#[test]
fn documented_examples() {
    let table: &[(&[&str], &str, bool)] = &[
        // `*/temp*`: names starting with temp in any immediate subdirectory of the root.
        (&["*/temp*"], "somedir/temporary.txt", true),
        (&["*/temp*"], "somedir/temp", true),
        (&["*/temp*"], "somedir/temp/inner.txt", true),
        (&["*/temp*"], "temporary.txt", false),
        (&["*/temp*"], "a/b/temp", false),
        // `*/*/temp*`: two levels below the root.
        (&["*/*/temp*"], "somedir/subdir/temporary.txt", true),
        (&["*/*/temp*"], "somedir/temporary.txt", false),
        // `temp?`: one character after temp, in the root only.
        (&["temp?"], "tempa", true),
        (&["temp?"], "tempb", true),
        (&["temp?"], "temp", false),
        (&["temp?"], "tempab", false),
        (&["temp?"], "dir/tempa", false),
        // `**` matches any number of directories, including none.
        (&["**/*.go"], "main.go", true),
        (&["**/*.go"], "cmd/kiln/main.go", true),
        (&["**/*.go"], "main.rs", false),
        // Exceptions: last match wins.
        (&["*.md", "!README.md"], "README.md", false),
        (&["*.md", "!README.md"], "CHANGES.md", true),
        (
            &["*.md", "!README*.md", "README-secret.md"],
            "README-secret.md",
            true,
        ),
        (
            &["*.md", "!README*.md", "README-secret.md"],
            "README-public.md",
            false,
        ),
        (
            &["*.md", "README-secret.md", "!README*.md"],
            "README-secret.md",
            false,
        ),
        // A matched directory excludes everything under it.
        (&["docs"], "docs/a/b.txt", true),
        (&["docs/"], "docs/a/b.txt", true),
        // Patterns are relative to the root, not matched anywhere like .gitignore.
        (&["foo"], "sub/foo", false),
        (&["foo"], "foo", true),
        // Cleaned: `.`, `..` and doubled slashes.
        (&["./a//b/../c"], "a/c", true),
        (&["a/./b"], "a/b", true),
        // A `..` that climbs out of the context matches nothing.
        (&["../x"], "x", false),
        // `**file` is a plain suffix test, so it also matches `myfile`.
        (&["**file"], "dir/myfile", true),
        (&["**/file"], "dir/myfile", false),
        (&["**/file"], "file", true),
        // `abc/**` needs something below abc.
        (&["abc/**"], "abc", false),
        (&["abc/**"], "abc/x", true),
    ];
    let mut failures = Vec::new();
    for (p, path, want) in table {
        let got = pats(p).excluded(path);
        if got != *want {
            failures.push(format!("{p:?} on {path:?}: want {want}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Consequences of patternmatcher handing its translation to Go's regexp.
#[test]
fn go_regexp_quirks() {
    // `*` inside brackets becomes `[^/]*`, so `[*]` is the class `[[^/]` repeated, then `]`.
    let p = pats(&["[*]"]);
    assert!(p.excluded("]"));
    assert!(p.excluded("[^]"));
    assert!(!p.excluded("*"));
    // `^` is not escaped: in an exact pattern it is literal, in a regexp it anchors to the start.
    assert!(pats(&["a^b"]).excluded("a^b"));
    assert!(!pats(&["a^b*"]).excluded("a^bc"));
    // `\d` is Go's digit class, not an escaped `d`.
    assert!(pats(&["a\\d"]).excluded("a5"));
    assert!(!pats(&["a\\d"]).excluded("ad"));
    // POSIX classes work inside brackets.
    assert!(pats(&["[[:digit:]]x"]).excluded("7x"));
    // Go's `.` stops at a newline, so `**` in the middle cannot cross one.
    assert!(!pats(&["x/**/y"]).excluded("x/a\nb/y"));
    assert!(pats(&["x/**/y"]).excluded("x/ab/y"));
    // Accepted by filepath.Match but not by Go's regexp: BuildKit fails on first use, we fail now.
    for bad in ["[z-a]", "[Local-Only]/", "a\\q", "[a-*]"] {
        assert!(Patterns::from_patterns(&[bad]).is_err(), "{bad}");
    }
}

#[test]
fn parse_follows_readall() {
    let text =
        "\u{FEFF}/foo\r\n  # indented is a pattern\n# comment\n\n! /bar/../baz\n\tqux/  \n/\n";
    let p = Patterns::parse(text).unwrap();
    assert_eq!(
        p.canonical(),
        ["foo", "# indented is a pattern", "!baz", "qux", "/"]
    );
    assert!(p.has_exclusions());
    assert!(Patterns::parse("").unwrap().is_empty());
    assert!(Patterns::parse("# only\n\n   \n").unwrap().is_empty());

    let err = Patterns::parse("foo\n# c\n!\n").unwrap_err();
    assert_eq!((err.line, err.pattern.as_str()), (3, "!"));
    let err = Patterns::parse("ok\nbad[\n").unwrap_err();
    assert_eq!(err.line, 2);
    let long = "x".repeat(64 * 1024);
    assert!(Patterns::parse(&long).is_err());
    assert!(Patterns::parse(&long[1..]).is_ok());

    // New() cleans the whole string, `!` included, so `!a/../b` loses its `!` there...
    assert_eq!(pats(&["!a/../b"]).canonical(), ["b"]);
    // ...while ReadAll splits the `!` off first.
    assert_eq!(Patterns::parse("!a/../b").unwrap().canonical(), ["!b"]);
    // The root is never excluded.
    assert!(!pats(&["**"]).excluded("."));
    assert!(!pats(&["*"]).excluded(""));
}

#[test]
fn walk_and_parent_results_can_disagree_with_parent_matches() {
    // `a` is skipped for the directory `a` (already excluded), so for `a/b` it is only checked against
    // `a/b` itself: BuildKit's walk sends a/b, while MatchesOrParentMatches says excluded.
    let p = pats(&["a", "!a/b", "a"]);
    assert!(!p.excluded("a/b"));
    assert!(p.matches_or_parent_matches("a/b"));
    assert!(p.excluded("a"));
    assert!(p.may_reinclude_under("a"));
}

#[test]
fn may_reinclude_under_follows_fsutil() {
    assert!(!pats(&["vendor"]).may_reinclude_under("vendor"));
    let p = pats(&["vendor", "node_modules", "!vendor/keep/**"]);
    assert!(p.may_reinclude_under("vendor"));
    assert!(p.may_reinclude_under("vendor/keep"));
    assert!(!p.may_reinclude_under("node_modules"));
    assert!(!p.may_reinclude_under("vendor/other"));
    // Any wildcard in an exception means every excluded directory must be walked.
    let p = pats(&["vendor", "node_modules", "!**/keep.txt"]);
    assert!(p.may_reinclude_under("node_modules"));
}

fn tree(files: &[&str], dirs: &[&str]) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for d in dirs {
        fs::create_dir_all(t.path().join(d)).unwrap();
    }
    for f in files {
        let path = t.path().join(f);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, f.as_bytes()).unwrap();
    }
    t
}

fn names(v: Vec<PathBuf>) -> Vec<String> {
    v.into_iter().map(|p| p.display().to_string()).collect()
}

#[test]
fn walk_descends_only_where_exceptions_can_apply() {
    let t = tree(
        &[
            "Dockerfile",
            ".dockerignore",
            "a.txt",
            "docs/README.md",
            "docs/other.md",
            "vendor/drop.txt",
            "vendor/keep.txt",
            "vendor/sub/x.txt",
            "node_modules/pkg/index.js",
            "build/out/bin",
        ],
        &["empty"],
    );
    let ignore = "vendor\n!vendor/keep.txt\nnode_modules\n*/other.md\nbuild\n!build/nothing-here\n\
                  Dockerfile\n.dockerignore\n";
    let p = Patterns::parse(ignore).unwrap();
    let got = names(walk(t.path(), &p).unwrap());
    // The Dockerfile and .dockerignore are excluded like any file: BuildKit reads the Dockerfile
    // through its own source. `build` is walked (an exception names a path under it) but nothing
    // there is included, so it is not listed.
    assert_eq!(
        got,
        [
            "a.txt",
            "docs",
            "docs/README.md",
            "empty",
            "vendor",
            "vendor/keep.txt"
        ]
    );
    // With no patterns, everything is listed, directories included.
    let all = names(walk(t.path(), &Patterns::default()).unwrap());
    assert!(all.contains(&"node_modules/pkg".to_string()));
    assert_eq!(all.len(), 18);
}

#[test]
fn walk_agrees_with_excluded() {
    let t = tree(
        &[
            "a/b",
            "a/c/d",
            "x/y/keep.txt",
            "x/y/z.txt",
            "keep.txt",
            "q.go",
            "r/s.go",
        ],
        &[],
    );
    for list in [
        &["a", "!a/b", "a"][..],
        &["**", "!**/keep.txt"],
        &["x", "!x/y", "x/y/z.txt"],
        &["*.go", "!r"],
    ] {
        let p = pats(list);
        let walked = names(walk(t.path(), &p).unwrap());
        for path in [
            "a",
            "a/b",
            "a/c",
            "a/c/d",
            "x",
            "x/y",
            "x/y/keep.txt",
            "x/y/z.txt",
            "keep.txt",
            "q.go",
            "r",
            "r/s.go",
        ] {
            let listed = walked.iter().any(|w| w == path);
            // A directory is listed when it is included or something below it is.
            let below = walked.iter().any(|w| w.starts_with(&format!("{path}/")));
            assert_eq!(
                listed,
                !p.excluded(path) || below,
                "{list:?}: {path} (walk gave {walked:?})"
            );
        }
    }
}

#[test]
fn load_prefers_the_dockerfile_specific_ignore_file() {
    let t = tree(&["Dockerfile", "sub/app.Dockerfile", "foo", "bar"], &[]);
    let (p, from) = load(t.path(), &t.path().join("Dockerfile")).unwrap();
    assert!(p.is_empty() && from.is_none());

    fs::write(t.path().join(".dockerignore"), "foo\n").unwrap();
    let (p, from) = load(t.path(), &t.path().join("Dockerfile")).unwrap();
    assert_eq!(
        (p.canonical(), from),
        (
            vec!["foo".to_string()],
            Some(t.path().join(".dockerignore"))
        )
    );

    let specific = t.path().join("sub/app.Dockerfile.dockerignore");
    fs::write(&specific, "bar\n").unwrap();
    let (p, from) = load(t.path(), &t.path().join("sub/app.Dockerfile")).unwrap();
    assert_eq!(
        (p.canonical(), from),
        (vec!["bar".to_string()], Some(specific))
    );

    // Even an empty Dockerfile-specific file wins.
    fs::write(t.path().join("Dockerfile.dockerignore"), "").unwrap();
    let (p, from) = load(t.path(), &t.path().join("Dockerfile")).unwrap();
    assert!(p.is_empty() && from.is_some());

    fs::write(t.path().join(".dockerignore"), "!\n").unwrap();
    assert!(load(t.path(), &t.path().join("foo")).is_err());
}
