#!/usr/bin/env bash
# Peak memory of a build whose context holds one large file (default 1 GiB of random bytes): kiln must
# stream it (context hashing, COPY, the leak guard, tar + gzip of the layer) rather than hold it.
# Prints the peak resident set size of kiln and every process it started.
# Usage: bench/memory.sh [SIZE_MIB]   (run as root after scripts/setup.sh; builds kiln in release mode)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
cargo build --release --quiet
work=$(mktemp -d /var/tmp/kiln-memory.XXXXXX)
trap 'rm -rf "$work"' EXIT
tests/fixtures/make-base-image.sh "$work/base" >/dev/null
mkdir -p "$work/ctx"
head -c $((size_mib * 1024 * 1024)) /dev/urandom > "$work/ctx/big.bin"
printf 'FROM base\nCOPY big.bin /big.bin\nRUN test -s /big.bin\n' > "$work/ctx/Dockerfile"
echo "secret-for-the-leak-guard" > "$work/secret"
python3 - "$work" <<'PY'
import resource, subprocess, sys, time
work = sys.argv[1]
start = time.time()
subprocess.run(["target/release/kiln", "build", "--progress", "quiet", "--store", f"{work}/store",
                "--build-context", f"base=oci-layout://{work}/base",
                "--secret", f"id=s,src={work}/secret",
                "-o", f"type=oci,dest={work}/out", f"{work}/ctx"], check=True, stdout=subprocess.DEVNULL)
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"context file: {sys.argv[0] and ''}{__import__('os').path.getsize(work + '/ctx/big.bin') / 2**20:.0f} MiB, "
      f"build + export: {time.time() - start:.1f} s, peak RSS: {peak_kib / 1024:.1f} MiB")
PY
