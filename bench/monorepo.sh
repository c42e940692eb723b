#!/usr/bin/env bash
# Compile time and peak memory of `kiln graph //...` on generated monorepos (bench/gen-monorepo.py):
# the median wall time of 5 runs and the largest peak RSS, for each size given (default 2000 and 10000
# targets). Compile only: nothing is built; each run gets an empty store (KILN_STORE), so every run is
# cold. bench/peers.sh's `monorepo` workload measures the rest: a fully cached `kiln build //...` and
# `kiln graph //...` after edits, with a warm store.
# Usage: bench/monorepo.sh [N...]   (builds kiln in release mode)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(2000 10000)
cargo build --release --quiet
work=$(mktemp -d /var/tmp/kiln-monorepo.XXXXXX)
trap 'rm -rf "$work"' EXIT
for n in "${sizes[@]}"; do
  python3 bench/gen-monorepo.py "$work/m$n" "$n" >/dev/null
  python3 - "$work/m$n" "$n" "$work/store" <<'PY'
import os, resource, shutil, statistics, subprocess, sys, time
repo, n, store = sys.argv[1], sys.argv[2], sys.argv[3]
kiln = os.path.abspath("target/release/kiln")
times, peak = [], 0
for _ in range(5):
    shutil.rmtree(store, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    out = subprocess.run([kiln, "graph", "//..."], cwd=repo, check=True, capture_output=True,
                         env=dict(os.environ, KILN_STORE=store))
    times.append(time.perf_counter() - start)
    peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
roots = sum(1 for l in out.stdout.decode().splitlines() if l.startswith("root "))
nodes = sum(1 for l in out.stdout.decode().splitlines() if not l.startswith("root "))
print(f"{roots} targets ({nodes} graph nodes): kiln graph //... median {statistics.median(times)*1000:.0f} ms, "
      f"peak RSS {peak/1024:.0f} MiB")
PY
done
