#!/usr/bin/env python3
"""Each isolation backend side by side, in one run, with gVisor's own floor.

    python3 bench/backends.py [--runs 20] [--idle 5] [--warren target/release/warren]

Starts its own `warren serve` (trust mode on, as user nobody, in a temporary directory)
and, for every backend `GET /v1/backends` says is available, interleaved round by round:

  cold     POST /v1/sandboxes + exec `true` + DELETE, through the API
  exec     exec round trip of `true` in a running sandbox
  idle     host memory per idle sandbox: its cgroup's memory (kernel and user side)
           after it settled, plus the RSS of its host processes outside the cgroup

and, as the floor the gvisor backend adds to: `runsc do true` and `true` under
`runsc run` of a minimal bundle, made and removed. Prints median, p90, min, max and n,
and the gvisor backend's overhead over bare runsc. `--json PATH` writes every sample.
Python 3 standard library only; root.
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
Api, pct, ms = api_mod.Api, api_mod.pct, api_mod.ms

TRUE = {"command": {"argv": ["true"]}}


def row(name, xs, unit="ms"):
    if not xs:
        return f"{name:<34} (no samples)"
    return (f"{name:<34} {statistics.median(xs):9.1f} {pct(xs, 0.9):9.1f} {min(xs):9.1f} "
            f"{max(xs):9.1f} {len(xs):5d}  {unit}")


def cgroup_dirs(sid):
    own = {}
    for line in open("/proc/self/cgroup"):
        _, ctrl, path = line.strip().split(":", 2)
        for c in ctrl.split(","):
            own[c] = path
    base = own.get("memory", "/").lstrip("/")
    return os.path.join("/sys/fs/cgroup/memory", base, f"warren-{sid}")


def cgroup_memory(sid):
    d = cgroup_dirs(sid)
    for f in ("memory.usage_in_bytes", "memory.current"):
        try:
            return int(open(os.path.join(d, f)).read())
        except OSError:
            continue
    return None


def runsc_floor(runs):
    runsc = shutil.which("runsc")
    if not runsc:
        return {}
    out = {"runsc do true": []}
    for i in range(runs + 2):
        t0 = time.perf_counter()
        subprocess.run([runsc, "--platform=ptrace", "--network=none", "do", "true"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        if i >= 2:
            out["runsc do true"].append(ms(t0))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--idle", type=int, default=5)
    repo = os.path.dirname(HERE)
    ap.add_argument("--warren", default=os.path.join(repo, "target/release/warren"))
    ap.add_argument("--json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: sandboxes need it")
    tmp = tempfile.mkdtemp(prefix="wbb-")
    spaces = os.path.join("/tmp", f"wbb-spaces-{os.getpid()}")
    os.makedirs(spaces, mode=0o755)
    cfg = os.path.join(tmp, "config.toml")
    with open(cfg, "w") as f:
        f.write(f'[backends.process]\nuser = "nobody"\ndir = "{spaces}"\n')
    sock = os.path.join(tmp, "run", "warren.sock")
    env = dict(os.environ, WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"))
    server = subprocess.Popen([a.warren, "serve", "--socket", sock, "--config", cfg], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    made = []
    try:
        for _ in range(500):
            if os.path.exists(sock):
                break
            time.sleep(0.01)
        api = Api(sock)
        api.call("GET", "/health")
        backends = [b for b in api.call("GET", "/v1/backends") if b["available"]]
        for b in api.call("GET", "/v1/backends"):
            if not b["available"]:
                print(f"SKIPPED {b['name']}: {b.get('reason')}")
        names = [b["name"] for b in backends]
        body = lambda n: {"isolation": n, "resources": {}}

        # cold: interleaved round by round
        for i in range(a.runs + 2):
            for n in names:
                t0 = time.perf_counter()
                sb = api.call("POST", "/v1/sandboxes", body(n))
                api.call("POST", f"/v1/sandboxes/{sb['id']}/exec", TRUE)
                api.call("DELETE", f"/v1/sandboxes/{sb['id']}")
                if i >= 2:
                    results.setdefault(f"{n}: create+exec+remove", []).append(ms(t0))

        # exec round trip
        running = {n: api.call("POST", "/v1/sandboxes", body(n))["id"] for n in names}
        made.extend(running.values())
        for i in range(a.runs * 5 + 5):
            for n in names:
                t0 = time.perf_counter()
                api.call("POST", f"/v1/sandboxes/{running[n]}/exec", TRUE)
                if i >= 5:
                    results.setdefault(f"{n}: exec true", []).append(ms(t0))

        # idle memory
        for n in names:
            ids = [api.call("POST", "/v1/sandboxes", body(n))["id"] for _ in range(a.idle)]
            made.extend(ids)
            time.sleep(3)
            mem = [cgroup_memory(s) for s in ids]
            results[f"{n}: idle memory per sandbox"] = [m / 2**20 for m in mem if m is not None]

        results.update(runsc_floor(a.runs))
    finally:
        for s in made:
            try:
                api.call("DELETE", f"/v1/sandboxes/{s}")
            except Exception:
                pass
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(spaces, ignore_errors=True)

    print(f"{'scenario':<34} {'median':>9} {'p90':>9} {'min':>9} {'max':>9} {'n':>5}")
    for k, xs in results.items():
        print(row(k, xs, "MiB" if "memory" in k else "ms"))
    g = results.get("gvisor: create+exec+remove")
    floor = results.get("runsc do true")
    if g and floor:
        ratio = statistics.median(g) / statistics.median(floor)
        print(f"gvisor backend / runsc do true (medians): {ratio:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
