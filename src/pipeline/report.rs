//! What a build tells about its images besides progress, as buildx tells it: `--iidfile` (the image
//! ID), `--metadata-file` (the exporter's response as JSON) and `-q` (the image ID on stdout), plus the
//! image config labels of `--label`, which go in before any of it is computed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::diag::{Diagnostic, Result};
use crate::digest::Digest;

/// `--iidfile`, `--metadata-file`, `-q`.
#[derive(Default)]
pub struct Report {
    pub iidfile: Option<PathBuf>,
    pub metadata_file: Option<PathBuf>,
    /// `-q`: the image ID is stdout's only line.
    pub print_id: bool,
}

impl Report {
    /// Whether anything here needs the image's digests.
    pub(super) fn wanted(&self) -> bool {
        self.iidfile.is_some() || self.metadata_file.is_some() || self.print_id
    }

    /// buildx removes an old ID file first, so a failed build leaves none behind to be mistaken for
    /// this one's.
    pub(super) fn clear(&self) -> Result<()> {
        for path in [&self.iidfile, &self.metadata_file].into_iter().flatten() {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Diagnostic::io(
                        format!("cannot remove the old {}", path.display()),
                        e,
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes the files and prints the ID, for the images built: one (a build with one target) or
    /// several (by target name; the metadata file then has one object per target, as `buildx bake`
    /// writes it).
    pub(super) fn write(&self, images: &[(String, Described)]) -> Result<()> {
        // buildx's rule: the config digest when the exporter gives one (every single-platform
        // image), the manifest's (a multi-platform build's index) otherwise.
        let id = |d: &Described| d.config.as_ref().unwrap_or(&d.manifest).to_string();
        if let Some(path) = &self.iidfile {
            let text = images.first().map_or_else(String::new, |(_, d)| id(d));
            write_file(path, text.as_bytes())?;
        }
        if let Some(path) = &self.metadata_file {
            let value = match images {
                [(_, d)] => d.metadata(),
                _ => Value::Object(
                    images
                        .iter()
                        .map(|(name, d)| (name.clone(), d.metadata()))
                        .collect(),
                ),
            };
            let mut text = serde_json::to_vec_pretty(&value)
                .map_err(|e| Diagnostic::env(format!("cannot write the metadata: {e}")))?;
            text.push(b'\n');
            write_file(path, &text)?;
        }
        if self.print_id {
            for (_, d) in images {
                crate::progress::stdout(&format!("{}\n", id(d)));
            }
        }
        Ok(())
    }
}

/// One built image as the exporter's response describes it.
pub(super) struct Described {
    /// The image config's digest; none for an image index.
    pub(super) config: Option<Digest>,
    /// The digest of the image's manifest, or of its index.
    pub(super) manifest: Digest,
    pub(super) manifest_size: usize,
    pub(super) media_type: &'static str,
    /// The names it was given (`-t`, `-o name=`), as given.
    pub(super) names: Vec<String>,
}

impl Described {
    /// A multi-platform build's image: its index, whose descriptor BuildKit gives without a config
    /// digest.
    pub(super) fn index(digest: Digest, size: usize, names: Vec<String>) -> Described {
        Described {
            config: None,
            manifest: digest,
            manifest_size: size,
            media_type: "application/vnd.oci.image.index.v1+json",
            names,
        }
    }

    /// BuildKit's exporter response keys, as buildx writes them to `--metadata-file`.
    fn metadata(&self) -> Value {
        let mut m = json!({
            "containerimage.digest": self.manifest.as_str(),
            "containerimage.descriptor": {
                "mediaType": self.media_type,
                "digest": self.manifest.as_str(),
                "size": self.manifest_size,
            },
        });
        if let Some(config) = &self.config {
            m["containerimage.config.digest"] = json!(config.as_str());
            m["containerimage.descriptor"]["annotations"] =
                json!({"config.digest": config.as_str()});
        }
        if !self.names.is_empty() {
            m["image.name"] = Value::String(self.names.join(","));
        }
        m
    }
}

/// `--label KEY=VALUE`: set in the image config's `Labels`, over what the build set (buildx hands them
/// to the frontend as `label:KEY`, which sets them after the Dockerfile's LABELs).
pub(super) fn apply_labels(config: &mut Value, labels: &BTreeMap<String, String>) {
    if labels.is_empty() {
        return;
    }
    let inner = &mut config["config"];
    if !inner.is_object() {
        *inner = json!({});
    }
    let target = &mut inner["Labels"];
    if !target.is_object() {
        *target = json!({});
    }
    for (k, v) in labels {
        target[k.as_str()] = Value::String(v.clone());
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes)
        .map_err(|e| Diagnostic::io(format!("cannot write {}", path.display()), e))
}

/// `--label` on every image the build selected; a selected target that is no image cannot take one.
pub(super) fn label(
    graph: &crate::graph::Dag,
    summary: &mut crate::solve::Summary,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    if labels.is_empty() {
        return Ok(());
    }
    for (name, root) in &graph.roots {
        match summary.outputs.get_mut(root) {
            Some(crate::solve::Output::Image { config, .. }) => {
                apply_labels(config.get_mut(), labels)
            }
            _ => return Err(not_an_image(name, "--label")),
        }
    }
    Ok(())
}

fn not_an_image(target: &str, flag: &str) -> Diagnostic {
    Diagnostic::input(format!(
        "target `{target}` is not an image, so {flag} cannot apply to it"
    ))
    .help(format!(
        "select image targets with --target, or drop {flag}"
    ))
}

/// Each selected image's digests (its blobs are in the store by now, or made here once), by target.
pub(super) fn describe(
    graph: &crate::graph::Dag,
    store: &crate::store::Store,
    settings: &crate::export::Settings,
    summary: &crate::solve::Summary,
    names: &[String],
) -> Result<Vec<(String, Described)>> {
    let mut described = Vec::new();
    for (target, root) in &graph.roots {
        let Some(crate::solve::Output::Image { layers, config }) = summary.outputs.get(root) else {
            return Err(not_an_image(target, "--iidfile, --metadata-file or -q"));
        };
        let image = crate::export::image(store, layers, config.get(), settings)?;
        described.push((
            target.clone(),
            Described {
                config: Some(image.config_digest.clone()),
                manifest: Digest::of(&image.manifest),
                manifest_size: image.manifest.len(),
                media_type: "application/vnd.oci.image.manifest.v1+json",
                names: names.to_vec(),
            },
        ));
    }
    Ok(described)
}
