//! `--sign key=PATH` (on `kiln build` and `kiln image push`): the signing key, read and checked before
//! anything is built or pushed, with the password of a cosign key from `COSIGN_PASSWORD`.

use std::path::Path;

use zeroize::Zeroizing;

use super::absolute;
use super::command_line::CommandLine;
use crate::diag::{Result, Span, suggest};
use crate::secret::SecretValue;
use crate::sign::SigningKey;

/// The environment variable cosign reads an encrypted key's password from.
const PASSWORD_VAR: &str = "COSIGN_PASSWORD";

/// Parses `--sign key=PATH` and reads the key. `pushes` says whether anything is pushed: signatures
/// live beside a pushed image in its repository, so a `--sign` with nothing to push is refused rather
/// than ignored.
pub(super) fn parse_sign(
    cl: &CommandLine,
    value: Option<&str>,
    pushes: bool,
) -> Result<Option<SigningKey>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let fields = crate::options::parse(value)
        .map_err(|e| cl.error(value, e.span, e.message).help(e.help))?;
    let mut key = None;
    for f in &fields {
        match (f.key.to_ascii_lowercase().as_str(), &f.value) {
            ("key", Some(v)) if !v.is_empty() => key = Some((v.clone(), f.value_span())),
            ("key", _) => {
                return Err(cl.error(value, f.span, "`key` needs a path").help(
                    "write `--sign key=PATH` (a cosign.key, or a PEM EC P-256 private key)",
                ));
            }
            (other, _) => {
                let d = cl.error(value, f.span, format!("unknown key `{other}` in --sign"));
                return Err(match suggest(other, ["key"]) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => d.help("--sign takes `key=PATH`"),
                });
            }
        }
    }
    let Some((path, span)) = key else {
        return Err(cl
            .error(value, Span::default(), "--sign needs a `key`")
            .help("write `--sign key=PATH` (a cosign.key, or a PEM EC P-256 private key)"));
    };
    if !pushes {
        return Err(cl
            .error(value, Span::default(), "--sign signs pushed images, and nothing is pushed")
            .help("add `--push` (with `-t NAME`) or `-o type=registry,name=NAME`: the signature is stored beside the image in its repository"));
    }
    let password = || {
        std::env::var_os(PASSWORD_VAR)
            .map(|p| SecretValue::new(Zeroizing::new(p.into_encoded_bytes())))
    };
    SigningKey::read(&absolute(Path::new(&path)), password)
        .map(Some)
        .map_err(|e| cl.error(value, span, e.message).help(e.help))
}
