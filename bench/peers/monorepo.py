"""The monorepo workload of bench/peers.sh (kiln only: the peers have no equivalent): a repository from
bench/gen-monorepo.py with MONOREPO_TARGETS targets (default 10,000), its base `busybox` given as the
test busybox layout (`--build-context busybox=oci-layout://...`). After one untimed full build:

  build cached   `kiln build //...` with every step in the store (the first run writes the build's memo,
                 the others are answered from it: see src/cli/memo.rs)
  build comment  `kiln build //...` after a comment-only edit of the middle package's BUILD file: no step
                 runs, but the memo no longer holds, so everything is compiled and every record read
  graph cold     `kiln graph //...` with an empty store (nothing evaluated before)
  graph comment  `kiln graph //...` after a comment-only edit of the middle package's BUILD file
  graph command  `kiln graph //...` after a changed command in the middle package (every package after it
                 depends on it through `lib`)

Each edit is new (a counter), made untimed before its timed run; the store holds the evaluation of the
previous run (one untimed warm-up first). Reports median wall ms and the largest peak RSS (MiB)."""
import os, re, shutil, statistics, subprocess, sys, time

from common import RUNS, WORK, Failed, env, log_path, loadavg, record, run_logged

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = ["build cached", "build comment", "graph cold", "graph comment", "graph command"]


def run():
    """Returns (rows for results.json, the markdown table), or raises Failed."""
    n = int(env.get("MONOREPO_TARGETS", "10000"))
    repo, store, gstore = f"{WORK}/monorepo", f"{WORK}/kiln/monorepo-store", f"{WORK}/kiln/monorepo-graph-store"
    log = log_path("monorepo", "kiln")
    for d in (repo, store, gstore):
        shutil.rmtree(d, ignore_errors=True)
    subprocess.run([sys.executable, os.path.join(os.path.dirname(HERE), "gen-monorepo.py"), repo, str(n)],
                   check=True, stdout=subprocess.DEVNULL)
    packages = (n - 1 + 4) // 5
    mid = f"{repo}/pkg/p{packages // 2}/BUILD.build"
    with open(mid) as f:
        orig = f.read()
    kiln = env["KILN"]
    build = [kiln, "build", "--progress", "quiet", "--build-context",
             f"busybox=oci-layout://{env['BUSYBOX_OCI']}", "//..."]
    graph = [kiln, "graph", "//..."]
    t0 = time.time()
    secs, ok, _ = run_logged(build, log, "full build (untimed)", {"KILN_STORE": store}, cwd=repo)
    if not ok:
        raise Failed(log)
    print(f"monorepo   {n} targets: full build {secs:.0f} s (untimed, load {loadavg()})", flush=True)
    comment = lambda i: orig + f"# edit {i}\n"
    edits = {"build comment": comment, "graph comment": comment,
             "graph command": lambda i: re.sub(r'echo deps (\d+) >', rf'echo deps \1 v{i} >', orig, count=1)}
    rows, lines = [], []
    for scenario in SCENARIOS:
        times, peak = [], 0.0
        cmd, st = (build, store) if scenario.startswith("build") else (graph, gstore)
        if scenario in edits:  # the previous evaluation in the store
            run_logged(cmd, log, f"{scenario} warm-up", {"KILN_STORE": st}, cwd=repo)
        for i in range(1, RUNS + 1):
            if scenario == "graph cold":
                shutil.rmtree(gstore, ignore_errors=True)
            if scenario in edits:
                with open(mid, "w") as f:
                    f.write(edits[scenario](i))
            os.sync()
            secs, ok, rss = run_logged(cmd, log, f"{scenario} run {i}", {"KILN_STORE": st}, cwd=repo)
            record("monorepo", scenario, "kiln", i, secs, "ok" if ok else "failed")
            if not ok:
                raise Failed(log)
            times.append(secs)
            peak = max(peak, rss)
        with open(mid, "w") as f:
            f.write(orig)
        med = statistics.median(times)
        rows.append({"workload": "monorepo", "scenario": scenario, "tool": "kiln", "times": times,
                     "peak_rss_mib": peak, "targets": n})
        lines.append(f"| {scenario} | {med * 1000:.0f} | {min(times) * 1000:.0f} | {max(times) * 1000:.0f} | "
                     f"{peak:.0f} |")
        print(f"monorepo   {scenario:<13} kiln {med * 1000:.0f} ms, peak {peak:.0f} MiB  "
              f"({time.time() - t0:.0f} s, load {loadavg()})", flush=True)
        t0 = time.time()
    table = [f"monorepo, {n} targets ({packages} packages of 5 and the base; the edited file: "
             f"pkg/p{packages // 2}/BUILD.build), kiln only:", "",
             "| scenario | median ms | min ms | max ms | peak RSS MiB |", "|---|---:|---:|---:|---:|"] + lines
    return rows, "\n".join(table)
