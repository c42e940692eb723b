//! `ADD <git url>` against a real smart-HTTP git server on loopback (`git http-backend` behind
//! `tests/fixtures/git-http-server.py`; git here only makes and serves the repository, kiln clones with
//! gix): the remote's HEAD, a tag, a branch, a full commit id, `#ref:subdir`, `--keep-git-dir`, file modes
//! and symlinks as committed, a rebuild that runs nothing, and located errors for an unknown ref and a
//! commit that `--checksum` does not pin; BuildKit's `GIT_AUTH_TOKEN`/`GIT_AUTH_HEADER` secrets against a
//! server that wants them. Images are judged with umoci.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

use crate::support::{Kiln, context, repo, tempdir, unpack, write};

/// The git server, killed when dropped, and the repositories it serves.
pub(crate) struct GitServer {
    child: Child,
    port: u16,
    pub(crate) root: TempDir,
    /// The commit of the tag `v1` (the first commit) and of `main` (the second).
    pub(crate) v1: String,
    pub(crate) main: String,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .expect("cannot run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl GitServer {
    /// `repo.git`: a first commit (tag `v1`: `a.txt` "one", `sub/b.txt`, an executable `run.sh`, a
    /// symlink `link` to `a.txt`), then a second on `main` and branch `other` (`a.txt` "two", a symlink
    /// `escape` to `/etc`).
    pub(crate) fn start() -> GitServer {
        GitServer::serve(None)
    }

    /// The same repository, served only to requests with one of these `Authorization` values.
    pub(crate) fn private(accepted: &[&str]) -> GitServer {
        GitServer::serve(Some(accepted))
    }

    fn serve(accepted: Option<&[&str]>) -> GitServer {
        let root = tempdir("git-");
        let work = root.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        write(&work.join("a.txt"), "one\n");
        write(&work.join("sub/b.txt"), "b\n");
        write(&work.join("run.sh"), "#!/bin/sh\necho hi\n");
        std::fs::set_permissions(
            work.join("run.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("a.txt", work.join("link")).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "one"]);
        git(&work, &["tag", "v1"]);
        let v1 = git(&work, &["rev-parse", "HEAD"]);
        write(&work.join("a.txt"), "two\n");
        std::os::unix::fs::symlink("/etc", work.join("escape")).unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "two"]);
        git(&work, &["branch", "other"]);
        let main = git(&work, &["rev-parse", "HEAD"]);
        git(root.path(), &["clone", "-q", "--bare", "work", "repo.git"]);
        let mut server = Command::new("python3");
        server
            .arg(repo().join("tests/fixtures/git-http-server.py"))
            .arg(root.path());
        if let Some(accepted) = accepted {
            let file = root.path().join("accepted");
            write(&file, accepted.join("\n"));
            server.arg(file);
        }
        let mut child = server
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot run python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server prints its port");
        GitServer {
            child,
            port,
            root,
            v1,
            main,
        }
    }

    pub(crate) fn url(&self, fragment: &str) -> String {
        format!("http://127.0.0.1:{}/repo.git{fragment}", self.port)
    }

    /// Serves `NAME.git` too: one commit of a work tree that `fill` fills and stages. Returns the commit.
    fn add_repo(&self, name: &str, fill: impl FnOnce(&Path)) -> String {
        let work = self.root.path().join(format!("{name}-work"));
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        fill(&work);
        git(&work, &["commit", "-qm", name]);
        let commit = git(&work, &["rev-parse", "HEAD"]);
        git(
            self.root.path(),
            &[
                "clone",
                "-q",
                "--bare",
                &format!("{name}-work"),
                &format!("{name}.git"),
            ],
        );
        commit
    }

    /// Serves `NAME.git` whose commit holds `top.txt` and a submodule at `path` with `url` in
    /// `.gitmodules`, pointing at `commit`.
    fn add_superproject(&self, name: &str, path: &str, url: &str, commit: &str) {
        self.add_repo(name, |w| {
            write(&w.join("top.txt"), "top\n");
            gitlink(
                w,
                format!("[submodule \"m\"]\n\tpath = {path}\n\turl = {url}\n"),
                commit,
                path,
            );
        });
    }
}

/// In the work tree `w` of a repository being made: commits `.gitmodules` as given and a gitlink at
/// `path` to `commit`, the two halves of a submodule.
fn gitlink(w: &Path, modules: impl AsRef<[u8]>, commit: &str, path: &str) {
    write(&w.join(".gitmodules"), modules);
    git(w, &["add", "-A"]);
    git(
        w,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{commit},{path}"),
        ],
    );
}

fn build(kiln: Kiln, ctx: &Path, dest: &Path) -> crate::support::Output {
    kiln.with_base()
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx)
        .run()
}

/// The provenance lists each clone as `git+URL@COMMIT` with the commit checked out.
#[test]
fn provenance_lists_git_sources_by_commit() {
    let server = GitServer::start();
    let dockerfile = format!(
        "FROM base\nADD {tag} /tag/\nADD {head} /head\n",
        tag = server.url("#v1"),
        head = server.url(""),
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    build(Kiln::new().arg("--provenance=true"), ctx.path(), &dest).success();
    let statement = crate::attest::provenance_of(&dest);
    let deps = statement["predicate"]["buildDefinition"]["resolvedDependencies"].clone();
    for commit in [&server.v1, &server.main] {
        let uri = format!("git+{}@{commit}", server.url(""));
        assert!(
            deps.as_array()
                .unwrap()
                .iter()
                .any(|d| d["uri"] == uri.as_str() && d["digest"]["gitCommit"] == commit.as_str()),
            "no {uri} in {deps}"
        );
    }
}

#[test]
fn add_git_checks_out_refs_as_buildkit_does() {
    let server = GitServer::start();
    let dockerfile = format!(
        "FROM base\n\
         ADD {head} /head\n\
         ADD {tag} /tag/\n\
         ADD {commit} /commit\n\
         ADD --keep-git-dir=true {branch} /kept\n\
         ADD {subdir} /subdir\n\
         ADD --checksum={main} {head} /pinned\n",
        head = server.url(""),
        tag = server.url("#v1"),
        commit = server.url(&format!("#{}", server.v1)),
        branch = server.url("#other"),
        subdir = server.url("#v1:sub"),
        main = server.main,
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let store = tempdir("store-");
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    build(Kiln::build_in(store.path()), ctx.path(), &dest).success();
    let image = unpack(&dest);
    let root = &image.rootfs;
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("head/a.txt"), "two\n", "the remote's HEAD");
    assert_eq!(read("tag/a.txt"), "one\n", "a tag");
    assert_eq!(read("commit/a.txt"), "one\n", "a full commit id");
    assert_eq!(read("kept/a.txt"), "two\n", "a branch");
    assert_eq!(read("pinned/a.txt"), "two\n");
    assert_eq!(
        read("subdir/b.txt"),
        "b\n",
        "#ref:subdir takes the directory"
    );
    assert!(!root.join("subdir/a.txt").exists());
    assert!(!root.join("head/.git").exists(), "no .git by default");
    assert!(root.join("kept/.git/HEAD").is_file(), "--keep-git-dir");
    assert_eq!(read("head/sub/b.txt"), "b\n");
    let run = std::fs::metadata(root.join("head/run.sh")).unwrap();
    assert_eq!(run.mode() & 0o777, 0o755, "modes as committed");
    let a = std::fs::metadata(root.join("head/a.txt")).unwrap();
    assert_eq!((a.mode() & 0o777, a.uid(), a.gid()), (0o644, 0, 0));
    assert_eq!(
        std::fs::read_link(root.join("head/link")).unwrap(),
        Path::new("a.txt"),
        "symlinks as committed"
    );

    // The same refs at the same commits: nothing runs again (without the kept .git, which is per clone).
    let plain = context(&[(
        "Dockerfile",
        &format!(
            "FROM base\nADD {} /head\nADD {} /tag/\n",
            server.url(""),
            server.url("#v1")
        ),
    )]);
    build(Kiln::build_in(store.path()), plain.path(), &dest).success();
    let again = build(Kiln::build_in(store.path()), plain.path(), &dest);
    again.success();
    assert_eq!(again.summary().0, 0, "{}", again.stderr);
}

#[test]
fn git_fetch_failures_are_located_errors() {
    let server = GitServer::start();
    let cases = [
        (server.url("#no-such-ref"), String::new(), "no-such-ref"),
        (
            server.url(""),
            format!("--checksum={} ", server.v1),
            "checksum mismatch",
        ),
        (
            format!("http://127.0.0.1:{}/missing.git", server.port),
            String::new(),
            "cannot",
        ),
        // A committed symlink out of the checkout is no subdirectory: the host's /etc stays out.
        (
            server.url("#main:escape"),
            String::new(),
            "has no directory `escape`",
        ),
        (
            server.url("#main:nowhere"),
            String::new(),
            "has no directory `nowhere`",
        ),
    ];
    for (url, flags, message) in cases {
        let ctx = context(&[("Dockerfile", &format!("FROM base\nADD {flags}{url} /src\n"))]);
        let out = Kiln::new().with_base().arg(ctx.path()).run();
        out.expect_code(1);
        assert!(
            out.stderr.contains(message) && out.stderr.contains("Dockerfile:2:"),
            "{url}: {}",
            out.stderr
        );
    }
}

/// BuildKit's git auth secrets: `GIT_AUTH_TOKEN` goes to the server as basic auth for `x-access-token`,
/// `GIT_AUTH_HEADER` as the whole `Authorization` value, a `.<host:port>` suffix scopes either to one
/// server (and wins over the unscoped one). Without them the private repository is a located error; the
/// token reaches no output, no file of the store and no layer.
#[test]
fn git_auth_secrets_authenticate_as_buildkit_sends_them() {
    use base64::Engine as _;
    let token = "gh-tok3n-Qz81vW";
    let header = "Bearer hdr-s3cret-Lm52kP";
    let basic = format!(
        "basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"))
    );
    let server = GitServer::private(&[&basic, header]);
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            "FROM base\nADD --keep-git-dir=true {} /src\n",
            server.url("#v1")
        ),
    )]);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");

    let out = build(Kiln::new(), ctx.path(), &dest);
    out.expect_code(1);
    assert!(
        out.stderr.contains("Dockerfile:2:") && out.stderr.contains("GIT_AUTH_TOKEN"),
        "{}",
        out.stderr
    );

    let secrets = tempdir("secrets-");
    let header_file = secrets.path().join("header");
    write(&header_file, format!("{header}\n"));
    let wrong = secrets.path().join("wrong");
    write(&wrong, "not-the-token");
    let out = build(
        Kiln::new()
            .arg("--secret")
            .arg(format!("id=GIT_AUTH_TOKEN,src={}", wrong.display())),
        ctx.path(),
        &dest,
    );
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("refused the GIT_AUTH_HEADER/GIT_AUTH_TOKEN secret")
            && out.stderr.contains("Dockerfile:2:"),
        "{}",
        out.stderr
    );
    let scoped = format!("GIT_AUTH_HEADER.127.0.0.1:{}", server.port);
    let runs = [
        Kiln::new()
            .env("TOK", token)
            .args(["--secret", "id=GIT_AUTH_TOKEN,env=TOK"]),
        // The scoped header wins over a wrong unscoped token.
        Kiln::new()
            .arg("--secret")
            .arg(format!("id={scoped},src={}", header_file.display()))
            .arg("--secret")
            .arg(format!("id=GIT_AUTH_TOKEN,src={}", wrong.display())),
    ];
    for kiln in runs {
        let out = build(kiln.clone(), ctx.path(), &dest);
        out.success();
        let image = unpack(&dest);
        assert_eq!(
            std::fs::read_to_string(image.rootfs.join("src/a.txt")).unwrap(),
            "one\n"
        );
        assert!(!out.stderr.contains(token) && !out.stderr.contains(&basic));
        for place in [&dest, kiln.store()] {
            let found = crate::support::leaks_under(place, &[token.as_bytes(), header.as_bytes()]);
            assert!(found.is_empty(), "in {}: {found:?}", place.display());
        }
    }
}

/// Submodules are checked out as BuildKit's `git submodule update --init --recursive` does: at the
/// commit the superproject records, from `.gitmodules` URLs resolved against the superproject's, nested
/// ones too, without their `.git`. A submodule URL that is no remote repository (a local path, `file://`,
/// a remote helper such as `ext::`, a relative URL climbing above the host) is a located error: a
/// Dockerfile's build must not read the builder's filesystem.
///
/// Compared with BuildKit v0.8 (Debian's dockerd 20.10) on the same three repositories, fetched as a git
/// build context (v0.8's Dockerfile has no `ADD <git>`; both go through its git source): the same paths,
/// modes, sizes and contents, except that BuildKit leaves in each submodule a `.git` file naming a
/// directory inside its own snapshot store (`gitdir: ../../../../<snapshot>/diff/modules/m`), which
/// points nowhere in the image; kiln leaves none.
#[test]
fn add_git_checks_out_submodules() {
    let server = GitServer::start();
    let deep = server.add_repo("deep", |w| {
        write(&w.join("deep.txt"), "deep\n");
        git(w, &["add", "-A"]);
    });
    let lib = server.add_repo("lib", |w| {
        write(&w.join("lib.txt"), "lib\n");
        gitlink(
            w,
            "[submodule \"deep\"]\n\tpath = deep\n\turl = ../deep.git\n",
            &deep,
            "deep",
        );
    });
    server.add_superproject("super", "vendor/lib", "../lib.git", &lib);
    let at = |name: &str| format!("http://127.0.0.1:{}/{name}.git", server.port);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM base\nADD {} /src\n", at("super")),
    )]);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    build(Kiln::new(), ctx.path(), &dest).success();
    let image = unpack(&dest);
    let read = |p: &str| {
        std::fs::read_to_string(image.rootfs.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    assert_eq!(read("src/top.txt"), "top\n");
    assert_eq!(read("src/vendor/lib/lib.txt"), "lib\n");
    assert_eq!(
        read("src/vendor/lib/deep/deep.txt"),
        "deep\n",
        "recursively"
    );
    assert!(!image.rootfs.join("src/vendor/lib/.git").exists());
    assert!(!image.rootfs.join("src/vendor/lib/deep/.git").exists());

    let marker = tempdir("ext-");
    let pwned = marker.path().join("pwned");
    let cases = [
        (
            "file",
            "file:///etc".to_string(),
            "is not a remote repository URL",
        ),
        ("path", "/etc".to_string(), "is not a remote repository URL"),
        (
            "ext",
            format!("ext::sh -c touch% {}", pwned.display()),
            "is not a remote repository URL",
        ),
        (
            "climb",
            "../../../../etc".to_string(),
            "climbs above the superproject's host",
        ),
    ];
    for (name, url, message) in cases {
        server.add_superproject(&format!("evil-{name}"), "x", &url, &lib);
        let ctx = context(&[(
            "Dockerfile",
            &format!("FROM base\nADD {} /src\n", at(&format!("evil-{name}"))),
        )]);
        let out = build(Kiln::new(), ctx.path(), &dest);
        out.expect_code(1);
        assert!(
            out.stderr.contains(message)
                && out.stderr.contains("submodule `x`")
                && out.stderr.contains("never from the builder's filesystem")
                && out.stderr.contains("Dockerfile:2:"),
            "{name}: {}",
            out.stderr
        );
    }
    assert!(!pwned.exists(), "the ext:: helper ran");

    // `update = none`: git leaves the submodule's directory empty and never fetches its URL, so even
    // one kiln would refuse to fetch does not matter.
    server.add_repo("skipped", |w| {
        write(&w.join("top.txt"), "top\n");
        gitlink(
            w,
            "[submodule \"m\"]\n\tpath = x\n\turl = file:///etc\n\tupdate = none\n",
            &lib,
            "x",
        );
    });
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM base\nADD {} /src\n", at("skipped")),
    )]);
    build(Kiln::new(), ctx.path(), &dest).success();
    let image = unpack(&dest);
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("src/top.txt")).unwrap(),
        "top\n"
    );
    let x = image.rootfs.join("src/x");
    assert!(
        x.is_dir() && std::fs::read_dir(&x).unwrap().next().is_none(),
        "an `update = none` submodule is an empty directory"
    );

    // A .gitmodules entry without a url, and a chain of submodules deeper than kiln follows.
    server.add_repo("nourl", |w| {
        gitlink(w, "[submodule \"m\"]\n\tpath = x\n", &lib, "x");
    });
    let mut below = deep;
    for level in 0..9 {
        let name = format!("level{level}");
        let url = if level == 0 {
            "../deep.git".to_string()
        } else {
            format!("../level{}.git", level - 1)
        };
        server.add_superproject(&name, "s", &url, &below);
        below = git(
            &server.root.path().join(format!("{name}-work")),
            &["rev-parse", "HEAD"],
        );
    }
    for (name, message) in [
        ("nourl", "submodule `m` has no path or no url"),
        ("level8", "submodules nest deeper than 8"),
    ] {
        let ctx = context(&[("Dockerfile", &format!("FROM base\nADD {} /src\n", at(name)))]);
        let out = build(Kiln::new(), ctx.path(), &dest);
        out.expect_code(1);
        assert!(
            out.stderr.contains(message) && out.stderr.contains("Dockerfile:2:"),
            "{name}: {}",
            out.stderr
        );
    }
}
