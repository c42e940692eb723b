//! Portable cache mounts: `--cache-to ...,cache-mounts=true` (or `export=true` on one mount) carries a
//! cache mount's contents in the cache manifest as content-addressed groups of files, and `--cache-from`
//! seeds the mount on another machine when, and only when, a step that uses it runs. Judged through a
//! real Distribution registry on loopback (its storage directory read directly) and OCI layout
//! directories; skipped, with a note, when Debian's `docker-registry` is not installed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{Kiln, context, leaks_under, start_registries, tempdir, write};

/// A registry of one test (the open one of `start-registry.sh`'s pair), and its storage. Each test
/// starts its own: the incremental test counts the blobs that appear in the storage during one build,
/// and another test pushing to the same registry meanwhile would add blobs it did not cause.
struct Registry {
    addr: String,
    data: PathBuf,
}

fn registry() -> Option<Registry> {
    let (dir, addrs) = start_registries("cache mount tests", &[], &["open"])?;
    Some(Registry {
        addr: addrs[0].clone(),
        data: dir.join("open-data"),
    })
}

impl Registry {
    fn blob_dir(&self) -> PathBuf {
        self.data.join("docker/registry/v2/blobs/sha256")
    }

    /// Every blob the registry stores (manifests included), by digest.
    fn blobs(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let Ok(prefixes) = std::fs::read_dir(self.blob_dir()) else {
            return out;
        };
        for prefix in prefixes {
            for blob in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
                let blob = blob.unwrap().path();
                if blob.join("data").is_file() {
                    let hex = blob.file_name().unwrap().to_string_lossy().into_owned();
                    out.insert(format!("sha256:{hex}"));
                }
            }
        }
        out
    }

    fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = &digest["sha256:".len()..];
        std::fs::read(self.blob_dir().join(&hex[..2]).join(hex).join("data")).unwrap()
    }

    /// The manifest digest `repo:tag` names, as the registry keeps it.
    fn tagged(&self, repo: &str, tag: &str) -> String {
        let link = self.data.join(format!(
            "docker/registry/v2/repositories/{repo}/_manifests/tags/{tag}/current/link"
        ));
        std::fs::read_to_string(&link)
            .unwrap_or_else(|e| panic!("{}: {e}", link.display()))
            .trim()
            .to_string()
    }

    /// The cache manifest's digest and its config, for `repo:tag`.
    fn cache_config(&self, repo: &str, tag: &str) -> (String, String, Value) {
        let manifest_digest = self.tagged(repo, tag);
        let manifest: Value = serde_json::from_slice(&self.blob(&manifest_digest)).unwrap();
        let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
        let config = serde_json::from_slice(&self.blob(&config_digest)).unwrap();
        (manifest_digest, config_digest, config)
    }
}

/// The config of the only cache in an OCI layout directory.
fn local_cache_config(dir: &Path) -> Value {
    let blob =
        |d: &str| std::fs::read(dir.join("blobs/sha256").join(&d["sha256:".len()..])).unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap()
}

/// The blob digests of cache mount `id`'s groups in a cache config, with each group's file names.
fn mount_groups(config: &Value, id: &str) -> Vec<(String, Vec<String>)> {
    config["mounts"][id]["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("no cache mount `{id}` in {config:#}"))
        .iter()
        .map(|g| {
            let files = g["files"]
                .as_object()
                .map(|f| f.keys().cloned().collect())
                .unwrap_or_default();
            (g["blob"]["digest"].as_str().unwrap().to_string(), files)
        })
        .collect()
}

/// A toy package manager: the step fills its cache mount with 2,000 "packages" in ten directories,
/// fetching only those the cache lacks, plus one named after the source file, and says how many it
/// found and fetched.
const PACKAGES: &str =
    "FROM base\nCOPY src.txt fill.sh /\nRUN --mount=type=cache,target=/pkgs sh /fill.sh\n";

const FILL: &str = r#"had=$(find /pkgs -type f | wc -l); fetched=0; i=0
while [ $i -lt 2000 ]; do
  d=/pkgs/d$((i % 10)); f=$d/p$i
  if [ ! -f $f ]; then mkdir -p $d; echo "package $i" > $f; fetched=$((fetched + 1)); fi
  i=$((i + 1))
done
v=$(cat /src.txt); [ -f /pkgs/app-$v ] || { echo "app $v" > /pkgs/app-$v; fetched=$((fetched + 1)); }
echo "cache had $had files, fetched $fetched" | tee /result
"#;

fn packages(version: &str) -> tempfile::TempDir {
    context(&[
        ("Dockerfile", PACKAGES),
        ("fill.sh", FILL),
        ("src.txt", version),
    ])
}

fn build(kiln: Kiln, ctx: &Path, args: &[&str]) -> crate::support::Output {
    let oci = tempdir("oci-");
    kiln.with_base()
        .args(args)
        .arg("-o")
        .arg(format!("type=oci,dest={}", oci.path().display()))
        .arg(ctx)
        .run()
}

/// The directories of a store's cache mounts (lock files aside).
fn cache_dirs(store: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(store.join("caches")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect()
}

/// Acceptance 1 of issue 18: machine A fills a cache mount with 2,000 files and exports it; machine B,
/// with an empty store and a changed source file, runs the step over the filled mount, and its export
/// adds exactly one new group blob (the changed file's) to the registry, beside its own records.
#[test]
fn a_cache_mount_follows_the_build_to_another_machine_incrementally() {
    let Some(reg) = registry() else { return };
    let to = |tag: &str| {
        format!(
            "type=registry,ref={}/cache/pkgs:{tag},mode=max,cache-mounts=true",
            reg.addr
        )
    };
    let from = format!("type=registry,ref={}/cache/pkgs:a", reg.addr);

    let a = build(
        Kiln::new(),
        packages("v1").path(),
        &["--cache-to", &to("a")],
    );
    a.success();
    assert!(
        a.stderr.contains("cache had 0 files, fetched 2001"),
        "{}",
        a.stderr
    );
    assert!(a.stderr.contains("1 cache mounts"), "{}", a.stderr);
    let (_, _, config_a) = reg.cache_config("cache/pkgs", "a");
    let groups_a = mount_groups(&config_a, "/pkgs");
    let files: usize = groups_a.iter().map(|(_, f)| f.len()).sum();
    assert_eq!(files, 2001, "every file listed once");
    assert!(
        groups_a.len() > 32,
        "the files are spread over groups: {}",
        groups_a.len()
    );
    // Every group's blob is a gzip tar that tar itself reads, holding what the config lists.
    let (digest, listed) = groups_a.iter().find(|(_, f)| !f.is_empty()).unwrap();
    let scratch = tempdir("group-");
    let tgz = scratch.path().join("group.tgz");
    std::fs::write(&tgz, reg.blob(digest)).unwrap();
    let names = crate::support::tool("tar", &["-tzf", tgz.to_str().unwrap()]);
    let names: BTreeSet<&str> = names.lines().collect();
    assert_eq!(
        names,
        listed.iter().map(String::as_str).collect(),
        "group {digest}"
    );

    // A fully cached build on an empty store seeds no mount: nothing uses it. Its own export passes
    // the imported mount on as it was.
    let c = Kiln::new();
    let cached = build(
        c.clone(),
        packages("v1").path(),
        &["--cache-from", &from, "--cache-to", &to("c")],
    );
    cached.success();
    assert_eq!(cached.summary().0, 0, "{}", cached.stderr);
    assert!(!cached.stderr.contains("seeded"), "{}", cached.stderr);
    assert!(cache_dirs(c.store()).is_empty(), "a cache mount was made");
    let (_, _, config_c) = reg.cache_config("cache/pkgs", "c");
    assert_eq!(mount_groups(&config_c, "/pkgs"), groups_a);

    // Machine B: a changed source, the step runs over A's packages.
    let before = reg.blobs();
    let b = build(
        Kiln::new(),
        packages("v2").path(),
        &["--cache-from", &from, "--cache-to", &to("b")],
    );
    b.success();
    assert!(
        b.stderr
            .contains("cache mount `/pkgs` seeded from the imported cache"),
        "{}",
        b.stderr
    );
    assert!(
        b.stderr.contains("cache had 2001 files, fetched 1"),
        "{}",
        b.stderr
    );

    let new: BTreeSet<String> = reg.blobs().difference(&before).cloned().collect();
    let (manifest_b, config_digest_b, config_b) = reg.cache_config("cache/pkgs", "b");
    let groups_b = mount_groups(&config_b, "/pkgs");
    let new_groups: Vec<&(String, Vec<String>)> =
        groups_b.iter().filter(|(d, _)| new.contains(d)).collect();
    assert_eq!(new_groups.len(), 1, "new group blobs: {new_groups:?}");
    assert!(
        new_groups[0].1.contains(&"app-v2".to_string()),
        "{new_groups:?}"
    );
    // The rest of what is new is B's own: its manifest, config and the layers of the steps it ran.
    let layers: BTreeSet<&str> = config_b["layers"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|b| b["digest"].as_str())
        .collect();
    for blob in &new {
        assert!(
            *blob == manifest_b
                || *blob == config_digest_b
                || layers.contains(blob.as_str())
                || *blob == new_groups[0].0,
            "an unexpected new blob {blob}"
        );
    }
    eprintln!(
        "A's mount: {} groups; B's export added {} blobs, of them 1 group",
        groups_a.len(),
        new.len()
    );
    assert!(new.len() <= 5, "{new:?}");
}

/// A secret value reached a cache mount (here from a context file, in a build not given the secret);
/// a later build given that secret never exports the mount, and says which mount, not which value. The
/// same export without the secret given is the positive control: the searcher finds the value.
#[test]
fn a_cache_mount_holding_a_secret_is_never_exported() {
    let Some(reg) = registry() else { return };
    let secret = b"cache-mount-secret-Vq3nB8xLr2";
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM base\nRUN --mount=type=bind,target=/ctx --mount=type=cache,target=/c cp /ctx/leaked.txt /c/leaked.txt\n",
        ),
        ("leaked.txt", std::str::from_utf8(secret).unwrap()),
    ]);
    let secret_dir = tempdir("secret-");
    let secret_file = secret_dir.path().join("tok");
    write(&secret_file, secret);
    let kiln = Kiln::new();
    build(kiln.clone(), ctx.path(), &[]).success();

    let to = |tag: &str| {
        format!(
            "type=registry,ref={}/cache/leak:{tag},cache-mounts=true",
            reg.addr
        )
    };
    let guarded = build(
        kiln.clone(),
        ctx.path(),
        &[
            "--secret",
            &format!("id=tok,src={}", secret_file.display()),
            "--cache-to",
            &to("guarded"),
        ],
    );
    guarded.success();
    assert!(
        guarded.stderr.contains(
            "warning: cache mount `/c` not exported: it holds the value of a secret given to this build"
        ),
        "{}",
        guarded.stderr
    );
    assert!(
        !guarded
            .stderr
            .contains(std::str::from_utf8(secret).unwrap())
    );
    let (_, _, config) = reg.cache_config("cache/leak", "guarded");
    assert!(config.get("mounts").is_none(), "{config:#}");
    let found = leaks_under(&reg.data, &[secret]);
    assert!(found.is_empty(), "secret in the registry: {found:?}");
    // Nor did the export leave a copy in the store's blobs (the mount itself is where the value is).
    let found = leaks_under(&kiln.store().join("blobs"), &[secret]);
    assert!(found.is_empty(), "secret in the store's blobs: {found:?}");

    // Positive control: without the secret given, nothing is known to hide and the mount goes out.
    build(kiln, ctx.path(), &["--cache-to", &to("control")]).success();
    let found = leaks_under(&reg.data, &[secret]);
    assert!(!found.is_empty(), "the searcher found no exported mount");
}

/// `export=true` on one mount (a Dockerfile's `--mount`, `.build`'s `cache(..., export: true)`, and
/// `kiln convert`'s output of the one) exports that mount without `cache-mounts=true`; the others stay
/// home.
#[test]
fn export_true_picks_single_mounts_in_both_languages() {
    let dockerfile = "FROM base\nRUN --mount=type=cache,target=/kept,export=true --mount=type=cache,target=/home sh -c 'echo k > /kept/k; echo h > /home/h'\n";
    let build_file = "let built: Image = image(\"base\").run(\"echo k > /kept/k; echo h > /home/h\", mounts: [cache(\"/kept\", export: true), cache(\"/home\")])\n\ntarget app: Image = built\n";
    let ctx = context(&[("Dockerfile", dockerfile), ("app.build", build_file)]);
    // `kiln convert` carries the option over.
    Kiln::bare()
        .args(["convert", "-f"])
        .arg(ctx.path().join("Dockerfile"))
        .arg("-o")
        .arg(ctx.path().join("converted.build"))
        .run()
        .success();
    let converted = std::fs::read_to_string(ctx.path().join("converted.build")).unwrap();
    assert!(
        converted.contains("cache(\"/kept\", export: true), cache(\"/home\")"),
        "{converted}"
    );
    for file in ["Dockerfile", "app.build", "converted.build"] {
        let dest = tempdir("cache-");
        let to = format!("type=local,dest={}", dest.path().display());
        let f = ctx.path().join(file);
        build(
            Kiln::new(),
            ctx.path(),
            &["-f", f.to_str().unwrap(), "--cache-to", &to],
        )
        .success();
        let config = local_cache_config(dest.path());
        let ids: Vec<&String> = config["mounts"].as_object().unwrap().keys().collect();
        assert_eq!(ids, ["/kept"], "{file}");
        assert_eq!(mount_groups(&config, "/kept")[0].1, ["k"], "{file}");
    }
}

/// Import seeds only a mount this machine does not have: one with local contents keeps them (they are
/// this machine's newer state), an empty machine starts from the exported contents.
#[test]
fn imported_contents_seed_only_new_mounts() {
    let dest = tempdir("cache-");
    let to = format!(
        "type=local,dest={},cache-mounts=true",
        dest.path().display()
    );
    let from = format!("type=local,src={}", dest.path().display());
    let df = |v: &str| {
        format!(
            "FROM base\nRUN --mount=type=cache,target=/c,sharing=private sh -c 'echo {v}; ls /c; [ -f /c/f ] || echo {v} > /c/f; echo found $(cat /c/f)'\n"
        )
    };
    let a = context(&[("Dockerfile", &df("a"))]);
    build(Kiln::new(), a.path(), &["--cache-to", &to]).success();

    // A machine whose own cache holds other contents keeps them.
    let b = Kiln::new();
    build(b.clone(), context(&[("Dockerfile", &df("b"))]).path(), &[]).success();
    let out = build(
        b,
        context(&[("Dockerfile", &df("c"))]).path(),
        &["--cache-from", &from],
    );
    out.success();
    assert!(out.stderr.contains("found b"), "{}", out.stderr);
    assert!(!out.stderr.contains("seeded"), "{}", out.stderr);

    // An empty machine starts from A's contents.
    let out = build(
        Kiln::new(),
        context(&[("Dockerfile", &df("d"))]).path(),
        &["--cache-from", &from],
    );
    out.success();
    assert!(out.stderr.contains("found a"), "{}", out.stderr);
}

/// Sharing modes keep their meaning on import: two steps at once on a `shared`, a `private` and a
/// `locked` mount each find the imported contents whole (a shared mount is filled before it appears, a
/// busy private mount's sibling is filled too, a locked one under its lock).
#[test]
fn every_sharing_mode_sees_the_imported_contents_whole() {
    let dest = tempdir("cache-");
    let modes = ["shared", "private", "locked"];
    let mut fill = String::from("FROM base\nRUN ");
    for m in modes {
        fill.push_str(&format!(
            "--mount=type=cache,target=/{m},id={m},sharing={m} "
        ));
    }
    fill.push_str(
        "sh -c 'for m in shared private locked; do i=0; while [ $i -lt 300 ]; do echo $i > /$m/f$i; i=$((i + 1)); done; done'\n",
    );
    let a = context(&[("Dockerfile", &fill)]);
    let to = format!(
        "type=local,dest={},cache-mounts=true",
        dest.path().display()
    );
    build(Kiln::new(), a.path(), &["--cache-to", &to]).success();

    let mut pairs = String::new();
    let mut last = String::from("FROM base\n");
    for m in modes {
        for n in 1..=2 {
            pairs.push_str(&format!(
                "FROM base AS {m}{n}\nRUN --mount=type=cache,target=/c,id={m},sharing={m} sh -c 'echo \"{m}{n} saw $(ls /c | wc -l)\"; sleep 1; touch /done'\n"
            ));
            last.push_str(&format!("COPY --from={m}{n} /done /{m}{n}\n"));
        }
    }
    let b = context(&[("Dockerfile", &format!("{pairs}{last}"))]);
    let from = format!("type=local,src={}", dest.path().display());
    let kiln = Kiln::new();
    let out = build(kiln.clone(), b.path(), &["--cache-from", &from]);
    out.success();
    eprintln!(
        "{} cache mount directories made",
        std::fs::read_dir(kiln.store().join("caches"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count()
    );
    for m in modes {
        for n in 1..=2 {
            assert!(
                out.stderr.contains(&format!("{m}{n} saw 300")),
                "{m}{n}:\n{}",
                out.stderr
            );
        }
    }
}
