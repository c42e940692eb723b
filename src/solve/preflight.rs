//! Checks before anything runs: entitlements, base image names, unsupported sources and required secrets
//! and ssh agents fail the build up front rather than halfway; and the scanner for every secret given.

use std::collections::BTreeMap;

use crate::diag::{Diagnostic, Result};
use crate::graph::Dag;
use crate::graph::Op;
use crate::graph::entitlement::Entitlement;
use crate::graph::op::RunMount;
use crate::secret::{LeakScanner, SecretStore};

/// Checks, before anything runs, what would otherwise fail halfway: every step's entitlements must be
/// allowed, every base image must be one kiln can read, and every required secret must have been given.
pub fn preflight(
    graph: &Dag,
    secrets: &SecretStore,
    ssh: &BTreeMap<String, crate::secret::SshSource>,
    allow: &[Entitlement],
) -> Result<()> {
    for n in graph.topo_order() {
        let node = &graph.dag[n];
        if let Op::Run(r) = &node.op
            && let Some(needed) = r.entitlements().into_iter().find(|e| !allow.contains(e))
        {
            let at = node
                .asks
                .iter()
                .find(|(e, _)| *e == needed)
                .map(|(_, at)| at);
            return Err(crate::graph::entitlement::refusal(
                needed,
                at.or(node.at.as_ref()),
            ));
        }
        if let Op::Remote { url, .. } = &graph.dag[n].op
            && !fetchable(url)
        {
            let mut d = remote_unsupported(url);
            if let Some(at) = &graph.dag[n].at {
                d = d.label(at.clone(), "");
            }
            return Err(d);
        }
        // BuildKit's Dockerfile frontend forwards the `default` agent to git sources over SSH.
        if let Op::Remote { url, .. } = &graph.dag[n].op
            && is_ssh(url)
            && !ssh.contains_key("default")
        {
            let mut d = Diagnostic::input(format!(
                "`{}` is fetched over SSH, which needs the ssh agent `default`, and none was given",
                crate::graph::remote::redacted(url)
            ))
            .help("pass `--ssh default` (the agent of $SSH_AUTH_SOCK) or `--ssh default=KEYFILE`; the host key must be in ~/.ssh/known_hosts");
            if let Some(at) = &graph.dag[n].at {
                d = d.label(at.clone(), "this ADD clones over SSH");
            }
            return Err(d);
        }
        // Registry images are pulled when solved; here only their names are checked, without the network.
        if let Op::Image { reference, .. } = &graph.dag[n].op
            && !reference.starts_with("oci-layout://")
            && let Err(mut d) = crate::registry::ImageName::parse(reference)
        {
            if let Some(at) = &graph.dag[n].at {
                d = d.label(at.clone(), "this image");
            }
            return Err(d);
        }
    }
    // Required secrets and ssh agents, checked before the first step rather than when it is reached.
    for n in graph.topo_order() {
        let Op::Run(r) = &graph.dag[n].op else {
            continue;
        };
        let missing_secret = r
            .secrets
            .iter()
            .find(|s| s.required && !secrets.contains(&s.id));
        let missing_ssh = r.mounts.iter().find_map(|m| match m {
            RunMount::Ssh {
                id, required: true, ..
            } if !ssh.contains_key(id) => Some(id),
            _ => None,
        });
        let (mut d, what) =
            match (missing_secret, missing_ssh) {
                (Some(s), _) => (
                    Diagnostic::input(format!("secret `{}` is required but was not given", s.id))
                        .help(format!(
                            "pass it with `--secret id={},src=FILE` (or `env=VAR`)",
                            s.id
                        )),
                    "secret",
                ),
                (None, Some(id)) => (
                    Diagnostic::input(format!("ssh agent `{id}` is required but was not given"))
                        .help(if id == "default" {
                            "pass `--ssh default` to forward $SSH_AUTH_SOCK".to_string()
                        } else {
                            format!("pass `--ssh {id}=SOCKET` with an agent socket")
                        }),
                    "ssh agent",
                ),
                (None, None) => continue,
            };
        if let Some(at) = &graph.dag[n].at {
            d = d.label(
                at.clone(),
                format!("this step mounts the {what} with required=true"),
            );
        }
        return Err(d);
    }
    Ok(())
}

/// A scanner for the value of every secret given to the build (read now, dropped with the scanner).
pub fn all_secrets(secrets: &SecretStore) -> Result<LeakScanner> {
    let values = secrets
        .ids()
        .map(|id| {
            Ok(secrets
                .load(id)
                .map_err(Diagnostic::input)?
                .map(|v| (id.to_string(), v)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(LeakScanner::new(
        values
            .iter()
            .flatten()
            .map(|(id, v)| (id.as_str(), v))
            .chain(secrets.guarded()),
    ))
}

/// HTTP(S) downloads, and git repositories over HTTP(S), `git://` or SSH (`git@host:repo`, `ssh://`).
fn fetchable(url: &str) -> bool {
    crate::graph::remote::kind(url).is_some()
}

/// A git source reached over SSH: `ssh://` or scp-like `user@host:path`.
fn is_ssh(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("ssh://") || lower.starts_with("git@")
}

pub(super) fn remote_unsupported(url: &str) -> Diagnostic {
    let url = crate::graph::remote::redacted(url);
    Diagnostic::input(format!("ADD from `{url}` is not supported: kiln fetches http(s):// files and git repositories over HTTP(S), git:// and SSH"))
        .help("use an http(s):// URL, a `.git` repository URL, git@host:repo or ssh://")
}
