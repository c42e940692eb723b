//! The front ends, and what both share: source text becomes a `Program` (the IR in `graph`), a list of operations
//! wired to their inputs.
//!
//! Lowering resolves everything that is known at compile time (variable expansion, stage references,
//! mount options) and nothing that is not: no file contents, no image metadata, no network.

pub mod buildfile;
pub mod convert;
pub mod dockerfile;
pub mod image;
pub mod lint;
pub mod mount;
pub mod quote;
pub mod shell;

use std::collections::BTreeMap;

use crate::diag::Located;
use crate::graph::NamedContext;

/// Resolves a base image's config, so `$PATH` in `ENV PATH=/x:$PATH` means the image's PATH and a
/// relative WORKDIR is under the image's WorkingDir, as in BuildKit (which resolves image config while
/// converting). Given an expanded image reference; `Ok(None)` when the image is not looked at now
/// (compile-only), an error when it should be and cannot (an unreachable registry), which lowering
/// places at the reference.
#[derive(Clone, Default)]
pub struct ImageEnv(Option<std::sync::Arc<ImageEnvFn>>);

type ImageEnvFn = dyn Fn(&str, &crate::platform::Platform) -> crate::diag::Result<Option<BaseConfig>>
    + Send
    + Sync;

/// What lowering needs of a base image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseConfig {
    pub env: Vec<(String, String)>,
    /// The image's WorkingDir, when it names one.
    pub working_dir: Option<String>,
    /// The image's `OnBuild` triggers, which a Dockerfile stage built on it runs first.
    pub onbuild: Vec<String>,
}

impl ImageEnv {
    pub fn new(
        f: impl Fn(&str, &crate::platform::Platform) -> crate::diag::Result<Option<BaseConfig>>
        + Send
        + Sync
        + 'static,
    ) -> ImageEnv {
        ImageEnv(Some(std::sync::Arc::new(f)))
    }
    /// The config of `reference` for `platform`; an error is placed at `at`, where the reference is
    /// written.
    pub fn get(
        &self,
        reference: &str,
        platform: &crate::platform::Platform,
        at: Located,
    ) -> crate::diag::Result<BaseConfig> {
        let known = match &self.0 {
            Some(f) => f(reference, platform).map_err(|d| d.label(at, "this base image"))?,
            None => None,
        };
        Ok(match known {
            Some(c) => c,
            None if reference == "scratch" => BaseConfig::scratch(),
            None => BaseConfig::default(),
        })
    }
}

impl BaseConfig {
    /// BuildKit's empty image, what `FROM scratch` starts from: the default PATH (so `$PATH` expands to
    /// it) and WorkingDir `/`.
    pub fn scratch() -> BaseConfig {
        BaseConfig {
            env: vec![(
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            )],
            working_dir: Some("/".into()),
            ..BaseConfig::default()
        }
    }
}

impl std::fmt::Debug for ImageEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ImageEnv(resolver)"
        } else {
            "ImageEnv(none)"
        })
    }
}

/// What the command line contributes to lowering.
#[derive(Clone, Debug, Default)]
pub struct LowerOptions {
    pub build_args: BTreeMap<String, String>,
    pub contexts: BTreeMap<String, NamedContext>,
    pub target: Option<String>,
    /// The main context's `.dockerignore` patterns.
    pub excludes: Vec<String>,
    /// Compile-only (`kiln graph`): what only build-time input could settle (a base image given by an
    /// unset build arg, an empty COPY source) stays as written instead of failing. Builds never set it.
    pub lenient: bool,
    /// Where `--target` was given, for errors about it.
    pub target_at: Option<Located>,
    /// Where each `--param NAME=...` was given, for the error when no module declares NAME.
    pub params_at: BTreeMap<String, Located>,
    pub image_env: ImageEnv,
    /// `--platform`: what the stages are built for unless a `FROM --platform` says otherwise
    /// (`TARGETPLATFORM`).
    pub platform: crate::platform::Platform,
    /// The machine building (`BUILDPLATFORM`).
    pub build_platform: crate::platform::Platform,
    /// Several platforms are built: step names say which platform each is for (not in any digest).
    pub multi_platform: bool,
}

pub use crate::paths::{clean as clean_path, join as join_path};
