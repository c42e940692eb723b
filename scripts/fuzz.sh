#!/usr/bin/env bash
# Fuzzes the Dockerfile parser, the shell-word lexer, the `.build` parser and formatter, the `.build`
# checker's name resolution against its evaluator (build_scope: generated programs), and the secret
# needles and log scrubber with cargo-fuzz (nightly), seeded from BuildKit's conformance data and the
# real-world corpus in ../shared/conformance (when present), kiln's examples, the standard library, the
# `.build` test cases and one structured secret per format.
# Usage: scripts/fuzz.sh [SECONDS per target, default 60] [TARGET... (default: all)]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift $(($# > 0 ? 1 : 0))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(parse shell build_parse build_scope secret)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal

seed() { # target, then files to copy into its corpus
  local dir=fuzz/corpus/$1; shift
  mkdir -p "$dir"
  for f in "$@"; do [ -f "$f" ] && cp "$f" "$dir/$(sha256sum "$f" | cut -c1-16)"; done
  return 0
}
shopt -s nullglob
shared=../shared/conformance
seed parse examples/*/Dockerfile tests/cases/*/*/Dockerfile \
  $shared/buildkit/parser/testfiles/*/Dockerfile $shared/buildkit/parser/testfiles-negative/*/Dockerfile \
  $shared/realworld/*.Dockerfile
seed shell $shared/buildkit/shell/envVarTest $shared/buildkit/shell/wordsTest
seed build_parse std/*.build examples/*.build examples/*/*.build examples/*/*/*.build \
  tests/cases/build/*/*.build
seed build_scope # (its input is the generator's choices, not text: it starts from nothing)
# A secret's value, NUL, then step output cut into chunks at each 0x01 byte: one seed per format.
mkdir -p fuzz/corpus/secret
printf '{"auths":{"r":{"auth":"dTpwYXNzd29yZC0x"}}}\0x cGFzc3dvcmQtMQ==\001=\n70617373\n' > fuzz/corpus/secret/docker
printf 'a:\n  password: yaml-pw-1\n  - &x [*x]\n\0eWFtbC1w\001dy0x\n' > fuzz/corpus/secret/yaml
printf 'export A="q\\"1\nB=plain-value-1 # c\n\0A=plain-val\001ue-1\n' > fuzz/corpus/secret/dotenv
printf 'machine h login u password "p w-1"\nmacdef m\n\0p w-1\n' > fuzz/corpus/secret/netrc
printf '[pypi]\nusername = __token__\npassword = pypi-x1\n  cont\n//r/:_authToken=npm-t-1\n\0pypi-\001x1\n' > fuzz/corpus/secret/ini

for target in "${targets[@]}"; do
  echo "== fuzzing $target for ${seconds}s"
  extra=()
  # The generator's programs grow with its input: start at full length rather than from a few bytes.
  [ "$target" = build_scope ] && extra=(-max_len=1024 -len_control=0)
  cargo +nightly fuzz run "$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 "${extra[@]}"
done
echo "no crash found"
