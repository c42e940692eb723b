//! Path escapes, as a table of hostile builds run by one harness: whatever a Dockerfile, its context or its
//! base image does with `..`, absolute names, symlinks and hard links, kiln reads nothing outside the context
//! and writes nothing outside the image's root filesystem.
//!
//! Every case runs in its own directory `root/` holding the context `root/ctx/` and, beside it, a sentinel
//! file `root/outside/outside.txt` with unique bytes. After every case, whether it built or was refused:
//! the sentinel is unchanged, nothing new appeared next to it, its bytes are in neither the store nor any
//! output, and no host path starting with the case's `/tmp/kiln-escape-...` name exists.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Kiln, Output, base_image, contains, files_under, tempdir, unpack};

/// A context entry: a file with contents, or a symlink with a target (placeholders allowed in both).
#[derive(Clone, Copy)]
enum Ctx {
    File(&'static str),
    Link(&'static str),
}

/// What a path in the built image must be.
#[derive(Clone, Copy, Debug)]
enum Is {
    File(&'static str),
    Link(&'static str),
    /// A copy of a symlink's target read inside the source root, or the symlink itself.
    FileOrLink(&'static str, &'static str),
}

#[derive(Clone, Copy)]
enum Expect {
    /// Builds, and these paths (placeholders allowed) hold what they must in the image.
    Builds(&'static [(&'static str, Is)]),
    /// Refused with this exit code, and the message names this (placeholders allowed).
    Fails(i32, &'static str),
}

struct Case {
    name: &'static str,
    context: &'static [(&'static str, Ctx)],
    dockerfile: &'static str,
    /// Extra layers (JSON, placeholders allowed) on top of the busybox layer: the case's `FROM hostile`.
    layers: Option<&'static str>,
    args: &'static [&'static str],
    expect: Expect,
}

/// Placeholders: `{ESC}` a host path that must never appear (`/tmp/kiln-escape-...`), `{SENTINEL}` the
/// sentinel file, `{OUTSIDE}` its directory, `{ROOT}` the case's directory (context and secret file inside).
const CASES: &[Case] = &[
    // --- COPY destinations inside the image
    Case {
        name: "copy_dest_parent_is_a_symlink_to_root",
        context: &[("f", Ctx::File("payload\n"))],
        dockerfile: "FROM base\nRUN ln -s / /evil\nCOPY f /evil{ESC}\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[("{ESC}", Is::File("payload\n"))]),
    },
    Case {
        name: "copy_dest_parent_climbs_with_a_relative_symlink",
        context: &[("f", Ctx::File("payload\n"))],
        dockerfile: "FROM base\nRUN mkdir -p /a/b && ln -s ../../.. /a/b/up\nCOPY f /a/b/up{ESC}\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[("{ESC}", Is::File("payload\n"))]),
    },
    Case {
        name: "copy_directory_to_a_dest_through_a_symlink",
        context: &[("dir/x", Ctx::File("in-dir\n"))],
        dockerfile: "FROM base\nRUN ln -s / /evil\nCOPY dir/ /evil{ESC}/\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[("{ESC}/x", Is::File("in-dir\n"))]),
    },
    // --- COPY sources outside the context
    Case {
        name: "copy_source_dotdot",
        context: &[],
        dockerfile: "FROM base\nCOPY ../outside/outside.txt /x\n",
        layers: None,
        args: &[],
        expect: Expect::Fails(2, "../outside/outside.txt"),
    },
    Case {
        name: "copy_source_nested_dotdot",
        context: &[("sub/keep", Ctx::File(""))],
        dockerfile: "FROM base\nCOPY sub/../../outside/outside.txt /x\n",
        layers: None,
        args: &[],
        expect: Expect::Fails(2, "sub/../../outside/outside.txt"),
    },
    Case {
        name: "copy_source_wildcard_dotdot",
        context: &[],
        dockerfile: "FROM base\nCOPY ../outside/out* /x\n",
        layers: None,
        args: &[],
        expect: Expect::Fails(2, "../outside/out*"),
    },
    // --- symlinks in the context are followed inside the context root only (BuildKit)
    Case {
        name: "context_symlink_to_an_absolute_path_resolves_in_the_context",
        context: &[
            ("link", Ctx::Link("/etc/hostname")),
            ("etc/hostname", Ctx::File("ctx-hostname\n")),
        ],
        dockerfile: "FROM base\nCOPY link /x\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[("/x", Is::File("ctx-hostname\n"))]),
    },
    Case {
        name: "context_symlink_to_the_host_sentinel",
        context: &[("link", Ctx::Link("{SENTINEL}"))],
        dockerfile: "FROM base\nCOPY link /x\n",
        layers: None,
        args: &[],
        expect: Expect::Fails(2, "link"),
    },
    Case {
        name: "context_symlink_dotdot_resolves_in_the_context",
        context: &[
            ("link", Ctx::Link("../outside/outside.txt")),
            ("outside/outside.txt", Ctx::File("ctx-outside\n")),
        ],
        dockerfile: "FROM base\nCOPY link /x\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[("/x", Is::File("ctx-outside\n"))]),
    },
    Case {
        name: "context_symlink_dotdot_with_nothing_in_the_context",
        context: &[("link", Ctx::Link("../outside/outside.txt"))],
        dockerfile: "FROM base\nCOPY link /x\n",
        layers: None,
        args: &[],
        expect: Expect::Fails(2, "link"),
    },
    Case {
        name: "context_symlink_to_root_used_as_a_parent",
        context: &[("hostroot", Ctx::Link("/"))],
        dockerfile: "FROM base\nCOPY hostroot{SENTINEL} /x\n",
        layers: None,
        args: &[],
        expect: Expect::Fails(2, "hostroot"),
    },
    Case {
        name: "context_directory_symlink_to_root_is_copied_as_a_symlink",
        context: &[("dir/root", Ctx::Link("/")), ("dir/f", Ctx::File("f\n"))],
        dockerfile: "FROM base\nCOPY dir/ /d/\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[("/d/root", Is::Link("/")), ("/d/f", Is::File("f\n"))]),
    },
    Case {
        name: "copy_dot_keeps_a_dotdot_symlink_as_a_symlink",
        context: &[("up", Ctx::Link("../outside/outside.txt"))],
        dockerfile: "FROM base\nCOPY . /all/\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[("/all/up", Is::Link("../outside/outside.txt"))]),
    },
    // --- paths a RUN's mounts and WORKDIR resolve through symlinks an earlier RUN made
    Case {
        name: "workdir_through_a_symlink_to_root",
        context: &[],
        dockerfile: "FROM base\nRUN ln -s / /evil\nWORKDIR /evil{ESC}\nRUN echo here > here\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[("{ESC}/here", Is::File("here\n"))]),
    },
    Case {
        name: "secret_target_through_a_symlink_to_root",
        context: &[],
        dockerfile: "FROM base\nRUN ln -s / /evil\nRUN --mount=type=secret,id=s,target=/evil{ESC} test -s {ESC}\n",
        layers: None,
        args: &["--secret", "id=s,src={ROOT}/secret.txt"],
        expect: Expect::Builds(&[]),
    },
    Case {
        name: "secret_target_with_dotdot",
        context: &[],
        dockerfile: "FROM base\nRUN --mount=type=secret,id=s,target=/../../..{ESC} test -s {ESC}\n",
        layers: None,
        args: &["--secret", "id=s,src={ROOT}/secret.txt"],
        expect: Expect::Builds(&[]),
    },
    Case {
        name: "bind_source_dotdot",
        context: &[],
        dockerfile: "FROM base\nRUN --mount=type=bind,source=../..,target=/h ls /h\n",
        layers: None,
        args: &[],
        expect: Expect::Fails(2, "../.."),
    },
    Case {
        name: "bind_source_context_symlink_to_root_is_the_context",
        context: &[("hostroot", Ctx::Link("/"))],
        dockerfile: "FROM base\nRUN --mount=type=bind,source=hostroot,target=/h test -f /h/Dockerfile && test ! -e /h{SENTINEL}\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[]),
    },
    Case {
        name: "bind_target_through_a_symlink_to_root",
        context: &[("sub/keep", Ctx::File("keep\n"))],
        dockerfile: "FROM base\nRUN ln -s / /evil\nRUN --mount=type=bind,source=sub,target=/evil{ESC} test -f {ESC}/keep\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[]),
    },
    Case {
        name: "bind_from_a_stage_through_its_symlink_to_root",
        context: &[],
        dockerfile: "FROM base AS a\nRUN ln -s / /evil\nFROM base\nRUN --mount=type=bind,from=a,source=/evil{OUTSIDE},target=/m cat /m/outside.txt\n",
        layers: None,
        args: &[],
        expect: Expect::Fails(1, "/evil{OUTSIDE}"),
    },
    Case {
        name: "cache_target_through_a_symlink_to_root",
        context: &[],
        dockerfile: "FROM base\nRUN ln -s / /evil\nRUN --mount=type=cache,target=/evil{ESC},id=escape touch {ESC}/x\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[]),
    },
    Case {
        name: "tmpfs_target_through_a_symlink_to_root",
        context: &[],
        dockerfile: "FROM base\nRUN ln -s / /evil\nRUN --mount=type=tmpfs,target=/evil{ESC} touch {ESC}/x\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[]),
    },
    // --- COPY --from a stage: symlinks resolve inside that stage's root
    Case {
        name: "copy_from_a_stage_symlink_to_etc_shadow",
        context: &[],
        dockerfile: "FROM base AS a\nRUN echo stage-shadow > /etc/shadow && ln -s /etc/shadow /link\nFROM base\nCOPY --from=a /link /l\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[("/l", Is::FileOrLink("stage-shadow\n", "/etc/shadow"))]),
    },
    Case {
        name: "copy_from_a_stage_symlink_to_the_host_sentinel",
        context: &[],
        dockerfile: "FROM base AS a\nRUN ln -s {SENTINEL} /link\nFROM base\nCOPY --from=a /link /l\n",
        layers: None,
        args: &[],
        expect: Expect::Fails(2, "/link"),
    },
    Case {
        name: "copy_from_a_stage_through_its_symlink_to_root",
        context: &[],
        dockerfile: "FROM base AS a\nRUN ln -s / /evil\nFROM base\nCOPY --from=a /evil{SENTINEL} /x\n",
        layers: None,
        args: &[],
        expect: Expect::Fails(2, "/evil{SENTINEL}"),
    },
    // --- the command line
    Case {
        name: "secret_src_is_a_directory",
        context: &[],
        dockerfile: "FROM base\nRUN --mount=type=secret,id=s true\n",
        layers: None,
        args: &["--secret", "id=s,src={OUTSIDE}"],
        expect: Expect::Fails(2, "{OUTSIDE}"),
    },
    // --- hostile base image layers (unpacked by kiln; `RUN` then writes to what it got)
    Case {
        name: "layer_entry_with_dotdot",
        context: &[],
        dockerfile: "FROM hostile\nRUN true\n",
        layers: Some(r#"[[{"name": "../evil", "type": "file", "data": "pwned"}]]"#),
        args: &[],
        expect: Expect::Fails(1, "../evil"),
    },
    Case {
        name: "layer_entry_with_an_absolute_name_is_confined",
        context: &[],
        dockerfile: "FROM hostile\nRUN cat {ESC}/evil\n",
        layers: Some(r#"[[{"name": "{ESC}/evil", "type": "file", "data": "pwned"}]]"#),
        args: &[],
        expect: Expect::Builds(&[("{ESC}/evil", Is::File("pwned"))]),
    },
    Case {
        name: "layer_writes_through_its_symlink_to_root",
        context: &[],
        dockerfile: "FROM hostile\nRUN true\n",
        layers: Some(
            r#"[[{"name": "a", "type": "symlink", "link": "/"}, {"name": "a{ESC}", "type": "file", "data": "pwned"}]]"#,
        ),
        args: &[],
        expect: Expect::Fails(1, "a{ESC}"),
    },
    Case {
        name: "layer_writes_through_its_symlink_to_the_sentinel_dir",
        context: &[],
        dockerfile: "FROM hostile\nRUN true\n",
        layers: Some(
            r#"[[{"name": "a", "type": "symlink", "link": "{OUTSIDE}"}, {"name": "a/outside.txt", "type": "file", "data": "pwned"}]]"#,
        ),
        args: &[],
        expect: Expect::Fails(1, "a/outside.txt"),
    },
    Case {
        name: "layer_hardlink_to_etc_passwd",
        context: &[],
        dockerfile: "FROM hostile\nRUN echo pwned >> /h\n",
        layers: Some(r#"[[{"name": "h", "type": "link", "link": "/etc/passwd"}]]"#),
        args: &[],
        expect: Expect::Fails(1, "/etc/passwd"),
    },
    Case {
        name: "layer_hardlink_to_the_host_sentinel",
        context: &[],
        dockerfile: "FROM hostile\nRUN echo pwned >> /h\n",
        layers: Some(r#"[[{"name": "h", "type": "link", "link": "{SENTINEL}"}]]"#),
        args: &[],
        expect: Expect::Fails(1, "{SENTINEL}"),
    },
    Case {
        name: "layer_hardlink_through_its_symlink",
        context: &[],
        dockerfile: "FROM hostile\nRUN echo pwned >> /h\n",
        layers: Some(
            r#"[[{"name": "a", "type": "symlink", "link": "{OUTSIDE}"}, {"name": "h", "type": "link", "link": "a/outside.txt"}]]"#,
        ),
        args: &[],
        expect: Expect::Fails(1, "a/outside.txt"),
    },
    Case {
        name: "layer_hardlink_with_dotdot",
        context: &[],
        dockerfile: "FROM hostile\nRUN echo pwned >> /h\n",
        layers: Some(r#"[[{"name": "h", "type": "link", "link": "../../outside.txt"}]]"#),
        args: &[],
        expect: Expect::Fails(1, "../../outside.txt"),
    },
    Case {
        name: "layer_whiteout_named_dotdot",
        context: &[],
        dockerfile: "FROM hostile\nRUN true\n",
        layers: Some(r#"[[{"name": ".wh..", "type": "file"}]]"#),
        args: &[],
        expect: Expect::Fails(1, ".wh.."),
    },
    // A lower layer's symlink to the host, then an upper layer's directory, file and whiteout under the
    // same name: overlay semantics make `/a` a directory; the local/tar exporters, which apply layers into a
    // host directory, must not follow the lower symlink either.
    Case {
        name: "upper_layer_writes_and_deletes_under_a_lower_symlink",
        context: &[],
        dockerfile: "FROM hostile\nRUN test -f /a/x\n",
        layers: Some(
            r#"[[{"name": "a", "type": "symlink", "link": "{OUTSIDE}"}], [{"name": "a", "type": "dir"}, {"name": "a/x", "type": "file", "data": "pwned"}, {"name": "a/.wh.outside.txt", "type": "file"}]]"#,
        ),
        args: &[],
        expect: Expect::Builds(&[("/a/x", Is::File("pwned"))]),
    },
];

/// Mount points made through a symlink are still only mount points: like any other, they must not stay in
/// the layer.
const STUB_CASES: &[Case] = &[
    Case {
        name: "secret_stub_through_a_symlink_is_not_kept",
        context: &[],
        dockerfile: "FROM base\nRUN ln -s / /evil\nRUN --mount=type=secret,id=s,target=/evil{ESC} true\nRUN test ! -e {ESC}\n",
        layers: None,
        args: &["--secret", "id=s,src={ROOT}/secret.txt"],
        expect: Expect::Builds(&[]),
    },
    Case {
        name: "cache_stub_through_a_symlink_is_not_kept",
        context: &[],
        dockerfile: "FROM base\nRUN ln -s / /evil\nRUN --mount=type=cache,target=/evil{ESC},id=stub true\nRUN test ! -e {ESC}\n",
        layers: None,
        args: &[],
        expect: Expect::Builds(&[]),
    },
];

/// One case's directory and the values of its placeholders.
struct Env {
    _root: tempfile::TempDir,
    root: PathBuf,
    ctx: PathBuf,
    outside: PathBuf,
    sentinel: PathBuf,
    sentinel_bytes: Vec<u8>,
    escape: String,
}

impl Env {
    fn new(index: usize) -> Env {
        let dir = tempdir("escape-");
        let root = dir.path().to_path_buf();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .subsec_nanos();
        let unique = format!("{}-{nanos}-{index}", std::process::id());
        let outside = root.join("outside");
        let sentinel = outside.join("outside.txt");
        let sentinel_bytes = format!("kiln-host-sentinel-{unique}\n").into_bytes();
        crate::support::write(&sentinel, &sentinel_bytes);
        crate::support::write(&root.join("secret.txt"), "escape-secret-value");
        Env {
            _root: dir,
            ctx: root.join("ctx"),
            root,
            outside,
            sentinel,
            sentinel_bytes,
            escape: format!("/tmp/kiln-escape-{unique}"),
        }
    }

    fn fill(&self, template: &str) -> String {
        template
            .replace("{ESC}", &self.escape)
            .replace("{SENTINEL}", &self.sentinel.to_string_lossy())
            .replace("{OUTSIDE}", &self.outside.to_string_lossy())
            .replace("{ROOT}", &self.root.to_string_lossy())
    }
}

/// Writes an OCI layout at `dest`: the fixture's busybox layer, then one layer per JSON list of entries,
/// made by Python's tarfile (which writes whatever names it is given) rather than by kiln.
fn hostile_image(dest: &Path, layers_json: &str) {
    const SCRIPT: &str = r#"
import gzip, hashlib, io, json, os, sys, tarfile
base, dest, layers = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
def canon(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
def read_blob(digest):
    with open(os.path.join(base, "blobs", "sha256", digest.split(":", 1)[1]), "rb") as f:
        return f.read()
def put(data):
    h = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(dest, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(dest, "blobs", "sha256", h), "wb") as f:
        f.write(data)
    return "sha256:" + h, len(data)
with open(os.path.join(base, "index.json")) as f:
    index = json.load(f)
manifest = json.loads(read_blob(index["manifests"][0]["digest"]))
config = json.loads(read_blob(manifest["config"]["digest"]))
put(read_blob(manifest["layers"][0]["digest"]))
kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "link": tarfile.LNKTYPE}
for entries in layers:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e["name"])
            info.type = kinds[e["type"]]
            info.mode = 0o755 if e["type"] == "dir" else 0o644
            info.linkname = e.get("link", "")
            data = e.get("data", "").encode()
            info.size = len(data) if e["type"] == "file" else 0
            tar.addfile(info, io.BytesIO(data) if e["type"] == "file" else None)
    layer = buf.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, filename="") as g:
        g.write(layer)
    digest, size = put(gz.getvalue())
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size})
    config["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(layer).hexdigest())
    config["history"].append({"created": "1970-01-01T00:00:00Z", "created_by": "hostile layer"})
manifest["config"]["digest"], manifest["config"]["size"] = put(canon(config))
digest, size = put(canon(manifest))
index["manifests"] = [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
with open(os.path.join(dest, "index.json"), "wb") as f:
    f.write(canon(index))
with open(os.path.join(dest, "oci-layout"), "wb") as f:
    f.write(b'{"imageLayoutVersion":"1.0.0"}')
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(base_image())
        .arg(dest)
        .arg(layers_json)
        .output()
        .expect("cannot run python3");
    assert!(
        out.status.success(),
        "making the hostile image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The message with miette's wrapping undone: no whitespace and no gutter bars, so a long path that was
/// broken across lines is found again.
fn squashed(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace() && *c != '|')
        .collect()
}

/// `path` inside `rootfs` on the host, refusing to go through a symlink on the way (which the host would
/// follow out of the unpacked image).
fn inside(rootfs: &Path, path: &str) -> Result<PathBuf, String> {
    let mut at = rootfs.to_path_buf();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate() {
        at.push(part);
        if i + 1 < parts.len()
            && std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(format!("{} is a symlink in the image", at.display()));
        }
    }
    Ok(at)
}

fn check_path(rootfs: &Path, path: &str, is: Is) -> Result<(), String> {
    let at = inside(rootfs, path)?;
    let meta = std::fs::symlink_metadata(&at).map_err(|e| format!("{path}: {e}"))?;
    let file = |want: &str| -> Result<(), String> {
        let got = std::fs::read(&at).map_err(|e| format!("{path}: {e}"))?;
        if got == want.as_bytes() {
            Ok(())
        } else {
            Err(format!(
                "{path} holds {:?}, expected {want:?}",
                String::from_utf8_lossy(&got)
            ))
        }
    };
    let link = |want: &str| -> Result<(), String> {
        let got = std::fs::read_link(&at).map_err(|e| format!("{path}: {e}"))?;
        if got == Path::new(want) {
            Ok(())
        } else {
            Err(format!("{path} points at {got:?}, expected {want:?}"))
        }
    };
    match is {
        Is::File(want) if meta.is_file() => file(want),
        Is::Link(want) if meta.file_type().is_symlink() => link(want),
        Is::FileOrLink(want, _) if meta.is_file() => file(want),
        Is::FileOrLink(_, want) if meta.file_type().is_symlink() => link(want),
        _ => Err(format!(
            "{path} is a {:?}, expected {is:?}",
            meta.file_type()
        )),
    }
}

/// Host paths named like the case's escape path (it or anything beside it with that prefix).
fn escaped(escape: &str) -> Vec<String> {
    let name = Path::new(escape)
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    std::fs::read_dir("/tmp")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&name))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs one case in its own store; returns what went wrong (empty when nothing did).
fn run_case(index: usize, case: &Case) -> Vec<String> {
    let env = Env::new(index);
    std::fs::create_dir_all(&env.ctx).expect("a context dir");
    crate::support::write(&env.ctx.join("Dockerfile"), env.fill(case.dockerfile));
    for (path, entry) in case.context {
        let at = env.ctx.join(path);
        match entry {
            Ctx::File(contents) => crate::support::write(&at, env.fill(contents)),
            Ctx::Link(target) => {
                std::fs::create_dir_all(at.parent().expect("a parent")).expect("a dir");
                std::os::unix::fs::symlink(env.fill(target), &at).expect("a symlink");
            }
        }
    }
    let mtime_before = std::fs::metadata(&env.sentinel)
        .and_then(|m| m.modified())
        .expect("the sentinel");

    let out_dir = env.root.join("out");
    let layout = out_dir.join("image");
    let local = out_dir.join("local");
    let mut kiln = Kiln::new().with_base();
    if let Some(layers) = case.layers {
        let image = env.root.join("hostile");
        hostile_image(&image, &env.fill(layers));
        kiln = kiln
            .arg("--build-context")
            .arg(format!("hostile=oci-layout://{}", image.display()));
    }
    for a in case.args {
        kiln = kiln.arg(env.fill(a));
    }
    let out: Output = kiln
        .clone()
        .arg("-o")
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg("-o")
        .arg(format!("type=local,dest={}", local.display()))
        .arg(&env.ctx)
        .run();

    let mut wrong = Vec::new();
    let shown = |out: &Output| format!("--- stderr\n{}", out.stderr);
    match case.expect {
        Expect::Builds(checks) => {
            if out.code == Some(0) && !checks.is_empty() {
                let image = unpack(&layout);
                for (path, is) in checks {
                    let path = env.fill(path);
                    for (judge, rootfs) in [("umoci", &image.rootfs), ("-o type=local", &local)] {
                        if let Err(e) = check_path(rootfs, &path, *is) {
                            wrong.push(format!("{judge}: {e}"));
                        }
                    }
                }
            } else if out.code != Some(0) {
                wrong.push(format!(
                    "expected a build, got {:?}\n{}",
                    out.code,
                    shown(&out)
                ));
            }
        }
        Expect::Fails(code, names) => {
            let names = env.fill(names);
            if out.code != Some(code) {
                wrong.push(format!(
                    "expected exit {code}, got {:?}\n{}",
                    out.code,
                    shown(&out)
                ));
            } else if !squashed(&out.stderr).contains(&squashed(&names)) {
                wrong.push(format!(
                    "the error does not name `{names}`\n{}",
                    shown(&out)
                ));
            }
            if layout.exists() || local.exists() {
                wrong.push("a refused build wrote an output".to_string());
            }
        }
    }

    // Whatever happened: the host outside the context and the rootfs is as it was.
    match std::fs::read(&env.sentinel) {
        Ok(bytes) if bytes == env.sentinel_bytes => {}
        Ok(_) => wrong.push("the sentinel was modified".to_string()),
        Err(e) => wrong.push(format!("the sentinel is gone: {e}")),
    }
    if std::fs::metadata(&env.sentinel)
        .and_then(|m| m.modified())
        .ok()
        != Some(mtime_before)
    {
        wrong.push("the sentinel's mtime changed".to_string());
    }
    let beside: Vec<String> = std::fs::read_dir(&env.outside)
        .expect("the sentinel dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "outside.txt")
        .collect();
    if !beside.is_empty() {
        wrong.push(format!("files appeared beside the sentinel: {beside:?}"));
    }
    let created = escaped(&env.escape);
    for name in &created {
        let _ = std::fs::remove_dir_all(Path::new("/tmp").join(name));
        let _ = std::fs::remove_file(Path::new("/tmp").join(name));
    }
    if !created.is_empty() {
        wrong.push(format!("the build created host paths /tmp/{created:?}"));
    }
    for dir in [kiln.store(), out_dir.as_path()] {
        if !dir.exists() {
            continue;
        }
        for (path, bytes) in files_under(dir) {
            if contains(&bytes, &env.sentinel_bytes) {
                wrong.push(format!("the sentinel was read into {}", path.display()));
            }
        }
    }
    wrong
}

/// Runs `cases` in parallel (each build is independent) and fails listing every case that went wrong.
fn run_table(cases: &[Case]) {
    let results: Vec<(&str, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, case)| (case.name, s.spawn(move || run_case(i, case))))
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| {
                let wrong = h
                    .join()
                    .unwrap_or_else(|_| vec!["the harness panicked".to_string()]);
                (name, wrong)
            })
            .collect()
    });
    let mut report = String::new();
    for (name, wrong) in &results {
        for w in wrong {
            let _ = writeln!(report, "[{name}] {w}");
        }
    }
    assert!(
        report.is_empty(),
        "{} of {} cases failed:\n{report}",
        results.iter().filter(|(_, w)| !w.is_empty()).count(),
        results.len()
    );
}

#[test]
fn nothing_escapes_the_context_or_the_rootfs() {
    assert!(CASES.len() >= 15);
    run_table(CASES);
}

#[test]
fn mount_stubs_made_through_a_symlink_leave_no_trace() {
    run_table(STUB_CASES);
}
