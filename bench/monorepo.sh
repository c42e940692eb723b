#!/usr/bin/env bash
# Compile time and peak memory of `kiln graph //...` on generated monorepos (bench/gen-monorepo.py), for
# each size given (default 2000 and 10000 targets): unchanged, then after a comment-only edit and after a
# semantic edit (a changed command) of the package in the middle of the dependency chain. Each figure is
# the median wall time of RUNS runs (default 5) and the largest peak RSS. Compile only: nothing is built;
# each run gets an empty store (KILN_STORE), so every run is cold. bench/peers.sh's `monorepo` workload
# measures a fully cached `kiln build //...` with a warm store.
# Usage: bench/monorepo.sh [N...]   (builds kiln in release mode unless KILN is set)
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(2000 10000)
if [ -z "${KILN:-}" ]; then
  cargo build --release --quiet
  KILN=$PWD/target/release/kiln
fi
work=$(mktemp -d /var/tmp/kiln-monorepo.XXXXXX)
trap 'rm -rf "$work"' EXIT
for n in "${sizes[@]}"; do
  python3 bench/gen-monorepo.py "$work/m$n" "$n" >/dev/null
  KILN=$KILN RUNS=${RUNS:-5} python3 - "$work/m$n" "$n" "$work/store" <<'PY'
import os, re, resource, shutil, statistics, subprocess, sys, time
repo, n, store = sys.argv[1], sys.argv[2], sys.argv[3]
kiln, runs = os.environ["KILN"], int(os.environ["RUNS"])

def graph():
    shutil.rmtree(store, ignore_errors=True)
    start = time.perf_counter()
    out = subprocess.run([kiln, "graph", "//..."], cwd=repo, check=True, capture_output=True,
                         env=dict(os.environ, KILN_STORE=store))
    return out.stdout, time.perf_counter() - start

def report(name, times):
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"{n} targets, {name}: median {statistics.median(times)*1000:.0f} ms "
          f"(min {min(times)*1000:.0f}, max {max(times)*1000:.0f}), peak RSS so far {peak/1024:.0f} MiB")

out, _ = graph()
lines = out.decode().splitlines()
print(f"{sum(1 for l in lines if l.startswith('root '))} targets, "
      f"{sum(1 for l in lines if not l.startswith('root '))} graph nodes")
report("unchanged", [graph()[1] for _ in range(runs)])
mid = int(n) // 10 // 2
build = os.path.join(repo, "pkg", f"p{mid}", "BUILD.build")
for kind in ("comment", "semantic"):
    times = []
    for i in range(runs):
        text = open(build).read()
        if kind == "comment":
            text += f"# edit {i}\n"
        else:
            text = re.sub(r"echo deps \d+( \d+)?", f"echo deps {mid} {i}", text, count=1)
        open(build, "w").write(text)
        times.append(graph()[1])
    report(f"after a {kind} edit of //pkg/p{mid}", times)
PY
done
