#!/usr/bin/env python3
"""What idle sandboxes' disks hold of the host's page cache, and what their creates cost.

Starts its own `warren serve` in a temporary directory, drops the host's clean caches,
makes N sandboxes (no home volume, one client), waits 5 s for what a create leaves
behind to settle, then prints per sandbox:

- the pages of its disk image in the page cache (`fincore`, from util-linux): what the
  loop device read of its file, and what the disk's blank and its copy left;
- the growth of the host's `Buffers` (the loop devices' own page cache: the filesystems'
  metadata) and `Cached` (/proc/meminfo), over the N creates;
- the CPU time the host spent in all (/proc/stat, all CPUs, every process and kernel
  thread: the daemon, helpers, agents, and the work queues behind loop devices and
  filesystems), and the median `POST /v1/sandboxes`.

Then it removes the sandboxes and stops the daemon. Root (cache dropping).

    python3 bench/disk-cache.py [--warren target/release/warren] [--n 100]
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


def meminfo():
    with open("/proc/meminfo") as f:
        return {l.split(":")[0]: int(l.split()[1]) for l in f}


def busy_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]


def resident_kib(paths):
    """KiB of `paths` in the page cache, from `fincore`."""
    if not paths:
        return 0
    out = subprocess.run(["fincore", "-b", "-n", "-o", "RES", *paths],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(x) for x in out.split()) // 1024


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warren", default=os.path.join(here, "target/release/warren"))
    ap.add_argument("--n", type=int, default=100)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="warren-disk-cache-")
    sock = os.path.join(tmp, "run", "warren.sock")
    data = os.path.join(tmp, "data")
    env = dict(os.environ, WARREN_LOG="off", WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=data)
    server = subprocess.Popen([a.warren, "serve", "--socket", sock], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = []
    try:
        api = api_mod.connect(sock)
        # The first of a size makes the blank the others are copied from.
        ids.append(api.call("POST", "/v1/sandboxes", BODY)["id"])
        time.sleep(1)
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
        m0, j0 = meminfo(), busy_jiffies()
        posts = []
        for _ in range(a.n):
            t = time.perf_counter()
            ids.append(api.call("POST", "/v1/sandboxes", BODY)["id"])
            posts.append((time.perf_counter() - t) * 1000)
        time.sleep(5)
        m1, j1 = meminfo(), busy_jiffies()
        images = [os.path.join(data, "sandboxes", i, "disk.img") for i in ids[1:]]
        images = [p for p in images if os.path.exists(p)]
        hz = os.sysconf("SC_CLK_TCK")
        n = max(len(images), 1)
        print(f"{len(images)} idle sandboxes, per sandbox: disk image in the page cache "
              f"{resident_kib(images) / n:.0f} KiB; Buffers +{(m1['Buffers'] - m0['Buffers']) / n:.0f}"
              f" KiB, Cached +{(m1['Cached'] - m0['Cached']) / n:.0f} KiB; host CPU "
              f"{(j1 - j0) * 1000 / hz / n:.2f} ms (creates and 5 s after); POST p50 "
              f"{statistics.median(posts):.2f} ms")
    finally:
        for i in ids:
            try:
                api_mod.Api(sock).call("DELETE", f"/v1/sandboxes/{i}")
            except Exception as e:  # noqa: BLE001 - reported, the rest still removed
                print(f"remove {i}: {e}", file=sys.stderr)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
