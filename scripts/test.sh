#!/usr/bin/env bash
# The README's second command (and what .ci/run calls): set up, then formatting, lints and every test.
set -euo pipefail
source "$(dirname "$0")/setup.sh"

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --quiet
