//! `ADD <git url>` over SSH against a real OpenSSH server on loopback (the one `ssh_clone` starts: a bare
//! repository served by the host's `git-upload-pack`), cloned by kiln's in-process SSH client through the
//! `default` agent: a real `ssh-agent` or a key file, a submodule included. A refused key, an unknown or changed host key, an
//! unknown ref and a missing agent are located errors; the key reaches no file of the store or the image.
//!
//! Current BuildKit trusts the key an `ssh-keyscan` returns at build time for `git@host:` URLs and runs git
//! with `StrictHostKeyChecking=no` for `ssh://` ones (v0.8's Dockerfile has no `ADD <git>`); kiln checks the host key against `~/.ssh/known_hosts` (here: `HOME` of the kiln process) and
//! refuses an unknown one, so these tests differ from BuildKit on purpose there.

use std::path::Path;

use crate::ssh::{Agent, new_key};
use crate::ssh_clone::GitServer;
use crate::support::{Kiln, Output, context, leaks_under, tempdir, tool, unpack, write};

/// A `HOME` whose `~/.ssh/known_hosts` holds `lines`.
fn home(lines: &str) -> tempfile::TempDir {
    let home = tempdir("home-");
    write(&home.path().join(".ssh/known_hosts"), lines);
    home
}

fn url(server: &GitServer, fragment: &str) -> String {
    format!(
        "ssh://root@127.0.0.1:{}{}{fragment}",
        server.port,
        server.repo.display()
    )
}

/// `ADD <url> /src` built with `HOME` set to `home` and the given kiln, into `dest`.
fn build(kiln: Kiln, home: &Path, url: &str, dest: &Path) -> Output {
    let ctx = context(&[("Dockerfile", &format!("FROM base\nADD {url} /src\n"))]);
    kiln.with_base()
        .env("HOME", home)
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx.path())
        .run()
}

/// `DIR/NAME.git`: a bare repository whose one commit holds `files` and, given, a gitlink `(path, commit)`.
/// Returns the commit.
fn bare_repo(dir: &Path, name: &str, files: &[(&str, &str)], link: Option<(&str, &str)>) -> String {
    let work = dir.join(format!("{name}-work"));
    let w = work.to_str().unwrap();
    let git = |args: &[&str]| {
        let mut all = vec![
            "-C",
            w,
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@kiln.invalid",
        ];
        all.extend_from_slice(args);
        tool("git", &all)
    };
    std::fs::create_dir_all(&work).unwrap();
    git(&["init", "-q", "-b", "main"]);
    for (path, text) in files {
        write(&work.join(path), text);
    }
    git(&["add", "-A"]);
    if let Some((path, commit)) = link {
        git(&[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{commit},{path}"),
        ]);
    }
    git(&["commit", "-qm", name]);
    let commit = git(&["rev-parse", "HEAD"]).trim().to_string();
    let bare = dir.join(format!("{name}.git"));
    tool("git", &["clone", "-q", "--bare", w, bare.to_str().unwrap()]);
    commit
}

#[track_caller]
fn assert_cloned(out: &Output, kiln: &Kiln, server: &GitServer, dest: &Path, key: &[u8]) {
    assert_eq!(
        out.code,
        Some(0),
        "{}\n--- sshd\n{}",
        out.stderr,
        server.log()
    );
    let image = unpack(dest);
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("src/README")).unwrap(),
        server.readme
    );
    assert!(!image.rootfs.join("src/.git").exists());
    let body = std::str::from_utf8(&key[40..100]).unwrap();
    assert!(!out.stderr.contains(body), "the key file in the output");
    let key = ssh_key::PrivateKey::from_openssh(key).unwrap();
    let seed = key.key_data().ed25519().unwrap().private.to_bytes();
    for place in [dest, kiln.store()] {
        let found = leaks_under(place, &[&seed]);
        assert!(found.is_empty(), "key in {}: {found:?}", place.display());
    }
}

#[test]
fn add_git_over_ssh_through_the_default_agent() {
    let agent = Agent::start();
    let server = GitServer::start(&agent.public_key);
    let known = home(&format!("{}\n", server.known_host()));
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let kiln = Kiln::new()
        .env("SSH_AUTH_SOCK", &agent.socket)
        .args(["--ssh", "default"]);
    let out = build(kiln.clone(), known.path(), &url(&server, "#main"), &dest);
    assert_cloned(&out, &kiln, &server, &dest, &agent.private_key);

    // A submodule with a relative URL is fetched over SSH too, through the same agent.
    let repos = tempdir("repos-");
    let lib = bare_repo(repos.path(), "lib", &[("lib.txt", "lib\n")], None);
    bare_repo(
        repos.path(),
        "super",
        &[(
            ".gitmodules",
            "[submodule \"lib\"]\n\tpath = lib\n\turl = ../lib.git\n",
        )],
        Some(("lib", &lib)),
    );
    let superproject = format!(
        "ssh://root@127.0.0.1:{}{}/super.git",
        server.port,
        repos.path().display()
    );
    let out = build(kiln.clone(), known.path(), &superproject, &dest);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let image = unpack(&dest);
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("src/lib/lib.txt")).unwrap(),
        "lib\n"
    );

    // The remote's HEAD, and kiln's own agent serving a key file.
    let keys = tempdir("key-");
    let key = keys.path().join("id_ed25519");
    let (_, private_key) = new_key(&key, "kiln-add-git");
    let public_key = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let server = GitServer::start(&public_key);
    let known = home(&format!("{}\n", server.known_host()));
    let kiln = Kiln::new()
        .arg("--ssh")
        .arg(format!("default={}", key.display()));
    let out = build(kiln.clone(), known.path(), &url(&server, ""), &dest);
    assert_cloned(&out, &kiln, &server, &dest, &private_key);
}

#[test]
fn ssh_failures_are_located_errors() {
    let agent = Agent::start();
    let server = GitServer::start(&agent.public_key);
    let known = home(&format!("{}\n", server.known_host()));
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let with_agent = |agent: &Agent| {
        Kiln::new()
            .env("SSH_AUTH_SOCK", &agent.socket)
            .args(["--ssh", "default"])
    };
    let other = Agent::start();
    let other_host = GitServer::start(&agent.public_key);
    let changed = home(&format!(
        "[127.0.0.1]:{} {}\n",
        server.port,
        other_host.known_host().split_once(' ').unwrap().1
    ));
    let empty = home("");
    let cases: [(Kiln, &Path, String, &[&str]); 4] = [
        (
            with_agent(&other),
            known.path(),
            url(&server, "#main"),
            &["refused every key of the ssh agent `default`"],
        ),
        (
            with_agent(&agent),
            empty.path(),
            url(&server, "#main"),
            &[
                "is not known: ssh-ed25519 SHA256:",
                "never trusts an SSH host on first use",
            ],
        ),
        (
            with_agent(&agent),
            changed.path(),
            url(&server, "#main"),
            &["differs from the one in"],
        ),
        (
            with_agent(&agent),
            known.path(),
            url(&server, "#no-such-ref"),
            &["no-such-ref"],
        ),
    ];
    for (kiln, home, url, messages) in cases {
        let out = build(kiln, home, &url, &dest);
        out.expect_code(1);
        for m in messages {
            assert!(
                out.stderr.contains(m) && out.stderr.contains("Dockerfile:2:"),
                "{url}: expected {m:?} in\n{}",
                out.stderr
            );
        }
    }

    // Nothing listening on the port, and an agent socket nobody serves.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let nowhere = format!("ssh://root@127.0.0.1:{closed}/repo.git");
    let out = build(with_agent(&agent), known.path(), &nowhere, &dest);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains(&format!("cannot connect to `127.0.0.1:{closed}` over SSH"))
            && out.stderr.contains("Dockerfile:2:"),
        "{}",
        out.stderr
    );
    let sockets = tempdir("sock-");
    let dead = sockets.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let kiln = Kiln::new()
        .arg("--ssh")
        .arg(format!("default={}", dead.display()));
    let out = build(kiln, known.path(), &url(&server, "#main"), &dest);
    out.expect_code(1);
    assert!(
        out.stderr.contains("cannot reach the ssh agent `default`")
            && out.stderr.contains("Dockerfile:2:"),
        "{}",
        out.stderr
    );

    // No agent at all: refused before anything runs, pointing at the ADD.
    let out = build(Kiln::new(), known.path(), &url(&server, "#main"), &dest);
    out.expect_code(2);
    assert!(
        out.stderr.contains("needs the ssh agent `default`")
            && out.stderr.contains("--ssh default")
            && out.stderr.contains("Dockerfile:2:"),
        "{}",
        out.stderr
    );
}
