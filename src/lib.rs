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
pub mod layer;
pub mod monorepo;
pub mod oci;
pub mod options;
pub mod progress;
pub mod registry;
pub mod remote;
pub mod secret;
pub mod solve;
pub mod store;

pub use cli::BuildRequest;

/// Runs a validated build ([`BuildRequest`], which `kiln build` makes from its command line): checks
/// that every secret, agent and entitlement the graph needs is given, solves the graph (here, or on the
/// REAPI server the request names), runs the leak guard over every image, then writes the outputs,
/// pushes, and exports the cache. Returns what each step produced.
///
/// An unprivileged caller must have entered its user namespace (`exec::userns::enter`) before any
/// thread started; the request's construction from the command line does.
pub fn build(request: BuildRequest) -> diag::Result<solve::Summary> {
    cli::execute(request)
}
