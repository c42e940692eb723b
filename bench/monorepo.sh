#!/usr/bin/env bash
# Compile time and peak memory of `kiln graph //...` on generated monorepos (bench/gen-monorepo.py), for
# each size given (default 2000 and 10000 targets): cold (an empty store, so no evaluation cache), then
# with the evaluation cache the run before left: unchanged, after a comment-only edit and after a
# semantic edit (a changed command) of the package in the middle of the dependency chain. Each figure is
# the median wall time of RUNS runs (default 5) and the peak RSS of that scenario's runs. Compile only:
# nothing is built. bench/peers.sh's `monorepo` workload measures a fully cached `kiln build //...`.
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
import os, re, shutil, statistics, subprocess, sys, time
repo, n, store = sys.argv[1], sys.argv[2], sys.argv[3]
kiln, runs = os.environ["KILN"], int(os.environ["RUNS"])

def graph(fresh):
    if fresh:
        shutil.rmtree(store, ignore_errors=True)
    start = time.perf_counter()
    # GNU time's %M: this run's own peak RSS (getrusage of children keeps the largest so far).
    out = subprocess.run(["/usr/bin/time", "-f", "%M", kiln, "graph", "//..."], cwd=repo, check=True,
                         capture_output=True, env=dict(os.environ, KILN_STORE=store, KILN_EVAL_STATS="1"))
    secs = time.perf_counter() - start
    lines = out.stderr.decode().splitlines()
    stats = next((l for l in lines if l.startswith("evaluation: ")), "")
    return out.stdout, secs, int(lines[-1]), stats

def report(name, results):
    times = [r[1] for r in results]
    print(f"{n} targets, {name}: median {statistics.median(times)*1000:.0f} ms "
          f"(min {min(times)*1000:.0f}, max {max(times)*1000:.0f}), peak RSS {max(r[2] for r in results)/1024:.0f} MiB; "
          f"{results[-1][3]}")

out = graph(True)[0]
lines = out.decode().splitlines()
print(f"{sum(1 for l in lines if l.startswith('root '))} targets, "
      f"{sum(1 for l in lines if not l.startswith('root '))} graph nodes")
report("cold (no evaluation cache)", [graph(True) for _ in range(runs)])
report("unchanged", [graph(False) for _ in range(runs)])
mid = int(n) // 10 // 2
build = os.path.join(repo, "pkg", f"p{mid}", "BUILD.build")
for kind in ("comment", "semantic"):
    results = []
    for i in range(runs):
        text = open(build).read()
        if kind == "comment":
            text += f"# edit {i}\n"
        else:
            text = re.sub(r"echo deps \d+( \d+)?", f"echo deps {mid} {i}", text, count=1)
        open(build, "w").write(text)
        results.append(graph(False))
    report(f"after a {kind} edit of //pkg/p{mid}", results)
PY
done
