//! The provenance of an image: an in-toto Statement v1 whose subject is the image manifest, with a SLSA
//! provenance v1 predicate made from the build graph: the build's parameters (front end, source file and
//! digest, target, build args, platform), every input the image's graph resolved by digest (base images,
//! the files taken from each context, downloads, git commits), the builder, and the build's times. With
//! `mode=max` the ids of the secrets and SSH agents its steps mounted are listed too; a value never is.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::stable_graph::NodeIndex;
use serde_json::{Value, json};

use super::{Mode, rfc3339};
use crate::digest::{Digest, Encoder};
use crate::graph::op::RunMount;
use crate::graph::{Dag, Op};
use crate::solve::{Resolved, Summary};

/// The `buildType` of kiln's provenance: a URI that names the structure of the parameters below.
pub const BUILD_TYPE: &str = "urn:kiln:build-type:image:v1";

/// What the build was asked to do, as the command line gave it.
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    /// `dockerfile` or `build` (kiln's language).
    pub frontend: String,
    /// The source file (as named on the command line) and the digest of its bytes.
    pub source: Option<(String, Digest)>,
    pub target: Option<String>,
    /// `--build-arg`s, without those that look like secrets.
    pub args: BTreeMap<String, String>,
    pub platform: String,
    /// Names the builder: `runDetails.builder.id`.
    pub builder_id: String,
    /// Seconds since the epoch.
    pub started: i64,
    pub finished: i64,
}

/// The provenance statement of the image `root` of the graph, whose manifest is `manifest`.
pub fn statement(
    graph: &Dag,
    summary: &Summary,
    root: NodeIndex,
    name: &str,
    manifest: &Digest,
    inv: &Invocation,
    mode: Mode,
) -> Value {
    let nodes = ancestors(graph, root);
    let mut external = json!({
        "frontend": inv.frontend,
        "platform": inv.platform,
        "args": inv.args,
    });
    if let Some((file, digest)) = &inv.source {
        external["source"] = json!({
            "path": file,
            "digest": {"sha256": digest.hex()},
        });
    }
    if let Some(t) = &inv.target {
        external["target"] = json!(t);
    }
    let mut internal = json!({
        "kiln": {
            "version": env!("CARGO_PKG_VERSION"),
            "graph": graph.dag[root].digest.to_string(),
        },
    });
    if mode == Mode::Max {
        let (secrets, ssh) = mounted_ids(graph, &nodes);
        internal["kiln"]["secrets"] = json!(secrets);
        internal["kiln"]["ssh"] = json!(ssh);
    }
    let subject_name = if name.is_empty() { "image" } else { name };
    json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{
            "name": subject_name,
            "digest": {"sha256": manifest.hex()},
        }],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": internal,
                "resolvedDependencies": dependencies(summary, &nodes),
            },
            "runDetails": {
                "builder": {"id": inv.builder_id},
                "metadata": {
                    "invocationId": invocation_id(graph, root, inv),
                    "startedOn": rfc3339(inv.started),
                    "finishedOn": rfc3339(inv.finished),
                },
            },
        },
    })
}

/// `root` and every node it needs.
fn ancestors(graph: &Dag, root: NodeIndex) -> BTreeSet<NodeIndex> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        if seen.insert(n) {
            stack.extend(
                graph
                    .dag
                    .neighbors_directed(n, petgraph::Direction::Incoming),
            );
        }
    }
    seen
}

/// The inputs the nodes resolved to, as SLSA resource descriptors, sorted and without repeats.
fn dependencies(summary: &Summary, nodes: &BTreeSet<NodeIndex>) -> Vec<Value> {
    let mut images = BTreeMap::new();
    let mut downloads = BTreeMap::new();
    let mut commits = BTreeMap::new();
    let mut files: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in nodes
        .iter()
        .filter_map(|n| summary.resolved.get(n))
        .flatten()
    {
        match r {
            Resolved::Image {
                reference,
                manifest,
            } => {
                images.insert(
                    (image_uri(reference, manifest), manifest.hex().to_string()),
                    reference,
                );
            }
            Resolved::Download { url, blob } => {
                downloads.insert(url.clone(), blob.hex().to_string());
            }
            Resolved::Git { url, commit } => {
                // The ref and subdirectory after `#` chose the commit, which pins the source.
                let repo = url.split_once('#').map_or(url.as_str(), |(r, _)| r);
                commits.insert(format!("git+{repo}@{commit}"), commit.clone());
            }
            Resolved::Files { context, digest } => {
                files
                    .entry(context.clone())
                    .or_default()
                    .insert(digest.clone());
            }
        }
    }
    let mut out = Vec::new();
    for ((uri, hex), reference) in images {
        out.push(json!({"uri": uri, "digest": {"sha256": hex}, "annotations": {"kiln.reference": reference}}));
    }
    for (context, selections) in files {
        // The file sets the image's steps took from the context, each by content, as one digest.
        let mut e = Encoder::new("kiln/context-files/v1");
        e.list(selections.len());
        for s in &selections {
            e.str(s);
        }
        out.push(json!({
            "name": format!("context:{context}"),
            "digest": {"sha256": e.finish().hex()},
        }));
    }
    for (url, hex) in downloads {
        out.push(json!({"uri": url, "digest": {"sha256": hex}}));
    }
    for (uri, commit) in commits {
        out.push(json!({"uri": uri, "digest": {"gitCommit": commit}}));
    }
    out
}

/// A base image as a package URL pinned by digest (`pkg:docker/library/debian@sha256:...`), or, for an
/// OCI layout on disk, `oci-layout://` with the digest.
fn image_uri(reference: &str, manifest: &Digest) -> String {
    if let Some(rest) = reference.strip_prefix("oci-layout://") {
        let (dir, _) = crate::oci::split_layout_ref(rest);
        return format!("oci-layout://{dir}@{manifest}");
    }
    let Ok(name) = crate::registry::ImageName::parse(reference) else {
        return format!("{reference}@{manifest}");
    };
    // purl's docker type: the repository as the name, the digest as the version, and a registry other
    // than Docker Hub as `repository_url`.
    let mut purl = format!(
        "pkg:docker/{}@{}",
        name.repository,
        manifest.as_str().replace(':', "%3A")
    );
    if name.registry != "docker.io" {
        purl.push_str(&format!("?repository_url={}", name.registry));
    }
    purl
}

/// The ids of the secrets and SSH agents the nodes' steps mount, sorted.
fn mounted_ids(graph: &Dag, nodes: &BTreeSet<NodeIndex>) -> (Vec<String>, Vec<String>) {
    let mut secrets = BTreeSet::new();
    let mut ssh = BTreeSet::new();
    for n in nodes {
        if let Op::Run(r) = &graph.dag[*n].op {
            secrets.extend(r.secrets.iter().map(|s| s.id.clone()));
            for m in &r.mounts {
                if let RunMount::Ssh { id, .. } = m {
                    ssh.insert(id.clone());
                }
            }
        }
    }
    (secrets.into_iter().collect(), ssh.into_iter().collect())
}

/// One build's id: its graph, the image and its start, so two builds of one graph differ.
fn invocation_id(graph: &Dag, root: NodeIndex, inv: &Invocation) -> String {
    let mut e = Encoder::new("kiln/invocation/v1");
    e.digest(&graph.dag[root].digest)
        .str(&inv.started.to_string())
        .str(&std::process::id().to_string());
    e.finish().hex()[..32].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Base images as purls pinned by digest: Docker Hub's without a registry, others with
    /// `repository_url`; an OCI layout on disk by its directory.
    #[test]
    fn base_images_are_named_by_digest() {
        let d = Digest::of(b"manifest");
        let hex = d.hex();
        let cases = [
            (
                "debian:12",
                format!("pkg:docker/library/debian@sha256%3A{hex}"),
            ),
            (
                "127.0.0.1:5000/team/app:1",
                format!("pkg:docker/team/app@sha256%3A{hex}?repository_url=127.0.0.1:5000"),
            ),
            (
                "oci-layout:///tmp/base:v1",
                format!("oci-layout:///tmp/base@sha256:{hex}"),
            ),
        ];
        for (reference, uri) in cases {
            assert_eq!(image_uri(reference, &d), uri, "{reference}");
        }
    }
}
