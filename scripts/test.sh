#!/usr/bin/env bash
# The README's second command (and what .ci/run calls): set up, then formatting, lints and every test.
set -euo pipefail
source "$(dirname "$0")/setup.sh"

# setup.sh installed every tool the tests use: a test that finds one missing fails here rather than skip.
export KILN_TESTS_REQUIRE_ALL=1

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --quiet
