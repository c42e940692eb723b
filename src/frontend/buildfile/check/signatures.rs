//! The signatures of the built-in functions and methods: what the checker checks calls against and
//! what lowering evaluates.

use super::{Ty, Want};

pub struct Param {
    pub name: &'static str,
    pub want: Want,
    /// Optional parameters may be left out (and are usually given by name).
    pub optional: bool,
}

pub struct Builtin {
    pub name: &'static str,
    pub params: &'static [Param],
    pub ret: Ty,
    pub doc: &'static str,
}

const fn req(name: &'static str, want: Want) -> Param {
    Param {
        name,
        want,
        optional: false,
    }
}
const fn opt(name: &'static str, want: Want) -> Param {
    Param {
        name,
        want,
        optional: true,
    }
}

static STRING: Ty = Ty::String;
static INT: Ty = Ty::Int;
static BOOL: Ty = Ty::Bool;
static IMAGE: Ty = Ty::Image;
static MOUNT: Ty = Ty::Mount;

const S: Want = Want::T(&STRING);
const I: Want = Want::T(&INT);
const B: Want = Want::T(&BOOL);

/// `copy` and `add` take the same arguments; `add` only unpacks local archives as well.
const COPY_PARAMS: &[Param] = &[
    req("from", Want::Source),
    req("sources", Want::List(&STRING)),
    req("dest", S),
    opt("chown", S),
    opt("chmod", I),
    opt("exclude", Want::List(&STRING)),
    opt("parents", B),
    opt("link", B),
];

/// Functions callable by name.
pub static FUNCTIONS: &[Builtin] = &[
    Builtin {
        name: "image",
        params: &[req("ref", S), opt("platform", S)],
        ret: Ty::Image,
        doc: "an image by reference (for `platform`, default the one built for), or a target by label (`//pkg:name`, `:name`)",
    },
    Builtin {
        name: "platform",
        params: &[],
        ret: Ty::String,
        doc: "the platform the build is for (`--platform`, like TARGETPLATFORM): `linux/arm64`",
    },
    Builtin {
        name: "build_platform",
        params: &[],
        ret: Ty::String,
        doc: "the platform of the machine building (like BUILDPLATFORM): `linux/amd64`",
    },
    Builtin {
        name: "scratch",
        params: &[],
        ret: Ty::Image,
        doc: "the empty image",
    },
    Builtin {
        name: "from",
        params: &[req("base", Want::T(&IMAGE))],
        ret: Ty::Image,
        doc: "a new stage on top of an image: like FROM, `.arg` declarations do not carry over",
    },
    Builtin {
        name: "dir",
        params: &[req("label", S)],
        ret: Ty::Dir,
        doc: "a Dir target by label (`//pkg:name`, `:name`), as `image(...)` names an Image target",
    },
    Builtin {
        name: "context",
        params: &[opt("path", S)],
        ret: Ty::Dir,
        doc: "a local directory: `.` is the build context, other names are --build-context names or package paths",
    },
    Builtin {
        name: "files",
        params: &[req("files", Want::Map(&STRING)), opt("expand", B)],
        ret: Ty::Dir,
        doc: "files written in the build definition: name → content (`expand: true` expands $NAME from the copying image, like an unquoted heredoc)",
    },
    Builtin {
        name: "url",
        params: &[req("url", S), opt("checksum", S)],
        ret: Ty::Dir,
        doc: "a file fetched over HTTP(S), pinned by `checksum`",
    },
    Builtin {
        name: "git",
        params: &[req("url", S), opt("keep_git_dir", B)],
        ret: Ty::Dir,
        doc: "a git repository",
    },
    Builtin {
        name: "cache",
        params: &[
            req("target", S),
            opt("id", S),
            opt("sharing", S),
            opt("mode", I),
            opt("uid", I),
            opt("gid", I),
            opt("readonly", B),
            opt("from", Want::Source),
            opt("source", S),
            opt("export", B),
        ],
        ret: Ty::Cache,
        doc: "a cache mount kept in the store across builds (sharing: shared, private or locked); a new one \
              starts as a copy of `source` (default `/`) of `from`; `export: true` makes `--cache-to` carry \
              its contents",
    },
    Builtin {
        name: "bind",
        params: &[
            req("from", Want::Source),
            opt("target", S),
            opt("source", S),
            opt("rw", B),
        ],
        ret: Ty::Mount,
        doc: "a read-only (or `rw: true`, writes discarded) view of an image or directory",
    },
    Builtin {
        name: "tmpfs",
        params: &[req("target", S), opt("size", I)],
        ret: Ty::Mount,
        doc: "an empty in-memory filesystem",
    },
    Builtin {
        name: "join",
        params: &[req("items", Want::List(&STRING)), req("sep", S)],
        ret: Ty::String,
        doc: "the items joined with `sep`",
    },
    Builtin {
        name: "trim_prefix",
        params: &[req("value", S), req("pattern", S), opt("longest", B)],
        ret: Ty::String,
        doc: "`value` without its shortest (`longest: true`: longest) prefix matching the shell pattern \
              (`*`, `?`), as a Dockerfile's `${VALUE#pattern}` (`##`)",
    },
    Builtin {
        name: "trim_suffix",
        params: &[req("value", S), req("pattern", S), opt("longest", B)],
        ret: Ty::String,
        doc: "`value` without its shortest (`longest: true`: longest) suffix matching the shell pattern \
              (`*`, `?`), as a Dockerfile's `${VALUE%pattern}` (`%%`)",
    },
    Builtin {
        name: "print",
        params: &[req("message", S)],
        ret: Ty::String,
        doc: "prints the message when the program is evaluated and returns it",
    },
];

/// Methods of `Image` values: each returns a new image with one more instruction applied.
pub static IMAGE_METHODS: &[Builtin] = &[
    Builtin {
        name: "run",
        params: &[
            req("cmd", Want::Command),
            opt("mounts", Want::List(&MOUNT)),
            opt("network", S),
            opt("security", S),
        ],
        ret: Ty::Image,
        doc: "RUN",
    },
    Builtin {
        name: "copy",
        params: COPY_PARAMS,
        ret: Ty::Image,
        doc: "COPY",
    },
    Builtin {
        name: "add",
        params: COPY_PARAMS,
        ret: Ty::Image,
        doc: "ADD: like copy, and local tar archives are unpacked",
    },
    Builtin {
        name: "env",
        params: &[req("vars", Want::Map(&STRING))],
        ret: Ty::Image,
        doc: "ENV",
    },
    Builtin {
        name: "arg",
        params: &[req("args", Want::OptMap(&STRING))],
        ret: Ty::Image,
        doc: "ARG: build arguments later runs see in their environment",
    },
    Builtin {
        name: "label",
        params: &[req("labels", Want::Map(&STRING))],
        ret: Ty::Image,
        doc: "LABEL",
    },
    Builtin {
        name: "workdir",
        params: &[req("path", S)],
        ret: Ty::Image,
        doc: "WORKDIR",
    },
    Builtin {
        name: "user",
        params: &[req("user", S)],
        ret: Ty::Image,
        doc: "USER",
    },
    Builtin {
        name: "cmd",
        params: &[req("cmd", Want::Command)],
        ret: Ty::Image,
        doc: "CMD",
    },
    Builtin {
        name: "entrypoint",
        params: &[req("cmd", Want::Command)],
        ret: Ty::Image,
        doc: "ENTRYPOINT",
    },
    Builtin {
        name: "expose",
        params: &[req("ports", Want::List(&STRING))],
        ret: Ty::Image,
        doc: "EXPOSE",
    },
    Builtin {
        name: "volume",
        params: &[req("paths", Want::List(&STRING))],
        ret: Ty::Image,
        doc: "VOLUME",
    },
    Builtin {
        name: "stop_signal",
        params: &[req("signal", S)],
        ret: Ty::Image,
        doc: "STOPSIGNAL",
    },
    Builtin {
        name: "healthcheck",
        params: &[
            req("cmd", Want::Command),
            opt("interval", S),
            opt("timeout", S),
            opt("start_period", S),
            opt("start_interval", S),
            opt("retries", I),
        ],
        ret: Ty::Image,
        doc: "HEALTHCHECK CMD",
    },
    Builtin {
        name: "no_healthcheck",
        params: &[],
        ret: Ty::Image,
        doc: "HEALTHCHECK NONE",
    },
    Builtin {
        name: "shell",
        params: &[req("shell", Want::List(&STRING))],
        ret: Ty::Image,
        doc: "SHELL",
    },
    Builtin {
        name: "onbuild",
        params: &[req("trigger", S)],
        ret: Ty::Image,
        doc: "ONBUILD",
    },
    Builtin {
        name: "maintainer",
        params: &[req("name", S)],
        ret: Ty::Image,
        doc: "MAINTAINER",
    },
    Builtin {
        name: "dir",
        params: &[req("path", S)],
        ret: Ty::Dir,
        doc: "a directory of the image, as a source or an output",
    },
    Builtin {
        name: "file",
        params: &[req("path", S)],
        ret: Ty::File,
        doc: "a file of the image, as a source",
    },
];

/// Methods of `Secret` handles: the only things a secret can become are mounts.
pub static SECRET_METHODS: &[Builtin] = &[
    Builtin {
        name: "file",
        params: &[
            opt("target", S),
            opt("required", B),
            opt("mode", I),
            opt("uid", I),
            opt("gid", I),
        ],
        ret: Ty::Mount,
        doc: "the secret as a read-only file (default /run/secrets/<id>)",
    },
    Builtin {
        name: "env",
        params: &[req("name", S), opt("required", B)],
        ret: Ty::Mount,
        doc: "the secret as an environment variable of the step's process",
    },
    Builtin {
        name: "mount",
        params: &[
            opt("target", S),
            opt("env", S),
            opt("required", B),
            opt("mode", I),
            opt("uid", I),
            opt("gid", I),
        ],
        ret: Ty::Mount,
        doc: "the secret as a file, an environment variable, or both",
    },
];

pub static SSH_METHODS: &[Builtin] = &[Builtin {
    name: "mount",
    params: &[
        opt("target", S),
        opt("required", B),
        opt("mode", I),
        opt("uid", I),
        opt("gid", I),
    ],
    ret: Ty::Mount,
    doc: "the agent's socket (default /run/buildkit/ssh_agent.N, SSH_AUTH_SOCK set)",
}];

pub fn methods_of(t: &Ty) -> &'static [Builtin] {
    match t {
        Ty::Image => IMAGE_METHODS,
        Ty::Secret => SECRET_METHODS,
        Ty::Ssh => SSH_METHODS,
        _ => &[],
    }
}
