#!/usr/bin/env python3
"""Two builds of Warren, alternated: exec round trip and create + exec + remove per backend.

    python3 bench/ab.py BEFORE AFTER [--rounds 6] [--backends namespace,gvisor]
                        [--cpu-millis N] [--json PATH]

How a lever is measured on a shared, noisy machine: each round starts a daemon of its own
for each binary in turn (the order swapped every round), with `WARREN_LOG=off`, and times
through the API, from Python, for each backend: `exec` of argv `true` in one running
sandbox (40 samples on namespace, 20 elsewhere, after 3 thrown away) and a cold
`POST /v1/sandboxes` + exec + `DELETE` (10 and 5, after 1). Prints the medians, p25 and
the after/before ratio per figure, and the load each round ran at. A failed exec is
counted and reported, never timed. Every sandbox is removed and every daemon stopped,
whatever happens. Python 3 standard library only; root.
"""
import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("api", os.path.join(HERE, "api.py"))
api_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(api_mod)
Api = api_mod.Api

TRUE = {"command": {"argv": ["true"]}}
SAMPLES = {"namespace": (40, 10)}  # (exec, cold); every other backend: (20, 5)


def start(binary, tmp):
    sock = os.path.join(tmp, "run", "warren.sock")
    env = dict(os.environ, WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"), WARREN_LOG="off")
    server = subprocess.Popen([binary, "serve", "--socket", sock], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            api = Api(sock)
            api.call("GET", "/health")
            return server, api
        except (OSError, RuntimeError):
            if time.monotonic() > deadline or server.poll() is not None:
                server.terminate()
                raise SystemExit(f"{binary} serve did not answer")
            time.sleep(0.02)


def measure(binary, label, backends, resources, samples, failures):
    tmp = tempfile.mkdtemp(prefix="wab-")
    server, api = start(binary, tmp)

    def run(sid):
        try:
            api.call("POST", f"/v1/sandboxes/{sid}/exec", TRUE)
            return True
        except RuntimeError:
            failures[label] = failures.get(label, 0) + 1
            return False

    try:
        for backend in backends:
            n_exec, n_cold = SAMPLES.get(backend, (20, 5))
            body = {"isolation": backend, "resources": resources}
            sb = api.call("POST", "/v1/sandboxes", body)
            for i in range(n_exec + 3):
                t0 = time.perf_counter()
                if run(sb["id"]) and i >= 3:
                    samples.setdefault((backend, "exec", label), []).append(
                        (time.perf_counter() - t0) * 1000)
            api.call("DELETE", f"/v1/sandboxes/{sb['id']}")
            for i in range(n_cold + 1):
                t0 = time.perf_counter()
                sb = api.call("POST", "/v1/sandboxes", body)
                ok = run(sb["id"])
                api.call("DELETE", f"/v1/sandboxes/{sb['id']}")
                if ok and i >= 1:
                    samples.setdefault((backend, "cold", label), []).append(
                        (time.perf_counter() - t0) * 1000)
    finally:
        try:
            for sb in api.call("GET", "/v1/sandboxes"):
                api.call("DELETE", f"/v1/sandboxes/{sb['id']}")
        finally:
            server.terminate()
            server.wait(timeout=60)
            shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--backends", default="namespace,gvisor")
    ap.add_argument("--cpu-millis", type=int, help="each sandbox's CPU limit (default: the daemon's)")
    ap.add_argument("--json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: sandboxes need it")
    backends = a.backends.split(",")
    resources = {"cpu_millis": a.cpu_millis} if a.cpu_millis else {}
    samples, failures, loads = {}, {}, []
    binaries = {"before": a.before, "after": a.after}
    for r in range(a.rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for label in order:
            measure(binaries[label], label, backends, resources, samples, failures)
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}/{a.rounds}, load {loads[-1]:.2f}", flush=True)
    print(f"{'backend':<10} {'figure':<6} {'before p25/median':>20} {'after p25/median':>20} {'after/before':>13}")
    for backend in backends:
        for figure in ("exec", "cold"):
            b = sorted(samples.get((backend, figure, "before"), []))
            f = sorted(samples.get((backend, figure, "after"), []))
            if not b or not f:
                print(f"{backend:<10} {figure:<6} (no samples)")
                continue
            mb, mf = statistics.median(b), statistics.median(f)
            print(f"{backend:<10} {figure:<6} {b[len(b) // 4]:9.2f} /{mb:8.2f} ms "
                  f"{f[len(f) // 4]:9.2f} /{mf:8.2f} ms {mf / mb:12.2f}   (n {len(b)}, {len(f)})")
    if failures:
        print("failed execs:", failures)
    if a.json:
        with open(a.json, "w") as out:
            json.dump({"before": a.before, "after": a.after, "loads": loads,
                       "failures": failures,
                       "samples": {"/".join(k): v for k, v in samples.items()}}, out)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
