//! kiln's integration tests: every test runs the real binary on real Dockerfiles and judges the result with
//! independent tools (umoci, skopeo, tar, gzip readers). One module per theme; `support` is the harness.

mod support;

mod add_git;
mod add_git_ssh;
mod add_url;
mod bad_secret;
mod build_lang;
mod cache;
mod cache_export;
mod cleanup;
mod cli_flags;
mod dir_targets;
mod dockerignore;
mod errors;
mod escape;
mod example;
mod from_image;
mod graph;
mod instructions;
mod isolation;
mod leak_matrix;
mod load;
mod messages;
mod mounts;
mod onbuild;
mod outputs;
mod parallel;
mod path_escape;
mod progress;
mod registry;
mod registry_base;
mod remote;
mod rootless;
mod sandbox;
mod secrets;
mod semantics;
mod ssh;
mod ssh_clone;
mod store;
