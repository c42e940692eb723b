#!/usr/bin/env python3
"""The timed part of bench/peers.sh: builds every workload with kiln, BuildKit (dockerd's) and buildah,
alternating tools within each cell, and prints a markdown table of medians.

bench/peers.sh prepares everything this needs (packages, kiln, base images, registry, contexts, sshd,
dockerd) and passes it in the environment:
  WORK RUNS WORKLOADS TOOLS KILN REG DKD SSH_AUTH_SOCK SSH_PORT BUSYBOX_OCI DEBIAN_OCI RESULTS DOCKERFILES

For every workload, each tool starts from an empty store (kiln), daemon (no images, no build cache) or
containers-storage holding only the base images, then builds once, untimed (the first build: base
import, context sync into BuildKit). Then, per scenario (cold, warm, touch, edit), one untimed warm-up
build per tool (not for cold) and RUNS timed rounds of kiln, BuildKit, buildah, each build preceded by an
untimed `sync` and by the scenario's change to the input. The wall time of each build is measured here
(time.perf_counter around subprocess.run).
"""
import json, os, platform, shutil, signal, statistics, subprocess, sys, threading, time

# SIGTERM (from bench/peers.sh's trap) unwinds like an exception: subprocess.run kills the build in flight.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

env = os.environ
WORK = env["WORK"]
RUNS = int(env.get("RUNS", "5"))
WORKLOADS = [w for w in env.get("WORKLOADS", "secret multistage copyheavy ssh").split()
             if w not in ("pull", "push")]  # bench/peers/pullpush.py runs those
TOOLS = env.get("TOOLS", "kiln buildkit buildah").split()
RESULTS = env["RESULTS"]
DOCKERFILES = env["DOCKERFILES"]
TIMEOUT = float(env.get("BUILD_TIMEOUT", "900"))
SSH_PORT = env.get("SSH_PORT", "2222")
SCENARIOS = ["cold", "warm", "touch", "edit"]
LABEL = {"kiln": "kiln", "buildkit": "BuildKit", "buildah": "buildah"}
PIN = 1700000000  # the mtime make-context.py gives every input

LOGS = os.path.join(RESULTS, "logs")
os.makedirs(LOGS, exist_ok=True)


class Failed(Exception):
    pass


def log_path(workload, tool):
    return os.path.join(LOGS, f"{workload}-{tool}.log")


def run_logged(cmd, log, what, extra_env=None, timeout=TIMEOUT):
    """Runs cmd with its output appended to log; returns (seconds, ok)."""
    with open(log, "ab") as f:
        f.write(f"\n### {time.strftime('%H:%M:%S')} {what}: {' '.join(cmd)}\n".encode())
        f.flush()
        e = dict(os.environ, **(extra_env or {}))
        # A blocking wait, not subprocess.run(timeout=...): with a timeout, Python polls the child with
        # sleeps of up to 50 ms, which rounds every build's time up to its next poll. The timeout is a
        # timer that kills the build instead.
        expired = threading.Event()
        start = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=e)
        timer = threading.Timer(timeout, lambda: (expired.set(), p.kill()))
        timer.start()
        try:
            rc = p.wait()
        except BaseException:
            p.kill()
            p.wait()
            raise
        finally:
            timer.cancel()
        secs = time.perf_counter() - start
        ok = rc == 0 and not expired.is_set()
        if expired.is_set():
            rc = f"timeout after {timeout:.0f} s"
        f.write(f"### exit {rc}, {secs:.3f} s\n".encode())
    return secs, ok


# ---------------------------------------------------------------------------------------------- workloads

WL = {
    # name: (context, the input touch/edit change, base, extra flags for every tool)
    "secret": (f"{WORK}/ctx-small", f"{WORK}/secret.txt", "busybox",
               ["--secret", f"id=mysecret,src={WORK}/secret.txt"]),
    "multistage": (f"{WORK}/ctx-small", f"{WORK}/ctx-small/stamp.txt", "busybox", []),
    "copyheavy": (f"{WORK}/ctx-copyheavy", f"{WORK}/ctx-copyheavy/small/d10/f10.bin", "busybox", []),
    "ssh": (f"{WORK}/ctx-small", f"{WORK}/ctx-small/stamp.txt", "debian",
            ["--ssh", "default", "--build-arg", f"SSH_PORT={SSH_PORT}"]),
}


# ------------------------------------------------------------------------------------------------- tools

class Kiln:
    name = "kiln"

    def __init__(self):
        self.bin = env["KILN"]
        self.store = f"{WORK}/kiln/store"
        self.env = {}

    def base(self, b):
        return "oci-layout://" + (env["BUSYBOX_OCI"] if b == "busybox" else env["DEBIAN_OCI"])

    def reset(self, workload, log):
        shutil.rmtree(self.store, ignore_errors=True)
        if os.path.exists(self.store):
            raise Failed(f"cannot remove {self.store}")

    def before_cold(self, log):
        pass

    def cmd(self, workload, no_cache):
        ctx, _, base, extra = WL[workload]
        return [self.bin, "build", "--progress", "quiet", "--store", self.store,
                "--build-arg", f"BASE={self.base(base)}", "-f", f"{DOCKERFILES}/{workload}.Dockerfile",
                "-t", f"bench/{workload}"] + (["--no-cache"] if no_cache else []) + extra + [ctx]

    def version(self):
        return out([self.bin, "--version"])


class BuildKit:
    name = "buildkit"
    docker = "/usr/bin/docker"  # the 20.10 client that matches the daemon

    def __init__(self):
        self.env = {"DOCKER_HOST": f"unix://{env['DKD']}/docker.sock", "DOCKER_BUILDKIT": "1"}
        self.reg = env["REG"]

    def d(self, *args):
        return [self.docker, *args]

    def reset(self, workload, log):
        ids = out(self.d("images", "-aq"), self.env).split()
        if ids:
            run_logged(self.d("rmi", "-f", *sorted(set(ids))), log, "reset", self.env)
        for c in (self.d("builder", "prune", "-af"), self.d("pull", "-q", f"{self.reg}/{self.basename(workload)}")):
            if not run_logged(c, log, "reset", self.env)[1]:
                raise Failed("reset")

    def basename(self, workload):
        return "busybox:latest" if WL[workload][2] == "busybox" else "debian:latest"

    def before_cold(self, log):
        run_logged(self.d("image", "prune", "-f"), log, "prune (untimed)", self.env)

    def cmd(self, workload, no_cache):
        ctx, _, base, extra = WL[workload]
        # This dockerd has no bridge: every RUN needs a network mode; ssh reaches sshd on the host's loopback.
        net = "--network=host" if workload == "ssh" else "--network=none"
        return self.d("build", "-q", net, "--build-arg", f"BASE={self.reg}/{self.basename(workload)}",
                      "-f", f"{DOCKERFILES}/{workload}.Dockerfile", "-t", f"bench/{workload}") + \
            (["--no-cache"] if no_cache else []) + extra + [ctx]

    def version(self):
        return out(self.d("version", "--format",
                          "client {{.Client.Version}}, server {{.Server.Version}} (API {{.Server.APIVersion}})"),
                   self.env)


class Buildah:
    name = "buildah"

    def __init__(self):
        self.g = ["buildah", "--root", f"{WORK}/buildah/root", "--runroot", f"{WORK}/buildah/runroot",
                  "--storage-driver", "overlay"]
        self.env = {}
        self.reg = env["REG"]

    def reset(self, workload, log):
        run_logged(self.g + ["rm", "-a"], log, "reset")
        run_logged(self.g + ["rmi", "-a", "-f"], log, "reset")
        base = "busybox:latest" if WL[workload][2] == "busybox" else "debian:latest"
        if not run_logged(self.g + ["pull", "-q", "--tls-verify=false", f"{self.reg}/{base}"], log, "reset")[1]:
            raise Failed("reset")

    def before_cold(self, log):
        run_logged(self.g + ["rmi", "--prune"], log, "prune (untimed)")

    def cmd(self, workload, no_cache):
        ctx, _, base, extra = WL[workload]
        base = "busybox:latest" if base == "busybox" else "debian:latest"
        # chroot isolation: the default (oci, crun) fails on a cgroup v1+v2 hybrid host, and it is buildah's
        # fastest; --layers: a step cache (off by default); --jobs 4: stages in parallel, as kiln (--jobs 4
        # by default) and BuildKit do.
        c = self.g + ["build", "--isolation", "chroot", "--layers", "--jobs", "4", "--tls-verify=false", "-q",
                      "--build-arg", f"BASE={self.reg}/{base}", "-f", f"{DOCKERFILES}/{workload}.Dockerfile",
                      "-t", f"bench/{workload}"] + (["--no-cache"] if no_cache else []) + extra
        if workload == "ssh":
            c += ["--network", "host"]
        return c + [ctx]

    def version(self):
        return out(["buildah", "--version"])


def out(cmd, extra_env=None):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, **(extra_env or {})))
        return p.stdout.strip() or f"? ({' '.join(cmd)}: {p.stderr.strip()[:200]})"
    except Exception as e:  # noqa: BLE001 - a version string is informational
        return f"? ({e})"


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


# --------------------------------------------------------------------------------------------------- run

tools = [{"kiln": Kiln, "buildkit": BuildKit, "buildah": Buildah}[t]() for t in TOOLS]
times_path = os.path.join(RESULTS, "times.tsv")
with open(times_path, "w") as f:
    f.write("time_utc\tworkload\tscenario\ttool\trun\tseconds\tstatus\tloadavg1\n")

# cell -> tool -> {"times": [...], "failed": log or None}
cells = {}


def record(workload, scenario, tool, run, secs, status):
    with open(times_path, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\t{workload}\t{scenario}\t{tool}\t{run}\t"
                f"{secs:.4f}\t{status}\t{loadavg()}\n")


def change_input(scenario, path, orig):
    if scenario == "touch":
        os.utime(path, None)  # mtime only
    elif scenario == "edit":
        with open(path, "wb") as f:  # new content, different from every earlier build's
            f.write(orig + f"{time.time_ns()}\n".encode())


started = time.time()
print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: RUNS={RUNS}, workloads: {' '.join(WORKLOADS)}, "
      f"tools: {' '.join(TOOLS)}, load {loadavg()}", flush=True)
for workload in WORKLOADS:
    ctx, inp, base, _ = WL[workload]
    with open(inp, "rb") as f:
        orig = f.read()
    broken = {}  # tool -> log, for a tool whose reset or first build failed: all its cells fail
    for t in tools:
        log = log_path(workload, t.name)
        try:
            t.reset(workload, log)
            if not run_logged(t.cmd(workload, False), log, "first build (untimed)", t.env)[1]:
                raise Failed("first build")
        except Failed:
            broken[t.name] = log
    for scenario in SCENARIOS:
        cell = cells.setdefault((workload, scenario), {})
        for t in tools:
            cell[t.name] = {"times": [], "failed": broken.get(t.name)}
        t0 = time.time()
        no_cache = scenario == "cold"
        if scenario != "cold":  # one untimed warm-up build per tool, with the scenario's change
            for t in tools:
                if cell[t.name]["failed"]:
                    continue
                change_input(scenario, inp, orig)
                if not run_logged(t.cmd(workload, False), log_path(workload, t.name), f"{scenario} warm-up", t.env)[1]:
                    cell[t.name]["failed"] = log_path(workload, t.name)
        for i in range(1, RUNS + 1):
            for t in tools:
                c = cell[t.name]
                if c["failed"]:
                    continue
                log = log_path(workload, t.name)
                if no_cache:
                    t.before_cold(log)
                change_input(scenario, inp, orig)
                os.sync()
                secs, ok = run_logged(t.cmd(workload, no_cache), log, f"{scenario} run {i}", t.env)
                record(workload, scenario, t.name, i, secs, "ok" if ok else "failed")
                if ok:
                    c["times"].append(secs)
                else:
                    c["failed"] = log
        meds = "  ".join(f"{t.name} {statistics.median(cell[t.name]['times']):.3f}"
                         if not cell[t.name]["failed"] else f"{t.name} FAILED"
                         for t in tools)
        print(f"{workload:<10} {scenario:<5} {meds}  ({time.time() - t0:.0f} s, load {loadavg()})", flush=True)
    with open(inp, "wb") as f:
        f.write(orig)
    os.utime(inp, (PIN, PIN))

# ------------------------------------------------------------------------------------------------ report


def fmt_cell(c):
    if c["failed"]:
        return f"failed ({os.path.relpath(c['failed'], RESULTS)})"
    return f"{statistics.median(c['times']):.3f}"


summary = [["workload", "scenario", "tool", "median_s", "min_s", "max_s", "runs", "status"]]
rows = []
for (workload, scenario), cell in cells.items():
    for t in tools:
        c = cell[t.name]
        ts = c["times"]
        summary.append([workload, scenario, t.name,
                        f"{statistics.median(ts):.4f}" if ts and not c["failed"] else "",
                        f"{min(ts):.4f}" if ts else "", f"{max(ts):.4f}" if ts else "", str(len(ts)),
                        "failed" if c["failed"] else "ok"])
    row = [workload, scenario] + [fmt_cell(cell[t]) if t in cell else "–" for t in LABEL]
    kiln = cell.get("kiln")
    peers = [statistics.median(cell[p]["times"]) for p in ("buildkit", "buildah")
             if p in cell and not cell[p]["failed"] and cell[p]["times"]]
    if kiln and not kiln["failed"] and kiln["times"] and peers:
        row.append(f"{statistics.median(kiln['times']) / min(peers):.2f}×")
    else:
        row.append("–")
    rows.append(row)

with open(os.path.join(RESULTS, "summary.tsv"), "w") as f:
    f.write("".join("\t".join(r) + "\n" for r in summary))

finished = time.time()
versions = {"kernel": platform.release(), "nproc": os.cpu_count()}
for t in tools:
    versions[t.name] = t.version()
head = (f"Median wall seconds over {RUNS} run{'s' if RUNS != 1 else ''} per tool and cell; tools alternate within each cell. "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}–{time.strftime('%H:%M %Z', time.localtime(finished))}, "
        f"load {loadavg()} at the end, {versions['nproc']} cores, kernel {versions['kernel']}.")
table = ["| workload | scenario | kiln | BuildKit | buildah | kiln / faster peer |",
         "|---|---|---:|---:|---:|---:|"]
table += ["| " + " | ".join(r) + " |" for r in rows]
text = head + "\n\n" + "\n".join(table) + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in versions.items()) + "\n"
with open(os.path.join(RESULTS, "table.md"), "w") as f:
    f.write(text)
with open(os.path.join(RESULTS, "results.json"), "w") as f:
    json.dump({"started": started, "finished": finished, "runs": RUNS, "versions": versions,
               "cells": [{"workload": w, "scenario": s, "tool": t, "times": c["times"],
                          "failed": c["failed"]} for (w, s), cell in cells.items() for t, c in cell.items()]},
              f, indent=1)
print()
print(text)
print(f"raw times: {times_path}; logs: {LOGS}")
sys.exit(1 if any(c["failed"] for cell in cells.values() for c in cell.values()) else 0)
