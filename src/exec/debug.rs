//! The debug shell's terminal (`--on-error=shell`). kiln hands the caller's terminal, in raw mode, to the
//! helper as fd 3; the helper gives the sandboxed shell a pty of the sandbox's own devpts, as its
//! controlling terminal, and copies bytes between the two. The shell never holds the caller's terminal
//! itself: a process with it could push input into the caller's shell (`TIOCSTI`) or outlive the session.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::termios::{SetArg, Termios, cfmakeraw, tcgetattr, tcsetattr};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::diag::{Diagnostic, Result};

/// The helper's descriptor of the caller's terminal.
pub const TERMINAL_FD: i32 = 3;

/// The caller's controlling terminal.
pub struct Terminal {
    file: File,
}

impl Terminal {
    pub fn open() -> Result<Terminal> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map(|file| Terminal { file })
            .map_err(|e| Diagnostic::io("the debug shell needs a terminal", e))
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Puts the terminal in raw mode (keys, Ctrl-C included, go to the shell as typed) until the guard
    /// is dropped.
    pub fn raw(&self) -> Result<Raw> {
        let saved = tcgetattr(&self.file)
            .map_err(|e| Diagnostic::env(format!("cannot read the terminal's mode: {e}")))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&self.file, SetArg::TCSANOW, &raw)
            .map_err(|e| Diagnostic::env(format!("cannot set the terminal's mode: {e}")))?;
        let file = self
            .file
            .try_clone()
            .map_err(|e| Diagnostic::io("cannot hold the terminal", e))?;
        Ok(Raw { file, saved })
    }
}

/// The terminal's mode before the shell, restored when dropped.
pub struct Raw {
    file: File,
    saved: Termios,
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = tcsetattr(&self.file, SetArg::TCSADRAIN, &self.saved);
    }
}

/// A pty of the sandbox's devpts: the helper keeps the master, the shell gets the slave.
pub struct Pty {
    pub(super) master: OwnedFd,
    pub(super) slave: OwnedFd,
}

fn terminal() -> BorrowedFd<'static> {
    // SAFETY: kiln passes the terminal as fd 3 whenever it asks for a shell, and the helper never closes
    // it.
    unsafe { BorrowedFd::borrow_raw(TERMINAL_FD) }
}

/// Opens a pty from the devpts mounted at `root`/dev/pts, sized as the caller's terminal.
pub(super) fn open_pty(root: &Path) -> std::result::Result<Pty, String> {
    // Nothing in the sandbox may inherit the caller's terminal.
    nix::fcntl::fcntl(
        terminal(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| format!("no terminal from kiln: {e}"))?;
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(root.join("dev/pts/ptmx"))
        .map_err(|e| format!("cannot open a pty: {e}"))?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int; TIOCGPTPEER takes flags and returns a new descriptor we own.
    let slave = unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) < 0 {
            return Err(format!("cannot unlock the pty: {}", Errno::last()));
        }
        let fd = libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if fd < 0 {
            return Err(format!("cannot open the pty's terminal: {}", Errno::last()));
        }
        OwnedFd::from_raw_fd(fd)
    };
    resize(&master, &mut None);
    Ok(Pty { master, slave })
}

/// Gives the pty the caller's window size when it changed since `last`.
fn resize(master: &OwnedFd, last: &mut Option<(u16, u16)>) {
    // SAFETY: TIOCGWINSZ writes and TIOCSWINSZ reads one `winsize`.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(TERMINAL_FD, libc::TIOCGWINSZ, &mut size) < 0 {
            return;
        }
        if *last != Some((size.ws_row, size.ws_col)) {
            *last = Some((size.ws_row, size.ws_col));
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size);
        }
    }
}

/// In the shell's process (pid 1 of the sandbox), before it execs: a session of its own with the pty as
/// its controlling terminal and its stdin, stdout and stderr.
pub(super) fn attach(slave: &OwnedFd) -> std::result::Result<(), String> {
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal the terminal from another session).
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(format!("cannot take the pty: {}", Errno::last()));
    }
    nix::unistd::dup2_stdin(slave).map_err(|e| format!("dup2: {e}"))?;
    nix::unistd::dup2_stdout(slave).map_err(|e| format!("dup2: {e}"))?;
    nix::unistd::dup2_stderr(slave).map_err(|e| format!("dup2: {e}"))
}

/// In the helper: copies the caller's keys to the shell and its output back until the shell (`child`)
/// exits, and returns its exit code.
pub(super) fn relay(master: OwnedFd, child: Pid) -> std::result::Result<i32, String> {
    let mut buf = [0u8; 8192];
    let mut size = None;
    let mut out = File::from(
        terminal()
            .try_clone_to_owned()
            .map_err(|e| format!("no terminal: {e}"))?,
    );
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(drain(&master, &mut out, code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return Ok(drain(&master, &mut out, 128 + sig as i32));
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("waiting for the shell: {e}")),
        }
        resize(&master, &mut size);
        let mut fds = [
            PollFd::new(terminal(), PollFlags::POLLIN),
            PollFd::new(master.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, 100u16) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let ready = |fd: &PollFd<'_>| {
            fd.revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
        };
        let (keys, output) = (ready(&fds[0]), ready(&fds[1]));
        if keys {
            match nix::unistd::read(terminal(), &mut buf) {
                Ok(n) if n > 0 => write_all(&master, &buf[..n]),
                // The caller's terminal is gone: so is the session.
                _ => {
                    let _ = kill(child, Signal::SIGKILL);
                }
            }
        }
        if output {
            match nix::unistd::read(&master, &mut buf) {
                Ok(n) if n > 0 => {
                    let _ = out.write_all(&buf[..n]);
                }
                // EIO: every slave is closed, the shell is ending; its status comes next round.
                _ => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }
}

/// What the shell printed before it exited, then its exit code.
fn drain(master: &OwnedFd, out: &mut File, code: i32) -> i32 {
    let mut buf = [0u8; 8192];
    let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLIN)];
    while poll(&mut fds, 0u16).is_ok_and(|n| n > 0) {
        match nix::unistd::read(master, &mut buf) {
            Ok(n) if n > 0 => {
                let _ = out.write_all(&buf[..n]);
            }
            _ => break,
        }
    }
    code
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => return,
        }
    }
}
