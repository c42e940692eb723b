//! Reading source files for the front ends, which do no IO themselves: a Dockerfile (or stdin) into a
//! `SourceFile`, and a `.build` program with its imports and monorepo packages into checked modules
//! (`Session`) that the evaluator asks for through `frontend::buildfile::lower::Loader`; base images'
//! configs, from local layouts and (when building) registries (`image_env`); and an older
//! revision of the sources out of git, for `kiln affected --since` (`GitRepo`).

mod buildfile;
mod dockerfile;
mod evalcache;
mod git;
mod image;
mod walk;

pub use crate::frontend::buildfile::lower::{
    EvalOptions, Finished, Lowered, PackageContexts, Targeted, Trace, options_digest,
};
pub use buildfile::{
    Loaded, ModuleFile, PACKAGE_FILE, ROOT_MARKER, STD, Saving, Session, lower_file, lower_targets,
};
pub use dockerfile::read_dockerfile;
pub use evalcache::{EvalCache, FileSummary, kiln_identity};
pub(crate) use git::GitRepo;
pub use image::{Pulls, image_env, open_store};
pub(crate) use walk::{Entered, build_files_under, listing_sum};
