//! The signing module's pure parts: the payload, the tag, the signature manifest and the signature.

use p256::ecdsa::signature::Verifier as _;
use serde_json::Value;

use super::{
    SIGNATURE_ANNOTATION, SIMPLE_SIGNING, SigningKey, payload, signature_tag, with_signature,
};

fn key() -> SigningKey {
    let secret = p256::SecretKey::from_slice(&[7u8; 32]).expect("a valid scalar");
    SigningKey { key: secret.into() }
}

#[test]
fn the_payload_is_containers_image_simple_signing() {
    let digest = "sha256:".to_string() + &"ab".repeat(32);
    let p: Value = serde_json::from_slice(&payload("127.0.0.1:5000/app:1", &digest)).unwrap();
    assert_eq!(p["critical"]["type"], "cosign container image signature");
    assert_eq!(
        p["critical"]["identity"]["docker-reference"],
        "127.0.0.1:5000/app:1"
    );
    assert_eq!(
        p["critical"]["image"]["docker-manifest-digest"],
        digest.as_str()
    );
    assert!(
        p["optional"]["creator"]
            .as_str()
            .unwrap()
            .starts_with("kiln ")
    );
}

#[test]
fn the_tag_is_cosigns() {
    let digest = "sha256:".to_string() + &"0f".repeat(32);
    assert_eq!(
        signature_tag(&digest),
        format!("sha256-{}.sig", "0f".repeat(32))
    );
}

#[test]
fn signatures_are_der_ecdsa_p256_sha256_and_deterministic() {
    use base64::Engine as _;
    let k = key();
    let sig = k.sign(b"payload");
    assert_eq!(sig, k.sign(b"payload"));
    let der = base64::engine::general_purpose::STANDARD
        .decode(&sig)
        .unwrap();
    let parsed = p256::ecdsa::Signature::from_der(&der).expect("DER");
    let public = p256::ecdsa::VerifyingKey::from(&k.key);
    public.verify(b"payload", &parsed).expect("verifies");
    assert!(public.verify(b"other", &parsed).is_err());
}

#[test]
fn a_signature_is_added_to_the_layers_already_there_once() {
    let first = with_signature(None, b"one", "c2lnMQ==").unwrap().unwrap();
    let m: Value = serde_json::from_slice(&first.manifest).unwrap();
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    assert_eq!(m["layers"][0]["mediaType"], SIMPLE_SIGNING);
    assert_eq!(
        m["layers"][0]["annotations"][SIGNATURE_ANNOTATION],
        "c2lnMQ=="
    );
    let config: Value = serde_json::from_slice(&first.blobs[1].1).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], m["layers"][0]["digest"]);

    assert!(
        with_signature(Some(&first.manifest), b"one", "c2lnMQ==")
            .unwrap()
            .is_none()
    );
    let second = with_signature(Some(&first.manifest), b"one", "c2lnMg==")
        .unwrap()
        .unwrap();
    let m: Value = serde_json::from_slice(&second.manifest).unwrap();
    let sigs: Vec<&Value> = m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["annotations"][SIGNATURE_ANNOTATION])
        .collect();
    assert_eq!(sigs, ["c2lnMQ==", "c2lnMg=="]);
    assert!(with_signature(Some(b"{\"manifests\":[]}"), b"one", "x").is_err());
}

#[test]
fn an_index_is_signed_with_every_manifest_it_names() {
    let layout = tempfile::tempdir().unwrap();
    let put = |json: Value| {
        let bytes = serde_json::to_vec(&json).unwrap();
        let digest = crate::digest::Digest::of(&bytes).to_string();
        let path = crate::oci::blob_path(layout.path(), &digest).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        digest
    };
    let amd64 = put(serde_json::json!({"mediaType": super::OCI_MANIFEST, "layers": []}));
    let arm64 = put(serde_json::json!({"mediaType": super::OCI_MANIFEST, "layers": [], "x": 1}));
    let index = put(serde_json::json!({
        "mediaType": super::OCI_INDEX,
        "manifests": [{"digest": amd64}, {"digest": arm64}],
    }));
    let mut found = Vec::new();
    super::manifests_under(layout.path(), &index, 0, &mut found).unwrap();
    assert_eq!(found, [index, amd64.clone(), arm64]);
    let mut found = Vec::new();
    super::manifests_under(layout.path(), &amd64, 0, &mut found).unwrap();
    assert_eq!(found, [amd64]);
}
