//! `ADD <url>` against a real HTTP server on loopback (a small one in this file, on std's TcpListener):
//! BuildKit's semantics (the name from the URL's path, mode 0600, `Last-Modified` as the mtime and the
//! epoch without one, redirects followed, remote archives not unpacked, `--chmod`/`--chown`, `--checksum`
//! verified), caching by content, revalidation with `If-None-Match` (and `If-Modified-Since`) so an
//! unchanged file is not downloaded again, located errors, and credentials in the URL never shown. Images are judged
//! with umoci.
//!
//! The attributes asserted here were compared with BuildKit v0.8 (Debian's dockerd 20.10) building the same
//! `ADD`s from `scratch` against a loopback server: the same names (`/files/` gives `files`, a query is not
//! part of the name), modes, owners (`--chown` also owns a created destination directory) and mtimes
//! (`Last-Modified`, else the epoch). `--chmod` and `--checksum` on ADD are newer than v0.8 and follow the
//! current Dockerfile reference. Revalidation was compared with BuildKit v0.8 on a loopback server that
//! logs requests: on a rebuild it sends the stored `ETag` as `If-None-Match` (in a HEAD, then no GET on a
//! match) and downloads a file with only `Last-Modified` again in full; kiln sends the same `If-None-Match`
//! in a conditional GET, and `If-Modified-Since` for the second file.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use sha2::Digest as _;
use tempfile::TempDir;

use crate::support::{Kiln, Layout, context, tempdir, tool, unpack, write};

const USER: &str = "kiln-user";
const TOKEN: &str = "tok3n-s3cret-Xq9";
const QUERY_TOKEN: &str = "qu3ry-s3cret-Zr4";

/// Serves files of a directory: `/files/NAME` with `Last-Modified` and an `ETag` (a matching
/// `If-None-Match` gets a 304), `/lm/NAME` with `Last-Modified` only (a 304 for `If-Modified-Since` at or
/// after it), `/nodate/NAME` with neither, `/redirect/NAME` as a 302 to `/files/NAME`, `/auth/NAME` only
/// with basic auth `USER:TOKEN`, `/bad304/NAME` with a 304 about another ETag to any `If-None-Match`;
/// anything else is a 404. Counts the requests per path, and the 304s
/// among them as `304 PATH`.
pub(crate) struct Server {
    port: u16,
    root: TempDir,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    pub(crate) fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        let root = tempdir("http-");
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (dir, counts) = (root.path().to_path_buf(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (dir, counts) = (dir.clone(), counts.clone());
                std::thread::spawn(move || serve(stream, &dir, &counts));
            }
        });
        Server { port, root, hits }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Puts a file on the server, dated `mtime` seconds after the epoch.
    pub(crate) fn put(&self, name: &str, bytes: &[u8], mtime: u64) {
        let path = self.root.path().join(name);
        write(&path, bytes);
        let t = UNIX_EPOCH + Duration::from_secs(mtime);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn serve(stream: TcpStream, dir: &Path, hits: &Mutex<HashMap<String, usize>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut request: HashMap<String, String> = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            request.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let authorization = request.get("authorization").cloned();
    let bare = path.split('?').next().unwrap_or("").to_string();
    *hits.lock().unwrap().entry(bare.clone()).or_default() += 1;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{TOKEN}"))
    );
    let (route, name) = bare[1..].split_once('/').unwrap_or(("", ""));
    let file = dir.join(name);
    let (status, headers, body) = match route {
        "redirect" => (
            "302 Found",
            format!("Location: /files/{name}\r\n"),
            Vec::new(),
        ),
        "auth" if authorization.as_deref() != Some(&basic) => {
            ("401 Unauthorized", String::new(), Vec::new())
        }
        "files" | "nodate" | "auth" | "lm" | "bad304" if file.is_file() => {
            let meta = std::fs::metadata(&file).unwrap();
            let modified = meta.modified().unwrap();
            // `/files/` validate by ETag (and, like most servers, also say Last-Modified), `/lm/` only
            // by Last-Modified.
            let etag = format!("\"{}-{}\"", meta.mtime(), meta.len());
            let mut header = String::new();
            if route != "nodate" {
                header += &format!("Last-Modified: {}\r\n", httpdate::fmt_http_date(modified));
            }
            if route == "files" {
                header += &format!("ETag: {etag}\r\n");
            }
            // `/bad304/` answers any revalidation with a 304 about another ETag than the one asked.
            if route == "bad304" {
                header = if request.contains_key("if-none-match") {
                    "ETag: \"other\"\r\n".into()
                } else {
                    "ETag: \"first\"\r\n".into()
                };
            }
            let unchanged = match route {
                "files" => request.get("if-none-match") == Some(&etag),
                "bad304" => request.contains_key("if-none-match"),
                "lm" => request
                    .get("if-modified-since")
                    .and_then(|d| httpdate::parse_http_date(d).ok())
                    .is_some_and(|since| modified <= since),
                _ => false,
            };
            if unchanged {
                *hits
                    .lock()
                    .unwrap()
                    .entry(format!("304 {bare}"))
                    .or_default() += 1;
                ("304 Not Modified", header, Vec::new())
            } else {
                ("200 OK", header, std::fs::read(&file).unwrap())
            }
        }
        _ => ("404 Not Found", String::new(), b"not found".to_vec()),
    };
    let mut out = stream;
    let head = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(&body);
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A small real gzip'd tar, to show a remote archive is copied, not unpacked.
fn archive() -> Vec<u8> {
    let src = context(&[("pkg/inside.txt", "inside\n")]);
    let root = src.path().to_str().unwrap();
    tool(
        "tar",
        &["-czf", &format!("{root}/pkg.tar.gz"), "-C", root, "pkg"],
    );
    std::fs::read(src.path().join("pkg.tar.gz")).unwrap()
}

fn build(kiln: Kiln, ctx: &Path, dest: &Path) -> crate::support::Output {
    kiln.with_base()
        .arg("-o")
        .arg(format!("type=oci,dest={}", dest.display()))
        .arg(ctx)
        .run()
}

fn meta(root: &Path, p: &str) -> std::fs::Metadata {
    std::fs::symlink_metadata(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The provenance lists each download by the digest of what was fetched, its URL without credentials.
#[test]
fn provenance_lists_downloads_by_digest_without_credentials() {
    let server = Server::start();
    server.put("hello.txt", b"hello over http\n", 1_000_000_000);
    let secret_url = format!(
        "http://{USER}:{TOKEN}@127.0.0.1:{}/auth/hello.txt?sig={QUERY_TOKEN}",
        server.port
    );
    let hello = server.url("/files/hello.txt");
    let dockerfile = format!("FROM base\nADD {hello} /opt/\nADD {secret_url} /opt/auth/\n");
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    build(Kiln::new().arg("--provenance=true"), ctx.path(), &dest).success();
    let statement = crate::attest::provenance_of(&dest);
    let deps = &statement["predicate"]["buildDefinition"]["resolvedDependencies"];
    let digest = |uri: &str| {
        deps.as_array()
            .unwrap()
            .iter()
            .find(|d| d["uri"] == uri)
            .unwrap_or_else(|| panic!("no {uri} in {deps}"))["digest"]["sha256"]
            .clone()
    };
    let sum = sha256(b"hello over http\n");
    assert_eq!(digest(&hello), sum.trim_start_matches("sha256:"));
    let shown = format!("http://127.0.0.1:{}/auth/hello.txt?sig=***", server.port);
    assert_eq!(digest(&shown), sum.trim_start_matches("sha256:"));
    let text = statement.to_string();
    for secret in [TOKEN, QUERY_TOKEN] {
        assert!(
            !text.contains(secret),
            "the provenance shows {secret}:\n{text}"
        );
    }
}

#[test]
fn add_url_fetches_as_buildkit_does() {
    let server = Server::start();
    server.put("hello.txt", b"hello over http\n", 1_000_000_000);
    let tgz = archive();
    server.put("pkg.tar.gz", &tgz, 1_100_000_000);
    let secret_url = format!(
        "http://{USER}:{TOKEN}@127.0.0.1:{}/auth/hello.txt?sig={QUERY_TOKEN}",
        server.port
    );
    let dockerfile = format!(
        "FROM base\n\
         ADD {hello} /opt/\n\
         ADD {hello} /opt/renamed.txt\n\
         ADD --checksum={sum} {tgz} /opt/dl/\n\
         ADD --chmod=644 --chown=1234:5678 {redirect} /opt/redirected/\n\
         ADD {nodate} /opt/nodate/\n\
         ADD {secret_url} /opt/auth/\n",
        hello = server.url("/files/hello.txt"),
        sum = sha256(&tgz),
        tgz = server.url("/files/pkg.tar.gz"),
        redirect = server.url("/redirect/hello.txt"),
        nodate = server.url("/nodate/hello.txt"),
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let out = build(Kiln::new(), ctx.path(), &dest);
    out.success();
    let image = unpack(&dest);
    let root = &image.rootfs;
    let read = |p: &str| std::fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));

    // Named by the URL's path, mode 0600, owned by root, dated by Last-Modified.
    for p in ["opt/hello.txt", "opt/renamed.txt"] {
        assert_eq!(read(p), b"hello over http\n", "{p}");
        let m = meta(root, p);
        assert_eq!(m.mode() & 0o7777, 0o600, "{p}");
        assert_eq!((m.uid(), m.gid(), m.mtime()), (0, 0, 1_000_000_000), "{p}");
    }
    // A remote archive is a file, not unpacked; the checksum matched.
    assert_eq!(read("opt/dl/pkg.tar.gz"), tgz);
    assert!(
        !root.join("opt/dl/pkg").exists(),
        "a remote archive was unpacked"
    );
    assert_eq!(meta(root, "opt/dl/pkg.tar.gz").mtime(), 1_100_000_000);
    // The redirect was followed; the name comes from the URL written; --chmod and --chown apply.
    let m = meta(root, "opt/redirected/hello.txt");
    assert_eq!(read("opt/redirected/hello.txt"), b"hello over http\n");
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o644, 1234, 5678));
    // No Last-Modified: the epoch, as BuildKit dates it.
    assert_eq!(meta(root, "opt/nodate/hello.txt").mtime(), 0);
    // The userinfo went to the server as basic auth (it answers 401 otherwise)...
    assert_eq!(read("opt/auth/hello.txt"), b"hello over http\n");
    // ...and neither it nor the query's token is shown or written anywhere.
    let layout = Layout::new(&dest);
    let config = layout.config().to_string();
    let graph = Kiln::graph().arg(ctx.path()).run();
    graph.success();
    let json = Kiln::graph()
        .args(["--format", "json"])
        .arg(ctx.path())
        .run();
    json.success();
    for (what, text) in [
        ("stderr", &out.stderr),
        ("stdout", &out.stdout),
        ("config", &config),
        ("graph", &graph.stdout),
        ("graph json", &json.stdout),
    ] {
        for secret in [TOKEN, QUERY_TOKEN] {
            assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
        }
    }
    for tar in layout.layer_tars() {
        for secret in [TOKEN, QUERY_TOKEN] {
            assert!(!crate::support::contains(&tar, secret.as_bytes()));
        }
    }
}

#[test]
fn an_unchanged_download_hits_the_cache_and_a_changed_one_reruns() {
    let server = Server::start();
    server.put("data.txt", b"first\n", 1_000_000_000);
    server.put("pinned.txt", b"pinned\n", 1_000_000_000);
    server.put("dated.txt", b"dated\n", 1_000_000_000);
    let dockerfile = format!(
        "FROM base\nADD --checksum={sum} {pinned} /pinned.txt\nADD {dated} /dated.txt\nADD {data} /data.txt\nRUN cat /data.txt > /copy.txt\n",
        data = server.url("/files/data.txt"),
        pinned = server.url("/files/pinned.txt"),
        dated = server.url("/lm/dated.txt"),
        sum = sha256(b"pinned\n"),
    );
    let ctx = context(&[("Dockerfile", &dockerfile)]);
    let store = tempdir("store-");
    let out_dir = tempdir("out-");
    let dest = out_dir.path().join("image");
    let kiln = Kiln::build_in(store.path());

    build(kiln.clone(), ctx.path(), &dest).success();
    let again = build(kiln.clone(), ctx.path(), &dest);
    again.success();
    assert_eq!(
        again.summary().0,
        0,
        "a second build ran steps:\n{}",
        again.stderr
    );
    // Unpinned, the server is asked again, with the ETag (or the date) of the stored download, and its
    // 304 means nothing is downloaded; pinned by a checksum it matched, the server is never asked again.
    assert_eq!(server.hits("/files/data.txt"), 2);
    assert_eq!(server.hits("304 /files/data.txt"), 1);
    assert_eq!(server.hits("/lm/dated.txt"), 2);
    assert_eq!(server.hits("304 /lm/dated.txt"), 1);
    assert_eq!(server.hits("/files/pinned.txt"), 1);
    // --no-cache asks without validators: full downloads.
    build(kiln.clone().arg("--no-cache"), ctx.path(), &dest).success();
    assert_eq!(server.hits("304 /files/data.txt"), 1);
    assert_eq!(server.hits("/files/data.txt"), 3);

    server.put("data.txt", b"second\n", 1_200_000_000);
    let changed = build(kiln, ctx.path(), &dest);
    changed.success();
    assert_eq!(
        changed.summary().0,
        2,
        "the ADD and the RUN below it re-run, the pinned ADD does not:\n{}",
        changed.stderr
    );
    let image = unpack(&dest);
    assert_eq!(
        std::fs::read(image.rootfs.join("copy.txt")).unwrap(),
        b"second\n"
    );
    assert_eq!(meta(&image.rootfs, "data.txt").mtime(), 1_200_000_000);
    assert_eq!(
        server.hits("304 /files/data.txt"),
        1,
        "a new ETag: downloaded"
    );
    assert_eq!(server.hits("304 /lm/dated.txt"), 2);
    let image_dated = std::fs::read(image.rootfs.join("dated.txt")).unwrap();
    assert_eq!(image_dated, b"dated\n", "a 304 reuses the stored download");
}

/// A server whose 304 names another ETag than the one kiln asked about is not believed: the rebuild fails
/// at the ADD, with a hint, rather than reusing a download the server did not vouch for.
#[test]
fn a_304_about_another_etag_is_a_located_error() {
    let server = Server::start();
    server.put("f.txt", b"f\n", 1_000_000_000);
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM base\nADD {} /f.txt\n", server.url("/bad304/f.txt")),
    )]);
    let store = tempdir("store-");
    let kiln = Kiln::build_in(store.path()).with_base().arg(ctx.path());
    kiln.run().success();
    let out = kiln.run();
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("304 Not Modified for an ETag kiln did not send")
            && out.stderr.contains("--no-cache")
            && out.stderr.contains("Dockerfile:2:"),
        "{}",
        out.stderr
    );
    assert_eq!(server.hits("304 /bad304/f.txt"), 1);
}

/// Builds `ADD <url> /x` (after `flags`; `${USER_TOKEN}` and `${QUERY_TOKEN}` are build args holding
/// the tokens) and returns the failed build's output.
fn failing_add(url: &str, flags: &str, code: i32) -> crate::support::Output {
    let ctx = context(&[(
        "Dockerfile",
        &format!("FROM base\nARG USER_TOKEN\nARG QUERY_TOKEN\nADD {flags}{url} /x\n"),
    )]);
    let out = Kiln::new()
        .with_base()
        .args(["--build-arg", &format!("USER_TOKEN={TOKEN}")])
        .args(["--build-arg", &format!("QUERY_TOKEN={QUERY_TOKEN}")])
        .arg(ctx.path())
        .run();
    out.expect_code(code);
    assert!(
        out.stderr.contains("Dockerfile:4:"),
        "not located:\n{}",
        out.stderr
    );
    out
}

#[test]
fn fetch_failures_are_located_errors() {
    let server = Server::start();
    server.put("real.txt", b"real content\n", 1_000_000_000);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = failing_add(
        &server.url("/files/real.txt"),
        &format!("--checksum={wrong} "),
        1,
    );
    assert!(
        out.stderr.contains("checksum mismatch")
            && out.stderr.contains(&wrong)
            && out.stderr.contains(&sha256(b"real content\n")),
        "{}",
        out.stderr
    );

    let secret_404 = format!(
        "http://{USER}:${{USER_TOKEN}}@127.0.0.1:{}/files/missing.txt?token=${{QUERY_TOKEN}}",
        server.port
    );
    let out = failing_add(&secret_404, "", 1);
    assert!(out.stderr.contains("HTTP 404"), "{}", out.stderr);
    for secret in [TOKEN, QUERY_TOKEN] {
        assert!(!out.stderr.contains(secret), "{}", out.stderr);
        assert!(!out.stdout.contains(secret), "{}", out.stdout);
    }

    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = failing_add(&format!("http://127.0.0.1:{closed}/x.txt"), "", 1);
    assert!(out.stderr.contains("cannot fetch"), "{}", out.stderr);

    let out = failing_add("http://kiln-no-such-host.invalid/x.txt", "", 1);
    assert!(out.stderr.contains("cannot fetch"), "{}", out.stderr);
}

#[test]
fn bad_add_url_input_is_refused_before_building() {
    let cases: [(&str, &str); 3] = [
        (
            "ADD --checksum=sha256:abc http://127.0.0.1:9/x.txt /x\n",
            "invalid --checksum",
        ),
        (
            "ADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 local.txt /x\n",
            "--checksum can only pin an HTTP(S) source",
        ),
        ("ADD ftp://127.0.0.1/x.txt /x\n", "ADD cannot fetch"),
    ];
    for (i, (line, message)) in cases.into_iter().enumerate() {
        let ctx = context(&[
            ("Dockerfile", &format!("FROM base\n{line}")),
            ("local.txt", "x"),
        ]);
        // `kiln graph` compiles leniently (any Dockerfile graphs); only a malformed digest stops it.
        let kilns = if i == 0 {
            vec![Kiln::graph(), Kiln::new().with_base()]
        } else {
            vec![Kiln::new().with_base()]
        };
        for kiln in kilns {
            let out = kiln.arg(ctx.path()).run();
            out.expect_code(2);
            assert!(
                out.stderr.contains(message)
                    && out.stderr.contains("Dockerfile:2:")
                    && out.stderr.contains('^'),
                "{line}: {}",
                out.stderr
            );
        }
    }
}

/// `url(...)` in the `.build` language is the same download as `ADD <url>`: the same image, and after
/// the Dockerfile's build the `.build` build runs nothing.
#[test]
fn the_build_language_fetches_the_same_download() {
    let server = Server::start();
    server.put("hello.txt", b"hello over http\n", 1_000_000_000);
    let url = server.url("/files/hello.txt");
    let sum = sha256(b"hello over http\n");
    let ctx = context(&[
        (
            "Dockerfile",
            &format!("FROM base\nADD --checksum={sum} {url} /opt/\n"),
        ),
        (
            "app.build",
            &format!(
                "target app: Image = image(\"base\").add(url(\"{url}\", checksum: \"{sum}\"), [], \"/opt/\")\n"
            ),
        ),
    ]);
    let store = tempdir("store-");
    let out_dir = tempdir("out-");
    let (from_dockerfile, from_build) = (out_dir.path().join("df"), out_dir.path().join("build"));
    let first = build(Kiln::build_in(store.path()), ctx.path(), &from_dockerfile);
    first.success();
    let program = ctx.path().join("app.build");
    let second = build(
        Kiln::build_in(store.path()).arg("-f").arg(&program),
        ctx.path(),
        &from_build,
    );
    second.success();
    assert_eq!(second.summary().0, 0, "nothing runs:\n{}", second.stderr);
    assert_eq!(
        first.stdout.trim(),
        second.stdout.trim(),
        "one manifest digest"
    );
    let image = unpack(&from_build);
    let m = meta(&image.rootfs, "opt/hello.txt");
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o600, 1_000_000_000));
}
