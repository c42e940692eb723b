//! `kiln build --on-error=shell`, driven through a real pty as a user at a terminal would: the shell opens
//! in the failed step's sandbox over the files the step wrote, as the step's user in its directory, without
//! the step's secrets unless `--debug-secrets`; the build still fails with the step's error; nothing of the
//! failed step or the session is kept.

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Kiln, context, files_under, leaks_under};

/// kiln started on a terminal of its own: a pty whose slave is its controlling terminal and stdio.
struct Terminal {
    master: std::fs::File,
    child: Child,
    /// Everything kiln and the shell printed so far.
    seen: String,
    /// Where the last `until` stopped: the end of the needle it found. One read may bring more than
    /// that (a prompt after the line awaited), which the next `until` must still find.
    read_to: usize,
}

impl Terminal {
    fn start(kiln: &Kiln) -> Terminal {
        let pty = nix::pty::openpty(None, None).expect("a pty");
        let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        let mut cmd = kiln.command();
        cmd.stdin(slave(&pty.slave))
            .stdout(slave(&pty.slave))
            .stderr(slave(&pty.slave));
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("cannot start kiln");
        drop(pty.slave);
        // Non-blocking, so `until` can give up on time.
        nix::fcntl::fcntl(
            &pty.master,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .expect("fcntl");
        Terminal {
            master: std::fs::File::from(pty.master),
            child,
            seen: String::new(),
            read_to: 0,
        }
    }

    /// Reads until `needle` has been printed (after where the last `until` stopped), or panics after a
    /// generous while, showing the screen. What was printed from there to the needle's end.
    fn until(&mut self, needle: &str) -> String {
        self.until_any(&[needle])
    }

    /// Waits for the shell's prompt (`$ ` or, as root, `# `): what is typed before the shell has the
    /// terminal may be flushed when kiln puts it in raw mode.
    fn prompt(&mut self) -> String {
        self.until_any(&["$ ", "# "])
    }

    /// `until` for the first of several needles to appear.
    fn until_any(&mut self, needles: &[&str]) -> String {
        let from = self.read_to;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 4096];
        let found = |seen: &str| {
            needles
                .iter()
                .filter_map(|n| seen.find(n).map(|at| at + n.len()))
                .min()
        };
        while found(&self.seen[from..]).is_none() {
            assert!(
                Instant::now() < deadline,
                "`{needles:?}` never appeared:\n{}",
                self.seen
            );
            match self.master.read(&mut buf) {
                Ok(n) if n > 0 => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Ok(_) => panic!("the terminal closed before `{needles:?}`:\n{}", self.seen),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!(
                    "the terminal failed ({e}) before `{needles:?}`:\n{}",
                    self.seen
                ),
            }
        }
        self.read_to = from + found(&self.seen[from..]).expect("found");
        self.seen[from..self.read_to].to_string()
    }

    fn type_line(&mut self, line: &str) {
        self.master
            .write_all(format!("{line}\r").as_bytes())
            .expect("typing");
    }

    /// Types `command` and returns what it printed: the shell echoes the line, so the answer is what
    /// comes after a marker only the command's output can contain.
    fn ask(&mut self, command: &str) -> String {
        self.type_line(&format!("{command}; echo END-$((6*7))"));
        self.until("END-42")
    }

    /// Waits for kiln to exit (reading on, so it never blocks on a full terminal) and returns its code.
    fn exit_code(mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut buf = [0u8; 4096];
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let _ = self.master.read(&mut buf).map(|n| {
                    self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                });
                return status.code().expect("an exit code");
            }
            assert!(
                Instant::now() < deadline,
                "kiln never exited:\n{}",
                self.seen
            );
            if let Ok(n) = self.master.read(&mut buf) {
                self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SECRET: &str = "debug-shell-secret-5c2a91";

/// A RUN that writes a file and fails, with a secret mount, as a non-root USER in a WORKDIR.
fn failing() -> tempfile::TempDir {
    context(&[
        (
            "Dockerfile",
            "FROM base\nUSER 1234\nWORKDIR /work/dir\nENV GREETING=hello-from-env\n\
             RUN --mount=type=secret,id=s,uid=1234 --mount=type=secret,id=s,env=TOKEN \
             --mount=type=cache,target=/cache,uid=1234 echo written > /tmp/marker; exit 3\n",
        ),
        ("s.txt", SECRET),
    ])
}

fn build(kiln: &Kiln, ctx: &tempfile::TempDir) -> Kiln {
    kiln.clone()
        .with_base()
        .args(["--on-error=shell", "--secret"])
        .arg(format!("id=s,src={}", ctx.path().join("s.txt").display()))
        .arg(ctx.path())
}

#[test]
fn the_shell_sees_the_failed_steps_files_as_its_user_without_its_secret() {
    let ctx = failing();
    let kiln = Kiln::new();
    let mut term = Terminal::start(&build(&kiln, &ctx));
    term.until("opening `/bin/sh` in the failed step's sandbox");
    term.prompt();
    let answer = term.ask(
        "cat /tmp/marker; id -u; pwd; echo $GREETING; ls /run/secrets/s; echo TOKEN=${TOKEN:-unset}; \
         echo 3 >/tmp/fromshell; echo 3 >/cache/fromshell && echo CACHE-WRITABLE",
    );
    assert!(answer.contains("written"), "the step's file: {answer}");
    assert!(answer.contains("\n1234"), "the step's USER: {answer}");
    assert!(
        answer.contains("\n/work/dir"),
        "the step's WORKDIR: {answer}"
    );
    assert!(
        answer.contains("hello-from-env"),
        "the step's ENV: {answer}"
    );
    assert!(
        answer.contains("CACHE-WRITABLE"),
        "the cache mount: {answer}"
    );
    assert!(
        answer.contains("/run/secrets/s: No such file or directory"),
        "the secret is absent: {answer}"
    );
    assert!(
        answer.contains("TOKEN=unset"),
        "so is its variable: {answer}"
    );
    assert!(
        !term.seen.contains("--debug-secrets"),
        "no secrets, no warning:\n{}",
        term.seen
    );
    // The shell's own status does not matter: the build fails with the step's error.
    term.type_line("exit 0");
    term.until("exit code: 3");
    let seen = term.seen.clone();
    let code = term.exit_code();
    assert_eq!(code, 1, "a failed step fails the build:\n{seen}");

    // Nothing of the failed step or of the session is kept: no snapshot or cache mount holds their files,
    // and the step runs (and fails) again.
    let kept: Vec<_> = files_under(kiln.store())
        .into_iter()
        .filter(|(p, _)| p.ends_with("tmp/marker") || p.ends_with("fromshell"))
        .collect();
    assert!(kept.is_empty(), "the store kept {kept:?}");
    let again = kiln
        .clone()
        .with_base()
        .arg("--secret")
        .arg(format!("id=s,src={}", ctx.path().join("s.txt").display()));
    let out = again.arg(ctx.path()).run();
    out.expect_code(1);
    assert!(
        out.stderr.contains("exit code: 3") && !out.stderr.contains("CACHED\n#3"),
        "{}",
        out.stderr
    );
}

#[test]
fn debug_secrets_mounts_the_secret_with_a_warning_and_the_error_stays_the_steps() {
    let ctx = failing();
    let kiln = Kiln::new();
    let mut term = Terminal::start(&build(&kiln, &ctx).arg("--debug-secrets"));
    let opened = term.until("opening `/bin/sh`");
    let warned = term.prompt();
    assert!(
        format!("{opened}{warned}").contains("warning: --debug-secrets"),
        "{}",
        term.seen
    );
    let answer = term.ask("cat /run/secrets/s; echo; echo TOKEN=$TOKEN");
    assert!(answer.contains(SECRET), "the secret is mounted: {answer}");
    assert!(
        answer.contains(&format!("TOKEN={SECRET}")),
        "and its variable set: {answer}"
    );
    term.type_line("exit");
    term.until("exit code: 3");
    let code = term.exit_code();
    assert_eq!(code, 1);
    let leaks = leaks_under(kiln.store(), &[SECRET.as_bytes()]);
    assert!(leaks.is_empty(), "the secret reached the store: {leaks:?}");
}

#[test]
fn a_debug_shell_needs_a_terminal_and_a_local_step() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN exit 3\n")]);
    let kiln = Kiln::new().with_base();
    // `run` gives kiln no terminal: stdin is /dev/null.
    let out = kiln.clone().arg("--on-error=shell").arg(ctx.path()).run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("--on-error=shell needs a terminal")
            && out.stderr.contains("command line:1:")
            && out.stderr.contains("run the build from a terminal"),
        "{}",
        out.stderr
    );
    let out = kiln
        .clone()
        .args([
            "--on-error",
            "shell",
            "--remote-executor",
            "grpc://127.0.0.1:1",
        ])
        .arg(ctx.path())
        .run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("not with --remote-executor")
            && out.stderr.contains("drop --remote-executor"),
        "{}",
        out.stderr
    );
    let out = kiln.clone().arg("--debug-secrets").arg(ctx.path()).run();
    out.expect_code(2);
    assert!(
        out.stderr.contains("--debug-secrets without a debug shell")
            && out.stderr.contains("--on-error=shell"),
        "{}",
        out.stderr
    );
}

/// The shell is confined as the step was (its capability bounding set, seccomp, hostname, a pid
/// namespace of its own), has job control on a pty of the sandbox's own devpts, and kiln's terminal is not
/// among its open files.
#[test]
fn the_shell_is_confined_as_the_step_on_a_terminal_of_the_sandboxs_own() {
    let ctx = failing();
    let kiln = Kiln::new();
    let mut term = Terminal::start(&build(&kiln, &ctx));
    term.until("opening `/bin/sh`");
    term.prompt();
    let answer = term.ask(
        "tty; readlink /proc/$$/fd/0; [ -e /proc/$$/fd/3 ] && echo FD3-OPEN; \
         grep -E '^(CapBnd|Seccomp):' /proc/self/status | tr -d '\\t'; hostname; echo pid=$$",
    );
    assert!(answer.contains("\n/dev/pts/0"), "{answer}");
    assert!(
        !answer.contains("FD3-OPEN\r"),
        "kiln's terminal (the helper's fd 3) reached the shell: {answer}"
    );
    assert!(answer.contains("CapBnd:00000000a80425fb"), "{answer}");
    assert!(answer.contains("Seccomp:2"), "{answer}");
    assert!(answer.contains("\nkiln\r"), "the step's hostname: {answer}");
    assert!(
        answer.contains("pid=1\r"),
        "a pid namespace of its own: {answer}"
    );
    let jobs = term.ask("sleep 30 & jobs; kill %1");
    assert!(jobs.contains("Running"), "job control: {jobs}");
    term.type_line("exit");
    assert_eq!(term.exit_code(), 1);
}

/// With `--remote-cache` a step that misses runs here, so its debug shell opens here too (the remote
/// executor hands it to the local one).
#[test]
fn a_debug_shell_opens_beside_a_remote_cache() {
    let Some(farm) = crate::remote::Farm::start() else {
        return;
    };
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN echo remote-cache-run > /marker; exit 3\n",
    )]);
    let kiln = Kiln::new()
        .with_base()
        .args(["--on-error=shell", "--remote-cache"])
        .arg(farm.url())
        .arg(ctx.path());
    let mut term = Terminal::start(&kiln);
    term.until("opening `/bin/sh`");
    term.prompt();
    let answer = term.ask("cat /marker");
    assert!(answer.contains("remote-cache-run"), "{answer}");
    term.type_line("exit");
    assert_eq!(term.exit_code(), 1);
}

/// An SSH agent is a secret too: its socket is in the shell only with `--debug-secrets`.
#[test]
fn the_ssh_agent_reaches_the_shell_only_with_debug_secrets() {
    let keys = crate::support::tempdir("keys-");
    let key = keys.path().join("id");
    crate::ssh::new_key(&key, "debug-shell");
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN --mount=type=ssh echo ran > /marker; exit 3\n",
    )]);
    for (extra, expected) in [
        (None, "AGENT-ABSENT"),
        (Some("--debug-secrets"), "AGENT-THERE"),
    ] {
        let mut kiln = Kiln::new()
            .with_base()
            .args(["--on-error=shell", "--ssh"])
            .arg(format!("default={}", key.display()));
        if let Some(flag) = extra {
            kiln = kiln.arg(flag);
        }
        // Bound for the whole session: the store is the `Kiln`'s, removed when it is dropped.
        let kiln = kiln.arg(ctx.path());
        let mut term = Terminal::start(&kiln);
        term.until("opening `/bin/sh`");
        term.prompt();
        let answer = term.ask(r#"[ -S "$SSH_AUTH_SOCK" ] && A=THERE || A=ABSENT; echo AGENT-$A"#);
        assert!(answer.contains(expected), "{extra:?}: {answer}");
        term.type_line("exit");
        assert_eq!(term.exit_code(), 1);
    }
}
