#!/usr/bin/env python3
"""What idle sandboxes cost the host's CPU: N of them doing nothing, for S seconds.

Starts its own `warren serve` in a temporary directory, makes N sandboxes (no home
volume, 8 clients), waits 5 s for what a create leaves behind to settle, then measures
over `--seconds`:

- the host: the share of both CPUs busy (/proc/stat) and context switches a second;
- the sandboxes' agents (processes named `warren-agent`): CPU a second, from every
  thread's /proc/PID/task/TID/schedstat (exact, where utime and stime count in ticks);
- their helpers (the daemon's children's children, `warren __init`): the same;
- the daemon: CPU a second from its utime and stime (which keep the time of threads
  that ended, as a blocking pool's do), and the descriptors it holds.

Then it removes the sandboxes and stops the daemon.

    python3 bench/idle.py [--warren target/release/warren] [--n 1000] [--seconds 10]
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import api as api_mod  # noqa: E402

BODY = {"home_volume": False}


def host_cpu():
    """(busy, total) jiffies of all CPUs, and the context switches since boot."""
    busy = total = ctxt = 0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu "):
                v = [int(x) for x in line.split()[1:]]
                total = sum(v)
                busy = total - v[3] - v[4]
            elif line.startswith("ctxt "):
                ctxt = int(line.split()[1])
    return busy, total, ctxt


def processes():
    """pid -> (name from cmdline's first word, parent pid) of every process."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                name = f.read().split(b"\0")[0].decode(errors="replace")
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(p)] = (name, ppid)
    return out


def run_ns(pids):
    """The time every thread of `pids` has spent on a CPU, in ns."""
    return sum(api_mod.run_ns(p) for p in pids)


def ticks(pid):
    """utime + stime of `pid`, threads that ended included, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warren", default=os.path.join(here, "target/release/warren"))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="warren-idle-")
    sock = os.path.join(tmp, "run", "warren.sock")
    env = dict(os.environ, WARREN_LOG="off", WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"))
    server = subprocess.Popen([a.warren, "serve", "--socket", sock], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = []
    try:
        api_mod.connect(sock)

        def make(_):
            return api_mod.Api(sock).call("POST", "/v1/sandboxes", BODY)["id"]

        with ThreadPoolExecutor(8) as ex:
            ids = list(ex.map(make, range(a.n)))
        time.sleep(5)
        procs = processes()
        agents = [p for p, (name, _) in procs.items() if name == "warren-agent"]
        zygotes = {p for p, (_, ppid) in procs.items() if ppid == server.pid}
        helpers = [p for p, (name, ppid) in procs.items()
                   if ppid in zygotes and name != "warren-agent"]
        b0, t0, c0 = host_cpu()
        a0, h0, d0 = run_ns(agents), run_ns(helpers), ticks(server.pid)
        time.sleep(a.seconds)
        b1, t1, c1 = host_cpu()
        a1, h1, d1 = run_ns(agents), run_ns(helpers), ticks(server.pid)
        fds = len(os.listdir(f"/proc/{server.pid}/fd"))
        hz = os.sysconf("SC_CLK_TCK")
        s = a.seconds
        print(f"{len(ids)} idle sandboxes ({len(agents)} agents, {len(helpers)} helpers), "
              f"{s:.0f} s: host {100 * (b1 - b0) / max(t1 - t0, 1):.2f}% of all CPUs busy, "
              f"{(c1 - c0) / s:.0f} context switches/s; agents {(a1 - a0) / 1e6 / s:.1f} ms "
              f"of CPU/s, helpers {(h1 - h0) / 1e6 / s:.1f}, daemon "
              f"{(d1 - d0) * 1000 / hz / s:.1f} ({fds} descriptors open)")
    finally:
        def remove(i):
            try:
                api_mod.Api(sock).call("DELETE", f"/v1/sandboxes/{i}")
            except Exception as e:  # noqa: BLE001 - reported, the rest still removed
                print(f"remove {i}: {e}", file=sys.stderr)

        with ThreadPoolExecutor(8) as ex:
            list(ex.map(remove, ids))
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
