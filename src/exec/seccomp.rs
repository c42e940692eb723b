//! The seccomp filter of every sandboxed step: Docker's default profile (moby's `profiles/seccomp/default.json`)
//! resolved for x86_64 and for Docker's default capability set, as a data table.
//!
//! Resolving it here rather than loading the JSON keeps the profile reviewable line by line and needs no
//! C library: the entries Docker gates on a capability the step does not have (`CAP_SYS_ADMIN`'s mount,
//! unshare, setns...; `CAP_SYS_MODULE`, `CAP_SYS_TIME`, ...) are simply absent, and the one it gates on a
//! capability the step has (`chroot`, for `CAP_SYS_CHROOT`) is present. Names in the profile that x86_64
//! does not have (the 32-bit `*32`, `*64` and `*_time64` calls, `socketcall`, ...) have no number here;
//! 32-bit and x32 system calls are refused as a whole, as Docker's profile would only allow their copies
//! of this list.

/// What a call not in the profile gets (Docker's `defaultAction`: `SCMP_ACT_ERRNO`, `defaultErrnoRet` 1).
const DENIED: u32 = nix::libc::EPERM as u32;

/// System calls allowed whatever their arguments, with their x86_64 numbers (the kernel's
/// `arch/x86/entry/syscalls/syscall_64.tbl`): Docker's unconditional list, plus `ptrace` and
/// `process_vm_*` (allowed on kernels from 4.8), `arch_prctl` and `modify_ldt` (amd64 only) and
/// `chroot` (`CAP_SYS_CHROOT`).
const ALLOWED: &[(&str, i64)] = &[
    ("read", 0),
    ("write", 1),
    ("open", 2),
    ("close", 3),
    ("stat", 4),
    ("fstat", 5),
    ("lstat", 6),
    ("poll", 7),
    ("lseek", 8),
    ("mmap", 9),
    ("mprotect", 10),
    ("munmap", 11),
    ("brk", 12),
    ("rt_sigaction", 13),
    ("rt_sigprocmask", 14),
    ("rt_sigreturn", 15),
    ("ioctl", 16),
    ("pread64", 17),
    ("pwrite64", 18),
    ("readv", 19),
    ("writev", 20),
    ("access", 21),
    ("pipe", 22),
    ("select", 23),
    ("sched_yield", 24),
    ("mremap", 25),
    ("msync", 26),
    ("mincore", 27),
    ("madvise", 28),
    ("shmget", 29),
    ("shmat", 30),
    ("shmctl", 31),
    ("dup", 32),
    ("dup2", 33),
    ("pause", 34),
    ("nanosleep", 35),
    ("getitimer", 36),
    ("alarm", 37),
    ("setitimer", 38),
    ("getpid", 39),
    ("sendfile", 40),
    ("connect", 42),
    ("accept", 43),
    ("sendto", 44),
    ("recvfrom", 45),
    ("sendmsg", 46),
    ("recvmsg", 47),
    ("shutdown", 48),
    ("bind", 49),
    ("listen", 50),
    ("getsockname", 51),
    ("getpeername", 52),
    ("socketpair", 53),
    ("setsockopt", 54),
    ("getsockopt", 55),
    ("fork", 57),
    ("vfork", 58),
    ("execve", 59),
    ("exit", 60),
    ("wait4", 61),
    ("kill", 62),
    ("uname", 63),
    ("semget", 64),
    ("semop", 65),
    ("semctl", 66),
    ("shmdt", 67),
    ("msgget", 68),
    ("msgsnd", 69),
    ("msgrcv", 70),
    ("msgctl", 71),
    ("fcntl", 72),
    ("flock", 73),
    ("fsync", 74),
    ("fdatasync", 75),
    ("truncate", 76),
    ("ftruncate", 77),
    ("getdents", 78),
    ("getcwd", 79),
    ("chdir", 80),
    ("fchdir", 81),
    ("rename", 82),
    ("mkdir", 83),
    ("rmdir", 84),
    ("creat", 85),
    ("link", 86),
    ("unlink", 87),
    ("symlink", 88),
    ("readlink", 89),
    ("chmod", 90),
    ("fchmod", 91),
    ("chown", 92),
    ("fchown", 93),
    ("lchown", 94),
    ("umask", 95),
    ("gettimeofday", 96),
    ("getrlimit", 97),
    ("getrusage", 98),
    ("sysinfo", 99),
    ("times", 100),
    ("ptrace", 101),
    ("getuid", 102),
    ("getgid", 104),
    ("setuid", 105),
    ("setgid", 106),
    ("geteuid", 107),
    ("getegid", 108),
    ("setpgid", 109),
    ("getppid", 110),
    ("getpgrp", 111),
    ("setsid", 112),
    ("setreuid", 113),
    ("setregid", 114),
    ("getgroups", 115),
    ("setgroups", 116),
    ("setresuid", 117),
    ("getresuid", 118),
    ("setresgid", 119),
    ("getresgid", 120),
    ("getpgid", 121),
    ("setfsuid", 122),
    ("setfsgid", 123),
    ("getsid", 124),
    ("capget", 125),
    ("capset", 126),
    ("rt_sigpending", 127),
    ("rt_sigtimedwait", 128),
    ("rt_sigqueueinfo", 129),
    ("rt_sigsuspend", 130),
    ("sigaltstack", 131),
    ("utime", 132),
    ("mknod", 133),
    ("statfs", 137),
    ("fstatfs", 138),
    ("getpriority", 140),
    ("setpriority", 141),
    ("sched_setparam", 142),
    ("sched_getparam", 143),
    ("sched_setscheduler", 144),
    ("sched_getscheduler", 145),
    ("sched_get_priority_max", 146),
    ("sched_get_priority_min", 147),
    ("sched_rr_get_interval", 148),
    ("mlock", 149),
    ("munlock", 150),
    ("mlockall", 151),
    ("munlockall", 152),
    ("modify_ldt", 154),
    ("prctl", 157),
    ("arch_prctl", 158),
    ("adjtimex", 159),
    ("setrlimit", 160),
    ("chroot", 161),
    ("sync", 162),
    ("gettid", 186),
    ("readahead", 187),
    ("setxattr", 188),
    ("lsetxattr", 189),
    ("fsetxattr", 190),
    ("getxattr", 191),
    ("lgetxattr", 192),
    ("fgetxattr", 193),
    ("listxattr", 194),
    ("llistxattr", 195),
    ("flistxattr", 196),
    ("removexattr", 197),
    ("lremovexattr", 198),
    ("fremovexattr", 199),
    ("tkill", 200),
    ("time", 201),
    ("futex", 202),
    ("sched_setaffinity", 203),
    ("sched_getaffinity", 204),
    ("set_thread_area", 205),
    ("io_setup", 206),
    ("io_destroy", 207),
    ("io_getevents", 208),
    ("io_submit", 209),
    ("io_cancel", 210),
    ("get_thread_area", 211),
    ("epoll_create", 213),
    ("epoll_ctl_old", 214),
    ("epoll_wait_old", 215),
    ("remap_file_pages", 216),
    ("getdents64", 217),
    ("set_tid_address", 218),
    ("restart_syscall", 219),
    ("semtimedop", 220),
    ("fadvise64", 221),
    ("timer_create", 222),
    ("timer_settime", 223),
    ("timer_gettime", 224),
    ("timer_getoverrun", 225),
    ("timer_delete", 226),
    ("clock_gettime", 228),
    ("clock_getres", 229),
    ("clock_nanosleep", 230),
    ("exit_group", 231),
    ("epoll_wait", 232),
    ("epoll_ctl", 233),
    ("tgkill", 234),
    ("utimes", 235),
    ("mq_open", 240),
    ("mq_unlink", 241),
    ("mq_timedsend", 242),
    ("mq_timedreceive", 243),
    ("mq_notify", 244),
    ("mq_getsetattr", 245),
    ("waitid", 247),
    ("ioprio_set", 251),
    ("ioprio_get", 252),
    ("inotify_init", 253),
    ("inotify_add_watch", 254),
    ("inotify_rm_watch", 255),
    ("openat", 257),
    ("mkdirat", 258),
    ("mknodat", 259),
    ("fchownat", 260),
    ("futimesat", 261),
    ("newfstatat", 262),
    ("unlinkat", 263),
    ("renameat", 264),
    ("linkat", 265),
    ("symlinkat", 266),
    ("readlinkat", 267),
    ("fchmodat", 268),
    ("faccessat", 269),
    ("pselect6", 270),
    ("ppoll", 271),
    ("set_robust_list", 273),
    ("get_robust_list", 274),
    ("splice", 275),
    ("tee", 276),
    ("sync_file_range", 277),
    ("vmsplice", 278),
    ("utimensat", 280),
    ("epoll_pwait", 281),
    ("signalfd", 282),
    ("timerfd_create", 283),
    ("eventfd", 284),
    ("fallocate", 285),
    ("timerfd_settime", 286),
    ("timerfd_gettime", 287),
    ("accept4", 288),
    ("signalfd4", 289),
    ("eventfd2", 290),
    ("epoll_create1", 291),
    ("dup3", 292),
    ("pipe2", 293),
    ("inotify_init1", 294),
    ("preadv", 295),
    ("pwritev", 296),
    ("rt_tgsigqueueinfo", 297),
    ("recvmmsg", 299),
    ("fanotify_mark", 301),
    ("prlimit64", 302),
    ("name_to_handle_at", 303),
    ("clock_adjtime", 305),
    ("syncfs", 306),
    ("sendmmsg", 307),
    ("getcpu", 309),
    ("process_vm_readv", 310),
    ("process_vm_writev", 311),
    ("sched_setattr", 314),
    ("sched_getattr", 315),
    ("renameat2", 316),
    ("seccomp", 317),
    ("getrandom", 318),
    ("memfd_create", 319),
    ("execveat", 322),
    ("membarrier", 324),
    ("mlock2", 325),
    ("copy_file_range", 326),
    ("preadv2", 327),
    ("pwritev2", 328),
    ("pkey_mprotect", 329),
    ("pkey_alloc", 330),
    ("pkey_free", 331),
    ("statx", 332),
    ("io_pgetevents", 333),
    ("rseq", 334),
    ("uretprobe", 335),
    ("pidfd_send_signal", 424),
    ("pidfd_open", 434),
    ("close_range", 436),
    ("openat2", 437),
    ("faccessat2", 439),
    ("epoll_pwait2", 441),
    ("landlock_create_ruleset", 444),
    ("landlock_add_rule", 445),
    ("landlock_restrict_self", 446),
    ("memfd_secret", 447),
    ("process_mrelease", 448),
    ("futex_waitv", 449),
    ("cachestat", 451),
    ("fchmodat2", 452),
    ("map_shadow_stack", 453),
    ("futex_wake", 454),
    ("futex_wait", 455),
    ("futex_requeue", 456),
    ("statmount", 457),
    ("listmount", 458),
    ("mseal", 462),
    ("setxattrat", 463),
    ("getxattrat", 464),
    ("listxattrat", 465),
    ("removexattrat", 466),
];

/// `clone` without any namespace flag: `flags & MASK == 0` (Docker's `SCMP_CMP_MASKED_EQ` 2114060288),
/// i.e. none of CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// The `personality` values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the
/// query 0xffffffff.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Socket families Docker refuses: AF_ALG (38) and AF_VSOCK (40); every other family is allowed.
const SOCKET_FAMILIES_DENIED: (u64, u64) = (38, 40);

/// `seccomp_data`'s fields, as byte offsets: the call's number, its architecture, and the low and high
/// halves of its first argument (little-endian).
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LO: u32 = 16;
const ARG0_HI: u32 = 20;
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

const RET_ALLOW: u32 = 0x7FFF_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

pub use super::bpf::Filter;
use super::bpf::{Asm, BPF_JSET};
#[cfg(test)]
use super::bpf::{BPF_JA, BPF_JEQ, BPF_JGE, BPF_LD_W_ABS, BPF_RET_K};

/// The profile as one BPF program. Written here rather than with a filter compiler: those test the
/// allowed calls one after the other, and a 1,600-instruction chain cost each step ~1.2 ms (building it,
/// and the kernel checking and JIT-compiling it and running it for every call number to find the ones
/// it always allows, which then skip the filter). A binary search over the sorted numbers is ~10
/// comparisons deep and a few hundred instructions long.
///
/// Order: a call of another architecture kills the process (no 32-bit or x32 table is allowed); then the
/// four calls with conditions; then the search, whose leaves allow; anything else gets EPERM. `clone3`
/// fails with ENOSYS, as in Docker's profile for a step without `CAP_SYS_ADMIN`, so that glibc falls back
/// to `clone`, whose flags the filter can inspect.
pub fn filters() -> Result<Vec<Filter>, String> {
    if !cfg!(target_arch = "x86_64") {
        // The table holds x86_64 numbers; a filter for another architecture would kill every step.
        return Err("kiln's seccomp profile is defined for x86_64 only".into());
    }
    use nix::libc::{SYS_clone, SYS_clone3, SYS_personality, SYS_socket};
    let deny = RET_ERRNO | DENIED;
    let mut a = Asm::default();
    a.load(ARCH);
    a.jump_if(AUDIT_ARCH_X86_64, "arch ok");
    a.ret(RET_KILL_PROCESS);
    a.label("arch ok");
    a.load(NR);
    for (nr, block) in [
        (SYS_clone, "clone"),
        (SYS_clone3, "clone3"),
        (SYS_personality, "personality"),
        (SYS_socket, "socket"),
    ] {
        a.jump_if(nr as u32, block);
    }
    let allowed: Vec<u32> = ALLOWED.iter().map(|&(_, nr)| nr as u32).collect();
    a.search(&allowed, RET_ALLOW, deny);

    a.label("clone");
    a.load(ARG0_LO);
    a.op(BPF_JSET, CLONE_NAMESPACE_FLAGS as u32, "deny", "allow");
    a.label("clone3");
    a.ret(RET_ERRNO | nix::libc::ENOSYS as u32);
    a.label("personality");
    a.load(ARG0_HI);
    a.jump_unless(0, "deny");
    a.load(ARG0_LO);
    for &p in PERSONALITIES {
        a.jump_if(p as u32, "allow");
    }
    a.jump("deny");
    a.label("socket");
    let (alg, vsock) = SOCKET_FAMILIES_DENIED;
    a.load(ARG0_HI);
    a.jump_unless(0, "allow");
    a.load(ARG0_LO);
    a.jump_if(alg as u32, "deny");
    a.jump_if(vsock as u32, "deny");
    a.label("allow");
    a.ret(RET_ALLOW);
    a.label("deny");
    a.ret(deny);
    Ok(vec![a.finish()?])
}

/// Installs the filters on this thread (and what it executes). Without `no_new_privs` (which filter
/// libraries set first): BuildKit does not set it, so setuid programs keep working. Without it the
/// kernel wants CAP_SYS_ADMIN, so this runs before the step's capabilities are dropped.
pub fn install(filters: &[Filter]) -> Result<(), String> {
    use nix::libc;
    for f in filters {
        let prog = libc::sock_fprog {
            len: u16::try_from(f.len()).map_err(|_| "the seccomp filter is too long")?,
            filter: f.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `f`, which outlives the call; the kernel copies the program.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(format!(
                "cannot install the seccomp filter: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_ordered_unique_and_agrees_with_libc() {
        assert!(ALLOWED.windows(2).all(|w| w[0].1 < w[1].1));
        let known = [
            ("read", nix::libc::SYS_read),
            ("execve", nix::libc::SYS_execve),
            ("capset", nix::libc::SYS_capset),
            ("chroot", nix::libc::SYS_chroot),
            ("ptrace", nix::libc::SYS_ptrace),
            ("openat2", nix::libc::SYS_openat2),
            ("close_range", nix::libc::SYS_close_range),
        ];
        for (name, nr) in known {
            assert_eq!(
                ALLOWED.iter().find(|e| e.0 == name).map(|e| e.1),
                Some(nr),
                "{name}"
            );
        }
        for denied in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "init_module",
            "swapoff",
            "sethostname",
            "reboot",
            "kexec_load",
            "bpf",
            "clone",
            "clone3",
            "socket",
            "personality",
            "open_by_handle_at",
            "pivot_root",
            "keyctl",
            "add_key",
            "request_key",
        ] {
            assert!(ALLOWED.iter().all(|e| e.0 != denied), "{denied}");
        }
    }

    /// The filters, installed in a forked child (with `no_new_privs`, so no privilege is needed), answer
    /// as Docker's profile does. The child only makes raw system calls and reports through its exit code.
    #[test]
    fn the_installed_filters_answer_as_dockers_profile() {
        use nix::libc::{self, c_long};
        let filters = filters().unwrap();
        let checks: [(c_long, [c_long; 2], i32); 9] = [
            (libc::SYS_clone3, [0, 0], libc::ENOSYS),
            (
                libc::SYS_unshare,
                [libc::CLONE_NEWNS as c_long, 0],
                libc::EPERM,
            ),
            (libc::SYS_setns, [-1, 0], libc::EPERM),
            (
                libc::SYS_socket,
                [libc::AF_VSOCK as c_long, libc::SOCK_STREAM as c_long],
                libc::EPERM,
            ),
            (
                libc::SYS_socket,
                [libc::AF_ALG as c_long, libc::SOCK_SEQPACKET as c_long],
                libc::EPERM,
            ),
            (libc::SYS_personality, [0x0040000, 0], libc::EPERM),
            (
                libc::SYS_clone,
                [(libc::CLONE_NEWUSER | libc::SIGCHLD) as c_long, 0],
                libc::EPERM,
            ),
            (libc::SYS_keyctl, [0, 0], libc::EPERM),
            (libc::SYS_getpid, [0, 0], 0),
        ];
        // SAFETY: the child makes only async-signal-safe calls (prctl, raw syscalls, _exit).
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let mut failed = 0;
                // SAFETY: plain system calls with integer arguments; the filters outlive them.
                unsafe {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    if install(&filters).is_err() {
                        libc::_exit(100);
                    }
                    for (i, (nr, [a, b], want)) in checks.iter().enumerate() {
                        let rc = libc::syscall(*nr, *a, *b, 0, 0, 0);
                        let got = if rc == -1 {
                            *libc::__errno_location()
                        } else {
                            0
                        };
                        if got != *want {
                            failed |= 1 << i;
                        }
                    }
                    libc::_exit(failed);
                }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(
                    status,
                    nix::sys::wait::WaitStatus::Exited(child, 0),
                    "bit i of the exit code: check i answered wrong"
                );
            }
        }
    }

    /// Runs a classic BPF program on `seccomp_data` (the instructions the assembler emits).
    fn run(prog: &Filter, nr: u32, arch: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        data[16..24].copy_from_slice(&arg0.to_le_bytes());
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = prog[pc];
            pc += 1;
            let k = i.k as usize;
            let cond = |c: bool| if c { i.jt as usize } else { i.jf as usize };
            match i.code {
                BPF_LD_W_ABS => acc = u32::from_le_bytes(data[k..k + 4].try_into().unwrap()),
                BPF_JEQ => pc += cond(acc == i.k),
                BPF_JGE => pc += cond(acc >= i.k),
                BPF_JSET => pc += cond(acc & i.k != 0),
                BPF_JA => pc += k,
                BPF_RET_K => return i.k,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    /// Docker's profile, as written in the table: what a call gets.
    fn profile(nr: u32, arch: u32, arg0: u64) -> u32 {
        use nix::libc;
        let errno = |e: i32| RET_ERRNO | e as u32;
        let allow_if = |ok: bool| if ok { RET_ALLOW } else { errno(libc::EPERM) };
        let (alg, vsock) = SOCKET_FAMILIES_DENIED;
        let n = i64::from(nr);
        if arch != AUDIT_ARCH_X86_64 {
            RET_KILL_PROCESS
        } else if n == libc::SYS_clone {
            allow_if(arg0 & CLONE_NAMESPACE_FLAGS == 0)
        } else if n == libc::SYS_clone3 {
            errno(libc::ENOSYS)
        } else if n == libc::SYS_personality {
            allow_if(PERSONALITIES.contains(&arg0))
        } else if n == libc::SYS_socket {
            allow_if(arg0 != alg && arg0 != vsock)
        } else {
            allow_if(ALLOWED.iter().any(|e| e.1 == n))
        }
    }

    /// The program answers every call number (and the x32 ones, and another architecture's) with every
    /// interesting first argument exactly as the table says, and stays short.
    #[test]
    fn the_filter_is_the_table() {
        let f = filters().unwrap();
        assert_eq!(f.len(), 1);
        assert!(f[0].len() < 1024, "{} instructions", f[0].len());
        let args: Vec<u64> = [
            0u64,
            8,
            0x20000,
            0x20008,
            0xffff_ffff,
            0x1_0000_0000,
            2,
            37,
            38,
            39,
        ]
        .into_iter()
        .chain([
            40,
            41,
            0x1_0000_0026,
            u64::MAX,
            0x0040000,
            0x1000_0000,
            0x0002_0000 | 17,
        ])
        .chain([
            nix::libc::CLONE_NEWUSER as u64 | 17,
            nix::libc::CLONE_VM as u64,
        ])
        .collect();
        for nr in (0..1024).chain(0x4000_0000..0x4000_0400) {
            for arch in [AUDIT_ARCH_X86_64, 0x4000_0003] {
                for &arg in &args {
                    assert_eq!(
                        run(&f[0], nr, arch, arg),
                        profile(nr, arch, arg),
                        "call {nr:#x}, arch {arch:#x}, arg {arg:#x}"
                    );
                }
            }
        }
    }
}
