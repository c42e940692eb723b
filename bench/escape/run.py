"""The part of bench/escape.sh that runs: every case in tests/cases/escape/ as the RUN step of its own build,
under kiln and under BuildKit (dockerd's), with the host checks of tests/it/escape.rs after each. Prints a
markdown table (case, what it tries, kiln's verdict, BuildKit's verdict); the steps' own words go to
$RESULTS/details.md. Reads its settings from the environment bench/escape.sh sets:
ROOT, WORK, KILN, BASE_OCI (kiln's base layout), DOCKER_IMAGE (the same image in dockerd), DKD (dockerd's
directory), TOOLS, CASES, RESULTS.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

env = os.environ
ROOT = env["ROOT"]
WORK = env["WORK"]
TOOLS = env.get("TOOLS", "kiln buildkit").split()
CASE_DIR = os.path.join(ROOT, "tests/cases/escape")
ARGS = ["PORT", "MARKER", "HOSTPID", "TAG", "HOST_NS", "UNIX"]
SYSTEM_DIRS = {"/", "/proc", "/sys", "/dev", "/tmp", "/run", "/mnt", "/var", "/etc"}
STEP_LINE = re.compile(r"^#\d+ \d+\.\d+ (.*)$")


def parse(path):
    case = {"name": os.path.basename(path)[:-3], "flags": "", "requires": None, "script": open(path).read()}
    for line in case["script"].splitlines():
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(": ")
        case[key] = value
    return case


def cases():
    names = sorted(f for f in os.listdir(CASE_DIR) if f.endswith(".sh"))
    wanted = env.get("CASES", "").split()
    if wanted:
        names = [n for n in names if n[:-3] in wanted]
    return [parse(os.path.join(CASE_DIR, n)) for n in names]


class Host:
    """What the cases aim at on the host, and what must be the same after each."""

    def __init__(self):
        self.tag = "kesc%04x" % (os.getpid() & 0xFFFF)
        self.accepted = 0
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        self.port = srv.getsockname()[1]
        threading.Thread(target=self._serve, args=(srv,), daemon=True).start()
        self.unix_name = "kiln-escape-" + self.tag
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind("\0" + self.unix_name)
        self.unix.listen(1)
        self.ns = " ".join(os.readlink(f"/proc/self/ns/{n}") for n in ("mnt", "net", "pid", "uts", "ipc"))
        self.hostname = self._hostname()
        self.links = set(os.listdir("/sys/class/net"))
        self.mounts = self._mounts()

    def _serve(self, srv):
        while True:
            conn, _ = srv.accept()
            self.accepted += 1
            conn.sendall(b"kiln-escape-server\n")
            conn.close()

    @staticmethod
    def _hostname():
        return open("/proc/sys/kernel/hostname").read().strip()

    @staticmethod
    def _mounts():
        out = set()
        for line in open("/proc/self/mountinfo"):
            out.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split(" ")[4]))
        return out

    def args(self, marker):
        values = [str(self.port), marker, str(os.getpid()), self.tag, self.ns, self.unix_name]
        out = []
        for k, v in zip(ARGS, values):
            out += ["--build-arg", f"ESCAPE_{k}={v}"]
        return out

    def changes(self, before, marker, text):
        found = []
        if self.accepted > before:
            found.append(f"the host's server on 127.0.0.1:{self.port} saw {self.accepted - before} connection(s)")
        now = self._hostname()
        if now != self.hostname:
            found.append(f"the host's hostname changed to {now} (put back)")
            open("/proc/sys/kernel/hostname", "w").write(self.hostname)
        for link in set(os.listdir("/sys/class/net")) - self.links:
            if link.startswith(self.tag):
                found.append(f"the host has a new link {link} (deleted)")
                subprocess.run(["ip", "link", "del", link], capture_output=True)
        for m in self._mounts() - self.mounts:
            if m in SYSTEM_DIRS:
                found.append(f"the host has a new mount on {m}")
        try:
            if open(marker).read() != text:
                found.append("the store's marker was changed (put back)")
                open(marker, "w").write(text)
        except OSError as e:
            found.append(f"the store's marker is gone: {e}")
        return found


def judge(case, rc, output):
    """(verdict, detail) from a build's exit status and output, as tests/it/escape.rs judges."""
    lines = [m.group(1) for m in map(STEP_LINE.match, output.splitlines()) if m]

    def said(prefix):
        for line in reversed(lines):
            if line.startswith(prefix):
                return line[len(prefix):]
        return None

    story = " | ".join(lines[-4:])

    if rc == 0:
        code = 0
    else:
        m = re.search(r"exit code:? (\d+)", output)
        code = int(m.group(1)) if m else None
    if code is None:
        error = next((l.strip() for l in output.splitlines() if "error" in l.lower()), "no error line")
        if case["expect"] == "refused":
            return "refused", error
        return "inconclusive", f"the build failed before the step ran: {error}"
    # A verdict counts only when the case said it: a runtime that fails to start the step also exits 1.
    if code == 0 and case["expect"] == "denied" and said("denied: ") is not None:
        return "denied", said("denied: ")
    if code == 1 and said("reached: ") is not None:
        return "escaped", said("reached: ")
    if code == 3 and said("n/a: ") is not None:
        return "n/a", said("n/a: ")
    return "inconclusive", f"exit {code}: {story}"


def dockerfile(base, flags):
    arg_lines = "".join(f"ARG ESCAPE_{a}\n" for a in ARGS)
    return f"FROM {base}\n{arg_lines}COPY case.sh /escape/case.sh\nRUN {flags} sh /escape/case.sh\n"


def build(tool, case, host, ctx):
    if tool == "kiln":
        marker = os.path.join(WORK, "kiln-store", "escape-marker")
        cmd = [env["KILN"], "build", "--store", os.path.join(WORK, "kiln-store"), "--progress", "plain",
               "--build-context", f"base=oci-layout://{env['BASE_OCI']}"]
        base, run_env = "base", None
    else:
        marker = os.path.join(env["DKD"], "data", "escape-marker")
        cmd = ["/usr/bin/docker", "build", "--no-cache", "--progress", "plain"]
        base = env["DOCKER_IMAGE"]
        run_env = dict(env, DOCKER_HOST=f"unix://{env['DKD']}/docker.sock", DOCKER_BUILDKIT="1")
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(dockerfile(base, case["flags"]))
    for attempt in range(4):
        if attempt:
            time.sleep(2)
        verdict = attempt_build(cmd + host.args(marker) + [ctx], run_env, case, host, marker)
        # Under load, dockerd's runc now and then fails to start a step (`stat /bin/sh: no such file`).
        if verdict[0] != "inconclusive":
            break
    return verdict


def attempt_build(cmd, run_env, case, host, marker):
    text = f"kiln escape suite marker {host.tag}\n"
    with open(marker, "w") as f:
        f.write(text)
    before = host.accepted
    try:
        p = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=120)
        verdict = judge(case, p.returncode, p.stdout + p.stderr)
    except subprocess.TimeoutExpired:
        verdict = ("inconclusive", "the build took over 120 s")
    changes = host.changes(before, marker, text)
    if changes:
        verdict = ("escaped", verdict[1] + " [host: " + "; ".join(changes) + "]")
    return verdict


def requires_ok(case):
    if not case["requires"]:
        return True
    return subprocess.run(["sh", "-c", case["requires"]], capture_output=True).returncode == 0


def cell(verdict):
    word = verdict[0]
    return f"**{word}**" if word in ("escaped", "inconclusive") else word


def main():
    host = Host()
    shutil.rmtree(os.path.join(WORK, "kiln-store"), ignore_errors=True)
    os.makedirs(os.path.join(WORK, "kiln-store"))
    # One tool after the other (not interleaved): a step that escapes under one cannot disturb the other's
    # daemon mid-run.
    all_cases = cases()
    verdicts = {c["name"]: {} for c in all_cases}
    for tool in TOOLS:
        for case in all_cases:
            if not requires_ok(case):
                v = ("n/a", f"not run: on the host itself `{case['requires']}` fails")
            else:
                ctx = tempfile.mkdtemp(prefix="escape-ctx-", dir=WORK)
                shutil.copy(os.path.join(CASE_DIR, case["name"] + ".sh"), os.path.join(ctx, "case.sh"))
                v = build(tool, case, host, ctx)
                shutil.rmtree(ctx)
            verdicts[case["name"]][tool] = v
            print(f"{case['name']} {tool}: {v[0]}", file=sys.stderr)
    rows, details = [], []
    for case in all_cases:
        v = verdicts[case["name"]]
        details += [f"- `{case['name']}` {t}: {v[t][0]}: {v[t][1]}" for t in TOOLS]
        tries = case["tries"].replace("|", "\\|")
        rows.append(f"| `{case['name']}` | {tries} | " + " | ".join(cell(v[t]) for t in TOOLS) + " |")
    header = {"kiln": "kiln", "buildkit": "BuildKit v0.8"}
    table = "\n".join(
        [f"| case | what it tries | {' | '.join(header[t] for t in TOOLS)} |", "|---|---|" + "---|" * len(TOOLS)]
        + rows
    )
    with open(os.path.join(env["RESULTS"], "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(env["RESULTS"], "details.md"), "w") as f:
        f.write("\n".join(details) + "\n")
    print(table)


main()
