#!/usr/bin/env python3
"""The daemon's API latencies, from a client on the unix socket.

Starts its own `warren serve` in a temporary directory and measures, over N runs each:
create-to-first-exec cold (POST /v1/sandboxes, then an exec of `true`), the same from a
warm pool, the exec round trip of `true` in a running sandbox, and pause and resume.
Prints median, p90, min, max and n per scenario; `--json PATH` writes every sample.

    python3 bench/api.py [--runs 50] [--warren target/release/warren]
"""
import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


class Api:
    def __init__(self, path):
        self.conn = UnixHTTP(path)

    def call(self, method, url, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if data is not None else {}
        self.conn.request(method, url, body=data, headers=headers)
        r = self.conn.getresponse()
        raw = r.read()
        if r.status >= 300:
            raise RuntimeError(f"{method} {url}: {r.status} {raw[:300]!r}")
        return json.loads(raw) if raw and r.getheader("content-type", "").startswith("application/json") else raw


def connect(sock, tries=500):
    """An Api on the daemon listening at `sock`, once it answers /health (it is waited for
    up to `tries` times 10 ms to make its socket)."""
    for _ in range(tries):
        if os.path.exists(sock):
            break
        time.sleep(0.01)
    api = Api(sock)
    api.call("GET", "/health")
    return api


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def ms(t0):
    return (time.perf_counter() - t0) * 1000


def run_ns(pid):
    """The time every thread of `pid` has spent on a CPU (schedstat: exact, where utime
    and stime count in clock ticks), in ns; 0 for a process gone meanwhile."""
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        pass
    return total


TRUE = {"command": {"argv": ["true"]}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--warren", default=os.path.join(here, "target/release/warren"))
    ap.add_argument("--json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: sandboxes need it")
    tmp = tempfile.mkdtemp(prefix="wb-")
    sock = os.path.join(tmp, "run", "warren.sock")
    env = dict(os.environ, WARREN_RUN_DIR=os.path.join(tmp, "run"), WARREN_DATA_DIR=os.path.join(tmp, "data"))
    server = subprocess.Popen([a.warren, "serve", "--socket", sock], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    try:
        api = connect(sock)
        made = []

        def create_exec(record):
            t0 = time.perf_counter()
            sb = api.call("POST", "/v1/sandboxes", {"home_volume": False})
            t_create = ms(t0)
            api.call("POST", f"/v1/sandboxes/{sb['id']}/exec", TRUE)
            record.setdefault("create", []).append(t_create)
            record.setdefault("create+exec", []).append(ms(t0))
            made.append(sb["id"])

        cold = {}
        for i in range(a.runs + 3):
            create_exec(cold if i >= 3 else {})
            api.call("DELETE", f"/v1/sandboxes/{made.pop()}")
        results["cold create"] = cold["create"]
        results["cold create+first exec"] = cold["create+exec"]

        api.call("POST", "/v1/pools", {"min": 4, "max": 8})
        warm = {}
        for i in range(a.runs + 3):
            deadline = time.time() + 30
            while api.call("GET", "/v1/pools")[0]["ready"] < 1 and time.time() < deadline:
                time.sleep(0.005)
            create_exec(warm if i >= 3 else {})
        pools = api.call("GET", "/v1/pools")[0]
        results["pool create"] = warm["create"]
        results["pool create+first exec"] = warm["create+exec"]
        api.call("POST", "/v1/pools", {"min": 0, "max": 0})
        for sid in made:
            api.call("DELETE", f"/v1/sandboxes/{sid}")
        made.clear()

        sb = api.call("POST", "/v1/sandboxes", {"home_volume": False})
        ex, pa, re = [], [], []
        for i in range(a.runs + 3):
            t0 = time.perf_counter()
            api.call("POST", f"/v1/sandboxes/{sb['id']}/exec", TRUE)
            if i >= 3:
                ex.append(ms(t0))
        for i in range(a.runs + 3):
            t0 = time.perf_counter()
            api.call("POST", f"/v1/sandboxes/{sb['id']}/pause")
            t1 = time.perf_counter()
            api.call("POST", f"/v1/sandboxes/{sb['id']}/resume")
            if i >= 3:
                pa.append((t1 - t0) * 1000)
                re.append(ms(t1))
        api.call("DELETE", f"/v1/sandboxes/{sb['id']}")
        results["exec true (round trip)"] = ex
        results["pause"] = pa
        results["resume"] = re
        for p in api.call("GET", "/v1/sandboxes"):
            api.call("DELETE", f"/v1/sandboxes/{p['id']}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        time.sleep(0.5)
        doctor = subprocess.run([a.warren, "doctor"], env=env, capture_output=True, text=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'scenario':28} {'median':>8} {'p90':>8} {'min':>8} {'max':>8} {'n':>4}   (ms)")
    for k, xs in results.items():
        print(f"{k:28} {statistics.median(xs):8.2f} {pct(xs, .9):8.2f} {min(xs):8.2f} {max(xs):8.2f} {len(xs):4}")
    print(f"\npool hits {pools['hits']}, misses {pools['misses']}")
    print("doctor:", doctor.stdout.strip() or doctor.stderr.strip())
    if a.json:
        json.dump({"commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here).stdout.strip(),
                   "samples_ms": results}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
