//! Semantics where kiln once differed from BuildKit, each built for real and judged in the image (umoci
//! unpacks the filesystem; the config is read from the layout). Each case was also built with BuildKit
//! v0.8 (Debian's dockerd) on the same busybox base, which gave what these tests expect except where a
//! test names a later BuildKit change.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{Kiln, Layout, Unpacked, base_image, context, tempdir, tool, unpack};

/// A built image: its unpacked filesystem and its config.
struct Built {
    image: Unpacked,
    config: Value,
    /// The OCI layout it was written to.
    layout: PathBuf,
    _out: tempfile::TempDir,
}

impl Built {
    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.image.rootfs.join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn env(&self) -> Vec<String> {
        strings(&self.config["config"]["Env"])
    }

    /// The uid and gid that own `path` in the image.
    fn owner(&self, path: &str) -> (u32, u32) {
        let m = std::fs::metadata(self.image.rootfs.join(path)).unwrap();
        (m.uid(), m.gid())
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|e| e.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Builds `dockerfile` (with `files` beside it) on the busybox base with `args` on the command line.
fn build(dockerfile: &str, files: &[(&str, &str)], args: &[&str]) -> Built {
    let mut all = vec![("Dockerfile", dockerfile)];
    all.extend_from_slice(files);
    let ctx = context(&all);
    build_context(ctx.path(), base_image(), args)
}

/// Builds the context at `ctx` on the image layout `base` (the Dockerfile's `base`).
fn build_context(ctx: &Path, base: &Path, args: &[&str]) -> Built {
    let out = tempdir("out-");
    let dest: PathBuf = out.path().join("image");
    Kiln::new()
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base.display()))
        .args(args.iter().copied())
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx)
        .run()
        .success();
    Built {
        image: unpack(&dest),
        config: Layout::new(&dest).config(),
        layout: dest,
        _out: out,
    }
}

/// BuildKit expands every word of an ENV or LABEL line against the variables as they were before the
/// line: `Y=$X` takes the old `X`. ARG defaults are the exception: current BuildKit (Dockerfile frontend
/// 1.8, which expands a default only in `dispatchArg`) expands each one after the names before it on the
/// line, where v0.8 expanded the whole line first (`B=-two` here, checked); kiln follows current BuildKit.
#[test]
fn env_and_label_lines_expand_against_the_variables_before_them() {
    let built = build(
        "FROM base\n\
         ENV X=old\n\
         ENV X=new Y=$X\n\
         LABEL l1=$X-$Y X=label l2=$X\n\
         ARG A=one B=$A-two\n\
         RUN echo \"$X $Y $A $B\" > /seen\n",
        &[],
        &[],
    );
    assert_eq!(built.read("seen"), "new old one one-two\n");
    let env = built.env();
    assert!(env.contains(&"X=new".to_string()), "{env:?}");
    assert!(env.contains(&"Y=old".to_string()), "{env:?}");
    let labels = &built.config["config"]["Labels"];
    assert_eq!(labels["l1"], "new-old", "{labels}");
    assert_eq!(labels["l2"], "new", "{labels}");
}

/// An ARG with a value after an ENV of the same name: the build sees the ARG's value (a RUN and `$D`
/// later in the stage), while the image config keeps the ENV's, as BuildKit's build state does
/// (checked against BuildKit v0.8 and current `dispatchArg`, which both add the ARG to the state's env).
#[test]
fn an_arg_after_an_env_of_the_same_name_wins_in_the_build_not_the_config() {
    let built = build(
        "FROM base\n\
         ENV D=a\n\
         ARG D\n\
         RUN echo \"$D\" > /run-sees\n\
         ENV E=$D\n\
         ARG F=default\n\
         ENV F=env\n\
         RUN echo \"$F\" > /env-after-arg\n",
        &[],
        &["--build-arg", "D=b"],
    );
    assert_eq!(built.read("run-sees"), "b\n");
    assert_eq!(
        built.read("env-after-arg"),
        "env\n",
        "a later ENV wins again"
    );
    let env = built.env();
    assert!(env.contains(&"D=a".to_string()), "{env:?}");
    assert!(env.contains(&"E=b".to_string()), "{env:?}");
    let history: Vec<String> = built.config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str().map(String::from))
        .collect();
    // The history shows what each ARG's variable holds at the RUN, as BuildKit's `runCommandString`.
    for run in ["RUN |1 D=b ", "RUN |2 D=b F=env "] {
        assert!(
            history.iter().any(|h| h.starts_with(run)),
            "{run}: {history:?}"
        );
    }
}

/// ENTRYPOINT drops a CMD the stage did not set itself: the base image's (`/bin/sh` here) and a parent
/// stage's alike, as BuildKit's per-stage `cmd` flag does; a CMD set in the same stage stays.
#[test]
fn entrypoint_drops_a_cmd_the_stage_did_not_set() {
    let dockerfile = "FROM base AS parent\n\
                      CMD [\"parent-cmd\"]\n\
                      FROM parent AS child\n\
                      ENTRYPOINT [\"/bin/echo\"]\n\
                      FROM base AS own\n\
                      CMD [\"own-cmd\"]\n\
                      ENTRYPOINT [\"/bin/echo\"]\n\
                      FROM base AS plain\n\
                      ENTRYPOINT [\"/bin/echo\"]\n";
    for (target, cmd) in [
        ("child", Value::Null),
        ("own", serde_json::json!(["own-cmd"])),
        ("plain", Value::Null),
        ("parent", serde_json::json!(["parent-cmd"])),
    ] {
        let built = build(dockerfile, &[], &["--target", target]);
        assert_eq!(built.config["config"]["Cmd"], cmd, "target {target}");
    }
}

/// A RUN's user resolved as runc resolves it (moby's `GetExecUser`, which BuildKit v0.8 and current
/// executors both call): `USER 4321` with no passwd entry runs with group 0 (`--chown=4321` would give
/// 4321), and HOME comes from the user's passwd entry (`/` without one) unless ENV set it, in exec form
/// too, where no shell could have set it.
#[test]
fn run_users_get_runcs_group_and_home() {
    let built = build(
        "FROM base\n\
         RUN [\"/bin/sh\", \"-c\", \"echo $HOME > /home-root; mkdir -m 777 /out\"]\n\
         USER appuser\n\
         RUN [\"/bin/sh\", \"-c\", \"echo $HOME > /out/home-app\"]\n\
         USER 4321\n\
         RUN [\"/bin/sh\", \"-c\", \"echo $HOME > /out/home-numeric\"]\n\
         ENV HOME=/set-by-env\n\
         RUN echo $HOME > /out/home-env\n",
        &[],
        &[],
    );
    assert_eq!(built.read("home-root"), "/root\n");
    assert_eq!(built.read("out/home-app"), "/home/appuser\n");
    assert_eq!(built.read("out/home-numeric"), "/\n");
    assert_eq!(built.read("out/home-env"), "/set-by-env\n");
    let owner = |p: &str| built.owner(p);
    assert_eq!(owner("out/home-app"), (1000, 1000));
    assert_eq!(owner("out/home-numeric"), (4321, 0));
}

/// WORKDIR creates its missing directories owned by the USER in effect, as BuildKit's mkdir with
/// `WithUser` does (a numeric user there is uid and gid, as for `--chown`); existing ones keep theirs.
#[test]
fn workdir_creates_missing_directories_as_the_user() {
    let built = build(
        "FROM base\n\
         WORKDIR /made-by-root\n\
         USER appuser\n\
         WORKDIR /new/dir\n\
         WORKDIR /tmp\n\
         USER 4321\n\
         WORKDIR /numeric\n",
        &[],
        &[],
    );
    let owner = |p: &str| built.owner(p);
    assert_eq!(owner("made-by-root"), (0, 0));
    assert_eq!(owner("new"), (1000, 1000));
    assert_eq!(owner("new/dir"), (1000, 1000));
    assert_eq!(
        owner("tmp"),
        (0, 0),
        "an existing directory keeps its owner"
    );
    assert_eq!(owner("numeric"), (4321, 4321));
}

/// ADD unpacks tars compressed with xz, bzip2 and zstd as it does gzip ones, as current BuildKit does
/// (`moby/go-archive`'s `DecompressStream`; BuildKit v0.8, checked, unpacks xz and bzip2 but copies a
/// `.tar.zst` as a file). Made here by GNU tar; a compressed file that is not a tar stays a file.
#[test]
fn add_unpacks_xz_bzip2_and_zstd_tars() {
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM base\n\
             ADD pkg.tar.xz /xz/\n\
             ADD pkg.tar.bz2 /bz2/\n\
             ADD pkg.tar.zst /zst/\n\
             ADD plain.xz /plain/\n",
        ),
        ("pkg/a.txt", "from the archive\n"),
        ("plain", "not an archive\n"),
    ]);
    let root = ctx.path().to_str().unwrap();
    for (flag, name) in [
        ("-J", "pkg.tar.xz"),
        ("-j", "pkg.tar.bz2"),
        ("--zstd", "pkg.tar.zst"),
    ] {
        tool(
            "tar",
            &[flag, "-cf", &format!("{root}/{name}"), "-C", root, "pkg"],
        );
    }
    tool("xz", &["-k", &format!("{root}/plain")]);
    std::fs::remove_dir_all(ctx.path().join("pkg")).unwrap();
    let built = build_context(ctx.path(), base_image(), &[]);
    let image = &built.image;
    for dir in ["xz", "bz2", "zst"] {
        let got = std::fs::read_to_string(image.rootfs.join(dir).join("pkg/a.txt"));
        assert_eq!(got.ok().as_deref(), Some("from the archive\n"), "{dir}");
    }
    let plain = std::fs::read(image.rootfs.join("plain/plain.xz")).unwrap();
    assert!(
        plain.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']),
        "a compressed non-tar is copied"
    );
}

/// Hard links in the context stay hard links after `COPY .`, as BuildKit's fsutil copy keeps them: both
/// into a new top-level directory (written straight into the snapshot) and under an existing one (by the
/// helper over an overlay). The layer tar holds a link entry, and umoci unpacks one inode.
#[test]
fn hard_links_in_the_context_stay_linked() {
    let ctx = context(&[
        ("Dockerfile", "FROM base\nCOPY . /dst/\nCOPY . /tmp/dst/\n"),
        ("a.txt", "linked content\n"),
        ("sub/single.txt", "linked content\n"),
    ]);
    std::fs::hard_link(ctx.path().join("a.txt"), ctx.path().join("sub/b.txt")).unwrap();
    let built = build_context(ctx.path(), base_image(), &[]);
    let image = &built.image;
    for dir in ["dst", "tmp/dst"] {
        let ino = |p: &str| {
            std::fs::metadata(image.rootfs.join(dir).join(p))
                .unwrap()
                .ino()
        };
        assert_eq!(ino("a.txt"), ino("sub/b.txt"), "{dir}: linked files");
        assert_ne!(
            ino("a.txt"),
            ino("sub/single.txt"),
            "{dir}: same content alone"
        );
    }
    let layers = Layout::new(&built.layout).layer_tars();
    let listing: Vec<String> = layers
        .iter()
        .flat_map(|tar| {
            let mut a = tar::Archive::new(tar.as_slice());
            a.entries()
                .unwrap()
                .filter_map(|e| {
                    let e = e.unwrap();
                    (e.header().entry_type() == tar::EntryType::Link).then(|| {
                        format!(
                            "{} -> {}",
                            e.path().unwrap().display(),
                            e.link_name().unwrap().unwrap().display()
                        )
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(listing.len(), 2, "{listing:?}");
}

/// `COPY file /dest` where `/dest` is a symlink in the image writes through it, as BuildKit resolves the
/// destination first: a link to a file keeps being a link and its target gets the content; a link to a
/// directory receives the file inside it.
#[test]
fn copy_writes_through_a_destination_symlink() {
    let built = build(
        "FROM base\n\
         RUN mkdir /real && ln -s /real /dirlink && echo old > /target.txt && ln -s target.txt /filelink\n\
         COPY f.txt /dirlink\n\
         COPY g.txt /filelink\n",
        &[("f.txt", "f\n"), ("g.txt", "g\n")],
        &[],
    );
    assert_eq!(built.read("real/f.txt"), "f\n");
    assert_eq!(built.read("target.txt"), "g\n");
    let link = built.image.rootfs.join("filelink");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link stays a link"
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::path::Path::new("target.txt")
    );
    assert!(
        std::fs::symlink_metadata(built.image.rootfs.join("dirlink"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// A stage built `FROM` an earlier stage starts from that stage's build state: an ARG value set there
/// is still a variable (in a RUN's environment and in `$X`), but the image config's env is written over
/// it again (`D` is back to the ENV's `a`), the ARG stays out of the config, and a RUN's history lists
/// only the ARGs its own stage declares. Checked against BuildKit v0.8 (Debian's dockerd), which gave
/// exactly these files and history lines; current BuildKit copies the parent's state the same way.
#[test]
fn a_child_stage_keeps_its_parents_arg_values_but_not_its_declarations() {
    let built = build(
        "FROM base AS parent\n\
         ENV D=a\n\
         ARG D\n\
         ARG X=1\n\
         FROM parent AS child\n\
         RUN echo \"X=$X D=$D\" > /out\n\
         ARG X\n\
         RUN echo \"X2=$X\" >> /out\n\
         FROM child\n\
         ARG Y=$X\n\
         RUN echo \"Y=$Y\" >> /out\n",
        &[],
        &["--build-arg", "D=b"],
    );
    assert_eq!(built.read("out"), "X=1 D=a\nX2=1\nY=1\n");
    let env = built.env();
    assert!(env.contains(&"D=a".to_string()), "{env:?}");
    assert!(!env.iter().any(|e| e.starts_with("X=")), "{env:?}");
    let history: Vec<String> = built.config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str().map(String::from))
        .collect();
    for run in [
        "RUN /bin/sh -c echo \"X=$X D=$D\" > /out",
        "RUN |1 X=1 /bin/sh -c echo \"X2=$X\" >> /out",
        "RUN |1 Y=1 /bin/sh -c echo \"Y=$Y\" >> /out",
    ] {
        assert!(
            history.iter().any(|h| h.starts_with(run)),
            "{run}: {history:?}"
        );
    }
}

/// A base image whose config has a User: WORKDIR's missing directories are that user's, as BuildKit
/// makes them (it dispatches the image config's User before the stage's lines); a USER in the
/// Dockerfile still wins. Checked against BuildKit v0.8 (Debian's dockerd, the busybox layer imported
/// with `USER 4321:99`): `/new`, `/new/dir` and `/new/dir/rel` came out 4321:99.
#[test]
fn workdir_creates_missing_directories_as_the_base_images_user() {
    let base = crate::support::base_image_with(|c| c["User"] = "4321:99".into());
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nWORKDIR /new/dir\nWORKDIR rel\nUSER 0\nWORKDIR /root-made\n",
    )]);
    let built = build_context(ctx.path(), base.path(), &[]);
    let owner = |p: &str| built.owner(p);
    for dir in ["new", "new/dir", "new/dir/rel"] {
        assert_eq!(owner(dir), (4321, 99), "{dir}");
    }
    assert_eq!(owner("root-made"), (0, 0));
    let config = &built.config;
    assert_eq!(config["config"]["User"], "0");
}

/// A base image's WorkingDir is where relative paths are until the stage's first WORKDIR: a COPY's
/// relative destination and a relative WORKDIR land under it. Checked against BuildKit v0.8 (the
/// busybox layer imported with `WORKDIR /srv` and `USER 4321:99`): `/srv/sub/f` root's, `/srv/rel`
/// 4321:99, and the config's WorkingDir `/srv/rel`.
#[test]
fn relative_paths_are_under_the_base_images_working_dir() {
    let base = crate::support::base_image_with(|c| {
        c["WorkingDir"] = "/srv".into();
        c["User"] = "4321:99".into();
    });
    let ctx = context(&[
        ("Dockerfile", "FROM base\nCOPY f sub/\nWORKDIR rel\n"),
        ("f", "hi\n"),
    ]);
    let built = build_context(ctx.path(), base.path(), &[]);
    let image = &built.image;
    let owner = |p: &str| built.owner(p);
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("srv/sub/f")).unwrap(),
        "hi\n"
    );
    assert_eq!(owner("srv/sub/f"), (0, 0));
    assert_eq!(owner("srv/rel"), (4321, 99));
    assert!(!image.rootfs.join("rel").exists());
    let config = &built.config;
    assert_eq!(config["config"]["WorkingDir"], "/srv/rel");
}

/// COPY without `--chown` keeps the owners of files it takes from a stage (BuildKit's file op copies a
/// snapshot's owners), while context files become 0:0 (the client resets their owners). Checked against
/// BuildKit v0.8: `/from-stage` 1000:1000 mode 0640, `/sub/f` 4321:4321, `/ctx` 0:0.
#[test]
fn copy_from_a_stage_keeps_owners_and_context_files_are_roots() {
    let built = build(
        "FROM base AS src\n\
         RUN mkdir -p /out/sub && echo x > /out/f && chown 1000:1000 /out/f && chmod 640 /out/f \
         && echo y > /out/sub/f && chown 4321:4321 /out/sub/f\n\
         FROM base\n\
         COPY --from=src /out/f /from-stage\n\
         COPY --from=src /out/sub /sub/\n\
         COPY ctx /ctx\n",
        &[("ctx", "c\n")],
        &[],
    );
    assert_eq!(built.owner("from-stage"), (1000, 1000));
    let mode = std::fs::metadata(built.image.rootfs.join("from-stage"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o7777, 0o640);
    assert_eq!(built.owner("sub/f"), (4321, 4321));
    assert_eq!(built.owner("ctx"), (0, 0));
}

/// Every stage that sets CMD gets Docker's `ArgsEscaped` in its config (BuildKit sets it on every OS, in
/// v0.8 and today), and keeps it when a child stage's ENTRYPOINT drops the CMD; ENTRYPOINT alone does not
/// set it. Checked against BuildKit v0.8.
#[test]
fn cmd_marks_the_config_args_escaped() {
    let dockerfile = "FROM base AS parent\n\
                      CMD echo parent\n\
                      FROM parent AS child\n\
                      ENTRYPOINT [\"/bin/echo\"]\n\
                      FROM base AS plain\n\
                      ENTRYPOINT [\"/bin/echo\"]\n";
    for (target, escaped) in [
        ("parent", Value::Bool(true)),
        ("child", Value::Bool(true)),
        ("plain", Value::Null),
    ] {
        let built = build(dockerfile, &[], &["--target", target]);
        let config = &built.config["config"];
        assert_eq!(config["ArgsEscaped"], escaped, "target {target}");
    }
}

/// A `FROM scratch` stage starts from BuildKit's empty image, whose config already has the default PATH
/// and WorkingDir `/`, so `$PATH` expands to that PATH (checked against BuildKit v0.8).
#[test]
fn a_scratch_stage_has_the_empty_images_path_and_working_dir() {
    let built = build(
        "FROM scratch\nCOPY f /f\nENV A=1 P=/x:$PATH\n",
        &[("f", "x\n")],
        &[],
    );
    let config = &built.config["config"];
    assert_eq!(config["WorkingDir"], "/");
    let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    assert_eq!(
        built.env(),
        [format!("PATH={path}"), "A=1".into(), format!("P=/x:{path}")]
    );
}

/// A RUN whose working directory is missing (a base image's WorkingDir that its layers never made)
/// creates it, and its missing parents, owned by the RUN's user, as BuildKit's executors do; an existing
/// directory is left as it is. Checked against BuildKit v0.8: `/opt` and `/opt/app` 4321:99.
#[test]
fn a_run_creates_a_missing_working_dir_as_its_user() {
    let base = crate::support::base_image_with(|c| {
        c["WorkingDir"] = "/opt/app".into();
        c["User"] = "4321:99".into();
    });
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN pwd > /tmp/pwd\nUSER 0\nWORKDIR /tmp\nRUN touch mine\n",
    )]);
    let built = build_context(ctx.path(), base.path(), &[]);
    assert_eq!(built.read("tmp/pwd"), "/opt/app\n");
    assert_eq!(built.owner("opt"), (4321, 99));
    assert_eq!(built.owner("opt/app"), (4321, 99));
    assert_eq!(built.owner("tmp"), (0, 0));
}

/// A `--build-context` is found by the familiar name of the reference FROM and `COPY --from` give, as
/// BuildKit's named contexts are: `base:latest` and `docker.io/library/base` are the context `base`,
/// whether written out or reached through an ARG.
#[test]
fn a_named_context_stands_for_its_reference_with_latest() {
    let built = build(
        "ARG TAG=latest\n\
         FROM base:${TAG}\n\
         COPY --from=docker.io/library/base:latest /etc/group /group\n",
        &[],
        &[],
    );
    assert!(built.read("group").starts_with("root:x:0:"));
    assert!(built.read("etc/passwd").contains("appuser"));
}

/// BuildKit's predefined proxy ARGs reach every RUN without an ARG line, under both cases of the name,
/// and stay out of the image's env and history. Checked against BuildKit v0.8 (`[http://proxy.invalid:3128]`
/// for both spellings of a given `HTTP_PROXY`, likewise `no_proxy`).
#[test]
fn proxy_build_args_reach_runs_undeclared() {
    let built = build(
        "FROM base\nRUN echo \"$https_proxy|$HTTPS_PROXY|$NO_PROXY|$no_proxy|$FTP_PROXY\" > /out\n",
        &[],
        &[
            "--build-arg",
            "HTTPS_PROXY=http://proxy.invalid:3128",
            "--build-arg",
            "no_proxy=localhost",
        ],
    );
    assert_eq!(
        built.read("out"),
        "http://proxy.invalid:3128|http://proxy.invalid:3128|localhost|localhost|\n"
    );
    assert!(
        !built
            .env()
            .iter()
            .any(|e| e.to_ascii_lowercase().contains("proxy"))
    );
    let history = built.config["history"].to_string();
    assert!(!history.contains("proxy.invalid"), "{history}");
}

/// A file op's user given by id takes that id as its group, even when /etc/passwd gives the uid another
/// primary group (BuildKit reads `UserOpt_ByID` so); by name it takes the passwd group; a RUN as that
/// uid still runs with the passwd group (runc's lookup). Checked against BuildKit v0.8: `/by-id` and the
/// WORKDIR 2000:2000, `/by-name` 2000:3000, `/w/made` 2000:3000.
#[test]
fn a_numeric_user_of_a_file_op_is_its_own_group() {
    let built = build(
        "FROM base\n\
         RUN echo 'svc:x:2000:3000::/:/bin/sh' >> /etc/passwd\n\
         COPY --chown=2000 f /by-id\n\
         COPY --chown=svc f /by-name\n\
         USER 2000\n\
         WORKDIR /w\n\
         RUN touch made\n",
        &[("f", "x\n")],
        &[],
    );
    assert_eq!(built.owner("by-id"), (2000, 2000));
    assert_eq!(built.owner("by-name"), (2000, 3000));
    assert_eq!(built.owner("w"), (2000, 2000));
    assert_eq!(built.owner("w/made"), (2000, 3000));
}

/// WORKDIR records an absolute path in the config and history as written (a trailing slash or a double
/// slash kept) and a relative one joined onto the current directory and cleaned; the directory made
/// and run in is the clean one either way. Found building moby's contrib/syscall-test Dockerfile
/// (`WORKDIR /usr/src/`) side by side with BuildKit v0.8, which gave exactly this on a Debian base
/// (WorkingDir `/opt//app`; history `WORKDIR /usr/src/`, `WORKDIR /usr/src/b`, `WORKDIR /opt//app`;
/// the three `pwd`s below), as today's `NormalizeWorkdir` does.
#[test]
fn workdir_keeps_an_absolute_path_as_written_in_the_config() {
    let built = build(
        "FROM base\n\
         WORKDIR /usr/src/\n\
         RUN pwd > /pwd1\n\
         WORKDIR ./a/../b/\n\
         RUN pwd > /pwd2\n\
         WORKDIR /opt//app\n\
         RUN pwd > /pwd3\n",
        &[],
        &[],
    );
    assert_eq!(built.config["config"]["WorkingDir"], "/opt//app");
    let history: Vec<&str> = built.config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["created_by"].as_str())
        .filter(|c| c.starts_with("WORKDIR"))
        .collect();
    assert_eq!(
        history,
        [
            "WORKDIR /usr/src/",
            "WORKDIR /usr/src/b",
            "WORKDIR /opt//app"
        ]
    );
    assert_eq!(built.read("pwd1"), "/usr/src\n");
    assert_eq!(built.read("pwd2"), "/usr/src/b\n");
    assert_eq!(built.read("pwd3"), "/opt/app\n");
    assert!(built.image.rootfs.join("opt/app").is_dir());
    assert!(!built.image.rootfs.join("usr/src/a").exists());
}

/// A step that changes nothing still adds its layer, an empty tar, as BuildKit's exporter keeps every
/// layer of the chain: `WORKDIR` on an existing directory and a RUN that writes nothing each have a
/// `rootfs` entry (the empty tar's diff id) and a history entry that is not `empty_layer`, while
/// `WORKDIR /` and ENV add none. Found building moby's contrib/syscall-test Dockerfile (`COPY . /usr/src/`
/// then `WORKDIR /usr/src/`) side by side with BuildKit v0.8, which gave this layer and history for the
/// WORKDIRs on a Debian base; its `RUN true` layer also held runc's empty `/etc/hosts` stub, which
/// BuildKit 0.11 removes (executor/stubs.go), leaving the empty layer kiln writes.
#[test]
fn a_step_that_changes_nothing_keeps_its_empty_layer() {
    const EMPTY_TAR: &str =
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
    let built = build(
        "FROM base\nRUN mkdir /x\nWORKDIR /x\nRUN true\nWORKDIR /\nENV A=b\n",
        &[],
        &[],
    );
    let base_layers = Layout::new(base_image()).config()["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .len();
    let diff_ids = strings(&built.config["rootfs"]["diff_ids"]);
    assert_eq!(diff_ids.len(), base_layers + 3, "{diff_ids:?}");
    assert_ne!(diff_ids[base_layers], EMPTY_TAR, "mkdir /x holds /x");
    assert_eq!(diff_ids[base_layers + 1..], [EMPTY_TAR, EMPTY_TAR]);
    let history: Vec<(String, bool)> = built.config["history"]
        .as_array()
        .unwrap()
        .iter()
        .skip(base_layers)
        .map(|h| {
            let by = h["created_by"].as_str().unwrap().to_string();
            (by, h["empty_layer"].as_bool().unwrap_or(false))
        })
        .collect();
    let expect = [
        ("RUN /bin/sh -c mkdir /x # buildkit", false),
        ("WORKDIR /x", false),
        ("RUN /bin/sh -c true # buildkit", false),
        ("WORKDIR /", true),
        ("ENV A=b", true),
    ];
    let expect: Vec<(String, bool)> = expect.iter().map(|(b, e)| (b.to_string(), *e)).collect();
    assert_eq!(history, expect);
    // umoci applies every layer, the empty ones too.
    assert!(built.image.rootfs.join("x").is_dir());
}
