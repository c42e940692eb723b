#!/usr/bin/env python3
"""The `pull` and `push` workloads of bench/peers.sh: a big base image (bench/peers/make-big-image.sh,
12 gzip layers, about 600 MB unpacked) in the loopback registry at $REG as bench/big:1 and bench/big2:1
(the same but for the last layer).

pull, each tool from nothing (empty store, daemon without images, fresh buildah root):
  cold    kiln: `kiln build` of `FROM $REG/bench/big:1` + `RUN true` (the pull happens while compiling; the
          RUN's own time is reported apart); BuildKit's dockerd: `docker pull`; buildah: `buildah pull`;
          floor: every layer fetched at once by curl and piped into `tar -xz`, nothing checked.
  second  bench/big2:1 after bench/big:1 (untimed): one layer and a config to fetch (the floor fetches
          the one layer).
push, of `FROM $REG/bench/big:1` + `RUN echo app > /app` built beforehand (untimed) by each tool:
  empty   to a fresh registry (every blob sent once);
  held    to a fresh registry whose repository already holds the base (skopeo copied it there);
  mount   to a new repository of $REG, which holds the base in bench/big (cross-repository mount).

Environment: WORK RUNS (PUSH_RUNS for push, default RUNS) KILN REG DKD RESULTS TOOLS (kiln buildkit buildah; the floor always runs), ROOT
(the repository clone). Appends raw times to $RESULTS/pullpush.tsv and prints a markdown table.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request

env = os.environ
WORK, KILN, REG, RESULTS, ROOT = env["WORK"], env["KILN"], env["REG"], env["RESULTS"], env["ROOT"]
RUNS = int(env.get("RUNS", "5"))
# A push to an empty registry takes BuildKit minutes (it compresses every layer again): fewer runs.
RUNS_OF = {"pull": RUNS, "push": int(env.get("PUSH_RUNS", RUNS))}
TOOLS = env.get("TOOLS", "kiln buildkit buildah").split()
WORKLOADS = [w for w in env.get("WORKLOADS", "pull push").split() if w in ("pull", "push")]
DOCKER = ["/usr/bin/docker"]
DENV = dict(env, DOCKER_HOST=f"unix://{env.get('DKD', '')}/docker.sock", DOCKER_BUILDKIT="1")
PP = f"{WORK}/pullpush"
BUILDAH = ["buildah", "--root", f"{PP}/buildah/root", "--runroot", f"{PP}/buildah/runroot",
           "--storage-driver", "overlay"]
LOG = open(f"{RESULTS}/pullpush.log", "a")
TSV = open(f"{RESULTS}/pullpush.tsv", "a")


def sh(cmd, extra_env=None, check=True):
    LOG.write(f"$ {' '.join(cmd)}\n")
    LOG.flush()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=extra_env or env)
    out = r.stdout.decode(errors="replace")
    LOG.write(out)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({r.returncode}): {out[-2000:]}")
    return out


def timed(cmd, extra_env=None):
    t = time.monotonic()
    out = sh(cmd, extra_env)
    return time.monotonic() - t, out


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def dockerfile(body):
    ctx = f"{PP}/ctx"
    fresh(ctx)
    with open(f"{ctx}/Dockerfile", "w") as f:
        f.write(body)
    return ctx


def docker_reset():
    sh(DOCKER + ["system", "prune", "-a", "-f"], DENV)
    sh(DOCKER + ["builder", "prune", "-a", "-f"], DENV)


def buildah_reset():
    sh(BUILDAH + ["rm", "-a"], check=False)
    sh(BUILDAH + ["rmi", "-a", "-f"], check=False)
    shutil.rmtree(f"{PP}/buildah", ignore_errors=True)


def layers_of(image):
    req = urllib.request.Request(f"http://{REG}/v2/bench/{image}/manifests/1",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    return json.load(urllib.request.urlopen(req))["layers"]


def floor(image, have=()):
    """Every layer at once (but those in `have`): curl piped into tar -xz, one directory per layer, no
    checks at all."""
    layers = [l for l in layers_of(image) if l["digest"] not in have]
    dest = f"{PP}/floor"
    fresh(dest)
    t = time.monotonic()
    procs = []
    for i, l in enumerate(layers):
        os.makedirs(f"{dest}/{i}")
        url = f"http://{REG}/v2/bench/{image}/blobs/{l['digest']}"
        procs.append(subprocess.Popen(["sh", "-c", f"curl -sf '{url}' | tar -xzf - -C '{dest}/{i}'"]))
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError("floor: a layer failed")
    secs = time.monotonic() - t
    shutil.rmtree(dest, ignore_errors=True)
    return secs


def run_secs(out):
    """The RUN step's own time from kiln's plain progress (`#2 DONE 1.1s`), or 0."""
    secs = [float(l.split()[-1].rstrip("s")) for l in out.splitlines()
            if l.startswith("#") and " DONE " in l and not l.startswith("#1 ")]
    return secs[-1] if secs else 0.0


def kiln_pull(image, second):
    store = f"{PP}/kiln-store"
    fresh(store)
    base = ["--store", store, "--progress", "plain"]
    if second:
        sh([KILN, "build", *base, dockerfile(f"FROM {REG}/bench/big:1\nRUN true\n")])
    secs, out = timed([KILN, "build", *base, dockerfile(f"FROM {REG}/bench/{image}:1\nRUN true\n")])
    run = run_secs(out)
    return secs - run, {"run": run}


def docker_pull(image, second):
    docker_reset()
    if second:
        sh(DOCKER + ["pull", "-q", f"{REG}/bench/big:1"], DENV)
    return timed(DOCKER + ["pull", "-q", f"{REG}/bench/{image}:1"], DENV)[0], {}


def buildah_pull(image, second):
    buildah_reset()
    if second:
        sh(BUILDAH + ["pull", "-q", "--tls-verify=false", f"{REG}/bench/big:1"])
    return timed(BUILDAH + ["pull", "-q", "--tls-verify=false", f"{REG}/bench/{image}:1"])[0], {}


def floor_pull(image, second):
    have = {l["digest"] for l in layers_of("big")} if second else set()
    return floor(image, have), {}


APP = "RUN echo app > /app\n"


def start_registry(scenario):
    """A fresh registry for `empty` and `held` (stopped and wiped first), else $REG."""
    if scenario == "mount":
        return REG
    d = f"{PP}/registry2"
    sh(["bash", f"{ROOT}/tests/fixtures/start-registry.sh", d, "stop"], check=False)
    shutil.rmtree(d, ignore_errors=True)
    out = sh(["bash", f"{ROOT}/tests/fixtures/start-registry.sh", d])
    reg = [l[5:] for l in out.splitlines() if l.startswith("open=")][0]
    if scenario == "held":
        sh(["skopeo", "copy", "-q", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false",
            f"docker://{REG}/bench/big:1", f"docker://{reg}/bench/app:base"])
    return reg


def target(reg, scenario, tool, i):
    repo = f"bench/app-{tool}-{i}" if scenario == "mount" else "bench/app"
    return f"{reg}/{repo}:1"


def kiln_push(scenario, i):
    store = f"{PP}/kiln-push-store"
    if i == 0 or not os.path.isdir(store):
        fresh(store)
        sh([KILN, "build", "--store", store, "--progress", "plain", "-t", "bench/app",
            dockerfile(f"FROM {REG}/bench/big:1\n{APP}")])
    reg = start_registry(scenario)
    return timed([KILN, "image", "push", "--store", store, "bench/app", target(reg, scenario, "kiln", i)])[0], {}


def docker_push(scenario, i):
    if i == 0:
        docker_reset()
        sh(DOCKER + ["build", "-q", "--network=none", "-t", "bench/app", dockerfile(f"FROM {REG}/bench/big:1\n{APP}")], DENV)
    reg = start_registry(scenario)
    name = target(reg, scenario, "docker", i)
    sh(DOCKER + ["tag", "bench/app", name], DENV)
    return timed(DOCKER + ["push", "-q", name], DENV)[0], {}


def buildah_push(scenario, i):
    if i == 0:
        buildah_reset()
        sh(BUILDAH + ["build", "-q", "--isolation", "chroot", "--tls-verify=false", "-t", "bench/app",
                      dockerfile(f"FROM {REG}/bench/big:1\n{APP}")])
    reg = start_registry(scenario)
    return timed(BUILDAH + ["push", "-q", "--tls-verify=false", "bench/app",
                            f"docker://{target(reg, scenario, 'buildah', i)}"])[0], {}


PULLERS = {"kiln": kiln_pull, "buildkit": docker_pull, "buildah": buildah_pull, "floor": floor_pull}
PUSHERS = {"kiln": kiln_push, "buildkit": docker_push, "buildah": buildah_push}
CELLS = {"pull": [("cold", "big"), ("second", "big2")], "push": [("empty",), ("held",), ("mount",)]}


def loadavg():
    return open("/proc/loadavg").read().split()[0]


def main():
    results = {}
    tools = [t for t in TOOLS if t in PULLERS]
    for workload in WORKLOADS:
        for cell in CELLS[workload]:
            scenario = cell[0]
            who = tools + (["floor"] if workload == "pull" else [])
            for i in range(RUNS_OF[workload]):
                # Tools alternate within a cell, as in run.py, so load drifts hit them alike.
                for tool in who:
                    if workload == "pull":
                        secs, extra = PULLERS[tool](cell[1], scenario == "second")
                    else:
                        secs, extra = PUSHERS[tool](scenario, i)
                    results.setdefault((workload, scenario, tool), []).append((secs, extra))
                    TSV.write(f"{workload}\t{scenario}\t{tool}\t{i}\t{secs:.3f}\t{json.dumps(extra)}\t"
                              f"{loadavg()}\n")
                    TSV.flush()
                    print(f"{workload} {scenario} {tool} run {i}: {secs:.2f}s {extra}", file=sys.stderr)
    print("| workload | scenario | kiln | BuildKit | buildah | floor | kiln/faster peer | kiln/floor |")
    print("|---|---|---|---|---|---|---|---|")
    for workload in WORKLOADS:
        for cell in CELLS[workload]:
            med = {}
            for tool in tools + ["floor"]:
                runs = results.get((workload, cell[0], tool))
                if runs:
                    med[tool] = statistics.median(s for s, _ in runs)
            kiln = med.get("kiln")
            peers = [med[t] for t in ("buildkit", "buildah") if t in med]
            note = ""
            if "kiln" in med and results[(workload, cell[0], "kiln")][0][1]:
                run = statistics.median(e["run"] for _, e in results[(workload, cell[0], "kiln")])
                note = f" (+ RUN {run:.2f}s)"
            cells = [f"{med[t]:.2f}s" if t in med else "-" for t in ("kiln", "buildkit", "buildah", "floor")]
            if note:
                cells[0] += note
            ratio = f"{kiln / min(peers):.2f}x" if kiln and peers else "-"
            to_floor = f"{kiln / med['floor']:.2f}x" if kiln and "floor" in med else "-"
            print(f"| {workload} | {cell[0]} | " + " | ".join(cells) + f" | {ratio} | {to_floor} |")
    sh(["bash", f"{ROOT}/tests/fixtures/start-registry.sh", f"{PP}/registry2", "stop"], check=False)


if __name__ == "__main__":
    main()
