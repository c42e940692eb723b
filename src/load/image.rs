//! Base image configs for lowering, read before it as BuildKit resolves them before converting: from
//! local OCI layouts always, and from registries when building (pulled into the store through kiln's
//! registry client, once per build, so the image the build imports is the one lowering read).

use std::path::Path;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::diag::{Diagnostic, Result};
use crate::frontend::{BaseConfig, ImageEnv};
use crate::graph::Dag;
use crate::graph::op::Op;
use crate::platform::Platform;
use crate::store::Store;

/// Where registry images come from when lowering may pull them: the build's store and registry
/// options (whose record of pulled images the build shares).
#[derive(Clone)]
pub struct Pulls {
    store: Arc<Store>,
    registry: crate::registry::Options,
    /// Pulls that failed while lowering, by reference. Lowering goes on without the image's config, so
    /// a mistake in the input (a later line, a secret check) is reported first, without the network.
    failed: Arc<Mutex<Vec<(String, Diagnostic)>>>,
    /// `kiln build --locked`: the lock every registry base image must be pinned in, and match.
    lock: Option<Arc<crate::lock::Lock>>,
}

impl Pulls {
    /// The store the build pulls into (its evaluation cache lives there too).
    pub fn store_root(&self) -> &std::path::Path {
        self.store.root()
    }

    pub fn new(store: Arc<Store>, registry: crate::registry::Options) -> Pulls {
        Pulls {
            store,
            registry,
            failed: Arc::default(),
            lock: None,
        }
    }

    /// The lock a `--locked` build follows.
    pub(crate) fn lock(&self) -> Option<&crate::lock::Lock> {
        self.lock.as_deref()
    }

    /// Holds every registry base image to `lock` (`kiln build --locked`).
    pub(crate) fn locked(mut self, lock: crate::lock::Lock) -> Pulls {
        self.lock = Some(Arc::new(lock));
        self
    }

    /// The first pull that failed while lowering, placed where `graph` names the image.
    pub fn failure(&self, graph: &Dag) -> Option<Diagnostic> {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        let (reference, d) = failed.first()?;
        let at = graph.dag.node_weights().find_map(|n| match &n.op {
            Op::Image { reference: r, .. } if r == reference => n.at.clone(),
            _ => None,
        });
        Some(match at {
            Some(at) => d.clone().label(at, "this base image"),
            None => d.clone(),
        })
    }
}

/// The configs of base images: `oci-layout://` references read from disk; registry references
/// pulled when `pulls` is given (a build), else not looked at (`kiln graph` never touches the network).
pub fn image_env(pulls: Option<Pulls>) -> ImageEnv {
    ImageEnv::new(move |reference, platform| {
        if reference == "scratch" {
            return Ok(None);
        }
        if let Some(rest) = reference.strip_prefix("oci-layout://") {
            let (dir, tag) = crate::oci::split_layout_ref(rest);
            // A layout that cannot be read now is reported, with its reason, by the build's import.
            return Ok(read_config(Path::new(dir), tag, platform).ok());
        }
        let Some(p) = &pulls else {
            return Ok(None);
        };
        // A base the lock lacks is refused before the registry is asked: it may not even exist.
        let pulled = match &p.lock {
            Some(lock) => locked_pin(lock, reference, platform).and_then(|pin| {
                let layout = crate::registry::pull(&p.store, reference, platform, &p.registry)?;
                check_pin(pin, reference, platform, layout)
            }),
            None => crate::registry::pull(&p.store, reference, platform, &p.registry),
        };
        let config = pulled.and_then(|layout| {
            read_config(&layout, None, platform).map_err(|e| {
                Diagnostic::env(format!("cannot read the config of `{reference}`: {e}"))
            })
        });
        match config {
            Ok(c) => Ok(Some(c)),
            Err(d) => {
                let mut failed = p.failed.lock().unwrap_or_else(|e| e.into_inner());
                failed.push((reference.to_string(), d));
                Ok(None)
            }
        }
    })
}

/// `--locked`: the pin of `reference` for `platform`, which the lock must hold. A reference pinned by
/// digest floats no more than the lock would pin it, so it needs none.
fn locked_pin<'a>(
    lock: &'a crate::lock::Lock,
    reference: &str,
    platform: &Platform,
) -> Result<Option<&'a crate::lock::Pin>> {
    if reference.contains('@') {
        return Ok(None);
    }
    let key = crate::lock::ImageKey {
        reference: reference.to_string(),
        platform: platform.to_string(),
    };
    match lock.images.get(&key) {
        Some(pin) => Ok(Some(pin)),
        None => Err(Diagnostic::input(format!(
            "base image `{reference}` ({platform}) is not in {}",
            crate::lock::FILE_NAME
        ))
        .help("run `kiln lock` to add it, then build with --locked again")),
    }
}

/// `--locked`: the image the tag resolved to (`layout`) must be the one the lock pins.
fn check_pin(
    pin: Option<&crate::lock::Pin>,
    reference: &str,
    platform: &Platform,
    layout: std::path::PathBuf,
) -> Result<std::path::PathBuf> {
    let Some(pin) = pin else {
        return Ok(layout);
    };
    let image = crate::oci::read_image_for(&layout, None, platform)
        .map_err(|e| Diagnostic::env(format!("cannot read the image `{reference}`: {e}")))?;
    if image.manifest_digest != pin.digest.as_str() {
        return Err(Diagnostic::input(format!(
            "base image `{reference}` ({platform}) now resolves to {}, but {} pins {}",
            image.manifest_digest,
            crate::lock::FILE_NAME,
            pin.digest
        ))
        .help(format!(
            "run `kiln lock --update {reference}` to take the new image, or point the tag back"
        )));
    }
    Ok(layout)
}

/// The parts of an image's config lowering uses. The raw JSON, since oci-spec's typed config has no
/// `OnBuild` (a Docker extension).
fn read_config(
    layout: &Path,
    tag: Option<&str>,
    platform: &Platform,
) -> std::io::Result<BaseConfig> {
    let image = crate::oci::read_image_for(layout, tag, platform)?;
    let raw = std::fs::read(crate::oci::blob_path(layout, &image.config_digest)?)?;
    let json: Value = serde_json::from_slice(&raw).map_err(std::io::Error::other)?;
    let config = &json["config"];
    let strings = |key: &str| -> Vec<String> {
        config[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    let env = strings("Env")
        .into_iter()
        .filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let working_dir = config["WorkingDir"]
        .as_str()
        .filter(|d| !d.is_empty())
        .map(String::from);
    Ok(BaseConfig {
        env,
        working_dir,
        onbuild: strings("OnBuild"),
    })
}

/// Opens the store a build uses, for the pulls lowering makes.
pub fn open_store(root: &Path) -> Result<Arc<Store>> {
    Ok(Arc::new(Store::open(root, crate::store::Access::Shared)?))
}
