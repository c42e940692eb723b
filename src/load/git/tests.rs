//! The tree `GitRepo::checkout` writes, judged against `git archive` unpacked by tar.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use super::GitRepo;

fn run(dir: &Path, program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn git(dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["-c", "user.name=kiln", "-c", "user.email=kiln@example.com"];
    all.extend(args);
    String::from_utf8(run(dir, "git", &all))
        .unwrap()
        .trim()
        .to_string()
}

/// Each path under `root`: its kind, whether it is executable, and its content or link target.
fn describe(root: &Path) -> BTreeMap<String, (char, bool, Vec<u8>)> {
    walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.path().symlink_metadata().unwrap();
            let rel = e.path().strip_prefix(root).unwrap().display().to_string();
            let entry = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(e.path()).unwrap();
                ('l', false, target.into_os_string().into_encoded_bytes())
            } else if meta.is_dir() {
                ('d', false, Vec::new())
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                ('f', exec, std::fs::read(e.path()).unwrap())
            };
            (rel, entry)
        })
        .collect()
}

#[test]
fn a_revision_is_written_as_git_archive_gives_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(repo.join("src/deep/er")).unwrap();
    std::fs::write(repo.join("README"), "old\n").unwrap();
    std::fs::write(repo.join("src/deep/er/data.bin"), [0u8, 1, 2, 255]).unwrap();
    std::fs::write(repo.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(repo.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("deep/er/data.bin", repo.join("src/link")).unwrap();
    std::os::unix::fs::symlink("/nowhere", repo.join("dangling")).unwrap();
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-qm", "one"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    git(
        &repo,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{first},vendor/sub"),
        ],
    );
    git(&repo, &["commit", "-qm", "submodule"]);
    git(&repo, &["tag", "-a", "v2", "-m", "v2"]);
    std::fs::write(repo.join("README"), "new\n").unwrap();
    git(&repo, &["commit", "-qam", "three"]);

    let opened = GitRepo::discover(&repo.join("src/deep")).unwrap();
    assert_eq!(
        opened.inside(&repo.join("src/deep")).unwrap(),
        Path::new("src/deep")
    );
    for rev in ["v2", "HEAD~1", &first[..8], "HEAD"] {
        let got = opened.checkout(&opened.tree(rev).unwrap()).unwrap();
        let want = tmp.path().join(format!("archive-{rev}"));
        std::fs::create_dir(&want).unwrap();
        let tar = run(&repo, "git", &["archive", "--format=tar", rev]);
        let tar_file = tmp.path().join("archive.tar");
        std::fs::write(&tar_file, tar).unwrap();
        run(&want, "tar", &["-xf", tar_file.to_str().unwrap()]);
        assert_eq!(describe(got.path()), describe(&want), "at {rev}");
    }
    // The submodule is there, as an empty directory, from its commit on.
    let at_v2 = opened.checkout(&opened.tree("v2").unwrap()).unwrap();
    assert_eq!(
        std::fs::read_dir(at_v2.path().join("vendor/sub"))
            .unwrap()
            .count(),
        0
    );
    assert!(
        opened
            .tree("HEAD:README")
            .unwrap_err()
            .contains("names no commit or tree")
    );
    assert!(
        opened
            .tree("v3")
            .unwrap_err()
            .contains("unknown revision `v3`")
    );
}
