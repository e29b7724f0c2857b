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

- warm (`--warm N`): N creates from a warm pool as the suite makes them, each followed by
  three execs of `true` (`--pause S` between the create and the first exec).

- faults (`--faults N`): per exec of the first four after a create (`--pause S` after
  it), the agent's minor page faults (its children's not counted) and CPU time, the
  sandbox's CPU time (its cgroup: the agent and what it started), the daemon's CPU time
  and the round trip; medians of N creates.

    python3 bench/exec-cost.py [--warren target/release/warren] [--first 80]
                               [--steady 800] [--idle 200] [--warm 80] [--faults 40] [--pause 0.2]
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


def stat_fields(pid):
    """The fields of /proc/PID/stat after the command name (the state is field 0)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_ms(pid):
    """utime + stime of `pid`, in ms."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def minor_faults(pid):
    """The minor page faults `pid` has taken (its children's not counted)."""
    return int(stat_fields(pid)[7])


def run_us(pid):
    """The time every thread of `pid` has spent on a CPU, in us."""
    return api_mod.run_ns(pid) / 1000.0


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


def warm(api, n, pause):
    """Creates from a warm pool (min 4, max 8) as the suite does: each round waits for four
    ready members, takes one, runs `true` in it three times and removes it; `pause` seconds
    between the take and the first exec show what the pool's refill beside it costs."""
    api.call("POST", "/v1/pools", {"min": 4, "max": 8})
    cols = [[] for _ in range(4)]
    try:
        for i in range(n + 3):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                pools = api.call("GET", "/v1/pools")
                if pools and pools[0]["ready"] >= 4:
                    break
                time.sleep(0.005)
            t = time.perf_counter()
            sid = api.call("POST", "/v1/sandboxes", BODY)["id"]
            row = [(time.perf_counter() - t) * 1000]
            if pause:
                time.sleep(pause)
            row += [exec_true(api, sid) for _ in range(3)]
            api.call("DELETE", f"/v1/sandboxes/{sid}")
            if i >= 3:
                for c, v in zip(cols, row):
                    c.append(v)
    finally:
        api.call("POST", "/v1/pools", {"min": 0, "max": 0})
    meds = " ".join(f"{statistics.median(c):.2f}" for c in cols)
    print(f"warm (pause {pause} s): create, exec 1..3 (ms, medians of {n}): {meds}")


def sandbox_usage(agent):
    """A reader of the CPU time of every process in `agent`'s sandbox (its cgroup's
    cpuacct.usage, v1, or cpu.stat's usage_usec, v2), in us."""
    with open(f"/proc/{agent}/cgroup") as f:
        lines = [ln.strip().split(":", 2) for ln in f]
    for _, ctrl, path in lines:
        if "cpuacct" in ctrl.split(","):
            name = "cpuacct,cpu" if os.path.isdir("/sys/fs/cgroup/cpuacct,cpu") else "cpuacct"
            file = f"/sys/fs/cgroup/{name}{path}/cpuacct.usage"
            return lambda: int(open(file).read()) / 1000.0
    for _, ctrl, path in lines:
        if ctrl == "":
            file = f"/sys/fs/cgroup{path}/cpu.stat"

            def v2():
                for ln in open(file):
                    if ln.startswith("usage_usec"):
                        return float(ln.split()[1])
                return 0.0
            return v2
    return lambda: 0.0


def faults(api, n, pause):
    """The agent's minor page faults and CPU time in each of the first four execs after
    a create."""
    cols = [[] for _ in range(5)]
    cpu = [[] for _ in range(5)]
    whole = [[] for _ in range(5)]
    daemon = [[] for _ in range(5)]
    lat = [[] for _ in range(4)]
    for i in range(n + 2):
        before = agents()
        sid = api.call("POST", "/v1/sandboxes", BODY)["id"]
        mine = agents() - before
        if len(mine) != 1:
            sys.exit(f"cannot tell the sandbox's agent among {sorted(mine)}")
        agent = mine.pop()
        usage = sandbox_usage(agent)
        time.sleep(pause)
        seen = [(minor_faults(agent), run_us(agent), usage(), run_us(api.pid))]
        for k in range(4):
            ms = exec_true(api, sid)
            seen.append((minor_faults(agent), run_us(agent), usage(), run_us(api.pid)))
            if i >= 2:
                lat[k].append(ms)
        api.call("DELETE", f"/v1/sandboxes/{sid}")
        if i >= 2:
            cols[0].append(seen[0][0])
            cpu[0].append(seen[0][1])
            whole[0].append(seen[0][2])
            daemon[0].append(0)
            for k, (a, b) in enumerate(zip(seen, seen[1:]), start=1):
                cols[k].append(b[0] - a[0])
                cpu[k].append(b[1] - a[1])
                whole[k].append(b[2] - a[2])
                daemon[k].append(b[3] - a[3])
    meds = " ".join(f"{statistics.median(c):.0f}" for c in cols)
    print(f"faults: the agent's minor faults at the create's answer, then in exec 1..4 "
          f"(medians of {n}): {meds}")
    meds = " ".join(f"{statistics.median(c):.0f}" for c in cpu)
    print(f"faults: the agent's CPU (us) to the create's answer, then in exec 1..4 "
          f"(medians of {n}): {meds}")
    meds = " ".join(f"{statistics.median(c):.0f}" for c in whole)
    print(f"faults: the sandbox's CPU (us, its cgroup) to the create's answer, then in "
          f"exec 1..4 (medians of {n}): {meds}")
    meds = " ".join(f"{statistics.median(c):.0f}" for c in daemon[1:])
    print(f"faults: the daemon's CPU (us) in exec 1..4 (medians of {n}): {meds}")
    meds = " ".join(f"{statistics.median(c):.2f}" for c in lat)
    print(f"faults: exec 1..4 round trips (ms, medians of {n}): {meds}")


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
    ap.add_argument("--warm", type=int, default=0,
                    help="creates from a warm pool, each followed by three execs")
    ap.add_argument("--faults", type=int, default=0,
                    help="creates whose agent's page faults in its first execs are counted")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds between a create and its first exec, with --faults")
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
        if a.warm:
            warm(api, a.warm, a.pause)
        if a.faults:
            faults(api, a.faults, a.pause)
        if a.steady:
            steady(api, a.steady, a.idle)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
