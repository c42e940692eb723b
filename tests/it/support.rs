//! The harness every integration test uses: runs the real `kiln` binary, makes contexts and the base image,
//! and reads what kiln wrote with independent tools (umoci, skopeo) or by hand (flate2, tar).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use tempfile::TempDir;

/// The repository root, for the example and the fixtures.
pub(crate) fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The password inside `examples/secrets/secrets.json`: the bytes no build output may contain.
pub(crate) const EXAMPLE_PASSWORD: &str = "s3cr3t-Pa55w0rd-k1ln-demo";

/// One invocation of `kiln`, re-runnable: `run` builds a fresh `Command` each time, so a test can run the
/// same build twice against the same store (the cache tests do).
#[derive(Clone)]
pub(crate) struct Kiln {
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    /// A command that runs kiln (`unshare -n`), or empty to run it directly.
    wrapper: Vec<OsString>,
    /// The kiln binary to run, when not cargo's (a copy another user can execute).
    program: Option<PathBuf>,
    /// Keeps the private store alive as long as any clone of this invocation.
    store: Option<Arc<TempDir>>,
}

impl Kiln {
    /// `kiln build --store <fresh temp dir> --progress plain`: a build isolated from every other test.
    pub(crate) fn new() -> Kiln {
        let store = Arc::new(tempdir("store-"));
        let mut k = Kiln::build_in(store.path());
        k.store = Some(store);
        k
    }

    /// `kiln build --store STORE --progress plain`, for tests that share a store between builds.
    pub(crate) fn build_in(store: &Path) -> Kiln {
        Kiln::bare()
            .args(["build", "--store"])
            .arg(store)
            .args(["--progress", "plain"])
    }

    /// `kiln graph`: compiles only, so it gets no store.
    pub(crate) fn graph() -> Kiln {
        Kiln::bare().arg("graph")
    }

    /// `kiln` with no arguments yet.
    pub(crate) fn bare() -> Kiln {
        Kiln {
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
            wrapper: Vec::new(),
            program: None,
            store: None,
        }
    }

    /// The private store made by `Kiln::new`.
    pub(crate) fn store(&self) -> &Path {
        self.store
            .as_ref()
            .expect("only Kiln::new makes its own store")
            .path()
    }

    pub(crate) fn arg(mut self, a: impl Into<OsString>) -> Kiln {
        self.args.push(a.into());
        self
    }

    pub(crate) fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Kiln {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub(crate) fn current_dir(mut self, dir: impl Into<PathBuf>) -> Kiln {
        self.cwd = Some(dir.into());
        self
    }

    pub(crate) fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Kiln {
        self.envs.push((k.into(), v.into()));
        self
    }

    /// Runs kiln under `command` (e.g. `["unshare", "-n"]`), which gets kiln's path and arguments.
    pub(crate) fn wrapped(mut self, command: &[&str]) -> Kiln {
        self.wrapper = command.iter().map(OsString::from).collect();
        self
    }

    /// Runs this kiln binary instead of cargo's.
    pub(crate) fn program(mut self, path: impl Into<PathBuf>) -> Kiln {
        self.program = Some(path.into());
        self
    }

    /// `--build-context base=oci-layout://<the fixture base image>`: what every Dockerfile here builds FROM.
    pub(crate) fn with_base(self) -> Kiln {
        self.arg("--build-context")
            .arg(format!("base=oci-layout://{}", base_image().display()))
    }

    pub(crate) fn run(&self) -> Output {
        let out = self
            .command()
            .output()
            .expect("cannot start the kiln binary");
        Output {
            command: format!("kiln {}", shown(&self.args)),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The command `run` runs, for a test that needs its own stdio (a terminal).
    pub(crate) fn command(&self) -> Command {
        let kiln = self
            .program
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kiln")));
        let mut cmd = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&kiln);
                c
            }
            None => Command::new(kiln),
        };
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        cmd
    }
}

fn shown(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a step ended, from its `#N` lines in the plain progress output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StepState {
    Cached,
    Done,
    Error,
    /// Started, never finished (a build that was cut short).
    Started,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    pub name: String,
    pub state: StepState,
}

pub(crate) struct Output {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics, showing everything kiln said, unless kiln exited 0.
    #[track_caller]
    pub(crate) fn success(&self) -> &Output {
        self.expect_code(0)
    }

    #[track_caller]
    pub(crate) fn expect_code(&self, code: i32) -> &Output {
        assert_eq!(
            self.code,
            Some(code),
            "`{}` exited {:?}, expected {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.command,
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// The steps in the order they were first reported, with how each ended.
    pub(crate) fn steps(&self) -> Vec<Step> {
        let mut order: Vec<usize> = Vec::new();
        let mut steps: BTreeMap<usize, Step> = BTreeMap::new();
        for line in self.stderr.lines() {
            let Some(rest) = line.strip_prefix('#') else {
                continue;
            };
            let Some((n, tail)) = rest.split_once(' ') else {
                continue;
            };
            let Ok(n) = n.parse::<usize>() else {
                continue;
            };
            match steps.get_mut(&n) {
                None => {
                    order.push(n);
                    steps.insert(
                        n,
                        Step {
                            name: tail.to_string(),
                            state: StepState::Started,
                        },
                    );
                }
                Some(step) => {
                    let word = tail.split(' ').next().unwrap_or("");
                    // Log lines start with a timestamp; only the markers change the state.
                    step.state = match word {
                        "CACHED" => StepState::Cached,
                        "DONE" => StepState::Done,
                        "ERROR" => StepState::Error,
                        _ => step.state,
                    };
                }
            }
        }
        order.into_iter().filter_map(|n| steps.remove(&n)).collect()
    }

    /// The step whose name contains `needle`; panics when there is not exactly one.
    #[track_caller]
    pub(crate) fn step(&self, needle: &str) -> Step {
        let found: Vec<Step> = self
            .steps()
            .into_iter()
            .filter(|s| s.name.contains(needle))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one step named like `{needle}`, found {found:?}\n--- stderr\n{}",
            self.stderr
        );
        found.into_iter().next().expect("one step")
    }

    /// `(run, cached)` from the final `N steps run, M cached, in Xs` line.
    #[track_caller]
    pub(crate) fn summary(&self) -> (usize, usize) {
        let line = self
            .stderr
            .lines()
            .find(|l| l.contains(" steps run, "))
            .unwrap_or_else(|| panic!("no summary line in\n{}", self.stderr));
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [run, "steps", "run,", cached, "cached,", ..] => (
                run.parse().expect("a count"),
                cached.parse().expect("a count"),
            ),
            _ => panic!("malformed summary line: {line}"),
        }
    }
}

/// A fresh temporary directory under the target dir (not /tmp, which may be a small tmpfs).
pub(crate) fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("cannot make a temp dir")
}

/// A build context holding `files` (`path`, `contents`); parent directories are made as needed.
pub(crate) fn context(files: &[(&str, &str)]) -> TempDir {
    let dir = tempdir("ctx-");
    for (path, contents) in files {
        write(&dir.path().join(path), contents);
    }
    dir
}

pub(crate) fn write(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("cannot make a directory");
    }
    std::fs::write(path, contents)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// `kiln graph ARGS` in `dir` on the store `store`, with `KILN_EVAL_STATS=1` (which says what was
/// replayed, evaluated, and whether the last graph was reused), expected to succeed.
pub(crate) fn graph_with_stats(dir: &Path, store: &Path, args: &[&str]) -> Output {
    let out = Kiln::graph()
        .current_dir(dir)
        .env("KILN_STORE", store)
        .env("KILN_EVAL_STATS", "1")
        .args(args)
        .run();
    out.success();
    out
}

/// `kiln graph ARGS` in `dir` on the store `store`, expected to be refused as bad input (exit 2):
/// what it said.
pub(crate) fn graph_refused(dir: &Path, store: &Path, args: &[&str]) -> String {
    let out = Kiln::graph()
        .current_dir(dir)
        .env("KILN_STORE", store)
        .args(args)
        .run();
    out.expect_code(2);
    out.stderr
}

/// A chain of packages as `bench/gen-monorepo.py` writes them: each builds on the one before.
pub(crate) fn chain(targets: usize) -> TempDir {
    let dir = tempdir("chain-");
    let status = std::process::Command::new("python3")
        .arg(repo().join("bench/gen-monorepo.py"))
        .arg(dir.path())
        .arg(targets.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python3");
    assert!(status.success());
    dir
}

/// A copy of `src` (a flat directory, like the example) in a fresh temp dir, for tests that edit it.
pub(crate) fn copy_dir(src: &Path) -> TempDir {
    let dir = tempdir("ctx-");
    for entry in walkdir::WalkDir::new(src).min_depth(1) {
        let entry = entry.expect("readable source tree");
        let to = dir
            .path()
            .join(entry.path().strip_prefix(src).expect("under src"));
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&to).expect("cannot make a directory");
        } else {
            std::fs::copy(entry.path(), &to).expect("cannot copy a file");
        }
    }
    dir
}

/// The offline busybox base image (an OCI layout tagged `latest`), made once per test process by the fixture
/// script, so kiln's image import is checked against a producer that is not kiln.
pub(crate) fn base_image() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        assert!(
            Path::new("/bin/busybox").is_file(),
            "/bin/busybox is missing: the tests need Debian's busybox-static \
             (`apt-get install busybox-static`) to make their base image"
        );
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_base_images(root);
        // Named by pid so a later test process can tell that this one is gone and remove it.
        let dest = root.join(format!("base-image-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dest);
        let out = Command::new("bash")
            .arg(repo().join("tests/fixtures/make-base-image.sh"))
            .arg(&dest)
            .output()
            .expect("cannot run bash");
        assert!(
            out.status.success(),
            "tests/fixtures/make-base-image.sh failed (is busybox-static installed?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dest
    })
}

/// The busybox base for linux/arm64, made offline from Debian's `busybox-static:arm64` (see
/// `tests/fixtures/make-foreign-base-image.sh`). Reproducible, so it is kept under the target directory
/// across test runs (about 1 MB) and made again only when missing.
pub(crate) fn arm64_base_image() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dest = Path::new(env!("CARGO_TARGET_TMPDIR")).join("base-image-arm64");
        if dest.join("index.json").is_file() {
            return dest;
        }
        // Made beside it and renamed into place, so concurrent test processes never see half of it.
        let staging = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let made = staging.path().join("layout");
        let out = Command::new("bash")
            .arg(repo().join("tests/fixtures/make-foreign-base-image.sh"))
            .arg(&made)
            .arg("arm64")
            .output()
            .expect("cannot run bash");
        assert!(
            out.status.success(),
            "tests/fixtures/make-foreign-base-image.sh failed (has scripts/setup.sh run?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::rename(&made, &dest);
        dest
    })
}

/// An image index holding the amd64 and arm64 busybox bases, as a multi-platform image on a registry
/// is: `index.json` names one index, which names one image per platform.
pub(crate) fn multi_platform_base() -> TempDir {
    use sha2::Digest as _;
    let dir = tempdir("multi-base-");
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut manifests = Vec::new();
    for (layout, arch) in [(base_image(), "amd64"), (arm64_base_image(), "arm64")] {
        for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), blobs.join(e.file_name())).unwrap();
        }
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let mut entry = index["manifests"][0].clone();
        entry.as_object_mut().unwrap().remove("annotations");
        entry["platform"] = serde_json::json!({"architecture": arch, "os": "linux"});
        manifests.push(entry);
    }
    let inner = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    let digest = hex::encode(sha2::Sha256::digest(&inner));
    write(&blobs.join(&digest), &inner);
    let outer = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{digest}"),
            "size": inner.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    write(
        &dir.path().join("index.json"),
        serde_json::to_vec(&outer).unwrap(),
    );
    write(
        &dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    );
    dir
}

/// A copy of the busybox base whose image config `edit` changed (its `config` object: User, WorkingDir,
/// OnBuild, ...), with the config, manifest and index blobs rewritten to match.
pub(crate) fn base_image_with(edit: impl FnOnce(&mut serde_json::Value)) -> TempDir {
    use sha2::Digest as _;
    let dir = copy_dir(base_image());
    let blob = |digest: &str| dir.path().join("blobs/sha256").join(&digest[7..]);
    let put = |value: &serde_json::Value| {
        let bytes = serde_json::to_vec(value).unwrap();
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        write(&blob(&digest), &bytes);
        (digest, bytes.len())
    };
    let read = |digest: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(blob(digest)).unwrap()).unwrap()
    };
    let index_path = dir.path().join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let mut manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    edit(&mut config["config"]);
    let (digest, size) = put(&config);
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = size.into();
    let (digest, size) = put(&manifest);
    index["manifests"][0]["digest"] = digest.into();
    index["manifests"][0]["size"] = size.into();
    write(&index_path, serde_json::to_vec(&index).unwrap());
    dir
}

/// Statics are never dropped, so each process's base image outlives it; the next process cleans up.
fn remove_stale_base_images(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("base-image-")
            && pid.parse::<u32>().is_ok()
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The example's command line, run from the repository root exactly as the README shows it.
pub(crate) fn build_example(kiln: Kiln, dest: &Path) -> Output {
    kiln.current_dir(repo())
        .with_base()
        .args([
            "--secret",
            "id=mysecret,src=examples/secrets/secrets.json",
            "-o",
        ])
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg("examples/secrets")
        .run()
}

/// An unpacked image: `rootfs` lives as long as this value.
pub(crate) struct Unpacked {
    _dir: TempDir,
    pub rootfs: PathBuf,
}

/// Unpacks `layout:latest` with umoci, an independent OCI implementation.
pub(crate) fn unpack(layout: &Path) -> Unpacked {
    unpack_ref(layout, "latest")
}

/// Unpacks the image `layout` holds under `name` with umoci.
pub(crate) fn unpack_ref(layout: &Path, name: &str) -> Unpacked {
    let dir = tempdir("unpack-");
    let bundle = dir.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{name}", layout.display()))
        .arg(&bundle)
        .output()
        .expect("cannot run umoci");
    assert!(
        out.status.success(),
        "umoci unpack failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Unpacked {
        _dir: dir,
        rootfs: bundle.join("rootfs"),
    }
}

/// Runs a judge tool; panics with its stderr unless it succeeds; returns its stdout.
#[track_caller]
/// The manifest (or index) a registry serves for `reference` (`docker://` without TLS), as skopeo reads
/// it, byte for byte.
pub(crate) fn registry_raw(reference: &str) -> String {
    tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    )
}

/// The media types of a manifest's layers, bottom first.
pub(crate) fn layer_media_types(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .expect("a manifest's layers")
        .iter()
        .map(|l| l["mediaType"].as_str().expect("a media type").to_string())
        .collect()
}

pub(crate) fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An OCI image layout on disk, read by hand.
pub(crate) struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub(crate) fn new(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    pub(crate) fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let path = self.dir.join("blobs/sha256").join(hex);
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    pub(crate) fn json(&self, digest: &str) -> serde_json::Value {
        serde_json::from_slice(&self.blob(digest)).expect("a JSON blob")
    }

    pub(crate) fn index(&self) -> serde_json::Value {
        let text = std::fs::read(self.dir.join("index.json")).expect("index.json");
        serde_json::from_slice(&text).expect("index.json is JSON")
    }

    /// The manifest of the first image in the index.
    pub(crate) fn manifest(&self) -> serde_json::Value {
        let digest = self.index()["manifests"][0]["digest"]
            .as_str()
            .expect("a manifest digest")
            .to_string();
        self.json(&digest)
    }

    pub(crate) fn config(&self) -> serde_json::Value {
        let digest = self.manifest()["config"]["digest"]
            .as_str()
            .expect("a config digest")
            .to_string();
        self.json(&digest)
    }

    /// Every layer of the image, decompressed: uncompressed tar bytes, base layer first.
    pub(crate) fn layer_tars(&self) -> Vec<Vec<u8>> {
        self.manifest()["layers"]
            .as_array()
            .expect("a layer list")
            .iter()
            .map(|l| {
                let digest = l["digest"].as_str().expect("a layer digest");
                maybe_gunzip(self.blob(digest))
            })
            .collect()
    }
}

/// Every regular file under `dir` with its bytes, gzip streams decompressed (symlinks are not followed).
/// An entry that is gone, or no longer a regular file, by the time it is read is left out: a step whose
/// build was just killed may still be being torn down, and overlayfs replaces a removed file by a
/// whiteout (a character device, which cannot be opened) in one rename. Such an entry holds no bytes.
pub(crate) fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let regular = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| match e {
            Ok(e) => Some(e),
            Err(err) if err.path().is_some_and(|p| !p.exists()) => None,
            Err(err) => panic!("a readable tree: {err}"),
        })
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| match std::fs::read(e.path()) {
            Ok(bytes) => Some((e.path().to_path_buf(), maybe_gunzip(bytes))),
            Err(_) if !regular(e.path()) => None,
            Err(err) => panic!("a readable file: {}: {err}", e.path().display()),
        })
        .collect()
}

/// Gunzips `bytes` if they are a gzip stream; returns them as they are otherwise.
pub(crate) fn maybe_gunzip(bytes: Vec<u8>) -> Vec<u8> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return bytes;
    }
    let mut out = Vec::new();
    match flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut out) {
        Ok(_) => out,
        // Not gzip after all (a file that happens to start with the magic bytes).
        Err(_) => bytes,
    }
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Decompresses `bytes` if they are a zstd stream (layers exported with `--compression zstd`); returns
/// them as they are otherwise.
pub(crate) fn maybe_unzstd(bytes: Vec<u8>) -> Vec<u8> {
    if !bytes.starts_with(&ZSTD_MAGIC) {
        return bytes;
    }
    zstd::decode_all(&bytes[..]).unwrap_or(bytes)
}

/// The entry paths of a tar, without a leading `./` or `/`.
pub(crate) fn tar_paths(tar: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .expect("a tar")
        .map(|e| {
            let e = e.expect("a tar entry");
            let p = e.path().expect("a tar path").to_string_lossy().into_owned();
            p.trim_start_matches("./")
                .trim_start_matches('/')
                .to_string()
        })
        .collect()
}

/// Whether `needle` occurs in `haystack`.
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return false;
    }
    match std::str::from_utf8(needle) {
        Ok(n) if n.is_ascii() => ascii_view(haystack).contains(n),
        _ => haystack.windows(needle.len()).any(|w| w == needle),
    }
}

/// `bytes` as text for std's fast substring search (test code runs unoptimized; std does not). Invalid
/// UTF-8 becomes U+FFFD, which never joins ASCII bytes together, so an ASCII needle matches here exactly
/// where it matches in the bytes.
fn ascii_view(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// The ways a secret's bytes can sit in a file: raw, hex (either case) and base64 at each of the three
/// alignments a substring can have inside a larger encoded stream (only the whole 3-byte groups, whose
/// encoding does not depend on the neighbours).
pub(crate) fn encodings(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("raw".to_string(), secret.to_vec()),
        ("hex".to_string(), hex::encode(secret).into_bytes()),
        ("HEX".to_string(), hex::encode_upper(secret).into_bytes()),
    ];
    for skip in 0..3 {
        let rest = &secret[skip..];
        let whole = &rest[..rest.len() / 3 * 3];
        out.push((format!("base64+{skip}"), base64(whole).into_bytes()));
    }
    out
}

/// Plain RFC 4648 base64 (no padding needed: callers pass whole 3-byte groups).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    bytes
        .chunks(3)
        .flat_map(|c| {
            let n = c
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            let chars = c.len() + 1;
            (0..4).map(move |i| {
                if i < chars {
                    ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
                } else {
                    '='
                }
            })
        })
        .collect()
}

/// Names every file among `files` holding `secret` in any encoding, as `path (encoding)`.
pub(crate) fn leaks(files: &[(PathBuf, Vec<u8>)], secret: &[u8]) -> Vec<String> {
    let encoded = encodings(secret);
    let mut found = Vec::new();
    for (path, bytes) in files {
        let text = ascii_view(bytes);
        for (how, e) in &encoded {
            let hit = match std::str::from_utf8(e) {
                Ok(e) if e.is_ascii() => text.contains(e),
                _ => contains(bytes, e),
            };
            if hit {
                found.push(format!("{} ({how})", path.display()));
            }
        }
    }
    found
}

/// `leaks` over every regular file under `dir`, for each of `secrets`: raw, hex and base64, gzip streams
/// decompressed; symlinks are not followed. GNU grep, an independent judge, finds the text encodings in the
/// plain files in one native-speed pass; the code here reads each file once, for the binary needles and
/// for whatever is inside gzip streams. (Scanning a store that holds a whole Debian userland needle by
/// needle in this unoptimized test code took over 20 s.)
pub(crate) fn leaks_under(dir: &Path, secrets: &[&[u8]]) -> Vec<String> {
    let (text, binary): (Vec<_>, Vec<_>) = secrets
        .iter()
        .flat_map(|s| encodings(s))
        .filter(|(_, e)| !e.is_empty())
        .partition(|(_, e)| e.is_ascii() && !e.contains(&b'\n'));
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.expect("a readable tree");
        if !entry.file_type().is_file() {
            continue;
        }
        let bytes = std::fs::read(entry.path()).expect("a readable file");
        let gzipped = bytes.starts_with(&[0x1f, 0x8b]) || bytes.starts_with(&ZSTD_MAGIC);
        let plain = maybe_unzstd(maybe_gunzip(bytes));
        // grep sees a gzip or zstd stream only compressed, so everything inside one is searched here.
        let needles = if gzipped {
            text.iter().chain(&binary).collect::<Vec<_>>()
        } else {
            binary.iter().collect()
        };
        for (how, needle) in needles {
            // memchr's searcher, not `contains`: its byte-window fallback crawls through 100 MB files.
            if memchr::memmem::find(&plain, needle).is_some() {
                found.push(format!("{} ({how})", entry.path().display()));
            }
        }
    }

    let patterns =
        tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).expect("a temp file");
    let list: Vec<u8> = text
        .iter()
        .flat_map(|(_, e)| e.iter().copied().chain([b'\n']))
        .collect();
    std::fs::write(patterns.path(), list).expect("cannot write the grep patterns");
    let out = Command::new("grep")
        .args(["-r", "-l", "-a", "-F", "-f"])
        .arg(patterns.path())
        .arg("--")
        .arg(dir)
        .env("LC_ALL", "C")
        .output()
        .expect("cannot run grep");
    // 0: some file matched, 1: none did, anything else: grep could not search.
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "grep failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in String::from_utf8_lossy(&out.stdout).lines() {
        let bytes = std::fs::read(path).expect("a readable file");
        for (how, needle) in &text {
            if contains(&bytes, needle) {
                found.push(format!("{path} ({how})"));
            }
        }
    }
    found
}

/// Starts `tests/fixtures/start-registry.sh`'s registries (once per caller; they stop when this test
/// process exits) in a directory kept for the process, passing `extra` arguments. Returns the directory
/// and the address printed for each of `keys`; `None`, with a note that `what` is skipped, when Debian's
/// docker-registry is missing.
pub(crate) fn start_registries(
    what: &str,
    extra: &[&str],
    keys: &[&str],
) -> Option<(PathBuf, Vec<String>)> {
    if Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_err()
    {
        skip_without(
            what,
            "docker-registry is not installed (apt-get install docker-registry apache2-utils)",
        );
        return None;
    }
    let dir = tempdir("registries-").keep();
    let owner = std::process::id().to_string();
    let mut args = vec![
        repo()
            .join("tests/fixtures/start-registry.sh")
            .to_str()?
            .to_string(),
        dir.to_str()?.to_string(),
        "--owner".to_string(),
        owner,
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = tool("bash", &args);
    let addrs = keys
        .iter()
        .map(|key| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("start-registry.sh printed no {key} address:\n{out}"))
                .to_string()
        })
        .collect();
    Some((dir, addrs))
}

/// A rendered error with its wrapped lines joined again: the renderer breaks a long message at a space
/// and continues it on a `  | ` line, where it breaks depending on how long the paths in it are.
pub(crate) fn unwrapped(rendered: &str) -> String {
    rendered.replace("\n  | ", " ")
}

/// Asserts that kiln stopped a step instead of waiting for it: less than half the step's own `sleep` has
/// passed since `since`. A statement about whether kiln waited, never about how fast it stops; a loaded
/// two-core machine can take many seconds to tear sandboxes down.
pub(crate) fn assert_did_not_wait(since: std::time::Instant, step_sleep_secs: u64) {
    let waited = since.elapsed();
    eprintln!("kiln stopped the step after {waited:?}");
    assert!(
        waited < std::time::Duration::from_secs(step_sleep_secs / 2),
        "kiln took {waited:?}: it waited for the {step_sleep_secs} s step instead of stopping it"
    );
}

/// A test that needs a tool the setup script installs, without it: skipped with a note, except under the
/// README's test command (`scripts/test.sh` sets `KILN_TESTS_REQUIRE_ALL=1`), where a skip would be a test
/// that cannot fail.
pub(crate) fn skip_without(what: &str, missing: &str) {
    if std::env::var_os("KILN_TESTS_REQUIRE_ALL").is_some() {
        panic!("{what} cannot run: {missing} (scripts/setup.sh installs it)");
    }
    eprintln!("note: {what} skipped: {missing}");
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_the_rfc_vectors() {
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(super::base64(b"fo"), "Zm8=");
    }

    #[test]
    fn leaks_finds_every_encoding_at_every_alignment() {
        let secret = b"hunter2-hunter2";
        for prefix in ["", "a", "ab"] {
            let mut data = prefix.as_bytes().to_vec();
            data.extend_from_slice(secret);
            data.push(0xff);
            let files = [
                ("raw".into(), data.clone()),
                ("base64".into(), super::base64(&data).into_bytes()),
                ("hex".into(), hex::encode(&data).into_bytes()),
            ];
            let found = super::leaks(&files, secret);
            assert_eq!(found.len(), 3, "prefix {prefix:?}: {found:?}");
        }
    }

    #[test]
    fn leaks_under_finds_text_binary_and_gzipped_encodings() {
        use std::io::Write as _;
        let secret: &[u8] = &[
            0x00, 0x0a, 0xff, b'k', b'i', b'l', b'n', 0x80, 0x0a, 0x42, 0x13, 0x37,
        ];
        let dir = super::tempdir("leaks-");
        let put = |name: &str, bytes: &[u8]| super::write(&dir.path().join(name), bytes);
        put("clean", b"nothing to see");
        put("raw", &[b"x".as_slice(), secret, b"y"].concat());
        put("deep/hex", format!("a{}b", hex::encode(secret)).as_bytes());
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(format!("ab{}", super::base64(&secret[2..11])).as_bytes())
            .unwrap();
        put("layer.gz", &gz.finish().unwrap());
        let mut found = super::leaks_under(dir.path(), &[secret]);
        found.sort();
        let base = dir.path().display();
        assert_eq!(
            found,
            [
                format!("{base}/deep/hex (hex)"),
                format!("{base}/layer.gz (base64+2)"),
                format!("{base}/raw (raw)"),
            ]
        );
    }
}
