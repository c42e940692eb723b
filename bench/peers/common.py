"""What bench/peers/run.py and its workload modules share: the environment bench/peers.sh passes, the
timed run of one command (its log, wall time and peak RSS), and the raw-times file."""
import os, subprocess, threading, time

env = os.environ
WORK = env["WORK"]
RUNS = int(env.get("RUNS", "5"))
RESULTS = env["RESULTS"]
TIMEOUT = float(env.get("BUILD_TIMEOUT", "900"))
LOGS = os.path.join(RESULTS, "logs")
TIMES = os.path.join(RESULTS, "times.tsv")
os.makedirs(LOGS, exist_ok=True)


class Failed(Exception):
    pass


def log_path(workload, tool):
    return os.path.join(LOGS, f"{workload}-{tool}.log")


def run_logged(cmd, log, what, extra_env=None, timeout=TIMEOUT, cwd=None):
    """Runs cmd with its output appended to log; returns (seconds, ok, peak RSS in MiB of the process)."""
    with open(log, "ab") as f:
        f.write(f"\n### {time.strftime('%H:%M:%S')} {what}: {' '.join(cmd)}\n".encode())
        f.flush()
        e = dict(os.environ, **(extra_env or {}))
        # A blocking wait4, not subprocess.run(timeout=...): with a timeout, Python polls the child with
        # sleeps of up to 50 ms, which rounds every build's time up to its next poll. The timeout is a
        # timer that kills the build instead. wait4 also gives this child's own peak RSS.
        expired = threading.Event()
        start = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=e, cwd=cwd)
        timer = threading.Timer(timeout, lambda: (expired.set(), p.kill()))
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:
            p.kill()
            p.wait()
            raise
        finally:
            timer.cancel()
        secs = time.perf_counter() - start
        rc = p.returncode
        ok = rc == 0 and not expired.is_set()
        if expired.is_set():
            rc = f"timeout after {timeout:.0f} s"
        f.write(f"### exit {rc}, {secs:.3f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MiB\n".encode())
    return secs, ok, usage.ru_maxrss / 1024


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def record(workload, scenario, tool, run, secs, status):
    with open(TIMES, "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\t{workload}\t{scenario}\t{tool}\t{run}\t"
                f"{secs:.4f}\t{status}\t{loadavg()}\n")


def out(cmd, extra_env=None):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, **(extra_env or {})))
        return p.stdout.strip() or f"? ({' '.join(cmd)}: {p.stderr.strip()[:200]})"
    except Exception as e:  # noqa: BLE001 - a version string is informational
        return f"? ({e})"
