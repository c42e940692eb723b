//! The sandbox of a RUN step, as BuildKit's default: Docker's default capabilities (and the kernel's setuid
//! rules for a non-root user), Docker's seccomp profile, a minimal /dev, /proc with Docker's masked and
//! read-only paths, a read-only /sys, device nodes a step makes that do not open; and the entitlements that
//! lift it (`--allow security.insecure`, `--allow network.host`), which change no cache key.
//! The refusals without an entitlement are data-driven cases in `tests/cases/errors/`.

use crate::support::{Kiln, Output, context, tempdir};

/// Docker's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE
/// NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
const DEFAULT_CAPS: &str = "00000000a80425fb";
const NO_CAPS: &str = "0000000000000000";

fn build(dockerfile: &str, extra: &[&str]) -> Output {
    let ctx = context(&[("Dockerfile", dockerfile)]);
    Kiln::new().with_base().args(extra).arg(ctx.path()).run()
}

/// The text a step printed after `tag ` on each of its lines (steps tag their lines to be told apart).
fn tagged(out: &Output, tag: &str) -> Vec<String> {
    let marker = format!(" {tag} ");
    out.stderr
        .lines()
        .filter_map(|l| l.split_once(&marker).map(|(_, rest)| rest.to_string()))
        .collect()
}

/// `Cap*:` lines of /proc/self/status as (name, hex) pairs.
fn caps(lines: &[String]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.starts_with("Cap")
                .then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

fn expected(inh: &str, prm: &str, eff: &str, bnd: &str) -> Vec<(String, String)> {
    [
        ("CapInh", inh),
        ("CapPrm", prm),
        ("CapEff", eff),
        ("CapBnd", bnd),
        ("CapAmb", NO_CAPS),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn root_has_dockers_default_capabilities_a_filter_no_no_new_privs_and_a_user_only_the_bounding_set()
{
    let out = build(
        "FROM base
RUN grep ^Cap /proc/self/status | sed 's/^/root /'
RUN grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\\t' | sed 's/^/status /'
USER 1000:1000
RUN grep ^Cap /proc/self/status | sed 's/^/user /'
",
        &[],
    );
    out.success();
    assert_eq!(
        caps(&tagged(&out, "root")),
        expected(NO_CAPS, DEFAULT_CAPS, DEFAULT_CAPS, DEFAULT_CAPS),
        "{}",
        out.stderr
    );
    // BuildKit sets no `no_new_privs` (setuid programs such as `su` work); the filter is on (mode 2).
    assert_eq!(
        tagged(&out, "status"),
        ["NoNewPrivs:0", "Seccomp:2"],
        "{}",
        out.stderr
    );
    assert_eq!(
        caps(&tagged(&out, "user")),
        expected(NO_CAPS, NO_CAPS, NO_CAPS, DEFAULT_CAPS),
        "{}",
        out.stderr
    );
}

/// System calls outside Docker's profile (or needing a capability outside its set) fail with EPERM;
/// `chroot` (CAP_SYS_CHROOT) and `mknod` (CAP_MKNOD) are in it.
/// kiln turns transparent huge pages off for itself (it runs for milliseconds); the programs of a step get
/// the machine's own policy back, as under any other builder.
#[test]
fn a_step_gets_the_machines_huge_page_policy() {
    let out = build(
        "FROM base\nRUN grep THP_enabled /proc/self/status | sed 's/^/thp /'\n",
        &[],
    );
    out.success();
    assert_eq!(tagged(&out, "thp"), ["THP_enabled:\t1"], "{}", out.stderr);
}

/// A step's root is a `volatile` overlay: its unmount, when the step ends, does not write the whole
/// disk out on the build's path (the store syncs a snapshot before its record names it, off that path);
/// what the step wrote is the next step's all the same.
#[test]
fn a_steps_root_is_a_volatile_overlay_that_keeps_what_it_wrote() {
    let out = build(
        "FROM base
RUN echo kept > /made && awk '$5 == \"/\" { print \"root \" $NF }' /proc/self/mountinfo
RUN sed 's/^/made /' /made
",
        &[],
    );
    out.success();
    let root = tagged(&out, "root");
    assert!(
        // Kernels from 6.6 show the option as `fsync=volatile`.
        root.iter().any(|o| o
            .split(',')
            .any(|o| o == "volatile" || o == "fsync=volatile")),
        "{root:?}\n{}",
        out.stderr
    );
    assert_eq!(tagged(&out, "made"), ["kept"], "{}", out.stderr);
}

#[test]
fn syscalls_the_profile_denies_fail_with_eperm() {
    let out = build(
        "FROM base
RUN for c in 'unshare -m true' 'unshare -n true' 'hostname evil' 'swapoff /dev/null' \
      'nsenter -t 1 -m true' 'mount -t tmpfs t /tmp'; do \
      $c 2>&1 | sed \"s|^|denied $c: |\"; done; \
    chroot / true && echo 'allowed chroot'; mknod /tmp/n c 1 3 && echo 'allowed mknod'
",
        &[],
    );
    out.success();
    let denied = tagged(&out, "denied");
    for call in ["unshare -m", "unshare -n", "hostname", "swapoff", "nsenter"] {
        assert!(
            denied
                .iter()
                .any(|l| l.starts_with(call) && l.contains("Operation not permitted")),
            "{call} was not refused with EPERM:\n{}",
            out.stderr
        );
    }
    // busybox's mount words EPERM its own way.
    assert!(
        denied
            .iter()
            .any(|l| l.starts_with("mount") && l.contains("permission denied")),
        "{}",
        out.stderr
    );
    assert_eq!(
        tagged(&out, "allowed"),
        ["chroot", "mknod"],
        "{}",
        out.stderr
    );
}

#[test]
fn dev_has_only_the_minimal_entries_and_a_devpts_of_its_own() {
    let out = build(
        "FROM base
RUN echo \"in-dev $(ls -A /dev | tr '\\n' ' ')\"; echo \"in-pts $(exec 3<>/dev/ptmx; ls -A /dev/pts | tr '\\n' ' ')\"; \
    grep ' /dev/pts ' /proc/self/mountinfo | sed 's/^/mount /'; \
    head -c 4 /dev/zero | wc -c | sed 's/^/read-zero /'; echo ok > /dev/null && echo 'wrote-null ok'
",
        &[],
    );
    out.success();
    assert_eq!(
        tagged(&out, "in-dev"),
        ["fd full null ptmx pts random shm stderr stdin stdout tty urandom zero "],
        "{}",
        out.stderr
    );
    // Opening /dev/ptmx made pty 0 of this instance: the host's ptys are not there.
    assert_eq!(tagged(&out, "in-pts"), ["0 ptmx "], "{}", out.stderr);
    let mount = tagged(&out, "mount").join("\n");
    assert!(
        mount.contains("devpts") && mount.contains("ptmxmode=666"),
        "{}",
        out.stderr
    );
    assert_eq!(tagged(&out, "read-zero"), ["4"]);
    assert_eq!(tagged(&out, "wrote-null"), ["ok"]);
}

/// A node the step makes (it has CAP_MKNOD) does not open, wherever it can write: kiln has no device
/// cgroup, so every writable mount is `nodev`.
#[test]
fn device_nodes_a_step_makes_do_not_open() {
    let out = build(
        "FROM base
RUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t --mount=type=bind,target=/b,rw \
    for d in /tmp /dev /dev/shm /c /t /b; do mknod $d/loop b 7 0 && \
      { head -c 1 $d/loop >/dev/null 2>&1 && echo \"opened $d\" || echo \"refused $d\"; }; rm -f $d/loop; done
",
        &[],
    );
    out.success();
    assert!(tagged(&out, "opened").is_empty(), "{}", out.stderr);
    assert_eq!(
        tagged(&out, "refused").len(),
        6,
        "every node must be made and refused:\n{}",
        out.stderr
    );
}

#[test]
fn masked_paths_read_empty_and_proc_sys_and_sys_are_read_only() {
    let out = build(
        "FROM base
RUN for p in /proc/asound /proc/acpi /proc/kcore /proc/keys /proc/latency_stats /proc/timer_list \
      /proc/timer_stats /proc/sched_debug /proc/scsi /sys/firmware /sys/devices/virtual/powercap; do \
      if [ -d $p ]; then echo \"masked $p $(ls -A $p | wc -l)\"; \
      elif [ -e $p ]; then echo \"masked $p $(cat $p | wc -c)\"; fi; done; \
    echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo 'wrote /proc/sys'; \
    touch /sys/kiln 2>/dev/null && echo 'wrote /sys'; \
    grep -E ' /(sys|proc/sys|proc/bus|proc/fs|proc/irq) ' /proc/self/mountinfo | cut -d' ' -f5,6 | sed 's/^/mount /'
",
        &[],
    );
    out.success();
    let masked = tagged(&out, "masked");
    // Which of them exist depends on the kernel; /sys/firmware and /proc/timer_list always do.
    assert!(
        masked.iter().any(|l| l.starts_with("/sys/firmware ")),
        "{}",
        out.stderr
    );
    for line in &masked {
        assert!(line.ends_with(" 0"), "{line} is not empty:\n{}", out.stderr);
    }
    assert!(tagged(&out, "wrote").is_empty(), "{}", out.stderr);
    let mounts = tagged(&out, "mount");
    for path in ["/sys", "/proc/sys"] {
        assert!(
            mounts.iter().any(|m| m.starts_with(&format!("{path} ro,"))
                && m.contains("nosuid")
                && m.contains("nodev")
                && m.contains("noexec")),
            "{path} is not read-only, nosuid, nodev, noexec: {mounts:?}"
        );
    }
}

/// The capabilities kiln itself has (the test runs as root): what an insecure step gets.
fn own_bounding_set() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("a CapBnd line")
        .trim()
        .to_string()
}

#[test]
fn an_allowed_insecure_step_runs_without_the_sandbox() {
    let out = build(
        "FROM base
RUN --security=insecure grep ^Cap /proc/self/status | sed 's/^/insecure /'; \
    mkdir -p /m && mount -t tmpfs t /m && echo 'insecure mounted'; \
    grep ' /sys ' /proc/self/mountinfo | cut -d' ' -f5,6 | sed 's/^/insecure mount /'
RUN grep ^CapEff /proc/self/status | sed 's/^/after /'
",
        &["--allow", "security.insecure"],
    );
    out.success();
    let all = own_bounding_set();
    let lines = tagged(&out, "insecure");
    assert_eq!(
        caps(&lines),
        expected(NO_CAPS, &all, &all, &all),
        "{}",
        out.stderr
    );
    assert!(lines.iter().any(|l| l == "mounted"), "{}", out.stderr);
    assert!(
        lines.iter().any(|l| l.starts_with("mount /sys rw,")),
        "{}",
        out.stderr
    );
    // The next step is sandboxed again.
    assert_eq!(
        tagged(&out, "after"),
        [format!("CapEff:\t{DEFAULT_CAPS}")],
        "{}",
        out.stderr
    );
}

/// Entitlements are the user's permission, not part of a step: allowing more hits the same cache.
#[test]
fn entitlements_change_no_cache_key() {
    let store = tempdir("store-");
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN --network=host echo host > /h\nRUN echo plain > /p\n",
    )]);
    let run = |allow: &str| {
        Kiln::build_in(store.path())
            .with_base()
            .args(["--allow", allow])
            .arg(ctx.path())
            .run()
    };
    let first = run("network.host");
    first.success();
    assert_eq!(first.summary().1, 0, "{}", first.stderr);
    let second = run("network.host,security.insecure");
    second.success();
    assert_eq!(second.summary().0, 0, "{}", second.stderr);
}

/// A root without /proc, /dev or /sys gets them only as mount points: the layer keeps none of them.
#[test]
fn mount_points_for_proc_dev_and_sys_leave_nothing_in_the_layer() {
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("fs");
    let out = build(
        "FROM base AS tools
FROM scratch
COPY --from=tools /bin/busybox /bin/busybox
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox ls -d /proc /dev /sys && /bin/busybox touch /made\"]
",
        &["-o", &format!("type=local,dest={}", dest.display())],
    );
    out.success();
    let mut top: Vec<String> = std::fs::read_dir(&dest)
        .expect("the exported filesystem")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    top.sort();
    assert_eq!(top, ["bin", "made"], "{}", out.stderr);
}

/// A descriptor kiln inherits without close-on-exec (a CI runner's pipe, a `<(...)`) never reaches a
/// step: the step sees stdin, stdout and stderr only, as runc gives them under BuildKit.
#[test]
fn a_step_inherits_no_descriptor_beyond_its_stdio() {
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN for f in /proc/self/fd/*; do echo \"f\"ds ${f##*/}; done\n",
    )]);
    let scratch = tempdir("fds-");
    let open = scratch.path().join("open");
    std::fs::write(&open, "").unwrap();
    let out = Kiln::new()
        .with_base()
        .wrapped(&[
            "sh",
            "-c",
            &format!(
                "exec 7<{} 9>>{}; exec \"$0\" \"$@\"",
                open.display(),
                open.display()
            ),
        ])
        .args(["--no-cache", "--progress", "plain"])
        .arg(ctx.path())
        .run();
    out.success();
    // The shell's own descriptors: 3 is the directory its glob reads, 10 to 19 what it saves.
    let fds = tagged(&out, "fds");
    assert!(!fds.is_empty(), "{}", out.stderr);
    assert!(
        fds.iter()
            .all(|fd| ["0", "1", "2", "3"].contains(&fd.as_str())
                || fd.parse::<u32>().is_ok_and(|n| (10..20).contains(&n))),
        "the step holds an inherited descriptor: {fds:?}"
    );
    assert!(
        !fds.contains(&"7".to_string()) && !fds.contains(&"9".to_string()),
        "{fds:?}"
    );
}
