//! Secret values: bytes that live only in zeroizing memory and can never be printed.
//!
//! There is deliberately no `Debug`, `Display`, `Serialize` or `Clone` on `SecretValue`, so the compiler
//! refuses any attempt to log, format, serialize or casually copy one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use zeroize::Zeroizing;

pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> SecretValue {
        SecretValue(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// Where a `--secret` comes from; this (never the value) is what may be shown to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// The secrets given on the command line, loaded on demand by id.
#[derive(Default)]
pub struct SecretStore {
    sources: BTreeMap<String, SecretSource>,
}

impl SecretStore {
    pub fn insert(&mut self, id: String, source: SecretSource) {
        self.sources.insert(id, source);
    }
    pub fn contains(&self, id: &str) -> bool {
        self.sources.contains_key(id)
    }
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.sources.keys().map(String::as_str)
    }
    /// Reads the secret now. Errors name the id and the source, never the bytes.
    pub fn load(&self, id: &str) -> Result<Option<SecretValue>, String> {
        let Some(source) = self.sources.get(id) else {
            return Ok(None);
        };
        let bytes = match source {
            SecretSource::File(path) => std::fs::read(path)
                .map_err(|e| format!("secret `{id}`: cannot read {}: {e}", path.display()))?,
            SecretSource::Env(var) => std::env::var_os(var)
                .ok_or_else(|| format!("secret `{id}`: environment variable `{var}` is not set"))?
                .into_encoded_bytes(),
        };
        Ok(Some(SecretValue(Zeroizing::new(bytes))))
    }
}
