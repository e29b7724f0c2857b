#!/usr/bin/env python3
"""What an exec costs: the first ones after a create, and the CPU of a steady one.

Starts its own `warren serve` in a temporary directory, then:

- first: N times, creates a sandbox (no home volume), runs `true` in it four times and
  removes it; prints the medians of the create and of each of the four execs, so the
  first exec's extra cost over the later ones shows.
- steady (`--steady N`): with `--idle M` sandboxes left running beside it, runs `true`
  N times in one sandbox and prints the median round trip and the CPU time its agent and
  the daemon spent per exec (`/proc/PID/stat`, utime + stime; the agent is the
  sandbox's `warren-agent`, the children it starts are not counted).

    python3 bench/exec-cost.py [--warren target/release/warren] [--first 80]
                               [--steady 800] [--idle 200]
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import api as api_mod  # noqa: E402

BODY = {"home_volume": False}


def exec_true(api, sid):
    t = time.perf_counter()
    api.call("POST", f"/v1/sandboxes/{sid}/exec", {"command": {"argv": ["true"]}})
    return (time.perf_counter() - t) * 1000


def cpu_ms(pid):
    """utime + stime of `pid`, in ms."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def agents():
    """The pids of every process named `warren-agent` (a namespace sandbox's agent)."""
    found = set()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if f.read().startswith(b"warren-agent"):
                        found.add(int(p))
            except OSError:
                pass
    return found


def first(api, n):
    cols = [[] for _ in range(5)]
    for i in range(n + 2):
        t = time.perf_counter()
        sid = api.call("POST", "/v1/sandboxes", BODY)["id"]
        row = [(time.perf_counter() - t) * 1000] + [exec_true(api, sid) for _ in range(4)]
        api.call("DELETE", f"/v1/sandboxes/{sid}")
        if i >= 2:
            for c, v in zip(cols, row):
                c.append(v)
    meds = " ".join(f"{statistics.median(c):.2f}" for c in cols)
    print(f"first: create, exec 1..4 (ms, medians of {n}): {meds}")


def steady(api, n, idle):
    extra = [api.call("POST", "/v1/sandboxes", BODY)["id"] for _ in range(idle)]
    before = agents()
    sid = api.call("POST", "/v1/sandboxes", BODY)["id"]
    try:
        exec_true(api, sid)
        mine = agents() - before
        if len(mine) != 1:
            sys.exit(f"cannot tell the sandbox's agent among {sorted(mine)}")
        agent = mine.pop()
        daemon = api.pid
        a0, d0 = cpu_ms(agent), cpu_ms(daemon)
        lat = [exec_true(api, sid) for _ in range(n)]
        a1, d1 = cpu_ms(agent), cpu_ms(daemon)
        print(f"steady ({idle} idle beside): exec p50 {statistics.median(lat):.3f} ms; "
              f"agent CPU {(a1 - a0) / n * 1000:.0f} us/exec; "
              f"daemon CPU {(d1 - d0) / n * 1000:.0f} us/exec")
    finally:
        for x in extra + [sid]:
            api.call("DELETE", f"/v1/sandboxes/{x}")


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warren", default=os.path.join(here, "target/release/warren"))
    ap.add_argument("--first", type=int, default=80)
    ap.add_argument("--steady", type=int, default=800)
    ap.add_argument("--idle", type=int, default=0)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="warren-exec-cost-")
    sock = os.path.join(tmp, "run", "warren.sock")
    env = dict(os.environ, WARREN_LOG="off", WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"))
    server = subprocess.Popen([a.warren, "serve", "--socket", sock], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        api = api_mod.connect(sock)
        api.pid = server.pid
        if a.first:
            first(api, a.first)
        if a.steady:
            steady(api, a.steady, a.idle)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
