//! Steps for a foreign architecture run through the kernel's binfmt_misc: an arm64 ELF started in a step
//! is handed to the registered emulator (Debian's `qemu-user-static`). The handler must carry the `F`
//! (fix-binary) flag: the kernel then opens the emulator when it is registered, so it is found from
//! inside a step's mount namespace, where the host's `/usr/libexec/qemu-binfmt` does not exist.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::diag::{Diagnostic, Result};
use crate::graph::{Dag, Op};
use crate::platform::Platform;

/// Where the kernel lists binfmt_misc handlers.
const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// The platforms the graph's RUN steps run as that cannot run here (natively, or through an enabled
/// binfmt_misc handler with the fix-binary flag), each with why and what to do about it. Found before any
/// step runs, refused only when such a step is about to run (`solve::SolveOptions::unrunnable`): a step
/// the cache answers needs no emulator, as in BuildKit, which looks for one when it executes a step.
pub fn unrunnable(graph: &Dag) -> HashMap<Option<String>, Diagnostic> {
    unrunnable_in(graph, Path::new(BINFMT_DIR), &Platform::host())
}

pub(crate) fn unrunnable_in(
    graph: &Dag,
    dir: &Path,
    host: &Platform,
) -> HashMap<Option<String>, Diagnostic> {
    let mut found = HashMap::new();
    let mut checked = BTreeSet::new();
    for n in graph.topo_order() {
        let Op::Run(r) = &graph.dag[n].op else {
            continue;
        };
        if !checked.insert(r.platform.clone()) {
            continue;
        }
        let platform = Platform::from_graph(r.platform.as_deref());
        if let Err(d) = handler(&platform, dir, host) {
            found.insert(r.platform.clone(), d);
        }
    }
    found
}

/// Whether `platform`'s programs run here, and if not, why, with what to do about it.
fn handler(platform: &Platform, dir: &Path, host: &Platform) -> Result<()> {
    if runs_natively(platform, host) {
        return Ok(());
    }
    let Some(qemu) = qemu_arch(platform) else {
        return Err(Diagnostic::input(format!(
            "kiln cannot run steps for {platform} on {host}: no emulator runs its programs"
        ))
        .help("build for another --platform, or write the stage so it has no RUN steps"));
    };
    let name = format!("qemu-{qemu}");
    let install = format!(
        "install Debian's `qemu-user-static` and `binfmt-support` packages, which register `{name}` \
         (in a container, where they do not, run `update-binfmts --import {name}` as root)"
    );
    if !dir.join("status").is_file() {
        return Err(Diagnostic::env(format!(
            "cannot run steps for {platform}: binfmt_misc is not mounted at {}",
            dir.display()
        ))
        .help(format!(
            "mount it (`mount -t binfmt_misc binfmt_misc {}`), then {install}",
            dir.display()
        )));
    }
    let Ok(entry) = std::fs::read_to_string(dir.join(&name)) else {
        return Err(Diagnostic::env(format!(
            "cannot run steps for {platform}: no binfmt_misc handler `{name}` is registered"
        ))
        .help(install));
    };
    let enabled = |text: &str| text.lines().next() == Some("enabled");
    let global = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
    if !enabled(&entry) || !enabled(&global) {
        return Err(Diagnostic::env(format!(
            "cannot run steps for {platform}: the binfmt_misc handler `{name}` is disabled"
        ))
        .help(format!("enable it: `update-binfmts --enable {name}`")));
    }
    let flags = entry
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap_or_default();
    if !flags.contains('F') {
        return Err(Diagnostic::env(format!(
            "cannot run steps for {platform}: the binfmt_misc handler `{name}` lacks the F (fix-binary) flag, so its emulator cannot be found inside a step"
        ))
        .help(format!(
            "register it again with the flag: `update-binfmts --disable {name}; update-binfmts --import {name}` (Debian's qemu-user-static asks for it)"
        )));
    }
    Ok(())
}

/// The host's own architectures: an amd64 machine runs 386 programs too, an arm64 one arm's.
fn runs_natively(platform: &Platform, host: &Platform) -> bool {
    platform.os == host.os
        && (platform.arch == host.arch
            || matches!(
                (host.arch.as_str(), platform.arch.as_str()),
                ("amd64", "386") | ("arm64", "arm")
            ))
}

/// The name qemu (and Debian's binfmt entries, `qemu-<name>`) gives an architecture.
fn qemu_arch(platform: &Platform) -> Option<&'static str> {
    if platform.os != "linux" {
        return None;
    }
    Some(match platform.arch.as_str() {
        "amd64" => "x86_64",
        "386" => "i386",
        "arm64" => "aarch64",
        "arm" => "arm",
        "ppc64le" => "ppc64le",
        "ppc64" => "ppc64",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "mips64le" => "mips64el",
        "mips64" => "mips64",
        "mipsle" => "mipsel",
        "mips" => "mips",
        "loong64" => "loongarch64",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm64() -> Platform {
        Platform::parse("linux/arm64").unwrap()
    }

    fn message(dir: &Path) -> String {
        let d = handler(&arm64(), dir, &Platform::amd64()).unwrap_err();
        format!("{}\n{}", d.message, d.help.unwrap_or_default())
    }

    #[test]
    fn a_missing_or_unusable_handler_is_named_with_its_package() {
        let dir = tempfile::tempdir().unwrap();
        let unmounted = message(dir.path());
        assert!(
            unmounted.contains("binfmt_misc is not mounted"),
            "{unmounted}"
        );
        std::fs::write(dir.path().join("status"), "enabled\n").unwrap();
        let missing = message(dir.path());
        assert!(
            missing.contains("no binfmt_misc handler `qemu-aarch64`")
                && missing.contains("qemu-user-static"),
            "{missing}"
        );
        let entry = dir.path().join("qemu-aarch64");
        std::fs::write(&entry, "disabled\ninterpreter /x\nflags: F\n").unwrap();
        assert!(message(dir.path()).contains("is disabled"));
        std::fs::write(&entry, "enabled\ninterpreter /x\nflags: P\n").unwrap();
        assert!(message(dir.path()).contains("fix-binary"));
        std::fs::write(&entry, "enabled\ninterpreter /x\nflags: PF\n").unwrap();
        assert!(handler(&arm64(), dir.path(), &Platform::amd64()).is_ok());
    }

    /// A graph of RUN steps, one per platform given (`None`: linux/amd64).
    fn steps(platforms: &[Option<&str>]) -> Dag {
        use crate::graph::op::{Network, RunOp};
        let mut p = crate::graph::Program::default();
        let scratch = p.push(Op::Scratch, vec![], "scratch".into(), None);
        for (i, platform) in platforms.iter().enumerate() {
            let run = RunOp {
                args: vec![format!("step {i}")],
                env: Vec::new(),
                cwd: None,
                user: None,
                network: Network::Default,
                insecure: false,
                secrets: Vec::new(),
                mounts: Vec::new(),
                platform: platform.map(String::from),
            };
            let node = p.push(Op::Run(run), vec![scratch], format!("run {i}"), None);
            p.roots.push(crate::graph::Root {
                name: format!("t{i}"),
                node,
                ..Default::default()
            });
        }
        Dag::new(&p)
    }

    #[test]
    fn each_platform_without_an_emulator_is_found_once_and_refused_only_by_its_steps() {
        let graph = steps(&[
            None,
            Some("linux/arm64"),
            Some("linux/arm64"),
            Some("linux/s390x"),
        ]);
        let empty = tempfile::tempdir().unwrap();
        let found = unrunnable_in(&graph, empty.path(), &Platform::amd64());
        let mut platforms: Vec<_> = found.keys().cloned().collect();
        platforms.sort();
        assert_eq!(
            platforms,
            [
                Some("linux/arm64".to_string()),
                Some("linux/s390x".to_string())
            ]
        );
        assert!(
            found[&Some("linux/arm64".into())]
                .message
                .contains("not mounted")
        );
        // With the arm64 handler registered as Debian's package registers it, only s390x is left.
        std::fs::write(empty.path().join("status"), "enabled\n").unwrap();
        std::fs::write(
            empty.path().join("qemu-aarch64"),
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\n",
        )
        .unwrap();
        let found = unrunnable_in(&graph, empty.path(), &Platform::amd64());
        assert_eq!(found.len(), 1);
        assert!(
            found[&Some("linux/s390x".into())]
                .message
                .contains("qemu-s390x")
        );
    }

    #[test]
    fn the_host_and_its_companions_need_no_handler() {
        let none = Path::new("/nonexistent");
        let amd64 = Platform::amd64();
        assert!(handler(&amd64, none, &amd64).is_ok());
        assert!(handler(&Platform::parse("linux/386").unwrap(), none, &amd64).is_ok());
        let win = Platform::parse("windows/arm64").unwrap();
        assert!(handler(&win, none, &amd64).is_err());
    }
}
