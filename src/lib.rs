//! kiln: a build-graph compiler and container-image builder in which secrets cannot leak.
//!
//! The pipeline, one module per stage, each depending only on earlier ones:
//! `syntax` → `check` → `lower` → `graph` → `solve` → `exec` → `export`.
//! Beside it sit foundations that no stage owns: `diag` (errors), `digest` (hashing), `options`
//! (key=value lists), `secret` (secret values), `store`, `oci` (image layouts), `registry` (pull and push)
//! and `progress`.
//! `cli` is the driver that wires the stages together.

/// mimalloc for every kiln binary (and the benches): the compile path is allocation-heavy.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod cli;
pub mod diag;
pub mod digest;
pub mod exec;
pub mod export;
pub mod frontend;
pub mod graph;
pub mod ignore;
pub mod layer;
pub mod load;
pub mod monorepo;
pub mod oci;
pub mod options;
pub mod paths;
pub mod progress;
pub mod registry;
pub mod remote;
pub mod secret;
pub mod solve;
pub mod store;
