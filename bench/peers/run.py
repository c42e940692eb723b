#!/usr/bin/env python3
"""The timed part of bench/peers.sh: builds every workload with kiln, BuildKit (dockerd's) and buildah,
alternating tools within each cell, times each workload's floor beside them, and prints markdown tables.

bench/peers.sh prepares everything this needs (packages, kiln, base images, registry, contexts, sshd,
dockerd, the apt repository) and passes it in the environment:
  WORK RUNS WORKLOADS TOOLS KILN REG DKD SSH_AUTH_SOCK SSH_PORT APT_PORT APT_PACKAGES BUSYBOX_OCI
  DEBIAN_OCI APT_OCI RESULTS DOCKERFILES FLOOR MONOREPO_TARGETS

A workload is a Dockerfile case of CASES (or several: GROUPS), or a module of its own (MODULES: its
`run()` times what it wants and returns rows and a table; monorepo.py is one). To add a Dockerfile
workload: a CASES entry, dockerfiles/<case>.Dockerfile, and floor/<case>.sh for its floor column (optional).

For every case, each tool starts from an empty store (kiln), daemon (no images, no build cache) or
containers-storage holding only the base image, then builds once, untimed (the first build: base import,
context sync into BuildKit). Then, per scenario (cold, warm, touch, edit, or the case's own list), one
untimed warm-up build per tool (not for cold) and RUNS timed rounds of kiln, BuildKit, buildah and the
floor (cold only), each build preceded by an untimed `sync` and by the scenario's change to the input.
The wall time of each build is measured here (time.perf_counter around the child's wait4).
"""
import json, os, platform, shutil, signal, statistics, subprocess, sys, tarfile, time

from common import RESULTS, RUNS, TIMES, WORK, Failed, env, loadavg, log_path, out, record, run_logged

# SIGTERM (from bench/peers.sh's trap) unwinds like an exception: the build in flight is killed.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = [w for w in env.get("WORKLOADS", "secret multistage copyheavy ssh").split()
             if w not in ("pull", "push")]  # bench/peers/pullpush.py runs those
TOOLS = env.get("TOOLS", "kiln buildkit buildah").split()
DOCKERFILES = env["DOCKERFILES"]
SSH_PORT = env.get("SSH_PORT", "2222")
ALL_SCENARIOS = ["cold", "warm", "touch", "edit"]
LABEL = {"kiln": "kiln", "buildkit": "BuildKit", "buildah": "buildah", "floor": "floor"}
PIN = 1700000000  # the mtime make-context.py gives every input
SMALL, STAMP = f"{WORK}/ctx-small", f"{WORK}/ctx-small/stamp.txt"

# ---------------------------------------------------------------------------------------------- workloads

# case: ctx (context), input (what touch and edit change), base (a key of BASES), args (every tool's flags),
# net ("host": the step needs the host's network; kiln gets it with kiln_args), scenarios (default all),
# steps (RUNs per build: the report adds a per-step table), settle (cold builds start with an empty page
# cache: see `settle`).
CASES = {
    "secret": dict(ctx=SMALL, input=f"{WORK}/secret.txt", base="busybox",
                   args=["--secret", f"id=mysecret,src={WORK}/secret.txt"]),
    "multistage": dict(ctx=SMALL, input=STAMP, base="busybox"),
    "copyheavy": dict(ctx=f"{WORK}/ctx-copyheavy", input=f"{WORK}/ctx-copyheavy/small/d10/f10.bin", base="busybox"),
    "ssh": dict(ctx=SMALL, input=STAMP, base="debian", net="host",
                kiln_args=["--network", "host", "--allow", "network.host"],
                args=["--ssh", "default", "--build-arg", f"SSH_PORT={SSH_PORT}"]),
    "steps-chain": dict(ctx=SMALL, input=STAMP, base="busybox", scenarios=["cold", "warm"], steps=100),
    "steps-files": dict(ctx=SMALL, input=STAMP, base="busybox", scenarios=["cold", "warm"], settle=True),
    "apt": dict(ctx=SMALL, input=STAMP, base="apt", net="host", scenarios=["cold", "warm"],
                kiln_args=["--network", "host", "--allow", "network.host"],
                args=["--build-arg", f"APT_PORT={env.get('APT_PORT', '')}",
                      "--build-arg", f"APT_PACKAGES={env.get('APT_PACKAGES', '')}"]),
}
GROUPS = {"steps": ["steps-chain", "steps-files"]}  # a workload of several cases
# The base images: the OCI layout (an environment variable) for kiln and the floor; the registry
# repository of the same bytes for the peers.
BASES = {"busybox": "BUSYBOX_OCI", "debian": "DEBIAN_OCI", "apt": "APT_OCI"}


def modules():
    import monorepo  # noqa: E402 - workloads with runners of their own, loaded only when asked for
    return {"monorepo": monorepo.run}


def scenarios(case):
    return CASES[case].get("scenarios", ALL_SCENARIOS)


# ------------------------------------------------------------------------------------------------- tools

class Kiln:
    name = "kiln"
    scenarios = set(ALL_SCENARIOS)

    def __init__(self):
        self.bin = env["KILN"]
        self.store = f"{WORK}/kiln/store"
        self.env = {}

    def reset(self, case, log):
        shutil.rmtree(self.store, ignore_errors=True)
        if os.path.exists(self.store):
            raise Failed(f"cannot remove {self.store}")

    def before(self, case, scenario, log):
        pass

    def flaky(self, log, start):
        return False

    def cmd(self, case, no_cache):
        c = CASES[case]
        return [self.bin, "build", "--progress", "quiet", "--store", self.store,
                "--build-arg", f"BASE=oci-layout://{env[BASES[c['base']]]}",
                "-f", f"{DOCKERFILES}/{case}.Dockerfile", "-t", f"bench/{case}"] + \
            (["--no-cache"] if no_cache else []) + c.get("args", []) + c.get("kiln_args", []) + [c["ctx"]]

    def version(self):
        return out([self.bin, "--version"])


class BuildKit:
    name = "buildkit"
    scenarios = set(ALL_SCENARIOS)
    docker = "/usr/bin/docker"  # the 20.10 client that matches the daemon

    def __init__(self):
        self.env = {"DOCKER_HOST": f"unix://{env['DKD']}/docker.sock", "DOCKER_BUILDKIT": "1"}
        self.reg = env["REG"]

    def d(self, *args):
        return [self.docker, *args]

    def reset(self, case, log):
        ids = out(self.d("images", "-aq"), self.env).split()
        if ids:
            run_logged(self.d("rmi", "-f", *sorted(set(ids))), log, "reset", self.env)
        for c in (self.d("builder", "prune", "-af"), self.d("pull", "-q", f"{self.reg}/{CASES[case]['base']}:latest")):
            if not run_logged(c, log, "reset", self.env)[1]:
                raise Failed("reset")

    def before(self, case, scenario, log):
        if scenario == "cold":
            run_logged(self.d("image", "prune", "-f"), log, "prune (untimed)", self.env)

    @staticmethod
    def flaky(log, start):
        """Under load, dockerd's runc now and then fails to start a step (`stat /bin/sh: no such file or
        directory`): such a build is tried again, up to four times, and only the last try is timed."""
        with open(log, "rb") as f:
            f.seek(start)
            return b"runc run failed: unable to start container process" in f.read()

    def cmd(self, case, no_cache):
        c = CASES[case]
        # This dockerd has no bridge: every RUN needs a network mode.
        net = "--network=host" if c.get("net") == "host" else "--network=none"
        return self.d("build", "-q", net, "--build-arg", f"BASE={self.reg}/{c['base']}:latest",
                      "-f", f"{DOCKERFILES}/{case}.Dockerfile", "-t", f"bench/{case}") + \
            (["--no-cache"] if no_cache else []) + c.get("args", []) + [c["ctx"]]

    def version(self):
        return out(self.d("version", "--format",
                          "client {{.Client.Version}}, server {{.Server.Version}} (API {{.Server.APIVersion}})"),
                   self.env)


class Buildah:
    name = "buildah"
    scenarios = set(ALL_SCENARIOS)

    def __init__(self):
        self.g = ["buildah", "--root", f"{WORK}/buildah/root", "--runroot", f"{WORK}/buildah/runroot",
                  "--storage-driver", "overlay"]
        self.env = {}
        self.reg = env["REG"]

    def reset(self, case, log):
        run_logged(self.g + ["rm", "-a"], log, "reset")
        run_logged(self.g + ["rmi", "-a", "-f"], log, "reset")
        if not run_logged(self.g + ["pull", "-q", "--tls-verify=false", f"{self.reg}/{CASES[case]['base']}:latest"],
                          log, "reset")[1]:
            raise Failed("reset")

    def before(self, case, scenario, log):
        if scenario == "cold":
            run_logged(self.g + ["rmi", "--prune"], log, "prune (untimed)")

    def flaky(self, log, start):
        return False

    def cmd(self, case, no_cache):
        c = CASES[case]
        # chroot isolation: the default (oci, crun) fails on a cgroup v1+v2 hybrid host, and it is buildah's
        # fastest; --layers: a step cache (off by default); --jobs 4: stages in parallel, as kiln (--jobs 4
        # by default) and BuildKit do.
        return self.g + ["build", "--isolation", "chroot", "--layers", "--jobs", "4", "--tls-verify=false", "-q",
                         "--build-arg", f"BASE={self.reg}/{c['base']}:latest", "-f", f"{DOCKERFILES}/{case}.Dockerfile",
                         "-t", f"bench/{case}"] + (["--no-cache"] if no_cache else []) + c.get("args", []) + \
            (["--network", "host"] if c.get("net") == "host" else []) + [c["ctx"]]

    def version(self):
        return out(["buildah", "--version"])


class Floor:
    """The case's RUN commands run directly (floor/lib.sh), on the base's root filesystem unpacked once."""
    name = "floor"
    scenarios = {"cold"}
    first_build = False  # nothing to import or sync

    def __init__(self):
        self.env = {}

    @staticmethod
    def has(case):
        return os.path.exists(f"{HERE}/floor/{case}.sh")

    def reset(self, case, log):
        c = CASES[case]
        base = unpack(env[BASES[c["base"]]], f"{WORK}/floor/base-{c['base']}")
        self.env = {"FLOOR_BASE": base, "FLOOR_RUN": f"{WORK}/floor/run", "CTX": c["ctx"]}

    def script(self, case, fn):
        return ["bash", "-c", f'source "$0/lib.sh"; source "$0/$1.sh"; {fn}', f"{HERE}/floor", case]

    def before(self, case, scenario, log):
        run = self.env["FLOOR_RUN"]
        shutil.rmtree(run, ignore_errors=True)
        os.makedirs(run)
        if not run_logged(self.script(case, "prepare"), log, "prepare (untimed)", self.env)[1]:
            raise Failed("prepare")

    def cmd(self, case, no_cache):
        return self.script(case, "timed")

    def flaky(self, log, start):
        return False

    def version(self):
        return out(["unshare", "--version"])


def unpack(layout, dest):
    """The layout's image unpacked at dest (its layers in order), kept while the manifest is the same."""
    with open(f"{layout}/index.json") as f:
        digest = json.load(f)["manifests"][0]["digest"]
    stamp = f"{dest}.digest"
    if os.path.exists(stamp) and open(stamp).read() == digest:
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    with open(f"{layout}/blobs/sha256/{digest[7:]}") as f:
        manifest = json.load(f)
    for layer in manifest["layers"]:
        with tarfile.open(f"{layout}/blobs/sha256/{layer['digest'][7:]}", "r:*") as t:
            t.extractall(dest, numeric_owner=True)
    with open(stamp, "w") as f:
        f.write(digest)
    return dest


# --------------------------------------------------------------------------------------------------- run

tools = [{"kiln": Kiln, "buildkit": BuildKit, "buildah": Buildah}[t]() for t in TOOLS]
if env.get("FLOOR", "1") != "0":
    tools.append(Floor())
with open(TIMES, "w") as f:
    f.write("time_utc\tworkload\tscenario\ttool\trun\tseconds\tstatus\tloadavg1\n")

cells = {}  # (case, scenario) -> tool -> {"times": [...], "failed": log or None}
extra = []  # (rows, table) from the workloads with runners of their own


def change_input(scenario, path, orig):
    if scenario == "touch":
        os.utime(path, None)  # mtime only
    elif scenario == "edit":
        with open(path, "wb") as f:  # new content, different from every earlier build's
            f.write(orig + f"{time.time_ns()}\n".encode())


def settle():
    """Drops the page cache (after the sync). On an ext4 without a journal, creating a file skips every
    inode freed in the last ~30 s whose inode-table block is still cached (`recently_deleted`), so a step
    writing 50,000 files right after the untimed clean-up of the previous run (a prune, a removed root)
    ran 5-10x slower, by how much depending on which tool cleaned up what just before. Without the cached
    blocks the check passes at once, for every tool alike."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def build(t, case, scenario, what, no_cache):
    """One build (before it, untimed: the tool's preparation); returns (seconds, ok)."""
    log = log_path(case, t.name)
    try:
        t.before(case, scenario, log)
    except Failed:
        return 0.0, False
    for attempt in range(1, 5):
        os.sync()
        if no_cache and CASES.get(case, {}).get("settle"):
            settle()
        start = os.path.getsize(log) if os.path.exists(log) else 0
        secs, ok, _ = run_logged(t.cmd(case, no_cache), log, what, t.env)
        if ok or not t.flaky(log, start):
            return secs, ok
        print(f"{case} {what}: {t.name} failed to start a step; again ({attempt})", flush=True)
    return secs, ok


def run_case(case):
    inp = CASES[case]["input"]
    with open(inp, "rb") as f:
        orig = f.read()
    mine = [t for t in tools if t.name != "floor" or Floor.has(case)]
    broken = {}  # tool -> log, for a tool whose reset or first build failed: all its cells fail
    for t in mine:
        try:
            t.reset(case, log_path(case, t.name))
            if getattr(t, "first_build", True) and not build(t, case, "first", "first build (untimed)", False)[1]:
                raise Failed("first build")
        except Failed:
            broken[t.name] = log_path(case, t.name)
    for scenario in scenarios(case):
        cell = cells.setdefault((case, scenario), {})
        these = [t for t in mine if scenario in t.scenarios]
        for t in these:
            cell[t.name] = {"times": [], "failed": broken.get(t.name)}
        t0 = time.time()
        if scenario != "cold":  # one untimed warm-up build per tool, with the scenario's change
            for t in these:
                if not cell[t.name]["failed"]:
                    change_input(scenario, inp, orig)
                    if not build(t, case, scenario, f"{scenario} warm-up", False)[1]:
                        cell[t.name]["failed"] = log_path(case, t.name)
        for i in range(1, RUNS + 1):
            for t in these:
                c = cell[t.name]
                if c["failed"]:
                    continue
                change_input(scenario, inp, orig)
                secs, ok = build(t, case, scenario, f"{scenario} run {i}", scenario == "cold")
                record(case, scenario, t.name, i, secs, "ok" if ok else "failed")
                if ok:
                    c["times"].append(secs)
                else:
                    c["failed"] = log_path(case, t.name)
        meds = "  ".join(f"{t.name} {statistics.median(cell[t.name]['times']):.3f}"
                         if not cell[t.name]["failed"] else f"{t.name} FAILED" for t in these)
        print(f"{case:<11} {scenario:<5} {meds}  ({time.time() - t0:.0f} s, load {loadavg()})", flush=True)
    with open(inp, "wb") as f:
        f.write(orig)
    os.utime(inp, (PIN, PIN))


started = time.time()
print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}: RUNS={RUNS}, workloads: {' '.join(WORKLOADS)}, "
      f"tools: {' '.join(t.name for t in tools)}, load {loadavg()}", flush=True)
failed_modules = []
for workload in WORKLOADS:
    if workload in CASES or workload in GROUPS:
        for case in GROUPS.get(workload, [workload]):
            run_case(case)
    elif "kiln" in TOOLS:
        try:
            extra.append(modules()[workload]())
        except Failed as e:
            failed_modules.append(f"{workload}: failed ({os.path.relpath(str(e), RESULTS)})")
            print(failed_modules[-1], flush=True)

# ------------------------------------------------------------------------------------------------ report


def median(cell, tool):
    c = cell.get(tool)
    return statistics.median(c["times"]) if c and c["times"] and not c["failed"] else None


def fmt_cell(cell, tool, scale=1.0, digits=3):
    c = cell.get(tool)
    if c is None:
        return "–"
    if c["failed"]:
        return f"failed ({os.path.relpath(c['failed'], RESULTS)})"
    return f"{statistics.median(c['times']) * scale:.{digits}f}"


def goal(scenario, ratio, over_floor):
    """The issue's reading: cold ≤ 0.5× the faster peer or within 10% of the floor; cached ≤ 0.1×."""
    if ratio is None:
        return "–"
    if scenario != "cold":
        return "met" if ratio <= 0.1 else "missed"
    return "met" if ratio <= 0.5 or (over_floor is not None and over_floor <= 0.10) else "missed"


def row(case, scenario, cell):
    kiln, floor = median(cell, "kiln"), median(cell, "floor")
    peers = [m for m in (median(cell, "buildkit"), median(cell, "buildah")) if m is not None]
    ratio = kiln / min(peers) if kiln is not None and peers else None
    over = (kiln - floor) / floor if kiln is not None and floor else None
    return [case, scenario] + [fmt_cell(cell, t) for t in LABEL] + [
        f"{(kiln - floor) * 1000:+.0f} ms ({over * 100:+.0f}%)" if over is not None else "–",
        f"{ratio:.2f}×" if ratio is not None else "–", goal(scenario, ratio, over)]


summary = [["workload", "scenario", "tool", "median_s", "min_s", "max_s", "runs", "status"]]
for (case, scenario), cell in cells.items():
    for name, c in cell.items():
        ts = c["times"]
        summary.append([case, scenario, name, f"{statistics.median(ts):.4f}" if ts and not c["failed"] else "",
                        f"{min(ts):.4f}" if ts else "", f"{max(ts):.4f}" if ts else "", str(len(ts)),
                        "failed" if c["failed"] else "ok"])
with open(os.path.join(RESULTS, "summary.tsv"), "w") as f:
    f.write("".join("\t".join(r) + "\n" for r in summary))

finished = time.time()
versions = {"kernel": platform.release(), "nproc": os.cpu_count()}
for t in tools:
    versions[t.name] = t.version()
head = (f"Median wall seconds over {RUNS} run{'s' if RUNS != 1 else ''} per tool and cell; tools alternate within each "
        f"cell. {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}–"
        f"{time.strftime('%H:%M %Z', time.localtime(finished))}, load {loadavg()} at the end, {versions['nproc']} cores, "
        f"kernel {versions['kernel']}.")
parts = [head]
if cells:
    table = ["| workload | scenario | kiln | BuildKit | buildah | floor | kiln − floor | kiln / faster peer | goal |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    table += ["| " + " | ".join(row(case, s, cell)) + " |" for (case, s), cell in cells.items()]
    parts.append("\n".join(table))
per_step = [(case, s, cell) for (case, s), cell in cells.items() if CASES[case].get("steps")]
if per_step:
    table = ["Per step (a build's median wall time / its RUN count), ms:", "",
             "| workload | scenario | kiln | BuildKit | buildah | floor | kiln − floor |", "|---|---|---:|---:|---:|---:|---:|"]
    for case, s, cell in per_step:
        n = CASES[case]["steps"]
        k, fl = median(cell, "kiln"), median(cell, "floor")
        table.append("| " + " | ".join([f"{case} ({n} RUNs)", s] + [fmt_cell(cell, t, 1000 / n, 1) for t in LABEL] +
                                       [f"{(k - fl) * 1000 / n:+.1f}" if k is not None and fl else "–"]) + " |")
    parts.append("\n".join(table))
parts += [t for _, t in extra] + failed_modules
text = "\n\n".join(parts) + "\n\n" + "\n".join(f"- {k}: {v}" for k, v in versions.items()) + "\n"
with open(os.path.join(RESULTS, "table.md"), "w") as f:
    f.write(text)
with open(os.path.join(RESULTS, "results.json"), "w") as f:
    json.dump({"started": started, "finished": finished, "runs": RUNS, "versions": versions,
               "cells": [{"workload": w, "scenario": s, "tool": t, "times": c["times"], "failed": c["failed"]}
                         for (w, s), cell in cells.items() for t, c in cell.items()] +
               [r for rows, _ in extra for r in rows]}, f, indent=1)
print()
print(text)
print(f"raw times: {TIMES}; logs: {os.path.join(RESULTS, 'logs')}")
sys.exit(1 if failed_modules or any(c["failed"] for cell in cells.values() for c in cell.values()) else 0)
