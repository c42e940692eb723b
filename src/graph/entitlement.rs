//! Entitlements: what a step may ask for beyond the sandbox only when the person running the build allows it
//! (`kiln build --allow network.host`, `--allow security.insecure`, buildx's spelling).
//!
//! A program records where each step asks (the `--network=host` or `--security=insecure` flag, the `.build`
//! argument) beside its ops, never in them: the op's own network and security fields already make the
//! graph digest and cache keys, and allowing an entitlement must not change either.

use super::op::{Network, RunOp};
use crate::diag::Located;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Entitlement {
    /// The host's network namespace (`RUN --network=host`).
    NetworkHost,
    /// No sandbox (`RUN --security=insecure`): every capability, no seccomp, nothing masked.
    SecurityInsecure,
}

impl Entitlement {
    pub const ALL: [Entitlement; 2] = [Entitlement::NetworkHost, Entitlement::SecurityInsecure];

    /// BuildKit's name, as `--allow` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Entitlement::NetworkHost => "network.host",
            Entitlement::SecurityInsecure => "security.insecure",
        }
    }

    pub fn parse(s: &str) -> Option<Entitlement> {
        Entitlement::ALL.into_iter().find(|e| e.name() == s)
    }
}

impl RunOp {
    /// The entitlements this step needs to run.
    pub fn entitlements(&self) -> Vec<Entitlement> {
        let mut needs = Vec::new();
        if self.network == Network::Host {
            needs.push(Entitlement::NetworkHost);
        }
        if self.insecure {
            needs.push(Entitlement::SecurityInsecure);
        }
        needs
    }
}

/// Where a node's source asks for an entitlement (the flag or argument), for the refusal's caret.
pub type Asks = Vec<(Entitlement, Located)>;

/// The refusal of a step that needs `needed` when the build did not allow it; `at` is where it asks.
pub fn refusal(needed: Entitlement, at: Option<&Located>) -> crate::diag::Diagnostic {
    let name = needed.name();
    let d = crate::diag::Diagnostic::input(format!("{name} is not allowed"))
        .help(format!("pass `--allow {name}` to kiln build"));
    match at {
        Some(at) => d.label(
            at.clone(),
            format!("this step needs the `{name}` entitlement"),
        ),
        None => d,
    }
}
