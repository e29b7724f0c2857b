#!/usr/bin/env python3
"""Load: many concurrent clients creating, executing in and removing sandboxes.

Starts its own `warren serve` in a temporary directory; each client loops for the given
time: create a sandbox, write a file through the API and exec `cat` on it (checking the
bytes come back intact), exec `true`, pause and resume every fourth round, remove the
sandbox. Any unexpected status or a wrong byte is an error. At the end it prints
operations, errors and latency percentiles per operation, checks that no sandbox is left
and that `warren doctor` is clean, and exits 1 on any error or leftover.

    python3 bench/load.py [--clients 100] [--seconds 60] [--warren target/release/warren]
"""
import argparse
import base64
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
import threading
import time


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=120)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        self.sock = s


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=60)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--warren", default=os.path.join(here, "target/release/warren"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("SKIPPED load: sandboxes need root")
        return 0
    tmp = tempfile.mkdtemp(prefix="wl-")
    sock = os.path.join(tmp, "run", "warren.sock")
    env = dict(os.environ, WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"))
    # The daemon logs each request: to a file, never a pipe nobody reads.
    os.makedirs(os.path.join(tmp, "run"), exist_ok=True)
    serve_log = open(os.path.join(tmp, "serve.log"), "wb")
    server = subprocess.Popen([a.warren, "serve", "--socket", sock], env=env,
                              stdout=subprocess.DEVNULL, stderr=serve_log)
    for _ in range(1000):
        if os.path.exists(sock):
            break
        time.sleep(0.01)
    lat, errors, lock = {}, [], threading.Lock()
    stop_at = time.time() + a.seconds

    def client(n):
        conn = UnixHTTP(sock)

        def call(op, method, url, body=None, raw=None, expect=(200, 201, 204)):
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            headers = {"content-type": "application/json"} if body is not None else {}
            t0 = time.perf_counter()
            conn.request(method, url, body=data, headers=headers)
            r = conn.getresponse()
            out = r.read()
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                lat.setdefault(op, []).append(dt)
            if r.status not in expect:
                raise RuntimeError(f"{op}: {r.status} {out[:200]!r}")
            return out

        rounds = 0
        while time.time() < stop_at:
            sid = None
            try:
                sb = json.loads(call("create", "POST", "/v1/sandboxes", {"home_volume": False}))
                sid = sb["id"]
                payload = os.urandom(4096 + n)
                call("write", "PUT", f"/v1/sandboxes/{sid}/files?path=/tmp/blob", raw=payload)
                res = json.loads(call("exec", "POST", f"/v1/sandboxes/{sid}/exec",
                                      {"command": {"argv": ["cat", "/tmp/blob"]}}))
                if base64.b64decode(res["stdout_b64"]) != payload or res["exit_code"] != 0:
                    raise RuntimeError("exec cat returned other bytes than were written")
                back = call("read", "GET", f"/v1/sandboxes/{sid}/files?path=/tmp/blob")
                if back != payload:
                    raise RuntimeError("file read back differs")
                call("exec", "POST", f"/v1/sandboxes/{sid}/exec", {"command": {"argv": ["true"]}})
                if rounds % 4 == 0:
                    call("pause", "POST", f"/v1/sandboxes/{sid}/pause")
                    call("resume", "POST", f"/v1/sandboxes/{sid}/resume")
            except Exception as e:  # every failure is counted, then the run goes on
                with lock:
                    errors.append(f"client {n}: {e}")
                conn.close()
                conn = UnixHTTP(sock)
            finally:
                if sid:
                    try:
                        call("remove", "DELETE", f"/v1/sandboxes/{sid}")
                    except Exception as e:
                        with lock:
                            errors.append(f"client {n}: remove: {e}")
            rounds += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - t0
    left = []
    try:
        conn = UnixHTTP(sock)
        conn.request("GET", "/v1/sandboxes")
        left = json.loads(conn.getresponse().read())
    except Exception as e:
        errors.append(f"list at the end: {e}")
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        errors.append("the daemon did not stop within 30 s")
    time.sleep(0.3)
    doctor = subprocess.run([a.warren, "doctor"], env=env, capture_output=True, text=True)
    shutil.rmtree(tmp, ignore_errors=True)
    total = sum(len(v) for v in lat.values())
    print(f"{a.clients} clients for {took:.0f} s: {total} operations, {len(errors)} errors, "
          f"{len(left)} sandboxes left")
    print(f"{'operation':10} {'n':>6} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}   (ms)")
    for op, xs in lat.items():
        print(f"{op:10} {len(xs):6} {statistics.median(xs):8.2f} {pct(xs, .9):8.2f} "
              f"{pct(xs, .99):8.2f} {max(xs):8.2f}")
    for e in errors[:10]:
        print("error:", e)
    print("doctor:", (doctor.stdout + doctor.stderr).strip())
    ok = not errors and not left and doctor.returncode == 0
    failed = len(errors) + len(left) + (doctor.returncode != 0)
    # One line a test runner's summary can count: the load run is one test.
    print(f"load: {0 if failed else 1} passed, {1 if failed else 0} failed "
          f"({total} operations, {failed} problems)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
