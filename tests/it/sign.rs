//! `--sign`: kiln signs what it pushes as cosign does, and containers/image judges the signatures: a
//! skopeo that verifies sigstore signatures (trixie's, fetched by `tests/fixtures/fetch-skopeo.sh`,
//! since bookworm's has sigstore disabled) copies with a `policy.json` requiring `sigstoreSigned` by a
//! public key. Keys are made by openssl (SEC1 with its EC PARAMETERS block, PKCS#8) and by that skopeo
//! (cosign's encrypted format). Skipped, with a note, when Debian's `docker-registry` is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine as _;
use serde_json::Value;
use sha2::Digest as _;

use crate::support::{Kiln, context, leaks_under, repo, start_registries, tempdir, tool, write};

const COSIGN_PASSWORD: &str = "kiln-sign-test-passphrase-51d0";

/// The registry of this test process.
pub(crate) fn registry() -> Option<&'static (PathBuf, String)> {
    static REG: OnceLock<Option<(PathBuf, String)>> = OnceLock::new();
    REG.get_or_init(|| {
        let (dir, addrs) = start_registries("signing tests", &[], &["open"])?;
        Some((dir, addrs[0].clone()))
    })
    .as_ref()
}

/// The wrapper running trixie's skopeo, fetched once and kept under the target dir, named by the
/// script's hash.
fn skopeo() -> &'static Path {
    static SKOPEO: OnceLock<PathBuf> = OnceLock::new();
    SKOPEO.get_or_init(|| {
        let script = repo().join("tests/fixtures/fetch-skopeo.sh");
        let hash = hex::encode(sha2::Sha256::digest(std::fs::read(&script).unwrap()));
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dest = root.join(format!("skopeo-{}", &hash[..16]));
        if !dest.join("skopeo").is_file() {
            remove_stale(root, &format!("skopeo-{}", &hash[..16]));
            let work = root.join(format!("skopeo-{}.tmp-{}", &hash[..16], std::process::id()));
            let _ = std::fs::remove_dir_all(&work);
            let wrapper = tool("bash", &[script.to_str().unwrap(), work.to_str().unwrap()]);
            assert!(wrapper.contains("skopeo version"), "{wrapper}");
            // The wrapper names its own directory: rewrite it for the final name.
            let text = std::fs::read_to_string(work.join("skopeo")).unwrap();
            let text = text.replace(work.to_str().unwrap(), dest.to_str().unwrap());
            std::fs::write(work.join("skopeo"), text).unwrap();
            if std::fs::rename(&work, &dest).is_err() {
                let _ = std::fs::remove_dir_all(&work);
            }
        }
        dest.join("skopeo")
    })
}

/// skopeos fetched by an older version of the script, and half-fetched ones whose maker is gone.
fn remove_stale(root: &Path, current: &str) {
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("skopeo-") || name == current {
            continue;
        }
        let stale = match name.split_once(".tmp-") {
            Some((_, pid)) => !Path::new("/proc").join(pid).exists(),
            None => true,
        };
        if stale {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The keys of these tests, each with its public key in PEM.
pub(crate) struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    pub(crate) fn make() -> Keys {
        let dir = tempdir("keys-");
        let d = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
        // What `openssl ecparam -genkey` writes: an EC PARAMETERS block, then the SEC1 key.
        tool(
            "openssl",
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-out",
                &d("sec1.pem"),
            ],
        );
        tool(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &d("pkcs8.pem"),
            ],
        );
        tool(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                &d("p384.pem"),
            ],
        );
        for k in ["sec1", "pkcs8"] {
            tool(
                "openssl",
                &[
                    "ec",
                    "-in",
                    &d(&format!("{k}.pem")),
                    "-pubout",
                    "-out",
                    &d(&format!("{k}.pub")),
                ],
            );
        }
        write(&dir.path().join("pass"), COSIGN_PASSWORD);
        let out = Command::new(skopeo())
            .args([
                "generate-sigstore-key",
                "--output-prefix",
                &d("cosign"),
                "--passphrase-file",
                &d("pass"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(d("cosign.private"), d("cosign.key")).unwrap();
        // A second cosign key, for containers/image's own signature.
        let out = Command::new(skopeo())
            .args([
                "generate-sigstore-key",
                "--output-prefix",
                &d("skopeo"),
                "--passphrase-file",
                &d("pass"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(d("skopeo.private"), d("skopeo.key")).unwrap();
        Keys { dir }
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// The private scalar and the whole DER of a key file, for the leak search.
    pub(crate) fn secret_bytes(&self, name: &str) -> Vec<Vec<u8>> {
        let der = Command::new("openssl")
            .args(["ec", "-in", &self.path(name), "-outform", "DER"])
            .output()
            .unwrap()
            .stdout;
        // SEC1 DER: 30 77 02 01 01 04 20, then the 32-byte scalar.
        assert_eq!(&der[..7], [0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
        vec![der[7..39].to_vec(), der]
    }
}

/// Copies `docker://{reference}` to a fresh OCI layout with a policy that requires a sigstore signature
/// by `public_key` for everything in the test registry. Returns skopeo's output when it refused.
fn copy_with_policy(reference: &str, public_key: &str) -> Result<(), String> {
    copy_with_policy_args(reference, public_key, &[])
}

/// [`copy_with_policy`] with more arguments for skopeo's `copy` (`--override-arch arm64`: the platform
/// of an index to copy).
pub(crate) fn copy_with_policy_args(
    reference: &str,
    public_key: &str,
    extra: &[&str],
) -> Result<(), String> {
    let (_, reg) = registry().unwrap();
    let dir = tempdir("policy-");
    let policy = serde_json::json!({
        "default": [{"type": "reject"}],
        "transports": {"docker": {reg.as_str(): [{
            "type": "sigstoreSigned",
            "keyPath": public_key,
            "signedIdentity": {"type": "matchRepoDigestOrExact"},
        }]}},
    });
    write(&dir.path().join("policy.json"), policy.to_string());
    write(
        &dir.path().join("registries.d/default.yaml"),
        "default-docker:\n  use-sigstore-attachments: true\n",
    );
    let out = Command::new(skopeo())
        .arg("copy")
        .arg("--policy")
        .arg(dir.path().join("policy.json"))
        .arg("--registries.d")
        .arg(dir.path().join("registries.d"))
        // containers/image's `oci:` transport cannot store signatures; the policy still judges the source.
        .args(["--remove-signatures", "--src-tls-verify=false"])
        .args(extra)
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:x", dir.path().join("oci").display()))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Builds an image that says `run` and pushes it as `args` say.
fn build_and_push(store: &Path, run: &str, args: &[&str]) -> crate::support::Output {
    let ctx = context(&[("Dockerfile", &format!("FROM base\nRUN echo {run} > /who\n"))]);
    Kiln::build_in(store)
        .with_base()
        .args(args)
        .arg(ctx.path())
        .run()
}

/// The signature manifest of `reference`'s manifest, as the registry serves it.
fn signature_manifest(reference: &str) -> Value {
    let raw = crate::support::registry_raw(reference);
    let digest = format!("{:x}", sha2::Sha256::digest(raw.as_bytes()));
    let (repo, _) = reference.rsplit_once(':').unwrap();
    let sig = tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{repo}:sha256-{digest}.sig"),
        ],
    );
    serde_json::from_str(&sig).unwrap()
}

#[test]
fn a_signed_push_passes_a_sigstore_signed_policy_and_others_are_refused() {
    let Some((reg_dir, reg)) = registry() else {
        return;
    };
    let keys = Keys::make();
    let signed = format!("{reg}/sign/signed:1");
    let signed_too = format!("{reg}/sign/signed:stable");
    let unsigned = format!("{reg}/sign/unsigned:1");
    let other = format!("{reg}/sign/other:1");
    let store = tempdir("store-");
    let sign = format!("key={}", keys.path("sec1.pem"));
    let out = build_and_push(
        store.path(),
        "signed",
        &["--push", "-t", &signed, "-t", &signed_too, "--sign", &sign],
    );
    out.success();
    assert!(
        out.stderr
            .contains(&format!("signed {signed}, manifest sha256:")),
        "{}",
        out.stderr
    );
    build_and_push(store.path(), "unsigned", &["--push", "-t", &unsigned]).success();
    // `-o type=registry` pushes are signed as `--push` ones are.
    let registry_output = format!("type=registry,name={other}");
    let sign = format!("key={}", keys.path("pkcs8.pem"));
    build_and_push(
        store.path(),
        "other",
        &["-o", &registry_output, "--sign", &sign],
    )
    .success();

    let public = keys.path("sec1.pub");
    copy_with_policy(&signed, &public).expect("the signed image is accepted");
    // Each name has its own signature (the payload names the tag, which the policy's default
    // `matchRepoDigestOrExact` compares), in the one `.sig` manifest of the shared digest.
    copy_with_policy(&signed_too, &public).expect("the second name is signed too");
    let refused = copy_with_policy(&unsigned, &public).expect_err("the unsigned image is refused");
    assert!(refused.contains("signature"), "{refused}");
    let refused = copy_with_policy(&other, &public).expect_err("another key's image is refused");
    assert!(refused.contains("signature"), "{refused}");
    copy_with_policy(&other, &keys.path("pkcs8.pub")).expect("accepted with its own key");

    // The artifact is cosign's: a simple-signing layer per name, the signature in its annotation.
    let m = signature_manifest(&signed);
    assert_eq!(m["layers"].as_array().unwrap().len(), 2, "{m}");
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    assert!(m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"].is_string());

    // The key never reaches the store, the registry's storage, or the output.
    let secrets = keys.secret_bytes("sec1.pem");
    let needles: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
    assert_eq!(leaks_under(store.path(), &needles), Vec::<String>::new());
    assert_eq!(leaks_under(reg_dir, &needles), Vec::<String>::new());
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(&hex::encode(&secrets[0])));
    }
}

#[test]
fn image_push_signs_and_adds_to_the_signatures_already_there() {
    let Some((_, reg)) = registry() else { return };
    let keys = Keys::make();
    let target = format!("{reg}/sign/kept:1");
    let store = tempdir("store-");
    let store_arg = store.path().to_str().unwrap();
    let ctx = context(&[("Dockerfile", "FROM base\nRUN echo kept > /who\n")]);
    Kiln::build_in(store.path())
        .with_base()
        .args(["-t", &target])
        .arg(ctx.path())
        .run()
        .success();
    let push = |key: &str, password: Option<&str>| {
        let mut k = Kiln::bare()
            .args(["image", "push", &target, "--store", store_arg, "--sign"])
            .arg(format!("key={}", keys.path(key)));
        if let Some(p) = password {
            k = k.env("COSIGN_PASSWORD", p);
        }
        k.run()
    };
    let layers = || {
        signature_manifest(&target)["layers"]
            .as_array()
            .unwrap()
            .len()
    };
    let out = push("cosign.key", Some(COSIGN_PASSWORD));
    out.success();
    assert!(
        out.stderr.contains(&format!("signed {target}")),
        "{}",
        out.stderr
    );
    copy_with_policy(&target, &keys.path("cosign.pub")).expect("the cosign key's signature");
    assert!(copy_with_policy(&target, &keys.path("pkcs8.pub")).is_err());
    // containers/image itself adds its signature to the `.sig` manifest kiln wrote ...
    let dir = tempdir("skopeo-sign-");
    write(
        &dir.path().join("registries.d/default.yaml"),
        "default-docker:\n  use-sigstore-attachments: true\n",
    );
    write(
        &dir.path().join("policy.json"),
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    );
    let out = Command::new(skopeo())
        .arg("copy")
        .arg("--policy")
        .arg(dir.path().join("policy.json"))
        .arg("--registries.d")
        .arg(dir.path().join("registries.d"))
        .args(["--src-tls-verify=false", "--dest-tls-verify=false"])
        .args(["--sign-by-sigstore-private-key", &keys.path("skopeo.key")])
        .args(["--sign-passphrase-file", &keys.path("pass")])
        .args([format!("docker://{target}"), format!("docker://{target}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(layers(), 2);
    // ... and kiln adds its own to the one containers/image wrote; every signature stays.
    push("pkcs8.pem", None).success();
    assert_eq!(layers(), 3);
    for public in ["cosign.pub", "skopeo.pub", "pkcs8.pub"] {
        copy_with_policy(&target, &keys.path(public)).unwrap_or_else(|e| panic!("{public}: {e}"));
    }
    // Signing again with the same key adds nothing (ECDSA with RFC 6979 nonces is deterministic).
    let out = push("pkcs8.pem", None);
    out.success();
    assert!(
        out.stderr.contains("already holds this signature"),
        "{}",
        out.stderr
    );
    assert_eq!(
        signature_manifest(&target)["layers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn bad_sign_flags_and_keys_are_located_errors() {
    let keys = Keys::make();
    let ctx = context(&[("Dockerfile", "FROM base\n")]);
    let push = ["--push", "-t", "127.0.0.1:9/never/pushed:1"];
    let d = |n: &str| keys.path(n);
    let key = |n: &str| format!("key={}", d(n));
    write(Path::new(&d("garbage")), "not a key\n");
    let pass = ["-pass", "pass:x"];
    tool(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-aes-256-cbc",
            pass[0],
            pass[1],
            "-out",
            &d("enc8.pem"),
        ],
    );
    tool(
        "openssl",
        &["genrsa", "-traditional", "-out", &d("rsa.pem"), "2048"],
    );
    tool(
        "openssl",
        &[
            "ec",
            "-in",
            &d("sec1.pem"),
            "-aes256",
            "-passout",
            "pass:x",
            "-out",
            &d("legacy.pem"),
        ],
    );
    let body = base64::engine::general_purpose::STANDARD.encode(
        r#"{"kdf":{"name":"pbkdf2","params":{"N":2,"r":1,"p":1},"salt":""},"cipher":{"name":"x","nonce":""},"ciphertext":""}"#,
    );
    write(
        Path::new(&d("bad-cosign.key")),
        format!(
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{body}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
        ),
    );
    // A memory bomb: scrypt with N = 2^30 would need 1 TiB.
    let body = base64::engine::general_purpose::STANDARD.encode(
        r#"{"kdf":{"name":"scrypt","params":{"N":1073741824,"r":8,"p":1},"salt":""},"cipher":{"name":"nacl/secretbox","nonce":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},"ciphertext":""}"#,
    );
    write(
        Path::new(&d("huge-cosign.key")),
        format!(
            "-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----\n{body}\n-----END ENCRYPTED COSIGN PRIVATE KEY-----\n"
        ),
    );
    let cases: Vec<(Vec<String>, Option<&str>, &str, &str)> = vec![
        (
            vec![format!("key={}", keys.path("sec1.pem"))],
            None,
            "nothing is pushed",
            "--push",
        ),
        (
            vec!["kye=x".into()],
            None,
            "unknown key `kye` in --sign",
            "did you mean `key`?",
        ),
        (
            vec!["key=".into()],
            None,
            "`key` needs a path",
            "--sign key=PATH",
        ),
        (
            vec![format!("key={}", keys.path("missing.pem"))],
            None,
            "cannot read the signing key",
            "private key file",
        ),
        (
            vec![format!("key={}", keys.path("sec1.pub"))],
            None,
            "holds a public key",
            "prime256v1",
        ),
        (
            vec![format!("key={}", keys.path("p384.pem"))],
            None,
            "is not an EC P-256 private key",
            "ECDSA P-256",
        ),
        (
            vec![format!("key={}", keys.path("cosign.key"))],
            Some("wrong-password"),
            "cannot decrypt",
            "COSIGN_PASSWORD must hold",
        ),
        (
            vec![format!("key={}", keys.path("cosign.key"))],
            None,
            "COSIGN_PASSWORD is not set",
            "set COSIGN_PASSWORD",
        ),
        (
            vec!["".into()],
            None,
            "--sign needs a `key`",
            "--sign key=PATH",
        ),
        (
            vec![key("garbage")],
            None,
            "is not a PEM file",
            "prime256v1",
        ),
        (
            vec![key("enc8.pem")],
            None,
            "encrypted PKCS#8 key",
            "openssl pkcs8",
        ),
        (
            vec![key("rsa.pem")],
            None,
            "holds a PEM `RSA PRIVATE KEY`",
            "prime256v1",
        ),
        (
            vec![key("bad-cosign.key")],
            None,
            "is not a valid cosign key",
            "cosign generate-key-pair",
        ),
        (
            vec![key("legacy.pem")],
            None,
            "legacy PEM encryption",
            "openssl ec -in",
        ),
        (
            vec![key("huge-cosign.key")],
            Some("pw-for-the-bomb-0b7e"),
            "are beyond any cosign key's",
            "cosign generate-key-pair",
        ),
    ];
    for (i, (value, password, message, help)) in cases.into_iter().enumerate() {
        let mut k = Kiln::new().with_base();
        if i > 0 {
            k = k.args(push);
        }
        if let Some(p) = password {
            k = k.env("COSIGN_PASSWORD", p);
        }
        let out = k.arg("--sign").args(&value).arg(ctx.path()).run();
        out.expect_code(2);
        let flat: String = out
            .stderr
            .split_whitespace()
            .filter(|w| *w != "|")
            .collect::<Vec<_>>()
            .join(" ");
        assert!(flat.contains(message), "case {i}: {}", out.stderr);
        assert!(flat.contains(help), "case {i}: {}", out.stderr);
        assert!(
            out.stderr.contains('^'),
            "case {i}: no caret: {}",
            out.stderr
        );
        if let Some(p) = password {
            assert!(!out.stderr.contains(p), "case {i}: {}", out.stderr);
        }
    }
    // `kiln image push` reads the key the same way, before it opens the store.
    let out = Kiln::bare()
        .args(["image", "push", "nothing:1", "--sign"])
        .arg(format!("key={}", keys.path("sec1.pub")))
        .run();
    out.expect_code(2);
    assert!(out.stderr.contains("holds a public key"), "{}", out.stderr);
}

#[test]
fn an_image_that_would_carry_the_signing_key_is_refused_and_nothing_is_pushed() {
    let Some((_, reg)) = registry() else { return };
    let keys = Keys::make();
    let pem = std::fs::read_to_string(keys.path("sec1.pem")).unwrap();
    let target = format!("{reg}/sign/leaky:1");
    let store = tempdir("store-");
    for (name, dockerfile) in [
        ("the PEM file", "FROM base\nCOPY notes.txt /etc/notes.txt\n"),
        (
            "its DER",
            "FROM base\nRUN --mount=type=bind,target=/c sed -n '/BEGIN EC PRIV/,/END EC PRIV/p' /c/notes.txt | grep -v -- ----- | base64 -d > /der\n",
        ),
    ] {
        let ctx = context(&[("Dockerfile", dockerfile), ("notes.txt", &pem)]);
        let out = Kiln::build_in(store.path())
            .with_base()
            .args(["--push", "-t", &target, "--sign"])
            .arg(format!("key={}", ctx.path().join("notes.txt").display()))
            .arg(ctx.path())
            .run();
        out.expect_code(1);
        assert!(
            out.stderr.contains("secret `--sign key` leaked")
                && out.stderr.contains("nothing this build made was kept"),
            "{name}: {}",
            out.stderr
        );
    }
    let tags = Command::new("skopeo")
        .args([
            "list-tags",
            "--tls-verify=false",
            &format!("docker://{reg}/sign/leaky"),
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&tags.stdout).contains("\"1\""),
        "pushed anyway"
    );
    let secrets = keys.secret_bytes("sec1.pem");
    let needles: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
    assert_eq!(leaks_under(store.path(), &needles), Vec::<String>::new());
}
