//! Attestations (`--attest`, `--sbom`, `--provenance`): the SPDX SBOM of a debootstrap-made Debian image
//! judged by `dpkg-query` on the unpacked rootfs and by spdx-tools' validator, the provenance by the
//! in-toto and SLSA JSON schemas (`tests/attest/`) and by skopeo's view of the base image, the layout
//! still read by skopeo and umoci, the push's referrers found through the registry's fallback tag, and no
//! secret value anywhere in what a build with secrets writes or pushes.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use serde_json::Value;
use sha2::Digest as _;

use crate::support::{
    Kiln, base_image, context, leaks_under, repo, start_registries, tempdir, tool, write,
};

pub(crate) const SPDX: &str = "application/spdx+json";
pub(crate) const IN_TOTO: &str = "application/vnd.in-toto+json";

/// The virtualenv with spdx-tools and jsonschema that `scripts/setup.sh` installs.
fn judges() -> PathBuf {
    std::env::var_os("KILN_SPDX_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
            cache.join("kiln-tests/spdx-tools-0.8.3")
        })
}

/// `pyspdxtools -i FILE`: the SPDX project's validator accepts the document.
pub(crate) fn assert_valid_spdx(doc: &[u8]) {
    let dir = tempdir("spdx-");
    let file = dir.path().join("sbom.spdx.json");
    write(&file, doc);
    let out = std::process::Command::new(judges().join("bin/pyspdxtools"))
        .arg("-i")
        .arg(&file)
        .output()
        .expect("pyspdxtools (scripts/setup.sh installs it)");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "pyspdxtools refused the SBOM:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The provenance validates against the in-toto Statement v1 and SLSA provenance v1 schemas.
pub(crate) fn assert_valid_provenance(doc: &[u8]) {
    let dir = tempdir("provenance-");
    let file = dir.path().join("provenance.json");
    write(&file, doc);
    let out = std::process::Command::new(judges().join("bin/python"))
        .arg(repo().join("tests/attest/validate.py"))
        .arg(&file)
        .output()
        .expect("the judges' python (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "the provenance is not valid:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A referrer in an OCI layout: its artifact manifest and its one layer.
pub(crate) struct Referrer {
    pub(crate) manifest: Value,
    pub(crate) payload: Vec<u8>,
}

/// The referrers of `artifact_type` the layout's index lists, read as the OCI layout spec lays them out.
pub(crate) fn referrers(layout: &Path, artifact_type: &str) -> Vec<Referrer> {
    let read = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
    let index: Value = serde_json::from_slice(&read_file(&layout.join("index.json"))).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["artifactType"] == artifact_type)
        .map(|m| {
            let manifest: Value =
                serde_json::from_slice(&read(m["digest"].as_str().unwrap())).unwrap();
            assert_eq!(manifest["artifactType"], artifact_type);
            assert_eq!(manifest["layers"][0]["mediaType"], artifact_type);
            let payload = read(manifest["layers"][0]["digest"].as_str().unwrap());
            Referrer { manifest, payload }
        })
        .collect()
}

/// The provenance statement attached to the image in the OCI layout at `layout`, checked against the
/// schemas.
pub(crate) fn provenance_of(layout: &Path) -> Value {
    let found = referrers(layout, IN_TOTO);
    assert_eq!(found.len(), 1, "one provenance in {}", layout.display());
    assert_valid_provenance(&found[0].payload);
    serde_json::from_slice(&found[0].payload).unwrap()
}

fn read_file(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The image's manifest digest as skopeo sees it.
fn skopeo_digest(image: &str) -> String {
    let raw = match image.starts_with("docker://") {
        true => tool("skopeo", &["inspect", "--raw", "--tls-verify=false", image]),
        false => tool("skopeo", &["inspect", "--raw", image]),
    };
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(raw.as_bytes()))
    )
}

/// A Debian bookworm minbase image made by `tests/fixtures/make-debian-image.sh` on first use and kept
/// under the target dir, named by the hash of the scripts that make it (debootstrap takes minutes).
fn debian_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let mut hash = sha2::Sha256::new();
        for f in ["make-debian-image.sh", "pack-rootfs.py"] {
            hash.update(read_file(&repo().join("tests/fixtures").join(f)));
        }
        let name = format!("debian-image-{}", &hex::encode(hash.finalize())[..16]);
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dest = root.join(&name);
        if dest.join("index.json").is_file() {
            return dest;
        }
        let work = root.join(format!("{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        let started = Instant::now();
        tool(
            "bash",
            &[
                repo()
                    .join("tests/fixtures/make-debian-image.sh")
                    .to_str()
                    .unwrap(),
                work.to_str().unwrap(),
                "latest",
            ],
        );
        eprintln!(
            "made the Debian image {} in {:.1?}",
            dest.display(),
            started.elapsed()
        );
        if std::fs::rename(&work, &dest).is_err() {
            let _ = std::fs::remove_dir_all(&work);
        }
        dest
    })
}

/// The name, version and architecture of every package of the SBOM, from its purls.
fn sbom_packages(sbom: &Value) -> Vec<String> {
    let mut out: Vec<String> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let purl = p["externalRefs"][0]["referenceLocator"].as_str()?;
            let arch = purl.split("arch=").nth(1)?.split('&').next()?;
            Some(format!(
                "{} {} {arch}",
                p["name"].as_str()?,
                p["versionInfo"].as_str()?
            ))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_sbom_of_a_debian_image_lists_what_dpkg_query_lists() {
    let debian = debian_image();
    // A package purged and a copyright file removed in a later layer: the SBOM reads the merged view.
    let ctx = context(&[(
        "Dockerfile",
        "FROM deb\nRUN dpkg --purge --force-all e2fsprogs && rm -rf /usr/share/doc/adduser\n",
    )]);
    let out = tempdir("attest-deb-");
    let layout = out.path().join("oci");
    let kiln = Kiln::new()
        .arg("--build-context")
        .arg(format!("deb=oci-layout://{}:latest", debian.display()))
        .args(["--sbom=true", "-t", "deb:1", "-o"])
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg(ctx.path())
        .env("SOURCE_DATE_EPOCH", "1700000000");
    kiln.run().success();
    let sboms = referrers(&layout, SPDX);
    assert_eq!(sboms.len(), 1);
    assert_valid_spdx(&sboms[0].payload);
    let sbom: Value = serde_json::from_slice(&sboms[0].payload).unwrap();

    // The judge: dpkg-query over the rootfs umoci unpacked.
    let bundle = out.path().join("bundle");
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:deb:1", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let admindir = format!(
        "--admindir={}",
        bundle.join("rootfs/var/lib/dpkg").display()
    );
    let listed = tool(
        "dpkg-query",
        &[
            &admindir,
            "-W",
            "-f=${Package} ${Version} ${Architecture}\\n",
        ],
    );
    let mut expected: Vec<String> = listed.lines().map(str::to_string).collect();
    expected.sort();
    assert!(expected.len() > 50, "dpkg-query listed {}", expected.len());
    assert!(!expected.iter().any(|p| p.starts_with("e2fsprogs ")));
    assert_eq!(sbom_packages(&sbom), expected);

    // The operating system, and the purl's distro; every package is contained by the image.
    let os = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["primaryPackagePurpose"] == "OPERATING-SYSTEM")
        .expect("the OS package");
    assert_eq!(
        (os["name"].as_str(), os["versionInfo"].as_str()),
        (Some("debian"), Some("12"))
    );
    let bash = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bash")
        .unwrap();
    let purl = bash["externalRefs"][0]["referenceLocator"]
        .as_str()
        .unwrap();
    assert!(
        purl.starts_with("pkg:deb/debian/bash@") && purl.ends_with("?arch=amd64&distro=debian-12"),
        "{purl}"
    );
    let adduser = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "adduser")
        .unwrap();
    assert_eq!(
        adduser["licenseDeclared"], "NOASSERTION",
        "its copyright file is gone"
    );
    let contains = sbom["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["relationshipType"] == "CONTAINS")
        .count();
    assert_eq!(contains, expected.len() + 1);
    let digest = skopeo_digest(&format!("oci:{}:deb:1", layout.display()));
    assert_eq!(sboms[0].manifest["subject"]["digest"], digest.as_str());
    assert_eq!(sbom["creationInfo"]["created"], "2023-11-14T22:13:20Z");

    // The same image gives the same SBOM, byte for byte.
    let again = out.path().join("again");
    kiln.clone()
        .args(["-o"])
        .arg(format!("type=oci,dest={}", again.display()))
        .run()
        .success();
    assert_eq!(referrers(&again, SPDX)[0].payload, sboms[0].payload);
}

#[test]
fn a_busybox_image_gets_an_empty_valid_sbom_and_a_schema_valid_provenance() {
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM base AS build\nCOPY app.txt /app.txt\nFROM base\nCOPY --from=build /app.txt /\nRUN cat /app.txt\n",
        ),
        ("app.txt", "hello\n"),
    ]);
    let out = tempdir("attest-bb-");
    let layout = out.path().join("oci");
    let kiln = Kiln::new()
        .with_base()
        .args([
            "--attest",
            "type=sbom",
            "--attest",
            "type=provenance,mode=max",
            "--build-arg",
            "GREETING=hi",
        ])
        .args(["-t", "app:1"])
        .arg(ctx.path());
    kiln.clone()
        .arg("-o")
        .arg(format!("type=oci,dest={}", layout.display()))
        .run()
        .success();
    // skopeo and umoci still read the image by its name in a layout that holds referrers.
    let image = format!("oci:{}:app:1", layout.display());
    let digest = skopeo_digest(&image);
    tool(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:app:1", layout.display()),
            out.path().join("bundle").to_str().unwrap(),
        ],
    );
    assert!(out.path().join("bundle/rootfs/app.txt").is_file());
    tool(
        "skopeo",
        &[
            "copy",
            &image,
            &format!("oci:{}:copy", out.path().join("copy").display()),
        ],
    );

    // An OCI archive carries them too, and skopeo reads its image by name.
    let tar = out.path().join("oci.tar");
    Kiln::new()
        .with_base()
        .args(["--sbom=true", "-t", "app:1", "-o"])
        .arg(format!("type=oci,dest={}", tar.display()))
        .arg(ctx.path())
        .run()
        .success();
    let in_tar = skopeo_digest(&format!("oci-archive:{}:app:1", tar.display()));
    let unpacked = out.path().join("from-tar");
    std::fs::create_dir_all(&unpacked).unwrap();
    tool(
        "tar",
        &[
            "-xf",
            tar.to_str().unwrap(),
            "-C",
            unpacked.to_str().unwrap(),
        ],
    );
    let in_tar_sbom = referrers(&unpacked, SPDX);
    assert_eq!(in_tar_sbom.len(), 1);
    assert_eq!(
        in_tar_sbom[0].manifest["subject"]["digest"],
        in_tar.as_str()
    );

    let sbom = referrers(&layout, SPDX);
    assert_valid_spdx(&sbom[0].payload);
    let doc: Value = serde_json::from_slice(&sbom[0].payload).unwrap();
    assert!(sbom_packages(&doc).is_empty());
    assert_eq!(doc["packages"][0]["primaryPackagePurpose"], "CONTAINER");

    let prov = referrers(&layout, IN_TOTO);
    assert_eq!(prov.len(), 1);
    assert_valid_provenance(&prov[0].payload);
    let st: Value = serde_json::from_slice(&prov[0].payload).unwrap();
    assert_eq!(prov[0].manifest["subject"]["digest"], digest.as_str());
    assert_eq!(
        format!(
            "sha256:{}",
            st["subject"][0]["digest"]["sha256"].as_str().unwrap()
        ),
        digest
    );
    let def = &st["predicate"]["buildDefinition"];
    assert_eq!(def["externalParameters"]["frontend"], "dockerfile");
    assert_eq!(def["externalParameters"]["platform"], "linux/amd64");
    assert_eq!(def["externalParameters"]["args"]["GREETING"], "hi");
    let dockerfile = read_file(&ctx.path().join("Dockerfile"));
    assert_eq!(
        def["externalParameters"]["source"]["digest"]["sha256"],
        hex::encode(sha2::Sha256::digest(&dockerfile)).as_str()
    );
    // The base image, by the digest skopeo gives its manifest; the context's files by digest.
    let base = skopeo_digest(&format!("oci:{}:latest", base_image().display()));
    let deps = def["resolvedDependencies"].as_array().unwrap();
    let images: Vec<&Value> = deps
        .iter()
        .filter(|d| {
            d["uri"]
                .as_str()
                .is_some_and(|u| u.starts_with("oci-layout://"))
        })
        .collect();
    assert_eq!(images.len(), 1, "{deps:?}");
    assert_eq!(
        format!("sha256:{}", images[0]["digest"]["sha256"].as_str().unwrap()),
        base
    );
    assert!(
        deps.iter().any(|d| d["name"] == "context:context"),
        "{deps:?}"
    );
    assert_eq!(
        def["internalParameters"]["kiln"]["secrets"],
        serde_json::json!([])
    );

    // A rebuild that runs nothing resolves the same inputs.
    let again = out.path().join("again");
    let rebuild = kiln
        .arg("-o")
        .arg(format!("type=oci,dest={}", again.display()))
        .run();
    rebuild.success();
    assert_eq!(rebuild.summary().0, 0, "{}", rebuild.stderr);
    let rebuilt = provenance_of(&again);
    assert_eq!(
        rebuilt["predicate"]["buildDefinition"]["resolvedDependencies"],
        def["resolvedDependencies"]
    );
}

#[test]
fn attestations_hold_no_secret_and_a_push_lists_them_under_the_fallback_tag() {
    let Some((registry_dir, addrs)) = start_registries("attestation push", &[], &["open"]) else {
        return;
    };
    let secret = "attest-secret-5f0d9c1e7b";
    let dir = tempdir("attest-secret-");
    write(&dir.path().join("token"), secret);
    let key = dir.path().join("id_ed25519");
    let (_, private) = crate::ssh::new_key(&key, "attest");
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nARG GREETING\nRUN --mount=type=secret,id=token test -s /run/secrets/token && echo $GREETING > /greeting\nRUN --mount=type=ssh,id=deploy test -S $SSH_AUTH_SOCK\n",
    )]);
    let name = format!("{}/attested:1", addrs[0]);
    let layout = dir.path().join("oci");
    let build = |extra: &[&str]| {
        Kiln::new()
            .with_base()
            .arg("--secret")
            .arg(format!(
                "id=token,src={}",
                dir.path().join("token").display()
            ))
            .arg("--ssh")
            .arg(format!("deploy={}", key.display()))
            .args([
                "--sbom=true",
                "--provenance=mode=max",
                "-t",
                &name,
                "--push",
                "-o",
            ])
            .arg(format!("type=oci,dest={}", layout.display()))
            .args(extra)
            .arg(ctx.path())
            .run()
    };
    build(&["--build-arg", "GREETING=hi"]).success();
    let prov: Value = serde_json::from_slice(&referrers(&layout, IN_TOTO)[0].payload).unwrap();
    let kiln = &prov["predicate"]["buildDefinition"]["internalParameters"]["kiln"];
    assert_eq!(
        (&kiln["secrets"], &kiln["ssh"]),
        (
            &serde_json::json!(["token"]),
            &serde_json::json!(["deploy"])
        )
    );
    let found = leaks_under(&layout, &[secret.as_bytes(), &private]);
    assert!(found.is_empty(), "secret bytes in the layout: {found:?}");
    let found = leaks_under(&registry_dir, &[secret.as_bytes(), &private]);
    assert!(found.is_empty(), "secret bytes in the registry: {found:?}");

    // Debian's registry has no referrers API: the index tagged `sha256-<hex>` lists both.
    let digest = skopeo_digest(&format!("docker://{name}"));
    let repo_name = name.rsplit_once(':').unwrap().0;
    let tag = format!("docker://{repo_name}:{}", digest.replace(':', "-"));
    let index: Value = serde_json::from_str(&tool(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &tag],
    ))
    .unwrap();
    let types: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["artifactType"].as_str())
        .collect();
    assert!(types.contains(&SPDX) && types.contains(&IN_TOTO), "{index}");
    for m in index["manifests"].as_array().unwrap() {
        let r = format!("docker://{repo_name}@{}", m["digest"].as_str().unwrap());
        let manifest: Value = serde_json::from_str(&tool(
            "skopeo",
            &["inspect", "--raw", "--tls-verify=false", &r],
        ))
        .unwrap();
        assert_eq!(manifest["subject"]["digest"], digest.as_str());
    }

    // A build arg that carries a secret's value would put it into the provenance: refused.
    let refused = build(&["--build-arg", &format!("GREETING={secret}")]);
    refused.expect_code(1);
    assert!(
        refused.stderr.contains("secret `token`"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains(secret), "{}", refused.stderr);
}

/// A `.build` program's image: the provenance names kiln's language and the file's digest.
#[test]
fn a_build_file_provenance_names_its_source() {
    let program = "target app: Image = image(\"base\").run(\"echo hi > /hi\")\n";
    let ctx = context(&[("app.build", program)]);
    let out = tempdir("attest-buildfile-");
    let layout = out.path().join("oci");
    Kiln::new()
        .with_base()
        .args(["--provenance=true", "-f"])
        .arg(ctx.path().join("app.build"))
        .arg("-o")
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg(ctx.path())
        .run()
        .success();
    let statement = provenance_of(&layout);
    let external = &statement["predicate"]["buildDefinition"]["externalParameters"];
    assert_eq!(external["frontend"], "build");
    assert_eq!(
        external["source"]["digest"]["sha256"],
        hex::encode(sha2::Sha256::digest(program.as_bytes())).as_str()
    );
    // mode=min: no ids of secrets or SSH agents.
    let kiln = &statement["predicate"]["buildDefinition"]["internalParameters"]["kiln"];
    assert!(kiln.get("secrets").is_none(), "{kiln}");
}

#[test]
fn attest_flags_are_read_as_buildx_reads_them() {
    let ctx = context(&[("Dockerfile", "FROM base\nRUN echo hi > /hi\n")]);
    let out = tempdir("attest-flags-");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--attest", "type=sbom,generator=docker/scout-sbom-indexer"],
            "kiln makes SBOMs itself",
        ),
        (
            &["--attest", "type=provenanse"],
            "did you mean `provenance`?",
        ),
        (&["--attest", "mode=max"], "--attest needs a `type`"),
        (
            &["--provenance=mode=maximal"],
            "unknown provenance mode `maximal`",
        ),
        (
            &["--provenance=version=v0.2"],
            "provenance version `v0.2` is not supported",
        ),
        (
            &["--attest", "type=provenance,mdoe=max"],
            "did you mean `mode`?",
        ),
        (
            &["--attest", "type=sbom", "--sbom=true"],
            "duplicate attestation field sbom",
        ),
        (
            &["--attest", "type=sbom,disabled=maybe"],
            "`disabled=maybe` is not a boolean",
        ),
        (
            &["--attest", "type=sbom,scan"],
            "`scan` must be a key=value pair",
        ),
        (
            &["--attest", "type=sbom,scan-context=true"],
            "unknown key `scan-context` for a sbom attestation",
        ),
        (&["--attest", "type=\"sbom"], "unterminated quote"),
    ];
    for (args, message) in cases {
        let run = Kiln::new()
            .with_base()
            .args(*args)
            .arg("-o")
            .arg(format!("type=oci,dest={}", out.path().join("x").display()))
            .arg(ctx.path())
            .run();
        run.expect_code(2);
        assert!(
            run.stderr.contains(message) && run.stderr.contains('^'),
            "{args:?}:\n{}",
            run.stderr
        );
    }
    // Turned off: nothing attached.
    let layout = out.path().join("off");
    Kiln::new()
        .with_base()
        .args([
            "--sbom=false",
            "--attest",
            "type=provenance,disabled=true",
            "-o",
        ])
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg(ctx.path())
        .run()
        .success();
    let index: Value = serde_json::from_slice(&read_file(&layout.join("index.json"))).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    // A docker-archive cannot carry them: said, as buildx says it for --load.
    let run = Kiln::new()
        .with_base()
        .args(["--sbom=1", "-o"])
        .arg(format!(
            "type=docker,dest={}",
            out.path().join("img.tar").display()
        ))
        .arg(ctx.path())
        .run();
    run.success();
    assert!(
        run.stderr.contains("attestations are not carried by"),
        "{}",
        run.stderr
    );
    // Nowhere to attach them: said too.
    let run = Kiln::new()
        .with_base()
        .arg("--sbom=true")
        .arg(ctx.path())
        .run();
    run.success();
    assert!(
        run.stderr.contains("no output to attach them to"),
        "{}",
        run.stderr
    );
}
