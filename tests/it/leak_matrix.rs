//! The leak matrix: every way this suite knows for a secret's value to leave the one RUN that mounts it,
//! listed in `MATRIX` (what is checked and how), each expected to find nothing — or kiln refusing the build
//! with a leak-guard error that names the secret's id and never its value.
//!
//! Secrets are long and distinctive so a hit is never a coincidence; every search looks for the raw bytes,
//! hex in either case and base64 at all three alignments, also with line breaks removed (the `base64` and
//! `xxd` tools wrap their output).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::support::{
    Kiln, Layout, Output, base_image, context, files_under, leaks, tempdir, unpack,
};

/// One row: a place or a way a secret could leak, and how this suite checks it.
struct Row {
    name: &'static str,
    how: &'static str,
}

const MATRIX: &[Row] = &[
    Row {
        name: "layer-raw",
        how: "every layer of the clean build, decompressed: no raw value",
    },
    Row {
        name: "layer-base64",
        how: "every layer: no base64 of any value at any alignment",
    },
    Row {
        name: "layer-hex",
        how: "every layer: no lower- or upper-case hex of any value",
    },
    Row {
        name: "file-name",
        how: "every entry path of every layer tar",
    },
    Row {
        name: "symlink-target",
        how: "every link name of every layer tar",
    },
    Row {
        name: "xattr-in-layer",
        how: "every PAX record (SCHILY.xattr.*) of every layer tar",
    },
    Row {
        name: "config-env",
        how: "config Env: no value and no `env=` variable name",
    },
    Row {
        name: "config-label",
        how: "config Labels",
    },
    Row {
        name: "config-history",
        how: "config history (created_by of every RUN that mounted a secret)",
    },
    Row {
        name: "manifest-index",
        how: "manifest and index.json",
    },
    Row {
        name: "oci-layout",
        how: "every file of the OCI layout, gzip decompressed",
    },
    Row {
        name: "docker-archive",
        how: "every entry of the docker-archive tar",
    },
    Row {
        name: "local-output",
        how: "every file, name and link target of `-o type=local`",
    },
    Row {
        name: "tar-output",
        how: "the `-o type=tar` filesystem tar",
    },
    Row {
        name: "unpacked-rootfs",
        how: "every file of the image as umoci unpacks it",
    },
    Row {
        name: "store-files",
        how: "every file in the store, gzip decompressed",
    },
    Row {
        name: "store-names",
        how: "every path and link target in the store",
    },
    Row {
        name: "progress-plain",
        how: "stderr of `--progress plain`: values and JSON lines shown as `***`",
    },
    Row {
        name: "stdout",
        how: "stdout of the build",
    },
    Row {
        name: "mount-stub",
        how: "no /run/secrets and no `target=` stub in the image",
    },
    Row {
        name: "env-secret-not-in-image-env",
        how: "an `env=` secret is in no later step's env, nor the config",
    },
    Row {
        name: "host-env-not-in-steps",
        how: "kiln's own environment (holding an env secret) is not a step's env",
    },
    Row {
        name: "multi-line-json",
        how: "a JSON secret: the whole value and its password line, everywhere above",
    },
    Row {
        name: "env-sourced-secret",
        how: "a secret given by `--secret id=..,env=VAR`, everywhere above",
    },
    Row {
        name: "cache-key",
        how: "after rotating every value: same image digest, every step CACHED",
    },
    Row {
        name: "no-cache",
        how: "after `--no-cache`: the store and the outputs again",
    },
    Row {
        name: "graph-output",
        how: "`kiln graph` text, json, dot and --digest with the values in the env",
    },
    Row {
        name: "error-message",
        how: "a failing step that echoes the value then exits 1: stderr scrubbed",
    },
    Row {
        name: "host-cmdline",
        how: "no host process's command line holds a value while a step runs",
    },
    Row {
        name: "guard-arg-history",
        how: "a build arg used by a RUN lands in history: the export guard refuses",
    },
    Row {
        name: "guard-arg-label",
        how: "a build arg in a LABEL: the export guard refuses",
    },
    Row {
        name: "guard-arg-env",
        how: "a build arg in an ENV: the export guard refuses",
    },
    Row {
        name: "guard-arg-workdir",
        how: "a build arg in WORKDIR: the export guard refuses",
    },
    Row {
        name: "guard-copy",
        how: "a context file holding the value COPY'd in: the export guard refuses",
    },
    Row {
        name: "guard-raw",
        how: "a step copies its secret into a file: the leak guard refuses",
    },
    Row {
        name: "guard-base64",
        how: "a step writes base64 of its secret: the leak guard refuses",
    },
    Row {
        name: "guard-hex",
        how: "a step writes hex of its secret: the leak guard refuses",
    },
    Row {
        name: "guard-file-name",
        how: "a step names a file after its secret: the leak guard refuses",
    },
    Row {
        name: "guard-symlink",
        how: "a step puts its secret in a link target: the leak guard refuses",
    },
    Row {
        name: "guard-xattr-value",
        how: "a step puts its secret in an xattr value: the leak guard refuses",
    },
    Row {
        name: "guard-env-secret",
        how: "a step writes its `env=` secret to a file: the leak guard refuses",
    },
    Row {
        name: "guard-other-stage",
        how: "a leak in a stage that is not exported is refused too",
    },
    Row {
        name: "guard-cache-mount",
        how: "a step writes its secret into a cache mount: refused, the cache deleted",
    },
    Row {
        name: "guard-xattr-name",
        how: "a step names an xattr after its secret: must be refused (kiln bug)",
    },
    Row {
        name: "guard-long-base64",
        how: "wrapped base64 of a long secret: must be refused (kiln bug)",
    },
    Row {
        name: "guard-long-hex",
        how: "`xxd -p` (wrapped hex) of a long secret: must be refused (kiln bug)",
    },
    Row {
        name: "guard-json-line",
        how: "one line of a multi-line secret: must be refused (kiln bug)",
    },
    // Transactional builds: a value that reaches a step which does not mount it, and what a refusal
    // leaves behind (`TXS` and the tests at the end of this file).
    Row {
        name: "tx-cache-mount-raw",
        how: "a secret step writes it into a cache mount, a later step copies it into the image: refused",
    },
    Row {
        name: "tx-cache-mount-encoded",
        how: "a secret step writes it reversed into a cache mount, a later step decodes it: refused",
    },
    Row {
        name: "tx-loopback",
        how: "served over 127.0.0.1 to a parallel stage: refused, or it never arrived",
    },
    Row {
        name: "tx-rev",
        how: "reversed (`rev`) in the secret step, undone in the next: refused at the next",
    },
    Row {
        name: "tx-rot13",
        how: "rot13 (`tr`) in the secret step, undone in the next: refused at the next",
    },
    Row {
        name: "tx-xor",
        how: "xor'ed byte by byte (`od | awk`) in the secret step, undone in the next: refused",
    },
    Row {
        name: "tx-copy-context",
        how: "a context file holding the value COPY'd in: refused at the COPY, no file object kept",
    },
    Row {
        name: "tx-export-guard",
        how: "a clean RUN, then the value in a LABEL: the image guard refuses, the RUN is not kept",
    },
    Row {
        name: "tx-arg-quote",
        how: "a secret with `\"` given as a build arg too: refused (JSON escapes it)",
    },
    Row {
        name: "tx-arg-backslash",
        how: "a secret with `\\` given as a build arg too: refused (JSON escapes it)",
    },
    Row {
        name: "tx-arg-newline",
        how: "a secret of short lines given as a build arg too: refused (JSON escapes the newlines)",
    },
    Row {
        name: "tx-arg-non-ascii",
        how: "a non-ASCII secret given as a build arg too: refused",
    },
    Row {
        name: "tx-store-files",
        how: "after each refusal: every file of the store, decompressed, holds no form of the value",
    },
    Row {
        name: "tx-store-names",
        how: "after each refusal: every name and link target in the store",
    },
    Row {
        name: "tx-du",
        how: "after each refusal: `kiln du` says what it said before the build",
    },
    Row {
        name: "tx-next-without-secret",
        how: "the same Dockerfile built next without the secret: image, cache export and store clean",
    },
    Row {
        name: "tx-next-rotated",
        how: "the same Dockerfile built next with a rotated value: refused again, no trace of either",
    },
    Row {
        name: "tx-cache-to",
        how: "a refused build's `--cache-to type=local` writes nothing",
    },
    Row {
        name: "tx-crash",
        how: "a secret build killed mid-way: the next `kiln du` removes what it staged",
    },
    Row {
        name: "guard-json-field",
        how: "a JSON secret's `password` field alone written to a file: the leak guard refuses",
    },
    Row {
        name: "guard-yaml-field",
        how: "a YAML secret's `password` field alone written to a file: the leak guard refuses",
    },
    Row {
        name: "guard-dotenv-field",
        how: "a dotenv secret's quoted value alone written to a file: the leak guard refuses",
    },
    Row {
        name: "guard-netrc-field",
        how: "a `.netrc` secret's `password` token alone written to a file: the leak guard refuses",
    },
    Row {
        name: "guard-npmrc-token",
        how: "an `.npmrc` secret's `_authToken` alone written to a file: the leak guard refuses",
    },
    Row {
        name: "guard-npmrc-auth",
        how: "the password inside an `.npmrc` `_auth` (base64 user:password) written: refused",
    },
    Row {
        name: "guard-pypirc-field",
        how: "a `.pypirc` secret's `password` alone written to a file: the leak guard refuses",
    },
    Row {
        name: "guard-docker-auth",
        how: "the password decoded from a docker config.json `auth` written: the leak guard refuses",
    },
    Row {
        name: "guard-field-encoded",
        how: "a JSON secret's field written base64-encoded: the leak guard refuses",
    },
    Row {
        name: "progress-encoded",
        how: "`--progress plain` of a step printing its secret base64 (wrapped), `xxd -p`, HEX: `***`",
    },
    Row {
        name: "progress-field",
        how: "`--progress plain` of a failing step printing a JSON field raw and hex-encoded: `***`",
    },
    Row {
        name: "short-secret-warning",
        how: "a secret under 4 bytes: the build warns, naming its id and not its value",
    },
];

/// The row called `name`; panics when the table lacks it, so code and table cannot drift apart.
fn row(name: &str) -> &'static str {
    MATRIX
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("`{name}` is not in MATRIX"))
        .name
}

/// Given by file (`src=`).
const FILE_SECRET: &str = "kiln-leak-FILE-7f3a9c2e-d41b-4b8e-a6f0-9b1c3e5d";
/// Given by environment variable (`env=`), mounted as a file and as an env var.
const ENV_SECRET: &str = "kiln-leak-ENV-c0ffee5e-1f4d-2a9b-77a1-b2c3d4e5";
/// The password line of the multi-line JSON secret, distinctive on its own.
const JSON_PASSWORD: &str = "kiln-leak-JSON-pw-88d1e2f3a4b5c6d7e8f9";
/// Longer than the 57 bytes `base64` puts on one line and the 30 `xxd -p` does.
const LONG_SECRET: &str =
    "kiln-leak-LONG-0123456789abcdef-0123456789abcdef-0123456789abcdef-0123456789abcdef-end";
const ENV_VAR: &str = "KILN_LEAK_MATRIX_ENV";

fn json_secret(password: &str) -> String {
    format!("{{\n  \"user\": \"kiln-matrix-user\",\n  \"password\": \"{password}\"\n}}\n")
}

/// Every needle this suite searches for after a build that used `file`, `env` and `json`.
fn needles(file: &str, env: &str, password: &str) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("file secret", file.as_bytes().to_vec()),
        ("env secret", env.as_bytes().to_vec()),
        ("json secret", json_secret(password).into_bytes()),
        ("json password line", password.as_bytes().to_vec()),
    ]
}

/// Where `needles` occur in `files`, in any encoding of `support::encodings`, also with line breaks removed
/// so wrapped base64/hex is found; as `what in path (encoding)`. Files that are byte for byte part of the
/// fixture base image are skipped: they cannot hold a secret, and they are most of the bytes.
fn find(files: &[(PathBuf, Vec<u8>)], needles: &[(&str, Vec<u8>)]) -> Vec<String> {
    let encoded: Vec<(&str, String, String)> = needles
        .iter()
        .flat_map(|(what, n)| {
            crate::support::encodings(n)
                .into_iter()
                .map(move |(how, e)| {
                    (
                        *what,
                        how,
                        String::from_utf8(e).expect("ASCII needles and encodings"),
                    )
                })
        })
        .collect();
    let mut found = Vec::new();
    for (path, bytes) in files {
        if fixture_digests().contains(&sha256(bytes)) {
            continue;
        }
        // Invalid UTF-8 becomes U+FFFD, which never joins ASCII bytes, so an ASCII needle matches here
        // exactly where it matches in the bytes; std's substring search is fast even in a debug build.
        let text = String::from_utf8_lossy(bytes);
        let flat: String = text.split(['\n', '\r']).collect();
        for (what, how, e) in &encoded {
            if text.contains(e.as_str()) || flat.contains(e.as_str()) {
                let hit = format!("{what} in {} ({how})", path.display());
                if !found.contains(&hit) {
                    found.push(hit);
                }
            }
        }
    }
    found
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// The digests of every file of the fixture base image (its blobs, decompressed too), of its layer's
/// entries, and of busybox itself.
fn fixture_digests() -> &'static std::collections::HashSet<[u8; 32]> {
    static DIGESTS: OnceLock<std::collections::HashSet<[u8; 32]>> = OnceLock::new();
    DIGESTS.get_or_init(|| {
        let mut set = std::collections::HashSet::new();
        for (_, bytes) in files_under(base_image()) {
            set.insert(sha256(&bytes));
        }
        for tar in Layout::new(base_image()).layer_tars() {
            set.insert(sha256(&tar));
            for (_, bytes) in tar_views("base", &tar) {
                set.insert(sha256(&bytes));
            }
        }
        set.insert(sha256(
            &std::fs::read("/bin/busybox").expect("/bin/busybox"),
        ));
        set
    })
}

/// Names, link targets and contents of a directory tree, as "files" for `find`.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = files_under(dir);
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        let name = e.path().to_string_lossy().into_owned().into_bytes();
        out.push((
            PathBuf::from(format!("name of {}", e.path().display())),
            name,
        ));
        if e.file_type().is_symlink()
            && let Ok(t) = std::fs::read_link(e.path())
        {
            let target = t.to_string_lossy().into_owned().into_bytes();
            out.push((
                PathBuf::from(format!("link {}", e.path().display())),
                target,
            ));
        }
    }
    out
}

/// One view of a tar: its entries' paths, link names and PAX records, and their contents.
fn tar_views(label: &str, tar: &[u8]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("a tar entry");
        let path = entry.path_bytes().into_owned();
        let at = |what: &str| {
            PathBuf::from(format!(
                "{label}: {what} of {}",
                String::from_utf8_lossy(&path)
            ))
        };
        out.push((at("path"), path.clone()));
        if let Some(link) = entry.link_name_bytes() {
            out.push((at("link name"), link.into_owned()));
        }
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                let mut rec = ext.key_bytes().to_vec();
                rec.push(b'=');
                rec.extend_from_slice(ext.value_bytes());
                out.push((at("pax record"), rec));
            }
        }
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).expect("tar data");
        out.push((at("contents"), crate::support::maybe_gunzip(data)));
    }
    out
}

/// `kiln` with the base image and one secret `id` whose file holds `value`, building `ctx`.
fn run_with_secret(kiln: Kiln, id: &str, value: &str, ctx: &Path) -> Output {
    let dir = tempdir("secrets-");
    let path = dir.path().join(id);
    crate::support::write(&path, value);
    kiln.with_base()
        .arg("--secret")
        .arg(format!("id={id},src={}", path.display()))
        .arg(ctx)
        .run()
}

/// A kiln invocation with the three secrets of this suite (values given).
fn with_secrets(kiln: Kiln, dir: &Path, file: &str, env: &str, password: &str) -> Kiln {
    let file_path = dir.join("file-secret.txt");
    let json_path = dir.join("json-secret.json");
    crate::support::write(&file_path, file);
    crate::support::write(&json_path, json_secret(password));
    kiln.arg("--secret")
        .arg(format!("id=file,src={}", file_path.display()))
        .arg("--secret")
        .arg(format!("id=envsec,env={ENV_VAR}"))
        .arg("--secret")
        .arg(format!("id=json,src={}", json_path.display()))
        .env(ENV_VAR, env)
}

/// Every legitimate way to use a secret, and a few ways to try to keep it that kiln must make harmless.
const CLEAN: &str = r#"FROM base
ARG PLAIN=not-a-secret
LABEL org.example.plain=$PLAIN
ENV APP_MODE=prod
RUN --mount=type=secret,id=file echo "file secret is $(cat /run/secrets/file)"
RUN --mount=type=secret,id=file,target=/opt/creds/file.txt test -s /opt/creds/file.txt && echo made > /made
RUN --mount=type=secret,id=envsec,env=API_TOKEN test -n "$API_TOKEN" && echo "token=$API_TOKEN"
RUN --mount=type=secret,id=envsec cat /run/secrets/envsec; echo
RUN --mount=type=secret,id=json cat /run/secrets/json && grep password /run/secrets/json
RUN --mount=type=secret,id=file cp /run/secrets/file /tmp/gone && rm /tmp/gone
RUN test -z "$API_TOKEN" && env > /envdump && mkdir -p /app && ln -s /app /app/self
CMD ["/bin/sh"]
"#;

/// The outputs of one build of `CLEAN`.
struct Outputs {
    _dir: tempfile::TempDir,
    layout: PathBuf,
    docker: PathBuf,
    local: PathBuf,
    fs_tar: PathBuf,
}

fn outputs() -> Outputs {
    let dir = tempdir("out-");
    Outputs {
        layout: dir.path().join("image"),
        docker: dir.path().join("docker.tar"),
        local: dir.path().join("local"),
        fs_tar: dir.path().join("fs.tar"),
        _dir: dir,
    }
}

/// Records a row's hits.
fn check(wrong: &mut Vec<String>, name: &str, hits: Vec<String>) {
    let name = row(name);
    for h in hits {
        wrong.push(format!("[{name}] {h}"));
    }
}

/// Every place an image build leaves behind, searched for `needles`.
fn search_outputs(
    wrong: &mut Vec<String>,
    o: &Outputs,
    store: &Path,
    needles: &[(&str, Vec<u8>)],
    prefix: &str,
) {
    let layout = Layout::new(&o.layout);
    let mut layer_views = Vec::new();
    for (i, tar) in layout.layer_tars().iter().enumerate() {
        layer_views.extend(tar_views(&format!("layer {i}"), tar));
    }
    let only = |what: &str| -> Vec<(PathBuf, Vec<u8>)> {
        layer_views
            .iter()
            .filter(|(p, _)| p.to_string_lossy().contains(what))
            .cloned()
            .collect()
    };
    let in_contents = find(&only(": contents of "), needles);
    let by_encoding = |enc: &str| -> Vec<String> {
        in_contents
            .iter()
            .filter(|h| h.contains(&format!("({enc}")))
            .map(|h| format!("{prefix}{h}"))
            .collect()
    };
    let pre = |hits: Vec<String>| hits.into_iter().map(|h| format!("{prefix}{h}")).collect();
    check(wrong, "layer-raw", by_encoding("raw"));
    check(wrong, "layer-base64", by_encoding("base64"));
    let mut hex = by_encoding("hex");
    hex.extend(by_encoding("HEX"));
    check(wrong, "layer-hex", hex);
    check(wrong, "file-name", pre(find(&only(": path of "), needles)));
    check(
        wrong,
        "symlink-target",
        pre(find(&only(": link name of "), needles)),
    );
    check(
        wrong,
        "xattr-in-layer",
        pre(find(&only(": pax record of "), needles)),
    );

    let config = layout.config();
    let env = serde_json::to_vec(&config["config"]["Env"]).expect("JSON");
    let mut env_hits = find(&[("config Env".into(), env.clone())], needles);
    if String::from_utf8_lossy(&env).contains("API_TOKEN") {
        env_hits.push("API_TOKEN is in the config's Env".to_string());
    }
    check(wrong, "config-env", pre(env_hits));
    let labels = serde_json::to_vec(&config["config"]["Labels"]).expect("JSON");
    check(
        wrong,
        "config-label",
        pre(find(&[("config Labels".into(), labels)], needles)),
    );
    let history = serde_json::to_vec(&config["history"]).expect("JSON");
    check(
        wrong,
        "config-history",
        pre(find(&[("history".into(), history)], needles)),
    );
    let manifest = serde_json::to_vec(&layout.manifest()).expect("JSON");
    let index = std::fs::read(o.layout.join("index.json")).expect("index.json");
    check(
        wrong,
        "manifest-index",
        pre(find(
            &[("manifest".into(), manifest), ("index.json".into(), index)],
            needles,
        )),
    );
    check(wrong, "oci-layout", pre(find(&tree(&o.layout), needles)));
    let docker = std::fs::read(&o.docker).expect("the docker archive");
    check(
        wrong,
        "docker-archive",
        pre(find(&tar_views("docker-archive", &docker), needles)),
    );
    check(wrong, "local-output", pre(find(&tree(&o.local), needles)));
    let fs_tar = std::fs::read(&o.fs_tar).expect("the filesystem tar");
    check(
        wrong,
        "tar-output",
        pre(find(&tar_views("fs.tar", &fs_tar), needles)),
    );
    let image = unpack(&o.layout);
    check(
        wrong,
        "unpacked-rootfs",
        pre(find(&files_under(&image.rootfs), needles)),
    );
    check(
        wrong,
        "store-files",
        pre(find(&files_under(store), needles)),
    );
    // `tree` labels names and link targets with relative "paths"; the absolute ones are file contents,
    // searched just above.
    let names: Vec<(PathBuf, Vec<u8>)> = tree(store)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("/"))
        .collect();
    check(wrong, "store-names", pre(find(&names, needles)));
}

#[test]
fn a_clean_build_leaks_nothing_anywhere() {
    let store = tempdir("store-");
    let ctx = context(&[("Dockerfile", CLEAN)]);
    let secrets_dir = tempdir("secrets-");
    let o = outputs();
    let vals = (FILE_SECRET, ENV_SECRET, JSON_PASSWORD);
    let out = with_ctx(store.path(), ctx.path(), secrets_dir.path(), &o, vals, &[]);
    out.success();
    let needles = needles(FILE_SECRET, ENV_SECRET, JSON_PASSWORD);
    let mut wrong = Vec::new();
    search_outputs(&mut wrong, &o, store.path(), &needles, "");

    // What the build printed: scrubbed, with the stars where the values were.
    let stderr = vec![(PathBuf::from("stderr"), out.stderr.clone().into_bytes())];
    let mut printed = find(&stderr, &needles);
    for shown in ["file secret is ***", "token=***"] {
        if !out.stderr.contains(shown) {
            printed.push(format!("`{shown}` is not in stderr"));
        }
    }
    check(&mut wrong, "progress-plain", printed);
    check(
        &mut wrong,
        "stdout",
        find(
            &[(PathBuf::from("stdout"), out.stdout.clone().into_bytes())],
            &needles,
        ),
    );

    let image = unpack(&o.layout);
    let stubs: Vec<String> = ["run/secrets", "opt/creds", "opt"]
        .iter()
        .filter(|s| image.rootfs.join(s).exists())
        .map(|s| format!("/{s} is in the image"))
        .collect();
    check(&mut wrong, "mount-stub", stubs);
    let envdump = std::fs::read_to_string(image.rootfs.join("envdump")).expect("/envdump");
    let mut env_hits = Vec::new();
    if envdump.contains("API_TOKEN") {
        env_hits.push(format!("a later step saw API_TOKEN:\n{envdump}"));
    }
    check(&mut wrong, "env-secret-not-in-image-env", env_hits);
    let mut host_env = Vec::new();
    if envdump.contains(ENV_VAR) {
        host_env.push(format!("a step saw kiln's {ENV_VAR}:\n{envdump}"));
    }
    check(&mut wrong, "host-env-not-in-steps", host_env);
    // The two secrets given in less common ways, searched once more on their own over everything at once.
    let mut everything = tree(&o.layout);
    everything.extend(tree(&o.local));
    everything.extend(tree(store.path()));
    everything.extend(tar_views(
        "docker-archive",
        &std::fs::read(&o.docker).expect("archive"),
    ));
    everything.extend(stderr.iter().cloned());
    let json = json_secret(JSON_PASSWORD);
    let json_needles = [
        ("json secret", json.into_bytes()),
        ("json password", JSON_PASSWORD.into()),
    ];
    check(
        &mut wrong,
        "multi-line-json",
        find(&everything, &json_needles),
    );
    if !out.stderr.contains("***") || out.stderr.contains("\"password\"") {
        wrong.push(format!(
            "[multi-line-json] the JSON's lines are not all scrubbed:\n{}",
            out.stderr
        ));
    }
    let env_needles = [("env secret", ENV_SECRET.as_bytes().to_vec())];
    check(
        &mut wrong,
        "env-sourced-secret",
        find(&everything, &env_needles),
    );

    // Rotate every value: nothing runs, the image is the same, nothing of either set of values is stored.
    let o2 = outputs();
    let rotated = (
        "kiln-leak-FILE-rotated-00112233445566778899aabb",
        "kiln-leak-ENV-rotated-ffeeddccbbaa99887766",
        "kiln-leak-JSON-pw-rotated-5566778899",
    );
    let again = with_ctx(
        store.path(),
        ctx.path(),
        secrets_dir.path(),
        &o2,
        rotated,
        &[],
    );
    again.success();
    let mut key = Vec::new();
    let (ran, _) = again.summary();
    if ran != 0 {
        key.push(format!(
            "{ran} steps ran after rotating the values:\n{}",
            again.stderr
        ));
    }
    if again.stdout.trim() != out.stdout.trim() {
        key.push(format!(
            "the image changed: {} then {}",
            out.stdout.trim(),
            again.stdout.trim()
        ));
    }
    check(&mut wrong, "cache-key", key);

    // --no-cache runs everything again with the rotated values: search everything once more, for both.
    let o3 = outputs();
    let fresh = with_ctx(
        store.path(),
        ctx.path(),
        secrets_dir.path(),
        &o3,
        rotated,
        &["--no-cache"],
    );
    fresh.success();
    let mut both = needles.clone();
    both.extend(self::needles(rotated.0, rotated.1, rotated.2));
    let mut after = Vec::new();
    search_outputs(&mut after, &o3, store.path(), &both, "after --no-cache: ");
    check(&mut wrong, "no-cache", after);

    assert!(wrong.is_empty(), "secrets leaked:\n{}", wrong.join("\n"));
}

/// Builds `ctx` with this suite's secrets (files written into `secrets`) and all four outputs.
fn with_ctx(
    store: &Path,
    ctx: &Path,
    secrets: &Path,
    o: &Outputs,
    vals: (&str, &str, &str),
    extra: &[&str],
) -> Output {
    with_secrets(
        Kiln::build_in(store).with_base(),
        secrets,
        vals.0,
        vals.1,
        vals.2,
    )
    .args(extra.iter().copied())
    .arg("-o")
    .arg(format!("type=oci,dest={}", o.layout.display()))
    .arg("-o")
    .arg(format!("type=docker,dest={}", o.docker.display()))
    .arg("-o")
    .arg(format!("type=local,dest={}", o.local.display()))
    .arg("-o")
    .arg(format!("type=tar,dest={}", o.fs_tar.display()))
    .arg(ctx)
    .run()
}

/// A build kiln must refuse because secret `s` would leave its step.
struct Guard {
    row: &'static str,
    dockerfile: &'static str,
    /// The value of secret `s` (given by file).
    secret: &'static str,
    /// Also passed as `--build-arg TOKEN=<value>` (the wrong way to pass a secret).
    as_build_arg: bool,
    /// Refused by the step's leak guard, so the store must not hold the value either (the export guard
    /// runs after the steps are stored; it only keeps the value out of the outputs).
    by_step: bool,
}

const GUARDS: &[Guard] = &[
    Guard {
        row: "guard-arg-history",
        dockerfile: "FROM base\nARG TOKEN\nRUN test -n \"$TOKEN\"\n",
        secret: FILE_SECRET,
        as_build_arg: true,
        by_step: false,
    },
    Guard {
        row: "guard-arg-label",
        dockerfile: "FROM base\nARG TOKEN\nLABEL tok=$TOKEN\n",
        secret: FILE_SECRET,
        as_build_arg: true,
        by_step: false,
    },
    Guard {
        row: "guard-arg-env",
        dockerfile: "FROM base\nARG TOKEN\nENV TOK=$TOKEN\n",
        secret: FILE_SECRET,
        as_build_arg: true,
        by_step: false,
    },
    Guard {
        row: "guard-arg-workdir",
        dockerfile: "FROM base\nARG TOKEN\nWORKDIR /w/$TOKEN\n",
        secret: FILE_SECRET,
        as_build_arg: true,
        by_step: false,
    },
    Guard {
        row: "guard-copy",
        dockerfile: "FROM base\nCOPY secret.txt /app/\n",
        secret: FILE_SECRET,
        as_build_arg: false,
        by_step: false,
    },
    Guard {
        row: "guard-raw",
        dockerfile: "FROM base\nRUN --mount=type=secret,id=s cp /run/secrets/s /kept\n",
        secret: FILE_SECRET,
        as_build_arg: false,
        by_step: true,
    },
    Guard {
        row: "guard-base64",
        dockerfile: "FROM base\nRUN --mount=type=secret,id=s base64 /run/secrets/s > /kept\n",
        secret: FILE_SECRET,
        as_build_arg: false,
        by_step: true,
    },
    Guard {
        row: "guard-hex",
        dockerfile: "FROM base\nRUN --mount=type=secret,id=s od -An -tx1 /run/secrets/s | tr -d ' \\n' > /kept\n",
        secret: FILE_SECRET,
        as_build_arg: false,
        by_step: true,
    },
    Guard {
        row: "guard-file-name",
        dockerfile: "FROM base\nRUN --mount=type=secret,id=s touch \"/$(cat /run/secrets/s)\"\n",
        secret: FILE_SECRET,
        as_build_arg: false,
        by_step: true,
    },
    Guard {
        row: "guard-symlink",
        dockerfile: "FROM base\nRUN --mount=type=secret,id=s ln -s \"/x/$(cat /run/secrets/s)\" /kept\n",
        secret: FILE_SECRET,
        as_build_arg: false,
        by_step: true,
    },
    Guard {
        row: "guard-xattr-value",
        dockerfile: "FROM base\nCOPY setx /bin/setx\nRUN --mount=type=secret,id=s touch /v && setx /v user.note \"$(cat /run/secrets/s)\"\n",
        secret: FILE_SECRET,
        as_build_arg: false,
        by_step: true,
    },
    Guard {
        row: "guard-env-secret",
        dockerfile: "FROM base\nRUN --mount=type=secret,id=s,env=T sh -c 'echo \"$T\" > /kept'\n",
        secret: FILE_SECRET,
        as_build_arg: false,
        by_step: true,
    },
    Guard {
        row: "guard-other-stage",
        dockerfile: "FROM base AS leaky\nRUN --mount=type=secret,id=s cp /run/secrets/s /kept\nFROM base\nCOPY --from=leaky /etc/passwd /p\n",
        secret: FILE_SECRET,
        as_build_arg: false,
        by_step: true,
    },
];

/// Refusals this suite first found missing (xattr names, wrapped encodings, single lines of a
/// multi-line secret), kept apart so their history is visible.
const GUARD_BUGS: &[Guard] = &[
    Guard {
        row: "guard-xattr-name",
        dockerfile: "FROM base\nCOPY setx /bin/setx\nRUN --mount=type=secret,id=s touch /n && setx /n \"user.$(cat /run/secrets/s)\" 1\n",
        secret: FILE_SECRET,
        as_build_arg: false,
        by_step: true,
    },
    Guard {
        row: "guard-long-base64",
        dockerfile: "FROM base\nRUN --mount=type=secret,id=s base64 /run/secrets/s > /kept\n",
        secret: LONG_SECRET,
        as_build_arg: false,
        by_step: true,
    },
    Guard {
        row: "guard-long-hex",
        dockerfile: "FROM base\nRUN --mount=type=secret,id=s xxd -p /run/secrets/s > /kept\n",
        secret: LONG_SECRET,
        as_build_arg: false,
        by_step: true,
    },
    Guard {
        row: "guard-json-line",
        dockerfile: "FROM base\nRUN --mount=type=secret,id=s grep password /run/secrets/s > /kept\n",
        secret: "",
        as_build_arg: false,
        by_step: true,
    },
];

/// A static `setx PATH NAME VALUE` (setxattr(2)); busybox has no setfattr. Built once with the C compiler
/// every Rust toolchain on Linux already needs as its linker.
fn setx() -> &'static Path {
    static SETX: OnceLock<PathBuf> = OnceLock::new();
    SETX.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("setx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a dir");
        let src = dir.join("setx.c");
        crate::support::write(
            &src,
            "#include <string.h>\n#include <sys/xattr.h>\nint main(int c, char **v) {\n  if (c != 4) return 2;\n  return setxattr(v[1], v[2], v[3], strlen(v[3]), 0) ? 1 : 0;\n}\n",
        );
        let bin = dir.join("setx");
        crate::support::tool(
            "cc",
            &["-static", "-O2", "-o", bin.to_str().expect("utf-8"), src.to_str().expect("utf-8")],
        );
        bin
    })
}

/// Runs one refusal case; returns what went wrong.
fn run_guard(g: &Guard) -> Vec<String> {
    let json = json_secret(JSON_PASSWORD);
    let secret = if g.secret.is_empty() {
        json.as_str()
    } else {
        g.secret
    };
    // Every row leaks on purpose, to test the runtime guards; the lints would refuse most of them first.
    let dockerfile = match g.dockerfile.starts_with("# check=") {
        true => g.dockerfile.to_string(),
        false => format!("# check=skip=all\n{}", g.dockerfile),
    };
    let ctx = context(&[("Dockerfile", dockerfile.as_str()), ("secret.txt", secret)]);
    if g.dockerfile.contains("setx") {
        let to = ctx.path().join("setx");
        std::fs::copy(setx(), &to).expect("copy setx");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let secret_file = tempdir("secret-");
    let secret_path = secret_file.path().join("s");
    crate::support::write(&secret_path, secret);
    let dest = tempdir("out-");
    let layout = dest.path().join("image");
    let kiln = Kiln::new().with_base();
    let mut k = kiln
        .clone()
        .arg("--secret")
        .arg(format!("id=s,src={}", secret_path.display()));
    if g.as_build_arg {
        k = k.arg("--build-arg").arg(format!("TOKEN={secret}"));
    }
    let out = k
        .arg("-o")
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg(ctx.path())
        .run();
    let mut wrong = Vec::new();
    if out.code != Some(1) || !out.stderr.contains("secret `s`") {
        wrong.push(format!(
            "not refused by a leak guard naming `s` (exit {:?}):\n{}",
            out.code, out.stderr
        ));
    }
    let mut values = vec![("value", secret.as_bytes().to_vec())];
    if g.secret.is_empty() {
        values.push(("password line", JSON_PASSWORD.as_bytes().to_vec()));
    }
    let said = [
        (PathBuf::from("stderr"), out.stderr.clone().into_bytes()),
        (PathBuf::from("stdout"), out.stdout.clone().into_bytes()),
    ];
    for hit in leaks(&said, secret.as_bytes()) {
        wrong.push(format!("the message shows the value: {hit}"));
    }
    if layout.exists() {
        wrong.push("an output was written".to_string());
    }
    if g.by_step {
        for hit in find(&files_under(kiln.store()), &values) {
            wrong.push(format!("the store holds it: {hit}"));
        }
    }
    wrong
}

fn run_guards(cases: &[Guard]) {
    let results: Vec<(&str, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|g| (row(g.row), s.spawn(move || run_guard(g))))
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| {
                (
                    name,
                    h.join()
                        .unwrap_or_else(|_| vec!["the harness panicked".into()]),
                )
            })
            .collect()
    });
    let wrong: Vec<String> = results
        .iter()
        .flat_map(|(name, w)| w.iter().map(move |w| format!("[{name}] {w}")))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_guards_refuse_every_leak_without_showing_the_value() {
    run_guards(GUARDS);
}

#[test]
fn the_guards_refuse_wrapped_and_partial_leaks() {
    run_guards(GUARD_BUGS);
}

/// A step that writes its secret into a cache mount fails, and the cache is gone for the next build.
#[test]
fn a_secret_written_to_a_cache_mount_fails_and_deletes_the_cache() {
    let name = row("guard-cache-mount");
    let store = tempdir("store-");
    let secrets = tempdir("secrets-");
    let path = secrets.path().join("s");
    crate::support::write(&path, FILE_SECRET);
    let leaky = context(&[(
        "Dockerfile",
        "FROM base\nRUN --mount=type=secret,id=s --mount=type=cache,target=/c,id=leaky sh -c 'echo keep > /c/other; cp /run/secrets/s /c/kept'\n",
    )]);
    let out = Kiln::build_in(store.path())
        .with_base()
        .arg("--secret")
        .arg(format!("id=s,src={}", path.display()))
        .arg(leaky.path())
        .run();
    out.expect_code(1);
    assert!(
        out.stderr.contains("secret `s`") && out.stderr.contains("/c/kept"),
        "[{name}] {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(FILE_SECRET),
        "[{name}] the value is shown:\n{}",
        out.stderr
    );
    let stored = leaks(&files_under(store.path()), FILE_SECRET.as_bytes());
    assert!(
        stored.is_empty(),
        "[{name}] the store holds the value: {stored:?}"
    );
    let reader = context(&[(
        "Dockerfile",
        "FROM base\nRUN --mount=type=cache,target=/c,id=leaky echo \"entries=$(ls -A /c | wc -l)\"\n",
    )]);
    let next = Kiln::build_in(store.path())
        .with_base()
        .arg(reader.path())
        .run();
    next.success();
    assert!(
        next.stderr.contains("entries=0"),
        "[{name}] the cache survived:\n{}",
        next.stderr
    );
}

/// `kiln graph` never sees a value: it takes no `--secret`, and values in its environment stay there.
#[test]
fn graph_output_holds_no_value() {
    let name = row("graph-output");
    let ctx = context(&[("Dockerfile", CLEAN)]);
    for extra in [
        &[][..],
        &["--format", "json"],
        &["--format", "dot"],
        &["--digest"],
    ] {
        let out = Kiln::graph()
            .arg("--build-context")
            .arg(format!("base=oci-layout://{}", base_image().display()))
            .args(extra.iter().copied())
            .env(ENV_VAR, ENV_SECRET)
            .env("file", FILE_SECRET)
            .arg(ctx.path())
            .run();
        out.success();
        let said = [(
            PathBuf::from("graph"),
            format!("{}{}", out.stdout, out.stderr).into_bytes(),
        )];
        let hits = find(&said, &needles(FILE_SECRET, ENV_SECRET, JSON_PASSWORD));
        assert!(hits.is_empty(), "[{name}] {extra:?}: {hits:?}");
    }
}

/// A failing step that prints its secret on both streams: the error and the log show `***`.
#[test]
fn a_failing_step_shows_no_value() {
    let name = row("error-message");
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN --mount=type=secret,id=s sh -c 'echo \"failing with $(cat /run/secrets/s)\"; cat /run/secrets/s >&2; exit 1'\n",
    )]);
    let out = run_with_secret(Kiln::new(), "s", FILE_SECRET, ctx.path());
    out.expect_code(1);
    assert!(
        out.stderr.contains("failing with ***"),
        "[{name}] {}",
        out.stderr
    );
    let said = [
        (PathBuf::from("stderr"), out.stderr.clone().into_bytes()),
        (PathBuf::from("stdout"), out.stdout.clone().into_bytes()),
    ];
    let hits = leaks(&said, FILE_SECRET.as_bytes());
    assert!(hits.is_empty(), "[{name}] {hits:?}\n{}", out.stderr);
}

/// While a step has its secret mounted, no host process carries the value in its command line (kiln hands
/// it to the helper over a pipe).
#[test]
fn no_host_command_line_holds_a_value() {
    let name = row("host-cmdline");
    // Values of its own: other tests pass the shared ones on purpose (as build args the guards must catch),
    // and their command lines are visible in /proc while this test looks.
    let (file_secret, env_secret) = (
        "kiln-cmdline-only-file-3c1d9e77a2",
        "kiln-cmdline-only-env-6b0f1a52c4",
    );
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN --mount=type=secret,id=s --mount=type=secret,id=e,env=E sleep 1\n",
    )]);
    let secrets = tempdir("secrets-");
    let path = secrets.path().join("s");
    crate::support::write(&path, file_secret);
    let kiln = Kiln::new()
        .with_base()
        .arg("--secret")
        .arg(format!("id=s,src={}", path.display()))
        .args(["--secret", &format!("id=e,env={ENV_VAR}")])
        .env(ENV_VAR, env_secret)
        .arg(ctx.path());
    let done = std::sync::atomic::AtomicBool::new(false);
    let hits = std::thread::scope(|s| {
        let build = s.spawn(|| {
            let out = kiln.run();
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            out
        });
        let mut hits = Vec::new();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                    continue;
                };
                for value in [file_secret, env_secret] {
                    if crate::support::contains(&cmdline, value.as_bytes()) {
                        hits.push(format!(
                            "{}: {}",
                            e.path().display(),
                            String::from_utf8_lossy(&cmdline)
                        ));
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        build.join().expect("the build thread").success();
        hits
    });
    assert!(hits.is_empty(), "[{name}] {hits:?}");
}

/// The matrix is what this file checks: at least 25 rows, each named once, described, and used by a test.
#[test]
fn the_matrix_is_complete() {
    let source = include_str!("leak_matrix.rs");
    assert!(MATRIX.len() >= 25, "only {} rows", MATRIX.len());
    for (i, r) in MATRIX.iter().enumerate() {
        assert!(!r.how.is_empty(), "`{}` says not how it is checked", r.name);
        assert!(
            MATRIX[..i].iter().all(|o| o.name != r.name),
            "`{}` is listed twice",
            r.name
        );
        assert!(
            source.matches(&format!("\"{}\"", r.name)).count() >= 2,
            "`{}` is in the matrix but no test checks it",
            r.name
        );
    }
}

/// A build that moves a secret's value somewhere, and what kiln must do about it: refuse (or, for
/// `may_pass`, have the value never arrive) and keep nothing of the build anywhere.
struct Tx {
    row: &'static str,
    dockerfile: &'static str,
    secret: &'static str,
    /// The value a later build is given instead (a rotated secret).
    rotated: &'static str,
    /// Also passed as `--build-arg TOKEN=<value>`.
    as_build_arg: bool,
    /// The value over loopback: refused while steps share the host's network, never received once each
    /// step has a network of its own; both are right, as long as no trace is left.
    may_pass: bool,
    /// The context holds the value itself (a file COPY'd in): a later build would rightly copy it again.
    in_context: bool,
    /// Encodings the scanner does not know, which must not stay anywhere either.
    forms: fn(&str) -> Vec<Vec<u8>>,
}

fn no_forms(_: &str) -> Vec<Vec<u8>> {
    Vec::new()
}

fn reversed(v: &str) -> Vec<Vec<u8>> {
    vec![v.bytes().rev().collect()]
}

fn rot13(v: &str) -> Vec<Vec<u8>> {
    let rot = |b: u8| match b {
        b'a'..=b'z' => (b - b'a' + 13) % 26 + b'a',
        b'A'..=b'Z' => (b - b'A' + 13) % 26 + b'A',
        _ => b,
    };
    vec![v.bytes().map(rot).collect()]
}

fn xored(v: &str) -> Vec<Vec<u8>> {
    let text: Vec<String> = v.bytes().map(|b| (b ^ 90).to_string()).collect();
    vec![text.join(" ").into_bytes()]
}

/// Every leaking Dockerfile opts out of the secret lints, so the runtime guard is what is tested.
const TXS: &[Tx] = &[
    Tx {
        row: "tx-cache-mount-raw",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s --mount=type=cache,target=/c,id=tx sh -c 'cat /run/secrets/s > /c/kept 2>/dev/null; true'\nRUN --mount=type=cache,target=/c,id=tx sh -c 'cp /c/kept /kept 2>/dev/null; true'\n",
        secret: "kiln-tx-cache-raw-5c2e8a1f7b3d",
        rotated: "kiln-tx-cache-raw-ROTATED-9a4c",
        as_build_arg: false,
        may_pass: false,
        in_context: false,
        forms: no_forms,
    },
    Tx {
        row: "tx-cache-mount-encoded",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s --mount=type=cache,target=/c,id=tx sh -c 'rev /run/secrets/s > /c/enc 2>/dev/null; true'\nRUN --mount=type=cache,target=/c,id=tx sh -c 'rev /c/enc > /kept 2>/dev/null; true'\n",
        secret: "kiln-tx-cache-enc-3f9b1d7e2a6c",
        rotated: "kiln-tx-cache-enc-ROTATED-4e1b",
        as_build_arg: false,
        may_pass: false,
        in_context: false,
        forms: reversed,
    },
    Tx {
        row: "tx-loopback",
        dockerfile: "# check=skip=all\nFROM base AS server\nRUN --mount=type=secret,id=s sh -c 'timeout 6 nc -l -p PORT < /run/secrets/s; true'\nFROM base AS client\nRUN for i in $(seq 50); do nc 127.0.0.1 PORT > /got 2>/dev/null </dev/null && [ -s /got ] && break; sleep 0.1; done; true\nFROM base\nCOPY --from=server /etc /etc-server\nCOPY --from=client /got /got\n",
        secret: "kiln-tx-loopback-8d2f6a0c4e1b",
        rotated: "kiln-tx-loopback-ROTATED-7c3a",
        as_build_arg: false,
        may_pass: true,
        in_context: false,
        forms: no_forms,
    },
    Tx {
        row: "tx-rev",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s sh -c 'rev /run/secrets/s > /enc 2>/dev/null; true'\nRUN rev /enc > /dec\n",
        secret: "kiln-tx-rev-6a1e9c3f5b7d",
        rotated: "kiln-tx-rev-ROTATED-2d8f",
        as_build_arg: false,
        may_pass: false,
        in_context: false,
        forms: reversed,
    },
    Tx {
        row: "tx-rot13",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s sh -c \"touch /enc; tr 'A-Za-z' 'N-ZA-Mn-za-m' < /run/secrets/s > /enc 2>/dev/null; true\"\nRUN tr 'A-Za-z' 'N-ZA-Mn-za-m' < /enc > /dec\n",
        secret: "kiln-tx-rotthirteen-SecretValue-4b8e",
        rotated: "kiln-tx-rotthirteen-ROTATED-1f5a",
        as_build_arg: false,
        may_pass: false,
        in_context: false,
        forms: rot13,
    },
    Tx {
        row: "tx-xor",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s sh -c 'od -An -tu1 -v /run/secrets/s 2>/dev/null | awk \"{for(i=1;i<=NF;i++) printf \\\"%d \\\", xor(\\$i, 90)}\" > /enc; true'\nRUN awk '{for(i=1;i<=NF;i++) printf \"%c\", xor($i, 90)}' /enc > /dec\n",
        secret: "kiln-tx-xor-0e7c5a3f1d9b",
        rotated: "kiln-tx-xor-ROTATED-6b2e",
        as_build_arg: false,
        may_pass: false,
        in_context: false,
        forms: xored,
    },
    Tx {
        row: "tx-copy-context",
        dockerfile: "# check=skip=all\nFROM base\nCOPY secret.txt /app/\n",
        secret: "kiln-tx-copied-2c6e0a4f8b1d",
        rotated: "",
        as_build_arg: false,
        may_pass: false,
        in_context: true,
        forms: no_forms,
    },
    Tx {
        row: "tx-export-guard",
        dockerfile: "# check=skip=all\nFROM base\nRUN echo built > /built\nARG TOKEN\nLABEL tok=$TOKEN\n",
        secret: "kiln-tx-label-7e3a9c5f1b0d",
        rotated: "kiln-tx-label-ROTATED-3c9f",
        as_build_arg: true,
        may_pass: false,
        in_context: false,
        forms: no_forms,
    },
    Tx {
        row: "tx-arg-quote",
        dockerfile: "# check=skip=all\nFROM base\nARG TOKEN\nRUN echo \"$TOKEN\" > /dev/null\n",
        secret: "kiln-tx-\"quoted\"-value-5a7c9e",
        rotated: "kiln-tx-\"quoted\"-ROTATED-1b3d",
        as_build_arg: true,
        may_pass: false,
        in_context: false,
        forms: no_forms,
    },
    Tx {
        row: "tx-arg-backslash",
        dockerfile: "# check=skip=all\nFROM base\nARG TOKEN\nRUN echo \"$TOKEN\" > /dev/null\n",
        secret: r"kiln-tx-back\slash\value-2b4d6f",
        rotated: r"kiln-tx-back\slash\ROTATED-8e0a",
        as_build_arg: true,
        may_pass: false,
        in_context: false,
        forms: no_forms,
    },
    Tx {
        row: "tx-arg-newline",
        // Lines too short to be needles of their own: only the whole value, newlines and all, matches.
        dockerfile: "# check=skip=all\nFROM base\nARG TOKEN\nRUN echo \"$TOKEN\" > /dev/null\n",
        secret: "nl7a-q1\nnl7b-q2\nnl7c-q3",
        rotated: "nl8a-r1\nnl8b-r2\nnl8c-r3",
        as_build_arg: true,
        may_pass: false,
        in_context: false,
        forms: no_forms,
    },
    Tx {
        row: "tx-arg-non-ascii",
        dockerfile: "# check=skip=all\nFROM base\nARG TOKEN\nRUN echo \"$TOKEN\" > /dev/null\n",
        secret: "kiln-tx-ünïcødé-パスワード-9f8e7d",
        rotated: "kiln-tx-ünïcødé-ROTATED-4a2c",
        as_build_arg: true,
        may_pass: false,
        in_context: false,
        forms: no_forms,
    },
];

/// What `kiln du` says about `store`.
fn du(store: &Path) -> String {
    let out = Kiln::bare().args(["du", "--store"]).arg(store).run();
    out.success();
    out.stdout.clone()
}

/// The value and its `forms`, as `find` takes them.
fn tx_needles(t: &Tx, value: &str) -> Vec<(&'static str, Vec<u8>)> {
    let mut n = vec![("value", value.as_bytes().to_vec())];
    n.extend((t.forms)(value).into_iter().map(|f| ("encoded value", f)));
    n
}

/// One build of `t` in `store` with `value` as secret `s` (none for `None`), its image and cache export
/// under `out`.
fn tx_build(t: &Tx, store: &Path, ctx: &Path, out: &Path, value: Option<&str>) -> Output {
    let mut k = Kiln::build_in(store).with_base().args(["--jobs", "4"]);
    if let Some(v) = value {
        let path = out.join("secret");
        crate::support::write(&path, v);
        k = k
            .arg("--secret")
            .arg(format!("id=s,src={}", path.display()));
        if t.as_build_arg {
            k = k.arg("--build-arg").arg(format!("TOKEN={v}"));
        }
    }
    k.arg("-o")
        .arg(format!("type=oci,dest={}", out.join("image").display()))
        .arg("--cache-to")
        .arg(format!("type=local,dest={}", out.join("cache").display()))
        .arg(ctx)
        .run()
}

/// Whether `out` is a refusal by a leak guard: exit 1, naming `s`, with a hint and a location, showing no
/// form of the value.
fn refused(out: &Output, needles: &[(&str, Vec<u8>)]) -> Vec<String> {
    let mut wrong = Vec::new();
    let located = out.stderr.contains("Dockerfile:");
    if out.code != Some(1)
        || !out.stderr.contains("secret `s`")
        || !out.stderr.contains("help:")
        || !located
    {
        wrong.push(format!(
            "not refused with a located leak-guard error naming `s` (exit {:?}):\n{}",
            out.code, out.stderr
        ));
    }
    let said = [
        (PathBuf::from("stderr"), out.stderr.clone().into_bytes()),
        (PathBuf::from("stdout"), out.stdout.clone().into_bytes()),
    ];
    for hit in find(&said, needles) {
        wrong.push(format!("the message shows it: {hit}"));
    }
    wrong
}

/// Every file of the store (decompressed) and every name and link target in it.
fn store_hits(store: &Path, needles: &[(&str, Vec<u8>)]) -> (Vec<String>, Vec<String>) {
    let files = find(&files_under(store), needles);
    let names: Vec<(PathBuf, Vec<u8>)> = tree(store)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("/"))
        .collect();
    (files, find(&names, needles))
}

/// Runs one case: a store warmed with the base image, the leaking build, then (unless the context
/// holds the value) the same Dockerfile with a rotated value (refused again: nothing of the first build
/// answers its steps) and without the secret. Returns what went
/// wrong, each under the row it breaks.
fn run_tx(t: &Tx) -> Vec<String> {
    let port = (40_000 + std::process::id() % 20_000 + t.row.len() as u32 * 7).to_string();
    let dockerfile = t.dockerfile.replace("PORT", &port);
    let ctx = context(&[
        ("Dockerfile", dockerfile.as_str()),
        ("secret.txt", t.secret),
    ]);
    let warm = context(&[("Dockerfile", "FROM base\n")]);
    let store = tempdir("store-");
    Kiln::build_in(store.path())
        .with_base()
        .arg(warm.path())
        .run()
        .success();
    let before = du(store.path());
    let old = tx_needles(t, t.secret);
    let mut wrong = Vec::new();
    let mut at = |row: &str, hits: Vec<String>| {
        for h in hits {
            wrong.push(format!("[{}] [{}] {h}", t.row, self::row(row)));
        }
    };

    let first = tempdir("tx-");
    let out = tx_build(t, store.path(), ctx.path(), first.path(), Some(t.secret));
    let passed = t.may_pass && out.code == Some(0);
    if !passed {
        at(t.row, refused(&out, &old));
        let written: Vec<String> = ["image", "cache"]
            .iter()
            .filter(|d| first.path().join(d).exists())
            .map(|d| format!("{d} was written"))
            .collect();
        at("tx-cache-to", written);
        at(
            "tx-du",
            (du(store.path()) != before)
                .then(|| format!("before:\n{before}after:\n{}", du(store.path())))
                .into_iter()
                .collect(),
        );
    }
    let image_and_cache = |dir: &Path| {
        ["image", "cache"]
            .iter()
            .map(|d| dir.join(d))
            .filter(|d| d.exists())
            .flat_map(|d| tree(&d))
            .collect::<Vec<_>>()
    };
    at(t.row, find(&image_and_cache(first.path()), &old));
    let (files, names) = store_hits(store.path(), &old);
    at("tx-store-files", files);
    at("tx-store-names", names);
    if t.in_context {
        return wrong;
    }

    let rotated = tempdir("tx-");
    let new = tx_needles(t, t.rotated);
    let out = tx_build(t, store.path(), ctx.path(), rotated.path(), Some(t.rotated));
    if !(t.may_pass && out.code == Some(0)) {
        at("tx-next-rotated", refused(&out, &new));
    }
    let mut both = old.clone();
    both.extend(new);
    let mut hits = find(&image_and_cache(rotated.path()), &both);
    let (files, names) = store_hits(store.path(), &both);
    hits.extend(files.into_iter().chain(names));
    at("tx-next-rotated", hits);

    let without = tempdir("tx-");
    let out = tx_build(t, store.path(), ctx.path(), without.path(), None);
    if out.code != Some(0) {
        at(
            "tx-next-without-secret",
            vec![format!("failed:\n{}", out.stderr)],
        );
    }
    let mut hits = find(&image_and_cache(without.path()), &both);
    let (files, names) = store_hits(store.path(), &both);
    hits.extend(files.into_iter().chain(names));
    at("tx-next-without-secret", hits);
    wrong
}

fn run_txs(cases: &[Tx]) {
    let wrong: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = cases.iter().map(|t| s.spawn(move || run_tx(t))).collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| vec!["the harness panicked".into()])
            })
            .collect()
    });
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A value moved out of its step (a cache mount, loopback, an encoding undone later, a COPY) is refused
/// where it lands, and nothing of the refused build stays in the store, `kiln du`, a cache export or a
/// later build without the secret or with a rotated one.
#[test]
fn a_value_moved_to_another_step_is_refused_and_nothing_is_kept() {
    run_txs(&TXS[..8]);
}

/// Secrets JSON must escape (quotes, backslashes, newlines) and non-ASCII ones, given as build args too,
/// are found in the image config and history.
#[test]
fn build_args_that_json_escapes_are_refused_and_nothing_is_kept() {
    run_txs(&TXS[8..]);
}

/// A build given a secret that dies mid-way leaves its staged steps in `tmp/`; the next command that
/// opens the store removes them, with the cache mounts the build wrote.
#[test]
fn a_killed_secret_build_leaves_no_trace() {
    let name = row("tx-crash");
    let value = "kiln-tx-crash-4d8b2f6a0e1c";
    let ctx = context(&[(
        "Dockerfile",
        "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s --mount=type=cache,target=/c,id=crash sh -c 'rev /run/secrets/s > /enc; rev /run/secrets/s > /c/enc'\nRUN sleep 60\n",
    )]);
    let store = tempdir("store-");
    let secrets = tempdir("secrets-");
    let path = secrets.path().join("s");
    crate::support::write(&path, value);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["build", "--progress", "plain", "--store"])
        .arg(store.path())
        .arg("--build-context")
        .arg(format!("base=oci-layout://{}", base_image().display()))
        .arg("--secret")
        .arg(format!("id=s,src={}", path.display()))
        .arg(ctx.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kiln starts");
    let needles = vec![("reversed value", reversed(value).remove(0))];
    // Until the first step's result is staged (and its cache written): then a kill leaves both behind.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let staged = || {
        std::fs::read_dir(store.path().join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_dir(e.path().join("snapshots")).is_ok_and(|mut d| d.next().is_some())
            })
    };
    while !staged() {
        assert!(
            std::time::Instant::now() < deadline,
            "[{name}] the first step never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().expect("kill kiln");
    child.wait().expect("wait for kiln");
    let staged = find(&files_under(store.path()), &needles);
    assert!(
        !staged.is_empty(),
        "[{name}] nothing was staged to clean up"
    );
    let after = du(store.path());
    let (files, names) = store_hits(store.path(), &needles);
    assert!(
        files.is_empty() && names.is_empty(),
        "[{name}] after `kiln du`: {files:?} {names:?}"
    );
    let said: Vec<String> = after
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for line in [
        "work in progress 0 B",
        "cache mounts 0 B",
        "cached results 1",
    ] {
        assert!(
            said.iter().any(|l| l == line),
            "[{name}] no `{line}`:\n{after}"
        );
    }
}

/// A build given a secret that fails (not refused: a step exits 1) keeps nothing either: its earlier
/// steps were never checked with the rest, and one of them may hold the value in a form no scan finds.
#[test]
fn a_failed_secret_build_keeps_nothing() {
    let name = row("tx-du");
    let value = "kiln-tx-failed-7b1d5f9a3c0e";
    let ctx = context(&[(
        "Dockerfile",
        "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s --mount=type=cache,target=/c,id=f sh -c 'rev /run/secrets/s > /enc; rev /run/secrets/s > /c/enc'\nRUN exit 1\n",
    )]);
    let store = tempdir("store-");
    let warm = context(&[("Dockerfile", "FROM base\n")]);
    Kiln::build_in(store.path())
        .with_base()
        .arg(warm.path())
        .run()
        .success();
    let before = du(store.path());
    run_with_secret(Kiln::build_in(store.path()), "s", value, ctx.path()).expect_code(1);
    assert_eq!(du(store.path()), before, "[{name}]");
    let needles = vec![("reversed value", reversed(value).remove(0))];
    let (files, names) = store_hits(store.path(), &needles);
    assert!(
        files.is_empty() && names.is_empty(),
        "[{name}] {files:?} {names:?}"
    );
}

/// A structured secret whose field alone (or decoded) a step writes to a file.
struct FieldLeak {
    row: &'static str,
    secret: &'static str,
    /// What the step writes, as kiln must recognise it.
    field: &'static str,
    dockerfile: &'static str,
}

const FIELD_LEAKS: &[FieldLeak] = &[
    FieldLeak {
        row: "guard-json-field",
        secret: r#"{"user": "kiln-field-user", "password": "kiln-field-JSON-3b4c5d6e7f", "port": 5432}"#,
        field: "kiln-field-JSON-3b4c5d6e7f",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s sed 's/.*\"password\": \"\\([^\"]*\\)\".*/\\1/' /run/secrets/s > /kept\n",
    },
    FieldLeak {
        row: "guard-yaml-field",
        secret: "registry:\n  user: kiln-field-user\n  password: kiln-field-YAML-8a9b0c1d2e\n",
        field: "kiln-field-YAML-8a9b0c1d2e",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s sed -n 's/^ *password: //p' /run/secrets/s > /kept\n",
    },
    FieldLeak {
        row: "guard-dotenv-field",
        secret: "DB_USER=kiln\nexport DB_PASSWORD=\"kiln-field-DOTENV-4f5a6b7c8d\"\n",
        field: "kiln-field-DOTENV-4f5a6b7c8d",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s sed -n 's/.*DB_PASSWORD=\"\\(.*\\)\"$/\\1/p' /run/secrets/s > /kept\n",
    },
    FieldLeak {
        row: "guard-netrc-field",
        secret: "machine git.example.com login kiln-bot password kiln-field-NETRC-1a2b3c4d5e\n",
        field: "kiln-field-NETRC-1a2b3c4d5e",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s awk '{for (i = 1; i < NF; i++) if ($i == \"password\") print $(i+1)}' /run/secrets/s > /kept\n",
    },
    FieldLeak {
        row: "guard-npmrc-token",
        secret: "registry=https://registry.npmjs.org/\n//registry.npmjs.org/:_authToken=kiln-field-NPM-6c7d8e9f0a\n",
        field: "kiln-field-NPM-6c7d8e9f0a",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s sed -n 's/.*_authToken=//p' /run/secrets/s > /kept\n",
    },
    FieldLeak {
        row: "guard-npmrc-auth",
        // base64 of `kiln-ci:kiln-field-NPMAUTH-0f1e2d3c4b`
        secret: "//npm.example.com/:_auth=a2lsbi1jaTpraWxuLWZpZWxkLU5QTUFVVEgtMGYxZTJkM2M0Yg==\nalways-auth=true\n",
        field: "kiln-field-NPMAUTH-0f1e2d3c4b",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s sed -n 's/.*_auth=//p' /run/secrets/s | base64 -d | cut -d: -f2 > /kept\n",
    },
    FieldLeak {
        row: "guard-pypirc-field",
        secret: "[distutils]\nindex-servers =\n    pypi\n\n[pypi]\nusername = __token__\npassword = pypi-kiln-field-PYPI-2d3e4f5a6b\n",
        field: "pypi-kiln-field-PYPI-2d3e4f5a6b",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s sed -n 's/^password = //p' /run/secrets/s > /kept\n",
    },
    FieldLeak {
        row: "guard-docker-auth",
        // base64 of `kiln-robot:kiln-field-DOCKER-9e8d7c6b5a`
        secret: r#"{"auths":{"registry.example.com":{"auth":"a2lsbi1yb2JvdDpraWxuLWZpZWxkLURPQ0tFUi05ZThkN2M2YjVh"}}}"#,
        field: "kiln-field-DOCKER-9e8d7c6b5a",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s sed 's/.*\"auth\":\"\\([^\"]*\\)\".*/\\1/' /run/secrets/s | base64 -d | cut -d: -f2 > /kept\n",
    },
    FieldLeak {
        row: "guard-field-encoded",
        secret: r#"{"user": "kiln-field-user", "password": "kiln-field-B64-7e8f9a0b1c"}"#,
        field: "kiln-field-B64-7e8f9a0b1c",
        dockerfile: "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s sed 's/.*\"password\": \"\\([^\"]*\\)\".*/\\1/' /run/secrets/s | base64 > /kept\n",
    },
];

/// Runs one field case: refused, naming `s`; neither the field nor the secret shown, output or stored.
/// The step must really have written the field: the same Dockerfile with the step's result printed
/// instead shows the field scrubbed in the log.
fn run_field_leak(f: &FieldLeak) -> Vec<String> {
    let ctx = context(&[("Dockerfile", f.dockerfile)]);
    let secret_file = tempdir("secret-");
    let secret_path = secret_file.path().join("s");
    crate::support::write(&secret_path, f.secret);
    let dest = tempdir("out-");
    let layout = dest.path().join("image");
    let kiln = Kiln::new().with_base();
    let out = kiln
        .clone()
        .arg("--secret")
        .arg(format!("id=s,src={}", secret_path.display()))
        .arg("-o")
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg(ctx.path())
        .run();
    let mut wrong = Vec::new();
    if out.code != Some(1) || !out.stderr.contains("secret `s` leaked") {
        wrong.push(format!(
            "not refused by the leak guard naming `s` (exit {:?}):\n{}",
            out.code, out.stderr
        ));
    }
    let said = [
        (PathBuf::from("stderr"), out.stderr.clone().into_bytes()),
        (PathBuf::from("stdout"), out.stdout.clone().into_bytes()),
    ];
    for value in [f.field, f.secret] {
        for hit in leaks(&said, value.as_bytes()) {
            wrong.push(format!("the message shows a value: {hit}"));
        }
    }
    if layout.exists() {
        wrong.push("an output was written".to_string());
    }
    let values = [("field", f.field.as_bytes().to_vec())];
    for hit in find(&files_under(kiln.store()), &values) {
        wrong.push(format!("the store holds it: {hit}"));
    }
    wrong
}

#[test]
fn a_field_of_a_structured_secret_is_refused_alone_and_decoded() {
    let results: Vec<(&str, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = FIELD_LEAKS
            .iter()
            .map(|f| (row(f.row), s.spawn(move || run_field_leak(f))))
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| (name, h.join().unwrap_or_else(|_| vec!["panicked".into()])))
            .collect()
    });
    let wrong: Vec<String> = results
        .iter()
        .flat_map(|(name, w)| w.iter().map(move |w| format!("[{name}] {w}")))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The text of the log lines of `--progress plain` output (`#N 0.123 text`), joined without line breaks
/// so that wrapped encodings are whole again.
fn log_text(stderr: &str) -> String {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix('#')?;
            let (_, rest) = rest.split_once(' ')?;
            let (time, text) = rest.split_once(' ')?;
            time.parse::<f64>().is_ok().then_some(text)
        })
        .collect()
}

/// A step prints its secret base64 (wrapped at 76), `xxd -p` (wrapped at 60) and upper-case hex: the
/// plain progress shows `***` for each, and no encoding of the value, even with the lines joined.
#[test]
fn encoded_secrets_in_step_output_are_scrubbed() {
    let name = row("progress-encoded");
    let ctx = context(&[(
        "Dockerfile",
        "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s echo b64:; base64 /run/secrets/s; echo hex:; xxd -p /run/secrets/s; echo HEX:; od -An -tx1 /run/secrets/s | tr -d ' \\n' | tr a-f A-F; echo; echo end\n",
    )]);
    let out = run_with_secret(Kiln::new(), "s", LONG_SECRET, ctx.path());
    out.success();
    let log = log_text(&out.stderr);
    assert!(
        log.contains("b64:***") && log.contains("hex:***") && log.contains("HEX:***end"),
        "[{name}] {}",
        out.stderr
    );
    let said = [
        (PathBuf::from("stderr"), out.stderr.clone().into_bytes()),
        (PathBuf::from("log lines joined"), log.into_bytes()),
    ];
    let hits = leaks(&said, LONG_SECRET.as_bytes());
    assert!(hits.is_empty(), "[{name}] {hits:?}\n{}", out.stderr);
}

/// A failing step prints one field of its JSON secret raw and hex-encoded: log and error show `***`.
#[test]
fn a_field_in_step_output_is_scrubbed() {
    let name = row("progress-field");
    let field = "kiln-progress-field-5a4b3c2d1e";
    let secret = format!(r#"{{"user": "kiln-field-user", "token": "{field}"}}"#);
    let ctx = context(&[(
        "Dockerfile",
        "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s f=$(cut -d'\"' -f8 /run/secrets/s); echo \"raw:$f\"; printf %s \"$f\" | xxd -p | tr -d '\\n' | sed 's/^/hex:/'; echo; exit 1\n",
    )]);
    let out = run_with_secret(Kiln::new(), "s", &secret, ctx.path());
    out.expect_code(1);
    assert!(
        out.stderr.contains("raw:***") && out.stderr.contains("hex:***"),
        "[{name}] {}",
        out.stderr
    );
    let said = [(PathBuf::from("stderr"), out.stderr.clone().into_bytes())];
    let hits = leaks(&said, field.as_bytes());
    assert!(hits.is_empty(), "[{name}] {hits:?}\n{}", out.stderr);
}

/// A secret too short to search for is not passed by in silence.
#[test]
fn a_short_secret_gets_a_warning() {
    let name = row("short-secret-warning");
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nRUN --mount=type=secret,id=pin test -s /run/secrets/pin\n",
    )]);
    let out = run_with_secret(Kiln::new(), "pin", "Q7z\n", ctx.path());
    out.success();
    assert!(
        out.stderr
            .contains("warning: secret `pin` is shorter than 4 bytes, too short to search for"),
        "[{name}] {}",
        out.stderr
    );
    assert!(!out.stderr.contains("Q7z"), "[{name}] {}", out.stderr);
}

/// The same, line by line with pauses, so each line reaches kiln as a chunk of its own and the encoded
/// secret is split between chunks: still `***`, never a piece long enough to mean anything.
#[test]
fn an_encoded_secret_split_between_output_chunks_is_scrubbed() {
    let name = row("progress-encoded");
    let ctx = context(&[(
        "Dockerfile",
        "# check=skip=all\nFROM base\nRUN --mount=type=secret,id=s for enc in base64 'xxd -p'; do { head -c 100 /dev/zero | tr '\\0' x; cat /run/secrets/s; head -c 100 /dev/zero | tr '\\0' y; } | $enc | while read -r l; do echo \"$l\"; sleep 0.1; done; done\n",
    )]);
    let out = run_with_secret(Kiln::new(), "s", LONG_SECRET, ctx.path());
    out.success();
    let log = log_text(&out.stderr);
    assert!(log.matches("***").count() >= 4, "[{name}] {}", out.stderr);
    let said = [
        (PathBuf::from("stderr"), out.stderr.clone().into_bytes()),
        (PathBuf::from("log lines joined"), log.into_bytes()),
    ];
    let hits = leaks(&said, LONG_SECRET.as_bytes());
    assert!(hits.is_empty(), "[{name}] {hits:?}\n{}", out.stderr);
}
