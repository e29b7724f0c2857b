#!/usr/bin/env python3
"""Kernel memory per idle sandbox, cache by cache.

Starts a `warren serve` of its own (temp run and data directories), makes one sandbox
to warm up, drops the kernel's reclaimable caches, notes /proc/meminfo and
/proc/slabinfo, makes N more sandboxes one by one through the CLI, waits for them to
settle, drops the caches again and prints the change per sandbox: unreclaimable and
reclaimable slab, kernel stacks, page tables, and the slab caches that grew most, by the
objects in use (a cache's slabs may hold objects freed by an earlier run, which new ones
fill before it grows: its allocated size is printed beside). Then removes everything it
made. Root only (slabinfo, cache dropping).

    python3 bench/slab.py [--n 400] [--warren target/release/warren] [--top 20]
"""
import argparse
import os
import shutil
import subprocess
import tempfile
import time


def slabs():
    """Per cache: bytes of the objects in use, and of all objects its slabs hold."""
    out = {}
    with open("/proc/slabinfo") as f:
        for line in f.read().splitlines()[2:]:
            name, active, objs, size = line.split()[:4]
            out[name] = (int(active) * int(size), int(objs) * int(size))
    return out


def meminfo():
    with open("/proc/meminfo") as f:
        return {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f}


def settle():
    subprocess.run(["sync"], check=False)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--warren", default=os.path.join(here, "target/release/warren"))
    ap.add_argument("--top", type=int, default=20)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="warren-slab-")
    sock = os.path.join(tmp, "warren.sock")
    env = dict(os.environ, WARREN_RUN_DIR=os.path.join(tmp, "run"),
               WARREN_DATA_DIR=os.path.join(tmp, "data"), WARREN_SOCKET=sock,
               WARREN_LOG="off")
    server = subprocess.Popen([a.warren, "serve", "--socket", sock], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ids = []

    def create():
        p = subprocess.run([a.warren, "create"], env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"warren create: {p.stderr.strip()}")
        ids.append(p.stdout.strip())

    try:
        for _ in range(500):
            if os.path.exists(sock):
                break
            time.sleep(0.01)
        create()
        time.sleep(3)
        settle()
        s0, m0 = slabs(), meminfo()
        for _ in range(a.n):
            create()
        time.sleep(5)
        settle()
        s1, m1 = slabs(), meminfo()
        n = a.n
        print(f"per sandbox, {n} idle sandboxes (KiB):")
        for key in ("SUnreclaim", "SReclaimable", "KernelStack", "PageTables"):
            print(f"  {key:14} {(m1[key] - m0[key]) / n / 1024:8.1f}")
        def growth(c, i):
            return (s1[c][i] - s0.get(c, (0, 0))[i]) / n / 1024

        grown = sorted((growth(c, 0), growth(c, 1), c) for c in s1)
        print("slab caches that grew most (KiB per sandbox: objects in use, slabs):")
        for used, held, cache in reversed(grown[-a.top:]):
            print(f"  {used:8.1f} {held:8.1f}  {cache}")
    finally:
        for sid in ids:
            subprocess.run([a.warren, "rm", "-f", sid], env=env, capture_output=True)
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
