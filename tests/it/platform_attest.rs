//! Attestations, signatures and build reports of a multi-platform image: each platform's image gets its
//! own SBOM (judged by spdx-tools' validator) and provenance (the in-toto and SLSA schemas), attached as
//! referrers of that platform's manifest in the OCI layout and on the registry (found through the
//! fallback tag by skopeo); `--sign` signs the index, both manifests and every attestation (judged by a
//! `sigstoreSigned` policy in trixie's skopeo); `--iidfile`, `--metadata-file` and `-q` describe the
//! index, as buildx does; and no secret value is in anything written or pushed.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::Digest as _;

use crate::attest::{
    IN_TOTO, Referrer, SPDX, assert_valid_provenance, assert_valid_spdx, referrers,
};
use crate::sign::{Keys, copy_with_policy_args};
use crate::support::{Kiln, context, leaks_under, multi_platform_base, tempdir, tool, write};

const DOCKERFILE: &str = "FROM base\n\
                          ARG TARGETARCH\n\
                          RUN --mount=type=secret,id=token test -s /run/secrets/token && echo \"$TARGETARCH $(uname -m)\" > /arch\n";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// `skopeo inspect --raw` of a reference, and the digest of what it printed.
fn raw(reference: &str) -> (Value, String) {
    let text = match reference.starts_with("docker://") {
        true => tool(
            "skopeo",
            &["inspect", "--raw", "--tls-verify=false", reference],
        ),
        false => tool("skopeo", &["inspect", "--raw", reference]),
    };
    (
        serde_json::from_str(&text).unwrap(),
        sha256(text.as_bytes()),
    )
}

/// The platform (`os/architecture`) of each manifest of `index`, by digest.
fn platforms(index: &Value) -> BTreeMap<String, String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            (
                m["digest"].as_str().unwrap().to_string(),
                format!(
                    "{}/{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                ),
            )
        })
        .collect()
}

/// The subject digest of each referrer.
fn subjects(found: &[Referrer]) -> Vec<String> {
    let mut out: Vec<String> = found
        .iter()
        .map(|r| {
            r.manifest["subject"]["digest"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    out.sort();
    out
}

#[test]
fn each_platform_gets_attestations_signatures_and_the_report_describes_the_index() {
    let Some((registry_dir, reg)) = crate::sign::registry() else {
        return;
    };
    let base = multi_platform_base();
    let keys = Keys::make();
    let secret = "platform-attest-secret-3b91e07c";
    let dir = tempdir("platform-attest-");
    write(&dir.path().join("token"), secret);
    let ctx = context(&[("Dockerfile", DOCKERFILE)]);
    let name = format!("{reg}/attest/multi:1");
    let layout = dir.path().join("oci");
    let (iidfile, metadata) = (dir.path().join("iid"), dir.path().join("metadata.json"));
    let store = tempdir("store-");
    let build = |extra: &[&str]| {
        Kiln::bare()
            .args(["build", "--store"])
            .arg(store.path())
            .args(["--platform", "linux/amd64,linux/arm64", "--build-context"])
            .arg(format!("base=oci-layout://{}", base.path().display()))
            .arg("--secret")
            .arg(format!(
                "id=token,src={}",
                dir.path().join("token").display()
            ))
            .args(["--sbom=true", "--provenance=mode=max"])
            .args(extra)
            .arg(ctx.path())
            .run()
    };
    let sign = format!("key={}", keys.path("sec1.pem"));
    let out = build(&[
        "--progress=plain",
        "-t",
        &name,
        "--push",
        "--sign",
        &sign,
        "-o",
        &format!("type=oci,dest={}", layout.display()),
        "--iidfile",
        iidfile.to_str().unwrap(),
        "--metadata-file",
        metadata.to_str().unwrap(),
    ]);
    out.success();

    // The layout: skopeo reads the index by its name; two SBOMs and two provenances, one of each per
    // platform manifest, listed beside it.
    let (index, index_digest) = raw(&format!("oci:{}:{name}", layout.display()));
    let by_digest = platforms(&index);
    let manifests: Vec<String> = by_digest.keys().cloned().collect();
    assert_eq!(by_digest.len(), 2, "{index}");
    let sboms = referrers(&layout, SPDX);
    let provenances = referrers(&layout, IN_TOTO);
    assert_eq!((sboms.len(), provenances.len()), (2, 2));
    assert_eq!(subjects(&sboms), manifests);
    assert_eq!(subjects(&provenances), manifests);
    for sbom in &sboms {
        assert_valid_spdx(&sbom.payload);
    }
    for p in &provenances {
        assert_valid_provenance(&p.payload);
        let statement: Value = serde_json::from_slice(&p.payload).unwrap();
        let subject = p.manifest["subject"]["digest"].as_str().unwrap();
        assert_eq!(
            format!(
                "sha256:{}",
                statement["subject"][0]["digest"]["sha256"]
                    .as_str()
                    .unwrap()
            ),
            subject
        );
        let def = &statement["predicate"]["buildDefinition"];
        assert_eq!(
            def["externalParameters"]["platform"].as_str().unwrap(),
            by_digest[subject],
            "{statement}"
        );
        assert_eq!(
            def["internalParameters"]["kiln"]["secrets"],
            serde_json::json!(["token"])
        );
    }
    // The arm64 image is the one built for arm64.
    let single = dir.path().join("arm64");
    tool(
        "skopeo",
        &[
            "copy",
            "--override-arch",
            "arm64",
            &format!("oci:{}:{name}", layout.display()),
            &format!("oci:{}:latest", single.display()),
        ],
    );
    let image = crate::support::unpack(&single);
    let arch = std::fs::read_to_string(image.rootfs.join("arch")).unwrap();
    assert_eq!(arch, "arm64 aarch64\n");

    // `--iidfile` holds the index digest, `--metadata-file` the index's descriptor (no config digest).
    assert_eq!(std::fs::read_to_string(&iidfile).unwrap(), index_digest);
    let meta: Value = serde_json::from_slice(&std::fs::read(&metadata).unwrap()).unwrap();
    let layout_index = std::fs::read(layout.join("blobs/sha256").join(&index_digest[7..])).unwrap();
    assert_eq!(
        meta,
        serde_json::json!({
            "containerimage.digest": index_digest,
            "containerimage.descriptor": {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": index_digest,
                "size": layout_index.len(),
            },
            "image.name": name,
        })
    );

    // The registry holds the same index; each platform manifest's referrers are listed under its
    // fallback tag (Debian's registry has no referrers API).
    let (pushed, pushed_digest) = raw(&format!("docker://{name}"));
    assert_eq!((&pushed, &pushed_digest), (&index, &index_digest));
    let repo = name.rsplit_once(':').unwrap().0;
    let mut attestations = Vec::new();
    for manifest in &manifests {
        let (listed, _) = raw(&format!("docker://{repo}:{}", manifest.replace(':', "-")));
        let mut types = Vec::new();
        for m in listed["manifests"].as_array().unwrap() {
            let digest = m["digest"].as_str().unwrap();
            let (referrer, _) = raw(&format!("docker://{repo}@{digest}"));
            assert_eq!(referrer["subject"]["digest"], manifest.as_str());
            types.push(m["artifactType"].as_str().unwrap().to_string());
            attestations.push(digest.to_string());
        }
        types.sort();
        assert_eq!(types, [SPDX, IN_TOTO], "{listed}");
    }

    // `--sign`: a `sigstoreSigned` policy accepts copying either platform, and each attestation (by
    // digest) is signed too; another key's policy refuses.
    let public = keys.path("sec1.pub");
    for arch in ["amd64", "arm64"] {
        copy_with_policy_args(&name, &public, &["--override-arch", arch])
            .unwrap_or_else(|e| panic!("{arch}: {e}"));
    }
    for a in &attestations {
        copy_with_policy_args(&format!("{repo}@{a}"), &public, &[])
            .unwrap_or_else(|e| panic!("attestation {a}: {e}"));
    }
    let refused = copy_with_policy_args(
        &name,
        &keys.path("pkcs8.pub"),
        &["--override-arch", "arm64"],
    );
    assert!(refused.is_err_and(|e| e.contains("signature")));

    // No secret value in anything written or pushed, nor the signing key.
    let key = keys.secret_bytes("sec1.pem");
    let needles: Vec<&[u8]> = [secret.as_bytes()]
        .into_iter()
        .chain(key.iter().map(Vec::as_slice))
        .collect();
    assert_eq!(leaks_under(&layout, &needles), Vec::<String>::new());
    assert_eq!(leaks_under(registry_dir, &needles), Vec::<String>::new());

    // `-q`: stdout holds the image ID alone, the index digest, as buildx prints it (the images are
    // the ones built above, from the store).
    let again = dir.path().join("again");
    let quiet = build(&["-q", "-o", &format!("type=oci,dest={}", again.display())]);
    quiet.success();
    let (_, again_digest) = raw(&format!("oci:{}:latest", again.display()));
    assert_eq!(quiet.stdout, format!("{again_digest}\n"));
    assert_eq!(again_digest, index_digest);
}

/// A layout with no `-t`: both platforms' attestations are still listed, and skopeo reads the index.
#[test]
fn an_unnamed_layout_lists_every_platform_s_attestations() {
    let base = multi_platform_base();
    let dir = tempdir("platform-attest-");
    let ctx = context(&[(
        "Dockerfile",
        "FROM base\nARG TARGETARCH\nRUN echo $TARGETARCH > /arch\n",
    )]);
    let tar = dir.path().join("oci.tar");
    Kiln::new()
        .args(["--platform", "linux/amd64,linux/arm64", "--build-context"])
        .arg(format!("base=oci-layout://{}", base.path().display()))
        .args(["--sbom=true", "-o"])
        .arg(format!("type=oci,dest={}", tar.display()))
        .arg(ctx.path())
        .run()
        .success();
    let (index, _) = raw(&format!("oci-archive:{}:latest", tar.display()));
    let unpacked = dir.path().join("unpacked");
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
    let sboms = referrers(&unpacked, SPDX);
    let manifests: Vec<String> = platforms(&index).into_keys().collect();
    assert_eq!(subjects(&sboms), manifests);
    assert!(referrers(&unpacked, IN_TOTO).is_empty());
}
