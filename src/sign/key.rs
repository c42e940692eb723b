//! Signing key files: cosign's encrypted format (scrypt + NaCl secretbox over PKCS#8) and plain PEM EC
//! P-256 keys (SEC1 as `openssl ecparam -genkey` writes them, or PKCS#8), read into zeroizing memory.

use std::path::Path;

use crypto_secretbox::aead::{Aead as _, KeyInit as _};
use p256::pkcs8::DecodePrivateKey as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::secret::SecretValue;

/// What a key file was refused for: a message (never holding key material or the password) and a hint.
#[derive(Debug)]
pub struct KeyError {
    pub message: String,
    pub help: String,
}

fn refuse(message: impl Into<String>, help: impl Into<String>) -> KeyError {
    KeyError {
        message: message.into(),
        help: help.into(),
    }
}

const SUPPORTED: &str = "expected a cosign key (`cosign generate-key-pair`, `skopeo generate-sigstore-key`) or an unencrypted EC P-256 private key in PEM (`openssl ecparam -name prime256v1 -genkey -noout`, or PKCS#8)";

/// The largest scrypt cost accepted: 2^20 (with r = 8, 1 GiB), sixteen times cosign's.
const MAX_SCRYPT_N: u64 = 1 << 20;

/// The PEM labels cosign has written its encrypted keys under, newest first.
const COSIGN_LABELS: [&str; 2] = [
    "ENCRYPTED SIGSTORE PRIVATE KEY",
    "ENCRYPTED COSIGN PRIVATE KEY",
];

/// Reads the private key in `path`. `password` is asked for only when the file is encrypted (cosign's
/// `COSIGN_PASSWORD`); an encrypted key without one is tried with the empty password, as cosign makes
/// such keys when given none.
pub(super) fn read(
    path: &Path,
    password: impl FnOnce() -> Option<SecretValue>,
) -> Result<p256::ecdsa::SigningKey, KeyError> {
    let shown = path.display();
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        refuse(
            format!("cannot read the signing key `{shown}`: {e}"),
            "`key=` names a private key file",
        )
    })?);
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| refuse(format!("`{shown}` is not a PEM file"), SUPPORTED))?;
    // `openssl ecparam -genkey` writes an `EC PARAMETERS` block before the key: take the key's block.
    let Some((label, der)) = pem_blocks(text).find(|(label, _)| label.contains("PRIVATE KEY"))
    else {
        let what = match pem_blocks(text).next() {
            Some((label, _)) if label.contains("PUBLIC KEY") || label == "CERTIFICATE" => {
                format!("`{shown}` holds a public key, not the private key signing needs")
            }
            Some((label, _)) => format!("`{shown}` holds a PEM `{label}`, not a private key"),
            None => format!("`{shown}` is not a PEM file"),
        };
        return Err(refuse(what, SUPPORTED));
    };
    let not_p256 = || {
        refuse(
            format!("`{shown}` is not an EC P-256 private key"),
            format!("cosign-compatible signatures are ECDSA P-256; {SUPPORTED}"),
        )
    };
    if der.is_empty() {
        return Err(refuse(
            format!(
                "`{shown}` is encrypted with OpenSSL's legacy PEM encryption, which kiln does not read"
            ),
            format!("decrypt it first (`openssl ec -in {shown} -out KEY`), or use a cosign key"),
        ));
    }
    match label.as_str() {
        "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(&der)
            .map(Into::into)
            .map_err(|_| not_p256()),
        "PRIVATE KEY" => p256::SecretKey::from_pkcs8_der(&der)
            .map(Into::into)
            .map_err(|_| not_p256()),
        l if COSIGN_LABELS.contains(&l) => {
            let pkcs8 = decrypt_cosign(&der, path, password)?;
            p256::SecretKey::from_pkcs8_der(&pkcs8)
                .map(Into::into)
                .map_err(|_| not_p256())
        }
        "ENCRYPTED PRIVATE KEY" => Err(refuse(
            format!("`{shown}` is an encrypted PKCS#8 key, which kiln does not read"),
            format!(
                "decrypt it first (`openssl pkcs8 -in {shown} -nocrypt -out KEY`), or use a cosign key"
            ),
        )),
        other => Err(refuse(
            format!("`{shown}` holds a PEM `{other}`, which kiln cannot sign with"),
            SUPPORTED,
        )),
    }
}

/// Every PEM block of `text` whose body decodes: its label and its (zeroizing) DER bytes. As lenient
/// as Go's `encoding/pem`, which cosign writes and reads with: any line length, blank lines ignored.
/// A block with headers (`Proc-Type: 4,ENCRYPTED`, OpenSSL's legacy encryption) yields no bytes.
fn pem_blocks(text: &str) -> impl Iterator<Item = (String, Zeroizing<Vec<u8>>)> + '_ {
    use base64::Engine as _;
    let mut rest = text;
    std::iter::from_fn(move || {
        loop {
            let start = rest.find("-----BEGIN ")?;
            let after = &rest[start + 11..];
            let label_end = after.find("-----")?;
            let label = &after[..label_end];
            let body_and_rest = &after[label_end + 5..];
            let end_marker = format!("-----END {label}-----");
            let Some(end) = body_and_rest.find(&end_marker) else {
                rest = body_and_rest;
                continue;
            };
            let body = &body_and_rest[..end];
            rest = &body_and_rest[end + end_marker.len()..];
            if body.contains(':') {
                return Some((label.to_string(), Zeroizing::new(Vec::new())));
            }
            let compact: Zeroizing<String> =
                Zeroizing::new(body.chars().filter(|c| !c.is_ascii_whitespace()).collect());
            if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()) {
                return Some((label.to_string(), Zeroizing::new(der)));
            }
        }
    })
}

/// cosign's encrypted key: JSON naming the KDF (scrypt) and the cipher (NaCl secretbox).
#[derive(Deserialize)]
struct Encrypted {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// Decrypts cosign's key file body into the PKCS#8 DER it holds.
fn decrypt_cosign(
    body: &[u8],
    path: &Path,
    password: impl FnOnce() -> Option<SecretValue>,
) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    use base64::Engine as _;
    let shown = path.display();
    let broken = |what: &str| {
        refuse(
            format!("`{shown}` is not a valid cosign key: {what}"),
            "make it again with `cosign generate-key-pair`",
        )
    };
    let enc: Encrypted = serde_json::from_slice(body).map_err(|_| broken("not its JSON"))?;
    if enc.kdf.name != "scrypt" || enc.cipher.name != "nacl/secretbox" {
        return Err(broken(&format!(
            "kdf `{}` and cipher `{}`, where cosign writes scrypt and nacl/secretbox",
            enc.kdf.name, enc.cipher.name
        )));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let salt = b64.decode(&enc.kdf.salt).map_err(|_| broken("bad salt"))?;
    let nonce = b64
        .decode(&enc.cipher.nonce)
        .map_err(|_| broken("bad nonce"))?;
    let ciphertext = b64
        .decode(&enc.ciphertext)
        .map_err(|_| broken("bad ciphertext"))?;
    let ScryptParams { n, r, p } = enc.kdf.params;
    if !n.is_power_of_two() || n < 2 || nonce.len() != 24 {
        return Err(broken("bad scrypt or secretbox parameters"));
    }
    // scrypt needs 128·r·N bytes: far above what cosign writes (N = 2^15 or 2^16, r = 8, p = 1) is a
    // file made to exhaust memory, not a key.
    if n > MAX_SCRYPT_N || r > 32 || p > 16 {
        return Err(broken(&format!(
            "scrypt parameters N={n}, r={r}, p={p} are beyond any cosign key's"
        )));
    }
    let params = scrypt::Params::new(n.trailing_zeros() as u8, r, p)
        .map_err(|_| broken("bad scrypt parameters"))?;
    let given = password();
    let has_password = given.is_some();
    let password = given.unwrap_or_else(|| SecretValue::new(Zeroizing::new(Vec::new())));
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password.expose(), &salt, &params, key.as_mut())
        .map_err(|_| broken("bad scrypt parameters"))?;
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(key.as_ref().into());
    let plain = cipher
        .decrypt(nonce.as_slice().into(), ciphertext.as_slice())
        .map_err(|_| {
            if has_password {
                refuse(
                    format!("cannot decrypt `{shown}` with the password in COSIGN_PASSWORD"),
                    "COSIGN_PASSWORD must hold the password the key was made with",
                )
            } else {
                refuse(
                    format!("`{shown}` is encrypted and COSIGN_PASSWORD is not set"),
                    "set COSIGN_PASSWORD to the key's password, as for `cosign sign`",
                )
            }
        })?;
    Ok(Zeroizing::new(plain))
}
