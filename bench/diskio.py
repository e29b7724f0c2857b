#!/usr/bin/env python3
"""Two builds of Warren, alternated: creates and removes per second at 8 clients, and
what each create + remove costs the host's disk.

    python3 bench/diskio.py BEFORE AFTER [--rounds 3] [--seconds 8] [--clients 8]
                            [--isolation gvisor|runc|crun]

Each round starts a daemon of each binary in turn (the order swapped every round; state
in a temp dir), makes five sandboxes to warm it (the first of a disk size makes the kept
blank), syncs, then for `--seconds` keeps `--clients` connections creating a sandbox
(default limits: a 4 GiB disk, no home volume; on the backend `--isolation` names, the
daemon's default otherwise) and removing it. Read from
/sys/dev/block/MAJ:MIN/stat of the device holding the temp dir, before and after: the
writes, KiB written, flushes and discards per create + remove. Prints each run and the
medians, after/before. Python 3 standard library only; root.
"""
import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("api", os.path.join(HERE, "api.py"))
api_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(api_mod)
BODY = {"home_volume": False}


def disk_stat(path):
    """The block device statistics of the filesystem holding `path`."""
    dev = os.stat(path).st_dev
    with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat") as f:
        v = [int(x) for x in f.read().split()]
    # writes completed, sectors written, discards completed, flushes completed
    return {"writes": v[4], "kib": v[6] / 2, "discards": v[11] if len(v) > 11 else 0,
            "flushes": v[15] if len(v) > 15 else 0}


def churn(sock, seconds, clients, body):
    count, errors, lock = [0], [], threading.Lock()
    end = time.time() + seconds

    def work():
        api = api_mod.Api(sock)
        try:
            while time.time() < end:
                sid = api.call("POST", "/v1/sandboxes", body)["id"]
                api.call("DELETE", f"/v1/sandboxes/{sid}")
                with lock:
                    count[0] += 1
        except Exception as e:  # reported after the others stop
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(clients)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return count[0], time.time() - t0


def one(binary, a):
    tmp = tempfile.mkdtemp(prefix="wdio-")
    env = dict(os.environ, WARREN_RUN_DIR=f"{tmp}/run", WARREN_DATA_DIR=f"{tmp}/data",
               WARREN_LOG="off")
    for k in ("WARREN_SOCKET", "WARREN_HOST", "WARREN_TENANT", "WARREN_API_KEY"):
        env.pop(k, None)
    sock = f"{tmp}/run/warren.sock"
    srv = subprocess.Popen([binary, "serve", "--socket", sock], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        api = api_mod.connect(sock)
        body = dict(BODY, **({"isolation": a.isolation} if a.isolation else {}))
        for _ in range(5):
            sid = api.call("POST", "/v1/sandboxes", body)["id"]
            api.call("DELETE", f"/v1/sandboxes/{sid}")
        os.sync()
        time.sleep(1)
        before = disk_stat(tmp)
        n, took = churn(sock, a.seconds, a.clients, body)
        time.sleep(0.5)
        after = disk_stat(tmp)
        left = api.call("GET", "/v1/sandboxes")
        if left:
            raise RuntimeError(f"{len(left)} sandboxes left")
    finally:
        srv.terminate()
        srv.wait(timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    per = {k: (after[k] - before[k]) / max(n, 1) for k in after}
    per["per second"] = n / took
    return per


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--isolation", help="the backend to create on (gvisor, runc, crun, ...)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: sandboxes need it")
    bins = [a.before, a.after]
    runs = {b: [] for b in bins}
    for r in range(a.rounds):
        for b in (bins if r % 2 == 0 else bins[::-1]):
            per = one(b, a)
            runs[b].append(per)
            print(f"round {r} {os.path.basename(b)}: {per['per second']:.1f}/s, per create + "
                  f"remove {per['writes']:.1f} writes, {per['kib']:.0f} KiB, "
                  f"{per['flushes']:.2f} flushes, {per['discards']:.1f} discards "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    for k in ("per second", "writes", "kib", "flushes", "discards"):
        x, y = (statistics.median(p[k] for p in runs[b]) for b in bins)
        ratio = f"{y / x:.2f}x" if x else "-"
        print(f"{k:11} {x:9.2f} -> {y:9.2f}  ({ratio})")


if __name__ == "__main__":
    main()
